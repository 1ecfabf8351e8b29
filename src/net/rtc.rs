//! The smol side of WebRTC, shared by the box and the `lanvan` command line: one UDP socket
//! per local address, shared by every [`Peer`], read in bounded batches; one timer for all
//! peers; datagrams routed by source address, then by `Rtc::accepts`. It never blocks: a
//! send that would block drops the datagram (SCTP and STUN resend), and events wait in one
//! bounded queue, so a slow consumer stops the reads instead of growing memory.
//!
//! # Client API (the CLI)
//!
//! ```no_run
//! # async fn demo(signal: impl Fn(String) -> String) -> Result<(), Box<dyn std::error::Error>> {
//! use lanvan::core::peer::{Identity, PeerEvent};
//! use lanvan::net::rtc::{Host, HostLimits};
//! let identity = Identity::new()?; // once per process: certificate + warm crypto
//! // The LAN address the box is reached from (the /ws socket's local address), port 0.
//! let local = ["192.168.1.20:0".parse()?];
//! let (host, events) = Host::bind(&local, identity, HostLimits::default())?;
//! // The host runs beside your work on the same thread (Rc, not Send): race them.
//! let work = async {
//!     // Offer (with the `lanvan-chunks` channel), signal, apply the answer. The callback
//!     // sends `rtc_offer` over the box's /ws and returns the SDP of its `rtc_answer`.
//!     let peer = host
//!         .connect(|offer| async move { Ok::<_, std::io::Error>(signal(offer)) })
//!         .await?;
//!     while let Ok((id, event)) = events.recv().await {
//!         match event {
//!             PeerEvent::Open => {
//!                 let hello = r#"{"t":"hello","id":"x","name":"cli","role":"cli","max_requests":16}"#;
//!                 host.send_text(id, hello)?;
//!             }
//!             PeerEvent::Text(t) => { /* a chunk protocol message */ }
//!             PeerEvent::Binary(b) => { /* a chunk piece */ }
//!             PeerEvent::Writable => { /* retry writes that returned Ok(false) */ }
//!             PeerEvent::Closed(reason) => break,
//!             PeerEvent::Connected => {}
//!         }
//!     }
//!     Ok::<_, Box<dyn std::error::Error>>(peer)
//! };
//! let run = async {
//!     host.clone().run().await;
//!     unreachable!()
//! };
//! smol::future::or(work, run).await?;
//! # Ok(()) }
//! ```
//!
//! For a browser's P2P transfer channel (`lanvan`, docs/protocol.md "P2P transfers") use
//! `connect_channel(TRANSFER_LABEL, ..)` as the sender, or `answer_channel(sdp,
//! TRANSFER_LABEL)` for a browser's offer, with the SDP carried by `webrtc_signal`;
//! trickled browser candidates go to `add_remote_candidate` (`.local` ones fail harmlessly).
//!
//! `send_text`/`send_binary` return `Ok(false)` when the peer's send buffer
//! (`PeerLimits::send_buffer`) is full; `PeerEvent::Writable` says when to try again.
//! The box's use of it (signaling over `/ws`, serving chunks) is in [`serve`].

pub mod serve;

use crate::core::peer::{
    CloseReason, Identity, Peer, PeerError, PeerEvent, PeerLimits, Transmit, CHUNKS_LABEL,
};
use smol::channel::{Receiver, Sender};
use smol::{Async, Timer};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A peer of this host.
pub type PeerId = u64;

/// Where a host's events arrive, in order per peer.
pub type Events = Receiver<(PeerId, PeerEvent)>;

/// Kernel buffer asked for on each UDP socket, each way (benches/rtc_peer.rs uses it too).
pub const SOCKET_BUFFER: usize = 2 * 1024 * 1024;

/// Largest datagram read; WebRTC keeps datagrams under the path MTU (about 1200-1500).
const MAX_DATAGRAM: usize = 2048;

/// How a host behaves.
#[derive(Clone, Debug)]
pub struct HostLimits {
    /// Peers at once; `offer`/`answer` beyond it fail with `HostError::Busy`.
    pub max_peers: usize,
    /// Datagrams read per socket per wake-up before other tasks get a turn.
    pub batch: usize,
    /// Events waiting for the consumer; when full, reading stops until it takes some.
    pub events: usize,
    /// Each peer's own limits.
    pub peer: PeerLimits,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            max_peers: 16,
            batch: 64,
            events: 256,
            peer: PeerLimits::default(),
        }
    }
}

