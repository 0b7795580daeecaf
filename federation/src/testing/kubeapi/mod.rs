//! A Kubernetes API server stand-in for tests (crate feature `testing`): one in-process HTTPS
//! server on `127.0.0.1` that speaks the real wire protocol well enough for Debian's `kubectl`
//! and kube-rs watchers/reflectors to work against it unmodified. Objects are plain JSON.
//!
//! ```no_run
//! # async fn demo() {
//! use isthmus_federation::testing::kubeapi::KubeApi;
//! let dir = tempfile::tempdir().unwrap();
//! let api = KubeApi::start(dir.path()).await;
//! // kubectl --kubeconfig <api.kubeconfig()> ..., or kube::Config::from_custom_kubeconfig(...)
//! api.revoke("list", "", "services"); // the next list of services answers 403
//! api.compact(); // every older resourceVersion now answers 410 Gone to a watch
//! # }
//! ```
//!
//! What it implements and where it differs from a real apiserver: docs/testing-kubernetes.md.
//!
//! Must not: be used outside tests (no persistence, one static token, self-signed CA).

mod objects;
mod openapi;
mod patch;
mod request;
mod resources;
mod rest;
mod selector;
mod server;
mod service;
mod status;
mod store;
mod strategic;
mod table;
mod tls;
mod watch;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use objects::Part;
pub use status::ApiError;

/// The user the kubeconfig's token authenticates as (it appears in 403 messages).
pub const USER: &str = "isthmus-test-admin";

/// Locks, recovering from a poisoned mutex (a panicking test thread must not cascade).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the serving tasks and the test's handle.
pub(crate) struct Shared {
    store: Mutex<store::Store>,
    token: String,
    user: String,
    revoked: Mutex<HashSet<(String, String, String)>>,
    counts: Mutex<BTreeMap<(String, String), u64>>,
    bookmark_every: Mutex<Duration>,
    /// Bumped by [`KubeApi::expire_watches`]: open watches end (with a last bookmark).
    expire: tokio::sync::watch::Sender<u64>,
    /// Bumped when serving stops: open watches end at once.
    generation: tokio::sync::watch::Sender<u64>,
    /// `127.0.0.1:<port>` (for `/api`'s serverAddressByClientCIDRs).
    address: Mutex<String>,
}

/// How many requests of each verb reached each resource (after authentication).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestCounts(BTreeMap<(String, String), u64>);

impl RequestCounts {
    /// Requests of `verb` (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`) on `resource` (`services`, `serviceexports/status`, ...).
    pub fn count(&self, verb: &str, resource: &str) -> u64 {
        self.0
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

struct Serving {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A running stand-in. Dropping it stops serving.
pub struct KubeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    ca_pem: String,
    acceptor: TlsAcceptor,
    serving: Option<Serving>,
}

impl KubeApi {
    /// Starts serving HTTPS on `127.0.0.1:<free port>` with a fresh CA and writes
    /// `dir/kubeconfig` (the CA inline, a bearer-token user, namespace `default`).
    ///
    /// # Panics
    /// When no loopback port can be bound or the kubeconfig cannot be written.
    pub async fn start(dir: &Path) -> KubeApi {
        let identity = tls::identity();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the API server stand-in");
        let addr = listener
            .local_addr()
            .expect("local addr of a bound listener");
        let token = objects::uid().replace('-', "");
        let (expire, _) = tokio::sync::watch::channel(0);
        let (generation, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(store::Store::new()),
            token: token.clone(),
            user: USER.to_string(),
            revoked: Mutex::new(HashSet::new()),
            counts: Mutex::new(BTreeMap::new()),
            bookmark_every: Mutex::new(Duration::from_secs(5)),
            expire,
            generation,
            address: Mutex::new(addr.to_string()),
        });
        let kubeconfig = dir.join("kubeconfig");
        let text = tls::kubeconfig(&format!("https://{addr}"), &identity.ca_pem, USER, &token);
        std::fs::write(&kubeconfig, text).expect("write the stand-in's kubeconfig");
        let mut api = KubeApi {
            shared,
            addr,
            kubeconfig,
            ca_pem: identity.ca_pem,
            acceptor: TlsAcceptor::from(identity.server),
            serving: None,
        };
        api.serve(listener);
        api
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server::serve(
            listener,
            self.acceptor.clone(),
            self.shared.clone(),
            stopped,
        ));
        self.serving = Some(Serving { stop, task });
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The kubeconfig file written at start.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The CA certificate (PEM) that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The bearer token the server accepts (any other gets 401).
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Stops serving: the listener closes (connections are refused), every open connection
    /// and watch is dropped. Objects and the resourceVersion counter are kept.
    pub async fn stop(&mut self) {
        if let Some(serving) = self.serving.take() {
            self.shared.generation.send_modify(|g| *g += 1);
            let _ = serving.stop.send(());
            let _ = serving.task.await;
        }
    }

    /// [`Self::stop`], then serves again on the same port with the same objects; the
    /// resourceVersion counter keeps increasing and the watch history is kept.
    ///
    /// # Panics
    /// When the port cannot be bound again within 10 s.
    pub async fn restart(&mut self) {
        self.stop().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("the stand-in could not bind {} again: {e}", self.addr)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }

    /// Requests of `verb` on `resource` (`services`, `serviceexports/status`) in `group` answer
    /// 403 Forbidden until [`Self::allow`].
    pub fn revoke(&self, verb: &str, group: &str, resource: &str) {
        lock(&self.shared.revoked).insert((verb.into(), group.into(), resource.into()));
    }

    /// Undoes [`Self::revoke`].
    pub fn allow(&self, verb: &str, group: &str, resource: &str) {
        lock(&self.shared.revoked).remove(&(verb.into(), group.into(), resource.into()));
    }

    /// Forgets the event history: a watch from any resourceVersion before now gets one
    /// `ERROR` event with a 410 Expired Status (and a list `continue` token from before, 410).
    pub fn compact(&self) {
        lock(&self.shared.store).compact();
    }

    /// Ends every open watch now, as the server does at `timeoutSeconds` (with a last
    /// `BOOKMARK` for watches that allow them).
    pub fn expire_watches(&self) {
        self.shared.expire.send_modify(|g| *g += 1);
    }

    /// How often open watches with `allowWatchBookmarks` get a BOOKMARK (default 5 s; applies
    /// to watches started afterwards).
    pub fn set_bookmark_interval(&self, every: Duration) {
        *lock(&self.shared.bookmark_every) = every.max(Duration::from_millis(10));
    }

    /// Request counters so far (e.g. lists vs watches of `services`).
    pub fn requests(&self) -> RequestCounts {
        RequestCounts(lock(&self.shared.counts).clone())
    }

    /// The newest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv()
    }

