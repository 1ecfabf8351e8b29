//! The command line's WebRTC connection: one peer on the rtc helper's [`Host`] (a UDP
//! socket on the address this terminal reaches the box from), seen through the small
//! [`Rtc`] trait the direct send and receive are written against. Drives nothing itself:
//! the host's own `run()` moves the datagrams and the timer.

use super::direct::{LinkEvent, Rtc};
use crate::core::peer::{CloseReason, Identity, PeerEvent};
use crate::net::rtc::{Events, Host, HostLimits, PeerId};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

/// One WebRTC peer of this terminal.
pub struct HostRtc {
    pub host: Rc<Host>,
    events: Events,
    peer: Option<PeerId>,
}

impl HostRtc {
    /// A host on `ip` (port chosen by the system); run `host.clone().run()` beside it.
    pub fn bind(ip: IpAddr) -> Result<HostRtc, String> {
        let identity = Identity::new().map_err(|e| format!("WebRTC: {e}"))?;
        let (host, events) = Host::bind(&[SocketAddr::new(ip, 0)], identity, HostLimits::default())
            .map_err(|e| format!("WebRTC: cannot open a UDP socket on {ip}: {e}"))?;
        Ok(HostRtc {
            host,
            events,
            peer: None,
        })
    }
}

impl Rtc for HostRtc {
    fn offer(&mut self, label: &str) -> Result<String, String> {
        let (id, sdp) = self.host.offer_channel(label).map_err(|e| e.to_string())?;
        self.peer = Some(id);
        Ok(sdp)
    }

    fn answer(&mut self, offer: &str) -> Result<String, String> {
        // Direct sends (a page's or another terminal's) come on the transfer channel.
        let (id, sdp) = self
            .host
            .answer_channel(offer, super::direct::LABEL)
            .map_err(|e| e.to_string())?;
        self.peer = Some(id);
        Ok(sdp)
    }

    fn accept_answer(&mut self, sdp: &str) -> Result<(), String> {
        let id = self.peer.ok_or("no offer is waiting")?;
        self.host.accept_answer(id, sdp).map_err(|e| e.to_string())
    }

    fn add_candidate(&mut self, line: &str) {
        if let Some(id) = self.peer {
            // A `.local` name str0m cannot read: the page's checks still arrive and pair
            // as peer-reflexive candidates.
            let _ = self.host.add_remote_candidate(id, line);
        }
    }

    fn send_text(&mut self, text: &str) -> bool {
        self.peer
            .is_some_and(|id| self.host.send_text(id, text).unwrap_or(false))
    }

    fn send_binary(&mut self, bytes: &[u8]) -> bool {
        self.peer
            .is_some_and(|id| self.host.send_binary(id, bytes).unwrap_or(false))
    }

    async fn next_event(&mut self, wait: Duration) -> Option<LinkEvent> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let recv = async { self.events.recv().await.ok() };
            let timer = async {
                smol::Timer::at(deadline).await;
                None
            };
            let (id, ev) = smol::future::or(recv, timer).await?;
            if Some(id) != self.peer {
                continue;
            }
            return Some(match ev {
                PeerEvent::Open => LinkEvent::Open,
                PeerEvent::Text(t) => LinkEvent::Text(t),
                PeerEvent::Binary(b) => LinkEvent::Binary(b),
                PeerEvent::Writable => LinkEvent::Writable,
                PeerEvent::Closed(r) => LinkEvent::Closed(format!("the connection {}", r.as_str())),
                PeerEvent::Connected => continue,
            });
        }
    }

    fn close(&mut self) {
        if let Some(id) = self.peer.take() {
            self.host.close(id, CloseReason::Closed);
        }
    }
}
