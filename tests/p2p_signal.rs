//! End-to-end tests of P2P signaling and STUN against the real binary: the seed protocol's
//! request/accept/signal/established flow over real WebSockets, decline, refused pairings,
//! bad and oversized signals, cleanup when a socket drops, the signaling timeout, family
//! signaling on `/signal`, `p2p.mode = off`, and the STUN binding responder over UDP.

mod common;

use common::relay::{self, Ev, Ws};
use common::Lanvan;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// One client socket and the frames it has read but not yet looked at.
struct Peer {
    ws: Ws,
    backlog: Vec<Value>,
}

impl Peer {
    fn open(addr: SocketAddr, path: &str) -> Peer {
        let stream = TcpStream::connect(addr).unwrap();
        let url = format!("ws://{addr}{path}");
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("websocket upgrade");
        Peer {
            ws,
            backlog: Vec::new(),
        }
    }

    /// A device on `/ws/{id}` with P2P enabled; returns it and its welcome.
    fn device(lv: &Lanvan, id: &str) -> (Peer, Value) {
        let mut p = Peer::open(lv.addr, &format!("/ws/{id}?name=Name-{id}"));
        let welcome = p.next("welcome");
        p.send(json!({"type": "enable_p2p", "device_id": id, "device_name": format!("Name-{id}")}));
        p.next("p2p_enabled");
        (p, welcome)
    }

    fn send(&mut self, v: Value) {
        relay::send_json(&mut self.ws, v);
    }

    /// Reads frames for up to `wait` into the backlog. False once the socket is closed.
    fn pump(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            match relay::read(&mut self.ws, deadline) {
                Some(Ev::Json(v)) => self.backlog.push(v),
                Some(Ev::Chunk(..)) => {}
                Some(Ev::Gone) => return false,
                None => return true,
            }
        }
    }

    /// The first frame of type `ty` (earlier frames of other types stay in the backlog).
    fn next(&mut self, ty: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(i) = self.backlog.iter().position(|v| v["type"] == ty) {
                return self.backlog.remove(i);
            }
            assert!(Instant::now() < deadline, "no {ty}; got {:?}", self.backlog);
            self.pump(Duration::from_millis(50));
        }
    }

    /// The next error reply, which must have `code`.
    fn error(&mut self, code: &str) -> Value {
        let e = self.next("error");
        assert_eq!(e["code"], code, "{e}");
        e
    }

    /// Frames of any of `types` that arrive within `wait` (to show nothing came).
    fn got_any(&mut self, types: &[&str], wait: Duration) -> Vec<Value> {
        self.pump(wait);
        self.backlog
            .iter()
            .filter(|v| types.iter().any(|t| v["type"] == *t))
            .cloned()
            .collect()
    }
}

const SIGNALS: &[&str] = &[
    "webrtc_offer",
    "webrtc_answer",
    "webrtc_ice_candidate",
    "ice_candidate",
    "p2p_request_received",
    "p2p_connection_established",
];

/// A browser's offer, as big as a real one with a few candidates in it.
fn sdp(kind: &str) -> Value {
    let mut text = format!("v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:{kind}\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 ");
    text.push_str(&"AB:".repeat(31));
    text.push_str("CD\r\na=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\n");
    json!({"type": kind, "sdp": text})
}

