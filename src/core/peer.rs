//! One WebRTC peer as a sans-IO state machine: a `str0m::Rtc` and its `lanvan-chunks` data
//! channel. It takes datagrams and `now`, and hands back datagrams to send and events; after
//! every input or write it drains str0m's output until the next timeout (str0m's
//! single-mutation rule). It never touches a socket or a clock, and never buffers more than
//! `PeerLimits::send_buffer` bytes of unacknowledged channel data.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

/// The label of the chunk protocol's data channel (docs/protocol.md "Chunk protocol").
pub const CHUNKS_LABEL: &str = "lanvan-chunks";

/// The label of the browser app's P2P transfer channel (docs/protocol.md "P2P transfers"),
/// which the CLI speaks to a browser.
pub const TRANSFER_LABEL: &str = "lanvan";

/// The DTLS identity every peer of this process shares: made once at start, so a new
/// connection does not pay for a key pair.
#[derive(Clone)]
pub struct Identity {
    provider: Arc<CryptoProvider>,
    cert: DtlsCert,
}

impl Identity {
    /// Makes the certificate and warms the crypto up with one handshake between two peers
    /// in memory, so the first real connection is as fast as the later ones.
    pub fn new() -> Result<Identity, PeerError> {
        let provider = Arc::new(str0m::crypto::from_feature_flags());
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| PeerError::Rtc("cannot make a DTLS certificate".into()))?;
        let id = Identity { provider, cert };
        id.warm_up();
        Ok(id)
    }

    /// Connects two peers over a pretend wire with a pretend clock; errors only mean the
    /// first real connection is a little slower, so they are ignored.
    fn warm_up(&self) {
        let a: SocketAddr = ([10, 0, 0, 1], 1).into();
        let b: SocketAddr = ([10, 0, 0, 2], 2).into();
        let limits = PeerLimits::default();
        let mut now = Instant::now();
        let Ok((mut offerer, offer)) = Peer::offer(self, &limits, now, &[a]) else {
            return;
        };
        let Ok((mut answerer, answer)) = Peer::answer(self, &limits, now, &[b], &offer) else {
            return;
        };
        if offerer.accept_answer(&answer).is_err() {
            return;
        }
        for _ in 0..200 {
            exchange(&mut offerer, &mut answerer, now);
            if offerer.is_open() && answerer.is_open() {
                break;
            }
            now += Duration::from_millis(10);
            offerer.handle_timeout(now);
            answerer.handle_timeout(now);
        }
    }
}

/// Passes every pending datagram between two peers until both are quiet (tests, warm-up).
pub fn exchange(a: &mut Peer, b: &mut Peer, now: Instant) {
    loop {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            moved = true;
            if b.accepts(t.from, t.to, &t.bytes) {
                b.receive(now, t.from, t.to, &t.bytes);
            }
        }
        while let Some(t) = b.poll_transmit() {
            moved = true;
            if a.accepts(t.from, t.to, &t.bytes) {
                a.receive(now, t.from, t.to, &t.bytes);
            }
        }
        if !moved {
            return;
        }
    }
}

/// How a peer behaves; the box's come from `[p2p]` in the config.
#[derive(Clone, Debug)]
pub struct PeerLimits {
    /// Channel bytes written but not yet acknowledged; a write beyond it is refused until
    /// `PeerEvent::Writable`.
    pub send_buffer: usize,
    /// With no datagram from the other side for this long the peer is closed (`timeout`).
    pub idle_timeout: Duration,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            send_buffer: 1024 * 1024,
            idle_timeout: Duration::from_secs(5),
        }
    }
}

/// A datagram to send from local address `from` to `to`.
#[derive(Debug)]
pub struct Transmit {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// Why a peer ended, as said in `rtc_closed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Either side closed it.
    Closed,
    /// The other side went silent.
    Timeout,
    /// ICE or DTLS failed, or str0m reported an error.
    Failed,
    /// The other side sent data that failed its hash.
    BadData,
    /// The box is stopping.
    Shutdown,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Closed => "closed",
            CloseReason::Timeout => "timeout",
            CloseReason::Failed => "failed",
            CloseReason::BadData => "bad_data",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// What happened on a peer, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// ICE and DTLS are up.
    Connected,
    /// The `lanvan-chunks` channel is open: messages may be sent.
    Open,
    /// A text message on the channel.
    Text(String),
    /// A binary message on the channel.
    Binary(Vec<u8>),
    /// The send buffer drained below half: writes that were refused (or held back because
    /// `buffered()` was high) may go ahead.
    Writable,
    /// The peer is over; nothing more comes from it.
    Closed(CloseReason),
}

