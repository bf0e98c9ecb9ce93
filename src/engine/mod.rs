//! The stateful half's unit: a state partition, and how principals are routed to one.
//!
//! In: events, each routed by [`partition_of`] its principal key to one of a fixed number of
//! partitions. Out: anomalies. Every mode uses the same unit: `replay` keeps all partitions in
//! one process and spreads them over its cores; the service's detect stage owns the events
//! topic's partitions it is assigned (partition `p` of the topic is state partition `p`, because
//! the decode stage keys records by principal and [`partition_of`] is Kafka's own key hash); so
//! for the same input the same partition sees the same events, whatever runs it.
//!
//! A partition's state is one unit, snapshotted whole ([`PartitionSnapshot`]): baselines, the
//! eventID memory, threshold-rule counters, open alert folds, the event-time clock, and the
//! events waiting in its reorder buffer.
//!
//! # Event order
//! Detection depends on order (the first use of a value is the anomaly), and the order in which
//! events reach a partition is not the same in every mode: in a cluster, several decode processes
//! write to one partition at their own pace. So a partition does not judge events as they arrive:
//! it holds them in a buffer and releases them in event-time order (`eventTime`, then `eventID`)
//! once its input watermark has passed them by the reorder window. The watermark is, in replay
//! and the one-process service, the newest event time the partition was offered; in a cluster,
//! the least of the decode processes' [`wire::SourceMark`]s over every notifications partition.
//! Events that arrive after later ones were released (more than the window late) are judged at
//! once and counted as late. With no late events, every mode judges every partition's events in
//! the same order, which is what makes anomaly ids and counts the same.

pub mod wire;

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::anomaly::Anomaly;
use crate::detect::{Detector, DetectorState};
use crate::event::Event;
use crate::rules::RuleSet;
use wire::{EventRecord, SourceMark};

/// The partition that owns `principal_key`, out of `partitions`: Kafka's default key hash
/// (murmur2, as librdkafka's `murmur2_random` partitioner and the Java client compute it), so
/// that a record keyed by the principal lands in the partition that owns its state.
pub fn partition_of(principal_key: &str, partitions: u32) -> u32 {
    partition_of_hash(murmur2(principal_key.as_bytes()), partitions)
}

/// [`partition_of`] a key whose [`murmur2`] is `key_hash`.
pub fn partition_of_hash(key_hash: u32, partitions: u32) -> u32 {
    (key_hash & 0x7fff_ffff) % partitions.max(1)
}

/// Where an input that is caught up and quiet moves a partition's clock, `present` being the
/// wall clock: the present, but no further than the newest event time decoded so far plus the
/// reorder window and the alert window (and a second).
///
/// That far, every event decoded is judged and every alert it opened has its window passed and
/// is emitted, which is what moving to the present was for. Live input, whose newest events are
/// minutes old, still reaches the present. A historical trail fed in parts with pauses between
/// them (a responder dropping one day's files, then the next) stops there instead of months
/// ahead, so the next part's events, if later, are judged in event-time order as `replay` judges
/// them, not all counted late and judged in the order they came.
pub fn idle_clock(present: i64, newest_event: Option<i64>, reorder_window: i64, alert_window: i64) -> i64 {
    match newest_event {
        Some(newest) => present.min(
            newest
                .saturating_add(reorder_window.max(0))
                .saturating_add(alert_window.max(0))
                .saturating_add(1),
        ),
        None => present,
    }
}

/// Kafka's murmur2 (seed `0x9747b28c`), as `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// Where a partition's input watermark comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Frontier {
    /// One ordered input (replay, the one-process service): the newest event time offered.
    Local { newest: i64 },
    /// Decode processes: the least mark over every notifications partition; none until each
    /// has reported.
    Sources { sources: u32, marks: BTreeMap<u32, i64> },
}

impl Frontier {
    fn time(&self) -> i64 {
        match self {
            Frontier::Local { newest } => *newest,
            Frontier::Sources { sources, marks } => {
                if *sources == 0 || marks.len() < *sources as usize {
                    return i64::MIN;
                }
                marks.values().copied().min().unwrap_or(i64::MIN)
            }
        }
    }
}

