//! A client written only from `shared/SEED-PROTOCOL.md` (tests/web/seed_client.mjs, in
//! Node) against the real box: P2P opt-in, request/accept/decline, both signaling forms,
//! established, the signaling timeout (set to 2 s here), the clipboard, bad frames, socket
//! close, and family signaling on `/signal`. `scripts/need-node.sh` installs Node.

mod common;

use common::Lanvan;
use std::process::Command;

#[test]
fn a_client_written_from_the_seed_protocol_works_unchanged() {
    let lv = Lanvan::start("seed-js", &["p2p.signal_timeout_secs=2"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web/seed_client.mjs");
    // Node 20 needs a flag for its WebSocket; Node 22 has it; older ones use `ws`.
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
    cmd.env("NODE_PATH", node_path);
    let out = cmd
        .arg("--no-warnings")
        .arg(script)
        .arg(format!("ws://{}", lv.addr))
        .args(["--signal-timeout-s", "2"])
        .output()
        .expect("node is installed (scripts/need-node.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("seed_client: ok"),
        "seed_client.mjs failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
