//! `web/relay.js`, the browser side of relay transfers, run in Node against the real box
//! (tests/web/relay_node.mjs): its SHA-256, a send between two instances with bytes and
//! hash compared, a decline, a cancel, an inbox delivery, and a receiver socket dropped
//! mid-file and resumed through `attach()`. `scripts/need-node.sh` installs Node. The
//! Playwright test in Chromium comes with the browser app.

mod common;

use common::Lanvan;

#[test]
fn relay_js_sends_receives_declines_cancels_and_uses_the_inbox() {
    let lv = Lanvan::start("relay-js", &[]);
    common::run_node_script(
        "relay_node.mjs",
        &[format!("ws://{}", lv.addr)],
        "relay_node: ok",
    );
}
