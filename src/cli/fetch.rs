//! `lanvan get` over the chunk protocol: the file's manifest over HTTP, a `lanvan-chunks`
//! data channel to the box (signaled on `/ws`) and to up to 4 devices the tracker says hold
//! it (P2P requests with `purpose: "swarm"`), all feeding one [`Swarm`] that writes each
//! verified chunk at its offset in the `.part` file. Holds one chunk in memory at a time
//! per source; never decides about falling back to HTTP (its caller does, from its error).

use super::direct::{candidate_of, sdp_of};
use super::link::{self, Failure, Incoming, Result, Session};
use super::progress::Progress;
use super::Get;
use crate::core::chunks::{
    Bitfield, DropReason, Event, Manifest, ManifestJson, Message, SourceId, Swarm,
};
use crate::core::peer::{CloseReason, Identity, PeerEvent};
use crate::net::rtc::{Host, HostLimits, PeerId};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the box gets to answer the offer and open the channel.
const OPEN_WAIT: Duration = Duration::from_secs(10);

/// How long another device gets, from the request, to accept and open its channel.
const PEER_OPEN_WAIT: Duration = Duration::from_secs(10);

/// The `/ws` session name of the one box peer a `get` opens.
const RTC_SESSION: &str = "get";

/// Devices asked for chunks besides the box (as the page asks at most 4).
const MAX_PEER_SOURCES: usize = 4;

/// How long a source dropped for bad data keeps its channel, to read why.
const LINGER: Duration = Duration::from_secs(1);

/// Text messages held for one channel that has no room for them; past this the source is
/// not reading, and is dropped.
const MAX_HELD: usize = 256;

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
    /// Each source that delivered chunks, by name, and how many it gave (the box first).
    pub sources: Vec<(String, u32)>,
    pub chunks: u32,
}

impl Fetched {
    /// `21 chunks over data channels from 2 sources (the box: 7, Anna laptop: 14)`, or with
    /// one source `7 chunks over a data channel from 1 source (the box)`.
    pub fn summary(&self) -> String {
        match self.sources.as_slice() {
            [] => format!("{} chunks over a data channel from 0 sources", self.chunks),
            [(name, _)] => format!(
                "{} chunks over a data channel from 1 source ({name})",
                self.chunks
            ),
            many => {
                let each: Vec<String> = many.iter().map(|(n, c)| format!("{n}: {c}")).collect();
                format!(
                    "{} chunks over data channels from {} sources ({})",
                    self.chunks,
                    many.len(),
                    each.join(", ")
                )
            }
        }
    }
}

/// Downloads `m` into `part` over data channels to the box and to other devices that hold
/// it. On failure, `part` is cut to its verified prefix, so the HTTP path can resume after it.
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

/// Where one source's channel is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// A device: `p2p_request` sent, waiting for its answer and the handshake.
    Asked,
    /// Offer sent; waiting for the answer and the channel.
    Offered,
    Open,
    Gone,
}

/// One source's channel: the box's (`rtc_offer` on `/ws`) or a device's (a P2P request
/// with `purpose: "swarm"`, then `webrtc_signal` as between two pages).
struct Channel {
    /// How the user knows it: `the box`, or the device's name.
    name: String,
    /// The device id; None for the box.
    device: Option<String>,
    /// The box's P2P request id, once it gave one.
    request: Option<String>,
    peer: Option<PeerId>,
    stage: Stage,
    /// It must be open by then, or it is given up.
    open_by: Instant,
    /// Text messages the channel had no room for yet, in order (at most `MAX_HELD`).
    held: VecDeque<String>,
    chunks: u32,
    /// A dropped source that is being told why (`bad_data`): its connection closes then,
    /// so the message is not cut off by the close.
    linger: Option<Instant>,
}

/// Everything one `get` juggles: the sources' channels, the swarm and the `/ws` session.
struct Sources<'a> {
    host: &'a Host,
    channels: Vec<Channel>,
    /// Device ids whose `p2p_request` the box has not answered yet, in the order sent:
    /// an `error` about a request names no device, but the box answers in order.
    unanswered: VecDeque<String>,
    label: &'a str,
    me: &'a str,
}

