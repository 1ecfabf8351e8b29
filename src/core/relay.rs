//! Device-to-device sends through the box: offers, accept/decline, chunks paced by the
//! [`ChunkRing`], acknowledgements, cancel, completion with a SHA-256 check, resume after a
//! dropped socket, and store-and-forward through per-device inboxes on disk.
//! A sans-IO state machine beside the hub: the shell feeds it frames, disk answers and
//! `now`, and carries out the [`RelayOutput`]s. Never touches a socket, a file or the clock;
//! every map it owns is bounded by [`RelayLimits`].
//!
//! ```text
//!  sender A ──chunk frames──▶ [lane of transfer T in the ring] ──▶ receiver B (or inbox file)
//!         ◀──relay_window────  credit = slots granted, freed by B's relay_ack
//! ```

use super::hash::Digest;
use super::hub::{valid_device_id, ConnId, Now};
use super::ring::{ChunkRing, Lane, PushError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Transfer ids are given by the box, from 1, never reused while it runs.
pub type TransferId = u32;

/// Bytes before a chunk's payload in a binary frame: transfer id and chunk index, each a
/// big-endian u32.
pub const HEADER_LEN: usize = 8;

/// Longest file name an offer may carry, in bytes.
const MAX_NAME_BYTES: usize = 255;

/// Longest `ref` a sender may attach to an offer (echoed back).
const MAX_REF_BYTES: usize = 64;

/// The header of a chunk frame.
pub fn encode_header(id: TransferId, index: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&id.to_be_bytes());
    h[4..].copy_from_slice(&index.to_be_bytes());
    h
}

/// Splits a chunk frame into transfer id, chunk index and payload. None if shorter than
/// the header.
pub fn decode_header(frame: &[u8]) -> Option<(TransferId, u32, &[u8])> {
    if frame.len() < HEADER_LEN {
        return None;
    }
    let id = u32::from_be_bytes(frame[..4].try_into().ok()?);
    let index = u32::from_be_bytes(frame[4..8].try_into().ok()?);
    Some((id, index, &frame[HEADER_LEN..]))
}

/// The relay's memory and time budget (from `[relay]` in the config).
#[derive(Clone, Debug)]
pub struct RelayLimits {
    /// Bytes per chunk, the ring's slot size.
    pub chunk_size: usize,
    /// Slots in the ring.
    pub slots: usize,
    /// Transfers at once, box-wide; also the ring's lanes.
    pub max_transfers: usize,
    /// Transfers one device takes part in at once.
    pub max_per_device: usize,
    /// How long a paused transfer waits for the missing side.
    pub grace: Duration,
    /// Longest an offer waits for an answer.
    pub offer_timeout: Duration,
    /// How long an inbox entry is kept, in ms.
    pub inbox_ttl_ms: u64,
    /// Inbox entries (stored plus being stored), box-wide.
    pub max_inbox: usize,
    /// Devices one device may mark for auto-accept.
    pub max_auto_accept: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            chunk_size: 256 << 10,
            slots: 32,
            max_transfers: 64,
            max_per_device: 16,
            grace: Duration::from_secs(30),
            offer_timeout: Duration::from_secs(600),
            inbox_ttl_ms: 7 * 24 * 3600 * 1000,
            max_inbox: 256,
            max_auto_accept: 64,
        }
    }
}

/// A send waiting on the box for its recipient. Persisted beside its bytes by the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// Names the entry's files on disk: 16 hex digits, chosen by the box.
    pub key: String,
    pub from: String,
    pub from_name: String,
    pub to: String,
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// Unix ms when the last byte was stored and verified.
    pub stored_at: u64,
    /// The sender's `ref` for the send, passed on with the stored offer (entries stored
    /// before refs were kept have none).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub client_ref: Option<String>,
}

/// What the shell must do after a call.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayOutput {
    /// Send this text frame to this connection.
    Send { conn: ConnId, text: Rc<str> },
    /// Send chunk `index` of transfer `id` as a binary frame to `conn`; the shell reads it
    /// with [`Relay::chunk`] when it writes, and skips it if that returns None.
    Chunk {
        conn: ConnId,
        id: TransferId,
        index: u32,
    },
    /// Create the inbox file `key` for `size` bytes (checking the quota); answer with
    /// [`Relay::inbox_opened`].
    InboxOpen {
        id: TransferId,
        key: String,
        size: u64,
    },
    /// Write chunk `index` (bytes from [`Relay::chunk`], now) at `offset` of inbox file
    /// `key`; answer with [`Relay::inbox_written`].
    InboxWrite {
        id: TransferId,
        key: String,
        index: u32,
        offset: u64,
    },
    /// Make inbox file `key` durable, hash it, and record `entry`; answer with
    /// [`Relay::inbox_stored`] and the hash the file has.
    InboxFinish { id: TransferId, entry: InboxEntry },
    /// Read `len` bytes at `offset` of inbox file `key`; answer with [`Relay::inbox_chunk`].
    InboxRead {
        id: TransferId,
        key: String,
        index: u32,
        offset: u64,
        len: usize,
    },
    /// Delete inbox file `key` and its record.
    InboxDelete { key: String },
}

/// Where a transfer's bytes come from or go to.
#[derive(Clone, Debug, PartialEq)]
enum End {
    Device,
    /// An inbox file, by key.
    Inbox(String),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Waiting for the receiver's answer until `deadline`; then into the inbox if asked.
    Offered {
        deadline: Instant,
        inbox_fallback: bool,
    },
    /// Waiting for the inbox file to be created.
    Opening,
    Running,
    /// Waiting for the inbox file to be verified and recorded.
    Finishing,
}

/// One send. Invariants while it has a lane: chunks `[acked, received)` are in the lane
/// (oldest first), `[acked, forwarded)` of them went to the receiver, and the lane's credit
/// is `window_end - received`.
#[derive(Debug)]
struct Transfer {
    id: TransferId,
    from: String,
    from_name: String,
    to: String,
    name: String,
    size: u64,
    chunks: u32,
    start: u32,
    declared: Option<Digest>,
    sender_sha: Option<Digest>,
    receiver_sha: Option<Digest>,
    source: End,
    sink: End,
    phase: Phase,
    lane: Option<Lane>,
    received: u32,
    forwarded: u32,
    /// Highest chunk count ever forwarded: acks up to it are believable.
    forwarded_hw: u32,
    acked: u32,
    window_end: u32,
    /// What the sender was last told, so it is told only of changes.
    told: (u32, u32),
    /// Set while one side's socket is gone.
    paused_until: Option<Instant>,
    /// An inbox read or write is under way (one at a time per transfer).
    busy: bool,
    client_ref: Option<String>,
}

impl Transfer {
    fn chunk_len(&self, index: u32, chunk_size: usize) -> usize {
        let start = u64::from(index) * chunk_size as u64;
        (self.size - start).min(chunk_size as u64) as usize
    }

    fn expected_sha(&self) -> Option<Digest> {
        self.declared.or(self.sender_sha)
    }

    fn involves(&self, device: &str) -> bool {
        self.from == device || self.to == device
    }

    fn describe(&self, chunk_size: usize) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("from".into(), json!(self.from));
        m.insert("from_name".into(), json!(self.from_name));
        m.insert("to".into(), json!(self.to));
        m.insert("name".into(), json!(self.name));
        m.insert("size".into(), json!(self.size));
        m.insert("sha256".into(), json!(self.declared.map(|d| d.to_hex())));
        m.insert("chunk_size".into(), json!(chunk_size));
        m.insert("chunks".into(), json!(self.chunks));
        m.insert("start_chunk".into(), json!(self.start));
        // The sender's label (e.g. the P2P transfer this send continues), for both sides.
        if let Some(r) = &self.client_ref {
            m.insert("ref".into(), json!(r));
        }
        m
    }
}

/// A connected device as the relay sees it.
#[derive(Debug)]
struct Peer {
    device: String,
    name: String,
    /// Devices whose offers this one accepts without asking.
    auto_accept: Vec<String>,
}

/// A refused message: error code and text for the `error` reply.
struct Reject {
    code: &'static str,
    message: String,
}

/// An optional boolean field: absent or null is false.
fn opt_bool(msg: &Map<String, Value>, field: &str) -> Result<bool, Reject> {
    match msg.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(reject(
            "missing_field",
            format!("field `{field}` must be true or false"),
        )),
    }
}

fn reject(code: &'static str, message: impl Into<String>) -> Reject {
    Reject {
        code,
        message: message.into(),
    }
}