/// What went wrong with a call a user can act on.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerError {
    /// The offer, answer or candidate is not SDP str0m understands.
    BadSdp(String),
    /// The channel is not open (yet, or any more).
    NotOpen,
    /// str0m refused.
    Rtc(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::BadSdp(e) => write!(f, "the SDP cannot be read: {e}"),
            PeerError::NotOpen => f.write_str("the data channel is not open"),
            PeerError::Rtc(e) => write!(f, "WebRTC error: {e}"),
        }
    }
}

impl std::error::Error for PeerError {}

/// One WebRTC connection and its chunk channel.
pub struct Peer {
    rtc: Rtc,
    /// The offerer's answer-to-be.
    pending: Option<SdpPendingOffer>,
    /// The one channel this peer uses (`CHUNKS_LABEL` unless made with another).
    label: String,
    channel: Option<ChannelId>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PeerEvent>,
    timeout: Instant,
    last_heard: Instant,
    limits: PeerLimits,
    closed: Option<CloseReason>,
}

impl Peer {
    fn build(
        id: &Identity,
        limits: &PeerLimits,
        now: Instant,
        local: &[SocketAddr],
        label: &str,
    ) -> Peer {
        let mut cfg = RtcConfig::new()
            .set_crypto_provider(id.provider.clone())
            .set_dtls_cert(id.cert.clone())
            .set_sctp_max_buffered_amount(limits.send_buffer)
            .set_stats_interval(None);
        // A LAN peer that stops answering is given up on in a few seconds rather than
        // str0m's ~20 (the idle timeout below usually ends it first).
        cfg.set_initial_stun_rto(Duration::from_millis(200));
        cfg.set_max_stun_rto(Duration::from_millis(1000));
        cfg.set_max_stun_retransmits(5);
        let mut rtc = cfg.build(now);
        for a in local {
            if let Ok(c) = Candidate::host(*a, "udp") {
                rtc.add_local_candidate(c);
            }
        }
        let mut peer = Peer {
            rtc,
            pending: None,
            label: label.to_string(),
            channel: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            timeout: now,
            last_heard: now,
            limits: limits.clone(),
            closed: None,
        };
        peer.drain();
        peer
    }

    /// The offering side (the CLI): a peer with the `lanvan-chunks` channel and its offer
    /// SDP; `accept_answer` completes it. `local` are the host candidates (the sockets'
    /// addresses).
    pub fn offer(
        id: &Identity,
        limits: &PeerLimits,
        now: Instant,
        local: &[SocketAddr],
    ) -> Result<(Peer, String), PeerError> {
        Peer::offer_channel(id, limits, now, local, CHUNKS_LABEL)
    }

    /// `offer` with a channel of another label (the CLI's `lanvan` transfer channel to a
    /// browser).
    pub fn offer_channel(
        id: &Identity,
        limits: &PeerLimits,
        now: Instant,
        local: &[SocketAddr],
        label: &str,
    ) -> Result<(Peer, String), PeerError> {
        let mut peer = Peer::build(id, limits, now, local, label);
        let mut change = peer.rtc.sdp_api();
        let channel = change.add_channel(label.to_string());
        let (offer, pending) = change
            .apply()
            .ok_or_else(|| PeerError::Rtc("nothing to offer".into()))?;
        peer.drain();
        peer.channel = Some(channel);
        peer.pending = Some(pending);
        Ok((peer, offer.to_sdp_string()))
    }

    /// The answering side (the box): a peer for `offer_sdp` and the answer SDP.
    pub fn answer(
        id: &Identity,
        limits: &PeerLimits,
        now: Instant,
        local: &[SocketAddr],
        offer_sdp: &str,
    ) -> Result<(Peer, String), PeerError> {
        Peer::answer_channel(id, limits, now, local, offer_sdp, CHUNKS_LABEL)
    }

