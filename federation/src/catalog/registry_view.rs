//! The registry's stored records and the in-memory view built from them.
//!
//! Layout: one key per registration, `registry/<ns>/<name>/<token>`, holding a JSON
//! [`Registration`] and attached to the registration's own lease, so the store (etcd or the
//! embedded sweeper) deletes it when heartbeats stop, across federation restarts too.
//!
//! The view is rebuilt from `store.list` at start and then follows `store.watch` (Put, Delete,
//! Reset), so an expiry done by the store removes the endpoint from the view. It is filtered by
//! the current catalog: a registration counts only while its service is exported and its
//! registrant is still allowed, so editing the catalog withdraws endpoints at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::file::CatalogFile;
use super::registry::authorize;
use crate::identity::{SpiffeId, TrustDomain};
use crate::model::{Endpoint, Namespace, ServiceKey, ServiceName, Zone};
use crate::store::{LeaseId, Revision, Store, StoreError, WatchEvent, WatchStream};

/// Every registration lives under this store prefix.
pub const REGISTRY_PREFIX: &str = "registry/";

/// Endpoints registered through the registry, per exported service, sorted by address.
pub type RegisteredEndpoints = BTreeMap<ServiceKey, Vec<Endpoint>>;

/// What one registration stores. Unknown fields are ignored so that a newer federation's
/// records stay readable by an older one during an upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub address: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<Zone>,
    pub weight: u32,
    /// The workload certificate's identity that registered it; only it may heartbeat.
    pub identity: SpiffeId,
    /// Unix milliseconds.
    pub registered_at_ms: i64,
    pub lease: LeaseId,
}

impl Registration {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            address: self.address,
            ready: true,
            zone: self.zone.clone(),
            weight: self.weight,
        }
    }
}

/// The store key of registration id `<ns>/<name>/<token>`.
pub fn store_key(registration_id: &str) -> String {
    format!("{REGISTRY_PREFIX}{registration_id}")
}

/// Splits a registration id (`<ns>/<name>/<token>`) into its service and token. `None` when it
/// cannot be one of ours.
pub fn parse_registration_id(id: &str) -> Option<(ServiceKey, &str)> {
    let mut parts = id.split('/');
    let (ns, name, token) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !valid_token(token) {
        return None;
    }
    let key = ServiceKey::new(Namespace::new(ns).ok()?, ServiceName::new(name).ok()?);
    Some((key, token))
}

/// Tokens are base64url (no padding) of random bytes.
pub fn valid_token(token: &str) -> bool {
    (16..=64).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The records under [`REGISTRY_PREFIX`], by store key. Undecodable entries are skipped with a
/// warning: one bad record must not hide every other endpoint.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Records(BTreeMap<String, (ServiceKey, Registration)>);

impl Records {
    pub fn from_items(items: Vec<(String, Vec<u8>)>) -> Self {
        let mut records = Records::default();
        for (key, value) in items {
            records.put(key, &value);
        }
        records
    }

    pub fn put(&mut self, store_key: String, value: &[u8]) {
        let Some((service, _)) = store_key
            .strip_prefix(REGISTRY_PREFIX)
            .and_then(parse_registration_id)
        else {
            tracing::warn!(key = %store_key, "ignoring a registry key of unknown shape");
            return;
        };
        match serde_json::from_slice::<Registration>(value) {
            Ok(record) => {
                self.0.insert(store_key, (service, record));
            }
            Err(e) => {
                tracing::warn!(key = %store_key, error = %e, "ignoring an undecodable registration");
                self.0.remove(&store_key);
            }
        }
    }

    pub fn delete(&mut self, store_key: &str) {
        self.0.remove(store_key);
    }

    /// The endpoints the catalog currently admits: service exported, registrant still allowed.
    /// One endpoint per address (the newest registration wins), sorted by address.
    pub fn view(&self, trust_domain: &TrustDomain, catalog: &CatalogFile) -> RegisteredEndpoints {
        let mut by_service: BTreeMap<ServiceKey, BTreeMap<SocketAddr, &Registration>> =
            BTreeMap::new();
        for (service, record) in self.0.values() {
            if authorize(Some(&record.identity), trust_domain, service, catalog).is_err() {
                continue;
            }
            let slot = by_service.entry(service.clone()).or_default();
            match slot.get(&record.address) {
                Some(old) if old.registered_at_ms > record.registered_at_ms => {}
                _ => {
                    slot.insert(record.address, record);
                }
            }
        }
        by_service
            .into_iter()
            .map(|(service, records)| {
                (
                    service,
                    records.values().map(|r| r.endpoint()).collect::<Vec<_>>(),
                )
            })
            .collect()
    }
}

/// Keeps `tx` up to date with the store and the catalog until every receiver is gone or the
/// store closes.
pub(super) async fn run_view<S: Store + Clone>(
    store: S,
    trust_domain: TrustDomain,
    mut catalog: watch::Receiver<Arc<CatalogFile>>,
    mut records: Records,
    mut revision: Revision,
    mut stream: WatchStream,
    tx: watch::Sender<Arc<RegisteredEndpoints>>,
) {
    let mut catalog_open = true;
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            changed = catalog.changed(), if catalog_open => {
                // The catalog's owner stopped: keep filtering with its last value.
                catalog_open = changed.is_ok();
            }
            item = stream.recv() => {
                // Apply this and whatever else is already queued, then publish once.
                let mut next = item;
                loop {
                    match next {
                        Some(Ok(event)) => revision = apply(&mut records, event, revision),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, revision, "registry watch failed; resuming");
                            match rewatch(&store, revision, &tx).await {
                                Some(s) => stream = s,
                                None => return,
                            }
                            break;
                        }
                        None => return,
                    }
                    match stream.try_recv() {
                        Ok(item) => next = Some(item),
                        // Empty, or closed: a closed stream shows up as `None` at the next recv.
                        Err(_) => break,
                    }
                }
            }
        }
        let view = records.view(&trust_domain, &catalog.borrow_and_update());
        tx.send_if_modified(|current| {
            if **current == view {
                false
            } else {
                *current = Arc::new(view);
                true
            }
        });
    }
}

