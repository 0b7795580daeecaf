//! Watches: newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`,
//! `ERROR`) on a streamed 200 response, as the real server sends them.
//!
//! - `resourceVersion` absent or `"0"`: the current objects as `ADDED` first, then changes;
//!   `N`: every change after `N` from the kept history, or one `ERROR` event carrying a 410
//!   `Expired` Status when `N` is older than the history (after [`super::KubeApi::compact`]).
//! - `sendInitialEvents=true` (with `resourceVersionMatch=NotOlderThan`): the current objects,
//!   then a `BOOKMARK` annotated `k8s.io/initial-events-end: "true"`.
//! - `allowWatchBookmarks=true`: a `BOOKMARK` every bookmark interval and before the server
//!   ends the stream (at `timeoutSeconds`, default 1800, or [`super::KubeApi::expire_watches`]).
//! - Selectors follow objects in and out: an object that starts matching arrives as `ADDED`,
//!   one that stops matching as `DELETED` (with its previous content).
//!
//! Must not: hold the store lock while sending.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::request::{Target, flag};
use super::resources::ResourceDef;
use super::selector::Selector;
use super::server::Body;
use super::status::ApiError;
use super::store::{Event, EventKind};
use super::{Shared, lock, table};

/// The server's default watch length when the client sets no `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// What one watch delivers.
struct Filter {
    def: &'static ResourceDef,
    namespace: Option<String>,
    selector: Selector,
    table: bool,
    include: String,
}

impl Filter {
    fn in_scope(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
    }

    /// The event this watch sends for a committed change, if any.
    fn event(&self, ev: &Event) -> Option<Value> {
        if ev.def != self.def || !self.in_scope(&ev.object) {
            return None;
        }
        let now = self.selector.matches(&ev.object);
        let before = ev.prev.as_ref().is_some_and(|p| self.selector.matches(p));
        let (kind, object) = match ev.kind {
            EventKind::Added if now => ("ADDED", ev.object.clone()),
            EventKind::Modified if now && before => ("MODIFIED", ev.object.clone()),
            EventKind::Modified if now => ("ADDED", ev.object.clone()),
            EventKind::Modified if before => {
                let mut last = ev.prev.clone().unwrap_or_default();
                last["metadata"]["resourceVersion"] = json!(ev.rv.to_string());
                ("DELETED", last)
            }
            EventKind::Deleted if before || now => ("DELETED", ev.object.clone()),
            _ => return None,
        };
        Some(self.line(kind, &object))
    }

