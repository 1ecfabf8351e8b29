//! Running on an Android phone in Termux: recognising it, where files go, and the battery.
//! Detection and the battery policy are pure (environment and JSON in, decisions out);
//! only [`read_battery`] runs a process, and the box calls it from its own thread,
//! never from the event loop: `termux-battery-status` can take seconds, or hang forever
//! when the Termux:API app is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where Termux installs itself on every Android version it supports.
const TERMUX_APP_DIR: &str = "/data/data/com.termux";

/// Why this looks like Termux (for the log), or None. Termux sets `TERMUX_VERSION` and
/// a `PREFIX` under its app folder; `HOME` under that folder is the last resort.
pub fn detect(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(v) = env("TERMUX_VERSION").filter(|v| !v.is_empty()) {
        return Some(format!("Termux {v} (TERMUX_VERSION)"));
    }
    for var in ["PREFIX", "HOME"] {
        if let Some(path) = env(var).filter(|p| p.starts_with(TERMUX_APP_DIR)) {
            return Some(format!("Termux ({var}={path})"));
        }
    }
    None
}

/// The data folder in Termux: in shared storage (`~/storage/shared/LANVan`, which the
/// phone's Files app and other apps see) when `termux-setup-storage` has made
/// `~/storage/shared`; otherwise `~/lanvan-data`, private to Termux. The flag says which.
pub fn data_dir(home: &Path) -> (PathBuf, bool) {
    let shared = home.join("storage").join("shared");
    if shared.is_dir() {
        (shared.join("LANVan"), true)
    } else {
        (home.join("lanvan-data"), false)
    }
}

/// One reading of `termux-battery-status`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Battery {
    pub percent: u8,
    /// Plugged in (AC, USB or wireless) or reported as charging/full.
    pub charging: bool,
}

impl Battery {
    /// Parses the JSON `termux-battery-status` prints, e.g.
    /// `{"percentage": 58, "plugged": "UNPLUGGED", "status": "DISCHARGING", ...}`.
    pub fn parse(json: &str) -> Option<Battery> {
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        let percent = v["percentage"].as_u64()?.min(100) as u8;
        let plugged = v["plugged"].as_str().unwrap_or("UNPLUGGED");
        let status = v["status"].as_str().unwrap_or("");
        let charging = plugged != "UNPLUGGED" || matches!(status, "CHARGING" | "FULL");
        Some(Battery { percent, charging })
    }
}

/// How hard the box saves power.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    /// Full budgets.
    Normal,
    /// Below 15%: smaller chunks, fewer chunks in flight.
    Low,
    /// Below 10% and not charging: also no P2P (WebRTC keeps the radio busy).
    Critical,
}

/// Below this percentage the box uses smaller chunks and fewer transfers at once.
pub const LOW_PERCENT: u8 = 15;
/// Below this percentage, and not charging, P2P is turned off too.
pub const CRITICAL_PERCENT: u8 = 10;
/// Chunk size handed out for new uploads while the battery is low.
pub const LOW_CHUNK_SIZE: u64 = 256 << 10;
/// Chunk bodies in memory at once, across all uploads, while the battery is low.
pub const LOW_CHUNKS_IN_FLIGHT: usize = 2;

impl Power {
    pub fn of(b: Battery) -> Power {
        if b.percent < CRITICAL_PERCENT && !b.charging {
            Power::Critical
        } else if b.percent < LOW_PERCENT {
            Power::Low
        } else {
            Power::Normal
        }
    }

    /// What the box does at this level, for the log and for P2P refusals.
    pub fn explain(self, b: Battery) -> String {
        let state = if b.charging {
            "charging"
        } else {
            "not charging"
        };
        match self {
            Power::Normal => format!("battery {}% ({state}): full speed", b.percent),
            Power::Low => format!(
                "battery {}% ({state}), below {LOW_PERCENT}%: smaller chunks ({} KiB) and at most {LOW_CHUNKS_IN_FLIGHT} chunks in flight",
                b.percent,
                LOW_CHUNK_SIZE >> 10
            ),
            Power::Critical => format!(
                "battery {}% and not charging, below {CRITICAL_PERCENT}%: P2P is off and transfers are slowed to save power; plug the phone in to turn it back on",
                b.percent
            ),
        }
    }

