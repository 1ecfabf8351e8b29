//! The drop-box over HTTP, end to end: the real binary on a loopback port, driven the way
//! a browser or script would, checking status codes, bytes and SHA-256.

mod common;

use common::*;
use serde_json::json;
use std::io::Write;

fn create(lv: &Lanvan, name: &str, data: &[u8]) -> serde_json::Value {
    let r = lv.json(
        "POST",
        "/api/uploads",
        &json!({"name": name, "size": data.len(), "sha256": sha_hex(data)}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    r.json()
}

/// Chunk `i` of `data` cut in chunks of `chunk` bytes (the last one shorter).
fn chunk_of(data: &[u8], chunk: usize, i: u32) -> &[u8] {
    let start = i as usize * chunk;
    &data[start..(start + chunk).min(data.len())]
}

fn files(lv: &Lanvan) -> Vec<serde_json::Value> {
    lv.get("/api/files").json()["files"]
        .as_array()
        .unwrap()
        .clone()
}

fn missing(lv: &Lanvan, id: &str) -> Vec<u32> {
    let s = lv.get(&format!("/api/uploads/{id}")).json();
    s["missing"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r[0].as_u64().unwrap() as u32..r[1].as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn upload_list_download_round_trip() {
    let lv = Lanvan::start("roundtrip", &[]);
    let data = pseudo_random(1, 3 * 1024 * 1024 + 12345);
    let sha = sha_hex(&data);
    let created = lv.json(
        "POST",
        "/api/uploads",
        &json!({"name": "holiday photos.bin", "size": data.len(), "sha256": sha,
                "device_id": "laptop1", "device_name": "Ana's laptop"}),
    );
    assert_eq!(created.status, 201);
    let c = created.json();
    let (id, chunk) = (
        c["id"].as_str().unwrap().to_string(),
        c["chunk_size"].as_u64().unwrap() as usize,
    );
    assert_eq!(c["chunks"], 4);
    assert_eq!(c["missing"], json!([[0, 4]]));
    let mut client = lv.client();
    for (i, part) in data.chunks(chunk).enumerate() {
        assert_eq!(client.put_chunk(&id, i as u32, part).status, 200);
    }
    // A chunk already stored is accepted again.
    let again = client.put_chunk(&id, 1, &data[chunk..2 * chunk]);
    assert_eq!(again.status, 200, "{again:?}");
    let done = client.send("POST", &format!("/api/uploads/{id}/finish"), &[], b"");
    assert_eq!(done.status, 201, "{done:?}");
    assert_eq!(done.json()["file"]["sha256"], sha);

    let list = files(&lv);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "holiday photos.bin");
    assert_eq!(list[0]["size"], data.len());
    assert_eq!(list[0]["sha256"], sha);
    assert_eq!(list[0]["uploaded_by"], "Ana's laptop");
    assert!(list[0]["modified"].as_u64().unwrap() > 1_600_000_000_000);

    let path = "/api/files/holiday%20photos.bin";
    let (status, len, got) = download_sha(lv.addr, path);
    assert_eq!(
        (status, len, got.as_str()),
        (200, data.len() as u64, sha.as_str())
    );

    let whole = lv.get(path);
    assert_eq!(whole.header("etag"), Some(format!("\"{sha}\"").as_str()));
    let disposition = whole.header("content-disposition").unwrap();
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert!(
        disposition.contains("holiday%20photos.bin"),
        "{disposition}"
    );

    let part = lv
        .client()
        .send("GET", path, &[("range", "bytes=100-199")], b"");
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &data[100..200]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 100-199/{}", data.len()).as_str())
    );
    let tail = lv
        .client()
        .send("GET", path, &[("range", "bytes=-10")], b"");
    assert_eq!(tail.body, &data[data.len() - 10..]);
    let beyond = lv
        .client()
        .send("GET", path, &[("range", "bytes=99999999-")], b"");
    assert_eq!(beyond.status, 416);

    let etag = format!("\"{sha}\"");
    let cached = lv
        .client()
        .send("GET", path, &[("if-none-match", etag.as_str())], b"");
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());
    assert_eq!(
        cached.header("content-length"),
        None,
        "RFC 9110: none on 304"
    );
    let head = lv.client().send("HEAD", path, &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(data.len().to_string().as_str())
    );

    let del = lv.client().send("DELETE", path, &[], b"");
    assert_eq!(del.status, 204);
    assert!(files(&lv).is_empty());
    assert_eq!(lv.get(path).status, 404);
    assert!(!lv.data.join("files/holiday photos.bin").exists());
}

#[test]
fn identical_bytes_are_stored_once_and_names_get_numbers() {
    let lv = Lanvan::start("dedupe", &["store.chunk_size=64KiB"]);
    let data = pseudo_random(2, 200_000);
    assert_eq!(lv.upload("a.txt", &data).status, 201);
    // Declared hash already stored: nothing to send.
    let again = lv.json(
        "POST",
        "/api/uploads",
        &json!({"name": "copy.txt", "size": data.len(), "sha256": sha_hex(&data)}),
    );
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["complete"], true);
    assert_eq!(again.json()["file"]["name"], "a.txt");
    // Without a declared hash the bytes are sent, and the finish finds the twin.
    let created = lv.json(
        "POST",
        "/api/uploads",
        &json!({"name": "b.txt", "size": data.len()}),
    );
    let id = created.json()["id"].as_str().unwrap().to_string();
    let mut client = lv.client();
    for (i, part) in data.chunks(64 * 1024).enumerate() {
        assert_eq!(client.put_chunk(&id, i as u32, part).status, 200);
    }
    let done = client.send("POST", &format!("/api/uploads/{id}/finish"), &[], b"");
    assert_eq!(done.status, 200, "nothing new was created");
    assert_eq!(done.json()["deduplicated"], true);
    assert_eq!(done.json()["file"]["name"], "a.txt");
    assert_eq!(files(&lv).len(), 1);

    // Same name, other bytes: numbered.
    let other = pseudo_random(3, 1000);
    let r = lv.upload("a.txt", &other);
    assert_eq!(r.json()["file"]["name"], "a (1).txt");
    let r = lv.upload("a.txt", &pseudo_random(4, 1000));
    assert_eq!(r.json()["file"]["name"], "a (2).txt");
    // An empty file is a file too.
    let r = lv.upload("empty", b"");
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(download_sha(lv.addr, "/api/files/empty").2, sha_hex(b""));
    assert_eq!(files(&lv).len(), 4);
}

