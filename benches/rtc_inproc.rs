//! The in-process data-channel benchmark (run by `benches/rtc.sh`, or alone): two str0m
//! `Rtc`s in one process, one sends SIZE bytes over a reliable ordered channel to the
//! other, datagrams passed in memory on a virtual clock. Must never touch a socket: the
//! point is str0m's and sctp-proto's own cost, repeatable under callgrind.
//!
//! The clock is virtual (a fixed one-way delay per datagram, no processing time), so the
//! run is deterministic and the instruction count of each side can be compared before and
//! after a change (`valgrind --tool=callgrind --toggle-collect='*drive_sender*'`). Wall
//! time spent inside each side's calls is measured too. Prints one JSON line.
//!
//! ```text
//! rtc_bench [--mib 64] [--buffered 1048576] [--delay-us 250] [--message 65584]
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// Whether sctp-proto said it negotiated FORWARD-TSN (partial reliability), which is the
/// condition under which its in-flight expiry scan runs. Chromium always offers it.
static FORWARD_TSN: AtomicBool = AtomicBool::new(false);
static WARNINGS: AtomicU64 = AtomicU64::new(0);

struct Watch;

impl log::Log for Watch {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target().starts_with("sctp_proto")
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let text = r.args().to_string();
        if text.contains("use ForwardTSN") {
            FORWARD_TSN.store(true, Ordering::Relaxed);
        }
        if r.level() <= log::Level::Warn {
            WARNINGS.fetch_add(1, Ordering::Relaxed);
            eprintln!("sctp_proto {}: {}", r.level(), text);
        }
    }
    fn flush(&self) {}
}

struct Options {
    bytes: u64,
    buffered: usize,
    delay: Duration,
    message: usize,
}

