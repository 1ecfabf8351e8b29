//! The box as a WebRTC peer, end to end: the real box on 127.0.0.1, a Rust str0m client (the
//! `net::rtc` client API the CLI uses) signaling over `/ws` and talking the chunk protocol
//! over the `lanvan-chunks` channel; refusals (bad SDP, peer limits); a client that
//! vanishes is gone from `/api/status` within seconds while another keeps working.

mod common;

use common::relay::{open, read, send_json, Ev, Ws};
use common::Lanvan;
use lanvan::core::chunks::{Event as SwarmEvent, Manifest, ManifestJson, Message, SourceId, Swarm};
use lanvan::core::peer::{Identity, PeerEvent};
use lanvan::net::rtc::{Host, HostLimits, PeerId};
use serde_json::{json, Value};
use smol::channel::Receiver;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A CLI-like client: its own host on 127.0.0.1 and the `/ws` socket it signals over.
struct Client {
    host: Rc<Host>,
    events: Receiver<(PeerId, PeerEvent)>,
    ws: Ws,
}

impl Client {
    fn new(lv: &Lanvan, device: &str) -> Client {
        let ws = open(lv.addr, device);
        let (host, events) = Host::bind(
            &["127.0.0.1:0".parse().unwrap()],
            Identity::new().unwrap(),
            HostLimits::default(),
        )
        .unwrap();
        Client { host, events, ws }
    }

    /// Sends `rtc_offer` for `session` and returns the box's reply (answer or error).
    fn offer(&mut self, session: &str) -> (Option<PeerId>, Value) {
        self.offer_with(session, |sdp| sdp)
    }

    /// Like `offer`, with the offer SDP changed by `edit` on the way.
    fn offer_with(
        &mut self,
        session: &str,
        edit: impl FnOnce(String) -> String,
    ) -> (Option<PeerId>, Value) {
        let (id, sdp) = self.host.offer().unwrap();
        let sdp = edit(sdp);
        send_json(
            &mut self.ws,
            json!({"type": "rtc_offer", "session": session, "sdp": sdp}),
        );
        let reply = self.next_json(|v| v["type"] == "rtc_answer" || v["type"] == "error");
        if reply["type"] == "rtc_answer" {
            assert_eq!(reply["session"], session);
            self.host
                .accept_answer(id, reply["sdp"].as_str().unwrap())
                .unwrap();
            (Some(id), reply)
        } else {
            self.host.close(id, lanvan::core::peer::CloseReason::Closed);
            (None, reply)
        }
    }

    fn next_json(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match read(&mut self.ws, deadline) {
                Some(Ev::Json(v)) if want(&v) => return v,
                Some(Ev::Gone) | None => panic!("no such message from the box"),
                _ => {}
            }
        }
    }

    /// Runs the host until `f` says done (true) for an event, or `secs` pass (false).
    fn run_until(&self, secs: u64, mut f: impl FnMut(&Host, PeerId, PeerEvent) -> bool) -> bool {
        let host = self.host.clone();
        smol::block_on(async {
            let run = async {
                host.clone().run().await;
                false
            };
            let consume = async {
                while let Ok((id, e)) = self.events.recv().await {
                    if f(&host, id, e) {
                        return true;
                    }
                }
                false
            };
            let timeout = async {
                smol::Timer::after(Duration::from_secs(secs)).await;
                false
            };
            smol::future::or(run, smol::future::or(consume, timeout)).await
        })
    }
}