#[test]
fn hostile_names_stay_inside_the_store() {
    let lv = Lanvan::start("names", &[]);
    let r = lv.upload("../../etc/passwd", b"not really");
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["file"]["name"], "passwd");
    assert!(lv.data.join("files/passwd").exists());
    assert!(!lv.data.join("etc").exists());
    let r = lv.upload("..\\..\\boot.ini", b"x");
    assert_eq!(r.json()["file"]["name"], "boot.ini");
    let r = lv.upload("bell\u{7}\nname.txt", b"y");
    assert_eq!(r.json()["file"]["name"], "bellname.txt");
    let long = format!("{}.txt", "n".repeat(1000));
    let r = lv.upload(&long, b"z");
    let name = r.json()["file"]["name"].as_str().unwrap().to_string();
    assert!(name.len() <= 200 && name.ends_with(".txt"), "{name}");
    for bad in ["..", ".", "/", "a/", "\u{1}", ". .", ".. ."] {
        let r = lv.json("POST", "/api/uploads", &json!({"name": bad, "size": 1}));
        assert_eq!(r.status, 400, "{bad:?}: {r:?}");
        assert_eq!(r.json()["error"], "bad_name");
    }
    // Only stored names can be fetched or deleted; escapes in the path change nothing.
    for path in [
        "/api/files/..%2F..%2Fetc%2Fpasswd",
        "/api/files/%2e%2e",
        "/api/files/..%2f.lanvan%2findex.json",
    ] {
        assert_eq!(lv.get(path).status, 404, "{path}");
        assert_eq!(lv.client().send("DELETE", path, &[], b"").status, 404);
    }
    assert_eq!(files(&lv).len(), 4);
}

