//! Keeps the zone snapshot up to date, re-planning and re-encoding only what a new view or new
//! verdicts change: the routes that differ from the last view's (the view's sharded route map
//! tells which without looking at the shards the two views share) and the services whose gateway
//! verdicts changed.
//!
//! A route's change touches its own names ([`route_plan`]: service, per-cluster, SRV and GSLB
//! names, and the empty non-terminals down to its roots), the shared empty non-terminals above
//! its roots when the first root appears below one or the last one goes, and the apexes (their
//! SOA carries the serial, which every update bumps). Every other name keeps its encoded node, in
//! the [`NameTable`] shards the new snapshot shares with the previous one.
//!
//! The result is, name for name and byte for byte, what [`crate::snapshot::compile`] makes of
//! [`crate::zone::plan`] for the same inputs (`rebuild_tests` checks it after random changes).
//! The first update builds everything (every route is new). The settings are fixed for a
//! `Rebuilder`'s life: other settings, another `Rebuilder`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use isthmus_federation::mesh::{MeshView, changed_keys};
use isthmus_federation::model::ServiceKey;

use crate::health::Verdicts;
use crate::name;
use crate::settings::Settings;
use crate::snapshot::{Snapshot, encode_node, zone_auths, zone_index};
use crate::table::NameTable;
use crate::zone::{NodePlan, Plan, RoutePlan, route_plan, static_plan};

pub struct Rebuilder {
    settings: Arc<Settings>,
    /// Apexes and in-zone name servers (with their empty non-terminals): always there.
    statics: Plan,
    /// What routes add at static names (a name server named like one of their names); the
    /// apexes' NS glue reads it.
    overlap: HashMap<Vec<u8>, NodePlan>,
    /// The shared empty non-terminals above route roots (`<ns>.svc.<zone>`, `svc.<zone>`,
    /// `<ns>.<gslb>`), with how many roots lie below each; absent at zero.
    above: HashMap<Vec<u8>, u32>,
    /// What the current table was built from (`None` before the first update).
    view: Option<Arc<MeshView>>,
    verdicts: Arc<Verdicts>,
    nodes: NameTable,
}

/// What one update made.
#[derive(Debug)]
pub struct Rebuilt {
    pub snapshot: Snapshot,
    /// Routes re-planned (every route of the view on the first update).
    pub replanned: usize,
}

/// The plan of `key` in `view` (empty when the view has no such route).
fn plan_in(
    view: Option<&MeshView>,
    key: &ServiceKey,
    settings: &Settings,
    verdicts: &Verdicts,
) -> RoutePlan {
    view.and_then(|v| v.routes.get(key))
        .map(|r| route_plan(r, settings, verdicts))
        .unwrap_or_default()
}

impl Rebuilder {
    /// A rebuilder whose table holds the static names only: the first update adds every route.
    /// (Static names do not depend on the serial, except the apexes, which every update encodes
    /// again.)
    pub fn new(settings: Arc<Settings>) -> Self {
        let mut r = Self {
            statics: static_plan(&settings),
            settings,
            overlap: HashMap::new(),
            above: HashMap::new(),
            view: None,
            verdicts: Arc::default(),
            nodes: NameTable::new(),
        };
        let names: Vec<Vec<u8>> = r.statics.names.keys().cloned().collect();
        for owner in names {
            r.write(&owner, None, 0);
        }
        r
    }