/// Waits for the channel to open and the box's `hello`, sends ours, and asks a question.
fn talk(c: &Client, peer: PeerId) -> Value {
    let mut hello = None;
    let mut answer = None;
    let done = c.run_until(10, |host, id, e| {
        assert_eq!(id, peer);
        match e {
            PeerEvent::Open => {
                let ours = json!({"t": "hello", "id": "cli-1", "name": "test", "role": "cli", "max_requests": 16});
                assert!(host.send_text(id, &ours.to_string()).unwrap());
                let q = json!({"t": "query", "manifest": "00".repeat(32)});
                assert!(host.send_text(id, &q.to_string()).unwrap());
            }
            PeerEvent::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["t"] == "hello" {
                    hello = Some(v);
                } else {
                    answer = Some(v);
                }
            }
            PeerEvent::Closed(r) => panic!("the box closed the peer: {r:?}"),
            _ => {}
        }
        hello.is_some() && answer.is_some()
    });
    assert!(
        done,
        "no hello and answer from the box over the data channel"
    );
    let hello = hello.unwrap();
    assert_eq!(hello["role"], "box");
    assert_eq!(hello["id"], "box");
    assert_eq!(hello["max_requests"], 16);
    answer.unwrap()
}

#[test]
fn the_box_answers_an_offer_and_speaks_the_chunk_protocol_on_the_channel() {
    let lv = Lanvan::start("rtc-box-answer", &[]);
    let status = lv.status();
    assert_eq!(status["p2p"]["box_peer"], true);
    let mut c = Client::new(&lv, "cli-one");
    let asked = Instant::now();
    let (peer, answer) = c.offer("s1");
    let peer = peer.unwrap_or_else(|| panic!("no answer: {answer}"));
    // The answer names the box's host candidate on loopback: no trickle from the box.
    assert!(answer["sdp"].as_str().unwrap().contains("127.0.0.1"));
    let unknown = talk(&c, peer);
    eprintln!(
        "first box peer: rtc_offer to the box's answer on the channel in {:?}",
        asked.elapsed()
    );
    assert_eq!(unknown["t"], "error");
    assert_eq!(unknown["code"], "not_found");
    assert_eq!(lv.status()["box_peers"], 1);
    // Closing over signaling ends the peer and the box says so.
    send_json(&mut c.ws, json!({"type": "rtc_close", "session": "s1"}));
    let closed = c.next_json(|v| v["type"] == "rtc_closed");
    assert_eq!(closed["session"], "s1");
    assert_eq!(closed["reason"], "closed");
    assert!(common::wait_for(5, || lv.status()["box_peers"] == 0));
}

#[test]
fn a_browser_style_offer_with_only_mdns_candidates_connects_through_peer_reflexive_checks() {
    let lv = Lanvan::start("rtc-box-mdns", &[]);
    let mut c = Client::new(&lv, "like-chromium");
    // Chromium hides its address behind a `.local` name, in the SDP and in the trickle:
    // the box can read neither, and learns the address from the client's STUN checks.
    let mdns = "candidate:1 1 udp 2122260223 3f1c2b5e-8d2a-4b7e-9c1d-0a1b2c3d4e5f.local 54321 typ host generation 0";
    let (peer, answer) = c.offer_with("m", |sdp| {
        let kept: Vec<&str> = sdp
            .split("\r\n")
            .filter(|l| !l.starts_with("a=candidate"))
            .collect();
        let sdp = kept.join("\r\n");
        assert!(
            !sdp.contains("127.0.0.1 "),
            "the client's address is still in the offer"
        );
        sdp.replacen("a=mid:", &format!("a={mdns}\r\na=mid:"), 1)
    });
    let peer = peer.unwrap_or_else(|| panic!("the box refused: {answer}"));
    for candidate in [
        json!(mdns),
        json!({"candidate": mdns, "sdpMid": "0", "sdpMLineIndex": 0}),
        json!(""),
        Value::Null,
    ] {
        send_json(
            &mut c.ws,
            json!({"type": "rtc_candidate", "session": "m", "candidate": candidate}),
        );
    }
    let unknown = talk(&c, peer);
    assert_eq!(unknown["code"], "not_found");
}

