//! `lanvan send` straight to a browser: P2P opt-in, `p2p_request`, the WebRTC handshake
//! through the box's signaling (docs/protocol.md "P2P signaling"), then [`DirectSend`] on
//! the `lanvan` channel, moving to the relay (from the confirmed chunk, `ref` `p2p:<id>`)
//! when the path fails or stalls. The WebRTC side is any [`Rtc`]; this file never drives
//! str0m itself.

use super::link::{Failure, Incoming, Result, Session};
use super::progress::Progress;
use super::relay::{self, Continue, Outgoing, Sent};
use super::transfer::{DirectReceive, DirectSend, SendEvent};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::fs::File;
use std::time::{Duration, Instant};

/// The label of the browser app's transfer channel (web/p2p.js).
pub const LABEL: &str = "lanvan";
/// How long the channel may take to open once both sides started the handshake.
const OPEN_WITHIN: Duration = Duration::from_secs(15);
/// How often the stall check runs (the page's 250 ms).
const TICK: Duration = Duration::from_millis(250);

/// What happened on the WebRTC connection.
#[derive(Debug)]
pub enum LinkEvent {
    Open,
    Text(String),
    Binary(Vec<u8>),
    /// Writes that were refused (buffer full) may be retried.
    Writable,
    Closed(String),
}

/// The WebRTC connection the CLI drives: one peer, one channel labelled [`LABEL`].
#[allow(async_fn_in_trait)]
pub trait Rtc {
    /// The offer SDP of a new peer that makes the channel.
    fn offer(&mut self, label: &str) -> std::result::Result<String, String>;
    /// The answer SDP for a page's offer (this terminal receives; the page makes the channel).
    fn answer(&mut self, offer: &str) -> std::result::Result<String, String>;
    fn accept_answer(&mut self, sdp: &str) -> std::result::Result<(), String>;
    /// A trickled candidate; one that cannot be read is ignored (peer-reflexive works).
    fn add_candidate(&mut self, line: &str);
    /// False when the send buffer is full: wait for `Writable`.
    fn send_text(&mut self, text: &str) -> bool;
    fn send_binary(&mut self, bytes: &[u8]) -> bool;
    /// The next event within `wait`.
    async fn next_event(&mut self, wait: Duration) -> Option<LinkEvent>;
    fn close(&mut self);
}

/// Why the direct path was given up, and where the relay continues.
struct Moved {
    why: String,
    /// Boxed: the running hasher is large, and this travels in a Result.
    from: Box<Continue>,
}

/// An SDP or candidate as the page sends it: a string, or an object with `sdp`/`candidate`.
pub(super) fn sdp_of(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v["sdp"].as_str())
}

pub(super) fn candidate_of(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v["candidate"].as_str())
}

/// Asks `to` for a direct connection and waits for the box to start the handshake.
async fn request(s: &mut Session, to: &str, name: &str) -> std::result::Result<String, String> {
    s.send(&json!({"type": "enable_p2p", "device_id": s.id, "device_name": name}))
        .await
        .map_err(|e| e.to_string())?;
    s.send(&json!({"type": "p2p_request", "from": s.id, "to": to}))
        .await
        .map_err(|e| e.to_string())?;
    let limit = s.welcome["p2p"]["signal_timeout_ms"]
        .as_u64()
        .unwrap_or(60_000);
    let deadline = Instant::now() + Duration::from_millis(limit);
    let mut rid: Option<String> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = match s.next(left).await {
            Some(Incoming::Json(v)) => v,
            Some(Incoming::Closed(why)) => return Err(format!("the box closed the socket: {why}")),
            Some(Incoming::Binary(_)) => continue,
            None => return Err("the other device did not answer the request".into()),
        };
        let t = v["type"].as_str().unwrap_or("");
        let mine = |v: &Value| rid.is_none() || v["request_id"].as_str() == rid.as_deref();
        match t {
            "p2p_request_sent" if v["to"] == to => {
                rid = v["request_id"].as_str().map(str::to_string);
                eprintln!(
                    "asking for a direct connection; the other device may have to accept it…"
                );
            }
            "webrtc_handshake_start" if v["peer_device_id"] == to && mine(&v) => {
                return Ok(v["request_id"].as_str().unwrap_or("").to_string());
            }
            "p2p_request_declined" if v["from"] == to => {
                return Err("the other device declined the direct connection".into())
            }
            "p2p_connection_failed" | "p2p_connection_closed" if mine(&v) => {
                return Err(v["message"]
                    .as_str()
                    .unwrap_or("the request failed")
                    .to_string())
            }
            "error"
                if v["ref_type"]
                    .as_str()
                    .is_some_and(|r| r == "p2p_request" || r == "enable_p2p") =>
            {
                return Err(v["message"].as_str().unwrap_or("P2P refused").to_string())
            }
            _ => {}
        }
    }
}

