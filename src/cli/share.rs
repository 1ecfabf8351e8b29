//! `lanvan share FILE`: this terminal serves a local file's chunks to devices downloading
//! the same bytes from the box, until it is stopped. It announces the file's manifest (made
//! here with the box's chunk size), accepts P2P requests with `purpose: "swarm"` for that
//! manifest only, answers the downloader's offer and serves its `lanvan-chunks` channel
//! with a [`Seeder`]. Reads one chunk at a time per channel; never writes the file.

use super::direct::{candidate_of, sdp_of};
use super::link::{self, Failure, Incoming, Result, Session};
use super::progress;
use super::Share;
use crate::core::chunks::seeder::{Handled, Output};
use crate::core::chunks::wire::PIECE_PAYLOAD;
use crate::core::chunks::{Chunker, Library, Manifest, Message, Seeder};
use crate::core::hash::Digest;
use crate::core::peer::{CloseReason, Identity, PeerEvent, CHUNKS_LABEL};
use crate::net::rtc::{Host, HostLimits, PeerId};
use serde_json::json;
use std::collections::HashMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::time::Duration;

/// Downloaders served at once; more are declined.
const MAX_DOWNLOADERS: usize = 4;
/// Requests one downloader may have outstanding here (what a page takes: SERVE_MAX).
const MAX_REQUESTS: usize = 16;
/// Bytes written to a channel and not yet acknowledged, at most; the rest waits.
const SEND_AHEAD: usize = 1 << 20;
/// Room for one more piece, with its 48-byte header.
const PIECE: usize = 48 + PIECE_PAYLOAD;

/// The one file this terminal serves.
struct OneFile(Arc<Manifest>);

impl Library for OneFile {
    fn manifest(&self, id: &Digest) -> Option<Arc<Manifest>> {
        (*id == self.0.id()).then(|| self.0.clone())
    }
}

/// A downloader's channel: its P2P request and, once its offer is answered, its peer.
struct Downloader {
    device: String,
    peer: Option<PeerId>,
    seeder: Seeder,
    /// A text or piece the channel had no room for; sent first when it is writable.
    held: Option<Held>,
    served: u32,
}

enum Held {
    Text(String),
    Piece(Vec<u8>),
}

