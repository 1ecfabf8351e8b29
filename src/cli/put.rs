//! `lanvan put FILE`: drops a file onto the box through its resumable upload API
//! (`POST /api/uploads`, `PUT` each missing chunk, `finish`; docs/api.md). Reads the file
//! from disk one chunk at a time, so memory holds at most one chunk, never the file; never
//! deletes or replaces anything on the box.

use super::link::{self, BoxAddr, Failure, Result};
use super::progress::{self, Progress};
use super::Peer;
use clap::Args;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};
use smol::net::TcpStream;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `lanvan put`.
#[derive(Args, Debug)]
pub struct Put {
    #[command(flatten)]
    pub peer: Peer,
    /// The file to upload.
    pub file: PathBuf,
    /// The name to store it under [default: the file's own name]. (`--name` is this
    /// terminal's device name, as in every command.)
    #[arg(long = "as", value_name = "NAME")]
    pub stored_as: Option<String>,
    /// Most bytes per second to upload (e.g. on a busy Wi-Fi); 0 = no limit.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub limit_rate: u64,
}

/// How long the box may stay silent on one read or write before the upload gives up.
const SILENCE: Duration = Duration::from_secs(60);
/// Bytes written to the socket between progress updates (and rate-limit pauses).
const PIECE: usize = 64 * 1024;
/// A chunk the box refused as damaged is sent again this many times, then the upload fails.
const CHUNK_TRIES: u32 = 3;

pub fn run(a: Put) -> Result<()> {
    let (file, size, own_name) = super::commands::open_local(&a.file)?;
    let name = match &a.stored_as {
        Some(n) if n.trim().is_empty() => {
            return Err(Failure::Usage("--as needs a file name".into()))
        }
        Some(n) => n.clone(),
        None => own_name,
    };
    let b = a.peer.locate()?;
    smol::block_on(async {
        // Reach the box before hashing: hashing a large file takes a while, and an
        // unreachable box should be said at once.
        drop(link::dial(&b).await?);
        let sha = hash_file(&file, size, &name, a.peer.quiet)?;
        let mut up = Upload {
            conn: Conn::new(&b),
            file: &file,
            name: &name,
            size,
            limit_rate: a.limit_rate,
            started: Instant::now(),
            sent: 0,
            progress: Progress::new(&name, size, a.peer.quiet),
        };
        let r = up.run(&sha, &link::device_id(), &a.peer.name()).await;
        if r.is_err() {
            up.progress.abandon();
        }
        r
    })
}

/// The whole file's SHA-256, which the box needs up front (it answers "already stored"
/// by it, and checks it at `finish`).
fn hash_file(file: &std::fs::File, size: u64, name: &str, quiet: bool) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    // Only a file that takes a noticeable time gets a bar of its own.
    let mut bar =
        (size >= 64 << 20).then(|| Progress::new(&format!("{name} (SHA-256)"), size, quiet));
    let mut at = 0u64;
    while at < size {
        let want = buf.len().min((size - at) as usize);
        file.read_exact_at(&mut buf[..want], at)
            .map_err(|e| Failure::failed(format!("cannot read {name}: {e}")))?;
        hasher.update(&buf[..want]);
        at += want as u64;
        if let Some(p) = bar.as_mut() {
            p.update(at);
        }
    }
    if let Some(p) = bar.as_mut() {
        p.finish("");
    }
    Ok(link::hex(&hasher.finalize()))
}

/// Chunk indexes from the box's `missing`: half-open ranges `[start, end)`, bounded by
/// `chunks` so a wrong answer cannot make the loop run away.
fn missing_chunks(missing: &Value, chunks: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for r in missing.as_array().into_iter().flatten() {
        let start = r[0].as_u64().unwrap_or(0).min(u64::from(chunks)) as u32;
        let end = r[1].as_u64().unwrap_or(0).min(u64::from(chunks)) as u32;
        out.extend(start..end);
    }
    out
}

/// Byte length of chunk `index` of a `size`-byte file cut into `chunk_size` pieces.
fn chunk_len(size: u64, chunk_size: u64, index: u32) -> u64 {
    let start = u64::from(index) * chunk_size;
    size.saturating_sub(start).min(chunk_size)
}

/// The box's words for an error reply: `message (code)`.
fn said(v: &Value, status: u16) -> String {
    match (v["message"].as_str(), v["error"].as_str()) {
        (Some(m), Some(c)) => format!("{m} ({c})"),
        _ => format!("HTTP {status}"),
    }
}

