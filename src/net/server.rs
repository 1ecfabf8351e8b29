//! The box's event loop: one smol `LocalExecutor` on the main thread accepts connections,
//! serves HTTP and WebSockets, drives the hub's timers, pings systemd, and shuts down on
//! SIGINT/SIGTERM. Blocking file work goes to the single disk thread (`store::disk`).

use super::http::{Conn, HeadError, Response, Traffic};
use super::{api, mdns, notify, relay, rtc, ws};
use crate::config::{Config, P2pMode};
use crate::core::hub::{ConnId, Hub, HubLimits, Now, P2pLimits};
use crate::store::{disk::Disk, unix_ms, Store};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use serde_json::json;
use smol::{Async, LocalExecutor, Timer};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A frame waiting to be written to one WebSocket.
pub enum Outbound {
    Text(Rc<str>),
    Ping,
    Close(u16, &'static str),
    /// A relay chunk (transfer id, chunk index), copied from the ring when it is written.
    Chunk(crate::core::relay::TransferId, u32),
}

/// Everything the loop shares between connections. Lives on the loop thread only.
pub struct App {
    pub cfg: Config,
    pub store: Store,
    pub hub: RefCell<Hub>,
    pub sockets: RefCell<HashMap<ConnId, smol::channel::Sender<Outbound>>>,
    pub traffic: Rc<Traffic>,
    pub relay: RefCell<crate::core::relay::Relay>,
    pub inbox: crate::store::inbox::Inbox,
    pub inbox_jobs: smol::channel::Sender<relay::InboxJob>,
    /// The box as a WebRTC peer; None when P2P is off or it has no UDP socket.
    pub rtc: Option<rtc::serve::BoxPeers>,
    started: Instant,
    connections: Cell<usize>,
    next_conn: Cell<ConnId>,
}

impl App {
    pub fn now(&self) -> Now {
        Now {
            at: Instant::now(),
            unix_ms: unix_ms(),
        }
    }

    pub fn next_conn_id(&self) -> ConnId {
        let id = self.next_conn.get() + 1;
        self.next_conn.set(id);
        id
    }

    /// Tells every connected device about a change (a file added or deleted).
    pub fn announce(&self, msg: serde_json::Value) {
        let mut out = Vec::new();
        self.hub.borrow_mut().broadcast(&msg, &mut out);
        self.dispatch(out);
    }

    /// What `/api/status` reports.
    pub fn status(&self) -> serde_json::Value {
        let (rss, rss_peak, threads) = process_stats();
        let hub = self.hub.borrow();
        let mut p2p = hub.p2p_info();
        p2p["box_peer"] = self.rtc.is_some().into();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "threads": threads,
            "rss_bytes": rss,
            "rss_peak_bytes": rss_peak,
            "connections": self.connections.get(),
            "devices": hub.device_count(),
            "open_uploads": self.store.open_uploads(),
            "stored_files": self.store.file_count(),
            "stored_bytes": self.store.stored_bytes(),
            "bytes_in": self.traffic.bytes_in.get(),
            "bytes_out": self.traffic.bytes_out.get(),
            "relay": {
                "ring_bytes": self.relay.borrow().ring_bytes(),
                "transfers": self.relay.borrow().transfer_count(),
                "inbox": self.relay.borrow().inbox_count(),
            },
            "p2p": p2p,
            "box_peers": self.rtc_peer_count(),
            "p2p_sessions": hub.p2p_session_count(),
            "families": hub.family_count(),
            "systemd": notify::status(),
        })
    }
}

/// Resident memory now and at its peak, in bytes, and thread count, from /proc.
fn process_stats() -> (u64, u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        field("VmRSS:") * 1024,
        field("VmHWM:") * 1024,
        field("Threads:"),
    )
}

