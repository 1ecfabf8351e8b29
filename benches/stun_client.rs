//! The STUN benchmark's client (run by benches/stun.sh): Binding round trips and
//! throughput against the box's STUN responder, and the same against a plain UDP echo
//! thread in this process, the reference measured in the same run. Loopback only.
//!
//!   stun_bench 127.0.0.1:PORT [SECONDS]
//!
//! Prints one Markdown table row per target.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A Binding request: type 0x0001, no attributes, the magic cookie, transaction id `n`.
fn request(n: u64) -> [u8; 20] {
    let mut p = [0u8; 20];
    p[1] = 1;
    p[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    p[12..20].copy_from_slice(&n.to_be_bytes());
    p
}

/// (median µs, p99 µs) of `rounds` sequential request/answer pairs.
fn latency(target: SocketAddr, rounds: usize) -> (f64, f64) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 1500];
    let mut times = Vec::with_capacity(rounds);
    for n in 0..rounds as u64 {
        let t = Instant::now();
        s.send_to(&request(n), target).unwrap();
        loop {
            match s.recv_from(&mut buf) {
                Ok((len, _)) if len >= 20 && buf[12..20] == n.to_be_bytes() => break,
                Ok(_) => continue,
                Err(_) => {
                    s.send_to(&request(n), target).unwrap();
                }
            }
        }
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (times[rounds / 2], times[rounds * 99 / 100])
}

/// Answers per second with `window` requests kept outstanding for `secs`, and the share of
/// requests that got no answer.
fn throughput(target: SocketAddr, window: usize, secs: f64) -> (f64, f64) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = [0u8; 1500];
    let (mut sent, mut got) = (0u64, 0u64);
    let start = Instant::now();
    for _ in 0..window {
        s.send_to(&request(sent), target).unwrap();
        sent += 1;
    }
    while start.elapsed().as_secs_f64() < secs {
        match s.recv_from(&mut buf) {
            Ok(_) => {
                got += 1;
                s.send_to(&request(sent), target).unwrap();
                sent += 1;
            }
            // Lost ones are replaced, so the window stays full.
            Err(_) => {
                for _ in 0..window {
                    s.send_to(&request(sent), target).unwrap();
                    sent += 1;
                }
            }
        }
    }
    let rate = got as f64 / start.elapsed().as_secs_f64();
    (rate, 1.0 - got as f64 / sent as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let stun: SocketAddr = args.get(1).expect("STUN address").parse().unwrap();
    let secs: f64 = args.get(2).map_or(3.0, |s| s.parse().unwrap());
    // The reference: the cheapest possible UDP answerer, one blocking thread echoing.
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    println!(
        "| target | round trip median (µs) | p99 (µs) | answers/s, 32 outstanding | unanswered |"
    );
    println!("|---|---|---|---|---|");
    for (name, target) in [
        ("UDP echo thread (reference)", echo_addr),
        ("lanvan STUN", stun),
    ] {
        latency(target, 2000); // warm up
        let (median, p99) = latency(target, 20_000);
        let (rate, lost) = throughput(target, 32, secs);
        println!(
            "| {name} | {median:.1} | {p99:.1} | {rate:.0} | {:.2}% |",
            lost * 100.0
        );
    }
}
