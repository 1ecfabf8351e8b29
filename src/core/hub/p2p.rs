//! P2P as the hub sees it: opt-in, request/accept/decline, the signaling relay (the older
//! `target` form and the request-scoped `webrtc_signal`), established sessions, and the
//! signaling timeout. The box only introduces two browsers; it never sees their data, and
//! it forwards a signal only between the two devices of a live, accepted request.

use super::{
    duration_ms, frame, optional_str, required_str, send, ConnId, Hub, Now, Output, Reject,
};
use crate::config::{P2pConfig, P2pMode, RelayConfig};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The P2P settings the hub enforces and tells clients about (from `[p2p]` in the config).
#[derive(Clone, Debug)]
pub struct P2pLimits {
    pub mode: P2pMode,
    /// The STUN responder's UDP port, None when it is not running; told in `welcome`.
    pub stun_port: Option<u16>,
    /// The relay's chunk size, told in `welcome` so a P2P sender cuts the file the same way
    /// and a fallback to the relay continues at a chunk boundary.
    pub chunk_size: u64,
    /// How long a request waits for an answer, and an accepted request for its next
    /// signal, before it fails.
    pub signal_timeout: Duration,
    /// Requests and sessions (in any state) one device takes part in at once.
    pub max_sessions_per_device: usize,
    /// Unanswered requests one device may have out at once.
    pub max_pending_requests: usize,
    /// `p2p_request`s one device may send per minute; 0 disables the limit.
    pub requests_per_minute: u32,
    /// Largest SDP forwarded (its JSON text), in bytes.
    pub max_sdp_bytes: usize,
    /// Largest ICE candidate forwarded (its JSON text), in bytes.
    pub max_candidate_bytes: usize,
    /// Families on `/signal` at once.
    pub max_families: usize,
    /// Devices in one family at once.
    pub max_family_devices: usize,
    /// Manifests one device may `announce` (chunk tracker).
    pub max_announced: usize,
    /// Whether the box itself takes `rtc_offer` (it is a WebRTC peer); told in `welcome`.
    pub box_peer: bool,
}

impl P2pLimits {
    /// The limits from `[p2p]`, with the STUN port actually bound and the relay's chunk size.
    pub fn new(cfg: &P2pConfig, stun_port: Option<u16>, chunk_size: u64) -> Self {
        P2pLimits {
            mode: cfg.mode,
            stun_port,
            chunk_size,
            signal_timeout: Duration::from_secs(cfg.signal_timeout_secs),
            max_sessions_per_device: cfg.max_sessions_per_device,
            max_pending_requests: cfg.max_pending_requests,
            requests_per_minute: cfg.requests_per_minute,
            max_sdp_bytes: cfg.max_sdp_bytes as usize,
            max_candidate_bytes: cfg.max_candidate_bytes as usize,
            max_families: cfg.max_families,
            max_family_devices: cfg.max_family_devices,
            max_announced: cfg.max_announced,
            box_peer: false,
        }
    }
}

impl Default for P2pLimits {
    /// The config's defaults, with no STUN and the relay's default chunk.
    fn default() -> Self {
        let chunk_size = RelayConfig::default().chunk_size;
        P2pLimits::new(&P2pConfig::default(), None, chunk_size)
    }
}

/// `p2p_request`s are counted per device in fixed windows of this length.
const REQUEST_WINDOW: Duration = Duration::from_secs(60);

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    /// Sent to `to`, waiting for accept or decline.
    Asked,
    /// Accepted: the two browsers are signaling.
    Accepted,
    /// A data channel is open between them; no deadline any more.
    Established,
}

/// One request and, once accepted, the signaling session it scopes. At most one exists
/// for a pair of devices: a new request between them replaces the old one.
#[derive(Debug)]
struct Session {
    id: String,
    /// The device that asked (the WebRTC initiator).
    from: String,
    /// The device that was asked.
    to: String,
    stage: Stage,
    /// When it fails unless something happens; None once established.
    deadline: Option<Instant>,
}

impl Session {
    fn pairs(&self, a: &str, b: &str) -> bool {
        (self.from == a && self.to == b) || (self.from == b && self.to == a)
    }

    fn involves(&self, device: &str) -> bool {
        self.from == device || self.to == device
    }

    fn other(&self, device: &str) -> &str {
        if self.from == device {
            &self.to
        } else {
            &self.from
        }
    }
}

/// P2P opt-in, requests and sessions. Every map is keyed by devices the hub holds (or
/// sessions between them, at most `max_sessions_per_device` each), so all are bounded.
#[derive(Debug, Default)]
pub(super) struct P2p {
    /// Ids of devices that sent `enable_p2p`: a subset of `Hub::devices`.
    pub(super) enabled: BTreeSet<String>,
    /// Why the box refuses P2P right now (a phone's low battery), if it does.
    pub(super) refusal: Option<String>,
    /// Requests and sessions by request id.
    sessions: BTreeMap<String, Session>,
    next_id: u64,
    /// Requests each device sent in the current window: (window start, count).
    asked: HashMap<String, (Instant, u32)>,
}

impl P2p {
    pub(super) fn is_enabled(&self, device_id: &str) -> bool {
        self.enabled.contains(device_id)
    }

    /// Earliest deadline of a request or session.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.sessions.values().filter_map(|s| s.deadline).min()
    }

    pub(super) fn session_count(&self) -> usize {
        self.sessions.len()
    }

    fn sessions_of(&self, device: &str) -> usize {
        self.sessions
            .values()
            .filter(|s| s.involves(device))
            .count()
    }

    fn pair(&self, a: &str, b: &str) -> Option<&Session> {
        self.sessions.values().find(|s| s.pairs(a, b))
    }
}

/// How a session ended, for the frames sent to the devices still in it.
#[derive(Clone, Copy)]
pub(super) enum Ending {
    /// The other device's socket closed, was replaced or timed out.
    PeerLeft,
    /// The other device sent `disable_p2p`, or the box stopped allowing P2P.
    PeerDisabled,
    /// A new request between the same two devices took its place.
    Replaced,
    /// One device sent `p2p_close`.
    Closed,
}

impl Ending {
    fn reason(self) -> &'static str {
        match self {
            Ending::PeerLeft => "peer_left",
            Ending::PeerDisabled => "peer_disabled",
            Ending::Replaced => "replaced",
            Ending::Closed => "closed",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Ending::PeerLeft => "the other device disconnected",
            Ending::PeerDisabled => "the other device turned P2P off",
            Ending::Replaced => "a new P2P request between the same devices replaced this one",
            Ending::Closed => "the P2P connection was closed",
        }
    }
}

/// Which of the three signals a message carries, and the field that holds it.
#[derive(Clone, Copy)]
enum Signal {
    Offer,
    Answer,
    Candidate,
}

