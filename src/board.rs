//! Board profiles: the budgets (memory, connections, chunk sizes) and data folder that
//! suit each machine LANVan runs on, as TOML files from `board/` built into the binary.
//! [`detect`] picks one from the device-tree model string and the environment; it is
//! pure, so every rule is unit-tested. A profile is a settings layer between the built-in
//! defaults and `LANVAN_*` variables (see `Config::load_layered`).

use crate::termux;
use std::path::PathBuf;

/// One board profile.
#[derive(Debug)]
pub struct Board {
    /// What `--board` takes and the log shows.
    pub name: &'static str,
    /// The machines it is for.
    pub about: &'static str,
    toml: &'static str,
}

/// Every profile, the fallback (`generic`) first.
pub const BOARDS: &[Board] = &[
    Board {
        name: "generic",
        about: "any other Linux machine (the built-in defaults)",
        toml: include_str!("../board/generic.toml"),
    },
    Board {
        name: "pi-zero-2w",
        about: "Raspberry Pi Zero 2 W and other 512 MB Pis",
        toml: include_str!("../board/pi-zero-2w.toml"),
    },
    Board {
        name: "pi3",
        about: "Raspberry Pi 3, Pi 2, Compute Module 3",
        toml: include_str!("../board/pi3.toml"),
    },
    Board {
        name: "pi4",
        about: "Raspberry Pi 4, Pi 400, Compute Module 4",
        toml: include_str!("../board/pi4.toml"),
    },
    Board {
        name: "pi5",
        about: "Raspberry Pi 5, Pi 500, Compute Module 5",
        toml: include_str!("../board/pi5.toml"),
    },
    Board {
        name: "termux",
        about: "an Android phone running Termux",
        toml: include_str!("../board/termux.toml"),
    },
];

/// Where the kernel names the machine on ARM boards.
pub const MODEL_PATH: &str = "/proc/device-tree/model";

/// The board chosen, and why (for the start-up log).
#[derive(Debug)]
pub struct Choice {
    pub board: &'static Board,
    pub why: String,
}

impl Board {
    pub fn named(name: &str) -> Option<&'static Board> {
        BOARDS.iter().find(|b| b.name.eq_ignore_ascii_case(name))
    }

    fn fallback() -> &'static Board {
        &BOARDS[0]
    }

    /// The profile's settings as a TOML table, its data folder made concrete: `~/` is the
    /// home folder, and Termux falls back to `~/lanvan-data` without shared storage.
    pub fn settings(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<toml::Table, String> {
        let mut table: toml::Table = self
            .toml
            .parse()
            .map_err(|e| format!("board profile {}: {e}", self.name))?;
        let home = env("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        if let Some(toml::Value::String(dir)) = table.get("data_dir") {
            let dir = match (dir.strip_prefix("~/"), home) {
                (Some(_), Some(home)) if self.name == "termux" => termux::data_dir(&home).0,
                (Some(rest), Some(home)) => home.join(rest),
                // No home folder to put it in: the working directory, as on a PC.
                (Some(_), None) => PathBuf::from("lanvan-data"),
                (None, _) => PathBuf::from(dir),
            };
            table.insert(
                "data_dir".into(),
                toml::Value::String(dir.display().to_string()),
            );
        }
        Ok(table)
    }
}

/// Picks the board for a machine whose device tree names it `model` (None when there is
/// no device tree, as on a PC) and whose environment is `env`. Termux wins over the model
/// (a phone's device tree names its chipset); unknown machines get `generic`.
pub fn detect(model: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Choice {
    if let Some(why) = termux::detect(env) {
        return Choice {
            board: Board::named("termux").unwrap_or(Board::fallback()),
            why,
        };
    }
    let Some(model) = model.map(|m| m.trim_matches(|c: char| c == '\0' || c.is_whitespace()))
    else {
        return Choice {
            board: Board::fallback(),
            why: format!("no {MODEL_PATH}; choose another with --board"),
        };
    };
    match board_of_model(model) {
        Some(name) => Choice {
            board: Board::named(name).unwrap_or(Board::fallback()),
            why: format!("{MODEL_PATH} says \"{model}\""),
        },
        None => Choice {
            board: Board::fallback(),
            why: format!("\"{model}\" is not a board with a profile; choose one with --board"),
        },
    }
}

/// The profile for a Raspberry Pi model string, e.g. "Raspberry Pi 4 Model B Rev 1.4".
fn board_of_model(model: &str) -> Option<&'static str> {
    let m = model.to_ascii_lowercase();
    if !m.contains("raspberry pi") {
        return None;
    }
    let any = |keys: &[&str]| keys.iter().any(|k| m.contains(k));
    Some(if any(&["zero"]) {
        "pi-zero-2w"
    } else if any(&["raspberry pi 5", "compute module 5"]) {
        "pi5"
    } else if any(&["raspberry pi 4", "compute module 4"]) {
        "pi4"
    } else if any(&["raspberry pi 3", "compute module 3", "raspberry pi 2"]) {
        "pi3"
    } else {
        // The first Pis (256–512 MB): the smallest budgets are the safe ones.
        "pi-zero-2w"
    })
}