/// Error that stops the box from starting.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Runs the box until SIGINT or SIGTERM.
pub fn run(cfg: Config) -> Result<(), StartError> {
    // Block the stop signals before any thread exists, so every thread inherits the mask
    // and the signals arrive only through the loop's signalfd.
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGINT);
    stop_signals.add(Signal::SIGTERM);
    stop_signals
        .thread_block()
        .map_err(|e| StartError(format!("cannot block signals: {e}")))?;
    let sigfd = SignalFd::with_flags(
        &stop_signals,
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )
    .map_err(|e| StartError(format!("cannot open signalfd: {e}")))?;

    let addr: SocketAddr = cfg.listen.parse().map_err(|e| {
        StartError(format!(
            "listen address `{}` is not IP:PORT ({e}); for IPv6 write [::]:8080",
            cfg.listen
        ))
    })?;
    let disk = Disk::start(64);
    let store = Store::open(&cfg.data_dir, cfg.store.clone(), disk.clone()).map_err(|e| {
        StartError(format!(
            "cannot open the data folder {}: {e}",
            cfg.data_dir.display()
        ))
    })?;
    let (relay, inbox, inbox_jobs, inbox_rx) = relay::build(&cfg, disk.clone())
        .map_err(|e| StartError(format!("cannot open the relay inbox: {e}")))?;
    let listener =
        TcpListener::bind(addr).map_err(|e| StartError(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| StartError(e.to_string()))?;
    let listener = Async::new(listener).map_err(|e| StartError(e.to_string()))?;

    let stun = super::stun::bind(&cfg.p2p, addr);
    let stun_port = stun
        .as_ref()
        .and_then(|s| s.get_ref().local_addr().ok())
        .map(|a| a.port());
    let (box_peers, rtc_events) = match rtc::serve::BoxPeers::start(&cfg, local) {
        Some((peers, events)) => (Some(peers), Some(events)),
        None => (None, None),
    };
    let ws = &cfg.ws;
    let hub = Hub::new(HubLimits {
        max_devices: ws.max_devices,
        clipboard_max_bytes: ws.clipboard_max_bytes as usize,
        clipboard_history: ws.clipboard_history,
        heartbeat_timeout: Duration::from_secs(ws.heartbeat_timeout_secs),
        messages_per_sec: ws.messages_per_sec,
        p2p: P2pLimits {
            box_peer: box_peers.is_some(),
            ..P2pLimits::new(&cfg.p2p, stun_port, cfg.relay.chunk_size)
        },
        ..HubLimits::default()
    });
    let app = Rc::new(App {
        store,
        hub: RefCell::new(hub),
        sockets: RefCell::default(),
        traffic: Rc::default(),
        relay: RefCell::new(relay),
        inbox,
        inbox_jobs,
        rtc: box_peers,
        started: Instant::now(),
        connections: Cell::new(0),
        next_conn: Cell::new(0),
        cfg,
    });

    // `query_result.box`: the tracker asks the store, which never computes on a query.
    let weak = Rc::downgrade(&app);
    let lookup = move |id: &crate::core::hash::Digest| {
        weak.upgrade().is_some_and(|a| a.store.has_manifest(id))
    };
    app.hub.borrow_mut().set_box_manifests(Rc::new(lookup));

    let ex = LocalExecutor::new();
    smol::block_on(ex.run(async {
        log::info!(
            "LANVan is serving {} — open {} in a browser on this network",
            app.cfg.data_dir.display(),
            browser_url(local)
        );
        // The port actually bound, on its own line, for scripts and tests that ask for port 0.
        log::info!("listening on {local}");
        // After the line above, so tests and scripts waiting for it see what mDNS says.
        let advert = start_mdns(&app.cfg, local);
        if let Some(why) = crate::termux::detect(&|k| std::env::var(k).ok()) {
            super::battery::start(&app, &why, &ex);
        }
        notify::send("READY=1");
        // Kept, not detached: dropped at shutdown, so no ping follows STOPPING=1.
        let watchdog = notify::watchdog_interval().map(|every| {
            ex.spawn(async move {
                loop {
                    Timer::after(every).await;
                    notify::send("WATCHDOG=1");
                }
            })
        });
        ex.spawn(hub_timers(app.clone())).detach();
        if let Some(stun) = stun {
            log::info!(
                "STUN on udp {}",
                stun.get_ref()
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            );
            ex.spawn(super::stun::serve(stun, app.cfg.p2p.stun_batch))
                .detach();
        }
        if let Some(advert) = &advert {
            let advert = advert.clone();
            ex.spawn(async move { advert.watch().await }).detach();
        }
        ex.spawn(relay::relay_timers(app.clone())).detach();
        if let Some(events) = rtc_events {
            ex.spawn(rtc::serve::serve(app.clone(), events)).detach();
        }
        ex.spawn(relay::inbox_worker(app.clone(), inbox_rx))
            .detach();
        let expiring = app.clone();
        ex.spawn(async move {
            loop {
                Timer::after(Duration::from_secs(600)).await;
                expiring.store.expire_uploads().await;
            }
        })
        .detach();

        let accept = async {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        ex.spawn(connection(app.clone(), stream, peer)).detach();
                    }
                    Err(e) => {
                        // Out of descriptors, most likely: wait instead of spinning.
                        log::warn!("accept failed: {e}");
                        Timer::after(Duration::from_millis(100)).await;
                    }
                }
            }
        };
        let sigfd = Async::new(sigfd).expect("signalfd is pollable");
        let stop = async {
            // nix reports "nothing to read" as Ok(None); the reactor needs WouldBlock.
            let sig = sigfd
                .read_with(|fd| match fd.read_signal() {
                    Ok(Some(info)) => Ok(info),
                    Ok(None) => Err(std::io::ErrorKind::WouldBlock.into()),
                    Err(e) => Err(std::io::Error::from(e)),
                })
                .await;
            if let Ok(info) = sig {
                log::info!("signal {} received, shutting down", info.ssi_signo);
            }
        };
        smol::future::or(accept, stop).await;
        drop(watchdog);
        notify::send("STOPPING=1");
        drop(listener);
        // Say goodbye to every device, then let chunk writes already queued reach disk:
        // the disk thread runs jobs in order, so an empty job behind them is a barrier.
        if let Some(peers) = &app.rtc {
            peers
                .host
                .close_all(crate::core::peer::CloseReason::Shutdown);
        }
        let conns: Vec<ConnId> = app.sockets.borrow().keys().copied().collect();
        for conn in conns {
            app.close(conn, 1001, "the box is shutting down");
        }
        let barrier = disk.run(|| ());
        let goodbye = async {
            if let Some(advert) = &advert {
                advert.stop().await;
            }
        };
        let barrier = smol::future::or(barrier, async {
            Timer::after(Duration::from_secs(10)).await;
        });
        smol::future::zip(barrier, goodbye).await;
        // Let writers send their close frames.
        Timer::after(Duration::from_millis(100)).await;
        log::info!("stopped");
    }));
    Ok(())
}

