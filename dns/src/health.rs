//! Which clusters may serve a service, as DNS sees it.
//!
//! A cluster serves a service when its summary reports healthy endpoints and its catalog is live
//! (not `stale`: our peering stream to it is up). On top of that, this cluster's gateways report
//! their own verdicts (`ReportHealth` on the gateway API): a cluster a local gateway found
//! unhealthy for a service is treated as not serving it. Verdicts only ever remove a cluster;
//! they are local and never exported to peers.
//!
//! The gateways also report the VIP addresses they could not bind (an IPv6 range that is not
//! local on the host, say): an address every VIP-listening gateway reports unbound is withheld
//! from A/AAAA answers, since nothing would accept a connection there.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use isthmus_federation::mesh::ClusterRoute;
use isthmus_federation::model::{ClusterName, ServiceKey};

/// The latest gateway verdicts: `(cluster, service)` pairs some gateway of this cluster reported
/// unhealthy. Published on a watch channel; empty when no gateway reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    unhealthy: HashSet<(ClusterName, ServiceKey)>,
    /// VIP addresses no gateway serves, with the service they belong to.
    unserved: HashMap<IpAddr, ServiceKey>,
}

impl Verdicts {
    pub fn new(unhealthy: impl IntoIterator<Item = (ClusterName, ServiceKey)>) -> Self {
        Self {
            unhealthy: unhealthy.into_iter().collect(),
            unserved: HashMap::new(),
        }
    }

    /// The same verdicts, with VIP addresses that no gateway serves (left out of answers).
    pub fn with_unserved(
        mut self,
        unserved: impl IntoIterator<Item = (IpAddr, ServiceKey)>,
    ) -> Self {
        self.unserved = unserved.into_iter().collect();
        self
    }

    /// Whether the VIP `ip` may be answered (some gateway serves it, or none said otherwise).
    pub fn answers(&self, ip: &IpAddr) -> bool {
        self.unserved.is_empty() || !self.unserved.contains_key(ip)
    }

    /// From the federation's per-gateway verdict maps (`"<cluster>:<ns>/<name>" -> healthy`), as
    /// `GatewayInfo::health` keeps them: unhealthy when any gateway says so.
    pub fn from_gateway_reports<'a>(
        reports: impl IntoIterator<Item = (&'a String, &'a bool)>,
    ) -> Self {
        let unhealthy = reports
            .into_iter()
            .filter(|(_, ok)| !**ok)
            .filter_map(|(k, _)| {
                let (cluster, key) = k.split_once(':')?;
                Some((cluster.parse().ok()?, ServiceKey::parse(key).ok()?))
            });
        Self::new(unhealthy)
    }

    pub fn is_empty(&self) -> bool {
        self.unhealthy.is_empty() && self.unserved.is_empty()
    }

    pub fn says_unhealthy(&self, cluster: &ClusterName, key: &ServiceKey) -> bool {
        !self.unhealthy.is_empty() && self.unhealthy.contains(&(cluster.clone(), key.clone()))
    }

    /// Services some cluster's verdict differs for between `self` and `other` (with repeats).
    pub fn differing_keys<'a>(
        &'a self,
        other: &'a Verdicts,
    ) -> impl Iterator<Item = &'a ServiceKey> {
        let moved = |a: &'a Verdicts, b: &'a Verdicts| {
            a.unserved
                .iter()
                .filter(move |(ip, key)| b.unserved.get(ip) != Some(key))
                .map(|(_, key)| key)
        };
        self.unhealthy
            .symmetric_difference(&other.unhealthy)
            .map(|(_, key)| key)
            .chain(moved(self, other))
            .chain(moved(other, self))
    }
}

/// Whether `c` may serve `key`: healthy endpoints, a live catalog, and no gateway verdict
/// against it.
pub fn serves(c: &ClusterRoute, key: &ServiceKey, verdicts: &Verdicts) -> bool {
    c.summary.healthy_endpoints() > 0 && !c.stale && !verdicts.says_unhealthy(&c.place.cluster, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn unserved_vips_are_not_answered_and_mark_their_service_changed() {
        let key = ServiceKey::parse("shop/cart").expect("key");
        let ip: IpAddr = "fd77::1".parse().expect("ip");
        let before = Verdicts::default();
        assert!(before.answers(&ip));
        let after = Verdicts::default().with_unserved([(ip, key.clone())]);
        assert!(!after.answers(&ip));
        assert!(after.answers(&"127.77.0.1".parse().expect("ip")));
        assert!(!after.is_empty());
        let changed: Vec<&ServiceKey> = before.differing_keys(&after).collect();
        assert_eq!(changed, [&key]);
        let changed: Vec<&ServiceKey> = after.differing_keys(&before).collect();
        assert_eq!(changed, [&key]);
        assert_eq!(after.differing_keys(&after.clone()).count(), 0);
    }

    #[test]
    fn gateway_reports_mark_pairs_unhealthy() {
        let mut m = BTreeMap::new();
        m.insert("west:shop/cart".to_string(), false);
        m.insert("east:shop/cart".to_string(), true);
        m.insert("garbage".to_string(), false);
        let v = Verdicts::from_gateway_reports(&m);
        let key = ServiceKey::parse("shop/cart").expect("key");
        assert!(v.says_unhealthy(&"west".parse().expect("c"), &key));
        assert!(!v.says_unhealthy(&"east".parse().expect("c"), &key));
    }

    #[test]
    fn differing_keys_are_the_services_whose_verdicts_changed() {
        let pair = |c: &str, k: &str| (c.parse().expect("c"), ServiceKey::parse(k).expect("k"));
        type Pairs = &'static [(&'static str, &'static str)];
        // (unhealthy before, unhealthy after, services that differ)
        let cases: &[(Pairs, Pairs, &[&str])] = &[
            (&[], &[], &[]),
            (&[("west", "shop/cart")], &[("west", "shop/cart")], &[]),
            (&[("west", "shop/cart")], &[], &["shop/cart"]),
            (&[], &[("east", "a/b")], &["a/b"]),
            (
                &[("west", "shop/cart"), ("east", "a/b")],
                &[("east", "shop/cart"), ("east", "a/b")],
                &["shop/cart"],
            ),
        ];
        for (old, new, want) in cases {
            let old = Verdicts::new(old.iter().map(|(c, k)| pair(c, k)));
            let new = Verdicts::new(new.iter().map(|(c, k)| pair(c, k)));
            let mut got: Vec<String> = old.differing_keys(&new).map(|k| k.to_string()).collect();
            got.sort();
            got.dedup();
            assert_eq!(got, *want, "{old:?} -> {new:?}");
        }
    }
}