#[test]
fn bad_chunks_are_refused_and_the_upload_goes_on() {
    let lv = Lanvan::start("badchunks", &["store.chunk_size=64KiB"]);
    let keep = pseudo_random(9, 100_000);
    lv.upload("keep.bin", &keep);
    let data = pseudo_random(5, 150_000);
    let c = create(&lv, "up.bin", &data);
    let id = c["id"].as_str().unwrap();
    let chunk = 64 * 1024;
    let mut client = lv.client();

    // Wrong hash: refused with both hashes named, and the chunk stays missing.
    let wrong = sha_hex(b"something else");
    let r = client.send(
        "PUT",
        &format!("/api/uploads/{id}/chunks/0"),
        &[("x-chunk-sha256", &wrong)],
        &data[..chunk],
    );
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(r.json()["error"], "chunk_hash_mismatch");
    assert!(r.json()["message"].as_str().unwrap().contains(&wrong));
    assert_eq!(missing(&lv, id), vec![0, 1, 2]);
    // Bytes damaged on the way (header right, body flipped).
    let mut damaged = data[..chunk].to_vec();
    damaged[7] ^= 1;
    let r = client.send(
        "PUT",
        &format!("/api/uploads/{id}/chunks/0"),
        &[("x-chunk-sha256", &sha_hex(&data[..chunk]))],
        &damaged,
    );
    assert_eq!(r.status, 422);

    // No hash, a bad hash, a chunk past the end, a wrong length, a bad index.
    let r = client.send(
        "PUT",
        &format!("/api/uploads/{id}/chunks/0"),
        &[],
        &data[..chunk],
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "missing_chunk_hash");
    let r = client.send(
        "PUT",
        &format!("/api/uploads/{id}/chunks/0"),
        &[("x-chunk-sha256", "xyz")],
        &data[..chunk],
    );
    assert_eq!(r.status, 400);
    let mut raw = lv.client();
    let r = raw.put_chunk(id, 3, &data[..10]);
    assert_eq!(r.status, 416, "{r:?}");
    assert_eq!(r.json()["error"], "chunk_out_of_range");
    let mut raw = lv.client();
    let r = raw.put_chunk(id, 2, &data[2 * chunk..]);
    assert_eq!(r.status, 200, "the short last chunk is fine");
    let mut raw = lv.client();
    // One byte more than the declared size.
    let too_long = pseudo_random(6, data.len() - 2 * chunk + 1);
    let r = raw.put_chunk(id, 2, &too_long);
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"], "wrong_chunk_length");
    let mut raw = lv.client();
    let r = raw.put_chunk(id, 1, &data[chunk..2 * chunk - 1]);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "wrong_chunk_length");
    let r = lv.client().put_chunk("nope", 0, b"x");
    assert_eq!(r.status, 404);
    let r = lv
        .client()
        .send("PUT", &format!("/api/uploads/{id}/chunks/x"), &[], b"");
    assert_eq!(r.status, 400);

    // Finishing early names what is missing.
    let r = lv
        .client()
        .send("POST", &format!("/api/uploads/{id}/finish"), &[], b"");
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["missing"], json!([[0, 2]]));

    let mut client = lv.client();
    for i in 0..2 {
        let r = client.put_chunk(id, i, &data[i as usize * chunk..(i as usize + 1) * chunk]);
        assert_eq!(r.status, 200);
    }
    let r = client.send("POST", &format!("/api/uploads/{id}/finish"), &[], b"");
    assert_eq!(r.status, 201);
    assert_eq!(download_sha(lv.addr, "/api/files/up.bin").2, sha_hex(&data));
    assert_eq!(
        download_sha(lv.addr, "/api/files/keep.bin").2,
        sha_hex(&keep)
    );
}