    fn def(group: &str, version: &str, resource: &str) -> &'static resources::ResourceDef {
        resources::find(group, version, resource)
            .unwrap_or_else(|| panic!("the stand-in does not serve {group}/{version}/{resource}"))
    }

    /// One object, as a GET would return it.
    ///
    /// # Panics
    /// When the type is not served.
    pub fn get(
        &self,
        group: &str,
        version: &str,
        resource: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let def = Self::def(group, version, resource);
        lock(&self.shared.store).get(def, ns, name).cloned()
    }

    /// Objects of a type in `ns` (or every namespace), in the server's order.
    ///
    /// # Panics
    /// When the type is not served.
    pub fn list(&self, group: &str, version: &str, resource: &str, ns: Option<&str>) -> Vec<Value> {
        let def = Self::def(group, version, resource);
        lock(&self.shared.store).list(def, ns)
    }

    /// Creates `obj` (typed by its apiVersion and kind), or replaces the stored one whatever
    /// its resourceVersion; a `.status` in `obj` is written too (as a status update would).
    /// Events flow to open watches as for API writes.
    pub fn put(&self, obj: Value) -> Result<Value, ApiError> {
        let api_version = obj["apiVersion"].as_str().unwrap_or("");
        let kind = obj["kind"].as_str().unwrap_or("");
        let def = resources::find_kind(api_version, kind).ok_or_else(|| {
            ApiError::bad_request(format!("the stand-in does not serve {api_version} {kind}"))
        })?;
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let ns = if def.namespaced {
            Some(ns.unwrap_or_else(|| "default".to_string()))
        } else {
            None
        };
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let mut store = lock(&self.shared.store);
        let mut written = match store.get(def, ns.as_deref(), &name).cloned() {
            Some(current) => {
                let mut replacement = obj.clone();
                replacement["metadata"]["resourceVersion"] =
                    current["metadata"]["resourceVersion"].clone();
                store.update(def, ns.as_deref(), &name, replacement, Part::Main)?
            }
            None => store.create(def, ns.as_deref(), obj.clone())?,
        };
        if def.status && !obj["status"].is_null() {
            let name = written["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let mut with_status = written.clone();
            with_status["status"] = obj["status"].clone();
            written = store.update(def, ns.as_deref(), &name, with_status, Part::Status)?;
        }
        Ok(written)
    }

    /// Deletes an object (background propagation), as a DELETE would.
    ///
    /// # Panics
    /// When the type is not served.
    pub fn delete(
        &self,
        group: &str,
        version: &str,
        resource: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let def = Self::def(group, version, resource);
        let (obj, _) = lock(&self.shared.store).delete(
            def,
            ns,
            name,
            store::Propagation::Background,
            &Value::Null,
        )?;
        Ok(obj)
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.shared.generation.send_modify(|g| *g += 1);
        if let Some(serving) = self.serving.take() {
            serving.task.abort();
        }
    }
}
