//! Local addresses (VIPs): one stable address per imported service name (`<svc>.<ns>`) and per
//! per-cluster name (`<cluster>.<svc>.<ns>`), from configured IPv4 and IPv6 ranges.
//!
//! The contract: an address assigned to a name is persisted before anyone is told about it and is
//! never given to another name while the name exists — not on reconnect, not on restart. When a
//! name goes away its address is *released* but held for a quarantine period (clients may still
//! have it cached); new names get never-used addresses first, and reuse the longest-released
//! address only when the range is exhausted. A name that comes back while its address is still
//! held gets the same address again.
//!
//! [`VipPool`] is the pure allocator; [`VipTable`] persists it in the store.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{AnyStore, Op, StoreError, commit_in_chunks};

/// An address range in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    base: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, VipError> {
        let bad = |why: &str| VipError::BadRange(format!("{text:?}: {why}"));
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| bad("expected <address>/<prefix>"))?;
        let base: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("prefix is not a number"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad("prefix longer than the address"));
        }
        // Usable host bits: at least 2 addresses besides network/broadcast, at most 2^32.
        if max - prefix < 2 {
            return Err(bad(
                "range too small: use at most /30 (IPv4) or /126 (IPv6)",
            ));
        }
        if max - prefix > 32 {
            return Err(bad("range too large: use at least /96 for IPv6"));
        }
        let cidr = Cidr { base, prefix };
        let host_mask: u128 = (1u128 << cidr.host_bits()) - 1;
        let bits = match base {
            IpAddr::V4(b) => u128::from(u32::from(b)),
            IpAddr::V6(b) => u128::from(b),
        };
        if bits & host_mask != 0 {
            return Err(bad("host bits are set: give the network address"));
        }
        Ok(cidr)
    }

    fn host_bits(&self) -> u32 {
        let max = if self.base.is_ipv4() { 32 } else { 128 };
        u32::from(max - self.prefix)
    }

    /// Number of assignable addresses (the first and last are skipped).
    pub fn capacity(&self) -> u64 {
        (1u64 << self.host_bits()) - 2
    }

    fn nth(&self, n: u64) -> Option<IpAddr> {
        if n >= 1u64 << self.host_bits() {
            return None;
        }
        Some(match self.base {
            IpAddr::V4(b) => IpAddr::V4(Ipv4Addr::from(
                u32::from(b).checked_add(u32::try_from(n).ok()?)?,
            )),
            IpAddr::V6(b) => IpAddr::V6(Ipv6Addr::from(u128::from(b).checked_add(u128::from(n))?)),
        })
    }

    /// The `i`-th assignable address, `0 <= i < capacity()`.
    fn host(&self, i: u64) -> Option<IpAddr> {
        if i >= self.capacity() {
            None
        } else {
            self.nth(i + 1)
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// The addresses of one name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VipAssignment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<Ipv6Addr>,
    /// Set while the name does not exist (unix ms); the addresses stay held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at_ms: Option<i64>,
}

impl VipAssignment {
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.v6.map(IpAddr::V6))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VipError {
    #[error("invalid VIP range {0}")]
    BadRange(String),
    #[error(
        "the {family} VIP range {range} is exhausted ({capacity} addresses): configure a larger range"
    )]
    Exhausted {
        family: &'static str,
        range: String,
        capacity: u64,
    },
    #[error(
        "{needed} more {family} VIPs are needed but the range {range} has {free} free \
         ({capacity} addresses; released ones are held for the quarantine): configure a larger \
         range, or export or import fewer services"
    )]
    Insufficient {
        family: &'static str,
        range: String,
        capacity: u64,
        needed: u64,
        free: u64,
    },
    #[error("no VIP range configured: set vips.ipv4 and/or vips.ipv6")]
    NoRange,
    #[error("stored VIP assignment for {name} is unreadable: {detail}")]
    Corrupt { name: String, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One family's range with its allocation cursor.
#[derive(Debug, Clone)]
struct Family {
    cidr: Cidr,
    next: u64,
    /// Addresses of this range held by some name. Every address below `next` is held (an address
    /// is only ever freed by a reclaim that hands it on at once), so the never-used addresses
    /// left are `capacity - held`.
    held: u64,
}

impl Family {
    fn new(cidr: Cidr) -> Self {
        Family {
            cidr,
            next: 0,
            held: 0,
        }
    }

    fn contains(&self, addr: &IpAddr) -> bool {
        let bits = |a: &IpAddr| match a {
            IpAddr::V4(a) => u128::from(u32::from(*a)),
            IpAddr::V6(a) => u128::from(*a),
        };
        if addr.is_ipv4() != self.cidr.base.is_ipv4() {
            return false;
        }
        let host_bits = self.cidr.host_bits();
        bits(addr) >> host_bits == bits(&self.cidr.base) >> host_bits
    }
}

/// Addresses per family: what a change would take (names that must become active and hold no
/// address of that family yet), or what is free.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VipDemand {
    pub v4: u64,
    pub v6: u64,
}

