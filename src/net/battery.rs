//! The box on a phone in Termux: the start-up advice (wake lock, shared storage) and the
//! battery follower. A thread of its own runs `termux-battery-status` every
//! `termux.battery_check_secs` and hands each reading to the loop, which only applies it:
//! the loop never waits for the process (it can take seconds, or hang).

use super::server::App;
use crate::termux::{self, Battery, Power};
use std::rc::Rc;
use std::time::Duration;

/// Logs what a Termux user should know, and starts following the battery.
pub fn start(app: &Rc<App>, why: &str, ex: &smol::LocalExecutor<'_>) {
    log::info!(
        "running in {why}; run `termux-wake-lock` so Android keeps the box running while \
         the screen is off (`termux-wake-unlock` undoes it)"
    );
    if let Some(home) = std::env::var_os("HOME") {
        let (default_dir, shared) = termux::data_dir(std::path::Path::new(&home));
        if !shared && app.cfg.data_dir == default_dir {
            log::info!(
                "files are kept in {}, private to Termux; run `termux-setup-storage` once and \
                 restart to keep them in shared storage (Internal storage/LANVan)",
                default_dir.display()
            );
        }
    }
    let every = app.cfg.termux.battery_check_secs;
    let (tx, rx) = smol::channel::bounded(1);
    let spawned = std::thread::Builder::new()
        .name("lanvan-battery".into())
        .spawn(move || {
            // A reading may take as long as the interval between readings, up to 10 s.
            let timeout = Duration::from_secs(every.clamp(2, 10));
            loop {
                if tx.send_blocking(termux::read_battery(timeout)).is_err() || every == 0 {
                    return;
                }
                std::thread::sleep(Duration::from_secs(every));
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot follow the battery: {e}");
        return;
    }
    let app = app.clone();
    ex.spawn(async move {
        let mut level = None;
        let mut warned = false;
        while let Ok(reading) = rx.recv().await {
            match reading {
                Ok(battery) => apply(&app, battery, &mut level),
                Err(e) if !warned => {
                    warned = true;
                    log::warn!("{e}; the box cannot save power when the battery runs low");
                }
                Err(_) => {}
            }
        }
    })
    .detach();
}

/// Saves power to match one reading; logs when the level changes.
fn apply(app: &App, battery: Battery, level: &mut Option<Power>) {
    let power = Power::of(battery);
    if *level != Some(power) {
        let text = power.explain(battery);
        match power {
            Power::Normal => log::info!("{text}"),
            _ => log::warn!("{text}"),
        }
        app.store
            .set_power_saving((power != Power::Normal).then_some(termux::LOW_CHUNK_SIZE));
        *level = Some(power);
    }
    // Every reading while critical, so the refusal names the current percentage.
    let refusal = power.p2p_refusal(battery);
    let mut out = Vec::new();
    app.hub.borrow_mut().set_p2p_refusal(refusal, &mut out);
    app.dispatch(out);
}
