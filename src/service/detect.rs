//! The detect stage: the events topic in, anomalies out, state partitioned by the topic's
//! partitions and checkpointed with the offsets it reflects.
//!
//! ```text
//!  events topic (consumer group; partition p = state partition p)
//!    ─► reorder buffer + detector of p ─► anomalies (sink) ─► every checkpoint interval and on
//!    revocation: deliver, snapshot each partition with its next offset, commit
//! ```
//! The consumer runs on a thread of its own (its calls block), and rebalances are handled in its
//! callbacks, before librdkafka moves partitions: on revocation the partitions' anomalies are
//! delivered, their state is snapshotted and their offsets committed before they are let go; on
//! assignment each partition's newest snapshot is taken up (or kept, if this process still holds
//! that very state). The snapshot, not the group's committed offset, says where to resume: events
//! before its offset are skipped, and if the consumer starts past it, it is moved back to it.
//! Anomalies raised after the last snapshot are raised again after a crash, with the same ids.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::anomaly::Anomaly;
use crate::config::{RunSettings, Settings};
use crate::detect::Detector;
use crate::engine::wire::EventsMessage;
use crate::engine::StatePartition;
use crate::metrics::Metrics;
use crate::rules::RuleSet;
use crate::sink::{client_config, ClientKind, Output};
use crate::state::SnapshotStore;

/// Anomalies held before they are delivered at the latest: this, or `batch.max_wait` if shorter
/// (the setting that trades latency for batching in the decode stage does so here too).
const DELIVER_EVERY: Duration = Duration::from_millis(100);
const DELIVER_AT: usize = 1024;
/// Messages taken from the consumer's queue at most before they are judged under one lock.
const BATCH: usize = 512;

/// One owned partition.
struct Owned {
    partition: StatePartition,
    /// The offset of the next event not judged; `None`: take what the consumer gives.
    next_offset: Option<i64>,
    /// Whether the consumer's position was checked against `next_offset`.
    positioned: bool,
    /// Judged anything since the last snapshot.
    dirty: bool,
    snapshotted: Instant,
    /// The offset this process last committed for the partition.
    committed: Option<i64>,
}

/// What the consumer's thread and its rebalance callbacks share.
struct State {
    owned: BTreeMap<i32, Owned>,
    /// Partitions let go, kept in case the same state comes back (eager rebalances).
    parked: BTreeMap<i32, Owned>,
    pending: Vec<Anomaly>,
    last_delivery: Instant,
    output: Output,
    store: Option<SnapshotStore>,
    runtime: tokio::runtime::Handle,
    settings: Settings,
    rules: Option<Arc<RuleSet>>,
    metrics: Arc<Metrics>,
    topic: String,
    writer: String,
    /// A failure inside a callback, for the loop to return.
    failure: Option<anyhow::Error>,
    anomalies: u64,
    snapshots: u64,
}

impl State {
    fn detector(&self) -> Detector {
        Detector::with_rules(
            self.settings.detector.clone(),
            self.settings.engine.partitions as usize,
            self.rules.clone(),
        )
    }

    fn fresh_partition(&self) -> StatePartition {
        StatePartition::sourced(self.detector(), self.settings.engine.reorder_window)
    }

    /// Sends the anomalies held and waits until the sink has them.
    fn deliver(&mut self) -> anyhow::Result<()> {
        self.last_delivery = Instant::now();
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.runtime.block_on(self.output.deliver(&pending, &[]))?;
        self.anomalies += pending.len() as u64;
        pending.iter().for_each(|a| self.metrics.anomaly(a));
        Ok(())
    }

