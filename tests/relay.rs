//! End-to-end tests of device-to-device sends through the box: real binary, real
//! WebSockets, bytes and SHA-256 compared at the receiving end. Covers two and ten
//! clients, one sender to several receivers, a receiver that stops reading, a receiver
//! socket killed mid-transfer, decline, cancel, inboxes (delivery and expiry), starting
//! mid-file, and bad input (headers, ids, sizes, hashes).

mod common;

use common::relay::{
    open, read, send_chunk, send_json, sha_hex, Answer, Client, Data, Ev, Outgoing, Ws,
};
use common::{pseudo_random, wait_for, Lanvan};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Runs a client on its own thread until everything it does has ended (or `secs`).
fn run(mut c: Client, secs: u64) -> std::thread::JoinHandle<Client> {
    std::thread::spawn(move || {
        c.run_until(secs, |c| !c.out.is_empty() || !c.inc.is_empty());
        c.run_until(secs, Client::all_ended);
        c
    })
}

/// Steps two clients of this thread in turn until `done` holds (or `secs` pass).
fn run2(
    a: &mut Client,
    b: &mut Client,
    secs: u64,
    done: impl Fn(&Client, &Client) -> bool,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if done(a, b) {
            return true;
        }
        a.step(Duration::from_millis(5));
        b.step(Duration::from_millis(5));
    }
    done(a, b)
}

/// The next JSON message of type `ty` on a bare socket (skipping others), or panic.
fn expect(ws: &mut Ws, ty: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match read(ws, deadline) {
            Some(Ev::Json(v)) if v["type"] == ty => return v,
            Some(Ev::Json(_)) | Some(Ev::Chunk(..)) => {}
            other => panic!("waiting for {ty}: {other:?}"),
        }
    }
}

/// An `error` reply with this code, skipping other messages.
fn expect_error(ws: &mut Ws, code: &str) -> Value {
    let v = expect(ws, "error");
    assert_eq!(v["code"], code, "{v}");
    v
}

fn assert_received(c: &Client, id: u32, data: &[u8]) {
    let inc = &c.inc[&id];
    assert_eq!(
        inc.result_type(),
        Some("relay_complete"),
        "{:?}",
        inc.events
    );
    assert_eq!(inc.bytes.len(), data.len());
    assert!(inc.bytes == data, "received bytes differ");
    assert_eq!(inc.result.as_ref().unwrap()["sha256"], sha_hex(data));
}

fn status_relay(lv: &Lanvan) -> Value {
    lv.status()["relay"].clone()
}

#[test]
fn two_clients_send_files_and_hashes_match() {
    let lv = Lanvan::start("relay-two", &[]);
    let b = Client::connect(lv.addr, "bob");
    let b = run(b, 60);
    let mut a = Client::connect(lv.addr, "alice");
    // Odd sizes: a partial last chunk, exactly one chunk, an empty file; one with its
    // hash in the offer, the others with it in relay_end.
    let files = [
        pseudo_random(1, 5 * MIB + 123),
        pseudo_random(2, 256 * KIB),
        Vec::new(),
    ];
    for (i, f) in files.iter().enumerate() {
        let mut o = Outgoing::new("bob", &format!("file-{i}.bin"), Data::Bytes(f.clone()));
        if i == 0 {
            o.declare = Some(sha_hex(f));
        }
        a.offer(o);
    }
    assert!(a.run_until(60, Client::all_ended));
    let b = b.join().unwrap();
    for (i, f) in files.iter().enumerate() {
        let o = &a.out[i];
        assert_eq!(o.result_type(), Some("relay_complete"), "{:?}", o.events);
        assert_eq!(o.result.as_ref().unwrap()["sha256"], sha_hex(f));
        assert!(o.saw("relay_accepted"));
        let id = o.id.unwrap();
        assert_received(&b, id, f);
        assert_eq!(b.inc[&id].offer["name"], format!("file-{i}.bin"));
        assert_eq!(b.inc[&id].offer["from"], "alice");
    }
    assert!(wait_for(5, || status_relay(&lv)["transfers"] == 0));
    assert_eq!(status_relay(&lv)["ring_bytes"], 8 * MIB);
}

#[test]
fn ten_clients_in_five_pairs_at_once() {
    let lv = Lanvan::start("relay-ten", &["relay.memory=4MiB"]);
    let receivers: Vec<_> = (0..5)
        .map(|i| run(Client::connect(lv.addr, &format!("recv-{i}")), 120))
        .collect();
    let senders: Vec<_> = (0..5)
        .map(|i| {
            let addr = lv.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr, &format!("send-{i}"));
                let data = pseudo_random(100 + i, 4 * MIB + i as usize * 1000);
                c.offer(Outgoing::new(
                    &format!("recv-{i}"),
                    "pair.bin",
                    Data::Bytes(data.clone()),
                ));
                assert!(c.run_until(120, Client::all_ended));
                (c, data)
            })
        })
        .collect();
    let senders: Vec<(Client, Vec<u8>)> = senders.into_iter().map(|h| h.join().unwrap()).collect();
    let receivers: Vec<Client> = receivers.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, (s, data)) in senders.iter().enumerate() {
        assert_eq!(s.out[0].result_type(), Some("relay_complete"));
        assert_received(&receivers[i], s.out[0].id.unwrap(), data);
    }
}

