//! How the `lanvan` command line reaches a box: finding it (`--box`, `LANVAN_BOX`, else
//! mDNS), its device identity (a stable id kept in a small state file), a minimal HTTP/1.1
//! GET, and the `/ws/{device_id}` WebSocket. Moves bytes only; never decides what a
//! command does with them.

use crate::net::mdns::SERVICE_TYPE;
use crate::net::mdns_query;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures_util::StreamExt as _;
use serde_json::Value;
use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};
use smol::net::TcpStream;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Why a command failed: `Usage` exits 2, `Failed` exits 1.
#[derive(Debug)]
pub enum Failure {
    Usage(String),
    Failed(String),
}

impl Failure {
    pub fn failed(msg: impl Into<String>) -> Failure {
        Failure::Failed(msg.into())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Failed(m) => f.write_str(m),
        }
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

/// A box to talk to: the host as the user named it (for Host headers and messages) and
/// the address it resolved to.
#[derive(Clone, Debug)]
pub struct BoxAddr {
    pub host: String,
    pub addr: SocketAddr,
}

impl BoxAddr {
    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }
}

/// Reads `--box` / `LANVAN_BOX`: `http://HOST:PORT`, `HOST:PORT` or `HOST` (port 8080).
pub fn parse_box(spec: &str) -> Result<BoxAddr> {
    let rest = spec
        .strip_prefix("http://")
        .or_else(|| spec.strip_prefix("ws://"))
        .unwrap_or(spec);
    if rest.contains("://") {
        return Err(Failure::Usage(format!(
            "--box takes http://HOST:PORT, got `{spec}`"
        )));
    }
    let host = rest.split('/').next().unwrap_or("").trim();
    if host.is_empty() {
        return Err(Failure::Usage(format!(
            "--box takes http://HOST:PORT, got `{spec}`"
        )));
    }
    let with_port = if host.ends_with(']') || !host.contains(':') {
        format!("{host}:8080")
    } else {
        host.to_string()
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| Failure::failed(format!("cannot resolve the box {with_port}: {e}")))?
        .next()
        .ok_or_else(|| Failure::failed(format!("the box {with_port} has no address")))?;
    Ok(BoxAddr {
        host: with_port,
        addr,
    })
}

/// The box named by `--box` (or `LANVAN_BOX`, which clap fills in), else the first box
/// answering an mDNS question within `timeout` (as `lanvan discover` asks).
pub fn locate(spec: Option<&str>, timeout: Duration) -> Result<BoxAddr> {
    if let Some(spec) = spec {
        return parse_box(spec);
    }
    // One question is asked three times in its first 600 ms; a box that is only starting
    // up answers later, so the question is asked again each second until `timeout`.
    let found = |r: &[mdns_query::Record]| {
        mdns_query::instances(SERVICE_TYPE, r)
            .iter()
            .any(|i| mdns_query::first_v4(i).is_some())
    };
    let deadline = std::time::Instant::now() + timeout;
    let mut records = Vec::new();
    while !found(&records) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        records = mdns_query::ask(
            SERVICE_TYPE,
            mdns_query::TYPE_PTR,
            left.min(Duration::from_secs(1)),
            found,
        )
        .map_err(|e| Failure::failed(format!("mDNS: {e}")))?;
    }
    let addr = mdns_query::instances(SERVICE_TYPE, &records)
        .iter()
        .find_map(mdns_query::first_v4)
        .ok_or_else(|| {
            Failure::failed(format!(
                "no LANVan box answered on this network within {} ms; name one with --box http://HOST:PORT (or LANVAN_BOX)",
                timeout.as_millis()
            ))
        })?;
    Ok(BoxAddr {
        host: addr.to_string(),
        addr,
    })
}

/// The folder holding this terminal's device id: `$XDG_STATE_HOME/lanvan`, else
/// `~/.local/state/lanvan`.
fn state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("lanvan"));
    }
    let home = std::env::var_os("HOME").filter(|d| !d.is_empty())?;
    Some(PathBuf::from(home).join(".local/state/lanvan"))
}

