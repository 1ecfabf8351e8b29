//! The browser app: every file under `web/` is compiled into the binary by `build.rs`, so the
//! box serves it with nothing beside the binary. Also draws the QR code of the box's own URL.
//! Pure lookups and rendering; never touches the disk or the network.

use super::http::{Request, Response};
use qrcode::render::svg;
use qrcode::QrCode;

/// One embedded file.
pub struct WebFile {
    /// Path under `web/`, with `/` separators, e.g. `app.js`.
    pub path: &'static str,
    pub bytes: &'static [u8],
    pub content_type: &'static str,
    /// A quoted strong ETag: the first 96 bits of the file's SHA-256, in hex.
    pub etag: &'static str,
}

/// Every file under `web/`, sorted by path.
pub static FILES: &[WebFile] = include!(concat!(env!("OUT_DIR"), "/web_files.rs"));

/// The app's page, served at `/`.
pub fn index() -> &'static WebFile {
    find(&[""]).expect("build.rs checks that web/index.html exists")
}

/// The embedded file at a request path's segments (`[""]` is `index.html`).
pub fn find(segments: &[&str]) -> Option<&'static WebFile> {
    let path = match segments {
        [""] => "index.html".to_string(),
        // Segments never hold `/` (they were split before decoding), and `..` never
        // matches a table entry, so nothing outside the table can be named.
        s => s.join("/"),
    };
    FILES.iter().find(|f| f.path == path)
}

/// Answers GET/HEAD for an embedded file, with `304` when the browser's copy is current.
/// Browsers revalidate on every load (`no-cache`), so a new binary's app shows at once.
pub fn serve(file: &WebFile, req: &Request) -> Response {
    let fresh = req
        .header("if-none-match")
        .is_some_and(|v| v.split(',').any(|t| t.trim() == file.etag));
    let resp = if fresh {
        Response::new(304)
    } else {
        Response::new(200)
            .header("content-type", file.content_type)
            .body(file.bytes.to_vec())
    };
    resp.header("etag", file.etag)
        .header("cache-control", "no-cache")
        .header("x-content-type-options", "nosniff")
}

/// The URL other devices should open: the `Host` the browser used, unless that is a
/// loopback name (useless on another device), in which case the box's LAN address with
/// the same port.
pub fn box_url(req: &Request, listen: &str) -> String {
    let host = req.header("host").filter(|h| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    });
    let port = host
        .and_then(|h| h.rsplit_once(':'))
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map(|(_, p)| p.to_string())
        .or_else(|| listen.rsplit_once(':').map(|(_, p)| p.to_string()))
        .unwrap_or_else(|| "80".into());
    if let Some(h) = host {
        let name = h.strip_suffix(&format!(":{port}")).unwrap_or(h);
        let loopback =
            name.eq_ignore_ascii_case("localhost") || name.starts_with("127.") || name == "[::1]";
        if !loopback {
            return format!("http://{h}/");
        }
    }
    match super::server::lan_address() {
        Some(ip) => format!("http://{ip}:{port}/"),
        None => format!("http://localhost:{port}/"),
    }
}

/// `GET /api/qr.svg`: the box's URL as a QR code (SVG, one unit per module, 4-module quiet
/// zone), with the URL itself in the `x-lanvan-url` header.
pub fn qr(req: &Request, listen: &str) -> Response {
    let url = box_url(req, listen);
    // A URL of at most ~300 bytes always fits a QR code at the default level (M).
    let Ok(code) = QrCode::new(url.as_bytes()) else {
        return super::api::error(500, "io_error", "the URL does not fit a QR code".into());
    };
    let image = code
        .render::<svg::Color>()
        .module_dimensions(1, 1)
        .quiet_zone(true)
        .dark_color(svg::Color("#000"))
        .light_color(svg::Color("#fff"))
        .build();
    // Drop the XML declaration so the app can put the SVG inline.
    let image = match image.find("<svg") {
        Some(at) => image[at..].to_string(),
        None => image,
    };
    Response::new(200)
        .header("content-type", "image/svg+xml")
        .header("cache-control", "no-cache")
        .header("x-lanvan-url", url)
        .body(image.into_bytes())
}