/// a asks b, b accepts; returns the request id after both saw `webrtc_handshake_start`.
fn accepted(a: &mut Peer, b: &mut Peer) -> String {
    a.send(json!({"type": "p2p_request", "from": "a", "to": "b"}));
    let r = b.next("p2p_request_received")["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.send(json!({"type": "p2p_accept", "from": "a", "to": "b"}));
    a.next("webrtc_handshake_start");
    b.next("webrtc_handshake_start");
    r
}

#[test]
fn request_accept_signal_and_establish_between_two_real_sockets() {
    let lv = Lanvan::start("p2p-flow", &[]);
    let (mut a, welcome) = Peer::device(&lv, "a");
    let p2p = &welcome["p2p"];
    assert_eq!(p2p["mode"], "hybrid");
    assert!(p2p["stun_port"].as_u64().is_some_and(|p| p > 0), "{p2p}");
    assert_eq!(p2p["chunk_size"], 262144);
    assert_eq!(p2p["signal_timeout_ms"], 60000);
    let (mut b, _) = Peer::device(&lv, "b");
    let (mut c, _) = Peer::device(&lv, "c");
    // Lists come as devices opt in; the latest names all three.
    while a.next("p2p_devices_update")["devices"]
        .as_array()
        .unwrap()
        .len()
        < 3
    {}

    a.send(json!({"type": "p2p_request", "from": "a", "to": "b"}));
    let got = b.next("p2p_request_received");
    let r = got["request_id"].as_str().unwrap().to_owned();
    assert_eq!(
        got,
        json!({"type": "p2p_request_received", "from": "a", "from_name": "Name-a",
               "request_id": r})
    );
    assert_eq!(a.next("p2p_request_sent")["request_id"], r.as_str());

    b.send(json!({"type": "p2p_accept", "from": "a", "to": "b"}));
    assert_eq!(
        a.next("p2p_connection_accepted"),
        json!({"type": "p2p_connection_accepted", "to": "b", "start_webrtc": true,
               "request_id": r})
    );
    assert_eq!(
        b.next("p2p_request_accepted"),
        json!({"type": "p2p_request_accepted", "from": "a", "start_webrtc": true,
               "request_id": r})
    );
    assert_eq!(
        a.next("webrtc_handshake_start"),
        json!({"type": "webrtc_handshake_start", "is_initiator": true,
               "peer_device_id": "b", "request_id": r})
    );
    assert_eq!(
        b.next("webrtc_handshake_start"),
        json!({"type": "webrtc_handshake_start", "is_initiator": false,
               "peer_device_id": "a", "request_id": r})
    );

    // Request-scoped signals both ways, then the older form.
    let offer = sdp("offer");
    a.send(
        json!({"type": "webrtc_signal", "signal_type": "offer", "target_device_id": "b",
                  "request_id": r, "offer": offer}),
    );
    assert_eq!(
        b.next("webrtc_offer"),
        json!({"type": "webrtc_offer", "from_device_id": "a", "request_id": r,
               "offer": offer})
    );
    let answer = sdp("answer");
    b.send(
        json!({"type": "webrtc_signal", "signal_type": "answer", "target_device_id": "a",
                  "request_id": r, "answer": answer}),
    );
    assert_eq!(a.next("webrtc_answer")["answer"], answer);
    for i in 0..20 {
        let cand = json!({"candidate": format!("candidate:{i} 1 udp 1686052607 127.0.0.1 {} typ srflx raddr 0.0.0.0 rport 0", 50000 + i),
                          "sdpMid": "0", "sdpMLineIndex": 0});
        a.send(
            json!({"type": "webrtc_signal", "signal_type": "ice_candidate",
                      "target_device_id": "b", "request_id": r, "candidate": cand}),
        );
        assert_eq!(
            b.next("webrtc_ice_candidate"),
            json!({"type": "webrtc_ice_candidate", "from_device_id": "a", "request_id": r,
                   "candidate": cand})
        );
    }
    b.send(json!({"type": "ice_candidate", "candidate": "cand-b", "target": "a", "from": "b"}));
    assert_eq!(
        a.next("ice_candidate"),
        json!({"type": "ice_candidate", "candidate": "cand-b", "from": "b"})
    );
    a.send(json!({"type": "webrtc_offer", "offer": "O", "target": "b", "from": "a"}));
    assert_eq!(
        b.next("webrtc_offer"),
        json!({"type": "webrtc_offer", "offer": "O", "from": "a"})
    );
    b.send(json!({"type": "webrtc_answer", "answer": "A", "target": "a", "from": "b"}));
    assert_eq!(
        a.next("webrtc_answer"),
        json!({"type": "webrtc_answer", "answer": "A", "from": "b"})
    );

    a.send(
        json!({"type": "p2p_connection_established", "request_id": r,
                  "peer_device_id": "b"}),
    );
    assert_eq!(
        a.next("p2p_connection_established"),
        json!({"type": "p2p_connection_established", "request_id": r,
               "peer_device_id": "b", "peer_name": "Name-b"})
    );
    assert_eq!(
        b.next("p2p_connection_established"),
        json!({"type": "p2p_connection_established", "request_id": r,
               "peer_device_id": "a", "peer_name": "Name-a"})
    );
    assert!(c.got_any(SIGNALS, Duration::from_millis(300)).is_empty());
    let status = lv.get("/api/status").json();
    assert_eq!(status["p2p_sessions"], 1);
    assert_eq!(status["p2p"], *p2p);
}

#[test]
fn decline_reaches_the_requester_and_ends_the_request() {
    let lv = Lanvan::start("p2p-decline", &[]);
    let (mut a, _) = Peer::device(&lv, "a");
    let (mut b, _) = Peer::device(&lv, "b");
    a.send(json!({"type": "p2p_request", "from": "a", "to": "b"}));
    let r = b.next("p2p_request_received")["request_id"].clone();
    b.send(json!({"type": "p2p_decline", "from": "a", "to": "b"}));
    assert_eq!(
        a.next("p2p_request_declined"),
        json!({"type": "p2p_request_declined", "from": "b", "request_id": r})
    );
    assert!(b
        .got_any(&["p2p_request_declined"], Duration::from_millis(200))
        .is_empty());
    b.send(json!({"type": "p2p_accept", "from": "a", "to": "b"}));
    b.error("no_request");
    a.send(json!({"type": "webrtc_offer", "offer": "O", "target": "b", "from": "a"}));
    a.error("no_session");
    assert_eq!(lv.get("/api/status").json()["p2p_sessions"], 0);
}

#[test]
fn signals_between_devices_without_a_live_request_are_refused() {
    let lv = Lanvan::start("p2p-pairing", &[]);
    let (mut a, _) = Peer::device(&lv, "a");
    let (mut b, _) = Peer::device(&lv, "b");
    let (mut c, _) = Peer::device(&lv, "c");
    // Before any request: nothing passes, in either form.
    a.send(json!({"type": "webrtc_offer", "offer": "O", "target": "b", "from": "a"}));
    a.error("no_session");
    a.send(
        json!({"type": "webrtc_signal", "signal_type": "offer", "target_device_id": "b",
                  "request_id": "p2p-1", "offer": "O"}),
    );
    a.error("no_session");

    let r = accepted(&mut a, &mut b);
    // c borrows a–b's request id to reach b, a uses it to reach c, c speaks for a.
    c.send(
        json!({"type": "webrtc_signal", "signal_type": "offer", "target_device_id": "b",
                  "request_id": r, "offer": "O"}),
    );
    let e = c.error("no_session");
    assert!(e["message"].as_str().unwrap().contains(&r), "{e}");
    assert_eq!(e["ref_type"], "webrtc_signal");
    a.send(
        json!({"type": "webrtc_signal", "signal_type": "ice_candidate",
                  "target_device_id": "c", "request_id": r, "candidate": "x"}),
    );
    a.error("no_session");
    c.send(json!({"type": "ice_candidate", "candidate": "x", "target": "b", "from": "a"}));
    c.error("wrong_device");
    c.send(
        json!({"type": "p2p_connection_established", "request_id": r,
                  "peer_device_id": "b"}),
    );
    c.error("no_session");
    assert!(b.got_any(SIGNALS, Duration::from_millis(300)).is_empty());
    assert!(c.got_any(SIGNALS, Duration::from_millis(1)).is_empty());
    // The refusals closed nobody: the right pair still signals.
    a.send(
        json!({"type": "webrtc_signal", "signal_type": "offer", "target_device_id": "b",
                  "request_id": r, "offer": "O"}),
    );
    assert_eq!(b.next("webrtc_offer")["request_id"], r.as_str());
}

#[test]
fn malformed_and_oversized_signals_get_errors_and_the_socket_stays() {
    let lv = Lanvan::start(
        "p2p-bad",
        &["p2p.max_sdp_bytes=2KiB", "p2p.max_candidate_bytes=300"],
    );
    let (mut a, _) = Peer::device(&lv, "a");
    let (mut b, _) = Peer::device(&lv, "b");
    let r = accepted(&mut a, &mut b);
    let big = "x".repeat(3000);
    a.send(
        json!({"type": "webrtc_signal", "signal_type": "offer", "target_device_id": "b",
                  "request_id": r, "offer": {"type": "offer", "sdp": big}}),
    );
    let e = a.error("too_large");
    assert!(e["message"].as_str().unwrap().contains("2048"), "{e}");
    a.send(json!({"type": "ice_candidate", "candidate": "c".repeat(400), "target": "b"}));
    a.error("too_large");
    a.send(
        json!({"type": "webrtc_signal", "signal_type": "shout", "target_device_id": "b",
                  "request_id": r, "offer": "O"}),
    );
    a.error("bad_signal");
    a.send(
        json!({"type": "webrtc_signal", "signal_type": "offer", "target_device_id": "b",
                  "request_id": r}),
    );
    a.error("missing_field");
    a.ws.send(tungstenite::Message::Text(
        "{\"type\":\"webrtc_signal\",".into(),
    ))
    .unwrap();
    a.error("bad_json");
    assert!(b.got_any(SIGNALS, Duration::from_millis(300)).is_empty());
    // Still open and still paired.
    a.send(
        json!({"type": "webrtc_signal", "signal_type": "offer", "target_device_id": "b",
                  "request_id": r, "offer": sdp("offer")}),
    );
    assert_eq!(b.next("webrtc_offer")["from_device_id"], "a");
}

#[test]
fn a_dropped_socket_ends_its_sessions_and_the_peers_are_told() {
    let lv = Lanvan::start("p2p-drop", &[]);
    let (mut a, _) = Peer::device(&lv, "a");
    let (mut b, _) = Peer::device(&lv, "b");
    let (mut c, _) = Peer::device(&lv, "c");
    let ab = accepted(&mut a, &mut b);
    a.send(
        json!({"type": "p2p_connection_established", "request_id": ab,
                  "peer_device_id": "b"}),
    );
    b.next("p2p_connection_established");
    c.send(json!({"type": "p2p_request", "from": "c", "to": "a"}));
    let ca = a.next("p2p_request_received")["request_id"].clone();
    assert_eq!(lv.get("/api/status").json()["p2p_sessions"], 2);

    // a's TCP connection goes away without a close frame.
    a.ws.get_ref().shutdown(std::net::Shutdown::Both).unwrap();
    drop(a);
    let closed = b.next("p2p_connection_closed");
    assert_eq!(
        (
            &closed["request_id"],
            &closed["peer_device_id"],
            &closed["reason"]
        ),
        (&json!(ab), &json!("a"), &json!("peer_left"))
    );
    let failed = c.next("p2p_connection_failed");
    assert_eq!(
        (&failed["request_id"], &failed["reason"]),
        (&ca, &json!("peer_left"))
    );
    // The list without a arrives (older lists may still be queued before it).
    while b.next("p2p_devices_update")["devices"]
        .to_string()
        .contains("\"a\"")
    {}
    assert_eq!(lv.get("/api/status").json()["p2p_sessions"], 0);
    b.send(
        json!({"type": "webrtc_signal", "signal_type": "ice_candidate",
                  "target_device_id": "a", "request_id": ab, "candidate": "late"}),
    );
    b.error("no_session");
}

#[test]
fn signaling_that_stalls_fails_after_the_configured_timeout() {
    let lv = Lanvan::start("p2p-timeout", &["p2p.signal_timeout_secs=1"]);
    let (mut a, welcome) = Peer::device(&lv, "a");
    assert_eq!(welcome["p2p"]["signal_timeout_ms"], 1000);
    let (mut b, _) = Peer::device(&lv, "b");
    let started = Instant::now();
    let r = accepted(&mut a, &mut b);
    let want = json!({"type": "p2p_connection_failed", "request_id": r,
                      "message": "WebRTC signaling timeout", "reason": "signaling_timeout"});
    assert_eq!(a.next("p2p_connection_failed"), want);
    assert_eq!(b.next("p2p_connection_failed"), want);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "failed after {took:?}");
    a.send(
        json!({"type": "webrtc_signal", "signal_type": "offer", "target_device_id": "b",
                  "request_id": r, "offer": "O"}),
    );
    a.error("no_session");
}