#[test]
fn bad_offers_are_refused_with_clear_errors() {
    let lv = Lanvan::start("rtc-box-bad", &[]);
    let mut ws = open(lv.addr, "bad-sdp");
    let deadline = || Instant::now() + Duration::from_secs(5);
    let next_error = |ws: &mut Ws| loop {
        match read(ws, deadline()) {
            Some(Ev::Json(v)) if v["type"] == "error" => return v,
            Some(Ev::Json(_)) => {}
            other => panic!("no error: {other:?}"),
        }
    };
    send_json(
        &mut ws,
        json!({"type": "rtc_offer", "session": "x", "sdp": "v=0\r\nthis is no offer\r\n"}),
    );
    let e = next_error(&mut ws);
    assert_eq!(e["code"], "bad_sdp");
    assert_eq!(e["ref_type"], "rtc_offer");
    send_json(
        &mut ws,
        json!({"type": "rtc_offer", "session": "x", "sdp": 42}),
    );
    assert_eq!(next_error(&mut ws)["code"], "bad_sdp");
    send_json(
        &mut ws,
        json!({"type": "rtc_offer", "session": "", "sdp": "v=0"}),
    );
    assert_eq!(next_error(&mut ws)["code"], "bad_message");
    // The socket still works, and nothing was kept.
    assert_eq!(lv.status()["box_peers"], 0);
    // With P2P off the box is no peer, and says so.
    let off = Lanvan::start("rtc-box-off", &["p2p.mode=off"]);
    assert_eq!(off.status()["p2p"]["box_peer"], false);
    let mut ws = open(off.addr, "no-rtc");
    send_json(
        &mut ws,
        json!({"type": "rtc_offer", "session": "x", "sdp": "v=0"}),
    );
    assert_eq!(next_error(&mut ws)["code"], "rtc_unavailable");
}

#[test]
fn peers_are_limited_per_device_and_in_all() {
    let lv = Lanvan::start(
        "rtc-box-busy",
        &["p2p.max_box_peers=3", "p2p.box_peer_timeout_secs=60"],
    );
    let mut a = Client::new(&lv, "dev-a");
    assert!(a.offer("a1").0.is_some());
    assert!(a.offer("a2").0.is_some());
    let (none, e) = a.offer("a3");
    assert!(none.is_none());
    assert_eq!(e["code"], "rtc_busy");
    let mut b = Client::new(&lv, "dev-b");
    assert!(b.offer("b1").0.is_some());
    let (none, e) = b.offer("b2");
    assert!(none.is_none(), "the box went over p2p.max_box_peers");
    assert_eq!(e["code"], "rtc_busy");
    assert_eq!(lv.status()["box_peers"], 3);
    // A device that leaves frees its peers at once.
    drop(a);
    assert!(common::wait_for(5, || lv.status()["box_peers"] == 1));
    assert!(b.offer("b2").0.is_some());
}

#[test]
fn a_client_that_vanishes_is_dropped_within_seconds_and_others_carry_on() {
    let lv = Lanvan::start("rtc-box-vanish", &[]);
    let mut gone = Client::new(&lv, "dev-gone");
    let mut stays = Client::new(&lv, "dev-stays");
    let (g, _) = gone.offer("g");
    let (s, _) = stays.offer("s");
    let s = s.unwrap();
    talk(&stays, s);
    talk(&gone, g.unwrap());
    assert_eq!(lv.status()["box_peers"], 2);
    // From now on nobody drives `gone`: it stops answering but keeps its /ws open, so
    // only WebRTC can tell. `stays` keeps running meanwhile.
    let vanished = Instant::now();
    let host = stays.host.clone();
    let ws = &mut gone.ws;
    let closed = smol::block_on(smol::future::or(
        async {
            host.clone().run().await;
            None
        },
        async {
            while vanished.elapsed() < Duration::from_secs(15) {
                if let Some(Ev::Json(v)) = common::relay::poll(ws) {
                    if v["type"] == "rtc_closed" {
                        return Some(v);
                    }
                }
                // Let `stays` answer what the box sends it.
                while let Ok((_, e)) = stays.events.try_recv() {
                    assert!(!matches!(e, PeerEvent::Closed(_)), "the other peer closed");
                }
                smol::Timer::after(Duration::from_millis(20)).await;
            }
            None
        },
    ))
    .expect("no rtc_closed for the vanished client");
    let took = vanished.elapsed();
    assert_eq!(closed["reason"], "timeout");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    eprintln!("a vanished box peer was dropped after {took:?}");
    assert_eq!(lv.status()["box_peers"], 1);
    // The other client still gets answers.
    let q = json!({"t": "get_manifest", "manifest": "11".repeat(32)});
    assert!(stays.host.send_text(s, &q.to_string()).unwrap());
    let mut answered = false;
    stays.run_until(5, |_, _, e| {
        if let PeerEvent::Text(t) = e {
            answered = t.contains("\"not_found\"");
        }
        answered
    });
    assert!(answered, "the second client lost its peer");
}

