//! What a change needs before anything of it is stored: the VIP names its routes would hold,
//! checked against the addresses the ranges still have free, and each peer's share of the names
//! (its quota, `vips.max_per_peer`). A change that does not fit is refused whole before the first
//! write, so a refusal (a NACK to a peer, a refused catalog edit) leaves nothing behind and one
//! peer cannot take the addresses other peers' and local services need.
//!
//! Must not: write to the store or change the state; it only reads it (callers stage a peer's
//! catalog in memory, under the state lock, and put it back when the check fails).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use crate::catalog::CatalogFile;
use crate::mesh::{ExportMap, LocalSide, PeerSide, merge_key};
use crate::model::{ClusterName, Endpoint, ImportRule, ServiceKey, import_allowed};
use crate::node::state::{MeshState, StateError, peer_sides, vip_names};
use crate::vip::{VipDemand, VipError};

/// VIP names one imported service of a peer counts against the peer's quota: its per-cluster
/// name `<cluster>.<svc>.<ns>` and its clusterset name `<svc>.<ns>` (counted even when another
/// cluster shares it, so a peer's count depends on its own catalog only).
pub const NAMES_PER_SERVICE: u64 = 2;

/// The VIP names a peer's catalog counts against its quota: two per service it exports that
/// `rules` import.
pub fn peer_vip_names<'a>(
    services: impl IntoIterator<Item = &'a ServiceKey>,
    rules: &[ImportRule],
    peer: &ClusterName,
) -> u64 {
    let imported = services
        .into_iter()
        .filter(|k| import_allowed(rules, peer, k))
        .count();
    imported as u64 * NAMES_PER_SERVICE
}

/// Refuses a peer's catalog that would hold more than `quota` names, unless it holds no more than
/// before (a peer already over a lowered quota may still shrink, or stay as it is).
pub fn check_quota(
    peer: &ClusterName,
    before: u64,
    after: u64,
    quota: u64,
) -> Result<(), StateError> {
    if after > quota && after > before {
        return Err(StateError::OverQuota {
            peer: peer.clone(),
            names: after,
            quota,
        });
    }
    Ok(())
}

/// A peer's count, remembered for the catalog version and catalog file it was computed for (a
/// delta then costs the keys it touches, not the peer's whole catalog).
#[derive(Debug, Clone)]
pub struct QuotaUse {
    epoch: String,
    version: u64,
    file: Arc<CatalogFile>,
    names: u64,
}

impl MeshState {
    /// The names `peer`'s stored catalog counts against its quota (from the cache when it is
    /// for the same catalog and rules).
    pub fn quota_use(&self, peer: &ClusterName) -> u64 {
        let Some(entry) = self.peers.get(peer) else {
            return 0;
        };
        if let Some(u) = self.quota_uses.get(peer)
            && u.epoch == entry.catalog.epoch
            && u.version == entry.catalog.version
            && Arc::ptr_eq(&u.file, &self.file)
        {
            return u.names;
        }
        peer_vip_names(entry.catalog.services.keys(), &self.file.imports, peer)
    }

    /// Remembers `peer`'s count for its current catalog.
    pub fn remember_quota_use(&mut self, peer: &ClusterName, names: u64) {
        let Some(entry) = self.peers.get(peer) else {
            return;
        };
        let u = QuotaUse {
            epoch: entry.catalog.epoch.clone(),
            version: entry.catalog.version,
            file: self.file.clone(),
            names,
        };
        self.quota_uses.insert(peer.clone(), u);
    }