#[test]
fn one_sender_to_three_receivers_at_once() {
    let lv = Lanvan::start("relay-fanout", &["relay.memory=2MiB"]);
    let receivers: Vec<_> = (0..3)
        .map(|i| run(Client::connect(lv.addr, &format!("r{i}")), 60))
        .collect();
    let mut a = Client::connect(lv.addr, "sender");
    let files: Vec<Vec<u8>> = (0..3).map(|i| pseudo_random(7 + i, 3 * MIB + 17)).collect();
    for (i, f) in files.iter().enumerate() {
        a.offer(Outgoing::new(
            &format!("r{i}"),
            "fan.bin",
            Data::Bytes(f.clone()),
        ));
    }
    assert!(a.run_until(60, Client::all_ended));
    let receivers: Vec<Client> = receivers.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, f) in files.iter().enumerate() {
        assert_eq!(a.out[i].result_type(), Some("relay_complete"));
        assert_received(&receivers[i], a.out[i].id.unwrap(), f);
    }
}

#[test]
fn a_receiver_that_stops_reading_pauses_only_its_own_sender() {
    // 2 MiB of ring = 8 slots of 256 KiB.
    let lv = Lanvan::start("relay-slow", &["relay.memory=2MiB"]);
    let slow_data = pseudo_random(11, 16 * MIB);
    let fast_data = pseudo_random(12, 16 * MIB);
    let mut slow = Client::connect(lv.addr, "slow-recv");
    let fast = Client::connect(lv.addr, "fast-recv");

    let addr = lv.addr;
    let d = slow_data.clone();
    let slow_sender = std::thread::spawn(move || {
        let mut c = Client::connect(addr, "slow-send");
        c.offer(Outgoing::new("slow-recv", "slow.bin", Data::Bytes(d)));
        // Record how many chunks it had sent when the receiver came back (see below).
        c.run_until(60, |c| c.out[0].sent >= 2);
        let deadline = Instant::now() + Duration::from_secs(6);
        let mut max_sent_while_stalled = 0;
        while Instant::now() < deadline {
            c.step(Duration::from_millis(20));
            max_sent_while_stalled = c.out[0].sent;
        }
        assert!(c.run_until(60, Client::all_ended));
        (c, max_sent_while_stalled)
    });
    // The slow receiver takes two chunks, then stops reading for 7 s (within the box's 10 s
    // write-stall and 15 s heartbeat limits, so it is paused, not dropped).
    slow.run_until(30, |c| c.inc.values().any(|i| i.next >= 2));
    let stalled_at = Instant::now();
    let fast = run(fast, 60);
    let mut f = Client::connect(lv.addr, "fast-send");
    f.offer(Outgoing::new(
        "fast-recv",
        "fast.bin",
        Data::Bytes(fast_data.clone()),
    ));
    assert!(f.run_until(30, Client::all_ended));
    let fast_took = stalled_at.elapsed();
    std::thread::sleep(Duration::from_secs(7).saturating_sub(stalled_at.elapsed()));
    slow.run_until(60, Client::all_ended);

    // The other pair finished while the slow receiver read nothing.
    assert!(
        fast_took < Duration::from_secs(7),
        "fast pair took {fast_took:?}"
    );
    assert_eq!(f.out[0].result_type(), Some("relay_complete"));
    assert_received(&fast.join().unwrap(), f.out[0].id.unwrap(), &fast_data);
    // The stalled pair's sender was held to the ring: acked chunks plus at most its
    // slots (8), plus what socket buffers swallowed before the box's credit ran out: none.
    let (s, max_sent) = slow_sender.join().unwrap();
    assert!(
        max_sent <= 2 + 8,
        "sender sent {max_sent} chunks while its receiver stalled"
    );
    assert_eq!(s.out[0].result_type(), Some("relay_complete"));
    assert_received(&slow, s.out[0].id.unwrap(), &slow_data);
}

