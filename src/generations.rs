//! A memo bounded in two generations, for lookups whose keys recur in a stream while many others
//! pass once: the principal cache (by identity text) and the rules' gate verdicts.
//!
//! In: a key, and a way to make its value with the value's weight (bytes it holds, or nothing).
//! Out: the value remembered for the key, or the new one, then remembered. Bounded: each
//! generation holds at most `entries` values of at most `weight` in all (a value heavier than
//! that alone is the caller's to refuse). When the newer is full it
//! becomes the older and the older is forgotten; a value found in the older moves to the newer.
//! So keys that keep recurring stay however many others pass once, where emptying one full map
//! made nearly every lookup after each emptying a miss.

use std::hash::Hash;

use rustc_hash::FxHashMap;

#[derive(Debug)]
pub(crate) struct Generations<K, V> {
    entries: usize,
    weight: usize,
    /// Values, each with its weight, since the last rotation.
    recent: FxHashMap<K, (V, usize)>,
    /// The generation before, forgotten at the next rotation.
    older: FxHashMap<K, (V, usize)>,
    /// The weight of the values in `recent`.
    recent_weight: usize,
}

impl<K: Hash + Eq + Copy, V> Generations<K, V> {
    /// At most `entries` values of at most `weight` in all in each generation.
    pub(crate) fn new(entries: usize, weight: usize) -> Self {
        Generations {
            entries,
            weight,
            recent: FxHashMap::default(),
            older: FxHashMap::default(),
            recent_weight: 0,
        }
    }

    /// `found` of the value remembered under `key`, else of the value `make` makes, which is
    /// then remembered with the weight `make` gives it.
    pub(crate) fn with<R>(
        &mut self,
        key: K,
        make: impl FnOnce() -> (V, usize),
        found: impl FnOnce(&V) -> R,
    ) -> R {
        if let Some((value, _)) = self.recent.get(&key) {
            return found(value);
        }
        let entry = self.older.remove(&key).unwrap_or_else(make);
        if self.recent.len() >= self.entries || self.recent_weight + entry.1 > self.weight {
            std::mem::swap(&mut self.recent, &mut self.older);
            self.recent.clear();
            self.recent_weight = 0;
        }
        self.recent_weight += entry.1;
        found(&self.recent.entry(key).or_insert(entry).0)
    }

    /// Whether `key` is remembered, in either generation.
    #[cfg(test)]
    pub(crate) fn contains(&self, key: &K) -> bool {
        self.recent.contains_key(key) || self.older.contains_key(key)
    }

    /// Per generation, newer first: how many values it holds and their weight, counted afresh.
    #[cfg(test)]
    pub(crate) fn held(&self) -> [(usize, usize); 2] {
        let weight = |m: &FxHashMap<K, (V, usize)>| m.values().map(|(_, w)| w).sum();
        assert_eq!(weight(&self.recent), self.recent_weight);
        [
            (self.recent.len(), weight(&self.recent)),
            (self.older.len(), weight(&self.older)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_recur_outlive_a_stream_of_others() {
        let mut memo = Generations::new(4, usize::MAX);
        let mut made = 0;
        let mut recall = |memo: &mut Generations<u64, u64>, key: u64| {
            let value = memo.with(
                key,
                || {
                    made += 1;
                    (key * 10, 0)
                },
                |&v| v,
            );
            assert_eq!(value, key * 10);
        };
        // Key 0 recurs between runs of keys seen once, more of them than a generation holds.
        for round in 0..10u64 {
            recall(&mut memo, 0);
            for other in 0..5 {
                recall(&mut memo, 1 + round * 5 + other);
            }
        }
        assert_eq!(made, 1 + 50);
        let [(recent, _), (older, _)] = memo.held();
        assert!(recent <= 4 && older <= 4);
    }

    #[test]
    fn each_generation_is_bounded_in_weight() {
        let mut memo = Generations::new(usize::MAX, 100);
        for key in 0..1_000u64 {
            memo.with(key, || ((), (key % 40) as usize), |_| ());
            for (_, weight) in memo.held() {
                assert!(weight <= 100);
            }
        }
    }
}
