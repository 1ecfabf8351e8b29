//! The hub: who is connected (devices, presence, P2P opt-in) and the shared clipboard.
//! A sans-IO state machine: the shell passes `now` and frames in, and gets [`Output`]s back.
//! It never touches a socket, a file or the clock, and every map and queue it owns is
//! bounded by [`HubLimits`] (devices, clipboard history, name length, error counters).
//! P2P requests and signaling live in `hub/p2p.rs`, family signaling (`/signal`) in
//! `hub/family.rs`.

mod family;
mod p2p;
mod tracker;

pub use p2p::P2pLimits;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Map, Value};

/// Identifies one WebSocket connection; assigned by the I/O shell, never reused.
pub type ConnId = u64;

/// The time as the shell saw it: monotonic for deadlines, wall clock (unix ms) for stamps
/// shown to users.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub at: Instant,
    pub unix_ms: u64,
}

/// Longest device id a client may choose (the id travels in the URL `/ws/{device_id}`).
const MAX_DEVICE_ID_LEN: usize = 64;

/// Error replies are counted in fixed windows of this length; the count restarts with
/// each window so a long-lived connection never accumulates state.
const ERROR_WINDOW: Duration = Duration::from_secs(10);

/// Room a text frame may take beyond its JSON-escaped clipboard text (type, field names).
const FRAME_ENVELOPE_BYTES: usize = 4096;

/// The hub's memory and abuse budget.
#[derive(Clone, Debug)]
pub struct HubLimits {
    /// Distinct devices connected at once; one more gets [`ConnectError::Full`].
    pub max_devices: usize,
    /// Largest clipboard text in UTF-8 bytes; longer gets error `clipboard_too_large`.
    pub clipboard_max_bytes: usize,
    /// Clipboard items kept for `clipboard_history`; the oldest is dropped first.
    pub clipboard_history: usize,
    /// A connection not heard from for this long is closed.
    pub heartbeat_timeout: Duration,
    /// Device names (and kinds) are cut to this many chars after control chars are removed.
    pub max_name_len: usize,
    /// Token-bucket refill per connection; the burst is twice this. 0 disables the limit.
    pub messages_per_sec: u32,
    /// Error replies within 10 s after which the connection is closed. 0 disables closing.
    pub max_errors: u32,
    /// P2P mode, signaling limits and what `welcome` tells about P2P.
    pub p2p: P2pLimits,
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            max_devices: 64,
            clipboard_max_bytes: 64 * 1024,
            clipboard_history: 20,
            heartbeat_timeout: Duration::from_secs(15),
            max_name_len: 64,
            messages_per_sec: 50,
            max_errors: 20,
            p2p: P2pLimits::default(),
        }
    }
}

impl HubLimits {
    /// Largest text frame the hub parses; longer frames get error `too_large` unread.
    ///
    /// A clipboard text at the limit may grow up to 6x when JSON-escaped (`\u00XX` per
    /// byte), so that is what a frame must be allowed to carry. The shell may use the same
    /// number as its WebSocket message limit.
    pub fn max_text_frame_bytes(&self) -> usize {
        self.clipboard_max_bytes
            .saturating_mul(6)
            .saturating_add(FRAME_ENVELOPE_BYTES)
    }
}

/// What the shell must do after a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this text frame to this connection. The same Rc is shared by every recipient
    /// of a broadcast (serialized once).
    Send { conn: ConnId, text: Rc<str> },
    /// Close this connection with a WebSocket close code and reason (e.g. 1008 policy,
    /// 4000 replaced). The hub has already forgotten it; a later `disconnect` is a no-op.
    Close {
        conn: ConnId,
        code: u16,
        reason: &'static str,
    },
}

/// Why [`Hub::connect`] refused a socket.
#[derive(Debug, PartialEq)]
pub enum ConnectError {
    BadDeviceId,
    Full,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::BadDeviceId => write!(
                f,
                "bad device id: use 1 to {MAX_DEVICE_ID_LEN} characters of A-Z, a-z, 0-9, '_', '.' or '-'"
            ),
            ConnectError::Full => write!(
                f,
                "the box has as many devices connected as it allows; disconnect one and try again"
            ),
        }
    }
}

impl std::error::Error for ConnectError {}

/// A connected device. Invariant: `conns[device.conn].device_id == device.id`.
#[derive(Debug)]
struct Device {
    id: String,
    name: String,
    kind: String,
    /// Unix ms of the first connection; kept when a newer connection replaces the old one,
    /// so device lists stay in a stable order across reconnects.
    connected_at: u64,
    conn: ConnId,
}

/// One WebSocket connection; there is exactly one per connected device.
#[derive(Debug)]
struct Conn {
    device_id: String,
    last_heard: Instant,
    bucket: TokenBucket,
    errors: ErrorWindow,
}

/// Per-connection message budget: refills at `rate` tokens per second up to `2 * rate`.
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn full(now: Instant, rate: u32) -> Self {
        TokenBucket {
            tokens: 2.0 * f64::from(rate),
            last: now,
        }
    }

    /// Takes one token; false when the bucket is empty and the message must be dropped.
    fn take(&mut self, now: Instant, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let rate = f64::from(rate);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(2.0 * rate);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The checks a text frame passes before it is parsed, on `/ws` and `/signal` alike:
    /// the sender's message rate (a token is taken), then the frame's size.
    fn admit(&mut self, now: Instant, rate: u32, len: usize, max: usize) -> Result<(), Reject> {
        if !self.take(now, rate) {
            Err(Reject::new(
                "rate_limited",
                format!("more than {rate} messages per second; this one was dropped"),
            ))
        } else if len > max {
            Err(Reject::new(
                "too_large",
                format!("frame is {len} bytes; the limit is {max}"),
            ))
        } else {
            Ok(())
        }
    }
}

/// Counts error replies in a fixed [`ERROR_WINDOW`]; the count resets with each window.
#[derive(Debug)]
struct ErrorWindow {
    started: Instant,
    count: u32,
}

impl ErrorWindow {
    fn new(now: Instant) -> Self {
        ErrorWindow {
            started: now,
            count: 0,
        }
    }

    /// Records one error reply and returns how many the current window holds.
    fn record(&mut self, now: Instant) -> u32 {
        if now.saturating_duration_since(self.started) >= ERROR_WINDOW {
            self.started = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count
    }
}

/// One clipboard entry, shared by `current` and `history` (texts can be 64 KiB).
#[derive(Debug, Serialize)]
struct ClipItem {
    seq: u64,
    text: String,
    from: String,
    from_name: String,
    at: u64,
}

/// The shared clipboard.
///
/// The hub handles one message at a time, so arrival order at the box is the total order
/// of clipboard updates: each gets the next `seq` (starting at 1) and the highest seq is
/// the current clipboard. Clients adopt the item with the highest seq they have seen and
/// ignore older ones, which makes concurrent copies on two devices converge.
#[derive(Debug, Default)]
struct Clipboard {
    last_seq: u64,
    current: Option<Rc<ClipItem>>,
    /// Oldest first; at most `HubLimits::clipboard_history` items.
    history: VecDeque<Rc<ClipItem>>,
}

impl Clipboard {
    /// Stores `text` as the current clipboard, dropping the oldest history item if full.
    fn push(&mut self, text: &str, from: &Device, at: u64, cap: usize) -> Rc<ClipItem> {
        self.last_seq += 1;
        let item = Rc::new(ClipItem {
            seq: self.last_seq,
            text: text.to_owned(),
            from: from.id.clone(),
            from_name: from.name.clone(),
            at,
        });
        if cap > 0 {
            if self.history.len() >= cap {
                self.history.pop_front();
            }
            self.history.push_back(Rc::clone(&item));
        }
        self.current = Some(Rc::clone(&item));
        item
    }

