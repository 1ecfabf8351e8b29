//! The peer commands themselves: what `ls`, `clip`, `get`, `send` and `receive` ask the
//! box and print. Each runs to an outcome; the wire details live in `link`, `relay` and
//! `transfer`. Never prints progress to stdout (stdout carries only results).

use super::direct::{Inbox, LinkEvent, Rtc as _, Step};
use super::fetch;
use super::link::{self, Failure, Incoming, Result, Session};
use super::progress::{self, Progress};
use super::relay::{self, Continue, Receiving};
use super::webrtc::HostRtc;
use super::{Clip, Get, Ls, Receive, Send};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use smol::io::AsyncReadExt as _;
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Device id this terminal uses for a command: `receive` is the terminal's own device;
/// the short-lived commands add a suffix, so running one never replaces a `receive`
/// running in another window (the box lets one socket hold an id).
fn id_for(command: &str) -> String {
    let id = link::device_id();
    if command == "receive" {
        id
    } else {
        format!("{id}-{command}")
    }
}

/// `5 s ago`, `3 min ago`, `2 h ago`, `4 d ago`.
pub fn age(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

async fn files(b: &link::BoxAddr) -> Result<Value> {
    let resp = link::get(b, "/api/files", &[]).await?;
    if resp.status != 200 {
        return Err(Failure::failed(format!(
            "the box did not list its files: {}",
            link::error_text(resp).await
        )));
    }
    resp.json().await
}

pub fn ls(a: Ls) -> Result<()> {
    let b = a.peer.locate()?;
    smol::block_on(async {
        let v = files(&b).await?;
        if a.json {
            println!("{v}");
            return Ok(());
        }
        let now = v["now"].as_i64().unwrap_or(0);
        let list = v["files"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            eprintln!("no files on the box at {}", b.url());
            return Ok(());
        }
        let width = list
            .iter()
            .map(|f| f["name"].as_str().unwrap_or("").chars().count())
            .max()
            .unwrap_or(4)
            .clamp(4, 60);
        println!("{:<width$}  {:>10}  AGE", "NAME", "SIZE");
        for f in &list {
            println!(
                "{:<width$}  {:>10}  {}",
                f["name"].as_str().unwrap_or(""),
                progress::bytes(f["size"].as_u64().unwrap_or(0)),
                age(now - f["modified"].as_i64().unwrap_or(now))
            );
        }
        Ok(())
    })
}

pub fn clip(a: Clip) -> Result<()> {
    let text = match a.text.as_deref() {
        Some("-") => {
            let mut t = String::new();
            std::io::stdin()
                .read_to_string(&mut t)
                .map_err(|e| Failure::Usage(format!("cannot read stdin as UTF-8 text: {e}")))?;
            Some(t)
        }
        other => other.map(str::to_string),
    };
    let b = a.peer.locate()?;
    smol::block_on(async {
        let mut s = Session::join(&b, &id_for("clip"), &a.peer.name()).await?;
        let Some(text) = text else {
            if let Some(t) = s.welcome["clipboard"]["text"].as_str() {
                print!("{t}");
                if !t.ends_with('\n') && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    println!();
                }
            }
            s.close().await;
            return Ok(());
        };
        s.send(&json!({"type": "clipboard_update", "text": text}))
            .await?;
        loop {
            match s.next(Duration::from_secs(10)).await {
                Some(Incoming::Json(v)) if v["type"] == "clipboard_ack" => break,
                Some(Incoming::Json(v)) if v["type"] == "error" => {
                    return Err(Failure::failed(format!(
                        "the box refused the text: {}",
                        v["message"].as_str().unwrap_or("")
                    )))
                }
                Some(Incoming::Closed(why)) => {
                    return Err(Failure::failed(format!("the box closed the socket: {why}")))
                }
                None => return Err(Failure::failed("the box did not confirm the clipboard")),
                _ => {}
            }
        }
        s.close().await;
        Ok(())
    })
}

