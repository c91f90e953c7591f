//! Recently accepted request keys, to store a redelivered request once.
//!
//! Meta resends a webhook it saw no 200 for (after a timeout, or a crash between our fsync
//! and our answer) with the same body, hence the same HMAC. Keys live for `window` and at
//! most `capacity` of them are kept (oldest first out), so memory stays bounded at any rate.

use std::collections::{HashMap, VecDeque};

use super::segment::Key;

/// Bounded set of recent keys.
#[derive(Debug)]
pub struct Recent {
    window_millis: u64,
    capacity: usize,
    seen: HashMap<Key, u64>,
    order: VecDeque<(u64, Key)>,
}

impl Recent {
    /// An empty set; `window_millis == 0` or `capacity == 0` disables dedup.
    pub fn new(window_millis: u64, capacity: usize) -> Recent {
        Recent {
            window_millis,
            capacity,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether it remembers anything (a window and a capacity are set).
    pub fn enabled(&self) -> bool {
        self.window_millis > 0 && self.capacity > 0
    }

    /// Whether `key` was accepted within the window.
    pub fn contains(&self, key: &Key, now: u64) -> bool {
        self.enabled()
            && self
                .seen
                .get(key)
                .is_some_and(|at| now.saturating_sub(*at) < self.window_millis)
    }

    /// Remembers `key` as accepted at `at`, expiring what is too old or too many.
    pub fn insert(&mut self, key: Key, at: u64, now: u64) {
        if !self.enabled() || key == [0; 16] || now.saturating_sub(at) >= self.window_millis {
            return;
        }
        self.seen.insert(key, at);
        self.order.push_back((at, key));
        while let Some(&(oldest, old_key)) = self.order.front() {
            if self.order.len() <= self.capacity && now.saturating_sub(oldest) < self.window_millis
            {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&old_key) == Some(&oldest) {
                self.seen.remove(&old_key);
            }
        }
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_and_capacity_bound_the_set() {
        let mut recent = Recent::new(1000, 2);
        recent.insert([1; 16], 0, 0);
        assert!(recent.contains(&[1; 16], 999));
        assert!(!recent.contains(&[1; 16], 1000), "expired by time");
        recent.insert([2; 16], 10, 10);
        recent.insert([3; 16], 20, 20);
        assert!(!recent.contains(&[1; 16], 30), "evicted by capacity");
        assert!(recent.contains(&[3; 16], 30));
        assert_eq!(recent.len(), 2);
        let disabled = Recent::new(0, 10);
        assert!(!disabled.contains(&[1; 16], 0));
    }
}