/// Sends `out.file` to `out.to` over a direct channel made by `rtc`, falling back to the
/// relay.
pub async fn send(s: &mut Session, rtc: &mut impl Rtc, mut out: Outgoing<'_>) -> Result<Sent> {
    let from = match try_direct(s, rtc, &mut out).await {
        Ok(sent) => return Ok(sent),
        Err(Ok(moved)) => {
            out.progress.abandon();
            eprintln!("{}: P2P failed ({}), using the box", out.name, moved.why);
            *moved.from
        }
        Err(Err(failure)) => return Err(failure),
    };
    rtc.close();
    relay::send(s, &mut out, from).await
}

/// One thing to act on in the send loop.
enum Ev {
    Link(LinkEvent),
    Box(Incoming),
    Tick,
}

type Direct = std::result::Result<Sent, std::result::Result<Moved, Failure>>;

async fn try_direct(s: &mut Session, rtc: &mut impl Rtc, out: &mut Outgoing<'_>) -> Direct {
    let (to, file, name, size, my_name) = (out.to, out.file, out.name, out.size, out.my_name);
    let progress = &mut *out.progress;
    let fresh = |why: String| {
        Err(Ok(Moved {
            why,
            from: Box::new(Continue::fresh()),
        }))
    };
    let rid = match request(s, to, my_name).await {
        Ok(r) => r,
        Err(why) => return fresh(why),
    };
    let offer = match rtc.offer(LABEL) {
        Ok(o) => o,
        Err(why) => return fresh(why),
    };
    let signal = json!({"type": "webrtc_signal", "signal_type": "offer", "target_device_id": to,
        "request_id": rid, "offer": {"type": "offer", "sdp": offer}});
    s.send(&signal).await.map_err(Err)?;
    let chunk_size = s.welcome["p2p"]["chunk_size"].as_u64().unwrap_or(262_144) as u32;
    let opened_by = Instant::now() + OPEN_WITHIN;
    let mut tx: Option<DirectSend> = None;
    // Frames the channel refused (buffer full), sent first when it is writable again.
    let mut held: VecDeque<Vec<u8>> = VecDeque::new();
    let mut writable = true;
    loop {
        let now = Instant::now();
        // Moves the send on: fill the channel while it takes frames and the window allows.
        if let Some(t) = tx.as_mut() {
            if t.stalled(now) {
                return Err(Ok(moved(rtc, t, "stalled", "no progress for 3 s")));
            }
            while writable {
                if let Some(f) = held.front() {
                    if rtc.send_binary(f) {
                        held.pop_front();
                        continue;
                    }
                    writable = false;
                    break;
                }
                let Some(i) = t.next_chunk() else { break };
                let bytes = relay::read_chunk(file, size, chunk_size as u64, i).map_err(Err)?;
                held.extend(t.pieces(i, &bytes));
            }
            if held.is_empty() {
                if let Some(end) = t.end_message() {
                    rtc.send_text(&end);
                }
            }
        } else if now > opened_by {
            rtc.close();
            return fresh("no direct connection within 15 s".into());
        }
        // Whichever comes first: a WebRTC event, a signal from the box, or the tick.
        let ev = smol::future::or(
            async { rtc.next_event(TICK).await.map(Ev::Link).unwrap_or(Ev::Tick) },
            async { s.next(TICK).await.map(Ev::Box).unwrap_or(Ev::Tick) },
        )
        .await;
        match ev {
            Ev::Tick => {}
            Ev::Link(LinkEvent::Open) => {
                if tx.is_none() {
                    let _ = s
                        .send(
                            &json!({"type": "p2p_connection_established", "request_id": rid,
                            "peer_device_id": to}),
                        )
                        .await;
                    rtc.send_text(&json!({"t": "vis", "hidden": false}).to_string());
                    let id = random_id();
                    let (t, offer) = DirectSend::new(id, name, size, chunk_size, Instant::now());
                    rtc.send_text(&offer);
                    eprintln!(
                        "{name}: connected directly (P2P); waiting for the other device to accept…"
                    );
                    tx = Some(t);
                }
            }
            Ev::Link(LinkEvent::Writable) => writable = true,
            Ev::Link(LinkEvent::Binary(_)) => {}
            Ev::Link(LinkEvent::Closed(why)) => {
                return match tx.as_mut() {
                    Some(t) => Err(Ok(moved(rtc, t, "failed", &why))),
                    None => fresh(why),
                }
            }
            Ev::Link(LinkEvent::Text(text)) => {
                let Ok(m) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let Some(t) = tx.as_mut() else { continue };
                if m["t"] == "vis" && m["hidden"] == true {
                    let mut mv = moved(rtc, t, "hidden", "the page went to the background");
                    mv.from.start_chunk = 0;
                    mv.from.store = true;
                    return Err(Ok(mv));
                }
                if m["id"].as_u64() != Some(t.id as u64) {
                    continue;
                }
                match t.handle(&m, Instant::now()) {
                    Some(SendEvent::Accepted) => {
                        eprintln!("{name}: accepted");
                        progress.starting_at(0);
                    }
                    Some(SendEvent::Acked(n)) => {
                        progress.update((n as u64 * chunk_size as u64).min(size))
                    }
                    Some(SendEvent::Complete(sha)) => {
                        progress.finish(&format!("sent directly (P2P), SHA-256 {sha} matches"));
                        let _ = s
                            .send(&json!({"type": "p2p_close", "request_id": rid}))
                            .await;
                        rtc.close();
                        return Ok(Sent::Complete(sha));
                    }
                    Some(SendEvent::Declined(r)) => {
                        progress.abandon();
                        return Err(Err(Failure::failed(format!("{name}: declined {r}"))));
                    }
                    Some(SendEvent::Cancelled(r)) => {
                        progress.abandon();
                        return Err(Err(Failure::failed(format!("{name}: cancelled ({r})"))));
                    }
                    Some(SendEvent::HashMismatch) => {
                        progress.abandon();
                        return Err(Err(Failure::failed(format!(
                            "{name}: failed (hash_mismatch: the file arrived damaged)"
                        ))));
                    }
                    None => {}
                }
            }
            Ev::Box(Incoming::Json(v)) => match v["type"].as_str().unwrap_or("") {
                "webrtc_answer" if v["request_id"] == rid.as_str() => {
                    if let Some(sdp) = sdp_of(&v["answer"]) {
                        if let Err(why) = rtc.accept_answer(sdp) {
                            return fresh(why);
                        }
                    }
                }
                "webrtc_ice_candidate" if v["request_id"] == rid.as_str() => {
                    if let Some(c) = candidate_of(&v["candidate"]).filter(|c| !c.is_empty()) {
                        rtc.add_candidate(c);
                    }
                }
                "p2p_connection_failed" | "p2p_connection_closed"
                    if v["request_id"] == rid.as_str() && tx.is_none() =>
                {
                    return fresh(v["message"].as_str().unwrap_or("signaling failed").into());
                }
                _ => {}
            },
            Ev::Box(Incoming::Closed(why)) => {
                return Err(Err(Failure::failed(format!(
                    "the box closed the socket: {why}"
                ))))
            }
            Ev::Box(Incoming::Binary(_)) => {}
        }
    }
}

