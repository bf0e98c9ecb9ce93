//! The decode stage: notifications in, decoded events out to the events topic, keyed by
//! principal.
//!
//! ```text
//!  notifications topic (consumer group) ─► batch ─► fetch ─► decode + single-record rules
//!    ─► events topic (key: principal key) + source marks (every partition) + dead letters
//!    ─► once every record is acknowledged: commit the notifications' offsets
//! ```
//! Stateless: any number of processes, any of them can decode any file. A notification's offset
//! is committed only after every event it produced is acknowledged (`acks=all`, idempotent), so a
//! crash produces some events again, which the detect stage drops by eventID.
//!
//! After each batch, a [`SourceMark`] per notifications partition tells every events partition
//! how far in event time that source has been decoded: the newest event time of its files so far,
//! or the present once the partition has been quiet for `engine.idle_after` and every
//! notification it holds has been read (caught up: its offset reached the high watermark); for
//! a historical trail, not the present but [`crate::engine::idle_clock`]'s stop, from the newest
//! event time decoded, which is committed with each offset for the next process to take the
//! partition over. The detect stage judges events in order behind the least mark (see
//! [`crate::engine`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::config::{RunSettings, Settings};
use crate::decode::DecodeLimits;
use crate::engine::wire::{EventRecord, EventsMessage, SourceMark};
use crate::fetch::Fetcher;
use crate::metrics::{Latencies, Metrics};
use crate::rules::RuleSet;
use crate::run::RunReport;
use crate::service::batch::{decode_batch, given_up, Decoded, DecoderPool, Notification};
use crate::sink::{client_config, ClientKind, PRODUCER_DEFAULTS};

/// Queues a record, waiting while the producer's queue is full; returns its delivery.
pub async fn enqueue(
    producer: &FutureProducer,
    record: FutureRecord<'_, [u8], [u8]>,
) -> anyhow::Result<DeliveryFuture> {
    let mut record = record;
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e).context("producing"),
        }
    }
}

/// Waits for every delivery; the first failure is the error.
pub async fn delivered(deliveries: Vec<DeliveryFuture>, what: &str) -> anyhow::Result<()> {
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e).with_context(|| format!("producing {what}")),
            Err(_) => anyhow::bail!("producing {what}: the producer went away"),
        }
    }
    Ok(())
}

