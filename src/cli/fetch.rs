//! `lanvan get` over the chunk protocol: the file's manifest over HTTP, a `lanvan-chunks`
//! data channel to the box (signaled on `/ws`), and a [`Swarm`] writing each verified chunk
//! at its offset in the `.part` file. Holds one chunk in memory at a time per source; never
//! decides about falling back to HTTP (its caller does, from the error it returns).

use super::link::{self, Failure, Incoming, Result, Session};
use super::progress::Progress;
use super::Get;
use crate::core::chunks::{Bitfield, Event, Manifest, ManifestJson, Message, SourceId, Swarm};
use crate::core::peer::{CloseReason, Identity, PeerEvent};
use crate::net::rtc::{Host, HostLimits, PeerId};
use serde_json::json;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the box gets to answer the offer and open the channel.
const OPEN_WAIT: Duration = Duration::from_secs(10);

/// The `/ws` session name of the one box peer a `get` opens.
const RTC_SESSION: &str = "get";

/// The manifest of the stored file `name`, its hash checked.
pub async fn manifest(b: &link::BoxAddr, name: &str) -> Result<Manifest> {
    let path = format!("/api/files/{}/manifest", link::encode(name));
    let resp = link::get(b, &path, &[]).await?;
    if resp.status != 200 {
        return Err(Failure::failed(format!(
            "no manifest: {}",
            link::error_text(resp).await
        )));
    }
    let body = resp.body().await?;
    let json: ManifestJson = serde_json::from_slice(&body)
        .map_err(|e| Failure::failed(format!("the box sent a bad manifest: {e}")))?;
    Manifest::from_json(json)
        .map_err(|e| Failure::failed(format!("the box sent a bad manifest: {e}")))
}

/// Chunks of `part` (if it exists) that already match the manifest: a resumed download
/// fetches only the rest. Reads one chunk at a time.
pub fn chunks_on_disk(m: &Manifest, part: &Path) -> Bitfield {
    let mut have = Bitfield::new(m.chunk_count());
    let Ok(file) = std::fs::File::open(part) else {
        return have;
    };
    let len = file.metadata().map(|md| md.len()).unwrap_or(0);
    let mut buf = vec![0u8; m.chunk_size() as usize];
    for i in 0..m.chunk_count() {
        let (at, n) = (m.chunk_offset(i), m.chunk_len(i) as usize);
        if at + n as u64 > len {
            break;
        }
        if file.read_exact_at(&mut buf[..n], at).is_ok()
            && Some(crate::core::hash::Digest::of(&buf[..n])) == m.chunk_hash(i)
        {
            have.set(i);
        }
    }
    have
}

/// What a finished chunk download reports.
pub struct Fetched {
    /// Sources that delivered chunks.
    pub sources: usize,
    pub chunks: u32,
}

