//! The drop-box HTTP API (see docs/api.md): routes a request to the store and turns every
//! `StoreError` into one kind of JSON error reply. The one place errors become statuses.

use super::http::{percent_encode, Body, Conn, Request, Response};
use super::server::App;
use super::web;
use crate::core::hash::Digest;
use crate::core::range::{self, RangeRequest};
use crate::store::{Created, NewUpload, StoreError};
use serde_json::json;
use std::rc::Rc;
use std::time::Duration;

/// A JSON error reply: `{"error": code, "message": text}`.
pub fn error(status: u16, code: &str, message: String) -> Response {
    Response::json(status, &json!({"error": code, "message": message}))
}

/// The status and code a store error is answered with.
fn store_error(e: &StoreError) -> Response {
    use StoreError::*;
    let (status, code) = match e {
        BadName(_) => (400, "bad_name"),
        FileNotFound => (404, "file_not_found"),
        UploadNotFound => (404, "upload_not_found"),
        TooLarge { .. } => (413, "too_large"),
        NoSpace { .. } => (507, "no_space"),
        QuotaExceeded { .. } => (507, "quota_exceeded"),
        TooManyUploads { .. } => (503, "too_many_uploads"),
        TooManyFiles { .. } => (507, "too_many_files"),
        ChunkOutOfRange { .. } => (416, "chunk_out_of_range"),
        WrongChunkLength { .. } => (400, "wrong_chunk_length"),
        ChunkHashMismatch { .. } => (422, "chunk_hash_mismatch"),
        FileHashMismatch { .. } => (422, "file_hash_mismatch"),
        Incomplete { .. } => (409, "incomplete"),
        Busy => (409, "busy"),
        DiskFull => (507, "disk_full"),
        Io(_) => (500, "io_error"),
    };
    let mut body = json!({"error": code, "message": e.to_string()});
    if let Incomplete { missing } = e {
        body["missing"] = json!(missing);
    }
    Response::json(status, &body)
}

