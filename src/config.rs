//! The box's settings: defaults, then the board profile, then `LANVAN_*` environment
//! variables, then the TOML file named by `--config`, then command-line flags (each later
//! source wins).
//! Every limit a client could push against lives here, so memory is a budget set at start.
//! Never read after start-up: the running box gets an immutable copy.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// All settings of `lanvan serve`. Field names are the TOML keys; the environment variable
/// of `http.max_connections` is `LANVAN_HTTP_MAX_CONNECTIONS`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on; `[::]:8080` listens on IPv6 and IPv4 alike.
    pub listen: String,
    /// Folder for stored files and unfinished uploads; created if missing.
    pub data_dir: PathBuf,
    /// error, warn, info, debug or trace.
    pub log_level: String,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub ws: WsConfig,
    pub relay: RelayConfig,
    pub mdns: MdnsConfig,
    pub termux: TermuxConfig,
    pub p2p: P2pConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Seconds a client has to send a whole request head.
    pub header_timeout_secs: u64,
    /// Seconds a request body may stall between two reads.
    pub body_timeout_secs: u64,
    /// Seconds an idle keep-alive connection is kept open.
    pub keepalive_timeout_secs: u64,
    /// Largest request head (request line and headers) accepted, in bytes.
    #[serde(with = "bytesize")]
    pub max_header_bytes: u64,
    /// Open TCP connections at most; more are answered 503 and closed.
    pub max_connections: usize,
    /// Largest JSON request body, in bytes.
    #[serde(with = "bytesize")]
    pub max_json_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Chunk size the box hands out for uploads (grown for huge files to stay under max_chunks).
    #[serde(with = "bytesize")]
    pub chunk_size: u64,
    /// Largest chunk size, and so the largest chunk body held in memory per request.
    #[serde(with = "bytesize")]
    pub max_chunk_size: u64,
    /// Chunks per upload at most; with max_chunk_size this caps the file size.
    pub max_chunks: u32,
    /// Bytes of stored files plus open uploads at most; 0 means only free space limits.
    #[serde(with = "bytesize")]
    pub quota: u64,
    /// Free space always left on the disk.
    #[serde(with = "bytesize")]
    pub min_free: u64,
    /// Unfinished uploads at most.
    pub max_open_uploads: usize,
    /// Hours an unfinished upload may receive nothing before it is deleted.
    pub upload_ttl_hours: u64,
    /// Stored files at most.
    pub max_files: usize,
    /// Longest file name, in bytes of UTF-8.
    pub max_name_bytes: usize,
    /// Chunk bodies in memory at once across all uploads (each up to max_chunk_size).
    pub max_chunks_in_flight: usize,
    /// Chunk manifests of stored files kept in memory (each 32 bytes per chunk); the rest
    /// are read back from `.lanvan/manifests/` when needed.
    pub max_cached_manifests: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Largest WebSocket message accepted, in bytes.
    #[serde(with = "bytesize")]
    pub max_message_bytes: u64,
    /// Messages queued for one device at most; a device that falls this far behind is dropped.
    pub send_queue: usize,
    /// Seconds between pings the box sends.
    pub heartbeat_interval_secs: u64,
    /// Seconds of silence after which a socket is considered dead.
    pub heartbeat_timeout_secs: u64,
    /// Devices connected at once at most.
    pub max_devices: usize,
    /// Largest clipboard text, in bytes.
    #[serde(with = "bytesize")]
    pub clipboard_max_bytes: u64,
    /// Clipboard items kept in the history.
    pub clipboard_history: usize,
    /// Messages per second one device may send (bursts of twice that are allowed).
    pub messages_per_sec: u32,
}

