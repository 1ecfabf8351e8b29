//! The embedded browser app and the QR endpoint, end to end: every file under `web/` is
//! served from the binary with its type, ETag and revalidation, and `/api/qr.svg` decodes
//! (with an independent QR decoder) to the address other devices should open.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;

/// One request with a chosen `Host` header and extra headers, on a fresh connection.
fn raw(lv: &Lanvan, method: &str, path: &str, host: &str, extra: &str) -> Resp {
    let mut s = TcpStream::connect(lv.addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut body = Vec::new();
    r.read_to_end(&mut body).unwrap();
    Resp {
        status,
        headers,
        body,
    }
}

fn web_files(dir: &Path, out: &mut Vec<String>, prefix: &str) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if e.path().is_dir() {
            web_files(&e.path(), out, &format!("{prefix}{name}/"));
        } else {
            out.push(format!("{prefix}{name}"));
        }
    }
}

#[test]
fn every_web_file_is_served_from_the_binary_with_its_type_and_etag() {
    let lv = Lanvan::start("web-files", &[]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let mut paths = Vec::new();
    web_files(&root, &mut paths, "");
    assert!(paths.iter().any(|p| p == "app.js"), "{paths:?}");
    for path in &paths {
        let want = std::fs::read(root.join(path)).unwrap();
        let r = lv.get(&format!("/{path}"));
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body, want, "{path} is served byte for byte");
        let ty = r.header("content-type").unwrap();
        let expected = match path.rsplit('.').next().unwrap() {
            "html" => "text/html; charset=utf-8",
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "svg" => "image/svg+xml",
            other => panic!("a web file of an untested type: .{other}"),
        };
        assert_eq!(ty, expected, "{path}");
        assert_eq!(r.header("cache-control"), Some("no-cache"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        // A browser's cached copy is confirmed with 304 and no body.
        let etag = r.header("etag").unwrap().to_string();
        let again = raw(
            &lv,
            "GET",
            &format!("/{path}"),
            "lanvan",
            &format!("if-none-match: {etag}\r\n"),
        );
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty());
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        let head = raw(&lv, "HEAD", &format!("/{path}"), "lanvan", "");
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        assert_eq!(
            head.header("content-length"),
            Some(&*want.len().to_string())
        );
    }
    // `/` is the app's page.
    let index = lv.get("/");
    assert_eq!(index.status, 200);
    assert_eq!(index.body, std::fs::read(root.join("index.html")).unwrap());
    // Nothing outside the table is reachable, and other methods are refused.
    for path in [
        "/nope.js",
        "/%2e%2e/Cargo.toml",
        "/..%2fCargo.toml",
        "/web/app.js",
    ] {
        let r = lv.get(path);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"], "not_found");
    }
    assert_eq!(raw(&lv, "POST", "/", "lanvan", "").status, 405);
    // The files served are those compiled in: the box runs with no web/ beside it.
    assert!(!lv.data.join("web").exists());
}

/// Draws the SVG the box renders (one `M x yhwvh...` rectangle per dark module) at 8 pixels
/// per module and decodes it with rqrr.
fn decode_qr(svg: &str) -> String {
    let dims = svg.split("viewBox=\"0 0 ").nth(1).unwrap();
    let n: usize = dims.split(' ').next().unwrap().parse().unwrap();
    let path = svg
        .split(" d=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let mut dark = vec![false; n * n];
    for rect in path.split('M').filter(|s| !s.is_empty()) {
        let (xy, rest) = rect.split_once('h').unwrap();
        let (x, y) = xy.split_once(' ').unwrap();
        let (w, rest) = rest.split_once('v').unwrap();
        let h = rest.split('H').next().unwrap();
        let [x, y, w, h]: [usize; 4] = [x, y, w, h].map(|v| v.parse().unwrap());
        for yy in y..y + h {
            for xx in x..x + w {
                dark[yy * n + xx] = true;
            }
        }
    }
    let scale = 8;
    let px = n * scale;
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(px, px, |x, y| {
        if dark[(y / scale) * n + x / scale] {
            0
        } else {
            255
        }
    });
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the image");
    grids[0].decode().unwrap().1
}

#[test]
fn the_qr_code_holds_the_address_other_devices_should_open() {
    let lv = Lanvan::start("web-qr", &[]);
    let port = lv.addr.port();
    // Opened by a LAN name or address: that address, as the browser used it.
    for host in ["lanvan.local:8080", "192.168.1.20:8080", "[fd00::5]:8080"] {
        let r = raw(&lv, "GET", "/api/qr.svg", host, "");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("image/svg+xml"));
        let url = format!("http://{host}/");
        assert_eq!(r.header("x-lanvan-url"), Some(url.as_str()));
        let svg = String::from_utf8(r.body).unwrap();
        assert!(svg.starts_with("<svg"), "inline-ready SVG: {}", &svg[..40]);
        assert_eq!(decode_qr(&svg), url);
    }
    // Opened on the box itself: a loopback address is useless to a phone, so the code
    // holds the box's LAN address (or localhost when it has none) with the same port.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let r = raw(&lv, "GET", "/api/qr.svg", &host, "");
        let url = r.header("x-lanvan-url").unwrap().to_string();
        assert!(!url.contains("127.0.0.1"), "{url}");
        assert!(
            url.starts_with("http://") && url.ends_with(&format!(":{port}/")),
            "{url}"
        );
        assert_eq!(decode_qr(&String::from_utf8(r.body).unwrap()), url);
    }
    // A Host that is not a host name is not echoed.
    let r = raw(&lv, "GET", "/api/qr.svg", "evil\"><script>:80", "");
    assert_eq!(r.status, 200);
    assert!(!r.header("x-lanvan-url").unwrap().contains("evil"));
    assert!(!String::from_utf8(r.body).unwrap().contains("script"));
}

#[test]
fn the_file_list_carries_the_box_clock() {
    let lv = Lanvan::start("web-now", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let listed = lv.get("/api/files").json();
    let box_now = listed["now"].as_i64().unwrap();
    assert!((box_now - now).abs() < 5000, "{box_now} vs {now}");
}