/// Runs the decode stage until `stop` says so, then finishes the batch in hand and commits.
pub async fn run(
    settings: &Settings,
    run: &RunSettings,
    rules: Option<Arc<RuleSet>>,
    metrics: &Metrics,
    mut stop: watch::Receiver<bool>,
    report: &mut RunReport,
) -> anyhow::Result<()> {
    let kafka = &run.kafka;
    let consumer: StreamConsumer = client_config(
        kafka,
        ClientKind::Consumer,
        &[
            ("group.id", &kafka.group_id),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("partition.assignment.strategy", "cooperative-sticky"),
        ],
    )
    .create()
    .context("creating the notifications consumer")?;
    consumer
        .subscribe(&[&kafka.notifications_topic])
        .context("subscribing to the notifications topic")?;
    let producer: FutureProducer = client_config(kafka, ClientKind::Producer, PRODUCER_DEFAULTS)
        .create()
        .context("creating the events producer")?;
    let sources = tokio::task::block_in_place(|| {
        crate::service::partition_count(producer.client(), &kafka.notifications_topic)
    })?;
    let partitions = settings.engine.partitions;
    tracing::info!(sources, partitions, "decode stage started");
    let limits = DecodeLimits {
        max_inflated_bytes: settings.max_file_bytes,
    };
    let mut pool = Some(DecoderPool::new(
        settings.workers.get(),
        limits,
        rules.clone(),
        settings.max_event_time_skew,
    ));
    let fetcher = Fetcher::new(run.fetch.clone());
    let latencies = Latencies::default();
    // Per notifications partition: the mark sent, and when a notification last came.
    let mut marks: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_seen: BTreeMap<i32, Instant> = BTreeMap::new();
    // Per notifications partition: the newest event time decoded from it, by this process or,
    // read from the committed offset's metadata when this process first read it, by another.
    let mut decoded_newest: BTreeMap<i32, i64> = BTreeMap::new();
    let mut looked_up: BTreeSet<i32> = BTreeSet::new();
    let mut last_idle_marks = Instant::now();
    let mut stopping = false;
    let mut reached: BTreeMap<i32, i64> = BTreeMap::new();
    let mut failing = Failing::default();

    while !stopping {
        let mut batch: Vec<Notification> = Vec::new();
        let deadline = tokio::time::Instant::now() + run.batch_max_wait;
        while batch.len() < run.batch_max_messages {
            tokio::select! {
                _ = stop.changed() => { stopping = true; break; }
                _ = tokio::time::sleep_until(deadline) => break,
                received = consumer.recv() => match received {
                    Ok(m) => batch.push(Notification {
                        topic: m.topic().to_owned(),
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                        direct: None,
                    }),
                    Err(e) => tracing::warn!(error = %e, "kafka consumer error"),
                },
            }
        }
        let full = batch.len() >= run.batch_max_messages;
        let now = Instant::now();
        for n in &batch {
            last_seen.insert(n.partition, now);
        }
        let mut deliveries = Vec::new();
        let mut first_retry: BTreeMap<i32, i64> = BTreeMap::new();
        let mut newest: BTreeMap<i32, i64> = BTreeMap::new();
        if !batch.is_empty() {
            let mut decoded = decode_batch(&mut pool, &fetcher, &batch, report, metrics, &latencies).await;
            failing.give_up(&batch, &mut decoded, run.max_attempts);
            for (_, partition, offset) in &decoded.retry {
                let e = first_retry.entry(*partition).or_insert(*offset);
                *e = (*e).min(*offset);
            }
            let mut produced = 0u64;
            for (file, owner) in decoded.files {
                let source = batch[owner].partition;
                if let Some(t) = file.events.iter().map(|e| e.time).max() {
                    let e = newest.entry(source).or_insert(t);
                    *e = (*e).max(t);
                }
                for event in file.events {
                    let key = event.principal.key.clone();
                    let payload =
                        serde_json::to_vec(&EventsMessage::Event(EventRecord::of(event, rules.as_deref())))?;
                    let record = FutureRecord::to(&kafka.events_topic)
                        .key(key.as_bytes())
                        .payload(&payload[..]);
                    deliveries.push(enqueue(&producer, record).await?);
                    produced += 1;
                }
            }
            metrics.events_produced.inc_by(produced);
            tracing::debug!(notifications = batch.len(), produced, "batch decoded");
            for (key, dead) in &decoded.dead {
                let payload = serde_json::to_vec(dead)?;
                let mut record = FutureRecord::to(&kafka.dead_letter_topic).payload(&payload[..]);
                if let Some(key) = key {
                    record = record.key(&key[..]);
                }
                deliveries.push(enqueue(&producer, record).await?);
                *report.dead_letters.entry(dead.reason.clone()).or_default() += 1;
                metrics
                    .dead_letters
                    .with_label_values(&[dead.reason.as_str()])
                    .inc();
            }
        }

        // Before this process commits a partition it has just taken up (which would leave out
        // the metadata it does not know), the newest event time the group committed for it.
        for n in &batch {
            take_up_newest(
                &consumer,
                &kafka.notifications_topic,
                n.partition,
                &mut decoded_newest,
                &mut looked_up,
            );
        }

        // Marks: sources decoded further, and sources quiet long enough to be caught up.
        let mut moved: Vec<(i32, i64)> = Vec::new();
        for (source, time) in newest {
            let decoded = decoded_newest.entry(source).or_insert(time);
            *decoded = (*decoded).max(time);
            if first_retry.contains_key(&source) {
                continue; // a file of this source is still to come
            }
            let mark = marks.entry(source).or_insert(i64::MIN);
            if time > *mark {
                *mark = time;
                moved.push((source, time));
            }
        }
        if !full && last_idle_marks.elapsed() >= settings.engine.idle_after {
            last_idle_marks = Instant::now();
            let present = chrono::Utc::now().timestamp();
            let assigned: Vec<i32> = consumer
                .assignment()
                .map(|a| a.elements().iter().map(|e| e.partition()).collect())
                .unwrap_or_default();
            for source in assigned {
                let quiet = last_seen
                    .get(&source)
                    .is_none_or(|t| t.elapsed() >= settings.engine.idle_after);
                if quiet
                    && !first_retry.contains_key(&source)
                    && caught_up(&consumer, &kafka.notifications_topic, source, &reached)
                {
                    take_up_newest(
                        &consumer,
                        &kafka.notifications_topic,
                        source,
                        &mut decoded_newest,
                        &mut looked_up,
                    );
                    // The present, or short of it for a historical trail: see `idle_clock`.
                    let clock = crate::engine::idle_clock(
                        present,
                        decoded_newest.get(&source).copied(),
                        settings.engine.reorder_window,
                        settings.detector.alerts.dedup_window,
                    );
                    let mark = marks.entry(source).or_insert(i64::MIN);
                    *mark = (*mark).max(clock);
                    moved.push((source, *mark));
                }
            }
        }
        if !moved.is_empty() {
            tracing::debug!(?moved, "source marks");
        }
        for (source, time) in moved {
            let mark = SourceMark {
                source: source as u32,
                sources,
                time,
            };
            let payload = serde_json::to_vec(&EventsMessage::Mark(mark))?;
            for partition in 0..partitions as i32 {
                let record = FutureRecord::<[u8], [u8]>::to(&kafka.events_topic)
                    .partition(partition)
                    .payload(&payload[..]);
                deliveries.push(enqueue(&producer, record).await?);
            }
        }
        delivered(deliveries, "to the events topic").await?;

        // Commit up to the first notification to retry, per partition, and rewind to it.
        for n in &batch {
            let limit = first_retry.get(&n.partition).copied().unwrap_or(i64::MAX);
            if n.offset < limit {
                let e = reached.entry(n.partition).or_insert(n.offset + 1);
                *e = (*e).max(n.offset + 1);
            }
        }
        if !batch.is_empty() {
            commit(
                &consumer,
                &kafka.notifications_topic,
                &reached,
                &decoded_newest,
                CommitMode::Async,
            );
        }
        for (partition, offset) in &first_retry {
            report.retries += 1;
            tracing::warn!(partition, offset, "rewinding to retry a notification");
            tokio::task::block_in_place(|| {
                consumer.seek(
                    &kafka.notifications_topic,
                    *partition,
                    Offset::Offset(*offset),
                    Duration::from_secs(10),
                )
            })
            .ok();
        }
        if !first_retry.is_empty() {
            tokio::time::sleep(run.retry_pause).await;
        }
        metrics.set_ready(consumer.assignment().is_ok_and(|a| a.count() > 0));
    }
    // Every notification reached is acknowledged downstream (`delivered` above): its offset is
    // committed once more, synchronously, then the consumer leaves the group.
    let topic = kafka.notifications_topic.clone();
    tokio::task::block_in_place(|| {
        crate::service::leave_group("decode", crate::service::LEAVE_GROUP_WITHIN, move || {
            commit(&consumer, &topic, &reached, &decoded_newest, CommitMode::Sync);
            drop(consumer);
        });
        producer.flush(Duration::from_secs(30))
    })
    .context("flushing the events producer")?;
    tracing::info!(file = %latencies.file(), event_lag = %latencies.lag(), "decode stage stopped");
    Ok(())
}

