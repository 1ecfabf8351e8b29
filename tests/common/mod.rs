//! Test support: starts the real `lanvan` binary on an ephemeral loopback port with its
//! own data folder, and speaks HTTP/1.1 to it over plain sockets the way a client would.
#![allow(dead_code)]

pub mod relay;
pub mod term;

use sha2::{Digest as _, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running box. Killed when dropped; its data folder is removed unless `keep` is set.
pub struct Lanvan {
    pub child: Child,
    pub addr: SocketAddr,
    pub data: PathBuf,
    pub settings: Vec<String>,
    /// Lines the box logs on stderr, as they arrive.
    pub log: mpsc::Receiver<String>,
    keep: bool,
}

/// The address from the box's `listening on` log line, read from `log` within `secs`;
/// None when the box logs no such line in time (it failed to start).
pub fn listening_addr(log: &mpsc::Receiver<String>, secs: u64) -> Option<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let line = log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()?;
        if let Some(a) = line.split("listening on ").nth(1) {
            return Some(a.trim().parse().expect("an address after `listening on`"));
        }
    }
}

/// Runs a Node script from `tests/web/` against the box and asserts it exits 0 having
/// printed `ok_line`; its output is shown when it fails. Node 20 needs a flag for its
/// WebSocket, Node 22 has one, and older Nodes use Debian's `ws` (scripts/need-node.sh).
pub fn run_node_script(script: &str, args: &[String], ok_line: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/web")
        .join(script);
    let flag = Command::new("node")
        .args(["--experimental-websocket", "-e", "0"])
        .status()
        .is_ok_and(|s| s.success());
    let mut cmd = Command::new("node");
    if flag {
        cmd.arg("--experimental-websocket");
    }
    let node_path = match std::env::var("NODE_PATH") {
        Ok(p) if !p.is_empty() => format!("{p}:/usr/share/nodejs"),
        _ => "/usr/share/nodejs".to_string(),
    };
    let out = cmd
        .env("NODE_PATH", node_path)
        .arg("--no-warnings")
        .arg(&path)
        .args(args)
        .output()
        .expect("node is installed (scripts/need-node.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(ok_line),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// A fresh, empty folder for one test (on tmpfs when `shm`).
pub fn temp_dir(tag: &str, shm: bool) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = if shm && Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("lanvan-test-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lanvan")
}

/// Starts `cmd` with its stderr lines sent to the returned channel as they arrive
/// (and echoed when `LANVAN_TEST_LOG` is set).
pub fn spawn_logged(cmd: &mut Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lanvan");
    let (tx, log) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if std::env::var("LANVAN_TEST_LOG").is_ok() {
                eprintln!("[box] {line}");
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, log)
}

impl Lanvan {
    /// Starts a box with a new data folder and `-s key=value` settings.
    pub fn start(tag: &str, settings: &[&str]) -> Lanvan {
        Lanvan::start_in(temp_dir(tag, false), settings)
    }

    pub fn start_in(data: PathBuf, settings: &[&str]) -> Lanvan {
        let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        Lanvan::spawn(data, settings, None)
    }

    /// Starts the box through `wrapper` (e.g. `unshare -rm sh -c '...; exec "$@"'`).
    pub fn spawn(data: PathBuf, settings: Vec<String>, wrapper: Option<Vec<String>>) -> Lanvan {
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data.display().to_string(),
            // An ephemeral STUN port, so boxes of tests running side by side do not contend
            // for 3478; a test's own settings come after and may name another.
            "-s".into(),
            "p2p.stun_port=0".into(),
        ];
        for s in &settings {
            args.push("-s".into());
            args.push(s.clone());
        }
        let mut cmd = match &wrapper {
            Some(w) => {
                let mut c = Command::new(&w[0]);
                c.args(&w[1..]).arg(bin()).args(&args);
                c
            }
            None => {
                let mut c = Command::new(bin());
                c.args(&args);
                c
            }
        };
        let (mut child, log) = spawn_logged(cmd.env_remove("NOTIFY_SOCKET"));
        let Some(addr) = listening_addr(&log, 20) else {
            panic!("lanvan did not start (status {:?})", child.try_wait())
        };
        Lanvan {
            child,
            addr,
            data,
            settings,
            log,
            keep: false,
        }
    }

    /// SIGKILLs the box and starts a new one on the same data folder.
    pub fn kill_and_restart(mut self) -> Lanvan {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.keep = true;
        let (data, settings) = (self.data.clone(), self.settings.clone());
        drop(self);
        Lanvan::spawn(data, settings, None)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.client().send("GET", path, &[], b"")
    }

    pub fn json(&self, method: &str, path: &str, body: &serde_json::Value) -> Resp {
        let body = serde_json::to_vec(body).unwrap();
        self.client()
            .send(method, path, &[("content-type", "application/json")], &body)
    }

    /// Uploads `data` as `name` in the chunks the box asks for; returns the finish reply.
    pub fn upload(&self, name: &str, data: &[u8]) -> Resp {
        let created = self.json(
            "POST",
            "/api/uploads",
            &serde_json::json!({"name": name, "size": data.len(), "sha256": sha_hex(data)}),
        );
        assert!(
            created.status == 201 || created.status == 200,
            "{created:?}"
        );
        let c = created.json();
        if c["complete"] == true {
            return created;
        }
        let id = c["id"].as_str().unwrap().to_string();
        let chunk = c["chunk_size"].as_u64().unwrap() as usize;
        let mut client = self.client();
        for (i, part) in data.chunks(chunk.max(1)).enumerate() {
            let r = client.put_chunk(&id, i as u32, part);
            assert_eq!(r.status, 200, "{r:?}");
        }
        client.send("POST", &format!("/api/uploads/{id}/finish"), &[], b"")
    }

    pub fn status(&self) -> serde_json::Value {
        self.get("/api/status").json()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

impl Drop for Lanvan {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}

/// One HTTP response.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}",
            self.status,
            String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
        )
    }
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Client {
            reader: BufReader::new(s),
        }
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: lanvan\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let s = self.reader.get_mut();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        self.read_response(method == "HEAD")
    }

    pub fn put_chunk(&mut self, id: &str, index: u32, data: &[u8]) -> Resp {
        let hash = sha_hex(data);
        self.send(
            "PUT",
            &format!("/api/uploads/{id}/chunks/{index}"),
            &[("x-chunk-sha256", &hash)],
            data,
        )
    }

    pub fn read_response(&mut self, head_only: bool) -> Resp {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("bad status line {line:?}"))
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            self.reader.read_line(&mut l).unwrap();
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; if head_only { 0 } else { len }];
        self.reader.read_exact(&mut body).unwrap();
        Resp {
            status,
            headers,
            body,
        }
    }
}

pub fn sha_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic pseudo-random bytes (xorshift), so big test files need no disk.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill_pseudo_random(seed, &mut out);
    out
}

pub fn fill_pseudo_random(seed: u64, out: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Waits up to `secs` for the process to exit.
pub fn wait_exit(child: &mut Child, secs: u64) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running after {secs} s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `secs` for `cond`.
pub fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Downloads `path` without holding it in memory; returns status, length and SHA-256.
pub fn download_sha(addr: SocketAddr, path: &str) -> (u16, u64, String) {
    let mut c = Client::connect(addr);
    let head = format!("GET {path} HTTP/1.1\r\nhost: lanvan\r\nconnection: close\r\n\r\n");
    c.stream().write_all(head.as_bytes()).unwrap();
    let resp = c.read_response(true);
    let len: u64 = resp.header("content-length").unwrap().parse().unwrap();
    let mut hasher = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = c.reader.read(&mut buf[..want]).unwrap();
        assert!(n > 0, "download ended early");
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    (resp.status, len, hex(&hasher.finalize()))
}
