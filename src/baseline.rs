//! Per-principal baselines: what one identity normally does, over a sliding window of event time.
//!
//! In: a principal's events, in roughly event-time order (CloudTrail files arrive late and out of
//! order; nothing here assumes strict order). Out: answers to "is this value new for this
//! principal", "how busy is this interval against its history", "how long was it silent".
//!
//! Memory is bounded by construction: each [`Dimension`] holds at most `max_values` values (the
//! least recently seen is evicted), values unseen for longer than the window are treated as gone
//! and replaced, and rate history is a handful of running figures, not a series.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// The dimensions a baseline is kept on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    EventSource,
    ApiCall,
    SourceIp,
    Network,
    UserAgent,
    Region,
}

pub const DIMENSIONS: usize = 6;

impl Dimension {
    pub const ALL: [Dimension; DIMENSIONS] = [
        Dimension::EventSource,
        Dimension::ApiCall,
        Dimension::SourceIp,
        Dimension::Network,
        Dimension::UserAgent,
        Dimension::Region,
    ];

    /// The name anomalies report.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::EventSource => "eventSource",
            Dimension::ApiCall => "eventSource:eventName",
            Dimension::SourceIp => "sourceIPAddress",
            Dimension::Network => "sourceNetwork",
            Dimension::UserAgent => "userAgentFamily",
            Dimension::Region => "awsRegion",
        }
    }
}

/// One value of one dimension, as a principal has used it. Kept small (40 bytes): times are Unix
/// seconds in a `u32` (enough until 2106). Snapshots of earlier versions also hold the value's
/// hash, which is recomputed instead.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValueSeen {
    pub value: CompactString,
    first_seen: u32,
    last_seen: u32,
    pub count: u32,
}

fn pack(time: i64) -> u32 {
    time.clamp(0, i64::from(u32::MAX)) as u32
}

fn unpack(stamp: u32) -> i64 {
    i64::from(stamp)
}

impl ValueSeen {
    pub fn first_seen(&self) -> i64 {
        unpack(self.first_seen)
    }

    pub fn last_seen(&self) -> i64 {
        unpack(self.last_seen)
    }
}

/// The values one principal has used on one dimension. Their hashes are kept apart, in a list of
/// their own: a lookup compares the hash against all of them (48 at most, three cache lines read
/// in sequence) and reads a value only where its hash matches. Kept in the values' own list, the
/// hashes were searched by bisection, one dependent cache miss per step: with thousands of
/// principals' sets out of cache, that was most of the detector's time per event.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "StoredValues")]
pub struct ValueSet {
    #[serde(skip)]
    hashes: Vec<u32>,
    values: Vec<ValueSeen>,
}

/// A [`ValueSet`] as snapshots hold it: the values alone.
#[derive(Deserialize)]
struct StoredValues {
    values: Vec<ValueSeen>,
}

impl From<StoredValues> for ValueSet {
    fn from(stored: StoredValues) -> ValueSet {
        ValueSet {
            hashes: stored.values.iter().map(|v| value_hash(&v.value)).collect(),
            values: stored.values,
        }
    }
}

/// What [`ValueSet::observe`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Seen within the window; `first_seen` is when it was first seen.
    Known { first_seen: i64 },
    /// Never seen, or not within the window.
    Novel,
}

impl ValueSet {
    /// Records a use of `value` at `time` and says whether it was known. `window` is how long a
    /// value is remembered after its last use; `cap` how many values are held.
    pub fn observe(&mut self, value: &str, time: i64, window: i64, cap: usize) -> Seen {
        self.observe_hashed(value, value_hash(value), time, window, cap)
    }

    /// [`ValueSet::observe`], for a value whose `value_hash` is known.
    pub fn observe_hashed(&mut self, value: &str, hash: u32, time: i64, window: i64, cap: usize) -> Seen {
        let stamp = pack(time);
        if let Some(at) = self.find(hash, value) {
            let v = &mut self.values[at];
            let expired = time - v.last_seen() > window;
            v.last_seen = v.last_seen.max(stamp);
            v.count = v.count.saturating_add(1);
            if expired {
                v.first_seen = stamp;
                v.count = 1;
                return Seen::Novel;
            }
            let first_seen = v.first_seen();
            v.first_seen = v.first_seen.min(stamp);
            return Seen::Known { first_seen };
        }
        if cap == 0 {
            return Seen::Novel;
        }
        let entry = ValueSeen {
            value: value.into(),
            first_seen: stamp,
            last_seen: stamp,
            count: 1,
        };
        if self.values.len() >= cap {
            // The least recently seen goes; of several, the one of lowest hash, so that the
            // choice does not depend on the order the set holds its values in.
            let oldest = (0..self.values.len()).min_by_key(|&i| (self.values[i].last_seen, self.hashes[i]));
            if let Some(oldest) = oldest {
                self.values[oldest] = entry;
                self.hashes[oldest] = hash;
                return Seen::Novel;
            }
        }
        // Values are added rarely; exact growth keeps no slack per principal.
        self.values.reserve_exact(1);
        self.hashes.reserve_exact(1);
        self.values.push(entry);
        self.hashes.push(hash);
        Seen::Novel
    }