    fn history(&self) -> Vec<&ClipItem> {
        self.history.iter().map(|item| &**item).collect()
    }
}

/// A text frame as a message: a JSON object with a string `type`, returned beside it. The
/// same rule on `/ws` and `/signal`.
fn parse_message(text: &str) -> Result<(Map<String, Value>, String), Reject> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Reject::new("bad_json", format!("frame is not valid JSON: {e}")))?;
    let Value::Object(msg) = value else {
        return Err(Reject::new("bad_json", "frame must be a JSON object"));
    };
    let Some(ty) = msg.get("type").and_then(Value::as_str).map(str::to_owned) else {
        return Err(Reject::new(
            "missing_type",
            "message needs a string field `type`",
        ));
    };
    Ok((msg, ty))
}

/// An error reply: `code` is machine-readable, `message` tells a human what to fix.
#[derive(Debug)]
struct Reject {
    code: &'static str,
    message: String,
    ref_type: Option<String>,
}

impl Reject {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Reject {
            code,
            message: message.into(),
            ref_type: None,
        }
    }

    fn missing_field(field: &str) -> Self {
        Reject::new(
            "missing_field",
            format!("field `{field}` is missing or is not a string"),
        )
    }
}

/// A device that just left, for the `device_left` broadcast.
struct Departed {
    device_id: String,
    was_p2p: bool,
}

/// Devices, presence, P2P opt-in and the shared clipboard of one box.
#[derive(Debug)]
pub struct Hub {
    limits: HubLimits,
    /// Keyed by device id; at most `limits.max_devices` entries.
    devices: BTreeMap<String, Device>,
    /// Keyed by conn id; one per device, so bounded by `max_devices` as well. A BTreeMap so
    /// broadcasts go out in a deterministic order.
    conns: BTreeMap<ConnId, Conn>,
    clipboard: Clipboard,
    p2p: p2p::P2p,
    /// Sockets on `/signal` and their families.
    families: family::Families,
    /// Manifests announced by P2P devices (chunk tracker).
    tracker: tracker::Tracker,
}

// Lifecycle: connections come and go.
impl Hub {
    pub fn new(limits: HubLimits) -> Self {
        Hub {
            limits,
            devices: BTreeMap::new(),
            conns: BTreeMap::new(),
            clipboard: Clipboard::default(),
            p2p: p2p::P2p::default(),
            families: family::Families::default(),
            tracker: tracker::Tracker::default(),
        }
    }

    /// A socket for `device_id` opened.
    ///
    /// `device_id` must be 1..=64 chars of `[A-Za-z0-9_.-]`, else `BadDeviceId`. If the
    /// device already has a connection, the old one is closed (4000) and forgotten without
    /// a `device_left`; the new conn inherits the device (name, kind and `connected_at`,
    /// unless `name`/`kind` are given) but not its P2P opt-in, which ends with the old
    /// socket as the seed protocol says. `Full` if `max_devices` other devices are
    /// connected. On success the new conn gets `welcome` (plus the seed-form
    /// `clipboard_update` if there is a clipboard) and every other conn `device_joined`.
    pub fn connect(
        &mut self,
        now: Now,
        conn: ConnId,
        device_id: &str,
        name: Option<&str>,
        kind: Option<&str>,
        out: &mut Vec<Output>,
    ) -> Result<(), ConnectError> {
        if !valid_device_id(device_id) {
            return Err(ConnectError::BadDeviceId);
        }
        let replacing = self.devices.contains_key(device_id);
        if !replacing && self.devices.len() >= self.limits.max_devices {
            return Err(ConnectError::Full);
        }
        // Conn ids are never reused, so this is a shell bug; recover by dropping the old one.
        debug_assert!(
            !self.conns.contains_key(&conn),
            "conn {conn} connected twice"
        );
        if self.conns.contains_key(&conn) {
            self.disconnect(now, conn, out);
        }

        let name = name.map(|n| clean_label(n, self.limits.max_name_len));
        let kind = kind.map(|k| clean_label(k, self.limits.max_name_len));
        let mut p2p_changed = false;
        match self.devices.get_mut(device_id) {
            Some(device) => {
                let old = std::mem::replace(&mut device.conn, conn);
                self.conns.remove(&old);
                out.push(Output::Close {
                    conn: old,
                    code: 4000,
                    reason: "replaced by a newer connection",
                });
                if let Some(name) = name {
                    device.name = name_or_default(name, device_id);
                }
                if let Some(kind) = kind {
                    device.kind = kind_or_default(kind);
                }
                p2p_changed = self.p2p_device_gone(device_id, p2p::Ending::PeerLeft, out);
            }
            None => {
                let device = Device {
                    id: device_id.to_owned(),
                    name: name_or_default(name.unwrap_or_default(), device_id),
                    kind: kind_or_default(kind.unwrap_or_default()),
                    connected_at: now.unix_ms,
                    conn,
                };
                self.devices.insert(device.id.clone(), device);
            }
        }
        self.conns.insert(
            conn,
            Conn {
                device_id: device_id.to_owned(),
                last_heard: now.at,
                bucket: TokenBucket::full(now.at, self.limits.messages_per_sec),
                errors: ErrorWindow::new(now.at),
            },
        );

        self.send_welcome(conn, device_id, out);
        let joined = frame(json!({
            "type": "device_joined",
            "device": self.device_view(&self.devices[device_id]),
        }));
        self.send_to_all(Some(conn), &joined, out);
        if p2p_changed {
            self.send_p2p_list(out);
        }
        Ok(())
    }

    /// The socket closed (or the shell dropped it): tell the others with `device_left` and,
    /// if the device was P2P-enabled, a new `p2p_devices_update`. Unknown conn: no-op.
    pub fn disconnect(&mut self, _now: Now, conn: ConnId, out: &mut Vec<Output>) {
        if let Some(departed) = self.detach(conn, out) {
            self.announce_departures(&[departed], out);
        }
    }

    /// Any frame (including pong or binary) arrived: resets the heartbeat deadline.
    pub fn heard_from(&mut self, now: Now, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.last_heard = c.last_heard.max(now.at);
        }
    }

    /// Earliest instant at which [`Hub::handle_timeout`] has work: a heartbeat deadline
    /// (of `/ws` or `/signal` sockets) or a P2P request's or session's deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timeout = self.limits.heartbeat_timeout;
        let heartbeats = self.conns.values().map(|c| c.last_heard + timeout).min();
        [
            heartbeats,
            self.p2p.next_deadline(),
            self.families.next_deadline(timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Closes (1001 "heartbeat timeout") every conn not heard from within
    /// `heartbeat_timeout` and tells the others, as [`Hub::disconnect`] does; fails P2P
    /// requests and sessions past their deadline (`p2p_connection_failed`).
    pub fn handle_timeout(&mut self, now: Now, out: &mut Vec<Output>) {
        self.expire_sessions(now, out);
        self.expire_signal_sockets(now, out);
        let timeout = self.limits.heartbeat_timeout;
        let silent: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.last_heard + timeout <= now.at)
            .map(|(&id, _)| id)
            .collect();
        // Forget all silent conns before announcing, so none of them is sent news about
        // another one that is being closed in the same sweep.
        let mut departed = Vec::with_capacity(silent.len());
        for conn in silent {
            out.push(Output::Close {
                conn,
                code: 1001,
                reason: "heartbeat timeout",
            });
            departed.extend(self.detach(conn, out));
        }
        self.announce_departures(&departed, out);
    }

    /// Forgets `conn` and its device. Only the peers of its P2P sessions are told (that
    /// the session ended); the departure itself is announced by the caller.
    fn detach(&mut self, conn: ConnId, out: &mut Vec<Output>) -> Option<Departed> {
        let c = self.conns.remove(&conn)?;
        let device = self.devices.remove(&c.device_id);
        debug_assert!(
            device.is_some_and(|d| d.conn == conn),
            "conn/device out of sync"
        );
        let was_p2p = self.p2p_device_gone(&c.device_id, p2p::Ending::PeerLeft, out);
        Some(Departed {
            device_id: c.device_id,
            was_p2p,
        })
    }

    fn announce_departures(&self, departed: &[Departed], out: &mut Vec<Output>) {
        for d in departed {
            let left = frame(json!({"type": "device_left", "device_id": d.device_id}));
            self.send_to_all(None, &left, out);
        }
        if departed.iter().any(|d| d.was_p2p) {
            self.send_p2p_list(out);
        }
    }
}

