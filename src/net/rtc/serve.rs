//! The box as a WebRTC peer: `rtc_offer`/`rtc_candidate`/`rtc_close` from `/ws` sockets
//! (SPEC8 §3), the per-device and total peer limits, and the chunk protocol the box speaks
//! on each `lanvan-chunks` channel as a source of its stored files. Never blocks the loop:
//! chunk reads go to the disk thread, and a peer's channel is written only while it has room.

use super::{Host, HostError, HostLimits, PeerId};
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
    sessions: RefCell<HashMap<PeerId, Session>>,
}

struct Session {
    conn: ConnId,
    name: String,
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
/// box stops.
pub async fn serve(app: Rc<App>, events: Receiver<(PeerId, PeerEvent)>) {
    let Some(peers) = &app.rtc else { return };
    let runner = peers.host.clone().run();
    let handle = async {
        while let Ok((id, event)) = events.recv().await {
            on_event(&app, id, event);
        }
    };
    smol::future::or(runner, handle).await;
}

fn on_event(app: &App, id: PeerId, event: PeerEvent) {
    let Some(peers) = &app.rtc else { return };
    match event {
        PeerEvent::Open => {
            let hello = json!({"t": "hello", "id": "box", "name": app.cfg.mdns.hostname,
                "role": "box", "max_requests": MAX_REQUESTS});
            let _ = peers.host.send_text(id, &hello.to_string());
        }
        PeerEvent::Text(text) => on_text(app, id, &text),
        PeerEvent::Binary(_) => {
            let e = json!({"t": "error", "code": "bad_request",
                "message": "the box takes no chunk pieces"});
            let _ = peers.host.send_text(id, &e.to_string());
        }
        PeerEvent::Closed(reason) => {
            if let Some(s) = peers.sessions.borrow_mut().remove(&id) {
                let msg =
                    json!({"type": "rtc_closed", "session": s.name, "reason": reason.as_str()});
                app.send_to(s.conn, msg.to_string().into());
            }
        }
        PeerEvent::Connected | PeerEvent::Writable => {}
    }
}

fn on_text(app: &App, id: PeerId, text: &str) {
    let Some(peers) = &app.rtc else { return };
    let msg: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let reply = match msg.get("t").and_then(Value::as_str) {
        Some("hello") | Some("announce") | Some("have") | Some("cancel") => return,
        Some("query") | Some("get_manifest") | Some("request_chunk") => json!({
            "t": "error", "code": "not_found", "message": "the box holds no such manifest",
            "manifest": msg.get("manifest"),
        }),
        _ => json!({"t": "error", "code": "bad_request", "message": "unknown message"}),
    };
    let _ = peers.host.send_text(id, &reply.to_string());
}