/// Device-to-device sends through the box.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Memory for the relay's chunk ring, allocated once at start and never grown.
    #[serde(with = "bytesize")]
    pub memory: u64,
    /// Bytes per relayed chunk (one ring slot); the ring has `memory / chunk_size` slots.
    #[serde(with = "bytesize")]
    pub chunk_size: u64,
    /// Transfers open at once (offered, running, paused or being stored), box-wide.
    pub max_transfers: usize,
    /// Transfers one device may take part in at once, as sender or receiver.
    pub max_transfers_per_device: usize,
    /// Seconds a transfer waits for a dropped socket to come back before it fails.
    pub grace_secs: u64,
    /// Longest a sender may wait for an accept, in seconds (the offer names its own
    /// timeout, cut to this).
    pub offer_timeout_secs: u64,
    /// Seconds a send left in a device's inbox is kept before it is deleted.
    pub inbox_ttl_secs: u64,
    /// Sends waiting in inboxes at most, box-wide (their bytes count against store.quota).
    pub max_inbox: usize,
    /// Devices one device may mark for auto-accept.
    pub max_auto_accept: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            memory: 8 << 20,
            chunk_size: 256 << 10,
            max_transfers: 64,
            max_transfers_per_device: 16,
            grace_secs: 30,
            offer_timeout_secs: 600,
            inbox_ttl_secs: 7 * 24 * 3600,
            max_inbox: 256,
            max_auto_accept: 64,
        }
    }
}

impl RelayConfig {
    /// Slots of the chunk ring.
    pub fn slots(&self) -> usize {
        (self.memory / self.chunk_size.max(1)) as usize
    }
}

/// Whether browsers may send to each other directly (WebRTC), and what the box does for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum P2pMode {
    /// No P2P: `enable_p2p` is refused and no STUN socket is opened.
    #[serde(rename = "off")]
    Off,
    /// P2P when both users ask for it, falling back to the relay (the default).
    #[serde(rename = "hybrid")]
    Hybrid,
    /// Browsers try P2P for every send between two P2P-enabled devices.
    #[serde(rename = "p2p-first")]
    P2pFirst,
}

impl P2pMode {
    pub fn as_str(self) -> &'static str {
        match self {
            P2pMode::Off => "off",
            P2pMode::Hybrid => "hybrid",
            P2pMode::P2pFirst => "p2p-first",
        }
    }
}

/// Direct browser-to-browser sends: signaling limits and the STUN responder.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// `off`, `hybrid` or `p2p-first`.
    pub mode: P2pMode,
    /// UDP port of the STUN binding responder, on the HTTP listen address; 0 picks a free
    /// port (tests). A port that is taken leaves the box running without STUN.
    pub stun_port: u16,
    /// Seconds a request may wait for an answer, and a session for signaling, before it
    /// fails (`p2p_connection_failed`); each signal restarts the wait.
    pub signal_timeout_secs: u64,
    /// Requests and sessions one device takes part in at once.
    pub max_sessions_per_device: usize,
    /// Unanswered requests one device may have out at once.
    pub max_pending_requests: usize,
    /// `p2p_request`s one device may send per minute.
    pub requests_per_minute: u32,
    /// Largest SDP (offer or answer) forwarded, in bytes of JSON.
    #[serde(with = "bytesize")]
    pub max_sdp_bytes: u64,
    /// Largest ICE candidate forwarded, in bytes of JSON.
    #[serde(with = "bytesize")]
    pub max_candidate_bytes: u64,
    /// Families on `/signal` at once.
    pub max_families: usize,
    /// Devices in one family at once.
    pub max_family_devices: usize,
    /// STUN datagrams read per wake-up of the event loop before other work gets a turn.
    pub stun_batch: usize,
    /// Manifests one device may `announce` to the tracker at once.
    pub max_announced: usize,
    /// WebRTC peers the box itself holds at once (the box as a chunk source, `rtc_offer`).
    pub max_box_peers: usize,
    /// Box peers one device's socket may hold at once.
    pub max_box_peers_per_device: usize,
    /// Seconds of silence after which a box peer is dropped as gone.
    pub box_peer_timeout_secs: u64,
    /// Bytes a box peer's data channel may hold unacknowledged; beyond it the box waits.
    #[serde(with = "bytesize")]
    pub box_peer_send_buffer: u64,
    /// Datagrams read from a box peer socket per wake-up before other work gets a turn.
    pub rtc_batch: usize,
    /// Chunk reads one box peer may have asked of the disk before their chunks are sent
    /// (read-ahead, so the box reads the next chunks while it sends one).
    pub box_peer_read_ahead: usize,
    /// Chunk reads all box peers together may have so asked; with the chunks being sent,
    /// this bounds the chunk bytes box peers hold in memory.
    pub box_reads_in_flight: usize,
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            mode: P2pMode::Hybrid,
            stun_port: 3478,
            signal_timeout_secs: 60,
            max_sessions_per_device: 8,
            max_pending_requests: 4,
            requests_per_minute: 30,
            max_sdp_bytes: 32 * 1024,
            max_candidate_bytes: 2048,
            max_families: 64,
            max_family_devices: 32,
            stun_batch: 64,
            max_announced: 64,
            max_box_peers: 16,
            max_box_peers_per_device: 2,
            box_peer_timeout_secs: 5,
            box_peer_send_buffer: 1024 * 1024,
            rtc_batch: 64,
            box_peer_read_ahead: 4,
            box_reads_in_flight: 16,
        }
    }
}

