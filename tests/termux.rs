//! End-to-end tests of the box in a simulated Termux: Termux's environment variables, a
//! home folder, and a fake `termux-battery-status` on PATH whose answer the test changes
//! while the real binary runs. Checks what a phone user would notice: the advice in the
//! log, chunk sizes handed to clients, and P2P refused (with the reason) on low battery.

mod common;

use common::relay::{self, Ev};
use common::{bin, spawn_logged, temp_dir, Client};
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A box started as Termux would start it. Killed when dropped.
struct Phone {
    child: Child,
    log: mpsc::Receiver<String>,
    addr: SocketAddr,
    home: PathBuf,
    battery: PathBuf,
    /// Lines logged up to and including `listening on`.
    early: Vec<String>,
}

/// `percent`/`plugged` as termux-battery-status prints them.
fn battery_json(percent: u8, plugged: &str) -> String {
    let status = if plugged == "UNPLUGGED" {
        "DISCHARGING"
    } else {
        "CHARGING"
    };
    json!({"present": true, "technology": "Li-ion", "health": "GOOD", "plugged": plugged,
           "status": status, "temperature": 29.5, "voltage": 3853, "current": -312000,
           "percentage": percent, "level": percent, "scale": 100})
    .to_string()
}

impl Phone {
    /// `script` is the body of the fake `termux-battery-status` (None: there is none).
    fn start(tag: &str, script: Option<&str>) -> Phone {
        let home = temp_dir(tag, false);
        let bin_dir = home.join("usr/bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        let battery = home.join("battery.json");
        std::fs::write(&battery, battery_json(58, "UNPLUGGED")).unwrap();
        if let Some(body) = script {
            let path = bin_dir.join("termux-battery-status");
            let body = body.replace("BATTERY", battery.to_str().unwrap());
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(["-s", "termux.battery_check_secs=1"])
            .env_clear()
            .env("HOME", &home)
            .env("PREFIX", home.join("usr"))
            .env("TERMUX_VERSION", "0.118.1")
            .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
            .current_dir(&home)
            .stdin(Stdio::null());
        let (child, log) = spawn_logged(&mut cmd);
        let mut phone = Phone {
            child,
            log,
            addr: "0.0.0.0:0".parse().unwrap(),
            home,
            battery,
            early: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = phone.log.recv_timeout(left).expect("the box did not start");
            phone.early.push(line.clone());
            if let Some(addr) = line.split("listening on ").nth(1) {
                phone.addr = addr.trim().parse().unwrap();
                return phone;
            }
        }
    }

    fn wait_log(&self, text: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("the box never logged `{text}`"),
            }
        }
    }

    fn set_battery(&self, percent: u8, plugged: &str) {
        // Written beside and renamed, so the script never reads half a file.
        let tmp = self.battery.with_extension("tmp");
        std::fs::write(&tmp, battery_json(percent, plugged)).unwrap();
        std::fs::rename(&tmp, &self.battery).unwrap();
    }

