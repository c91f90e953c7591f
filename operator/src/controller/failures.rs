//! Consecutive failed passes per subscription, for the error policy's backoff: bounded, and
//! forgotten on success and on deletion.
//!
//! The count only decides how long the next requeue waits (5 s doubling to 5 min), so losing
//! one costs little: an evicted subscription starts again at 5 s. Keeping every one costs
//! memory without bound, since names come and go (a namespace of test subscriptions created
//! and deleted in a loop, each failing). Hence a cap, with the entry failed least recently
//! evicted first, and removal when the subscription is gone.

use std::collections::HashMap;
use std::hash::Hash;

/// The most subscriptions whose failures are remembered at once. An entry is a name, a
/// namespace and two integers (about 100 bytes): the cap holds the map under about 1 MiB,
/// and is far above the subscriptions one operator fails on at once (1,000 is the size the
/// operator's benchmark reconciles).
pub const MAX_TRACKED: usize = 10_000;

/// Consecutive failures by object, at most `cap` objects.
#[derive(Debug)]
pub struct Failures<K> {
    entries: HashMap<K, Entry>,
    cap: usize,
    /// Increases with every failure recorded: the entry with the lowest is the oldest.
    clock: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    count: u32,
    last: u64,
}

impl<K: Eq + Hash + Clone> Failures<K> {
    /// An empty map holding at most `cap` objects (at least one).
    pub fn new(cap: usize) -> Self {
        Failures {
            entries: HashMap::new(),
            cap: cap.max(1),
            clock: 0,
        }
    }

    /// Counts one more failure of `key`; its consecutive failures so far. A new key when
    /// the map is full evicts the key that failed least recently (a scan, only then).
    pub fn record(&mut self, key: &K) -> u32 {
        self.clock += 1;
        if !self.entries.contains_key(key) && self.entries.len() >= self.cap {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.last)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        let entry = self
            .entries
            .entry(key.clone())
            .or_insert(Entry { count: 0, last: 0 });
        entry.count = entry.count.saturating_add(1);
        entry.last = self.clock;
        entry.count
    }

    /// Forgets `key`: it succeeded, or it was deleted.
    pub fn forget(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Keeps only the keys for which `keep` holds (those that still exist).
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.entries.retain(|key, _| keep(key));
    }

    /// The consecutive failures of `key` (0 when none is remembered).
    pub fn count(&self, key: &K) -> u32 {
        self.entries.get(key).map_or(0, |entry| entry.count)
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_up_until_forgotten() {
        let mut failures = Failures::new(4);
        assert_eq!(failures.record(&"a"), 1);
        assert_eq!(failures.record(&"a"), 2);
        assert_eq!(failures.record(&"b"), 1);
        failures.forget(&"a");
        assert_eq!(failures.count(&"a"), 0);
        assert_eq!(failures.record(&"a"), 1, "a success starts over");
    }

    #[test]
    fn the_map_is_bounded_and_evicts_the_least_recent_failure() {
        let mut failures = Failures::new(3);
        failures.record(&"a");
        failures.record(&"b");
        failures.record(&"c");
        // "a" fails again: now "b" is the one that failed least recently.
        assert_eq!(failures.record(&"a"), 2);
        assert_eq!(failures.record(&"d"), 1);
        assert_eq!(failures.len(), 3);
        assert_eq!(failures.count(&"b"), 0, "the oldest was evicted");
        assert_eq!(
            (
                failures.count(&"a"),
                failures.count(&"c"),
                failures.count(&"d")
            ),
            (2, 1, 1)
        );
        // Many names passing through never grow it.
        let mut churn = Failures::new(3);
        for name in 0..1_000u32 {
            churn.record(&name);
        }
        assert_eq!(churn.len(), 3);
        assert_eq!((churn.count(&999), churn.count(&0)), (1, 0));
    }

    #[test]
    fn deleted_objects_are_forgotten() {
        let mut failures = Failures::new(10);
        for key in ["kept", "deleted", "also-deleted"] {
            failures.record(&key);
        }
        failures.retain(|key| *key == "kept");
        assert_eq!(failures.len(), 1);
        assert_eq!(failures.count(&"kept"), 1);
        assert!(!failures.is_empty());
    }
}