#[test]
fn a_wrong_declared_file_hash_is_caught_at_finish() {
    let lv = Lanvan::start("filehash", &[]);
    let data = pseudo_random(7, 5000);
    let r = lv.json(
        "POST",
        "/api/uploads",
        &json!({"name": "x.bin", "size": data.len(), "sha256": sha_hex(b"other")}),
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(lv.client().put_chunk(&id, 0, &data).status, 200);
    let r = lv
        .client()
        .send("POST", &format!("/api/uploads/{id}/finish"), &[], b"");
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["error"], "file_hash_mismatch");
    assert!(r.json()["message"].as_str().unwrap().contains("discarded"));
    assert!(files(&lv).is_empty());
    assert!(!lv.data.join("files/x.bin").exists());
    // The bytes can never match the declared hash, so the upload is gone, not stuck.
    assert_eq!(lv.get(&format!("/api/uploads/{id}")).status, 404);
    assert_eq!(lv.status()["open_uploads"], 0);
}

#[test]
fn malformed_requests_get_clear_errors_and_others_are_served() {
    let lv = Lanvan::start("malformed", &["http.max_header_bytes=8KiB"]);
    lv.upload("ok.txt", b"fine");

    let mut c = lv.client();
    let big = "x".repeat(10_000);
    let r = c.send("GET", "/api/files", &[("x-big", &big)], b"");
    assert_eq!(r.status, 431, "{r:?}");
    assert_eq!(r.json()["error"], "header_too_large");

    let mut c = lv.client();
    c.stream().write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    let r = c.read_response(false);
    assert_eq!(r.status, 400);

    let mut c = lv.client();
    c.stream()
        .write_all(b"POST /api/uploads HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response(false).status, 411);

    let r = lv.client().send("POST", "/api/uploads", &[], b"{not json");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_json");
    let r = lv
        .client()
        .send("POST", "/api/uploads", &[], &vec![b' '; 70_000]);
    assert_eq!(r.status, 413);
    let r = lv.json("POST", "/api/uploads", &json!({"name": "n"}));
    assert_eq!(r.status, 400, "size missing");
    assert_eq!(lv.get("/nope").status, 404);
    assert_eq!(lv.get("/api/nope").status, 404);
    assert_eq!(
        lv.client().send("PATCH", "/api/files", &[], b"").status,
        405
    );
    let head = lv.client().send("HEAD", "/api/status", &[], b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    // Several requests on one keep-alive connection.
    let mut c = lv.client();
    for _ in 0..3 {
        let r = c.send("GET", "/api/files/ok.txt", &[], b"");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"fine"[..]));
    }
}

#[test]
fn quota_and_free_space_are_checked_before_accepting() {
    let lv = Lanvan::start("quota", &["store.quota=1MiB"]);
    lv.upload("small.bin", &pseudo_random(1, 300_000));
    let r = lv.json(
        "POST",
        "/api/uploads",
        &json!({"name": "big.bin", "size": 900_000}),
    );
    assert_eq!(r.status, 507, "{r:?}");
    assert_eq!(r.json()["error"], "quota_exceeded");
    assert!(r.json()["message"].as_str().unwrap().contains("quota"));

    let lv = Lanvan::start("space", &[]);
    let r = lv.json(
        "POST",
        "/api/uploads",
        &json!({"name": "huge.bin", "size": 900u64 << 30}),
    );
    assert_eq!(r.status, 507, "{r:?}");
    assert_eq!(r.json()["error"], "no_space");
    let r = lv.json(
        "POST",
        "/api/uploads",
        &json!({"name": "absurd.bin", "size": 1u64 << 60}),
    );
    assert_eq!(r.status, 413);
}

