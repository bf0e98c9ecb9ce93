//! The eventID memory: CloudTrail delivers some records more than once, and each is judged once.

use std::collections::BTreeMap;

use rustc_hash::FxHashSet;

use super::SeenIds;

/// The eventIDs a shard has seen, as 64-bit hashes, by minute of event time. A duplicate carries
/// its original's `eventTime`, so it is looked for among the IDs of that minute alone: a table
/// small enough to stay in cache while a stream's events of that minute go by (one table of every
/// ID cost a cache miss per event, and regrew as it filled). A shard's events come nearly in time
/// order, so the minute they are arriving in is kept apart from the others: most events are
/// looked for there without a search of the minutes held. Bounded: past `capacity` IDs the oldest
/// minutes are forgotten first, so a file delivered twice is recognised however late the second
/// copy comes, as long as its minute is still held.
pub(super) struct EventIdMemory {
    capacity: usize,
    held: usize,
    /// The minute of the latest event, and its IDs.
    current: Option<(i64, FxHashSet<u64>)>,
    /// Every other minute held.
    earlier: BTreeMap<i64, FxHashSet<u64>>,
}

impl EventIdMemory {
    pub(super) fn new(capacity: usize) -> Self {
        EventIdMemory {
            capacity,
            held: 0,
            current: None,
            earlier: BTreeMap::new(),
        }
    }

    /// Remembers `id`, of an event at `time`; false when it was already remembered.
    pub(super) fn insert(&mut self, time: i64, id: &str) -> bool {
        self.insert_hash(time.div_euclid(60), xxhash_rust::xxh3::xxh3_64(id.as_bytes()))
    }

    pub(super) fn insert_hash(&mut self, minute: i64, hash: u64) -> bool {
        let ids = match &mut self.current {
            Some((m, ids)) if *m == minute => ids,
            _ => self.move_to(minute),
        };
        if !ids.insert(hash) {
            return false;
        }
        self.held += 1;
        while self.held > self.capacity && self.forget_oldest() {}
        true
    }

    /// Makes `minute` the current one and returns its IDs.
    fn move_to(&mut self, minute: i64) -> &mut FxHashSet<u64> {
        // A new minute's set is sized as the one before: it then grows in place rather than
        // rehashing at each doubling.
        let size = self.current.as_ref().map_or(0, |(_, ids)| ids.len());
        if let Some((m, ids)) = self.current.take() {
            self.earlier.insert(m, ids);
        }
        let ids = self
            .earlier
            .remove(&minute)
            .unwrap_or_else(|| FxHashSet::with_capacity_and_hasher(size, Default::default()));
        &mut self.current.insert((minute, ids)).1
    }

    /// Forgets the oldest minute held; false when none is.
    fn forget_oldest(&mut self) -> bool {
        let oldest_earlier = self.earlier.first_key_value().map(|(m, _)| *m);
        let forgotten = match (&self.current, oldest_earlier) {
            (Some((current, _)), Some(earlier)) if *current > earlier => {
                self.earlier.pop_first().map(|(_, ids)| ids)
            }
            (None, Some(_)) => self.earlier.pop_first().map(|(_, ids)| ids),
            (Some(_), _) => self.current.take().map(|(_, ids)| ids),
            (None, None) => None,
        };
        forgotten.inspect(|ids| self.held -= ids.len()).is_some()
    }

    /// Every hash held, by minute, oldest first.
    pub(super) fn snapshot(&self) -> SeenIds {
        let mut minutes: SeenIds = self
            .earlier
            .iter()
            .chain(self.current.as_ref().map(|(m, ids)| (m, ids)))
            .map(|(m, ids)| {
                let mut ids: Vec<u64> = ids.iter().copied().collect();
                ids.sort_unstable();
                (*m, ids)
            })
            .collect();
        minutes.sort_by_key(|(m, _)| *m);
        minutes
    }

    /// How many minutes are held.
    #[cfg(test)]
    fn minutes(&self) -> usize {
        self.earlier.len() + usize::from(self.current.is_some())
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
        let snapshot = m.snapshot();
        assert_eq!(m.held, snapshot.iter().map(|(_, ids)| ids.len()).sum::<usize>());
        assert_eq!(m.minutes(), snapshot.len());
        assert!(snapshot.windows(2).all(|w| w[0].0 < w[1].0));
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

    #[test]
    fn a_late_minute_is_the_first_forgotten_even_while_current() {
        let mut m = EventIdMemory::new(3);
        assert!(m.insert(6_000, "a"));
        assert!(m.insert(6_060, "b"));
        // A late event's minute becomes the current one, and is the oldest held.
        assert!(m.insert(60, "late"));
        assert!(m.insert(6_120, "c"));
        assert_eq!(m.held, 3);
        assert!(m.insert(60, "late"), "the oldest minute went first");
        assert!(!m.insert(6_060, "b"));
        assert!(!m.insert(6_120, "c"));
    }
}
