//! The box as a WebRTC peer: `rtc_offer`/`rtc_candidate`/`rtc_close` from `/ws` sockets
//! (SPEC8 §3), the per-device and total peer limits, and the chunk protocol the box speaks
//! on each `lanvan-chunks` channel as a source of its stored files. Never blocks the loop:
//! chunk reads run off it (several at once, bounded per peer and in all, so the next chunks
//! are read while one is sent), and a peer's channel is written only while it has room.

use super::{Host, HostError, HostLimits, PeerId};
use crate::core::chunks::seeder::{ChunkRead, Handled, Output};
use crate::core::chunks::wire::PIECE_HEADER;
use crate::core::chunks::{Message, Seeder};
use crate::core::hub::ConnId;
use crate::core::peer::{CloseReason, Identity, PeerError, PeerEvent, PeerLimits};
use crate::net::server::App;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::{json, Value};
use smol::channel::Receiver;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

/// Requests one peer may have outstanding at the box (`hello.max_requests`).
pub const MAX_REQUESTS: usize = 16;

/// The box's WebRTC side: its host and which `/ws` socket and session each peer belongs to.
pub struct BoxPeers {
    pub host: Rc<Host>,
    per_device: usize,
    send_buffer: usize,
    /// Chunk reads one peer may have asked for before their chunks are sent.
    read_ahead: usize,
    /// The same over all peers (`p2p.box_reads_in_flight`).
    reads_budget: usize,
    sessions: RefCell<HashMap<PeerId, Session>>,
}

struct Session {
    conn: ConnId,
    name: String,
    seeder: Seeder,
    /// A message the channel refused (its buffer was full); sent first once it has room.
    held: Option<Held>,
}

enum Held {
    Text(String),
    Piece(Vec<u8>),
}

impl BoxPeers {
    /// Opens the box's UDP socket(s): on the listen address when it is a specific one,
    /// else on each LAN IPv4 address. None (with the reason logged) when P2P is off or no
    /// socket can be had; `rtc_offer` is then answered `rtc_unavailable`.
    pub fn start(
        cfg: &crate::config::Config,
        listen: SocketAddr,
    ) -> Option<(BoxPeers, Receiver<(PeerId, PeerEvent)>)> {
        let p = &cfg.p2p;
        if p.mode == crate::config::P2pMode::Off {
            return None;
        }
        let ips: Vec<IpAddr> = if listen.ip().is_unspecified() {
            super::lan_ipv4s()
        } else {
            vec![listen.ip()]
        };
        if ips.is_empty() {
            log::warn!("the box is no WebRTC peer: it has no LAN IPv4 address");
            return None;
        }
        let started = std::time::Instant::now();
        let identity = match Identity::new() {
            Ok(i) => i,
            Err(e) => {
                log::warn!("the box is no WebRTC peer: {e}");
                return None;
            }
        };
        let limits = HostLimits {
            max_peers: p.max_box_peers,
            batch: p.rtc_batch,
            events: 256,
            peer: PeerLimits {
                send_buffer: p.box_peer_send_buffer as usize,
                idle_timeout: Duration::from_secs(p.box_peer_timeout_secs),
            },
        };
        let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect();
        match Host::bind(&addrs, identity, limits) {
            Ok((host, events)) => {
                log::info!(
                    "WebRTC peer on udp {} (certificate and crypto warm-up: {} ms)",
                    host.locals()
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    started.elapsed().as_millis()
                );
                Some((
                    BoxPeers {
                        host,
                        per_device: p.max_box_peers_per_device,
                        send_buffer: p.box_peer_send_buffer as usize,
                        read_ahead: p.box_peer_read_ahead,
                        reads_budget: p.box_reads_in_flight,
                        sessions: RefCell::default(),
                    },
                    events,
                ))
            }
            Err(e) => {
                log::warn!("the box is no WebRTC peer: cannot bind udp: {e}");
                None
            }
        }
    }

    /// Box peers now.
    pub fn count(&self) -> usize {
        self.host.peer_count()
    }
}

/// A refusal sent back as the usual error frame.
fn error(code: &str, message: &str, ref_type: &str) -> Rc<str> {
    json!({"type": "error", "code": code, "message": message, "ref_type": ref_type})
        .to_string()
        .into()
}