impl VipDemand {
    pub fn add(&mut self, other: VipDemand) {
        self.v4 = self.v4.saturating_add(other.v4);
        self.v6 = self.v6.saturating_add(other.v6);
    }

    /// Whether this demand fits in `free`.
    pub fn within(&self, free: &VipDemand) -> bool {
        self.v4 <= free.v4 && self.v6 <= free.v6
    }
}

/// The pure allocator: which name holds which address.
#[derive(Debug, Clone)]
pub struct VipPool {
    v4: Option<Family>,
    v6: Option<Family>,
    quarantine: Duration,
    /// Every name holding addresses (active or released). `Box<str>`, not `String`: a
    /// federation may hold 200,000 names.
    names: HashMap<Box<str>, VipAssignment>,
    /// Every address held by some name (which one is in `names`).
    owners: HashSet<IpAddr>,
    /// Names that lost their last held address to a reclaim since the last drain.
    reclaimed: Vec<String>,
    /// While a change is being persisted: every name's previous value, to roll back.
    journal: Option<Journal>,
}

#[derive(Debug, Clone, Default)]
struct Journal {
    names: Vec<(String, Option<VipAssignment>)>,
    cursors: (Option<u64>, Option<u64>),
}

impl VipPool {
    pub fn new(v4: Option<Cidr>, v6: Option<Cidr>, quarantine: Duration) -> Result<Self, VipError> {
        if v4.is_none() && v6.is_none() {
            return Err(VipError::NoRange);
        }
        if v4.is_some_and(|c| !c.base.is_ipv4()) || v6.is_some_and(|c| c.base.is_ipv4()) {
            return Err(VipError::BadRange(
                "vips.ipv4 must be IPv4 and vips.ipv6 IPv6".into(),
            ));
        }
        Ok(Self {
            v4: v4.map(Family::new),
            v6: v6.map(Family::new),
            quarantine,
            names: HashMap::new(),
            owners: HashSet::new(),
            reclaimed: Vec::new(),
            journal: None,
        })
    }

    /// Loads persisted assignments (addresses outside the configured ranges are kept: they are
    /// still promised to their names).
    pub fn restore(&mut self, name: String, assignment: VipAssignment) {
        for addr in assignment.addrs() {
            self.own(addr);
        }
        self.names.insert(name.into_boxed_str(), assignment);
    }

    /// Marks `addr` held (keeping the per-range counts).
    fn own(&mut self, addr: IpAddr) {
        if self.owners.insert(addr) {
            for f in [self.v4.as_mut(), self.v6.as_mut()].into_iter().flatten() {
                if f.contains(&addr) {
                    f.held += 1;
                }
            }
        }
    }

    /// Marks `addr` free (keeping the per-range counts).
    fn disown(&mut self, addr: &IpAddr) {
        if self.owners.remove(addr) {
            for f in [self.v4.as_mut(), self.v6.as_mut()].into_iter().flatten() {
                if f.contains(addr) {
                    f.held = f.held.saturating_sub(1);
                }
            }
        }
    }

    /// What making `names` active would take: per family, the names without an address of it.
    pub fn demand<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> VipDemand {
        let mut d = VipDemand::default();
        for name in names {
            let a = self.names.get(name);
            if self.v4.is_some() && a.is_none_or(|a| a.v4.is_none()) {
                d.v4 += 1;
            }
            if self.v6.is_some() && a.is_none_or(|a| a.v6.is_none()) {
                d.v6 += 1;
            }
        }
        d
    }

