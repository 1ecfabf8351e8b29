//! `lanvan put` end to end: the real binary uploads to a real box on loopback through the
//! box's resumable upload API, checked by what a user sees (the box's file list and the
//! bytes it serves back, by SHA-256), by the box's own byte counters (what was re-sent),
//! and by exit codes and messages for bad input and a full box.

mod common;

use common::term::{text, wait_line, Term};
use common::{bin, download_sha, pseudo_random, sha_hex, temp_dir, wait_exit, wait_for, Lanvan};
use serde_json::{json, Value};
use std::process::{Command, Stdio};

/// Bytes the box received so far over TCP.
fn bytes_in(b: &Lanvan) -> u64 {
    b.status()["bytes_in"]
        .as_u64()
        .expect("bytes_in in /api/status")
}

/// The box's list entry for `name`.
fn listed(b: &Lanvan, name: &str) -> Option<Value> {
    b.get("/api/files").json()["files"]
        .as_array()?
        .iter()
        .find(|f| f["name"] == name)
        .cloned()
}

/// A terminal whose device id is known, so the test can ask the box about its upload.
fn term_with_id(b: &Lanvan, name: &str, id: &str) -> Term {
    let t = Term::new(b, name);
    std::fs::create_dir_all(t.state.join("lanvan")).unwrap();
    std::fs::write(t.state.join("lanvan/device-id"), format!("{id}\n")).unwrap();
    t
}