    /// Takes up `partition`: the state this process still holds if it is the newest, else the
    /// newest snapshot, else a new state.
    fn take_up(&mut self, partition: i32) -> anyhow::Result<()> {
        let started = Instant::now();
        let parked = self.parked.remove(&partition);
        let owned = match &self.store {
            None => parked.unwrap_or_else(|| Owned::new(self.fresh_partition(), None)),
            Some(store) => {
                let newest = self.runtime.block_on(store.newest_offset(partition as u32))?;
                match parked {
                    Some(p) if p.next_offset == newest => p,
                    _ => {
                        let (found, passed_over) = self.runtime.block_on(store.load(partition as u32))?;
                        self.metrics.snapshots_unreadable.inc_by(passed_over as u64);
                        match found {
                            Some(found) => {
                                self.metrics.partition_restore_bytes.observe(found.bytes as f64);
                                let restored = StatePartition::restore(
                                    self.detector(),
                                    self.settings.engine.reorder_window,
                                    found.snapshot,
                                    self.rules.as_deref(),
                                );
                                Owned::new(restored, Some(found.next_offset))
                            }
                            None => Owned::new(self.fresh_partition(), None),
                        }
                    }
                }
            }
        };
        let took = started.elapsed();
        self.metrics.partition_restore_seconds.observe(took.as_secs_f64());
        tracing::info!(
            partition,
            next_offset = ?owned.next_offset,
            principals = owned.partition.detector().principals(),
            took_ms = took.as_millis() as u64,
            "partition taken up"
        );
        self.owned.insert(partition, owned);
        Ok(())
    }

    /// Delivers what is held, snapshots `partitions` (those that judged anything since their
    /// last snapshot) and commits their offsets.
    fn checkpoint<C: ConsumerContext>(
        &mut self,
        partitions: &[i32],
        consumer: &BaseConsumer<C>,
    ) -> anyhow::Result<()> {
        self.deliver()?;
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            let Some(owned) = self.owned.get_mut(p) else {
                continue;
            };
            let Some(next) = owned.next_offset else { continue };
            if owned.dirty {
                if let Some(store) = &self.store {
                    let snapshot = owned.partition.snapshot(self.rules.as_deref());
                    self.runtime
                        .block_on(store.save(*p as u32, next, &self.writer, snapshot))
                        .with_context(|| format!("snapshotting partition {p}"))?;
                    self.snapshots += 1;
                }
                owned.dirty = false;
                owned.snapshotted = Instant::now();
            }
            // An offset committed already is not committed again: the revocation at a stop
            // would otherwise wait on the coordinator for nothing.
            if owned.committed != Some(next) {
                tpl.add_partition_offset(&self.topic, *p, Offset::Offset(next))?;
            }
        }
        if tpl.count() > 0 {
            // The snapshot is what counts; the committed offset only shows progress (lag), so a
            // failed commit is not fatal.
            match consumer.commit(&tpl, CommitMode::Sync) {
                Ok(()) => {
                    for e in tpl.elements() {
                        if let (Some(owned), Offset::Offset(next)) =
                            (self.owned.get_mut(&e.partition()), e.offset())
                        {
                            owned.committed = Some(next);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "committing events offsets failed"),
            }
        }
        self.metrics
            .checkpoint_last_success
            .set(chrono::Utc::now().timestamp() as f64);
        Ok(())
    }

    /// Judges one message of an owned partition; `false` when the consumer was sent back to the
    /// partition's snapshot offset instead, so that the partition's later messages already taken
    /// from the queue are not judged either.
    fn judge<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partition: i32,
        offset: i64,
        payload: &[u8],
    ) -> anyhow::Result<bool> {
        let State {
            owned,
            pending,
            rules,
            metrics,
            topic,
            ..
        } = self;
        let Some(owned) = owned.get_mut(&partition) else {
            return Ok(true); // a message fetched before the partition was let go
        };
        if let Some(next) = owned.next_offset {
            if offset < next {
                return Ok(true); // already in the snapshot
            }
            if offset > next && !owned.positioned {
                // The group's offset ran ahead of the snapshot: go back to it.
                owned.positioned = true;
                tracing::info!(
                    partition,
                    from = offset,
                    to = next,
                    "moving back to the snapshot's offset"
                );
                consumer
                    .seek(topic, partition, Offset::Offset(next), Duration::from_secs(10))
                    .with_context(|| format!("seeking partition {partition} to {next}"))?;
                return Ok(false);
            }
        }
        owned.positioned = true;
        let late = owned.partition.stats.late;
        match serde_json::from_slice::<EventsMessage>(payload) {
            Ok(EventsMessage::Event(record)) => {
                metrics.events_consumed.inc();
                owned
                    .partition
                    .offer(record.into_event(rules.as_deref()), pending)
            }
            Ok(EventsMessage::Mark(mark)) => owned.partition.mark(mark, pending),
            Err(e) => {
                tracing::warn!(partition, offset, error = %e, "skipping a malformed events-topic message")
            }
        }
        metrics.late_events.inc_by(owned.partition.stats.late - late);
        owned.next_offset = Some(offset + 1);
        owned.dirty = true;
        Ok(true)
    }

