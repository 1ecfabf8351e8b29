//! The box under a fake systemd: a notify socket that, like systemd's, learns who sent each
//! message (SCM_CREDENTIALS). Checks what `systemd/lanvan.service` relies on: every message
//! comes from the main process (NotifyAccess=main drops others), watchdog pings stop once the
//! box says STOPPING, and pings go only to the process systemd watches (WATCHDOG_PID).

mod common;

use common::{bin, spawn_logged, temp_dir, wait_exit};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixAddr};
use nix::unistd::Pid;
use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The notify socket of a fake systemd.
struct FakeSystemd {
    sock: UnixDatagram,
    dir: PathBuf,
}

impl FakeSystemd {
    fn new(tag: &str) -> FakeSystemd {
        let dir = temp_dir(tag, false);
        let sock = UnixDatagram::bind(dir.join("notify.sock")).unwrap();
        setsockopt(&sock, sockopt::PassCred, &true).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        FakeSystemd { sock, dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("notify.sock")
    }

    /// The next message and the pid that sent it, waiting up to `within`.
    fn recv(&self, within: Duration) -> Option<(String, i32)> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 256];
        let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
        while Instant::now() < deadline {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let Ok(msg) = recvmsg::<UnixAddr>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            ) else {
                continue;
            };
            let pid = msg
                .cmsgs()
                .unwrap()
                .find_map(|c| match c {
                    ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                    _ => None,
                })
                .expect("the kernel attaches the sender's credentials");
            let n = msg.bytes;
            return Some((String::from_utf8_lossy(&buf[..n]).into_owned(), pid));
        }
        None
    }

    /// Every message that arrives within `window`.
    fn drain(&self, window: Duration) -> Vec<(String, i32)> {
        let deadline = Instant::now() + window;
        let mut all = Vec::new();
        while let Some(m) = self.recv(deadline.saturating_duration_since(Instant::now())) {
            all.push(m);
        }
        all
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `lanvan serve` on an ephemeral loopback port, told about `systemd`, with a ping every
/// 100 ms asked for; none of the test environment's LANVAN_* or systemd variables.
fn serve_under(systemd: &FakeSystemd, data: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("NOTIFY_SOCKET", systemd.path())
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID");
    for (k, _) in std::env::vars() {
        if k.starts_with("LANVAN_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn every_message_comes_from_the_main_process_and_pings_end_with_stopping() {
    let systemd = FakeSystemd::new("notify-main");
    let (mut child, _log) = spawn_logged(&mut serve_under(&systemd, &systemd.dir.join("data")));
    let pid = child.id() as i32;

    let ready = systemd.recv(Duration::from_secs(20));
    assert_eq!(ready, Some(("READY=1".to_string(), pid)));
    let pings = systemd.drain(Duration::from_secs(1));
    assert!(pings.len() >= 5, "{} pings in 1 s at 100 ms", pings.len());
    for (msg, from) in &pings {
        assert_eq!((msg.as_str(), *from), ("WATCHDOG=1", pid));
    }

    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    loop {
        let (msg, from) = systemd
            .recv(Duration::from_secs(5))
            .expect("STOPPING=1 after SIGTERM");
        assert_eq!(from, pid, "{msg} from another process");
        if msg == "STOPPING=1" {
            break;
        }
        assert_eq!(msg, "WATCHDOG=1");
    }
    assert_eq!(wait_exit(&mut child, 5).code(), Some(0));
    let after = systemd.drain(Duration::from_millis(300));
    assert!(after.is_empty(), "messages after STOPPING=1: {after:?}");
}

#[test]
fn watchdog_pings_go_only_to_the_process_systemd_watches() {
    // systemd names the watched process in WATCHDOG_PID. A process that merely inherited
    // the variables (here: told that pid 1 is watched) must not ping on its behalf.
    let systemd = FakeSystemd::new("notify-pid");
    let mut cmd = serve_under(&systemd, &systemd.dir.join("other"));
    cmd.env("WATCHDOG_PID", "1");
    let (mut child, _log) = spawn_logged(&mut cmd);
    let ready = systemd.recv(Duration::from_secs(20)).map(|m| m.0);
    assert_eq!(ready.as_deref(), Some("READY=1"));
    let msgs = systemd.drain(Duration::from_millis(700));
    assert!(msgs.is_empty(), "pings for another process: {msgs:?}");
    let _ = child.kill();
    let _ = child.wait();

    // The watched process itself pings: a shell sets WATCHDOG_PID to its own pid, then
    // becomes the box (exec keeps the pid), as systemd would have set it.
    let data = systemd.dir.join("watched");
    let inner = serve_under(&systemd, &data);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let (mut child, _log) = spawn_logged(&mut cmd);
    let pid = child.id() as i32;
    assert_eq!(
        systemd.recv(Duration::from_secs(20)),
        Some(("READY=1".to_string(), pid))
    );
    let pings = systemd.drain(Duration::from_millis(700));
    assert!(pings.len() >= 3, "{pings:?}");
    assert!(pings
        .iter()
        .all(|(m, from)| m == "WATCHDOG=1" && *from == pid));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn status_tells_a_client_the_box_runs_under_systemd_with_its_watchdog() {
    // The image boot test reads this over HTTP to see the unit's watchdog in force, and
    // the run id to see that the watchdog restarted the box.
    let systemd = FakeSystemd::new("notify-status");
    let mut cmd = serve_under(&systemd, &systemd.dir.join("data"));
    cmd.env("INVOCATION_ID", "0123456789abcdef0123456789abcdef");
    let (mut child, log) = spawn_logged(&mut cmd);
    let addr = common::listening_addr(&log, 20).expect("the box starts");
    let status = common::Client::connect(addr)
        .send("GET", "/api/status", &[], b"")
        .json();
    assert_eq!(status["systemd"]["notify"], true, "{status}");
    assert_eq!(status["systemd"]["watchdog_secs"], 0.2, "{status}");
    assert_eq!(
        status["systemd"]["invocation_id"],
        "0123456789abcdef0123456789abcdef"
    );
    let _ = child.kill();
    let _ = child.wait();

    // Run by hand: no systemd, so `null`.
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(systemd.dir.join("by-hand"))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("INVOCATION_ID");
    let (mut child, log) = spawn_logged(&mut cmd);
    let addr = common::listening_addr(&log, 20).expect("the box starts");
    let status = common::Client::connect(addr)
        .send("GET", "/api/status", &[], b"")
        .json();
    assert!(status["systemd"].is_null(), "{status}");
    let _ = child.kill();
    let _ = child.wait();
}
