//! Sends through the box's relay (docs/protocol.md "Relay transfers") from the command line:
//! [`send`] offers a file and streams its chunks within the box's credit; [`Receiving`]
//! writes one accepted send to a `.part` file, acks every chunk and keeps the file only
//! after `relay_complete`. Never reads a chunk twice for hashing; never grows past a chunk.

use super::link::{Failure, Incoming, Result, Session};
use super::progress::Progress;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a relay send picks up: a fresh send, or the rest of a direct send.
pub struct Continue {
    pub start_chunk: u32,
    /// `ref` for the box to pass on (`p2p:<id>` for a direct send moving over).
    pub reference: Option<String>,
    /// The running hash of chunks `0..hashed`, and the whole hash if known.
    pub hasher: Sha256,
    pub hashed: u32,
    pub sha256: Option<String>,
    /// `inbox: true`: left on the box if the receiver does not answer in time.
    pub inbox: bool,
    /// `store: true`: straight to the receiver's inbox (its page is in the background).
    pub store: bool,
}

impl Continue {
    pub fn fresh() -> Continue {
        Continue {
            start_chunk: 0,
            reference: None,
            hasher: Sha256::new(),
            hashed: 0,
            sha256: None,
            inbox: false,
            store: false,
        }
    }
}

/// How a send ended well.
#[derive(Debug, PartialEq)]
pub enum Sent {
    /// Both sides' SHA-256 matched.
    Complete(String),
    /// Left in the receiver's inbox on the box.
    Stored,
}

fn hex(b: &[u8]) -> String {
    super::link::hex(b)
}

/// Reads chunk `index` of `file` (the last may be short).
pub fn read_chunk(file: &File, size: u64, chunk_size: u64, index: u32) -> Result<Vec<u8>> {
    let start = index as u64 * chunk_size;
    let len = (size - start).min(chunk_size) as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, start)
        .map_err(|e| Failure::failed(format!("reading the file: {e}")))?;
    Ok(buf)
}

/// One file on its way to a device: what a send (direct or through the relay) needs
/// besides the box's session.
pub struct Outgoing<'a> {
    /// The receiving device's id.
    pub to: &'a str,
    pub file: &'a File,
    /// The name it arrives under.
    pub name: &'a str,
    pub size: u64,
    /// This terminal's name, shown with a P2P request.
    pub my_name: &'a str,
    pub progress: &'a mut Progress,
}