/// This terminal's device id: made once (`cli-` and 12 random hex digits) and kept in
/// `device-id` in the state folder, so browsers see the same device every time. When the
/// folder cannot be written, a fresh id is used for this run.
pub fn device_id() -> String {
    let dir = state_dir();
    let file = dir.as_ref().map(|d| d.join("device-id"));
    if let Some(f) = &file {
        if let Ok(id) = std::fs::read_to_string(f) {
            let id = id.trim();
            if valid_id(id) {
                return id.to_string();
            }
        }
    }
    let mut raw = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read as _;
        let _ = f.read_exact(&mut raw);
    }
    let id = format!("cli-{}", hex(&raw));
    if let (Some(d), Some(f)) = (dir, file) {
        let _ = std::fs::create_dir_all(&d).and_then(|_| std::fs::write(&f, format!("{id}\n")));
    }
    id
}

/// A device id the box takes: 1-64 of `A-Z a-z 0-9 _ . -`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The name other devices see, unless `--name` says otherwise: `lanvan on HOSTNAME`.
pub fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        "lanvan CLI".into()
    } else {
        format!("lanvan on {host}")
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved characters stay).
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn connect(b: &BoxAddr) -> Result<TcpStream> {
    let connect = TcpStream::connect(b.addr);
    let timeout = async {
        smol::Timer::after(Duration::from_secs(5)).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer in 5 s",
        ))
    };
    smol::future::or(connect, timeout)
        .await
        .map_err(|e| Failure::failed(format!("cannot reach the box at {}: {e}", b.url())))
}

/// An HTTP response whose body is still on the socket.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Body bytes read along with the head.
    pub start: Vec<u8>,
    pub stream: TcpStream,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.trim().parse().ok()
    }

    /// The whole body (for small JSON answers).
    pub async fn body(mut self) -> Result<Vec<u8>> {
        let len = self.content_length().unwrap_or(0) as usize;
        let mut body = std::mem::take(&mut self.start);
        let mut buf = vec![0u8; 64 * 1024];
        while body.len() < len {
            let n = self
                .stream
                .read(&mut buf)
                .await
                .map_err(|e| Failure::failed(format!("reading from the box: {e}")))?;
            if n == 0 {
                return Err(Failure::failed("the box closed the connection early"));
            }
            body.extend_from_slice(&buf[..n]);
        }
        body.truncate(len);
        Ok(body)
    }

    /// The body as JSON.
    pub async fn json(self) -> Result<Value> {
        let body = self.body().await?;
        serde_json::from_slice(&body)
            .map_err(|e| Failure::failed(format!("the box sent bad JSON: {e}")))
    }
}

/// `GET path` with extra headers; returns once the head is in.
pub async fn get(b: &BoxAddr, path: &str, headers: &[(&str, String)]) -> Result<Response> {
    let mut stream = connect(b).await?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n",
        b.host
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let io = |e: std::io::Error| Failure::failed(format!("talking to the box: {e}"));
    stream.write_all(req.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut tmp).await.map_err(io)?;
        if n == 0 {
            return Err(Failure::failed("the box closed the connection"));
        }
        buf.extend_from_slice(&tmp[..n]);
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut hs);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(head)) => {
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                return Ok(Response {
                    status: resp.code.unwrap_or(0),
                    headers,
                    start: buf[head..].to_vec(),
                    stream,
                });
            }
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {}
            _ => return Err(Failure::failed("the box sent a bad HTTP answer")),
        }
    }
}

/// The box's error text from a JSON error body, or the status.
pub async fn error_text(resp: Response) -> String {
    let status = resp.status;
    match resp.json().await {
        Ok(v) if v["message"].is_string() => format!(
            "{} ({})",
            v["message"].as_str().unwrap_or(""),
            v["error"].as_str().unwrap_or("")
        ),
        _ => format!("HTTP {status}"),
    }
}

/// What came on the WebSocket.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Binary(Vec<u8>),
    /// The socket closed (with the box's reason, if any).
    Closed(String),
}

/// A device's WebSocket to the box.
pub struct Session {
    ws: WebSocketStream<TcpStream>,
    pub welcome: Value,
    pub id: String,
    pub addr: BoxAddr,
}

