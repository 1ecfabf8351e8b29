//! The `lanvan` command line: `lanvan serve` runs the box; `lanvan config` prints the
//! settings it would run with; `ls`, `clip`, `get`, `send` and `receive` are a peer of a
//! box (`lanvan::cli`). Parses arguments and hands over; holds no logic of its own.

use clap::{Args, Parser, Subcommand};
use lanvan::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// LANVan turns this machine into a drop-box for its local network: phones and laptops
/// open it in a browser to drop files, download them and share a clipboard.
#[derive(Parser)]
#[command(version, about, long_about = None, after_help = OPTIONS_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The options of `serve` and `config`, shown by `lanvan --help` too.
const OPTIONS_HELP: &str = "\
Options of `lanvan serve` and `lanvan config`:
  -c, --config <FILE>          TOML settings file (`lanvan config` prints every key) [env: LANVAN_CONFIG]
  -l, --listen <ADDR>          address to listen on [default: 0.0.0.0:8080]; [::]:8080 takes IPv6 and IPv4
  -d, --data-dir <DIR>         folder for files and unfinished uploads, created if missing [default: the board's; ./lanvan-data on a PC]
      --log-level <LEVEL>      error, warn, info, debug or trace [default: info]
      --quota <SIZE>           most bytes stored (files plus open uploads), e.g. 20GiB; 0 = only free space
      --max-connections <N>    most open TCP connections [default: 256]
  -s, --set <KEY=VALUE>        any other setting with a dotted key, e.g. -s ws.send_queue=64 (repeatable)
      --board <NAME>           board profile: generic, pi-zero-2w, pi3, pi4, pi5, termux [default: detected] [env: LANVAN_BOARD]

Settings are read from defaults, then the board profile, then LANVAN_* environment variables
(LANVAN_HTTP_MAX_CONNECTIONS=64), then the --config file, then flags; each later source wins. `lanvan serve --help` has the details.";

#[derive(Subcommand)]
enum Command {
    /// Run the box until SIGINT or SIGTERM.
    Serve(Settings),
    /// Print the settings `serve` would use, as TOML (a starting point for --config).
    Config(Settings),
    /// List the LANVan boxes on this network (by mDNS): name, address to open, version.
    Discover(Discover),
    /// List the files stored on the box: name, size, age.
    Ls(lanvan::cli::Ls),
    /// Print the shared clipboard, or set it to TEXT (`-` reads stdin).
    Clip(lanvan::cli::Clip),
    /// Download a stored file, checked by SHA-256; an interrupted download resumes.
    Get(lanvan::cli::Get),
    /// Upload a file to the box, checked by SHA-256; an interrupted upload resumes.
    Put(lanvan::cli::put::Put),
    /// Send a file to another device (directly when it can, else through the box).
    Send(lanvan::cli::Send),
    /// Wait for files sent to this terminal and save them.
    Receive(lanvan::cli::Receive),
    /// Serve a local copy of a stored file to devices downloading it, until Ctrl-C.
    Share(lanvan::cli::Share),
}

/// `lanvan discover`: exits 0 when a box (or the --host name) answered, 1 when none did.
#[derive(Args)]
struct Discover {
    /// Keep listening, and print boxes as they appear and leave, until Ctrl-C.
    #[arg(long, short = 'w')]
    watch: bool,
    /// Milliseconds to listen for answers.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    timeout_ms: u64,
    /// One JSON object per line (event, name, host, addresses, port, version, id, url).
    #[arg(long)]
    json: bool,
    /// Resolve a host name instead, e.g. --host lanvan.local, and print its addresses.
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
}

/// Settings, from lowest to highest precedence: built-in defaults, the board profile,
/// LANVAN_* environment variables (e.g. LANVAN_HTTP_MAX_CONNECTIONS=64), the --config file, then these flags.
#[derive(Args)]
struct Settings {
    /// TOML settings file (`lanvan config` prints every key with its default).
    #[arg(long, short = 'c', env = "LANVAN_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:8080]; [::]:8080 takes IPv6 and IPv4.
    #[arg(long, short = 'l')]
    listen: Option<String>,
    /// Folder for stored files and unfinished uploads, created if missing [default: the board
    /// profile's; ./lanvan-data on a PC].
    #[arg(long, short = 'd')]
    data_dir: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace [default: info].
    #[arg(long)]
    log_level: Option<String>,
    /// Most bytes the box stores (files plus open uploads), e.g. 20GiB; 0 = only free space.
    #[arg(long)]
    quota: Option<String>,
    /// Most open TCP connections [default: 256].
    #[arg(long)]
    max_connections: Option<String>,
    /// Any other setting as KEY=VALUE with a dotted key, e.g. -s ws.send_queue=64. Repeatable.
    #[arg(long = "set", short = 's', value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Board profile (budgets and data folder): generic, pi-zero-2w, pi3, pi4, pi5 or
    /// termux [default: detected from /proc/device-tree/model and Termux's environment].
    #[arg(long, env = "LANVAN_BOARD")]
    board: Option<String>,
}

impl Settings {
    /// The settings, and the board profile they were built on.
    fn load(self) -> Result<(Config, lanvan::board::Choice), String> {
        let choice = lanvan::board::choose(self.board.as_deref())?;
        let board = choice.board.settings(&|k| std::env::var(k).ok())?;
        let mut overrides = Vec::new();
        let named = [
            ("listen", self.listen),
            ("data_dir", self.data_dir.map(|p| p.display().to_string())),
            ("log_level", self.log_level),
            ("store.quota", self.quota),
            ("http.max_connections", self.max_connections),
        ];
        for (key, value) in named {
            if let Some(v) = value {
                overrides.push((key.to_string(), v));
            }
        }
        for kv in self.set {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--set takes KEY=VALUE, got `{kv}`"))?;
            overrides.push((k.trim().to_string(), v.trim().to_string()));
        }
        let config = Config::load_layered(
            Some(board),
            std::env::vars(),
            self.config.as_deref(),
            &overrides,
        )
        .map_err(|e| e.0)?;
        Ok((config, choice))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    use lanvan::cli::{commands, exit};
    let result = match cli.command {
        Command::Ls(a) => return exit(commands::ls(a)),
        Command::Clip(a) => return exit(commands::clip(a)),
        Command::Get(a) => return exit(commands::get(a)),
        Command::Put(a) => return exit(lanvan::cli::put::run(a)),
        Command::Send(a) => return exit(commands::send(a)),
        Command::Receive(a) => return exit(commands::receive(a)),
        Command::Share(a) => return exit(lanvan::cli::share::share(a)),
        Command::Serve(s) => s.load().and_then(|(cfg, board)| {
            lanvan::logger::init(&cfg.log_level);
            log::info!("board: {} ({})", board.board.name, board.why);
            // Whether the data folder is the profile's own (e.g. /var/lib/lanvan on a Pi).
            let board_dir = board
                .board
                .settings(&|k| std::env::var(k).ok())
                .ok()
                .and_then(|t| t.get("data_dir")?.as_str().map(PathBuf::from));
            let mut cfg = cfg;
            if board.board.name != "generic"
                && board_dir.as_ref() == Some(&cfg.data_dir)
                && std::fs::create_dir_all(&cfg.data_dir).is_err()
            {
                // A board's folder (e.g. /var/lib/lanvan on a Pi) belongs to the service;
                // someone trying the box by hand still gets a working box.
                log::warn!(
                    "cannot use the {} board's data folder {} (run the box as a service, see \
                     systemd/, to keep files there); using ./lanvan-data instead",
                    board.board.name,
                    cfg.data_dir.display()
                );
                cfg.data_dir = PathBuf::from("lanvan-data");
            }
            lanvan::net::server::run(cfg).map_err(|e| e.0)
        }),
        Command::Config(s) => s.load().map(|(cfg, board)| {
            println!("# board: {} ({})", board.board.name, board.why);
            print!("{}", cfg.to_toml())
        }),
        Command::Discover(d) => {
            let opts = lanvan::net::mdns::DiscoverOptions {
                timeout: std::time::Duration::from_millis(d.timeout_ms),
                watch: d.watch,
                json: d.json,
                host: d.host,
            };
            match lanvan::net::mdns::discover(&opts) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::from(1),
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanvan: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_parses_its_arguments_without_clashes() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