    fn update_gauges(&self) {
        self.metrics.partitions_owned.set(self.owned.len() as i64);
        self.metrics
            .events_held
            .set(self.owned.values().map(|o| o.partition.held() as i64).sum());
        self.metrics.principals.set(
            self.owned
                .values()
                .map(|o| o.partition.detector().principals() as i64)
                .sum(),
        );
        for (p, owned) in &self.owned {
            self.metrics
                .partition_state_age_seconds
                .with_label_values(&[&p.to_string()])
                .set(owned.snapshotted.elapsed().as_secs() as i64);
        }
    }
}

impl Owned {
    fn new(partition: StatePartition, next_offset: Option<i64>) -> Owned {
        Owned {
            partition,
            next_offset,
            positioned: false,
            dirty: false,
            snapshotted: Instant::now(),
            committed: None,
        }
    }
}

/// The consumer's context: rebalances move state.
struct DetectContext {
    state: Arc<Mutex<State>>,
}

impl ClientContext for DetectContext {
    /// librdkafka's statistics (every `statistics.interval.ms`) carry each partition's lag,
    /// read without a request to the brokers.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(topic) = statistics.topics.get(&state.topic) else {
            return;
        };
        for (p, partition) in &topic.partitions {
            if state.owned.contains_key(p) && partition.consumer_lag >= 0 {
                state
                    .metrics
                    .events_lag
                    .with_label_values(&[&p.to_string()])
                    .set(partition.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for DetectContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ours = |tpl: &TopicPartitionList, topic: &str| -> Vec<i32> {
            tpl.elements_for_topic(topic)
                .iter()
                .map(|e| e.partition())
                .collect()
        };
        let result = match rebalance {
            Rebalance::Revoke(tpl) => {
                state.metrics.rebalances.with_label_values(&["revoke"]).inc();
                let partitions = ours(tpl, &state.topic.clone());
                tracing::info!(?partitions, "partitions revoked: snapshotting before letting go");
                state.checkpoint(&partitions, consumer).map(|()| {
                    for p in partitions {
                        if let Some(owned) = state.owned.remove(&p) {
                            state.parked.insert(p, owned);
                        }
                        // A partition let go is another process's to report: a gauge left
                        // behind would count its age and lag twice across the cluster.
                        for gauge in [
                            &state.metrics.partition_state_age_seconds,
                            &state.metrics.events_lag,
                        ] {
                            gauge.remove_label_values(&[&p.to_string()]).ok();
                        }
                    }
                })
            }
            Rebalance::Assign(tpl) => {
                state.metrics.rebalances.with_label_values(&["assign"]).inc();
                let partitions = ours(tpl, &state.topic.clone());
                tracing::info!(?partitions, "partitions assigned: taking up their state");
                partitions.into_iter().try_for_each(|p| state.take_up(p))
            }
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
                Ok(())
            }
        };
        if let Err(e) = result {
            state.failure.get_or_insert(e);
        }
        state.update_gauges();
    }
}

/// What the detect stage did.
#[derive(Debug, Default)]
pub struct DetectReport {
    pub anomalies: u64,
    pub snapshots: u64,
}