/// All relay transfers and inboxes of one box.
pub struct Relay {
    limits: RelayLimits,
    ring: ChunkRing,
    /// At most `max_transfers`.
    transfers: BTreeMap<TransferId, Transfer>,
    next_id: TransferId,
    /// One per connected device (the hub bounds devices).
    peers: HashMap<ConnId, Peer>,
    online: HashMap<String, ConnId>,
    /// Stored sends, at most `max_inbox` together with transfers being stored.
    inbox: Vec<InboxEntry>,
    /// Source of inbox keys; the shell seeds it with randomness.
    key_seed: u64,
    /// `relay_delivered`/`relay_expired`/`relay_declined` for senders that were away, by
    /// device; at most `max_inbox`, oldest dropped first.
    notices: VecDeque<(String, Value)>,
    /// Transfers' last words, by device, until the instant given; at most
    /// `2 × max_transfers`. See [`Relay::send_to_device`].
    recent: VecDeque<(String, Instant, Value)>,
    /// The latest `now` seen, for stamping `recent` from calls that carry no time.
    clock: Instant,
}

// Lifecycle: construction, devices coming and going, time passing.
impl Relay {
    /// A relay with its ring allocated (the only large allocation) and the inbox entries
    /// found on disk. `key_seed` makes inbox keys unpredictable across runs.
    pub fn new(limits: RelayLimits, inbox: Vec<InboxEntry>, key_seed: u64) -> Relay {
        let ring = ChunkRing::new(limits.slots, limits.chunk_size, limits.max_transfers);
        Relay {
            limits,
            ring,
            transfers: BTreeMap::new(),
            next_id: 1,
            peers: HashMap::new(),
            online: HashMap::new(),
            inbox,
            key_seed: key_seed | 1,
            notices: VecDeque::new(),
            recent: VecDeque::new(),
            clock: Instant::now(),
        }
    }

    /// `device` is connected on `conn` (a reconnect replaces its old conn). Paused
    /// transfers it takes part in resume; pending offers and inbox entries for it are
    /// (re)sent.
    pub fn connect(
        &mut self,
        now: Now,
        conn: ConnId,
        device: &str,
        name: &str,
        out: &mut Vec<RelayOutput>,
    ) {
        if let Some(&old) = self.online.get(device) {
            self.disconnect(now, old, out);
        }
        self.peers.insert(
            conn,
            Peer {
                device: device.to_owned(),
                name: name.to_owned(),
                auto_accept: Vec::new(),
            },
        );
        self.online.insert(device.to_owned(), conn);
        self.clock = now.at;
        // Last words of transfers it may have missed (kept until they expire: this socket
        // may drop too), then what became of its stored sends while it was away.
        self.recent.retain(|(_, until, _)| *until > now.at);
        for (_, _, msg) in self.recent.iter().filter(|(d, _, _)| d == device) {
            send(out, conn, msg.clone());
        }
        let (mine, others): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.notices)
            .into_iter()
            .partition(|(d, _)| d == device);
        self.notices = others;
        for (_, msg) in mine {
            send(out, conn, msg);
        }
        let ids: Vec<TransferId> = self
            .transfers
            .values()
            .filter(|t| t.involves(device))
            .map(|t| t.id)
            .collect();
        for id in ids {
            let t = &self.transfers[&id];
            match t.phase {
                Phase::Offered { .. } if t.to == device => {
                    let mut m = t.describe(self.limits.chunk_size);
                    m.insert("type".into(), json!("relay_offer"));
                    if let End::Inbox(_) = t.source {
                        m.insert("stored".into(), json!(true));
                    }
                    send(out, conn, Value::Object(m));
                }
                _ if t.paused_until.is_some() => self.try_resume(id, out),
                _ => {}
            }
        }
        self.offer_inbox(now, device, out);
    }

    /// `conn` closed. Running transfers of its device pause for the grace period (the other
    /// side gets `relay_paused`); offers it made are withdrawn. Unknown conn: no-op.
    pub fn disconnect(&mut self, now: Now, conn: ConnId, out: &mut Vec<RelayOutput>) {
        let Some(peer) = self.peers.remove(&conn) else {
            return;
        };
        if self.online.get(&peer.device) == Some(&conn) {
            self.online.remove(&peer.device);
        }
        let device = peer.device;
        self.clock = now.at;
        let ids: Vec<TransferId> = self
            .transfers
            .values()
            .filter(|t| t.involves(&device))
            .map(|t| t.id)
            .collect();
        for id in ids {
            let Some(mut t) = self.transfers.remove(&id) else {
                continue;
            };
            // Only a side that is a device can go away (the other may be an inbox file).
            let party = (t.from == device && t.source == End::Device)
                || (t.to == device && t.sink == End::Device);
            if !party {
                self.transfers.insert(id, t);
                continue;
            }
            match t.phase {
                Phase::Offered { .. } if t.to == device => {
                    // The offer waits for the receiver (or its deadline), or, from the
                    // inbox, is made again at its next connect.
                    if t.source == End::Device {
                        self.transfers.insert(id, t);
                    }
                }
                Phase::Offered { .. } => {
                    self.send_to_device(
                        &t.to,
                        json!({"type": "relay_cancelled", "id": id, "by": device, "reason": "sender_left"}),
                        out,
                    );
                }
                _ => {
                    if t.paused_until.is_none() {
                        t.paused_until = Some(now.at + self.limits.grace);
                        self.rewind(&mut t);
                        // The other side, if it is a device (not an inbox file).
                        let other = if t.from == device {
                            (t.sink == End::Device).then_some(&t.to)
                        } else {
                            (t.source == End::Device).then_some(&t.from)
                        };
                        if let Some(other) = other {
                            let msg = json!({"type": "relay_paused", "id": id,
                                "reason": "peer_disconnected", "acked": t.acked,
                                "grace_ms": self.limits.grace.as_millis() as u64});
                            self.send_to_device(other, msg, out);
                        }
                    }
                    self.transfers.insert(id, t);
                }
            }
        }
        // Chunks of the paused transfers were dropped: others may get their slots.
        self.pump_all(out);
    }

    /// Earliest instant at which [`Relay::handle_timeout`] has work.
    pub fn poll_timeout(&self, now: Now) -> Option<Instant> {
        let transfers = self.transfers.values().filter_map(|t| match t.phase {
            Phase::Offered { deadline, .. } => Some(deadline),
            _ => t.paused_until,
        });
        let inbox = self.inbox.iter().map(|e| {
            let due = e.stored_at.saturating_add(self.limits.inbox_ttl_ms);
            now.at + Duration::from_millis(due.saturating_sub(now.unix_ms))
        });
        transfers.chain(inbox).min()
    }

    /// Offers past their deadline go to the inbox (if the sender asked) or fail
    /// (`not_accepted`); paused transfers past their grace fail (`peer_gone`); inbox
    /// entries past their time are deleted (`relay_expired` to an online sender).
    pub fn handle_timeout(&mut self, now: Now, out: &mut Vec<RelayOutput>) {
        self.clock = now.at;
        self.recent.retain(|(_, until, _)| *until > now.at);
        let due: Vec<TransferId> = self
            .transfers
            .values()
            .filter(|t| match t.phase {
                Phase::Offered { deadline, .. } => deadline <= now.at,
                _ => t.paused_until.is_some_and(|p| p <= now.at),
            })
            .map(|t| t.id)
            .collect();
        for id in due {
            let Some(t) = self.transfers.remove(&id) else {
                continue;
            };
            match t.phase {
                Phase::Offered { inbox_fallback, .. } => {
                    if t.source != End::Device {
                        // A stored send nobody answered: it stays in the inbox.
                        self.send_to_device(
                            &t.to,
                            json!({"type": "relay_cancelled", "id": id, "reason": "timeout"}),
                            out,
                        );
                        continue;
                    }
                    if inbox_fallback && self.inbox_room() {
                        self.send_to_device(
                            &t.to,
                            json!({"type": "relay_cancelled", "id": id, "reason": "moved_to_inbox"}),
                            out,
                        );
                        self.send_to_device(
                            &t.from,
                            json!({"type": "relay_to_inbox", "id": id}),
                            out,
                        );
                        self.open_inbox(t, out);
                    } else {
                        self.send_to_device(
                            &t.to,
                            json!({"type": "relay_cancelled", "id": id, "reason": "timeout"}),
                            out,
                        );
                        self.fail(
                            t,
                            "not_accepted",
                            "the receiver did not answer in time",
                            out,
                        );
                    }
                }
                _ => self.fail(
                    t,
                    "peer_gone",
                    "the other side did not come back within the grace period",
                    out,
                ),
            }
        }
        let ttl = self.limits.inbox_ttl_ms;
        let delivering: Vec<String> = self
            .transfers
            .values()
            .filter_map(|t| match &t.source {
                End::Inbox(k) => Some(k.clone()),
                End::Device => None,
            })
            .collect();
        let (expired, kept): (Vec<InboxEntry>, Vec<InboxEntry>) =
            std::mem::take(&mut self.inbox).into_iter().partition(|e| {
                e.stored_at.saturating_add(ttl) <= now.unix_ms && !delivering.contains(&e.key)
            });
        self.inbox = kept;
        for e in expired {
            self.notify_sender(
                &e.from,
                json!({"type": "relay_expired", "inbox_id": e.key, "to": e.to, "name": e.name}),
                out,
            );
            out.push(RelayOutput::InboxDelete { key: e.key });
        }
        self.pump_all(out);
    }
}