/// Answers one request. Reads the body itself when the route takes one.
pub async fn handle(app: &Rc<App>, conn: &mut Conn, req: &Request) -> Response {
    let Some(segments) = req.segments() else {
        return error(
            400,
            "bad_path",
            "the path is not valid percent-encoded UTF-8".into(),
        );
    };
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    // HEAD is GET without the body; `Conn::respond` leaves the body out.
    let method = match req.method.as_str() {
        "HEAD" => "GET",
        m => m,
    };
    match (method, parts.as_slice()) {
        ("GET", [""]) => web::serve(web::index(), req),
        ("GET", ["api", "status"]) => Response::json(200, &app.status()),
        // `now` is the box's clock, so a client can show ages even when its clock is off.
        ("GET", ["api", "files"]) => Response::json(
            200,
            &json!({"files": app.store.list(), "now": crate::store::unix_ms()}),
        ),
        ("GET", ["api", "qr.svg"]) => web::qr(req, &app.cfg.listen),
        ("GET", ["api", "files", name]) => download(app, req, name),
        ("GET", ["api", "files", name, "manifest"]) => {
            let chunk_size = app.cfg.relay.chunk_size as u32;
            match app.store.manifest(name, chunk_size).await {
                Ok(m) => Response::json(200, &m.to_json()),
                Err(e) => store_error(&e),
            }
        }
        ("DELETE", ["api", "files", name]) => match app.store.delete(name).await {
            Ok(entry) => {
                app.announce(json!({"type": "file_deleted", "name": entry.name}));
                Response::new(204)
            }
            Err(e) => store_error(&e),
        },
        ("POST", ["api", "uploads"]) => create_upload(app, conn, req).await,
        ("GET", ["api", "uploads", id]) => match app.store.upload_status(id) {
            Ok(s) => Response::json(200, &s),
            Err(e) => store_error(&e),
        },
        ("DELETE", ["api", "uploads", id]) => match app.store.cancel(id).await {
            Ok(()) => Response::new(204),
            Err(e) => store_error(&e),
        },
        ("PUT", ["api", "uploads", id, "chunks", n]) => put_chunk(app, conn, req, id, n).await,
        ("POST", ["api", "uploads", id, "finish"]) => match app.store.finish(id).await {
            Ok(done) => {
                if !done.deduplicated {
                    app.announce(json!({"type": "file_added", "file": done.file}));
                }
                // 200, not 201, when the bytes were already stored and nothing new was made.
                let status = if done.deduplicated { 200 } else { 201 };
                Response::json(
                    status,
                    &json!({"file": done.file, "deduplicated": done.deduplicated}),
                )
            }
            Err(e) => store_error(&e),
        },
        #[cfg(feature = "debug-stall")]
        ("POST", ["api", "debug", "stall"]) => debug_stall(req),
        // A path that exists, asked with a method it does not take.
        (_, [""] | ["api", "status" | "files" | "uploads" | "qr.svg"])
        | (_, ["api", "files" | "uploads", _])
        | (_, ["api", "uploads", _, "finish"])
        | (_, ["api", "uploads", _, "chunks", _]) => error(
            405,
            "method_not_allowed",
            format!("{} is not allowed on {}", req.method, req.path),
        ),
        // The browser app: `/` and every file under `web/`.
        _ => match (method, web::find(&parts)) {
            ("GET", Some(file)) => web::serve(file, req),
            _ => error(404, "not_found", format!("nothing at {}", req.path)),
        },
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    app: &App,
    conn: &mut Conn,
    req: &Request,
) -> Result<T, Response> {
    if req.content_length > app.cfg.http.max_json_bytes {
        return Err(error(
            413,
            "too_large",
            format!(
                "JSON bodies are limited to {} bytes",
                app.cfg.http.max_json_bytes
            ),
        ));
    }
    let stall = Duration::from_secs(app.cfg.http.body_timeout_secs);
    let body = conn
        .read_body(stall)
        .await
        .map_err(|e| error(408, "body_timeout", format!("could not read the body: {e}")))?;
    serde_json::from_slice(&body).map_err(|e| {
        error(
            400,
            "bad_json",
            format!("the body is not the expected JSON: {e}"),
        )
    })
}

async fn create_upload(app: &Rc<App>, conn: &mut Conn, req: &Request) -> Response {
    let mut new: NewUpload = match read_json(app, conn, req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    // A connected device is labelled with the name it has on the hub.
    if let Some(id) = &new.device_id {
        if let Some(name) = app.hub.borrow().device_name(id) {
            new.device_name = Some(name.to_string());
        }
    }
    match app.store.create(new).await {
        Ok(Created::New(s)) => Response::json(201, &s),
        Ok(Created::Resumed(s)) => Response::json(200, &s),
        Ok(Created::AlreadyStored(file)) => {
            Response::json(200, &json!({"complete": true, "file": file}))
        }
        Err(e) => store_error(&e),
    }
}

async fn put_chunk(app: &Rc<App>, conn: &mut Conn, req: &Request, id: &str, n: &str) -> Response {
    let Ok(index) = n.parse::<u32>() else {
        return error(
            400,
            "bad_chunk_index",
            format!("`{n}` is not a chunk number"),
        );
    };
    let Some(expected) = req.header("x-chunk-sha256").and_then(Digest::from_hex) else {
        return error(
            400,
            "missing_chunk_hash",
            "send the chunk's SHA-256 as 64 hex digits in the X-Chunk-Sha256 header".into(),
        );
    };
    // Refuse before reading: the body of a wrong chunk is never held in memory.
    if let Err(e) = app.store.check_chunk(id, index, req.content_length) {
        return store_error(&e);
    }
    let _slot = app.store.chunk_slot().await;
    let stall = Duration::from_secs(app.cfg.http.body_timeout_secs);
    let (data, actual) = match conn.read_body_hashed(stall).await {
        Ok(d) => d,
        Err(e) => {
            return error(
                408,
                "body_timeout",
                format!("chunk {index} did not arrive: {e}"),
            )
        }
    };
    match app.store.put_chunk(id, index, expected, actual, data).await {
        Ok(s) => Response::json(
            200,
            &json!({"index": index, "received_chunks": s.received_chunks, "chunks": s.chunks}),
        ),
        Err(e) => store_error(&e),
    }
}

fn download(app: &App, req: &Request, name: &str) -> Response {
    let Some(entry) = app.store.file(name) else {
        return store_error(&StoreError::FileNotFound);
    };
    let etag = format!("\"{}\"", entry.sha256);
    if req
        .header("if-none-match")
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return Response::new(304).header("etag", etag);
    }
    let file = match std::fs::File::open(app.store.file_path(name)) {
        Ok(f) => f,
        Err(e) => return store_error(&StoreError::from(e)),
    };
    let len = entry.size;
    let (status, offset, count) = match range::parse(req.header("range"), len) {
        RangeRequest::Whole => (200, 0, len),
        RangeRequest::Part { start, end } => (206, start, end - start + 1),
        RangeRequest::Unsatisfiable => {
            return error(416, "bad_range", format!("the file has {len} bytes"))
                .header("content-range", format!("bytes */{len}"));
        }
    };
    let mut resp = Response::new(status)
        .header("content-type", "application/octet-stream")
        .header("etag", etag)
        .header("accept-ranges", "bytes")
        .header(
            "content-disposition",
            format!(
                "attachment; filename=\"{}\"; filename*=UTF-8''{}",
                ascii_fallback(name),
                percent_encode(name)
            ),
        );
    if status == 206 {
        resp = resp.header(
            "content-range",
            format!("bytes {offset}-{}/{len}", offset + count - 1),
        );
    }
    resp.body = Body::File {
        file,
        offset,
        len: count,
    };
    resp
}

/// The name for old clients that ignore `filename*`: printable ASCII without quotes.
fn ascii_fallback(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Blocks the event loop thread for `secs` (at most 600): the watchdog test's stuck loop.
/// Compiled only with the `debug-stall` feature, for the image boot test.
#[cfg(feature = "debug-stall")]
fn debug_stall(req: &Request) -> Response {
    let secs = match req.query_param("secs").map(|s| s.parse::<u64>()) {
        Some(Ok(secs)) if secs <= 600 => secs,
        _ => {
            return error(
                400,
                "bad_secs",
                "secs must be a whole number up to 600".into(),
            )
        }
    };
    log::warn!("debug-stall: blocking the event loop for {secs} s");
    std::thread::sleep(std::time::Duration::from_secs(secs));
    Response::json(200, &json!({"stalled_secs": secs}))
}