/// Events that partitions share, each taking its own principals' (a replayed file's). A partition
/// holds on to them while one of its events waits, rather than copying that event.
pub type SharedEvents = Arc<dyn AsRef<[Event]> + Send + Sync>;

/// An event waiting in the reorder buffer, ordered by event time, then eventID, then arrival.
/// The event is boxed or shared so that the heap's sifting moves a few words, not the event's
/// few hundred bytes.
struct Held {
    time: i64,
    arrival: u64,
    event: Waiting,
}

enum Waiting {
    Owned(Box<Event>),
    /// The event at an index of shared events.
    Shared(SharedEvents, usize),
}

impl Waiting {
    fn event(&self) -> &Event {
        match self {
            Waiting::Owned(event) => event,
            Waiting::Shared(events, at) => &(**events).as_ref()[*at],
        }
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.time, &self.event.event().event_id, self.arrival).cmp(&(
            other.time,
            &other.event.event().event_id,
            other.arrival,
        ))
    }
}

/// Counters a partition keeps about its input.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PartitionStats {
    /// Events that arrived after later ones were released, judged at once.
    pub late: u64,
    /// Events held in the reorder buffer at most.
    pub most_held: u64,
}

/// One state partition: a detector and the reorder buffer in front of it.
pub struct StatePartition {
    detector: Detector,
    /// Seconds of event time an event waits behind the watermark; 0 judges events as they come.
    reorder_window: i64,
    buffer: BinaryHeap<Reverse<Held>>,
    arrivals: u64,
    frontier: Frontier,
    /// Events up to this time were released.
    released_through: i64,
    pub stats: PartitionStats,
}

/// A partition's whole state, as the checkpoint store keeps it.
#[derive(Serialize, Deserialize)]
pub struct PartitionSnapshot {
    pub detector: DetectorState,
    /// The reorder buffer, in release order.
    pub held: Vec<EventRecord>,
    pub frontier: Frontier,
    pub released_through: i64,
    pub stats: PartitionStats,
}

impl StatePartition {
    /// A partition fed by one ordered input (replay, the one-process service).
    pub fn local(detector: Detector, reorder_window: i64) -> StatePartition {
        StatePartition::with_frontier(detector, reorder_window, Frontier::Local { newest: i64::MIN })
    }

    /// A partition fed by decode processes, whose marks move its watermark.
    pub fn sourced(detector: Detector, reorder_window: i64) -> StatePartition {
        let frontier = Frontier::Sources {
            sources: 0,
            marks: BTreeMap::new(),
        };
        StatePartition::with_frontier(detector, reorder_window, frontier)
    }

    fn with_frontier(detector: Detector, reorder_window: i64, frontier: Frontier) -> StatePartition {
        StatePartition {
            detector,
            reorder_window: reorder_window.max(0),
            buffer: BinaryHeap::new(),
            arrivals: 0,
            frontier,
            released_through: i64::MIN,
            stats: PartitionStats::default(),
        }
    }

    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// Events waiting in the reorder buffer.
    pub fn held(&self) -> usize {
        self.buffer.len()
    }

    /// [`StatePartition::offer`] for the event at `at` of `events`, which other partitions share:
    /// neither copied nor moved, the events kept while it waits.
    pub fn offer_shared(&mut self, events: &SharedEvents, at: usize, out: &mut Vec<Anomaly>) {
        let event = &(**events).as_ref()[at];
        if !self.judged_at_once(event, out) {
            self.hold(event.time, Waiting::Shared(Arc::clone(events), at), out);
        }
    }

    /// Takes one event; appends to `out` what the events released by it raise.
    pub fn offer(&mut self, event: Event, out: &mut Vec<Anomaly>) {
        if !self.judged_at_once(&event, out) {
            self.hold(event.time, Waiting::Owned(Box::new(event)), out);
        }
    }

