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
        let ms = crate::store::unix_ms();
        eprintln!(
            "{}.{:03} {:5} {}",
            ms / 1000,
            ms % 1000,
            record.level(),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// Installs the logger at `level` (error, warn, info, debug, trace; anything else: info).
pub fn init(level: &str) {
    let filter = level.parse().unwrap_or(LevelFilter::Info);
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(filter);
    }
}