/// Sends `out.file` to device `out.to` through the relay, from where `from` says.
pub async fn send(s: &mut Session, out: &mut Outgoing<'_>, mut from: Continue) -> Result<Sent> {
    let (to, file, name, size) = (out.to, out.file, out.name, out.size);
    let progress = &mut *out.progress;
    let mut offer = json!({"type": "relay_offer", "to": to, "name": name, "size": size});
    if from.start_chunk > 0 {
        offer["start_chunk"] = json!(from.start_chunk);
    }
    if let Some(r) = &from.reference {
        offer["ref"] = json!(r);
    }
    if let Some(sha) = &from.sha256 {
        offer["sha256"] = json!(sha);
    }
    if from.store {
        offer["store"] = json!(true);
    }
    if from.inbox {
        offer["inbox"] = json!(true);
        offer["accept_timeout_ms"] = json!(60_000);
    }
    s.send(&offer).await?;
    let (id, chunk_size, chunks) = loop {
        match s.next(Duration::from_secs(15)).await {
            Some(Incoming::Json(v)) if v["type"] == "relay_offered" => {
                let id = v["id"].as_u64().unwrap_or(0) as u32;
                let cs = v["chunk_size"].as_u64().unwrap_or(262_144);
                let n = v["chunks"].as_u64().unwrap_or(0) as u32;
                if v["mode"] == "live" {
                    eprintln!("{name}: waiting for the other device to accept…");
                }
                break (id, cs, n);
            }
            Some(Incoming::Json(v)) if v["type"] == "error" && v["ref_type"] == "relay_offer" => {
                return Err(Failure::failed(format!(
                    "the box refused the send: {} ({})",
                    v["message"].as_str().unwrap_or(""),
                    v["code"].as_str().unwrap_or("")
                )));
            }
            Some(Incoming::Closed(why)) => {
                return Err(Failure::failed(format!(
                    "the box closed the connection: {why}"
                )))
            }
            None => return Err(Failure::failed("the box did not answer the offer in 15 s")),
            _ => {}
        }
    };
    let mut next = from.start_chunk;
    let mut window_end = 0u32;
    let mut end_sent = from.sha256.is_some();
    let base = from.start_chunk as u64 * chunk_size;
    progress.starting_at(base.min(size));
    loop {
        // Fill the credit, one chunk at a time, looking at the socket in between.
        let mut wait = Duration::from_secs(30);
        if next < window_end && next < chunks {
            let bytes = read_chunk(file, size, chunk_size, next)?;
            if next == from.hashed {
                from.hasher.update(&bytes);
                from.hashed += 1;
            }
            let mut frame = Vec::with_capacity(8 + bytes.len());
            frame.extend_from_slice(&id.to_be_bytes());
            frame.extend_from_slice(&next.to_be_bytes());
            frame.extend_from_slice(&bytes);
            s.send_binary(frame).await?;
            next += 1;
            wait = Duration::ZERO;
        }
        if !end_sent && next >= chunks && from.hashed >= chunks {
            let sha = hex(&from.hasher.clone().finalize());
            s.send(&json!({"type": "relay_end", "id": id, "sha256": sha}))
                .await?;
            end_sent = true;
        }
        let Some(msg) = s.next(wait).await else {
            continue;
        };
        let v = match msg {
            Incoming::Json(v) => v,
            Incoming::Binary(_) => continue,
            Incoming::Closed(why) => {
                progress.abandon();
                return Err(Failure::failed(format!(
                    "the connection to the box broke during the send: {why}"
                )));
            }
        };
        if v["id"].as_u64() != Some(id as u64) {
            continue;
        }
        let why = |v: &Value| {
            let r = v["reason"].as_str().or(v["code"].as_str()).unwrap_or("");
            r.to_string()
        };
        match v["type"].as_str().unwrap_or("") {
            "relay_accepted" => eprintln!("{name}: accepted"),
            "relay_window" => {
                window_end = v["window_end"].as_u64().unwrap_or(0) as u32;
                let acked = v["acked"].as_u64().unwrap_or(0);
                progress.update((acked * chunk_size).min(size));
            }
            "relay_resume" => next = v["from_chunk"].as_u64().unwrap_or(next as u64) as u32,
            "relay_paused" => eprintln!("{name}: the other device dropped off; waiting for it"),
            "relay_to_inbox" => eprintln!("{name}: no answer; leaving it on the box instead"),
            "relay_stored" => {
                progress.finish("stored on the box for the other device");
                return Ok(Sent::Stored);
            }
            "relay_complete" => {
                let sha = v["sha256"].as_str().unwrap_or("").to_string();
                progress.finish(&format!("sent, SHA-256 {sha} matches"));
                return Ok(Sent::Complete(sha));
            }
            "relay_declined" => {
                progress.abandon();
                return Err(Failure::failed(format!("{name}: declined {}", why(&v))));
            }
            "relay_cancelled" => {
                progress.abandon();
                return Err(Failure::failed(format!("{name}: cancelled ({})", why(&v))));
            }
            "relay_failed" => {
                progress.abandon();
                return Err(Failure::failed(format!("{name}: failed ({})", why(&v))));
            }
            "error" => {
                progress.abandon();
                return Err(Failure::failed(format!(
                    "{name}: the box refused: {}",
                    v["message"].as_str().unwrap_or("")
                )));
            }
            _ => {}
        }
    }
}

/// A file name from another device, safe to create in the receive folder.
pub fn safe_name(raw: &str) -> String {
    crate::core::names::sanitize(raw, 200).unwrap_or_else(|_| "received-file".into())
}

/// The first name in `dir` that is free: `a.txt`, `a (1).txt`, …
pub fn free_path(dir: &Path, name: &str) -> PathBuf {
    let mut p = dir.join(name);
    let mut n = 1;
    while p.exists() {
        p = dir.join(crate::core::names::numbered(name, n, 200));
        n += 1;
    }
    p
}

/// One relay send this terminal accepted, written to `DIR/.NAME.part` until complete.
pub struct Receiving {
    pub id: u32,
    pub name: String,
    pub from_name: String,
    pub size: u64,
    pub chunk_size: u64,
    pub chunks: u32,
    /// The next chunk the box sends (counting from `start_chunk`); acks say this.
    pub next: u32,
    /// Chunks this terminal wrote before the relay took over (a direct send it continues);
    /// those are acked again but not written twice.
    held: u32,
    hasher: Sha256,
    part: PathBuf,
    file: File,
    pub progress: Progress,
}