impl Signal {
    fn field(self) -> &'static str {
        match self {
            Signal::Offer => "offer",
            Signal::Answer => "answer",
            Signal::Candidate => "candidate",
        }
    }
}

/// `purpose` and `manifest` of a `p2p_request` (SPEC8 §2), checked: a short purpose and a
/// manifest hash of 64 hex digits.
fn swarm_fields(msg: &Map<String, Value>) -> Result<Map<String, Value>, Reject> {
    let mut fields = Map::new();
    if let Some(purpose) = optional_str(msg, "purpose")? {
        if purpose.is_empty() || purpose.len() > 32 {
            return Err(Reject::new(
                "bad_message",
                "`purpose` is 1 to 32 characters",
            ));
        }
        fields.insert("purpose".into(), purpose.into());
    }
    if let Some(manifest) = optional_str(msg, "manifest")? {
        if crate::core::hash::Digest::from_hex(manifest).is_none() {
            return Err(Reject::new(
                "bad_message",
                "`manifest` is a manifest hash of 64 hexadecimal digits",
            ));
        }
        fields.insert("manifest".into(), manifest.into());
    }
    Ok(fields)
}

// Messages of the seed protocol's P2P part, one handler per message type.
impl Hub {
    /// `p2p_request` `{from, to}`: asks `to` for a P2P connection. `to` gets
    /// `p2p_request_received`; the sender gets `p2p_request_sent` with the request id.
    pub(super) fn on_p2p_request(
        &mut self,
        now: Now,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        self.p2p_allowed()?;
        let me = self.own_id(conn, msg, "from")?;
        let to = required_str(msg, "to")?.to_owned();
        let swarm = swarm_fields(msg)?;
        if !self.p2p.is_enabled(&me) {
            return Err(Reject::new(
                "p2p_not_enabled",
                "send enable_p2p before asking another device",
            ));
        }
        if to == me {
            return Err(Reject::new("bad_request", "a device cannot ask itself"));
        }
        if !self.p2p.is_enabled(&to) {
            return Err(Reject::new(
                "peer_unavailable",
                format!("device {to} is not connected with P2P enabled"),
            ));
        }
        let limits = &self.limits.p2p;
        let per_minute = limits.requests_per_minute;
        let window = match self.p2p.asked.get(&me) {
            Some(&(start, n)) if now.at.saturating_duration_since(start) < REQUEST_WINDOW => {
                (start, n)
            }
            _ => (now.at, 0),
        };
        if per_minute > 0 && window.1 >= per_minute {
            return Err(Reject::new(
                "too_many_requests",
                format!("at most {per_minute} P2P requests per minute"),
            ));
        }
        let pending = self
            .p2p
            .sessions
            .values()
            .filter(|s| s.from == me && s.stage == Stage::Asked && s.to != to)
            .count();
        if pending >= limits.max_pending_requests {
            return Err(Reject::new(
                "too_many_requests",
                format!("{pending} P2P requests are waiting for an answer; wait for one to end"),
            ));
        }
        let replaced = self.p2p.pair(&me, &to).map(|s| s.id.clone());
        let max = limits.max_sessions_per_device;
        for device in [&me, &to] {
            let busy = self.p2p.sessions_of(device) - usize::from(replaced.is_some());
            if busy >= max {
                return Err(Reject::new(
                    "too_many_sessions",
                    format!("device {device} is already in {max} P2P sessions"),
                ));
            }
        }
        self.p2p.asked.insert(me.clone(), (window.0, window.1 + 1));
        if let Some(old) = replaced {
            self.end_session(&old, None, Ending::Replaced, out);
        }
        self.p2p.next_id += 1;
        let id = format!("p2p-{}", self.p2p.next_id);
        let timeout = self.limits.p2p.signal_timeout;
        self.p2p.sessions.insert(
            id.clone(),
            Session {
                id: id.clone(),
                from: me.clone(),
                to: to.clone(),
                stage: Stage::Asked,
                deadline: Some(now.at + timeout),
            },
        );
        let from_name = &self.devices[&me].name;
        let mut received = json!({"type": "p2p_request_received", "from": me,
                                  "from_name": from_name, "request_id": id});
        // A chunk-swarm request (`purpose`, `manifest`) is forwarded unchanged.
        received.as_object_mut().unwrap().extend(swarm);
        self.send_to_device(&to, frame(received), out);
        send(
            out,
            conn,
            frame(
                json!({"type": "p2p_request_sent", "to": to, "request_id": id,
                         "timeout_ms": duration_ms(timeout)}),
            ),
        );
        Ok(())
    }

    /// `p2p_accept` `{from: A, to: B}` from B: both get their acceptance and
    /// `webrtc_handshake_start` (A initiates).
    pub(super) fn on_p2p_accept(
        &mut self,
        now: Now,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        self.p2p_allowed()?;
        let (id, from, me) = self.asked_of(conn, msg)?;
        let timeout = self.limits.p2p.signal_timeout;
        let session = self.p2p.sessions.get_mut(&id).expect("found above");
        session.stage = Stage::Accepted;
        session.deadline = Some(now.at + timeout);
        self.send_to_device(
            &from,
            frame(
                json!({"type": "p2p_connection_accepted", "to": me, "start_webrtc": true,
                         "request_id": id}),
            ),
            out,
        );
        send(
            out,
            conn,
            frame(
                json!({"type": "p2p_request_accepted", "from": from, "start_webrtc": true,
                         "request_id": id}),
            ),
        );
        for (device, peer, initiator) in [(&from, &me, true), (&me, &from, false)] {
            self.send_to_device(
                device,
                frame(
                    json!({"type": "webrtc_handshake_start", "is_initiator": initiator,
                             "peer_device_id": peer, "request_id": id}),
                ),
                out,
            );
        }
        Ok(())
    }

    /// `p2p_decline` `{from: A, to: B}` from B: A gets `p2p_request_declined`; the request
    /// is forgotten.
    pub(super) fn on_p2p_decline(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        let (id, from, me) = self.asked_of(conn, msg)?;
        self.p2p.sessions.remove(&id);
        self.send_to_device(
            &from,
            frame(json!({"type": "p2p_request_declined", "from": me, "request_id": id})),
            out,
        );
        Ok(())
    }

