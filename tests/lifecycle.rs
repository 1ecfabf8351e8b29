//! End-to-end tests of the box as a process: stopping on signals, systemd notifications,
//! the command line and its settings, `/api/status`, and the connection limits.

mod common;

use common::{bin, spawn_logged, temp_dir, wait_exit, wait_for, Lanvan};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `lanvan` command with none of the settings of the environment the tests run in.
fn lanvan(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC");
    for (k, _) in std::env::vars() {
        if k.starts_with("LANVAN_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run lanvan")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A box started by the test itself (for what `common::Lanvan` does not set up: the
/// working directory, the environment). Killed when dropped.
struct Proc {
    child: Child,
    log: mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let (child, log) = spawn_logged(&mut cmd);
        Proc {
            child,
            log,
            lines: Vec::new(),
        }
    }

    /// The first log line containing `pat`, waiting up to `secs`.
    fn wait_line(&mut self, pat: &str, secs: u64) -> Option<String> {
        if let Some(l) = self.lines.iter().find(|l| l.contains(pat)) {
            return Some(l.clone());
        }
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    self.lines.push(line.clone());
                    if line.contains(pat) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// The address from the "listening on" line.
    fn addr(&mut self) -> SocketAddr {
        let line = self
            .wait_line("listening on ", 20)
            .unwrap_or_else(|| panic!("the box did not start: {:?}", self.lines));
        line.split("listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on a fresh connection that the box is asked to close; the status and body.
/// A reset after the reply (the box may close without reading the request) is tolerated.
fn raw_request(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: lanvan\r\nconnection: close\r\n\r\n"
    );
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the reply: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => buf[i + 4..].to_vec(),
        None => Vec::new(),
    };
    (status, body)
}

/// Connects a WebSocket device and reads its `welcome`.
fn ws_device(addr: SocketAddr, id: &str) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let url = format!("ws://{addr}/ws/{id}");
    let (mut ws, _) = tungstenite::client(url.as_str(), stream).expect("upgrade");
    match ws.read().expect("welcome") {
        tungstenite::Message::Text(t) => assert!(t.as_str().contains("\"welcome\""), "{t}"),
        other => panic!("expected the welcome, got {other:?}"),
    }
    ws
}

/// Reads until a close frame arrives; its code, or None if the connection just ended.
fn close_code(ws: &mut tungstenite::WebSocket<TcpStream>) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

fn stops_cleanly_on(sig: Signal) {
    let mut lv = Lanvan::start("life-signal", &[]);
    let mut ws = ws_device(lv.addr, "phone");
    // Neither a client stalled mid-request nor one that never reads holds the box up.
    let mut stalled = TcpStream::connect(lv.addr).unwrap();
    stalled.write_all(b"GET /api/status HTTP/1.1\r\n").unwrap();
    let _deaf = ws_device(lv.addr, "deaf");
    let started = Instant::now();
    kill(Pid::from_raw(lv.pid()), sig).unwrap();

    // The device is told the box is going away (1001) before the connection ends.
    assert_eq!(close_code(&mut ws), Some(1001));
    let status = wait_exit(&mut lv.child, 5);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status:?}");

    let log: Vec<String> = lv.log.iter().collect();
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("signal {} received", sig as i32))),
        "{log:#?}"
    );
    assert!(
        log.last().is_some_and(|l| l.contains("stopped")),
        "{log:#?}"
    );
    assert!(
        TcpStream::connect(lv.addr).is_err(),
        "nothing listens any more"
    );
}

#[test]
fn sigterm_closes_sockets_and_exits_zero() {
    stops_cleanly_on(Signal::SIGTERM);
}

#[test]
fn sigint_closes_sockets_and_exits_zero() {
    stops_cleanly_on(Signal::SIGINT);
}

/// `lanvan serve` on an ephemeral loopback port with `data` as its folder.
fn serve_on_loopback(data: &Path) -> Command {
    lanvan(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ])
}