/// Finding the box by name on the LAN (multicast DNS, DNS-SD).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MdnsConfig {
    /// Advertise the box (`_lanvan._tcp`, `_http._tcp`) and answer for `hostname`.local.
    /// Always off while the box listens on loopback only.
    pub enabled: bool,
    /// Host name without `.local`: phones reach `http://HOSTNAME.local:PORT/`. Letters,
    /// digits and `-`; a box that finds the name taken on the LAN takes `HOSTNAME-2`.
    pub hostname: String,
    /// Name `lanvan discover` and service browsers show; empty: `LANVan on <host name>`.
    pub name: String,
    /// Seconds between checks for network interfaces and addresses that came or went.
    pub interface_check_secs: u32,
}

impl Default for MdnsConfig {
    fn default() -> Self {
        MdnsConfig {
            enabled: true,
            hostname: "lanvan".into(),
            name: String::new(),
            interface_check_secs: 5,
        }
    }
}

impl MdnsConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let h = &self.hostname;
        let ok = !h.is_empty()
            && h.len() <= 63
            && !h.starts_with('-')
            && !h.ends_with('-')
            && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if self.enabled && !ok {
            return Err(ConfigError(format!(
                "mdns.hostname `{h}` must be 1 to 63 letters, digits or `-` (no `.local`)"
            )));
        }
        if self.name.len() > 63 {
            return Err(ConfigError("mdns.name is limited to 63 bytes".into()));
        }
        Ok(())
    }
}

/// Running on an Android phone in Termux (only read when Termux is detected).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TermuxConfig {
    /// Seconds between readings of `termux-battery-status`; 0 reads it only at start.
    pub battery_check_secs: u64,
}

impl Default for TermuxConfig {
    fn default() -> Self {
        TermuxConfig {
            battery_check_secs: 60,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8080".into(),
            data_dir: PathBuf::from("lanvan-data"),
            log_level: "info".into(),
            http: HttpConfig::default(),
            store: StoreConfig::default(),
            ws: WsConfig::default(),
            relay: RelayConfig::default(),
            mdns: MdnsConfig::default(),
            termux: TermuxConfig::default(),
            p2p: P2pConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            keepalive_timeout_secs: 60,
            max_header_bytes: 16 * 1024,
            max_connections: 256,
            max_json_bytes: 64 * 1024,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            chunk_size: 1 << 20,
            max_chunk_size: 16 << 20,
            max_chunks: 1 << 16,
            quota: 0,
            min_free: 16 << 20,
            max_open_uploads: 64,
            upload_ttl_hours: 48,
            max_files: 10_000,
            max_name_bytes: 200,
            max_chunks_in_flight: 8,
            max_cached_manifests: 16,
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            // Above the hub's own limit for a clipboard message (64 KiB of text, escaped),
            // so an oversized clipboard gets a `too_large` reply, not a closed socket.
            max_message_bytes: 512 * 1024,
            send_queue: 256,
            heartbeat_interval_secs: 5,
            heartbeat_timeout_secs: 15,
            max_devices: 64,
            clipboard_max_bytes: 64 * 1024,
            clipboard_history: 20,
            messages_per_sec: 50,
        }
    }
}

