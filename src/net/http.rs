//! HTTP/1.1 on one TCP connection: request heads parsed with `httparse` from a buffer of
//! fixed size, bodies read with a deadline per read, responses written with `sendfile` for
//! stored files. Never buffers more than one request head plus the body a handler asks for.

use crate::core::hash::Digest;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, Timer};
use std::cell::Cell;
use std::fs::File;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::Duration;

/// Byte counters shared by every connection, for `/api/status`.
#[derive(Default)]
pub struct Traffic {
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
}

impl Traffic {
    pub fn add_in(&self, n: usize) {
        self.bytes_in.set(self.bytes_in.get() + n as u64);
    }
    pub fn add_out(&self, n: usize) {
        self.bytes_out.set(self.bytes_out.get() + n as u64);
    }
}

/// One parsed request head. Header names are lower-case.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path as sent, still percent-encoded: split it before decoding, so an encoded
    /// `/` inside a file name never becomes a separator.
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub content_length: u64,
    pub keep_alive: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter, percent-decoded.
    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then(|| percent_decode(&v.replace('+', " ")))?
        })
    }

    /// The path's segments, each percent-decoded. `None` if an escape is broken.
    pub fn segments(&self) -> Option<Vec<String>> {
        self.path
            .trim_start_matches('/')
            .split('/')
            .map(percent_decode)
            .collect()
    }

    pub fn is_websocket_upgrade(&self) -> bool {
        self.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum HeadError {
    /// The peer closed the connection between requests.
    Closed,
    /// The head did not arrive in time.
    Timeout,
    /// The head is larger than the limit.
    TooLarge,
    /// The bytes are not HTTP/1.x, or use a form the box does not take.
    Bad(String, u16),
    Io(io::Error),
}

/// A response, written by `Conn::respond`.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// `len` bytes of `file` from `offset`, sent with sendfile.
    File {
        file: File,
        offset: u64,
        len: u64,
    },
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Response::new(status)
            .header("content-type", "application/json")
            .body(body)
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, bytes: Vec<u8>) -> Response {
        self.body = Body::Bytes(bytes);
        self
    }

    fn body_len(&self) -> u64 {
        match &self.body {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }
}

/// One client connection and the bytes read from it but not yet used.
pub struct Conn {
    pub stream: Async<TcpStream>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Body bytes of the current request not yet read by its handler.
    body_left: u64,
    traffic: Rc<Traffic>,
}

impl Conn {
    pub fn new(stream: Async<TcpStream>, max_header: usize, traffic: Rc<Traffic>) -> Conn {
        Conn {
            stream,
            buf: vec![0; max_header],
            start: 0,
            end: 0,
            body_left: 0,
            traffic,
        }
    }

    /// Waits up to `idle` for the next request to start. False if none did.
    pub async fn wait_for_request(&mut self, idle: Duration) -> bool {
        if self.end > self.start {
            return true;
        }
        smol::future::or(async { self.stream.readable().await.is_ok() }, async {
            Timer::after(idle).await;
            false
        })
        .await
    }

    /// Reads and parses the next request head, waiting at most `timeout` for all of it.
    pub async fn read_head(&mut self, timeout: Duration) -> Result<Request, HeadError> {
        let deadline = Timer::after(timeout);
        let read = async {
            loop {
                if self.end > self.start {
                    if let Some(req) = self.parse_head()? {
                        return Ok(req);
                    }
                }
                if self.start > 0 {
                    self.buf.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                }
                if self.end == self.buf.len() {
                    return Err(HeadError::TooLarge);
                }
                let n = self
                    .stream
                    .read(&mut self.buf[self.end..])
                    .await
                    .map_err(HeadError::Io)?;
                if n == 0 {
                    return Err(HeadError::Closed);
                }
                self.traffic.add_in(n);
                self.end += n;
            }
        };
        smol::future::or(read, async {
            deadline.await;
            Err(HeadError::Timeout)
        })
        .await
    }

