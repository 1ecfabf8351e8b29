//! The downloader of one manifest from many sources (SPEC §4 "Downloading"): rarest first,
//! endgame with cancels, reassignment when a source vanishes or errs, piece assembly and
//! SHA-256 checks. Sans-IO: inputs carry `now`; it never touches a channel, file or clock,
//! and holds at most one partly assembled chunk per source.

use super::manifest::Manifest;
use super::wire::{Bitfield, ErrorCode, Holding, Message, PieceError, PieceHeader};
use crate::core::hash::Digest;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The caller's name for a source (one channel to one peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u64);

/// Requests a source takes before its `hello` says otherwise.
pub const DEFAULT_MAX_REQUESTS: usize = 4;
/// Most requests outstanding at one source, whatever its `hello` says.
pub const MAX_REQUESTS_CAP: usize = 64;
/// A source with requests outstanding that sends nothing for this long is dropped, and so
/// is one that does not answer its `query` within it.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a source was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// It sent a chunk that failed its SHA-256 (it was told `bad_data`).
    BadData,
    /// It broke the protocol (interleaved pieces, wrong lengths, a malformed `have`).
    Protocol,
    /// It does not have the manifest.
    NotFound,
    /// It had requests outstanding and sent nothing for the stall timeout, or never
    /// answered the `query` within it.
    Stalled,
    /// It told us `bad_data`: it is dropping us.
    Refused,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BadData => "bad_data",
            DropReason::Protocol => "protocol",
            DropReason::NotFound => "not_found",
            DropReason::Stalled => "stalled",
            DropReason::Refused => "refused",
        }
    }
}

/// What the caller must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Chunk `index` arrived and matched its SHA-256: write `data` at
    /// `manifest.chunk_offset(index)`. Chunks come in any order.
    Verified { index: u32, data: Vec<u8> },
    /// The swarm stopped using this source; close its channel (after sending what
    /// `poll_transmit` still has for it).
    SourceDropped {
        source: SourceId,
        reason: DropReason,
    },
    /// Every chunk is verified (once).
    Done,
}

/// One number for the whole download, across sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub chunks_done: u32,
    pub chunks_total: u32,
    /// Sources in the swarm.
    pub sources: usize,
    /// Sources with requests outstanding right now (what the UI calls "serving").
    pub serving: usize,
}

struct Assembly {
    index: u32,
    buf: Vec<u8>,
}

struct Source {
    max_requests: usize,
    /// None until its first `have`.
    holding: Option<Bitfield>,
    /// Chunks requested from it, oldest first.
    requested: Vec<u32>,
    assembly: Option<Assembly>,
    /// Last time it sent a piece, or was given work while idle.
    last_progress: Instant,
    bytes_delivered: u64,
}

impl Source {
    /// Whether it owes us something: pieces of what we requested, or its first `have`.
    fn waiting(&self) -> bool {
        !self.requested.is_empty() || self.holding.is_none()
    }
}

/// The download of one manifest.
pub struct Swarm {
    manifest: Arc<Manifest>,
    done: Bitfield,
    /// Sources holding each chunk.
    rarity: Vec<u32>,
    /// Sources each missing chunk is requested from (at most 2: the endgame duplicate).
    assigned: Vec<u8>,
    sources: BTreeMap<SourceId, Source>,
    outbox: VecDeque<(SourceId, Message)>,
    events: VecDeque<Event>,
    bytes_done: u64,
    finished: bool,
    dirty: bool,
    stall_timeout: Duration,
}

impl Swarm {
    /// A download of `manifest`; `already` marks chunks the caller holds (resume), if any.
    pub fn new(manifest: Arc<Manifest>, already: Option<Bitfield>) -> Self {
        let n = manifest.chunk_count();
        let done = already
            .filter(|b| b.len() == n)
            .unwrap_or_else(|| Bitfield::new(n));
        let bytes_done = (0..n)
            .filter(|&i| done.get(i))
            .map(|i| u64::from(manifest.chunk_len(i)))
            .sum();
        let mut s = Swarm {
            rarity: vec![0; n as usize],
            assigned: vec![0; n as usize],
            manifest,
            done,
            sources: BTreeMap::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            bytes_done,
            finished: false,
            dirty: false,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        };
        s.check_finished();
        s
    }