#[test]
fn a_client_downloads_a_stored_multi_chunk_file_from_the_box_over_the_data_channel() {
    let lv = Lanvan::start("rtc-box-download", &[]);
    let file = common::pseudo_random(8, 3 * 262_144 + 4321);
    let stored = lv.upload("big.bin", &file).status;
    assert!(stored == 200 || stored == 201, "upload: {stored}");
    // The manifest comes over HTTP (which computes it); the chunks over the channel.
    let r = lv.get("/api/files/big.bin/manifest");
    assert_eq!(r.status, 200);
    let json: ManifestJson = serde_json::from_value(r.json()).unwrap();
    let m = Arc::new(Manifest::from_json(json).unwrap());
    assert_eq!(m.chunk_count(), 4);
    let mut c = Client::new(&lv, "downloader");
    let (peer, _) = c.offer("dl");
    let peer = peer.unwrap();
    let mut swarm = Swarm::new(m.clone(), None);
    let mut out = vec![0u8; file.len()];
    let mut manifest_over_dc = None;
    let done = c.run_until(30, |host, id, e| {
        assert_eq!(id, peer);
        let now = Instant::now();
        let src = SourceId(id);
        match e {
            PeerEvent::Open => {
                let hello = json!({"t": "hello", "id": "downloader", "name": "test", "role": "cli", "max_requests": 16});
                assert!(host.send_text(id, &hello.to_string()).unwrap());
                let ask = json!({"t": "get_manifest", "manifest": m.id().to_string()});
                assert!(host.send_text(id, &ask.to_string()).unwrap());
                swarm.add_source(src, now);
            }
            PeerEvent::Text(t) => match Message::parse(&t) {
                Ok(Message::Manifest(j)) => manifest_over_dc = Some(j),
                Ok(msg) => swarm.handle_message(src, &msg, now),
                Err(e) => panic!("the box sent {t}: {e:?}"),
            },
            PeerEvent::Binary(b) => swarm.handle_piece(src, &b, now),
            PeerEvent::Closed(r) => panic!("the box closed the peer: {r:?}"),
            _ => {}
        }
        while let Some((_, msg)) = swarm.poll_transmit() {
            assert!(host.send_text(id, &msg.to_text()).unwrap());
        }
        while let Some(ev) = swarm.poll_event() {
            match ev {
                SwarmEvent::Verified { index, data } => {
                    let at = m.chunk_offset(index) as usize;
                    out[at..at + data.len()].copy_from_slice(&data);
                }
                SwarmEvent::SourceDropped { reason, .. } => panic!("box dropped: {reason:?}"),
                SwarmEvent::Done => {}
            }
        }
        swarm.is_done() && manifest_over_dc.is_some()
    });
    assert!(done, "the download did not finish");
    assert_eq!(common::sha_hex(&out), common::sha_hex(&file));
    let j = manifest_over_dc.unwrap();
    assert_eq!(Manifest::from_json(*j).unwrap().id(), m.id());
    assert_eq!(swarm.delivered_by(SourceId(peer)), file.len() as u64);
}
