//! A bounded log of which keys changed at which version, so a subscriber that reconnects with
//! "I have version N" gets only what changed since N instead of a full snapshot — when the log
//! still reaches back that far. Used for peer catalogs (peering deltas) and the mesh view
//! (gateway config deltas).

use std::collections::{BTreeSet, VecDeque};

#[derive(Debug, Clone)]
pub struct ChangeLog<K> {
    /// (version, key); `None` marks a change that is not about one key (bundle, gateways).
    entries: VecDeque<(u64, Option<K>)>,
    /// Versions up to and including this one may be missing from `entries`.
    floor: u64,
    capacity: usize,
}

/// What changed since a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since<K> {
    /// The subscriber is current.
    Current,
    /// These keys changed (possibly none, when only non-key state changed).
    Keys(BTreeSet<K>),
    /// The log no longer reaches back that far: send a snapshot.
    TooOld,
}

impl<K: Ord + Clone> ChangeLog<K> {
    /// `start` is the version the log begins at (nothing before it is known).
    pub fn new(start: u64, capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            floor: start,
            capacity: capacity.max(1),
        }
    }

    pub fn record(&mut self, version: u64, key: Option<K>) {
        self.entries.push_back((version, key));
        while self.entries.len() > self.capacity {
            if let Some((v, _)) = self.entries.pop_front() {
                self.floor = self.floor.max(v);
            }
        }
    }

    pub fn since(&self, version: u64, current: u64) -> Since<K> {
        if version == current {
            return Since::Current;
        }
        if version > current || version < self.floor {
            return Since::TooOld;
        }
        // Entries are in version order: skip the older ones without looking at them.
        let first = self.entries.partition_point(|(v, _)| *v <= version);
        let keys = self
            .entries
            .range(first..)
            .filter_map(|(_, k)| k.clone())
            .collect();
        Since::Keys(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_table() {
        let mut log = ChangeLog::new(10, 3);
        log.record(11, Some("a"));
        log.record(12, None);
        log.record(13, Some("b"));
        assert_eq!(log.since(13, 13), Since::Current);
        assert_eq!(log.since(11, 13), Since::Keys(["b"].into()));
        assert_eq!(log.since(10, 13), Since::Keys(["a", "b"].into()));
        assert_eq!(log.since(9, 13), Since::TooOld);
        assert_eq!(log.since(14, 13), Since::TooOld);
        log.record(14, Some("c"));
        // Version 11 fell out of the bounded log: 10 can no longer be served as a delta.
        assert_eq!(log.since(10, 14), Since::TooOld);
        assert_eq!(log.since(11, 14), Since::Keys(["b", "c"].into()));
    }
}