    /// Where `value`, of hash `hash`, is held. The hashes are compared eight at a time into a
    /// mask, without a branch per hash.
    fn find(&self, hash: u32, value: &str) -> Option<usize> {
        for (block, hashes) in self.hashes.chunks(8).enumerate() {
            let mut matching = hashes
                .iter()
                .enumerate()
                .fold(0u32, |mask, (i, &h)| mask | (u32::from(h == hash) << i));
            while matching != 0 {
                let at = block * 8 + matching.trailing_zeros() as usize;
                if self.values[at].value == value {
                    return Some(at);
                }
                matching &= matching - 1;
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Starts loading the set's hashes into cache, ahead of [`ValueSet::prefetch_value`].
    pub fn prefetch_hashes(&self) {
        for line in self.hashes.chunks(16) {
            prefetch(line.as_ptr());
        }
    }

    /// Starts loading the value of hash `hash`, if the set holds one, ahead of
    /// [`ValueSet::observe_hashed`].
    pub fn prefetch_value(&self, hash: u32) {
        if let Some(at) = self.hashes.iter().position(|&h| h == hash) {
            prefetch(&self.values[at]);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The `n` most used values, most used first (ties: most recent first).
    pub fn top(&self, n: usize) -> Vec<&str> {
        let mut sorted: Vec<&ValueSeen> = self.values.iter().collect();
        sorted.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(b.last_seen.cmp(&a.last_seen))
                .then(a.value.cmp(&b.value))
        });
        sorted.into_iter().take(n).map(|v| v.value.as_str()).collect()
    }

    /// Forgets values unseen since `horizon`.
    pub fn expire(&mut self, horizon: i64) {
        let mut at = 0;
        while at < self.values.len() {
            if self.values[at].last_seen() < horizon {
                self.values.swap_remove(at);
                self.hashes.swap_remove(at);
            } else {
                at += 1;
            }
        }
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.values.capacity() * std::mem::size_of::<ValueSeen>()
            + self.hashes.capacity() * std::mem::size_of::<u32>()
            + self
                .values
                .iter()
                .filter(|v| v.value.is_heap_allocated())
                .map(|v| v.value.len())
                .sum::<usize>()
    }
}

/// Asks the processor to start loading the cache line at `at`: a hint, which cannot fault.
fn prefetch<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing into the program and never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

fn value_hash(value: &str) -> u32 {
    xxhash_rust::xxh3::xxh3_64(value.as_bytes()) as u32
}

/// Events and denied calls per interval, against the principal's own history of active intervals.
///
/// Two intervals are open at once (the current and the one before it) so that events arriving a
/// little late still count where they belong; an interval joins the history when it closes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RateCounter {
    open: [IntervalCount; 2],
    /// Active intervals folded into the history.
    pub intervals: u64,
    /// Running mean of events per active interval.
    pub mean_events: f64,
    /// Running mean of denied calls per active interval.
    pub mean_denied: f64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct IntervalCount {
    /// Interval number (event time / interval length); 0 = unused.
    pub index: i64,
    pub events: u64,
    pub denied: u64,
    /// Which spikes were already raised for this interval.
    pub raised_rate: bool,
    pub raised_denied: bool,
}

/// How many intervals the running means weigh, at most: the history adapts within about a week
/// of hourly intervals.
const RATE_MEMORY: f64 = 168.0;

impl RateCounter {
    /// Counts an event in interval `index`; returns that interval's counts, or `None` when the
    /// interval is already closed (the event is too late to judge a rate by).
    pub fn count(&mut self, index: i64, denied: bool) -> Option<&mut IntervalCount> {
        let slot = if self.open[1].index == index {
            1
        } else if self.open[0].index == index {
            0
        } else if index > self.open[1].index {
            self.close(self.open[0]);
            self.open[0] = self.open[1];
            if index > self.open[0].index + 1 {
                // A gap: the previous interval can no longer receive late events either.
                self.close(self.open[0]);
                self.open[0] = IntervalCount::default();
            }
            self.open[1] = IntervalCount {
                index,
                ..IntervalCount::default()
            };
            1
        } else {
            return None;
        };
        let interval = &mut self.open[slot];
        interval.events += 1;
        interval.denied += u64::from(denied);
        Some(interval)
    }

    fn close(&mut self, interval: IntervalCount) {
        if interval.events == 0 {
            return;
        }
        self.intervals += 1;
        let weight = 1.0 / (self.intervals as f64).min(RATE_MEMORY);
        self.mean_events += (interval.events as f64 - self.mean_events) * weight;
        self.mean_denied += (interval.denied as f64 - self.mean_denied) * weight;
    }
}

/// Everything held for one principal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrincipalBaseline {
    pub first_seen: i64,
    pub last_seen: i64,
    pub events: u64,
    pub dimensions: [ValueSet; DIMENSIONS],
    pub rate: RateCounter,
}

impl PrincipalBaseline {
    pub fn new(time: i64) -> Self {
        PrincipalBaseline {
            first_seen: time,
            last_seen: time,
            events: 0,
            dimensions: Default::default(),
            rate: RateCounter::default(),
        }
    }

    /// Starts loading each dimension's hashes (see [`PrincipalBaseline::observe`]).
    pub fn prefetch_hashes(&self) {
        self.dimensions.iter().for_each(ValueSet::prefetch_hashes);
    }

    /// Records a use of each dimension's value, as [`ValueSet::observe`] does. A principal's
    /// sets are out of cache when its event comes: its six dimensions' hashes, then the values
    /// they point at, are asked for all at once, so that their cache misses overlap instead of
    /// following one another (the hashes best some time before, with
    /// [`PrincipalBaseline::prefetch_hashes`]).
    pub fn observe(
        &mut self,
        values: &[Option<&str>; DIMENSIONS],
        time: i64,
        window: i64,
        cap: usize,
    ) -> [Option<Seen>; DIMENSIONS] {
        let hashes: [u32; DIMENSIONS] = std::array::from_fn(|i| values[i].map_or(0, value_hash));
        for (set, (value, &hash)) in self.dimensions.iter().zip(values.iter().zip(&hashes)) {
            if value.is_some() {
                set.prefetch_value(hash);
            }
        }
        std::array::from_fn(|i| {
            let value = values[i]?;
            Some(self.dimensions[i].observe_hashed(value, hashes[i], time, window, cap))
        })
    }

    /// Whether the principal has history enough to judge novelty by.
    pub fn is_mature(&self, learning_period: i64, learning_events: u64) -> bool {
        self.events >= learning_events && self.last_seen - self.first_seen >= learning_period
    }

    pub fn values_held(&self) -> usize {
        self.dimensions.iter().map(ValueSet::len).sum()
    }

    /// Approximate bytes held for this principal, excluding its key.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.dimensions.iter().map(ValueSet::heap_bytes).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400;

    #[test]
    fn first_use_is_novel_then_known() {
        let mut set = ValueSet::default();
        assert_eq!(set.observe("a", 100, DAY, 4), Seen::Novel);
        assert_eq!(set.observe("a", 200, DAY, 4), Seen::Known { first_seen: 100 });
    }

    #[test]
    fn values_unseen_for_a_window_are_novel_again() {
        let mut set = ValueSet::default();
        set.observe("a", 0, DAY, 4);
        assert_eq!(set.observe("a", 2 * DAY, DAY, 4), Seen::Novel);
        assert_eq!(
            set.observe("a", 2 * DAY + 1, DAY, 4),
            Seen::Known { first_seen: 2 * DAY }
        );
    }

    #[test]
    fn the_least_recently_seen_value_is_evicted_at_the_cap() {
        let mut set = ValueSet::default();
        set.observe("old", 1, DAY, 2);
        set.observe("recent", 3, DAY, 2);
        set.observe("old", 2, DAY, 2); // late event: last_seen stays the latest (2)
        set.observe("new", 4, DAY, 2);
        assert_eq!(set.len(), 2);
        assert_eq!(set.observe("recent", 5, DAY, 2), Seen::Known { first_seen: 3 });
        assert_eq!(set.observe("old", 6, DAY, 2), Seen::Novel);
    }

    #[test]
    fn a_set_read_back_from_a_snapshot_knows_its_values() {
        let mut set = ValueSet::default();
        for (t, v) in ["s3", "ec2", "iam"].iter().enumerate() {
            set.observe(v, t as i64, DAY, 8);
        }
        let mut read: ValueSet = serde_json::from_str(&serde_json::to_string(&set).unwrap()).unwrap();
        assert_eq!(read.observe("ec2", 10, DAY, 8), Seen::Known { first_seen: 1 });
        assert_eq!(read.observe("sts", 11, DAY, 8), Seen::Novel);
        // Earlier versions wrote each value's hash too, and kept them in hash order.
        let earlier = r#"{"values":[{"hash":7,"value":"iam","first_seen":5,"last_seen":6,"count":2},
            {"hash":3,"value":"s3","first_seen":1,"last_seen":2,"count":1}]}"#;
        let mut read: ValueSet = serde_json::from_str(earlier).unwrap();
        assert_eq!(read.observe("s3", 10, DAY, 8), Seen::Known { first_seen: 1 });
        assert_eq!(read.observe("iam", 10, DAY, 8), Seen::Known { first_seen: 5 });
        assert_eq!(read.observe("ec2", 10, DAY, 8), Seen::Novel);
    }

