//! End-to-end tests of the WebSocket at `/ws/{device_id}`: presence, the shared clipboard,
//! bad input, slow readers, heartbeats, P2P opt-in, reconnects and the device limit, all
//! against the real binary with real sockets.

mod common;

use common::{wait_for, Lanvan};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

/// How long a single read blocks before the helpers look at their deadline again.
const POLL: Duration = Duration::from_millis(100);

/// Default deadline for a message that should come promptly.
const PROMPT: Duration = Duration::from_secs(5);

/// What one read from a socket brought.
#[derive(Debug)]
enum Event {
    Json(Value),
    /// A close frame, with its code.
    Close(Option<u16>),
    /// The connection ended without (another) close frame.
    Gone,
    Timeout,
}

/// Opens a WebSocket over `stream` to `path`, with bounded reads.
fn handshake(stream: TcpStream, addr: SocketAddr, path: &str) -> Result<Ws, String> {
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tungstenite::client(url.as_str(), stream).map_err(|e| e.to_string())?;
    ws.get_ref().set_read_timeout(Some(POLL)).unwrap();
    Ok(ws)
}

/// Connects to `/ws/{id}{query}`; panics if the box does not upgrade.
fn connect(lv: &Lanvan, id: &str, query: &str) -> Ws {
    let stream = TcpStream::connect(lv.addr).unwrap();
    handshake(stream, lv.addr, &format!("/ws/{id}{query}")).expect("websocket upgrade")
}

/// Connects and reads the `welcome`.
fn join(lv: &Lanvan, id: &str, query: &str) -> (Ws, Value) {
    let mut ws = connect(lv, id, query);
    let welcome = recv_json_until(&mut ws, "welcome");
    assert_eq!(welcome["device_id"], id, "{welcome}");
    (ws, welcome)
}

fn next_event(ws: &mut Ws, deadline: Instant) -> Event {
    loop {
        if Instant::now() >= deadline {
            return Event::Timeout;
        }
        match ws.read() {
            Ok(Message::Text(t)) => {
                return Event::Json(
                    serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("box sent non-JSON text ({e}): {t}")),
                )
            }
            Ok(Message::Close(frame)) => return Event::Close(frame.map(|f| u16::from(f.code))),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return Event::Gone,
        }
    }
}

/// The next JSON message of type `ty` within `within`, skipping others; None on timeout.
fn recv_type_within(ws: &mut Ws, ty: &str, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        match next_event(ws, deadline) {
            Event::Json(v) if v["type"] == ty => return Some(v),
            Event::Json(_) => continue,
            Event::Timeout => return None,
            other => panic!("socket ended while waiting for `{ty}`: {other:?}"),
        }
    }
}

/// The next JSON message of type `ty`, skipping others; panics after [`PROMPT`].
fn recv_json_until(ws: &mut Ws, ty: &str) -> Value {
    recv_type_within(ws, ty, PROMPT).unwrap_or_else(|| panic!("no `{ty}` within {PROMPT:?}"))
}

fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).expect("send");
}

fn send_json(ws: &mut Ws, v: &Value) {
    send_text(ws, &v.to_string());
}

/// Sends a `ping` and returns every JSON message received before its `pong`: a sync point
/// that also proves the socket is open and served.
fn sync(ws: &mut Ws) -> Vec<Value> {
    send_json(ws, &json!({"type": "ping"}));
    let deadline = Instant::now() + PROMPT;
    let mut seen = Vec::new();
    loop {
        match next_event(ws, deadline) {
            Event::Json(v) if v["type"] == "pong" => return seen,
            Event::Json(v) => seen.push(v),
            other => panic!("no pong: {other:?} after {seen:?}"),
        }
    }
}

/// Reads until the box closes the socket; returns the JSON messages seen first and the close
/// code (None if the connection ended without a close frame).
fn recv_until_closed(ws: &mut Ws, within: Duration) -> (Vec<Value>, Option<u16>) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match next_event(ws, deadline) {
            Event::Json(v) => seen.push(v),
            Event::Close(code) => return (seen, code),
            Event::Gone => return (seen, None),
            Event::Timeout => panic!("socket still open after {within:?}; saw {seen:?}"),
        }
    }
}

