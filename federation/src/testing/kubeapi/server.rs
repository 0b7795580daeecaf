//! The HTTPS front: accepting connections (HTTP/1.1 and HTTP/2 over TLS), bearer-token
//! authentication, 403s for revoked verbs, request counting, and routing to discovery,
//! OpenAPI or the resource handlers ([`super::rest`], [`super::watch`]).
//!
//! Must not: panic on any request; every failure is a `Status` body.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::request::{self, PathError};
use super::status::ApiError;
use super::{Shared, lock, openapi, resources, rest, watch};

/// Response bodies: whole documents or a watch stream.
pub type Body = BoxBody<Bytes, Infallible>;

/// The largest request body accepted (the real server's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

pub fn json(code: u16, value: &Value) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

pub fn error(e: &ApiError) -> Response<Body> {
    json(e.code, &e.to_status())
}

/// Accepts connections until `stop` fires; then every connection (and with it every open
/// watch) is dropped.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(shared, req).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                });
            }
        }
    }
    connections.abort_all();
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    match route(shared, req).await {
        Ok(response) => response,
        Err(e) => error(&e),
    }
}

fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    presented == Some(shared.token.as_str())
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    if !authorized(&shared, &req) {
        return Err(ApiError::unauthorized());
    }
    let path = req.uri().path().trim_end_matches('/').to_string();
    let q = request::query(req.uri().query());
    if let Some(doc) = discovery(&shared, &path) {
        if req.method() != Method::GET {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource: {path}"
            )));
        }
        return Ok(json(200, &doc));
    }
    let target = match request::target(&path) {
        Ok(target) => target,
        Err(PathError::NotResource | PathError::NotFound) => {
            return Err(ApiError::path_not_found());
        }
    };
    let verb = request::verb(req.method(), &target, &q);
    if verb == "unknown" || (verb == "create" && target.name.is_some()) {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {} {path}",
            req.method()
        )));
    }
    if target.sub.is_some() && !matches!(verb, "get" | "update" | "patch") {
        return Err(ApiError::method_not_allowed(format!(
            "{verb} is not supported on {}",
            target.rbac_resource()
        )));
    }
    let resource = target.rbac_resource();
    *lock(&shared.counts)
        .entry((verb.to_string(), resource.clone()))
        .or_insert(0) += 1;
    let revoked = lock(&shared.revoked).contains(&(
        verb.to_string(),
        target.def.group.to_string(),
        resource.clone(),
    ));
    if revoked {
        return Err(ApiError::forbidden(
            &shared.user,
            verb,
            target.def.group,
            &resource,
            target.namespace.as_deref(),
            target.name.as_deref(),
        ));
    }
    let accept = header_str(&req, header::ACCEPT);
    let content_type = header_str(&req, header::CONTENT_TYPE);
    if verb == "watch" {
        return watch::watch(shared, &target, &q, &accept);
    }
    let body = match req.method() {
        &Method::GET => Bytes::new(),
        _ => match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ApiError::too_large(format!(
                    "the request body is larger than {MAX_BODY} bytes"
                )));
            }
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "reading the request body: {e}"
                )));
            }
        },
    };
    let call = rest::Call {
        target: &target,
        verb,
        q: &q,
        accept: &accept,
        content_type: &content_type,
        body: &body,
    };
    rest::handle(&shared, call)
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// `/version`, `/api`, `/apis`, group and group/version documents, OpenAPI v3.
fn discovery(shared: &Shared, path: &str) -> Option<Value> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => Some(resources::version()),
        ["api"] => Some(resources::core_versions(&lock(&shared.address))),
        ["api", version] => resources::resource_list("", version),
        ["apis"] => Some(resources::group_list()),
        ["apis", group] => resources::group(group),
        ["apis", group, version] => resources::resource_list(group, version),
        ["openapi", "v3"] => Some(openapi::root()),
        ["openapi", "v3", rest @ ..] => openapi::group_version(&rest.join("/")),
        _ => None,
    }
}