    #[test]
    fn a_seen_value_is_forty_bytes() {
        assert_eq!(std::mem::size_of::<ValueSeen>(), 40);
    }

    #[test]
    fn top_orders_by_use() {
        let mut set = ValueSet::default();
        for (v, n) in [("a", 1), ("b", 3), ("c", 2)] {
            for t in 0..n {
                set.observe(v, t, DAY, 8);
            }
        }
        assert_eq!(set.top(2), vec!["b", "c"]);
    }

    #[test]
    fn rate_history_folds_closed_intervals() {
        let mut rate = RateCounter::default();
        for hour in 1..=10 {
            for _ in 0..5 {
                rate.count(hour, false);
            }
        }
        // Intervals 1..=8 are closed (9 is the late-event slot, 10 the current one).
        assert_eq!(rate.intervals, 8);
        assert!((rate.mean_events - 5.0).abs() < 1e-9);
        // A late event for interval 9 still counts; one for interval 3 does not.
        assert_eq!(rate.count(9, true).unwrap().events, 6);
        assert!(rate.count(3, false).is_none());
    }

    #[test]
    fn rate_gaps_close_the_late_slot() {
        let mut rate = RateCounter::default();
        rate.count(1, false);
        rate.count(2, false);
        rate.count(10, false);
        assert_eq!(rate.intervals, 2);
        assert!(rate.count(9, false).is_none());
    }