    /// The snapshot of `view` under `verdicts`, with SOA serial `serial`.
    pub fn update(
        &mut self,
        view: &Arc<MeshView>,
        verdicts: &Arc<Verdicts>,
        serial: u32,
    ) -> Rebuilt {
        let mut keys: Vec<ServiceKey> = match &self.view {
            Some(old) => {
                let (mut changed, removed) = changed_keys(&old.routes, &view.routes);
                changed.extend(removed);
                changed
            }
            None => view.routes.keys().cloned().collect(),
        };
        keys.extend(self.verdicts.differing_keys(verdicts).cloned());
        keys.sort();
        keys.dedup();
        for key in &keys {
            let old = plan_in(self.view.as_deref(), key, &self.settings, &self.verdicts);
            let new = plan_in(Some(view), key, &self.settings, verdicts);
            if old != new {
                self.replace(&old, &new, serial);
            }
        }
        self.view = Some(view.clone());
        self.verdicts = verdicts.clone();
        for apex in self.settings.zones.clone() {
            self.write(&apex, None, serial);
        }
        let snapshot = Snapshot::new(
            zone_auths(&self.statics, &self.settings, serial),
            self.nodes.clone(),
            &self.settings,
            serial,
            view.version,
        );
        Rebuilt {
            snapshot,
            replanned: keys.len(),
        }
    }

    /// Swaps one route's names `old` for `new`.
    fn replace(&mut self, old: &RoutePlan, new: &RoutePlan, serial: u32) {
        for root in old.roots.iter().filter(|r| !new.roots.contains(r)) {
            self.count_above(root, false, serial);
        }
        for root in new.roots.iter().filter(|r| !old.roots.contains(r)) {
            self.count_above(root, true, serial);
        }
        for (owner, _) in &old.names {
            self.overlap.remove(owner);
        }
        for (owner, np) in &new.names {
            if self.statics.names.contains_key(owner) {
                self.overlap.insert(owner.clone(), np.clone());
            }
        }
        for (owner, _) in old.names.iter().filter(|(o, _)| new.get(o).is_none()) {
            self.write(owner, None, serial);
        }
        for (owner, _) in &new.names {
            self.write(owner, Some(new), serial);
        }
    }

    /// Counts a root in (or out of) every shared ancestor above it, below its apex; an ancestor
    /// appears with its first root and goes with its last.
    fn count_above(&mut self, root: &[u8], add: bool, serial: u32) {
        let Some(apex_len) = self
            .settings
            .zones
            .iter()
            .find(|z| name::in_zone(root, z))
            .map(Vec::len)
        else {
            return;
        };
        let mut cur = root;
        while let Some(p) = name::parent(cur).filter(|p| p.len() > apex_len) {
            let before = self.above.get(p).copied().unwrap_or(0);
            let after = if add {
                before + 1
            } else {
                before.saturating_sub(1)
            };
            if after == 0 {
                self.above.remove(p);
            } else {
                self.above.insert(p.to_vec(), after);
            }
            if (before == 0) != (after == 0) {
                self.write(p, None, serial);
            }
            cur = p;
        }
    }

    /// Encodes `owner` again from what it holds now: its static records, then those of `route`
    /// (the route it belongs to, if any); with neither, an empty non-terminal while roots lie
    /// below it; else it goes.
    fn write(&mut self, owner: &[u8], route: Option<&RoutePlan>, serial: u32) {
        let Some(zone) = zone_index(&self.settings.zones, owner) else {
            return;
        };
        let fixed = self.statics.names.get(owner);
        let np: Cow<'_, NodePlan> = match (fixed, route.and_then(|r| r.get(owner))) {
            (Some(s), None) => Cow::Borrowed(s),
            (None, Some(p)) => Cow::Borrowed(p),
            (Some(s), Some(p)) => {
                let mut both = s.clone();
                both.absorb(p.clone());
                Cow::Owned(both)
            }
            (None, None) if self.above.contains_key(owner) => Cow::Owned(NodePlan::default()),
            (None, None) => {
                self.nodes.remove(owner);
                return;
            }
        };
        // Additional-section addresses: SRV targets are the route's own service name; name
        // server names are static (plus what a route adds there).
        let addresses = |target: &[u8]| -> Vec<IpAddr> {
            let dynamic = route
                .and_then(|r| r.get(target))
                .or_else(|| self.overlap.get(target));
            let fixed = self.statics.names.get(target);
            fixed
                .into_iter()
                .chain(dynamic)
                .flat_map(NodePlan::addresses)
                .collect()
        };
        let node = encode_node(owner, &np, zone, &addresses, serial, self.settings.ttl);
        self.nodes.insert(owner, node);
    }
}