pub fn get(a: Get) -> Result<()> {
    let b = a.peer.locate()?;
    smol::block_on(async {
        let list = files(&b).await?;
        let entry = list["files"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["name"] == a.file.as_str()))
            .cloned()
            .ok_or_else(|| {
                Failure::failed(format!(
                    "no file named `{}` on the box (`lanvan ls` lists them)",
                    a.file
                ))
            })?;
        let size = entry["size"].as_u64().unwrap_or(0);
        let sha = entry["sha256"].as_str().unwrap_or("").to_string();
        let out = match &a.output {
            Some(p) if p.is_dir() => p.join(relay::safe_name(&a.file)),
            Some(p) => p.clone(),
            None => PathBuf::from(relay::safe_name(&a.file)),
        };
        let part = {
            let mut p = out.clone().into_os_string();
            p.push(".part");
            PathBuf::from(p)
        };
        // The chunk protocol first (unless told otherwise or rate-limited, which only
        // HTTP does); any failure falls back to HTTP, resuming after the verified prefix.
        if !a.http && a.limit_rate == 0 {
            match over_channel(&b, &a, size, &part).await {
                Ok(got) if got == sha => {
                    std::fs::rename(&part, &out).map_err(|e| {
                        Failure::failed(format!("cannot save {}: {e}", out.display()))
                    })?;
                    eprintln!(
                        "saved {} ({}, SHA-256 {sha} ok)",
                        out.display(),
                        progress::bytes(size)
                    );
                    return Ok(());
                }
                Ok(_) => {
                    let _ = std::fs::remove_file(&part);
                    eprintln!(
                        "{}: SHA-256 does not match what the box lists; downloading over HTTP",
                        a.file
                    );
                }
                Err(e) => eprintln!("{}: {e}; downloading over HTTP", a.file),
            }
        }
        for attempt in 0..2 {
            let got = download(&b, &a, size, &part).await?;
            if got == sha {
                std::fs::rename(&part, &out)
                    .map_err(|e| Failure::failed(format!("cannot save {}: {e}", out.display())))?;
                eprintln!(
                    "saved {} ({}, SHA-256 {sha} ok)",
                    out.display(),
                    progress::bytes(size)
                );
                return Ok(());
            }
            let _ = std::fs::remove_file(&part);
            if attempt == 0 {
                eprintln!(
                    "{}: SHA-256 does not match; downloading again from the start",
                    a.file
                );
            }
        }
        Err(Failure::failed(format!(
            "{}: SHA-256 does not match what the box lists",
            a.file
        )))
    })
}

/// Downloads into `part` over a `lanvan-chunks` data channel to the box; returns the
/// SHA-256 of the whole part file.
async fn over_channel(
    b: &link::BoxAddr,
    a: &Get,
    size: u64,
    part: &std::path::Path,
) -> Result<String> {
    let m = fetch::manifest(b, &a.file).await?;
    if m.size() != size {
        return Err(Failure::failed(
            "the manifest's size is not the listed size",
        ));
    }
    let label = a.file.as_str();
    let held = fetch::chunks_on_disk(&m, part);
    if held.count() > 0 {
        let here: u64 = (0..m.chunk_count())
            .filter(|&i| held.get(i))
            .map(|i| u64::from(m.chunk_len(i)))
            .sum();
        eprintln!(
            "{label}: resuming at {} of {} ({} of {} chunks already here)",
            progress::bytes(here),
            progress::bytes(size),
            held.count(),
            m.chunk_count()
        );
    }
    let got = fetch::download(b, a, &id_for("get"), m, held, part).await?;
    eprintln!("{label}: {}", got.summary());
    let io = |e: std::io::Error| Failure::failed(format!("{}: {e}", part.display()));
    let mut file = std::fs::File::open(part).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(link::hex(&hasher.finalize()))
}