// Frames from devices.
impl Relay {
    /// A text frame from `conn`. Returns false, touching nothing, if it is not a relay
    /// message (its `type` does not start with `relay_`): the hub takes those.
    pub fn receive_text(
        &mut self,
        now: Now,
        conn: ConnId,
        text: &str,
        out: &mut Vec<RelayOutput>,
    ) -> bool {
        // Cheap test first: most frames are clipboard and presence messages.
        if !text.contains("\"relay_") {
            return false;
        }
        let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(text) else {
            return false;
        };
        let Some(ty) = msg.get("type").and_then(Value::as_str) else {
            return false;
        };
        if !ty.starts_with("relay_") {
            return false;
        }
        if !self.peers.contains_key(&conn) {
            return true;
        }
        self.clock = now.at;
        let result = match ty {
            "relay_offer" => self.on_offer(now, conn, &msg, out),
            "relay_accept" => self.on_accept(conn, &msg, out),
            "relay_decline" => self.on_decline(conn, &msg, out),
            "relay_ack" => self.on_ack(conn, &msg, out),
            "relay_done" => self.on_done(conn, &msg, out),
            "relay_end" => self.on_end(conn, &msg, out),
            "relay_cancel" => self.on_cancel(conn, &msg, out),
            "relay_auto_accept" => self.on_auto_accept(conn, &msg, out),
            t => Err(reject(
                "unknown_type",
                format!("unknown message type `{t}`"),
            )),
        };
        if let Err(r) = result {
            let in_flight = matches!(
                ty,
                "relay_ack" | "relay_done" | "relay_end" | "relay_cancel"
            );
            let id = msg.get("id").and_then(Value::as_u64);
            if r.code == "unknown_transfer"
                && in_flight
                && id.is_some_and(|id| self.ended_recently(id))
            {
                // Sent before its sender learnt that the transfer had ended; the last word
                // (complete, cancelled...) reaches it anyway.
                return true;
            }
            let mut reply =
                json!({"type": "error", "code": r.code, "message": r.message, "ref_type": ty});
            if let Some(id) = msg.get("id").filter(|v| v.is_u64()) {
                reply["id"] = id.clone();
            }
            if let Some(r) = msg.get("ref").and_then(Value::as_str) {
                if r.len() <= MAX_REF_BYTES {
                    reply["ref"] = json!(r);
                }
            }
            send(out, conn, reply);
        }
        true
    }

    /// A binary frame from `conn`: one chunk, `[id u32][index u32][payload]`. It is stored
    /// in the transfer's lane if it is the next chunk and within the sender's credit.
    /// Chunks other than the next one are dropped without a word (duplicates sent before
    /// the sender learnt of a resume); anything else wrong gets an `error` naming it.
    pub fn receive_chunk(
        &mut self,
        now: Now,
        conn: ConnId,
        frame: &[u8],
        out: &mut Vec<RelayOutput>,
    ) {
        self.clock = now.at;
        if let Err(r) = self.take_chunk(conn, frame, out) {
            let id = decode_header(frame).map(|(id, _, _)| u64::from(id));
            if r.code == "unknown_transfer" && id.is_some_and(|id| self.ended_recently(id)) {
                // A chunk in flight when its transfer ended: dropped without a word.
                return;
            }
            let mut reply = json!({"type": "error", "code": r.code, "message": r.message, "ref_type": "relay_chunk"});
            if let Some((id, index, _)) = decode_header(frame) {
                reply["id"] = json!(id);
                reply["index"] = json!(index);
            }
            send(out, conn, reply);
        }
    }

    fn take_chunk(
        &mut self,
        conn: ConnId,
        frame: &[u8],
        out: &mut Vec<RelayOutput>,
    ) -> Result<(), Reject> {
        let Some(peer) = self.peers.get(&conn) else {
            return Ok(());
        };
        let (id, index, payload) = decode_header(frame).ok_or_else(|| {
            reject(
                "bad_header",
                format!("a chunk frame starts with an {HEADER_LEN}-byte header: transfer id and chunk index, big-endian u32"),
            )
        })?;
        let chunk_size = self.limits.chunk_size;
        let t = self
            .transfers
            .get_mut(&id)
            .ok_or_else(|| reject("unknown_transfer", format!("no transfer {id}")))?;
        if t.from != peer.device || t.source != End::Device {
            return Err(reject(
                "not_yours",
                format!("transfer {id} is not sent by this device"),
            ));
        }
        match t.phase {
            Phase::Offered { .. } => {
                return Err(reject(
                    "not_accepted",
                    format!("transfer {id} has not been accepted yet"),
                ))
            }
            Phase::Opening | Phase::Finishing => return Ok(()),
            Phase::Running => {}
        }
        if index >= t.chunks {
            return Err(reject(
                "bad_index",
                format!(
                    "transfer {id} has chunks 0 to {}",
                    t.chunks.saturating_sub(1)
                ),
            ));
        }
        let want = t.chunk_len(index, chunk_size);
        if payload.len() != want {
            let code = if payload.len() > chunk_size {
                "chunk_too_large"
            } else {
                "wrong_size"
            };
            return Err(reject(
                code,
                format!(
                    "chunk {index} of transfer {id} must be {want} bytes, not {}",
                    payload.len()
                ),
            ));
        }
        if t.paused_until.is_some() || index != t.received {
            return Ok(());
        }
        if index >= t.window_end {
            return Err(reject(
                "window_exceeded",
                format!(
                    "chunk {index} is past the credit of transfer {id} (send below {})",
                    t.window_end
                ),
            ));
        }
        let lane = t.lane.expect("a running transfer has a lane");
        match self.ring.push(lane, payload) {
            Ok(()) => t.received += 1,
            Err(PushError::NoCredit | PushError::Closed | PushError::TooLarge) => {
                debug_assert!(false, "credit and lane out of sync");
                return Err(reject("window_exceeded", "no credit for this chunk"));
            }
        }
        self.pump(id, out);
        Ok(())
    }
}