#[test]
fn families_signal_within_themselves_on_slash_signal() {
    let lv = Lanvan::start("p2p-family", &[]);
    let register = |family: &str, device: &str| {
        let mut p = Peer::open(lv.addr, "/signal");
        p.send(
            json!({"type": "register", "familyId": family, "userId": "u1",
                      "deviceId": device}),
        );
        p.next("registered");
        p
    };
    let mut phone = register("fam-1", "phone");
    let mut tablet = register("fam-1", "tablet");
    assert_eq!(
        phone.next("device-online"),
        json!({"type": "device-online", "familyId": "fam-1", "deviceId": "tablet"})
    );
    assert_eq!(
        tablet.next("device-online"),
        json!({"type": "device-online", "familyId": "fam-1", "deviceId": "phone"})
    );
    let mut stranger = register("fam-2", "laptop");

    phone.send(
        json!({"type": "offer", "familyId": "fam-1", "toDeviceId": "tablet",
                      "sdp": "v=0 offer"}),
    );
    assert_eq!(
        tablet.next("offer"),
        json!({"type": "offer", "fromDeviceId": "phone", "sdp": "v=0 offer"})
    );
    tablet.send(
        json!({"type": "answer", "familyId": "fam-1", "toDeviceId": "phone",
                       "sdp": "v=0 answer"}),
    );
    assert_eq!(
        phone.next("answer"),
        json!({"type": "answer", "fromDeviceId": "tablet", "sdp": "v=0 answer"})
    );
    let cand = json!({"candidate": "candidate:1 1 udp 1 10.0.0.2 9 typ host", "sdpMid": "0"});
    phone.send(
        json!({"type": "ice-candidate", "familyId": "fam-1", "toDeviceId": "tablet",
                      "candidate": cand}),
    );
    assert_eq!(
        tablet.next("ice-candidate"),
        json!({"type": "ice-candidate", "fromDeviceId": "phone", "candidate": cand})
    );
    // Nothing crosses families.
    phone.send(
        json!({"type": "offer", "familyId": "fam-1", "toDeviceId": "laptop",
                      "sdp": "x"}),
    );
    phone.error("device_not_found");
    phone.send(
        json!({"type": "offer", "familyId": "fam-2", "toDeviceId": "laptop",
                      "sdp": "x"}),
    );
    phone.error("wrong_family");
    assert!(stranger
        .got_any(&["offer", "device-online"], Duration::from_millis(300))
        .is_empty());
    assert_eq!(lv.get("/api/status").json()["families"], 2);

    drop(tablet);
    assert_eq!(
        phone.next("device-offline"),
        json!({"type": "device-offline", "familyId": "fam-1", "deviceId": "tablet"})
    );
}

