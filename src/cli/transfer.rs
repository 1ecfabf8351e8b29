//! The browser app's direct-transfer framing on the `lanvan` data channel (docs/protocol.md
//! "P2P transfers", `web/p2p.js`), as two sans-IO state machines: [`DirectSend`] and
//! [`DirectReceive`]. They take `now` and the bytes the caller read, and return the frames
//! to send; they never touch a file, a socket or a clock.

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::time::{Duration, Instant};

/// No acknowledgement for this long while chunks are outstanding: the direct path is dead.
pub const STALL: Duration = Duration::from_millis(3000);
/// Chunks sent but not yet confirmed by the receiver (the page's WINDOW).
pub const WINDOW: u32 = 16;
/// A chunk travels as pieces of at most this many bytes (Chromium takes 256 KiB messages).
pub const PIECE: usize = 64 * 1024;
/// Piece header: transfer id, chunk index, offset in the chunk (u32 BE), chunk SHA-256.
pub const HEADER: usize = 12 + 32;
/// The largest chunk a peer may announce (as the page).
pub const MAX_CHUNK: u64 = 4 << 20;

/// The transfer id of a piece frame, so the caller can route it; None for a short frame.
pub fn piece_transfer_id(frame: &[u8]) -> Option<u32> {
    (frame.len() >= HEADER).then(|| be32(&frame[0..4]))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Number of chunks of `chunk_size` in `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size.max(1))
}

/// Where a send stands.
#[derive(Clone, Debug, PartialEq)]
pub enum SendState {
    /// `file` sent, no answer yet.
    Offered,
    /// Accepted: chunks flow.
    Moving,
    /// The receiver's `done` matched our SHA-256.
    Complete,
    /// Declined, cancelled, or the hashes differ: the reason.
    Ended(String),
    /// Handed to the relay (`moved` sent).
    Moved,
}

/// What a message from the receiver changed, for the caller to act on.
#[derive(Clone, Debug, PartialEq)]
pub enum SendEvent {
    Accepted,
    /// Chunks `0..acked` are confirmed.
    Acked(u32),
    Declined(String),
    Cancelled(String),
    Complete(String),
    HashMismatch,
}

/// A file being sent over the channel: the page's `DirectSend`.
pub struct DirectSend {
    pub id: u32,
    pub size: u64,
    pub chunk_size: u32,
    pub chunks: u32,
    /// Next chunk to send.
    next: u32,
    /// Chunks the receiver confirmed (all of 0..acked).
    pub acked: u32,
    /// Chunks fed to `hasher` (in order; never read twice).
    hashed: u32,
    hasher: Sha256,
    sha256: Option<String>,
    end_sent: bool,
    pub state: SendState,
    last_progress: Instant,
}

impl DirectSend {
    /// A send of `size` bytes named `name`; returns it and the `file` offer to send.
    pub fn new(id: u32, name: &str, size: u64, chunk_size: u32, now: Instant) -> (Self, String) {
        let chunks = chunk_count(size, chunk_size as u64) as u32;
        let offer = json!({"t": "file", "id": id, "name": name, "size": size,
            "chunk_size": chunk_size, "chunks": chunks, "sha256": null});
        let send = DirectSend {
            id,
            size,
            chunk_size,
            chunks,
            next: 0,
            acked: 0,
            hashed: 0,
            hasher: Sha256::new(),
            sha256: None,
            end_sent: false,
            state: SendState::Offered,
            last_progress: now,
        };
        (send, offer.to_string())
    }

    /// Handles a control message for this transfer (its `id` already matched).
    pub fn handle(&mut self, m: &Value, now: Instant) -> Option<SendEvent> {
        if !matches!(self.state, SendState::Offered | SendState::Moving) {
            return None;
        }
        let reason = || m["reason"].as_str().unwrap_or("").to_string();
        match m["t"].as_str()? {
            "accept" if self.state == SendState::Offered => {
                self.state = SendState::Moving;
                self.last_progress = now;
                Some(SendEvent::Accepted)
            }
            "decline" => {
                self.state = SendState::Ended(format!("declined: {}", reason()));
                Some(SendEvent::Declined(reason()))
            }
            "cancel" => {
                self.state = SendState::Ended(format!("cancelled: {}", reason()));
                Some(SendEvent::Cancelled(reason()))
            }
            "ack" => {
                let acked = m["acked"].as_u64()?.min(self.chunks as u64) as u32;
                if acked <= self.acked {
                    return None;
                }
                self.acked = acked;
                self.next = self.next.max(acked);
                self.last_progress = now;
                Some(SendEvent::Acked(acked))
            }
            "nack" => {
                // A chunk arrived damaged: send again from there.
                let from = m["from"].as_u64()?.min(u32::MAX as u64) as u32;
                self.next = self.acked.max(self.next.min(from));
                self.last_progress = now;
                None
            }
            "done" => {
                let theirs = m["sha256"].as_str().unwrap_or("");
                if self.sha256.as_deref() == Some(theirs) {
                    self.state = SendState::Complete;
                    Some(SendEvent::Complete(theirs.to_string()))
                } else {
                    self.state = SendState::Ended("hash_mismatch".into());
                    Some(SendEvent::HashMismatch)
                }
            }
            _ => None,
        }
    }

    /// The chunk the caller should read and hand to [`Self::pieces`] next, if the window
    /// has room.
    pub fn next_chunk(&self) -> Option<u32> {
        (self.state == SendState::Moving
            && self.next < self.chunks
            && self.next - self.acked < WINDOW)
            .then_some(self.next)
    }

    /// Cuts chunk `index` (its bytes, as read) into piece frames and moves on.
    pub fn pieces(&mut self, index: u32, bytes: &[u8]) -> Vec<Vec<u8>> {
        if index == self.hashed {
            self.hasher.update(bytes);
            self.hashed += 1;
        }
        let digest = Sha256::digest(bytes);
        // A chunk is never empty: an empty file has no chunks.
        let frames = bytes
            .chunks(PIECE)
            .enumerate()
            .map(|(n, part)| {
                let mut f = Vec::with_capacity(HEADER + part.len());
                f.extend_from_slice(&self.id.to_be_bytes());
                f.extend_from_slice(&index.to_be_bytes());
                f.extend_from_slice(&((n * PIECE) as u32).to_be_bytes());
                f.extend_from_slice(&digest);
                f.extend_from_slice(part);
                f
            })
            .collect();
        if self.next == index {
            self.next = index + 1;
        }
        frames
    }

    /// The `end` message, once every chunk is sent and hashed (once).
    pub fn end_message(&mut self) -> Option<String> {
        if self.state != SendState::Moving
            || self.end_sent
            || self.next < self.chunks
            || self.hashed < self.chunks
        {
            return None;
        }
        let sha = hex(&self.hasher.clone().finalize());
        self.sha256 = Some(sha.clone());
        self.end_sent = true;
        Some(json!({"t": "end", "id": self.id, "sha256": sha}).to_string())
    }

    /// True when the direct path has stalled: chunks (or the final `done`) outstanding and
    /// nothing heard for [`STALL`].
    pub fn stalled(&self, now: Instant) -> bool {
        let waiting = self.acked < self.next || (self.acked == self.chunks && self.end_sent);
        self.state == SendState::Moving
            && waiting
            && now.saturating_duration_since(self.last_progress) > STALL
    }

    /// Moves the send to the relay: the `moved` message, and where the relay starts (the
    /// confirmed chunks; 0 if the offer was never accepted).
    pub fn fallback(&mut self, reason: &str) -> (String, u32) {
        let start = if self.state == SendState::Moving {
            self.acked
        } else {
            0
        };
        self.state = SendState::Moved;
        let msg = json!({"t": "moved", "id": self.id, "to": "relay", "reason": reason});
        (msg.to_string(), start)
    }

    /// The running hash to continue on the relay: the hasher and how many chunks it holds,
    /// or the whole-file hash when it is already known.
    pub fn hash_so_far(&self) -> (Sha256, u32, Option<String>) {
        (self.hasher.clone(), self.hashed, self.sha256.clone())
    }

    /// A `cancel` message; the send ends.
    pub fn cancel(&mut self, reason: &str) -> String {
        self.state = SendState::Ended(format!("cancelled: {reason}"));
        json!({"t": "cancel", "id": self.id, "reason": reason}).to_string()
    }
}

/// Where a receive stands.
#[derive(Clone, Debug, PartialEq)]
pub enum ReceiveState {
    Offered,
    Moving,
    Complete(String),
    Ended(String),
    /// The sender said `moved`: it continues through the relay.
    Moved,
}

/// What a piece or message did.
#[derive(Clone, Debug, PartialEq)]
pub enum ReceiveStep {
    /// Nothing to do yet.
    None,
    /// Chunk `index` is whole and verified: write it, then call [`DirectReceive::written`].
    Write(u32, Vec<u8>),
    /// Send this message (a `nack` for a damaged chunk).
    Say(String),
}

/// A file arriving over the channel: the page's `DirectReceive`.
pub struct DirectReceive {
    pub id: u32,
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    pub chunks: u32,
    /// Chunks written (all of 0..next).
    pub next: u32,
    /// The chunk whose pieces come next.
    expect: u32,
    cur: Option<(u32, Vec<u8>, [u8; 32])>,
    hasher: Sha256,
    sha256: Option<String>,
    theirs: Option<String>,
    pub state: ReceiveState,
}

impl DirectReceive {
    /// Reads a `file` offer; Err is the reason for a `decline` (as the page's `badOffer`).
    pub fn from_offer(m: &Value) -> Result<Self, String> {
        let int = |k: &str| m[k].as_u64();
        let id = int("id")
            .filter(|&i| i <= u32::MAX as u64)
            .ok_or("bad id")?;
        let name = m["name"]
            .as_str()
            .filter(|n| !n.is_empty() && n.chars().count() <= 255)
            .ok_or("bad name")?;
        let size = int("size").ok_or("bad size")?;
        let chunk_size = int("chunk_size")
            .filter(|&c| c > 0 && c <= MAX_CHUNK)
            .ok_or("bad chunk size")?;
        let chunks = chunk_count(size, chunk_size);
        if int("chunks") != Some(chunks) || chunks > u32::MAX as u64 {
            return Err("bad chunk count".into());
        }
        Ok(DirectReceive {
            id: id as u32,
            name: name.to_string(),
            size,
            chunk_size: chunk_size as u32,
            chunks: chunks as u32,
            next: 0,
            expect: 0,
            cur: None,
            hasher: Sha256::new(),
            sha256: None,
            theirs: None,
            state: ReceiveState::Offered,
        })
    }

    /// The `accept` answer (plus `done` at once for an empty file whose `end` came).
    pub fn accept(&mut self) -> Vec<String> {
        self.state = ReceiveState::Moving;
        let mut out = vec![json!({"t": "accept", "id": self.id}).to_string()];
        out.extend(self.maybe_done());
        out
    }

    pub fn decline(&mut self, reason: &str) -> String {
        self.state = ReceiveState::Ended(format!("declined: {reason}"));
        json!({"t": "decline", "id": self.id, "reason": reason}).to_string()
    }

    pub fn cancel(&mut self, reason: &str) -> String {
        self.state = ReceiveState::Ended(format!("cancelled: {reason}"));
        json!({"t": "cancel", "id": self.id, "reason": reason}).to_string()
    }

    fn chunk_len(&self, index: u32) -> usize {
        let start = index as u64 * self.chunk_size as u64;
        (self.size - start).min(self.chunk_size as u64) as usize
    }

    /// One binary piece frame for this transfer.
    pub fn piece(&mut self, frame: &[u8]) -> ReceiveStep {
        if self.state != ReceiveState::Moving || frame.len() < HEADER {
            return ReceiveStep::None;
        }
        let index = be32(&frame[4..8]);
        let off = be32(&frame[8..12]) as usize;
        // Pieces come in order on the ordered channel; anything else belongs to a chunk
        // that will be sent again.
        if index != self.expect || index >= self.chunks {
            return ReceiveStep::None;
        }
        let part = &frame[HEADER..];
        let len = self.chunk_len(index);
        if off == 0 {
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&frame[12..44]);
            self.cur = Some((index, Vec::with_capacity(len), digest));
        }
        let Some((ci, buf, _)) = self.cur.as_mut() else {
            return ReceiveStep::None;
        };
        if *ci != index || off != buf.len() || off + part.len() > len {
            self.cur = None;
            return ReceiveStep::None;
        }
        buf.extend_from_slice(part);
        if buf.len() < len {
            return ReceiveStep::None;
        }
        let (index, buf, digest) = self.cur.take().expect("just matched");
        self.expect += 1;
        if Sha256::digest(&buf)[..] != digest {
            // Damaged on the way: ask again from here, and drop what follows until it comes.
            self.expect = self.next;
            return ReceiveStep::Say(
                json!({"t": "nack", "id": self.id, "from": self.next}).to_string(),
            );
        }
        ReceiveStep::Write(index, buf)
    }

    /// Chunk `index` (as handed out by [`Self::piece`]) is written: the `ack`, and `done`
    /// when it was the last and the sender's hash is in.
    pub fn written(&mut self, index: u32, bytes: &[u8]) -> Vec<String> {
        if self.state != ReceiveState::Moving || index != self.next {
            return Vec::new();
        }
        self.hasher.update(bytes);
        self.next += 1;
        let mut out = vec![json!({"t": "ack", "id": self.id, "acked": self.next}).to_string()];
        out.extend(self.maybe_done());
        out
    }

    /// A control message for this transfer; returns messages to send.
    pub fn handle(&mut self, m: &Value) -> Vec<String> {
        match m["t"].as_str() {
            Some("end") => {
                self.theirs = m["sha256"].as_str().map(str::to_string);
                return self.maybe_done().into_iter().collect();
            }
            Some("cancel")
                if matches!(self.state, ReceiveState::Offered | ReceiveState::Moving) =>
            {
                let reason = m["reason"].as_str().unwrap_or("").to_string();
                self.state = ReceiveState::Ended(format!("cancelled by the sender: {reason}"));
            }
            Some("moved") if matches!(self.state, ReceiveState::Offered | ReceiveState::Moving) => {
                self.state = ReceiveState::Moved;
            }
            _ => {}
        }
        Vec::new()
    }

    /// Our SHA-256 once every chunk is written; with the sender's, `done`.
    fn maybe_done(&mut self) -> Option<String> {
        if self.state != ReceiveState::Moving || self.next != self.chunks {
            return None;
        }
        if self.sha256.is_none() {
            self.sha256 = Some(hex(&self.hasher.clone().finalize()));
        }
        let theirs = self.theirs.clone()?;
        let ours = self.sha256.clone().expect("set above");
        self.state = if ours == theirs {
            ReceiveState::Complete(ours.clone())
        } else {
            ReceiveState::Ended("hash_mismatch: the file arrived damaged".into())
        };
        Some(json!({"t": "done", "id": self.id, "sha256": ours}).to_string())
    }

    /// The running hash and chunks held, to continue on the relay after `moved`.
    pub fn hash_so_far(&self) -> (Sha256, u32) {
        (self.hasher.clone(), self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn sha(b: &[u8]) -> String {
        hex(&Sha256::digest(b))
    }

    /// Runs a whole send through a receive, optionally damaging one piece once.
    fn transfer(
        file: &[u8],
        chunk: u32,
        damage: Option<usize>,
    ) -> (DirectSend, DirectReceive, Vec<u8>) {
        let t0 = Instant::now();
        let (mut tx, offer) = DirectSend::new(7, "a.bin", file.len() as u64, chunk, t0);
        let mut rx = DirectReceive::from_offer(&v(&offer)).unwrap();
        let mut to_tx: Vec<String> = rx.accept();
        let mut out = Vec::new();
        let mut sent_pieces = 0usize;
        let mut damaged = false;
        for _round in 0..10_000 {
            for m in std::mem::take(&mut to_tx) {
                tx.handle(&v(&m), t0);
            }
            let mut to_rx_text = Vec::new();
            let mut frames = Vec::new();
            while let Some(i) = tx.next_chunk() {
                let s = i as usize * chunk as usize;
                let e = (s + chunk as usize).min(file.len());
                frames.extend(tx.pieces(i, &file[s..e]));
            }
            to_rx_text.extend(tx.end_message());
            for mut f in frames {
                sent_pieces += 1;
                if Some(sent_pieces) == damage && !damaged {
                    damaged = true;
                    let last = f.len() - 1;
                    f[last] ^= 1;
                }
                assert_eq!(piece_transfer_id(&f), Some(7));
                match rx.piece(&f) {
                    ReceiveStep::Write(i, b) => {
                        out.extend_from_slice(&b);
                        to_tx.extend(rx.written(i, &b));
                    }
                    ReceiveStep::Say(m) => to_tx.push(m),
                    ReceiveStep::None => {}
                }
            }
            for m in to_rx_text {
                to_tx.extend(rx.handle(&v(&m)));
            }
            if to_tx.is_empty() && tx.next_chunk().is_none() {
                break;
            }
        }
        (tx, rx, out)
    }

    #[test]
    fn a_multi_chunk_file_arrives_whole_and_both_sides_agree() {
        let file = data(5 * 1000 + 123);
        let (tx, rx, out) = transfer(&file, 1000, None);
        assert_eq!(out, file);
        assert_eq!(tx.state, SendState::Complete);
        assert_eq!(rx.state, ReceiveState::Complete(sha(&file)));
    }

    #[test]
    fn chunks_travel_as_64k_pieces_with_the_page_header() {
        let (mut tx, _) = DirectSend::new(0xdead_beef, "x", 200_000, 262_144, Instant::now());
        let bytes = data(200_000);
        let frames = tx.pieces(0, &bytes);
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0].len(), HEADER + PIECE);
        assert_eq!(frames[3].len(), HEADER + 200_000 - 3 * PIECE);
        assert_eq!(&frames[1][0..4], &0xdead_beefu32.to_be_bytes());
        assert_eq!(&frames[1][4..8], &0u32.to_be_bytes());
        assert_eq!(&frames[1][8..12], &(PIECE as u32).to_be_bytes());
        assert_eq!(&frames[2][12..44], &Sha256::digest(&bytes)[..]);
    }

    #[test]
    fn a_damaged_piece_is_nacked_and_sent_again() {
        let file = data(300_000);
        let (tx, rx, out) = transfer(&file, 100_000, Some(2));
        assert_eq!(out, file, "the damaged chunk was fetched again");
        assert_eq!(tx.state, SendState::Complete);
        assert!(matches!(rx.state, ReceiveState::Complete(_)));
    }

    #[test]
    fn an_empty_file_completes_with_no_chunks() {
        let (tx, rx, out) = transfer(&[], 1000, None);
        assert!(out.is_empty());
        assert_eq!(tx.chunks, 0);
        assert_eq!(tx.state, SendState::Complete);
        assert_eq!(rx.state, ReceiveState::Complete(sha(&[])));
    }

    #[test]
    fn the_window_holds_at_most_16_unconfirmed_chunks() {
        let t0 = Instant::now();
        let (mut tx, _) = DirectSend::new(1, "x", 100 * 10, 10, t0);
        assert_eq!(tx.next_chunk(), None, "nothing before accept");
        tx.handle(&v(r#"{"t":"accept","id":1}"#), t0);
        let mut n = 0;
        while let Some(i) = tx.next_chunk() {
            tx.pieces(i, &[0; 10]);
            n += 1;
        }
        assert_eq!(n, WINDOW);
        assert_eq!(
            tx.handle(&v(r#"{"t":"ack","id":1,"acked":3}"#), t0),
            Some(SendEvent::Acked(3))
        );
        assert_eq!(tx.next_chunk(), Some(16));
    }

    #[test]
    fn no_ack_for_three_seconds_is_a_stall_and_falls_back_from_the_confirmed_chunk() {
        let t0 = Instant::now();
        let (mut tx, _) = DirectSend::new(1, "x", 100, 10, t0);
        tx.handle(&v(r#"{"t":"accept","id":1}"#), t0);
        assert!(
            !tx.stalled(t0 + Duration::from_secs(10)),
            "nothing outstanding yet"
        );
        for i in 0..4 {
            tx.pieces(i, &[0; 10]);
        }
        tx.handle(
            &v(r#"{"t":"ack","id":1,"acked":2}"#),
            t0 + Duration::from_secs(1),
        );
        assert!(!tx.stalled(t0 + Duration::from_millis(3900)));
        assert!(tx.stalled(t0 + Duration::from_millis(4100)));
        let (moved, start) = tx.fallback("stalled");
        assert_eq!(start, 2);
        assert_eq!(
            v(&moved),
            json!({"t":"moved","id":1,"to":"relay","reason":"stalled"})
        );
        let (_, hashed, _) = tx.hash_so_far();
        assert_eq!(hashed, 4, "chunks already read are never read again");
        assert_eq!(tx.next_chunk(), None);
    }

    #[test]
    fn an_offer_not_yet_accepted_moves_from_chunk_zero() {
        let (mut tx, _) = DirectSend::new(1, "x", 100, 10, Instant::now());
        assert_eq!(tx.fallback("failed").1, 0);
    }

    #[test]
    fn a_wrong_hash_in_done_fails_the_send() {
        let t0 = Instant::now();
        let (mut tx, _) = DirectSend::new(1, "x", 5, 10, t0);
        tx.handle(&v(r#"{"t":"accept","id":1}"#), t0);
        tx.pieces(0, b"hello");
        assert!(tx.end_message().is_some());
        let ev = tx.handle(&v(r#"{"t":"done","id":1,"sha256":"00"}"#), t0);
        assert_eq!(ev, Some(SendEvent::HashMismatch));
    }

    #[test]
    fn bad_offers_are_declined_with_the_pages_reasons() {
        let bad = |s: &str| DirectReceive::from_offer(&v(s)).err().unwrap();
        assert_eq!(
            bad(r#"{"t":"file","id":-1,"name":"a","size":1,"chunk_size":1,"chunks":1}"#),
            "bad id"
        );
        assert_eq!(
            bad(r#"{"t":"file","id":1,"name":"","size":1,"chunk_size":1,"chunks":1}"#),
            "bad name"
        );
        assert_eq!(
            bad(r#"{"t":"file","id":1,"name":"a","size":1,"chunk_size":0,"chunks":1}"#),
            "bad chunk size"
        );
        assert_eq!(
            bad(r#"{"t":"file","id":1,"name":"a","size":10,"chunk_size":3,"chunks":3}"#),
            "bad chunk count"
        );
    }

    #[test]
    fn pieces_out_of_order_or_for_a_later_chunk_are_ignored() {
        let off = r#"{"t":"file","id":3,"name":"a","size":20,"chunk_size":10,"chunks":2}"#;
        let mut rx = DirectReceive::from_offer(&v(off)).unwrap();
        rx.accept();
        let (mut tx, _) = DirectSend::new(3, "a", 20, 10, Instant::now());
        let second = tx.pieces(1, &[2; 10]);
        assert_eq!(
            rx.piece(&second[0]),
            ReceiveStep::None,
            "chunk 1 before chunk 0"
        );
        let first = tx.pieces(0, &[1; 10]);
        assert!(matches!(rx.piece(&first[0]), ReceiveStep::Write(0, _)));
        assert_eq!(rx.piece(&[0; 10]), ReceiveStep::None, "a short frame");
    }

    #[test]
    fn moved_and_cancel_end_the_receive() {
        let off = r#"{"t":"file","id":3,"name":"a","size":20,"chunk_size":10,"chunks":2}"#;
        let mut rx = DirectReceive::from_offer(&v(off)).unwrap();
        rx.accept();
        rx.handle(&v(
            r#"{"t":"moved","id":3,"to":"relay","reason":"stalled"}"#,
        ));
        assert_eq!(rx.state, ReceiveState::Moved);
        let mut rx = DirectReceive::from_offer(&v(off)).unwrap();
        rx.handle(&v(r#"{"t":"cancel","id":3,"reason":"no"}"#));
        assert!(matches!(rx.state, ReceiveState::Ended(_)));
    }
}
