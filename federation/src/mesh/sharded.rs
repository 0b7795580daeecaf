//! [`ShardedMap`]: a map the state shares with every view published from it, split into shards
//! by key hash, so that changing a few keys copies a few shards (not the whole map) and comparing
//! two versions skips every shard they still share.
//!
//! Why: a federation holds up to 100,000 routes and publishes a new view per change. A single
//! `BTreeMap` is either copied per published view, or shared and copied on the next write while
//! the view holds it; either way every change costs a copy of the whole map, and every gateway
//! stream then compares the two versions key by key. With shards, both cost what changed.
//!
//! Iteration order is by shard, then by key within a shard: deterministic, but not sorted.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash};
use std::sync::Arc;

use serde::Serialize;

const SHARDS: usize = 64;

/// A copy-on-write map of `SHARDS` shards. Cloning it clones `SHARDS` pointers.
#[derive(Debug, Clone)]
pub struct ShardedMap<K, V> {
    shards: Vec<Arc<BTreeMap<K, V>>>,
    len: usize,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Arc::new(BTreeMap::new())).collect(),
            len: 0,
        }
    }
}

fn shard_of<K: Hash>(key: &K) -> usize {
    // A fixed (unkeyed) hasher: the same key lands in the same shard in every version.
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
    (h % SHARDS as u64) as usize
}

impl<K: Ord + Hash + Clone, V: Clone> ShardedMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.shards[shard_of(key)].get(key)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.shards[shard_of(key)].contains_key(key)
    }

    /// Copies the key's shard first if another version still shares it.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let shard = Arc::make_mut(&mut self.shards[shard_of(&key)]);
        let old = shard.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Copies the key's shard first if another version still shares it (and holds the key).
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = shard_of(key);
        if !self.shards[i].contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(&mut self.shards[i]).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }
}

impl<K, V> ShardedMap<K, V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Ord + Hash + Clone, V: Clone> FromIterator<(K, V)> for ShardedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = Self::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

impl<K: Serialize, V: Serialize> Serialize for ShardedMap<K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

/// Keys whose entry differs between two versions of a map of `Arc`s (by pointer, then by value):
/// `(changed or added, removed)`. Shards the two versions share cost nothing.
pub fn changed_keys<K: Ord + Clone, V: PartialEq>(
    old: &ShardedMap<K, Arc<V>>,
    new: &ShardedMap<K, Arc<V>>,
) -> (Vec<K>, Vec<K>) {
    let mut changed = Vec::new();
    let mut removed = Vec::new();
    for (o, n) in old.shards.iter().zip(&new.shards) {
        if Arc::ptr_eq(o, n) {
            continue;
        }
        // Both sides sorted: one merge pass.
        let mut o = o.iter().peekable();
        let mut n = n.iter().peekable();
        loop {
            match (o.peek(), n.peek()) {
                (None, None) => break,
                (Some((ok, _)), None) => {
                    removed.push((*ok).clone());
                    o.next();
                }
                (None, Some((nk, _))) => {
                    changed.push((*nk).clone());
                    n.next();
                }
                (Some((ok, ov)), Some((nk, nv))) => match ok.cmp(nk) {
                    std::cmp::Ordering::Less => {
                        removed.push((*ok).clone());
                        o.next();
                    }
                    std::cmp::Ordering::Greater => {
                        changed.push((*nk).clone());
                        n.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if !Arc::ptr_eq(ov, nv) && **ov != **nv {
                            changed.push((*nk).clone());
                        }
                        o.next();
                        n.next();
                    }
                },
            }
        }
    }
    (changed, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_map_and_shares_untouched_shards() {
        let mut a: ShardedMap<u32, Arc<String>> =
            (0..1000).map(|i| (i, Arc::new(format!("v{i}")))).collect();
        assert_eq!(a.len(), 1000);
        assert_eq!(a.get(&7).map(|v| v.as_str()), Some("v7"));
        assert_eq!(a.keys().count(), 1000);
        let before = a.clone();
        a.insert(7, Arc::new("changed".into()));
        a.insert(5000, Arc::new("new".into()));
        a.remove(&8);
        a.remove(&9999);
        a.insert(3, Arc::new("v3".into())); // same value, new pointer: not a change
        assert_eq!(a.len(), 1000);
        assert_eq!(
            before.get(&7).map(|v| v.as_str()),
            Some("v7"),
            "old version intact"
        );
        let shared = a
            .shards
            .iter()
            .zip(&before.shards)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(shared >= SHARDS - 4, "only touched shards were copied");
        let (mut changed, removed) = changed_keys(&before, &a);
        changed.sort();
        assert_eq!(changed, [7, 5000]);
        assert_eq!(removed, [8]);
        assert_eq!(changed_keys(&a, &a), (vec![], vec![]));
        let json = serde_json::to_value(&a).expect("json");
        assert_eq!(json["5000"], "new");
        assert_eq!(json.as_object().map(|m| m.len()), Some(1000));
    }
}
