//! A minimal `log` backend: one line per record on stderr, with time and level. Enough for
//! journald and a terminal; no dependency beyond `log`.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        if !record.target().starts_with("lanvan") && record.level() > Level::Warn {
            return;
        }
        eprintln!(
            "{} {:5} {}",
            utc_time(crate::store::unix_ms()),
            record.level(),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// `2026-11-21T21:04:05.123Z` for a Unix time in milliseconds (the civil calendar from
/// days since 1970, after Howard Hinnant's `civil_from_days`).
fn utc_time(ms: u64) -> String {
    let (secs, ms) = (ms / 1000, ms % 1000);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Installs the logger at `level` (error, warn, info, debug, trace; anything else: info).
pub fn init(level: &str) {
    let filter = level.parse().unwrap_or(LevelFilter::Info);
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(filter);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_times() {
        assert_eq!(super::utc_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            super::utc_time(1_795_297_589_582),
            "2026-11-21T21:46:29.582Z"
        );
    }
}