    /// `answer` for an offer whose channel has another label (the CLI answering a
    /// browser's `lanvan` transfer channel).
    pub fn answer_channel(
        id: &Identity,
        limits: &PeerLimits,
        now: Instant,
        local: &[SocketAddr],
        offer_sdp: &str,
        label: &str,
    ) -> Result<(Peer, String), PeerError> {
        let offer =
            SdpOffer::from_sdp_string(offer_sdp).map_err(|e| PeerError::BadSdp(e.to_string()))?;
        let mut peer = Peer::build(id, limits, now, local, label);
        let answer = peer
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| PeerError::BadSdp(e.to_string()))?;
        peer.drain();
        Ok((peer, answer.to_sdp_string()))
    }

    /// The offerer applies the answer it got through signaling.
    pub fn accept_answer(&mut self, answer_sdp: &str) -> Result<(), PeerError> {
        let answer =
            SdpAnswer::from_sdp_string(answer_sdp).map_err(|e| PeerError::BadSdp(e.to_string()))?;
        let pending = self
            .pending
            .take()
            .ok_or_else(|| PeerError::Rtc("no offer is waiting for an answer".into()))?;
        let r = self.rtc.sdp_api().accept_answer(pending, answer);
        self.drain();
        r.map_err(|e| PeerError::BadSdp(e.to_string()))
    }

    /// Adds a trickled remote candidate (`candidate:...` with or without the prefix). One
    /// str0m cannot read (a browser's `.local` mDNS name) is an error the caller may
    /// ignore: that browser's checks still arrive and make a peer-reflexive candidate.
    pub fn add_remote_candidate(&mut self, line: &str) -> Result<(), PeerError> {
        let line = line.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        let owned;
        let line = if line.starts_with("candidate:") {
            line
        } else {
            owned = format!("candidate:{line}");
            &owned
        };
        let c = Candidate::from_sdp_string(line).map_err(|e| PeerError::BadSdp(e.to_string()))?;
        self.rtc.add_remote_candidate(c);
        self.drain();
        Ok(())
    }

    /// Whether a datagram from `from` to local `to` belongs to this peer (a STUN check
    /// with its credentials, or traffic from its nominated address).
    pub fn accepts(&self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) -> bool {
        // `accepts` looks only at addresses and STUN credentials, not at the time.
        match recv(self.last_heard, from, to, bytes) {
            Some(input) => self.rtc.accepts(&input),
            None => false,
        }
    }

    /// A datagram for this peer arrived at `now`.
    pub fn receive(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let Some(input) = recv(now, from, to, bytes) else {
            return;
        };
        self.last_heard = now;
        let r = self.rtc.handle_input(input);
        self.after(r);
    }

    /// Time passed; call at (or after) `next_timeout`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        if now.saturating_duration_since(self.last_heard) >= self.limits.idle_timeout {
            self.close_with(CloseReason::Timeout);
            return;
        }
        let r = self.rtc.handle_input(Input::Timeout(now));
        self.after(r);
    }

    /// When `handle_timeout` must be called next.
    pub fn next_timeout(&self) -> Instant {
        self.timeout.min(self.last_heard + self.limits.idle_timeout)
    }

    /// The next datagram to send, in order.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event, in order.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// Whether the chunk channel is open.
    pub fn is_open(&self) -> bool {
        self.closed.is_none() && self.channel.is_some() && self.rtc.is_connected()
    }

    /// Why the peer ended, once it has.
    pub fn closed(&self) -> Option<CloseReason> {
        self.closed
    }

    /// Channel bytes written and not yet acknowledged.
    pub fn buffered(&mut self) -> usize {
        match self.channel.and_then(|c| self.rtc.channel(c)) {
            Some(mut ch) => ch.buffered_amount(),
            None => 0,
        }
    }

    /// Sends a text message. Ok(false): the send buffer is full; retry after `Writable`.
    pub fn send_text(&mut self, text: &str) -> Result<bool, PeerError> {
        self.write(false, text.as_bytes())
    }

    /// Sends a binary message. Ok(false): the send buffer is full; retry after `Writable`.
    pub fn send_binary(&mut self, bytes: &[u8]) -> Result<bool, PeerError> {
        self.write(true, bytes)
    }

    fn write(&mut self, binary: bool, bytes: &[u8]) -> Result<bool, PeerError> {
        if self.closed.is_some() {
            return Err(PeerError::NotOpen);
        }
        let id = self.channel.ok_or(PeerError::NotOpen)?;
        let Some(mut ch) = self.rtc.channel(id) else {
            return Err(PeerError::NotOpen);
        };
        let r = ch.write(binary, bytes);
        let r = match r {
            Ok(true) => Ok(true),
            Ok(false) => {
                // Ask to be told when half the buffer is free again.
                ch.set_buffered_amount_low_threshold(self.limits.send_buffer / 2);
                Ok(false)
            }
            Err(e) => Err(PeerError::Rtc(e.to_string())),
        };
        self.drain();
        r
    }

    /// Closes the peer (tells the other side); `PeerEvent::Closed(reason)` follows.
    pub fn close(&mut self, reason: CloseReason) {
        self.close_with(reason);
    }

    fn close_with(&mut self, reason: CloseReason) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(reason);
        let _ = self.rtc.close();
        // Let the goodbye (SCTP abort, DTLS close_notify) go out.
        self.drain();
        self.events.push_back(PeerEvent::Closed(reason));
    }

    fn after(&mut self, r: Result<(), str0m::RtcError>) {
        if let Err(e) = r {
            log::debug!("peer input refused: {e}");
        }
        self.drain();
    }

    /// str0m's rule: after each mutation, take every output until the next timeout.
    fn drain(&mut self) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.timeout = t;
                    break;
                }
                Ok(Output::Transmit(t)) => self.transmits.push_back(Transmit {
                    from: t.source,
                    to: t.destination,
                    bytes: t.contents.to_vec(),
                }),
                Ok(Output::Event(e)) => self.event(e),
                Err(e) => {
                    log::debug!("peer failed: {e}");
                    if self.closed.is_none() {
                        self.closed = Some(CloseReason::Failed);
                        self.events
                            .push_back(PeerEvent::Closed(CloseReason::Failed));
                    }
                    break;
                }
            }
        }
        if self.closed.is_none() && !self.rtc.is_alive() {
            self.closed = Some(CloseReason::Closed);
            self.events
                .push_back(PeerEvent::Closed(CloseReason::Closed));
        }
    }

    fn event(&mut self, e: Event) {
        if self.closed.is_some() {
            return;
        }
        match e {
            Event::Connected => self.events.push_back(PeerEvent::Connected),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.closed = Some(CloseReason::Timeout);
                let _ = self.rtc.close();
                self.events
                    .push_back(PeerEvent::Closed(CloseReason::Timeout));
            }
            // Other channels are ignored: a peer speaks one protocol on one channel.
            Event::ChannelOpen(id, label)
                if label == self.label && (self.channel.is_none() || self.channel == Some(id)) =>
            {
                self.channel = Some(id);
                // `Writable` whenever the buffer drains below half, not only after a refused
                // write: a sender that checks `buffered()` before writing never gets refused.
                if let Some(mut ch) = self.rtc.channel(id) {
                    ch.set_buffered_amount_low_threshold(self.limits.send_buffer / 2);
                }
                self.events.push_back(PeerEvent::Open);
            }
            Event::ChannelData(d) if Some(d.id) == self.channel => {
                self.events.push_back(if d.binary {
                    PeerEvent::Binary(d.data)
                } else {
                    match String::from_utf8(d.data) {
                        Ok(s) => PeerEvent::Text(s),
                        Err(_) => return,
                    }
                });
            }
            Event::ChannelBufferedAmountLow(id) if Some(id) == self.channel => {
                self.events.push_back(PeerEvent::Writable)
            }
            Event::ChannelClose(id) if Some(id) == self.channel => {
                self.closed = Some(CloseReason::Closed);
                let _ = self.rtc.close();
                self.events
                    .push_back(PeerEvent::Closed(CloseReason::Closed));
            }
            _ => {}
        }
    }
}

