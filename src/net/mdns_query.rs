//! One-shot mDNS questions the way a phone's resolver asks them: a "legacy unicast" query
//! (RFC 6762 §6.7) from an ephemeral port, which responders answer at once and straight
//! back, without the one-second multicast rate limit that would hide a box from a second
//! `lanvan discover` run in quick succession. Used by the `lanvan discover` command only;
//! IPv4 interfaces only. The packet code is pure; [`ask`] is the small blocking client.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const MDNS_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
const MDNS_PORT: u16 = 5353;
pub const TYPE_A: u16 = 1;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
/// Records kept from all answers together: a LAN full of hostile responders cannot make
/// the command grow without end.
const MAX_RECORDS: usize = 4096;

/// One resource record from an answer, with the names spelled out as sent (DNS names
/// compare case-insensitively; the case is kept for showing them).
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Ptr {
        name: String,
        target: String,
    },
    Srv {
        name: String,
        port: u16,
        host: String,
    },
    Txt {
        name: String,
        pairs: Vec<(String, String)>,
    },
    Addr {
        name: String,
        ip: IpAddr,
    },
}

/// A query for `name` of type `qtype` with message id `id`.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + name.len() + 6);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]); // flags 0; one question
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len().min(63) as u8);
        out.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // class IN
    out
}

/// The records of a response with message id `id`; None if it is not one (a query,
/// another id, or bytes that do not parse). Records of other types are skipped.
pub fn parse_response(id: u16, packet: &[u8]) -> Option<Vec<Record>> {
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]))
    };
    if u16_at(0)? != id || u16_at(2)? & 0x8000 == 0 {
        return None;
    }
    let counts = [u16_at(4)?, u16_at(6)?, u16_at(8)?, u16_at(10)?];
    let mut at = 12;
    for _ in 0..counts[0] {
        let (_, next) = read_name(packet, at)?;
        at = next + 4;
    }
    let mut records = Vec::new();
    let total = counts[1] as usize + counts[2] as usize + counts[3] as usize;
    for _ in 0..total {
        let (name, next) = read_name(packet, at)?;
        let ty = u16_at(next)?;
        let len = u16_at(next + 8)? as usize;
        let start = next + 10;
        let data = packet.get(start..start + len)?;
        at = start + len;
        let record = match ty {
            TYPE_PTR => Record::Ptr {
                name,
                target: read_name(packet, start)?.0,
            },
            TYPE_SRV if len >= 6 => Record::Srv {
                name,
                port: u16::from_be_bytes([data[4], data[5]]),
                host: read_name(packet, start + 6)?.0,
            },
            TYPE_TXT => Record::Txt {
                name,
                pairs: txt_pairs(data),
            },
            TYPE_A if len == 4 => Record::Addr {
                name,
                ip: IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
            },
            TYPE_AAAA if len == 16 => Record::Addr {
                name,
                ip: IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?)),
            },
            _ => continue,
        };
        records.push(record);
    }
    Some(records)
}

/// A name at `at`, following compression pointers (at most 32, so loops end); returns
/// the name and the offset just after it in the record.
fn read_name(packet: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    for _ in 0..32 {
        let len = *packet.get(at)? as usize;
        match len {
            0 => {
                let name = labels.join(".") + ".";
                return Some((name, end.unwrap_or(at + 1)));
            }
            l if l & 0xC0 == 0xC0 => {
                let ptr = (l & 0x3F) << 8 | *packet.get(at + 1)? as usize;
                end.get_or_insert(at + 2);
                at = ptr;
            }
            l if l <= 63 => {
                let label = packet.get(at + 1..at + 1 + l)?;
                labels.push(String::from_utf8_lossy(label).into_owned());
                at += 1 + l;
            }
            _ => return None,
        }
    }
    None
}

/// `key=value` strings of a TXT record; keys lower-cased (they are case-insensitive).
fn txt_pairs(mut data: &[u8]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let len = (len as usize).min(rest.len());
        let text = String::from_utf8_lossy(&rest[..len]);
        let (k, v) = text.split_once('=').unwrap_or((&text, ""));
        pairs.push((k.to_ascii_lowercase(), v.to_string()));
        data = &rest[len..];
    }
    pairs
}