/// A setting that could not be used, with what to change.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Builds the settings from the environment (`LANVAN_*`), an optional TOML file and
    /// `key=value` overrides from the command line, in rising precedence.
    pub fn load(
        env: impl IntoIterator<Item = (String, String)>,
        file: Option<&std::path::Path>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        Config::load_layered(None, env, file, overrides)
    }

    /// As [`Config::load`], with a board profile's settings (see `board`) as the layer
    /// between the defaults and the environment.
    pub fn load_layered(
        board: Option<toml::Table>,
        env: impl IntoIterator<Item = (String, String)>,
        file: Option<&std::path::Path>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError(format!("default settings: {e}")))?;
        let keys = leaf_keys(&table);
        if let Some(board) = board {
            merge(&mut table, board);
        }
        let env: std::collections::HashMap<String, String> = env.into_iter().collect();
        for key in &keys {
            let var = format!("LANVAN_{}", key.replace('.', "_").to_uppercase());
            if let Some(value) = env.get(&var) {
                set_key(&mut table, key, parse_value(value));
            }
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
            let from_file: toml::Table = text
                .parse()
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            merge(&mut table, from_file);
        }
        for (key, value) in overrides {
            if !keys.contains(key) {
                return Err(ConfigError(format!(
                    "unknown setting `{key}`; `lanvan config` lists them all"
                )));
            }
            set_key(&mut table, key, parse_value(value));
        }
        let config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(format!("settings: {e}")))?;
        config.check()?;
        Ok(config)
    }

    /// Rejects combinations the box cannot run with.
    fn check(&self) -> Result<(), ConfigError> {
        let s = &self.store;
        if s.chunk_size < 4096 || s.chunk_size > s.max_chunk_size {
            return Err(ConfigError(
                "store.chunk_size must be at least 4 KiB and at most store.max_chunk_size".into(),
            ));
        }
        if s.max_chunks == 0 || s.max_chunks_in_flight == 0 {
            return Err(ConfigError(
                "store.max_chunks and store.max_chunks_in_flight must be at least 1".into(),
            ));
        }
        if self.ws.send_queue == 0 || self.http.max_connections == 0 {
            return Err(ConfigError(
                "ws.send_queue and http.max_connections must be at least 1".into(),
            ));
        }
        self.mdns.check()?;
        let r = &self.relay;
        if r.chunk_size < 4096 || r.chunk_size > 16 << 20 {
            return Err(ConfigError(
                "relay.chunk_size must be at least 4 KiB and at most 16 MiB".into(),
            ));
        }
        if r.slots() == 0 || r.slots() > u16::MAX as usize || r.max_transfers == 0 {
            return Err(ConfigError(
                "relay.memory must hold 1 to 65535 chunks of relay.chunk_size, and relay.max_transfers must be at least 1".into(),
            ));
        }
        let p = &self.p2p;
        if p.signal_timeout_secs == 0 || p.max_sessions_per_device == 0 || p.stun_batch == 0 {
            return Err(ConfigError(
                "p2p.signal_timeout_secs, p2p.max_sessions_per_device and p2p.stun_batch must be at least 1".into(),
            ));
        }
        if p.box_peer_timeout_secs == 0 || p.rtc_batch == 0 || p.box_peer_send_buffer < 128 * 1024 {
            return Err(ConfigError(
                "p2p.box_peer_timeout_secs and p2p.rtc_batch must be at least 1, and p2p.box_peer_send_buffer at least 128 KiB (two chunk pieces)".into(),
            ));
        }
        if p.box_peer_read_ahead == 0 || p.box_reads_in_flight == 0 {
            return Err(ConfigError(
                "p2p.box_peer_read_ahead and p2p.box_reads_in_flight must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The settings as TOML, for `lanvan config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// Dotted paths of every leaf setting (`http.max_connections`, `listen`, ...).
fn leaf_keys(table: &toml::Table) -> Vec<String> {
    let mut keys = Vec::new();
    for (k, v) in table {
        match v {
            toml::Value::Table(inner) => {
                keys.extend(leaf_keys(inner).into_iter().map(|sub| format!("{k}.{sub}")))
            }
            _ => keys.push(k.clone()),
        }
    }
    keys
}

fn set_key(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        Some((head, rest)) => {
            if let Some(toml::Value::Table(inner)) = table.get_mut(head) {
                set_key(inner, rest, value);
            }
        }
        None => {
            table.insert(key.to_string(), value);
        }
    }
}

fn merge(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// A value from the environment or a flag: a TOML literal if it is one (`42`, `true`),
/// otherwise the text itself (`0.0.0.0:8080`, `64MiB`).
fn parse_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// Byte sizes written as a number or as text with a unit: `65536`, `"64KiB"`, `"8 MiB"`, `"1G"`.
mod bytesize {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(n),
            Raw::Text(t) => parse(&t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{t}` is not a size; write bytes or a number with KiB, MiB or GiB"
                ))
            }),
        }
    }

    pub fn parse(text: &str) -> Option<u64> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().ok()?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return None,
        };
        n.checked_mul(mult)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(Vec::new(), None, &[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080");
        assert_eq!(c.store.chunk_size, 1 << 20);
    }

    #[test]
    fn flags_beat_file_beat_env() {
        let dir = std::env::temp_dir().join(format!("lanvan-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9\"\n[http]\nmax_connections = 7\n",
        )
        .unwrap();
        let e = env(&[
            ("LANVAN_LISTEN", "127.0.0.1:1"),
            ("LANVAN_HTTP_MAX_CONNECTIONS", "5"),
            ("LANVAN_STORE_QUOTA", "2MiB"),
            ("LANVAN_WS_SEND_QUEUE", "3"),
        ]);
        let flags = vec![("ws.send_queue".to_string(), "4".to_string())];
        let c = Config::load(e, Some(&file), &flags).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9");
        assert_eq!(c.http.max_connections, 7);
        assert_eq!(c.store.quota, 2 << 20);
        assert_eq!(c.ws.send_queue, 4);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn unknown_and_bad_settings_are_refused() {
        let bad = vec![("http.nope".to_string(), "1".to_string())];
        assert!(Config::load(Vec::new(), None, &bad).is_err());
        let bad = vec![("store.quota".to_string(), "lots".to_string())];
        let err = Config::load(Vec::new(), None, &bad).unwrap_err();
        assert!(err.0.contains("not a size"), "{err}");
        let bad = vec![("store.chunk_size".to_string(), "100".to_string())];
        assert!(Config::load(Vec::new(), None, &bad).is_err());
    }

    #[test]
    fn box_read_ahead_settings_are_checked() {
        let c = Config::load(Vec::new(), None, &[]).unwrap();
        assert_eq!(
            (c.p2p.box_peer_read_ahead, c.p2p.box_reads_in_flight),
            (4, 16)
        );
        for key in ["p2p.box_peer_read_ahead", "p2p.box_reads_in_flight"] {
            let flags = vec![(key.to_string(), "0".to_string())];
            let e = Config::load(Vec::new(), None, &flags).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn relay_settings_are_checked() {
        let c = Config::load(Vec::new(), None, &[]).unwrap();
        assert_eq!(c.relay.slots(), 32);
        for bad in [("relay.chunk_size", "1KiB"), ("relay.memory", "100KiB")] {
            let flags = vec![(bad.0.to_string(), bad.1.to_string())];
            assert!(Config::load(Vec::new(), None, &flags).is_err(), "{bad:?}");
        }
        let ok = vec![("relay.memory".to_string(), "1MiB".to_string())];
        assert_eq!(
            Config::load(Vec::new(), None, &ok).unwrap().relay.slots(),
            4
        );
    }

    #[test]
    fn p2p_mode_parses_from_every_source() {
        let c = Config::load(Vec::new(), None, &[]).unwrap();
        assert_eq!(c.p2p.mode, P2pMode::Hybrid);
        assert_eq!(c.p2p.stun_port, 3478);
        let e = env(&[("LANVAN_P2P_MODE", "off")]);
        assert_eq!(Config::load(e, None, &[]).unwrap().p2p.mode, P2pMode::Off);
        let flags = vec![("p2p.mode".to_string(), "p2p-first".to_string())];
        let c = Config::load(Vec::new(), None, &flags).unwrap();
        assert_eq!(c.p2p.mode, P2pMode::P2pFirst);
        assert!(c.to_toml().contains("mode = \"p2p-first\""));
        let bad = vec![("p2p.mode".to_string(), "always".to_string())];
        assert!(Config::load(Vec::new(), None, &bad).is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(bytesize::parse("64KiB"), Some(65536));
        assert_eq!(bytesize::parse("8 MiB"), Some(8 << 20));
        assert_eq!(bytesize::parse("1g"), Some(1 << 30));
        assert_eq!(bytesize::parse("12"), Some(12));
        assert_eq!(bytesize::parse("x"), None);
    }
}