#[test]
fn mode_off_hides_p2p_and_opens_no_stun_socket() {
    let lv = Lanvan::start("p2p-off", &["p2p.mode=off"]);
    let mut a = Peer::open(lv.addr, "/ws/a");
    let welcome = a.next("welcome");
    assert_eq!(
        welcome["p2p"],
        json!({"mode": "off", "stun_port": null, "chunk_size": 262144,
               "signal_timeout_ms": 60000, "box_peer": false})
    );
    a.send(json!({"type": "enable_p2p"}));
    assert!(a.error("p2p_unavailable")["message"]
        .as_str()
        .unwrap()
        .contains("off"));
    assert_eq!(
        lv.get("/api/status").json()["p2p"]["stun_port"],
        Value::Null
    );
    let stream = TcpStream::connect(lv.addr).unwrap();
    let refused = tungstenite::client(format!("ws://{}/signal", lv.addr).as_str(), stream);
    assert!(refused.is_err(), "no /signal when P2P is off");
    let lines: Vec<String> = lv.log.try_iter().collect();
    assert!(
        !lines.iter().any(|l| l.contains("STUN on udp")),
        "{lines:?}"
    );
}

/// A Binding request (RFC 5389): type 0x0001, no attributes, the magic cookie, `tid`.
fn binding_request(tid: [u8; 12]) -> Vec<u8> {
    let mut p = vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    p.extend_from_slice(&tid);
    p
}

