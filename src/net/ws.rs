//! The WebSocket shell at `/ws/{device_id}` (devices) and `/signal` (family signaling):
//! upgrades an HTTP connection, feeds frames to the `Hub` and writes what it answers. Each socket has a bounded outbound queue; a device
//! that falls behind is dropped so nobody else waits. Never parses messages itself.

use super::http::{Conn, Request, Traffic};
use super::server::{App, Outbound};
use crate::core::hub::Output;
use async_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role};
use async_tungstenite::tungstenite::{Message, Utf8Bytes};
use async_tungstenite::WebSocketStream;
use futures_util::StreamExt;
use smol::io::{AsyncRead, AsyncWrite};
use smol::{Async, Timer};
use std::io;
use std::net::TcpStream;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long one frame write may stall before the reader is considered gone.
const WRITE_STALL: Duration = Duration::from_secs(10);

/// Which of the box's WebSocket endpoints a socket is on.
pub enum Endpoint {
    /// `/ws/{device_id}`: a device of the hub (clipboard, P2P, relay).
    Device(String),
    /// `/signal`: family signaling only.
    Family,
}

/// Completes the upgrade and serves the socket until it closes.
pub async fn serve(app: Rc<App>, mut conn: Conn, req: Request, endpoint: Endpoint) {
    let Some(key) = req.header("sec-websocket-key").map(str::to_string) else {
        let resp = super::api::error(400, "bad_upgrade", "missing Sec-WebSocket-Key".into());
        let _ = conn.respond(resp, false, false, WRITE_STALL).await;
        return;
    };
    let accept = async_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
    );
    if conn.write_all(head.as_bytes(), WRITE_STALL).await.is_err() {
        return;
    }
    let early = conn.take_buffered();
    let stream = Prefixed {
        early,
        pos: 0,
        traffic: conn.traffic(),
        inner: conn.stream,
    };
    let limits = &app.cfg.ws;
    // Relay chunk frames may be larger than text messages; text is held to its own limit
    // below.
    let max_text = limits.max_message_bytes as usize;
    let max_frame =
        max_text.max(app.cfg.relay.chunk_size as usize + crate::core::relay::HEADER_LEN);
    let config = async_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame));
    let ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
    let (mut sink, mut frames) = ws.split();

    let conn_id = app.next_conn_id();
    let (tx, rx) = smol::channel::bounded::<Outbound>(limits.send_queue);
    app.sockets.borrow_mut().insert(conn_id, tx);
    let name = req.query_param("name");
    let kind = req.query_param("kind");
    let mut out = Vec::new();
    let device_id = match &endpoint {
        Endpoint::Device(id) => Some(id.as_str()),
        Endpoint::Family => None,
    };
    let joined = match device_id {
        Some(device_id) => app.hub.borrow_mut().connect(
            app.now(),
            conn_id,
            device_id,
            name.as_deref(),
            kind.as_deref(),
            &mut out,
        ),
        None => {
            app.hub.borrow_mut().signal_connect(app.now(), conn_id);
            Ok(())
        }
    };
    if let Err(e) = joined {
        app.sockets.borrow_mut().remove(&conn_id);
        let msg = serde_json::json!({"type": "error", "code": "refused", "message": e.to_string()});
        let _ = sink.send(Message::Text(msg.to_string().into())).await;
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: "refused".into(),
            })))
            .await;
        return;
    }
    app.dispatch(out);
    if let Some(device_id) = device_id {
        app.relay_connect(conn_id, device_id);
    }

    // At least two pings per heartbeat timeout, whatever the interval says: with fewer, a
    // device that only listens would be dropped as silent before it was ever asked.
    let heartbeat = Duration::from_secs(app.cfg.ws.heartbeat_interval_secs.max(1))
        .min(Duration::from_secs(app.cfg.ws.heartbeat_timeout_secs) / 2)
        .max(Duration::from_millis(250));
    let writer = async {
        // Pings keep their own cadence: traffic to the device must not put them off, or a
        // device that only listens while others keep it busy would never be asked for a
        // pong, and would be dropped as silent.
        let mut next_ping = Instant::now() + heartbeat;
        loop {
            let next = smol::future::or(async { rx.recv().await.ok() }, async {
                Timer::at(next_ping).await;
                Some(Outbound::Ping)
            })
            .await;
            let (msg, last) = match next {
                Some(Outbound::Text(t)) => (Message::Text(Utf8Bytes::from(&*t)), false),
                Some(Outbound::Chunk(id, index)) => match app.chunk_frame(id, index) {
                    Some(frame) => (Message::Binary(frame.into()), false),
                    // Cancelled or rewound since it was queued: nothing to send.
                    None => continue,
                },
                Some(Outbound::Ping) => {
                    next_ping = Instant::now() + heartbeat;
                    (Message::Ping(Default::default()), false)
                }
                Some(Outbound::Close(code, reason)) => (
                    Message::Close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    })),
                    true,
                ),
                // Every sender is gone: the box dropped this device.
                None => break,
            };
            let sent = super::http::with_stall(
                async { sink.send(msg).await.map_err(io::Error::other) },
                WRITE_STALL,
            )
            .await;
            if sent.is_err() || last {
                break;
            }
        }
        false
    };
    let reader = async {
        while let Some(frame) = frames.next().await {
            let mut out = Vec::new();
            match frame {
                Ok(Message::Text(text)) if text.len() > max_text => {
                    let msg = serde_json::json!({"type": "error", "code": "bad_frame",
                        "message": format!("the socket is closed: Message too long: {} > {max_text}", text.len())});
                    app.send_to(conn_id, msg.to_string().into());
                    app.close(conn_id, 1009, "bad frame");
                    Timer::after(Duration::from_millis(200)).await;
                    break;
                }
                Ok(Message::Text(text)) if device_id.is_none() => {
                    app.hub
                        .borrow_mut()
                        .signal_text(app.now(), conn_id, text.as_str(), &mut out);
                }
                Ok(Message::Text(text)) if app.rtc_text(conn_id, text.as_str()) => {}
                Ok(Message::Text(text)) if app.relay_text(conn_id, text.as_str()) => {}
                Ok(Message::Text(text)) => {
                    app.hub
                        .borrow_mut()
                        .receive_text(app.now(), conn_id, text.as_str(), &mut out);
                }
                Ok(Message::Binary(frame)) if device_id.is_some() => {
                    app.relay_chunk(conn_id, &frame)
                }
                Ok(Message::Close(_)) => return true,
                Ok(_) if device_id.is_none() => {
                    app.hub.borrow_mut().signal_heard(app.now(), conn_id)
                }
                Ok(_) => app.hub.borrow_mut().heard_from(app.now(), conn_id),
                Err(e) => {
                    // An oversized or malformed frame leaves the stream unusable: say why,
                    // then close.
                    let msg = serde_json::json!({"type": "error", "code": "bad_frame",
                        "message": format!("the socket is closed: {e}")});
                    app.send_to(conn_id, msg.to_string().into());
                    app.close(conn_id, 1009, "bad frame");
                    // Give the writer a moment to flush the error and close frame.
                    Timer::after(Duration::from_millis(200)).await;
                    break;
                }
            }
            app.dispatch(out);
            // A busy sender's frames are often all readable at once, and smol would let
            // this loop take them all in one go while the writers it filled wait their
            // turn: their queues would overflow and readers that keep up would be dropped.
            // Yielding lets every writer drain what this frame queued before the next.
            smol::future::yield_now().await;
        }
        false
    };
    let peer_closed = smol::future::or(reader, writer).await;
    if peer_closed {
        // Answer the client's close frame (tungstenite queued the reply when it read it),
        // so the client sees a clean close rather than an abnormal one (1006).
        let _ = super::http::with_stall(
            async {
                futures_util::SinkExt::close(&mut sink)
                    .await
                    .map_err(io::Error::other)
            },
            Duration::from_secs(1),
        )
        .await;
    }
    app.sockets.borrow_mut().remove(&conn_id);
    let mut out = Vec::new();
    if device_id.is_some() {
        app.hub
            .borrow_mut()
            .disconnect(app.now(), conn_id, &mut out);
        app.dispatch(out);
        app.relay_disconnect(conn_id);
        app.rtc_disconnect(conn_id);
    } else {
        app.hub
            .borrow_mut()
            .signal_disconnect(app.now(), conn_id, &mut out);
        app.dispatch(out);
    }
}