    /// Judges `event` if it need not wait: with no reorder window, or arrived late.
    fn judged_at_once(&mut self, event: &Event, out: &mut Vec<Anomaly>) -> bool {
        if self.reorder_window != 0 && event.time > self.released_through {
            return false;
        }
        if self.reorder_window != 0 {
            self.stats.late += 1;
        }
        self.detector.process(event, out);
        true
    }

    /// Puts an event dated `time` in the reorder buffer; appends what the events it releases raise.
    fn hold(&mut self, time: i64, event: Waiting, out: &mut Vec<Anomaly>) {
        self.arrivals += 1;
        self.buffer.push(Reverse(Held {
            time,
            arrival: self.arrivals,
            event,
        }));
        self.stats.most_held = self.stats.most_held.max(self.buffer.len() as u64);
        if let Frontier::Local { newest } = &mut self.frontier {
            if time > *newest {
                *newest = time;
                self.release(out);
            }
        }
    }

    /// Takes a decode process's mark; appends what the events it releases raise, and the open
    /// alerts whose window the watermark has passed.
    pub fn mark(&mut self, mark: SourceMark, out: &mut Vec<Anomaly>) {
        let Frontier::Sources { sources, marks } = &mut self.frontier else {
            return;
        };
        if mark.sources != *sources {
            // The notifications topic was given more partitions: wait for each to report.
            *sources = mark.sources;
            marks.retain(|s, _| *s < mark.sources);
        }
        let at = marks.entry(mark.source).or_insert(mark.time);
        *at = (*at).max(mark.time);
        self.release(out);
        let through = self.released_through;
        if through > i64::MIN {
            self.detector.expire_alerts(through, out);
        }
    }

    /// The input is caught up and quiet (one ordered input only): the watermark moves to `now`,
    /// the wall clock or short of it ([`idle_clock`]), so what waits is judged and alerts whose
    /// window has passed are emitted.
    pub fn idle(&mut self, now: i64, out: &mut Vec<Anomaly>) {
        let Frontier::Local { newest } = &mut self.frontier else {
            return;
        };
        *newest = (*newest).max(now);
        self.release(out);
        self.detector.expire_alerts(self.released_through, out);
    }

    /// Judges, in order, the held events the watermark has passed by the reorder window.
    fn release(&mut self, out: &mut Vec<Anomaly>) {
        let frontier = self.frontier.time();
        if frontier == i64::MIN {
            return;
        }
        let through = frontier.saturating_sub(self.reorder_window);
        while self.buffer.peek().is_some_and(|Reverse(h)| h.time <= through) {
            if let Some(Reverse(held)) = self.buffer.pop() {
                self.detector.process(held.event.event(), out);
            }
        }
        self.released_through = self.released_through.max(through);
    }

    /// End of input: judges every held event, then emits every open alert.
    pub fn finish(&mut self, out: &mut Vec<Anomaly>) {
        while let Some(Reverse(held)) = self.buffer.pop() {
            self.detector.process(held.event.event(), out);
        }
        self.detector.flush(out);
    }

    pub fn snapshot(&self, rules: Option<&RuleSet>) -> PartitionSnapshot {
        let mut held: Vec<&Held> = self.buffer.iter().map(|Reverse(h)| h).collect();
        held.sort();
        PartitionSnapshot {
            detector: self.detector.snapshot(),
            held: held
                .into_iter()
                .map(|h| EventRecord::of(h.event.event().clone(), rules))
                .collect(),
            frontier: self.frontier.clone(),
            released_through: self.released_through,
            stats: self.stats,
        }
    }