    /// Whether `demand` can be met at `now_ms` without taking an address from an active name or
    /// from a released one still in quarantine. `wanted` tells the names the change makes active:
    /// their held addresses are not counted as free (they get them back). Conservative: addresses
    /// the same change releases are not counted either.
    pub fn check_fits(
        &self,
        demand: VipDemand,
        now_ms: i64,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<(), VipError> {
        for (v4, needed) in [(true, demand.v4), (false, demand.v6)] {
            let family = if v4 { &self.v4 } else { &self.v6 };
            let Some(family) = family else { continue };
            let capacity = family.cidr.capacity();
            let mut free = capacity.saturating_sub(family.held);
            if free < needed {
                // Only when the never-used addresses do not suffice: this walks every name.
                free += self.reclaimable(v4, now_ms, &wanted);
            }
            if free < needed {
                return Err(VipError::Insufficient {
                    family: if v4 { "IPv4" } else { "IPv6" },
                    range: family.cidr.to_string(),
                    capacity,
                    needed,
                    free,
                });
            }
        }
        Ok(())
    }

    /// Addresses free for new names at `now_ms`, per family (`u64::MAX` for a family that is not
    /// configured, which nothing needs): never-used ones and released ones out of quarantine.
    pub fn free(&self, now_ms: i64) -> VipDemand {
        let of = |v4: bool| {
            let family = if v4 { &self.v4 } else { &self.v6 };
            match family {
                None => u64::MAX,
                Some(f) => {
                    f.cidr.capacity().saturating_sub(f.held)
                        + self.reclaimable(v4, now_ms, &|_: &str| false)
                }
            }
        };
        VipDemand {
            v4: of(true),
            v6: of(false),
        }
    }

    /// Released addresses of one family whose quarantine is over at `now_ms` (not counting those
    /// of names in `wanted`).
    fn reclaimable(&self, v4: bool, now_ms: i64, wanted: &impl Fn(&str) -> bool) -> u64 {
        let quarantine_ms = i64::try_from(self.quarantine.as_millis()).unwrap_or(i64::MAX);
        let n = self
            .names
            .iter()
            .filter(|(name, a)| {
                a.released_at_ms
                    .is_some_and(|r| now_ms.saturating_sub(r) >= quarantine_ms)
                    && if v4 { a.v4.is_some() } else { a.v6.is_some() }
                    && !wanted(name)
            })
            .count();
        n as u64
    }

    /// Starts recording changes so that [`VipPool::rollback`] can undo them.
    fn begin(&mut self) {
        self.journal = Some(Journal {
            names: Vec::new(),
            cursors: (
                self.v4.as_ref().map(|f| f.next),
                self.v6.as_ref().map(|f| f.next),
            ),
        });
    }

    /// Records `name`'s current value before it changes (while a journal is open).
    fn note(&mut self, name: &str) {
        let previous = self.names.get(name).cloned();
        if let Some(j) = self.journal.as_mut() {
            j.names.push((name.to_string(), previous));
        }
    }

    fn commit(&mut self) {
        self.journal = None;
    }

    /// Undoes everything since [`VipPool::begin`].
    fn rollback(&mut self) {
        let Some(j) = self.journal.take() else { return };
        // Each name's value before its first change. Every current value goes before any
        // previous one comes back: two journaled names may have passed one address between
        // them (a reclaim), and it must end up held by its first owner.
        let mut previous: HashMap<String, Option<VipAssignment>> = HashMap::new();
        for (name, prev) in j.names {
            previous.entry(name).or_insert(prev);
        }
        for name in previous.keys() {
            if let Some(current) = self.names.remove(name.as_str()) {
                for addr in current.addrs() {
                    self.disown(&addr);
                }
            }
        }
        for (name, prev) in previous {
            if let Some(prev) = prev {
                for addr in prev.addrs() {
                    self.own(addr);
                }
                self.names.insert(name.into_boxed_str(), prev);
            }
        }
        if let (Some(f), Some(n)) = (self.v4.as_mut(), j.cursors.0) {
            f.next = n;
        }
        if let (Some(f), Some(n)) = (self.v6.as_mut(), j.cursors.1) {
            f.next = n;
        }
        self.reclaimed.clear();
    }

    /// Whether an assignment has an address in every configured family.
    pub fn complete(&self, a: &VipAssignment) -> bool {
        (self.v4.is_none() || a.v4.is_some()) && (self.v6.is_none() || a.v6.is_some())
    }

    pub fn get(&self, name: &str) -> Option<&VipAssignment> {
        self.names.get(name).filter(|a| a.released_at_ms.is_none())
    }

    /// Whether `name` holds addresses while it does not exist (released, in quarantine).
    pub fn is_released(&self, name: &str) -> bool {
        self.names
            .get(name)
            .is_some_and(|a| a.released_at_ms.is_some())
    }

    pub fn len(&self) -> usize {
        self.names
            .values()
            .filter(|a| a.released_at_ms.is_none())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Assigns addresses to `name` (or reactivates its held ones). Returns the assignment and
    /// whether it changed (and so must be persisted before use).
    pub fn assign(&mut self, name: &str, now_ms: i64) -> Result<(VipAssignment, bool), VipError> {
        if let Some(existing) = self.names.get(name).cloned() {
            let complete = (self.v4.is_none() || existing.v4.is_some())
                && (self.v6.is_none() || existing.v6.is_some());
            if existing.released_at_ms.is_none() && complete {
                return Ok((existing, false));
            }
        }
        self.note(name);
        let mut a = self.names.get(name).cloned().unwrap_or_default();
        a.released_at_ms = None;
        if a.v4.is_none()
            && let Some(addr) = self.take(true, now_ms)?
        {
            let IpAddr::V4(v4) = addr else {
                return Err(VipError::BadRange("v4 range gave v6".into()));
            };
            a.v4 = Some(v4);
        }
        if a.v6.is_none()
            && let Some(addr) = self.take(false, now_ms)?
        {
            let IpAddr::V6(v6) = addr else {
                return Err(VipError::BadRange("v6 range gave v4".into()));
            };
            a.v6 = Some(v6);
        }
        for addr in a.addrs() {
            self.own(addr);
        }
        match self.names.get_mut(name) {
            Some(slot) => *slot = a.clone(),
            None => {
                self.names.insert(name.into(), a.clone());
            }
        }
        Ok((a, true))
    }

    /// Marks `name` gone; its addresses stay held for the quarantine.
    pub fn release(&mut self, name: &str, now_ms: i64) -> Option<VipAssignment> {
        if self.names.get(name)?.released_at_ms.is_some() {
            return None;
        }
        self.note(name);
        let a = self.names.get_mut(name)?;
        a.released_at_ms = Some(now_ms);
        Some(a.clone())
    }

    /// Names currently holding addresses (not released).
    pub fn active_names(&self) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .filter(|(_, a)| a.released_at_ms.is_none())
            .map(|(n, _)| &**n)
    }

    /// Picks a free address in one family: never-used first, else the longest-released one whose
    /// quarantine is over (that name loses its hold).
    fn take(&mut self, v4: bool, now_ms: i64) -> Result<Option<IpAddr>, VipError> {
        let family = if v4 {
            self.v4.as_mut()
        } else {
            self.v6.as_mut()
        };
        let Some(family) = family else {
            return Ok(None);
        };
        let capacity = family.cidr.capacity();
        while family.next < capacity {
            let candidate = family.cidr.host(family.next);
            family.next += 1;
            if let Some(addr) = candidate
                && !self.owners.contains(&addr)
            {
                return Ok(Some(addr));
            }
        }
        let quarantine_ms = i64::try_from(self.quarantine.as_millis()).unwrap_or(i64::MAX);
        let reclaim = self
            .names
            .iter()
            .filter_map(|(name, a)| {
                let released = a.released_at_ms?;
                let addr = if v4 {
                    a.v4.map(IpAddr::V4)
                } else {
                    a.v6.map(IpAddr::V6)
                }?;
                (now_ms.saturating_sub(released) >= quarantine_ms)
                    .then_some((released, &**name, addr))
            })
            .min()
            .map(|(released, name, addr)| (released, name.to_string(), addr));
        let Some((_, old_name, addr)) = reclaim else {
            return Err(VipError::Exhausted {
                family: if v4 { "IPv4" } else { "IPv6" },
                range: family.cidr.to_string(),
                capacity,
            });
        };
        // Journaled like any other change of a name: a rollback gives the address back.
        self.note(&old_name);
        if let Some(old) = self.names.get_mut(old_name.as_str()) {
            if v4 {
                old.v4 = None
            } else {
                old.v6 = None
            }
            if old.v4.is_none() && old.v6.is_none() {
                self.names.remove(old_name.as_str());
                self.reclaimed.push(old_name);
            }
        }
        self.disown(&addr);
        Ok(Some(addr))
    }
}

/// The VIP name of a clusterset service: `<svc>.<ns>`.
pub fn service_vip_name(key: &crate::model::ServiceKey) -> String {
    format!("{}.{}", key.name, key.namespace)
}

/// The VIP name of a per-cluster service: `<cluster>.<svc>.<ns>`.
pub fn cluster_vip_name(
    cluster: &crate::model::ClusterName,
    key: &crate::model::ServiceKey,
) -> String {
    format!("{cluster}.{}.{}", key.name, key.namespace)
}

const PREFIX: &str = "vips/";

/// The allocator persisted in the store: every change is committed before it is returned.
pub struct VipTable {
    pool: VipPool,
    store: AnyStore,
}

impl VipTable {
    pub async fn load(store: AnyStore, mut pool: VipPool) -> Result<Self, VipError> {
        for (name, a) in crate::store::list_json::<VipAssignment, _>(&store, PREFIX).await? {
            let a = a.map_err(|detail| VipError::Corrupt {
                name: name.clone(),
                detail,
            })?;
            pool.restore(name, a);
        }
        Ok(Self { pool, store })
    }

