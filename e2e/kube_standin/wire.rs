//! The stand-in's wire protocol read by a plain hyper client: watch resume from a
//! resourceVersion, 410 Gone after `compact()`, BOOKMARKs, server-ended watches, restart,
//! paging, status subresource permissions and `Status` errors.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use isthmus_federation::testing::kubeapi::KubeApi;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Margin for anything the server should do "now" on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(10);

async fn send(
    api: &KubeApi,
    method: &str,
    path: &str,
    body: Option<(&str, Value)>,
    token: &str,
) -> hyper::Response<Incoming> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(api.ca_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(api.addr())
        .await
        .expect("connect to the stand-in");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("TLS to the stand-in, verified with its CA");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (content_type, payload) = match body {
        Some((ct, v)) => (ct, Bytes::from(v.to_string())),
        None => ("application/json", Bytes::new()),
    };
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", api.addr().to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type)
        .body(Full::new(payload))
        .unwrap();
    sender.send_request(req).await.expect("a response")
}

/// A whole-body request: status and JSON body.
async fn call(
    api: &KubeApi,
    method: &str,
    path: &str,
    body: Option<(&str, Value)>,
) -> (u16, Value) {
    let response = send(api, method, path, body, api.token()).await;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A watch stream read one JSON line at a time.
struct Watch {
    body: Incoming,
    buf: Vec<u8>,
}

impl Watch {
    async fn open(api: &KubeApi, path: &str) -> Watch {
        let response = send(api, "GET", path, None, api.token()).await;
        assert_eq!(response.status(), 200, "watch {path}");
        Watch {
            body: response.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event, or `None` when the server ended the stream; fails after `within`.
    async fn next(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).expect("one JSON event per line"));
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("no watch event within {within:?}"));
            match frame {
                None | Some(Err(_)) => return None,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

fn svc(name: &str, port: u16, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default", "labels": labels},
           "spec": {"ports": [{"port": port}]}})
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

const SERVICES: &str = "/api/v1/namespaces/default/services";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_expires_and_bookmarks() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path()).await;
    api.set_bookmark_interval(Duration::from_millis(300));
    let a = api.put(svc("a", 1, json!({"app": "x"}))).unwrap();
    let from = rv_of(&a);
    api.put(svc("b", 1, json!({}))).unwrap();
    let a2 = api.put(svc("a", 2, json!({"app": "x"}))).unwrap();

    let mut w = Watch::open(&api, &format!("{SERVICES}?watch=1&resourceVersion={from}")).await;
    let first = w.next(SOON).await.unwrap();
    assert_eq!(
        (
            first["type"].as_str(),
            first["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("b"))
    );
    let second = w.next(SOON).await.unwrap();
    assert_eq!(second["type"], "MODIFIED");
    assert_eq!(second["object"], a2);

    let mut initial = Watch::open(
        &api,
        &format!("{SERVICES}?watch=true&resourceVersion=0&labelSelector=app%3Dx"),
    )
    .await;
    let added = initial.next(SOON).await.unwrap();
    assert_eq!(
        (
            added["type"].as_str(),
            added["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("a"))
    );
    // Leaving the selector reads as DELETED, with the last matching content.
    let left = api.put(svc("a", 2, json!({"app": "y"}))).unwrap();
    let gone = initial.next(SOON).await.unwrap();
    assert_eq!(gone["type"], "DELETED");
    assert_eq!(gone["object"]["metadata"]["labels"]["app"], "x");
    assert_eq!(rv_of(&gone["object"]), rv_of(&left));

    let now = api.resource_version();
    let mut b = Watch::open(
        &api,
        &format!("{SERVICES}?watch=1&allowWatchBookmarks=true&resourceVersion={now}"),
    )
    .await;
    let bookmark = b.next(SOON).await.unwrap();
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(
        bookmark["object"]["metadata"]["resourceVersion"],
        now.to_string()
    );
    api.put(svc("c", 1, json!({}))).unwrap();
    let mut saw_c = false;
    while let Some(ev) = b.next(SOON).await {
        if ev["type"] == "ADDED" {
            saw_c = ev["object"]["metadata"]["name"] == "c";
            break;
        }
    }
    assert!(saw_c);
    api.expire_watches();
    let mut last = None;
    while let Some(ev) = b.next(SOON).await {
        last = Some(ev);
    }
    let last = last.expect("a last event before the server ends the watch");
    assert_eq!(
        last["type"], "BOOKMARK",
        "the server's last word is a bookmark: {last}"
    );
    assert_eq!(
        last["object"]["metadata"]["resourceVersion"],
        api.resource_version().to_string()
    );

    let mut short = Watch::open(
        &api,
        &format!("{SERVICES}?watch=1&timeoutSeconds=1&resourceVersion={now}"),
    )
    .await;
    let started = tokio::time::Instant::now();
    while short.next(SOON).await.is_some() {}
    assert!(started.elapsed() < SOON);

    api.compact();
    let mut old = Watch::open(&api, &format!("{SERVICES}?watch=1&resourceVersion={from}")).await;
    let error = old.next(SOON).await.unwrap();
    assert_eq!(error["type"], "ERROR");
    assert_eq!(
        (
            error["object"]["kind"].as_str(),
            error["object"]["code"].as_u64(),
            error["object"]["reason"].as_str()
        ),
        (Some("Status"), Some(410), Some("Expired"))
    );
    assert!(
        old.next(SOON).await.is_none(),
        "the stream ends after the 410"
    );
    let mut fresh = Watch::open(
        &api,
        &format!(
            "{SERVICES}?watch=1&resourceVersion={}",
            api.resource_version()
        ),
    )
    .await;
    api.put(svc("d", 1, json!({}))).unwrap();
    assert_eq!(
        fresh.next(SOON).await.unwrap()["object"]["metadata"]["name"],
        "d"
    );

    let initial_events = format!(
        "{SERVICES}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
    );
    let mut streaming = Watch::open(&api, &initial_events).await;
    let mut names = Vec::new();
    let end = loop {
        let ev = streaming.next(SOON).await.unwrap();
        if ev["type"] == "BOOKMARK" {
            break ev;
        }
        names.push(
            ev["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    };
    assert_eq!(names, ["a", "b", "c", "d"]);
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    let counts = api.requests();
    assert_eq!(counts.count("watch", "services"), 7);
    assert_eq!(counts.count("list", "services"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_objects_and_drops_watches() {
    let dir = tempfile::tempdir().unwrap();
    let mut api = KubeApi::start(dir.path()).await;
    let before = api.put(svc("a", 1, json!({}))).unwrap();
    let mut w = Watch::open(
        &api,
        &format!("{SERVICES}?watch=1&resourceVersion={}", rv_of(&before)),
    )
    .await;
    api.restart().await;
    assert!(w.next(SOON).await.is_none(), "a restart ends open watches");
    let (status, got) = call(&api, "GET", &format!("{SERVICES}/a"), None).await;
    assert_eq!((status, got), (200, before.clone()));
    let after = api.put(svc("a", 2, json!({}))).unwrap();
    assert!(rv_of(&after) > rv_of(&before));
    let mut resumed = Watch::open(
        &api,
        &format!("{SERVICES}?watch=1&resourceVersion={}", rv_of(&before)),
    )
    .await;
    assert_eq!(
        resumed.next(SOON).await.unwrap()["object"],
        after,
        "history survives a restart"
    );

    api.stop().await;
    assert!(
        TcpStream::connect(api.addr()).await.is_err(),
        "stopped: connections are refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_paging_and_status_subresource() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path()).await;
    let wrong = send(&api, "GET", SERVICES, None, "wrong").await;
    assert_eq!(wrong.status(), 401);
    let (status, body) = call(&api, "GET", "/api/v1/namespaces/default/pods", None).await;
    assert_eq!(
        (status, body["kind"].as_str(), body["code"].as_u64()),
        (404, Some("Status"), Some(404))
    );
    let (status, body) = call(
        &api,
        "POST",
        SERVICES,
        Some((
            "application/json",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {}}),
        )),
    )
    .await;
    assert_eq!((status, body["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(body["details"]["causes"][0]["field"], "metadata.name");

    for i in 0..5 {
        api.put(svc(&format!("s{i}"), 1, json!({}))).unwrap();
    }
    let (_, page1) = call(&api, "GET", &format!("{SERVICES}?limit=2"), None).await;
    let token = page1["metadata"]["continue"].as_str().unwrap().to_string();
    assert_eq!(page1["metadata"]["remainingItemCount"], 3);
    api.put(svc("s0a", 1, json!({}))).unwrap();
    let (_, page2) = call(
        &api,
        "GET",
        &format!("{SERVICES}?limit=10&continue={token}"),
        None,
    )
    .await;
    let names: Vec<&str> = page2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["s2", "s3", "s4"],
        "later pages are of the first page's snapshot"
    );
    assert_eq!(
        page2["metadata"]["resourceVersion"],
        page1["metadata"]["resourceVersion"]
    );
    assert!(page2["metadata"].get("continue").is_none());

    let export = json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport", "metadata": {"name": "s1", "namespace": "default"}});
    let export = api.put(export).unwrap();
    let base = "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/default/serviceexports/s1";
    api.revoke("update", "multicluster.x-k8s.io", "serviceexports/status");
    let mut with_status = export.clone();
    with_status["status"] = json!({"conditions": [{"type": "Valid", "status": "True"}]});
    let (status, body) = call(
        &api,
        "PUT",
        &format!("{base}/status"),
        Some(("application/json", with_status.clone())),
    )
    .await;
    assert_eq!(status, 403);
    assert!(body["message"].as_str().unwrap().contains("cannot update resource \"serviceexports/status\" in API group \"multicluster.x-k8s.io\" in the namespace \"default\""), "{body}");
    let (status, _) = call(
        &api,
        "PUT",
        base,
        Some(("application/json", with_status.clone())),
    )
    .await;
    assert_eq!(status, 200, "the main resource stays writable");
    api.allow("update", "multicluster.x-k8s.io", "serviceexports/status");
    let (status, body) = call(
        &api,
        "PUT",
        &format!("{base}/status"),
        Some(("application/json", with_status)),
    )
    .await;
    assert_eq!(
        (status, body["status"]["conditions"][0]["status"].as_str()),
        (200, Some("True"))
    );
    let (status, body) = call(
        &api,
        "PATCH",
        base,
        Some(("application/strategic-merge-patch+json", json!({}))),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    let (status, _) = call(
        &api,
        "PATCH",
        base,
        Some(("application/apply-patch+yaml", json!({}))),
    )
    .await;
    assert_eq!(status, 415);
    let (status, body) = call(
        &api,
        "PATCH",
        &format!("{base}/status"),
        Some((
            "application/merge-patch+json",
            json!({"status": {"conditions": []}, "metadata": {"labels": {"x": "y"}}}),
        )),
    )
    .await;
    assert_eq!(
        (
            status,
            body["status"]["conditions"].as_array().map(Vec::len)
        ),
        (200, Some(0))
    );
    assert!(
        body["metadata"].get("labels").is_none(),
        "a status patch changes only status"
    );
    let counts = api.requests();
    assert_eq!(
        (
            counts.count("update", "serviceexports/status"),
            counts.count("patch", "serviceexports/status")
        ),
        (2, 1)
    );
}