    pub fn with_stall_timeout(mut self, t: Duration) -> Self {
        self.stall_timeout = t;
        self
    }

    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// The chunks verified so far.
    pub fn have(&self) -> &Bitfield {
        &self.done
    }

    pub fn is_done(&self) -> bool {
        self.done.is_full()
    }

    /// Whether a piece header names a chunk of this manifest (for routing binary frames when
    /// one channel carries several downloads).
    pub fn wants_piece(&self, h: &PieceHeader) -> bool {
        self.manifest.chunk_hash(h.index) == Some(h.hash)
    }

    // --- sources -------------------------------------------------------------------------

    /// A new source with an open channel: the swarm asks it (`query`) what it holds.
    pub fn add_source(&mut self, id: SourceId, now: Instant) {
        if self.sources.contains_key(&id) || self.finished {
            return;
        }
        let source = Source {
            max_requests: DEFAULT_MAX_REQUESTS,
            holding: None,
            requested: Vec::new(),
            assembly: None,
            last_progress: now,
            bytes_delivered: 0,
        };
        self.sources.insert(id, source);
        self.outbox.push_back((
            id,
            Message::Query {
                manifest: self.manifest.id(),
            },
        ));
    }

    /// The source's channel is gone: its requests go back to the pool at once. No event.
    pub fn remove_source(&mut self, id: SourceId, now: Instant) {
        self.forget(id);
        self.schedule(now);
    }