/// Runs the detect stage on the calling thread (it blocks) until `stop` is set; then delivers,
/// snapshots, commits and leaves the group.
pub fn run(
    settings: Settings,
    run: RunSettings,
    rules: Option<Arc<RuleSet>>,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<DetectReport> {
    let kafka = &run.kafka;
    let store = run
        .checkpoint_url
        .as_deref()
        .map(|url| SnapshotStore::open(url, &run.s3))
        .transpose()?;
    if store.is_none() {
        tracing::warn!("no checkpoint.url: partition state is not kept across restarts and rebalances");
    }
    let output = runtime.block_on(Output::open(&run))?;
    let writer = kafka
        .options
        .get("group.instance.id")
        .cloned()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map_or_else(
            || format!("pid{}", std::process::id()),
            |h| format!("{h}-{}", std::process::id()),
        );
    let state = Arc::new(Mutex::new(State {
        owned: BTreeMap::new(),
        parked: BTreeMap::new(),
        pending: Vec::new(),
        last_delivery: Instant::now(),
        output,
        store,
        runtime: runtime.clone(),
        settings: settings.clone(),
        rules: rules.clone(),
        metrics: Arc::clone(&metrics),
        topic: kafka.events_topic.clone(),
        writer,
        failure: None,
        anomalies: 0,
        snapshots: 0,
    }));
    let group = format!("{}-detect", kafka.group_id);
    let consumer: BaseConsumer<DetectContext> = client_config(
        kafka,
        ClientKind::Consumer,
        &[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("statistics.interval.ms", "5000"),
        ],
    )
    .create_with_context(DetectContext {
        state: Arc::clone(&state),
    })
    .context("creating the events consumer")?;
    consumer
        .subscribe(&[&kafka.events_topic])
        .context("subscribing to the events topic")?;

    let mut last_checkpoint = Instant::now();
    let deliver_every = DELIVER_EVERY.min(run.batch_max_wait);
    let result = (|| -> anyhow::Result<()> {
        let mut batch = Vec::with_capacity(BATCH);
        while !stop.load(Ordering::Relaxed) {
            // What the queue holds, up to a batch, taken without the state's lock: a poll may run
            // a rebalance, whose callback takes it. A message of a partition let go meanwhile is
            // not judged (see `judge`).
            let mut next = consumer.poll(deliver_every);
            while let Some(message) = next {
                match message {
                    Ok(m) => batch.push(m),
                    Err(e) => tracing::warn!(error = %e, "kafka consumer error"),
                }
                next = (batch.len() < BATCH)
                    .then(|| consumer.poll(Duration::ZERO))
                    .flatten();
            }
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = state.failure.take() {
                return Err(e);
            }
            let mut moved: Vec<i32> = Vec::new();
            for m in batch.drain(..) {
                if moved.contains(&m.partition()) {
                    continue;
                }
                let payload = m.payload().unwrap_or_default();
                if !state.judge(&consumer, m.partition(), m.offset(), payload)? {
                    moved.push(m.partition());
                }
            }
            if state.pending.len() >= DELIVER_AT || state.last_delivery.elapsed() >= deliver_every {
                state.deliver()?;
            }
            if last_checkpoint.elapsed() >= run.checkpoint_interval {
                let partitions: Vec<i32> = state.owned.keys().copied().collect();
                state.checkpoint(&partitions, &consumer)?;
                last_checkpoint = Instant::now();
                tracing::debug!(
                    owned = state.owned.len(),
                    held = state.owned.values().map(|o| o.partition.held()).sum::<usize>(),
                    judged = state
                        .owned
                        .values()
                        .map(|o| o.partition.detector().stats.events)
                        .sum::<u64>(),
                    anomalies = state.anomalies,
                    "checkpoint"
                );
                state.update_gauges();
            }
            metrics.set_ready(!state.owned.is_empty());
        }
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let partitions: Vec<i32> = state.owned.keys().copied().collect();
        state.checkpoint(&partitions, &consumer)
    })();
    // Leaving the group revokes what is owned: snapshotted and committed already, nothing
    // judged since. The report is read first: a revocation left waiting on the coordinator holds
    // the state's lock.
    let report = {
        let state = state.lock().unwrap_or_else(|e| e.into_inner());
        DetectReport {
            anomalies: state.anomalies,
            snapshots: state.snapshots,
        }
    };
    crate::service::leave_group("detect", crate::service::LEAVE_GROUP_WITHIN, move || {
        consumer.unsubscribe();
        drop(consumer);
    });
    result?;
    Ok(report)
}