/// Gives up the direct path of a running send: `moved` on the channel if it still takes
/// it, and the relay's starting point with the hash so far.
fn moved(rtc: &mut impl Rtc, t: &mut DirectSend, reason: &str, why: &str) -> Moved {
    let (msg, start) = t.fallback(reason);
    rtc.send_text(&msg);
    let (hasher, hashed, sha256) = t.hash_so_far();
    Moved {
        why: why.to_string(),
        from: Box::new(Continue {
            start_chunk: start,
            reference: Some(format!("p2p:{}", t.id)),
            hasher,
            hashed,
            sha256,
            inbox: true,
            store: false,
        }),
    }
}

/// A transfer id like the page's: random, so two senders' ids do not collide on a channel.
fn random_id() -> u32 {
    let mut raw = [0u8; 4];
    if let Ok(mut f) = File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = f.read_exact(&mut raw);
    }
    u32::from_ne_bytes(raw)
}

/// A file arriving on the direct channel, and where it is written.
pub struct Arriving {
    pub rx: DirectReceive,
    file: File,
    part: std::path::PathBuf,
    pub progress: Progress,
}

/// What the receiving side of a direct link asks the caller to do.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Send this on the channel.
    Say(String),
    /// This file is complete and verified: it was kept at this path.
    Saved(std::path::PathBuf),
    /// This file failed (the message says why).
    Failed(String),
}

