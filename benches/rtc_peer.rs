//! The WebRTC benchmark's str0m side (run by `benches/rtc.mjs` inside its network namespace):
//! the box's own sans-IO peer (`lanvan::core::peer::Peer`, same str0m settings and 1 MiB send
//! buffer as the box) on one UDP socket, answering a browser's offer and then sending or
//! receiving SIZE bytes on the `lanvan-chunks` channel. Must only ever bind the address it
//! is given (a namespace's veth address), never a wildcard.
//!
//! stdin: one JSON line `{"sdp": OFFER}`. stdout, one JSON line each: `{"sdp": ANSWER}`,
//! `{"open": true}`, then `{"done": true, "bytes", "secs", "cpu_ms"}`, where the clock and
//! this process's CPU time (utime+stime from /proc/self/stat) run from the browser's `go`
//! (send) or first byte (receive) until every byte is acknowledged or received.
//!
//! ```text
//! rtc_peer --bind 198.18.0.2 --send 209715200      # str0m -> browser
//! rtc_peer --bind 198.18.0.2 --receive 209715200   # browser -> str0m
//! ```

use lanvan::core::peer::{Identity, Peer, PeerEvent, PeerLimits};
use std::io::{BufRead, ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A chunk piece as SPEC8 §4 frames it: 48 bytes of header and 64 KiB of payload.
const MESSAGE: usize = 65_536 + 48;

fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after "pid (comm) ".
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 * 1000.0 / 100.0 // USER_HZ is 100 on Linux
}

fn say(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}").unwrap();
    out.flush().unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: rtc_peer --bind IP (--send BYTES | --receive BYTES)");
        std::process::exit(2)
    };
    if args.len() != 5 || args[1] != "--bind" {
        usage();
    }
    let ip: IpAddr = args[2].parse().unwrap_or_else(|_| usage());
    if ip.is_unspecified() || ip.is_loopback() {
        usage();
    }
    let sending = match args[3].as_str() {
        "--send" => true,
        "--receive" => false,
        _ => usage(),
    };
    let size: u64 = args[4].parse().unwrap_or_else(|_| usage());

    let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind udp");
    // The same socket buffers as the box's `Host` (src/net/rtc.rs), so this peer receives
    // and sends as the box does; the kernel caps them at net.core.[rw]mem_max.
    {
        use nix::sys::socket::{setsockopt, sockopt};
        let _ = setsockopt(&sock, sockopt::RcvBuf, &lanvan::net::rtc::SOCKET_BUFFER);
        let _ = setsockopt(&sock, sockopt::SndBuf, &lanvan::net::rtc::SOCKET_BUFFER);
    }
    let local = sock.local_addr().unwrap();
    let identity = Identity::new().expect("DTLS identity");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("offer");
    let offer: serde_json::Value = serde_json::from_str(&line).expect("offer JSON");
    let limits = PeerLimits {
        idle_timeout: Duration::from_secs(30),
        ..PeerLimits::default()
    };
    let (mut peer, answer) = Peer::answer(
        &identity,
        &limits,
        Instant::now(),
        &[local],
        offer["sdp"].as_str().expect("sdp"),
    )
    .expect("answer");
    say(serde_json::json!({ "sdp": answer }));

    let payload: Vec<u8> = (0..MESSAGE).map(|i| (i * 7 + 3) as u8).collect();
    let mut left = 0u64; // bytes still to write (sending)
    let mut received = 0u64;
    let mut started: Option<(Instant, f64)> = None;
    let mut done = false;
    let mut buf = vec![0u8; 65_536];
    loop {
        while let Some(t) = peer.poll_transmit() {
            // A full socket buffer drops the datagram, as the box does; SCTP resends.
            let _ = sock.send_to(&t.bytes, t.to);
        }
        while let Some(e) = peer.poll_event() {
            match e {
                PeerEvent::Open => say(serde_json::json!({ "open": true })),
                PeerEvent::Text(t) if t == "go" && sending && started.is_none() => {
                    started = Some((Instant::now(), cpu_ms()));
                    left = size;
                }
                PeerEvent::Binary(b) if !sending => {
                    if started.is_none() {
                        started = Some((Instant::now(), cpu_ms()));
                    }
                    received += b.len() as u64;
                }
                PeerEvent::Closed(r) => {
                    eprintln!("rtc_peer: closed ({})", r.as_str());
                    std::process::exit(if done { 0 } else { 1 });
                }
                _ => {}
            }
        }
        while left > 0 {
            let n = (left as usize).min(MESSAGE);
            match peer.send_binary(&payload[..n]) {
                Ok(true) => left -= n as u64,
                Ok(false) => break,
                Err(e) => {
                    eprintln!("rtc_peer: {e}");
                    std::process::exit(1);
                }
            }
        }
        if !done {
            if let Some((t0, cpu0)) = started {
                let finished = if sending {
                    left == 0 && peer.buffered() == 0
                } else {
                    received >= size
                };
                if finished {
                    done = true;
                    if !sending {
                        let _ = peer.send_text("done");
                    }
                    say(serde_json::json!({
                        "done": true,
                        "bytes": if sending { size } else { received },
                        "secs": t0.elapsed().as_secs_f64(),
                        "cpu_ms": cpu_ms() - cpu0,
                    }));
                }
            }
        }
        while let Some(t) = peer.poll_transmit() {
            let _ = sock.send_to(&t.bytes, t.to);
        }
        let now = Instant::now();
        let due = peer.next_timeout();
        if due <= now {
            peer.handle_timeout(now);
            continue;
        }
        let wait = (due - now).max(Duration::from_millis(1));
        sock.set_read_timeout(Some(wait)).unwrap();
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if peer.accepts(from, local, &buf[..n]) {
                    peer.receive(Instant::now(), from, local, &buf[..n]);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                peer.handle_timeout(Instant::now());
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}