#[test]
fn put_uploads_a_multi_chunk_file_and_a_second_put_sends_nothing() {
    let b = Lanvan::start("put-basic", &["store.chunk_size=262144"]);
    let t = Term::new(&b, "Term A");
    let src = temp_dir("put-basic-src", false);
    let data = pseudo_random(21, 5 * 262_144 + 777);
    let file = src.join("report.pdf");
    std::fs::write(&file, &data).unwrap();

    let out = t.run(&["put", file.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(text(&out.stdout).trim(), "report.pdf", "{err}");
    assert!(err.contains("in 6 chunks"), "{err}");
    assert!(
        err.contains(&format!("SHA-256 {} ok", sha_hex(&data))),
        "{err}"
    );
    let f = listed(&b, "report.pdf").expect("the box lists the file");
    assert_eq!(f["sha256"], sha_hex(&data));
    assert_eq!(f["size"], data.len());
    assert_eq!(f["uploaded_by"], "Term A");
    assert_eq!(
        download_sha(b.addr, "/api/files/report.pdf"),
        (200, data.len() as u64, sha_hex(&data))
    );

    // Again, under another name: the box already has the bytes, so nothing is sent.
    let before = bytes_in(&b);
    let again = t.run(&["put", file.to_str().unwrap(), "--as", "copy.pdf"]);
    let err = text(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(err.contains("already on the box as `report.pdf`"), "{err}");
    assert_eq!(text(&again.stdout).trim(), "report.pdf");
    let through = bytes_in(&b) - before;
    assert!(through < 4096, "a second put sent {through} bytes");
    assert_eq!(
        b.get("/api/files").json()["files"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // `--as` names the stored file; an empty file is a file too.
    let empty = src.join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let out = t.run(&["put", empty.to_str().unwrap(), "--as", "notes.txt"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let f = listed(&b, "notes.txt").expect("the box lists the empty file");
    assert_eq!(f["size"], 0);
    let _ = std::fs::remove_dir_all(&src);
}

#[test]
fn a_killed_put_resumes_and_sends_only_the_missing_chunks() {
    let b = Lanvan::start("put-resume", &["store.chunk_size=262144"]);
    let id = "cli-put-resume-test";
    let t = term_with_id(&b, "Term A", id);
    let src = temp_dir("put-resume-src", false);
    let data = pseudo_random(22, 16 * 262_144 + 4321);
    let file = src.join("video.mkv");
    std::fs::write(&file, &data).unwrap();
    // The same request `put` makes resumes its upload and answers with its status; it
    // changes nothing, so the test can watch the upload through it.
    let status = || {
        let r = b.json(
            "POST",
            "/api/uploads",
            &json!({"name": "video.mkv", "size": data.len(), "sha256": sha_hex(&data),
                "device_id": id}),
        );
        assert!(r.status == 200 || r.status == 201, "{r:?}");
        r.json()
    };

    // Slowed to 600 kB/s (about 2 chunks a second), it is killed once 3 chunks are in,
    // with 14 (some 6 s) still to go.
    let (mut child, err) = t.spawn(&["put", file.to_str().unwrap(), "--limit-rate", "600000"]);
    // Watched once `put` has made its upload (the test's own request would otherwise make it).
    wait_line(&err, "uploading 4.0 MiB", 20);
    assert!(
        wait_for(30, || status()["received_chunks"].as_u64().unwrap() >= 3),
        "the upload started"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        listed(&b, "video.mkv").is_none(),
        "a partial upload is not listed"
    );
    // The box has read what the killed `put` had sent once it closed that connection
    // (only the status request's own connection is left).
    assert!(
        wait_for(10, || b.status()["connections"] == 1),
        "the box closed the killed put's connection"
    );

    let before = bytes_in(&b);
    let out = t.run(&["put", file.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    // What the box held when the put ran again (a chunk that was arriving at the kill
    // may or may not have made it).
    let held: u64 = err
        .split("resuming: ")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `resuming:` line: {err}"));
    assert!(
        (3..17).contains(&held),
        "{held} of 17 chunks were on the box: {err}"
    );
    // Only the missing chunks crossed again (plus request heads and JSON).
    let through = bytes_in(&b) - before;
    let missing = data.len() as u64 - held * 262_144;
    assert!(
        through >= missing && through < missing + 32 * 1024,
        "the resumed put sent {through} bytes for {missing} missing"
    );
    let f = listed(&b, "video.mkv").expect("the box lists the file");
    assert_eq!(f["sha256"], sha_hex(&data));
    assert_eq!(
        download_sha(b.addr, "/api/files/video.mkv"),
        (200, data.len() as u64, sha_hex(&data))
    );
    let _ = std::fs::remove_dir_all(&src);
}

#[test]
fn a_missing_file_a_full_box_and_no_box_get_clear_errors() {
    // Files up to 1 MiB (4 chunks of 256 KiB), and a quota of 600 000 bytes.
    let b = Lanvan::start(
        "put-errors",
        &[
            "store.chunk_size=262144",
            "store.max_chunk_size=262144",
            "store.max_chunks=4",
            "store.quota=600000",
        ],
    );
    let t = Term::new(&b, "Term A");
    let src = temp_dir("put-errors-src", false);
    let run = |args: &[&str]| {
        let out = t.run(args);
        (out.status.code(), text(&out.stderr))
    };
    let path = |name: &str, len: usize| {
        let p = src.join(name);
        std::fs::write(&p, pseudo_random(len as u64, len)).unwrap();
        p.to_str().unwrap().to_string()
    };

    let (code, err) = run(&["put", src.join("nope.bin").to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot read") && err.contains("nope.bin"),
        "{err}"
    );
    let (code, err) = run(&["put", src.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is not a file"), "{err}");

    let (code, err) = run(&["put", &path("huge.bin", 2 << 20)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("too large for the box"), "{err}");

    let (code, err) = run(&["put", &path("big.bin", 700_000)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no room for big.bin") && err.contains("quota_exceeded"),
        "{err}"
    );
    // What fits still goes, and then the quota holds the next one out.
    let fits = path("fits.bin", 500_000);
    let (code, err) = run(&["put", &fits]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run(&["put", &path("more.bin", 200_000)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("quota"), "{err}");
    assert_eq!(
        b.get("/api/files").json()["files"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let (code, err) = run(&["put", &fits, "--as", ""]);
    assert_eq!(code, Some(2), "{err}");

    // A box that is not there: a port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let mut child = Command::new(bin())
        .args(["put", &fits, "--box", &format!("http://127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(wait_exit(&mut child, 20).code(), Some(1));
    let out = child.wait_with_output().unwrap();
    assert!(
        text(&out.stderr).contains("cannot reach the box"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&src);
}

#[test]
fn a_put_cut_off_by_a_box_crash_fails_clearly_and_resumes_after_the_restart() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let b = Lanvan::start("put-crash", &["store.chunk_size=262144"]);
    let id = "cli-put-crash-test";
    let t = term_with_id(&b, "Term A", id);
    let src = temp_dir("put-crash-src", false);
    let data = pseudo_random(23, 12 * 262_144 + 99);
    let file = src.join("backup.tar");
    std::fs::write(&file, &data).unwrap();
    let ask = json!({"name": "backup.tar", "size": data.len(), "sha256": sha_hex(&data),
        "device_id": id});
    let (mut child, err) = t.spawn(&["put", file.to_str().unwrap(), "--limit-rate", "600000"]);
    wait_line(&err, "uploading 3.0 MiB", 20);
    assert!(
        wait_for(30, || b.json("POST", "/api/uploads", &ask).json()
            ["received_chunks"]
            .as_u64()
            .unwrap()
            >= 3),
        "the upload started"
    );
    // The box dies (SIGKILL) mid-upload: the put says so and how to go on, exit 1.
    kill(Pid::from_raw(b.pid()), Signal::SIGKILL).unwrap();
    assert_eq!(wait_exit(&mut child, 90).code(), Some(1));
    let lines: Vec<String> = err.try_iter().collect();
    assert!(
        lines.iter().any(|l| l.contains("run it again to resume")),
        "{lines:?}"
    );
    let b = b.kill_and_restart();

    // The restarted box kept the chunks it had confirmed; the same terminal resumes.
    let t = term_with_id(&b, "Term A", id);
    let out = t.run(&["put", file.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("resuming: ") && err.contains(" of 13 chunks"),
        "{err}"
    );
    assert_eq!(
        download_sha(b.addr, "/api/files/backup.tar"),
        (200, data.len() as u64, sha_hex(&data))
    );
    let _ = std::fs::remove_dir_all(&src);
}

#[test]
fn a_file_changed_while_it_is_sent_is_refused_not_stored() {
    let b = Lanvan::start("put-changed", &["store.chunk_size=262144"]);
    let id = "cli-put-changed-test";
    let t = term_with_id(&b, "Term A", id);
    let src = temp_dir("put-changed-src", false);
    let data = pseudo_random(24, 8 * 262_144);
    let file = src.join("draft.odt");
    std::fs::write(&file, &data).unwrap();
    let ask = json!({"name": "draft.odt", "size": data.len(), "sha256": sha_hex(&data),
        "device_id": id});
    let (mut child, err) = t.spawn(&["put", file.to_str().unwrap(), "--limit-rate", "600000"]);
    wait_line(&err, "uploading 2.0 MiB", 20);
    assert!(
        wait_for(30, || b.json("POST", "/api/uploads", &ask).json()
            ["received_chunks"]
            .as_u64()
            .unwrap()
            >= 2),
        "the upload started"
    );
    // Someone saves the file again: its last chunk, not sent yet, changes on disk.
    let mut changed = data.clone();
    let end = changed.len();
    changed[end - 4096..].fill(0xAB);
    {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&changed[end - 4096..], (end - 4096) as u64)
            .unwrap();
    }
    assert_eq!(wait_exit(&mut child, 60).code(), Some(1));
    let lines: Vec<String> = err.try_iter().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("changed while it was being sent")),
        "{lines:?}"
    );
    assert!(
        listed(&b, "draft.odt").is_none(),
        "nothing half-right is stored"
    );
    // Run again, it sends the file as it is now.
    let out = t.run(&["put", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        listed(&b, "draft.odt").unwrap()["sha256"],
        sha_hex(&changed)
    );
    let _ = std::fs::remove_dir_all(&src);
}