    /// `webrtc_signal` `{signal_type, target_device_id, request_id, offer|answer|candidate}`:
    /// forwarded to the target as `webrtc_offer`, `webrtc_answer` or `webrtc_ice_candidate`
    /// if the request pairs the two devices and was accepted.
    pub(super) fn on_webrtc_signal(
        &mut self,
        now: Now,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        let (signal, forwarded_type) = match required_str(msg, "signal_type")? {
            "offer" => (Signal::Offer, "webrtc_offer"),
            "answer" => (Signal::Answer, "webrtc_answer"),
            "ice_candidate" => (Signal::Candidate, "webrtc_ice_candidate"),
            other => {
                return Err(Reject::new(
                    "bad_signal",
                    format!("`signal_type` is `{other}`; use offer, answer or ice_candidate"),
                ))
            }
        };
        let target = required_str(msg, "target_device_id")?;
        let request = required_str(msg, "request_id")?;
        let payload = self.signal_payload(msg, signal)?;
        let me = self.conns[&conn].device_id.clone();
        let id = self.live_session(now, &me, target, Some(request))?;
        let mut fwd = Map::new();
        fwd.insert("type".into(), json!(forwarded_type));
        fwd.insert("from_device_id".into(), json!(me));
        fwd.insert("request_id".into(), json!(id));
        fwd.insert(signal.field().into(), payload.clone());
        let target = target.to_owned();
        self.send_to_device(&target, frame(Value::Object(fwd)), out);
        Ok(())
    }

    /// The older form, `webrtc_offer` / `webrtc_answer` / `ice_candidate` with `target`:
    /// forwarded as is (with `from` set by the box) between the two devices of an accepted
    /// request. A `request_id`, if given, must name that request.
    pub(super) fn on_target_signal(
        &mut self,
        now: Now,
        conn: ConnId,
        ty: &str,
        msg: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        let signal = match ty {
            "webrtc_offer" => Signal::Offer,
            "webrtc_answer" => Signal::Answer,
            _ => Signal::Candidate,
        };
        let me = self.own_id(conn, msg, "from")?;
        let target = required_str(msg, "target")?;
        let request = optional_str(msg, "request_id")?;
        let payload = self.signal_payload(msg, signal)?;
        self.live_session(now, &me, target, request)?;
        let mut fwd = Map::new();
        fwd.insert("type".into(), json!(ty));
        fwd.insert(signal.field().into(), payload.clone());
        fwd.insert("from".into(), json!(me));
        let target = target.to_owned();
        self.send_to_device(&target, frame(Value::Object(fwd)), out);
        Ok(())
    }

    /// `p2p_connection_established` `{request_id, peer_device_id}`: the first one marks the
    /// session connected (no more deadline) and tells both; a repeat answers the sender.
    pub(super) fn on_p2p_established(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        let request = required_str(msg, "request_id")?;
        let peer = required_str(msg, "peer_device_id")?;
        let me = self.conns[&conn].device_id.clone();
        let session = self.p2p.sessions.get_mut(request);
        let Some(session) = session.filter(|s| s.pairs(&me, peer)) else {
            return Err(no_session(request, &me, peer));
        };
        let first = match session.stage {
            Stage::Asked => return Err(not_accepted(request)),
            Stage::Accepted => true,
            Stage::Established => false,
        };
        session.stage = Stage::Established;
        session.deadline = None;
        let id = session.id.clone();
        let peer = peer.to_owned();
        let tell = |hub: &Hub, device: &str, other: &str, out: &mut Vec<Output>| {
            let name = hub.devices.get(other).map(|d| d.name.as_str());
            hub.send_to_device(
                device,
                frame(
                    json!({"type": "p2p_connection_established", "request_id": id,
                             "peer_device_id": other, "peer_name": name}),
                ),
                out,
            );
        };
        tell(self, &me, &peer, out);
        if first {
            tell(self, &peer, &me, out);
        }
        Ok(())
    }

    /// `p2p_close` `{request_id}` (the box's own): ends a request or session the sender is
    /// in, e.g. after its data channel failed. Both get `p2p_connection_closed`.
    pub(super) fn on_p2p_close(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        let request = required_str(msg, "request_id")?;
        let me = self.conns[&conn].device_id.clone();
        match self.p2p.sessions.get(request) {
            Some(s) if s.involves(&me) => {
                let id = s.id.clone();
                self.end_session(&id, Some(&me), Ending::Closed, out);
                Ok(())
            }
            _ => Err(Reject::new(
                "no_session",
                format!("no P2P request {request} of this device"),
            )),
        }
    }
}

// Timeouts and departures.
impl Hub {
    /// Fails every request and session whose deadline has passed: both devices get
    /// `p2p_connection_failed`.
    pub(super) fn expire_sessions(&mut self, now: Now, out: &mut Vec<Output>) {
        let due: Vec<String> = self
            .p2p
            .sessions
            .values()
            .filter(|s| s.deadline.is_some_and(|d| d <= now.at))
            .map(|s| s.id.clone())
            .collect();
        for id in due {
            let Some(s) = self.p2p.sessions.remove(&id) else {
                continue;
            };
            let (reason, message) = match s.stage {
                Stage::Asked => ("not_answered", "the P2P request was not answered in time"),
                _ => ("signaling_timeout", "WebRTC signaling timeout"),
            };
            let failed = frame(json!({"type": "p2p_connection_failed", "request_id": id,
                                      "message": message, "reason": reason}));
            for device in [&s.from, &s.to] {
                self.send_to_device(device, Rc::clone(&failed), out);
            }
        }
    }

    /// `device` left the P2P list (socket gone, `disable_p2p`, the box's refusal): every
    /// request and session it was in ends and the other device is told. Returns whether
    /// it was on the list.
    pub(super) fn p2p_device_gone(
        &mut self,
        device: &str,
        ending: Ending,
        out: &mut Vec<Output>,
    ) -> bool {
        let ids: Vec<String> = self
            .p2p
            .sessions
            .values()
            .filter(|s| s.involves(device))
            .map(|s| s.id.clone())
            .collect();
        for id in ids {
            self.end_session(&id, Some(device), ending, out);
        }
        self.p2p.asked.remove(device);
        self.tracker.forget(device);
        self.p2p.enabled.remove(device)
    }

    /// Forgets session `id`. `by` (if any) is the device that ended it: the other is told
    /// with `p2p_connection_closed` (established) or `p2p_connection_failed` (not yet), and
    /// `by` with `p2p_connection_closed` if it asked to close. Without `by`, both are told.
    fn end_session(&mut self, id: &str, by: Option<&str>, ending: Ending, out: &mut Vec<Output>) {
        let Some(s) = self.p2p.sessions.remove(id) else {
            return;
        };
        for device in [&s.from, &s.to] {
            if by == Some(device.as_str()) && !matches!(ending, Ending::Closed) {
                continue;
            }
            let peer = s.other(device);
            let reason = if by == Some(device.as_str()) {
                "closed"
            } else {
                ending.reason()
            };
            let text = if s.stage == Stage::Established || matches!(ending, Ending::Closed) {
                json!({"type": "p2p_connection_closed", "request_id": id,
                       "peer_device_id": peer, "reason": reason, "message": ending.message()})
            } else {
                json!({"type": "p2p_connection_failed", "request_id": id,
                       "peer_device_id": peer, "reason": reason, "message": ending.message()})
            };
            self.send_to_device(device, frame(text), out);
        }
    }
}

