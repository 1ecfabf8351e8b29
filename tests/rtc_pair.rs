//! LANVan `Peer`s (str0m) in one process, datagrams passed in memory and a pretend clock
//! driven faster than real time: a data channel carries a multi-chunk file across a lossy
//! link; and a chunk-protocol download from two sources, one of which sends a bad chunk,
//! detects it, drops that source and fetches the chunk again from the other.

use lanvan::core::chunks::seeder::Output as SeederOutput;
use lanvan::core::chunks::{
    Chunker, DropReason, Event as SwarmEvent, Library, Manifest, Message, PieceHeader, Seeder,
    SourceId, Swarm,
};
use lanvan::core::hash::Digest;
use lanvan::core::peer::{CloseReason, Identity, Peer, PeerEvent, PeerLimits, Transmit};
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Peers on a pretend LAN: each has its own address; datagrams go to the peer at their
/// destination that accepts them. Every `loss`-th datagram is dropped.
pub struct Lan {
    pub now: Instant,
    pub start: Instant,
    pub peers: Vec<(SocketAddr, Peer)>,
    pub loss: usize,
    sent: usize,
    pub dropped: usize,
}

impl Lan {
    pub fn new(loss: usize) -> Lan {
        let now = Instant::now();
        Lan {
            now,
            start: now,
            peers: Vec::new(),
            loss,
            sent: 0,
            dropped: 0,
        }
    }

    /// Connects a new offerer at `a` to a new answerer at `b`; returns their indexes.
    pub fn connect(&mut self, id: &Identity, a: SocketAddr, b: SocketAddr) -> (usize, usize) {
        let limits = PeerLimits::default();
        let (mut off, offer) = Peer::offer(id, &limits, self.now, &[a]).unwrap();
        let (ans, answer) = Peer::answer(id, &limits, self.now, &[b], &offer).unwrap();
        off.accept_answer(&answer).unwrap();
        self.peers.push((a, off));
        self.peers.push((b, ans));
        (self.peers.len() - 2, self.peers.len() - 1)
    }

    /// Moves every datagram until the LAN is quiet.
    pub fn flush(&mut self) {
        loop {
            let mut out: Vec<Transmit> = Vec::new();
            for (_, p) in &mut self.peers {
                while let Some(t) = p.poll_transmit() {
                    out.push(t);
                }
            }
            if out.is_empty() {
                return;
            }
            for t in out {
                self.sent += 1;
                if self.loss > 0 && self.sent % self.loss == 0 {
                    self.dropped += 1;
                    continue;
                }
                let now = self.now;
                if let Some((_, p)) = self
                    .peers
                    .iter_mut()
                    .find(|(addr, p)| *addr == t.to && p.accepts(t.from, t.to, &t.bytes))
                {
                    p.receive(now, t.from, t.to, &t.bytes);
                }
            }
        }
    }

    /// Delivers what is in flight, then moves the clock to the next deadline (at most
    /// `max` ahead) and fires it.
    pub fn step(&mut self, max: Duration) {
        self.flush();
        let next = self
            .peers
            .iter()
            .filter(|(_, p)| p.closed().is_none())
            .map(|(_, p)| p.next_timeout())
            .min()
            .unwrap_or(self.now + max);
        self.now = next.clamp(self.now + Duration::from_micros(100), self.now + max);
        let now = self.now;
        for (_, p) in &mut self.peers {
            if p.next_timeout() <= now {
                p.handle_timeout(now);
            }
        }
        self.flush();
    }

    pub fn events(&mut self, i: usize) -> Vec<PeerEvent> {
        std::iter::from_fn(|| self.peers[i].1.poll_event()).collect()
    }
}

fn addr(last: u8, port: u16) -> SocketAddr {
    ([192, 168, 7, last], port).into()
}