    /// A partition taken up from a snapshot; `detector` is new.
    pub fn restore(
        mut detector: Detector,
        reorder_window: i64,
        snapshot: PartitionSnapshot,
        rules: Option<&RuleSet>,
    ) -> StatePartition {
        detector.restore_state(snapshot.detector);
        let mut partition = StatePartition::with_frontier(detector, reorder_window, snapshot.frontier);
        partition.released_through = snapshot.released_through;
        partition.stats = snapshot.stats;
        for record in snapshot.held {
            let event = record.into_event(rules);
            partition.arrivals += 1;
            partition.buffer.push(Reverse(Held {
                time: event.time,
                arrival: partition.arrivals,
                event: Waiting::Owned(Box::new(event)),
            }));
        }
        partition
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_clock_stops_where_everything_decoded_is_judged_and_its_alerts_emitted() {
        let (reorder, alerts) = (600, 900);
        let present = 1_800_000_000;
        // Live input: the newest events are minutes old, the clock reaches the present.
        assert_eq!(idle_clock(present, Some(present - 300), reorder, alerts), present);
        // A historical trail: the clock stops past its newest event by both windows.
        let newest = 1_700_000_000;
        let clock = idle_clock(present, Some(newest), reorder, alerts);
        assert_eq!(clock, newest + reorder + alerts + 1);
        // What that clock releases (behind it by the reorder window) includes the newest event,
        // and an alert opened by it has its window passed.
        let through = clock - reorder;
        assert!(through >= newest && through - newest > alerts);
        // Nothing decoded yet: the present, as before.
        assert_eq!(idle_clock(present, None, reorder, alerts), present);
        // Windows at their largest do not overflow.
        assert_eq!(
            idle_clock(i64::MAX, Some(i64::MAX - 5), i64::MAX, i64::MAX),
            i64::MAX
        );
    }

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's own partitioner tests (Utils.murmur2 of these strings' bytes).
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    #[test]
    fn shared_events_are_judged_as_owned_ones_and_kept_only_while_they_wait() {
        const DAY: i64 = 86_400;
        let mut settings = crate::config::Settings::default().detector;
        settings.learning_period = DAY;
        settings.learning_events = 10;
        settings.alerts.dedup_window = 0;
        // Files of four hours' calls a day, every ten minutes, from one address, then calls from
        // new ones; each pair of calls out of order, within the reorder window.
        let files: Vec<Vec<Event>> = (0..4)
            .map(|day| {
                (0..24)
                    .map(|h| {
                        let n = day * 24 + h;
                        let time = i64::from(day) * DAY + i64::from(h ^ 1) * 600 + i64::from(n % 7);
                        let ip = if day == 3 && h % 5 == 0 {
                            format!("198.51.100.{h}")
                        } else {
                            "203.0.113.7".into()
                        };
                        crate::event::test_event(&format!("e-{n}"), time, "GetObject", &ip)
                    })
                    .collect()
            })
            .collect();
        let partition = || StatePartition::local(Detector::new(settings.clone(), 1), 30 * 60);
        let (mut owned, mut shared) = (partition(), partition());
        let (mut by_owned, mut by_shared) = (Vec::new(), Vec::new());
        let mut kept = Vec::new();
        for file in &files {
            for event in file {
                owned.offer(event.clone(), &mut by_owned);
            }
            let file: Arc<Vec<Event>> = Arc::new(file.clone());
            let events: SharedEvents = file.clone();
            for at in 0..file.len() {
                shared.offer_shared(&events, at, &mut by_shared);
            }
            kept.push(file);
        }
        // The last file's later events wait; the first files' were all judged and let go.
        assert!(shared.held() > 0);
        assert_eq!(Arc::strong_count(&kept[0]), 1);
        assert!(Arc::strong_count(&kept[3]) > 1);
        owned.finish(&mut by_owned);
        shared.finish(&mut by_shared);
        assert!(kept.iter().all(|file| Arc::strong_count(file) == 1));
        let ids = |anomalies: &[Anomaly]| anomalies.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
        assert!(!by_owned.is_empty());
        assert_eq!(ids(&by_owned), ids(&by_shared));
        assert_eq!(owned.stats.late, shared.stats.late);
        // The same events judged in the same order leave the same baselines.
        let state = |p: &StatePartition| serde_json::to_string(&p.snapshot(None)).unwrap();
        assert_eq!(state(&owned), state(&shared));
    }
}
