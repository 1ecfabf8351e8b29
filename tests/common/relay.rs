//! A relay client over a real WebSocket, for the end-to-end tests and the benchmark. It
//! follows the same steps as `web/relay.js`: offer, wait for the answer, send chunks within
//! the credit the box grants (`relay_window`), send `relay_end` with the SHA-256; as a
//! receiver, accept, ack every chunk, send `relay_done` with the SHA-256 of what arrived;
//! on `relay_resume`, continue from the chunk the box names.
#![allow(dead_code)]

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

pub type Ws = WebSocket<TcpStream>;

/// What one read brought.
#[derive(Debug)]
pub enum Ev {
    Json(Value),
    Chunk(u32, u32, Vec<u8>),
    Gone,
}

/// Opens `/ws/{device}` and reads up to the `welcome`.
pub fn open(addr: SocketAddr, device: &str) -> Ws {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let url = format!("ws://{addr}/ws/{device}?name={device}");
    let (mut ws, _) = tungstenite::client(url.as_str(), stream).expect("upgrade");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match read(&mut ws, deadline) {
            Some(Ev::Json(v)) if v["type"] == "welcome" => return ws,
            Some(Ev::Gone) | None => panic!("no welcome for {device}"),
            _ => {}
        }
    }
}

/// The next event before `deadline`, blocking; None on timeout.
pub fn read(ws: &mut Ws, deadline: Instant) -> Option<Ev> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        ws.get_ref()
            .set_read_timeout(Some(left.min(Duration::from_millis(100))))
            .unwrap();
        match ws.read() {
            Ok(m) => {
                if let Some(ev) = event(m) {
                    return Some(ev);
                }
            }
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(Ev::Gone),
        }
    }
}

/// An event if one is already readable; never blocks.
pub fn poll(ws: &mut Ws) -> Option<Ev> {
    ws.get_ref().set_nonblocking(true).unwrap();
    let got = loop {
        match ws.read() {
            Ok(m) => {
                if let Some(ev) = event(m) {
                    break Some(ev);
                }
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                break None
            }
            Err(_) => break Some(Ev::Gone),
        }
    };
    ws.get_ref().set_nonblocking(false).unwrap();
    got
}

fn event(m: Message) -> Option<Ev> {
    match m {
        Message::Text(t) => Some(Ev::Json(serde_json::from_str(t.as_str()).unwrap())),
        Message::Binary(b) => {
            assert!(b.len() >= 8, "box sent a short chunk frame");
            let id = u32::from_be_bytes(b[..4].try_into().unwrap());
            let index = u32::from_be_bytes(b[4..8].try_into().unwrap());
            Some(Ev::Chunk(id, index, b[8..].to_vec()))
        }
        Message::Close(_) => Some(Ev::Gone),
        _ => None,
    }
}

pub fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).expect("send");
}

pub fn send_chunk(ws: &mut Ws, id: u32, index: u32, payload: &[u8]) {
    let mut frame = Vec::with_capacity(payload.len() + 8);
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&index.to_be_bytes());
    frame.extend_from_slice(payload);
    ws.send(Message::binary(frame)).expect("send chunk");
}

/// The bytes a sender sends.
#[derive(Clone)]
pub enum Data {
    Bytes(Vec<u8>),
    /// `size` pseudo-random bytes, generated per chunk (for the benchmark's 10 GiB).
    Pattern {
        size: u64,
        seed: u64,
    },
    /// `size` bytes: `block` over and over with the chunk index in its first 4 bytes; costs
    /// the sender a copy, not a generator (for the benchmark).
    Cycle {
        size: u64,
        block: std::sync::Arc<Vec<u8>>,
    },
}

impl Data {
    pub fn size(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::Pattern { size, .. } | Data::Cycle { size, .. } => *size,
        }
    }

    fn fill(&self, index: u32, chunk_size: usize, buf: &mut Vec<u8>) {
        let start = index as u64 * chunk_size as u64;
        let len = (self.size() - start).min(chunk_size as u64) as usize;
        buf.clear();
        match self {
            Data::Bytes(b) => buf.extend_from_slice(&b[start as usize..start as usize + len]),
            Data::Cycle { block, .. } => {
                buf.extend_from_slice(&block[..len]);
                let n = len.min(4);
                buf[..n].copy_from_slice(&index.to_le_bytes()[..n]);
            }
            Data::Pattern { seed, .. } => {
                buf.resize(len, 0);
                let mut x = (seed ^ u64::from(index)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for c in buf.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
                }
            }
        }
    }
}