/// Notifications whose objects keep failing, by partition and offset.
#[derive(Default)]
struct Failing {
    tries: BTreeMap<(i32, i64), Tries>,
}

#[derive(Default)]
struct Tries {
    failed: u32,
    /// Whether another object was fetched in a batch where this one failed: the store is up,
    /// and this object is the trouble.
    others_fetched: bool,
}

impl Failing {
    /// Counts the batch's failed notifications; one that failed `max_attempts` times while the
    /// store served other objects is given up on: dead-lettered, no longer retried. While nothing
    /// can be fetched (the store or the network is down) notifications are retried for as long
    /// as that lasts.
    fn give_up(&mut self, batch: &[Notification], decoded: &mut Decoded, max_attempts: u32) {
        let others_fetched = !decoded.files.is_empty();
        let mut counted = Vec::new();
        for (i, object, error) in &decoded.retry_errors {
            let n = &batch[*i];
            let position = (n.partition, n.offset);
            if counted.contains(&position) {
                continue; // one attempt, whatever the number of its objects that failed
            }
            counted.push(position);
            let tries = self.tries.entry(position).or_default();
            tries.failed += 1;
            tries.others_fetched |= others_fetched;
            if tries.failed >= max_attempts && tries.others_fetched {
                tracing::warn!(
                    partition = n.partition,
                    offset = n.offset,
                    reason = error.reason(),
                    attempts = tries.failed,
                    "giving up on a notification whose object keeps failing while others are fetched"
                );
                decoded.retry.remove(&n.position());
                decoded.dead.push(given_up(n, object, error, tries.failed));
            }
        }
        // Forget the batch's notifications that went through or were given up on.
        for n in batch {
            if !decoded.retry.contains(&n.position()) {
                self.tries.remove(&(n.partition, n.offset));
            }
        }
    }
}

/// Whether every notification `partition` holds now has been read. A partition that is merely
/// slow to be fetched from (just assigned, a broker pausing) is not idle: marking it so would move
/// the watermark past events still to come, and judge them late, out of order.
fn caught_up(consumer: &StreamConsumer, topic: &str, partition: i32, reached: &BTreeMap<i32, i64>) -> bool {
    tokio::task::block_in_place(|| {
        let timeout = Duration::from_secs(5);
        let Ok((low, high)) = consumer.fetch_watermarks(topic, partition, timeout) else {
            return false;
        };
        if high <= low {
            return true;
        }
        // Read this run, else committed by an earlier one.
        let read = reached
            .get(&partition)
            .copied()
            .or_else(|| committed(consumer, topic, partition, timeout).map(|(offset, _)| offset));
        read.is_some_and(|offset| offset >= high)
    })
}