fn apply(records: &mut Records, event: WatchEvent, revision: Revision) -> Revision {
    match event {
        WatchEvent::Put {
            key,
            value,
            revision,
        } => {
            records.put(key, &value);
            revision
        }
        WatchEvent::Delete { key, revision } => {
            records.delete(&key);
            revision
        }
        WatchEvent::Reset {
            items,
            revision: at,
        } => {
            *records = Records::from_items(items);
            at.max(revision)
        }
    }
}

/// Watches again from `revision`, backing off while the store is unavailable. `None` when the
/// view has no receivers left or the store is closed.
async fn rewatch<S: Store>(
    store: &S,
    revision: Revision,
    tx: &watch::Sender<Arc<RegisteredEndpoints>>,
) -> Option<WatchStream> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.watch(REGISTRY_PREFIX, revision).await {
            Ok(stream) => return Some(stream),
            Err(StoreError::Closed) => return None,
            Err(e) => tracing::warn!(error = %e, "registry watch unavailable; retrying"),
        }
        tokio::select! {
            _ = tx.closed() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::file::parse_catalog;

    fn record(sa: &str, address: &str, at: i64) -> Vec<u8> {
        let td = TrustDomain::new("east").expect("td");
        serde_json::to_vec(&Registration {
            address: address.parse().expect("addr"),
            zone: None,
            weight: 100,
            identity: SpiffeId::workload(&td, "shop", sa).expect("id"),
            registered_at_ms: at,
            lease: LeaseId(1),
        })
        .expect("json")
    }

    #[test]
    fn registration_ids() {
        let token = "AAAAAAAAAAAAAAAAAAAAAA";
        let id = format!("shop/cart/{token}");
        let (key, t) = parse_registration_id(&id).expect("valid");
        assert_eq!(key.to_string(), "shop/cart");
        assert_eq!(t, token);
        for bad in [
            "",
            "shop/cart",
            "shop/cart/short",
            &format!("shop/cart/{token}/x"),
            &format!("Shop/cart/{token}"),
            &format!("shop/cart/{token}="),
            &format!("../cart/{token}"),
        ] {
            assert!(parse_registration_id(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn view_filters_by_catalog_and_dedupes_addresses() {
        let td = TrustDomain::new("east").expect("td");
        let catalog = parse_catalog(
            "exports:\n  - namespace: shop\n    name: cart\n    ports: [{port: 80, protocol: http}]\n",
        )
        .expect("catalog");
        let token = |n: u8| format!("{}{n:02}", "A".repeat(20));
        let records = Records::from_items(vec![
            (
                format!("registry/shop/cart/{}", token(1)),
                record("cart", "10.0.0.2:80", 1),
            ),
            (
                format!("registry/shop/cart/{}", token(2)),
                record("cart", "10.0.0.1:80", 1),
            ),
            // Same address again, newer: replaces, does not duplicate.
            (
                format!("registry/shop/cart/{}", token(3)),
                record("cart", "10.0.0.2:80", 5),
            ),
            // Registrant not allowed for cart.
            (
                format!("registry/shop/cart/{}", token(4)),
                record("other", "10.0.0.3:80", 1),
            ),
            // Service not exported.
            (
                format!("registry/shop/stock/{}", token(5)),
                record("stock", "10.0.0.4:80", 1),
            ),
            // Garbage is skipped.
            (
                format!("registry/shop/cart/{}", token(6)),
                b"{not json".to_vec(),
            ),
            (
                "registry/bad-key".to_owned(),
                record("cart", "10.0.0.5:80", 1),
            ),
        ]);
        let view = records.view(&td, &catalog);
        assert_eq!(view.len(), 1);
        let cart = &view[&ServiceKey::parse("shop/cart").expect("key")];
        let addrs: Vec<String> = cart.iter().map(|e| e.address.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.2:80"]);
        assert!(records.view(&td, &CatalogFile::default()).is_empty());
    }
}