impl Session {
    /// Joins `/ws/{id}` as a device of kind `cli`; returns after `welcome`.
    pub async fn join(b: &BoxAddr, id: &str, name: &str) -> Result<Session> {
        let stream = connect(b).await?;
        let url = format!(
            "ws://{}/ws/{}?name={}&kind=cli",
            b.host,
            encode(id),
            encode(name)
        );
        let (ws, _) = async_tungstenite::client_async(url, stream)
            .await
            .map_err(|e| {
                Failure::failed(format!("the box at {} refused the WebSocket: {e}", b.url()))
            })?;
        let mut s = Session {
            ws,
            welcome: Value::Null,
            id: id.to_string(),
            addr: b.clone(),
        };
        loop {
            match s.next(Duration::from_secs(10)).await {
                Some(Incoming::Json(v)) if v["type"] == "welcome" => {
                    s.welcome = v;
                    return Ok(s);
                }
                Some(Incoming::Json(v)) if v["type"] == "error" => {
                    return Err(Failure::failed(format!(
                        "the box refused this device: {}",
                        v["message"].as_str().unwrap_or("")
                    )))
                }
                Some(Incoming::Closed(why)) => {
                    return Err(Failure::failed(format!("the box closed the socket: {why}")))
                }
                None => return Err(Failure::failed("the box sent no welcome in 10 s")),
                _ => {}
            }
        }
    }

    pub async fn send(&mut self, v: &Value) -> Result<()> {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .map_err(|e| Failure::failed(format!("the connection to the box broke: {e}")))
    }

    pub async fn send_binary(&mut self, frame: Vec<u8>) -> Result<()> {
        self.ws
            .send(Message::Binary(frame.into()))
            .await
            .map_err(|e| Failure::failed(format!("the connection to the box broke: {e}")))
    }

    /// The next message, or None after `wait`. Pings are answered by tungstenite.
    pub async fn next(&mut self, wait: Duration) -> Option<Incoming> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let read = async { Some(self.ws.next().await) };
            let timer = async {
                smol::Timer::at(deadline).await;
                None
            };
            return match smol::future::or(read, timer).await? {
                None => Some(Incoming::Closed("the connection ended".into())),
                Some(Err(e)) => Some(Incoming::Closed(e.to_string())),
                Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()) {
                    Ok(v) => Some(Incoming::Json(v)),
                    Err(_) => continue,
                },
                Some(Ok(Message::Binary(b))) => Some(Incoming::Binary(b.to_vec())),
                Some(Ok(Message::Close(c))) => Some(Incoming::Closed(
                    c.map(|c| c.reason.to_string()).unwrap_or_default(),
                )),
                Some(Ok(_)) => continue,
            };
        }
    }

    /// The local address this terminal reaches the box from: its LAN address.
    pub fn local_ip(&self) -> Option<std::net::IpAddr> {
        self.ws.get_ref().local_addr().ok().map(|a| a.ip())
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A TCP connection to the box (5 s to answer), for requests `get` does not cover.
pub async fn dial(b: &BoxAddr) -> Result<TcpStream> {
    connect(b).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_urls_in_every_spelling() {
        for spec in [
            "http://127.0.0.1:9000",
            "127.0.0.1:9000",
            "http://127.0.0.1:9000/",
            "ws://127.0.0.1:9000",
        ] {
            let b = parse_box(spec).unwrap();
            assert_eq!(b.addr, "127.0.0.1:9000".parse().unwrap(), "{spec}");
        }
        assert_eq!(parse_box("127.0.0.1").unwrap().addr.port(), 8080);
        assert!(matches!(parse_box("ftp://x"), Err(Failure::Usage(_))));
        assert!(matches!(parse_box(""), Err(Failure::Usage(_))));
    }

    #[test]
    fn ids_and_encoding() {
        assert!(valid_id("cli-0a1b2c3d4e5f"));
        assert!(!valid_id("a b"));
        assert!(!valid_id(""));
        assert_eq!(encode("Anna's laptop/ä"), "Anna%27s%20laptop%2F%C3%A4");
    }
}