#[test]
fn systemd_is_notified_of_ready_watchdog_and_stopping() {
    let dir = temp_dir("life-notify", false);
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut cmd = serve_on_loopback(&dir.join("data"));
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000");
    let mut p = Proc::spawn(cmd);

    let recv = |within: Duration| -> Option<String> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 256];
        while Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    };

    assert_eq!(recv(Duration::from_secs(20)).as_deref(), Some("READY=1"));
    // Ready means ready: the port answers.
    let addr = p.addr();
    assert_eq!(raw_request(addr, "/api/status").0, 200);

    // WATCHDOG_USEC=400000: a ping every 200 ms.
    let window = Instant::now() + Duration::from_secs(1);
    let mut pings = 0;
    while let Some(msg) = recv(window.saturating_duration_since(Instant::now())) {
        assert_eq!(msg, "WATCHDOG=1");
        pings += 1;
    }
    assert!(pings >= 2, "{pings} watchdog pings in 1 s");

    p.signal(Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let msg = recv(deadline.saturating_duration_since(Instant::now()))
            .expect("STOPPING=1 after SIGTERM");
        if msg == "STOPPING=1" {
            break;
        }
        assert_eq!(msg, "WATCHDOG=1");
    }
    assert_eq!(wait_exit(&mut p.child, 5).code(), Some(0));
    drop(p);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn systemd_abstract_notify_socket_works_too() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("lanvan-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let data = temp_dir("life-notify-abstract", false);
    let mut cmd = serve_on_loopback(&data);
    cmd.env("NOTIFY_SOCKET", format!("@{name}"));
    let p = Proc::spawn(cmd);
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    drop(p);
    let _ = std::fs::remove_dir_all(data);
}

const FLAGS: [&str; 7] = [
    "--listen",
    "--data-dir",
    "--config",
    "--set",
    "--quota",
    "--max-connections",
    "--log-level",
];

#[test]
fn help_lists_commands_and_every_flag() {
    let top = run(&mut lanvan(&["--help"]));
    assert!(top.status.success());
    let text = stdout(&top);
    assert!(text.contains("serve") && text.contains("config"), "{text}");

    for sub in ["serve", "config"] {
        let out = run(&mut lanvan(&[sub, "--help"]));
        assert!(out.status.success(), "{sub}");
        let text = stdout(&out);
        for flag in FLAGS {
            assert!(
                text.contains(flag),
                "`lanvan {sub} --help` lacks {flag}:\n{text}"
            );
        }
        assert!(text.contains("LANVAN_CONFIG"), "{text}");
    }
}

#[test]
fn top_level_help_mentions_every_flag() {
    let top = run(&mut lanvan(&["--help"]));
    assert!(top.status.success());
    let text = stdout(&top);
    for flag in FLAGS {
        assert!(text.contains(flag), "`lanvan --help` lacks {flag}:\n{text}");
    }
}

/// `http.max_connections` as `lanvan config` reports it with these arguments and env.
fn max_connections(args: &[&str], env: &[(&str, &str)]) -> i64 {
    let mut cmd = lanvan(&["config"]);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    let table: toml::Table = stdout(&out).parse().expect("config prints TOML");
    table["http"]["max_connections"].as_integer().unwrap()
}

