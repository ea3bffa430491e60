//! The demo chat page and the browser client (`/client.js`), embedded in the binary so a
//! gateway serves them offline, with no CDN and no files to deploy next to it.
//!
//! Caching: the URLs are not versioned (products import `/client.js` by that name), so
//! every response says `Cache-Control: no-cache` with a strong `ETag` of the content: a
//! browser revalidates each time and gets a body-less 304 while the binary is the same.
//! The ETag is computed at compile time and is the same on every node of a cluster.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// One embedded file.
pub struct Asset {
    /// URL path it is served at.
    pub path: &'static str,
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// The file's bytes.
    pub body: &'static [u8],
    /// FNV-1a 64 of `body`: the ETag.
    hash: u64,
}

/// FNV-1a, 64 bit: tiny, `const`, and stable across Rust versions (unlike `DefaultHasher`),
/// so every build of the same files yields the same ETag.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

macro_rules! asset {
    ($path:literal, $file:literal, $ct:literal) => {
        Asset {
            path: $path,
            content_type: $ct,
            body: include_bytes!($file),
            hash: fnv1a(include_bytes!($file)),
        }
    };
}

/// Everything served from `gateway/static/`.
pub static ASSETS: &[Asset] = &[
    asset!("/", "../static/index.html", "text/html; charset=utf-8"),
    asset!(
        "/client.js",
        "../static/client.js",
        "text/javascript; charset=utf-8"
    ),
    asset!(
        "/app.js",
        "../static/app.js",
        "text/javascript; charset=utf-8"
    ),
    asset!(
        "/style.css",
        "../static/style.css",
        "text/css; charset=utf-8"
    ),
    asset!("/favicon.svg", "../static/favicon.svg", "image/svg+xml"),
];

/// The asset served at `path`, if any.
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

impl Asset {
    /// The quoted strong ETag.
    pub fn etag(&self) -> String {
        format!("\"{:016x}\"", self.hash)
    }
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison, as RFC 9110 asks
/// for this header: a `W/` prefix, e.g. added by a compressing proxy, still matches).
fn none_match(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// A `Host` header value that is safe to put in a CSP source (a host name or IP and an
/// optional port). Anything else (spaces, `;`, quotes) would let a request header inject
/// policy directives, so it is not used.
fn safe_host(host: &str) -> Option<&str> {
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    ok.then_some(host)
}

/// The Content-Security-Policy: scripts, styles and images only from this origin (no
/// inline code, no CDN), and WebSocket connections only back to this host. `'self'`
/// covers ws:/wss: in current browsers; the explicit sources are for older ones.
pub fn content_security_policy(host: Option<&str>) -> String {
    let connect = match host.and_then(safe_host) {
        Some(h) => format!("'self' ws://{h} wss://{h}"),
        None => "'self'".to_string(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// Serves the asset at `path` (GET or HEAD; hyper leaves out a HEAD body), answering
/// a matching `If-None-Match` with 304. 404 when there is none.
pub fn serve(path: &str, req_headers: &HeaderMap) -> Response<Full<Bytes>> {
    let Some(asset) = find(path) else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let etag = asset.etag();
    let fresh = req_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| none_match(v, &etag));
    let mut r = if fresh {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Full::new(Bytes::from_static(asset.body)))
    };
    let host = req_headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&content_security_policy(host)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if asset.path == "/client.js" {
        // Lets a product on another origin `import` the client straight from a gateway.
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        serve(path, &map)
    }

    fn header_of(r: &Response<Full<Bytes>>, name: header::HeaderName) -> &str {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[test]
    fn content_types() {
        let want = [
            ("/", "text/html; charset=utf-8"),
            ("/client.js", "text/javascript; charset=utf-8"),
            ("/app.js", "text/javascript; charset=utf-8"),
            ("/style.css", "text/css; charset=utf-8"),
            ("/favicon.svg", "image/svg+xml"),
        ];
        for (path, ct) in want {
            let r = get(path, &[]);
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(header_of(&r, header::CONTENT_TYPE), ct, "{path}");
            assert_eq!(header_of(&r, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        }
        assert_eq!(get("/nope.js", &[]).status(), StatusCode::NOT_FOUND);
        assert!(find("/index.html").is_none());
    }

    #[test]
    fn every_static_file_is_served_and_nonempty() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{}", a.path);
        }
        // The page only references assets that exist (a typo would be a blank page).
        let page = std::str::from_utf8(find("/").expect("index").body).expect("utf-8");
        for referenced in ["/app.js", "/style.css", "/favicon.svg"] {
            assert!(page.contains(referenced), "{referenced} not in index.html");
        }
        let app = std::str::from_utf8(find("/app.js").expect("app").body).expect("utf-8");
        assert!(app.contains("\"/client.js\""), "app.js imports /client.js");
    }

    #[test]
    fn etag_and_revalidation() {
        let r = get("/client.js", &[]);
        let etag = header_of(&r, header::ETAG).to_string();
        assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() == 18);
        assert_eq!(header_of(&r, header::CACHE_CONTROL), "no-cache");
        // Different files, different tags.
        assert_ne!(header_of(&get("/", &[]), header::ETAG), etag);

        let r = get("/client.js", &[("if-none-match", &etag)]);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header_of(&r, header::ETAG), etag);
        let weak = format!("\"x\", W/{etag}");
        assert_eq!(
            get("/client.js", &[("if-none-match", &weak)]).status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            get("/client.js", &[("if-none-match", "*")]).status(),
            StatusCode::NOT_MODIFIED
        );
        let stale = get("/client.js", &[("if-none-match", "\"0000000000000000\"")]);
        assert_eq!(stale.status(), StatusCode::OK);
    }

    #[test]
    fn fnv_is_stable() {
        // Published FNV-1a 64 test vectors: the ETag must not change between builds.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn csp_allows_only_self_and_websocket_to_self() {
        let r = get("/", &[("host", "chat.example:8080")]);
        let csp = header_of(&r, header::CONTENT_SECURITY_POLICY);
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(csp.contains("style-src 'self';"), "{csp}");
        assert!(
            csp.contains("connect-src 'self' ws://chat.example:8080 wss://chat.example:8080;"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("http"),
            "{csp}"
        );
        assert_eq!(header_of(&r, header::REFERRER_POLICY), "no-referrer");
    }

    #[test]
    fn csp_ignores_a_hostile_host_header() {
        for host in ["evil.example; script-src *", "a b", "x'y", ""] {
            let csp = content_security_policy(Some(host));
            assert!(csp.contains("connect-src 'self';"), "{host}: {csp}");
            assert!(!csp.contains("evil"), "{csp}");
        }
        assert!(content_security_policy(None).contains("connect-src 'self';"));
        let v6 = content_security_policy(Some("[::1]:8080"));
        assert!(v6.contains("ws://[::1]:8080"), "{v6}");
    }

    #[test]
    fn only_the_client_is_cross_origin() {
        let js = get("/client.js", &[]);
        assert_eq!(header_of(&js, header::ACCESS_CONTROL_ALLOW_ORIGIN), "*");
        let page = get("/", &[]);
        assert!(page
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none());
    }
}
