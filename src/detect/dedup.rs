//! The eventID memory: CloudTrail delivers some records more than once, and each is judged once.

use std::collections::BTreeSet;

use rustc_hash::{FxHashMap, FxHashSet};

use super::SeenIds;

/// The eventIDs a shard has seen, as 64-bit hashes, by minute of event time. A duplicate carries
/// its original's `eventTime`, so it is looked for among the IDs of that minute alone: a table
/// small enough to stay in cache while a stream's events of that minute go by (one table of every
/// ID cost a cache miss per event, and regrew as it filled). Bounded: past `capacity` IDs the
/// oldest minutes are forgotten first, so a file delivered twice is recognised however late the
/// second copy comes, as long as its minute is still held.
pub(super) struct EventIdMemory {
    capacity: usize,
    held: usize,
    by_minute: FxHashMap<i64, FxHashSet<u64>>,
    /// The minutes held, oldest first.
    minutes: BTreeSet<i64>,
}

impl EventIdMemory {
    pub(super) fn new(capacity: usize) -> Self {
        EventIdMemory {
            capacity,
            held: 0,
            by_minute: FxHashMap::default(),
            minutes: BTreeSet::new(),
        }
    }

    /// Remembers `id`, of an event at `time`; false when it was already remembered.
    pub(super) fn insert(&mut self, time: i64, id: &str) -> bool {
        self.insert_hash(time.div_euclid(60), xxhash_rust::xxh3::xxh3_64(id.as_bytes()))
    }

    pub(super) fn insert_hash(&mut self, minute: i64, hash: u64) -> bool {
        // A new minute's set is sized as the latest minute held: it then grows in place rather
        // than rehashing at each doubling.
        let size = match self.by_minute.contains_key(&minute) {
            true => 0,
            false => self
                .minutes
                .last()
                .and_then(|m| self.by_minute.get(m))
                .map_or(0, |ids| ids.len()),
        };
        let ids = self.by_minute.entry(minute).or_insert_with(|| {
            self.minutes.insert(minute);
            FxHashSet::with_capacity_and_hasher(size, Default::default())
        });
        if !ids.insert(hash) {
            return false;
        }
        self.held += 1;
        while self.held > self.capacity {
            let Some(oldest) = self.minutes.pop_first() else {
                break;
            };
            self.held -= self.by_minute.remove(&oldest).map_or(0, |ids| ids.len());
        }
        true
    }

    /// Every hash held, by minute, oldest first.
    pub(super) fn snapshot(&self) -> SeenIds {
        self.minutes
            .iter()
            .filter_map(|m| {
                let mut ids: Vec<u64> = self.by_minute.get(m)?.iter().copied().collect();
                ids.sort_unstable();
                Some((*m, ids))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_memory_is_bounded_but_remembers_recent_ids() {
        let mut m = EventIdMemory::new(100);
        for i in 0..10_000 {
            // Ten events a minute.
            let time = i * 6;
            assert!(m.insert(time, &i.to_string()));
            assert!(!m.insert(time, &i.to_string()));
            assert!(m.held <= 100);
        }
        assert_eq!(m.held, m.by_minute.values().map(|ids| ids.len()).sum::<usize>());
        assert_eq!(m.minutes.len(), m.by_minute.len());
        // The newest minutes are held; the oldest are forgotten.
        assert!(!m.insert(9_999 * 6, "9999"));
        assert!(m.insert(0, "0"));
    }

    #[test]
    fn a_duplicate_is_recognised_by_its_time_however_late_it_comes() {
        let mut m = EventIdMemory::new(1_000);
        assert!(m.insert(100, "a"));
        for i in 0..500 {
            assert!(m.insert(200 + i, &format!("later{i}")));
        }
        assert!(!m.insert(100, "a"));
        // The same ID at another time is another event.
        assert!(m.insert(160, "a"));
    }
}
