//! End-to-end tests of the chunk protocol's box side against the real binary: a stored
//! file's manifest over HTTP (checked against one computed here from the bytes), its cache
//! across restarts and deletes, and the tracker on `/ws` (announce, query, limits).

mod common;

use common::relay::{self, Ev};
use common::{pseudo_random, Lanvan};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

const CHUNK: usize = 262_144;

/// The manifest of `data` as SPEC8 §1 defines it, computed without the box's code.
fn expected_manifest(name: &str, data: &[u8]) -> Value {
    let chunks: Vec<[u8; 32]> = data
        .chunks(CHUNK)
        .map(|c| Sha256::digest(c).into())
        .collect();
    let mut h = Sha256::new();
    h.update(b"lanvan-manifest-v1");
    h.update((data.len() as u64).to_be_bytes());
    h.update((CHUNK as u32).to_be_bytes());
    for c in &chunks {
        h.update(c);
    }
    json!({
        "manifest": common::hex(&h.finalize()),
        "name": name,
        "size": data.len(),
        "chunk_size": CHUNK,
        "sha256": common::sha_hex(data),
        "chunks": chunks.iter().map(|c| common::hex(c)).collect::<Vec<_>>(),
    })
}

fn store(lv: &Lanvan, name: &str, data: &[u8]) {
    let r = lv.upload(name, data);
    assert!(matches!(r.status, 200 | 201), "{r:?}");
    assert_eq!(r.json()["file"]["name"], name);
}

fn cache_files(data_dir: &Path) -> Vec<String> {
    let dir = data_dir.join(".lanvan/manifests");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

struct Peer {
    ws: WebSocket<TcpStream>,
    backlog: Vec<Value>,
}

impl Peer {
    fn open(addr: SocketAddr, id: &str, p2p: bool) -> Peer {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let url = format!("ws://{addr}/ws/{id}?name=Name-{id}");
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("websocket upgrade");
        let mut p = Peer {
            ws,
            backlog: Vec::new(),
        };
        p.next("welcome");
        if p2p {
            p.send(json!({"type": "enable_p2p"}));
            p.next("p2p_enabled");
        }
        p
    }

    fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).unwrap();
    }

    fn next(&mut self, ty: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(i) = self.backlog.iter().position(|v| v["type"] == ty) {
                return self.backlog.remove(i);
            }
            match relay::read(&mut self.ws, deadline) {
                Some(Ev::Json(v)) => self.backlog.push(v),
                Some(Ev::Chunk(..)) => {}
                Some(Ev::Gone) => panic!("socket closed waiting for {ty}"),
                None => panic!("no {ty}; got {:?}", self.backlog),
            }
        }
    }

    fn error(&mut self, code: &str, ref_type: &str) {
        let e = self.next("error");
        assert_eq!(
            (e["code"].as_str(), e["ref_type"].as_str()),
            (Some(code), Some(ref_type)),
            "{e}"
        );
    }

    fn query(&mut self, manifest: &str) -> Value {
        self.send(json!({"type": "query", "manifest": manifest}));
        let r = self.next("query_result");
        assert_eq!(r["manifest"], manifest);
        r
    }
}