/// `lanvan share FILE`: serves until stopped (Ctrl-C), or fails.
pub fn share(a: Share) -> Result<()> {
    let b = a.peer.locate()?;
    let file = std::fs::File::open(&a.file)
        .map_err(|e| Failure::failed(format!("cannot read {}: {e}", a.file.display())))?;
    let label = a
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| a.file.display().to_string());
    let me = format!("{}-share", link::device_id());
    let name = a.peer.name();
    smol::block_on(async {
        let mut s = Session::join(&b, &me, &name).await?;
        let chunk_size = s.welcome["p2p"]["chunk_size"].as_u64().unwrap_or(262_144) as u32;
        if s.welcome["p2p"]["mode"].as_str().is_none_or(|m| m == "off") {
            return Err(Failure::failed(
                "P2P is off on the box: nothing can be shared",
            ));
        }
        eprintln!(
            "{label}: hashing it in {} chunks…",
            progress::bytes(chunk_size.into())
        );
        let m = Arc::new(manifest_of(&file, chunk_size, &label)?);
        let id = m.id().to_hex();
        s.send(&json!({"type": "enable_p2p", "device_id": me, "device_name": name}))
            .await?;
        s.send(&json!({"type": "announce", "manifests": [id]}))
            .await?;
        s.send(&json!({"type": "query", "manifest": id})).await?;
        let ip = s
            .local_ip()
            .ok_or_else(|| Failure::failed("no local address"))?;
        let identity = Identity::new().map_err(|e| Failure::failed(format!("WebRTC: {e}")))?;
        let limits = HostLimits {
            max_peers: MAX_DOWNLOADERS,
            ..HostLimits::default()
        };
        let (host, events) = Host::bind(&[SocketAddr::new(ip, 0)], identity, limits)
            .map_err(|e| Failure::failed(format!("WebRTC: no UDP socket on {ip}: {e}")))?;
        let lib = OneFile(m.clone());
        // Request id -> downloader.
        let mut downloaders: HashMap<String, Downloader> = HashMap::new();
        let work = async {
            loop {
                enum Wake {
                    Rtc(Option<(PeerId, PeerEvent)>),
                    Ws(Option<Incoming>),
                }
                let rtc = async { Wake::Rtc(events.recv().await.ok()) };
                let ws = async { Wake::Ws(s.next(Duration::from_secs(30)).await) };
                match smol::future::or(rtc, ws).await {
                    Wake::Rtc(None) => return Err(Failure::failed("the WebRTC host stopped")),
                    Wake::Rtc(Some((peer, ev))) => {
                        let Some(rid) = downloaders
                            .iter()
                            .find(|(_, d)| d.peer == Some(peer))
                            .map(|(r, _)| r.clone())
                        else {
                            continue;
                        };
                        let d = downloaders.get_mut(&rid).expect("found above");
                        match ev {
                            PeerEvent::Open => {
                                let hello = json!({"t": "hello", "id": me, "name": name,
                                    "role": "cli", "max_requests": MAX_REQUESTS});
                                d.seeder_text(&host, peer, hello.to_string());
                                eprintln!("{label}: serving {}", d.device);
                            }
                            PeerEvent::Text(t) => {
                                let handled = match Message::parse(&t) {
                                    Ok(msg) => d.seeder.handle_message(&msg, &lib),
                                    Err(reply) => {
                                        d.seeder_text(&host, peer, reply.to_text());
                                        Handled::Consumed
                                    }
                                };
                                if handled == Handled::Flooded {
                                    host.close(peer, CloseReason::Closed);
                                }
                            }
                            PeerEvent::Closed(_) => {
                                eprintln!(
                                    "{label}: {} is done ({} chunks served)",
                                    d.device, d.served
                                );
                                downloaders.remove(&rid);
                                let _ = s
                                    .send(&json!({"type": "p2p_close", "request_id": rid}))
                                    .await;
                                continue;
                            }
                            PeerEvent::Binary(_) | PeerEvent::Writable | PeerEvent::Connected => {}
                        }
                        if let Some(d) = downloaders.get_mut(&rid) {
                            d.pump(&host, peer, &file);
                        }
                    }
                    Wake::Ws(Some(Incoming::Closed(why))) => {
                        return Err(Failure::failed(format!("the box closed /ws: {why}")))
                    }
                    Wake::Ws(Some(Incoming::Json(v))) => {
                        let rid = v["request_id"].as_str().unwrap_or("").to_string();
                        match v["type"].as_str().unwrap_or("") {
                            "query_result" if v["manifest"] == id.as_str() => {
                                if v["box"] != true {
                                    eprintln!(
                                        "{label}: the box holds no file with these bytes; \
                                         only devices downloading one will ask for it"
                                    );
                                }
                                eprintln!(
                                    "{label}: shared ({}, manifest {}); Ctrl-C to stop",
                                    progress::bytes(m.size()),
                                    &id[..12]
                                );
                            }
                            "p2p_request_received" => {
                                let from = v["from"].as_str().unwrap_or("").to_string();
                                let ok = v["purpose"] == "swarm"
                                    && v["manifest"] == id.as_str()
                                    && downloaders.len() < MAX_DOWNLOADERS;
                                let answer = if ok { "p2p_accept" } else { "p2p_decline" };
                                s.send(&json!({"type": answer, "from": from, "to": me}))
                                    .await?;
                                if ok {
                                    downloaders.insert(
                                        rid,
                                        Downloader {
                                            device: v["from_name"]
                                                .as_str()
                                                .unwrap_or(&from)
                                                .to_string(),
                                            peer: None,
                                            seeder: Seeder::new(MAX_REQUESTS),
                                            held: None,
                                            served: 0,
                                        },
                                    );
                                }
                            }
                            "webrtc_offer" => {
                                let Some(d) = downloaders.get_mut(&rid) else {
                                    continue;
                                };
                                let Some(offer) = sdp_of(&v["offer"]) else {
                                    continue;
                                };
                                let to = v["from_device_id"].as_str().unwrap_or("").to_string();
                                match host.answer_channel(offer, CHUNKS_LABEL) {
                                    Ok((peer, sdp)) => {
                                        d.peer = Some(peer);
                                        s.send(&json!({"type": "webrtc_signal",
                                            "signal_type": "answer", "target_device_id": to,
                                            "request_id": rid,
                                            "answer": {"type": "answer", "sdp": sdp}}))
                                            .await?;
                                    }
                                    Err(e) => {
                                        eprintln!("{label}: cannot answer {}: {e}", d.device);
                                        downloaders.remove(&rid);
                                        let _ = s
                                            .send(&json!({"type": "p2p_close", "request_id": rid}))
                                            .await;
                                    }
                                }
                            }
                            "webrtc_ice_candidate" => {
                                let peer = downloaders.get(&rid).and_then(|d| d.peer);
                                if let (Some(peer), Some(c)) = (peer, candidate_of(&v["candidate"]))
                                {
                                    // `.local` names fail; their checks pair peer-reflexively.
                                    let _ = host.add_remote_candidate(peer, c);
                                }
                            }
                            "p2p_connection_failed" | "p2p_connection_closed" => {
                                if let Some(d) = downloaders.remove(&rid) {
                                    if let Some(peer) = d.peer {
                                        host.close(peer, CloseReason::Closed);
                                    }
                                }
                            }
                            "error"
                                if v["ref_type"] == "announce" || v["ref_type"] == "enable_p2p" =>
                            {
                                return Err(Failure::failed(format!(
                                    "the box refused to list this file: {}",
                                    v["message"].as_str().unwrap_or("")
                                )));
                            }
                            _ => {}
                        }
                    }
                    Wake::Ws(_) => {}
                }
            }
        };
        let runner = async {
            host.clone().run().await;
            Err(Failure::failed("the WebRTC host stopped"))
        };
        smol::future::or(work, runner).await
    })
}

