//! Two or three LANVan `Peer`s (str0m) in one process, datagrams passed in memory and a
//! pretend clock driven faster than real time: the data channel carries a multi-chunk file,
//! with datagrams lost on the way, and its SHA-256 arrives intact.

use lanvan::core::peer::{Identity, Peer, PeerEvent, PeerLimits, Transmit};
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
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
