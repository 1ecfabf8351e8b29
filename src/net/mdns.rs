//! Finding the box on the LAN by multicast DNS: [`Advert`] publishes `_lanvan._tcp` and
//! `_http._tcp` and answers for `HOSTNAME.local`; [`discover`] is `lanvan discover`.
//! mdns-sd does the protocol on its own thread; the loop only hands it commands and reads
//! its events, so a slow network never stalls the loop. Never sends on loopback.

use super::mdns_query;
use crate::config::MdnsConfig;
use mdns_sd::{DaemonEvent, IfKind, ServiceDaemon, ServiceEvent};
use mdns_sd::{ServiceInfo, UnregisterStatus};
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

/// The DNS-SD service type of a LANVan box; browsers find it under `_http._tcp` too.
pub const SERVICE_TYPE: &str = "_lanvan._tcp.local.";
const HTTP_SERVICE_TYPE: &str = "_http._tcp.local.";

/// Boxes `discover --watch` keeps track of at most.
const MAX_WATCHED: usize = 256;

/// How long shutdown waits for mdns-sd to send its goodbyes before giving up.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// This box's stable id, kept in `DATA/.lanvan/box-id` so that browsers and
/// `lanvan discover` can tell two boxes apart even when they share a name; made on first use.
pub fn box_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(".lanvan").join("box-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id.to_string());
        }
    }
    let mut raw = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
    let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(path.parent().unwrap_or(data_dir))?;
    // Written beside and renamed, so a crash never leaves half an id behind.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{id}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

/// The machine's host name, for the default display name.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this machine".into())
}

/// The box's name on the LAN, as `lanvan discover` shows it.
pub fn display_name(cfg: &MdnsConfig) -> String {
    if cfg.name.trim().is_empty() {
        format!("LANVan on {}", system_hostname())
    } else {
        cfg.name.trim().to_string()
    }
}

/// The box's advertisement: two registered services and the host name, kept up to date
/// by mdns-sd's thread as interfaces come and go. Dropped without [`Advert::stop`], the
/// records simply expire on other machines; `stop` says goodbye so they vanish at once.
pub struct Advert {
    daemon: ServiceDaemon,
    events: mdns_sd::Receiver<DaemonEvent>,
    fullnames: Vec<String>,
    host: String,
}

impl Advert {
    /// Starts advertising the box listening on `listen`, or returns None (and says why in
    /// the log) when mDNS is turned off, pointless (loopback only) or unavailable. A box
    /// that cannot advertise still serves: mDNS is a convenience, not a requirement.
    pub fn start(cfg: &MdnsConfig, listen: SocketAddr, box_id: &str) -> Option<Advert> {
        if !cfg.enabled {
            log::info!("mDNS is off (mdns.enabled = false)");
            return None;
        }
        if listen.ip().is_loopback() {
            log::info!("mDNS is off: the box listens on loopback only ({listen})");
            return None;
        }
        match Advert::try_start(cfg, listen, box_id) {
            Ok(advert) => Some(advert),
            Err(e) => {
                log::warn!("mDNS is off: {e}; the box is reachable by IP address only");
                None
            }
        }
    }

    fn try_start(cfg: &MdnsConfig, listen: SocketAddr, box_id: &str) -> Result<Advert, String> {
        let daemon = ServiceDaemon::new().map_err(|e| format!("cannot start mDNS: {e}"))?;
        let err = |e: mdns_sd::Error| format!("mDNS: {e}");
        daemon
            .disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
            .map_err(err)?;
        match listen.ip() {
            // IPv4 only: announcing IPv6 addresses would send phones where nothing listens.
            IpAddr::V4(ip) if ip.is_unspecified() => daemon.disable_interface(IfKind::IPv6),
            ip if ip.is_unspecified() => Ok(()),
            ip => daemon
                .disable_interface(IfKind::All)
                .and_then(|()| daemon.enable_interface(IfKind::Addr(ip))),
        }
        .map_err(err)?;
        daemon
            .set_ip_check_interval(cfg.interface_check_secs.max(1))
            .map_err(err)?;
        let events = daemon.monitor().map_err(err)?;

        let name = display_name(cfg);
        let host = format!("{}.local.", cfg.hostname);
        let port = listen.port().to_string();
        let version = env!("CARGO_PKG_VERSION");
        let txt = [
            ("id", box_id),
            ("name", name.as_str()),
            ("version", version),
            ("port", port.as_str()),
            ("api", "/api"),
            ("path", "/"),
        ];
        let addrs: &[IpAddr] = if listen.ip().is_unspecified() {
            &[]
        } else {
            &[listen.ip()]
        };
        let mut fullnames = Vec::new();
        for ty in [SERVICE_TYPE, HTTP_SERVICE_TYPE] {
            let mut info =
                ServiceInfo::new(ty, &name, &host, addrs, listen.port(), &txt[..]).map_err(err)?;
            if addrs.is_empty() {
                info = info.enable_addr_auto();
            }
            fullnames.push(info.get_fullname().to_string());
            daemon.register(info).map_err(err)?;
        }
        log::info!(
            "mDNS: advertising \"{name}\" as http://{}.local:{port}/ (box id {box_id})",
            cfg.hostname
        );
        Ok(Advert {
            daemon,
            events,
            fullnames,
            host,
        })
    }