// Message handlers.
impl Relay {
    fn on_offer(
        &mut self,
        now: Now,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<RelayOutput>,
    ) -> Result<(), Reject> {
        let to = str_field(msg, "to")?;
        let name = str_field(msg, "name")?;
        let size = msg
            .get("size")
            .and_then(Value::as_u64)
            .ok_or_else(|| reject("missing_field", "field `size` must be a whole number"))?;
        let declared = match msg.get("sha256") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(Digest::from_hex)
                    .ok_or_else(|| reject("bad_offer", "`sha256` must be 64 hex digits"))?,
            ),
        };
        let mut start = opt_u64(msg, "start_chunk")?.unwrap_or(0);
        let timeout_ms = opt_u64(msg, "accept_timeout_ms")?;
        let inbox = opt_bool(msg, "inbox")?;
        // Straight to the inbox even if the receiver is online (its page is hidden, say).
        let store = opt_bool(msg, "store")?;
        let client_ref = match msg.get("ref") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() <= MAX_REF_BYTES => Some(s.clone()),
            Some(_) => {
                return Err(reject(
                    "bad_offer",
                    format!("`ref` must be a string of at most {MAX_REF_BYTES} bytes"),
                ))
            }
        };
        if !valid_device_id(to) {
            return Err(reject("bad_offer", "`to` is not a device id"));
        }
        if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
            return Err(reject(
                "bad_offer",
                format!("`name` must be 1 to {MAX_NAME_BYTES} bytes without control characters"),
            ));
        }
        let chunk_size = self.limits.chunk_size as u64;
        let chunks = u32::try_from(size.div_ceil(chunk_size))
            .map_err(|_| reject("too_large", "the file has too many chunks for a relay"))?;
        if start > u64::from(chunks) {
            return Err(reject(
                "bad_offer",
                format!("`start_chunk` must be at most {chunks}"),
            ));
        }
        let peer = &self.peers[&conn];
        let from = peer.device.clone();
        if from == to {
            return Err(reject("bad_offer", "a device cannot send to itself"));
        }
        if self.transfers.len() >= self.limits.max_transfers {
            return Err(reject(
                "too_many_transfers",
                format!(
                    "the box relays {} transfers at once; try again when one ends",
                    self.limits.max_transfers
                ),
            ));
        }
        for device in [from.as_str(), to] {
            let busy = self
                .transfers
                .values()
                .filter(|t| t.involves(device))
                .count();
            if busy >= self.limits.max_per_device {
                return Err(reject(
                    "too_many_transfers",
                    format!(
                        "device {device} is already in {} transfers",
                        self.limits.max_per_device
                    ),
                ));
            }
        }
        let online = self.online.get(to).copied().filter(|_| !store);
        if online.is_none() && !inbox && !store {
            return Err(reject(
                "device_offline",
                format!("device {to} is not connected; offer with \"inbox\": true to leave it on the box"),
            ));
        }
        if online.is_none() && !self.inbox_room() {
            return Err(reject(
                "inbox_full",
                format!(
                    "the box holds {} inbox sends already",
                    self.limits.max_inbox
                ),
            ));
        }
        if online.is_none() {
            // An inbox file is always whole, so its offer says so from the first reply.
            start = 0;
        }
        let id = self.next_id;
        self.next_id += 1;
        let wait = timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.limits.offer_timeout)
            .min(self.limits.offer_timeout);
        let t = Transfer {
            id,
            from,
            from_name: peer.name.clone(),
            to: to.to_owned(),
            name: name.to_owned(),
            size,
            chunks,
            start: start as u32,
            declared,
            sender_sha: None,
            receiver_sha: None,
            source: End::Device,
            sink: End::Device,
            phase: Phase::Offered {
                deadline: now.at + wait,
                inbox_fallback: inbox,
            },
            lane: None,
            received: start as u32,
            forwarded: start as u32,
            forwarded_hw: start as u32,
            acked: start as u32,
            window_end: start as u32,
            told: (u32::MAX, u32::MAX),
            paused_until: None,
            busy: false,
            client_ref,
        };
        let mut reply = t.describe(self.limits.chunk_size);
        reply.insert("type".into(), json!("relay_offered"));
        reply.insert(
            "mode".into(),
            json!(if online.is_some() { "live" } else { "inbox" }),
        );
        send(out, conn, Value::Object(reply));
        let Some(to_conn) = online else {
            self.open_inbox(t, out);
            return Ok(());
        };
        let auto = self.peers[&to_conn].auto_accept.contains(&t.from);
        let mut offer = t.describe(self.limits.chunk_size);
        offer.insert("type".into(), json!("relay_offer"));
        offer.insert("auto_accepted".into(), json!(auto));
        send(out, to_conn, Value::Object(offer));
        self.transfers.insert(id, t);
        if auto {
            self.start(id, out);
        }
        Ok(())
    }

    fn on_accept(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<RelayOutput>,
    ) -> Result<(), Reject> {
        let id = self.own_transfer(conn, msg, Role::Receiver)?;
        if !matches!(self.transfers[&id].phase, Phase::Offered { .. }) {
            return Err(reject(
                "not_offered",
                format!("transfer {id} is not waiting for an answer"),
            ));
        }
        self.start(id, out);
        Ok(())
    }

    fn on_decline(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<RelayOutput>,
    ) -> Result<(), Reject> {
        let id = self.own_transfer(conn, msg, Role::Receiver)?;
        if !matches!(self.transfers[&id].phase, Phase::Offered { .. }) {
            return Err(reject(
                "not_offered",
                format!("transfer {id} is not waiting for an answer"),
            ));
        }
        let t = self.transfers.remove(&id).expect("checked");
        let reason = msg
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("declined");
        let reason: String = reason.chars().take(200).collect();
        if let End::Inbox(key) = &t.source {
            self.inbox.retain(|e| &e.key != key);
            out.push(RelayOutput::InboxDelete { key: key.clone() });
            self.notify_sender(
                &t.from,
                json!({"type": "relay_declined", "inbox_id": key, "to": t.to, "name": t.name, "reason": reason}),
                out,
            );
        } else {
            self.send_to_device(
                &t.from,
                json!({"type": "relay_declined", "id": id, "reason": reason}),
                out,
            );
        }
        Ok(())
    }

    fn on_ack(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<RelayOutput>,
    ) -> Result<(), Reject> {
        let id = self.own_transfer(conn, msg, Role::Receiver)?;
        let acked = opt_u64(msg, "acked")?
            .ok_or_else(|| reject("missing_field", "field `acked` must be a whole number"))?;
        self.receiver_ack(id, acked, out)
    }

    fn receiver_ack(
        &mut self,
        id: TransferId,
        acked: u64,
        out: &mut Vec<RelayOutput>,
    ) -> Result<(), Reject> {
        let t = self.transfers.get_mut(&id).expect("checked by caller");
        if t.phase != Phase::Running {
            return Err(reject(
                "not_running",
                format!("transfer {id} is not running"),
            ));
        }
        if acked > u64::from(t.forwarded_hw) {
            return Err(reject(
                "bad_ack",
                format!("only {} chunks of transfer {id} were sent", t.forwarded_hw),
            ));
        }
        let mut t = self.transfers.remove(&id).expect("present");
        self.apply_ack(&mut t, acked as u32);
        self.transfers.insert(id, t);
        self.pump_all(out);
        Ok(())
    }

    fn on_done(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<RelayOutput>,
    ) -> Result<(), Reject> {
        let id = self.own_transfer(conn, msg, Role::Receiver)?;
        let sha = sha_field(msg)?;
        let chunks = self.transfers[&id].chunks;
        self.receiver_ack(id, u64::from(chunks), out)?;
        let t = self.transfers.get_mut(&id).expect("present");
        if t.acked < t.chunks {
            return Err(reject(
                "incomplete",
                format!("transfer {id} has chunks left to receive"),
            ));
        }
        t.receiver_sha = Some(sha);
        self.try_complete(id, out);
        Ok(())
    }

    fn on_end(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<RelayOutput>,
    ) -> Result<(), Reject> {
        let id = self.own_transfer(conn, msg, Role::Sender)?;
        let sha = sha_field(msg)?;
        self.transfers.get_mut(&id).expect("present").sender_sha = Some(sha);
        self.try_complete(id, out);
        Ok(())
    }

    fn on_cancel(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<RelayOutput>,
    ) -> Result<(), Reject> {
        let id = self.own_transfer(conn, msg, Role::Either)?;
        let by = self.peers[&conn].device.clone();
        let t = self.transfers.remove(&id).expect("checked");
        let reason = msg
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("cancelled");
        let reason: String = reason.chars().take(200).collect();
        let note = json!({"type": "relay_cancelled", "id": id, "by": by, "reason": reason});
        if t.source == End::Device {
            self.send_to_device(&t.from, note.clone(), out);
        }
        self.send_to_device(&t.to, note, out);
        self.drop_transfer(t, out);
        Ok(())
    }

    fn on_auto_accept(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<RelayOutput>,
    ) -> Result<(), Reject> {
        let list = msg
            .get("devices")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                reject(
                    "missing_field",
                    "field `devices` must be a list of device ids",
                )
            })?;
        if list.len() > self.limits.max_auto_accept {
            return Err(reject(
                "too_many",
                format!(
                    "at most {} devices may be auto-accepted",
                    self.limits.max_auto_accept
                ),
            ));
        }
        let mut ids = Vec::with_capacity(list.len());
        for v in list {
            match v.as_str() {
                Some(id) if valid_device_id(id) => ids.push(id.to_owned()),
                _ => return Err(reject("missing_field", "`devices` must hold device ids")),
            }
        }
        let peer = self.peers.get_mut(&conn).expect("checked by caller");
        peer.auto_accept = ids;
        let devices = peer.auto_accept.clone();
        send(
            out,
            conn,
            json!({"type": "relay_auto_accepted", "devices": devices}),
        );
        Ok(())
    }
}

/// Which side of a transfer a message must come from.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Sender,
    Receiver,
    Either,
}