impl Receiving {
    /// Opens the part file for offer `v` and answers `relay_accept`; a send starting past
    /// chunk 0 must come with what this terminal already holds (`held`).
    pub fn accept(
        v: &Value,
        dir: &Path,
        held: Option<(PathBuf, File, Sha256, u32)>,
        quiet: bool,
    ) -> std::result::Result<(Receiving, Value), String> {
        let id = v["id"].as_u64().ok_or("an offer without id")? as u32;
        let name = safe_name(v["name"].as_str().unwrap_or(""));
        let size = v["size"].as_u64().ok_or("an offer without size")?;
        let chunk_size = v["chunk_size"]
            .as_u64()
            .filter(|&c| c > 0)
            .ok_or("bad chunk size")?;
        let chunks = v["chunks"].as_u64().ok_or("an offer without chunks")? as u32;
        let start = v["start_chunk"].as_u64().unwrap_or(0) as u32;
        let (part, file, hasher, held) = match held {
            Some(h) => h,
            None if start > 0 => {
                return Err("it continues a send this terminal does not hold".into())
            }
            None => {
                let part = dir.join(format!(".{name}.{id}.part"));
                let file = File::create(&part)
                    .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
                (part, file, Sha256::new(), 0)
            }
        };
        let from_name = v["from_name"].as_str().unwrap_or("a device").to_string();
        let mut progress = Progress::new(&name, size, quiet);
        progress.starting_at((held.max(start) as u64 * chunk_size).min(size));
        let r = Receiving {
            id,
            name,
            from_name,
            size,
            chunk_size,
            chunks,
            next: start,
            held,
            hasher,
            part,
            file,
            progress,
        };
        Ok((r, json!({"type": "relay_accept", "id": id})))
    }

    /// A chunk frame's payload for chunk `index`: written, hashed, acked; the last one
    /// also answers `relay_done`. Chunks already held (after a fallback) are only acked.
    /// As the page does (web/relay.js), a chunk other than the next is dropped.
    pub fn chunk(&mut self, index: u32, payload: &[u8]) -> std::result::Result<Vec<Value>, String> {
        if index != self.next {
            return Ok(Vec::new()); // sent before a resume; the box sends it again
        }
        let start = index as u64 * self.chunk_size;
        let want = (self.size - start).min(self.chunk_size) as usize;
        if payload.len() != want {
            return Err(format!(
                "chunk {index} has {} bytes, not {want}",
                payload.len()
            ));
        }
        if index >= self.held {
            self.file
                .write_all_at(payload, start)
                .map_err(|e| format!("cannot write {}: {e}", self.part.display()))?;
            self.hasher.update(payload);
        }
        self.next += 1;
        let have = self.next.max(self.held) as u64 * self.chunk_size;
        self.progress.update(have.min(self.size));
        let mut out = vec![json!({"type": "relay_ack", "id": self.id, "acked": self.next})];
        out.extend(self.done_message());
        Ok(out)
    }

    /// `relay_done` once every chunk is in (at once for an empty file).
    pub fn done_message(&self) -> Option<Value> {
        (self.next >= self.chunks).then(|| {
            json!({"type": "relay_done", "id": self.id, "sha256": hex(&self.hasher.clone().finalize())})
        })
    }

    /// `relay_complete`: the file is kept under a free name in `dir`; returns its path.
    pub fn complete(mut self, dir: &Path, sha: &str) -> std::result::Result<PathBuf, String> {
        let ours = hex(&self.hasher.clone().finalize());
        if ours != sha {
            let _ = std::fs::remove_file(&self.part);
            return Err(format!(
                "{}: SHA-256 mismatch ({ours} here, {sha} on the box)",
                self.name
            ));
        }
        let _ = self.file.flush();
        let _ = self.file.sync_all();
        let path = free_path(dir, &self.name);
        std::fs::rename(&self.part, &path)
            .map_err(|e| format!("cannot keep {}: {e}", path.display()))?;
        self.progress
            .finish(&format!("saved as {} (SHA-256 {sha} ok)", path.display()));
        Ok(path)
    }

    /// The send ended without the file: the part file goes.
    pub fn discard(mut self) {
        self.progress.abandon();
        let _ = std::fs::remove_file(&self.part);
    }
}