/// One run of `lanvan put`.
struct Upload<'a> {
    conn: Conn,
    file: &'a std::fs::File,
    name: &'a str,
    size: u64,
    limit_rate: u64,
    /// When sending began, and bytes sent since: the rate limit's clock.
    started: Instant,
    sent: u64,
    progress: Progress,
}

impl Upload<'_> {
    async fn run(&mut self, sha: &str, device_id: &str, device_name: &str) -> Result<()> {
        let name = self.name;
        let body = json!({"name": name, "size": self.size, "sha256": sha,
            "device_id": device_id, "device_name": device_name});
        let (status, v) = self.conn.json("POST", "/api/uploads", Some(&body)).await?;
        match status {
            200 if v["complete"] == true => {
                let stored = v["file"]["name"].as_str().unwrap_or(name);
                eprintln!("{name}: already on the box as `{stored}` (SHA-256 {sha}); nothing sent");
                println!("{stored}");
                return Ok(());
            }
            200 | 201 => {}
            413 => {
                return Err(Failure::failed(format!(
                    "{name} ({}) is too large for the box: {}",
                    progress::bytes(self.size),
                    said(&v, status)
                )))
            }
            507 => {
                return Err(Failure::failed(format!(
                    "the box has no room for {name} ({}): {}",
                    progress::bytes(self.size),
                    said(&v, status)
                )))
            }
            _ => {
                return Err(Failure::failed(format!(
                    "the box refused the upload: {}",
                    said(&v, status)
                )))
            }
        }
        let id = v["id"].as_str().unwrap_or("").to_string();
        let chunk_size = v["chunk_size"].as_u64().unwrap_or(0);
        let chunks = v["chunks"].as_u64().unwrap_or(0);
        if !link::valid_id(&id)
            || (self.size > 0 && chunk_size == 0)
            || chunks > u64::from(u32::MAX)
        {
            return Err(Failure::failed(format!(
                "the box sent a bad upload status: {v}"
            )));
        }
        let chunks = chunks as u32;
        let mut missing = missing_chunks(&v["missing"], chunks);
        let left: u64 = missing
            .iter()
            .map(|&i| chunk_len(self.size, chunk_size, i))
            .sum();
        let have = self.size.saturating_sub(left);
        if status == 200 && missing.len() < chunks as usize {
            eprintln!(
                "{name}: resuming: {} of {chunks} chunks ({}) already on the box, sending the other {}",
                chunks as usize - missing.len(),
                progress::bytes(have),
                missing.len()
            );
        } else {
            eprintln!(
                "{name}: uploading {} to {} in {chunks} chunk{}",
                progress::bytes(self.size),
                self.conn.b.url(),
                if chunks == 1 { "" } else { "s" }
            );
        }
        self.progress.starting_at(have);
        let mut done = have;
        let mut buf = Vec::new();
        // `finish` names what is still missing if something got lost; two more rounds
        // cover a box that lost a chunk on the way (a restart mid-write, say).
        for _ in 0..3 {
            for &i in &missing {
                let len = chunk_len(self.size, chunk_size, i);
                self.put_chunk(&id, i, chunk_size, len, done, &mut buf)
                    .await?;
                done += len;
                self.progress.update(done);
            }
            match self.finish(&id).await? {
                Finished::Stored(file) => {
                    let stored = file["name"].as_str().unwrap_or(name).to_string();
                    self.progress.finish("");
                    eprintln!(
                        "{name}: stored on the box as `{stored}` ({}, SHA-256 {sha} ok)",
                        progress::bytes(self.size)
                    );
                    println!("{stored}");
                    return Ok(());
                }
                Finished::Deduplicated(file) => {
                    let stored = file["name"].as_str().unwrap_or(name).to_string();
                    self.progress.finish("");
                    eprintln!("{name}: the box already had these bytes as `{stored}`");
                    println!("{stored}");
                    return Ok(());
                }
                Finished::Missing(m) => {
                    missing = missing_chunks(&m, chunks);
                    done = self.size
                        - missing
                            .iter()
                            .map(|&i| chunk_len(self.size, chunk_size, i))
                            .sum::<u64>()
                            .min(self.size);
                }
            }
        }
        Err(Failure::failed(format!(
            "the box still misses chunks of {name} after sending them again; run it again to resume"
        )))
    }

    /// Sends chunk `index` (read from disk into `buf`), again if the box found it damaged.
    async fn put_chunk(
        &mut self,
        id: &str,
        index: u32,
        chunk_size: u64,
        len: u64,
        done: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        buf.resize(len as usize, 0);
        self.file
            .read_exact_at(buf, u64::from(index) * chunk_size)
            .map_err(|e| Failure::failed(format!("cannot read {}: {e}", self.name)))?;
        let hash = link::hex(&Sha256::digest(&buf[..]));
        let path = format!("/api/uploads/{id}/chunks/{index}");
        let (mut damaged, mut busy) = (0, 0);
        loop {
            let (status, v) = self.send_chunk(&path, &hash, buf, done).await?;
            match (status, v["error"].as_str().unwrap_or("")) {
                (200, _) => return Ok(()),
                (422, _) | (408, _) if damaged + 1 < CHUNK_TRIES => damaged += 1,
                // The box is finishing this upload (another `put` of it); wait a little.
                (409, "busy") if busy < 100 => {
                    busy += 1;
                    smol::Timer::after(Duration::from_millis(100)).await;
                }
                (507, _) => {
                    return Err(Failure::failed(format!(
                        "the box's disk is full: {}; what was sent is kept, run it again once there is room to resume",
                        said(&v, status)
                    )))
                }
                (404, _) => {
                    return Err(Failure::failed(format!(
                        "the upload is gone from the box (cancelled or expired): {}; run it again to start over",
                        said(&v, status)
                    )))
                }
                _ => {
                    return Err(Failure::failed(format!(
                        "the box refused chunk {index}: {}",
                        said(&v, status)
                    )))
                }
            }
        }
    }

    /// One `PUT` of a chunk, its body written in pieces so progress and the rate limit
    /// move while it goes. A connection the box closed between requests is opened again once.
    async fn send_chunk(
        &mut self,
        path: &str,
        hash: &str,
        body: &[u8],
        done: u64,
    ) -> Result<(u16, Value)> {
        for attempt in 0..2 {
            let head = self
                .conn
                .head("PUT", path, &[("x-chunk-sha256", hash)], body.len());
            let fresh = self.conn.stream.is_none();
            let sent = async {
                let stream = self.conn.stream(&head).await?;
                let mut at = 0;
                while at < body.len() {
                    let mut n = PIECE.min(body.len() - at);
                    if self.limit_rate > 0 {
                        n = n.min((self.limit_rate as usize / 10).max(1024));
                        let due =
                            Duration::from_secs_f64(self.sent as f64 / self.limit_rate as f64);
                        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                            smol::Timer::after(wait).await;
                        }
                    }
                    timed(stream.write_all(&body[at..at + n])).await?;
                    at += n;
                    self.sent += n as u64;
                    self.progress.update(done + at as u64);
                }
                Ok::<_, std::io::Error>(())
            }
            .await;
            let answer = match sent {
                Ok(()) => self.conn.reply().await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(r) => return Ok(r),
                Err(_) if attempt == 0 && !fresh => self.conn.stream = None,
                Err(e) => return Err(self.conn.broke(e)),
            }
        }
        unreachable!("the second attempt returns")
    }

    async fn finish(&mut self, id: &str) -> Result<Finished> {
        let path = format!("/api/uploads/{id}/finish");
        for _ in 0..300 {
            let (status, v) = self.conn.json("POST", &path, None).await?;
            match (status, v["error"].as_str().unwrap_or("")) {
                (201, _) => return Ok(Finished::Stored(v["file"].clone())),
                (200, _) => return Ok(Finished::Deduplicated(v["file"].clone())),
                (409, "incomplete") => return Ok(Finished::Missing(v["missing"].clone())),
                // Chunk writes still under way on the box's disk thread.
                (409, "busy") => {
                    smol::Timer::after(Duration::from_millis(100)).await;
                }
                (422, "file_hash_mismatch") => {
                    return Err(Failure::failed(format!(
                        "{} changed while it was being sent (its SHA-256 no longer matches); run it again",
                        self.name
                    )))
                }
                _ => {
                    return Err(Failure::failed(format!(
                        "the box did not store {}: {}",
                        self.name,
                        said(&v, status)
                    )))
                }
            }
        }
        Err(Failure::failed(
            "the box stayed busy finishing the upload; run it again",
        ))
    }
}