/// Advertises the box by mDNS on its own thread, unless turned off (see `net::mdns`).
fn start_mdns(cfg: &Config, local: SocketAddr) -> Option<Rc<mdns::Advert>> {
    let id = mdns::box_id(&cfg.data_dir)
        .map_err(|e| log::warn!("mDNS is off: cannot keep the box id: {e}"))
        .ok()?;
    mdns::Advert::start(&cfg.mdns, local, &id).map(Rc::new)
}

/// Where a person should point a browser: the first LAN address when listening on all.
fn browser_url(local: SocketAddr) -> String {
    let ip = if local.ip().is_unspecified() {
        lan_address().unwrap_or(local.ip())
    } else {
        local.ip()
    };
    match ip {
        std::net::IpAddr::V6(v6) => format!("http://[{v6}]:{}/", local.port()),
        v4 => format!("http://{v4}:{}/", local.port()),
    }
}

/// The IPv4 address other devices on the LAN most likely reach the box at (for the start-up
/// line and the QR code): the best-ranked of [`lan_rank`], first found on a tie.
pub(crate) fn lan_address() -> Option<std::net::IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    let best = addrs
        .filter_map(|ifa| {
            let v4 = ifa.address?.as_sockaddr_in()?.ip();
            Some((lan_rank(&ifa.interface_name, v4)?, v4))
        })
        .min_by_key(|&(rank, _)| rank)?;
    Some(std::net::IpAddr::V4(best.1))
}

/// How likely `ip` on interface `name` is the address phones on the LAN use: 0 for a private
/// (RFC 1918) address on a real interface, then other addresses on real interfaces, then
/// container, VPN and bridge interfaces, then link-local. None for loopback.
fn lan_rank(name: &str, ip: std::net::Ipv4Addr) -> Option<u8> {
    const VIRTUAL: [&str; 8] = ["docker", "br-", "veth", "virbr", "tun", "tap", "wg", "zt"];
    if ip.is_loopback() || ip.is_unspecified() {
        return None;
    }
    let virtual_if = VIRTUAL.iter().any(|p| name.starts_with(p));
    Some(match (ip.is_link_local(), virtual_if, ip.is_private()) {
        (true, _, _) => 4,
        (false, true, _) => 3,
        (false, false, false) => 1,
        (false, false, true) => 0,
    })
}

/// Closes sockets the hub finds silent for too long.
async fn hub_timers(app: Rc<App>) {
    drive_timers(
        || app.hub.borrow().poll_timeout(),
        || {
            let mut out = Vec::new();
            app.hub.borrow_mut().handle_timeout(app.now(), &mut out);
            app.dispatch(out);
        },
    )
    .await
}