    pub fn pool(&self) -> &VipPool {
        &self.pool
    }

    /// Applies a change to the set of active names: assigns `added` (or reactivates their held
    /// addresses), releases `removed`, and persists every change (in commits of at most the
    /// store's op limit) before returning. Costs O(changed names), not O(all names); on a store
    /// error nothing in memory changes.
    pub async fn apply(
        &mut self,
        added: &[String],
        removed: &[String],
        now_ms: i64,
    ) -> Result<bool, VipError> {
        self.apply_with(added, removed, now_ms, Vec::new(), &mut false)
            .await
    }

    /// [`VipTable::apply`], with other writes (`first`) that must be durable together with the
    /// assignments: they go first into the same commit (one commit, when everything fits).
    /// `first_durable` tells, also on error, whether `first` was committed.
    pub async fn apply_with(
        &mut self,
        added: &[String],
        removed: &[String],
        now_ms: i64,
        first: Vec<Op>,
        first_durable: &mut bool,
    ) -> Result<bool, VipError> {
        let needs_work = added
            .iter()
            .any(|n| self.pool.get(n).is_none_or(|a| !self.pool.complete(a)))
            || removed.iter().any(|n| self.pool.get(n).is_some());
        if !needs_work {
            let n = first.len();
            let mut done = 0;
            let result = commit_in_chunks(&self.store, first, &mut done).await;
            *first_durable = done >= n;
            result?;
            return Ok(false);
        }
        self.pool.begin();
        match self
            .apply_journaled(added, removed, now_ms, first, first_durable)
            .await
        {
            Ok(changed) => {
                self.pool.commit();
                Ok(changed)
            }
            Err(e) => {
                self.pool.rollback();
                Err(e)
            }
        }
    }