/// The direct receives of `lanvan receive`: `file` offers on the `lanvan` channel,
/// accepted at once, written to `.NAME.ID.part`, kept when the hashes agree. Sends whose
/// sender moved to the relay wait in `moved` for the relay offer that continues them.
#[derive(Default)]
pub struct Inbox {
    pub arriving: std::collections::HashMap<u32, Arriving>,
    /// `ref` (`p2p:<id>`) -> what this terminal holds of a send that moved to the relay.
    pub moved: std::collections::HashMap<String, Arriving>,
}

/// The most files one peer may be sending this terminal at once (the page's MAX_RECEIVES).
const MAX_RECEIVES: usize = 16;

impl Inbox {
    /// A text message on the channel.
    pub fn text(&mut self, text: &str, dir: &std::path::Path, quiet: bool) -> Vec<Step> {
        let Ok(m) = serde_json::from_str::<Value>(text) else {
            return Vec::new();
        };
        if m["t"] == "file" {
            let rx = match DirectReceive::from_offer(&m) {
                Ok(rx)
                    if self.arriving.len() < MAX_RECEIVES
                        && !self.arriving.contains_key(&rx.id) =>
                {
                    rx
                }
                Ok(mut rx) => return vec![Step::Say(rx.decline("too many files at once"))],
                Err(why) => {
                    let id = m["id"].as_u64().unwrap_or(0);
                    let msg = json!({"t": "decline", "id": id, "reason": why});
                    return vec![Step::Say(msg.to_string())];
                }
            };
            let mut rx = rx;
            let name = relay::safe_name(&rx.name);
            let part = dir.join(format!(".{name}.p2p{}.part", rx.id));
            let file = match File::create(&part) {
                Ok(f) => f,
                Err(e) => return vec![Step::Say(rx.decline(&format!("cannot write: {e}")))],
            };
            eprintln!(
                "receiving {name} ({}) directly (P2P)",
                super::progress::bytes(rx.size)
            );
            let says = rx.accept();
            let id = rx.id;
            let progress = Progress::new(&name, rx.size, quiet);
            self.arriving.insert(
                id,
                Arriving {
                    rx,
                    file,
                    part,
                    progress,
                },
            );
            let mut out: Vec<Step> = says.into_iter().map(Step::Say).collect();
            out.extend(self.settle(id, dir));
            return out;
        }
        let Some(id) = m["id"].as_u64().map(|i| i as u32) else {
            return Vec::new();
        };
        let Some(a) = self.arriving.get_mut(&id) else {
            return Vec::new();
        };
        let says = a.rx.handle(&m);
        let mut out: Vec<Step> = says.into_iter().map(Step::Say).collect();
        out.extend(self.settle(id, dir));
        out
    }

