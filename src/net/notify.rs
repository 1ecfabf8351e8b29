//! systemd's notify protocol without libsystemd: one datagram per state change to the
//! socket named in `NOTIFY_SOCKET`. Silent when the box is not run by systemd.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (`READY=1`, `WATCHDOG=1`, `STOPPING=1`) if systemd is listening.
pub fn send(state: &str) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(e) = sent {
        log::warn!("could not notify systemd ({state}): {e}");
    }
}

/// Half of `WATCHDOG_USEC`, if systemd asked this process for watchdog pings. systemd
/// names the watched process in `WATCHDOG_PID`; a process that merely inherited the
/// variables (a child of the box) is not it, and stays silent.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// How systemd runs the box, for `/api/status`: `null` when not under systemd, else whether
/// it takes notifications, the watchdog timeout it set, and the id of this run of the unit
/// (`INVOCATION_ID`, new at every restart, so a client can tell the box was restarted).
pub fn status() -> serde_json::Value {
    let notify = std::env::var_os("NOTIFY_SOCKET").is_some();
    let invocation = std::env::var("INVOCATION_ID").ok();
    if !notify && invocation.is_none() {
        return serde_json::Value::Null;
    }
    serde_json::json!({
        "notify": notify,
        "watchdog_secs": watchdog_interval().map(|half| (half * 2).as_secs_f64()),
        "invocation_id": invocation,
    })
}