fn data(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn a_multi_chunk_file_crosses_a_lossy_link_faster_than_real_time() {
    let id = Identity::new().unwrap();
    let mut lan = Lan::new(50);
    let (a, b) = lan.connect(&id, addr(1, 5000), addr(2, 6000));
    let file = data(3 * 262_144 + 1234);
    let mut got = Vec::new();
    let mut offset = 0;
    let real = Instant::now();
    let mut b_open = false;
    for _ in 0..200_000 {
        lan.step(Duration::from_millis(20));
        for e in lan.events(b) {
            b_open |= e == PeerEvent::Open;
            if let PeerEvent::Binary(piece) = e {
                got.extend_from_slice(&piece);
            }
        }
        let _ = lan.events(a);
        // The offerer writes 64 KiB pieces while its send buffer has room.
        while b_open && offset < file.len() {
            let end = (offset + 65_536).min(file.len());
            if !lan.peers[a].1.send_binary(&file[offset..end]).unwrap() {
                break;
            }
            offset = end;
        }
        if got.len() == file.len() {
            break;
        }
    }
    assert_eq!(got.len(), file.len());
    assert_eq!(Sha256::digest(&got), Sha256::digest(&file));
    assert!(lan.dropped > 0, "the link lost nothing");
    let pretend = lan.now - lan.start;
    eprintln!(
        "{} bytes in {pretend:?} of pretend time, {:?} real, {} datagrams lost",
        file.len(),
        real.elapsed(),
        lan.dropped
    );
}

/// One chunk-protocol source on the pretend LAN: a seeder serving `file` on an answerer.
struct Source {
    peer: usize,
    seeder: Seeder,
    /// Flip a byte of the first chunk this source sends (a source that sends bad data).
    corrupt: bool,
    /// Which chunk it spoiled.
    spoiled: Option<u32>,
}

struct Lib(Arc<Manifest>);

impl Library for Lib {
    fn manifest(&self, id: &Digest) -> Option<Arc<Manifest>> {
        (*id == self.0.id()).then(|| self.0.clone())
    }
}

#[test]
fn a_swarm_over_two_rtc_sources_refetches_a_bad_chunk_from_the_good_one() {
    let id = Identity::new().unwrap();
    let mut lan = Lan::new(97);
    let chunk = 16 * 1024;
    let file = data(20 * chunk + 999);
    let mut chunker = Chunker::new(chunk as u32);
    chunker.push(&file);
    let m = Arc::new(chunker.finish("f.bin").unwrap());
    let lib = Lib(m.clone());
    // The downloader makes one offer per source.
    let (d_good, good) = lan.connect(&id, addr(1, 5000), addr(2, 6000));
    let (d_bad, bad) = lan.connect(&id, addr(1, 5001), addr(3, 7000));
    let mut sources = [
        Source {
            peer: good,
            seeder: Seeder::new(16).with_piece_size(4096),
            corrupt: false,
            spoiled: None,
        },
        Source {
            peer: bad,
            seeder: Seeder::new(16).with_piece_size(4096),
            corrupt: true,
            spoiled: None,
        },
    ];
    let src_of = |peer: usize| SourceId(peer as u64);
    let mut swarm = Swarm::new(m.clone(), None);
    let mut out = vec![0u8; file.len()];
    let mut dropped = Vec::new();
    let mut verified = 0;
    // Both channels must be open before the swarm hears of either: otherwise the
    // good source, opening first, can deliver every chunk before the bad one
    // gets a request, and nothing is tested.
    let mut opened = Vec::new();
    let real = Instant::now();
    for _ in 0..200_000 {
        lan.step(Duration::from_millis(20));
        let now = lan.now;
        // The downloader's side of each channel.
        for p in [d_good, d_bad] {
            for e in lan.events(p) {
                match e {
                    PeerEvent::Open => {
                        opened.push(p);
                        if opened.len() == 2 {
                            for &q in &opened {
                                swarm.add_source(src_of(q), now);
                            }
                        }
                    }
                    PeerEvent::Text(t) => {
                        if let Ok(msg) = Message::parse(&t) {
                            swarm.handle_message(src_of(p), &msg, now);
                        }
                    }
                    PeerEvent::Binary(b) => swarm.handle_piece(src_of(p), &b, now),
                    PeerEvent::Closed(_) => swarm.remove_source(src_of(p), now),
                    _ => {}
                }
            }
        }
        // The sources: answer, then send while the channel has room.
        for s in &mut sources {
            for e in lan.events(s.peer) {
                if let PeerEvent::Text(t) = e {
                    if let Ok(msg) = Message::parse(&t) {
                        s.seeder.handle_message(&msg, &lib);
                    }
                }
            }
            let peer = &mut lan.peers[s.peer].1;
            while peer.is_open() && peer.buffered() + 8192 <= PeerLimits::default().send_buffer {
                match s.seeder.poll_output() {
                    None => break,
                    Some(SeederOutput::Text(msg)) => {
                        assert!(peer.send_text(&msg.to_text()).unwrap());
                    }
                    Some(SeederOutput::Piece(mut frame)) => {
                        let (h, _) = PieceHeader::decode(&frame).unwrap();
                        if s.corrupt && h.offset == 0 {
                            let last = frame.len() - 1;
                            frame[last] ^= 0xff;
                            s.corrupt = false;
                            s.spoiled = Some(h.index);
                        }
                        assert!(peer.send_binary(&frame).unwrap());
                    }
                    Some(SeederOutput::Read(r)) => {
                        let at = r.manifest.chunk_offset(r.index) as usize;
                        let len = r.manifest.chunk_len(r.index) as usize;
                        s.seeder.chunk_read(&r, Some(file[at..at + len].to_vec()));
                    }
                }
            }
        }
        // What the swarm wants said and done.
        if swarm.poll_timeout().is_some_and(|t| t <= now) {
            swarm.handle_timeout(now);
        }
        while let Some((src, msg)) = swarm.poll_transmit() {
            let peer = &mut lan.peers[src.0 as usize].1;
            if peer.is_open() {
                assert!(peer.send_text(&msg.to_text()).unwrap());
            }
        }
        while let Some(e) = swarm.poll_event() {
            match e {
                SwarmEvent::Verified { index, data } => {
                    let at = m.chunk_offset(index) as usize;
                    out[at..at + data.len()].copy_from_slice(&data);
                    verified += 1;
                }
                SwarmEvent::SourceDropped { source, reason } => {
                    dropped.push((source, reason));
                    lan.peers[source.0 as usize].1.close(CloseReason::BadData);
                }
                SwarmEvent::Done => {}
            }
        }
        if swarm.is_done() {
            break;
        }
    }
    assert!(swarm.is_done(), "the download did not finish");
    assert!(sources[1].spoiled.is_some(), "the bad source sent nothing");
    assert_eq!(verified, m.chunk_count());
    assert_eq!(dropped, [(src_of(d_bad), DropReason::BadData)]);
    assert_eq!(Sha256::digest(&out), Sha256::digest(&file));
    // The bad source gave some chunks before it was caught; the good one the rest,
    // the bad chunk among them.
    assert!(swarm.delivered_by(src_of(d_good)) > 0);
    eprintln!(
        "{} chunks from two sources in {:?} of pretend time, {:?} real, {} datagrams lost",
        m.chunk_count(),
        lan.now - lan.start,
        real.elapsed(),
        lan.dropped
    );
}
