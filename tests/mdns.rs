//! End-to-end tests of mDNS: a box runs in one network namespace, `lanvan discover` in
//! another, joined by a veth pair the test creates (and deletes, even when it fails).
//! Nothing is sent outside the two namespaces. Needs root and `ip` (iproute2).

mod common;

use common::{bin, temp_dir, wait_for, Client, Lanvan};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BOX_IP: &str = "10.77.0.1";
const PEER_IP: &str = "10.77.0.2";

/// Two network namespaces joined by a veth pair: `a` (the box's side, 10.77.0.1/24 once
/// `address_box_side` is called) and `b` (10.77.0.2/24). Deleted when dropped, which also
/// deletes the veth pair and ends every socket in them.
struct NetPair {
    a: String,
    b: String,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip")
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetPair {
    /// The pair, or None (after saying so loudly) when this machine cannot make network
    /// namespaces. In CI that is a failure, never a skip.
    fn new(tag: &str) -> Option<NetPair> {
        remove_stale_namespaces();
        let pid = std::process::id();
        let pair = NetPair {
            a: format!("lvtest-{pid}-{tag}-a"),
            b: format!("lvtest-{pid}-{tag}-b"),
        };
        first_namespace(&pair.a)?;
        ip_ok(&["netns", "add", &pair.b]);
        let (va, vb) = (format!("lv{pid}{tag}a"), format!("lv{pid}{tag}b"));
        let (va, vb) = (&va[..va.len().min(15)], &vb[..vb.len().min(15)]);
        ip_ok(&[
            "link", "add", va, "netns", &pair.a, "type", "veth", "peer", "name", vb, "netns",
            &pair.b,
        ]);
        for (ns, dev) in [(&pair.a, va), (&pair.b, vb)] {
            ip_ok(&["-n", ns, "link", "set", "lo", "up"]);
            ip_ok(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip_ok(&[
            "-n",
            &pair.b,
            "addr",
            "add",
            &format!("{PEER_IP}/24"),
            "dev",
            vb,
        ]);
        Some(pair)
    }

    /// Gives the box's side its address (the interface "comes up" for the box).
    fn address_box_side(&self) {
        let dev = self.dev(&self.a);
        ip_ok(&[
            "-n",
            &self.a,
            "addr",
            "add",
            &format!("{BOX_IP}/24"),
            "dev",
            &dev,
        ]);
    }

    /// The veth end inside namespace `ns`.
    fn dev(&self, ns: &str) -> String {
        let out = ip(&["-n", ns, "-o", "link", "show", "type", "veth"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let name = text.split(':').nth(1).unwrap().trim();
        name.split('@').next().unwrap().to_string()
    }

    /// `lanvan ARGS` run inside namespace `ns`.
    fn lanvan(&self, ns: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, bin()]).args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("LANVAN_") {
                cmd.env_remove(k);
            }
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// A box in namespace `a` on `0.0.0.0:port` with these extra settings.
    fn start_box(&self, tag: &str, port: u16, settings: &[&str]) -> Lanvan {
        let mut all = vec![format!("listen=0.0.0.0:{port}")];
        all.extend(settings.iter().map(|s| s.to_string()));
        let wrapper = ["ip", "netns", "exec", &self.a].map(String::from).to_vec();
        Lanvan::spawn(temp_dir(tag, false), all, Some(wrapper))
    }
}

/// Makes network namespace `name`, or returns None (after saying so loudly) when this
/// machine cannot make them. In CI that is a failure, never a skip.
fn first_namespace(name: &str) -> Option<()> {
    match Command::new("ip").args(["netns", "add", name]).output() {
        Ok(out) if out.status.success() => Some(()),
        other => {
            let why = match other {
                Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(e) => format!("`ip` not found ({e}); install iproute2"),
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "mDNS tests need network namespaces (root and iproute2): {why}"
            );
            eprintln!("\n!!!!! SKIPPED mDNS namespace test: cannot create a network namespace: {why}!!!!! run as root with iproute2 installed to test mDNS\n");
            None
        }
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

/// Namespaces left by an earlier test run that was killed before it could clean up.
fn remove_stale_namespaces() {
    let out = ip(&["netns", "list"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("lvtest-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Waits for a log line containing `text`.
fn wait_log(lv: &Lanvan, text: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lv.log.recv_timeout(left) {
            Ok(line) if line.contains(text) => return line,
            Ok(_) => {}
            Err(_) => panic!("the box never logged `{text}`"),
        }
    }
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Runs `f` on a thread that has entered network namespace `ns` (as a phone on that
/// side of the LAN would be).
fn in_namespace<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A `discover --watch --json` whose lines arrive on a channel. Killed when dropped.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Watch {
    fn start(mut cmd: Command) -> Watch {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(serde_json::from_str(&line).unwrap());
            }
        });
        Watch { child, lines }
    }

    fn next(&self, secs: u64) -> serde_json::Value {
        self.lines
            .recv_timeout(Duration::from_secs(secs))
            .expect("discover --watch printed nothing in time")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_box_in_one_namespace_is_found_by_name_from_the_other() {
    let Some(net) = NetPair::new("find") else {
        return;
    };
    // The box starts before its interface has an address, as on a Pi whose Wi-Fi
    // connects after boot: it must pick the address up when it comes.
    let mut lv = net.start_box(
        "mdns-find",
        8080,
        &["mdns.interface_check_secs=1", "mdns.name=Attic box"],
    );
    wait_log(&lv, "mDNS: advertising \"Attic box\"", 5);
    let none = net.lanvan(&net.b, &["discover"]).output().unwrap();
    assert_eq!(none.status.code(), Some(1), "{none:?}");
    assert!(String::from_utf8_lossy(&none.stderr).contains("no LANVan box answered"));

    net.address_box_side();
    wait_log(&lv, &format!("lanvan.local now answers at {BOX_IP}"), 10);
    wait_log(&lv, "mDNS: announced Attic box._lanvan._tcp.local.", 10);

    // Listed within the one second `discover` listens, with what its TXT record says.
    let t = Instant::now();
    let out = net
        .lanvan(&net.b, &["discover", "--json", "--timeout-ms", "1000"])
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(out.status.success(), "{out:?}");
    // It listens for 1 s; the rest is starting a process on a busy machine.
    assert!(took < Duration::from_millis(2000), "discover took {took:?}");
    let found = json_lines(&out);
    assert_eq!(found.len(), 1, "{found:?}");
    let b = &found[0];
    assert_eq!(b["event"], "found");
    assert_eq!(b["name"], "Attic box");
    assert_eq!(b["host"], "lanvan.local");
    assert_eq!(b["port"], 8080);
    assert_eq!(b["url"], "http://lanvan.local:8080/");
    assert_eq!(b["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(b["addresses"], json!([BOX_IP]));
    let id = std::fs::read_to_string(lv.data.join(".lanvan/box-id")).unwrap();
    assert_eq!(b["id"], id.trim());

    // Run again at once: answers to a one-shot query are not rate-limited away.
    for _ in 0..3 {
        let again = net.lanvan(&net.b, &["discover"]).output().unwrap();
        let text = String::from_utf8_lossy(&again.stdout);
        assert!(again.status.success(), "{again:?}");
        assert!(text.contains("Attic box") && text.contains("http://lanvan.local:8080/"));
        assert!(text.contains(BOX_IP), "{text}");
    }

    // The host name resolves, and the box answers HTTP at that address.
    let out = net
        .lanvan(&net.b, &["discover", "--host", "lanvan.local", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let resolved = &json_lines(&out)[0];
    assert_eq!(resolved["addresses"], json!([BOX_IP]));
    let status = in_namespace(&net.b, || {
        Client::connect(format!("{BOX_IP}:8080").parse().unwrap()).send(
            "GET",
            "/api/status",
            &[],
            b"",
        )
    });
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["version"], env!("CARGO_PKG_VERSION"));

    // A watcher sees the box, then sees it go as soon as it stops (its goodbye packets),
    // not when its records expire.
    let watch = Watch::start(net.lanvan(&net.b, &["discover", "--watch", "--json"]));
    let seen = watch.next(5);
    assert_eq!(seen["event"], "found");
    assert_eq!(seen["name"], "Attic box");
    // Listening on 0.0.0.0, the box advertises no IPv6 address (nothing listens there).
    assert_eq!(seen["addresses"], json!([BOX_IP]));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lv.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let gone = watch.next(3);
    assert_eq!(gone["event"], "gone");
    assert_eq!(gone["name"], "Attic box");
    wait_log(&lv, "mDNS: said goodbye", 5);
    assert!(wait_for(5, || matches!(lv.child.try_wait(), Ok(Some(_)))));
    assert!(lv.child.wait().unwrap().success());
}

#[test]
fn mdns_can_be_turned_off_and_the_host_name_chosen() {
    let Some(net) = NetPair::new("name") else {
        return;
    };
    net.address_box_side();
    let quiet = net.start_box("mdns-off", 8080, &["mdns.enabled=false"]);
    wait_log(&quiet, "mDNS is off (mdns.enabled = false)", 5);
    // Listening on one address: that address is the one advertised.
    let attic = net.start_box(
        "mdns-attic",
        8081,
        &[
            &format!("listen={BOX_IP}:8081"),
            "mdns.hostname=attic",
            "mdns.interface_check_secs=1",
        ],
    );
    wait_log(&attic, "mDNS: announced", 10);

    let out = net
        .lanvan(&net.b, &["discover", "--json"])
        .output()
        .unwrap();
    let found = json_lines(&out);
    assert_eq!(
        found.len(),
        1,
        "only the box with mDNS on answers: {found:?}"
    );
    assert_eq!(found[0]["host"], "attic.local");
    assert_eq!(found[0]["port"], 8081);
    assert_eq!(found[0]["url"], "http://attic.local:8081/");

    let attic_ip = net
        .lanvan(&net.b, &["discover", "--host", "attic"])
        .output()
        .unwrap();
    assert!(attic_ip.status.success(), "{attic_ip:?}");
    assert_eq!(
        String::from_utf8_lossy(&attic_ip.stdout).trim(),
        format!("attic.local {BOX_IP}")
    );
    let nobody = net
        .lanvan(&net.b, &["discover", "--host", "lanvan.local"])
        .output()
        .unwrap();
    assert_eq!(nobody.status.code(), Some(1), "{nobody:?}");
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("lanvan.local did not answer"));

    // The interface loses its address (Wi-Fi gone): the box notices and stops answering.
    let dev = net.dev(&net.a);
    ip_ok(&[
        "-n",
        &net.a,
        "addr",
        "del",
        &format!("{BOX_IP}/24"),
        "dev",
        &dev,
    ]);
    wait_log(
        &attic,
        &format!("attic.local no longer answers at {BOX_IP}"),
        10,
    );
    let gone = net.lanvan(&net.b, &["discover"]).output().unwrap();
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
}

#[test]
fn a_box_on_loopback_stays_silent() {
    let lv = Lanvan::start("mdns-loopback", &[]);
    wait_log(&lv, "mDNS is off: the box listens on loopback only", 5);
    assert_eq!(
        lv.status()["threads"],
        3,
        "no mDNS thread for a loopback box"
    );
}

#[test]
fn a_dual_stack_box_is_advertised_on_ipv6_too() {
    let Some(net) = NetPair::new("six") else {
        return;
    };
    net.address_box_side();
    // The kernel gives the veth its link-local address once duplicate detection is done.
    let dev = net.dev(&net.a);
    let ready = wait_for(10, || {
        let out = ip(&[
            "-n", &net.a, "-6", "addr", "show", "dev", &dev, "scope", "link",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains("fe80::") && !text.contains("tentative")
    });
    assert!(ready, "no IPv6 link-local address on {dev}");
    let lv = net.start_box(
        "mdns-six",
        8080,
        &["listen=[::]:8080", "mdns.interface_check_secs=1"],
    );
    wait_log(&lv, "mDNS: announced", 10);
    // The IPv6 link-local address, scoped to the watcher's interface, so a browser on that
    // side can use it.
    let watch = Watch::start(net.lanvan(&net.b, &["discover", "--watch", "--json"]));
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        last = watch.next(8);
        let addrs: Vec<&str> = last["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        if addrs.contains(&BOX_IP) && addrs.iter().any(|a| a.starts_with("fe80::")) {
            return;
        }
    }
    panic!("no IPv4 and IPv6 address advertised together: {last}");
}

/// A small LAN: `hosts` namespaces, each with one veth into a bridge that lives in a
/// namespace of its own; host `i` has 10.77.0.{i+1}/24. Deleted when dropped.
struct Lan {
    bridge: String,
    hosts: Vec<String>,
}

impl Lan {
    fn new(tag: &str, hosts: usize) -> Option<Lan> {
        remove_stale_namespaces();
        let pid = std::process::id();
        let mut lan = Lan {
            bridge: format!("lvtest-{pid}-{tag}-br"),
            hosts: Vec::new(),
        };
        first_namespace(&lan.bridge)?;
        ip_ok(&["-n", &lan.bridge, "link", "add", "br0", "type", "bridge"]);
        ip_ok(&["-n", &lan.bridge, "link", "set", "br0", "up"]);
        for i in 0..hosts {
            let ns = format!("lvtest-{pid}-{tag}-{i}");
            ip_ok(&["netns", "add", &ns]);
            lan.hosts.push(ns.clone());
            let (dev, port) = (format!("lv{pid}{tag}{i}"), format!("lp{pid}{tag}{i}"));
            ip_ok(&[
                "link",
                "add",
                &dev,
                "netns",
                &ns,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &lan.bridge,
            ]);
            ip_ok(&["-n", &lan.bridge, "link", "set", &port, "master", "br0"]);
            ip_ok(&["-n", &lan.bridge, "link", "set", &port, "up"]);
            ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
            ip_ok(&["-n", &ns, "link", "set", &dev, "up"]);
            let addr = format!("10.77.0.{}/24", i + 1);
            ip_ok(&["-n", &ns, "addr", "add", &addr, "dev", &dev]);
        }
        Some(lan)
    }

    fn start_box(&self, host: usize, tag: &str, settings: &[&str]) -> Lanvan {
        let mut all = vec!["listen=0.0.0.0:8080".to_string()];
        all.extend(settings.iter().map(|s| s.to_string()));
        let wrapper = ["ip", "netns", "exec", &self.hosts[host]]
            .map(String::from)
            .to_vec();
        Lanvan::spawn(temp_dir(tag, false), all, Some(wrapper))
    }

    fn lanvan(&self, host: usize, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[host], bin()])
            .args(args)
            .stdin(Stdio::null());
        cmd.output().unwrap()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.bridge]) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

#[test]
fn two_boxes_with_one_name_on_one_lan_are_told_apart() {
    // Two Pis set up alike, and a phone.
    let Some(lan) = Lan::new("twin", 3) else {
        return;
    };
    let first = lan.start_box(0, "mdns-twin1", &["mdns.name=Shed"]);
    wait_log(&first, "mDNS: announced Shed._lanvan._tcp.local.", 10);
    let second = lan.start_box(1, "mdns-twin2", &["mdns.name=Shed"]);
    // The second box finds both names taken while probing, takes the next ones, says so.
    let wanted = [
        "this box is now `Shed (2)._lanvan._tcp.local`",
        "this box is now `lanvan-2.local`",
        "mDNS: announced Shed (2)._lanvan._tcp.local.",
    ];
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wanted
        .iter()
        .all(|w| seen.iter().any(|l: &String| l.contains(w)))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match second.log.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("the second box did not rename itself: {seen:#?}"),
        }
    }

    let out = lan.lanvan(2, &["discover", "--json"]);
    let mut found: Vec<(String, String, Value)> = json_lines(&out)
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["url"].as_str().unwrap().to_string(),
                b["addresses"].clone(),
            )
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        found,
        vec![
            (
                "Shed".into(),
                "http://lanvan.local:8080/".into(),
                json!(["10.77.0.1"])
            ),
            (
                "Shed (2)".into(),
                "http://lanvan-2.local:8080/".into(),
                json!(["10.77.0.2"])
            ),
        ]
    );
    // Each name leads to its own box.
    for (host, ip) in [
        ("lanvan.local", "10.77.0.1"),
        ("lanvan-2.local", "10.77.0.2"),
    ] {
        let out = lan.lanvan(2, &["discover", "--host", host]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{host} {ip}")
        );
    }
}
