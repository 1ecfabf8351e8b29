//! End-to-end tests of board profiles through the real binary: `--board` and detection
//! choose the budgets `lanvan config` prints and the box runs with, the choice is logged,
//! and the environment, the config file and flags still win over the profile.

mod common;

use common::{bin, spawn_logged, temp_dir};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `lanvan ARGS` with none of the test environment's LANVAN_* or Termux variables.
fn lanvan(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .env_remove("NOTIFY_SOCKET");
    for (k, _) in std::env::vars() {
        if k.starts_with("LANVAN_") || k.starts_with("TERMUX_") || k == "PREFIX" {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn config_of(out: &Output) -> toml::Table {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).parse().unwrap()
}

fn int(t: &toml::Table, section: &str, key: &str) -> i64 {
    t[section][key].as_integer().unwrap()
}

#[test]
fn config_prints_the_chosen_boards_budgets() {
    let out = lanvan(&["config", "--board", "pi-zero-2w"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("# board: pi-zero-2w (chosen with --board)\n"),
        "{text}"
    );
    let c = config_of(&out);
    assert_eq!(int(&c, "relay", "memory"), 2 << 20);
    assert_eq!(int(&c, "store", "chunk_size"), 512 << 10);
    assert_eq!(int(&c, "store", "max_chunks_in_flight"), 4);
    assert_eq!(int(&c, "http", "max_connections"), 64);
    assert_eq!(c["data_dir"].as_str(), Some("/var/lib/lanvan"));
    assert_eq!(int(&c, "p2p", "max_sessions_per_device"), 4);
    assert_eq!(c["p2p"]["mode"].as_str(), Some("hybrid"));

    let pi5 = config_of(&lanvan(&["config", "--board", "pi5"]).output().unwrap());
    assert_eq!(int(&pi5, "relay", "memory"), 32 << 20);
    assert_eq!(int(&pi5, "store", "chunk_size"), 2 << 20);
    // LANVAN_BOARD does what --board does.
    let by_env = lanvan(&["config"])
        .env("LANVAN_BOARD", "pi3")
        .output()
        .unwrap();
    assert_eq!(int(&config_of(&by_env), "relay", "memory"), 4 << 20);
}

#[test]
fn env_file_and_flags_override_the_board() {
    let dir = temp_dir("board-layers", false);
    let file = dir.join("lanvan.toml");
    std::fs::write(&file, "[ws]\nsend_queue = 33\n").unwrap();
    let out = lanvan(&[
        "config",
        "--board",
        "pi-zero-2w",
        "--config",
        file.to_str().unwrap(),
        "--max-connections",
        "50",
    ])
    .env("LANVAN_WS_SEND_QUEUE", "22")
    .env("LANVAN_WS_MAX_DEVICES", "11")
    .env("LANVAN_HTTP_MAX_CONNECTIONS", "40")
    .output()
    .unwrap();
    let c = config_of(&out);
    assert_eq!(int(&c, "ws", "max_devices"), 11, "env beats the board (24)");
    assert_eq!(int(&c, "ws", "send_queue"), 33, "the file beats env");
    assert_eq!(int(&c, "http", "max_connections"), 50, "flags beat env");
    assert_eq!(
        int(&c, "relay", "memory"),
        2 << 20,
        "the board beats defaults"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_unknown_board_is_refused_with_the_list() {
    let out = lanvan(&["config", "--board", "pi6"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown board `pi6`"), "{err}");
    for name in ["generic", "pi-zero-2w", "pi3", "pi4", "pi5", "termux"] {
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn without_a_device_tree_the_box_is_generic() {
    if std::path::Path::new("/proc/device-tree/model").exists() {
        eprintln!("this machine has a device tree; detection is covered by the unit tests");
        return;
    }
    let out = lanvan(&["config"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("# board: generic (no /proc/device-tree/model"),
        "{text}"
    );
    assert_eq!(config_of(&out)["data_dir"].as_str(), Some("lanvan-data"));
}

#[test]
fn the_box_logs_its_board_and_runs_with_its_budgets() {
    let data = temp_dir("board-serve", false);
    let mut cmd = lanvan(&[
        "serve",
        "--board",
        "pi-zero-2w",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let (mut child, log) = spawn_logged(&mut cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut board_line = None;
    let mut addr = None;
    while addr.is_none() {
        let line = log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the box did not start");
        if line.contains("board: ") {
            board_line = Some(line.clone());
        }
        if let Some(a) = line.split("listening on ").nth(1) {
            addr = Some(a.trim().parse().unwrap());
        }
    }
    let board_line = board_line.expect("the board was not logged before listening");
    assert!(
        board_line.contains("board: pi-zero-2w (chosen with --board)"),
        "{board_line}"
    );
    // The Zero's chunk size is what a client is told to use.
    let mut client = common::Client::connect(addr.unwrap());
    let body = br#"{"name":"a.bin","size":10000000}"#;
    let resp = client.send(
        "POST",
        "/api/uploads",
        &[("content-type", "application/json")],
        body,
    );
    assert_eq!(resp.status, 201, "{resp:?}");
    assert_eq!(resp.json()["chunk_size"], 512 * 1024);
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(data).ok();
}

#[test]
fn termux_is_detected_from_its_environment() {
    let home = temp_dir("board-termux", false);
    let termux = |home: &std::path::Path| {
        let out = lanvan(&["config"])
            .env("TERMUX_VERSION", "0.118.1")
            .env("PREFIX", "/data/data/com.termux/files/usr")
            .env("HOME", home)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.starts_with("# board: termux (Termux 0.118.1 (TERMUX_VERSION))"),
            "{text}"
        );
        config_of(&out)
    };
    // Before termux-setup-storage: private to Termux.
    let c = termux(&home);
    let private = home.join("lanvan-data");
    assert_eq!(c["data_dir"].as_str(), Some(private.to_str().unwrap()));
    assert_eq!(int(&c, "relay", "memory"), 4 << 20);
    // After it: shared storage, where the phone's Files app sees the files.
    std::fs::create_dir_all(home.join("storage/shared")).unwrap();
    let shared = home.join("storage/shared/LANVan");
    assert_eq!(
        termux(&home)["data_dir"].as_str(),
        Some(shared.to_str().unwrap())
    );
    // --board wins over detection, even in Termux.
    let out = lanvan(&["config", "--board", "generic"])
        .env("TERMUX_VERSION", "0.118.1")
        .env("HOME", &home)
        .output()
        .unwrap();
    assert_eq!(config_of(&out)["data_dir"].as_str(), Some("lanvan-data"));
    std::fs::remove_dir_all(home).ok();
}

#[test]
fn a_boards_data_folder_that_cannot_be_made_falls_back_to_the_working_folder() {
    let dir = temp_dir("board-nohome", false);
    let home = dir.join("not-a-folder");
    std::fs::write(&home, "a file where the home folder should be").unwrap();
    let mut child = lanvan(&["serve", "--board", "termux", "--listen", "127.0.0.1:0"])
        .env("HOME", &home)
        .current_dir(&dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("LANVan is serving") {
            break;
        }
    }
    child.kill().ok();
    child.wait().ok();
    assert!(
        seen.contains("cannot use the termux board's data folder")
            && seen.contains("using ./lanvan-data instead"),
        "{seen}"
    );
    assert!(seen.contains("LANVan is serving"), "{seen}");
    assert!(dir.join("lanvan-data").is_dir());
    // A folder given by the user is the user's: no word about the profile.
    let out = lanvan(&["serve", "--board", "pi4", "--listen", "127.0.0.1:0", "-d"])
        .arg(home.join("x"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open the data folder"), "{err}");
    assert!(!err.contains("board profile"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}