// Checks shared by the handlers.
impl Hub {
    /// Err(`p2p_unavailable`) when the box is set to `off` or refuses P2P for now.
    pub(super) fn p2p_allowed(&self) -> Result<(), Reject> {
        if self.limits.p2p.mode == P2pMode::Off {
            return Err(Reject::new(
                "p2p_unavailable",
                "P2P is turned off on this box (p2p.mode = off); send through the box instead",
            ));
        }
        if let Some(why) = &self.p2p.refusal {
            return Err(Reject::new("p2p_unavailable", why.clone()));
        }
        Ok(())
    }

    /// The conn's device id. A message that names the sender in `field` must name it
    /// rightly: a client cannot speak for another device.
    fn own_id(
        &self,
        conn: ConnId,
        msg: &Map<String, Value>,
        field: &str,
    ) -> Result<String, Reject> {
        let me = &self.conns[&conn].device_id;
        match optional_str(msg, field)? {
            Some(claimed) if claimed != me => Err(Reject::new(
                "wrong_device",
                format!("`{field}` is {claimed}, but this socket is device {me}"),
            )),
            _ => Ok(me.clone()),
        }
    }

    /// For accept and decline, sent by B with `{from: A, to: B}`: the unanswered request
    /// from A to B (the one named by `request_id`, if given). Returns (id, A, B).
    fn asked_of(
        &self,
        conn: ConnId,
        msg: &Map<String, Value>,
    ) -> Result<(String, String, String), Reject> {
        let me = self.own_id(conn, msg, "to")?;
        let from = required_str(msg, "from")?;
        let request = optional_str(msg, "request_id")?;
        self.p2p
            .sessions
            .values()
            .find(|s| {
                s.from == from
                    && s.to == me
                    && s.stage == Stage::Asked
                    && request.is_none_or(|r| r == s.id)
            })
            .map(|s| (s.id.clone(), from.to_owned(), me.clone()))
            .ok_or_else(|| {
                Reject::new(
                    "no_request",
                    format!("no unanswered P2P request from {from} to {me}"),
                )
            })
    }

    /// The accepted (or established) session pairing `me` and `target` (the one named
    /// `request`, if given). Its deadline restarts: signaling is under way.
    fn live_session(
        &mut self,
        now: Now,
        me: &str,
        target: &str,
        request: Option<&str>,
    ) -> Result<String, Reject> {
        let timeout = self.limits.p2p.signal_timeout;
        let session = match request {
            Some(r) => self.p2p.sessions.get_mut(r).filter(|s| s.pairs(me, target)),
            None => self.p2p.sessions.values_mut().find(|s| s.pairs(me, target)),
        };
        let Some(session) = session else {
            return Err(no_session(request.unwrap_or("-"), me, target));
        };
        match session.stage {
            Stage::Asked => Err(not_accepted(&session.id)),
            Stage::Accepted => {
                session.deadline = Some(now.at + timeout);
                Ok(session.id.clone())
            }
            Stage::Established => Ok(session.id.clone()),
        }
    }

    /// The SDP or candidate of a signal, present (a null candidate, the end of
    /// candidates, is allowed) and within its size limit.
    fn signal_payload<'m>(
        &self,
        msg: &'m Map<String, Value>,
        signal: Signal,
    ) -> Result<&'m Value, Reject> {
        let field = signal.field();
        let value = msg
            .get(field)
            .ok_or_else(|| Reject::new("missing_field", format!("field `{field}` is missing")))?;
        let ok_kind = match signal {
            Signal::Candidate => !matches!(value, Value::Bool(_) | Value::Number(_)),
            _ => matches!(value, Value::String(_) | Value::Object(_)),
        };
        if !ok_kind {
            return Err(Reject::new(
                "bad_signal",
                format!("field `{field}` must be a string or an object"),
            ));
        }
        let max = match signal {
            Signal::Candidate => self.limits.p2p.max_candidate_bytes,
            _ => self.limits.p2p.max_sdp_bytes,
        };
        let len = value.to_string().len();
        if len > max {
            return Err(Reject::new(
                "too_large",
                format!("`{field}` is {len} bytes; the limit is {max}"),
            ));
        }
        Ok(value)
    }

    /// Queues a frame for a connected device; a device that is gone is skipped.
    pub(super) fn send_to_device(&self, device: &str, text: Rc<str>, out: &mut Vec<Output>) {
        if let Some(d) = self.devices.get(device) {
            send(out, d.conn, text);
        }
    }

    /// The `p2p` block of `welcome` and `/api/status`.
    pub fn p2p_info(&self) -> Value {
        let p = &self.limits.p2p;
        json!({
            "mode": p.mode.as_str(),
            "stun_port": p.stun_port.filter(|_| p.mode != P2pMode::Off),
            "chunk_size": p.chunk_size,
            "signal_timeout_ms": duration_ms(p.signal_timeout),
            "box_peer": p.box_peer,
        })
    }
}

fn no_session(request: &str, a: &str, b: &str) -> Reject {
    Reject::new(
        "no_session",
        format!("no live P2P request {request} between {a} and {b}; send p2p_request first"),
    )
}