    async fn apply_journaled(
        &mut self,
        added: &[String],
        removed: &[String],
        now_ms: i64,
        first: Vec<Op>,
        first_durable: &mut bool,
    ) -> Result<bool, VipError> {
        let mut changed: Vec<(String, VipAssignment)> = Vec::new();
        for name in added {
            let (a, fresh) = self.pool.assign(name, now_ms)?;
            if fresh {
                changed.push((name.clone(), a));
            }
        }
        let added_set: std::collections::HashSet<&str> = added.iter().map(String::as_str).collect();
        for name in removed {
            if !added_set.contains(name.as_str())
                && let Some(a) = self.pool.release(name, now_ms)
            {
                changed.push((name.clone(), a));
            }
        }
        // Names whose held addresses were reclaimed vanish from the pool: delete their keys.
        let reclaimed: Vec<String> = self.pool.reclaimed.drain(..).collect();
        let n_first = first.len();
        let mut ops: Vec<Op> = first;
        ops.reserve(changed.len() + reclaimed.len());
        for (name, a) in &changed {
            let value = serde_json::to_vec(a).map_err(|e| VipError::Corrupt {
                name: name.clone(),
                detail: e.to_string(),
            })?;
            ops.push(Op::Put {
                key: format!("{PREFIX}{name}"),
                value,
            });
        }
        ops.extend(reclaimed.into_iter().map(|n| Op::Delete {
            key: format!("{PREFIX}{n}"),
        }));
        let mut done = 0;
        let result = commit_in_chunks(&self.store, ops, &mut done).await;
        *first_durable = done >= n_first;
        result?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use std::collections::BTreeMap;

    fn pool(v4: &str, quarantine_s: u64) -> VipPool {
        VipPool::new(
            Some(Cidr::parse(v4).expect("cidr")),
            None,
            Duration::from_secs(quarantine_s),
        )
        .expect("pool")
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(Cidr::parse("127.77.0.0/24").expect("ok").capacity(), 254);
        assert_eq!(Cidr::parse("fd77::/112").expect("ok").capacity(), 65534);
        for bad in [
            "127.0.0.1",
            "127.77.0.1/24",
            "10.0.0.0/31",
            "fd00::/64",
            "x/24",
            "10.0.0.0/33",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stable_and_never_reallocated_while_named() {
        let mut p = pool("127.77.0.0/30", 60);
        let (a, fresh) = p.assign("cart.shop", 0).expect("a");
        assert!(fresh);
        assert_eq!(a.v4, Some(Ipv4Addr::new(127, 77, 0, 1)));
        let (again, fresh) = p.assign("cart.shop", 1).expect("again");
        assert!(!fresh);
        assert_eq!(again, a);
        let (b, _) = p.assign("pay.shop", 0).expect("b");
        assert_eq!(b.v4, Some(Ipv4Addr::new(127, 77, 0, 2)));
        // Range of two is full, nothing released: a third name cannot steal an address.
        assert!(matches!(
            p.assign("x.shop", 0),
            Err(VipError::Exhausted { .. })
        ));
        // Released but in quarantine: still not reusable; the owner gets it back.
        p.release("cart.shop", 1_000);
        assert!(matches!(
            p.assign("x.shop", 30_000),
            Err(VipError::Exhausted { .. })
        ));
        let (back, _) = p.assign("cart.shop", 30_000).expect("back");
        assert_eq!(back.v4, a.v4);
        // After the quarantine, the longest-released address is reused.
        p.release("cart.shop", 40_000);
        let (x, _) = p.assign("x.shop", 40_000 + 60_000).expect("reuse");
        assert_eq!(x.v4, a.v4);
        assert!(p.get("cart.shop").is_none());
    }

    #[test]
    fn rollback_restores_everything() {
        let mut p = pool("127.77.0.0/29", 0); // six addresses
        for n in ["a", "b", "c", "d", "e", "f"] {
            p.assign(n, 0).expect("assign");
        }
        p.release("a", 0);
        let before = format!(
            "{:?}",
            (
                &p.names.iter().collect::<BTreeMap<_, _>>(),
                &p.owners.iter().collect::<std::collections::BTreeSet<_>>()
            )
        );
        p.begin();
        p.release("b", 1);
        p.assign("a", 1).expect("reactivate");
        p.release("a", 2);
        let (g, _) = p.assign("g", 3).expect("reclaims a released address");
        assert!(g.v4.is_some());
        p.rollback();
        let after = format!(
            "{:?}",
            (
                &p.names.iter().collect::<BTreeMap<_, _>>(),
                &p.owners.iter().collect::<std::collections::BTreeSet<_>>()
            )
        );
        assert_eq!(before, after);
        assert!(p.get("g").is_none());
    }

    #[test]
    fn fits_counts_never_used_and_reclaimable_addresses() {
        let mut p = pool("127.77.0.0/29", 60); // six addresses
        for n in ["a", "b", "c", "d"] {
            p.assign(n, 0).expect("assign");
        }
        let two = VipDemand { v4: 2, v6: 0 };
        let three = VipDemand { v4: 3, v6: 0 };
        assert!(p.check_fits(two, 0, |_| false).is_ok());
        assert!(matches!(
            p.check_fits(three, 0, |_| false),
            Err(VipError::Insufficient {
                needed: 3,
                free: 2,
                capacity: 6,
                ..
            })
        ));
        // A released address counts once its quarantine is over, unless its name comes back.
        p.release("a", 1_000);
        assert!(p.check_fits(three, 30_000, |_| false).is_err());
        assert!(p.check_fits(three, 61_000, |_| false).is_ok());
        assert!(p.check_fits(three, 61_000, |n| n == "a").is_err());
        assert_eq!(
            p.free(61_000),
            VipDemand {
                v4: 3,
                v6: u64::MAX
            }
        );
        // A released name holding its address needs none; a new one does.
        assert_eq!(p.demand(["a", "b", "new"]), VipDemand { v4: 1, v6: 0 });
        // Restored assignments count as held (after a restart the cursor is back at 0).
        let mut q = pool("127.77.0.0/29", 60);
        for (n, a) in &p.names {
            q.restore(n.to_string(), a.clone());
        }
        assert_eq!(q.free(61_000), p.free(61_000));
        // A rollback gives back exactly what the change took.
        let before = p.free(61_000);
        p.begin();
        p.assign("e", 61_000).expect("e");
        p.assign("f", 61_000).expect("f");
        p.assign("g", 61_000).expect("g reclaims a's address");
        assert_eq!(p.free(61_000).v4, 0);
        p.rollback();
        assert_eq!(p.free(61_000), before);
    }

    #[test]
    fn dual_stack() {
        let mut p = VipPool::new(
            Some(Cidr::parse("127.77.0.0/24").expect("v4")),
            Some(Cidr::parse("fd77::/120").expect("v6")),
            Duration::from_secs(1),
        )
        .expect("pool");
        let (a, _) = p.assign("cart.shop", 0).expect("a");
        assert_eq!(a.v6, Some("fd77::1".parse().expect("v6")));
        assert_eq!(a.addrs().count(), 2);
    }

    #[tokio::test]
    async fn other_writes_commit_with_the_assignments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::store::StoreConfig::Embedded {
            data_dir: dir.path().to_path_buf(),
        };
        let store = AnyStore::open(&cfg).await.expect("store");
        let mut t = VipTable::load(store.clone(), pool("127.77.0.0/24", 60))
            .await
            .expect("load");
        let put = |k: &str| Op::Put {
            key: k.into(),
            value: b"1".to_vec(),
        };
        let names = vec!["cart.shop".to_string()];
        let mut durable = false;
        assert!(
            t.apply_with(&names, &[], 0, vec![put("x/1")], &mut durable)
                .await
                .expect("apply")
        );
        assert!(durable);
        // Nothing to assign: the other writes are still committed.
        let mut durable = false;
        assert!(
            !t.apply_with(&names, &[], 1, vec![put("x/2")], &mut durable)
                .await
                .expect("apply")
        );
        assert!(durable);
        for k in ["x/1", "x/2", "vips/cart.shop"] {
            assert!(store.get(k).await.expect("get").is_some(), "{k}");
        }
    }

    #[tokio::test]
    async fn persisted_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::store::StoreConfig::Embedded {
            data_dir: dir.path().to_path_buf(),
        };
        let wanted: Vec<String> = ["cart.shop", "east.cart.shop", "pay.shop"]
            .iter()
            .map(|n| n.to_string())
            .collect();
        let first = {
            let store = AnyStore::open(&cfg).await.expect("store");
            let mut t = VipTable::load(store, pool("127.77.0.0/24", 60))
                .await
                .expect("load");
            assert!(t.apply(&wanted, &[], 0).await.expect("apply"));
            assert!(!t.apply(&wanted, &[], 1).await.expect("idempotent"));
            wanted
                .iter()
                .map(|n| t.pool().get(n).cloned())
                .collect::<Vec<_>>()
        };
        let store = AnyStore::open(&cfg).await.expect("reopen");
        // Names in a different order must not matter after a restart.
        let mut t = VipTable::load(store, pool("127.77.0.0/24", 60))
            .await
            .expect("load");
        // A new name first: allocation order must not disturb the restored ones.
        let mut more = vec!["aaa.shop".to_string()];
        more.extend(wanted.iter().cloned());
        t.apply(&more, &[], 2).await.expect("apply");
        let after = wanted
            .iter()
            .map(|n| t.pool().get(n).cloned())
            .collect::<Vec<_>>();
        assert_eq!(first, after);
        let new = t
            .pool()
            .get("aaa.shop")
            .and_then(|a| a.v4)
            .expect("new vip");
        assert!(
            first
                .iter()
                .all(|a| a.as_ref().and_then(|a| a.v4) != Some(new))
        );
    }
}
