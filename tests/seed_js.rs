//! A client written only from `shared/SEED-PROTOCOL.md` (tests/web/seed_client.mjs, in
//! Node) against the real box: P2P opt-in, request/accept/decline, both signaling forms,
//! established, the signaling timeout (set to 2 s here), the clipboard, bad frames, socket
//! close, and family signaling on `/signal`. `scripts/need-node.sh` installs Node.

mod common;

use common::Lanvan;

#[test]
fn a_client_written_from_the_seed_protocol_works_unchanged() {
    let lv = Lanvan::start("seed-js", &["p2p.signal_timeout_secs=2"]);
    let args = [
        format!("ws://{}", lv.addr),
        "--signal-timeout-s".to_string(),
        "2".to_string(),
    ];
    common::run_node_script("seed_client.mjs", &args, "seed_client: ok");
}