    /// The chunk size the box hands a new upload.
    fn chunk_size(&self, name: &str) -> u64 {
        let body = json!({"name": name, "size": 50_000_000}).to_string();
        let resp = Client::connect(self.addr).send(
            "POST",
            "/api/uploads",
            &[("content-type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(resp.status, 201, "{resp:?}");
        resp.json()["chunk_size"].as_u64().unwrap()
    }

    fn ws(&self, id: &str) -> Ws {
        Ws(relay::open(self.addr, id))
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// A device's socket, read through the shared test reader.
struct Ws(relay::Ws);

impl Ws {
    fn send(&mut self, v: Value) {
        relay::send_json(&mut self.0, v);
    }

    /// The next message of type `ty` (skipping others) within 5 s.
    fn until(&mut self, ty: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match relay::read(&mut self.0, deadline) {
                Some(Ev::Json(v)) if v["type"] == ty => return v,
                Some(Ev::Gone) => panic!("socket ended waiting for `{ty}`"),
                None => panic!("no `{ty}` within 5 s"),
                Some(_) => {}
            }
        }
    }
}

fn in_home(home: &Path, rel: &str) -> PathBuf {
    home.join(rel)
}

#[test]
fn the_box_follows_the_phones_battery() {
    let phone = Phone::start("termux-battery", Some("exec cat BATTERY"));
    assert!(
        phone.early[0].contains("board: termux (Termux 0.118.1 (TERMUX_VERSION))"),
        "{:?}",
        phone.early
    );
    phone.wait_log("run `termux-wake-lock`", 5);
    phone.wait_log("run `termux-setup-storage`", 5);
    assert!(in_home(&phone.home, "lanvan-data/files").is_dir());
    phone.wait_log("battery 58% (not charging): full speed", 5);
    assert_eq!(phone.chunk_size("full.bin"), 1 << 20);

    let mut anna = phone.ws("anna");
    anna.send(json!({"type": "enable_p2p"}));
    anna.until("p2p_enabled");

    // Below 15%: smaller chunks for new uploads; P2P stays on.
    phone.set_battery(12, "UNPLUGGED");
    phone.wait_log("battery 12% (not charging), below 15%: smaller chunks", 5);
    assert_eq!(phone.chunk_size("low.bin"), 256 << 10);

    // Below 10% and not charging: P2P off, and everyone who had it is told why.
    phone.set_battery(8, "UNPLUGGED");
    phone.wait_log("P2P is off", 5);
    let off = anna.until("p2p_disabled");
    assert_eq!(off["reason"], "box_power");
    assert!(off["message"].as_str().unwrap().contains("8%"), "{off}");
    let mut ben = phone.ws("ben");
    ben.send(json!({"type": "enable_p2p"}));
    let refused = ben.until("error");
    assert_eq!(refused["code"], "p2p_unavailable");
    let why = refused["message"].as_str().unwrap();
    assert!(why.contains("8%") && why.contains("not charging"), "{why}");

    // Plugged in: P2P may be turned on again, chunks stay small until 15%.
    phone.set_battery(8, "PLUGGED_USB");
    phone.wait_log("battery 8% (charging), below 15%", 5);
    ben.send(json!({"type": "enable_p2p"}));
    ben.until("p2p_enabled");
    assert_eq!(phone.chunk_size("charging.bin"), 256 << 10);

    phone.set_battery(40, "PLUGGED_USB");
    phone.wait_log("battery 40% (charging): full speed", 5);
    assert_eq!(phone.chunk_size("again.bin"), 1 << 20);
}

#[test]
fn shared_storage_is_used_after_termux_setup_storage() {
    let home = temp_dir("termux-shared", false);
    std::fs::create_dir_all(home.join("storage/shared")).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("HOME", &home)
        .env("PREFIX", "/data/data/com.termux/files/usr")
        .env("PATH", "/usr/bin:/bin")
        .current_dir(&home);
    let (mut child, log) = spawn_logged(&mut cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("listening on ")) {
        let left = deadline.saturating_duration_since(Instant::now());
        lines.push(log.recv_timeout(left).expect("the box did not start"));
    }
    let text = lines.join("\n");
    assert!(text.contains("board: termux (Termux (PREFIX="), "{text}");
    assert!(
        text.contains(&format!("{}/storage/shared/LANVan", home.display())),
        "{text}"
    );
    assert!(!text.contains("termux-setup-storage"), "{text}");
    assert!(home.join("storage/shared/LANVan/files").is_dir());
    // No termux-battery-status on PATH: said once, and the box serves on.
    let warn = loop {
        let line = log
            .recv_timeout(Duration::from_secs(5))
            .expect("no warning");
        if line.contains("termux-battery-status") {
            break line;
        }
    };
    assert!(warn.contains("cannot run termux-battery-status"), "{warn}");
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(home).ok();
}

#[test]
fn a_battery_command_that_hangs_never_stalls_the_box() {
    // Termux's command waits forever when the Termux:API app is missing.
    let phone = Phone::start("termux-hang", Some("exec sleep 600"));
    let t = Instant::now();
    let status = Client::connect(phone.addr).send("GET", "/api/status", &[], b"");
    assert_eq!(status.status, 200);
    assert!(t.elapsed() < Duration::from_secs(2));
    phone.wait_log("termux-battery-status gave no answer within 2 s", 10);
    // It was killed, and the box still answers.
    let status = Client::connect(phone.addr).send("GET", "/api/status", &[], b"");
    assert_eq!(status.status, 200);
}

#[test]
fn the_termux_service_script_takes_a_wake_lock_and_runs_the_box() {
    let home = temp_dir("termux-service", false);
    let bin_dir = home.join("usr/bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(bin(), bin_dir.join("lanvan")).unwrap();
    let marker = home.join("wake-locked");
    let lock = bin_dir.join("termux-wake-lock");
    std::fs::write(&lock, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = home.join(".config/lanvan/lanvan.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n[mdns]\nname = \"Phone box\"\n",
    )
    .unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("termux/service/lanvan/run");
    let mut cmd = Command::new("sh");
    cmd.arg(&script)
        .env_clear()
        .env("HOME", &home)
        .env("PREFIX", home.join("usr"))
        .env("TERMUX_VERSION", "0.118.1")
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
        .current_dir(&home);
    // The script sends the box's log to stdout for svlogger; read it from there.
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, log) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr: SocketAddr =
        common::listening_addr(&log, 20).expect("the service did not start the box");
    assert!(marker.exists(), "termux-wake-lock was not run");
    // The box took the settings file and the Termux data folder.
    let status = Client::connect(addr).send("GET", "/api/status", &[], b"");
    assert_eq!(status.status, 200);
    assert!(home.join("lanvan-data/files").is_dir());
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(home).ok();
}

/// A chunk PUT whose body is sent only in part: it holds one chunk slot of the box.
struct HalfSent {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl HalfSent {
    fn start(addr: SocketAddr, id: &str, index: u32, data: &[u8]) -> HalfSent {
        use std::io::Write as _;
        let mut stream = TcpStream::connect(addr).unwrap();
        let head = format!(
            "PUT /api/uploads/{id}/chunks/{index} HTTP/1.1\r\nhost: lanvan\r\ncontent-length: {}\r\nx-chunk-sha256: {}\r\n\r\n",
            data.len(),
            common::sha_hex(data)
        );
        stream.write_all(head.as_bytes()).unwrap();
        let half = data.len() / 2;
        stream.write_all(&data[..half]).unwrap();
        HalfSent {
            stream,
            rest: data[half..].to_vec(),
        }
    }

    /// Sends the rest and returns the status line.
    fn finish(mut self) -> String {
        use std::io::{BufRead as _, Write as _};
        self.stream.write_all(&self.rest).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(self.stream)
            .read_line(&mut line)
            .unwrap();
        line
    }
}

/// Whether a third chunk is stored while two others are half-sent, within `wait`.
fn third_chunk_passes(phone: &Phone, name: &str, wait: Duration) -> (bool, u64) {
    let body = json!({"name": name, "size": 50_000_000}).to_string();
    let created = Client::connect(phone.addr).send(
        "POST",
        "/api/uploads",
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    let id = created.json()["id"].as_str().unwrap().to_string();
    let chunk = created.json()["chunk_size"].as_u64().unwrap();
    let data = |i: u64| common::pseudo_random(i, chunk as usize);
    let one = HalfSent::start(phone.addr, &id, 0, &data(0));
    let two = HalfSent::start(phone.addr, &id, 1, &data(1));
    // Time for the box to read both heads and give each a slot, even on a busy machine.
    std::thread::sleep(Duration::from_millis(1000));
    let (tx, rx) = mpsc::channel();
    let (addr, id3, third) = (phone.addr, id.clone(), data(2));
    std::thread::spawn(move || {
        let _ = tx.send(Client::connect(addr).put_chunk(&id3, 2, &third).status);
    });
    let passed = rx.recv_timeout(wait).is_ok();
    assert!(one.finish().contains(" 200 "));
    if !passed {
        // A slot came free: now it goes through.
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(200));
    }
    assert!(two.finish().contains(" 200 "));
    (passed, chunk)
}

#[test]
fn low_battery_holds_fewer_chunks_in_memory() {
    let phone = Phone::start("termux-inflight", Some("exec cat BATTERY"));
    phone.wait_log("battery 58% (not charging): full speed", 5);
    // Full budgets (termux board: 4 chunks in flight): a third chunk is not held up.
    let (passed, chunk) = third_chunk_passes(&phone, "full.bin", Duration::from_secs(3));
    assert!(passed, "a third chunk waited at full battery");
    assert_eq!(chunk, 1 << 20);

    phone.set_battery(12, "UNPLUGGED");
    phone.wait_log("below 15%", 5);
    // Two chunks in flight at most: the third waits until one of them is done.
    let (passed, chunk) = third_chunk_passes(&phone, "low.bin", Duration::from_secs(1));
    assert!(!passed, "a third chunk went through on low battery");
    assert_eq!(chunk, 256 << 10);
}
