//! [`NameTable`]: the snapshot's map from name (lowercase wire form) to its pre-encoded
//! [`Node`], split into shards that successive snapshots share. Changing a few names copies the
//! few shards they fall in (about 400 names each at 400,000 names), never the whole table; a
//! lookup still hashes the name once and probes one open-addressing table.
//!
//! The hash is keyed (SipHash with a random key, as `std`'s `HashMap`): query names come from
//! anyone. Every version of a table descends from one [`NameTable::new`] and keeps its key, so a
//! name lands in the same shard in all of them.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use crate::snapshot::Node;

/// Shards per table. Fewer make each update copy more (256: 0.9 ms for a one-service change at
/// 100,000 services, 1,024: 0.3 ms); more make lookups miss the cache more often (4,096: +35 % a
/// hit at 400,000 names, 1,024: 5-20 % more than one big table). See BENCHMARKS.md, "Global DNS".
const SHARDS: usize = 1024;

type Shard = HashTable<(Box<[u8]>, Node)>;

/// Cloning it clones `SHARDS` pointers; the clones share every shard until one of them changes
/// it (copy on write).
#[derive(Clone)]
pub struct NameTable {
    hasher: RandomState,
    shards: Box<[Arc<Shard>]>,
    len: usize,
}

impl std::fmt::Debug for NameTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameTable")
            .field("names", &self.len)
            .finish_non_exhaustive()
    }
}

impl Default for NameTable {
    fn default() -> Self {
        Self::new()
    }
}

/// The shard of a hash: bits 32..42. The shard's own table indexes its buckets with the low bits
/// and tags them with the top 7; taking either for the shard would make every name of a shard
/// collide there.
fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
}

impl NameTable {
    /// An empty table with a fresh hash key (every shard is the same empty table until written).
    pub fn new() -> Self {
        let empty = Arc::new(Shard::new());
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| empty.clone()).collect(),
            len: 0,
        }
    }

    fn hash(&self, name: &[u8]) -> u64 {
        self.hasher.hash_one(name)
    }

    pub fn get(&self, name: &[u8]) -> Option<&Node> {
        let h = self.hash(name);
        self.shards[shard_of(h)]
            .find(h, |(k, _)| **k == *name)
            .map(|(_, n)| n)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every name and node, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Node)> {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, n)| (&**k, n)))
    }

    /// Sets `name`'s node. The name's shard is copied first if another table still shares it,
    /// unless the node is already there as given (then nothing is copied).
    pub fn insert(&mut self, name: &[u8], node: Node) {
        let h = self.hash(name);
        let i = shard_of(h);
        if self.shards[i]
            .find(h, |(k, _)| **k == *name)
            .map(|(_, n)| n)
            == Some(&node)
        {
            return;
        }
        let hasher = &self.hasher;
        let shard = Arc::make_mut(&mut self.shards[i]);
        match shard.entry(h, |(k, _)| **k == *name, |(k, _)| hasher.hash_one(&**k)) {
            Entry::Occupied(mut o) => o.get_mut().1 = node,
            Entry::Vacant(v) => {
                v.insert((name.into(), node));
                self.len += 1;
            }
        }
    }

    /// Removes `name`. Its shard is copied first if another table still shares it (and holds
    /// the name).
    pub fn remove(&mut self, name: &[u8]) {
        let h = self.hash(name);
        let i = shard_of(h);
        if self.shards[i].find(h, |(k, _)| **k == *name).is_none() {
            return;
        }
        if let Ok(o) = Arc::make_mut(&mut self.shards[i]).find_entry(h, |(k, _)| **k == *name) {
            o.remove();
            self.len -= 1;
        }
    }

    /// Shards this table holds its own copy of, `other` another (tests: what an update copied).
    #[cfg(test)]
    pub fn shards_not_shared_with(&self, other: &NameTable) -> usize {
        self.shards
            .iter()
            .zip(other.shards.iter())
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Node;

    fn node(zone: u16) -> Node {
        Node {
            zone,
            answers: Box::new([]),
            any: None,
        }
    }

    #[test]
    fn behaves_like_a_map_and_copies_only_touched_shards() {
        let mut t = NameTable::new();
        for i in 0..10_000u16 {
            t.insert(format!("n{i}").as_bytes(), node(i));
        }
        assert_eq!(t.len(), 10_000);
        assert_eq!(t.get(b"n7").map(|n| n.zone), Some(7));
        assert!(t.get(b"n10000").is_none());
        let before = t.clone();
        t.insert(b"n7", node(70));
        t.insert(b"new", node(1));
        t.remove(b"n8");
        t.remove(b"absent");
        t.insert(b"n9", node(9)); // unchanged: its shard is not copied
        assert_eq!(t.len(), 10_000);
        assert_eq!(t.get(b"n7").map(|n| n.zone), Some(70));
        assert!(t.get(b"n8").is_none());
        assert_eq!(
            before.get(b"n7").map(|n| n.zone),
            Some(7),
            "old version intact"
        );
        assert!(before.get(b"n8").is_some() && before.get(b"new").is_none());
        assert!(
            t.shards_not_shared_with(&before) <= 3,
            "only touched shards copied"
        );
        assert_eq!(t.iter().count(), 10_000);
    }

    #[test]
    fn shard_bits_leave_the_shards_own_bits_alone() {
        // Same shard, different low (bucket) and top (tag) bits.
        assert_eq!(shard_of(0x0000_0123_0000_0000), 0x123);
        assert_eq!(shard_of(0xFE00_0123_FFFF_FFFF), 0x123);
        assert_eq!(shard_of(0x0000_1000_0000_0000), 0);
    }
}