#[test]
fn a_killed_receiver_socket_resumes_from_the_last_acknowledged_chunk() {
    let lv = Lanvan::start("relay-kill", &["relay.grace_secs=20"]);
    let data = pseudo_random(21, 12 * MIB + 5);
    let mut b = Client::connect(lv.addr, "phone");
    let addr = lv.addr;
    let d = data.clone();
    let sender = std::thread::spawn(move || {
        let mut c = Client::connect(addr, "laptop");
        c.offer(Outgoing::new("phone", "resume.bin", Data::Bytes(d)));
        assert!(c.run_until(60, Client::all_ended));
        c
    });
    assert!(b.run_until(30, |c| c.inc.values().any(|i| i.next >= 10)));
    let had = b.inc.values().next().unwrap().next;
    // Kill the TCP connection without a close frame, as a phone losing Wi-Fi would. With
    // unread data in its buffer, the kernel answers with a reset, which may also discard
    // acks the box had not read yet: the box resumes from the last ack it got.
    b.ws.get_mut().shutdown(std::net::Shutdown::Both).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    b.reconnect(lv.addr);
    assert!(b.run_until(60, Client::all_ended));
    let s = sender.join().unwrap();
    let id = s.out[0].id.unwrap();
    let resume = b.inc[&id]
        .events
        .iter()
        .find(|e| e["type"] == "relay_resume")
        .expect("receiver got relay_resume")
        .clone();
    let paused = s.out[0]
        .events
        .iter()
        .find(|e| e["type"] == "relay_paused")
        .expect("sender paused");
    let acked = paused["acked"].as_u64().unwrap();
    assert!(
        acked > 0 && acked <= u64::from(had),
        "acked {acked}, receiver had {had}"
    );
    // Both sides resume at the last chunk the box saw acknowledged, never from zero.
    assert_eq!(resume["from_chunk"], acked);
    let sender_resume = s.out[0]
        .events
        .iter()
        .find(|e| e["type"] == "relay_resume")
        .unwrap();
    assert_eq!(sender_resume["from_chunk"], acked);
    // The window in between was resent, and nothing before it.
    let chunks = u64::from(s.out[0].chunks);
    assert!(
        s.out[0].sent > chunks && s.out[0].sent <= chunks + (s.out[0].sent - acked),
        "{}",
        s.out[0].sent
    );
    assert_eq!(s.out[0].result_type(), Some("relay_complete"));
    assert_received(&b, id, &data);
}

#[test]
fn a_sender_that_never_comes_back_fails_after_the_grace_period() {
    let lv = Lanvan::start("relay-grace", &["relay.grace_secs=1"]);
    let mut b = Client::connect(lv.addr, "b");
    let mut a = Client::connect(lv.addr, "a");
    a.offer(Outgoing::new(
        "b",
        "x.bin",
        Data::Bytes(pseudo_random(5, 20 * MIB)),
    ));
    assert!(run2(&mut a, &mut b, 20, |_, b| b
        .inc
        .values()
        .any(|i| i.next >= 1)));
    drop(a);
    assert!(b.run_until(10, Client::all_ended));
    let inc = b.inc.values().next().unwrap();
    assert!(
        inc.events.iter().any(|e| e["type"] == "relay_paused"),
        "{:?}",
        inc.events
    );
    assert_eq!(inc.result.as_ref().unwrap()["code"], "peer_gone");
    assert!(wait_for(5, || status_relay(&lv)["transfers"] == 0));
}

#[test]
fn a_declined_offer_tells_the_sender() {
    let lv = Lanvan::start("relay-decline", &[]);
    let mut b = Client::connect(lv.addr, "b");
    b.answer = Answer::Decline;
    let b = run(b, 20);
    let mut a = Client::connect(lv.addr, "a");
    a.offer(Outgoing::new("b", "no.bin", Data::Bytes(vec![1; 1000])));
    assert!(a.run_until(20, Client::all_ended));
    assert_eq!(a.out[0].result_type(), Some("relay_declined"));
    assert_eq!(a.out[0].sent, 0);
    let b = b.join().unwrap();
    assert!(b.inc.values().all(|i| i.bytes.is_empty()));
    assert!(wait_for(5, || status_relay(&lv)["transfers"] == 0));
}