    /// Logs what the mDNS thread reports: names changed after a conflict, addresses that
    /// came or went. Runs on the loop until the daemon stops; each event is one log line.
    pub async fn watch(&self) {
        // mdns-sd reports a rename once per record and interface; say it once.
        let mut renamed: Vec<(String, String)> = Vec::new();
        let mut host = self.host.trim_end_matches('.').to_string();
        while let Ok(event) = self.events.recv_async().await {
            match event {
                DaemonEvent::NameChange(change) => {
                    let pair = (change.original, change.new_name);
                    if renamed.contains(&pair) || renamed.len() >= 64 {
                        continue;
                    }
                    let (old, new) = (pair.0.trim_end_matches('.'), pair.1.trim_end_matches('.'));
                    log::warn!(
                        "mDNS: `{old}` is taken by another machine on the LAN; this box is now `{new}`"
                    );
                    if old == host {
                        host = new.to_string();
                    }
                    renamed.push(pair);
                }
                DaemonEvent::IpAdd(ip) => log::info!("mDNS: {host} now answers at {ip}"),
                DaemonEvent::IpDel(ip) => log::info!("mDNS: {host} no longer answers at {ip}"),
                DaemonEvent::Announce(name, host_and_interface) => {
                    let interface = host_and_interface
                        .rsplit_once(':')
                        .map_or(host_and_interface.as_str(), |(_, i)| i);
                    log::info!("mDNS: announced {name} on {interface}")
                }
                DaemonEvent::Error(e) => log::warn!("mDNS: {e}"),
                _ => {}
            }
        }
    }

    /// Unregisters both services (mdns-sd sends goodbye packets, TTL 0, on every
    /// interface, so browsers drop the box at once), then stops the mDNS thread.
    pub async fn stop(&self) {
        let deadline = Instant::now() + GOODBYE_TIMEOUT;
        for name in &self.fullnames {
            let Ok(status) = self.daemon.unregister(name) else {
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let done = smol::future::or(async { status.recv_async().await.ok() }, async {
                smol::Timer::after(left).await;
                None
            })
            .await;
            if !matches!(done, Some(UnregisterStatus::OK)) {
                log::warn!("mDNS: no goodbye sent for {name}");
            }
        }
        if let Ok(status) = self.daemon.shutdown() {
            let left = deadline.saturating_duration_since(Instant::now());
            smol::future::or(async { status.recv_async().await.ok() }, async {
                smol::Timer::after(left).await;
                None
            })
            .await;
        }
        log::info!("mDNS: said goodbye");
    }
}

/// What `lanvan discover` should do.
pub struct DiscoverOptions {
    /// How long to listen for answers (ignored with `watch`).
    pub timeout: Duration,
    /// Keep listening and report boxes as they come and go (multicast announcements and
    /// goodbyes, through mdns-sd).
    pub watch: bool,
    /// One JSON object per line instead of a table.
    pub json: bool,
    /// Resolve this host name (`lanvan.local`) instead of browsing for boxes.
    pub host: Option<String>,
}

/// One box found on the LAN.
#[derive(Clone, Debug, PartialEq)]
struct Found {
    name: String,
    host: String,
    addresses: Vec<String>,
    port: u16,
    version: String,
    id: String,
}

impl Found {
    fn url(&self) -> String {
        format!("http://{}:{}/", self.host.trim_end_matches('.'), self.port)
    }

    fn json(&self, event: &str) -> serde_json::Value {
        serde_json::json!({
            "event": event,
            "name": self.name,
            "host": self.host.trim_end_matches('.'),
            "addresses": self.addresses,
            "port": self.port,
            "version": self.version,
            "id": self.id,
            "url": self.url(),
        })
    }