/// What `finish` answered.
enum Finished {
    Stored(Value),
    Deduplicated(Value),
    /// Still missing these ranges.
    Missing(Value),
}

/// An I/O step that fails when the box stays silent for [`SILENCE`].
async fn timed<T>(f: impl std::future::Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    smol::future::or(f, async {
        smol::Timer::after(SILENCE).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer in {} s", SILENCE.as_secs()),
        ))
    })
    .await
}

/// One keep-alive HTTP/1.1 connection to the box, opened again when the box closes it.
/// Requests go one at a time; a reply is read whole (they are small JSON objects).
struct Conn {
    b: BoxAddr,
    stream: Option<TcpStream>,
}

impl Conn {
    fn new(b: &BoxAddr) -> Conn {
        Conn {
            b: b.clone(),
            stream: None,
        }
    }

    fn head(&self, method: &str, path: &str, headers: &[(&str, &str)], len: usize) -> String {
        let mut h = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {len}\r\n",
            self.b.host
        );
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        h
    }

    /// The connection, opened if needed, with `head` written.
    async fn stream(&mut self, head: &str) -> std::io::Result<&mut TcpStream> {
        if self.stream.is_none() {
            let s = link::dial(&self.b).await.map_err(|e| {
                // `broke` names the box already; keep only why.
                let why = e.to_string();
                let prefix = format!("cannot reach the box at {}: ", self.b.url());
                std::io::Error::other(format!(
                    "cannot connect: {}",
                    why.strip_prefix(&prefix).unwrap_or(&why)
                ))
            })?;
            self.stream = Some(s);
        }
        let s = self.stream.as_mut().expect("just opened");
        timed(s.write_all(head.as_bytes())).await?;
        Ok(s)
    }

    /// A request with a small (JSON) body or none; the status and the JSON answer.
    async fn json(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let body = body.map(|v| v.to_string()).unwrap_or_default();
        for attempt in 0..2 {
            let headers: &[(&str, &str)] = if body.is_empty() {
                &[]
            } else {
                &[("content-type", "application/json")]
            };
            let head = self.head(method, path, headers, body.len());
            let fresh = self.stream.is_none();
            let r = async {
                let s = self.stream(&head).await?;
                timed(s.write_all(body.as_bytes())).await?;
                self.reply().await
            }
            .await;
            match r {
                Ok(r) => return Ok(r),
                // A kept-alive connection the box closed meanwhile: once more on a new one.
                Err(_) if attempt == 0 && !fresh => self.stream = None,
                Err(e) => return Err(self.broke(e)),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Reads one reply: status and JSON body (Null when there is none).
    async fn reply(&mut self) -> std::io::Result<(u16, Value)> {
        let Some(s) = self.stream.as_mut() else {
            return Err(std::io::Error::other("not connected"));
        };
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        let (status, len, close, start) = loop {
            let n = timed(s.read(&mut tmp)).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the box closed the connection",
                ));
            }
            buf.extend_from_slice(&tmp[..n]);
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut hs);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(at)) => {
                    let header = |name: &str| {
                        resp.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
                    };
                    let len: usize = header("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let close = header("connection").is_some_and(|v| v == "close");
                    break (resp.code.unwrap_or(0), len, close, at);
                }
                Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {}
                _ => return Err(std::io::Error::other("the box sent a bad HTTP answer")),
            }
        };
        if len > 1 << 20 {
            return Err(std::io::Error::other("the box's answer is too large"));
        }
        let mut body = buf.split_off(start);
        while body.len() < len {
            let n = timed(s.read(&mut tmp)).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the box closed the connection early",
                ));
            }
            body.extend_from_slice(&tmp[..n]);
        }
        body.truncate(len);
        if close {
            self.stream = None;
        }
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// The failure for a connection that broke mid-request.
    fn broke(&mut self, e: std::io::Error) -> Failure {
        self.stream = None;
        Failure::failed(format!(
            "the connection to the box at {} broke: {e}; run it again to resume",
            self.b.url()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ranges_become_chunk_indexes_within_the_upload() {
        assert_eq!(
            missing_chunks(&json!([[0, 1], [2, 5]]), 8),
            vec![0, 2, 3, 4]
        );
        assert_eq!(missing_chunks(&json!([]), 8), Vec::<u32>::new());
        // A range past the end is cut at the chunk count; a bad one gives nothing.
        assert_eq!(missing_chunks(&json!([[6, 99]]), 8), vec![6, 7]);
        assert_eq!(missing_chunks(&json!([[5, 2], "x"]), 8), Vec::<u32>::new());
    }

    #[test]
    fn chunk_lengths_end_with_the_short_last_chunk() {
        assert_eq!(chunk_len(2_500_000, 1 << 20, 0), 1 << 20);
        assert_eq!(chunk_len(2_500_000, 1 << 20, 2), 2_500_000 - (2 << 20));
        assert_eq!(chunk_len(2_500_000, 1 << 20, 3), 0);
    }

    #[test]
    fn the_boxs_error_reads_as_message_and_code() {
        let v = json!({"error": "quota_exceeded", "message": "the box's quota is full"});
        assert_eq!(said(&v, 507), "the box's quota is full (quota_exceeded)");
        assert_eq!(said(&Value::Null, 502), "HTTP 502");
    }
}