/// The first time this process deals with `partition` (`asked` records it), and only when it
/// has decoded nothing from it: the newest event time the group committed with its offset (see
/// [`commit`]), taken into `newest`. That is what another process, or an earlier run, decoded
/// before this one took the partition up, so that its idle mark stops where theirs would have.
fn take_up_newest(
    consumer: &StreamConsumer,
    topic: &str,
    partition: i32,
    newest: &mut BTreeMap<i32, i64>,
    asked: &mut BTreeSet<i32>,
) {
    if !asked.insert(partition) || newest.contains_key(&partition) {
        return;
    }
    let committed =
        tokio::task::block_in_place(|| committed(consumer, topic, partition, Duration::from_secs(5)));
    if let Some((_, Some(time))) = committed {
        newest.insert(partition, time);
    }
}

/// The offset the group committed for `partition`, with the newest event time decoded before it
/// when the commit says (see [`commit`]).
fn committed(
    consumer: &StreamConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Option<(i64, Option<i64>)> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer.committed_offsets(tpl, timeout).ok()?;
    let element = committed.find_partition(topic, partition)?;
    let offset = element.offset().to_raw().filter(|o| *o >= 0)?;
    // The metadata is read as UTF-8, which another client of the group may not have written.
    let metadata = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| element.metadata().to_owned()));
    Some((offset, metadata.ok().as_deref().and_then(newest_of_metadata)))
}

/// The commit metadata that says the newest event time decoded from a partition.
fn metadata_of_newest(time: i64) -> String {
    format!("newest_event={time}")
}

fn newest_of_metadata(metadata: &str) -> Option<i64> {
    metadata.strip_prefix("newest_event=")?.parse().ok()
}

/// Commits the offsets `reached`, each with the newest event time decoded from its partition as
/// metadata, for the process that takes the partition over next (see [`take_up_newest`]).
fn commit(
    consumer: &StreamConsumer,
    topic: &str,
    reached: &BTreeMap<i32, i64>,
    newest: &BTreeMap<i32, i64>,
    mode: CommitMode,
) {
    if reached.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in reached {
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .is_err()
        {
            return;
        }
        if let (Some(time), Some(mut element)) =
            (newest.get(partition), tpl.find_partition(topic, *partition))
        {
            element.set_metadata(metadata_of_newest(*time));
        }
    }
    // A failed commit is not fatal: the next one commits these offsets again; a crash before
    // then decodes a little more again.
    if let Err(e) = consumer.commit(&tpl, mode) {
        tracing::warn!(error = %e, "committing notification offsets failed; retrying with the next batch");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::mocking::MockCluster;

    #[test]
    fn the_newest_event_time_is_read_back_from_its_metadata() {
        for time in [0, -1, 1_700_000_000, i64::MAX] {
            assert_eq!(newest_of_metadata(&metadata_of_newest(time)), Some(time));
        }
        for other in ["", "newest_event=", "newest_event=soon", "1700000000", "other=1"] {
            assert_eq!(newest_of_metadata(other), None, "{other:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_process_taking_a_source_over_reads_its_newest_event_time_from_the_commit() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("notifications", 2, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        for partition in [0, 1] {
            producer
                .send(
                    FutureRecord::<(), _>::to("notifications")
                        .partition(partition)
                        .payload("{}"),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
        }
        let consumer = || -> StreamConsumer {
            ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "decode")
                .set("enable.auto.commit", "false")
                .create()
                .unwrap()
        };
        // The process that decoded both partitions' notifications commits them; only the
        // first partition's files held events.
        let first = consumer();
        let reached = BTreeMap::from([(0, 1), (1, 1)]);
        commit(
            &first,
            "notifications",
            &reached,
            &BTreeMap::from([(0, 1_700_000_000)]),
            CommitMode::Sync,
        );
        drop(first);

        let second = consumer();
        let none = BTreeMap::new();
        assert!(caught_up(&second, "notifications", 0, &none));
        assert!(caught_up(&second, "notifications", 1, &none));
        let (mut newest, mut asked) = (BTreeMap::new(), BTreeSet::new());
        for partition in [0, 1] {
            take_up_newest(&second, "notifications", partition, &mut newest, &mut asked);
        }
        assert_eq!(newest, BTreeMap::from([(0, 1_700_000_000)]));
        // What this process decoded itself is not replaced by the commit.
        let mut own = BTreeMap::from([(0, 1_800_000_000)]);
        take_up_newest(&second, "notifications", 0, &mut own, &mut BTreeSet::new());
        assert_eq!(own, BTreeMap::from([(0, 1_800_000_000)]));
    }
}
