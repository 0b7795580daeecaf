//! Target ports: one port from `kubernetes.target_ports` per imported (name, service port), on
//! which the gateways serve that name on their pod IP. The derived Services point their
//! `targetPort` at it.
//!
//! The same contract as VIPs ([`crate::vip`]): a port given to a name is persisted before anyone
//! is told and never given to another name while the name exists, across restarts; a name that
//! goes away releases its port into a quarantine (a kube-proxy rule or a connection may still
//! use it); new names get never-used ports first and reclaim the longest-released port only
//! when the range is exhausted.
//!
//! Must not: talk to the API server (this is the part that works while it is down).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{AnyStore, Op, StoreError, commit_in_chunks};

/// Store prefix of target-port assignments: `kube/target-ports/<name>`.
pub const PREFIX: &str = "kube/target-ports/";

/// One name's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortAssignment {
    pub port: u16,
    /// Set while the name does not exist (unix ms); the port stays held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error(
        "kubernetes.target_ports {first}-{last} is exhausted ({capacity} ports, released ones are \
         held for the quarantine): configure a larger range, or import fewer services"
    )]
    Exhausted {
        first: u16,
        last: u16,
        capacity: u32,
    },
    #[error("stored target port of {name} is unreadable: {detail}")]
    Corrupt { name: String, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The pure allocator.
#[derive(Debug, Clone)]
pub struct PortPool {
    range: RangeInclusive<u16>,
    quarantine_ms: i64,
    names: BTreeMap<String, PortAssignment>,
    owners: HashMap<u16, String>,
    /// Next never-tried port (offset into the range).
    next: u32,
}

impl PortPool {
    pub fn new(range: RangeInclusive<u16>, quarantine: Duration) -> Self {
        Self {
            range,
            quarantine_ms: i64::try_from(quarantine.as_millis()).unwrap_or(i64::MAX),
            names: BTreeMap::new(),
            owners: HashMap::new(),
            next: 0,
        }
    }

    fn capacity(&self) -> u32 {
        u32::from(*self.range.end()) - u32::from(*self.range.start()) + 1
    }

    /// Loads a persisted assignment (a port outside the range is kept: it is promised).
    pub fn restore(&mut self, name: String, a: PortAssignment) {
        self.owners.insert(a.port, name.clone());
        self.names.insert(name, a);
    }

    pub fn get(&self, name: &str) -> Option<PortAssignment> {
        self.names.get(name).copied()
    }

    /// Names holding a port and not released.
    pub fn active(&self) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .filter(|(_, a)| a.released_at_ms.is_none())
            .map(|(n, _)| n.as_str())
    }

    /// Ports free for new names at `now_ms`: never-used plus released out of quarantine.
    pub fn free(&self, now_ms: i64) -> u32 {
        let in_range = self
            .owners
            .keys()
            .filter(|p| self.range.contains(p))
            .count();
        let never_used = self
            .capacity()
            .saturating_sub(u32::try_from(in_range).unwrap_or(u32::MAX));
        let reclaimable = self
            .names
            .values()
            .filter(|a| {
                a.released_at_ms
                    .is_some_and(|r| now_ms.saturating_sub(r) >= self.quarantine_ms)
            })
            .count();
        never_used.saturating_add(u32::try_from(reclaimable).unwrap_or(u32::MAX))
    }

    /// The port of `name` (re-activating a held one); `changed` when something must be stored.
    /// Reclaiming a released name's port removes that name: it is returned in `reclaimed`.
    pub fn assign(
        &mut self,
        name: &str,
        now_ms: i64,
        reclaimed: &mut Vec<String>,
    ) -> Result<(u16, bool), PortError> {
        if let Some(a) = self.names.get_mut(name) {
            let changed = a.released_at_ms.take().is_some();
            return Ok((a.port, changed));
        }
        let port = match self.never_used() {
            Some(p) => p,
            None => {
                let (old, port) = self
                    .names
                    .iter()
                    .filter_map(|(n, a)| {
                        let r = a.released_at_ms?;
                        (now_ms.saturating_sub(r) >= self.quarantine_ms).then_some((r, n, a.port))
                    })
                    .min()
                    .map(|(_, n, p)| (n.clone(), p))
                    .ok_or(PortError::Exhausted {
                        first: *self.range.start(),
                        last: *self.range.end(),
                        capacity: self.capacity(),
                    })?;
                self.names.remove(&old);
                reclaimed.push(old);
                port
            }
        };
        self.owners.insert(port, name.to_string());
        self.names.insert(
            name.to_string(),
            PortAssignment {
                port,
                released_at_ms: None,
            },
        );
        Ok((port, true))
    }

    fn never_used(&mut self) -> Option<u16> {
        while self.next < self.capacity() {
            let port = u16::try_from(u32::from(*self.range.start()) + self.next).ok()?;
            self.next += 1;
            if !self.owners.contains_key(&port) {
                return Some(port);
            }
        }
        None
    }

    /// Marks `name` released at `now_ms` (its port stays held for the quarantine).
    pub fn release(&mut self, name: &str, now_ms: i64) -> Option<PortAssignment> {
        let a = self.names.get_mut(name)?;
        if a.released_at_ms.is_some() {
            return None;
        }
        a.released_at_ms = Some(now_ms);
        Some(*a)
    }
}

/// The allocator persisted in the store: a change is committed before it is returned.
pub struct PortTable {
    pool: PortPool,
    store: AnyStore,
}

impl PortTable {
    pub async fn load(store: AnyStore, mut pool: PortPool) -> Result<Self, PortError> {
        for (name, a) in crate::store::list_json::<PortAssignment, _>(&store, PREFIX).await? {
            let a = a.map_err(|detail| PortError::Corrupt {
                name: name.clone(),
                detail,
            })?;
            pool.restore(name, a);
        }
        Ok(Self { pool, store })
    }

