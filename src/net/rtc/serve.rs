//! The box as a WebRTC peer: `rtc_offer`/`rtc_candidate`/`rtc_close` from `/ws` sockets
//! (SPEC8 §3), the per-device and total peer limits, and the chunk protocol the box speaks
//! on each `lanvan-chunks` channel as a source of its stored files. Never blocks the loop:
//! chunk reads go to the disk thread, and a peer's channel is written only while it has room.

use super::{Host, HostError, HostLimits, PeerId};
use crate::core::chunks::seeder::{Handled, Output};
use crate::core::chunks::wire::PIECE_HEADER;
use crate::core::chunks::{Message, Seeder};
use crate::core::hub::ConnId;
use crate::core::peer::{CloseReason, Identity, PeerError, PeerEvent, PeerLimits};
use crate::net::server::App;
use serde_json::{json, Value};
use smol::channel::Receiver;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

/// Requests one peer may have outstanding at the box (`hello.max_requests`).
pub const MAX_REQUESTS: usize = 16;

/// The box's WebRTC side: its host and which `/ws` socket and session each peer belongs to.
pub struct BoxPeers {
    pub host: Rc<Host>,
    per_device: usize,
    send_buffer: usize,
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
                        seeder: Seeder::new(MAX_REQUESTS),
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

/// Serves the box's peers: runs the host and answers what each channel says, until the
/// box stops. Events are taken one at a time, so one peer's chunk read finishes before the
/// next event; while it waits, the host's bounded event queue holds the rest.
pub async fn serve(app: Rc<App>, events: Receiver<(PeerId, PeerEvent)>) {
    let Some(peers) = &app.rtc else { return };
    let runner = peers.host.clone().run();
    let handle = async {
        while let Ok((id, event)) = events.recv().await {
            on_event(&app, id, event).await;
        }
    };
    smol::future::or(runner, handle).await;
}

async fn on_event(app: &App, id: PeerId, event: PeerEvent) {
    let Some(peers) = &app.rtc else { return };
    match event {
        PeerEvent::Open => {
            let hello = json!({"t": "hello", "id": "box", "name": app.cfg.mdns.hostname,
                "role": "box", "max_requests": MAX_REQUESTS});
            let _ = peers.host.send_text(id, &hello.to_string());
        }
        PeerEvent::Text(text) => on_text(app, peers, id, &text).await,
        PeerEvent::Binary(_) => {
            let e = json!({"t": "error", "code": "bad_request",
                "message": "the box takes no chunk pieces"});
            let _ = peers.host.send_text(id, &e.to_string());
        }
        PeerEvent::Writable => pump(app, peers, id).await,
        PeerEvent::Closed(reason) => {
            if let Some(s) = peers.sessions.borrow_mut().remove(&id) {
                let msg =
                    json!({"type": "rtc_closed", "session": s.name, "reason": reason.as_str()});
                app.send_to(s.conn, msg.to_string().into());
            }
        }
        PeerEvent::Connected => {}
    }
}

async fn on_text(app: &App, peers: &BoxPeers, id: PeerId, text: &str) {
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
        Handled::Consumed => pump(app, peers, id).await,
        Handled::Flooded => {
            log::info!("box peer {id} asks without reading the answers: closing it");
            peers.host.close(id, CloseReason::Closed);
        }
        // hello, announce, have, manifest, error: the box downloads nothing.
        Handled::NotMine => {}
    }
}

/// Sends what the peer's seeder has while its channel has room for a whole piece; reads
/// chunks from the store (off the loop) as the seeder asks.
async fn pump(app: &App, peers: &BoxPeers, id: PeerId) {
    let piece = PIECE_HEADER + crate::core::chunks::wire::PIECE_PAYLOAD;
    loop {
        let next = {
            let mut sessions = peers.sessions.borrow_mut();
            let Some(s) = sessions.get_mut(&id) else {
                return;
            };
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
            match s.seeder.poll_output() {
                None => return,
                Some(Output::Text(m)) => {
                    let t = m.to_text();
                    if let Ok(false) = peers.host.send_text(id, &t) {
                        s.held = Some(Held::Text(t));
                    }
                    continue;
                }
                Some(Output::Piece(p)) => {
                    if let Ok(false) = peers.host.send_binary(id, &p) {
                        s.held = Some(Held::Piece(p));
                    }
                    continue;
                }
                Some(Output::Read(r)) => r,
            }
        };
        let bytes = app.store.read_chunk(&next.manifest, next.index).await.ok();
        let mut sessions = peers.sessions.borrow_mut();
        let Some(s) = sessions.get_mut(&id) else {
            return;
        };
        s.seeder.chunk_read(&next, bytes);
    }
}