impl App {
    /// Carries out what the hub asked: queue frames, close sockets. A socket whose queue
    /// is full is dropped at once, and the hub is told, which may produce more output.
    pub fn dispatch(&self, mut out: Vec<Output>) {
        while !out.is_empty() {
            let mut more = Vec::new();
            for o in out.drain(..) {
                match o {
                    Output::Send { conn, text } => {
                        if !self.send_to(conn, text) {
                            log::info!("dropping socket {conn}: it stopped reading");
                            self.sockets.borrow_mut().remove(&conn);
                            let mut hub = self.hub.borrow_mut();
                            hub.disconnect(self.now(), conn, &mut more);
                            hub.signal_disconnect(self.now(), conn, &mut more);
                        }
                    }
                    Output::Close { conn, code, reason } => self.close(conn, code, reason),
                }
            }
            out = more;
        }
    }

    /// Queues a text frame. False if the socket's queue is full.
    pub fn send_to(&self, conn: u64, text: Rc<str>) -> bool {
        match self.sockets.borrow().get(&conn) {
            Some(tx) => tx.try_send(Outbound::Text(text)).is_ok(),
            None => true,
        }
    }

    /// Sends a close frame (if there is room) and forgets the socket.
    pub fn close(&self, conn: u64, code: u16, reason: &'static str) {
        if let Some(tx) = self.sockets.borrow_mut().remove(&conn) {
            let _ = tx.try_send(Outbound::Close(code, reason));
        }
    }
}

/// The TCP stream with the bytes read ahead during the HTTP upgrade put back in front.
/// It also counts the socket's bytes for `/api/status`.
struct Prefixed {
    early: Vec<u8>,
    pos: usize,
    traffic: Rc<Traffic>,
    inner: Async<TcpStream>,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.pos < self.early.len() {
            let n = buf.len().min(self.early.len() - self.pos);
            buf[..n].copy_from_slice(&self.early[self.pos..self.pos + n]);
            self.pos += n;
            return Poll::Ready(Ok(n));
        }
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.traffic.add_in(n);
        }
        polled
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.traffic.add_out(n);
        }
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
