//! A terminal running the `lanvan` command line against a test box: its own state folder
//! (so its own device id) and name, commands run to their end or spawned with their stderr
//! lines on a channel. Never starts a box (see `Lanvan`).

use super::{bin, sha_hex, temp_dir, wait_exit, Lanvan};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A terminal: its own state folder (so its own device id) and name.
pub struct Term {
    pub state: PathBuf,
    pub name: String,
    pub url: String,
}

impl Term {
    pub fn new(b: &Lanvan, name: &str) -> Term {
        Term {
            state: temp_dir(&format!("cli-state-{}", name.replace(' ', "-")), false),
            name: name.into(),
            url: format!("http://{}", b.addr),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .args(["--box", &self.url, "--name", &self.name])
            .env("XDG_STATE_HOME", &self.state)
            .env_remove("LANVAN_BOX");
        c
    }

    /// Runs a command to its end (at most 60 s) with `stdin` fed in.
    pub fn run_with(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        wait_exit(&mut child, 60);
        child.wait_with_output().unwrap()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, b"")
    }

    /// Starts a long-running command; its stderr lines arrive on the channel.
    pub fn spawn(&self, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn file_sha(p: &Path) -> String {
    sha_hex(&std::fs::read(p).unwrap())
}

/// Waits for a line containing `what`; returns all lines seen.
pub fn wait_line(rx: &mpsc::Receiver<String>, what: &str, secs: u64) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        let hit = l.contains(what);
        seen.push(l);
        if hit {
            return seen;
        }
    }
    panic!("no line with `{what}` in {secs} s; saw {seen:?}");
}