// Messages: frames from clients, and events from elsewhere in the box.
impl Hub {
    /// A text frame arrived from `conn`. It also counts as hearing from the conn.
    ///
    /// Frames beyond the rate limit, oversized or malformed frames get an `error` reply;
    /// `max_errors` of those within 10 s close the conn (1008).
    pub fn receive_text(&mut self, now: Now, conn: ConnId, text: &str, out: &mut Vec<Output>) {
        let rate = self.limits.messages_per_sec;
        let max_frame = self.limits.max_text_frame_bytes();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_heard = c.last_heard.max(now.at);
        let result = c
            .bucket
            .admit(now.at, rate, text.len(), max_frame)
            .and_then(|()| self.parse_and_dispatch(now, conn, text, out));
        if let Err(reject) = result {
            self.reject(now, conn, reject, out);
        }
    }

    /// Sends an event produced elsewhere (e.g. the file store) to every connected conn.
    /// `msg` must be a JSON object with a string "type"; it is serialized once.
    pub fn broadcast(&mut self, msg: &Value, out: &mut Vec<Output>) {
        let typed = msg.get("type").is_some_and(Value::is_string);
        debug_assert!(typed, "broadcast needs a JSON object with a string type");
        if typed {
            self.send_to_all(None, &frame_ref(msg), out);
        }
    }

    fn parse_and_dispatch(
        &mut self,
        now: Now,
        conn: ConnId,
        text: &str,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        let (msg, ty) = parse_message(text)?;
        let ty = ty.as_str();
        self.dispatch(now, conn, ty, &msg, out).map_err(|mut r| {
            r.ref_type = Some(ty.to_owned());
            r
        })
    }

    /// One arm per message type.
    fn dispatch(
        &mut self,
        now: Now,
        conn: ConnId,
        ty: &str,
        msg: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        match ty {
            "hello" => self.on_hello(conn, msg, out),
            "clipboard_update" => self.on_clipboard_update(now, conn, msg, out),
            "clipboard_history" => {
                let items = self.clipboard.history();
                send(
                    out,
                    conn,
                    frame(json!({"type": "clipboard_history", "items": items})),
                );
                Ok(())
            }
            "ping" => {
                send(out, conn, frame(json!({"type": "pong"})));
                Ok(())
            }
            "list_devices" => {
                let devices = self.device_list();
                send(
                    out,
                    conn,
                    frame(json!({"type": "devices", "devices": devices})),
                );
                Ok(())
            }
            "enable_p2p" => self.on_enable_p2p(conn, msg, out),
            "disable_p2p" => self.on_disable_p2p(conn, out),
            "p2p_request" => self.on_p2p_request(now, conn, msg, out),
            "p2p_accept" => self.on_p2p_accept(now, conn, msg, out),
            "p2p_decline" => self.on_p2p_decline(conn, msg, out),
            "webrtc_signal" => self.on_webrtc_signal(now, conn, msg, out),
            "webrtc_offer" | "webrtc_answer" | "ice_candidate" => {
                self.on_target_signal(now, conn, ty, msg, out)
            }
            "p2p_connection_established" => self.on_p2p_established(conn, msg, out),
            "p2p_close" => self.on_p2p_close(conn, msg, out),
            "announce" => self.on_announce(conn, msg, out),
            "query" => self.on_query(conn, msg, out),
            t => Err(Reject::new(
                "unknown_type",
                format!("unknown message type `{t}`"),
            )),
        }
    }

    /// Sends the error reply and closes the conn once it has had `max_errors` of them
    /// within the current window: a client that keeps sending garbage is broken or hostile.
    fn reject(&mut self, now: Now, conn: ConnId, reject: Reject, out: &mut Vec<Output>) {
        let mut reply = json!({"type": "error", "code": reject.code, "message": reject.message});
        if let Some(ref_type) = reject.ref_type {
            reply["ref_type"] = Value::String(ref_type);
        }
        send(out, conn, frame(reply));
        // Some refusals are no sign of a broken client: asking for P2P while the box
        // refuses it, or a signal that raced the end of its session (a browser trickling
        // ICE candidates after its peer left) must not get the socket closed.
        if matches!(
            reject.code,
            "p2p_unavailable" | "no_session" | "no_request" | "peer_unavailable"
        ) {
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let count = c.errors.record(now.at);
        if self.limits.max_errors > 0 && count >= self.limits.max_errors {
            out.push(Output::Close {
                conn,
                code: 1008,
                reason: "too many bad messages",
            });
            self.disconnect(now, conn, out);
        }
    }

    /// `hello`: renames the device and/or sets its kind; everyone (sender included) gets
    /// `device_updated`.
    fn on_hello(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        let name = optional_str(msg, "name")?;
        let kind = optional_str(msg, "kind")?;
        let max = self.limits.max_name_len;
        let device = self.device_of_mut(conn);
        if let Some(name) = name {
            device.name = name_or_default(clean_label(name, max), &device.id);
        }
        if let Some(kind) = kind {
            device.kind = kind_or_default(clean_label(kind, max));
        }
        self.send_device_updated(conn, out);
        Ok(())
    }

    /// `clipboard_update`: stores the text under the next seq, pushes it to every other
    /// device and acks the sender with the seq it got.
    fn on_clipboard_update(
        &mut self,
        now: Now,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        let text = required_str(msg, "text")?;
        let max = self.limits.clipboard_max_bytes;
        if text.len() > max {
            return Err(Reject::new(
                "clipboard_too_large",
                format!("clipboard text is {} bytes; the limit is {max}", text.len()),
            ));
        }
        let device = &self.devices[&self.conns[&conn].device_id];
        let item = self
            .clipboard
            .push(text, device, now.unix_ms, self.limits.clipboard_history);
        send(
            out,
            conn,
            frame(json!({"type": "clipboard_ack", "seq": item.seq})),
        );
        self.send_to_all(Some(conn), &clipboard_update_frame(&item), out);
        Ok(())
    }

    /// `enable_p2p`: the device joins the P2P list. The message's `device_id` is ignored:
    /// the conn's own device id is authoritative, so a client cannot opt in another device.
    /// A `device_name` renames the device.
    fn on_enable_p2p(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        self.p2p_allowed()?;
        let new_name = optional_str(msg, "device_name")?;
        let max = self.limits.max_name_len;
        let device = self.device_of_mut(conn);
        let mut changed = false;
        if let Some(name) = new_name {
            let name = name_or_default(clean_label(name, max), &device.id);
            changed = name != device.name;
            device.name = name;
        }
        let id = device.id.clone();
        changed |= self.p2p.enabled.insert(id);
        if changed {
            self.send_device_updated(conn, out);
        }
        send(
            out,
            conn,
            frame(json!({
                "type": "p2p_enabled",
                "message": "P2P enabled: other P2P-enabled devices can now see this one",
            })),
        );
        // Sent even when nothing changed, so a client that lost its list gets it again.
        self.send_p2p_list(out);
        Ok(())
    }

    /// `disable_p2p`: the device leaves the P2P list; the others get the new list.
    /// As with `enable_p2p`, the message's `device_id` is ignored.
    fn on_disable_p2p(&mut self, conn: ConnId, out: &mut Vec<Output>) -> Result<(), Reject> {
        let id = self.conns[&conn].device_id.clone();
        let was_enabled = self.p2p_device_gone(&id, p2p::Ending::PeerDisabled, out);
        if was_enabled {
            self.send_device_updated(conn, out);
        }
        send(
            out,
            conn,
            frame(json!({
                "type": "p2p_disabled",
                "message": "P2P disabled: other devices can no longer see this one",
            })),
        );
        if was_enabled {
            self.send_p2p_list(out);
        }
        Ok(())
    }
}

// The box's own P2P switch (a phone on low battery turns P2P off).
impl Hub {
    /// Refuses P2P with `why` (every P2P-enabled device gets `p2p_disabled` with that
    /// reason, and `enable_p2p` gets error `p2p_unavailable` with it), or with None allows
    /// it again; devices then opt in anew.
    pub fn set_p2p_refusal(&mut self, why: Option<String>, out: &mut Vec<Output>) {
        if let Some(why) = &why {
            let enabled = self.p2p.enabled.clone();
            for device in &enabled {
                self.p2p_device_gone(device, p2p::Ending::PeerDisabled, out);
            }
            let conns: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| enabled.contains(&c.device_id))
                .map(|(&id, _)| id)
                .collect();
            for conn in conns {
                self.send_device_updated(conn, out);
                send(
                    out,
                    conn,
                    frame(json!({"type": "p2p_disabled", "reason": "box_power", "message": why})),
                );
            }
        }
        self.p2p.refusal = why;
    }
}