    /// Checks that the routes of `keys`, computed from the state as it is in memory (a peer's
    /// staged catalog included) with `exports` (default: the current local exports) and `rules`,
    /// can get every VIP they need.
    pub fn check_vips<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k ServiceKey>,
        exports: Option<&ExportMap>,
        rules: &[ImportRule],
        now_ms: i64,
    ) -> Result<(), StateError> {
        let sides: Vec<PeerSide<'_>> = peer_sides(&self.peers, &BTreeSet::new());
        let local = LocalSide {
            me: &self.me,
            exports: exports.unwrap_or(&self.local.exports),
            zone: self.local.zone(),
            gateways: self.local.gateways.clone().into(),
        };
        let pool = self.vips.pool();
        let mut demand = VipDemand::default();
        let mut reactivated: HashSet<String> = HashSet::new();
        for key in keys {
            if self.unaddressed.contains(key) {
                continue;
            }
            let Some(route) = merge_key(key, &local, &sides, rules, now_ms) else {
                continue;
            };
            for name in vip_names(&route) {
                demand.add(pool.demand(std::iter::once(name.as_str())));
                if pool.is_released(&name) {
                    reactivated.insert(name);
                }
            }
        }
        pool.check_fits(demand, now_ms, |n| reactivated.contains(n))
            .map_err(StateError::NoRoom)
    }

    /// Installs the routes of every key that can get its VIPs; the others stay without a route
    /// (recorded in `unaddressed` and `degraded`, retried by [`MeshState::readdress`]). For the
    /// start: stored state that no longer fits (a range made smaller, a catalog file edited
    /// while the federation was down) never keeps the federation from starting. Keys that need
    /// no new address come first, then local exports, then peers' services.
    pub async fn install_what_fits(
        &mut self,
        stale: &BTreeSet<ClusterName>,
        now_ms: i64,
    ) -> Result<(), StateError> {
        // The common case costs one pass; a batch that runs out of addresses is rolled back
        // (earlier batches stay installed, and so need nothing more below).
        let why = match self.recompute(None, stale, now_ms).await {
            Ok(_) => return Ok(()),
            Err(StateError::Vip(e @ VipError::Exhausted { .. })) => e,
            Err(e) => return Err(e),
        };
        let mut all: BTreeSet<ServiceKey> = self.local.exports.keys().cloned().collect();
        for p in self.peers.values() {
            all.extend(p.catalog.services.keys().cloned());
        }
        let (fit, left) = self.split_fitting(all, now_ms);
        self.unaddressed = left;
        self.degraded = Some(format!(
            "{} services have no VIPs and are not served here: {why}",
            self.unaddressed.len()
        ));
        tracing::error!(services = self.unaddressed.len(), error = %why,
            "the stored state does not fit the VIP ranges: started degraded, serving what fits");
        self.recompute(Some(fit), stale, now_ms).await?;
        Ok(())
    }

    /// Gives VIPs to as many unaddressed keys as now fit (after exports or imports went away).
    pub async fn readdress(
        &mut self,
        stale: &BTreeSet<ClusterName>,
        now_ms: i64,
    ) -> Result<(), StateError> {
        if self.unaddressed.is_empty() {
            return Ok(());
        }
        let waiting = std::mem::take(&mut self.unaddressed);
        let (fit, left) = self.split_fitting(waiting, now_ms);
        self.unaddressed = left;
        let n = fit.len();
        if let Err(e) = self.recompute(Some(fit.clone()), stale, now_ms).await {
            self.unaddressed.extend(fit);
            return Err(e);
        }
        if self.unaddressed.is_empty() {
            tracing::info!(
                services = n,
                "every service has its VIPs again: no longer degraded"
            );
            self.degraded = None;
        } else if n > 0 {
            tracing::warn!(
                services = n,
                still = self.unaddressed.len(),
                "more services got their VIPs"
            );
        }
        Ok(())
    }

    /// Splits `keys` into those whose routes' VIPs fit in the free addresses (taken in order:
    /// no new address needed, local exports, the rest) and the others.
    fn split_fitting(
        &self,
        keys: BTreeSet<ServiceKey>,
        now_ms: i64,
    ) -> (BTreeSet<ServiceKey>, BTreeSet<ServiceKey>) {
        let sides: Vec<PeerSide<'_>> = peer_sides(&self.peers, &BTreeSet::new());
        let local = LocalSide {
            me: &self.me,
            exports: &self.local.exports,
            zone: self.local.zone(),
            gateways: self.local.gateways.clone().into(),
        };
        let pool = self.vips.pool();
        let mut needs: Vec<(u8, ServiceKey, VipDemand)> = keys
            .into_iter()
            .map(|key| {
                let d = merge_key(&key, &local, &sides, &self.file.imports, now_ms)
                    .map(|r| {
                        let names = vip_names(&r);
                        pool.demand(names.iter().map(String::as_str))
                    })
                    .unwrap_or_default();
                let rank = if d == VipDemand::default() {
                    0
                } else if self.local.exports.contains_key(&key) {
                    1
                } else {
                    2
                };
                (rank, key, d)
            })
            .collect();
        needs.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let free = pool.free(now_ms);
        let mut used = VipDemand::default();
        let (mut fit, mut left) = (BTreeSet::new(), BTreeSet::new());
        for (_, key, d) in needs {
            let mut next = used;
            next.add(d);
            if next.within(&free) {
                used = next;
                fit.insert(key);
            } else {
                left.insert(key);
            }
        }
        (fit, left)
    }

    /// Checks a catalog edit as a whole before any of it is stored: the VIPs of the routes its
    /// exports change and, when its import rules change, every peer's quota and every route.
    pub fn admit_file(
        &self,
        file: &CatalogFile,
        registered: &BTreeMap<ServiceKey, Vec<Endpoint>>,
        now_ms: i64,
    ) -> Result<(), StateError> {
        let (changes, _) = self.local.changes(
            &self.applied_file,
            &self.applied_registered,
            file,
            registered,
            now_ms,
        );
        let mut exports = self.local.exports.clone();
        let mut changed: Vec<ServiceKey> = Vec::with_capacity(changes.len());
        for (key, svc) in changes {
            match svc {
                Some(svc) => exports.insert(key.clone(), Arc::new(svc)),
                None => exports.remove(&key),
            };
            changed.push(key);
        }
        if file.imports != self.file.imports {
            return self.check_rules(file, &exports, now_ms);
        }
        self.check_vips(&changed, Some(&exports), &file.imports, now_ms)
    }

    /// Checks a rules change (a new catalog file's imports) against every peer's quota and the
    /// VIP ranges; `exports` are the local exports the same edit makes.
    pub fn check_rules(
        &self,
        file: &CatalogFile,
        exports: &ExportMap,
        now_ms: i64,
    ) -> Result<(), StateError> {
        let mut uses: BTreeMap<&ClusterName, (u64, u64)> = BTreeMap::new();
        for (peer, entry) in &self.peers {
            let after = peer_vip_names(entry.catalog.services.keys(), &file.imports, peer);
            uses.insert(peer, (self.quota_use(peer), after));
        }
        for (peer, (before, after)) in uses {
            check_quota(peer, before, after, self.vip_quota)?;
        }
        let mut all: BTreeSet<&ServiceKey> = exports.keys().collect();
        for p in self.peers.values() {
            all.extend(p.catalog.services.keys());
        }
        self.check_vips(all, Some(exports), &file.imports, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Vec<ImportRule> {
        serde_saphyr::from_str(yaml).expect("rules parse")
    }

    fn key(k: &str) -> ServiceKey {
        ServiceKey::parse(k).expect("key")
    }

    #[test]
    fn a_peer_counts_two_names_per_imported_service() {
        let r = rules("- peer: west\n  namespaces: [shop]\n");
        let west: ClusterName = "west".parse().expect("name");
        let south: ClusterName = "south".parse().expect("name");
        let keys = [key("shop/a"), key("shop/b"), key("other/c")];
        assert_eq!(peer_vip_names(&keys, &r, &west), 4);
        assert_eq!(
            peer_vip_names(&keys, &r, &south),
            0,
            "not imported from south"
        );
        assert_eq!(peer_vip_names(&keys, &[], &west), 0, "nothing imported");
    }

    #[test]
    fn quota_refuses_growth_past_it_only() {
        let west: ClusterName = "west".parse().expect("name");
        assert!(check_quota(&west, 0, 100, 100).is_ok(), "exactly the quota");
        let err = check_quota(&west, 0, 102, 100).expect_err("over the quota");
        assert!(
            err.to_string().contains("vips.max_per_peer") && err.to_string().contains("102"),
            "{err}"
        );
        // A quota lowered below what a peer already holds: it may shrink or stay, not grow.
        assert!(check_quota(&west, 300, 200, 100).is_ok());
        assert!(check_quota(&west, 300, 300, 100).is_ok());
        assert!(check_quota(&west, 300, 302, 100).is_err());
    }
}
