//! The STUN responder's socket: one UDP socket on the HTTP listen address, read without
//! blocking from the event loop, a bounded batch per wake-up so it never starves the rest.
//! Never decides anything about a datagram itself; `core::stun` does.

use crate::config::{P2pConfig, P2pMode};
use smol::Async;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// Largest datagram read whole; a Binding request is 20 bytes plus a few attributes, and a
/// longer datagram is cut and then fails to parse, which drops it.
const MAX_DATAGRAM: usize = 1500;

/// Opens the STUN socket on the listen address's IP and `p2p.stun_port`, or None when P2P
/// is off or the port cannot be had (the box then runs without STUN and says why).
pub fn bind(cfg: &P2pConfig, listen: SocketAddr) -> Option<Async<UdpSocket>> {
    if cfg.mode == P2pMode::Off {
        return None;
    }
    let addr = SocketAddr::new(listen.ip(), cfg.stun_port);
    match UdpSocket::bind(addr).and_then(Async::new) {
        Ok(socket) => Some(socket),
        Err(e) => {
            log::warn!(
                "STUN is off: cannot bind udp {addr}: {e}; browsers will still find each other on a LAN without multicast filtering (set p2p.stun_port to another port)"
            );
            None
        }
    }
}

/// Answers Binding requests until the box stops.
pub async fn serve(socket: Async<UdpSocket>, batch: usize) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        if socket.readable().await.is_err() {
            smol::Timer::after(Duration::from_millis(100)).await;
            continue;
        }
        for _ in 0..batch {
            match socket.get_ref().recv_from(&mut buf) {
                Ok((n, from)) => {
                    if let Some(reply) = crate::core::stun::answer(&buf[..n], from) {
                        // A full send buffer drops the reply; the client retransmits.
                        let _ = socket.get_ref().send_to(&reply, from);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // ICMP errors from earlier replies surface here; they concern nobody now.
                Err(_) => {}
            }
        }
        smol::future::yield_now().await;
    }
}