// Accessors for the shell and the rest of the box.
impl Hub {
    /// Name of a connected device (for labelling uploads), None if not connected.
    pub fn device_name(&self, device_id: &str) -> Option<&str> {
        self.devices.get(device_id).map(|d| d.name.as_str())
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// P2P requests and sessions open, in any stage.
    pub fn p2p_session_count(&self) -> usize {
        self.p2p.session_count()
    }

    /// Families with at least one device on `/signal`.
    pub fn family_count(&self) -> usize {
        self.families.family_count()
    }
}

// Building and addressing outgoing frames.
impl Hub {
    fn device_of_mut(&mut self, conn: ConnId) -> &mut Device {
        let id = &self.conns[&conn].device_id;
        self.devices.get_mut(id).expect("every conn has a device")
    }

    fn device_view<'a>(&self, d: &'a Device) -> DeviceView<'a> {
        DeviceView {
            id: &d.id,
            name: &d.name,
            kind: &d.kind,
            connected_at: d.connected_at,
            p2p: self.p2p.is_enabled(&d.id),
        }
    }

    /// Devices in a stable order: by `connected_at`, then id.
    fn sorted_devices(&self) -> Vec<&Device> {
        let mut devices: Vec<&Device> = self.devices.values().collect();
        devices.sort_by(|a, b| (a.connected_at, &a.id).cmp(&(b.connected_at, &b.id)));
        devices
    }

    fn device_list(&self) -> Vec<DeviceView<'_>> {
        self.sorted_devices()
            .into_iter()
            .map(|d| self.device_view(d))
            .collect()
    }

    fn send_welcome(&self, conn: ConnId, device_id: &str, out: &mut Vec<Output>) {
        let current = self.clipboard.current.as_deref();
        let welcome = json!({
            "type": "welcome",
            "device_id": device_id,
            "name": self.devices[device_id].name,
            "devices": self.device_list(),
            "clipboard": current,
            "clipboard_history": self.clipboard.history(),
            "limits": {
                "clipboard_max_bytes": self.limits.clipboard_max_bytes,
                "heartbeat_timeout_ms": duration_ms(self.limits.heartbeat_timeout),
            },
            "p2p": self.p2p_info(),
        });
        send(out, conn, frame(welcome));
        // Seed clients know only `clipboard_update`, so they learn the current text this way.
        if let Some(item) = current {
            send(out, conn, clipboard_update_frame(item));
        }
    }

    /// Tells everyone, sender included, the device's new state.
    fn send_device_updated(&self, conn: ConnId, out: &mut Vec<Output>) {
        let device = &self.devices[&self.conns[&conn].device_id];
        let updated = frame(json!({
            "type": "device_updated",
            "device": self.device_view(device),
        }));
        self.send_to_all(None, &updated, out);
    }

    /// Sends the current P2P list to every P2P-enabled device.
    fn send_p2p_list(&self, out: &mut Vec<Output>) {
        let enabled: Vec<&Device> = self
            .sorted_devices()
            .into_iter()
            .filter(|d| self.p2p.is_enabled(&d.id))
            .collect();
        let list: Vec<Value> = enabled
            .iter()
            .map(|d| json!({"id": d.id, "name": d.name}))
            .collect();
        let update = frame(json!({"type": "p2p_devices_update", "devices": list}));
        for d in enabled {
            send(out, d.conn, Rc::clone(&update));
        }
    }

    /// Sends one shared frame to every conn except `except`, in conn-id order.
    fn send_to_all(&self, except: Option<ConnId>, text: &Rc<str>, out: &mut Vec<Output>) {
        for &conn in self.conns.keys().filter(|&&c| Some(c) != except) {
            send(out, conn, Rc::clone(text));
        }
    }
}

/// DEVICE as it appears on the wire.
#[derive(Serialize)]
struct DeviceView<'a> {
    id: &'a str,
    name: &'a str,
    kind: &'a str,
    connected_at: u64,
    p2p: bool,
}

/// The seed-form clipboard push: `{"type":"clipboard_update", ...ITEM}`.
fn clipboard_update_frame(item: &ClipItem) -> Rc<str> {
    frame(json!({
        "type": "clipboard_update",
        "text": item.text,
        "seq": item.seq,
        "from": item.from,
        "from_name": item.from_name,
        "at": item.at,
    }))
}

fn send(out: &mut Vec<Output>, conn: ConnId, text: Rc<str>) {
    out.push(Output::Send { conn, text });
}

fn frame(value: Value) -> Rc<str> {
    frame_ref(&value)
}

fn frame_ref(value: &Value) -> Rc<str> {
    Rc::from(value.to_string())
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn valid_device_id(id: &str) -> bool {
    (1..=MAX_DEVICE_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Removes control chars and surrounding whitespace and cuts to `max_chars` chars, so a
/// name cannot break a UI line or grow without bound.
fn clean_label(raw: &str, max_chars: usize) -> String {
    let cleaned: String = raw
        .chars()
        .filter(|c| !c.is_control())
        .skip_while(|c| c.is_whitespace())
        .take(max_chars)
        .collect();
    cleaned.trim_end().to_owned()
}

fn name_or_default(name: String, device_id: &str) -> String {
    if name.is_empty() {
        let short: String = device_id.chars().take(6).collect();
        format!("Device {short}")
    } else {
        name
    }
}

fn kind_or_default(kind: String) -> String {
    if kind.is_empty() {
        "unknown".to_owned()
    } else {
        kind
    }
}

fn required_str<'a>(msg: &'a Map<String, Value>, field: &str) -> Result<&'a str, Reject> {
    msg.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| Reject::missing_field(field))
}