#[test]
fn a_client_that_vanishes_mid_chunk_can_resume() {
    let lv = Lanvan::start("vanish", &["store.chunk_size=64KiB"]);
    let data = pseudo_random(11, 300_000);
    let c = create(&lv, "v.bin", &data);
    let id = c["id"].as_str().unwrap().to_string();
    let chunk = 64 * 1024;
    assert_eq!(lv.client().put_chunk(&id, 0, &data[..chunk]).status, 200);
    {
        // Half of chunk 1, then the connection drops.
        let mut c = lv.client();
        let head = format!(
            "PUT /api/uploads/{id}/chunks/1 HTTP/1.1\r\nx-chunk-sha256: {}\r\ncontent-length: {chunk}\r\n\r\n",
            sha_hex(&data[chunk..2 * chunk])
        );
        c.stream().write_all(head.as_bytes()).unwrap();
        c.stream().write_all(&data[chunk..chunk + 1000]).unwrap();
    }
    assert!(wait_for(5, || missing(&lv, &id) == vec![1, 2, 3, 4]));
    // Creating the same upload again finds it (a page reload picks the same file).
    let r = lv.json(
        "POST",
        "/api/uploads",
        &json!({"name": "v.bin", "size": data.len(), "sha256": sha_hex(&data)}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], id.as_str());
    let mut client = lv.client();
    for i in missing(&lv, &id) {
        let part = chunk_of(&data, chunk, i);
        assert_eq!(client.put_chunk(&id, i, part).status, 200);
    }
    let r = client.send("POST", &format!("/api/uploads/{id}/finish"), &[], b"");
    assert_eq!(r.status, 201);
    assert_eq!(download_sha(lv.addr, "/api/files/v.bin").2, sha_hex(&data));
}

#[test]
fn sigkill_mid_upload_then_resume_after_restart() {
    let lv = Lanvan::start("sigkill", &["store.chunk_size=64KiB"]);
    let data = pseudo_random(12, 64 * 64 * 1024 + 777);
    let c = create(&lv, "precious.bin", &data);
    let id = c["id"].as_str().unwrap().to_string();
    let chunks = c["chunks"].as_u64().unwrap() as u32;
    let chunk = 64 * 1024;

    let sender = {
        let (addr, id, data) = (lv.addr, id.clone(), data.clone());
        std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            for i in 0..chunks {
                let part = chunk_of(&data, chunk, i);
                let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    c.put_chunk(&id, i, part).status
                }));
                if sent.is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    assert!(wait_for(20, || {
        lv.get(&format!("/api/uploads/{id}")).json()["received_chunks"]
            .as_u64()
            .unwrap()
            >= 10
    }));
    let final_path = lv.data.join("files/precious.bin");
    let lv = lv.kill_and_restart();
    let _ = sender.join();
    assert!(!final_path.exists(), "no final-named file before finish");

    let left = missing(&lv, &id);
    assert!(
        !left.is_empty() && left.len() < chunks as usize - 9,
        "{left:?}"
    );
    let mut client = lv.client();
    for i in left {
        let part = chunk_of(&data, chunk, i);
        assert_eq!(client.put_chunk(&id, i, part).status, 200);
        assert!(!final_path.exists());
    }
    let r = client.send("POST", &format!("/api/uploads/{id}/finish"), &[], b"");
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["file"]["sha256"], sha_hex(&data));
    assert_eq!(
        download_sha(lv.addr, "/api/files/precious.bin").2,
        sha_hex(&data)
    );
    // Restarted again, the file is listed with its hash and the upload is gone.
    let lv = lv.kill_and_restart();
    assert_eq!(files(&lv)[0]["sha256"], sha_hex(&data));
    assert_eq!(lv.status()["open_uploads"], 0);
}