    fn line(&self) -> String {
        format!(
            "{:<28} {:<32} {:<8} {}",
            self.name,
            self.url(),
            self.version,
            self.addresses.join(", ")
        )
    }
}

/// `lanvan discover`: lists the boxes that answer on the LAN within `timeout`, or with
/// `watch` reports them as they come and go until interrupted. Returns whether anything
/// was found. With `host`, resolves that name instead and prints its addresses.
pub fn discover(opts: &DiscoverOptions) -> Result<bool, String> {
    if let Some(host) = &opts.host {
        return resolve(host, opts);
    }
    if opts.watch {
        return watch(opts);
    }
    // One legacy-unicast question, answered at once by every box (see `mdns_query`).
    let records = mdns_query::ask(SERVICE_TYPE, mdns_query::TYPE_PTR, opts.timeout, |_| false)
        .map_err(|e| format!("mDNS: {e}"))?;
    let boxes: Vec<Found> = mdns_query::instances(SERVICE_TYPE, &records)
        .into_iter()
        .map(|i| Found {
            // The instance name, not the TXT name: it is the one made unique on the LAN
            // (`LANVan on pi (2)` when two boxes share a name).
            name: instance_name(&i.fullname),
            host: i.host.clone(),
            addresses: i.addresses.iter().map(|a| a.to_string()).collect(),
            port: i.port,
            version: i.txt.get("version").cloned().unwrap_or_default(),
            id: i.txt.get("id").cloned().unwrap_or_default(),
        })
        .collect();
    if boxes.is_empty() {
        eprintln!(
            "no LANVan box answered within {} ms",
            opts.timeout.as_millis()
        );
        return Ok(false);
    }
    if !opts.json {
        println!(
            "{:<28} {:<32} {:<8} ADDRESSES",
            "NAME", "ADDRESS TO OPEN", "VERSION"
        );
    }
    for found in &boxes {
        print_found(found, "found", opts.json);
    }
    Ok(true)
}

/// `lanvan discover --watch`: mdns-sd browses and follows announcements and goodbyes.
fn watch(opts: &DiscoverOptions) -> Result<bool, String> {
    let daemon = ServiceDaemon::new().map_err(|e| format!("cannot start mDNS: {e}"))?;
    let err = |e: mdns_sd::Error| format!("mDNS: {e}");
    daemon
        .disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
        .map_err(err)?;
    let events = daemon.browse(SERVICE_TYPE).map_err(err)?;
    // Keyed by the instance's full name, which is unique on the LAN.
    let mut boxes: BTreeMap<String, Found> = BTreeMap::new();
    while let Ok(event) = events.recv() {
        match event {
            ServiceEvent::ServiceResolved(info) => {
                let txt = |k: &str| info.get_property_val_str(k).unwrap_or("").to_string();
                let mut addresses: Vec<String> =
                    info.get_addresses().iter().map(|a| a.to_string()).collect();
                addresses.sort();
                let found = Found {
                    name: instance_name(info.get_fullname()),
                    host: info.get_hostname().to_string(),
                    addresses,
                    port: info.get_port(),
                    version: txt("version"),
                    id: txt("id"),
                };
                let fullname = info.get_fullname().to_string();
                // A LAN answering with endless names cannot grow this without end.
                if boxes.len() >= MAX_WATCHED && !boxes.contains_key(&fullname) {
                    continue;
                }
                if boxes.get(&fullname) != Some(&found) {
                    print_found(&found, "found", opts.json);
                }
                boxes.insert(fullname, found);
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                if let Some(gone) = boxes.remove(&fullname) {
                    print_found(&gone, "gone", opts.json);
                }
            }
            _ => {}
        }
    }
    Err("mDNS stopped".into())
}

fn print_found(found: &Found, event: &str, json: bool) {
    if json {
        println!("{}", found.json(event));
    } else if event == "found" {
        println!("{}", found.line());
    } else {
        println!("gone: {}", found.line());
    }
}

/// `Name._lanvan._tcp.local.` → `Name`.
fn instance_name(fullname: &str) -> String {
    let cut = fullname.len().saturating_sub(SERVICE_TYPE.len());
    let name = match (fullname.get(..cut), fullname.get(cut..)) {
        (Some(head), Some(tail)) if tail.eq_ignore_ascii_case(SERVICE_TYPE) => head,
        _ => fullname,
    };
    name.trim_end_matches('.').to_string()
}

/// `lanvan discover --host NAME`: asks for NAME's IPv4 address as a phone would.
fn resolve(host: &str, opts: &DiscoverOptions) -> Result<bool, String> {
    let host = host.trim_end_matches('.').to_lowercase();
    let host = if host.ends_with(".local") {
        format!("{host}.")
    } else {
        format!("{host}.local.")
    };
    let records = mdns_query::ask(&host, mdns_query::TYPE_A, opts.timeout, |r| {
        !mdns_query::addresses_of(&host, r).is_empty()
    })
    .map_err(|e| format!("mDNS: {e}"))?;
    let addrs: Vec<String> = mdns_query::addresses_of(&host, &records)
        .iter()
        .map(|a| a.to_string())
        .collect();
    let shown = host.trim_end_matches('.');
    if addrs.is_empty() {
        eprintln!(
            "{shown} did not answer within {} ms",
            opts.timeout.as_millis()
        );
        return Ok(false);
    }
    if opts.json {
        println!(
            "{}",
            serde_json::json!({"event": "resolved", "host": shown, "addresses": addrs})
        );
    } else {
        println!("{shown} {}", addrs.join(" "));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_id_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("lanvan-boxid-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = box_id(&dir).unwrap();
        assert_eq!(first.len(), 16);
        assert_eq!(box_id(&dir).unwrap(), first);
        // A damaged id is replaced, not trusted.
        std::fs::write(dir.join(".lanvan/box-id"), "garbage").unwrap();
        let fresh = box_id(&dir).unwrap();
        assert_eq!(fresh.len(), 16);
        assert_eq!(box_id(&dir).unwrap(), fresh);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn instance_names_lose_their_type() {
        assert_eq!(
            instance_name("LANVan on pi._lanvan._tcp.local."),
            "LANVan on pi"
        );
        assert_eq!(instance_name("Küche (2)._LANVAN._tcp.local."), "Küche (2)");
        assert_eq!(instance_name("İ"), "İ");
    }
}