impl App {
    /// Offers a `/ws` text frame to the box's WebRTC side; false if it is not an `rtc_*`
    /// message.
    pub fn rtc_text(&self, conn: ConnId, text: &str) -> bool {
        // Cheap test first: most frames are not ours and need no parse here.
        if !text.contains("\"rtc_") {
            return false;
        }
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            return false;
        };
        let Some(ty) = msg.get("type").and_then(Value::as_str) else {
            return false;
        };
        if !matches!(ty, "rtc_offer" | "rtc_candidate" | "rtc_close") {
            return false;
        }
        self.hub.borrow_mut().heard_from(self.now(), conn);
        let session = msg.get("session").and_then(Value::as_str).unwrap_or("");
        if session.is_empty() || session.chars().count() > 64 {
            self.send_to(
                conn,
                error(
                    "bad_message",
                    "`session` must be a string of 1 to 64 characters",
                    ty,
                ),
            );
            return true;
        }
        let Some(peers) = &self.rtc else {
            if ty == "rtc_offer" {
                self.send_to(
                    conn,
                    error(
                        "rtc_unavailable",
                        "the box is not a WebRTC peer (P2P is off or it has no UDP socket)",
                        ty,
                    ),
                );
            }
            return true;
        };
        let found = peers
            .sessions
            .borrow()
            .iter()
            .find(|(_, s)| s.conn == conn && s.name == session)
            .map(|(id, _)| *id);
        match ty {
            "rtc_offer" => self.rtc_offer(peers, conn, session, found, &msg),
            "rtc_candidate" => {
                if let Some(id) = found {
                    let line = match msg.get("candidate") {
                        Some(Value::String(s)) => Some(s.as_str()),
                        Some(Value::Object(o)) => o.get("candidate").and_then(Value::as_str),
                        _ => None,
                    };
                    // An empty or null candidate ends the trickle; a `.local` one cannot be
                    // read by str0m, and the browser's checks reach the box anyway.
                    if let Some(line) = line.filter(|l| !l.is_empty()) {
                        if let Err(e) = peers.host.add_remote_candidate(id, line) {
                            log::debug!("rtc candidate ignored: {e}");
                        }
                    }
                }
            }
            _ => {
                if let Some(id) = found {
                    peers.host.close(id, CloseReason::Closed);
                }
            }
        }
        true
    }

    fn rtc_offer(
        &self,
        peers: &BoxPeers,
        conn: ConnId,
        session: &str,
        found: Option<PeerId>,
        msg: &Value,
    ) {
        let Some(sdp) = msg.get("sdp").and_then(Value::as_str) else {
            self.send_to(
                conn,
                error("bad_sdp", "`sdp` must be a string", "rtc_offer"),
            );
            return;
        };
        if sdp.len() as u64 > self.cfg.p2p.max_sdp_bytes {
            self.send_to(
                conn,
                error(
                    "bad_sdp",
                    "the offer is larger than p2p.max_sdp_bytes",
                    "rtc_offer",
                ),
            );
            return;
        }
        // A new offer for a session that exists replaces it.
        if let Some(old) = found {
            peers.sessions.borrow_mut().remove(&old);
            peers.host.close(old, CloseReason::Closed);
        }
        let mine = peers
            .sessions
            .borrow()
            .values()
            .filter(|s| s.conn == conn)
            .count();
        if mine >= peers.per_device {
            let m = format!("a device may hold {} peers with the box", peers.per_device);
            self.send_to(conn, error("rtc_busy", &m, "rtc_offer"));
            return;
        }
        let reply = match peers.host.answer(sdp) {
            Ok((id, answer)) => {
                peers.sessions.borrow_mut().insert(
                    id,
                    Session {
                        conn,
                        name: session.to_string(),
                        seeder: Seeder::new(MAX_REQUESTS).with_read_ahead(peers.read_ahead),
                        held: None,
                    },
                );
                json!({"type": "rtc_answer", "session": session, "sdp": answer})
                    .to_string()
                    .into()
            }
            Err(HostError::Busy) => error(
                "rtc_busy",
                "the box holds as many peers as it may",
                "rtc_offer",
            ),
            Err(HostError::Peer(PeerError::BadSdp(e))) => error(
                "bad_sdp",
                &format!("the offer cannot be read: {e}"),
                "rtc_offer",
            ),
            Err(e) => error("bad_sdp", &e.to_string(), "rtc_offer"),
        };
        self.send_to(conn, reply);
    }

    /// A `/ws` socket went: its box peers go with it.
    pub fn rtc_disconnect(&self, conn: ConnId) {
        let Some(peers) = &self.rtc else { return };
        let ids: Vec<PeerId> = peers
            .sessions
            .borrow()
            .iter()
            .filter(|(_, s)| s.conn == conn)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            peers.host.close(id, CloseReason::Closed);
        }
    }

    /// What `/api/status` says of box peers.
    pub fn rtc_peer_count(&self) -> usize {
        self.rtc.as_ref().map_or(0, BoxPeers::count)
    }
}