/// One send this client makes.
pub struct Outgoing {
    pub to: String,
    pub name: String,
    pub data: Data,
    /// Put the real SHA-256 in the offer (else it goes in `relay_end`).
    pub declare: Option<String>,
    pub inbox: bool,
    /// Straight to the receiver's inbox even if it is connected (`"store": true`).
    pub store: bool,
    /// The offer's `ref`.
    pub client_ref: Option<String>,
    pub accept_timeout_ms: Option<u64>,
    /// Skip hashing: send this as the hash (the benchmark measures the box, not SHA-256).
    pub fake_hash: Option<String>,
    /// Start at this chunk (the receiver has the ones before, e.g. from P2P).
    pub start_chunk: u32,
    pub id: Option<u32>,
    pub chunk_size: usize,
    pub chunks: u32,
    pub next: u32,
    pub window_end: u32,
    pub acked: u32,
    pub accepted: bool,
    pub paused: bool,
    hashed: u32,
    hasher: Sha256,
    ended: bool,
    /// Chunks sent, resends included.
    pub sent: u64,
    /// Every relay message about this send, in order.
    pub events: Vec<Value>,
    /// The message that ended it: relay_complete, relay_stored, relay_failed, ...
    pub result: Option<Value>,
}

impl Outgoing {
    pub fn new(to: &str, name: &str, data: Data) -> Outgoing {
        Outgoing {
            to: to.into(),
            name: name.into(),
            data,
            declare: None,
            inbox: false,
            store: false,
            client_ref: None,
            accept_timeout_ms: None,
            fake_hash: None,
            start_chunk: 0,
            id: None,
            chunk_size: 0,
            chunks: 0,
            next: 0,
            window_end: 0,
            acked: 0,
            accepted: false,
            paused: false,
            hashed: 0,
            hasher: Sha256::new(),
            ended: false,
            sent: 0,
            events: Vec::new(),
            result: None,
        }
    }

    pub fn result_type(&self) -> Option<&str> {
        self.result.as_ref().and_then(|v| v["type"].as_str())
    }

    pub fn saw(&self, ty: &str) -> bool {
        self.events.iter().any(|e| e["type"] == ty)
    }
}

/// One send this client receives.
pub struct Incoming {
    pub offer: Value,
    pub id: u32,
    pub chunks: u32,
    pub next: u32,
    pub keep: bool,
    pub bytes: Vec<u8>,
    pub received: u64,
    hasher: Sha256,
    pub fake_hash: Option<String>,
    pub events: Vec<Value>,
    pub result: Option<Value>,
    pub sha256: Option<String>,
}

impl Incoming {
    pub fn result_type(&self) -> Option<&str> {
        self.result.as_ref().and_then(|v| v["type"].as_str())
    }
}

/// What a receiver does with an offer.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Answer {
    Accept,
    Decline,
    /// Say nothing (the offer may time out).
    Ignore,
}