/// The IPv4 addresses of this machine's interfaces that are up, not loopback, and can
/// multicast, with the interface's name.
fn multicast_interfaces() -> Vec<(String, Ipv4Addr)> {
    use nix::net::if_::InterfaceFlags as F;
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter(|ifa| {
            ifa.flags.contains(F::IFF_UP | F::IFF_MULTICAST) && !ifa.flags.contains(F::IFF_LOOPBACK)
        })
        .filter_map(|ifa| {
            let ip = ifa.address?.as_sockaddr_in()?.ip();
            Some((ifa.interface_name, ip))
        })
        .collect()
}

/// Asks `name`/`qtype` on every usable IPv4 interface, again at 250 ms and 600 ms in case
/// a packet was lost, and gathers every answer until `timeout`. `done` may end it early
/// when what has arrived is enough. Records are deduplicated.
pub fn ask(
    name: &str,
    qtype: u16,
    timeout: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> std::io::Result<Vec<Record>> {
    let mut sockets = Vec::new();
    for (_, ip) in multicast_interfaces() {
        // Bound to the interface's address, Linux sends multicast out of that interface.
        let Ok(sock) = UdpSocket::bind((ip, 0)) else {
            continue;
        };
        sock.set_multicast_ttl_v4(255)?;
        sock.set_nonblocking(true)?;
        sockets.push(sock);
    }
    let mut raw = [0u8; 2];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = f.read_exact(&mut raw);
    }
    let id = u16::from_ne_bytes(raw);
    let query = encode_query(id, name, qtype);
    let start = Instant::now();
    let mut resend = [
        Duration::ZERO,
        Duration::from_millis(250),
        Duration::from_millis(600),
    ]
    .into_iter()
    .peekable();
    let mut records: Vec<Record> = Vec::new();
    let mut buf = vec![0u8; 9000];
    while start.elapsed() < timeout {
        if resend.peek().is_some_and(|at| start.elapsed() >= *at) {
            resend.next();
            for sock in &sockets {
                let _ = sock.send_to(&query, (MDNS_GROUP, MDNS_PORT));
            }
        }
        let mut got = false;
        for sock in &sockets {
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                got = true;
                if from.port() != MDNS_PORT {
                    continue;
                }
                for r in parse_response(id, &buf[..n]).unwrap_or_default() {
                    if records.len() < MAX_RECORDS && !records.contains(&r) {
                        records.push(r);
                    }
                }
            }
        }
        if done(&records) {
            break;
        }
        if !got {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(records)
}

/// A service instance assembled from PTR, SRV, TXT and address records.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub fullname: String,
    pub host: String,
    pub port: u16,
    pub txt: BTreeMap<String, String>,
    pub addresses: Vec<IpAddr>,
}