    /// A binary piece on the channel.
    pub fn piece(&mut self, frame: &[u8], dir: &std::path::Path) -> Vec<Step> {
        use super::transfer::ReceiveStep;
        use std::os::unix::fs::FileExt as _;
        let Some(id) = super::transfer::piece_transfer_id(frame) else {
            return Vec::new();
        };
        let Some(a) = self.arriving.get_mut(&id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match a.rx.piece(frame) {
            ReceiveStep::None => {}
            ReceiveStep::Say(m) => out.push(Step::Say(m)),
            ReceiveStep::Write(index, bytes) => {
                let at = index as u64 * a.rx.chunk_size as u64;
                if let Err(e) = a.file.write_all_at(&bytes, at) {
                    out.push(Step::Say(
                        a.rx.cancel(&format!("the receiver could not write: {e}")),
                    ));
                } else {
                    out.extend(a.rx.written(index, &bytes).into_iter().map(Step::Say));
                    let held = (a.rx.next as u64 * a.rx.chunk_size as u64).min(a.rx.size);
                    a.progress.update(held);
                }
            }
        }
        out.extend(self.settle(id, dir));
        out
    }

    /// The channel is gone: running receives wait for the sender's relay offer.
    pub fn channel_lost(&mut self) {
        for (id, a) in self.arriving.drain() {
            if a.rx.state == super::transfer::ReceiveState::Moving {
                self.moved.insert(format!("p2p:{id}"), a);
            } else {
                let _ = std::fs::remove_file(&a.part);
            }
        }
    }

    /// Takes out what this terminal holds of the send a relay offer with `reference`
    /// continues: the part file, its hash so far and the chunks held.
    /// The relay offer may come before the channel's `moved` (the box is quicker than a
    /// stalled path), so a running receive is claimed too (the page's `claim` does alike).
    pub fn claim(
        &mut self,
        reference: &str,
    ) -> Option<(std::path::PathBuf, File, sha2::Sha256, u32)> {
        let running = reference
            .strip_prefix("p2p:")
            .and_then(|id| id.parse::<u32>().ok())
            .filter(|id| {
                self.arriving
                    .get(id)
                    .is_some_and(|a| a.rx.state == super::transfer::ReceiveState::Moving)
            });
        let a = match running {
            Some(id) => self.arriving.remove(&id)?,
            None => self.moved.remove(reference)?,
        };
        let (hasher, next) = a.rx.hash_so_far();
        Some((a.part, a.file, hasher, next))
    }

    /// Ends transfer `id` if it is over: kept, failed, or moved to the relay.
    fn settle(&mut self, id: u32, dir: &std::path::Path) -> Vec<Step> {
        use super::transfer::ReceiveState;
        let Some(a) = self.arriving.get(&id) else {
            return Vec::new();
        };
        match a.rx.state.clone() {
            ReceiveState::Complete(sha) => {
                let mut a = self.arriving.remove(&id).expect("just seen");
                let _ = a.file.sync_all();
                let path = relay::free_path(dir, &relay::safe_name(&a.rx.name));
                match std::fs::rename(&a.part, &path) {
                    Ok(()) => {
                        a.progress
                            .finish(&format!("saved as {} (SHA-256 {sha} ok)", path.display()));
                        vec![Step::Saved(path)]
                    }
                    Err(e) => vec![Step::Failed(format!("cannot keep {}: {e}", path.display()))],
                }
            }
            ReceiveState::Ended(why) => {
                let mut a = self.arriving.remove(&id).expect("just seen");
                a.progress.abandon();
                let _ = std::fs::remove_file(&a.part);
                vec![Step::Failed(format!("{}: {why}", a.rx.name))]
            }
            ReceiveState::Moved => {
                let a = self.arriving.remove(&id).expect("just seen");
                eprintln!("{}: the sender continues through the box", a.rx.name);
                self.moved.insert(format!("p2p:{id}"), a);
                Vec::new()
            }
            ReceiveState::Offered | ReceiveState::Moving => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("lanvan-direct-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A sender's frames fed straight into the inbox (the channel left out).
    fn run(
        file: &[u8],
        chunk: u32,
        stop_after: Option<u32>,
    ) -> (Inbox, Vec<Step>, DirectSend, std::path::PathBuf) {
        let d = dir(&format!("{}-{}", file.len(), stop_after.is_some()));
        let t0 = Instant::now();
        let (mut tx, offer) = DirectSend::new(9, "../photo.jpg", file.len() as u64, chunk, t0);
        let mut inbox = Inbox::default();
        let mut to_tx: Vec<Step> = inbox.text(&offer, &d, true);
        let mut seen = Vec::new();
        for _ in 0..1000 {
            let mut to_rx = Vec::new();
            for step in std::mem::take(&mut to_tx) {
                match step {
                    Step::Say(m) => {
                        tx.handle(&serde_json::from_str(&m).unwrap(), t0);
                    }
                    other => seen.push(other),
                }
            }
            while let Some(i) = tx.next_chunk() {
                if stop_after.is_some_and(|n| i >= n) {
                    break;
                }
                let s = i as usize * chunk as usize;
                let e = (s + chunk as usize).min(file.len());
                to_rx.extend(tx.pieces(i, &file[s..e]));
            }
            if to_rx.is_empty() {
                if let Some(end) = tx.end_message() {
                    to_tx.extend(inbox.text(&end, &d, true));
                    continue;
                }
                break;
            }
            for f in to_rx {
                to_tx.extend(inbox.piece(&f, &d));
            }
        }
        (inbox, seen, tx, d)
    }

    #[test]
    fn a_direct_send_is_written_checked_and_kept_under_a_safe_name() {
        let file: Vec<u8> = (0..250_000u32).map(|i| (i % 253) as u8).collect();
        let (inbox, seen, tx, d) = run(&file, 100_000, None);
        let saved = d.join("photo.jpg");
        assert_eq!(seen, vec![Step::Saved(saved.clone())]);
        assert_eq!(std::fs::read(&saved).unwrap(), file);
        assert_eq!(tx.state, crate::cli::transfer::SendState::Complete);
        assert!(inbox.arriving.is_empty());
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "no part file is left: {left:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_send_cut_off_waits_for_the_relay_and_hands_over_what_it_holds() {
        let file: Vec<u8> = (0..500_000u32).map(|i| (i % 251) as u8).collect();
        let (mut inbox, seen, mut tx, d) = run(&file, 100_000, Some(2));
        assert!(seen.is_empty());
        let (moved, start) = tx.fallback("stalled");
        assert_eq!(start, 2);
        assert!(inbox.text(&moved, &d, true).is_empty());
        let (part, _file, hasher, held) = inbox.claim("p2p:9").expect("the moved send is held");
        assert_eq!(held, 2);
        assert_eq!(std::fs::read(&part).unwrap(), &file[..200_000]);
        let mut expect = Sha256::new();
        expect.update(&file[..200_000]);
        assert_eq!(
            hasher.finalize(),
            expect.finalize(),
            "the hash runs on, not from zero"
        );
        assert!(inbox.claim("p2p:9").is_none());
        let _ = std::fs::remove_dir_all(&d);
    }
}