// The engine: starting, pacing, finishing.
impl Relay {
    /// The transfer named by the message's `id`, checked to belong to `conn`'s device in
    /// `role`.
    fn own_transfer(
        &self,
        conn: ConnId,
        msg: &Map<String, Value>,
        role: Role,
    ) -> Result<TransferId, Reject> {
        let id = msg
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| reject("missing_field", "field `id` must be a transfer id"))?;
        let t = self
            .transfers
            .get(&id)
            .ok_or_else(|| reject("unknown_transfer", format!("no transfer {id}")))?;
        let device = &self.peers[&conn].device;
        let ok = match role {
            Role::Sender => t.source == End::Device && &t.from == device,
            Role::Receiver => t.sink == End::Device && &t.to == device,
            Role::Either => {
                (t.source == End::Device && &t.from == device)
                    || (t.sink == End::Device && &t.to == device)
            }
        };
        if !ok {
            return Err(reject(
                "not_yours",
                format!(
                    "this device is not the {} of transfer {id}",
                    match role {
                        Role::Sender => "sender",
                        Role::Receiver => "receiver",
                        Role::Either => "sender or receiver",
                    }
                ),
            ));
        }
        Ok(id)
    }

    /// The receiver accepted (or auto-accepted): the transfer gets a lane and runs.
    fn start(&mut self, id: TransferId, out: &mut Vec<RelayOutput>) {
        let t = self.transfers.get_mut(&id).expect("present");
        t.lane = self.ring.open();
        debug_assert!(t.lane.is_some(), "one lane per transfer");
        t.phase = Phase::Running;
        if t.source == End::Device {
            let from = t.from.clone();
            self.send_to_device(&from, json!({"type": "relay_accepted", "id": id}), out);
        }
        self.pump_all(out);
    }

    /// Turns an offer into a send to `t.to`'s inbox.
    fn open_inbox(&mut self, mut t: Transfer, out: &mut Vec<RelayOutput>) {
        let key = self.new_key();
        t.sink = End::Inbox(key.clone());
        t.phase = Phase::Opening;
        // An inbox file is always whole: a P2P fallback start is not kept there.
        t.start = 0;
        (
            t.received,
            t.forwarded,
            t.forwarded_hw,
            t.acked,
            t.window_end,
        ) = (0, 0, 0, 0, 0);
        out.push(RelayOutput::InboxOpen {
            id: t.id,
            key,
            size: t.size,
        });
        self.transfers.insert(t.id, t);
    }

    fn inbox_room(&self) -> bool {
        let storing = self
            .transfers
            .values()
            .filter(|t| matches!(t.sink, End::Inbox(_)))
            .count();
        self.inbox.len() + storing < self.limits.max_inbox
    }

    fn new_key(&mut self) -> String {
        // xorshift: unique per run (keys are checked against existing ones), unpredictable
        // enough given a random seed; keys only name files, they grant nothing.
        loop {
            let mut x = self.key_seed;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.key_seed = x;
            let key = format!("{x:016x}");
            if !self.inbox.iter().any(|e| e.key == key) {
                return key;
            }
        }
    }

    /// Offers `device` what its inbox holds, unless already being offered.
    fn offer_inbox(&mut self, now: Now, device: &str, out: &mut Vec<RelayOutput>) {
        let Some(&conn) = self.online.get(device) else {
            return;
        };
        let waiting: Vec<InboxEntry> = self
            .inbox
            .iter()
            .filter(|e| e.to == device)
            .filter(|e| {
                !self
                    .transfers
                    .values()
                    .any(|t| t.source == End::Inbox(e.key.clone()))
            })
            .cloned()
            .collect();
        for e in waiting {
            let busy = self
                .transfers
                .values()
                .filter(|t| t.involves(device))
                .count();
            if self.transfers.len() >= self.limits.max_transfers
                || busy >= self.limits.max_per_device
            {
                // The rest is offered at the device's next connect.
                break;
            }
            let id = self.next_id;
            self.next_id += 1;
            let size = e.size;
            let chunks = size.div_ceil(self.limits.chunk_size as u64) as u32;
            let t = Transfer {
                id,
                from: e.from.clone(),
                from_name: e.from_name.clone(),
                to: e.to.clone(),
                name: e.name.clone(),
                size,
                chunks,
                start: 0,
                declared: Digest::from_hex(&e.sha256),
                sender_sha: None,
                receiver_sha: None,
                source: End::Inbox(e.key.clone()),
                sink: End::Device,
                phase: Phase::Offered {
                    deadline: now.at + self.limits.offer_timeout,
                    inbox_fallback: false,
                },
                lane: None,
                received: 0,
                forwarded: 0,
                forwarded_hw: 0,
                acked: 0,
                window_end: 0,
                told: (u32::MAX, u32::MAX),
                paused_until: None,
                busy: false,
                client_ref: e.client_ref.clone(),
            };
            let mut m = t.describe(self.limits.chunk_size);
            m.insert("type".into(), json!("relay_offer"));
            m.insert("stored".into(), json!(true));
            m.insert("stored_at".into(), json!(e.stored_at));
            m.insert("inbox_id".into(), json!(e.key));
            send(out, conn, Value::Object(m));
            self.transfers.insert(id, t);
        }
    }

    /// Drops what the lane holds beyond the acknowledged chunks, and the credit: both
    /// sides continue from `acked`.
    fn rewind(&mut self, t: &mut Transfer) {
        if let Some(lane) = t.lane {
            self.ring.reset(lane);
        }
        t.received = t.acked;
        t.forwarded = t.acked;
        t.window_end = t.acked;
        t.told = (u32::MAX, u32::MAX);
    }

    /// The receiver (or the inbox writer) holds chunks `[.., acked)`: free their slots.
    fn apply_ack(&mut self, t: &mut Transfer, acked: u32) {
        if acked <= t.acked {
            return;
        }
        if acked <= t.received {
            if let Some(lane) = t.lane {
                self.ring.release(lane, (acked - t.acked) as usize);
            }
            t.acked = acked;
            t.forwarded = t.forwarded.max(acked);
        } else {
            // After a rewind the receiver may confirm chunks it got before: continue there.
            t.acked = acked;
            self.rewind(t);
        }
    }

    fn try_resume(&mut self, id: TransferId, out: &mut Vec<RelayOutput>) {
        let t = &self.transfers[&id];
        let here =
            |end: &End, device: &str| *end != End::Device || self.online.contains_key(device);
        if !(here(&t.source, &t.from) && here(&t.sink, &t.to)) {
            return;
        }
        let t = self.transfers.get_mut(&id).expect("present");
        t.paused_until = None;
        let mut m = t.describe(self.limits.chunk_size);
        m.insert("type".into(), json!("relay_resume"));
        m.insert("from_chunk".into(), json!(t.acked));
        let (from, to, source, sink) = (
            t.from.clone(),
            t.to.clone(),
            t.source.clone(),
            t.sink.clone(),
        );
        if source == End::Device {
            let mut m = m.clone();
            m.insert("role".into(), json!("sender"));
            self.send_to_device(&from, Value::Object(m), out);
        }
        if sink == End::Device {
            m.insert("role".into(), json!("receiver"));
            self.send_to_device(&to, Value::Object(m), out);
        }
        self.pump_all(out);
    }

    /// Pumps every running transfer: slots freed by one may be granted to another.
    fn pump_all(&mut self, out: &mut Vec<RelayOutput>) {
        let ids: Vec<TransferId> = self
            .transfers
            .values()
            .filter(|t| t.phase == Phase::Running && t.paused_until.is_none())
            .map(|t| t.id)
            .collect();
        // Those furthest below their share first, so freed slots go where they are owed.
        let mut ids = ids;
        ids.sort_by_key(|id| {
            let t = &self.transfers[id];
            t.lane.map_or(0, |l| self.ring.len(l) + self.ring.credit(l))
        });
        for id in ids {
            self.pump(id, out);
        }
    }

    /// Moves one transfer along: forwards stored chunks, grants credit, reads or writes
    /// the inbox, and finishes when everything is acknowledged.
    fn pump(&mut self, id: TransferId, out: &mut Vec<RelayOutput>) {
        let Some(mut t) = self.transfers.remove(&id) else {
            return;
        };
        if t.phase != Phase::Running || t.paused_until.is_some() {
            self.transfers.insert(id, t);
            return;
        }
        let lane = t.lane.expect("a running transfer has a lane");
        let chunk_size = self.limits.chunk_size;
        match &t.sink {
            End::Device => {
                if let Some(&conn) = self.online.get(&t.to) {
                    while t.forwarded < t.received {
                        out.push(RelayOutput::Chunk {
                            conn,
                            id,
                            index: t.forwarded,
                        });
                        t.forwarded += 1;
                    }
                }
            }
            End::Inbox(key) => {
                if !t.busy && t.forwarded < t.received {
                    out.push(RelayOutput::InboxWrite {
                        id,
                        key: key.clone(),
                        index: t.forwarded,
                        offset: u64::from(t.forwarded) * chunk_size as u64,
                    });
                    t.busy = true;
                    t.forwarded += 1;
                }
            }
        }
        t.forwarded_hw = t.forwarded_hw.max(t.forwarded);
        let want = (t.chunks - t.window_end) as usize;
        t.window_end += self.ring.grant(lane, want) as u32;
        match &t.source {
            End::Device => {
                if t.told != (t.acked, t.window_end) {
                    t.told = (t.acked, t.window_end);
                    let msg = json!({"type": "relay_window", "id": id, "acked": t.acked, "window_end": t.window_end});
                    self.send_to_device(&t.from, msg, out);
                }
            }
            End::Inbox(key) => {
                if !t.busy && t.received < t.window_end {
                    out.push(RelayOutput::InboxRead {
                        id,
                        key: key.clone(),
                        index: t.received,
                        offset: u64::from(t.received) * chunk_size as u64,
                        len: t.chunk_len(t.received, chunk_size),
                    });
                    t.busy = true;
                }
            }
        }
        let done = t.acked == t.chunks;
        self.transfers.insert(id, t);
        if done {
            self.try_complete(id, out);
        }
    }

    /// Completes the transfer once every chunk is acknowledged and both hashes are known.
    fn try_complete(&mut self, id: TransferId, out: &mut Vec<RelayOutput>) {
        let Some(t) = self.transfers.get(&id) else {
            return;
        };
        if t.phase != Phase::Running || t.acked < t.chunks {
            return;
        }
        let Some(expected) = t.expected_sha() else {
            return;
        };
        let t = self.transfers.remove(&id).expect("present");
        if t.sender_sha.is_some_and(|s| s != expected) {
            return self.fail(
                t,
                "hash_mismatch",
                "the sender's final SHA-256 differs from the one it offered",
                out,
            );
        }
        match &t.sink {
            End::Inbox(key) => {
                let entry = InboxEntry {
                    key: key.clone(),
                    from: t.from.clone(),
                    from_name: t.from_name.clone(),
                    to: t.to.clone(),
                    name: t.name.clone(),
                    size: t.size,
                    sha256: expected.to_hex(),
                    stored_at: 0,
                    client_ref: t.client_ref.clone(),
                };
                out.push(RelayOutput::InboxFinish { id, entry });
                let mut t = t;
                t.phase = Phase::Finishing;
                self.transfers.insert(id, t);
            }
            End::Device => {
                let Some(got) = t.receiver_sha else {
                    self.transfers.insert(id, t);
                    return;
                };
                if got != expected {
                    return self.fail(
                        t,
                        "hash_mismatch",
                        format!(
                            "the receiver's SHA-256 {got} differs from the sender's {expected}"
                        ),
                        out,
                    );
                }
                let done = json!({"type": "relay_complete", "id": id, "sha256": expected.to_hex(), "size": t.size});
                self.send_to_device(&t.to, done.clone(), out);
                match &t.source {
                    End::Device => self.send_to_device(&t.from, done, out),
                    End::Inbox(key) => {
                        self.inbox.retain(|e| &e.key != key);
                        out.push(RelayOutput::InboxDelete { key: key.clone() });
                        let note = json!({"type": "relay_delivered", "inbox_id": key, "to": t.to, "name": t.name, "sha256": expected.to_hex()});
                        self.notify_sender(&t.from, note, out);
                    }
                }
                self.drop_transfer(t, out);
            }
        }
    }

    /// Tells both sides the transfer failed, and forgets it.
    fn fail(
        &mut self,
        t: Transfer,
        code: &str,
        message: impl Into<String>,
        out: &mut Vec<RelayOutput>,
    ) {
        let msg =
            json!({"type": "relay_failed", "id": t.id, "code": code, "message": message.into()});
        if t.source == End::Device {
            self.send_to_device(&t.from, msg.clone(), out);
        }
        if t.sink == End::Device {
            self.send_to_device(&t.to, msg, out);
        }
        self.drop_transfer(t, out);
    }

    /// Frees the transfer's lane (and a half-stored inbox file), then lets the others use
    /// the slots.
    fn drop_transfer(&mut self, t: Transfer, out: &mut Vec<RelayOutput>) {
        if let Some(lane) = t.lane {
            self.ring.close(lane);
        }
        if let End::Inbox(key) = &t.sink {
            out.push(RelayOutput::InboxDelete { key: key.clone() });
        }
        self.pump_all(out);
    }

    /// News about a stored send for its sender: sent now, or kept (the newest
    /// `max_inbox`, in memory) until the sender next connects.
    fn notify_sender(&mut self, device: &str, msg: Value, out: &mut Vec<RelayOutput>) {
        if self.online.contains_key(device) {
            return self.send_to_device(device, msg, out);
        }
        if self.notices.len() >= self.limits.max_inbox {
            self.notices.pop_front();
        }
        self.notices.push_back((device.to_owned(), msg));
    }

    /// Whether transfer `id` ended within the grace period (its last word is still kept).
    fn ended_recently(&self, id: u64) -> bool {
        self.recent
            .iter()
            .any(|(_, _, m)| m["id"].as_u64() == Some(id))
    }

    /// Sends `msg` to `device` if it is connected. A transfer's last word (complete,
    /// failed, cancelled, declined) is also kept for the grace period and sent again when
    /// the device reconnects: its socket may have dropped before it read it.
    fn send_to_device(&mut self, device: &str, msg: Value, out: &mut Vec<RelayOutput>) {
        let last_word = msg.get("id").is_some()
            && matches!(
                msg["type"].as_str(),
                Some("relay_complete" | "relay_failed" | "relay_cancelled" | "relay_declined")
            );
        if last_word {
            if self.recent.len() >= 2 * self.limits.max_transfers {
                self.recent.pop_front();
            }
            let until = self.clock + self.limits.grace;
            self.recent
                .push_back((device.to_owned(), until, msg.clone()));
        }
        if let Some(&conn) = self.online.get(device) {
            send(out, conn, msg);
        }
    }
}

