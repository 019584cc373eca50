//! What each admin path answers.

use std::time::SystemTime;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};

use super::Shared;
use crate::ledger::TenantDetail;
use crate::telemetry::Format;

/// The status page: one self-contained file, scripts and styles inline.
const PAGE: &str = include_str!("page.html");

/// The page may run its own inline script and style and fetch from this
/// origin, nothing else: no external asset can sneak in.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

pub(super) fn respond(request: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let ledger = &shared.ledger;
    match request.uri().path() {
        "/metrics" => {
            let accept = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|value| value.to_str().ok());
            let format = Format::negotiate(accept);
            let body = shared.telemetry.metrics.render(ledger, format);
            Response::builder()
                .header(header::CONTENT_TYPE, format.content_type())
                .header(header::VARY, "Accept")
                .body(Full::new(Bytes::from(body)))
                .expect("a metrics response is valid")
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ledger.is_draining() => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" => text(StatusCode::OK, "ready\n"),
        "/status.json" => {
            let body = shared.board.json(
                &ledger.statuses_with(TenantDetail::None),
                ledger.is_draining(),
                SystemTime::now(),
            );
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CACHE_CONTROL, "no-store")
                .body(Full::new(Bytes::from(body)))
                .expect("a status response is valid")
        }
        "/" | "/index.html" => Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(header::CONTENT_SECURITY_POLICY, PAGE_POLICY)
            .header("x-content-type-options", "nosniff")
            .body(Full::new(Bytes::from_static(PAGE.as_bytes())))
            .expect("the page response is valid"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /status.json, /metrics, /healthz or /readyz\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a static response is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained() {
        // No asset from anywhere: no src/href to another origin, no imports.
        for needle in ["http://", "https://", "//cdn", "@import", " src=", "<link"] {
            assert!(!PAGE.contains(needle), "the page contains {needle:?}");
        }
        assert!(PAGE.contains("status.json"));
    }
}
