//! The `lanvan` command line as a peer, end to end: the real binary's `ls`, `clip`, `get`,
//! `send` and `receive` against a real box on loopback, checked by what a user sees (stdout,
//! exit codes, files and their SHA-256), and its answers to bad input.

mod common;

use common::term::{file_sha, text, wait_line, Term};
use common::{bin, pseudo_random, sha_hex, temp_dir, wait_exit, wait_for, Lanvan};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn ls_lists_the_stored_files_with_size_and_age_and_as_json() {
    let b = Lanvan::start("cli-ls", &[]);
    let t = Term::new(&b, "Term A");
    let empty = t.run(&["ls"]);
    assert!(empty.status.success(), "{}", text(&empty.stderr));
    assert!(
        text(&empty.stderr).contains("no files"),
        "{}",
        text(&empty.stderr)
    );
    assert_eq!(b.upload("notes.txt", b"hello there").status, 201);
    assert_eq!(
        b.upload("big photo.jpg", &pseudo_random(1, 3 << 20)).status,
        201
    );
    let out = t.run(&["ls"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    let lines: Vec<&str> = s.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{s}");
    let notes = lines.iter().find(|l| l.starts_with("notes.txt")).expect(&s);
    assert!(notes.contains("11 B") && notes.contains("s ago"), "{notes}");
    let photo = lines
        .iter()
        .find(|l| l.starts_with("big photo.jpg"))
        .expect(&s);
    assert!(photo.contains("3.0 MiB"), "{photo}");

    let json = t.run(&["ls", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert!(files.iter().any(|f| f["name"] == "notes.txt"
        && f["size"] == 11
        && f["sha256"] == sha_hex(b"hello there")));
}

#[test]
fn clip_sets_and_prints_the_shared_clipboard() {
    let b = Lanvan::start("cli-clip", &[]);
    let a = Term::new(&b, "Term A");
    let c = Term::new(&b, "Term C");
    let empty = a.run(&["clip"]);
    assert!(empty.status.success(), "{}", text(&empty.stderr));
    assert_eq!(text(&empty.stdout), "");
    let set = a.run(&["clip", "https://example.org/recipe"]);
    assert!(set.status.success(), "{}", text(&set.stderr));
    let got = c.run(&["clip"]);
    assert_eq!(text(&got.stdout), "https://example.org/recipe");
    // From stdin, with a newline and non-ASCII kept as given.
    let set = c.run_with(&["clip", "-"], "Grüße\nline 2\n".as_bytes());
    assert!(set.status.success(), "{}", text(&set.stderr));
    assert_eq!(text(&a.run(&["clip"]).stdout), "Grüße\nline 2\n");
    // Too large for the box: refused with its reason, exit 1.
    let big = "x".repeat(70_000);
    let refused = a.run_with(&["clip", "-"], big.as_bytes());
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("limit"),
        "{}",
        text(&refused.stderr)
    );
}

#[test]
fn get_downloads_checks_sha256_and_resumes_an_interrupted_download() {
    let b = Lanvan::start("cli-get", &[]);
    let t = Term::new(&b, "Term A");
    let dir = temp_dir("cli-get-out", false);
    let small = pseudo_random(2, 700_000);
    assert_eq!(b.upload("small.bin", &small).status, 201);
    let out = t.run(&["get", "small.bin", "-o", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(file_sha(&dir.join("small.bin")), sha_hex(&small));
    assert!(
        text(&out.stderr).contains("SHA-256"),
        "{}",
        text(&out.stderr)
    );

    // An interrupted download: killed while it runs (slowed to 2 MB/s), then run again.
    let big = pseudo_random(3, 8 << 20);
    assert_eq!(b.upload("big.bin", &big).status, 201);
    let target = dir.join("copy.bin");
    let part = dir.join("copy.bin.part");
    let (mut child, _err) = t.spawn(&[
        "get",
        "big.bin",
        "-o",
        target.to_str().unwrap(),
        "--limit-rate",
        "2000000",
    ]);
    assert!(
        wait_for(20, || std::fs::metadata(&part)
            .is_ok_and(|m| m.len() >= 1 << 20)),
        "the download started"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let had = std::fs::metadata(&part).unwrap().len();
    assert!(
        had > 0 && had < big.len() as u64,
        "a partial file is left: {had}"
    );
    assert!(!target.exists());
    let again = t.run(&["get", "big.bin", "-o", target.to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stderr).contains("resuming at"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(file_sha(&target), sha_hex(&big));
    assert!(!part.exists());

    // Over the data channel, damaged chunks of a partial file fail their SHA-256 and are
    // fetched again.
    std::fs::write(&part, vec![0xEEu8; 1 << 20]).unwrap();
    std::fs::remove_file(&target).unwrap();
    let fixed = t.run(&["get", "big.bin", "-o", target.to_str().unwrap()]);
    assert!(fixed.status.success(), "{}", text(&fixed.stderr));
    assert!(
        text(&fixed.stderr).contains("32 chunks over a data channel"),
        "{}",
        text(&fixed.stderr)
    );
    assert_eq!(file_sha(&target), sha_hex(&big));

    // Over HTTP (`--http`), a damaged partial file is caught by the whole file's SHA-256
    // and downloaded again.
    std::fs::write(&part, vec![0xEEu8; 1 << 20]).unwrap();
    std::fs::remove_file(&target).unwrap();
    let fixed = t.run(&["get", "big.bin", "--http", "-o", target.to_str().unwrap()]);
    assert!(fixed.status.success(), "{}", text(&fixed.stderr));
    assert!(
        text(&fixed.stderr).contains("does not match"),
        "{}",
        text(&fixed.stderr)
    );
    assert_eq!(file_sha(&target), sha_hex(&big));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bytes the box sent so far over TCP (HTTP and WebSocket).
fn bytes_out(b: &Lanvan) -> u64 {
    b.status()["bytes_out"]
        .as_u64()
        .expect("bytes_out in /api/status")
}

#[test]
fn get_fetches_chunks_from_the_box_over_a_data_channel_and_falls_back_to_http() {
    let b = Lanvan::start("cli-get-rtc", &[]);
    let t = Term::new(&b, "Term A");
    let dir = temp_dir("cli-get-rtc-out", false);
    let data = pseudo_random(11, 6 * 262_144 + 1234);
    assert_eq!(b.upload("multi.bin", &data).status, 201);
    let before = bytes_out(&b);
    let out = t.run(&["get", "multi.bin", "-o", dir.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("7 chunks over a data channel from 1 source"),
        "{err}"
    );
    assert!(!err.contains("over HTTP"), "{err}");
    assert_eq!(file_sha(&dir.join("multi.bin")), sha_hex(&data));
    // The bytes came over UDP: the box's TCP side sent only the manifest and signaling.
    let through = bytes_out(&b) - before;
    assert!(
        through < 256 * 1024,
        "the box sent {through} bytes over TCP for a data-channel get"
    );
    assert!(!dir.join("multi.bin.part").exists());

    // `--http` forces HTTP: the whole file crosses TCP.
    let before = bytes_out(&b);
    let forced = dir.join("forced.bin");
    let out = t.run(&["get", "multi.bin", "--http", "-o", forced.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("data channel"));
    assert_eq!(file_sha(&forced), sha_hex(&data));
    assert!(bytes_out(&b) - before >= data.len() as u64);

    // A box with WebRTC off: one line says so, HTTP does the work, the SHA-256 matches.
    let off = Lanvan::start("cli-get-rtc-off", &["p2p.mode=off"]);
    assert_eq!(off.upload("multi.bin", &data).status, 201);
    let t_off = Term::new(&off, "Term B");
    let target = dir.join("off.bin");
    let out = t_off.run(&["get", "multi.bin", "-o", target.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.lines()
            .filter(|l| l.contains("downloading over HTTP"))
            .count(),
        1,
        "{err}"
    );
    assert!(err.contains("no WebRTC peer"), "{err}");
    assert_eq!(file_sha(&target), sha_hex(&data));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A device on `/ws` with P2P on that announced `manifest` and answers `lanvan get`'s swarm
/// requests: declines them, or accepts and then never signals (a source that does not
/// connect). Runs until `stop`, then a little longer for the request's end; returns every
/// message it got. `ready` is told once its announce is in.
fn holder(
    addr: std::net::SocketAddr,
    id: &'static str,
    manifest: String,
    accept: bool,
    ready: mpsc::Sender<()>,
    stop: mpsc::Receiver<()>,
) -> std::thread::JoinHandle<Vec<serde_json::Value>> {
    use common::relay::{self, Ev};
    use serde_json::json;
    std::thread::spawn(move || {
        let mut ws = relay::open(addr, id);
        relay::send_json(&mut ws, json!({"type": "enable_p2p"}));
        relay::send_json(
            &mut ws,
            json!({"type": "announce", "manifests": [manifest]}),
        );
        let mut seen = Vec::new();
        let mut until: Option<std::time::Instant> = None;
        loop {
            let now = std::time::Instant::now();
            if until.is_none() && stop.try_recv().is_ok() {
                until = Some(now + Duration::from_secs(5));
            }
            if until.is_some_and(|u| now >= u) {
                return seen;
            }
            let Some(Ev::Json(v)) = relay::read(&mut ws, now + Duration::from_millis(100)) else {
                continue;
            };
            match v["type"].as_str().unwrap_or("") {
                "announced" => ready.send(()).unwrap(),
                "p2p_request_received" => {
                    let answer = if accept { "p2p_accept" } else { "p2p_decline" };
                    relay::send_json(
                        &mut ws,
                        json!({"type": answer, "from": v["from"], "to": id}),
                    );
                }
                "p2p_connection_closed" | "p2p_connection_failed" if until.is_some() => {
                    seen.push(v);
                    return seen;
                }
                _ => {}
            }
            seen.push(v);
        }
    })
}

#[test]
fn get_asks_the_devices_holding_the_file_and_carries_on_from_the_box_when_they_fail() {
    let b = Lanvan::start("cli-get-swarm", &[]);
    let t = Term::new(&b, "Term A");
    let dir = temp_dir("cli-get-swarm-out", false);
    let data = pseudo_random(12, 24 * 262_144 + 99);
    assert_eq!(b.upload("shared.bin", &data).status, 201);
    let manifest = b.get("/api/files/shared.bin/manifest").json()["manifest"]
        .as_str()
        .unwrap()
        .to_string();
    // Two devices announce the file: one declines the CLI's request, one accepts and then
    // never answers the offer.
    let (ready_tx, ready) = mpsc::channel();
    let (stop_no, stop_rx_no) = mpsc::channel();
    let (stop_mute, stop_rx_mute) = mpsc::channel();
    let no = holder(
        b.addr,
        "holder-no",
        manifest.clone(),
        false,
        ready_tx.clone(),
        stop_rx_no,
    );
    let mute = holder(
        b.addr,
        "holder-mute",
        manifest.clone(),
        true,
        ready_tx,
        stop_rx_mute,
    );
    for _ in 0..2 {
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("announced");
    }
    let out = t.run(&["get", "shared.bin", "-o", dir.to_str().unwrap()]);
    let err = text(&out.stderr);
    stop_no.send(()).unwrap();
    stop_mute.send(()).unwrap();
    let (no, mute) = (no.join().unwrap(), mute.join().unwrap());
    assert!(out.status.success(), "{err}");
    assert_eq!(file_sha(&dir.join("shared.bin")), sha_hex(&data));
    assert!(
        err.contains("25 chunks over a data channel from 1 source (the box)"),
        "{err}"
    );
    assert!(!err.contains("over HTTP"), "{err}");
    // Each holder was asked, for this file, as a chunk source.
    for seen in [&no, &mute] {
        let asked: Vec<_> = seen
            .iter()
            .filter(|v| v["type"] == "p2p_request_received")
            .collect();
        assert_eq!(asked.len(), 1, "{seen:?}");
        assert_eq!(asked[0]["purpose"], "swarm");
        assert_eq!(asked[0]["manifest"], manifest.as_str());
    }
    // The one that accepted and went silent was let go, not left waiting.
    let ended = mute
        .iter()
        .filter(|v| v["type"] == "p2p_connection_closed" || v["type"] == "p2p_connection_failed")
        .count();
    assert_eq!(ended, 1, "{mute:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn get_falls_back_to_http_when_the_box_refuses_its_websocket() {
    let b = Lanvan::start("cli-get-no-ws", &["ws.max_devices=1"]);
    let dir = temp_dir("cli-get-no-ws-out", false);
    let data = pseudo_random(13, 3 * 262_144 + 5);
    assert_eq!(b.upload("full.bin", &data).status, 201);
    // The one device the box takes is here already.
    let _other = common::relay::open(b.addr, "the-only-one");
    let t = Term::new(&b, "Term A");
    let target = dir.join("full.bin");
    let out = t.run(&["get", "full.bin", "-o", target.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let fallbacks: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("downloading over HTTP"))
        .collect();
    assert_eq!(fallbacks.len(), 1, "{err}");
    assert!(fallbacks[0].contains("refused"), "{err}");
    assert_eq!(file_sha(&target), sha_hex(&data));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn send_reaches_lanvan_receive_through_the_relay() {
    let b = Lanvan::start("cli-relay", &[]);
    let rx_term = Term::new(&b, "Term B");
    let tx_term = Term::new(&b, "Term A");
    let dir = temp_dir("cli-recv", false);
    let src = temp_dir("cli-src", false);
    let data = pseudo_random(4, 3 * 262_144 + 1234);
    let file = src.join("holiday.mp4");
    std::fs::write(&file, &data).unwrap();

    let (mut rx, rx_err) = rx_term.spawn(&["receive", "--once", "--dir", dir.to_str().unwrap()]);
    wait_line(&rx_err, "receiving into", 20);
    let out = tx_term.run(&["send", file.to_str().unwrap(), "--to", "term b", "--relay"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&sha_hex(&data)),
        "{}",
        text(&out.stderr)
    );
    assert!(wait_exit(&mut rx, 30).success());
    let saved = dir.join("holiday.mp4");
    assert_eq!(file_sha(&saved), sha_hex(&data));
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut rx.stdout.take().unwrap(), &mut stdout).unwrap();
    assert_eq!(stdout.trim(), saved.display().to_string());

    // The terminal's device id is stable: a second receive is the same device, and a
    // name already taken gets a numbered one. An empty file arrives too.
    let empty = src.join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let again = src.join("holiday.mp4");
    let (mut rx, rx_err) = rx_term.spawn(&["receive", "--once", "--dir", dir.to_str().unwrap()]);
    wait_line(&rx_err, "receiving into", 20);
    let id = std::fs::read_to_string(rx_term.state.join("lanvan/device-id")).unwrap();
    let out = tx_term.run(&[
        "send",
        again.to_str().unwrap(),
        "--to",
        id.trim(),
        "--relay",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(wait_exit(&mut rx, 30).success());
    assert_eq!(file_sha(&dir.join("holiday (1).mp4")), sha_hex(&data));
    let (mut rx, rx_err) = rx_term.spawn(&["receive", "--once", "--dir", dir.to_str().unwrap()]);
    wait_line(&rx_err, "receiving into", 20);
    let out = tx_term.run(&["send", empty.to_str().unwrap(), "--to", "Term B"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(wait_exit(&mut rx, 30).success());
    assert_eq!(std::fs::metadata(dir.join("empty.txt")).unwrap().len(), 0);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&src);
}

#[test]
fn bad_input_gets_a_clear_message_and_exit_code() {
    let b = Lanvan::start("cli-bad", &[]);
    let t = Term::new(&b, "Term A");
    let src = temp_dir("cli-bad-src", false);
    let file = src.join("a.txt");
    std::fs::write(&file, b"abc").unwrap();

    let out = t.run(&["send", file.to_str().unwrap(), "--to", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no device `nobody` is connected"),
        "{}",
        text(&out.stderr)
    );

    let out = t.run(&[
        "send",
        src.join("missing.txt").to_str().unwrap(),
        "--to",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot read"),
        "{}",
        text(&out.stderr)
    );

    let out = t.run(&["share", src.join("missing.txt").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot read"),
        "{}",
        text(&out.stderr)
    );

    let out = t.run(&["get", "missing.bin"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no file named `missing.bin`"),
        "{}",
        text(&out.stderr)
    );

    // A box that is not there: a port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let out = Command::new(bin())
        .args(["ls", "--box", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach the box"),
        "{}",
        text(&out.stderr)
    );

    // Usage errors exit 2.
    let out = Command::new(bin()).args(["send", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "--to is required");
    let out = Command::new(bin())
        .args(["ls", "--box", "ftp://x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&src);
}

/// Bytes the box received so far over TCP (HTTP and WebSocket, relay chunks included).
fn bytes_in(b: &Lanvan) -> u64 {
    b.status()["bytes_in"]
        .as_u64()
        .expect("bytes_in in /api/status")
}

#[test]
fn send_goes_straight_to_another_terminal_over_a_data_channel() {
    let b = Lanvan::start("cli-direct", &[]);
    let rx_term = Term::new(&b, "Term B");
    let tx_term = Term::new(&b, "Term A");
    let dir = temp_dir("cli-direct-recv", false);
    let src = temp_dir("cli-direct-src", false);
    let data = pseudo_random(5, 4 * 262_144 + 99);
    let file = src.join("direct.bin");
    std::fs::write(&file, &data).unwrap();
    let (mut rx, rx_err) = rx_term.spawn(&["receive", "--once", "--dir", dir.to_str().unwrap()]);
    wait_line(&rx_err, "receiving into", 20);
    let before = bytes_in(&b);
    let out = tx_term.run(&["send", file.to_str().unwrap(), "--to", "Term B"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("sent directly (P2P)"), "{err}");
    assert!(wait_exit(&mut rx, 30).success());
    assert_eq!(file_sha(&dir.join("direct.bin")), sha_hex(&data));
    let through = bytes_in(&b) - before;
    assert!(
        through < 256 * 1024,
        "the box carried {through} bytes of a direct send"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&src);
}

#[test]
fn a_stalled_direct_send_moves_to_the_relay_from_the_confirmed_chunk() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let b = Lanvan::start("cli-fallback", &[]);
    let rx_term = Term::new(&b, "Term B");
    let tx_term = Term::new(&b, "Term A");
    let dir = temp_dir("cli-fallback-recv", false);
    let src = temp_dir("cli-fallback-src", false);
    let data = pseudo_random(6, 24 << 20);
    let file = src.join("big.bin");
    std::fs::write(&file, &data).unwrap();
    let (mut rx, rx_err) = rx_term.spawn(&["receive", "--once", "--dir", dir.to_str().unwrap()]);
    wait_line(&rx_err, "receiving into", 20);
    let before = bytes_in(&b);
    let (mut tx, tx_err) = tx_term.spawn(&["send", file.to_str().unwrap(), "--to", "Term B"]);
    // Once a few chunks arrived directly, the receiver freezes for 4.5 s: no acks come, so
    // the sender gives up the direct path after 3 s and continues through the box.
    let part_len = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .map(|e| e.metadata().unwrap().len())
            .max()
            .unwrap_or(0)
    };
    assert!(
        wait_for(30, || part_len() >= 2 << 20),
        "the direct send started"
    );
    let pid = Pid::from_raw(rx.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(4500));
    kill(pid, Signal::SIGCONT).unwrap();
    assert!(wait_exit(&mut tx, 60).success(), "the send completed");
    let lines: Vec<String> = tx_err.try_iter().collect();
    assert!(lines.iter().any(|l| l.contains("P2P failed")), "{lines:?}");
    assert!(wait_exit(&mut rx, 30).success());
    assert_eq!(file_sha(&dir.join("big.bin")), sha_hex(&data));
    // The relay carried the rest, not the whole file again.
    let through = bytes_in(&b) - before;
    assert!(
        through < data.len() as u64 - (1 << 20),
        "the box carried {through} bytes: restarted from zero?"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&src);
}