    pub fn pool(&self) -> &PortPool {
        &self.pool
    }

    /// Makes exactly `wanted` the active names: assigns the new ones, releases the others, and
    /// persists every change before returning. On any error nothing in memory changes. A name
    /// that does not fit leaves the whole change undone (and is reported), so the set of
    /// active names is always what was stored.
    pub async fn set_active(
        &mut self,
        wanted: &BTreeSet<String>,
        now_ms: i64,
    ) -> Result<bool, PortError> {
        let before = self.pool.clone();
        let mut changed: Vec<String> = Vec::new();
        let mut reclaimed: Vec<String> = Vec::new();
        let result = (|| {
            for name in wanted {
                let (_, fresh) = self.pool.assign(name, now_ms, &mut reclaimed)?;
                if fresh {
                    changed.push(name.clone());
                }
            }
            let gone: Vec<String> = self
                .pool
                .active()
                .filter(|n| !wanted.contains(*n))
                .map(str::to_string)
                .collect();
            for name in gone {
                if self.pool.release(&name, now_ms).is_some() {
                    changed.push(name);
                }
            }
            Ok::<(), PortError>(())
        })();
        if let Err(e) = result {
            self.pool = before;
            return Err(e);
        }
        if changed.is_empty() && reclaimed.is_empty() {
            return Ok(false);
        }
        let mut ops = Vec::with_capacity(changed.len() + reclaimed.len());
        for name in &changed {
            if let Some(a) = self.pool.get(name) {
                let value = serde_json::to_vec(&a).map_err(|e| PortError::Corrupt {
                    name: name.clone(),
                    detail: e.to_string(),
                })?;
                ops.push(Op::Put {
                    key: format!("{PREFIX}{name}"),
                    value,
                });
            }
        }
        ops.extend(reclaimed.iter().map(|n| Op::Delete {
            key: format!("{PREFIX}{n}"),
        }));
        if let Err(e) = commit_in_chunks(&self.store, ops, &mut 0).await {
            self.pool = before;
            return Err(e.into());
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn stable_quarantined_and_exhausted_with_a_clear_error() {
        let mut p = PortPool::new(15100..=15101, Duration::from_secs(60));
        let mut r = Vec::new();
        let (a, fresh) = p.assign("cart.shop:80", 0, &mut r).expect("a");
        assert!(fresh);
        assert_eq!(a, 15100);
        assert_eq!(
            p.assign("cart.shop:80", 1, &mut r).expect("again"),
            (a, false)
        );
        p.assign("pay.shop:80", 0, &mut r).expect("b");
        let e = p.assign("x.shop:80", 0, &mut r).unwrap_err().to_string();
        assert!(e.contains("kubernetes.target_ports 15100-15101"), "{e}");
        // Released but in quarantine: not reusable, the owner gets it back.
        p.release("cart.shop:80", 1_000);
        assert!(p.assign("x.shop:80", 30_000, &mut r).is_err());
        assert_eq!(
            p.assign("cart.shop:80", 30_000, &mut r).expect("back"),
            (a, true)
        );
        p.release("cart.shop:80", 40_000);
        assert_eq!(p.free(40_000), 0);
        assert_eq!(p.free(100_000), 1);
        let (x, _) = p.assign("x.shop:80", 100_000, &mut r).expect("reclaim");
        assert_eq!(x, a);
        assert_eq!(r, vec!["cart.shop:80".to_string()]);
        assert!(p.get("cart.shop:80").is_none());
    }

    #[tokio::test]
    async fn persisted_across_reopen_and_undone_when_a_name_does_not_fit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::store::StoreConfig::Embedded {
            data_dir: dir.path().to_path_buf(),
        };
        let pool = || PortPool::new(15100..=15102, Duration::from_secs(60));
        let wanted = set(&["cart.shop:80", "east.cart.shop:80", "pay.shop:8080"]);
        let first: Vec<_> = {
            let store = AnyStore::open(&cfg).await.expect("store");
            let mut t = PortTable::load(store, pool()).await.expect("load");
            assert!(t.set_active(&wanted, 0).await.expect("apply"));
            assert!(!t.set_active(&wanted, 1).await.expect("idempotent"));
            wanted.iter().map(|n| t.pool().get(n)).collect()
        };
        assert!(first.iter().all(Option::is_some));
        let store = AnyStore::open(&cfg).await.expect("reopen");
        let mut t = PortTable::load(store.clone(), pool()).await.expect("load");
        let after: Vec<_> = wanted.iter().map(|n| t.pool().get(n)).collect();
        assert_eq!(first, after);
        // One more name than the range holds: refused whole, nothing stored or changed.
        let mut more = wanted.clone();
        more.insert("aaa.shop:80".into());
        assert!(matches!(
            t.set_active(&more, 2).await,
            Err(PortError::Exhausted { .. })
        ));
        assert!(t.pool().get("aaa.shop:80").is_none());
        assert!(
            store
                .get(&format!("{PREFIX}aaa.shop:80"))
                .await
                .expect("get")
                .is_none()
        );
        // A name leaving is released (held), and that is stored.
        assert!(
            t.set_active(&set(&["cart.shop:80"]), 3)
                .await
                .expect("shrink")
        );
        let stored = store
            .get(&format!("{PREFIX}pay.shop:8080"))
            .await
            .expect("get")
            .expect("still held");
        let a: PortAssignment = serde_json::from_slice(&stored).expect("json");
        assert_eq!(a.released_at_ms, Some(3));
        assert_eq!(Some(a), t.pool().get("pay.shop:8080"));
    }
}