fn not_accepted(request: &str) -> Reject {
    Reject::new(
        "not_accepted",
        format!("P2P request {request} has not been accepted yet"),
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::{closes, error_code, join, recv, sends, to, Clock};
    use super::super::{Hub, HubLimits};
    use super::*;

    fn hub_with(p2p: P2pLimits) -> Hub {
        Hub::new(HubLimits {
            p2p,
            ..HubLimits::default()
        })
    }

    /// a (conn 1), b (conn 2) and c (conn 3), all P2P-enabled.
    fn three(clock: &Clock, p2p: P2pLimits) -> Hub {
        let mut hub = hub_with(p2p);
        for (conn, id) in [(1, "a"), (2, "b"), (3, "c")] {
            join(&mut hub, clock.at(0), conn, id);
            recv(&mut hub, clock.at(0), conn, r#"{"type":"enable_p2p"}"#);
        }
        hub
    }

    fn only(out: &[Output], conn: ConnId, ty: &str) -> Value {
        let frames: Vec<Value> = to(out, conn)
            .into_iter()
            .filter(|v| v["type"] == ty)
            .collect();
        assert_eq!(frames.len(), 1, "one {ty} to {conn}: {out:?}");
        frames.into_iter().next().unwrap()
    }

    /// a asks b; returns the request id.
    fn ask(hub: &mut Hub, now: Now) -> String {
        let out = recv(hub, now, 1, r#"{"type":"p2p_request","from":"a","to":"b"}"#);
        only(&out, 2, "p2p_request_received")["request_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// a asks b and b accepts; returns the request id.
    fn accepted(hub: &mut Hub, now: Now) -> String {
        let id = ask(hub, now);
        recv(hub, now, 2, r#"{"type":"p2p_accept","from":"a","to":"b"}"#);
        id
    }

    #[test]
    fn request_accept_signal_establish_as_the_seed_protocol_says() {
        let clock = Clock::new();
        let mut hub = three(&clock, P2pLimits::default());
        let out = recv(
            &mut hub,
            clock.at(1),
            1,
            r#"{"type":"p2p_request","from":"a","to":"b"}"#,
        );
        let got = only(&out, 2, "p2p_request_received");
        let r = got["request_id"].as_str().unwrap().to_owned();
        assert_eq!(
            got,
            json!({"type": "p2p_request_received", "from": "a", "from_name": "Device a",
                   "request_id": r})
        );
        assert_eq!(
            to(&out, 1),
            [
                json!({"type": "p2p_request_sent", "to": "b", "request_id": r,
                    "timeout_ms": 60000})
            ]
        );
        assert!(to(&out, 3).is_empty(), "c hears nothing");

        let out = recv(
            &mut hub,
            clock.at(2),
            2,
            r#"{"type":"p2p_accept","from":"a","to":"b"}"#,
        );
        assert_eq!(
            to(&out, 1),
            [
                json!({"type": "p2p_connection_accepted", "to": "b", "start_webrtc": true,
                       "request_id": r}),
                json!({"type": "webrtc_handshake_start", "is_initiator": true,
                       "peer_device_id": "b", "request_id": r}),
            ]
        );
        assert_eq!(
            to(&out, 2),
            [
                json!({"type": "p2p_request_accepted", "from": "a", "start_webrtc": true,
                       "request_id": r}),
                json!({"type": "webrtc_handshake_start", "is_initiator": false,
                       "peer_device_id": "a", "request_id": r}),
            ]
        );

        // The request-scoped form, all three signal types, both ways.
        let sdp = json!({"type": "offer", "sdp": "v=0\r\n"});
        let msg = json!({"type": "webrtc_signal", "signal_type": "offer",
                         "target_device_id": "b", "request_id": r, "offer": sdp});
        let out = recv(&mut hub, clock.at(3), 1, &msg.to_string());
        assert_eq!(
            to(&out, 2),
            [
                json!({"type": "webrtc_offer", "from_device_id": "a", "request_id": r,
                    "offer": sdp})
            ]
        );
        assert!(to(&out, 1).is_empty());
        let msg = json!({"type": "webrtc_signal", "signal_type": "answer",
                         "target_device_id": "a", "request_id": r, "answer": "v=0 answer"});
        let out = recv(&mut hub, clock.at(4), 2, &msg.to_string());
        assert_eq!(
            to(&out, 1),
            [
                json!({"type": "webrtc_answer", "from_device_id": "b", "request_id": r,
                    "answer": "v=0 answer"})
            ]
        );
        let cand = json!({"candidate": "candidate:1 1 udp 2122260223 198.18.0.2 5000 typ host",
                          "sdpMid": "0", "sdpMLineIndex": 0});
        let msg = json!({"type": "webrtc_signal", "signal_type": "ice_candidate",
                         "target_device_id": "b", "request_id": r, "candidate": cand});
        let out = recv(&mut hub, clock.at(5), 1, &msg.to_string());
        assert_eq!(
            to(&out, 2),
            [
                json!({"type": "webrtc_ice_candidate", "from_device_id": "a",
                    "request_id": r, "candidate": cand})
            ]
        );

        // The older `target` form between the same pair.
        let out = recv(
            &mut hub,
            clock.at(6),
            1,
            r#"{"type":"webrtc_offer","offer":"O","target":"b","from":"a"}"#,
        );
        assert_eq!(
            to(&out, 2),
            [json!({"type": "webrtc_offer", "offer": "O", "from": "a"})]
        );
        let out = recv(
            &mut hub,
            clock.at(6),
            2,
            r#"{"type":"webrtc_answer","answer":"A","target":"a","from":"b"}"#,
        );
        assert_eq!(
            to(&out, 1),
            [json!({"type": "webrtc_answer", "answer": "A", "from": "b"})]
        );
        let out = recv(
            &mut hub,
            clock.at(6),
            1,
            r#"{"type":"ice_candidate","candidate":"C","target":"b","from":"a"}"#,
        );
        assert_eq!(
            to(&out, 2),
            [json!({"type": "ice_candidate", "candidate": "C", "from": "a"})]
        );

        let msg = json!({"type": "p2p_connection_established", "request_id": r,
                         "peer_device_id": "b"});
        let out = recv(&mut hub, clock.at(7), 1, &msg.to_string());
        assert_eq!(
            to(&out, 1),
            [
                json!({"type": "p2p_connection_established", "request_id": r,
                    "peer_device_id": "b", "peer_name": "Device b"})
            ]
        );
        assert_eq!(
            to(&out, 2),
            [
                json!({"type": "p2p_connection_established", "request_id": r,
                    "peer_device_id": "a", "peer_name": "Device a"})
            ]
        );
        // The other side saying it too is answered to it alone.
        let msg = json!({"type": "p2p_connection_established", "request_id": r,
                         "peer_device_id": "a"});
        let out = recv(&mut hub, clock.at(8), 2, &msg.to_string());
        assert_eq!(sends(&out), [(2, "p2p_connection_established".into())]);

        // Established sessions have no deadline: a long quiet time ends nothing.
        assert_eq!(hub.p2p.next_deadline(), None);
        let mut out = Vec::new();
        for conn in [1, 2, 3] {
            hub.heard_from(clock.at(600_000), conn);
        }
        hub.handle_timeout(clock.at(600_000), &mut out);
        assert!(!sends(&out).iter().any(|(_, t)| t.starts_with("p2p")));
        assert_eq!(hub.p2p_session_count(), 1);
    }

    #[test]
    fn decline_tells_the_requester_not_the_decliner() {
        let clock = Clock::new();
        let mut hub = three(&clock, P2pLimits::default());
        let r = ask(&mut hub, clock.at(1));
        let out = recv(
            &mut hub,
            clock.at(2),
            2,
            r#"{"type":"p2p_decline","from":"a","to":"b"}"#,
        );
        assert_eq!(
            to(&out, 1),
            [json!({"type": "p2p_request_declined", "from": "b", "request_id": r})]
        );
        assert!(to(&out, 2).is_empty());
        assert_eq!(hub.p2p_session_count(), 0);
        // Nothing left to accept or decline, and no signal passes.
        let out = recv(
            &mut hub,
            clock.at(3),
            2,
            r#"{"type":"p2p_accept","from":"a","to":"b"}"#,
        );
        assert_eq!(error_code(&out, 2).as_deref(), Some("no_request"));
        let out = recv(
            &mut hub,
            clock.at(3),
            1,
            r#"{"type":"webrtc_offer","offer":"O","target":"b"}"#,
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("no_session"));
        assert!(to(&out, 2).is_empty());
    }

    #[test]
    fn signals_outside_a_live_pairing_are_refused_to_the_sender() {
        let clock = Clock::new();
        let mut hub = three(&clock, P2pLimits::default());
        let r = ask(&mut hub, clock.at(1));
        let signal = |target: &str, request: &str| {
            json!({"type": "webrtc_signal", "signal_type": "offer", "target_device_id": target,
                   "request_id": request, "offer": "O"})
            .to_string()
        };
        // Not yet accepted: nothing passes, in either form.
        let out = recv(&mut hub, clock.at(2), 1, &signal("b", &r));
        assert_eq!(error_code(&out, 1).as_deref(), Some("not_accepted"));
        assert!(to(&out, 2).is_empty());
        let out = recv(
            &mut hub,
            clock.at(2),
            1,
            r#"{"type":"ice_candidate","candidate":"C","target":"b"}"#,
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("not_accepted"));
        // b cannot accept a's request on behalf of someone else, nor c accept it at all.
        let out = recv(
            &mut hub,
            clock.at(2),
            3,
            r#"{"type":"p2p_accept","from":"a","to":"b"}"#,
        );
        assert_eq!(error_code(&out, 3).as_deref(), Some("wrong_device"));
        let out = recv(
            &mut hub,
            clock.at(2),
            3,
            r#"{"type":"p2p_accept","from":"a"}"#,
        );
        assert_eq!(error_code(&out, 3).as_deref(), Some("no_request"));

        recv(
            &mut hub,
            clock.at(3),
            2,
            r#"{"type":"p2p_accept","from":"a","to":"b"}"#,
        );
        // c uses a's request id to reach b, or a uses it to reach c: refused.
        let out = recv(&mut hub, clock.at(4), 3, &signal("b", &r));
        assert_eq!(error_code(&out, 3).as_deref(), Some("no_session"));
        assert!(to(&out, 2).is_empty());
        let out = recv(&mut hub, clock.at(4), 1, &signal("c", &r));
        assert_eq!(error_code(&out, 1).as_deref(), Some("no_session"));
        assert!(to(&out, 3).is_empty());
        // An unknown request id between the right pair is refused too.
        let out = recv(&mut hub, clock.at(4), 1, &signal("b", "p2p-999"));
        assert_eq!(error_code(&out, 1).as_deref(), Some("no_session"));
        // The older form with no request between the pair, or speaking for another device.
        let out = recv(
            &mut hub,
            clock.at(4),
            3,
            r#"{"type":"webrtc_offer","offer":"O","target":"a","from":"c"}"#,
        );
        assert_eq!(error_code(&out, 3).as_deref(), Some("no_session"));
        let out = recv(
            &mut hub,
            clock.at(4),
            3,
            r#"{"type":"webrtc_offer","offer":"O","target":"b","from":"a"}"#,
        );
        assert_eq!(error_code(&out, 3).as_deref(), Some("wrong_device"));
        assert!(to(&out, 2).is_empty());
        // Established needs the right peer.
        let msg = json!({"type": "p2p_connection_established", "request_id": r,
                         "peer_device_id": "c"});
        let out = recv(&mut hub, clock.at(5), 1, &msg.to_string());
        assert_eq!(error_code(&out, 1).as_deref(), Some("no_session"));
        // The right pair still works.
        let out = recv(&mut hub, clock.at(6), 1, &signal("b", &r));
        assert_eq!(to(&out, 2)[0]["type"], "webrtc_offer");
    }

    #[test]
    fn malformed_and_oversized_signals_get_errors() {
        let clock = Clock::new();
        let mut hub = three(
            &clock,
            P2pLimits {
                max_sdp_bytes: 100,
                max_candidate_bytes: 50,
                ..P2pLimits::default()
            },
        );
        let r = accepted(&mut hub, clock.at(1));
        let cases = [
            (
                json!({"type": "webrtc_signal", "signal_type": "hello", "target_device_id": "b",
                    "request_id": r, "offer": "O"}),
                "bad_signal",
            ),
            (
                json!({"type": "webrtc_signal", "signal_type": "offer", "target_device_id": "b",
                    "request_id": r}),
                "missing_field",
            ),
            (
                json!({"type": "webrtc_signal", "signal_type": "offer", "target_device_id": "b",
                    "request_id": r, "offer": 5}),
                "bad_signal",
            ),
            (
                json!({"type": "webrtc_signal", "signal_type": "offer", "request_id": r,
                    "offer": "O"}),
                "missing_field",
            ),
            (
                json!({"type": "webrtc_signal", "signal_type": "offer", "target_device_id": "b",
                    "offer": "O"}),
                "missing_field",
            ),
            (
                json!({"type": "webrtc_signal", "signal_type": "offer", "target_device_id": "b",
                    "request_id": r, "offer": "x".repeat(101)}),
                "too_large",
            ),
            (
                json!({"type": "webrtc_signal", "signal_type": "ice_candidate",
                    "target_device_id": "b", "request_id": r, "candidate": "c".repeat(60)}),
                "too_large",
            ),
            (
                json!({"type": "webrtc_offer", "target": "b"}),
                "missing_field",
            ),
            (
                json!({"type": "webrtc_offer", "offer": "O"}),
                "missing_field",
            ),
            (
                json!({"type": "p2p_connection_established", "request_id": r}),
                "missing_field",
            ),
            (json!({"type": "p2p_accept"}), "missing_field"),
        ];
        for (msg, code) in cases {
            let out = recv(&mut hub, clock.at(2), 1, &msg.to_string());
            assert_eq!(error_code(&out, 1).as_deref(), Some(code), "{msg}");
            assert!(to(&out, 2).is_empty(), "{msg}");
        }
        // A null candidate (end of candidates) is forwarded.
        let msg = json!({"type": "webrtc_signal", "signal_type": "ice_candidate",
                         "target_device_id": "b", "request_id": r, "candidate": null});
        let out = recv(&mut hub, clock.at(3), 1, &msg.to_string());
        assert_eq!(to(&out, 2)[0]["candidate"], Value::Null);
    }

    #[test]
    fn signaling_times_out_after_60_s_without_activity() {
        let clock = Clock::new();
        let mut hub = three(&clock, P2pLimits::default());
        let r = accepted(&mut hub, clock.at(0));
        assert_eq!(hub.p2p.next_deadline(), Some(clock.at(60_000).at));
        // A signal at 30 s restarts the wait.
        let msg = json!({"type": "webrtc_signal", "signal_type": "offer",
                         "target_device_id": "b", "request_id": r, "offer": "O"});
        recv(&mut hub, clock.at(30_000), 1, &msg.to_string());
        for conn in [1, 2, 3] {
            hub.heard_from(clock.at(80_000), conn);
        }
        let mut out = Vec::new();
        hub.handle_timeout(clock.at(89_999), &mut out);
        assert!(out.is_empty());
        hub.handle_timeout(clock.at(90_000), &mut out);
        let failed = json!({"type": "p2p_connection_failed", "request_id": r,
                            "message": "WebRTC signaling timeout",
                            "reason": "signaling_timeout"});
        assert_eq!(to(&out, 1), std::slice::from_ref(&failed));
        assert_eq!(to(&out, 2), [failed]);
        assert!(to(&out, 3).is_empty());
        assert_eq!(hub.p2p_session_count(), 0);
        // R is forgotten: signals on it are refused.
        let out = recv(&mut hub, clock.at(90_001), 1, &msg.to_string());
        assert_eq!(error_code(&out, 1).as_deref(), Some("no_session"));
    }

    #[test]
    fn an_unanswered_request_expires_and_both_are_told() {
        let clock = Clock::new();
        let mut hub = three(
            &clock,
            P2pLimits {
                signal_timeout: Duration::from_secs(5),
                ..P2pLimits::default()
            },
        );
        let r = ask(&mut hub, clock.at(0));
        let mut out = Vec::new();
        hub.handle_timeout(clock.at(5_000), &mut out);
        for conn in [1, 2] {
            let f = only(&out, conn, "p2p_connection_failed");
            assert_eq!(f["request_id"], r.as_str());
            assert_eq!(f["reason"], "not_answered");
        }
        let out = recv(
            &mut hub,
            clock.at(5_001),
            2,
            r#"{"type":"p2p_accept","from":"a","to":"b"}"#,
        );
        assert_eq!(error_code(&out, 2).as_deref(), Some("no_request"));
    }

    #[test]
    fn disconnect_ends_every_session_of_the_device_and_tells_each_peer() {
        let clock = Clock::new();
        let mut hub = three(&clock, P2pLimits::default());
        // a–b established, c asks a (pending).
        let ab = accepted(&mut hub, clock.at(1));
        let msg = json!({"type": "p2p_connection_established", "request_id": ab,
                         "peer_device_id": "b"});
        recv(&mut hub, clock.at(2), 1, &msg.to_string());
        let out = recv(
            &mut hub,
            clock.at(3),
            3,
            r#"{"type":"p2p_request","from":"c","to":"a"}"#,
        );
        let ca = only(&out, 1, "p2p_request_received")["request_id"].clone();
        assert_eq!(hub.p2p_session_count(), 2);

        let mut out = Vec::new();
        hub.disconnect(clock.at(4), 1, &mut out);
        assert_eq!(
            only(&out, 2, "p2p_connection_closed"),
            json!({"type": "p2p_connection_closed", "request_id": ab, "peer_device_id": "a",
                   "reason": "peer_left", "message": "the other device disconnected"})
        );
        assert_eq!(
            only(&out, 3, "p2p_connection_failed"),
            json!({"type": "p2p_connection_failed", "request_id": ca, "peer_device_id": "a",
                   "reason": "peer_left", "message": "the other device disconnected"})
        );
        assert_eq!(hub.p2p_session_count(), 0);
        assert_eq!(hub.p2p.next_deadline(), None);
        // b's late candidates for the dead session are refused, not forwarded.
        let msg = json!({"type": "webrtc_signal", "signal_type": "ice_candidate",
                         "target_device_id": "a", "request_id": ab, "candidate": "c"});
        let out = recv(&mut hub, clock.at(5), 2, &msg.to_string());
        assert_eq!(error_code(&out, 2).as_deref(), Some("no_session"));
    }

    #[test]
    fn disable_p2p_a_replaced_socket_and_the_box_refusal_end_sessions() {
        let clock = Clock::new();
        let mut hub = three(&clock, P2pLimits::default());
        let r = accepted(&mut hub, clock.at(1));
        let out = recv(&mut hub, clock.at(2), 2, r#"{"type":"disable_p2p"}"#);
        let f = only(&out, 1, "p2p_connection_failed");
        assert_eq!(
            (f["request_id"].as_str(), f["reason"].as_str()),
            (Some(r.as_str()), Some("peer_disabled"))
        );
        assert_eq!(hub.p2p_session_count(), 0);

        recv(&mut hub, clock.at(3), 2, r#"{"type":"enable_p2p"}"#);
        accepted(&mut hub, clock.at(4));
        let out = join(&mut hub, clock.at(5), 4, "b"); // b reconnects on a new socket
        assert_eq!(
            only(&out, 1, "p2p_connection_failed")["reason"],
            "peer_left"
        );
        assert_eq!(hub.p2p_session_count(), 0);

        recv(&mut hub, clock.at(6), 4, r#"{"type":"enable_p2p"}"#);
        let out = recv(
            &mut hub,
            clock.at(7),
            1,
            r#"{"type":"p2p_request","to":"b"}"#,
        );
        assert_eq!(
            sends(&out),
            [
                (4, "p2p_request_received".into()),
                (1, "p2p_request_sent".into())
            ]
        );
        let mut out = Vec::new();
        hub.set_p2p_refusal(Some("battery at 5%".into()), &mut out);
        assert_eq!(hub.p2p_session_count(), 0);
        let out = recv(
            &mut hub,
            clock.at(8),
            1,
            r#"{"type":"p2p_request","to":"b"}"#,
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("p2p_unavailable"));
    }

    #[test]
    fn mode_off_refuses_everything_p2p_without_closing() {
        let clock = Clock::new();
        let mut hub = hub_with(P2pLimits {
            mode: P2pMode::Off,
            stun_port: Some(3478),
            ..P2pLimits::default()
        });
        let out = join(&mut hub, clock.at(0), 1, "a");
        assert_eq!(
            to(&out, 1)[0]["p2p"],
            json!({"mode": "off", "stun_port": null, "chunk_size": 262144,
                   "signal_timeout_ms": 60000, "box_peer": false})
        );
        join(&mut hub, clock.at(0), 2, "b");
        for i in 0..30 {
            let out = recv(&mut hub, clock.at(i), 1, r#"{"type":"enable_p2p"}"#);
            assert_eq!(error_code(&out, 1).as_deref(), Some("p2p_unavailable"));
            assert!(closes(&out).is_empty());
        }
        let out = recv(
            &mut hub,
            clock.at(40),
            1,
            r#"{"type":"p2p_request","to":"b"}"#,
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("p2p_unavailable"));
    }

    #[test]
    fn welcome_tells_the_p2p_settings() {
        let clock = Clock::new();
        let mut hub = hub_with(P2pLimits {
            mode: P2pMode::P2pFirst,
            stun_port: Some(40000),
            chunk_size: 1 << 20,
            signal_timeout: Duration::from_secs(2),
            ..P2pLimits::default()
        });
        let out = join(&mut hub, clock.at(0), 1, "a");
        assert_eq!(
            to(&out, 1)[0]["p2p"],
            json!({"mode": "p2p-first", "stun_port": 40000, "chunk_size": 1048576,
                   "signal_timeout_ms": 2000, "box_peer": false})
        );
    }

    #[test]
    fn several_sessions_per_device_up_to_the_limit() {
        let clock = Clock::new();
        let mut hub = hub_with(P2pLimits {
            max_sessions_per_device: 2,
            max_pending_requests: 10,
            ..P2pLimits::default()
        });
        for (conn, id) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
            join(&mut hub, clock.at(0), conn, id);
            recv(&mut hub, clock.at(0), conn, r#"{"type":"enable_p2p"}"#);
        }
        for to_id in ["b", "c"] {
            let msg = json!({"type": "p2p_request", "to": to_id});
            let out = recv(&mut hub, clock.at(1), 1, &msg.to_string());
            assert_eq!(to(&out, 1)[0]["type"], "p2p_request_sent");
        }
        let out = recv(
            &mut hub,
            clock.at(1),
            1,
            r#"{"type":"p2p_request","to":"d"}"#,
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("too_many_sessions"));
        // d asking a is refused for a's sake too.
        let out = recv(
            &mut hub,
            clock.at(1),
            4,
            r#"{"type":"p2p_request","to":"a"}"#,
        );
        assert_eq!(error_code(&out, 4).as_deref(), Some("too_many_sessions"));
        // Asking b again replaces the old request rather than adding one.
        let out = recv(
            &mut hub,
            clock.at(2),
            1,
            r#"{"type":"p2p_request","to":"b"}"#,
        );
        assert_eq!(only(&out, 2, "p2p_request_received")["request_id"], "p2p-3");
        let failed = only(&out, 2, "p2p_connection_failed");
        assert_eq!(
            (failed["request_id"].as_str(), failed["reason"].as_str()),
            (Some("p2p-1"), Some("replaced"))
        );
        assert_eq!(hub.p2p_session_count(), 2);
    }

    #[test]
    fn pending_requests_and_request_rate_are_bounded() {
        let clock = Clock::new();
        let mut hub = hub_with(P2pLimits {
            max_pending_requests: 1,
            requests_per_minute: 3,
            ..P2pLimits::default()
        });
        for (conn, id) in [(1, "a"), (2, "b"), (3, "c")] {
            join(&mut hub, clock.at(0), conn, id);
            recv(&mut hub, clock.at(0), conn, r#"{"type":"enable_p2p"}"#);
        }
        recv(
            &mut hub,
            clock.at(1),
            1,
            r#"{"type":"p2p_request","to":"b"}"#,
        );
        let out = recv(
            &mut hub,
            clock.at(1),
            1,
            r#"{"type":"p2p_request","to":"c"}"#,
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("too_many_requests"));
        assert!(to(&out, 3).is_empty());
        // Re-asking b replaces; twice more and the minute's budget (3) is spent.
        recv(
            &mut hub,
            clock.at(2),
            1,
            r#"{"type":"p2p_request","to":"b"}"#,
        );
        recv(
            &mut hub,
            clock.at(3),
            1,
            r#"{"type":"p2p_request","to":"b"}"#,
        );
        let out = recv(
            &mut hub,
            clock.at(4),
            1,
            r#"{"type":"p2p_request","to":"b"}"#,
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("too_many_requests"));
        // A new minute, a new budget.
        let out = recv(
            &mut hub,
            clock.at(60_001),
            1,
            r#"{"type":"p2p_request","to":"b"}"#,
        );
        assert_eq!(to(&out, 1).last().unwrap()["type"], "p2p_request_sent");
    }

    #[test]
    fn requests_need_both_devices_p2p_enabled() {
        let clock = Clock::new();
        let mut hub = hub_with(P2pLimits::default());
        join(&mut hub, clock.at(0), 1, "a");
        join(&mut hub, clock.at(0), 2, "b");
        let out = recv(
            &mut hub,
            clock.at(1),
            1,
            r#"{"type":"p2p_request","from":"a","to":"b"}"#,
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("p2p_not_enabled"));
        recv(&mut hub, clock.at(1), 1, r#"{"type":"enable_p2p"}"#);
        let out = recv(
            &mut hub,
            clock.at(2),
            1,
            r#"{"type":"p2p_request","from":"a","to":"b"}"#,
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("peer_unavailable"));
        assert!(to(&out, 2).is_empty());
        let out = recv(
            &mut hub,
            clock.at(2),
            1,
            r#"{"type":"p2p_request","from":"a","to":"zz"}"#,
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("peer_unavailable"));
        let out = recv(
            &mut hub,
            clock.at(2),
            1,
            r#"{"type":"p2p_request","from":"a","to":"a"}"#,
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("bad_request"));
        let out = recv(
            &mut hub,
            clock.at(2),
            1,
            r#"{"type":"p2p_request","from":"b","to":"a"}"#,
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("wrong_device"));
    }

    #[test]
    fn p2p_close_ends_a_session_for_both() {
        let clock = Clock::new();
        let mut hub = three(&clock, P2pLimits::default());
        let r = accepted(&mut hub, clock.at(1));
        let msg = json!({"type": "p2p_close", "request_id": r});
        let out = recv(&mut hub, clock.at(2), 3, &msg.to_string());
        assert_eq!(error_code(&out, 3).as_deref(), Some("no_session"));
        let out = recv(&mut hub, clock.at(2), 2, &msg.to_string());
        let closed = only(&out, 1, "p2p_connection_closed");
        assert_eq!(
            (closed["peer_device_id"].as_str(), closed["reason"].as_str()),
            (Some("b"), Some("closed"))
        );
        let closed = only(&out, 2, "p2p_connection_closed");
        assert_eq!(closed["peer_device_id"], "a");
        assert_eq!(hub.p2p_session_count(), 0);
    }
}
