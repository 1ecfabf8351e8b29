//! `web/relay.js`, the browser side of relay transfers, run in Node against the real box
//! (tests/web/relay_node.mjs): its SHA-256, a send between two instances with bytes and
//! hash compared, a decline, a cancel, an inbox delivery, and a receiver socket dropped
//! mid-file and resumed through `attach()`. `scripts/need-node.sh` installs Node. The
//! Playwright test in Chromium comes with the browser app.

mod common;

use common::Lanvan;
use std::process::Command;

#[test]
fn relay_js_sends_receives_declines_cancels_and_uses_the_inbox() {
    let lv = Lanvan::start("relay-js", &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web/relay_node.mjs");
    // Node 20 needs a flag for its WebSocket; Node 22 has it; older ones use `ws`.
    let flag = Command::new("node")
        .args(["--experimental-websocket", "-e", "0"])
        .status()
        .is_ok_and(|s| s.success());
    let mut cmd = Command::new("node");
    if flag {
        cmd.arg("--experimental-websocket");
    }
    // Where Debian's node-ws lives, for Nodes without a WebSocket of their own.
    let node_path = match std::env::var("NODE_PATH") {
        Ok(p) if !p.is_empty() => format!("{p}:/usr/share/nodejs"),
        _ => "/usr/share/nodejs".to_string(),
    };
    cmd.env("NODE_PATH", node_path);
    let out = cmd
        .arg("--no-warnings")
        .arg(script)
        .arg(format!("ws://{}", lv.addr))
        .output()
        .expect("node is installed (scripts/need-node.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("relay_node: ok"),
        "relay_node.mjs failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