/// An optional string field: absent or null is None; any other non-string is an error.
fn optional_str<'a>(msg: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, Reject> {
    match msg.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Reject::missing_field(field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock the tests move by hand.
    pub(super) struct Clock {
        start: Instant,
    }

    impl Clock {
        pub(super) fn new() -> Self {
            Clock {
                start: Instant::now(),
            }
        }

        /// The time `ms` milliseconds after the start; unix ms starts at 1_000_000.
        pub(super) fn at(&self, ms: u64) -> Now {
            Now {
                at: self.start + Duration::from_millis(ms),
                unix_ms: 1_000_000 + ms,
            }
        }
    }

    pub(super) fn hub() -> Hub {
        Hub::new(HubLimits::default())
    }

    pub(super) fn join(hub: &mut Hub, now: Now, conn: ConnId, id: &str) -> Vec<Output> {
        let mut out = Vec::new();
        hub.connect(now, conn, id, None, None, &mut out)
            .expect("connect");
        out
    }

    pub(super) fn recv(hub: &mut Hub, now: Now, conn: ConnId, text: &str) -> Vec<Output> {
        let mut out = Vec::new();
        hub.receive_text(now, conn, text, &mut out);
        out
    }

    /// Every frame sent to `conn`, parsed.
    pub(super) fn to(out: &[Output], conn: ConnId) -> Vec<Value> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { conn: c, text } if *c == conn => {
                    Some(serde_json::from_str(text).expect("hub sends JSON"))
                }
                _ => None,
            })
            .collect()
    }

    /// The conns each sent frame went to, with its type.
    pub(super) fn sends(out: &[Output]) -> Vec<(ConnId, String)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { conn, text } => {
                    let v: Value = serde_json::from_str(text).unwrap();
                    Some((*conn, v["type"].as_str().unwrap().to_owned()))
                }
                Output::Close { .. } => None,
            })
            .collect()
    }

    pub(super) fn closes(out: &[Output]) -> Vec<(ConnId, u16, &'static str)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Close { conn, code, reason } => Some((*conn, *code, *reason)),
                Output::Send { .. } => None,
            })
            .collect()
    }

    pub(super) fn error_code(out: &[Output], conn: ConnId) -> Option<String> {
        to(out, conn)
            .into_iter()
            .find(|v| v["type"] == "error")
            .map(|v| v["code"].as_str().unwrap().to_owned())
    }

    #[test]
    fn welcome_lists_devices_and_limits() {
        let clock = Clock::new();
        let mut hub = hub();
        join(&mut hub, clock.at(0), 1, "alpha-device");
        let mut out = Vec::new();
        hub.connect(
            clock.at(5),
            2,
            "beta",
            Some("Beta\u{7} phone "),
            Some("phone"),
            &mut out,
        )
        .unwrap();

        let welcome = &to(&out, 2)[0];
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["device_id"], "beta");
        assert_eq!(welcome["name"], "Beta phone");
        assert_eq!(welcome["clipboard"], Value::Null);
        assert_eq!(welcome["clipboard_history"], json!([]));
        assert_eq!(
            welcome["limits"],
            json!({"clipboard_max_bytes": 65536, "heartbeat_timeout_ms": 15000})
        );
        assert_eq!(
            welcome["devices"],
            json!([
                {"id": "alpha-device", "name": "Device alpha-", "kind": "unknown",
                 "connected_at": 1_000_000, "p2p": false},
                {"id": "beta", "name": "Beta phone", "kind": "phone",
                 "connected_at": 1_000_005, "p2p": false},
            ])
        );
        assert_eq!(
            to(&out, 2).len(),
            1,
            "no clipboard yet, so only the welcome"
        );
    }

    #[test]
    fn join_and_leave_are_broadcast_to_the_others() {
        let clock = Clock::new();
        let mut hub = hub();
        join(&mut hub, clock.at(0), 1, "a");
        join(&mut hub, clock.at(0), 2, "b");
        let out = join(&mut hub, clock.at(0), 3, "c");
        assert_eq!(
            sends(&out),
            [
                (3, "welcome".into()),
                (1, "device_joined".into()),
                (2, "device_joined".into())
            ]
        );
        assert_eq!(to(&out, 1)[0]["device"]["id"], "c");

        let mut out = Vec::new();
        hub.disconnect(clock.at(1), 2, &mut out);
        assert_eq!(
            sends(&out),
            [(1, "device_left".into()), (3, "device_left".into())]
        );
        assert_eq!(
            to(&out, 1)[0],
            json!({"type": "device_left", "device_id": "b"})
        );
        assert_eq!((hub.device_count(), hub.conn_count()), (2, 2));
        assert_eq!(hub.device_name("b"), None);

        let mut out = Vec::new();
        hub.disconnect(clock.at(1), 2, &mut out);
        assert!(out.is_empty(), "unknown conn is a no-op");
    }

    #[test]
    fn same_device_id_replaces_the_old_conn_silently() {
        let clock = Clock::new();
        let mut hub = hub();
        join(&mut hub, clock.at(0), 1, "a");
        let mut out = Vec::new();
        hub.connect(clock.at(0), 2, "laptop", Some("Lap"), Some("pc"), &mut out)
            .unwrap();

        let out = join(&mut hub, clock.at(10), 3, "laptop");
        assert_eq!(closes(&out), [(2, 4000, "replaced by a newer connection")]);
        assert!(to(&out, 2).is_empty());
        assert!(!sends(&out).iter().any(|(_, t)| t == "device_left"));
        assert_eq!(to(&out, 3)[0]["type"], "welcome");
        assert_eq!(to(&out, 1)[0]["type"], "device_joined");
        // The device is inherited: name, kind and connected_at stay.
        assert_eq!(
            to(&out, 1)[0]["device"],
            json!({"id": "laptop", "name": "Lap", "kind": "pc",
                   "connected_at": 1_000_000, "p2p": false})
        );
        assert_eq!((hub.device_count(), hub.conn_count()), (2, 2));

        // The old conn is forgotten: its late frames and its close do nothing.
        assert!(recv(&mut hub, clock.at(11), 2, r#"{"type":"ping"}"#).is_empty());
        let mut out = Vec::new();
        hub.disconnect(clock.at(12), 2, &mut out);
        assert!(out.is_empty());
        assert_eq!(hub.device_name("laptop"), Some("Lap"));
    }

    #[test]
    fn full_box_refuses_new_devices_but_not_replacements() {
        let clock = Clock::new();
        let mut hub = Hub::new(HubLimits {
            max_devices: 2,
            ..HubLimits::default()
        });
        join(&mut hub, clock.at(0), 1, "a");
        join(&mut hub, clock.at(0), 2, "b");
        let mut out = Vec::new();
        assert_eq!(
            hub.connect(clock.at(0), 3, "c", None, None, &mut out),
            Err(ConnectError::Full)
        );
        assert!(out.is_empty());
        assert!(hub
            .connect(clock.at(0), 4, "b", None, None, &mut out)
            .is_ok());
        assert_eq!(hub.device_count(), 2);
        assert!(ConnectError::Full.to_string().contains("disconnect one"));
    }

    #[test]
    fn bad_device_ids_are_refused() {
        let clock = Clock::new();
        let mut hub = hub();
        let mut out = Vec::new();
        let long = "x".repeat(65);
        for bad in ["", "a b", "a/b", "é", long.as_str()] {
            assert_eq!(
                hub.connect(clock.at(0), 1, bad, None, None, &mut out),
                Err(ConnectError::BadDeviceId),
                "{bad:?}"
            );
        }
        assert!(out.is_empty());
        assert_eq!(hub.conn_count(), 0);
        let ok = "A-z_0.9".to_owned() + &"x".repeat(57);
        assert!(hub
            .connect(clock.at(0), 1, &ok, None, None, &mut out)
            .is_ok());
        assert!(ConnectError::BadDeviceId.to_string().contains("1 to 64"));
    }

    #[test]
    fn clipboard_goes_to_the_others_and_is_acked_to_the_sender() {
        let clock = Clock::new();
        let mut hub = hub();
        let mut out = Vec::new();
        hub.connect(clock.at(0), 1, "a", Some("Anna"), None, &mut out)
            .unwrap();
        join(&mut hub, clock.at(0), 2, "b");
        join(&mut hub, clock.at(0), 3, "c");

        let out = recv(
            &mut hub,
            clock.at(7),
            1,
            r#"{"type":"clipboard_update","text":"hi"}"#,
        );
        assert_eq!(to(&out, 1), [json!({"type": "clipboard_ack", "seq": 1})]);
        let pushed = json!({"type": "clipboard_update", "text": "hi", "seq": 1,
                            "from": "a", "from_name": "Anna", "at": 1_000_007});
        assert_eq!(to(&out, 2), std::slice::from_ref(&pushed));
        assert_eq!(to(&out, 3), [pushed]);
        // One serialization shared by all recipients.
        let texts: Vec<&Rc<str>> = out
            .iter()
            .filter_map(|o| match o {
                Output::Send { conn, text } if *conn != 1 => Some(text),
                _ => None,
            })
            .collect();
        assert!(Rc::ptr_eq(texts[0], texts[1]));
    }

    #[test]
    fn seq_follows_arrival_order() {
        let clock = Clock::new();
        let mut hub = hub();
        join(&mut hub, clock.at(0), 1, "a");
        join(&mut hub, clock.at(0), 2, "b");
        let mut seqs = Vec::new();
        for (i, conn) in [2, 1, 2, 1].into_iter().enumerate() {
            let msg = json!({"type": "clipboard_update", "text": format!("t{i}")});
            let out = recv(&mut hub, clock.at(1), conn, &msg.to_string());
            seqs.push(to(&out, conn)[0]["seq"].as_u64().unwrap());
        }
        assert_eq!(seqs, [1, 2, 3, 4]);
        let out = recv(&mut hub, clock.at(2), 1, r#"{"type":"clipboard_history"}"#);
        let items = &to(&out, 1)[0]["items"];
        let history: Vec<(u64, &str)> = items
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["seq"].as_u64().unwrap(), i["text"].as_str().unwrap()))
            .collect();
        assert_eq!(history, [(1, "t0"), (2, "t1"), (3, "t2"), (4, "t3")]);
    }

    #[test]
    fn history_is_bounded_and_drops_the_oldest() {
        let clock = Clock::new();
        let mut hub = Hub::new(HubLimits {
            clipboard_history: 3,
            ..HubLimits::default()
        });
        join(&mut hub, clock.at(0), 1, "a");
        for i in 1..=5 {
            let msg = json!({"type": "clipboard_update", "text": format!("t{i}")});
            recv(&mut hub, clock.at(i * 100), 1, &msg.to_string());
        }
        let out = recv(
            &mut hub,
            clock.at(1000),
            1,
            r#"{"type":"clipboard_history"}"#,
        );
        let reply = &to(&out, 1)[0];
        assert_eq!(reply["type"], "clipboard_history");
        let seqs: Vec<u64> = reply["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(
            reply["items"][0],
            json!({"seq": 3, "text": "t3", "from": "a", "from_name": "Device a", "at": 1_000_300})
        );
    }

    #[test]
    fn connecting_device_gets_current_clipboard_in_both_forms() {
        let clock = Clock::new();
        let mut hub = hub();
        join(&mut hub, clock.at(0), 1, "a");
        recv(
            &mut hub,
            clock.at(1),
            1,
            r#"{"type":"clipboard_update","text":"old"}"#,
        );
        recv(
            &mut hub,
            clock.at(2),
            1,
            r#"{"type":"clipboard_update","text":"new"}"#,
        );

        let out = join(&mut hub, clock.at(3), 2, "b");
        let frames = to(&out, 2);
        assert_eq!(frames.len(), 2);
        let item = json!({"seq": 2, "text": "new", "from": "a", "from_name": "Device a",
                          "at": 1_000_002});
        assert_eq!(frames[0]["type"], "welcome");
        assert_eq!(frames[0]["clipboard"], item);
        assert_eq!(frames[0]["clipboard_history"].as_array().unwrap().len(), 2);
        let mut seed_form = item;
        seed_form["type"] = json!("clipboard_update");
        assert_eq!(frames[1], seed_form);
    }

    #[test]
    fn too_large_clipboard_is_refused_and_not_stored() {
        let clock = Clock::new();
        let mut hub = Hub::new(HubLimits {
            clipboard_max_bytes: 4,
            ..HubLimits::default()
        });
        join(&mut hub, clock.at(0), 1, "a");
        join(&mut hub, clock.at(0), 2, "b");
        let out = recv(
            &mut hub,
            clock.at(1),
            1,
            r#"{"type":"clipboard_update","text":"12345"}"#,
        );
        let err = &to(&out, 1)[0];
        assert_eq!(err["code"], "clipboard_too_large");
        assert_eq!(err["ref_type"], "clipboard_update");
        assert!(to(&out, 2).is_empty());
        let out = recv(
            &mut hub,
            clock.at(1),
            1,
            r#"{"type":"clipboard_update","text":"1234"}"#,
        );
        assert_eq!(to(&out, 1)[0]["seq"], 1, "the refused text took no seq");

        // A frame far beyond what a clipboard could need is refused unparsed.
        let huge = format!(r#"{{"type":"x","pad":"{}"}}"#, "p".repeat(5000));
        let out = recv(&mut hub, clock.at(1), 1, &huge);
        let err = &to(&out, 1)[0];
        assert_eq!(err["code"], "too_large");
        assert_eq!(err.get("ref_type"), None);
    }

    #[test]
    fn malformed_messages_get_errors_and_keep_the_conn_open() {
        let clock = Clock::new();
        let mut hub = hub();
        join(&mut hub, clock.at(0), 1, "a");
        join(&mut hub, clock.at(0), 2, "b");
        let cases = [
            ("{not json", "bad_json", None),
            ("[1,2]", "bad_json", None),
            (r#"{"text":"x"}"#, "missing_type", None),
            (r#"{"type":7}"#, "missing_type", None),
            (r#"{"type":"dance"}"#, "unknown_type", Some("dance")),
            (
                r#"{"type":"clipboard_update"}"#,
                "missing_field",
                Some("clipboard_update"),
            ),
            (
                r#"{"type":"clipboard_update","text":3}"#,
                "missing_field",
                Some("clipboard_update"),
            ),
            (
                r#"{"type":"hello","name":5}"#,
                "missing_field",
                Some("hello"),
            ),
            (
                r#"{"type":"p2p_request","from":"a","to":"b"}"#,
                "p2p_not_enabled",
                Some("p2p_request"),
            ),
            (
                r#"{"type":"webrtc_signal"}"#,
                "missing_field",
                Some("webrtc_signal"),
            ),
        ];
        for (i, (text, code, ref_type)) in cases.into_iter().enumerate() {
            let out = recv(&mut hub, clock.at(i as u64), 1, text);
            assert!(closes(&out).is_empty(), "{text}");
            let frames = to(&out, 1);
            assert_eq!(frames.len(), 1, "{text}");
            assert_eq!(frames[0]["type"], "error");
            assert_eq!(frames[0]["code"], code, "{text}");
            assert_eq!(frames[0]["ref_type"].as_str(), ref_type, "{text}");
            assert!(to(&out, 2).is_empty(), "other devices are not bothered");
        }
        let out = recv(&mut hub, clock.at(20), 1, "{oops");
        let message = to(&out, 1)[0]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("line 1 column"), "serde's text: {message}");
        let out = recv(&mut hub, clock.at(20), 1, r#"{"type":"dance"}"#);
        assert!(to(&out, 1)[0]["message"]
            .as_str()
            .unwrap()
            .contains("dance"));
        let out = recv(&mut hub, clock.at(20), 1, r#"{"type":"clipboard_update"}"#);
        assert!(to(&out, 1)[0]["message"].as_str().unwrap().contains("text"));
        assert_eq!(hub.conn_count(), 2);
    }

    #[test]
    fn error_flood_closes_the_conn_and_the_window_resets() {
        let clock = Clock::new();
        let mut hub = Hub::new(HubLimits {
            max_errors: 5,
            ..HubLimits::default()
        });
        join(&mut hub, clock.at(0), 1, "a");
        join(&mut hub, clock.at(0), 2, "b");

        // Four errors, then a quiet 10 s: the window restarts.
        for i in 0..4 {
            assert!(closes(&recv(&mut hub, clock.at(i), 1, "?")).is_empty());
        }
        for i in 0..4 {
            let out = recv(&mut hub, clock.at(10_000 + i), 1, "?");
            assert!(closes(&out).is_empty());
        }
        let out = recv(&mut hub, clock.at(10_100), 1, "?");
        assert_eq!(error_code(&out, 1).as_deref(), Some("bad_json"));
        assert_eq!(closes(&out), [(1, 1008, "too many bad messages")]);
        assert_eq!(
            to(&out, 2),
            [json!({"type": "device_left", "device_id": "a"})]
        );
        assert_eq!(hub.conn_count(), 1);
    }

    #[test]
    fn stale_ice_candidates_do_not_count_as_abuse() {
        let clock = Clock::new();
        let mut hub = Hub::new(HubLimits {
            max_errors: 3,
            ..HubLimits::default()
        });
        join(&mut hub, clock.at(0), 1, "a");
        for i in 0..10 {
            let text = r#"{"type":"ice_candidate","candidate":"c","target":"b","from":"a"}"#;
            let out = recv(&mut hub, clock.at(i), 1, text);
            assert_eq!(error_code(&out, 1).as_deref(), Some("no_session"));
            assert!(closes(&out).is_empty());
        }
        assert_eq!(hub.conn_count(), 1);
    }

    #[test]
    fn rate_limit_drops_beyond_the_burst_and_refills() {
        let clock = Clock::new();
        let mut hub = Hub::new(HubLimits {
            messages_per_sec: 5,
            ..HubLimits::default()
        });
        join(&mut hub, clock.at(0), 1, "a");
        for _ in 0..10 {
            let out = recv(&mut hub, clock.at(0), 1, r#"{"type":"ping"}"#);
            assert_eq!(to(&out, 1), [json!({"type": "pong"})]);
        }
        let out = recv(&mut hub, clock.at(0), 1, r#"{"type":"ping"}"#);
        assert_eq!(error_code(&out, 1).as_deref(), Some("rate_limited"));
        // 200 ms at 5/s refills exactly one message.
        let out = recv(&mut hub, clock.at(200), 1, r#"{"type":"ping"}"#);
        assert_eq!(to(&out, 1), [json!({"type": "pong"})]);
        let out = recv(&mut hub, clock.at(200), 1, r#"{"type":"ping"}"#);
        assert_eq!(error_code(&out, 1).as_deref(), Some("rate_limited"));
    }

    #[test]
    fn rate_limited_flood_ends_in_close() {
        let clock = Clock::new();
        let mut hub = hub();
        join(&mut hub, clock.at(0), 1, "a");
        let mut closed = Vec::new();
        for _ in 0..200 {
            closed.extend(closes(&recv(
                &mut hub,
                clock.at(0),
                1,
                r#"{"type":"ping"}"#,
            )));
        }
        // 100 pass (burst), the next 20 are rate_limited errors, the 20th closes.
        assert_eq!(closed, [(1, 1008, "too many bad messages")]);
        assert_eq!(hub.conn_count(), 0);
    }

    #[test]
    fn heartbeat_closes_exactly_the_silent_conn() {
        let clock = Clock::new();
        let mut hub = hub();
        assert_eq!(hub.poll_timeout(), None);
        join(&mut hub, clock.at(0), 1, "a");
        join(&mut hub, clock.at(1_000), 2, "b");
        join(&mut hub, clock.at(2_000), 3, "c");
        assert_eq!(hub.poll_timeout(), Some(clock.at(15_000).at));

        hub.heard_from(clock.at(10_000), 1); // a pong
        recv(&mut hub, clock.at(10_000), 3, r#"{"type":"ping"}"#); // a text frame also counts
        assert_eq!(hub.poll_timeout(), Some(clock.at(16_000).at));

        let mut out = Vec::new();
        hub.handle_timeout(clock.at(15_999), &mut out);
        assert!(out.is_empty(), "nothing is due yet");

        hub.handle_timeout(clock.at(16_000), &mut out);
        assert_eq!(closes(&out), [(2, 1001, "heartbeat timeout")]);
        assert_eq!(
            sends(&out),
            [(1, "device_left".into()), (3, "device_left".into())]
        );
        assert_eq!(hub.conn_count(), 2);
        assert_eq!(hub.poll_timeout(), Some(clock.at(25_000).at));
    }

    #[test]
    fn conns_timing_out_together_are_not_told_about_each_other() {
        let clock = Clock::new();
        let mut hub = hub();
        join(&mut hub, clock.at(0), 1, "a");
        join(&mut hub, clock.at(0), 2, "b");
        join(&mut hub, clock.at(0), 3, "c");
        hub.heard_from(clock.at(5_000), 3);
        let mut out = Vec::new();
        hub.handle_timeout(clock.at(15_000), &mut out);
        assert_eq!(closes(&out).len(), 2);
        assert_eq!(
            sends(&out),
            [(3, "device_left".into()), (3, "device_left".into())]
        );
        assert_eq!(hub.device_count(), 1);
    }

    #[test]
    fn hello_renames_and_everyone_hears_it() {
        let clock = Clock::new();
        let mut hub = Hub::new(HubLimits {
            max_name_len: 5,
            ..HubLimits::default()
        });
        join(&mut hub, clock.at(0), 1, "a");
        join(&mut hub, clock.at(0), 2, "b");
        let out = recv(
            &mut hub,
            clock.at(1),
            1,
            r#"{"type":"hello","name":"  Kitchen\ntablet","kind":"tablet"}"#,
        );
        let device = json!({"id": "a", "name": "Kitch", "kind": "table",
                            "connected_at": 1_000_000, "p2p": false});
        let updated = json!({"type": "device_updated", "device": device});
        assert_eq!(to(&out, 1), std::slice::from_ref(&updated));
        assert_eq!(to(&out, 2), [updated]);
        assert_eq!(hub.device_name("a"), Some("Kitch"));

        let out = recv(&mut hub, clock.at(2), 2, r#"{"type":"list_devices"}"#);
        let list = &to(&out, 2)[0];
        assert_eq!(list["type"], "devices");
        assert_eq!(list["devices"][0], device);
        // The default name is fixed-size, so it is not cut.
        assert_eq!(list["devices"][1]["name"], "Device b");
    }

    #[test]
    fn enable_and_disable_p2p() {
        let clock = Clock::new();
        let mut hub = hub();
        join(&mut hub, clock.at(0), 1, "a");
        join(&mut hub, clock.at(1), 2, "b");
        join(&mut hub, clock.at(2), 3, "c");

        let out = recv(
            &mut hub,
            clock.at(3),
            1,
            r#"{"type":"enable_p2p","device_id":"a","device_name":"Anna"}"#,
        );
        let a = to(&out, 1);
        assert_eq!(a[0]["type"], "device_updated");
        assert_eq!(a[0]["device"]["name"], "Anna");
        assert_eq!(a[0]["device"]["p2p"], true);
        assert_eq!(a[1]["type"], "p2p_enabled");
        assert!(a[1]["message"].is_string());
        assert_eq!(
            a[2],
            json!({"type": "p2p_devices_update", "devices": [{"id": "a", "name": "Anna"}]})
        );
        assert_eq!(sends(&to_outputs(&out, 2)), [(2, "device_updated".into())]);

        // A mismatching device_id is ignored: c opts in itself, not b.
        let out = recv(
            &mut hub,
            clock.at(4),
            3,
            r#"{"type":"enable_p2p","device_id":"b"}"#,
        );
        let list = json!({"type": "p2p_devices_update",
                          "devices": [{"id": "a", "name": "Anna"}, {"id": "c", "name": "Device c"}]});
        assert_eq!(to(&out, 1).last().unwrap(), &list);
        assert_eq!(to(&out, 3).last().unwrap(), &list);
        assert!(!to(&out, 2)
            .iter()
            .any(|v| v["type"] == "p2p_devices_update"));

        let out = recv(
            &mut hub,
            clock.at(5),
            1,
            r#"{"type":"disable_p2p","device_id":"a"}"#,
        );
        let a = to(&out, 1);
        assert_eq!(a[0]["type"], "device_updated");
        assert_eq!(a[0]["device"]["p2p"], false);
        assert_eq!(a[1]["type"], "p2p_disabled");
        assert_eq!(a.len(), 2, "the disabler gets no list");
        assert_eq!(
            to(&out, 3).last().unwrap(),
            &json!({"type": "p2p_devices_update", "devices": [{"id": "c", "name": "Device c"}]})
        );

        // Disabling again changes nothing and tells nobody else.
        let out = recv(&mut hub, clock.at(6), 1, r#"{"type":"disable_p2p"}"#);
        assert_eq!(sends(&out), [(1, "p2p_disabled".into())]);
    }

    #[test]
    fn a_box_on_low_battery_refuses_p2p_and_says_why() {
        let clock = Clock::new();
        let mut hub = hub();
        join(&mut hub, clock.at(0), 1, "a");
        join(&mut hub, clock.at(1), 2, "b");
        recv(&mut hub, clock.at(2), 1, r#"{"type":"enable_p2p"}"#);

        let mut out = Vec::new();
        hub.set_p2p_refusal(Some("battery at 8%".into()), &mut out);
        let a = to(&out, 1);
        assert_eq!(a[0]["type"], "device_updated");
        assert_eq!(a[0]["device"]["p2p"], false);
        assert_eq!(
            a[1],
            json!({"type": "p2p_disabled", "reason": "box_power", "message": "battery at 8%"})
        );
        assert_eq!(sends(&to_outputs(&out, 2)), [(2, "device_updated".into())]);

        // Asking again gets the reason, as often as the client likes, without being closed.
        for i in 0..30 {
            let out = recv(&mut hub, clock.at(3 + i), 2, r#"{"type":"enable_p2p"}"#);
            let b = to(&out, 2);
            assert_eq!(b.len(), 1);
            assert_eq!(b[0]["code"], "p2p_unavailable");
            assert_eq!(b[0]["message"], "battery at 8%");
        }

        let mut out = Vec::new();
        hub.set_p2p_refusal(None, &mut out);
        assert!(out.is_empty());
        let out = recv(&mut hub, clock.at(40), 2, r#"{"type":"enable_p2p"}"#);
        assert!(to(&out, 2).iter().any(|v| v["type"] == "p2p_enabled"));
    }

    /// Outputs addressed to `conn`, kept as outputs.
    pub(super) fn to_outputs(out: &[Output], conn: ConnId) -> Vec<Output> {
        out.iter()
            .filter(|o| matches!(o, Output::Send { conn: c, .. } if *c == conn))
            .cloned()
            .collect()
    }

    #[test]
    fn disconnect_and_replacement_remove_from_p2p_list() {
        let clock = Clock::new();
        let mut hub = hub();
        for (conn, id) in [(1, "a"), (2, "b"), (3, "c")] {
            join(&mut hub, clock.at(conn), conn, id);
            recv(&mut hub, clock.at(10), conn, r#"{"type":"enable_p2p"}"#);
        }
        let mut out = Vec::new();
        hub.disconnect(clock.at(20), 2, &mut out);
        let list = json!({"type": "p2p_devices_update",
                          "devices": [{"id": "a", "name": "Device a"}, {"id": "c", "name": "Device c"}]});
        assert_eq!(
            to(&out, 1),
            [
                json!({"type": "device_left", "device_id": "b"}),
                list.clone()
            ]
        );
        assert_eq!(to(&out, 3)[1], list);

        // A replaced socket ends the opt-in too; the new conn must enable again.
        let out = join(&mut hub, clock.at(30), 4, "c");
        assert_eq!(to(&out, 4)[0]["devices"][1]["p2p"], false);
        assert_eq!(
            to(&out, 1).last().unwrap(),
            &json!({"type": "p2p_devices_update", "devices": [{"id": "a", "name": "Device a"}]})
        );
        assert!(to(&out, 4)
            .iter()
            .all(|v| v["type"] != "p2p_devices_update"));
    }

    #[test]
    fn broadcast_shares_one_serialization() {
        let clock = Clock::new();
        let mut hub = hub();
        join(&mut hub, clock.at(0), 1, "a");
        join(&mut hub, clock.at(0), 2, "b");
        let mut out = Vec::new();
        hub.broadcast(&json!({"type": "file_added", "name": "x.txt"}), &mut out);
        let texts: Vec<(ConnId, &Rc<str>)> = out
            .iter()
            .map(|o| match o {
                Output::Send { conn, text } => (*conn, text),
                Output::Close { .. } => panic!("unexpected close"),
            })
            .collect();
        assert_eq!(texts.len(), 2);
        assert_eq!((texts[0].0, texts[1].0), (1, 2));
        assert!(Rc::ptr_eq(texts[0].1, texts[1].1));
        assert_eq!(
            serde_json::from_str::<Value>(texts[0].1).unwrap(),
            json!({"type": "file_added", "name": "x.txt"})
        );
    }

    #[test]
    fn labels_are_cleaned() {
        assert_eq!(clean_label(" \u{1b}[31mred\u{0} ", 64), "[31mred");
        assert_eq!(clean_label("ééééé", 3), "ééé");
        assert_eq!(
            name_or_default(clean_label("\n\t ", 10), "abcdefgh"),
            "Device abcdef"
        );
    }
}