/// Why a host refused.
#[derive(Debug)]
pub enum HostError {
    /// The peer limit is reached.
    Busy,
    /// No such peer (it closed).
    Gone,
    /// The signaling callback of `connect` failed.
    Signal(String),
    Peer(PeerError),
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::Busy => f.write_str("too many WebRTC peers"),
            HostError::Gone => f.write_str("that WebRTC peer is gone"),
            HostError::Signal(e) => write!(f, "signaling failed: {e}"),
            HostError::Peer(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for HostError {}

impl From<PeerError> for HostError {
    fn from(e: PeerError) -> Self {
        HostError::Peer(e)
    }
}

/// This machine's LAN IPv4 addresses (not loopback, link-local or unspecified), to bind a
/// host on when the listen address is unspecified.
pub fn lan_ipv4s() -> Vec<std::net::IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut ips: Vec<std::net::IpAddr> = addrs
        .filter_map(|ifa| {
            let v4 = ifa.address?.as_sockaddr_in()?.ip();
            (!v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified())
                .then_some(std::net::IpAddr::V4(v4))
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The UDP sockets and every peer on them. Lives on one thread.
pub struct Host {
    identity: Identity,
    limits: HostLimits,
    sockets: Vec<Async<UdpSocket>>,
    locals: Vec<SocketAddr>,
    peers: RefCell<Peers>,
    /// Wakes the timer when a peer's deadline may have moved earlier.
    kick: Sender<()>,
    kicked: Receiver<()>,
    events: Sender<(PeerId, PeerEvent)>,
    /// Held while events are handed over, so they reach the consumer in order.
    delivering: smol::lock::Mutex<()>,
}

#[derive(Default)]
struct Peers {
    next: PeerId,
    map: HashMap<PeerId, Peer>,
    /// Where each peer's datagrams come from, learned when a STUN check is accepted.
    by_addr: HashMap<SocketAddr, PeerId>,
    /// Events taken from peers, waiting to go into the bounded queue.
    ready: Vec<(PeerId, PeerEvent)>,
}

impl Host {
    /// Binds one UDP socket per address (port 0 picks one) and returns the host and the
    /// queue its events arrive on. Run `run()` for it to do anything.
    pub fn bind(
        addrs: &[SocketAddr],
        identity: Identity,
        limits: HostLimits,
    ) -> std::io::Result<(Rc<Host>, Events)> {
        let mut sockets = Vec::new();
        let mut locals = Vec::new();
        for a in addrs {
            let s = Async::<UdpSocket>::bind(*a)?;
            // A data channel bursts up to its send buffer at once: with the default receive
            // buffer (~200 KiB) the kernel drops part of a burst and SCTP must recover it.
            // Best effort: the kernel caps it at net.core.rmem_max.
            use nix::sys::socket::{setsockopt, sockopt};
            let _ = setsockopt(s.get_ref(), sockopt::RcvBuf, &SOCKET_BUFFER);
            let _ = setsockopt(s.get_ref(), sockopt::SndBuf, &SOCKET_BUFFER);
            locals.push(s.get_ref().local_addr()?);
            sockets.push(s);
        }
        let (kick, kicked) = smol::channel::bounded(1);
        let (events, rx) = smol::channel::bounded(limits.events.max(1));
        let host = Host {
            identity,
            limits,
            sockets,
            locals,
            peers: RefCell::default(),
            kick,
            kicked,
            events,
            delivering: smol::lock::Mutex::new(()),
        };
        Ok((Rc::new(host), rx))
    }

    /// The sockets' addresses: the host candidates every peer advertises.
    pub fn locals(&self) -> &[SocketAddr] {
        &self.locals
    }

    /// Peers now.
    pub fn peer_count(&self) -> usize {
        self.peers.borrow().map.len()
    }

    /// Starts an offering peer with the `lanvan-chunks` channel; returns its offer SDP.
    pub fn offer(&self) -> Result<(PeerId, String), HostError> {
        self.offer_channel(CHUNKS_LABEL)
    }

    /// `offer` with a channel of another label (`TRANSFER_LABEL` for the CLI's sends to a
    /// browser, which speak the P2P transfer framing).
    pub fn offer_channel(&self, label: &str) -> Result<(PeerId, String), HostError> {
        self.room()?;
        let (peer, sdp) = Peer::offer_channel(
            &self.identity,
            &self.limits.peer,
            Instant::now(),
            &self.locals,
            label,
        )?;
        Ok((self.insert(peer), sdp))
    }

    /// Answers a remote offer with a new peer; returns the answer SDP (with the host
    /// candidates in it: no trickle from this side).
    pub fn answer(&self, offer_sdp: &str) -> Result<(PeerId, String), HostError> {
        self.answer_channel(offer_sdp, CHUNKS_LABEL)
    }

    /// `answer` for an offer whose channel has another label (a browser's `lanvan`
    /// transfer channel, answered by `lanvan receive`).
    pub fn answer_channel(
        &self,
        offer_sdp: &str,
        label: &str,
    ) -> Result<(PeerId, String), HostError> {
        self.room()?;
        let (peer, sdp) = Peer::answer_channel(
            &self.identity,
            &self.limits.peer,
            Instant::now(),
            &self.locals,
            offer_sdp,
            label,
        )?;
        Ok((self.insert(peer), sdp))
    }

    /// The offerer's whole handshake: makes an offer, hands its SDP to `signal` (which
    /// sends `rtc_offer` over `/ws` and returns the SDP of the box's `rtc_answer`), and
    /// applies the answer. The channel opens later: wait for `PeerEvent::Open`.
    pub async fn connect<F, Fut, E>(&self, signal: F) -> Result<PeerId, HostError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<String, E>>,
        E: std::fmt::Display,
    {
        self.connect_channel(CHUNKS_LABEL, signal).await
    }

    /// `connect` with a channel of another label (`TRANSFER_LABEL` for a browser).
    pub async fn connect_channel<F, Fut, E>(
        &self,
        label: &str,
        signal: F,
    ) -> Result<PeerId, HostError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<String, E>>,
        E: std::fmt::Display,
    {
        let (id, offer) = self.offer_channel(label)?;
        match signal(offer).await {
            Ok(answer) => match self.accept_answer(id, &answer) {
                Ok(()) => Ok(id),
                Err(e) => {
                    self.close(id, CloseReason::Failed);
                    Err(e)
                }
            },
            Err(e) => {
                self.close(id, CloseReason::Failed);
                Err(HostError::Signal(e.to_string()))
            }
        }
    }

    /// Applies the answer to an offer made by `offer`.
    pub fn accept_answer(&self, id: PeerId, answer_sdp: &str) -> Result<(), HostError> {
        self.with(id, |p| p.accept_answer(answer_sdp))?
            .map_err(HostError::from)
    }

    /// Adds a trickled remote candidate; one str0m cannot read (`.local`) is an error the
    /// caller may ignore.
    pub fn add_remote_candidate(&self, id: PeerId, line: &str) -> Result<(), HostError> {
        self.with(id, |p| p.add_remote_candidate(line))?
            .map_err(HostError::from)
    }

    /// Sends a text message; Ok(false) when the send buffer is full (wait for `Writable`).
    pub fn send_text(&self, id: PeerId, text: &str) -> Result<bool, HostError> {
        self.with(id, |p| p.send_text(text))?
            .map_err(HostError::from)
    }

    /// Sends a binary message; Ok(false) when the send buffer is full.
    pub fn send_binary(&self, id: PeerId, bytes: &[u8]) -> Result<bool, HostError> {
        self.with(id, |p| p.send_binary(bytes))?
            .map_err(HostError::from)
    }

    /// Channel bytes written to a peer and not yet acknowledged (0 when gone).
    pub fn buffered(&self, id: PeerId) -> usize {
        self.with(id, |p| p.buffered()).unwrap_or(0)
    }

    /// Whether a peer's chunk channel is open.
    pub fn is_open(&self, id: PeerId) -> bool {
        self.with(id, |p| p.is_open()).unwrap_or(false)
    }

    /// Closes a peer; its `Closed(reason)` event follows and it is forgotten.
    pub fn close(&self, id: PeerId, reason: CloseReason) {
        let _ = self.with(id, |p| p.close(reason));
    }

    /// Closes every peer (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        let ids: Vec<PeerId> = self.peers.borrow().map.keys().copied().collect();
        for id in ids {
            self.close(id, reason);
        }
    }

    /// Reads the sockets and drives the timers until the host is dropped elsewhere. Spawn
    /// it (or race it) on the thread that uses the host.
    pub async fn run(self: Rc<Self>) {
        let readers = (0..self.sockets.len()).map(|i| self.clone().read(i));
        let readers = futures_util::future::join_all(readers);
        smol::future::zip(readers, self.clone().timers()).await;
    }

    fn room(&self) -> Result<(), HostError> {
        if self.peer_count() >= self.limits.max_peers {
            return Err(HostError::Busy);
        }
        Ok(())
    }

    fn insert(&self, peer: Peer) -> PeerId {
        let id = {
            let mut peers = self.peers.borrow_mut();
            peers.next += 1;
            let id = peers.next;
            peers.map.insert(id, peer);
            id
        };
        self.after(id);
        id
    }

    /// Runs one mutation on a peer, then sends what it produced and wakes the timer.
    fn with<R>(&self, id: PeerId, f: impl FnOnce(&mut Peer) -> R) -> Result<R, HostError> {
        let r = {
            let mut peers = self.peers.borrow_mut();
            let peer = peers.map.get_mut(&id).ok_or(HostError::Gone)?;
            f(peer)
        };
        self.after(id);
        Ok(r)
    }

    /// Sends a peer's datagrams, moves its events to `ready`, forgets it once closed.
    fn after(&self, id: PeerId) {
        let mut peers = self.peers.borrow_mut();
        let Peers {
            map,
            by_addr,
            ready,
            ..
        } = &mut *peers;
        let Some(peer) = map.get_mut(&id) else {
            return;
        };
        while let Some(t) = peer.poll_transmit() {
            self.transmit(t);
        }
        let mut closed = false;
        while let Some(e) = peer.poll_event() {
            closed |= matches!(e, PeerEvent::Closed(_));
            ready.push((id, e));
        }
        if closed {
            map.remove(&id);
            by_addr.retain(|_, p| *p != id);
        }
        let _ = self.kick.try_send(());
    }

    fn transmit(&self, t: Transmit) {
        let socket = self
            .locals
            .iter()
            .position(|a| *a == t.from)
            .and_then(|i| self.sockets.get(i))
            .or(self.sockets.first());
        if let Some(s) = socket {
            // Never wait: a full socket buffer drops the datagram and SCTP/STUN resend.
            if let Err(e) = s.get_ref().send_to(&t.bytes, t.to) {
                if e.kind() != ErrorKind::WouldBlock {
                    log::debug!("udp send to {} failed: {e}", t.to);
                }
            }
        }
    }

    /// Hands the events taken so far to the consumer, waiting while its queue is full.
    async fn deliver(&self) {
        let _turn = self.delivering.lock().await;
        loop {
            let batch = std::mem::take(&mut self.peers.borrow_mut().ready);
            if batch.is_empty() {
                return;
            }
            for e in batch {
                if self.events.send(e).await.is_err() {
                    // Nobody listens any more: drop the events.
                }
            }
        }
    }

    async fn read(self: Rc<Self>, index: usize) {
        let socket = &self.sockets[index];
        let local = self.locals[index];
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            if socket.readable().await.is_err() {
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
            for _ in 0..self.limits.batch {
                match socket.get_ref().recv_from(&mut buf) {
                    Ok((n, from)) => self.datagram(Instant::now(), from, local, &buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // ICMP errors from earlier sends: nobody needs them.
                    Err(_) => {}
                }
            }
            self.deliver().await;
            smol::future::yield_now().await;
        }
    }

    /// Finds the datagram's peer: by its source address, else by asking every peer (a
    /// STUN check carries the peer's credentials). Unclaimed datagrams are dropped.
    fn datagram(&self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        // STUN (first byte 0..=3, RFC 7983) always goes by credentials: one address may
        // carry checks for two peers (a CLI's one socket to one box).
        let stun = bytes.first().is_some_and(|b| *b < 4);
        let id = {
            let mut peers = self.peers.borrow_mut();
            let known = if stun {
                None
            } else {
                peers.by_addr.get(&from).copied()
            };
            let id = known.or_else(|| {
                peers
                    .map
                    .iter()
                    .find(|(_, p)| p.accepts(from, to, bytes))
                    .map(|(id, _)| *id)
            });
            let Some(id) = id else {
                return;
            };
            peers.by_addr.insert(from, id);
            if let Some(p) = peers.map.get_mut(&id) {
                p.receive(now, from, to, bytes);
            }
            id
        };
        self.after(id);
    }

    async fn timers(self: Rc<Self>) {
        loop {
            let next = self
                .peers
                .borrow()
                .map
                .values()
                .map(Peer::next_timeout)
                .min();
            let next = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            smol::future::or(
                async {
                    Timer::at(next).await;
                },
                async {
                    let _ = self.kicked.recv().await;
                },
            )
            .await;
            let now = Instant::now();
            let due: Vec<PeerId> = self
                .peers
                .borrow()
                .map
                .iter()
                .filter(|(_, p)| p.next_timeout() <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                let _ = self.with(id, |p| p.handle_timeout(now));
            }
            self.deliver().await;
        }
    }
}