#[test]
fn config_prints_toml_and_sources_take_precedence_in_order() {
    let out = run(&mut lanvan(&["config"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for section in ["[http]", "[store]", "[ws]"] {
        assert!(text.contains(section), "{text}");
    }
    let table: toml::Table = text.parse().expect("valid TOML");
    assert_eq!(table["listen"].as_str(), Some("0.0.0.0:8080"));
    assert_eq!(table["ws"]["send_queue"].as_integer(), Some(256));

    let dir = temp_dir("life-config", false);
    let file = dir.join("box.toml");
    std::fs::write(&file, "[http]\nmax_connections = 7\n").unwrap();
    let file = file.to_str().unwrap();
    let env = [("LANVAN_HTTP_MAX_CONNECTIONS", "5")];

    assert_eq!(max_connections(&[], &[]), 256, "default");
    assert_eq!(max_connections(&[], &env), 5, "env beats default");
    assert_eq!(
        max_connections(&["--config", file], &env),
        7,
        "file beats env"
    );
    let via_env = [env[0], ("LANVAN_CONFIG", file)];
    assert_eq!(
        max_connections(&[], &via_env),
        7,
        "LANVAN_CONFIG names the file"
    );
    assert_eq!(
        max_connections(&["--config", file, "--max-connections", "9"], &env),
        9,
        "flag beats file and env"
    );
    assert_eq!(
        max_connections(&["-c", file, "-s", "http.max_connections=11"], &env),
        11,
        "--set beats file and env"
    );

    // The file written by `lanvan config` is a valid --config file.
    let full = dir.join("full.toml");
    std::fs::write(&full, &text).unwrap();
    assert_eq!(
        max_connections(&["--config", full.to_str().unwrap()], &[]),
        256
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_settings_are_refused_with_a_message_naming_them() {
    let data = temp_dir("life-nope", false).join("data");
    let out = run(&mut lanvan(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "-s",
        "nope=1",
    ]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("nope"), "{err}");
    assert!(!data.exists(), "the box did not start");

    let out = run(&mut lanvan(&["config", "-s", "ws.nope=1"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("ws.nope"), "{}", stderr(&out));

    let out = run(&mut lanvan(&["config", "--quota", "lots"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("lots"), "{}", stderr(&out));

    let out = run(&mut lanvan(&["config", "-s", "no-equals-sign"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("KEY=VALUE"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(data.parent().unwrap());
}

#[test]
fn serve_without_data_dir_uses_lanvan_data_in_the_working_directory() {
    let cwd = temp_dir("life-cwd", false);
    let mut cmd = lanvan(&["serve", "--listen", "127.0.0.1:0"]);
    cmd.current_dir(&cwd);
    let mut p = Proc::spawn(cmd);
    let addr = p.addr();
    let open = p
        .wait_line("open http://", 5)
        .unwrap_or_else(|| panic!("no browser hint in {:?}", p.lines));
    assert!(
        open.contains(&format!("open http://{addr}/")),
        "the hint names the address served: {open}"
    );
    assert!(Path::new(&cwd).join("lanvan-data").is_dir());
    assert_eq!(raw_request(addr, "/api/status").0, 200);
    p.signal(Signal::SIGTERM);
    assert_eq!(wait_exit(&mut p.child, 5).code(), Some(0));
    drop(p);
    let _ = std::fs::remove_dir_all(cwd);
}

#[test]
fn status_reports_process_and_traffic_numbers() {
    let lv = Lanvan::start("life-status", &[]);
    let s1 = lv.status();
    let threads = s1["threads"].as_u64().unwrap();
    assert!(
        (1..=3).contains(&threads),
        "loop, reactor and disk thread at most: {s1}"
    );
    let rss = s1["rss_bytes"].as_u64().unwrap();
    assert!(rss > 0 && rss < 256 << 20, "{s1}");
    assert!(s1["uptime_secs"].is_u64(), "{s1}");
    assert_eq!(s1["devices"], 0);
    assert_eq!(s1["open_uploads"], 0);
    let in1 = s1["bytes_in"].as_u64().unwrap();
    let out1 = s1["bytes_out"].as_u64().unwrap();
    assert!(in1 > 0, "the status request itself was read: {s1}");

    let s2 = lv.status();
    assert!(s2["bytes_in"].as_u64().unwrap() > in1, "{s1} then {s2}");
    assert!(s2["bytes_out"].as_u64().unwrap() > out1, "{s1} then {s2}");

    // Devices and open uploads are counted.
    let _ws = ws_device(lv.addr, "laptop");
    let created = lv.json(
        "POST",
        "/api/uploads",
        &serde_json::json!({"name": "a.bin", "size": 100_000, "sha256": "0".repeat(64)}),
    );
    assert!(
        created.status == 201 || created.status == 200,
        "{created:?}"
    );
    let s3 = lv.status();
    assert_eq!(s3["devices"], 1, "{s3}");
    assert_eq!(s3["open_uploads"], 1, "{s3}");
    assert!(
        s3["threads"].as_u64().unwrap() <= 3,
        "no thread per connection: {s3}"
    );

    assert!(wait_for(3, || lv.status()["uptime_secs"].as_u64().unwrap() >= 1));
}

#[test]
fn connection_limit_answers_503_and_recovers() {
    let lv = Lanvan::start("life-maxconn", &["http.max_connections=2"]);
    let idle1 = TcpStream::connect(lv.addr).unwrap();
    let mut idle2 = TcpStream::connect(lv.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let (status, body) = raw_request(lv.addr, "/api/status");
    assert_eq!(status, 503);
    let err: serde_json::Value = serde_json::from_slice(&body).expect("JSON error");
    assert_eq!(err["error"], "too_many_connections", "{err}");
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));

    // Connections already open are served as usual.
    idle2
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    idle2
        .write_all(b"GET /api/status HTTP/1.1\r\nhost: lanvan\r\n\r\n")
        .unwrap();
    let mut reply = [0u8; 12];
    idle2.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"HTTP/1.1 200");

    drop(idle1);
    assert!(
        wait_for(5, || raw_request(lv.addr, "/api/status").0 == 200),
        "a freed slot is used again"
    );
    drop(idle2);
}

#[test]
fn a_stalled_request_head_is_cut_off_while_others_are_served() {
    let lv = Lanvan::start("life-headtimeout", &["http.header_timeout_secs=1"]);
    let mut stalled = TcpStream::connect(lv.addr).unwrap();
    stalled
        .write_all(b"GET /api/status HTTP/1.1\r\nhost: lan")
        .unwrap();
    let started = Instant::now();
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let watcher = std::thread::spawn(move || {
        let mut rest = Vec::new();
        let end = stalled.read_to_end(&mut rest);
        (started.elapsed(), end, rest)
    });

    // Meanwhile another client is served, again and again.
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        assert_eq!(lv.get("/api/status").status, 200);
        served += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served >= 5);

    // A head finished in time is fine even if it came slowly.
    let mut slow = TcpStream::connect(lv.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(b"GET /api/status HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    slow.write_all(b"host: lanvan\r\n\r\n").unwrap();
    let mut reply = [0u8; 12];
    slow.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"HTTP/1.1 200");

    // The stalled one was closed without an answer, about a second after it started.
    let (after, end, rest) = watcher.join().unwrap();
    assert!(
        matches!(end, Ok(0))
            || matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "still open after {after:?}: {end:?}"
    );
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(3),
        "cut off after {after:?}"
    );
}

#[test]
fn a_stalled_second_request_head_is_cut_off_too() {
    let lv = Lanvan::start(
        "life-headtimeout-keepalive",
        &[
            "http.header_timeout_secs=1",
            "http.keepalive_timeout_secs=30",
        ],
    );
    let mut client = lv.client();
    assert_eq!(client.send("GET", "/api/status", &[], b"").status, 200);
    // Half of a second head, then nothing: a slow-loris on a kept-alive connection.
    let s = client.stream();
    s.write_all(b"GET /api/status HTTP/1.1\r\nhost: lan")
        .unwrap();
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    let mut rest = Vec::new();
    let end = s.read_to_end(&mut rest);
    let after = started.elapsed();
    assert!(
        matches!(end, Ok(0))
            || matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "still open after {after:?}: {end:?}"
    );
    assert!(after < Duration::from_secs(3), "cut off after {after:?}");
}