/// A chunk read that came back: whose, which, and its bytes (None: it failed).
type ReadDone = (PeerId, ChunkRead, Option<Vec<u8>>);

/// The chunk reads running off the loop, and how many each peer has running (a peer that
/// closed keeps counting against the budget until its reads are back).
#[derive(Default)]
struct Reads {
    running: FuturesUnordered<Pin<Box<dyn Future<Output = ReadDone>>>>,
    per_peer: HashMap<PeerId, usize>,
}

/// Serves the box's peers: runs the host and answers what each channel says, until the
/// box stops. Chunk reads run beside the events: when one comes back its peer (and any peer
/// that waited for the reads budget) is served again.
pub async fn serve(app: Rc<App>, events: Receiver<(PeerId, PeerEvent)>) {
    let Some(peers) = &app.rtc else { return };
    let runner = peers.host.clone().run();
    let handle = async {
        let mut reads = Reads::default();
        enum Next {
            Event(Option<(PeerId, PeerEvent)>),
            Read(ReadDone),
        }
        loop {
            let running = &mut reads.running;
            // Either may be ready; race picks fairly so neither starves the other.
            let next = smol::future::race(async { Next::Event(events.recv().await.ok()) }, async {
                match running.next().await {
                    Some(done) => Next::Read(done),
                    None => std::future::pending().await,
                }
            })
            .await;
            match next {
                Next::Event(None) => return,
                Next::Event(Some((id, event))) => on_event(&app, id, event, &mut reads).await,
                Next::Read((id, read, bytes)) => {
                    if let Some(n) = reads.per_peer.get_mut(&id) {
                        *n -= 1;
                        if *n == 0 {
                            reads.per_peer.remove(&id);
                        }
                    }
                    if let Some(s) = peers.sessions.borrow_mut().get_mut(&id) {
                        s.seeder.chunk_read(&read, bytes);
                    }
                    pump_all(&app, peers, id, &mut reads);
                }
            }
        }
    };
    smol::future::or(runner, handle).await;
}

async fn on_event(app: &Rc<App>, id: PeerId, event: PeerEvent, reads: &mut Reads) {
    let Some(peers) = &app.rtc else { return };
    match event {
        PeerEvent::Open => {
            let hello = json!({"t": "hello", "id": "box", "name": app.cfg.mdns.hostname,
                "role": "box", "max_requests": MAX_REQUESTS});
            let _ = peers.host.send_text(id, &hello.to_string());
        }
        PeerEvent::Text(text) => on_text(app, peers, id, &text, reads).await,
        PeerEvent::Binary(_) => {
            let e = json!({"t": "error", "code": "bad_request",
                "message": "the box takes no chunk pieces"});
            let _ = peers.host.send_text(id, &e.to_string());
        }
        PeerEvent::Writable => pump_all(app, peers, id, reads),
        PeerEvent::Closed(reason) => {
            let gone = peers.sessions.borrow_mut().remove(&id);
            if let Some(s) = gone {
                let msg =
                    json!({"type": "rtc_closed", "session": s.name, "reason": reason.as_str()});
                app.send_to(s.conn, msg.to_string().into());
            }
        }
        PeerEvent::Connected => {}
    }
}