/// Downloads into `part`, resuming after the bytes it already holds; returns the SHA-256
/// of the whole part file.
async fn download(b: &link::BoxAddr, a: &Get, size: u64, part: &std::path::Path) -> Result<String> {
    let io = |e: std::io::Error| Failure::failed(format!("{}: {e}", part.display()));
    let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > size {
        have = 0;
    }
    let mut hasher = Sha256::new();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(part)
        .map_err(io)?;
    if have > 0 {
        // The bytes already here count in the hash; they are read once, not fetched.
        let mut left = have;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = file
                .read(&mut buf[..left.min(1 << 20) as usize])
                .map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        eprintln!(
            "{}: resuming at {} of {}",
            a.file,
            progress::bytes(have),
            progress::bytes(size)
        );
    }
    if have < size {
        let path = format!("/api/files/{}", link::encode(&a.file));
        let range = [("range", format!("bytes={have}-"))];
        let mut resp = link::get(b, &path, if have > 0 { &range } else { &[] }).await?;
        match resp.status {
            200 => {
                have = 0;
                hasher = Sha256::new();
                file.set_len(0).map_err(io)?;
            }
            206 => {}
            404 => {
                return Err(Failure::failed(format!(
                    "`{}` is no longer on the box",
                    a.file
                )))
            }
            _ => {
                return Err(Failure::failed(format!(
                    "the box did not send `{}`: {}",
                    a.file,
                    link::error_text(resp).await
                )))
            }
        }
        use std::io::Seek as _;
        file.seek(std::io::SeekFrom::Start(have)).map_err(io)?;
        let mut progress = Progress::new(&a.file, size, a.peer.quiet);
        progress.starting_at(have);
        let mut got = have;
        let start = Instant::now();
        let first = std::mem::take(&mut resp.start);
        let mut buf = vec![0u8; 256 * 1024];
        let mut pending = first;
        loop {
            if !pending.is_empty() {
                let take = pending.len().min((size - got) as usize);
                file.write_all(&pending[..take]).map_err(io)?;
                hasher.update(&pending[..take]);
                got += take as u64;
                progress.update(got);
                pending.clear();
            }
            if got >= size {
                break;
            }
            if a.limit_rate > 0 {
                let due = Duration::from_secs_f64((got - have) as f64 / a.limit_rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    smol::Timer::after(wait).await;
                }
            }
            let max = if a.limit_rate > 0 {
                buf.len().min((a.limit_rate as usize / 10).max(1024))
            } else {
                buf.len()
            };
            let n = resp.stream.read(&mut buf[..max]).await.map_err(|e| {
                progress.abandon();
                Failure::failed(format!("the download broke: {e} (run it again to resume)"))
            })?;
            if n == 0 {
                progress.abandon();
                return Err(Failure::failed(format!(
                    "the box closed the download at {} of {} (run it again to resume)",
                    progress::bytes(got),
                    progress::bytes(size)
                )));
            }
            pending.extend_from_slice(&buf[..n]);
        }
        file.flush().map_err(io)?;
        progress.finish("");
    }
    file.sync_all().map_err(io)?;
    Ok(link::hex(&hasher.finalize()))
}

