//! The `lanvan` command line as a peer of a box: `ls`, `clip`, `get`, `put`, `send`,
//! `receive`, `share`.
//! Each command finds the box (`--box`, `LANVAN_BOX`, else mDNS), runs on a small smol
//! loop of its own, and exits 0 (done), 1 (failed) or 2 (usage). Never runs a box.

pub mod commands;
pub mod direct;
pub mod fetch;
pub mod link;
pub mod progress;
pub mod put;
pub mod relay;
pub mod share;
pub mod transfer;
pub mod webrtc;

use clap::Args;
use link::Failure;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Options every peer command takes.
#[derive(Args, Clone, Debug)]
pub struct Peer {
    /// The box, e.g. http://192.168.1.20:8080 [default: the first box answering on the LAN by mDNS].
    #[arg(long = "box", env = "LANVAN_BOX", value_name = "URL")]
    pub box_url: Option<String>,
    /// The name other devices see for this terminal [default: "lanvan on HOSTNAME"].
    #[arg(long)]
    pub name: Option<String>,
    /// Milliseconds to wait for a box to answer mDNS.
    #[arg(long, default_value_t = 1500, value_name = "MS")]
    pub discover_ms: u64,
    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl Peer {
    pub fn locate(&self) -> link::Result<link::BoxAddr> {
        // An empty LANVAN_BOX counts as unset.
        link::locate(
            self.box_url.as_deref().filter(|s| !s.trim().is_empty()),
            Duration::from_millis(self.discover_ms),
        )
    }

    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(link::default_name)
    }
}

/// `lanvan ls`.
#[derive(Args, Debug)]
pub struct Ls {
    #[command(flatten)]
    pub peer: Peer,
    /// Print the box's answer as JSON (`GET /api/files`): name, size, sha256, modified, uploaded_by, and now.
    #[arg(long)]
    pub json: bool,
}

/// `lanvan clip`.
#[derive(Args, Debug)]
pub struct Clip {
    #[command(flatten)]
    pub peer: Peer,
    /// Text to put on the shared clipboard; `-` reads it from stdin. Without it, prints the clipboard.
    pub text: Option<String>,
}

/// `lanvan get`.
#[derive(Args, Debug)]
pub struct Get {
    #[command(flatten)]
    pub peer: Peer,
    /// The stored file's name, as `lanvan ls` shows it.
    #[arg(value_name = "NAME")]
    pub file: String,
    /// Where to save it (a file, or a folder to save NAME in) [default: ./NAME].
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Most bytes per second to download (e.g. on a busy Wi-Fi); 0 = no limit.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub limit_rate: u64,
    /// Download over plain HTTP, without trying the box's data channel.
    #[arg(long)]
    pub http: bool,
}

/// `lanvan send`.
#[derive(Args, Debug)]
pub struct Send {
    #[command(flatten)]
    pub peer: Peer,
    /// The file to send.
    pub file: PathBuf,
    /// The device to send to: its id, or its name as the box lists it.
    #[arg(long, value_name = "DEVICE")]
    pub to: String,
    /// Send through the box's relay at once, without trying a direct connection.
    #[arg(long)]
    pub relay: bool,
}

/// `lanvan receive`.
#[derive(Args, Debug)]
pub struct Receive {
    #[command(flatten)]
    pub peer: Peer,
    /// Folder to save received files in.
    #[arg(long, short = 'd', default_value = ".", value_name = "DIR")]
    pub dir: PathBuf,
    /// Exit after the first file (0 if it arrived whole, 1 if not).
    #[arg(long)]
    pub once: bool,
    /// Take files through the box's relay only: do not offer direct (P2P) connections.
    #[arg(long)]
    pub relay: bool,
}

/// `lanvan share`.
#[derive(Args, Debug)]
pub struct Share {
    #[command(flatten)]
    pub peer: Peer,
    /// The file to serve: a copy of a file stored on the box (the same bytes), whose chunks
    /// devices downloading it may then fetch from this terminal too.
    pub file: PathBuf,
}

/// Runs a peer command to its exit code; errors are printed as `lanvan: …`.
pub fn exit(result: link::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("lanvan: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(m)) => {
            eprintln!("lanvan: {m}");
            ExitCode::FAILURE
        }
    }
}