    fn parse_head(&mut self) -> Result<Option<Request>, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        let status = parsed
            .parse(&self.buf[self.start..self.end])
            .map_err(|e| match e {
                httparse::Error::TooManyHeaders => HeadError::TooLarge,
                e => HeadError::Bad(format!("malformed request: {e}"), 400),
            })?;
        let httparse::Status::Complete(used) = status else {
            return Ok(None);
        };
        let version = parsed.version.unwrap_or(1);
        let target = parsed.path.unwrap_or("/");
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (target, None),
        };
        let mut req = Request {
            method: parsed.method.unwrap_or("GET").to_string(),
            path: path.to_string(),
            query,
            headers: parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            content_length: 0,
            keep_alive: version == 1,
        };
        if let Some(c) = req.header("connection") {
            let c = c.to_ascii_lowercase();
            if c.contains("close") {
                req.keep_alive = false;
            } else if c.contains("keep-alive") {
                req.keep_alive = true;
            }
        }
        if req.header("transfer-encoding").is_some() {
            return Err(HeadError::Bad(
                "chunked request bodies are not accepted; send Content-Length".into(),
                411,
            ));
        }
        if let Some(cl) = req.header("content-length") {
            req.content_length = cl
                .trim()
                .parse()
                .map_err(|_| HeadError::Bad("Content-Length is not a number".into(), 400))?;
        }
        self.start += used;
        self.body_left = req.content_length;
        Ok(Some(req))
    }

    /// Reads the whole body of the current request (its Content-Length), failing if any
    /// single read stalls for longer than `stall`.
    pub async fn read_body(&mut self, stall: Duration) -> io::Result<Vec<u8>> {
        let mut body = vec![0u8; self.body_left as usize];
        let mut filled = 0;
        while filled < body.len() {
            filled += self.read_some(&mut body[filled..], stall).await?;
        }
        Ok(body)
    }

    /// Reads the whole body like `read_body`, hashing it as it arrives, a piece of at most
    /// 64 KiB at a time, so the loop never hashes long in one go.
    pub async fn read_body_hashed(&mut self, stall: Duration) -> io::Result<(Vec<u8>, Digest)> {
        use sha2::Digest as _;
        let mut body = vec![0u8; self.body_left as usize];
        let mut hasher = sha2::Sha256::new();
        let mut filled = 0;
        while filled < body.len() {
            let end = (filled + 64 * 1024).min(body.len());
            let n = self.read_some(&mut body[filled..end], stall).await?;
            hasher.update(&body[filled..filled + n]);
            filled += n;
        }
        Ok((body, Digest(hasher.finalize().into())))
    }

    /// Reads and drops what is left of the current body, so the next request can be read.
    pub async fn skip_body(&mut self, stall: Duration) -> io::Result<()> {
        let mut scratch = [0u8; 8192];
        while self.body_left > 0 {
            let want = scratch.len().min(self.body_left as usize);
            self.read_some(&mut scratch[..want], stall).await?;
        }
        Ok(())
    }

    pub fn traffic(&self) -> Rc<Traffic> {
        self.traffic.clone()
    }

    /// Body bytes of the current request not yet read.
    pub fn body_left(&self) -> u64 {
        self.body_left
    }

    async fn read_some(&mut self, out: &mut [u8], stall: Duration) -> io::Result<usize> {
        let want = out.len().min(self.body_left as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = if self.end > self.start {
            let n = want.min(self.end - self.start);
            out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            n
        } else {
            let n = with_stall(self.stream.read(&mut out[..want]), stall).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.traffic.add_in(n);
            n
        };
        self.body_left -= n as u64;
        Ok(n)
    }

    /// Bytes already read past the request head (a WebSocket client may send early).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        let v = self.buf[self.start..self.end].to_vec();
        self.start = self.end;
        v
    }

    /// Writes `resp`. `head_only` leaves out the body (HEAD requests).
    pub async fn respond(
        &mut self,
        resp: Response,
        keep_alive: bool,
        head_only: bool,
        stall: Duration,
    ) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nconnection: {}\r\n",
            resp.status,
            reason(resp.status),
            if keep_alive { "keep-alive" } else { "close" }
        );
        // 204 and 304 carry no body and, per RFC 9110, no Content-Length of 0.
        if !matches!(resp.status, 204 | 304) {
            head.push_str(&format!("content-length: {}\r\n", resp.body_len()));
        }
        for (k, v) in &resp.headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        match resp.body {
            Body::Bytes(b) if !head_only => {
                out.extend_from_slice(&b);
                self.write_all(&out, stall).await
            }
            Body::File { file, offset, len } if !head_only => {
                self.write_all(&out, stall).await?;
                self.send_file(&file, offset, len, stall).await
            }
            _ => self.write_all(&out, stall).await,
        }
    }

    /// Writes all of `bytes`, failing if the client takes none of them for `stall`.
    pub async fn write_all(&mut self, mut bytes: &[u8], stall: Duration) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = with_stall(self.stream.write(bytes), stall).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.traffic.add_out(n);
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Sends `len` bytes of `file` from `offset` with sendfile(2): the bytes go from the
    /// page cache to the socket without passing through this process. So that a cold file
    /// on a slow SD card does not stall the loop inside sendfile, the kernel is asked to
    /// read ahead (`POSIX_FADV_WILLNEED`, which only queues the reads) a window before the
    /// bytes are needed.
    async fn send_file(
        &mut self,
        file: &File,
        offset: u64,
        len: u64,
        stall: Duration,
    ) -> io::Result<()> {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        const AHEAD: i64 = 8 << 20;
        let mut off = offset as i64;
        let end = (offset + len) as i64;
        let mut advised = off;
        while off < end {
            if off + AHEAD / 2 >= advised && advised < end {
                let span = AHEAD.min(end - advised);
                let _ = posix_fadvise(file, advised, span, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
                advised += span;
            }
            let want = ((end - off) as usize).min(1 << 20);
            let send = self.stream.write_with(|s| {
                nix::sys::sendfile::sendfile(s.as_fd(), file.as_fd(), Some(&mut off), want)
                    .map_err(io::Error::from)
            });
            let sent = with_stall(send, stall).await?;
            if sent == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while it was sent",
                ));
            }
            self.traffic.add_out(sent);
        }
        Ok(())
    }
}

/// Runs one read or write, failing with `TimedOut` if it makes no progress for `stall`.
pub async fn with_stall<T>(
    op: impl std::future::Future<Output = io::Result<T>>,
    stall: Duration,
) -> io::Result<T> {
    smol::future::or(op, async {
        Timer::after(stall).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the other side stopped sending or reading",
        ))
    })
    .await
}

/// Decodes `%XX` escapes. `None` if an escape is broken or the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes a file name for a URL path segment or an RFC 5987 header value.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_round_trip() {
        let name = "a b/ü%.txt";
        assert_eq!(percent_decode(&percent_encode(name)).as_deref(), Some(name));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%2e%2E").as_deref(), Some(".."));
    }
}
