//! The image boot test's way to stall the event loop (`POST /api/debug/stall?secs=N`):
//! it exists only in builds with the `debug-stall` feature, and a release answers 404.
//! Run `cargo test --features debug-stall --test debug_stall` for the stalling half.

mod common;

use common::Lanvan;
use std::time::{Duration, Instant};

#[test]
#[cfg(not(feature = "debug-stall"))]
fn a_normal_build_has_no_way_to_stall_the_box() {
    let box_ = Lanvan::start("no-stall", &[]);
    let resp = box_
        .client()
        .send("POST", "/api/debug/stall?secs=5", &[], b"");
    assert_eq!(resp.status, 404);
    assert_eq!(resp.json()["error"], "not_found");
    // And the box did not stall: it answers at once.
    let t = Instant::now();
    assert_eq!(box_.get("/api/status").status, 200);
    assert!(t.elapsed() < Duration::from_secs(4));
}

#[test]
#[cfg(feature = "debug-stall")]
fn a_debug_build_stalls_the_whole_event_loop() {
    let box_ = Lanvan::start("stall", &[]);
    let bad = box_
        .client()
        .send("POST", "/api/debug/stall?secs=x", &[], b"");
    assert_eq!(bad.status, 400);
    let stalled = std::thread::spawn({
        let addr = box_.addr;
        move || common::Client::connect(addr).send("POST", "/api/debug/stall?secs=2", &[], b"")
    });
    std::thread::sleep(Duration::from_millis(300));
    // Another client waits until the loop is free again.
    let t = Instant::now();
    assert_eq!(box_.get("/api/status").status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(stalled.join().unwrap().status, 200);
}