fn recv(now: Instant, from: SocketAddr, to: SocketAddr, bytes: &[u8]) -> Option<Input<'_>> {
    let contents = bytes.try_into().ok()?;
    Some(Input::Receive(
        now,
        Receive {
            proto: Protocol::Udp,
            source: from,
            destination: to,
            contents,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(now: Instant) -> (Peer, Peer) {
        let id = Identity::new().unwrap();
        let limits = PeerLimits::default();
        let a: SocketAddr = ([192, 168, 1, 10], 5000).into();
        let b: SocketAddr = ([192, 168, 1, 20], 6000).into();
        let (mut off, offer) = Peer::offer(&id, &limits, now, &[a]).unwrap();
        let (ans, answer) = Peer::answer(&id, &limits, now, &[b], &offer).unwrap();
        off.accept_answer(&answer).unwrap();
        (off, ans)
    }

    fn run_until_open(a: &mut Peer, b: &mut Peer, now: &mut Instant) {
        for _ in 0..500 {
            exchange(a, b, *now);
            if a.is_open() && b.is_open() {
                return;
            }
            *now += Duration::from_millis(5);
            a.handle_timeout(*now);
            b.handle_timeout(*now);
        }
        panic!("the peers did not connect");
    }

    fn events(p: &mut Peer) -> Vec<PeerEvent> {
        std::iter::from_fn(|| p.poll_event()).collect()
    }

    #[test]
    fn an_offerer_and_an_answerer_open_the_chunk_channel_and_exchange_messages() {
        let mut now = Instant::now();
        let (mut a, mut b) = pair(now);
        run_until_open(&mut a, &mut b, &mut now);
        // The answerer learns of the channel when the offerer's DCEP open arrives.
        for _ in 0..20 {
            exchange(&mut a, &mut b, now);
            now += Duration::from_millis(5);
            a.handle_timeout(now);
            b.handle_timeout(now);
        }
        assert!(events(&mut b).contains(&PeerEvent::Open));
        assert!(a.send_text("{\"t\":\"hello\"}").unwrap());
        assert!(a.send_binary(&[1, 2, 3]).unwrap());
        exchange(&mut a, &mut b, now);
        let got = events(&mut b);
        assert!(got.contains(&PeerEvent::Text("{\"t\":\"hello\"}".into())));
        assert!(got.contains(&PeerEvent::Binary(vec![1, 2, 3])));
    }

    #[test]
    fn writes_stop_at_the_send_buffer_and_resume_when_it_drains() {
        let mut now = Instant::now();
        let (mut a, mut b) = pair(now);
        run_until_open(&mut a, &mut b, &mut now);
        let piece = vec![7u8; 64 * 1024];
        let mut accepted = 0;
        while a.send_binary(&piece).unwrap() {
            accepted += 1;
            assert!(accepted <= 16, "the buffer has no bound");
        }
        assert!(a.buffered() <= PeerLimits::default().send_buffer);
        // Nothing was delivered yet, so the bound is what was accepted (less a little the
        // channel's own messages hold).
        let fit = PeerLimits::default().send_buffer / piece.len();
        assert!(
            accepted + 1 >= fit,
            "{accepted} of {fit} pieces were accepted"
        );
        let mut writable = false;
        for _ in 0..200 {
            exchange(&mut a, &mut b, now);
            writable |= events(&mut a).contains(&PeerEvent::Writable);
            if writable {
                break;
            }
            now += Duration::from_millis(5);
            a.handle_timeout(now);
            b.handle_timeout(now);
        }
        assert!(writable);
        assert!(a.send_binary(&piece).unwrap());
    }

    #[test]
    fn a_peer_that_goes_silent_is_closed_as_timed_out() {
        let mut now = Instant::now();
        let (mut a, mut b) = pair(now);
        run_until_open(&mut a, &mut b, &mut now);
        let vanished = now;
        // b vanishes: a's datagrams go nowhere.
        while a.closed().is_none() {
            now = a.next_timeout().max(now + Duration::from_millis(1));
            a.handle_timeout(now);
            while a.poll_transmit().is_some() {}
            assert!(now - vanished < Duration::from_secs(30));
        }
        assert_eq!(a.closed(), Some(CloseReason::Timeout));
        assert!(now - vanished <= PeerLimits::default().idle_timeout + Duration::from_millis(50));
        assert!(events(&mut a).contains(&PeerEvent::Closed(CloseReason::Timeout)));
    }

    #[test]
    fn a_peer_made_for_the_transfer_channel_opens_that_one() {
        let id = Identity::new().unwrap();
        let limits = PeerLimits::default();
        let mut now = Instant::now();
        let a: SocketAddr = ([192, 168, 1, 10], 5000).into();
        let b: SocketAddr = ([192, 168, 1, 20], 6000).into();
        let (mut off, offer) =
            Peer::offer_channel(&id, &limits, now, &[a], TRANSFER_LABEL).unwrap();
        let (mut ans, answer) =
            Peer::answer_channel(&id, &limits, now, &[b], &offer, TRANSFER_LABEL).unwrap();
        off.accept_answer(&answer).unwrap();
        run_until_open(&mut off, &mut ans, &mut now);
        for _ in 0..20 {
            exchange(&mut off, &mut ans, now);
            now += Duration::from_millis(5);
            off.handle_timeout(now);
            ans.handle_timeout(now);
        }
        assert!(events(&mut ans).contains(&PeerEvent::Open));
        assert!(off.send_text("{\"t\":\"file\"}").unwrap());
        exchange(&mut off, &mut ans, now);
        assert!(events(&mut ans).contains(&PeerEvent::Text("{\"t\":\"file\"}".into())));
    }

    #[test]
    fn bad_sdp_and_unreadable_candidates_are_refused() {
        let id = Identity::new().unwrap();
        let now = Instant::now();
        let a: SocketAddr = ([192, 168, 1, 10], 5000).into();
        let bad = Peer::answer(&id, &PeerLimits::default(), now, &[a], "not sdp");
        assert!(matches!(bad, Err(PeerError::BadSdp(_))));
        let (mut p, _) = pair(now);
        let mdns = "candidate:1 1 udp 2122260223 4f3c-ab.local 54321 typ host";
        assert!(p.add_remote_candidate(mdns).is_err());
        assert!(p
            .add_remote_candidate("candidate:2 1 udp 2122260223 192.168.1.30 5555 typ host")
            .is_ok());
    }
}