/// The error reply to the last bad message.
fn recv_error(ws: &mut Ws) -> Value {
    recv_json_until(ws, "error")
}

fn types(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Does the WebSocket handshake by hand on a plain socket and returns the socket, which the
/// test then leaves alone: it never reads (so never answers a ping) and never writes.
fn raw_silent_client(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PROMPT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    // Byte by byte, so not one byte of the frames after the head is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("handshake reply");
        head.push(byte[0]);
        assert!(head.len() < 4096, "reply head too long");
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    s
}

/// A TCP connection with a tiny receive buffer, so a client that stops reading makes the
/// box's writes back up after a few kilobytes rather than megabytes.
fn tiny_rcvbuf_stream(addr: SocketAddr) -> TcpStream {
    use nix::sys::socket::{
        connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(v4) = addr else {
        panic!("the test box listens on IPv4")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::RcvBuf, &4096).unwrap();
    connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).unwrap();
    TcpStream::from(fd)
}

fn status_devices(lv: &Lanvan) -> u64 {
    lv.status()["devices"].as_u64().unwrap()
}

#[test]
fn presence_across_three_clients() {
    let lv = Lanvan::start("ws-presence", &[]);
    let (mut a, welcome_a) = join(&lv, "devA", "?name=Alice&kind=phone");
    assert_eq!(welcome_a["name"], "Alice");
    let devices = welcome_a["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["id"], "devA");
    assert_eq!(devices[0]["name"], "Alice");
    assert_eq!(devices[0]["kind"], "phone");
    assert_eq!(devices[0]["p2p"], false);

    let (mut b, welcome_b) = join(&lv, "devB", "?name=Bob&kind=laptop");
    let ids: Vec<&str> = welcome_b["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["devA", "devB"]);
    let joined = recv_json_until(&mut a, "device_joined");
    assert_eq!(joined["device"]["id"], "devB");
    assert_eq!(joined["device"]["name"], "Bob");
    assert_eq!(joined["device"]["kind"], "laptop");

    // Query values are percent-decoded, '+' is a space.
    let (mut c, welcome_c) = join(&lv, "devC", "?name=Carol%20K%C3%A9&kind=big+tablet");
    assert_eq!(welcome_c["devices"].as_array().unwrap().len(), 3);
    assert_eq!(welcome_c["name"], "Carol Ké");
    for ws in [&mut a, &mut b] {
        let joined = recv_json_until(ws, "device_joined");
        assert_eq!(joined["device"]["id"], "devC");
        assert_eq!(joined["device"]["name"], "Carol Ké");
        assert_eq!(joined["device"]["kind"], "big tablet");
    }
    assert_eq!(status_devices(&lv), 3);

    // A rename reaches everyone, the sender included; the kind stays.
    send_json(&mut a, &json!({"type": "hello", "name": "Alicia"}));
    for ws in [&mut a, &mut b, &mut c] {
        let updated = recv_json_until(ws, "device_updated");
        assert_eq!(updated["device"]["id"], "devA");
        assert_eq!(updated["device"]["name"], "Alicia");
        assert_eq!(updated["device"]["kind"], "phone");
    }

    // C leaves cleanly: the other two hear of it, and the list shrinks.
    c.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    let (_, code) = recv_until_closed(&mut c, PROMPT);
    assert_eq!(code, Some(1000), "the box answers the closing handshake");
    for ws in [&mut a, &mut b] {
        let left = recv_json_until(ws, "device_left");
        assert_eq!(left, json!({"type": "device_left", "device_id": "devC"}));
    }
    send_json(&mut b, &json!({"type": "list_devices"}));
    let list = recv_json_until(&mut b, "devices");
    let names: Vec<&str> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Alicia", "Bob"]);
    assert_eq!(status_devices(&lv), 2);

    // A socket dropped without a close frame counts as leaving too.
    drop(b);
    let left = recv_json_until(&mut a, "device_left");
    assert_eq!(left["device_id"], "devB");
    assert!(wait_for(5, || status_devices(&lv) == 1));
}

#[test]
fn clipboard_across_three_clients() {
    let lv = Lanvan::start("ws-clip", &[]);
    let (mut a, _) = join(&lv, "devA", "?name=Alice");
    let (mut b, _) = join(&lv, "devB", "?name=Bob");
    let (mut c, _) = join(&lv, "devC", "?name=Carol");

    send_json(&mut a, &json!({"type": "clipboard_update", "text": "hi"}));
    let ack = recv_json_until(&mut a, "clipboard_ack");
    assert_eq!(ack["seq"], 1);
    for ws in [&mut b, &mut c] {
        let u = recv_json_until(ws, "clipboard_update");
        assert_eq!(u["text"], "hi");
        assert_eq!(u["seq"], 1);
        assert_eq!(u["from"], "devA");
        assert_eq!(u["from_name"], "Alice");
        assert!(
            u["at"].as_u64().unwrap() > 1_600_000_000_000,
            "unix ms: {u}"
        );
    }
    // The sender is not echoed its own text.
    assert!(!types(&sync(&mut a)).contains(&"clipboard_update".to_string()));

    // Updates from all three: every device sees the others' in one increasing seq order.
    let mut last_seen = [1u64; 3];
    let texts = ["from a ✂", "from b\nline 2", "from c \"quoted\""];
    let mut all = [&mut a, &mut b, &mut c];
    for round in 0..3 {
        for sender in 0..3 {
            let text = format!("{} #{round}", texts[sender]);
            send_json(
                &mut *all[sender],
                &json!({"type": "clipboard_update", "text": text}),
            );
            let ack = recv_json_until(&mut *all[sender], "clipboard_ack");
            let seq = ack["seq"].as_u64().unwrap();
            assert!(seq > last_seen[sender], "{seq} after {}", last_seen[sender]);
            last_seen[sender] = seq;
            for (i, ws) in all.iter_mut().enumerate() {
                if i == sender {
                    continue;
                }
                let u = recv_json_until(ws, "clipboard_update");
                assert_eq!(u["text"], text.as_str());
                assert_eq!(u["seq"], seq);
                assert!(seq > last_seen[i], "seq {seq} not above {}", last_seen[i]);
                last_seen[i] = seq;
            }
        }
    }
    assert_eq!(last_seen.iter().max(), Some(&10));
}

#[test]
fn clipboard_history_reaches_a_new_device() {
    let lv = Lanvan::start("ws-history", &["ws.clipboard_history=3"]);
    let (mut a, welcome) = join(&lv, "devA", "?name=Alice");
    assert_eq!(welcome["clipboard"], Value::Null);
    assert_eq!(welcome["clipboard_history"], json!([]));
    // With no clipboard yet, the welcome is followed by nothing but the pong.
    assert_eq!(sync(&mut a), Vec::<Value>::new());

    for i in 1..=5 {
        send_json(
            &mut a,
            &json!({"type": "clipboard_update", "text": format!("item {i}")}),
        );
        assert_eq!(recv_json_until(&mut a, "clipboard_ack")["seq"], i);
    }

    let mut d = connect(&lv, "devD", "?name=Dan");
    let deadline = Instant::now() + PROMPT;
    let Event::Json(welcome) = next_event(&mut d, deadline) else {
        panic!("no welcome")
    };
    assert_eq!(welcome["type"], "welcome");
    let history = welcome["clipboard_history"].as_array().unwrap();
    let texts: Vec<&str> = history
        .iter()
        .map(|h| h["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["item 3", "item 4", "item 5"],
        "the last 3, oldest first"
    );
    let seqs: Vec<u64> = history.iter().map(|h| h["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [3, 4, 5]);
    assert!(history
        .iter()
        .all(|h| h["from"] == "devA" && h["from_name"] == "Alice"));
    assert_eq!(welcome["clipboard"]["text"], "item 5");

    // Seed clients know only clipboard_update: the current text comes that way too, next.
    let Event::Json(seed) = next_event(&mut d, deadline) else {
        panic!("no clipboard_update after welcome")
    };
    assert_eq!(seed["type"], "clipboard_update");
    assert_eq!(seed["text"], "item 5");
    assert_eq!(seed["seq"], 5);
    assert_eq!(seed["from"], "devA");
    assert_eq!(seed["from_name"], "Alice");

    // The history can also be asked for.
    send_json(&mut d, &json!({"type": "clipboard_history"}));
    let items = recv_json_until(&mut d, "clipboard_history");
    assert_eq!(items["items"].as_array().unwrap().len(), 3);
    assert_eq!(items["items"][0]["text"], "item 3");
}

#[test]
fn bad_input_gets_errors_and_the_socket_stays_open() {
    let lv = Lanvan::start("ws-bad", &[]);
    let (mut a, _) = join(&lv, "devA", "");
    let (mut b, _) = join(&lv, "devB", "");

    send_text(&mut a, "{not json");
    let e = recv_error(&mut a);
    assert_eq!(e["code"], "bad_json");
    assert!(e["message"].as_str().unwrap().contains("line 1"), "{e}");
    sync(&mut a);

    send_text(&mut a, "[1, 2]");
    assert_eq!(recv_error(&mut a)["code"], "bad_json");

    send_text(&mut a, r#"{"text": "no type"}"#);
    assert_eq!(recv_error(&mut a)["code"], "missing_type");

    send_text(&mut a, r#"{"type": "dance"}"#);
    let e = recv_error(&mut a);
    assert_eq!(e["code"], "unknown_type");
    assert_eq!(e["ref_type"], "dance");
    assert!(e["message"].as_str().unwrap().contains("dance"));

    send_text(&mut a, r#"{"type": "clipboard_update"}"#);
    let e = recv_error(&mut a);
    assert_eq!(e["code"], "missing_field");
    assert_eq!(e["ref_type"], "clipboard_update");
    assert!(e["message"].as_str().unwrap().contains("text"));

    send_text(&mut a, r#"{"type": "clipboard_update", "text": 42}"#);
    assert_eq!(recv_error(&mut a)["code"], "missing_field");

    // Binary frames carry relay chunks (tests/relay.rs); a short one is refused.
    a.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    let e = recv_error(&mut a);
    assert_eq!(e["code"], "bad_header");
    assert_eq!(
        sync(&mut a),
        Vec::<Value>::new(),
        "still open, nothing else"
    );

    // None of that reached B, and A still works for B.
    send_json(&mut a, &json!({"type": "clipboard_update", "text": "fine"}));
    recv_json_until(&mut a, "clipboard_ack");
    let seen = sync(&mut b);
    assert_eq!(types(&seen), ["clipboard_update"], "{seen:?}");
    assert_eq!(seen[0]["text"], "fine");
}

#[test]
fn messages_beyond_the_rate_limit_are_refused_not_served() {
    let lv = Lanvan::start("ws-rate", &["ws.messages_per_sec=5"]);
    let (mut a, _) = join(&lv, "devA", "");
    // The burst is twice the rate: 10 pass, the rest are refused until the bucket refills.
    for _ in 0..14 {
        send_json(&mut a, &json!({"type": "ping"}));
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 14 {
        match next_event(&mut a, Instant::now() + PROMPT) {
            Event::Json(m) if m["type"] == "pong" => pongs += 1,
            Event::Json(m) if m["code"] == "rate_limited" => limited += 1,
            other => panic!("after {pongs} pongs, {limited} refusals: {other:?}"),
        }
    }
    assert!((10..=11).contains(&pongs), "{pongs} pongs");
    assert!(limited >= 3, "{limited} refusals");
    // A second later the device is served again.
    std::thread::sleep(Duration::from_secs(1));
    assert!(sync(&mut a).is_empty());
}

#[test]
fn oversized_message_closes_only_that_socket() {
    let lv = Lanvan::start("ws-big", &["ws.max_message_bytes=4096"]);
    let (mut a, _) = join(&lv, "devA", "");
    let (mut b, _) = join(&lv, "devB", "");
    let (mut c, _) = join(&lv, "devC", "");

    // Just under the limit is fine.
    let fits = json!({"type": "clipboard_update", "text": "x".repeat(3000)});
    send_json(&mut a, &fits);
    recv_json_until(&mut a, "clipboard_ack");

    let big = json!({"type": "clipboard_update", "text": "y".repeat(10_000)});
    send_json(&mut a, &big);
    // The box says why and closes (or, if the reset overtakes the reply, just closes).
    let (seen, code) = recv_until_closed(&mut a, PROMPT);
    // (recv_until_closed has already asserted the close itself.)
    for e in seen.iter().filter(|m| m["type"] == "error") {
        assert_eq!(e["code"], "bad_frame", "{e}");
        assert!(e["message"].as_str().unwrap().contains("4096"), "{e}");
    }
    if let Some(code) = code {
        assert_eq!(code, 1009, "message too big");
    }
    assert!(
        !seen.iter().any(|m| m["type"] == "clipboard_ack"),
        "the big text was not taken: {seen:?}"
    );

    // The others are unaffected: they hear A left and can still share.
    for ws in [&mut b, &mut c] {
        assert_eq!(recv_json_until(ws, "device_left")["device_id"], "devA");
    }
    send_json(
        &mut b,
        &json!({"type": "clipboard_update", "text": "still here"}),
    );
    assert_eq!(recv_json_until(&mut b, "clipboard_ack")["seq"], 2);
    let u = recv_json_until(&mut c, "clipboard_update");
    assert_eq!(u["text"], "still here");
    assert_eq!(u["from"], "devB");
    assert_eq!(status_devices(&lv), 2);
}

#[test]
fn error_flood_closes_the_socket_and_spares_the_others() {
    let lv = Lanvan::start("ws-flood", &[]);
    let (mut a, _) = join(&lv, "devA", "");
    let (mut b, _) = join(&lv, "devB", "");
    let (mut c, _) = join(&lv, "devC", "");

    for i in 0..30 {
        // The box may close before all 30 are written; later sends may then fail.
        if a.send(Message::text(format!("garbage {i}"))).is_err() {
            break;
        }
    }
    let (seen, code) = recv_until_closed(&mut a, PROMPT);
    assert_eq!(code, Some(1008), "policy violation; saw {seen:?}");
    let errors: Vec<&Value> = seen.iter().filter(|m| m["type"] == "error").collect();
    assert!(errors.iter().all(|m| m["code"] == "bad_json"), "{seen:?}");
    assert_eq!(errors.len(), 20, "one error per bad frame up to the limit");

    for ws in [&mut b, &mut c] {
        assert_eq!(recv_json_until(ws, "device_left")["device_id"], "devA");
    }
    send_json(&mut c, &json!({"type": "clipboard_update", "text": "ok"}));
    assert_eq!(recv_json_until(&mut b, "clipboard_update")["text"], "ok");

    // The flooder may come back with a clean slate.
    let (mut a2, welcome) = join(&lv, "devA", "");
    assert_eq!(welcome["devices"].as_array().unwrap().len(), 3);
    assert_eq!(welcome["clipboard"]["text"], "ok");
    sync(&mut a2);
}

/// Asserts the box refuses `path`: either no upgrade at all, or an `error` then a close.
fn assert_refused(lv: &Lanvan, path: &str, code: &str) {
    let stream = TcpStream::connect(lv.addr).unwrap();
    let Ok(mut ws) = handshake(stream, lv.addr, path) else {
        return;
    };
    let (seen, close) = recv_until_closed(&mut ws, PROMPT);
    assert_eq!(types(&seen), ["error"], "{path}: {seen:?}");
    assert_eq!(seen[0]["code"], code, "{path}");
    assert!(!seen[0]["message"].as_str().unwrap().is_empty());
    assert_eq!(close, Some(1008), "{path}");
}

#[test]
fn bad_device_ids_are_refused() {
    let lv = Lanvan::start("ws-badid", &[]);
    let (mut a, _) = join(&lv, "devA", "");
    for path in [
        "/ws/..%2F..".to_string(),
        format!("/ws/{}", "d".repeat(100)),
        "/ws/".to_string(),
        "/ws/a%20b".to_string(),
        "/ws/%00".to_string(),
        "/ws/caf%C3%A9".to_string(),
    ] {
        assert_refused(&lv, &path, "refused");
    }
    // The longest id allowed is 64 chars.
    let long_ok = "d".repeat(64);
    let (_ok, _) = join(&lv, &long_ok, "");
    assert_eq!(
        recv_json_until(&mut a, "device_joined")["device"]["id"],
        long_ok
    );
    // Nobody heard of the refused ones.
    let seen = sync(&mut a);
    assert!(seen.is_empty(), "{seen:?}");
    assert_eq!(status_devices(&lv), 2);
}

#[test]
fn a_slow_reader_is_dropped_and_the_others_get_everything() {
    const COUNT: usize = 300;
    const SIZE: usize = 60 * 1024;
    // A queue of 32 frames (2 MB here) lets B, a test thread that a busy CI machine may
    // starve for a moment, keep up; C, which never reads, overflows it all the same.
    let lv = Lanvan::start(
        "ws-slow",
        &[
            "ws.send_queue=32",
            "ws.messages_per_sec=100000",
            "ws.clipboard_max_bytes=128KiB",
            "ws.max_message_bytes=1MiB",
        ],
    );
    let (mut a, _) = join(&lv, "devA", "");
    let (mut b, _) = join(&lv, "devB", "");
    // C joins and never reads again.
    let c_stream = tiny_rcvbuf_stream(lv.addr);
    let c = handshake(c_stream, lv.addr, "/ws/devC").expect("upgrade");
    recv_json_until(&mut a, "device_joined");
    recv_json_until(&mut b, "device_joined");
    assert_eq!(status_devices(&lv), 3);

    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        for i in 0..COUNT {
            let mut text = format!("{i:05}:");
            text.push_str(&"z".repeat(SIZE - text.len()));
            send_json(&mut a, &json!({"type": "clipboard_update", "text": text}));
        }
        a
    });

    let deadline = started + Duration::from_secs(15);
    let mut got = 0;
    let mut c_left = false;
    while got < COUNT {
        match next_event(&mut b, deadline) {
            Event::Json(m) if m["type"] == "clipboard_update" => {
                let text = m["text"].as_str().unwrap();
                assert_eq!(text.len(), SIZE);
                assert_eq!(&text[..6], format!("{got:05}:"), "in order");
                assert_eq!(m["seq"], got as u64 + 1);
                got += 1;
            }
            Event::Json(m) if m["type"] == "device_left" => {
                assert_eq!(m["device_id"], "devC");
                c_left = true;
            }
            Event::Json(m) => panic!("unexpected {m}"),
            other => panic!("B got {got} of {COUNT}, then {other:?}"),
        }
    }
    let mut a = sender.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    if !c_left {
        assert_eq!(recv_json_until(&mut b, "device_left")["device_id"], "devC");
    }
    // A gets its acks, in order, and hears C left.
    let mut acks = 0u64;
    let mut a_saw_c_left = false;
    while acks < COUNT as u64 || !a_saw_c_left {
        match next_event(&mut a, Instant::now() + PROMPT) {
            Event::Json(m) if m["type"] == "clipboard_ack" => {
                acks += 1;
                assert_eq!(m["seq"], acks);
            }
            Event::Json(m) if m["type"] == "device_left" => {
                assert_eq!(m["device_id"], "devC");
                a_saw_c_left = true;
            }
            Event::Json(m) if m["type"] == "device_joined" => {}
            Event::Json(m) => panic!("unexpected {m}"),
            other => panic!("A got {acks} acks, then {other:?}"),
        }
    }
    assert_eq!(status_devices(&lv), 2);
    assert!(sync(&mut b).is_empty());
    // The operator can tell why C went away.
    let log: Vec<String> = lv.log.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("stopped reading")),
        "{log:#?}"
    );
    drop(c);
}

#[test]
fn heartbeat_drops_a_silent_socket_and_keeps_a_live_one() {
    let lv = Lanvan::start(
        "ws-heartbeat",
        &[
            "ws.heartbeat_timeout_secs=2",
            "ws.heartbeat_interval_secs=1",
        ],
    );
    let (mut a, welcome) = join(&lv, "devA", "");
    assert_eq!(welcome["limits"]["heartbeat_timeout_ms"], 2000);

    let mut z = raw_silent_client(lv.addr, "/ws/devZ");
    let joined_at = Instant::now();
    assert_eq!(
        recv_json_until(&mut a, "device_joined")["device"]["id"],
        "devZ"
    );

    // A keeps reading (tungstenite answers the box's pings) and so never times out.
    let left = recv_type_within(&mut a, "device_left", Duration::from_secs(6))
        .expect("the silent device is dropped");
    let after = joined_at.elapsed();
    assert_eq!(left["device_id"], "devZ");
    assert!(
        after >= Duration::from_millis(1500) && after <= Duration::from_millis(4500),
        "dropped after {after:?}"
    );

    // The box closed Z's TCP connection (after a close frame Z never read).
    z.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let end = z.read_to_end(&mut rest);
    assert!(end.is_ok(), "Z's connection was not closed: {end:?}");
    assert!(
        rest.windows(4)
            .any(|w| w[0] == 0x88 && w[2..] == 1001u16.to_be_bytes()),
        "no close frame with 1001 in what Z was sent"
    );

    // Past several timeouts A is still there.
    match next_event(&mut a, Instant::now() + Duration::from_secs(3)) {
        Event::Timeout => {}
        Event::Json(m) => panic!("unexpected {m}"),
        other => panic!("A was dropped: {other:?}"),
    }
    assert!(sync(&mut a).is_empty());
    assert_eq!(status_devices(&lv), 1);
}

/// Pings keep their cadence however much else the box sends: a device that only listens
/// while another keeps it busy is still asked for pongs, so it is not taken for dead.
#[test]
fn heartbeat_keeps_a_listening_device_that_others_keep_busy() {
    let lv = Lanvan::start(
        "ws-heartbeat-busy",
        &[
            "ws.heartbeat_timeout_secs=2",
            "ws.heartbeat_interval_secs=1",
        ],
    );
    let (mut listener, _) = join(&lv, "listener", "");
    let (mut talker, _) = join(&lv, "talker", "");
    recv_json_until(&mut listener, "device_joined");
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(5) {
        n += 1;
        send_json(
            &mut talker,
            &json!({"type": "clipboard_update", "text": format!("tick {n}")}),
        );
        assert_eq!(recv_json_until(&mut talker, "clipboard_ack")["seq"], n);
        // The listener only reads, and answers pings while doing so.
        let deadline = Instant::now() + Duration::from_millis(300);
        let mut got = false;
        loop {
            match next_event(&mut listener, deadline) {
                Event::Json(m) if m["type"] == "clipboard_update" => {
                    assert_eq!(m["seq"], n);
                    got = true;
                }
                Event::Json(m) => panic!("unexpected {m}"),
                Event::Timeout => break,
                other => panic!(
                    "the listener was dropped after {:?}: {other:?}",
                    started.elapsed()
                ),
            }
        }
        assert!(got, "update {n} did not arrive");
    }
    assert!(n >= 10);
    assert_eq!(status_devices(&lv), 2);
}

/// A heartbeat timeout at or below the ping interval (here 2 s against the default 5 s)
/// must not drop devices that are alive but have nothing to say.
#[test]
fn heartbeat_timeout_shorter_than_the_interval_keeps_live_devices() {
    let lv = Lanvan::start("ws-heartbeat-short", &["ws.heartbeat_timeout_secs=2"]);
    let (mut a, _) = join(&lv, "devA", "");
    let until = Instant::now() + Duration::from_secs(5);
    match next_event(&mut a, until) {
        Event::Timeout => {}
        other => panic!("a live, reading device was dropped: {other:?}"),
    }
    assert!(sync(&mut a).is_empty());
    assert_eq!(status_devices(&lv), 1);
}

#[test]
fn p2p_opt_in_and_out() {
    let lv = Lanvan::start("ws-p2p", &[]);
    let (mut a, _) = join(&lv, "devA", "?name=Alice");
    let (mut b, _) = join(&lv, "devB", "?name=Bob");
    let (mut c, _) = join(&lv, "devC", "?name=Carol");

    // Seed form, with a device_name that renames A.
    send_json(
        &mut a,
        &json!({"type": "enable_p2p", "device_id": "devA", "device_name": "Anna"}),
    );
    let enabled = recv_json_until(&mut a, "p2p_enabled");
    assert!(enabled["message"].as_str().is_some_and(|m| !m.is_empty()));
    let list = recv_json_until(&mut a, "p2p_devices_update");
    assert_eq!(list["devices"], json!([{"id": "devA", "name": "Anna"}]));
    for ws in [&mut b, &mut c] {
        let u = recv_json_until(ws, "device_updated");
        assert_eq!(u["device"]["name"], "Anna");
        assert_eq!(u["device"]["p2p"], true);
    }

    send_json(&mut b, &json!({"type": "enable_p2p", "device_id": "devB"}));
    recv_json_until(&mut b, "p2p_enabled");
    let both = json!([{"id": "devA", "name": "Anna"}, {"id": "devB", "name": "Bob"}]);
    assert_eq!(
        recv_json_until(&mut b, "p2p_devices_update")["devices"],
        both
    );
    assert_eq!(
        recv_json_until(&mut a, "p2p_devices_update")["devices"],
        both
    );
    // C did not opt in, so gets no P2P lists.
    let seen = sync(&mut c);
    assert!(
        !types(&seen).contains(&"p2p_devices_update".to_string()),
        "{seen:?}"
    );

    send_json(&mut a, &json!({"type": "disable_p2p", "device_id": "devA"}));
    let disabled = recv_json_until(&mut a, "p2p_disabled");
    assert!(disabled["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(
        recv_json_until(&mut b, "p2p_devices_update")["devices"],
        json!([{"id": "devB", "name": "Bob"}])
    );
    let u = recv_json_until(&mut c, "device_updated");
    assert_eq!(u["device"]["id"], "devA");
    assert_eq!(u["device"]["p2p"], false);

    // A P2P device that disconnects leaves the list of the others.
    send_json(&mut c, &json!({"type": "enable_p2p"}));
    let list = recv_json_until(&mut b, "p2p_devices_update");
    assert_eq!(list["devices"].as_array().unwrap().len(), 2);
    drop(c);
    assert_eq!(recv_json_until(&mut b, "device_left")["device_id"], "devC");
    assert_eq!(
        recv_json_until(&mut b, "p2p_devices_update")["devices"],
        json!([{"id": "devB", "name": "Bob"}])
    );

    // A device that has not opted in cannot ask (tests/p2p_signal.rs has the whole flow).
    send_json(
        &mut a,
        &json!({"type": "p2p_request", "from": "devA", "to": "devB"}),
    );
    assert_eq!(recv_error(&mut a)["code"], "p2p_not_enabled");
}

#[test]
fn reconnecting_device_replaces_its_old_socket() {
    let lv = Lanvan::start("ws-replace", &[]);
    let (mut old, _) = join(&lv, "devA", "?name=Alice&kind=phone");
    let (mut b, _) = join(&lv, "devB", "");

    let (mut new, welcome) = join(&lv, "devA", "");
    // The device keeps its name and kind when the new socket does not give them.
    let me = welcome["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "devA")
        .unwrap()
        .clone();
    assert_eq!(me["name"], "Alice");
    assert_eq!(me["kind"], "phone");

    let (_, code) = recv_until_closed(&mut old, PROMPT);
    assert_eq!(code, Some(4000), "replaced");

    // B sees no departure, only the device (re)joining.
    let seen = sync(&mut b);
    assert_eq!(types(&seen), ["device_joined"], "{seen:?}");
    assert_eq!(status_devices(&lv), 2);

    send_json(
        &mut new,
        &json!({"type": "clipboard_update", "text": "from new"}),
    );
    let u = recv_json_until(&mut b, "clipboard_update");
    assert_eq!(u["from"], "devA");
    assert_eq!(u["from_name"], "Alice");
}

#[test]
fn max_devices_refuses_one_more() {
    let lv = Lanvan::start("ws-max", &["ws.max_devices=2"]);
    let (mut a, _) = join(&lv, "devA", "");
    let (b, _) = join(&lv, "devB", "");
    assert_refused(&lv, "/ws/devC", "refused");
    // A known device may still reconnect.
    let (_a2, _) = join(&lv, "devA", "");
    let (_, code) = recv_until_closed(&mut a, PROMPT);
    assert_eq!(code, Some(4000));
    assert_eq!(status_devices(&lv), 2);

    // Once one leaves there is room again.
    drop(b);
    assert!(wait_for(5, || status_devices(&lv) == 1));
    let (mut c, welcome) = join(&lv, "devC", "");
    assert_eq!(welcome["devices"].as_array().unwrap().len(), 2);
    sync(&mut c);
}