#[test]
fn either_side_can_cancel_and_the_other_is_told() {
    let lv = Lanvan::start("relay-cancel", &[]);
    let mut b = Client::connect(lv.addr, "b");
    let mut a = Client::connect(lv.addr, "a");
    // Sender cancels mid-file.
    a.offer(Outgoing::new(
        "b",
        "one.bin",
        Data::Bytes(pseudo_random(31, 64 * MIB)),
    ));
    assert!(run2(&mut a, &mut b, 20, |a, _| a.out[0].acked >= 2));
    let id = a.out[0].id.unwrap();
    send_json(&mut a.ws, json!({"type": "relay_cancel", "id": id}));
    assert!(run2(&mut a, &mut b, 20, |_, b| b.inc[&id].result.is_some()));
    let r = b.inc[&id].result.clone().unwrap();
    assert_eq!(
        (r["type"].as_str(), r["by"].as_str()),
        (Some("relay_cancelled"), Some("a"))
    );
    assert!(a.run_until(20, |c| c.out[0].result.is_some()));
    assert!(b.inc[&id].bytes.len() < 64 * MIB);

    // Receiver cancels mid-file.
    let i = a.offer(Outgoing::new(
        "b",
        "two.bin",
        Data::Bytes(pseudo_random(32, 64 * MIB)),
    ));
    assert!(run2(&mut a, &mut b, 20, |_, b| b
        .inc
        .values()
        .any(|x| x.result.is_none() && x.next >= 2)));
    let id2 = *b.inc.iter().find(|(_, x)| x.result.is_none()).unwrap().0;
    send_json(
        &mut b.ws,
        json!({"type": "relay_cancel", "id": id2, "reason": "changed my mind"}),
    );
    assert!(run2(&mut a, &mut b, 20, |a, _| a.out[i].result.is_some()));
    let r = a.out[i].result.clone().unwrap();
    assert_eq!(r["type"], "relay_cancelled");
    assert_eq!(r["by"], "b");
    assert_eq!(r["reason"], "changed my mind");
    assert!(wait_for(5, || status_relay(&lv)["transfers"] == 0));

    // The ring is whole again: a new send goes through.
    let data = pseudo_random(33, 3 * MIB);
    let j = a.offer(Outgoing::new("b", "three.bin", Data::Bytes(data.clone())));
    assert!(run2(&mut a, &mut b, 30, |a, b| {
        a.out[j].result.is_some() && a.out[j].id.is_some_and(|id| b.inc[&id].result.is_some())
    }));
    assert_received(&b, a.out[j].id.unwrap(), &data);
}

#[test]
fn an_offline_device_gets_its_inbox_when_it_connects() {
    let lv = Lanvan::start("relay-inbox", &[]);
    let mut a = Client::connect(lv.addr, "a");
    let data = pseudo_random(41, 3 * MIB + 99);
    // Without "inbox", an offline device is an error.
    let i = a.offer(Outgoing::new("away", "x.bin", Data::Bytes(data.clone())));
    assert!(a.run_until(10, |c| c.out[i].result.is_some()));
    assert_eq!(a.out[i].result.as_ref().unwrap()["code"], "device_offline");

    let mut o = Outgoing::new("away", "for-later.bin", Data::Bytes(data.clone()));
    o.inbox = true;
    let i = a.offer(o);
    assert!(a.run_until(30, |c| c.out[i].result.is_some()));
    assert_eq!(a.out[i].events[0]["mode"], "inbox");
    let stored = a.out[i].result.clone().unwrap();
    assert_eq!(stored["type"], "relay_stored", "{stored}");
    assert_eq!(stored["sha256"], sha_hex(&data));
    let inbox_id = stored["inbox_id"].as_str().unwrap().to_string();
    assert_eq!(status_relay(&lv)["inbox"], 1);
    let part = lv.data.join(format!(".lanvan/inbox/{inbox_id}.part"));
    assert_eq!(std::fs::read(&part).unwrap(), data, "stored bytes on disk");

    // The device connects: it is offered the stored send, takes it, and the sender hears.
    let mut b = Client::connect(lv.addr, "away");
    assert!(b.run_until(30, |c| !c.inc.is_empty() && c.all_ended()));
    let (&id, inc) = b.inc.iter().next().unwrap();
    assert_eq!(inc.offer["stored"], true);
    assert_eq!(inc.offer["from"], "a");
    assert_eq!(inc.offer["name"], "for-later.bin");
    assert_received(&b, id, &data);
    let deadline = Instant::now() + Duration::from_secs(10);
    let delivered = loop {
        a.step(Duration::from_millis(50));
        if let Some(v) = a.seen.iter().find(|v| v["type"] == "relay_delivered") {
            break v.clone();
        }
        assert!(Instant::now() < deadline, "no relay_delivered");
    };
    assert_eq!(delivered["inbox_id"], inbox_id);
    assert!(
        wait_for(5, || !part.exists()),
        "delivered inbox file deleted"
    );
    assert_eq!(status_relay(&lv)["inbox"], 0);
}

#[test]
fn an_unanswered_offer_moves_to_the_inbox_and_survives_a_restart() {
    let lv = Lanvan::start("relay-timeout", &[]);
    let mut b = Client::connect(lv.addr, "b");
    b.answer = Answer::Ignore;
    let mut a = Client::connect(lv.addr, "a");
    let data = pseudo_random(51, MIB + 1);
    let mut o = Outgoing::new("b", "later.bin", Data::Bytes(data.clone()));
    o.inbox = true;
    o.accept_timeout_ms = Some(500);
    a.offer(o);
    assert!(a.run_until(30, Client::all_ended));
    assert!(a.out[0].saw("relay_to_inbox"));
    assert_eq!(a.out[0].result_type(), Some("relay_stored"));
    assert!(b.run_until(10, |c| c
        .inc
        .values()
        .any(|i| i.events.iter().any(|e| e["reason"] == "moved_to_inbox"))));
    drop(b);
    // The box restarts (SIGKILL); the stored send is still there for b.
    let lv = lv.kill_and_restart();
    assert_eq!(status_relay(&lv)["inbox"], 1);
    let mut b = Client::connect(lv.addr, "b");
    assert!(b.run_until(30, |c| c.inc.values().any(|i| i.result.is_some())));
    let (&id, _) = b
        .inc
        .iter()
        .find(|(_, i)| i.offer["stored"] == true)
        .unwrap();
    assert_received(&b, id, &data);
}