    /// The P2P refusal while at this level, if any.
    pub fn p2p_refusal(self, b: Battery) -> Option<String> {
        (self == Power::Critical).then(|| {
            format!(
                "P2P is off: the box's battery is at {}% and not charging; send through the box instead, or plug the box in",
                b.percent
            )
        })
    }
}

/// Runs `termux-battery-status` (found on PATH), killing it after `timeout`. Blocking:
/// call from a thread of its own.
pub fn read_battery(timeout: Duration) -> Result<Battery, String> {
    let mut child = Command::new("termux-battery-status")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run termux-battery-status: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "termux-battery-status gave no answer within {} s (is the Termux:API app installed?)",
                    timeout.as_secs()
                ));
            }
        }
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read as _;
        // Its answer is a few hundred bytes; more is not a battery status.
        let _ = (&mut stdout).take(64 << 10).read_to_string(&mut out);
    }
    Battery::parse(&out).ok_or_else(|| {
        format!(
            "termux-battery-status printed no battery percentage: {:?}",
            out.chars().take(200).collect::<String>()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn termux_is_recognised_by_its_environment() {
        assert!(detect(&env_of(&[("TERMUX_VERSION", "0.118.1")])).is_some());
        assert!(detect(&env_of(&[("PREFIX", "/data/data/com.termux/files/usr")])).is_some());
        assert!(detect(&env_of(&[("HOME", "/data/data/com.termux/files/home")])).is_some());
        assert!(detect(&env_of(&[("PREFIX", "/usr"), ("HOME", "/home/pi")])).is_none());
        assert!(detect(&env_of(&[])).is_none());
    }

    #[test]
    fn battery_readings_parse() {
        let real = r#"{"present":true,"technology":"Li-ion","health":"GOOD","plugged":"UNPLUGGED",
            "status":"DISCHARGING","temperature":29.5,"voltage":3853,"current":-312000,
            "percentage":58,"level":58,"scale":100}"#;
        assert_eq!(
            Battery::parse(real),
            Some(Battery {
                percent: 58,
                charging: false
            })
        );
        let plugged = r#"{"percentage": 8, "plugged": "PLUGGED_USB", "status": "CHARGING"}"#;
        assert_eq!(
            Battery::parse(plugged),
            Some(Battery {
                percent: 8,
                charging: true
            })
        );
        assert_eq!(Battery::parse("Termux:API is not installed"), None);
        assert_eq!(Battery::parse(r#"{"plugged": "UNPLUGGED"}"#), None);
    }

    #[test]
    fn power_levels_follow_the_thresholds() {
        let b = |percent, charging| Battery { percent, charging };
        assert_eq!(Power::of(b(15, false)), Power::Normal);
        assert_eq!(Power::of(b(14, false)), Power::Low);
        assert_eq!(Power::of(b(14, true)), Power::Low);
        assert_eq!(Power::of(b(10, false)), Power::Low);
        assert_eq!(Power::of(b(9, false)), Power::Critical);
        assert_eq!(Power::of(b(9, true)), Power::Low, "charging keeps P2P on");
        assert!(Power::Critical
            .p2p_refusal(b(9, false))
            .unwrap()
            .contains("9%"));
        assert!(Power::Low.p2p_refusal(b(12, false)).is_none());
    }

    #[test]
    fn shared_storage_is_used_once_set_up() {
        let home = std::env::temp_dir().join(format!("lanvan-termux-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        assert_eq!(data_dir(&home), (home.join("lanvan-data"), false));
        std::fs::create_dir_all(home.join("storage/shared")).unwrap();
        assert_eq!(data_dir(&home), (home.join("storage/shared/LANVan"), true));
        std::fs::remove_dir_all(home).ok();
    }
}