// Answers from the disk side, and what the shell reads.
impl Relay {
    /// Bytes of chunk `index` of transfer `id` while the ring holds it.
    pub fn chunk(&self, id: TransferId, index: u32) -> Option<&[u8]> {
        let t = self.transfers.get(&id)?;
        if index < t.acked || index >= t.received {
            return None;
        }
        self.ring.get(t.lane?, (index - t.acked) as usize)
    }

    /// The inbox file for transfer `id` exists (Ok) or could not be made (Err: why, e.g.
    /// the quota); the sender starts sending or gets `relay_failed` `no_space`.
    pub fn inbox_opened(
        &mut self,
        id: TransferId,
        result: Result<(), String>,
        out: &mut Vec<RelayOutput>,
    ) {
        let Some(t) = self.transfers.get_mut(&id) else {
            return;
        };
        if t.phase != Phase::Opening {
            return;
        }
        match result {
            Ok(()) => {
                t.phase = Phase::Running;
                t.lane = self.ring.open();
                debug_assert!(t.lane.is_some(), "one lane per transfer");
                self.pump_all(out);
            }
            Err(why) => {
                let t = self.transfers.remove(&id).expect("present");
                self.fail(t, "no_space", why, out);
            }
        }
    }

    /// Chunk `index` of transfer `id` reached its inbox file (Ok) or not (Err).
    pub fn inbox_written(
        &mut self,
        id: TransferId,
        index: u32,
        result: Result<(), String>,
        out: &mut Vec<RelayOutput>,
    ) {
        let Some(mut t) = self.transfers.remove(&id) else {
            return;
        };
        t.busy = false;
        if let Err(why) = result {
            return self.fail(t, "store_failed", why, out);
        }
        if index == t.acked {
            self.apply_ack(&mut t, index + 1);
        }
        self.transfers.insert(id, t);
        self.pump_all(out);
    }

    /// The inbox file of transfer `id` was made durable; `result` is the SHA-256 it has
    /// (or why it could not be finished). A match records the entry and tells the sender
    /// `relay_stored`; a mismatch deletes it and fails the send.
    pub fn inbox_stored(
        &mut self,
        now: Now,
        id: TransferId,
        entry: InboxEntry,
        result: Result<Digest, String>,
        out: &mut Vec<RelayOutput>,
    ) {
        let Some(t) = self.transfers.remove(&id) else {
            out.push(RelayOutput::InboxDelete { key: entry.key });
            return;
        };
        match result {
            Ok(got) if Some(got) == Digest::from_hex(&entry.sha256) => {
                let mut entry = entry;
                if entry.stored_at == 0 {
                    entry.stored_at = now.unix_ms;
                }
                let expires_at = entry.stored_at.saturating_add(self.limits.inbox_ttl_ms);
                self.send_to_device(
                    &t.from,
                    json!({"type": "relay_stored", "id": id, "inbox_id": entry.key,
                        "to": t.to, "sha256": entry.sha256, "expires_at": expires_at}),
                    out,
                );
                if let Some(lane) = t.lane {
                    self.ring.close(lane);
                }
                let to = entry.to.clone();
                self.inbox.push(entry);
                // The recipient may have connected while the file was being stored.
                self.offer_inbox(now, &to, out);
                self.pump_all(out);
            }
            Ok(got) => self.fail(
                t,
                "hash_mismatch",
                format!(
                    "the stored bytes have SHA-256 {got}, not the sender's {}",
                    entry.sha256
                ),
                out,
            ),
            Err(why) => self.fail(t, "store_failed", why, out),
        }
    }

    /// Chunk `index` of stored transfer `id` was read from its inbox file (or not).
    pub fn inbox_chunk(
        &mut self,
        id: TransferId,
        index: u32,
        result: Result<Vec<u8>, String>,
        out: &mut Vec<RelayOutput>,
    ) {
        let Some(mut t) = self.transfers.remove(&id) else {
            return;
        };
        t.busy = false;
        let bytes = match result {
            Ok(b) => b,
            Err(why) => return self.fail(t, "store_failed", why, out),
        };
        let fits = bytes.len() == t.chunk_len(index, self.limits.chunk_size);
        if t.phase == Phase::Running
            && t.paused_until.is_none()
            && index == t.received
            && index < t.window_end
            && fits
        {
            if let Some(lane) = t.lane {
                if self.ring.push(lane, &bytes).is_ok() {
                    t.received += 1;
                }
            }
        }
        self.transfers.insert(id, t);
        self.pump(id, out);
    }
}

// Numbers for /api/status and tests.
impl Relay {
    pub fn ring_bytes(&self) -> usize {
        self.ring.capacity_bytes()
    }

    pub fn transfer_count(&self) -> usize {
        self.transfers.len()
    }

