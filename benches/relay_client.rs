//! The relay benchmark's client (run by `benches/relay.sh`): N sender/receiver pairs, each
//! a real WebSocket client on its own thread, relay TOTAL bytes through the box, split
//! evenly. Uses the same client as the end-to-end tests (`tests/common/relay.rs`), without
//! hashing: the clients share the box's 2 cores, and the point is the box's cost (the
//! tests check every byte and hash). Prints one JSON line: pairs, bytes, seconds.
//!
//! ```text
//! relay_bench 127.0.0.1:8080 10 10737418240
//! ```

#[path = "../tests/common/relay.rs"]
mod relay;

use relay::{Client, Data, Outgoing};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::Instant;

const FAKE: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: relay_bench ADDR PAIRS TOTAL_BYTES");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[1].parse().expect("ADDR is IP:PORT");
    let pairs: usize = args[2].parse().expect("PAIRS is a number");
    let total: u64 = args[3].parse().expect("TOTAL_BYTES is a number");
    let each = total / pairs as u64;
    let block = Arc::new(
        (0..16u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    );

    let receivers: Vec<_> = (0..pairs)
        .map(|i| {
            let mut c = Client::connect(addr, &format!("bench-recv-{i}"));
            c.keep = false;
            c.fake_hash = Some(FAKE.into());
            std::thread::spawn(move || {
                c.run_until(3600, |c| !c.inc.is_empty() && c.all_ended());
                c
            })
        })
        .collect();
    let start = Arc::new(Barrier::new(pairs + 1));
    let senders: Vec<_> = (0..pairs)
        .map(|i| {
            let (start, block) = (start.clone(), block.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr, &format!("bench-send-{i}"));
                let mut o = Outgoing::new(
                    &format!("bench-recv-{i}"),
                    "bench.bin",
                    Data::Cycle { size: each, block },
                );
                o.fake_hash = Some(FAKE.into());
                start.wait();
                c.offer(o);
                c.run_until(3600, Client::all_ended);
                c
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let mut ok = true;
    for s in senders {
        let c = s.join().expect("sender thread");
        if c.out[0].result_type() != Some("relay_complete") {
            eprintln!("relay_bench: a send ended with {:?}", c.out[0].result);
            ok = false;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    for r in receivers {
        let c = r.join().expect("receiver thread");
        let got: u64 = c.inc.values().map(|i| i.received).sum();
        if got != each {
            eprintln!("relay_bench: a receiver got {got} bytes, not {each}");
            ok = false;
        }
    }
    println!(
        "{{\"pairs\": {pairs}, \"bytes\": {}, \"seconds\": {seconds:.3}}}",
        each * pairs as u64
    );
    if !ok {
        std::process::exit(1);
    }
}