#[test]
fn inbox_entries_expire() {
    let lv = Lanvan::start("relay-expire", &["relay.inbox_ttl_secs=1"]);
    let mut a = Client::connect(lv.addr, "a");
    let mut o = Outgoing::new("gone", "old.bin", Data::Bytes(vec![7; 1000]));
    o.inbox = true;
    a.offer(o);
    assert!(a.run_until(10, Client::all_ended));
    assert_eq!(a.out[0].result_type(), Some("relay_stored"));
    let key = a.out[0].result.as_ref().unwrap()["inbox_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(a.run_until(10, |c| c.seen.iter().any(|v| v["type"] == "relay_expired")));
    let expired = a
        .seen
        .iter()
        .find(|v| v["type"] == "relay_expired")
        .unwrap();
    assert_eq!(expired["inbox_id"], key.as_str());
    assert!(wait_for(5, || !lv
        .data
        .join(format!(".lanvan/inbox/{key}.part"))
        .exists()));
    // The device connects later and is offered nothing.
    let mut b = Client::connect(lv.addr, "gone");
    b.run_until(1, |_| false);
    assert!(b.inc.is_empty());
    assert_eq!(status_relay(&lv)["inbox"], 0);
}

#[test]
fn a_send_can_start_mid_file() {
    let lv = Lanvan::start("relay-start", &[]);
    let data = pseudo_random(61, 3 * MIB + 10);
    let start = 5u32; // 5 chunks of 256 KiB the receiver already has (from P2P, say)
    let mut b = Client::connect(lv.addr, "b");
    b.have_prefix = data[..start as usize * 256 * KIB].to_vec();
    let b = run(b, 30);
    let mut a = Client::connect(lv.addr, "a");
    let mut o = Outgoing::new("b", "half.bin", Data::Bytes(data.clone()));
    o.start_chunk = start;
    a.offer(o);
    assert!(a.run_until(30, Client::all_ended));
    assert_eq!(a.out[0].result_type(), Some("relay_complete"));
    assert_eq!(
        a.out[0].sent,
        u64::from(a.out[0].chunks - start),
        "only the missing chunks travel"
    );
    let b = b.join().unwrap();
    assert_eq!(b.inc.values().next().unwrap().offer["start_chunk"], start);
    assert_received(&b, a.out[0].id.unwrap(), &data);
}

#[test]
fn a_p2p_fallback_send_carries_its_ref_to_the_receiver() {
    // A P2P transfer broke after 3 chunks; the sender continues it through the relay, and
    // the receiver's page matches the offer to the transfer it has half of by its `ref`.
    let lv = Lanvan::start("relay-ref", &[]);
    let data = pseudo_random(62, 2 * MIB + 5);
    let start = 3u32;
    let mut b = Client::connect(lv.addr, "b");
    b.have_prefix = data[..start as usize * 256 * KIB].to_vec();
    let b = run(b, 30);
    let mut a = Client::connect(lv.addr, "a");
    let mut o = Outgoing::new("b", "p2p.bin", Data::Bytes(data.clone()));
    o.start_chunk = start;
    o.client_ref = Some("p2p-xfer-7".into());
    a.offer(o);
    assert!(a.run_until(30, Client::all_ended));
    assert_eq!(a.out[0].events[0]["type"], "relay_offered");
    assert_eq!(a.out[0].events[0]["ref"], "p2p-xfer-7");
    assert_eq!(a.out[0].result_type(), Some("relay_complete"));
    let b = b.join().unwrap();
    let offer = &b.inc.values().next().unwrap().offer;
    assert_eq!(offer["ref"], "p2p-xfer-7", "{offer}");
    assert_eq!(offer["start_chunk"], start);
    assert_received(&b, a.out[0].id.unwrap(), &data);
}

#[test]
fn a_store_send_goes_to_the_inbox_of_a_connected_device_and_is_offered_when_stored() {
    let lv = Lanvan::start("relay-store", &[]);
    let mut b = Client::connect(lv.addr, "b");
    let mut a = Client::connect(lv.addr, "a");
    let data = pseudo_random(63, 2 * MIB + 17);
    let mut o = Outgoing::new("b", "hidden.bin", Data::Bytes(data.clone()));
    o.store = true;
    o.client_ref = Some("p2p-xfer-8".into());
    // A fallback that starts mid-file: the inbox keeps whole files, so it starts at 0.
    o.start_chunk = 2;
    a.offer(o);
    // The sender's bytes go to the box's disk although b is online (its page is hidden).
    assert!(a.run_until(30, Client::all_ended));
    assert_eq!(a.out[0].events[0]["mode"], "inbox");
    assert_eq!(a.out[0].events[0]["start_chunk"], 0);
    assert_eq!(a.out[0].result_type(), Some("relay_stored"));
    // Stored while b is connected: b is offered it at once, with the ref, and takes it.
    assert!(b.run_until(30, |c| !c.inc.is_empty() && c.all_ended()));
    assert_eq!(
        b.inc.len(),
        1,
        "one offer only: the stored one, no live one"
    );
    let (&id, inc) = b.inc.iter().next().unwrap();
    assert_eq!(inc.offer["stored"], true);
    assert_eq!(inc.offer["ref"], "p2p-xfer-8");
    assert_eq!(inc.offer["from"], "a");
    assert_received(&b, id, &data);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.seen.iter().any(|v| v["type"] == "relay_delivered") {
        a.step(Duration::from_millis(50));
        assert!(Instant::now() < deadline, "no relay_delivered");
    }
    // A bad `store` is an error, not a guess.
    send_json(
        &mut a.ws,
        json!({"type": "relay_offer", "to": "b", "name": "f", "size": 1, "store": "yes"}),
    );
    expect_error(&mut a.ws, "missing_field");
}

#[test]
fn auto_accept_from_marked_devices() {
    let lv = Lanvan::start("relay-auto", &[]);
    let mut b = Client::connect(lv.addr, "b");
    b.answer = Answer::Ignore;
    send_json(
        &mut b.ws,
        json!({"type": "relay_auto_accept", "devices": ["a"]}),
    );
    expect(&mut b.ws, "relay_auto_accepted");
    let b = run(b, 30);
    let mut a = Client::connect(lv.addr, "a");
    let data = pseudo_random(71, MIB);
    a.offer(Outgoing::new("b", "auto.bin", Data::Bytes(data.clone())));
    assert!(a.run_until(30, Client::all_ended));
    let b = b.join().unwrap();
    let id = a.out[0].id.unwrap();
    assert_eq!(b.inc[&id].offer["auto_accepted"], true);
    assert_received(&b, id, &data);
}

/// A pair with one transfer running, for the bad-input tests.
fn running_pair(addr: SocketAddr) -> (Ws, Ws, u32) {
    let mut a = open(addr, "a");
    let mut b = open(addr, "b");
    send_json(
        &mut a,
        json!({"type": "relay_offer", "to": "b", "name": "f", "size": 2 * 256 * KIB}),
    );
    let id = expect(&mut a, "relay_offered")["id"].as_u64().unwrap() as u32;
    expect(&mut b, "relay_offer");
    send_json(&mut b, json!({"type": "relay_accept", "id": id}));
    expect(&mut a, "relay_accepted");
    let w = expect(&mut a, "relay_window");
    assert!(w["window_end"].as_u64().unwrap() >= 2, "{w}");
    (a, b, id)
}

#[test]
fn bad_chunk_frames_get_clear_errors_and_disturb_nothing() {
    let lv = Lanvan::start("relay-bad", &[]);
    let (mut a, mut b, id) = running_pair(lv.addr);
    let mut c = open(lv.addr, "mallory");

    // A frame shorter than the header.
    c.send(tungstenite::Message::binary(vec![1u8, 2, 3]))
        .unwrap();
    expect_error(&mut c, "bad_header");
    // A transfer that does not exist.
    send_chunk(&mut c, 9999, 0, b"hello");
    let e = expect_error(&mut c, "unknown_transfer");
    assert_eq!(e["id"], 9999);
    // Someone else's transfer: the receiver and a third device may not inject chunks.
    send_chunk(&mut c, id, 0, &[0u8; 256 * KIB]);
    expect_error(&mut c, "not_yours");
    send_chunk(&mut b, id, 0, &[0u8; 256 * KIB]);
    expect_error(&mut b, "not_yours");
    // The sender itself: oversized, short, and out-of-range chunks.
    send_chunk(&mut a, id, 0, &vec![0u8; 256 * KIB + 1]);
    expect_error(&mut a, "chunk_too_large");
    send_chunk(&mut a, id, 0, &[0u8; 100]);
    expect_error(&mut a, "wrong_size");
    send_chunk(&mut a, id, 7, &[0u8; 256 * KIB]);
    expect_error(&mut a, "bad_index");
    // Acks and answers for transfers that are not yours.
    send_json(&mut c, json!({"type": "relay_ack", "id": id, "acked": 2}));
    expect_error(&mut c, "not_yours");
    send_json(&mut c, json!({"type": "relay_cancel", "id": id}));
    expect_error(&mut c, "not_yours");
    send_json(&mut b, json!({"type": "relay_ack", "id": id, "acked": 2}));
    expect_error(&mut b, "bad_ack");
    send_json(&mut a, json!({"type": "relay_offer", "to": "b"}));
    expect_error(&mut a, "missing_field");
    send_json(
        &mut a,
        json!({"type": "relay_offer", "to": "a", "name": "x", "size": 1}),
    );
    expect_error(&mut a, "bad_offer");
    send_json(&mut a, json!({"type": "relay_nonsense"}));
    expect_error(&mut a, "unknown_type");

    // A frame over ws.max_message_bytes closes only that socket.
    let big = vec![0u8; 600 * KIB];
    let _ = c.send(tungstenite::Message::binary(big));
    let e = expect(&mut c, "error");
    assert_eq!(e["code"], "bad_frame");

    // The real transfer is untouched and completes.
    let data = pseudo_random(81, 2 * 256 * KIB);
    send_chunk(&mut a, id, 0, &data[..256 * KIB]);
    send_chunk(&mut a, id, 1, &data[256 * KIB..]);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < data.len() {
        match read(&mut b, deadline) {
            Some(Ev::Chunk(i, _, bytes)) if i == id => got.extend_from_slice(&bytes),
            Some(Ev::Json(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(got == data);
    send_json(
        &mut a,
        json!({"type": "relay_end", "id": id, "sha256": sha_hex(&data)}),
    );
    send_json(
        &mut b,
        json!({"type": "relay_done", "id": id, "sha256": sha_hex(&data)}),
    );
    assert_eq!(expect(&mut b, "relay_complete")["sha256"], sha_hex(&data));
    assert_eq!(expect(&mut a, "relay_complete")["sha256"], sha_hex(&data));
}

#[test]
fn a_wrong_hash_at_completion_fails_the_transfer_on_both_sides() {
    let lv = Lanvan::start("relay-hash", &[]);
    // The receiver reports a hash other than the sender's.
    let (mut a, mut b, id) = running_pair(lv.addr);
    let data = pseudo_random(91, 2 * 256 * KIB);
    send_chunk(&mut a, id, 0, &data[..256 * KIB]);
    send_chunk(&mut a, id, 1, &data[256 * KIB..]);
    send_json(
        &mut a,
        json!({"type": "relay_end", "id": id, "sha256": sha_hex(&data)}),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while n < 2 {
        if let Some(Ev::Chunk(..)) = read(&mut b, deadline) {
            n += 1;
        }
    }
    send_json(
        &mut b,
        json!({"type": "relay_done", "id": id, "sha256": sha_hex(b"something else")}),
    );
    let f = expect(&mut b, "relay_failed");
    assert_eq!(f["code"], "hash_mismatch");
    assert_eq!(expect(&mut a, "relay_failed")["code"], "hash_mismatch");
    drop((a, b));

    // The sender offered one hash and sent other bytes: the receiver's check catches it.
    let mut b = Client::connect(lv.addr, "b2");
    let b = {
        b.answer = Answer::Accept;
        run(b, 30)
    };
    let mut a = Client::connect(lv.addr, "a2");
    let mut o = Outgoing::new("b2", "liar.bin", Data::Bytes(pseudo_random(92, MIB)));
    o.declare = Some(sha_hex(b"not these bytes"));
    a.offer(o);
    assert!(a.run_until(30, Client::all_ended));
    assert_eq!(a.out[0].result.as_ref().unwrap()["code"], "hash_mismatch");
    let b = b.join().unwrap();
    assert_eq!(
        b.inc.values().next().unwrap().result.as_ref().unwrap()["code"],
        "hash_mismatch"
    );
}

#[test]
fn a_killed_sender_socket_resumes_from_the_last_acknowledged_chunk() {
    let lv = Lanvan::start("relay-kill-sender", &["relay.grace_secs=20"]);
    let data = pseudo_random(23, 12 * MIB + 77);
    let b = run(Client::connect(lv.addr, "phone"), 60);
    let mut a = Client::connect(lv.addr, "laptop");
    a.offer(Outgoing::new(
        "phone",
        "resume.bin",
        Data::Bytes(data.clone()),
    ));
    assert!(a.run_until(30, |c| c.out[0].acked >= 8));
    a.ws.get_mut().shutdown(std::net::Shutdown::Both).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    a.reconnect(lv.addr);
    assert!(a.run_until(60, Client::all_ended));
    let b = b.join().unwrap();
    let id = a.out[0].id.unwrap();
    let paused = b.inc[&id]
        .events
        .iter()
        .find(|e| e["type"] == "relay_paused")
        .expect("receiver paused");
    let resume = a.out[0]
        .events
        .iter()
        .find(|e| e["type"] == "relay_resume")
        .expect("sender resumed");
    assert_eq!(resume["role"], "sender");
    // Chunks already on their way to the receiver when the sender vanished still count:
    // the receiver acks them during the pause, and the sender resumes after them.
    let from = resume["from_chunk"].as_u64().unwrap();
    assert!(
        from >= paused["acked"].as_u64().unwrap() && from >= 8,
        "{resume} {paused}"
    );
    let resent = a.out[0].sent - u64::from(a.out[0].chunks);
    assert!(
        resent <= 32,
        "resent {resent} chunks: only the unacknowledged window"
    );
    assert_eq!(a.out[0].result_type(), Some("relay_complete"));
    assert_received(&b, id, &data);
}

#[test]
fn an_inbox_send_over_the_quota_is_refused_and_leaves_nothing() {
    let lv = Lanvan::start("relay-quota", &["store.quota=2MiB"]);
    let mut a = Client::connect(lv.addr, "a");
    let mut o = Outgoing::new("away", "huge.bin", Data::Bytes(pseudo_random(3, 3 * MIB)));
    o.inbox = true;
    a.offer(o);
    assert!(a.run_until(10, Client::all_ended));
    let r = a.out[0].result.clone().unwrap();
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("relay_failed"), Some("no_space")),
        "{r}"
    );
    assert!(r["message"].as_str().unwrap().contains("quota"), "{r}");
    assert_eq!(a.out[0].sent, 0);
    // A send that fits still works, and counts against the quota for uploads.
    let small = pseudo_random(4, MIB + 5);
    let mut o = Outgoing::new("away", "fits.bin", Data::Bytes(small));
    o.inbox = true;
    let i = a.offer(o);
    assert!(a.run_until(10, |c| c.out[i].result.is_some()));
    assert_eq!(a.out[i].result_type(), Some("relay_stored"));
    let up = lv.json(
        "POST",
        "/api/uploads",
        &json!({"name": "x.bin", "size": MIB}),
    );
    assert_eq!(up.status, 507, "{up:?}");
    let inbox = lv.data.join(".lanvan/inbox");
    let files = std::fs::read_dir(&inbox).unwrap().count();
    assert_eq!(
        files, 2,
        "one .part and one .json: the refused send left nothing"
    );
}

#[test]
fn a_sender_that_was_away_hears_its_send_was_delivered() {
    let lv = Lanvan::start("relay-notice", &[]);
    let mut a = Client::connect(lv.addr, "a");
    let data = pseudo_random(8, 300 * KIB);
    let mut o = Outgoing::new("b", "note.bin", Data::Bytes(data.clone()));
    o.inbox = true;
    a.offer(o);
    assert!(a.run_until(10, Client::all_ended));
    let key = a.out[0].result.as_ref().unwrap()["inbox_id"].clone();
    drop(a);
    let mut b = Client::connect(lv.addr, "b");
    assert!(b.run_until(10, |c| !c.inc.is_empty() && c.all_ended()));
    assert_received(&b, *b.inc.keys().next().unwrap(), &data);
    let mut a = Client::connect(lv.addr, "a");
    assert!(a.run_until(5, |c| c.seen.iter().any(|v| v["type"] == "relay_delivered")));
    let d = a
        .seen
        .iter()
        .find(|v| v["type"] == "relay_delivered")
        .unwrap();
    assert_eq!(d["inbox_id"], key);
    assert_eq!(d["to"], "b");
}

#[test]
fn box_memory_does_not_grow_with_the_bytes_relayed() {
    let lv = Lanvan::start("relay-memory", &[]);
    let block = std::sync::Arc::new(pseudo_random(9, 256 * KIB));
    let relay = |gib_eighths: u64, n: u32| {
        let size = gib_eighths * 128 * MIB as u64;
        let mut b = Client::connect(lv.addr, &format!("mem-b{n}"));
        b.keep = false;
        let b = run(b, 120);
        let mut a = Client::connect(lv.addr, &format!("mem-a{n}"));
        a.offer(Outgoing::new(
            &format!("mem-b{n}"),
            "m.bin",
            Data::Cycle {
                size,
                block: block.clone(),
            },
        ));
        assert!(a.run_until(120, Client::all_ended));
        assert_eq!(a.out[0].result_type(), Some("relay_complete"));
        assert_eq!(
            b.join().unwrap().inc.values().next().unwrap().received,
            size
        );
    };
    relay(1, 0); // 128 MiB: the ring's pages are touched
    let after_first = lv.status()["rss_peak_bytes"].as_u64().unwrap();
    relay(8, 1); // 1 GiB more
    let after_more = lv.status()["rss_peak_bytes"].as_u64().unwrap();
    assert!(
        after_more < after_first + 4 * MIB as u64,
        "peak RSS grew from {after_first} to {after_more} bytes"
    );
    assert!(after_more < 64 * MIB as u64, "peak RSS {after_more} bytes");
}
