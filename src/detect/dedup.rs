//! The eventID memory: CloudTrail delivers some records more than once, and each is judged once.

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashSet;

use super::SeenIds;

/// The eventIDs a shard has seen, as 64-bit hashes, by minute of event time. A duplicate carries
/// its original's `eventTime`, so it is looked for among the IDs of that minute alone: a table
/// small enough to stay in cache while a stream's events of that minute go by (one table of every
/// ID cost a cache miss per event, and regrew as it filled). Bounded: past `capacity` IDs the
/// oldest minutes are forgotten first, so a file delivered twice is recognised however late the
/// second copy comes, as long as its minute is still held.
///
/// A shard's events come nearly in time order, so minutes are kept in the order they first came
/// while each is newer than all before it: a new minute is appended, the oldest forgotten from the
/// front, and the latest found without a search. The few minutes that first come after a newer
/// one are kept apart, in a map. A shard seeing less than an event a minute (every shard of the
/// realistic trail) had each event's minute go into and out of that map: 900 instructions an event.
pub(super) struct EventIdMemory {
    capacity: usize,
    held: usize,
    /// Minutes in ascending order, each newer than every other minute held when it came.
    in_order: VecDeque<(i64, MinuteIds)>,
    /// Minutes that came after a newer one: each older than the newest of `in_order`, and not in
    /// it.
    out_of_order: BTreeMap<i64, MinuteIds>,
}

/// The IDs of one minute: a few held in place, more in a table. A shard that sees a few events a
/// minute (most principals, most of the day) allocated a table for nearly every event, and held
/// a hundred bytes per ID in it and its map entry.
#[derive(Debug)]
enum MinuteIds {
    Few { len: u8, ids: [u64; FEW] },
    Many(FxHashSet<u64>),
}

/// IDs a minute holds in place.
const FEW: usize = 4;

impl MinuteIds {
    /// Room for `expected` IDs.
    fn with_room(expected: usize) -> MinuteIds {
        if expected <= FEW {
            MinuteIds::Few {
                len: 0,
                ids: [0; FEW],
            }
        } else {
            MinuteIds::Many(FxHashSet::with_capacity_and_hasher(expected, Default::default()))
        }
    }

    /// Adds `hash`; false when it was there.
    fn insert(&mut self, hash: u64) -> bool {
        match self {
            MinuteIds::Few { len, ids } => {
                let held = &ids[..usize::from(*len)];
                if held.contains(&hash) {
                    return false;
                }
                if held.len() < FEW {
                    ids[held.len()] = hash;
                    *len += 1;
                    return true;
                }
                let mut many = FxHashSet::with_capacity_and_hasher(2 * FEW, Default::default());
                many.extend(held.iter().copied());
                many.insert(hash);
                *self = MinuteIds::Many(many);
                true
            }
            MinuteIds::Many(ids) => ids.insert(hash),
        }
    }

    fn len(&self) -> usize {
        match self {
            MinuteIds::Few { len, .. } => usize::from(*len),
            MinuteIds::Many(ids) => ids.len(),
        }
    }

    fn to_vec(&self) -> Vec<u64> {
        match self {
            MinuteIds::Few { len, ids } => ids[..usize::from(*len)].to_vec(),
            MinuteIds::Many(ids) => ids.iter().copied().collect(),
        }
    }
}

impl EventIdMemory {
    pub(super) fn new(capacity: usize) -> Self {
        EventIdMemory {
            capacity,
            held: 0,
            in_order: VecDeque::new(),
            out_of_order: BTreeMap::new(),
        }
    }

    /// Remembers `id`, of an event at `time`; false when it was already remembered.
    pub(super) fn insert(&mut self, time: i64, id: &str) -> bool {
        self.insert_hash(time.div_euclid(60), xxhash_rust::xxh3::xxh3_64(id.as_bytes()))
    }

    pub(super) fn insert_hash(&mut self, minute: i64, hash: u64) -> bool {
        if !self.minute_ids(minute).insert(hash) {
            return false;
        }
        self.held += 1;
        while self.held > self.capacity && self.forget_oldest() {}
        true
    }