/// The board for this machine: `flag` (from `--board`/`LANVAN_BOARD`) if given, else
/// detected from /proc/device-tree/model and the process environment.
pub fn choose(flag: Option<&str>) -> Result<Choice, String> {
    if let Some(name) = flag {
        let board = Board::named(name).ok_or_else(|| {
            let names: Vec<&str> = BOARDS.iter().map(|b| b.name).collect();
            format!(
                "unknown board `{name}`; the boards are {}",
                names.join(", ")
            )
        })?;
        return Ok(Choice {
            board,
            why: "chosen with --board".into(),
        });
    }
    let model = std::fs::read_to_string(MODEL_PATH).ok();
    Ok(detect(model.as_deref(), &|k| std::env::var(k).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load(board: &str, env: &[(&str, &str)]) -> Config {
        let b = Board::named(board).unwrap();
        let envf = |k: &str| {
            env.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        };
        let table = b.settings(&envf).unwrap();
        let vars = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_layered(Some(table), vars, None, &[]).unwrap()
    }

    #[test]
    fn every_profile_parses_into_valid_settings() {
        for b in BOARDS {
            let c = load(b.name, &[("HOME", "/home/someone")]);
            // Each one sets the budgets itself rather than inheriting them by accident.
            let table: toml::Table = b.toml.parse().unwrap();
            for key in ["http", "store", "ws", "relay", "data_dir"] {
                assert!(table.contains_key(key), "{} lacks {key}", b.name);
            }
            // The worst case of chunk bodies in memory plus the relay ring.
            let worst =
                c.store.max_chunks_in_flight as u64 * c.store.max_chunk_size + c.relay.memory;
            let limit = match b.name {
                "pi-zero-2w" => 32 << 20,
                "pi3" | "termux" => 64 << 20,
                _ => 512 << 20,
            };
            assert!(worst <= limit, "{}: {worst} bytes worst case", b.name);
        }
        assert_eq!(load("pi-zero-2w", &[]).relay.memory, 2 << 20);
        assert_eq!(load("pi5", &[]).store.chunk_size, 2 << 20);
        assert_eq!(load("pi4", &[]).data_dir, PathBuf::from("/var/lib/lanvan"));
    }

    #[test]
    fn models_pick_their_board() {
        let cases = [
            ("Raspberry Pi Zero 2 W Rev 1.0\0", "pi-zero-2w"),
            ("Raspberry Pi Zero W Rev 1.1", "pi-zero-2w"),
            ("Raspberry Pi 3 Model B Plus Rev 1.3", "pi3"),
            ("Raspberry Pi 3 Model B Rev 1.2", "pi3"),
            ("Raspberry Pi 2 Model B Rev 1.1", "pi3"),
            ("Raspberry Pi Compute Module 3 Plus Rev 1.0", "pi3"),
            ("Raspberry Pi 4 Model B Rev 1.4", "pi4"),
            ("Raspberry Pi 400 Rev 1.0", "pi4"),
            ("Raspberry Pi Compute Module 4 Rev 1.0", "pi4"),
            ("Raspberry Pi Compute Module 4S Rev 1.0", "pi4"),
            ("Raspberry Pi 5 Model B Rev 1.0", "pi5"),
            ("Raspberry Pi 500 Rev 1.0", "pi5"),
            ("Raspberry Pi Compute Module 5 Rev 1.0", "pi5"),
            ("Raspberry Pi Model B Rev 2", "pi-zero-2w"),
            ("Pine64 RockPro64 v2.1", "generic"),
        ];
        for (model, want) in cases {
            let got = detect(Some(model), &no_env);
            assert_eq!(got.board.name, want, "{model}");
            if want != "generic" {
                assert!(
                    got.why.contains(model.trim_end_matches('\0')),
                    "{}",
                    got.why
                );
            }
        }
        assert_eq!(detect(None, &no_env).board.name, "generic");
    }

    #[test]
    fn a_home_folder_is_needed_for_a_folder_under_it() {
        let termux = Board::named("termux").unwrap();
        let table = termux.settings(&no_env).unwrap();
        assert_eq!(table["data_dir"].as_str(), Some("lanvan-data"));
        let home = |k: &str| (k == "HOME").then(|| "/nonexistent/home".to_string());
        let table = termux.settings(&home).unwrap();
        assert_eq!(
            table["data_dir"].as_str(),
            Some("/nonexistent/home/lanvan-data")
        );
    }

    #[test]
    fn termux_wins_over_the_phones_device_tree() {
        let env = |k: &str| (k == "TERMUX_VERSION").then(|| "0.118.1".to_string());
        let got = detect(Some("Qualcomm Technologies, Inc. SM8250"), &env);
        assert_eq!(got.board.name, "termux");
        assert!(got.why.contains("0.118.1"));
    }

    #[test]
    fn board_names_are_checked() {
        assert_eq!(choose(Some("PI4")).unwrap().board.name, "pi4");
        let err = choose(Some("pi6")).unwrap_err();
        assert!(
            err.contains("pi-zero-2w") && err.contains("termux"),
            "{err}"
        );
    }

    #[test]
    fn env_file_and_flags_beat_the_board() {
        let dir = std::env::temp_dir().join(format!("lanvan-board-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[ws]\nsend_queue = 7\nmax_devices = 9\n").unwrap();
        let board = Board::named("pi-zero-2w")
            .unwrap()
            .settings(&no_env)
            .unwrap();
        let env = vec![
            ("LANVAN_HTTP_MAX_CONNECTIONS".to_string(), "100".to_string()),
            ("LANVAN_WS_SEND_QUEUE".to_string(), "5".to_string()),
        ];
        let flags = vec![("ws.max_devices".to_string(), "11".to_string())];
        let c = Config::load_layered(Some(board), env, Some(&file), &flags).unwrap();
        assert_eq!(c.relay.memory, 2 << 20, "from the board");
        assert_eq!(c.http.max_connections, 100, "env beats the board");
        assert_eq!(c.ws.send_queue, 7, "the file beats env");
        assert_eq!(c.ws.max_devices, 11, "flags beat the file");
        assert_eq!(c.store.max_chunks, 1 << 16, "the default where nobody says");
        std::fs::remove_dir_all(dir).ok();
    }
}