async fn on_text(app: &Rc<App>, peers: &BoxPeers, id: PeerId, text: &str, reads: &mut Reads) {
    let msg = match Message::parse(text) {
        Ok(m) => m,
        Err(reply) => {
            let _ = peers.host.send_text(id, &reply.to_text());
            return;
        }
    };
    // The manifest the message names comes into memory (from disk if need be), so the
    // seeder's synchronous lookups find it.
    app.store.prepare_for(&msg).await;
    let handled = {
        let mut sessions = peers.sessions.borrow_mut();
        let Some(s) = sessions.get_mut(&id) else {
            return;
        };
        s.seeder.handle_message(&msg, &app.store)
    };
    match handled {
        Handled::Consumed => pump(app, peers, id, reads),
        Handled::Flooded => {
            log::info!("box peer {id} asks without reading the answers: closing it");
            peers.host.close(id, CloseReason::Closed);
        }
        // hello, announce, have, manifest, error: the box downloads nothing.
        Handled::NotMine => {}
    }
}

/// Serves `first`, then every other peer: a chunk sent or a read back may have freed the
/// reads budget another peer waits for.
fn pump_all(app: &Rc<App>, peers: &BoxPeers, first: PeerId, reads: &mut Reads) {
    pump(app, peers, first, reads);
    let others: Vec<PeerId> = peers
        .sessions
        .borrow()
        .keys()
        .copied()
        .filter(|id| *id != first)
        .collect();
    for id in others {
        pump(app, peers, id, reads);
    }
}

/// Chunks read or being read and not yet being sent, over every peer (closed ones too,
/// until their reads are back): what `p2p.box_reads_in_flight` bounds.
fn reads_held(peers: &BoxPeers, reads: &Reads) -> usize {
    let sessions = peers.sessions.borrow();
    let live: usize = sessions.values().map(|s| s.seeder.reads_held()).sum();
    let orphans: usize = reads
        .per_peer
        .iter()
        .filter(|(id, _)| !sessions.contains_key(id))
        .map(|(_, n)| *n)
        .sum();
    live + orphans
}

/// Starts the reads the peer's seeder wants, sends what it has while its channel has room
/// for a whole piece, then reads again for the room a chunk moving to sending made.
fn pump(app: &Rc<App>, peers: &BoxPeers, id: PeerId, reads: &mut Reads) {
    start_reads(app, peers, id, reads);
    send(peers, id);
    start_reads(app, peers, id, reads);
}

/// Asks for the reads the peer's seeder wants, within its read-ahead and the box's budget.
fn start_reads(app: &Rc<App>, peers: &BoxPeers, id: PeerId, reads: &mut Reads) {
    while reads_held(peers, reads) < peers.reads_budget {
        let next = {
            let mut sessions = peers.sessions.borrow_mut();
            let Some(s) = sessions.get_mut(&id) else {
                return;
            };
            s.seeder.poll_read()
        };
        let Some(read) = next else { break };
        *reads.per_peer.entry(id).or_default() += 1;
        let app = app.clone();
        reads.running.push(Box::pin(async move {
            let bytes = app.store.read_chunk(&read.manifest, read.index).await.ok();
            (id, read, bytes)
        }));
    }
}

/// Sends the peer's texts and pieces while its channel has room for a whole piece.
fn send(peers: &BoxPeers, id: PeerId) {
    let piece = PIECE_HEADER + crate::core::chunks::wire::PIECE_PAYLOAD;
    let mut sessions = peers.sessions.borrow_mut();
    let Some(s) = sessions.get_mut(&id) else {
        return;
    };
    loop {
        if let Some(held) = s.held.take() {
            let sent = match &held {
                Held::Text(t) => peers.host.send_text(id, t),
                Held::Piece(p) => peers.host.send_binary(id, p),
            };
            match sent {
                Ok(true) => continue,
                Ok(false) => {
                    s.held = Some(held);
                    return;
                }
                Err(_) => return,
            }
        }
        if peers.host.buffered(id) + piece > peers.send_buffer {
            return;
        }
        match s.seeder.poll_send() {
            None => return,
            Some(Output::Text(m)) => {
                let t = m.to_text();
                if let Ok(false) = peers.host.send_text(id, &t) {
                    s.held = Some(Held::Text(t));
                }
            }
            Some(Output::Piece(p)) => {
                if let Ok(false) = peers.host.send_binary(id, &p) {
                    s.held = Some(Held::Piece(p));
                }
            }
            // poll_send never asks for a read.
            Some(Output::Read(_)) => return,
        }
    }
}
