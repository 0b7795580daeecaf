//! The dashboard's static assets (`ui/index.html`, `ui/app.js`, `ui/style.css`), embedded in the
//! binary: no CDN, no build step, nothing fetched from anywhere but this admin port. The page
//! polls [`STATE_PATH`] (a read-only JSON route the federation plugs in) every
//! [`REFRESH_MS`] and draws everything itself, the traffic graph as SVG.
//!
//! Every asset is answered with a Content-Security-Policy that lets the page load and fetch
//! only from its own origin, so even a mistake in the page cannot make the browser reach
//! another host. This module must not know federation internals: it owns bytes and headers.

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{HeaderName, HeaderValue};

use super::http::Asset;
use super::{AdminResponse, respond};

/// The JSON document the page polls.
pub const STATE_PATH: &str = "/ui/api/state";
/// How often the page polls (also written in `app.js`, checked by a test).
pub const REFRESH_MS: u32 = 2_000;

const HTML: &str = "text/html; charset=utf-8";

/// The page at `/ui` (and `/ui/`), its script and its style sheet.
pub static ASSETS: [Asset; 4] = [
    Asset {
        path: "/ui",
        content_type: HTML,
        body: include_bytes!("ui/index.html"),
    },
    Asset {
        path: "/ui/",
        content_type: HTML,
        body: include_bytes!("ui/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("ui/app.js"),
    },
    Asset {
        path: "/ui/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("ui/style.css"),
    },
];

/// Same origin only: scripts, styles, images and fetches; no frames, no forms, no plugins.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// An asset's answer: its bytes, its type, and headers that keep the browser on this origin.
pub(super) fn respond_asset(asset: &Asset) -> AdminResponse {
    let mut response = respond(
        StatusCode::OK,
        asset.content_type,
        Bytes::from_static(asset.body),
    );
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(a: &Asset) -> &str {
        std::str::from_utf8(a.body).expect("assets are UTF-8")
    }

    /// Nothing in the page names another host: no `http://`, `https://` or protocol-relative
    /// `//host` URL, no `@import`, no `url(` outside `data:`. (The SVG namespace is an
    /// identifier, never fetched, and is the one allowed exception.)
    #[test]
    fn the_assets_reach_no_other_host() {
        const SVG_NS: &str = "http://www.w3.org/2000/svg";
        for a in &ASSETS {
            let body = text(a).replace(SVG_NS, "");
            let lower = body.to_ascii_lowercase();
            for needle in ["http://", "https://", "@import", "//cdn", "ws://", "wss://"] {
                assert!(!lower.contains(needle), "{} contains {needle}", a.path);
            }
            for (i, _) in lower.match_indices("url(") {
                let rest = lower[i + 4..].trim_start_matches(['"', '\'']);
                assert!(rest.starts_with("data:"), "{}: url( at {i}", a.path);
            }
            for attr in ["src=\"", "href=\""] {
                for (i, _) in lower.match_indices(attr) {
                    let target = &lower[i + attr.len()..];
                    assert!(
                        target.starts_with("/ui/") || target.starts_with('#'),
                        "{}: {attr} must name this port's /ui/ assets: {}",
                        a.path,
                        &target[..target.find('"').unwrap_or(target.len())]
                    );
                }
            }
        }
    }

    /// The page loads exactly the embedded script and style sheet, and the script polls the
    /// state route at the documented period.
    #[test]
    fn the_page_uses_its_own_assets_and_polls_the_state_route() {
        let html = text(&ASSETS[0]);
        assert_eq!(ASSETS[0].body, ASSETS[1].body);
        assert!(html.contains("<script src=\"/ui/app.js\""), "{html}");
        assert!(html.contains("href=\"/ui/style.css\""), "{html}");
        let js = text(&ASSETS[2]);
        assert!(js.contains(&format!("'{STATE_PATH}'")), "state path");
        assert!(
            js.contains(&format!("REFRESH_MS = {REFRESH_MS}")),
            "refresh period"
        );
        // The page only reads: no method other than GET in any fetch.
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            assert!(!js.contains(method), "app.js mentions {method}");
        }
        for a in &ASSETS {
            HeaderValue::from_static(a.content_type);
        }
    }

    #[test]
    fn assets_carry_a_same_origin_policy() {
        let r = respond_asset(&ASSETS[2]);
        assert_eq!(r.status(), StatusCode::OK);
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .expect("csp");
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert_eq!(
            r.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
    }
}