/// Runs the box on its own small tmpfs inside a user and mount namespace, so the test can
/// fill the disk without root and without touching the machine's disks.
#[test]
fn a_full_disk_mid_upload_leaves_everything_intact_and_resumable() {
    let probe = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        panic!("this test needs `unshare -rm` with tmpfs mounts (util-linux)");
    }
    let mnt = temp_dir("diskfull", false);
    let script = format!(
        "mount -t tmpfs -o size=8m tmpfs '{}' && exec \"$@\"",
        mnt.display()
    );
    let wrapper = vec![
        "unshare".into(),
        "-rm".into(),
        "sh".into(),
        "-c".into(),
        script,
        "sh".into(),
    ];
    let settings = vec!["store.min_free=0".into(), "store.chunk_size=1MiB".into()];
    let lv = Lanvan::spawn(mnt.join("data"), settings, Some(wrapper));
    let keep = pseudo_random(20, 500_000);
    assert_eq!(lv.upload("keep.bin", &keep).status, 201);

    // More than the disk can ever hold is refused up front.
    let r = lv.json(
        "POST",
        "/api/uploads",
        &json!({"name": "x", "size": 20 << 20}),
    );
    assert_eq!(r.status, 507);
    assert_eq!(r.json()["error"], "no_space");

    let data = pseudo_random(21, 5 << 20);
    let c = create(&lv, "big.bin", &data);
    let id = c["id"].as_str().unwrap().to_string();
    let chunk = 1 << 20;
    let mut client = lv.client();
    for i in 0..2 {
        assert_eq!(
            client
                .put_chunk(&id, i, &data[i as usize * chunk..][..chunk])
                .status,
            200
        );
    }
    // Something else fills the disk behind the box's back.
    let filler = std::path::PathBuf::from(format!("/proc/{}/root", lv.pid()))
        .join(mnt.strip_prefix("/").unwrap())
        .join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0xAAu8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
    }
    let r = client.put_chunk(&id, 2, &data[2 * chunk..][..chunk]);
    assert_eq!(r.status, 507, "{r:?}");
    assert_eq!(r.json()["error"], "disk_full");
    // Everything else is untouched and served.
    assert_eq!(
        download_sha(lv.addr, "/api/files/keep.bin").2,
        sha_hex(&keep)
    );
    assert_eq!(missing(&lv, &id), vec![2, 3, 4]);
    assert!(lv.status()["open_uploads"] == 1);

    // Space comes back; the upload resumes and completes.
    std::fs::remove_file(&filler).unwrap();
    let mut client = lv.client();
    for i in missing(&lv, &id) {
        let part = chunk_of(&data, chunk, i);
        assert_eq!(client.put_chunk(&id, i, part).status, 200);
    }
    let r = client.send("POST", &format!("/api/uploads/{id}/finish"), &[], b"");
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        download_sha(lv.addr, "/api/files/big.bin").2,
        sha_hex(&data)
    );
    drop(lv);
    let _ = std::fs::remove_dir_all(&mnt);
}

/// A 1 GiB upload and download on tmpfs: memory stays flat, bytes come back identical.
#[test]
fn one_gib_upload_keeps_memory_flat() {
    use sha2::Digest as _;
    let data_dir = temp_dir("gib", true);
    let lv = Lanvan::start_in(data_dir, &[]);
    let size: u64 = 1 << 30;
    let r = lv.json(
        "POST",
        "/api/uploads",
        &json!({"name": "big.bin", "size": size}),
    );
    assert_eq!(r.status, 201);
    let c = r.json();
    let id = c["id"].as_str().unwrap().to_string();
    let chunk = c["chunk_size"].as_u64().unwrap() as usize;
    let chunks = c["chunks"].as_u64().unwrap() as u32;
    let idle_rss = lv.status()["rss_bytes"].as_u64().unwrap();

    let mut whole = sha2::Sha256::new();
    let mut buf = vec![0u8; chunk];
    let mut client = lv.client();
    let mut peak_seen = 0;
    for i in 0..chunks {
        let len = (size - u64::from(i) * chunk as u64).min(chunk as u64) as usize;
        fill_pseudo_random(1000 + u64::from(i), &mut buf[..len]);
        whole.update(&buf[..len]);
        assert_eq!(client.put_chunk(&id, i, &buf[..len]).status, 200);
        if i % 128 == 0 {
            peak_seen = peak_seen.max(lv.status()["rss_bytes"].as_u64().unwrap());
        }
    }
    let sha = hex(&whole.finalize());
    let r = client.send("POST", &format!("/api/uploads/{id}/finish"), &[], b"");
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["file"]["sha256"], sha);
    let (status, len, got) = download_sha(lv.addr, "/api/files/big.bin");
    assert_eq!((status, len), (200, size));
    assert_eq!(got, sha);

    let peak = lv.status()["rss_peak_bytes"].as_u64().unwrap();
    eprintln!(
        "1 GiB: idle RSS {} KiB, highest sampled {} KiB, peak {} KiB",
        idle_rss / 1024,
        peak_seen / 1024,
        peak / 1024
    );
    // A few chunk buffers at most, whatever the file size.
    assert!(
        peak < idle_rss + 24 * chunk as u64,
        "peak RSS {peak} grew with the file (idle {idle_rss})"
    );
}