/// The instances of `service_type` that `records` describe completely (with SRV).
pub fn instances(service_type: &str, records: &[Record]) -> Vec<Instance> {
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let mut out = Vec::new();
    for r in records {
        let Record::Ptr { name, target } = r else {
            continue;
        };
        if !same(name, service_type) || out.iter().any(|i: &Instance| same(&i.fullname, target)) {
            continue;
        }
        let Some((host, port)) = records.iter().find_map(|r| match r {
            Record::Srv { name, port, host } if same(name, target) => Some((host.clone(), *port)),
            _ => None,
        }) else {
            continue;
        };
        let txt = records
            .iter()
            .find_map(|r| match r {
                Record::Txt { name, pairs } if same(name, target) => Some(pairs.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let mut addresses: Vec<IpAddr> = addresses_of(&host, records);
        addresses.sort();
        out.push(Instance {
            fullname: target.clone(),
            host,
            port,
            txt: txt.into_iter().rev().collect(), // the first of a repeated key wins
            addresses,
        });
    }
    out
}

/// Addresses answered for `host`.
pub fn addresses_of(host: &str, records: &[Record]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = records
        .iter()
        .filter_map(|r| match r {
            Record::Addr { name, ip } if name.eq_ignore_ascii_case(host) => Some(*ip),
            _ => None,
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Where an address can be reached, as a URL host (`[v6]` in brackets).
pub fn url_host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    }
}

/// `SocketAddr` of an instance's first IPv4 address, if any.
pub fn first_v4(instance: &Instance) -> Option<SocketAddr> {
    instance
        .addresses
        .iter()
        .find(|ip| ip.is_ipv4())
        .map(|ip| SocketAddr::new(*ip, instance.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response as a responder writes it: the question echoed, then PTR, SRV, TXT and A,
    /// with names compressed against earlier ones.
    fn sample_response(id: u16) -> Vec<u8> {
        let mut p = encode_query(id, "_lanvan._tcp.local", TYPE_PTR);
        p[2] = 0x84; // response, authoritative
        p[7] = 4; // four answers
        let rr = |p: &mut Vec<u8>, name: &[u8], ty: u16, data: &[u8]| {
            p.extend_from_slice(name);
            p.extend_from_slice(&ty.to_be_bytes());
            p.extend_from_slice(&[0x80, 1, 0, 0, 0, 10]);
            p.extend_from_slice(&(data.len() as u16).to_be_bytes());
            p.extend_from_slice(data);
        };
        // The question's name starts at offset 12.
        let instance_at = p.len() + 12; // where the PTR's rdata will start
        let mut ptr = vec![3];
        ptr.extend_from_slice(b"Box");
        ptr.extend_from_slice(&[0xC0, 12]);
        rr(&mut p, &[0xC0, 12], TYPE_PTR, &ptr);
        let instance = [0xC0 | (instance_at >> 8) as u8, instance_at as u8];
        let host_at = p.len() + 2 + 10 + 6;
        let mut srv = vec![0, 0, 0, 0, 0x1F, 0x90, 6];
        srv.extend_from_slice(b"LANVan");
        srv.extend_from_slice(&[5]);
        srv.extend_from_slice(b"local");
        srv.push(0);
        rr(&mut p, &instance, TYPE_SRV, &srv);
        rr(
            &mut p,
            &instance,
            TYPE_TXT,
            b"\x0bversion=0.1\x05ID=ab\x07version",
        );
        let host = [0xC0 | (host_at >> 8) as u8, host_at as u8];
        rr(&mut p, &host, TYPE_A, &[10, 0, 0, 7]);
        p
    }

    #[test]
    fn a_full_answer_becomes_one_instance() {
        let records = parse_response(7, &sample_response(7)).unwrap();
        assert_eq!(records.len(), 4, "{records:?}");
        let found = instances("_lanvan._tcp.local.", &records);
        assert_eq!(found.len(), 1);
        let box1 = &found[0];
        assert_eq!(box1.fullname, "Box._lanvan._tcp.local.");
        assert_eq!(box1.host, "LANVan.local.");
        assert_eq!(addresses_of("lanvan.local.", &records), box1.addresses);
        assert_eq!(box1.port, 8080);
        assert_eq!(box1.txt["version"], "0.1");
        assert_eq!(box1.txt["id"], "ab");
        assert_eq!(box1.addresses, vec![IpAddr::from([10, 0, 0, 7])]);
        assert_eq!(first_v4(box1), Some("10.0.0.7:8080".parse().unwrap()));
    }

    #[test]
    fn other_ids_queries_and_garbage_are_ignored() {
        let good = sample_response(7);
        assert!(parse_response(8, &good).is_none());
        assert!(parse_response(7, &encode_query(7, "x.local", TYPE_A)).is_none());
        // Every truncation fails cleanly instead of panicking.
        for n in 0..good.len() {
            let _ = parse_response(7, &good[..n]);
        }
        // A compression pointer that points at itself ends.
        let mut looped = encode_query(7, "a.local", TYPE_A);
        looped[2] = 0x84;
        looped[7] = 1;
        looped.extend_from_slice(&[0xC0, looped.len() as u8]);
        assert!(parse_response(7, &looped).is_none());
    }

    #[test]
    fn an_instance_without_srv_is_not_listed() {
        let records = vec![Record::Ptr {
            name: "_lanvan._tcp.local.".into(),
            target: "x._lanvan._tcp.local.".into(),
        }];
        assert!(instances("_lanvan._tcp.local.", &records).is_empty());
    }
}