impl Downloader {
    /// Sends a text now, or holds it (and what follows waits) until the channel has room.
    fn seeder_text(&mut self, host: &Host, peer: PeerId, text: String) {
        if self.held.is_none() && host.send_text(peer, &text).unwrap_or(false) {
            return;
        }
        // At most one message is held: the hello or an error reply comes before pieces.
        if self.held.is_none() {
            self.held = Some(Held::Text(text));
        }
    }

    /// Moves the seeder's output onto the channel while it has room, reading each chunk
    /// the seeder asks for from `file`.
    fn pump(&mut self, host: &Host, peer: PeerId, file: &std::fs::File) {
        loop {
            if let Some(held) = self.held.take() {
                let sent = match &held {
                    Held::Text(t) => host.send_text(peer, t),
                    Held::Piece(p) => host.send_binary(peer, p),
                };
                if !matches!(sent, Ok(true)) {
                    if sent.is_ok() {
                        self.held = Some(held);
                    }
                    return;
                }
                if matches!(&held, Held::Piece(p) if is_last_piece(p)) {
                    self.served += 1;
                }
            }
            if host.buffered(peer) + PIECE > SEND_AHEAD {
                return; // `Writable` comes when the other side has read some
            }
            match self.seeder.poll_output() {
                None => return,
                Some(Output::Text(m)) => {
                    let t = m.to_text();
                    if let Ok(false) = host.send_text(peer, &t) {
                        self.held = Some(Held::Text(t));
                    }
                }
                Some(Output::Piece(p)) => {
                    let last = is_last_piece(&p);
                    match host.send_binary(peer, &p) {
                        Ok(false) => self.held = Some(Held::Piece(p)),
                        _ if last => self.served += 1,
                        _ => {}
                    }
                }
                Some(Output::Read(r)) => {
                    let (at, len) = (
                        r.manifest.chunk_offset(r.index),
                        r.manifest.chunk_len(r.index),
                    );
                    let mut buf = vec![0u8; len as usize];
                    let bytes = file.read_exact_at(&mut buf, at).ok().map(|_| buf);
                    // The seeder checks the bytes against the chunk's hash: a file changed
                    // since it was hashed gives `not_found`, never bad data.
                    self.seeder.chunk_read(&r, bytes);
                }
            }
        }
    }
}

/// Whether a chunk piece is its chunk's last (offset + payload reaches the chunk length).
fn is_last_piece(frame: &[u8]) -> bool {
    crate::core::chunks::PieceHeader::decode(frame)
        .map(|(h, payload)| h.offset as usize + payload.len() == h.chunk_len as usize)
        .unwrap_or(false)
}

/// The manifest of `file` at `chunk_size`, read once from start to end.
fn manifest_of(file: &std::fs::File, chunk_size: u32, name: &str) -> Result<Manifest> {
    let mut c = Chunker::new(chunk_size);
    let mut buf = vec![0u8; 1 << 20];
    let mut f = file;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Failure::failed(format!("reading {name}: {e}")))?;
        if n == 0 {
            break;
        }
        c.push(&buf[..n]);
    }
    c.finish(name)
        .map_err(|e| Failure::failed(format!("{name}: {e}")))
}