    pub fn inbox_count(&self) -> usize {
        self.inbox.len()
    }

    /// Bytes held by inbox entries and inbox files being written (for the store quota).
    pub fn inbox_bytes(&self) -> u64 {
        let stored: u64 = self.inbox.iter().map(|e| e.size).sum();
        let storing: u64 = self
            .transfers
            .values()
            .filter(|t| matches!(t.sink, End::Inbox(_)))
            .map(|t| t.size)
            .sum();
        stored + storing
    }
}

fn send(out: &mut Vec<RelayOutput>, conn: ConnId, msg: Value) {
    out.push(RelayOutput::Send {
        conn,
        text: Rc::from(msg.to_string()),
    });
}

fn str_field<'a>(msg: &'a Map<String, Value>, field: &str) -> Result<&'a str, Reject> {
    msg.get(field).and_then(Value::as_str).ok_or_else(|| {
        reject(
            "missing_field",
            format!("field `{field}` is missing or is not a string"),
        )
    })
}

fn opt_u64(msg: &Map<String, Value>, field: &str) -> Result<Option<u64>, Reject> {
    match msg.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            reject(
                "missing_field",
                format!("field `{field}` must be a whole number"),
            )
        }),
    }
}

fn sha_field(msg: &Map<String, Value>) -> Result<Digest, Reject> {
    msg.get("sha256")
        .and_then(Value::as_str)
        .and_then(Digest::from_hex)
        .ok_or_else(|| reject("missing_field", "field `sha256` must be 64 hex digits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ConnId = 1;
    const B: ConnId = 2;

    struct World {
        relay: Relay,
        now: Now,
        out: Vec<RelayOutput>,
    }

    impl World {
        /// A relay with 4-byte chunks and 8 slots, and devices a (conn 1) and b (conn 2).
        fn new() -> World {
            let limits = RelayLimits {
                chunk_size: 4,
                slots: 8,
                max_transfers: 4,
                grace: Duration::from_secs(30),
                offer_timeout: Duration::from_secs(60),
                ..RelayLimits::default()
            };
            let mut w = World {
                relay: Relay::new(limits, Vec::new(), 42),
                now: Now {
                    at: Instant::now(),
                    unix_ms: 1_000_000,
                },
                out: Vec::new(),
            };
            w.relay.connect(w.now, A, "a", "Anna", &mut w.out);
            w.relay.connect(w.now, B, "b", "Ben", &mut w.out);
            w
        }

        fn text(&mut self, conn: ConnId, msg: Value) {
            assert!(self
                .relay
                .receive_text(self.now, conn, &msg.to_string(), &mut self.out));
        }

        fn chunk(&mut self, conn: ConnId, id: u32, index: u32, payload: &[u8]) {
            let mut f = encode_header(id, index).to_vec();
            f.extend_from_slice(payload);
            self.relay.receive_chunk(self.now, conn, &f, &mut self.out);
        }

        fn later(&mut self, secs: u64) {
            self.now.at += Duration::from_secs(secs);
            self.now.unix_ms += secs * 1000;
            self.relay.handle_timeout(self.now, &mut self.out);
        }

        /// JSON messages sent to `conn` since the last call (and forgets all output).
        fn take(&mut self, conn: ConnId) -> Vec<Value> {
            let got = self
                .out
                .iter()
                .filter_map(|o| match o {
                    RelayOutput::Send { conn: c, text } if *c == conn => {
                        Some(serde_json::from_str(text).unwrap())
                    }
                    _ => None,
                })
                .collect();
            self.out.clear();
            got
        }

        /// JSON messages sent to `conn` since the last call, keeping the output.
        fn clone_msgs(&self, conn: ConnId) -> Vec<Value> {
            self.out
                .iter()
                .filter_map(|o| match o {
                    RelayOutput::Send { conn: c, text } if *c == conn => {
                        Some(serde_json::from_str(text).unwrap())
                    }
                    _ => None,
                })
                .collect()
        }

        /// Chunk indexes forwarded to `conn` in the pending output, with their bytes.
        fn forwarded(&self, conn: ConnId) -> Vec<(u32, Vec<u8>)> {
            self.out
                .iter()
                .filter_map(|o| match o {
                    RelayOutput::Chunk { conn: c, id, index } if *c == conn => {
                        Some((*index, self.relay.chunk(*id, *index).unwrap().to_vec()))
                    }
                    _ => None,
                })
                .collect()
        }

        /// a offers `size` bytes to b and b accepts; returns the transfer id.
        fn running(&mut self, size: u64) -> u32 {
            self.text(
                A,
                json!({"type": "relay_offer", "to": "b", "name": "f", "size": size}),
            );
            let id = self.take(A)[0]["id"].as_u64().unwrap() as u32;
            self.text(B, json!({"type": "relay_accept", "id": id}));
            id
        }
    }

    fn of_type<'a>(msgs: &'a [Value], ty: &str) -> Option<&'a Value> {
        msgs.iter().find(|m| m["type"] == ty)
    }

    #[test]
    fn header_round_trip_and_short_frames() {
        let h = encode_header(0x0102_0304, 7);
        assert_eq!(h, [1, 2, 3, 4, 0, 0, 0, 7]);
        let mut f = h.to_vec();
        f.extend_from_slice(b"xy");
        assert_eq!(decode_header(&f), Some((0x0102_0304, 7, &b"xy"[..])));
        assert_eq!(decode_header(&f[..7]), None);
    }

    #[test]
    fn a_send_runs_with_credit_acks_and_a_hash_check() {
        let mut w = World::new();
        let data = b"0123456789"; // 3 chunks of 4, 4, 2 bytes
        let id = w.running(10);
        let a = w.take(A);
        assert!(of_type(&a, "relay_accepted").is_some());
        // Alone, the transfer may hold half the ring (8 / 2 = 4 slots): all 3 chunks.
        assert_eq!(of_type(&a, "relay_window").unwrap()["window_end"], 3);
        w.chunk(A, id, 0, &data[..4]);
        w.chunk(A, id, 1, &data[4..8]);
        w.chunk(A, id, 2, &data[8..]);
        assert_eq!(
            w.forwarded(B),
            vec![
                (0, b"0123".to_vec()),
                (1, b"4567".to_vec()),
                (2, b"89".to_vec())
            ]
        );
        w.out.clear();
        w.text(B, json!({"type": "relay_ack", "id": id, "acked": 2}));
        assert_eq!(of_type(&w.take(A), "relay_window").unwrap()["acked"], 2);
        let sha = Digest::of(data).to_hex();
        w.text(A, json!({"type": "relay_end", "id": id, "sha256": sha}));
        w.text(B, json!({"type": "relay_done", "id": id, "sha256": sha}));
        let done = w.take(A);
        assert_eq!(of_type(&done, "relay_complete").unwrap()["sha256"], sha);
        assert_eq!(w.relay.transfer_count(), 0);
    }

    #[test]
    fn credit_is_bounded_by_the_ring_and_freed_by_acks() {
        let mut w = World::new();
        let id = w.running(400); // 100 chunks
        assert_eq!(
            of_type(&w.take(A), "relay_window").unwrap()["window_end"],
            4
        );
        for i in 0..4 {
            w.chunk(A, id, i, b"abcd");
        }
        w.out.clear();
        w.chunk(A, id, 4, b"abcd");
        let e = w.take(A);
        assert_eq!(e[0]["code"], "window_exceeded");
        w.text(B, json!({"type": "relay_ack", "id": id, "acked": 3}));
        assert_eq!(
            of_type(&w.take(A), "relay_window").unwrap()["window_end"],
            7
        );
    }

    #[test]
    fn a_dropped_receiver_pauses_and_resumes_from_its_last_ack() {
        let mut w = World::new();
        let id = w.running(40);
        for i in 0..4 {
            w.chunk(A, id, i, b"abcd");
        }
        w.text(B, json!({"type": "relay_ack", "id": id, "acked": 2}));
        w.out.clear();
        w.relay.disconnect(w.now, B, &mut w.out);
        let p = w.take(A);
        assert_eq!(of_type(&p, "relay_paused").unwrap()["acked"], 2);
        // Chunks sent meanwhile are dropped without a word.
        w.chunk(A, id, 4, b"abcd");
        assert!(w.take(A).is_empty());
        w.later(10);
        w.relay.connect(w.now, 3, "b", "Ben", &mut w.out);
        let to_b: Vec<Value> = w.take(3);
        let r = of_type(&to_b, "relay_resume").unwrap();
        assert_eq!(
            (r["from_chunk"].as_u64(), r["role"].as_str()),
            (Some(2), Some("receiver"))
        );
        // The receiver says it has 3: the box continues from there.
        w.text(3, json!({"type": "relay_ack", "id": id, "acked": 3}));
        let a = w.take(A);
        assert_eq!(of_type(&a, "relay_window").unwrap()["acked"], 3);
        w.chunk(A, id, 3, b"abcd");
        assert_eq!(w.forwarded(3), vec![(3, b"abcd".to_vec())]);
    }

    #[test]
    fn a_paused_transfer_fails_after_the_grace_period() {
        let mut w = World::new();
        let id = w.running(40);
        w.relay.disconnect(w.now, A, &mut w.out);
        w.out.clear();
        w.later(29);
        assert!(w.take(B).is_empty());
        w.later(1);
        let f = w.take(B);
        assert_eq!(of_type(&f, "relay_failed").unwrap()["code"], "peer_gone");
        assert_eq!(of_type(&f, "relay_failed").unwrap()["id"], id);
        assert_eq!(w.relay.transfer_count(), 0);
    }

    #[test]
    fn an_unanswered_offer_goes_to_the_inbox_or_fails() {
        let mut w = World::new();
        w.text(A, json!({"type": "relay_offer", "to": "b", "name": "f", "size": 4, "accept_timeout_ms": 5000}));
        w.text(A, json!({"type": "relay_offer", "to": "b", "name": "g", "size": 4, "accept_timeout_ms": 5000, "inbox": true}));
        w.out.clear();
        w.later(4);
        assert!(w.out.is_empty(), "not yet");
        w.later(1);
        assert!(w
            .out
            .iter()
            .any(|o| matches!(o, RelayOutput::InboxOpen { size: 4, .. })));
        let to_b = w.clone_msgs(B);
        assert!(to_b.iter().any(|m| m["reason"] == "moved_to_inbox"));
        assert!(to_b.iter().any(|m| m["reason"] == "timeout"));
        let to_a = w.take(A);
        assert_eq!(
            of_type(&to_a, "relay_failed").unwrap()["code"],
            "not_accepted"
        );
        assert!(of_type(&to_a, "relay_to_inbox").is_some());
    }

    #[test]
    fn only_the_sender_may_send_chunks_and_only_the_receiver_ack() {
        let mut w = World::new();
        let id = w.running(8);
        w.out.clear();
        w.chunk(B, id, 0, b"abcd");
        assert_eq!(w.take(B)[0]["code"], "not_yours");
        w.text(A, json!({"type": "relay_ack", "id": id, "acked": 1}));
        assert_eq!(w.take(A)[0]["code"], "not_yours");
        w.chunk(A, 999, 0, b"abcd");
        assert_eq!(w.take(A)[0]["code"], "unknown_transfer");
        w.chunk(A, id, 0, b"abcde");
        assert_eq!(w.take(A)[0]["code"], "chunk_too_large");
        w.relay.receive_chunk(w.now, A, b"abc", &mut w.out);
        assert_eq!(w.take(A)[0]["code"], "bad_header");
    }

    /// What travels on one socket, in order.
    #[derive(Debug, Clone)]
    enum Frame {
        Text(Value),
        Chunk(u32, Vec<u8>),
    }

    /// Splits the relay's pending output into per-conn frames (chunks read from the ring
    /// now, as the shell's writer would when it sends them).
    fn deliver(w: &mut World, queues: &mut HashMap<ConnId, std::collections::VecDeque<Frame>>) {
        for o in std::mem::take(&mut w.out) {
            match o {
                RelayOutput::Send { conn, text } => queues
                    .entry(conn)
                    .or_default()
                    .push_back(Frame::Text(serde_json::from_str(&text).unwrap())),
                RelayOutput::Chunk { conn, id, index } => {
                    if let Some(b) = w.relay.chunk(id, index) {
                        let b = b.to_vec();
                        queues
                            .entry(conn)
                            .or_default()
                            .push_back(Frame::Chunk(index, b));
                    }
                }
                other => panic!("no inbox in this test: {other:?}"),
            }
        }
    }

    proptest::proptest! {
        /// A sender and a receiver whose sockets drop and come back at random moments,
        /// with frames in flight lost or not: the receiver ends with every byte, in order,
        /// exactly once, and both sides see `relay_complete`.
        #[test]
        fn random_drops_and_resumes_deliver_every_byte_once(
            len in 0usize..120,
            ops in proptest::collection::vec(0u8..8, 0..400),
        ) {
            use std::collections::VecDeque;
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let sha = Digest::of(&data).to_hex();
            let mut w = World::new();
            let (mut a, mut b) = (A, B);
            let mut next_conn = 10;
            w.text(a, json!({"type": "relay_offer", "to": "b", "name": "f", "size": len, "sha256": sha}));
            let id = w.take(a)[0]["id"].as_u64().unwrap() as u32;
            let chunks = len.div_ceil(4) as u32;
            w.text(b, json!({"type": "relay_accept", "id": id}));
            // Socket queues: box -> device (by conn), device -> box.
            let mut to: HashMap<ConnId, VecDeque<Frame>> = HashMap::new();
            let (mut from_a, mut from_b): (VecDeque<Frame>, VecDeque<Frame>) = Default::default();
            deliver(&mut w, &mut to);
            // The sender's and the receiver's own state.
            let (mut s_next, mut s_window, mut s_paused, mut s_done) = (0u32, 0u32, false, false);
            let (mut r_next, mut r_bytes, mut r_done) = (0u32, Vec::new(), false);
            if chunks == 0 {
                from_b.push_back(Frame::Text(json!({"type": "relay_done", "id": id, "sha256": sha})));
            }
            let steps = ops.iter().copied().chain(std::iter::repeat_n(255u8, 4000));
            for (k, op) in steps.enumerate() {
                // After the random part, only the ordinary steps, round robin.
                let op = if op == 255 { (k % 5) as u8 } else { op };
                match op {
                    0 if !s_paused && s_next < s_window && s_next < chunks => {
                        let i = s_next as usize * 4;
                        from_a.push_back(Frame::Chunk(s_next, data[i..(i + 4).min(len)].to_vec()));
                        s_next += 1;
                    }
                    1 => if let Some(f) = from_a.pop_front() {
                        match f {
                            Frame::Text(v) => w.text(a, v),
                            Frame::Chunk(i, bytes) => w.chunk(a, id, i, &bytes),
                        }
                    },
                    2 => if let Some(Frame::Text(v)) = from_b.pop_front() { w.text(b, v) },
                    3 => if let Some(Frame::Text(m)) = to.get_mut(&a).and_then(VecDeque::pop_front) {
                        match m["type"].as_str().unwrap() {
                            "relay_window" => s_window = m["window_end"].as_u64().unwrap() as u32,
                            "relay_paused" => s_paused = true,
                            "relay_resume" => {
                                s_paused = false;
                                s_next = m["from_chunk"].as_u64().unwrap() as u32;
                                s_window = s_next;
                            }
                            "relay_complete" => s_done = true,
                            "relay_accepted" => {}
                            other => proptest::prop_assert!(false, "sender got {}: {}", other, m),
                        }
                    },
                    4 => match to.get_mut(&b).and_then(VecDeque::pop_front) {
                        Some(Frame::Chunk(i, bytes)) if i == r_next => {
                            r_bytes.extend_from_slice(&bytes);
                            r_next += 1;
                            from_b.push_back(Frame::Text(json!({"type": "relay_ack", "id": id, "acked": r_next})));
                            if r_next == chunks {
                                from_b.push_back(Frame::Text(json!({"type": "relay_done", "id": id, "sha256": sha})));
                            }
                        },
                        Some(Frame::Text(m)) => match m["type"].as_str().unwrap() {
                            "relay_resume" => {
                                from_b.push_back(Frame::Text(json!({"type": "relay_ack", "id": id, "acked": r_next})));
                                if r_next == chunks {
                                    from_b.push_back(Frame::Text(json!({"type": "relay_done", "id": id, "sha256": sha})));
                                }
                            }
                            "relay_complete" => r_done = true,
                            "relay_paused" | "relay_offer" => {}
                            other => proptest::prop_assert!(false, "receiver got {}: {}", other, m),
                        },
                        // A duplicate after a resume.
                        Some(Frame::Chunk(..)) | None => {}
                    },
                    // A socket drops: what was in flight either way is lost; it reconnects.
                    5 => {
                        from_b.clear();
                        to.remove(&b);
                        w.relay.disconnect(w.now, b, &mut w.out);
                        b = next_conn;
                        next_conn += 1;
                        w.relay.connect(w.now, b, "b", "Ben", &mut w.out);
                    }
                    6 => {
                        from_a.clear();
                        to.remove(&a);
                        w.relay.disconnect(w.now, a, &mut w.out);
                        a = next_conn;
                        next_conn += 1;
                        w.relay.connect(w.now, a, "a", "Anna", &mut w.out);
                    }
                    _ => {}
                }
                deliver(&mut w, &mut to);
                if s_done && r_done {
                    break;
                }
            }
            proptest::prop_assert!(r_done && s_done, "not complete: sender {} receiver {}", s_next, r_next);
            proptest::prop_assert_eq!(r_bytes, data);
            proptest::prop_assert_eq!(w.relay.transfer_count(), 0);
        }
    }
}