    /// Sources in the swarm.
    pub fn sources(&self) -> impl Iterator<Item = SourceId> + '_ {
        self.sources.keys().copied()
    }

    /// Bytes of verified chunks this source delivered.
    pub fn delivered_by(&self, id: SourceId) -> u64 {
        self.sources.get(&id).map_or(0, |s| s.bytes_delivered)
    }

    /// Whether every missing chunk is held by some source in the swarm (if not, and nothing
    /// is outstanding, the download cannot finish from these sources).
    pub fn covered(&self) -> bool {
        (0..self.manifest.chunk_count()).all(|i| self.done.get(i) || self.rarity[i as usize] > 0)
    }

    pub fn progress(&self) -> Progress {
        Progress {
            bytes_done: self.bytes_done,
            bytes_total: self.manifest.size(),
            chunks_done: self.done.count(),
            chunks_total: self.manifest.chunk_count(),
            sources: self.sources.len(),
            serving: self
                .sources
                .values()
                .filter(|s| !s.requested.is_empty())
                .count(),
        }
    }

    // --- inputs ----------------------------------------------------------------------------

    /// A text message from a source. Messages about other manifests are ignored.
    pub fn handle_message(&mut self, id: SourceId, msg: &Message, now: Instant) {
        if !self.sources.contains_key(&id) {
            return;
        }
        let mine = self.manifest.id();
        match msg {
            Message::Hello { max_requests, .. } => {
                let s = self.sources.get_mut(&id).unwrap();
                s.max_requests = (*max_requests as usize).clamp(1, MAX_REQUESTS_CAP);
                self.dirty = true;
            }
            Message::Have { manifest, .. } if *manifest == mine => {
                match msg.holding(self.manifest.chunk_count()) {
                    Some(h) => self.update_holding(id, h, now),
                    None => self.drop_source(id, DropReason::Protocol),
                }
            }
            Message::Error {
                code,
                manifest,
                index,
                ..
            } if manifest.is_none() || *manifest == Some(mine) => {
                self.on_error(id, *code, manifest.is_some(), *index)
            }
            _ => {}
        }
        self.schedule(now);
    }

    fn on_error(&mut self, id: SourceId, code: ErrorCode, about_mine: bool, index: Option<u32>) {
        match (code, index) {
            (ErrorCode::BadData, _) => self.drop_source(id, DropReason::Refused),
            (ErrorCode::NotFound, Some(i)) => {
                // It does not have that chunk after all: stop counting it there.
                let s = self.sources.get_mut(&id).unwrap();
                if let Some(b) = &mut s.holding {
                    if b.get(i) {
                        b.clear(i);
                        self.rarity[i as usize] -= 1;
                    }
                }
                self.unassign(id, i);
            }
            (ErrorCode::NotFound, None) if about_mine => self.drop_source(id, DropReason::NotFound),
            (ErrorCode::Busy, Some(i)) => {
                self.unassign(id, i);
                let s = self.sources.get_mut(&id).unwrap();
                s.max_requests = s.requested.len().max(1);
            }
            (ErrorCode::BadRequest, Some(_)) => self.drop_source(id, DropReason::Protocol),
            _ => {}
        }
        self.dirty = true;
    }

    /// A binary frame from a source.
    pub fn handle_piece(&mut self, id: SourceId, frame: &[u8], now: Instant) {
        if !self.sources.contains_key(&id) {
            return;
        }
        match PieceHeader::decode(frame) {
            Ok((h, payload)) => self.on_piece(id, h, payload, now),
            Err(PieceError::UnknownKind(k)) => {
                let text = format!("unknown binary kind {k}");
                self.outbox
                    .push_back((id, Message::error(ErrorCode::BadRequest, text)));
            }
            Err(_) => self.drop_source(id, DropReason::Protocol),
        }
        self.schedule(now);
    }

    fn on_piece(&mut self, id: SourceId, h: PieceHeader, payload: &[u8], now: Instant) {
        if !self.wants_piece(&h) {
            return; // another download's chunk on a shared channel
        }
        if h.chunk_len != self.manifest.chunk_len(h.index) {
            return self.drop_source(id, DropReason::Protocol);
        }
        let s = self.sources.get_mut(&id).unwrap();
        if !s.requested.contains(&h.index) {
            return; // cancelled or already verified: pieces still in flight
        }
        s.last_progress = now;
        match &mut s.assembly {
            Some(a) if a.index == h.index && a.buf.len() == h.offset as usize => {}
            // A new chunk may start only when the previous one is finished (or cancelled).
            None if h.offset == 0 => {
                let buf = Vec::with_capacity(h.chunk_len as usize);
                s.assembly = Some(Assembly {
                    index: h.index,
                    buf,
                });
            }
            _ => return self.drop_source(id, DropReason::Protocol),
        }
        let a = s.assembly.as_mut().unwrap();
        a.buf.extend_from_slice(payload);
        if a.buf.len() < h.chunk_len as usize {
            return;
        }
        let a = s.assembly.take().unwrap();
        if Digest::of(&a.buf) != h.hash {
            let text = format!("chunk {} failed its SHA-256", a.index);
            let msg =
                Message::error_at(ErrorCode::BadData, &text, self.manifest.id(), Some(a.index));
            self.outbox.push_back((id, msg));
            return self.drop_source(id, DropReason::BadData);
        }
        s.bytes_delivered += a.buf.len() as u64;
        self.unassign(id, a.index);
        self.complete(a.index, a.buf);
    }

    /// Time passed: drops sources that stalled.
    pub fn handle_timeout(&mut self, now: Instant) {
        let stalled: Vec<SourceId> = self
            .sources
            .iter()
            .filter(|(_, s)| s.waiting() && now >= s.last_progress + self.stall_timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in stalled {
            self.drop_source(id, DropReason::Stalled);
        }
        self.schedule(now);
    }

    /// When `handle_timeout` next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sources
            .values()
            .filter(|s| s.waiting())
            .map(|s| s.last_progress + self.stall_timeout)
            .min()
    }

    // --- outputs ---------------------------------------------------------------------------

    /// The next message to send, and to which source.
    pub fn poll_transmit(&mut self) -> Option<(SourceId, Message)> {
        self.outbox.pop_front()
    }

    /// The next event. Drain these after every input: verified chunks wait here.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // --- inside ----------------------------------------------------------------------------

    fn update_holding(&mut self, id: SourceId, h: Holding, now: Instant) {
        let n = self.manifest.chunk_count();
        let s = self.sources.get_mut(&id).unwrap();
        if s.holding.is_none() {
            // Its first answer; the stall clock restarts with the first request.
            s.last_progress = now;
        }
        let old = s.holding.take().unwrap_or_else(|| Bitfield::new(n));
        let new = match h {
            Holding::All => Bitfield::full(n),
            Holding::Some(b) => b,
            Holding::One(i) => {
                let mut b = old.clone();
                b.set(i);
                b
            }
        };
        for i in 0..n {
            match (old.get(i), new.get(i)) {
                (false, true) => self.rarity[i as usize] += 1,
                (true, false) => self.rarity[i as usize] -= 1,
                _ => {}
            }
        }
        // A chunk it no longer claims goes back to the pool.
        let lost: Vec<u32> = s
            .requested
            .iter()
            .copied()
            .filter(|&i| !new.get(i))
            .collect();
        s.holding = Some(new);
        for i in lost {
            self.unassign(id, i);
            self.outbox.push_back((
                id,
                Message::Cancel {
                    manifest: self.manifest.id(),
                    index: i,
                },
            ));
        }
        self.dirty = true;
    }

    /// Takes chunk `i` off source `id`'s requests.
    fn unassign(&mut self, id: SourceId, i: u32) {
        let Some(s) = self.sources.get_mut(&id) else {
            return;
        };
        if let Some(pos) = s.requested.iter().position(|&r| r == i) {
            s.requested.remove(pos);
            self.assigned[i as usize] -= 1;
            if s.assembly.as_ref().is_some_and(|a| a.index == i) {
                s.assembly = None;
            }
            self.dirty = true;
        }
    }

    fn complete(&mut self, index: u32, data: Vec<u8>) {
        self.done.set(index);
        self.bytes_done += data.len() as u64;
        let ids: Vec<SourceId> = self.sources.keys().copied().collect();
        for id in ids {
            let had = self.sources[&id].requested.contains(&index);
            self.unassign(id, index);
            // The endgame's loser (the winner's request is already gone from its list).
            if had {
                self.outbox.push_back((
                    id,
                    Message::Cancel {
                        manifest: self.manifest.id(),
                        index,
                    },
                ));
            }
        }
        self.events.push_back(Event::Verified { index, data });
        self.check_finished();
        self.dirty = true;
    }

    fn check_finished(&mut self) {
        if !self.finished && self.done.is_full() {
            self.finished = true;
            self.events.push_back(Event::Done);
        }
    }

    fn forget(&mut self, id: SourceId) -> bool {
        let Some(s) = self.sources.remove(&id) else {
            return false;
        };
        if let Some(b) = &s.holding {
            for i in 0..self.manifest.chunk_count() {
                if b.get(i) {
                    self.rarity[i as usize] -= 1;
                }
            }
        }
        for i in s.requested {
            self.assigned[i as usize] -= 1;
        }
        self.dirty = true;
        true
    }

    fn drop_source(&mut self, id: SourceId, reason: DropReason) {
        if self.forget(id) {
            self.events
                .push_back(Event::SourceDropped { source: id, reason });
        }
    }

    /// Fills every source's free request slots: unrequested chunks rarest first (ties by
    /// index); once none is left anywhere (endgame), chunks already requested from exactly
    /// one other source.
    fn schedule(&mut self, now: Instant) {
        if !self.dirty || self.finished {
            return;
        }
        self.dirty = false;
        let n = self.manifest.chunk_count() as usize;
        let mine = self.manifest.id();
        let mut endgame = !(0..n)
            .any(|i| !self.done.get(i as u32) && self.assigned[i] == 0 && self.rarity[i] > 0);
        let ids: Vec<SourceId> = self.sources.keys().copied().collect();
        for id in ids {
            loop {
                let s = &self.sources[&id];
                let Some(holding) = &s.holding else { break };
                if s.requested.len() >= s.max_requests {
                    break;
                }
                let want = if endgame { 1 } else { 0 };
                let pick = (0..n)
                    .filter(|&i| {
                        !self.done.get(i as u32)
                            && self.assigned[i] == want
                            && holding.get(i as u32)
                            && !s.requested.contains(&(i as u32))
                    })
                    .min_by_key(|&i| (self.rarity[i], i));
                let Some(i) = pick else {
                    if !endgame
                        && !(0..n).any(|i| {
                            !self.done.get(i as u32) && self.assigned[i] == 0 && self.rarity[i] > 0
                        })
                    {
                        endgame = true;
                        continue;
                    }
                    break;
                };
                let s = self.sources.get_mut(&id).unwrap();
                if s.requested.is_empty() {
                    s.last_progress = now;
                }
                s.requested.push(i as u32);
                self.assigned[i] += 1;
                let hash = self.manifest.chunks()[i];
                self.outbox.push_back((
                    id,
                    Message::RequestChunk {
                        manifest: mine,
                        index: i as u32,
                        hash,
                    },
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::chunks::manifest::Chunker;
    use crate::core::chunks::seeder::{Handled, Library, Output, Seeder};
    use proptest::prelude::*;

    fn manifest_of(data: &[u8], cs: u32) -> Arc<Manifest> {
        let mut c = Chunker::new(cs);
        c.push(data);
        Arc::new(c.finish("f").unwrap())
    }

    /// A simulated peer: a seeder over the real bytes that claims `holds`, maybe corrupting
    /// what it sends.
    struct Peer {
        seeder: Seeder,
        lib: PeerLib,
        corrupt: bool,
        /// Outputs it sends per round (its speed).
        speed: usize,
        /// Round at which it vanishes.
        vanish_at: Option<usize>,
    }

    struct PeerLib {
        m: Arc<Manifest>,
        holds: Option<Bitfield>,
    }

    impl Library for PeerLib {
        fn manifest(&self, id: &Digest) -> Option<Arc<Manifest>> {
            (*id == self.m.id()).then(|| self.m.clone())
        }
        fn holding(&self, id: &Digest) -> Option<Holding> {
            self.manifest(id)?;
            Some(self.holds.clone().map_or(Holding::All, Holding::Some))
        }
    }

    #[derive(Default)]
    struct Outcome {
        out: Vec<u8>,
        dropped: Vec<(SourceId, DropReason)>,
        done: bool,
        rounds: usize,
        verified: u32,
    }

    fn run(
        data: &[u8],
        m: Arc<Manifest>,
        mut peers: Vec<Peer>,
        max_rounds: usize,
    ) -> (Swarm, Outcome) {
        let t0 = Instant::now();
        let mut swarm = Swarm::new(m.clone(), None);
        let mut o = Outcome {
            out: vec![0; data.len()],
            ..Default::default()
        };
        for (k, p) in peers.iter().enumerate() {
            let _ = p;
            swarm.add_source(SourceId(k as u64), t0);
            let hello = Message::Hello {
                id: format!("p{k}"),
                name: "peer".into(),
                role: crate::core::chunks::Role::Browser,
                max_requests: 3,
            };
            swarm.handle_message(SourceId(k as u64), &hello, t0);
        }
        let mut gone = vec![false; peers.len()];
        for round in 0..max_rounds {
            let now = t0 + Duration::from_millis(round as u64);
            o.rounds = round;
            while let Some((SourceId(k), msg)) = swarm.poll_transmit() {
                let k = k as usize;
                if gone[k] {
                    continue;
                }
                // Through the text form, as on the wire.
                let msg = Message::parse(&msg.to_text()).unwrap();
                let p = &mut peers[k];
                assert_ne!(p.seeder.handle_message(&msg, &p.lib), Handled::Flooded);
            }
            for (k, p) in peers.iter_mut().enumerate() {
                if gone[k] {
                    continue;
                }
                if p.vanish_at == Some(round) {
                    gone[k] = true;
                    swarm.remove_source(SourceId(k as u64), now);
                    continue;
                }
                for _ in 0..p.speed {
                    match p.seeder.poll_output() {
                        Some(Output::Text(t)) => swarm.handle_message(SourceId(k as u64), &t, now),
                        Some(Output::Piece(mut f)) => {
                            if p.corrupt {
                                let last = f.len() - 1;
                                f[last] ^= 0x5a;
                            }
                            swarm.handle_piece(SourceId(k as u64), &f, now)
                        }
                        Some(Output::Read(r)) => {
                            let at = r.manifest.chunk_offset(r.index) as usize;
                            let len = r.manifest.chunk_len(r.index) as usize;
                            p.seeder.chunk_read(&r, Some(data[at..at + len].to_vec()));
                        }
                        None => break,
                    }
                }
            }
            swarm.handle_timeout(now);
            while let Some(e) = swarm.poll_event() {
                match e {
                    Event::Verified { index, data: d } => {
                        let at = m.chunk_offset(index) as usize;
                        assert_eq!(d.len(), m.chunk_len(index) as usize);
                        o.out[at..at + d.len()].copy_from_slice(&d);
                        o.verified += 1;
                    }
                    Event::SourceDropped { source, reason } => {
                        gone[source.0 as usize] = true;
                        o.dropped.push((source, reason));
                    }
                    Event::Done => {
                        assert!(!o.done, "Done comes once");
                        o.done = true;
                    }
                }
            }
            if o.done {
                break;
            }
        }
        (swarm, o)
    }

    fn peer(m: &Arc<Manifest>, holds: Option<Bitfield>) -> Peer {
        Peer {
            seeder: Seeder::new(3).with_piece_size(16),
            lib: PeerLib {
                m: m.clone(),
                holds,
            },
            corrupt: false,
            speed: 2,
            vanish_at: None,
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn downloads_from_two_sources_and_both_serve() {
        let d = data(1000);
        let m = manifest_of(&d, 50);
        let (swarm, o) = run(
            &d,
            m,
            vec![
                peer(&manifest_of(&d, 50), None),
                peer(&manifest_of(&d, 50), None),
            ],
            10_000,
        );
        assert!(o.done);
        assert_eq!(o.out, d);
        assert!(o.dropped.is_empty());
        assert!(swarm.delivered_by(SourceId(0)) > 0 && swarm.delivered_by(SourceId(1)) > 0);
        assert_eq!(o.verified, 20);
        let p = swarm.progress();
        assert_eq!(
            (p.bytes_done, p.bytes_total, p.chunks_done, p.serving),
            (1000, 1000, 20, 0)
        );
    }

    fn requests(s: &mut Swarm) -> Vec<(u64, u32)> {
        std::iter::from_fn(|| s.poll_transmit())
            .filter_map(|(id, msg)| match msg {
                Message::RequestChunk { index, .. } => Some((id.0, index)),
                _ => None,
            })
            .collect()
    }

    fn hello(max_requests: u32) -> Message {
        let role = crate::core::chunks::Role::Browser;
        Message::Hello {
            id: "x".into(),
            name: "x".into(),
            role,
            max_requests,
        }
    }

    #[test]
    fn rarest_chunk_is_requested_first() {
        let d = data(300);
        let m = manifest_of(&d, 50);
        let t = Instant::now();
        let mut s = Swarm::new(m.clone(), None);
        s.add_source(SourceId(1), t);
        s.add_source(SourceId(2), t);
        s.handle_message(SourceId(1), &hello(1), t);
        s.handle_message(SourceId(2), &hello(1), t);
        let mut b = Bitfield::new(6);
        for i in 0..3 {
            b.set(i);
        }
        s.handle_message(SourceId(2), &Message::have(m.id(), &Holding::Some(b)), t);
        assert_eq!(requests(&mut s), [(2, 0)]);
        // Chunks 3..5 are only at source 1: rarer than 1 and 2, so they come first there.
        s.handle_message(SourceId(1), &Message::have(m.id(), &Holding::All), t);
        assert_eq!(requests(&mut s), [(1, 3)]);
        let piece = PieceHeader {
            index: 0,
            offset: 0,
            chunk_len: 50,
            hash: m.chunks()[0],
        }
        .frame(&d[..50]);
        s.handle_piece(SourceId(2), &piece, t);
        assert_eq!(requests(&mut s), [(2, 1)]);
        assert_eq!(s.progress().bytes_done, 50);
        assert_eq!(s.progress().serving, 2);

        let m = manifest_of(&d[..200], 50);
        // Endgame: source 2 duplicates what it holds and cancels follow the winner.
        let mut s2 = Swarm::new(m.clone(), None);
        s2.add_source(SourceId(2), t);
        let mut b = Bitfield::new(4);
        b.set(3);
        s2.handle_message(SourceId(2), &Message::have(m.id(), &Holding::Some(b)), t);
        s2.add_source(SourceId(1), t);
        s2.handle_message(SourceId(1), &Message::have(m.id(), &Holding::All), t);
        let sent = requests(&mut s2);
        // Its fourth slot goes to the endgame duplicate of chunk 3, outstanding at source 2.
        assert_eq!(sent, vec![(2, 3), (1, 0), (1, 1), (1, 2), (1, 3)]);
        s2.handle_message(SourceId(1), &hello(16), t);
        assert_eq!(requests(&mut s2), [], "at most two sources per chunk");
        let piece = PieceHeader {
            index: 3,
            offset: 0,
            chunk_len: 50,
            hash: m.chunks()[3],
        }
        .frame(&d[150..200]);
        s2.handle_piece(SourceId(1), &piece, t);
        assert_eq!(
            s2.poll_transmit(),
            Some((
                SourceId(2),
                Message::Cancel {
                    manifest: m.id(),
                    index: 3
                }
            ))
        );
        assert!(matches!(
            s2.poll_event(),
            Some(Event::Verified { index: 3, .. })
        ));
    }

    #[test]
    fn bad_chunk_drops_the_source_and_refetches_elsewhere() {
        let d = data(500);
        let m = manifest_of(&d, 100);
        let mut bad = peer(&m, None);
        bad.corrupt = true;
        bad.speed = 5;
        let (_, o) = run(&d, m.clone(), vec![bad, peer(&m, None)], 10_000);
        assert!(o.done);
        assert_eq!(o.out, d);
        assert_eq!(o.dropped, vec![(SourceId(0), DropReason::BadData)]);
    }

    #[test]
    fn a_vanished_source_loses_its_chunks_to_the_others() {
        let d = data(2000);
        let m = manifest_of(&d, 100);
        let mut fast = peer(&m, None);
        fast.speed = 50;
        fast.vanish_at = Some(3);
        let mut slow = peer(&m, None);
        slow.speed = 1;
        let (swarm, o) = run(&d, m, vec![fast, slow], 100_000);
        assert!(o.done);
        assert_eq!(o.out, d);
        assert!(o.dropped.is_empty());
        assert_eq!(swarm.sources().collect::<Vec<_>>(), vec![SourceId(1)]);
    }

    #[test]
    fn a_stalled_source_is_dropped() {
        let d = data(300);
        let m = manifest_of(&d, 100);
        let t = Instant::now();
        let mut s = Swarm::new(m.clone(), None).with_stall_timeout(Duration::from_secs(5));
        s.add_source(SourceId(1), t);
        s.handle_message(SourceId(1), &Message::have(m.id(), &Holding::All), t);
        assert_eq!(s.progress().serving, 1);
        assert_eq!(s.poll_timeout(), Some(t + Duration::from_secs(5)));
        s.handle_timeout(t + Duration::from_secs(4));
        assert!(s.poll_event().is_none());
        s.handle_timeout(t + Duration::from_secs(5));
        assert_eq!(
            s.poll_event(),
            Some(Event::SourceDropped {
                source: SourceId(1),
                reason: DropReason::Stalled
            })
        );
        assert!(!s.covered());
        // One that never answers its query goes the same way.
        s.add_source(SourceId(2), t);
        assert_eq!(s.poll_timeout(), Some(t + Duration::from_secs(5)));
        s.handle_timeout(t + Duration::from_secs(6));
        assert_eq!(
            s.poll_event(),
            Some(Event::SourceDropped {
                source: SourceId(2),
                reason: DropReason::Stalled
            })
        );
    }

    #[test]
    fn protocol_breaks_drop_the_source() {
        let d = data(300);
        let m = manifest_of(&d, 100);
        let t = Instant::now();
        let mut s = Swarm::new(m.clone(), None);
        s.add_source(SourceId(1), t);
        s.handle_message(
            SourceId(1),
            &Message::Have {
                manifest: m.id(),
                all: false,
                bitfield: Some("!!".into()),
                index: None,
            },
            t,
        );
        assert_eq!(
            s.poll_event(),
            Some(Event::SourceDropped {
                source: SourceId(1),
                reason: DropReason::Protocol
            })
        );
        // Interleaved pieces of two chunks.
        s.add_source(SourceId(2), t);
        s.handle_message(SourceId(2), &Message::have(m.id(), &Holding::All), t);
        let h = |i: u32| PieceHeader {
            index: i,
            offset: 0,
            chunk_len: 100,
            hash: m.chunks()[i as usize],
        };
        s.handle_piece(SourceId(2), &h(0).frame(&d[..10]), t);
        s.handle_piece(SourceId(2), &h(1).frame(&d[100..110]), t);
        assert_eq!(
            s.poll_event(),
            Some(Event::SourceDropped {
                source: SourceId(2),
                reason: DropReason::Protocol
            })
        );
        // The manifest is unknown there.
        s.add_source(SourceId(3), t);
        s.handle_message(
            SourceId(3),
            &Message::error_at(ErrorCode::NotFound, "no", m.id(), None),
            t,
        );
        assert_eq!(
            s.poll_event(),
            Some(Event::SourceDropped {
                source: SourceId(3),
                reason: DropReason::NotFound
            })
        );
        // An unknown binary kind is answered, not fatal.
        s.add_source(SourceId(4), t);
        s.handle_piece(SourceId(4), &[9, 0, 0], t);
        let sent: Vec<_> = std::iter::from_fn(|| s.poll_transmit()).collect();
        assert!(sent.iter().any(|(id, m)| *id == SourceId(4)
            && matches!(
                m,
                Message::Error {
                    code: ErrorCode::BadRequest,
                    ..
                }
            )));
        assert!(s.sources().any(|id| id == SourceId(4)));
    }

    #[test]
    fn empty_file_is_done_at_once() {
        let m = manifest_of(b"", 100);
        let mut s = Swarm::new(m, None);
        assert_eq!(s.poll_event(), Some(Event::Done));
        assert!(s.is_done());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Random partial sources, liars that corrupt data, sources that vanish: with one
        /// honest source holding everything the download always ends with the right bytes,
        /// and no honest source is ever dropped.
        #[test]
        fn always_completes_with_the_right_bytes(
            len in 0usize..3000,
            cs in 17u32..400,
            others in proptest::collection::vec((any::<u64>(), any::<bool>(), 0usize..40, 1usize..6), 0..5),
            honest_speed in 1usize..4,
        ) {
            let d = data(len);
            let m = manifest_of(&d, cs);
            let n = m.chunk_count();
            let mut peers = vec![Peer { speed: honest_speed, ..peer(&m, None) }];
            for (bits, corrupt, vanish, speed) in &others {
                let mut b = Bitfield::new(n);
                for i in 0..n {
                    if bits.rotate_left(i) & 1 == 1 {
                        b.set(i);
                    }
                }
                let mut p = peer(&m, Some(b));
                p.corrupt = *corrupt;
                p.vanish_at = (*vanish < 20).then_some(*vanish);
                p.speed = *speed;
                peers.push(p);
            }
            let (_, o) = run(&d, m, peers, 200_000);
            prop_assert!(o.done);
            prop_assert_eq!(&o.out, &d);
            for (id, reason) in &o.dropped {
                prop_assert!(id.0 != 0, "the honest source was dropped");
                prop_assert_eq!(*reason, DropReason::BadData);
                prop_assert!(others[id.0 as usize - 1].1);
            }
        }
    }
}