/// Drives a state machine's deadlines: sleeps until `next` (at most 1 s ahead, so a deadline
/// set meanwhile is seen within a second, and no faster wake-ups when idle), then `fire`s.
pub(crate) async fn drive_timers(next: impl Fn() -> Option<Instant>, mut fire: impl FnMut()) {
    loop {
        let wait = next()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        Timer::after(wait).await;
        fire();
    }
}

/// Serves one TCP connection: HTTP requests with keep-alive, or one WebSocket.
async fn connection(app: Rc<App>, stream: Async<std::net::TcpStream>, peer: SocketAddr) {
    let http = &app.cfg.http;
    let stall = Duration::from_secs(http.body_timeout_secs);
    let _ = stream.get_ref().set_nodelay(true);
    let mut conn = Conn::new(stream, http.max_header_bytes as usize, app.traffic.clone());
    if app.connections.get() >= http.max_connections {
        let resp = api::error(
            503,
            "too_many_connections",
            "the box has too many open connections".into(),
        );
        let _ = conn.respond(resp, false, false, stall).await;
        return;
    }
    app.connections.set(app.connections.get() + 1);
    let _guard = Defer(|| app.connections.set(app.connections.get() - 1));
    let head_timeout = Duration::from_secs(http.header_timeout_secs);
    let idle = Duration::from_secs(http.keepalive_timeout_secs);
    let mut first = true;
    loop {
        // Between requests a keep-alive connection may idle; once a head starts, it has
        // the header timeout to arrive whole, like the first one.
        if !first && !conn.wait_for_request(idle).await {
            return;
        }
        first = false;
        let req = match conn.read_head(head_timeout).await {
            Ok(req) => req,
            Err(HeadError::Closed | HeadError::Timeout | HeadError::Io(_)) => return,
            Err(HeadError::TooLarge) => {
                let resp = api::error(
                    431,
                    "header_too_large",
                    format!(
                        "request heads are limited to {} bytes",
                        http.max_header_bytes
                    ),
                );
                let _ = conn.respond(resp, false, false, stall).await;
                return;
            }
            Err(HeadError::Bad(msg, status)) => {
                let _ = conn
                    .respond(api::error(status, "bad_request", msg), false, false, stall)
                    .await;
                return;
            }
        };
        if req.is_websocket_upgrade() && req.method == "GET" {
            let segments = req.segments().unwrap_or_default();
            match segments.as_slice() {
                [ws, device] if ws == "ws" => {
                    let device = ws::Endpoint::Device(device.clone());
                    return ws::serve(app.clone(), conn, req, device).await;
                }
                [signal] if signal == "signal" && app.cfg.p2p.mode != P2pMode::Off => {
                    return ws::serve(app.clone(), conn, req, ws::Endpoint::Family).await;
                }
                _ => {}
            }
        }
        log::debug!("{peer} {} {}", req.method, req.path);
        let resp: Response = api::handle(&app, &mut conn, &req).await;
        // A body the handler did not read must be skipped before the next request; a
        // large one is not worth reading, so the connection closes instead.
        let mut keep = req.keep_alive;
        if conn.body_left() > 0 {
            keep = keep && conn.body_left() <= 64 * 1024 && conn.skip_body(stall).await.is_ok();
        }
        let head_only = req.method == "HEAD";
        if conn.respond(resp, keep, head_only, stall).await.is_err() || !keep {
            return;
        }
    }
}

/// Runs a closure when dropped (when a connection task ends or is cancelled).
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

#[cfg(test)]
mod tests {
    use super::lan_rank;

    #[test]
    fn the_lan_address_prefers_a_private_address_on_a_real_interface() {
        let ip = |s: &str| s.parse().unwrap();
        let mut found = [
            ("docker0", ip("172.17.0.1")),
            ("wg0", ip("10.8.0.2")),
            ("eth0", ip("169.254.3.4")),
            ("wlan0", ip("192.168.1.20")),
            ("eth1", ip("203.0.113.5")),
            ("lo", ip("127.0.0.1")),
        ]
        .map(|(name, a)| (lan_rank(name, a), name));
        found.sort();
        let order: Vec<_> = found
            .iter()
            .filter(|(r, _)| r.is_some())
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(order, ["wlan0", "eth1", "docker0", "wg0", "eth0"]);
        assert_eq!(lan_rank("lo", ip("127.0.0.1")), None);
    }
}
