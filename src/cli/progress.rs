//! Progress of one transfer on stderr: a bar with percent, speed and ETA redrawn in place
//! on a terminal, or a plain line every few seconds (and at the end) when piped. The
//! formatting is pure; [`Progress`] only decides when to write. Never writes to stdout.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// How often a terminal bar is redrawn, and how often a plain line is written.
const REDRAW: Duration = Duration::from_millis(100);
const PLAIN_EVERY: Duration = Duration::from_secs(3);
const BAR_WIDTH: usize = 24;

/// `1.5 MiB`, `812 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `1:05`, `1:02:03`; `--:--` when unknown.
pub fn clock(secs: Option<f64>) -> String {
    match secs {
        Some(s) if (0.0..360_000.0).contains(&s) => {
            let s = s.round() as u64;
            if s >= 3600 {
                format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
            } else {
                format!("{}:{:02}", s / 60, s % 60)
            }
        }
        _ => "--:--".into(),
    }
}

/// The figures of one moment: percent, speed (bytes/s) and seconds left.
pub fn figures(done: u64, total: u64, elapsed: Duration) -> (f64, f64, Option<f64>) {
    let pct = if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    };
    let secs = elapsed.as_secs_f64();
    let speed = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let eta = (speed > 0.0).then(|| total.saturating_sub(done) as f64 / speed);
    (pct, speed, eta)
}

/// The bar line: `name  [#####.....]  42%  10.0 MiB/24.0 MiB  5.1 MiB/s  ETA 0:03`.
pub fn bar_line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let (pct, speed, eta) = figures(done, total, elapsed);
    let filled = ((pct / 100.0) * BAR_WIDTH as f64)
        .floor()
        .min(BAR_WIDTH as f64) as usize;
    format!(
        "{label}  [{}{}] {pct:3.0}%  {}/{}  {}/s  ETA {}",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        bytes(done),
        bytes(total),
        bytes(speed as u64),
        clock(eta)
    )
}

/// A plain line for logs: `name: 42% (10.0 MiB of 24.0 MiB), 5.1 MiB/s, ETA 0:03`.
pub fn plain_line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let (pct, speed, eta) = figures(done, total, elapsed);
    format!(
        "{label}: {pct:.0}% ({} of {}), {}/s, ETA {}",
        bytes(done),
        bytes(total),
        bytes(speed as u64),
        clock(eta)
    )
}

/// One transfer's progress on stderr.
pub struct Progress {
    label: String,
    total: u64,
    /// Bytes that were already there (a resumed download): not counted in the speed.
    base: u64,
    start: Instant,
    last: Option<Instant>,
    tty: bool,
    quiet: bool,
    done: u64,
    drawn: bool,
    /// Shown after the figures (`2 sources`); empty for none.
    note: String,
}

impl Progress {
    pub fn new(label: &str, total: u64, quiet: bool) -> Progress {
        Progress {
            label: label.to_string(),
            total,
            base: 0,
            start: Instant::now(),
            last: None,
            tty: std::io::stderr().is_terminal(),
            quiet,
            done: 0,
            drawn: false,
            note: String::new(),
        }
    }

    /// Bytes already held when the transfer (re)started.
    pub fn starting_at(&mut self, base: u64) {
        self.base = base;
        self.done = base;
        self.start = Instant::now();
    }

    /// `done` bytes of `total` are through; redraws when it is time.
    pub fn update(&mut self, done: u64) {
        self.done = done;
        let now = Instant::now();
        let every = if self.tty { REDRAW } else { PLAIN_EVERY };
        if self.quiet || self.last.is_some_and(|l| now - l < every) {
            return;
        }
        if self.last.is_none() && !self.tty {
            // The first plain line waits a period, so short transfers print one line.
            self.last = Some(now);
            return;
        }
        self.last = Some(now);
        self.draw(false);
    }

    /// Sets the note shown after the figures (e.g. `2 sources`). A change is drawn at
    /// once, so a piped log gets a line for each change, not only every few seconds.
    pub fn set_note(&mut self, note: &str) {
        if self.note == note {
            return;
        }
        self.note = note.to_string();
        if !self.quiet {
            self.last = Some(Instant::now());
            self.draw(false);
        }
    }

    fn draw(&mut self, last: bool) {
        let elapsed = self.start.elapsed();
        let (done, total) = (
            self.done - self.base.min(self.done),
            self.total - self.base.min(self.total),
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let line = bar_line(&self.label, done, total, elapsed);
            let _ = write!(err, "\r\x1b[2K{line}{}", self.suffix());
            if last {
                let _ = writeln!(err);
            }
            self.drawn = true;
        } else {
            let line = plain_line(&self.label, done, total, elapsed);
            let _ = writeln!(err, "{line}{}", self.suffix());
        }
        let _ = err.flush();
    }

    fn suffix(&self) -> String {
        if self.note.is_empty() {
            String::new()
        } else {
            format!(" · {}", self.note)
        }
    }

    /// The final line, with `note` (e.g. "done, SHA-256 ok").
    pub fn finish(&mut self, note: &str) {
        if self.quiet {
            return;
        }
        self.done = self.done.max(self.total);
        self.draw(true);
        if !note.is_empty() {
            eprintln!("{}: {note}", self.label);
        }
    }

    /// Ends the bar's line without completing it (before an error message).
    pub fn abandon(&mut self) {
        if self.tty && self.drawn && !self.quiet {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_clocks_read_like_a_person_would_write_them() {
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(24 << 20), "24.0 MiB");
        assert_eq!(clock(Some(65.0)), "1:05");
        assert_eq!(clock(Some(3723.0)), "1:02:03");
        assert_eq!(clock(None), "--:--");
    }

    #[test]
    fn the_bar_shows_percent_speed_and_eta() {
        let l = bar_line("a.bin", 5 << 20, 10 << 20, Duration::from_secs(1));
        assert!(l.contains("[############............]"), "{l}");
        assert!(l.contains(" 50%"), "{l}");
        assert!(l.contains("5.0 MiB/s"), "{l}");
        assert!(l.contains("ETA 0:01"), "{l}");
        let p = plain_line("a.bin", 10 << 20, 10 << 20, Duration::from_secs(2));
        assert_eq!(p, "a.bin: 100% (10.0 MiB of 10.0 MiB), 5.0 MiB/s, ETA 0:00");
    }

    #[test]
    fn nothing_moved_yet_has_no_eta_and_an_empty_file_is_complete() {
        let (pct, speed, eta) = figures(0, 100, Duration::ZERO);
        assert_eq!((pct, speed, eta), (0.0, 0.0, None));
        assert_eq!(figures(0, 0, Duration::from_secs(1)).0, 100.0);
    }
}