/// The XOR-MAPPED-ADDRESS of a Binding success response for `tid`, decoded by hand
/// (RFC 5389 §15.2: the port and an IPv4 address are XORed with the magic cookie, an IPv6
/// address with the cookie and the transaction id).
fn mapped_address(reply: &[u8], tid: [u8; 12]) -> SocketAddr {
    assert_eq!(reply[..2], [0x01, 0x01], "binding success");
    assert_eq!(reply[8..20], tid, "transaction id echoed");
    let mut at = 20;
    while at + 4 <= reply.len() {
        let ty = u16::from_be_bytes([reply[at], reply[at + 1]]);
        let len = u16::from_be_bytes([reply[at + 2], reply[at + 3]]) as usize;
        let v = &reply[at + 4..at + 4 + len];
        if ty == 0x0020 {
            let port = u16::from_be_bytes([v[2], v[3]]) ^ 0x2112;
            let key: Vec<u8> = [0x21, 0x12, 0xA4, 0x42]
                .iter()
                .chain(&tid)
                .copied()
                .collect();
            return match v[1] {
                0x01 => {
                    let ip: [u8; 4] = std::array::from_fn(|i| v[4 + i] ^ key[i]);
                    SocketAddr::new(ip.into(), port)
                }
                0x02 => {
                    let ip: [u8; 16] = std::array::from_fn(|i| v[4 + i] ^ key[i]);
                    SocketAddr::new(ip.into(), port)
                }
                f => panic!("address family {f}"),
            };
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    panic!("no XOR-MAPPED-ADDRESS in {reply:?}");
}

#[test]
fn stun_answers_with_the_clients_own_address_and_survives_garbage() {
    let lv = Lanvan::start("p2p-stun", &[]);
    let port = lv.get("/api/status").json()["p2p"]["stun_port"]
        .as_u64()
        .expect("a STUN port") as u16;
    let stun: SocketAddr = ([127, 0, 0, 1], port).into();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 1500];
    let ask = |tid: [u8; 12], buf: &mut [u8]| -> SocketAddr {
        // UDP may drop on a loaded machine: ask again, as a browser would.
        for _ in 0..5 {
            client.send_to(&binding_request(tid), stun).unwrap();
            if let Ok((n, from)) = client.recv_from(buf) {
                assert_eq!(from, stun);
                return mapped_address(&buf[..n], tid);
            }
        }
        panic!("no STUN answer");
    };
    assert_eq!(
        ask(*b"lanvan-tid-1", &mut buf),
        client.local_addr().unwrap()
    );

    // Garbage of every kind is dropped without an answer...
    let mut junk: Vec<Vec<u8>> = vec![
        vec![],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0xFF; 1400],
        binding_request([9; 12])[..19].to_vec(),
    ];
    let mut wrong_cookie = binding_request([9; 12]);
    wrong_cookie[5] = 0;
    junk.push(wrong_cookie);
    let mut indication = binding_request([9; 12]);
    indication[1] = 0x11;
    junk.push(indication);
    for _ in 0..200 {
        for j in &junk {
            client.send_to(j, stun).unwrap();
        }
    }
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(client.recv_from(&mut buf).is_err(), "garbage got an answer");
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // ...and the responder keeps answering, another client too, and HTTP still works.
    assert_eq!(
        ask(*b"lanvan-tid-2", &mut buf),
        client.local_addr().unwrap()
    );
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    other.send_to(&binding_request([3; 12]), stun).unwrap();
    let (n, _) = other
        .recv_from(&mut buf)
        .expect("answer to the second client");
    assert_eq!(
        mapped_address(&buf[..n], [3; 12]),
        other.local_addr().unwrap()
    );

    // A flood of requests and garbage from another socket does not stall the box: HTTP
    // and WebSocket traffic are served while it lasts.
    let flood = std::thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let until = Instant::now() + Duration::from_secs(2);
        let mut n = 0u64;
        while Instant::now() < until {
            let _ = s.send_to(&binding_request([n as u8; 12]), stun);
            let _ = s.send_to(b"junk junk junk junk junk", stun);
            n += 1;
        }
        n
    });
    let (mut ws, _) = Peer::device(&lv, "during-flood");
    for _ in 0..10 {
        assert_eq!(lv.get("/api/status").status, 200);
        ws.send(json!({"type": "ping"}));
        ws.next("pong");
    }
    let sent = flood.join().unwrap();
    assert!(sent > 1000, "the flood sent {sent} pairs");
    assert_eq!(
        ask(*b"lanvan-tid-3", &mut buf),
        client.local_addr().unwrap()
    );
}

#[test]
fn stun_on_an_ipv6_listen_address_answers_with_the_ipv6_address() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    }
    let lv = Lanvan::start("p2p-stun6", &["listen=[::1]:0"]);
    assert!(lv.addr.is_ipv6(), "{}", lv.addr);
    let port = lv.get("/api/status").json()["p2p"]["stun_port"]
        .as_u64()
        .expect("a STUN port") as u16;
    let client = UdpSocket::bind("[::1]:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let stun = SocketAddr::new(lv.addr.ip(), port);
    let mut buf = [0u8; 1500];
    let tid = *b"ipv6-binding";
    let reply = (0..5)
        .find_map(|_| {
            client.send_to(&binding_request(tid), stun).unwrap();
            client
                .recv_from(&mut buf)
                .ok()
                .map(|(n, _)| buf[..n].to_vec())
        })
        .expect("an answer over IPv6");
    assert_eq!(mapped_address(&reply, tid), client.local_addr().unwrap());
}