#[test]
fn serves_on_ipv6_too() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine; nothing to check");
        return;
    }
    let lv = Lanvan::start("ipv6", &["listen=[::1]:0"]);
    assert!(lv.addr.is_ipv6(), "{}", lv.addr);
    assert_eq!(lv.upload("six.txt", b"over v6").status, 201);
    assert_eq!(lv.get("/api/files/six.txt").body, b"over v6");
}

#[test]
fn anonymous_uploads_of_the_same_name_and_size_never_mix() {
    let lv = Lanvan::start("anon", &[]);
    let a = lv.json("POST", "/api/uploads", &json!({"name": "n.txt", "size": 5}));
    let b = lv.json("POST", "/api/uploads", &json!({"name": "n.txt", "size": 5}));
    assert_eq!((a.status, b.status), (201, 201));
    assert_ne!(a.json()["id"], b.json()["id"]);
    // With a device id the same sender resumes its own upload.
    let body = json!({"name": "m.txt", "size": 5, "device_id": "phone-1"});
    let c = lv.json("POST", "/api/uploads", &body);
    let d = lv.json("POST", "/api/uploads", &body);
    assert_eq!((c.status, d.status), (201, 200));
    assert_eq!(c.json()["id"], d.json()["id"]);
}

/// A chunk whose bytes on disk no longer match its journal record (as after a power cut)
/// is asked for again after a restart instead of ending up in the file.
#[test]
fn a_restart_rechecks_stored_chunks_against_their_hashes() {
    let lv = Lanvan::start("recheck", &["store.chunk_size=64KiB"]);
    let data = pseudo_random(31, 4 * 64 * 1024);
    let c = create(&lv, "r.bin", &data);
    let id = c["id"].as_str().unwrap().to_string();
    let mut client = lv.client();
    for i in 0..3 {
        assert_eq!(
            client
                .put_chunk(&id, i, chunk_of(&data, 64 * 1024, i))
                .status,
            200
        );
    }
    let mut lv = lv;
    lv.child.kill().unwrap();
    lv.child.wait().unwrap();
    // Damage chunk 1 on disk.
    let part = lv.data.join(format!(".lanvan/uploads/{id}.part"));
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[64 * 1024 + 5] ^= 0xFF;
    std::fs::write(&part, bytes).unwrap();
    let lv = lv.kill_and_restart();
    assert_eq!(missing(&lv, &id), vec![1, 3]);
    let mut client = lv.client();
    for i in [1, 3] {
        assert_eq!(
            client
                .put_chunk(&id, i, chunk_of(&data, 64 * 1024, i))
                .status,
            200
        );
    }
    let r = client.send("POST", &format!("/api/uploads/{id}/finish"), &[], b"");
    assert_eq!(r.status, 201);
    assert_eq!(download_sha(lv.addr, "/api/files/r.bin").2, sha_hex(&data));
}

#[test]
fn a_file_changed_by_hand_is_hashed_again_at_start() {
    let lv = Lanvan::start("rehash", &[]);
    lv.upload("doc.txt", b"first version");
    let mut lv = lv;
    lv.child.kill().unwrap();
    lv.child.wait().unwrap();
    // Same size, other bytes, written later; and a file dropped into the folder by hand.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    std::fs::write(lv.data.join("files/doc.txt"), b"other version").unwrap();
    std::fs::write(lv.data.join("files/dropped.txt"), b"by hand").unwrap();
    let lv = lv.kill_and_restart();
    let list = files(&lv);
    let doc = list.iter().find(|f| f["name"] == "doc.txt").unwrap();
    assert_eq!(doc["sha256"], sha_hex(b"other version"));
    let dropped = list.iter().find(|f| f["name"] == "dropped.txt").unwrap();
    assert_eq!(dropped["sha256"], sha_hex(b"by hand"));
}