/// Downloads `m` into `part` over a data channel to the box. On failure, `part` is cut to
/// its verified prefix, so the HTTP path can resume after it.
pub async fn download(
    b: &link::BoxAddr,
    a: &Get,
    device: &str,
    m: Manifest,
    already: Bitfield,
    part: &Path,
) -> Result<Fetched> {
    let m = Arc::new(m);
    let io = |e: std::io::Error| Failure::failed(format!("{}: {e}", part.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(part)
        .map_err(io)?;
    let mut swarm = Swarm::new(m.clone(), Some(already));
    let result = run(b, a, device, &mut swarm, &file).await;
    if result.is_err() {
        let first_missing = (0..m.chunk_count())
            .find(|&i| !swarm.have().get(i))
            .unwrap_or(m.chunk_count());
        let keep = if first_missing == m.chunk_count() {
            m.size()
        } else {
            m.chunk_offset(first_missing)
        };
        let _ = file.set_len(keep);
    }
    result
}

async fn run(
    b: &link::BoxAddr,
    a: &Get,
    device: &str,
    swarm: &mut Swarm,
    file: &std::fs::File,
) -> Result<Fetched> {
    let (label, name, quiet) = (a.file.as_str(), a.peer.name(), a.peer.quiet);
    let name = name.as_str();
    let m = swarm.manifest().clone();
    let io = |e: std::io::Error| Failure::failed(format!("writing the download: {e}"));
    let start = swarm.progress().bytes_done;
    if swarm.is_done() {
        file.set_len(m.size()).map_err(io)?;
        return Ok(Fetched {
            sources: 0,
            chunks: 0,
        });
    }
    let mut session = Session::join(b, device, name).await?;
    if session.welcome["p2p"]["box_peer"] != true {
        session.close().await;
        return Err(Failure::failed("the box offers no WebRTC peer"));
    }
    let ip = session
        .local_ip()
        .ok_or_else(|| Failure::failed("no local address"))?;
    let identity = Identity::new().map_err(|e| Failure::failed(format!("WebRTC: {e}")))?;
    let (host, events) = Host::bind(&[SocketAddr::new(ip, 0)], identity, HostLimits::default())
        .map_err(|e| Failure::failed(format!("WebRTC: cannot open a UDP socket on {ip}: {e}")))?;

    let work = async {
        let ws = &mut session;
        let peer = host
            .connect(|offer| async move {
                let msg = json!({"type": "rtc_offer", "session": RTC_SESSION, "sdp": offer});
                ws.send(&msg).await.map_err(|e| e.to_string())?;
                let deadline = Instant::now() + OPEN_WAIT;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match ws.next(left).await {
                        Some(Incoming::Json(v))
                            if v["type"] == "rtc_answer" && v["session"] == RTC_SESSION =>
                        {
                            return Ok(v["sdp"].as_str().unwrap_or("").to_string());
                        }
                        Some(Incoming::Json(v))
                            if v["type"] == "error" && v["ref_type"] == "rtc_offer" =>
                        {
                            return Err(format!(
                                "the box refused the data channel: {}",
                                v["code"].as_str().unwrap_or("")
                            ));
                        }
                        Some(Incoming::Closed(why)) => return Err(format!("/ws closed: {why}")),
                        None => return Err("the box did not answer the offer".to_string()),
                        _ => {}
                    }
                }
            })
            .await
            .map_err(|e| Failure::failed(e.to_string()))?;
        let source = SourceId(peer);
        let mut progress = Progress::new(label, m.size(), quiet);
        progress.starting_at(start);
        let opened_by = Instant::now() + OPEN_WAIT;
        let mut open = false;
        // Text messages the channel had no room for, in order.
        let mut held: std::collections::VecDeque<String> = Default::default();
        let mut fetched = 0u32;
        loop {
            let now = Instant::now();
            let wake = swarm
                .poll_timeout()
                .unwrap_or(now + Duration::from_secs(1))
                .min(now + Duration::from_secs(1));
            enum Wake {
                Rtc(Option<(PeerId, PeerEvent)>),
                Ws(Option<Incoming>),
            }
            let rtc = async { Wake::Rtc(events.recv().await.ok()) };
            // Keep reading /ws while downloading: pings are answered, and the box's
            // `rtc_closed` or the socket's end is seen.
            let ws = async {
                Wake::Ws(
                    session
                        .next(wake.saturating_duration_since(Instant::now()))
                        .await,
                )
            };
            match smol::future::or(rtc, ws).await {
                Wake::Rtc(None) => return Err(Failure::failed("the WebRTC host stopped")),
                Wake::Rtc(Some((id, ev))) if id == peer => match ev {
                    PeerEvent::Open => {
                        open = true;
                        let hello = json!({"t": "hello", "id": device, "name": name,
                            "role": "cli", "max_requests": 0});
                        held.push_back(hello.to_string());
                        swarm.add_source(source, Instant::now());
                    }
                    PeerEvent::Text(t) => match Message::parse(&t) {
                        Ok(msg) => swarm.handle_message(source, &msg, Instant::now()),
                        Err(reply) => held.push_back(reply.to_text()),
                    },
                    PeerEvent::Binary(frame) => swarm.handle_piece(source, &frame, Instant::now()),
                    PeerEvent::Closed(r) => {
                        swarm.remove_source(source, Instant::now());
                        progress.abandon();
                        return Err(Failure::failed(format!(
                            "the data channel closed ({})",
                            r.as_str()
                        )));
                    }
                    PeerEvent::Writable | PeerEvent::Connected => {}
                },
                Wake::Rtc(Some(_)) => {}
                Wake::Ws(Some(Incoming::Closed(why))) => {
                    progress.abandon();
                    return Err(Failure::failed(format!("the box closed /ws: {why}")));
                }
                Wake::Ws(Some(Incoming::Json(v))) if v["type"] == "rtc_closed" => {
                    progress.abandon();
                    return Err(Failure::failed(format!(
                        "the box closed the data channel ({})",
                        v["reason"].as_str().unwrap_or("")
                    )));
                }
                Wake::Ws(_) => {}
            }
            let now = Instant::now();
            if !open && now >= opened_by {
                return Err(Failure::failed("the data channel did not open in 10 s"));
            }
            if swarm.poll_timeout().is_some_and(|t| now >= t) {
                swarm.handle_timeout(now);
            }
            while let Some((_, msg)) = swarm.poll_transmit() {
                held.push_back(msg.to_text());
            }
            while let Some(t) = held.front() {
                match host.send_text(peer, t) {
                    Ok(true) => {
                        held.pop_front();
                    }
                    Ok(false) => break, // `Writable` comes; the loop retries then
                    Err(e) => return Err(Failure::failed(format!("the data channel: {e}"))),
                }
            }
            while let Some(ev) = swarm.poll_event() {
                match ev {
                    Event::Verified { index, data } => {
                        file.write_all_at(&data, m.chunk_offset(index))
                            .map_err(io)?;
                        fetched += 1;
                        progress.update(swarm.progress().bytes_done);
                    }
                    Event::SourceDropped { reason, .. } => {
                        progress.abandon();
                        return Err(Failure::failed(format!(
                            "the box was dropped as a source ({})",
                            reason.as_str()
                        )));
                    }
                    Event::Done => {}
                }
            }
            if swarm.is_done() {
                file.set_len(m.size()).map_err(io)?;
                progress.finish("");
                host.close(peer, CloseReason::Closed);
                let bye = json!({"type": "rtc_close", "session": RTC_SESSION});
                let _ = session.send(&bye).await;
                return Ok(Fetched {
                    sources: 1,
                    chunks: fetched,
                });
            }
        }
    };
    let runner = async {
        host.clone().run().await;
        Err(Failure::failed("the WebRTC host stopped"))
    };
    smol::future::or(work, runner).await
}