/// A device speaking the relay protocol over one socket: any number of sends and receives.
pub struct Client {
    pub device: String,
    pub ws: Ws,
    pub out: Vec<Outgoing>,
    pub inc: BTreeMap<u32, Incoming>,
    pub answer: Answer,
    /// Keep received bytes (tests compare them); the benchmark only counts them.
    pub keep: bool,
    /// Every text message seen, in order.
    pub seen: Vec<Value>,
    /// Offers whose `relay_offered` has not come back yet, oldest first.
    offering: Vec<usize>,
    pub gone: bool,
    /// Bytes this receiver already has of a send that starts past chunk 0.
    pub have_prefix: Vec<u8>,
    /// Receive without hashing and report this instead (the benchmark measures the box).
    pub fake_hash: Option<String>,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr, device: &str) -> Client {
        Client {
            device: device.into(),
            ws: open(addr, device),
            out: Vec::new(),
            inc: BTreeMap::new(),
            answer: Answer::Accept,
            keep: true,
            seen: Vec::new(),
            offering: Vec::new(),
            gone: false,
            have_prefix: Vec::new(),
            fake_hash: None,
            buf: Vec::new(),
        }
    }

    /// A new socket for the same device (after the old one died), keeping every transfer.
    pub fn reconnect(&mut self, addr: SocketAddr) {
        self.ws = open(addr, &self.device);
        self.gone = false;
    }

    /// Offers `o`; returns its index in `out`.
    pub fn offer(&mut self, mut o: Outgoing) -> usize {
        let mut msg =
            json!({"type": "relay_offer", "to": o.to, "name": o.name, "size": o.data.size()});
        if let Some(sha) = &o.declare {
            msg["sha256"] = json!(sha);
        }
        if o.inbox {
            msg["inbox"] = json!(true);
        }
        if o.store {
            msg["store"] = json!(true);
        }
        if let Some(r) = &o.client_ref {
            msg["ref"] = json!(r);
        }
        if let Some(ms) = o.accept_timeout_ms {
            msg["accept_timeout_ms"] = json!(ms);
        }
        if o.start_chunk > 0 {
            msg["start_chunk"] = json!(o.start_chunk);
        }
        send_json(&mut self.ws, msg);
        o.events.clear();
        self.out.push(o);
        self.offering.push(self.out.len() - 1);
        self.out.len() - 1
    }

    /// Sends every chunk the credit allows, then handles what has arrived (waiting up to
    /// `wait` for something if there was nothing to send). False once the socket is gone.
    pub fn step(&mut self, wait: Duration) -> bool {
        if self.gone {
            return false;
        }
        let mut sent_any = false;
        for i in 0..self.out.len() {
            while self.send_one(i) {
                sent_any = true;
                // Read between chunks so credit and acks keep flowing both ways.
                while let Some(ev) = poll(&mut self.ws) {
                    self.handle(ev);
                }
            }
        }
        let first = if sent_any {
            poll(&mut self.ws)
        } else {
            read(&mut self.ws, Instant::now() + wait)
        };
        if let Some(ev) = first {
            self.handle(ev);
            while let Some(ev) = poll(&mut self.ws) {
                self.handle(ev);
            }
        }
        !self.gone
    }

    /// Steps until `done` holds or `secs` pass; returns whether it held.
    pub fn run_until(&mut self, secs: u64, mut done: impl FnMut(&Client) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if done(self) {
                return true;
            }
            if !self.step(Duration::from_millis(50)) {
                return done(self);
            }
        }
        done(self)
    }

    /// True once every send and receive has ended.
    pub fn all_ended(&self) -> bool {
        self.out.iter().all(|o| o.result.is_some()) && self.inc.values().all(|i| i.result.is_some())
    }

    fn send_one(&mut self, i: usize) -> bool {
        let o = &mut self.out[i];
        let Some(id) = o.id else { return false };
        if o.result.is_some() || o.paused || !o.accepted {
            return false;
        }
        if o.next < o.window_end && o.next < o.chunks {
            o.data.fill(o.next, o.chunk_size, &mut self.buf);
            if o.next == o.hashed && o.fake_hash.is_none() {
                o.hasher.update(&self.buf);
                o.hashed += 1;
            }
            let index = o.next;
            o.next += 1;
            o.sent += 1;
            send_chunk(&mut self.ws, id, index, &self.buf);
            return true;
        }
        if o.next == o.chunks && !o.ended && o.declare.is_none() {
            o.ended = true;
            let sha = match &o.fake_hash {
                Some(h) => h.clone(),
                None => hex(&o.hasher.clone().finalize()),
            };
            send_json(
                &mut self.ws,
                json!({"type": "relay_end", "id": id, "sha256": sha}),
            );
        }
        false
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Gone => self.gone = true,
            Ev::Chunk(id, index, bytes) => {
                let Some(inc) = self.inc.get_mut(&id) else {
                    panic!("chunk for unknown transfer {id}")
                };
                if index != inc.next {
                    return; // a duplicate after a resume
                }
                inc.received += bytes.len() as u64;
                if inc.fake_hash.is_none() {
                    inc.hasher.update(&bytes);
                }
                if inc.keep {
                    inc.bytes.extend_from_slice(&bytes);
                }
                inc.next += 1;
                let acked = inc.next;
                send_json(
                    &mut self.ws,
                    json!({"type": "relay_ack", "id": id, "acked": acked}),
                );
                if acked == inc.chunks {
                    self.finish_incoming(id);
                }
            }
            Ev::Json(v) => self.handle_json(v),
        }
    }

    fn finish_incoming(&mut self, id: u32) {
        let inc = self.inc.get_mut(&id).unwrap();
        let sha = match &inc.fake_hash {
            Some(h) => h.clone(),
            None => hex(&inc.hasher.clone().finalize()),
        };
        inc.sha256 = Some(sha.clone());
        send_json(
            &mut self.ws,
            json!({"type": "relay_done", "id": id, "sha256": sha}),
        );
    }

    fn handle_json(&mut self, v: Value) {
        self.seen.push(v.clone());
        let ty = v["type"].as_str().unwrap_or("").to_string();
        let id = v["id"].as_u64().map(|i| i as u32);
        if ty == "relay_offered" || (ty == "error" && v["ref_type"] == "relay_offer") {
            let i = self.offering.remove(0);
            let o = &mut self.out[i];
            o.events.push(v.clone());
            if ty == "error" {
                o.result = Some(v);
                return;
            }
            o.id = id;
            o.chunk_size = v["chunk_size"].as_u64().unwrap() as usize;
            o.chunks = v["chunks"].as_u64().unwrap() as u32;
            o.accepted = v["mode"] == "inbox";
            // The chunks before the start still count in the whole file's hash.
            let start = v["start_chunk"].as_u64().unwrap() as u32;
            while o.hashed < start {
                o.data.fill(o.hashed, o.chunk_size, &mut self.buf);
                o.hasher.update(&self.buf);
                o.hashed += 1;
            }
            o.next = start;
            return;
        }
        if ty == "relay_offer" {
            let id = id.unwrap();
            let chunks = v["chunks"].as_u64().unwrap() as u32;
            let start = v["start_chunk"].as_u64().unwrap() as u32;
            let mut hasher = Sha256::new();
            let mut bytes = Vec::new();
            if start > 0 {
                hasher.update(&self.have_prefix);
                bytes.extend_from_slice(&self.have_prefix);
            }
            let answer = if v["auto_accepted"] == true {
                Answer::Accept
            } else {
                self.answer
            };
            self.inc.insert(
                id,
                Incoming {
                    offer: v.clone(),
                    id,
                    chunks,
                    next: start,
                    keep: self.keep,
                    bytes,
                    received: 0,
                    hasher,
                    fake_hash: self.fake_hash.clone(),
                    events: vec![v.clone()],
                    result: None,
                    sha256: None,
                },
            );
            match answer {
                Answer::Accept => {
                    if v["auto_accepted"] != true {
                        send_json(&mut self.ws, json!({"type": "relay_accept", "id": id}));
                    }
                    if chunks == start {
                        self.finish_incoming(id);
                    }
                }
                Answer::Decline => {
                    send_json(&mut self.ws, json!({"type": "relay_decline", "id": id}));
                    self.inc.get_mut(&id).unwrap().result = Some(json!({"type": "declined"}));
                }
                Answer::Ignore => {}
            }
            return;
        }
        let Some(id) = id else { return };
        // A send of ours?
        if let Some(o) = self.out.iter_mut().find(|o| o.id == Some(id)) {
            o.events.push(v.clone());
            match ty.as_str() {
                "relay_accepted" | "relay_to_inbox" => o.accepted = true,
                "relay_window" => {
                    o.acked = v["acked"].as_u64().unwrap() as u32;
                    o.window_end = v["window_end"].as_u64().unwrap() as u32;
                }
                "relay_paused" => o.paused = true,
                "relay_resume" => {
                    o.paused = false;
                    o.next = v["from_chunk"].as_u64().unwrap() as u32;
                    o.acked = o.next;
                    o.window_end = o.next;
                }
                "relay_complete" | "relay_stored" | "relay_failed" | "relay_declined"
                | "relay_cancelled" => o.result = Some(v),
                _ => {}
            }
            return;
        }
        if let Some(inc) = self.inc.get_mut(&id) {
            inc.events.push(v.clone());
            match ty.as_str() {
                "relay_resume" => {
                    // Tell the box how far we really are; it continues from there.
                    let next = inc.next;
                    send_json(
                        &mut self.ws,
                        json!({"type": "relay_ack", "id": id, "acked": next}),
                    );
                    if next == inc.chunks {
                        self.finish_incoming(id);
                    }
                }
                "relay_complete" | "relay_failed" | "relay_cancelled" => inc.result = Some(v),
                _ => {}
            }
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}