#[test]
fn manifest_of_a_stored_file_matches_its_bytes_and_is_kept_on_disk() {
    let lv = Lanvan::start("chunks-manifest", &[]);
    let data = pseudo_random(8, 3 * CHUNK + 12_345);
    store(&lv, "big.bin", &data);
    let want = expected_manifest("big.bin", &data);
    let id = want["manifest"].as_str().unwrap().to_string();

    // Not computed yet: the tracker says the box does not have it, and asking computes nothing.
    let mut a = Peer::open(lv.addr, "a", false);
    assert_eq!(a.query(&id)["box"], false);
    assert!(cache_files(&lv.data).is_empty());

    let r = lv.get("/api/files/big.bin/manifest");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), want);
    assert_eq!(r.json()["chunks"].as_array().unwrap().len(), 4);
    assert_eq!(a.query(&id)["box"], true);
    let files = cache_files(&lv.data);
    assert_eq!(files.len(), 1);
    assert!(files[0].contains(&id), "{files:?}");

    // An empty file has no chunks.
    store(&lv, "empty.txt", b"");
    let r = lv.get("/api/files/empty.txt/manifest");
    assert_eq!(r.json(), expected_manifest("empty.txt", b""));

    let r = lv.get("/api/files/nope.bin/manifest");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "file_not_found");

    // After a restart the box still knows the manifest without being asked to compute it,
    // and the cache file is the same one, untouched.
    let cache = lv.data.join(".lanvan/manifests").join(&files[0]);
    let written = std::fs::metadata(&cache).unwrap().modified().unwrap();
    drop(a);
    let lv = lv.kill_and_restart();
    let mut a = Peer::open(lv.addr, "a", false);
    assert_eq!(a.query(&id)["box"], true);
    assert_eq!(lv.get("/api/files/big.bin/manifest").json(), want);
    assert_eq!(
        std::fs::metadata(&cache).unwrap().modified().unwrap(),
        written
    );

    // Deleted: the box no longer offers it, and the cache file goes.
    assert_eq!(
        lv.client()
            .send("DELETE", "/api/files/big.bin", &[], b"")
            .status,
        204
    );
    assert_eq!(a.query(&id)["box"], false);
    assert!(!cache.exists());
    assert_eq!(lv.get("/api/files/big.bin/manifest").status, 404);

    // A new upload under the same name gets the manifest of its own bytes.
    let other = pseudo_random(9, CHUNK + 1);
    store(&lv, "big.bin", &other);
    let r = lv.get("/api/files/big.bin/manifest");
    assert_eq!(r.json(), expected_manifest("big.bin", &other));
}

#[test]
fn announce_and_query_between_devices() {
    let lv = Lanvan::start("chunks-tracker", &["p2p.max_announced=3"]);
    let m1 = common::sha_hex(b"one");
    let m2 = common::sha_hex(b"two");
    let mut a = Peer::open(lv.addr, "a", true);
    let mut b = Peer::open(lv.addr, "b", true);
    let mut c = Peer::open(lv.addr, "c", false);

    a.send(json!({"type": "announce", "manifests": [m1, m2]}));
    assert_eq!(a.next("announced")["count"], 2);
    // Only a P2P-enabled device may announce.
    c.send(json!({"type": "announce", "manifests": [m1]}));
    c.error("p2p_not_enabled", "announce");

    let r = b.query(&m1);
    assert_eq!(r["sources"], json!([{"device_id": "a", "name": "Name-a"}]));
    assert_eq!(r["box"], false);
    assert_eq!(
        c.query(&m2)["sources"],
        json!([{"device_id": "a", "name": "Name-a"}])
    );
    // Never the asker itself.
    assert_eq!(a.query(&m1)["sources"], json!([]));

    // Limits and bad input are errors, and the socket keeps working.
    let many: Vec<String> = (0..4u8).map(|i| common::sha_hex(&[i])).collect();
    a.send(json!({"type": "announce", "manifests": many}));
    a.error("too_many", "announce");
    a.send(json!({"type": "announce", "manifests": ["not-hex"]}));
    a.error("bad_message", "announce");
    b.send(json!({"type": "query", "manifest": "ABC"}));
    b.error("bad_message", "query");
    assert_eq!(b.query(&m1)["sources"].as_array().unwrap().len(), 1);

    // A swarm request carries its purpose and manifest to the other side.
    b.send(json!({"type": "p2p_request", "to": "a", "purpose": "swarm", "manifest": m1}));
    let got = a.next("p2p_request_received");
    assert_eq!(
        (got["purpose"].as_str(), got["manifest"].as_str()),
        (Some("swarm"), Some(m1.as_str()))
    );

    // Disabling P2P forgets a's set; so does its socket going.
    a.send(json!({"type": "disable_p2p"}));
    a.next("p2p_disabled");
    assert_eq!(b.query(&m1)["sources"], json!([]));
    a.send(json!({"type": "enable_p2p"}));
    a.next("p2p_enabled");
    a.send(json!({"type": "announce", "manifests": [m1]}));
    a.next("announced");
    assert_eq!(b.query(&m1)["sources"].as_array().unwrap().len(), 1);
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b.query(&m1)["sources"].as_array().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "a's announce outlived its socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