    /// The IDs held for `minute`, new and empty if there are none.
    fn minute_ids(&mut self, minute: i64) -> &mut MinuteIds {
        let newest = self.in_order.back().map(|(m, ids)| (*m, ids.len()));
        match newest {
            Some((newest, _)) if newest == minute => {}
            // A new minute's set is sized as the one before: it then grows in place rather than
            // rehashing at each doubling. With none in order, none is out of order either: those
            // are older than the newest in order, and forgotten before it.
            Some((newest, size)) if newest < minute => {
                self.in_order.push_back((minute, MinuteIds::with_room(size)));
            }
            None => {
                debug_assert!(self.out_of_order.is_empty(), "older minutes go first");
                self.in_order.push_back((minute, MinuteIds::with_room(0)));
            }
            Some(_) => {
                return match self.in_order.binary_search_by_key(&minute, |(m, _)| *m) {
                    Ok(at) => &mut self.in_order[at].1,
                    Err(_) => self
                        .out_of_order
                        .entry(minute)
                        .or_insert_with(|| MinuteIds::with_room(0)),
                };
            }
        }
        &mut self
            .in_order
            .back_mut()
            .expect("the newest minute was found or added")
            .1
    }

    /// Forgets the oldest minute held; false when none is.
    fn forget_oldest(&mut self) -> bool {
        let in_order = self.in_order.front().map(|(m, _)| *m);
        let out_of_order = self.out_of_order.first_key_value().map(|(m, _)| *m);
        let forgotten = match (in_order, out_of_order) {
            (Some(a), Some(b)) if b < a => self.out_of_order.pop_first(),
            (Some(_), _) => self.in_order.pop_front(),
            (None, _) => self.out_of_order.pop_first(),
        };
        forgotten.inspect(|(_, ids)| self.held -= ids.len()).is_some()
    }

    /// Every hash held, by minute, oldest first.
    pub(super) fn snapshot(&self) -> SeenIds {
        let mut minutes: SeenIds = self
            .in_order
            .iter()
            .map(|(m, ids)| (m, ids))
            .chain(&self.out_of_order)
            .map(|(m, ids)| {
                let mut ids = ids.to_vec();
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
        self.in_order.len() + self.out_of_order.len()
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

    /// The memory's rule, written plainly: IDs by minute, the oldest minutes forgotten first.
    #[derive(Default)]
    struct Model {
        minutes: BTreeMap<i64, std::collections::BTreeSet<u64>>,
        held: usize,
    }

    impl Model {
        fn insert(&mut self, capacity: usize, minute: i64, hash: u64) -> bool {
            if !self.minutes.entry(minute).or_default().insert(hash) {
                return false;
            }
            self.held += 1;
            while self.held > capacity {
                let (_, ids) = self.minutes.pop_first().expect("a minute is held");
                self.held -= ids.len();
            }
            true
        }

        fn snapshot(&self) -> SeenIds {
            let ids = |ids: &std::collections::BTreeSet<u64>| ids.iter().copied().collect();
            self.minutes.iter().map(|(m, set)| (*m, ids(set))).collect()
        }
    }

    proptest::proptest! {
        #[test]
        fn the_memory_keeps_the_rule_in_any_order_of_minutes(
            capacity in 1usize..40,
            steps in proptest::collection::vec((-3i64..=2, 0u64..12), 0..300),
        ) {
            let (mut memory, mut model) = (EventIdMemory::new(capacity), Model::default());
            // Mostly forward in time, a step back now and then, IDs that repeat.
            let mut minute = 0;
            for (step, hash) in steps {
                minute = (minute + step.max(0) - i64::from(step == -3) * 5).max(0);
                proptest::prop_assert_eq!(
                    memory.insert_hash(minute, hash),
                    model.insert(capacity, minute, hash),
                    "minute {} hash {}", minute, hash
                );
                proptest::prop_assert_eq!(memory.held, model.held);
            }
            proptest::prop_assert_eq!(memory.snapshot(), model.snapshot());
        }
    }

    #[test]
    fn a_minute_holds_ids_in_place_then_in_a_table_alike() {
        let mut m = EventIdMemory::new(1_000);
        // Up to and past the IDs a minute holds in place, each found again in either form.
        for n in 0..3 * FEW as u64 {
            assert!(m.insert_hash(7, n));
            for earlier in 0..=n {
                assert!(!m.insert_hash(7, earlier), "{earlier} of {n}");
            }
        }
        assert_eq!(m.held, 3 * FEW);
        // Moving to another minute and back keeps them.
        assert!(m.insert_hash(8, 0));
        assert!(!m.insert_hash(7, 2 * FEW as u64));
        assert_eq!(
            m.snapshot(),
            vec![(7, (0..3 * FEW as u64).collect()), (8, vec![0])]
        );
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