fn options() -> Options {
    let mut o = Options {
        bytes: 64 << 20,
        buffered: 1 << 20,
        delay: Duration::from_micros(250),
        message: 65_536 + 48,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        let Some(value) = value else {
            eprintln!(
                "usage: rtc_bench [--mib N] [--buffered BYTES] [--delay-us N] [--message BYTES]"
            );
            std::process::exit(2);
        };
        match args[i].as_str() {
            "--mib" => o.bytes = value << 20,
            "--buffered" => o.buffered = value as usize,
            "--delay-us" => o.delay = Duration::from_micros(value),
            "--message" => o.message = value as usize,
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    o
}

/// One datagram on the virtual wire.
struct Datagram {
    at: Instant,
    source: SocketAddr,
    destination: SocketAddr,
    contents: Vec<u8>,
}

/// One side: its `Rtc`, its next timeout, and what it has seen.
struct Side {
    rtc: Rtc,
    timeout: Instant,
    wall: Duration,
    open: Option<ChannelId>,
    received: u64,
}

impl Side {
    /// Feeds one input, then drains `poll_output` until `Timeout` (str0m's rule).
    fn step(&mut self, input: Input, now: Instant, wire: &mut VecDeque<Datagram>, delay: Duration) {
        let started = Instant::now();
        self.rtc.handle_input(input).expect("handle_input");
        self.drain(now, wire, delay);
        self.wall += started.elapsed();
    }

    fn drain(&mut self, now: Instant, wire: &mut VecDeque<Datagram>, delay: Duration) {
        loop {
            match self.rtc.poll_output().expect("poll_output") {
                Output::Timeout(t) => {
                    self.timeout = t;
                    return;
                }
                Output::Transmit(t) => wire.push_back(Datagram {
                    at: now + delay,
                    source: t.source,
                    destination: t.destination,
                    contents: t.contents.to_vec(),
                }),
                Output::Event(Event::ChannelOpen(id, _)) => self.open = Some(id),
                Output::Event(Event::ChannelData(d)) => self.received += d.data.len() as u64,
                Output::Event(_) => {}
            }
        }
    }

    /// Writes messages while the channel takes them, then drains.
    fn write(
        &mut self,
        payload: &[u8],
        left: &mut u64,
        now: Instant,
        wire: &mut VecDeque<Datagram>,
        delay: Duration,
    ) {
        let Some(id) = self.open else { return };
        let started = Instant::now();
        let mut wrote = false;
        while *left > 0 {
            let n = payload.len().min(*left as usize);
            let mut channel = self.rtc.channel(id).expect("open channel");
            if !channel.write(true, &payload[..n]).expect("write") {
                break;
            }
            *left -= n as u64;
            wrote = true;
        }
        if wrote {
            self.drain(now, wire, delay);
        }
        self.wall += started.elapsed();
    }
}

// The two sides are driven through separate functions so a profiler can tell them apart
// (`--toggle-collect='*drive_sender*'`).
#[inline(never)]
fn drive_sender(
    s: &mut Side,
    input: Input,
    now: Instant,
    wire: &mut VecDeque<Datagram>,
    d: Duration,
) {
    s.step(input, now, wire, d);
}

#[inline(never)]
fn drive_sender_write(
    s: &mut Side,
    payload: &[u8],
    left: &mut u64,
    now: Instant,
    wire: &mut VecDeque<Datagram>,
    d: Duration,
) {
    s.write(payload, left, now, wire, d);
}

#[inline(never)]
fn drive_receiver(
    s: &mut Side,
    input: Input,
    now: Instant,
    wire: &mut VecDeque<Datagram>,
    d: Duration,
) {
    s.step(input, now, wire, d);
}

fn main() {
    let o = options();
    log::set_logger(&Watch).expect("one logger");
    log::set_max_level(log::LevelFilter::Debug);
    str0m::crypto::from_feature_flags().install_process_default();

    let start = Instant::now();
    let mut now = start;
    let left_addr: SocketAddr = "10.0.0.1:5000".parse().unwrap();
    let right_addr: SocketAddr = "10.0.0.2:5000".parse().unwrap();
    let mut sender = Side {
        rtc: Rtc::builder()
            .set_sctp_max_buffered_amount(o.buffered)
            .build(now),
        timeout: now,
        wall: Duration::ZERO,
        open: None,
        received: 0,
    };
    let mut receiver = Side {
        rtc: Rtc::builder().build(now),
        timeout: now,
        wall: Duration::ZERO,
        open: None,
        received: 0,
    };
    sender
        .rtc
        .add_local_candidate(Candidate::host(left_addr, "udp").unwrap())
        .unwrap();
    receiver
        .rtc
        .add_local_candidate(Candidate::host(right_addr, "udp").unwrap())
        .unwrap();
    let mut change = sender.rtc.sdp_api();
    change.add_channel("lanvan-chunks".into());
    let (offer, pending) = change.apply().expect("offer");
    let answer = receiver.rtc.sdp_api().accept_offer(offer).expect("answer");
    sender
        .rtc
        .sdp_api()
        .accept_answer(pending, answer)
        .expect("accept");

    let mut to_receiver: VecDeque<Datagram> = VecDeque::new();
    let mut to_sender: VecDeque<Datagram> = VecDeque::new();
    let delay = o.delay;
    drive_sender(
        &mut sender,
        Input::Timeout(now),
        now,
        &mut to_receiver,
        delay,
    );
    drive_receiver(
        &mut receiver,
        Input::Timeout(now),
        now,
        &mut to_sender,
        delay,
    );

    let payload: Vec<u8> = (0..o.message).map(|i| (i * 31 + 7) as u8).collect();
    let mut left = o.bytes;
    let mut began: Option<(Instant, Instant)> = None;
    let mut sender_wall_at_open = Duration::ZERO;
    let mut receiver_wall_at_open = Duration::ZERO;
    let deadline = start + Duration::from_secs(3600);
    while receiver.received < o.bytes {
        if began.is_none() && sender.open.is_some() {
            began = Some((now, Instant::now()));
            sender_wall_at_open = sender.wall;
            receiver_wall_at_open = receiver.wall;
            // Handshake over: from here on only warnings matter.
            log::set_max_level(log::LevelFilter::Warn);
        }
        drive_sender_write(
            &mut sender,
            &payload,
            &mut left,
            now,
            &mut to_receiver,
            delay,
        );

        let next = [
            Some(sender.timeout),
            Some(receiver.timeout),
            to_receiver.front().map(|d| d.at),
            to_sender.front().map(|d| d.at),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap();
        now = now.max(next);
        assert!(
            now < deadline,
            "stalled: received {} of {}",
            receiver.received,
            o.bytes
        );

        while to_receiver.front().is_some_and(|d| d.at <= now) {
            let d = to_receiver.pop_front().unwrap();
            let r = Receive::new(Protocol::Udp, d.source, d.destination, &d.contents).unwrap();
            drive_receiver(
                &mut receiver,
                Input::Receive(now, r),
                now,
                &mut to_sender,
                delay,
            );
        }
        while to_sender.front().is_some_and(|d| d.at <= now) {
            let d = to_sender.pop_front().unwrap();
            let r = Receive::new(Protocol::Udp, d.source, d.destination, &d.contents).unwrap();
            drive_sender(
                &mut sender,
                Input::Receive(now, r),
                now,
                &mut to_receiver,
                delay,
            );
        }
        if sender.timeout <= now {
            drive_sender(
                &mut sender,
                Input::Timeout(now),
                now,
                &mut to_receiver,
                delay,
            );
        }
        if receiver.timeout <= now {
            drive_receiver(
                &mut receiver,
                Input::Timeout(now),
                now,
                &mut to_sender,
                delay,
            );
        }
    }
    let (virtual_began, wall_began) = began.expect("channel opened");
    let wall = wall_began.elapsed().as_secs_f64();
    let mib = o.bytes as f64 / (1 << 20) as f64;
    let sender_ms = (sender.wall - sender_wall_at_open).as_secs_f64() * 1e3;
    let receiver_ms = (receiver.wall - receiver_wall_at_open).as_secs_f64() * 1e3;
    println!(
        "{{\"bytes\":{},\"message\":{},\"buffered\":{},\"delay_us\":{},\"forward_tsn\":{},\"warnings\":{},\"wall_s\":{:.3},\"mb_per_s\":{:.1},\"sender_ms_per_mib\":{:.2},\"receiver_ms_per_mib\":{:.2},\"virtual_s\":{:.3}}}",
        o.bytes,
        o.message,
        o.buffered,
        o.delay.as_micros(),
        FORWARD_TSN.load(Ordering::Relaxed),
        WARNINGS.load(Ordering::Relaxed),
        wall,
        o.bytes as f64 / 1e6 / wall,
        sender_ms / mib,
        receiver_ms / mib,
        (now - virtual_began).as_secs_f64(),
    );
}