/// Chunks may come in any order and over several connections at once (a browser sends
/// several at a time); the stored file and its hash are the same.
#[test]
fn chunks_in_any_order_and_in_parallel_make_the_same_file() {
    let lv = Lanvan::start("order", &["store.chunk_size=64KiB"]);
    let chunk = 64 * 1024;
    let data = pseudo_random(41, 40 * chunk + 99);
    let c = create(&lv, "ordered.bin", &data);
    let id = c["id"].as_str().unwrap().to_string();
    let chunks = c["chunks"].as_u64().unwrap() as u32;
    // Odd chunks backwards on one connection, even chunks forwards on three at once.
    let mut client = lv.client();
    for i in (0..chunks).rev().filter(|i| i % 2 == 1) {
        assert_eq!(
            client.put_chunk(&id, i, chunk_of(&data, chunk, i)).status,
            200
        );
    }
    std::thread::scope(|s| {
        for lane in 0..3u32 {
            let (addr, id, data) = (lv.addr, &id, &data);
            s.spawn(move || {
                let mut client = Client::connect(addr);
                for i in (0..chunks).filter(|i| i % 2 == 0 && (i / 2) % 3 == lane) {
                    assert_eq!(
                        client.put_chunk(id, i, chunk_of(data, chunk, i)).status,
                        200
                    );
                }
            });
        }
    });
    let r = client.send("POST", &format!("/api/uploads/{id}/finish"), &[], b"");
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["file"]["sha256"], sha_hex(&data));
    assert_eq!(
        download_sha(lv.addr, "/api/files/ordered.bin").2,
        sha_hex(&data)
    );
}

/// Random bytes, truncated heads and absurd headers on many connections at once: each gets
/// an error or a closed socket, and the box keeps serving everyone else.
#[test]
fn garbage_never_takes_the_box_down() {
    let lv = Lanvan::start("garbage", &[]);
    let keep = pseudo_random(51, 70_000);
    lv.upload("keep.bin", &keep);
    let heads: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\ncontent-length: -5\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n".to_vec(),
        b"PUT /api/uploads/x/chunks/99999999999 HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc".to_vec(),
        b"GET /api/files/%ZZ HTTP/1.1\r\n\r\n".to_vec(),
        b"GET /api/files/%C3%28 HTTP/1.1\r\n\r\n".to_vec(),
        b"\r\n\r\n\r\n".to_vec(),
        b"GET /ws/a HTTP/1.1\r\nupgrade: websocket\r\n\r\n".to_vec(),
        b"POST /api/uploads HTTP/1.1\r\ncontent-length: 10\r\n\r\n{\"name\":".to_vec(),
        format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000)).into_bytes(),
        (0..64)
            .flat_map(|i| format!("h{i}: v\r\n").into_bytes())
            .collect(),
    ];
    std::thread::scope(|s| {
        for (i, head) in heads.iter().enumerate() {
            let addr = lv.addr;
            s.spawn(move || {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(std::time::Duration::from_secs(15)))
                    .unwrap();
                let _ = c.write_all(head);
                let _ = c.write_all(&pseudo_random(i as u64, 3000));
                let _ = c.shutdown(std::net::Shutdown::Write);
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(&mut c, &mut sink);
                if !sink.is_empty() {
                    assert!(sink.starts_with(b"HTTP/1.1 "), "{:?}", &sink[..20]);
                }
            });
        }
        for seed in 0..20u64 {
            let addr = lv.addr;
            s.spawn(move || {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(std::time::Duration::from_secs(15)))
                    .unwrap();
                let _ = c.write_all(&pseudo_random(seed + 100, 5000));
                let _ = c.shutdown(std::net::Shutdown::Write);
                let _ = std::io::Read::read_to_end(&mut c, &mut Vec::new());
            });
        }
    });
    assert_eq!(
        download_sha(lv.addr, "/api/files/keep.bin").2,
        sha_hex(&keep)
    );
    assert_eq!(lv.status()["connections"], 1);
}