    #[test]
    fn maturity_needs_both_span_and_events() {
        let mut b = PrincipalBaseline::new(0);
        b.events = 1000;
        b.last_seen = DAY;
        assert!(!b.is_mature(3 * DAY, 10));
        b.last_seen = 3 * DAY;
        assert!(b.is_mature(3 * DAY, 10));
        b.events = 5;
        assert!(!b.is_mature(3 * DAY, 10));
    }

    proptest! {
        #[test]
        fn a_value_set_never_exceeds_its_cap(
            values in proptest::collection::vec((0u32..10_000, 0i64..1_000_000), 1..2000),
            cap in 1usize..64,
        ) {
            let mut set = ValueSet::default();
            for (v, t) in values {
                set.observe(&v.to_string(), t, 30 * DAY, cap);
                prop_assert!(set.len() <= cap);
                // Each value once, its hash beside it: what the search relies on.
                prop_assert_eq!(&set.hashes, &set.values.iter().map(|s| value_hash(&s.value)).collect::<Vec<_>>());
                let distinct: std::collections::HashSet<&str> = set.values.iter().map(|s| s.value.as_str()).collect();
                prop_assert_eq!(distinct.len(), set.len());
                prop_assert!(set.values.iter().any(|s| s.value == v.to_string()));
            }
        }

        #[test]
        fn below_the_cap_answers_match_a_plain_map(
            uses in proptest::collection::vec((0u32..12, 0i64..200), 1..400),
        ) {
            // The set's order changes as values are used; its answers must not.
            let window = 50;
            let mut set = ValueSet::default();
            let mut model: std::collections::HashMap<String, (i64, i64)> = Default::default();
            for (v, t) in uses {
                let value = format!("value-{v}");
                let expected = match model.get_mut(&value) {
                    Some((first, last)) if t - *last <= window => {
                        let answer = Seen::Known { first_seen: *first };
                        *first = (*first).min(t);
                        *last = (*last).max(t);
                        answer
                    }
                    Some((first, last)) => {
                        *first = t;
                        *last = (*last).max(t);
                        Seen::Novel
                    }
                    None => {
                        model.insert(value.clone(), (t, t));
                        Seen::Novel
                    }
                };
                prop_assert_eq!(set.observe(&value, t, window, 64), expected);
            }
        }

        #[test]
        fn a_value_just_observed_is_known(
            values in proptest::collection::vec(0u32..50, 1..500),
        ) {
            let mut set = ValueSet::default();
            for (t, v) in values.iter().enumerate() {
                set.observe(&v.to_string(), t as i64, 30 * DAY, 8);
                let again = set.observe(&v.to_string(), t as i64, 30 * DAY, 8);
                prop_assert_ne!(again, Seen::Novel);
            }
        }
    }
}