/// Finds `want` (an id, or a name as the box lists it) among the connected devices.
pub fn find_device(devices: &[Value], want: &str, me: &str) -> Result<Value> {
    if let Some(d) = devices.iter().find(|d| d["id"] == want) {
        return Ok(d.clone());
    }
    let named: Vec<&Value> = devices
        .iter()
        .filter(|d| {
            d["id"] != me
                && d["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(want))
        })
        .collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => {
            let others: Vec<String> = devices
                .iter()
                .filter(|d| d["id"] != me)
                .map(|d| {
                    format!(
                        "{} ({})",
                        d["name"].as_str().unwrap_or(""),
                        d["id"].as_str().unwrap_or("")
                    )
                })
                .collect();
            Err(Failure::failed(format!(
                "no device `{want}` is connected to the box; connected: {}",
                if others.is_empty() {
                    "none".to_string()
                } else {
                    others.join(", ")
                }
            )))
        }
        many => Err(Failure::failed(format!(
            "{} devices are named `{want}`; name one by id: {}",
            many.len(),
            many.iter()
                .map(|d| d["id"].as_str().unwrap_or(""))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Opens a local file to send or upload: the open file, its size and its own name.
/// A folder or an unreadable path is a plain failure (exit 1), said once here.
pub fn open_local(path: &std::path::Path) -> Result<(std::fs::File, u64, String)> {
    let cannot =
        |e: std::io::Error| Failure::failed(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(Failure::failed(format!("{} is not a file", path.display())));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    Ok((file, meta.len(), name))
}

pub fn send(a: Send) -> Result<()> {
    let (file, size, name) = open_local(&a.file)?;
    let b = a.peer.locate()?;
    smol::block_on(async {
        let me = id_for("send");
        let mut s = Session::join(&b, &me, &a.peer.name()).await?;
        let devices = s.welcome["devices"].as_array().cloned().unwrap_or_default();
        let target = find_device(&devices, &a.to, &me)?;
        let to = target["id"].as_str().unwrap_or("").to_string();
        if to == me {
            return Err(Failure::failed("that is this terminal itself"));
        }
        let mut progress = Progress::new(&name, size, a.peer.quiet);
        let what = format!("{name} ({})", progress::bytes(size));
        let whom = target["name"].as_str().unwrap_or(&to).to_string();
        // Directly when both ends can: P2P on the box, the device opted in to P2P, and a
        // UDP socket here. Otherwise (or with --relay), through the box.
        let direct = if a.relay {
            Err("--relay".to_string())
        } else if s.welcome["p2p"]["mode"].as_str().is_none_or(|m| m == "off") {
            Err("P2P is off on the box".to_string())
        } else if target["p2p"] != true {
            Err(format!("{whom} has P2P off"))
        } else {
            s.local_ip()
                .ok_or_else(|| "no local address".to_string())
                .and_then(HostRtc::bind)
        };
        let r = match direct {
            Ok(mut rtc) => {
                eprintln!("sending {what} to {whom}, directly (P2P) if it can");
                let run = rtc.host.clone().run();
                let me_name = a.peer.name();
                let out = relay::Outgoing {
                    to: &to,
                    file: &file,
                    name: &name,
                    size,
                    my_name: &me_name,
                    progress: &mut progress,
                };
                let work = super::direct::send(&mut s, &mut rtc, out);
                smol::future::or(work, async {
                    run.await;
                    Err(Failure::failed("the WebRTC host stopped"))
                })
                .await
            }
            Err(why) => {
                eprintln!("sending {what} to {whom} through the box ({why})");
                let me_name = a.peer.name();
                let mut out = relay::Outgoing {
                    to: &to,
                    file: &file,
                    name: &name,
                    size,
                    my_name: &me_name,
                    progress: &mut progress,
                };
                relay::send(&mut s, &mut out, Continue::fresh()).await
            }
        };
        s.close().await;
        r.map(|_| ())
    })
}

pub fn receive(a: Receive) -> Result<()> {
    if !a.dir.is_dir() {
        return Err(Failure::Usage(format!(
            "{} is not a folder",
            a.dir.display()
        )));
    }
    let b = a.peer.locate()?;
    smol::block_on(async {
        let me = id_for("receive");
        let mut s = Session::join(&b, &me, &a.peer.name()).await?;
        // Direct sends need P2P on the box and a UDP socket here; without, the relay.
        let mut rtc = None;
        if !a.relay
            && s.welcome["p2p"]["mode"]
                .as_str()
                .is_some_and(|m| m != "off")
        {
            match s
                .local_ip()
                .ok_or_else(|| "no local address".to_string())
                .and_then(HostRtc::bind)
            {
                Ok(r) => rtc = Some(r),
                Err(why) => {
                    eprintln!("lanvan: no direct transfers ({why}); files come through the box")
                }
            }
        }
        if rtc.is_some() {
            let name = a.peer.name();
            s.send(&json!({"type": "enable_p2p", "device_id": me, "device_name": name}))
                .await?;
        }
        eprintln!(
            "receiving into {} as \"{}\" ({me}) on {}; Ctrl-C to stop",
            a.dir.display(),
            s.welcome["name"].as_str().unwrap_or(""),
            b.url()
        );
        let runner = rtc.as_ref().map(|r| r.host.clone().run());
        let work = receive_loop(&a, &mut s, rtc.as_mut());
        match runner {
            Some(run) => {
                smol::future::or(work, async {
                    run.await;
                    Err(Failure::failed("the WebRTC host stopped"))
                })
                .await
            }
            None => work.await,
        }
    })
}

/// How long `receive --once` keeps a direct link up after the file is saved.
const LINGER: Duration = Duration::from_millis(2500);

/// Keeps the direct link running a little after the last file: its final `ack`s and
/// `done` may still need SCTP to resend them (the minimum resend timeout is 1 s), and the
/// sender, which says nothing after `done`, would otherwise wait for them in vain and
/// move the finished send to the box.
async fn linger(r: &mut HostRtc) {
    let until = Instant::now() + LINGER;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match r.next_event(left).await {
            Some(LinkEvent::Closed(_)) | None => return,
            Some(_) => {}
        }
    }
}

/// One thing `receive` acts on.
enum Ev {
    Link(LinkEvent),
    Box(Incoming),
    Tick,
}

async fn receive_loop(a: &Receive, s: &mut Session, mut rtc: Option<&mut HostRtc>) -> Result<()> {
    let me = s.id.clone();
    let mut open: HashMap<u32, Receiving> = HashMap::new();
    // Direct receives, and those whose sender moved to the relay.
    let mut inbox = Inbox::default();
    // The direct link: the sending device and the request id.
    let mut link: Option<(String, String)> = None;
    loop {
        let ev = match rtc.as_deref_mut() {
            Some(r) => {
                smol::future::or(
                    async {
                        r.next_event(Duration::from_secs(30))
                            .await
                            .map(Ev::Link)
                            .unwrap_or(Ev::Tick)
                    },
                    async {
                        s.next(Duration::from_secs(30))
                            .await
                            .map(Ev::Box)
                            .unwrap_or(Ev::Tick)
                    },
                )
                .await
            }
            None => s
                .next(Duration::from_secs(30))
                .await
                .map(Ev::Box)
                .unwrap_or(Ev::Tick),
        };
        let from_link = matches!(ev, Ev::Link(_));
        let steps = match ev {
            Ev::Tick => continue,
            Ev::Link(LinkEvent::Open) => {
                if let Some(r) = rtc.as_deref_mut() {
                    r.send_text(&json!({"t": "vis", "hidden": false}).to_string());
                }
                continue;
            }
            Ev::Link(LinkEvent::Text(t)) => inbox.text(&t, &a.dir, a.peer.quiet),
            Ev::Link(LinkEvent::Binary(b)) => inbox.piece(&b, &a.dir),
            Ev::Link(LinkEvent::Writable) => continue,
            Ev::Link(LinkEvent::Closed(_)) => {
                inbox.channel_lost();
                if let Some((_, rid)) = link.take() {
                    let _ = s
                        .send(&json!({"type": "p2p_close", "request_id": rid}))
                        .await;
                }
                continue;
            }
            Ev::Box(Incoming::Binary(frame)) if frame.len() >= 8 => {
                let id = u32::from_be_bytes(frame[0..4].try_into().expect("4 bytes"));
                let index = u32::from_be_bytes(frame[4..8].try_into().expect("4 bytes"));
                let Some(r) = open.get_mut(&id) else { continue };
                match r.chunk(index, &frame[8..]) {
                    Ok(out) => {
                        for m in out {
                            s.send(&m).await?;
                        }
                    }
                    Err(why) => {
                        s.send(&json!({"type": "relay_cancel", "id": id, "reason": why}))
                            .await?;
                        eprintln!("lanvan: {why}");
                        if let Some(r) = open.remove(&id) {
                            r.discard();
                        }
                        if a.once {
                            return Err(Failure::failed(why));
                        }
                    }
                }
                continue;
            }
            Ev::Box(Incoming::Binary(_)) => continue,
            Ev::Box(Incoming::Closed(why)) => {
                return Err(Failure::failed(format!(
                    "the box closed the connection: {why}"
                )))
            }
            Ev::Box(Incoming::Json(v)) => {
                let id = v["id"].as_u64().unwrap_or(u64::MAX) as u32;
                let rid = v["request_id"].as_str().unwrap_or("").to_string();
                let is_link = link.as_ref().is_some_and(|(_, r)| *r == rid);
                match v["type"].as_str().unwrap_or("") {
                    "p2p_request_received" => {
                        let from = v["from"].as_str().unwrap_or("");
                        // One direct link at a time; the user ran `receive`, so it is accepted.
                        let answer = if rtc.is_some() && link.is_none() {
                            "p2p_accept"
                        } else {
                            "p2p_decline"
                        };
                        s.send(&json!({"type": answer, "from": from, "to": me, "request_id": rid}))
                            .await?;
                        Vec::new()
                    }
                    "webrtc_handshake_start" if v["is_initiator"] == false => {
                        let peer = v["peer_device_id"].as_str().unwrap_or("").to_string();
                        eprintln!("connecting directly (P2P) to {peer}…");
                        link = Some((peer, rid));
                        Vec::new()
                    }
                    "webrtc_offer" if is_link => {
                        let offer = &v["offer"];
                        let sdp = offer.as_str().or(offer["sdp"].as_str()).unwrap_or("");
                        if let Some(r) = rtc.as_deref_mut() {
                            match r.answer(sdp) {
                                Ok(answer) => {
                                    let to =
                                        link.as_ref().map(|(p, _)| p.clone()).unwrap_or_default();
                                    s.send(
                                        &json!({"type": "webrtc_signal", "signal_type": "answer",
                                        "target_device_id": to, "request_id": rid,
                                        "answer": {"type": "answer", "sdp": answer}}),
                                    )
                                    .await?;
                                }
                                Err(why) => {
                                    eprintln!("lanvan: the direct connection failed: {why}");
                                    s.send(&json!({"type": "p2p_close", "request_id": rid}))
                                        .await?;
                                    link = None;
                                }
                            }
                        }
                        Vec::new()
                    }
                    "webrtc_ice_candidate" if is_link => {
                        let c = &v["candidate"];
                        if let (Some(line), Some(r)) =
                            (c.as_str().or(c["candidate"].as_str()), rtc.as_deref_mut())
                        {
                            if !line.is_empty() {
                                r.add_candidate(line);
                            }
                        }
                        Vec::new()
                    }
                    "p2p_connection_failed" | "p2p_connection_closed" if is_link => {
                        link = None;
                        inbox.channel_lost();
                        if let Some(r) = rtc.as_deref_mut() {
                            r.close();
                        }
                        Vec::new()
                    }
                    "relay_offer" => {
                        // A send that started on the direct channel continues after what is held.
                        let held = v["ref"].as_str().and_then(|r| inbox.claim(r));
                        match Receiving::accept(&v, &a.dir, held, a.peer.quiet) {
                            Ok((r, accept)) => {
                                eprintln!(
                                    "receiving {} ({}) from {} through the box",
                                    r.name,
                                    progress::bytes(r.size),
                                    r.from_name
                                );
                                s.send(&accept).await?;
                                if r.chunks == 0 {
                                    if let Some(done) = r.done_message() {
                                        s.send(&done).await?;
                                    }
                                }
                                open.insert(id, r);
                            }
                            Err(why) => {
                                s.send(&json!({"type": "relay_decline", "id": id, "reason": why}))
                                    .await?;
                            }
                        }
                        Vec::new()
                    }
                    "relay_resume" if v["role"] == "receiver" => {
                        if let Some(r) = open.get(&id) {
                            s.send(&json!({"type": "relay_ack", "id": id, "acked": r.next}))
                                .await?;
                        }
                        Vec::new()
                    }
                    "relay_complete" => {
                        if let Some(r) = open.remove(&id) {
                            let sha = v["sha256"].as_str().unwrap_or("");
                            match r.complete(&a.dir, sha) {
                                Ok(path) => vec![Step::Saved(path)],
                                Err(why) => vec![Step::Failed(why)],
                            }
                        } else {
                            continue;
                        }
                    }
                    "relay_failed" | "relay_cancelled" => {
                        if let Some(r) = open.remove(&id) {
                            let why = format!(
                                "{}: the send ended without the file ({})",
                                r.name,
                                v["code"].as_str().or(v["reason"].as_str()).unwrap_or("")
                            );
                            r.discard();
                            vec![Step::Failed(why)]
                        } else {
                            continue;
                        }
                    }
                    _ => continue,
                }
            }
        };
        for step in steps {
            match step {
                Step::Say(m) => {
                    if let Some(r) = rtc.as_deref_mut() {
                        r.send_text(&m);
                    }
                }
                Step::Saved(path) => {
                    println!("{}", path.display());
                    let _ = std::io::stdout().flush();
                    if a.once {
                        if let Some(r) = rtc.as_deref_mut().filter(|_| from_link) {
                            linger(r).await;
                        }
                        return Ok(());
                    }
                }
                Step::Failed(why) if a.once => return Err(Failure::failed(why)),
                Step::Failed(why) => eprintln!("lanvan: {why}"),
            }
        }
    }
}