    fn line(&self, kind: &str, object: &Value) -> Value {
        if self.table && kind != "BOOKMARK" {
            let rv = object["metadata"]["resourceVersion"].as_str().unwrap_or("");
            let t = table::table(
                self.def,
                std::slice::from_ref(object),
                rv,
                None,
                &self.include,
            );
            return json!({"type": kind, "object": t});
        }
        json!({"type": kind, "object": object})
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Value {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object =
            json!({"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": meta});
        json!({"type": "BOOKMARK", "object": object})
    }
}

fn encode(line: &Value) -> Bytes {
    let mut text = line.to_string();
    text.push('\n');
    Bytes::from(text)
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let stream = ReceiverStream::new(rx).map(|b| Ok(Frame::data(b)));
    let mut response = Response::new(StreamBody::new(stream).boxed());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Starts a watch; the events flow from a task until the client leaves or the server ends it.
pub fn watch(
    shared: Arc<Shared>,
    target: &Target,
    q: &HashMap<String, String>,
    accept: &str,
) -> Result<Response<Body>, ApiError> {
    let selector = Selector::parse(
        q.get("labelSelector").map(String::as_str),
        q.get("fieldSelector").map(String::as_str),
    )
    .map_err(ApiError::bad_request)?;
    let filter = Filter {
        def: target.def,
        namespace: target.namespace.clone(),
        selector,
        table: table::wants_table(accept),
        include: q.get("includeObject").cloned().unwrap_or_default(),
    };
    let bookmarks = flag(q, "allowWatchBookmarks");
    let initial_events = flag(q, "sendInitialEvents");
    if initial_events
        && (q.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") || !bookmarks)
    {
        return Err(ApiError::invalid(target.def, "", vec![(
            "FieldValueForbidden",
            "sendInitialEvents".to_string(),
            "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan and allowWatchBookmarks".to_string(),
        )]));
    }
    let timeout = match q.get("timeoutSeconds").filter(|t| !t.is_empty()) {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => DEFAULT_TIMEOUT,
    };
    let asked = q.get("resourceVersion").map_or("", String::as_str);
    let from = match asked {
        "" | "0" => None,
        rv => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?,
        ),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let response = stream_response(rx);
    let (initial, start, subscription) = {
        let store = lock(&shared.store);
        let initial: Vec<Value> = if from.is_none() || initial_events {
            store.list(target.def, target.namespace.as_deref())
        } else {
            Vec::new()
        };
        let start = if initial_events || from.is_none() {
            store.rv()
        } else {
            from.unwrap_or(0)
        };
        (initial, start, store.subscribe(start))
    };
    let (backlog, receiver) = match subscription {
        Ok(sub) => sub,
        Err(gone) => {
            let line = json!({"type": "ERROR", "object": gone.to_status()});
            // The channel has room for one line; the stream ends when `tx` drops.
            let _ = tx.try_send(encode(&line));
            return Ok(response);
        }
    };
    let mut out = Sender {
        tx,
        seen: start,
        filter,
        bookmarks,
        interval: *lock(&shared.bookmark_every),
        timeout,
        expire: shared.expire.subscribe(),
        generation: shared.generation.subscribe(),
    };
    tokio::spawn(async move {
        let _ = out.run(initial, initial_events, backlog, receiver).await;
    });
    Ok(response)
}

struct Sender {
    tx: mpsc::Sender<Bytes>,
    /// The newest resourceVersion this watch has passed (delivered or filtered out).
    seen: u64,
    filter: Filter,
    /// `allowWatchBookmarks`.
    bookmarks: bool,
    interval: Duration,
    timeout: Duration,
    expire: tokio::sync::watch::Receiver<u64>,
    generation: tokio::sync::watch::Receiver<u64>,
}

/// The client went away.
struct Gone;

impl Sender {
    async fn send(&self, line: &Value) -> Result<(), Gone> {
        self.tx.send(encode(line)).await.map_err(|_| Gone)
    }

    async fn pass(&mut self, ev: &Event) -> Result<(), Gone> {
        if ev.rv <= self.seen {
            return Ok(());
        }
        self.seen = ev.rv;
        match self.filter.event(ev) {
            Some(line) => self.send(&line).await,
            None => Ok(()),
        }
    }

    async fn run(
        &mut self,
        initial: Vec<Value>,
        initial_events: bool,
        backlog: Vec<Arc<Event>>,
        mut receiver: broadcast::Receiver<Arc<Event>>,
    ) -> Result<(), Gone> {
        for obj in initial.iter().filter(|o| self.filter.selector.matches(o)) {
            let line = self.filter.line("ADDED", obj);
            self.send(&line).await?;
        }
        if initial_events {
            let line = self.filter.bookmark(self.seen, true);
            self.send(&line).await?;
        }
        for ev in &backlog {
            self.pass(ev).await?;
        }
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let interval = self.interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                received = receiver.recv() => match received {
                    Ok(ev) => self.pass(&ev).await?,
                    // Fell behind or the store is gone: end the stream; the client resumes.
                    Err(_) => return Ok(()),
                },
                _ = ticker.tick(), if self.bookmarks => {
                    let line = self.filter.bookmark(self.seen, false);
                    self.send(&line).await?;
                }
                _ = &mut deadline => break,
                _ = self.expire.changed() => break,
                _ = self.generation.changed() => return Ok(()),
                _ = self.tx.closed() => return Err(Gone),
            }
        }
        // Ending on the server's side: drain what is already committed, then a last bookmark.
        while let Ok(ev) = receiver.try_recv() {
            self.pass(&ev).await?;
        }
        if self.bookmarks {
            let line = self.filter.bookmark(self.seen, false);
            self.send(&line).await?;
        }
        Ok(())
    }
}