impl Sources<'_> {
    fn by_peer(&self, id: PeerId) -> Option<usize> {
        self.channels.iter().position(|c| c.peer == Some(id))
    }

    fn by_request(&self, rid: &str) -> Option<usize> {
        self.channels
            .iter()
            .position(|c| c.request.as_deref() == Some(rid) && c.stage != Stage::Gone)
    }

    fn by_device(&self, device: &str) -> Option<usize> {
        self.channels
            .iter()
            .position(|c| c.device.as_deref() == Some(device) && c.stage != Stage::Gone)
    }

    /// Channels that are open or may still open.
    fn alive(&self) -> usize {
        self.channels
            .iter()
            .filter(|c| c.stage != Stage::Gone)
            .count()
    }

    /// Gives source `i` up: its requests go back to the pool, its connection is closed, and
    /// the box is told. `why` is said on stderr when the source had opened (or `loud`).
    async fn drop_source(
        &mut self,
        i: usize,
        why: &str,
        loud: bool,
        swarm: &mut Swarm,
        ws: &mut Session,
        progress: &mut Progress,
    ) {
        self.drop_telling(i, why, loud, false, swarm, ws, progress)
            .await
    }

    /// `drop_source`; with `telling`, the channel stays open for `LINGER` so what was just
    /// sent on it (the swarm's `bad_data`) reaches the source before the close does.
    #[allow(clippy::too_many_arguments)]
    async fn drop_telling(
        &mut self,
        i: usize,
        why: &str,
        loud: bool,
        telling: bool,
        swarm: &mut Swarm,
        ws: &mut Session,
        progress: &mut Progress,
    ) {
        let c = &mut self.channels[i];
        if c.stage == Stage::Gone {
            if c.linger.is_some() && !telling {
                self.close(i, ws).await;
            }
            return;
        }
        let was_open = c.stage == Stage::Open;
        if telling && was_open {
            c.stage = Stage::Gone;
            c.linger = Some(Instant::now() + LINGER);
        } else {
            self.close(i, ws).await;
        }
        swarm.remove_source(SourceId(i as u64), Instant::now());
        if was_open || loud {
            progress.abandon();
            let c = &self.channels[i];
            eprintln!("{}: {} is no longer a source ({why})", self.label, c.name);
        }
    }

    /// Closes source `i`'s connection and tells the box (`rtc_close` for its own channel,
    /// `p2p_close` for a device's).
    async fn close(&mut self, i: usize, ws: &mut Session) {
        let c = &mut self.channels[i];
        c.stage = Stage::Gone;
        c.linger = None;
        c.held.clear();
        if let Some(peer) = c.peer {
            self.host.close(peer, CloseReason::Closed);
        }
        let bye = match (&c.device, &c.request) {
            (None, _) => Some(json!({"type": "rtc_close", "session": RTC_SESSION})),
            (Some(_), Some(rid)) => Some(json!({"type": "p2p_close", "request_id": rid})),
            (Some(_), None) => None,
        };
        if let Some(bye) = bye {
            let _ = ws.send(&bye).await;
        }
    }

    /// Asks the devices the tracker named (at most `MAX_PEER_SOURCES`) for a chunk channel.
    async fn ask(&mut self, found: &Value, manifest: &str, ws: &mut Session) -> Result<()> {
        let sources = found["sources"].as_array().cloned().unwrap_or_default();
        // Counted over the whole download, gone ones too: a repeated answer adds no more.
        let asked = self.channels.iter().filter(|c| c.device.is_some()).count();
        for s in sources.iter().take(MAX_PEER_SOURCES.saturating_sub(asked)) {
            let Some(device) = s["device_id"].as_str().filter(|d| *d != self.me) else {
                continue;
            };
            if self.by_device(device).is_some() {
                continue;
            }
            let name = s["name"].as_str().unwrap_or(device).to_string();
            ws.send(
                &json!({"type": "p2p_request", "from": self.me, "to": device,
                "purpose": "swarm", "manifest": manifest}),
            )
            .await?;
            self.unanswered.push_back(device.to_string());
            self.channels.push(Channel {
                name,
                device: Some(device.to_string()),
                request: None,
                peer: None,
                stage: Stage::Asked,
                open_by: Instant::now() + PEER_OPEN_WAIT,
                held: VecDeque::new(),
                chunks: 0,
                linger: None,
            });
        }
        Ok(())
    }

    /// A message from the box on `/ws` about the box's channel or a device's.
    async fn on_box(
        &mut self,
        v: &Value,
        swarm: &mut Swarm,
        ws: &mut Session,
        progress: &mut Progress,
    ) -> Result<()> {
        let rid = v["request_id"].as_str().unwrap_or("");
        match v["type"].as_str().unwrap_or("") {
            "rtc_answer" if v["session"] == RTC_SESSION => {
                let box_peer = self.channels[BOX].peer;
                let sdp = v["sdp"].as_str().unwrap_or("");
                if let Some(Err(e)) = box_peer.map(|p| self.host.accept_answer(p, sdp)) {
                    let why = format!("its answer: {e}");
                    self.drop_source(BOX, &why, true, swarm, ws, progress).await;
                }
            }
            "rtc_closed" if v["session"] == RTC_SESSION => {
                let why = format!("the box closed it: {}", v["reason"].as_str().unwrap_or(""));
                self.drop_source(BOX, &why, true, swarm, ws, progress).await;
            }
            "error" if v["ref_type"] == "rtc_offer" => {
                let why = format!("refused: {}", v["code"].as_str().unwrap_or(""));
                self.drop_source(BOX, &why, true, swarm, ws, progress).await;
            }
            "error" if v["ref_type"] == "p2p_request" => {
                if let Some(i) = self.unanswered.pop_front().and_then(|d| self.by_device(&d)) {
                    let why = v["message"].as_str().unwrap_or("refused").to_string();
                    self.drop_source(i, &why, false, swarm, ws, progress).await;
                }
            }
            "p2p_request_sent" => {
                let to = v["to"].as_str().unwrap_or("");
                self.unanswered.retain(|d| d != to);
                if let Some(i) = self.by_device(to) {
                    self.channels[i].request = Some(rid.to_string());
                }
            }
            "p2p_request_declined" => {
                if let Some(i) = self.by_request(rid) {
                    self.drop_source(i, "declined", false, swarm, ws, progress)
                        .await;
                }
            }
            "p2p_connection_failed" | "p2p_connection_closed" => {
                if let Some(i) = self.by_request(rid) {
                    let why = v["message"].as_str().unwrap_or("the connection ended");
                    self.drop_source(i, why, false, swarm, ws, progress).await;
                }
            }
            "webrtc_handshake_start" => {
                let Some(i) = self.by_request(rid) else {
                    return Ok(());
                };
                if self.channels[i].stage != Stage::Asked || v["is_initiator"] != true {
                    return Ok(());
                }
                match self.host.offer() {
                    Ok((peer, sdp)) => {
                        let c = &mut self.channels[i];
                        c.peer = Some(peer);
                        c.stage = Stage::Offered;
                        let to = c.device.clone().unwrap_or_default();
                        ws.send(&json!({"type": "webrtc_signal", "signal_type": "offer",
                            "target_device_id": to, "request_id": rid,
                            "offer": {"type": "offer", "sdp": sdp}}))
                            .await?;
                    }
                    Err(e) => {
                        let why = e.to_string();
                        self.drop_source(i, &why, false, swarm, ws, progress).await;
                    }
                }
            }
            "webrtc_answer" => {
                let Some(i) = self.by_request(rid) else {
                    return Ok(());
                };
                let (Some(peer), Some(sdp)) = (self.channels[i].peer, sdp_of(&v["answer"])) else {
                    return Ok(());
                };
                if let Err(e) = self.host.accept_answer(peer, sdp) {
                    let why = format!("its answer: {e}");
                    self.drop_source(i, &why, false, swarm, ws, progress).await;
                }
            }
            "webrtc_ice_candidate" => {
                let peer = self.by_request(rid).and_then(|i| self.channels[i].peer);
                if let (Some(peer), Some(c)) = (peer, candidate_of(&v["candidate"])) {
                    // A `.local` name str0m cannot read: the page's checks still arrive
                    // and pair as peer-reflexive candidates.
                    let _ = self.host.add_remote_candidate(peer, c);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Moves held messages onto their channels while they take them. A source whose
    /// backlog passes `MAX_HELD` is not reading: it is dropped.
    async fn flush(
        &mut self,
        swarm: &mut Swarm,
        ws: &mut Session,
        progress: &mut Progress,
    ) -> Result<()> {
        while let Some((SourceId(i), msg)) = swarm.poll_transmit() {
            if let Some(c) = self.channels.get_mut(i as usize) {
                if c.stage == Stage::Open {
                    c.held.push_back(msg.to_text());
                }
            }
        }
        for i in 0..self.channels.len() {
            let c = &mut self.channels[i];
            let Some(peer) = c.peer.filter(|_| c.stage == Stage::Open) else {
                continue;
            };
            let mut broken = None;
            while let Some(t) = c.held.front() {
                match self.host.send_text(peer, t) {
                    Ok(true) => {
                        c.held.pop_front();
                    }
                    Ok(false) => break, // `Writable` comes; the loop retries then
                    Err(e) => {
                        broken = Some(e.to_string());
                        break;
                    }
                }
            }
            if c.held.len() > MAX_HELD {
                broken = Some("it stopped reading".into());
            }
            if let Some(why) = broken {
                self.drop_source(i, &why, true, swarm, ws, progress).await;
            }
        }
        Ok(())
    }
}

/// The box's channel is `channels[BOX]`.
const BOX: usize = 0;

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
            sources: Vec::new(),
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
    let limits = HostLimits {
        max_peers: 1 + MAX_PEER_SOURCES,
        ..HostLimits::default()
    };
    let (host, events) = Host::bind(&[SocketAddr::new(ip, 0)], identity, limits)
        .map_err(|e| Failure::failed(format!("WebRTC: cannot open a UDP socket on {ip}: {e}")))?;

    let work = async {
        let ws = &mut session;
        let manifest = m.id().to_hex();
        // The box's channel first; other sources are asked for meanwhile and join as
        // their channels open, so the download never waits for them.
        let (box_peer, offer) = host
            .offer()
            .map_err(|e| Failure::failed(format!("WebRTC: {e}")))?;
        ws.send(&json!({"type": "rtc_offer", "session": RTC_SESSION, "sdp": offer}))
            .await?;
        // Who else holds it: P2P on for this device (only such devices may ask others),
        // then the tracker's answer.
        ws.send(&json!({"type": "enable_p2p", "device_id": device, "device_name": name}))
            .await?;
        ws.send(&json!({"type": "query", "manifest": manifest}))
            .await?;
        let mut s = Sources {
            host: &host,
            channels: vec![Channel {
                name: "the box".into(),
                device: None,
                request: None,
                peer: Some(box_peer),
                stage: Stage::Offered,
                open_by: Instant::now() + OPEN_WAIT,
                held: VecDeque::new(),
                chunks: 0,
                linger: None,
            }],
            unanswered: VecDeque::new(),
            label,
            me: device,
        };
        let mut p2p = true;
        let mut progress = Progress::new(label, m.size(), quiet);
        progress.starting_at(start);
        let mut fetched = 0u32;
        loop {
            let now = Instant::now();
            let mut wake = now + Duration::from_secs(1);
            if let Some(t) = swarm.poll_timeout() {
                wake = wake.min(t);
            }
            for c in s.channels.iter().filter(|c| c.stage != Stage::Open) {
                if c.stage != Stage::Gone {
                    wake = wake.min(c.open_by);
                }
                if let Some(t) = c.linger {
                    wake = wake.min(t);
                }
            }
            enum Wake {
                Rtc(Option<(PeerId, PeerEvent)>),
                Ws(Option<Incoming>),
            }
            let rtc = async { Wake::Rtc(events.recv().await.ok()) };
            // Keep reading /ws while downloading: signaling, pings, and the box's
            // `rtc_closed` or the socket's end.
            let next_ws = async { Wake::Ws(ws.next(wake.saturating_duration_since(now)).await) };
            // Chunks verified by this input, and from which source.
            let mut from: Option<usize> = None;
            match smol::future::or(rtc, next_ws).await {
                Wake::Rtc(None) => return Err(Failure::failed("the WebRTC host stopped")),
                Wake::Rtc(Some((id, ev))) => {
                    let Some(i) = s.by_peer(id) else { continue };
                    let source = SourceId(i as u64);
                    match ev {
                        PeerEvent::Open if s.channels[i].stage == Stage::Offered => {
                            let c = &mut s.channels[i];
                            c.stage = Stage::Open;
                            let hello = json!({"t": "hello", "id": device, "name": name,
                                "role": "cli", "max_requests": 0});
                            c.held.push_back(hello.to_string());
                            if let (Some(to), Some(rid)) = (&c.device, &c.request) {
                                let msg = json!({"type": "p2p_connection_established",
                                    "request_id": rid, "peer_device_id": to});
                                ws.send(&msg).await?;
                            }
                            swarm.add_source(source, Instant::now());
                        }
                        PeerEvent::Text(t) if s.channels[i].stage == Stage::Open => {
                            match Message::parse(&t) {
                                Ok(msg) => swarm.handle_message(source, &msg, Instant::now()),
                                Err(reply) => s.channels[i].held.push_back(reply.to_text()),
                            }
                        }
                        PeerEvent::Binary(frame) if s.channels[i].stage == Stage::Open => {
                            swarm.handle_piece(source, &frame, Instant::now());
                            from = Some(i);
                        }
                        PeerEvent::Closed(r) => {
                            let why = format!("the connection {}", r.as_str());
                            s.drop_source(i, &why, i == BOX, swarm, ws, &mut progress)
                                .await;
                        }
                        _ => {}
                    }
                }
                Wake::Ws(Some(Incoming::Closed(why))) => {
                    progress.abandon();
                    return Err(Failure::failed(format!("the box closed /ws: {why}")));
                }
                Wake::Ws(Some(Incoming::Json(v))) => match v["type"].as_str().unwrap_or("") {
                    "query_result" if v["manifest"] == manifest.as_str() && p2p => {
                        s.ask(&v, &manifest, ws).await?;
                    }
                    "error" if matches!(v["ref_type"].as_str(), Some("enable_p2p" | "query")) => {
                        if p2p {
                            progress.abandon();
                            eprintln!(
                                "{label}: no other sources ({}); downloading from the box alone",
                                v["message"].as_str().unwrap_or("refused")
                            );
                        }
                        p2p = false;
                    }
                    _ => s.on_box(&v, swarm, ws, &mut progress).await?,
                },
                Wake::Ws(_) => {}
            }
            let now = Instant::now();
            for i in 0..s.channels.len() {
                let c = &s.channels[i];
                if c.linger.is_some_and(|t| now >= t) {
                    s.close(i, ws).await;
                } else if c.stage != Stage::Open && c.stage != Stage::Gone && now >= c.open_by {
                    let wait = if i == BOX { OPEN_WAIT } else { PEER_OPEN_WAIT };
                    let why = format!("no channel within {} s", wait.as_secs());
                    s.drop_source(i, &why, i == BOX, swarm, ws, &mut progress)
                        .await;
                }
            }
            if swarm.poll_timeout().is_some_and(|t| now >= t) {
                swarm.handle_timeout(now);
            }
            while let Some(ev) = swarm.poll_event() {
                match ev {
                    Event::Verified { index, data } => {
                        file.write_all_at(&data, m.chunk_offset(index))
                            .map_err(io)?;
                        fetched += 1;
                        if let Some(i) = from {
                            s.channels[i].chunks += 1;
                        }
                        progress.update(swarm.progress().bytes_done);
                    }
                    Event::SourceDropped { source, reason } => {
                        // What the swarm still has to say to it (`bad_data`) goes first.
                        s.flush(swarm, ws, &mut progress).await?;
                        let why = match reason {
                            DropReason::BadData => "it sent a chunk that failed its SHA-256",
                            DropReason::Protocol => "it broke the chunk protocol",
                            DropReason::NotFound => "it does not hold the file",
                            DropReason::Stalled => "it stopped sending",
                            DropReason::Refused => "it refused this download",
                        };
                        let i = source.0 as usize;
                        s.drop_telling(i, why, true, true, swarm, ws, &mut progress)
                            .await;
                    }
                    Event::Done => {}
                }
            }
            s.flush(swarm, ws, &mut progress).await?;
            let sources = swarm.progress().sources;
            if sources > 0 {
                let plural = if sources == 1 { "" } else { "s" };
                progress.set_note(&format!("{sources} source{plural}"));
            }
            if swarm.is_done() {
                file.set_len(m.size()).map_err(io)?;
                progress.finish("");
                for i in 0..s.channels.len() {
                    if s.channels[i].stage != Stage::Gone || s.channels[i].linger.is_some() {
                        s.close(i, ws).await;
                    }
                }
                return Ok(Fetched {
                    sources: s
                        .channels
                        .iter()
                        .filter(|c| c.chunks > 0)
                        .map(|c| (c.name.clone(), c.chunks))
                        .collect(),
                    chunks: fetched,
                });
            }
            if s.alive() == 0 {
                progress.abandon();
                return Err(Failure::failed("no source is left"));
            }
        }
    };
    let runner = async {
        host.clone().run().await;
        Err(Failure::failed("the WebRTC host stopped"))
    };
    smol::future::or(work, runner).await
}

#[cfg(test)]
mod tests {
    use super::Fetched;

    #[test]
    fn the_last_line_names_each_source_and_its_chunks() {
        let one = Fetched {
            sources: vec![("the box".into(), 7)],
            chunks: 7,
        };
        assert_eq!(
            one.summary(),
            "7 chunks over a data channel from 1 source (the box)"
        );
        let two = Fetched {
            sources: vec![("the box".into(), 7), ("Anna laptop".into(), 14)],
            chunks: 21,
        };
        assert_eq!(
            two.summary(),
            "21 chunks over data channels from 2 sources (the box: 7, Anna laptop: 14)"
        );
        let none = Fetched {
            sources: Vec::new(),
            chunks: 0,
        };
        assert_eq!(
            none.summary(),
            "0 chunks over a data channel from 0 sources"
        );
    }
}
