//! The streaming service: notifications in, anomalies out, at least once, surviving restarts.
//!
//! ```text
//!  source (Kafka topic | folder) ─► batch ─► notifications ─► fetch (bounded, retried)
//!    ─► decode + rules (all cores) ─► detector shards ─► sink (Kafka | JSON lines) + dead letters
//!    ─► every checkpoint interval: flush folded alerts, write state + offsets, commit offsets
//! ```
//!
//! Work proceeds in batches of notifications. A batch's anomalies and dead letters are all
//! acknowledged by the sink before the batch counts as done; offsets are committed only at a
//! checkpoint, after the baselines that reflect them are written. A crash therefore replays from
//! the last committed offsets over the last checkpoint's state: nothing is skipped, and anomalies
//! raised again carry the same ids (eventIDs already in the restored state are dropped as
//! duplicates). A notification whose object cannot be fetched for a transient reason is not
//! committed: its partition is rewound to it and retried after a pause. Poison input (malformed or
//! unknown notifications, missing objects, corrupt files) goes to the dead-letter output with the
//! reason and its source, and is committed.
//!
//! Threshold-rule counters are not checkpointed: after a restart they count from zero.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use compact_str::CompactString;
use futures::future::join_all;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::anomaly::Anomaly;
use crate::baseline::PrincipalBaseline;
use crate::config::Settings;
use crate::decode::{DecodeLimits, DecodedFile, Decoder};
use crate::detect::{shard_of, Detector, DetectorState, SeenIds};
use crate::event::Event;
use crate::fetch::{FetchError, Fetcher};
use crate::metrics::{Latencies, Metrics};
use crate::notification::{decode_notification, ObjectRef};
use crate::rules::RuleSet;

/// Where notifications come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A Kafka topic, consumed as a consumer group.
    Kafka,
    /// A folder watched for new log files (S3 key layout or not); no Kafka needed.
    Folder { path: PathBuf, poll: Duration },
}

/// Where anomalies go.
#[derive(Debug, Clone)]
pub enum Sink {
    Kafka,
    File(PathBuf),
    Stdout,
}

/// Kafka settings; `options` pass through to librdkafka unchanged (TLS, SASL, ...).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group_id: String,
    pub notifications_topic: String,
    pub anomalies_topic: String,
    pub dead_letter_topic: String,
    pub options: BTreeMap<String, String>,
}

/// Everything `trailwatch run` needs.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub source: Source,
    pub sink: Sink,
    /// Dead letters for non-Kafka sinks: a JSON-lines file (default: beside the sink, or stderr).
    pub dead_letter_file: Option<PathBuf>,
    pub kafka: KafkaSettings,
    pub fetch: crate::fetch::FetchSettings,
    /// `file:///path`, a plain path, or `s3://bucket/prefix`; `None`: no checkpoints.
    pub checkpoint_url: Option<String>,
    pub checkpoint_interval: Duration,
    pub batch_max_messages: usize,
    pub batch_max_wait: Duration,
    /// Pause before retrying a notification whose object failed transiently.
    pub retry_pause: Duration,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// A dead letter: the input that could not be processed, why, and where it came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    pub reason: String,
    pub detail: String,
    pub source: DeadLetterSource,
    /// The object, for fetch and decode failures (`s3://bucket/key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The original notification payload, as text (lossy for non-UTF-8).
    pub payload: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetterSource {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct RunReport {
    pub notifications: u64,
    pub files: u64,
    pub records: u64,
    pub anomalies: u64,
    pub dead_letters: BTreeMap<String, u64>,
    pub checkpoints: u64,
    pub retries: u64,
}

/// One notification of a batch.
struct Notification {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// For the folder source: the file itself, no notification to decode.
    direct: Option<ObjectRef>,
}

/// The checkpoint: baselines and the input positions they reflect.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    /// Next offset to read, by topic and partition.
    offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// For the folder source: files already processed.
    files_done: BTreeSet<String>,
    principals: Vec<(CompactString, PrincipalBaseline)>,
    /// Hashes of the eventIDs remembered, by minute of event time (version 2).
    #[serde(default)]
    seen_by_minute: SeenIds,
    /// Version 1's hashes, with no time: restored as of the checkpoint's watermark.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seen_ids: Vec<u64>,
    watermark: i64,
}

const CHECKPOINT_VERSION: u32 = 2;
/// Checkpoints of this version and later are read.
const OLDEST_CHECKPOINT_VERSION: u32 = 1;
const CHECKPOINT_NAME: &str = "trailwatch-state.json.gz";

/// What is kept of a decoded file once its events went to the shards.
struct FileCounts {
    records: usize,
    /// Event time of its newest event.
    newest: Option<i64>,
}

/// Decoding and detection over batches of files, on every core.
struct Engine {
    detectors: Vec<Detector>,
    rules: Option<Arc<RuleSet>>,
    limits: DecodeLimits,
    workers: usize,
}

impl Engine {
    fn new(settings: &Settings, rules: Option<Arc<RuleSet>>) -> Engine {
        let shards = settings.workers.get();
        Engine {
            detectors: (0..shards)
                .map(|_| Detector::with_rules(settings.detector.clone(), shards, rules.clone()))
                .collect(),
            rules,
            limits: DecodeLimits {
                max_inflated_bytes: settings.max_file_bytes,
            },
            workers: settings.workers.get(),
        }
    }

    /// Decodes files (in parallel) and runs their events through the shards (in parallel, each
    /// shard's events in file order). Returns the decoded files' reports (their events moved
    /// out, their record counts kept) and the anomalies.
    fn process(&mut self, files: &[(Arc<str>, Bytes)]) -> (Vec<(DecodedFile, FileCounts)>, Vec<Anomaly>) {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let slots: Vec<std::sync::Mutex<Option<DecodedFile>>> =
            files.iter().map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..self.workers.min(files.len()).max(1) {
                s.spawn(|| {
                    let mut decoder = Decoder::with_rules(self.limits, self.rules.clone());
                    while let Some(i) = Some(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                        .filter(|i| *i < files.len())
                    {
                        let decoded = decoder.decode(&files[i].0, &files[i].1);
                        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(decoded);
                    }
                });
            }
        });
        let mut decoded: Vec<DecodedFile> = slots
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or_default()
            })
            .collect();
        let shards = self.detectors.len();
        let mut batches: Vec<Vec<Event>> = vec![Vec::new(); shards];
        let mut records = Vec::with_capacity(decoded.len());
        for file in &mut decoded {
            records.push(FileCounts {
                records: file.events.len() + file.skipped.len(),
                newest: file.events.iter().map(|e| e.time).max(),
            });
            for event in std::mem::take(&mut file.events) {
                batches[shard_of(&event.principal.key, shards)].push(event);
            }
        }
        let mut anomalies = Vec::new();
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .detectors
                .iter_mut()
                .zip(batches)
                .map(|(detector, batch)| {
                    s.spawn(move || {
                        let mut out = Vec::new();
                        for event in &batch {
                            detector.process(event, &mut out);
                        }
                        (out, batch.len())
                    })
                })
                .collect();
            for h in handles {
                let (out, _) = h.join().expect("a shard does not panic");
                anomalies.extend(out);
            }
        });
        (decoded.into_iter().zip(records).collect(), anomalies)
    }

    fn flush(&mut self) -> Vec<Anomaly> {
        let mut out = Vec::new();
        for d in &mut self.detectors {
            d.flush(&mut out);
        }
        out
    }

    fn snapshot(&self) -> (Vec<(CompactString, PrincipalBaseline)>, SeenIds, i64) {
        let mut principals = Vec::new();
        let mut seen = Vec::new();
        let mut watermark = i64::MIN;
        for d in &self.detectors {
            let DetectorState {
                principals: p,
                seen_ids,
                watermark: w,
            } = d.snapshot();
            principals.extend(p);
            seen.extend(seen_ids);
            watermark = watermark.max(w);
        }
        (principals, seen, watermark)
    }

    fn restore(&mut self, checkpoint: Checkpoint) {
        let shards = self.detectors.len();
        let mut parts: Vec<Vec<(CompactString, PrincipalBaseline)>> = vec![Vec::new(); shards];
        for (key, baseline) in checkpoint.principals {
            parts[shard_of(&key, shards)].push((key, baseline));
        }
        let mut seen = checkpoint.seen_by_minute;
        if !checkpoint.seen_ids.is_empty() {
            seen.push((checkpoint.watermark.div_euclid(60), checkpoint.seen_ids));
        }
        for (detector, part) in self.detectors.iter_mut().zip(parts) {
            // Each shard remembers every restored eventID: an ID's shard is not known from its hash.
            detector.restore(part, &seen, checkpoint.watermark);
        }
    }
}

/// The checkpoint store: a folder or an object-store prefix.
struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
}

impl CheckpointStore {
    fn open(url: &str) -> anyhow::Result<CheckpointStore> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true"))
                .build()
                .with_context(|| format!("checkpoint.url {url}"))?;
            let path = ObjectPath::parse(
                format!("{}/{CHECKPOINT_NAME}", prefix.trim_matches('/')).trim_start_matches('/'),
            )?;
            return Ok(CheckpointStore {
                store: Arc::new(store),
                path,
            });
        }
        let dir = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
        std::fs::create_dir_all(&dir).with_context(|| format!("checkpoint folder {}", dir.display()))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
        Ok(CheckpointStore {
            store: Arc::new(store),
            path: ObjectPath::from(CHECKPOINT_NAME),
        })
    }

    async fn load(&self) -> anyhow::Result<Option<Checkpoint>> {
        let bytes = match self.store.get(&self.path).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e).context("reading the checkpoint"),
        };
        let checkpoint: Checkpoint = tokio::task::spawn_blocking(move || -> anyhow::Result<Checkpoint> {
            let reader = flate2::read::GzDecoder::new(&bytes[..]);
            Ok(serde_json::from_reader(reader)?)
        })
        .await??;
        anyhow::ensure!(
            (OLDEST_CHECKPOINT_VERSION..=CHECKPOINT_VERSION).contains(&checkpoint.version),
            "checkpoint version {} is not one of {OLDEST_CHECKPOINT_VERSION} to {CHECKPOINT_VERSION}",
            checkpoint.version
        );
        Ok(Some(checkpoint))
    }

    async fn save(&self, checkpoint: Checkpoint) -> anyhow::Result<()> {
        let bytes = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            serde_json::to_writer(&mut gz, &checkpoint)?;
            Ok(gz.finish()?)
        })
        .await??;
        // Local puts write a temporary file and rename it; S3 puts are atomic.
        self.store
            .put(&self.path, PutPayload::from(bytes))
            .await
            .context("writing the checkpoint")?;
        Ok(())
    }
}

/// The outputs: anomalies and dead letters.
enum Output {
    Kafka {
        producer: FutureProducer,
        anomalies: String,
        dead_letters: String,
    },
    Files {
        anomalies: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
        dead_letters: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    },
}

impl Output {
    /// Sends everything and waits until each is acknowledged (Kafka) or written and flushed.
    async fn deliver(
        &mut self,
        anomalies: &[Anomaly],
        dead: &[(Option<Vec<u8>>, DeadLetter)],
    ) -> anyhow::Result<()> {
        match self {
            Output::Kafka {
                producer,
                anomalies: topic,
                dead_letters,
            } => {
                let payloads: Vec<String> = anomalies
                    .iter()
                    .map(serde_json::to_string)
                    .collect::<Result<_, _>>()?;
                let sends = anomalies.iter().zip(&payloads).map(|(a, p)| {
                    producer.send(
                        FutureRecord::to(topic).key(&a.principal.key).payload(p),
                        Duration::from_secs(30),
                    )
                });
                for result in join_all(sends).await {
                    result.map_err(|(e, _)| anyhow::anyhow!("producing an anomaly: {e}"))?;
                }
                let dead_payloads: Vec<String> = dead
                    .iter()
                    .map(|(_, d)| serde_json::to_string(d))
                    .collect::<Result<_, _>>()?;
                let sends = dead.iter().zip(&dead_payloads).map(|((key, _), p)| {
                    let mut record = FutureRecord::to(dead_letters).payload(p);
                    if let Some(key) = key {
                        record = record.key(key);
                    }
                    producer.send(record, Duration::from_secs(30))
                });
                for result in join_all(sends).await {
                    result.map_err(|(e, _)| anyhow::anyhow!("producing a dead letter: {e}"))?;
                }
            }
            Output::Files {
                anomalies: out,
                dead_letters,
            } => {
                let mut buf = Vec::new();
                for a in anomalies {
                    serde_json::to_writer(&mut buf, a)?;
                    buf.push(b'\n');
                }
                out.write_all(&buf).await?;
                out.flush().await?;
                buf.clear();
                for (_, d) in dead {
                    serde_json::to_writer(&mut buf, d)?;
                    buf.push(b'\n');
                }
                dead_letters.write_all(&buf).await?;
                dead_letters.flush().await?;
            }
        }
        Ok(())
    }
}

/// A librdkafka configuration: the brokers, then `defaults`, then the user's passthrough options,
/// which win over both.
fn client_config(kafka: &KafkaSettings, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    for (k, v) in &kafka.options {
        config.set(k, v);
    }
    config
}

/// Runs the service until `shutdown` resolves (SIGTERM/SIGINT in the binary), then finishes the
/// batch in hand, checkpoints, commits and returns.
pub async fn run(
    settings: Settings,
    run: RunSettings,
    rules: Option<Arc<RuleSet>>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<RunReport> {
    let mut report = RunReport::default();
    let latencies = Latencies::default();
    if let Some(rules) = &rules {
        metrics.register_rules(rules);
    }
    let (server_stop, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = match run.metrics_listen {
        Some(addr) => {
            let (bound, handle) = crate::metrics::serve(Arc::clone(&metrics), addr, async move {
                let _ = server_stopped.await;
            })
            .await
            .with_context(|| format!("metrics.listen {addr}"))?;
            tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
            Some(handle)
        }
        None => None,
    };
    let mut engine = Engine::new(&settings, rules);
    let checkpoints = run
        .checkpoint_url
        .as_deref()
        .map(CheckpointStore::open)
        .transpose()?;
    let mut files_done = BTreeSet::new();
    if let Some(store) = &checkpoints {
        if let Some(checkpoint) = store.load().await? {
            tracing::info!(principals = checkpoint.principals.len(), "restoring checkpoint");
            files_done = checkpoint.files_done.clone();
            engine.restore(checkpoint);
        }
    }
    let fetcher = Fetcher::new(run.fetch.clone());

    let consumer: Option<StreamConsumer> = match &run.source {
        Source::Kafka => {
            let config = client_config(
                &run.kafka,
                &[
                    ("group.id", &run.kafka.group_id),
                    ("enable.auto.commit", "false"),
                    ("auto.offset.reset", "earliest"),
                ],
            );
            let consumer: StreamConsumer = config.create().context("creating the Kafka consumer")?;
            consumer
                .subscribe(&[&run.kafka.notifications_topic])
                .context("subscribing")?;
            Some(consumer)
        }
        Source::Folder { .. } => None,
    };
    let mut output = match &run.sink {
        Sink::Kafka => {
            let config = client_config(&run.kafka, &[("enable.idempotence", "true")]);
            let producer: FutureProducer = config.create().context("creating the Kafka producer")?;
            Output::Kafka {
                producer,
                anomalies: run.kafka.anomalies_topic.clone(),
                dead_letters: run.kafka.dead_letter_topic.clone(),
            }
        }
        sink => {
            let anomalies: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match sink {
                Sink::File(path) => Box::new(
                    tokio::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .await
                        .with_context(|| format!("sink {}", path.display()))?,
                ),
                _ => Box::new(tokio::io::stdout()),
            };
            let dead_letters: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &run.dead_letter_file {
                Some(path) => Box::new(
                    tokio::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .await
                        .with_context(|| format!("dead letters {}", path.display()))?,
                ),
                None => Box::new(tokio::io::stderr()),
            };
            Output::Files {
                anomalies,
                dead_letters,
            }
        }
    };

    // Rules are loaded and the state restored; a Kafka source is ready once partitions are assigned.
    metrics.set_ready(matches!(run.source, Source::Folder { .. }));
    tokio::pin!(shutdown);
    let mut stopping = false;
    let mut last_checkpoint = Instant::now();
    // Next offsets reached, to commit at the next checkpoint.
    let mut reached: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut dirty = false;

    while !stopping {
        // Gather a batch.
        let mut batch: Vec<Notification> = Vec::new();
        match (&consumer, &run.source) {
            (Some(consumer), _) => {
                let deadline = tokio::time::Instant::now() + run.batch_max_wait;
                while batch.len() < run.batch_max_messages {
                    tokio::select! {
                        _ = &mut shutdown => { stopping = true; break; }
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
            }
            (None, Source::Folder { path, poll }) => {
                let (listed, pending) = list_folder(path, &files_done, run.batch_max_messages)?;
                // The folder's backlog is its lag: files waiting beyond this batch.
                metrics
                    .consumer_lag
                    .with_label_values(&["folder"])
                    .set((pending - listed.len()) as i64);
                if listed.is_empty() {
                    tokio::select! {
                        _ = &mut shutdown => stopping = true,
                        _ = tokio::time::sleep(*poll) => {}
                    }
                }
                for key in listed {
                    batch.push(Notification {
                        topic: String::new(),
                        partition: 0,
                        offset: 0,
                        key: None,
                        payload: Vec::new(),
                        direct: Some(ObjectRef {
                            bucket: String::new(),
                            key,
                        }),
                    });
                }
            }
            (None, Source::Kafka) => unreachable!("a Kafka source has a consumer"),
        }

        if !batch.is_empty() {
            let outcome =
                process_batch(&mut engine, &fetcher, &batch, &mut report, &metrics, &latencies).await;
            output.deliver(&outcome.anomalies, &outcome.dead).await?;
            report.anomalies += outcome.anomalies.len() as u64;
            outcome.anomalies.iter().for_each(|a| metrics.anomaly(a));
            for (_, d) in &outcome.dead {
                *report.dead_letters.entry(d.reason.clone()).or_default() += 1;
                metrics.dead_letters.with_label_values(&[d.reason.as_str()]).inc();
            }
            metrics
                .notifications
                .with_label_values(&["retried"])
                .inc_by(outcome.retry.len() as u64);
            metrics
                .principals
                .set(engine.detectors.iter().map(Detector::principals).sum::<usize>() as i64);
            metrics
                .baseline_values
                .set(engine.detectors.iter().map(Detector::values_held).sum::<usize>() as i64);
            for n in &batch {
                if let Some(obj) = &n.direct {
                    if !outcome.retry.contains(&(n.topic.clone(), n.partition, n.offset)) {
                        files_done.insert(obj.key.clone());
                    }
                }
            }
            // Per partition: commit up to the first notification to retry, and rewind to it.
            let mut first_retry: BTreeMap<(String, i32), i64> = BTreeMap::new();
            for (topic, partition, offset) in &outcome.retry {
                let e = first_retry.entry((topic.clone(), *partition)).or_insert(*offset);
                *e = (*e).min(*offset);
            }
            for n in batch.iter().filter(|n| n.direct.is_none()) {
                let tp = (n.topic.clone(), n.partition);
                let limit = first_retry.get(&tp).copied().unwrap_or(i64::MAX);
                if n.offset < limit {
                    let e = reached.entry(tp).or_insert(n.offset + 1);
                    *e = (*e).max(n.offset + 1);
                }
            }
            if let Some(consumer) = &consumer {
                for ((topic, partition), offset) in &first_retry {
                    report.retries += 1;
                    tracing::warn!(topic, partition, offset, "rewinding to retry a notification");
                    consumer
                        .seek(
                            topic,
                            *partition,
                            Offset::Offset(*offset),
                            Duration::from_secs(10),
                        )
                        .ok();
                }
            }
            if !first_retry.is_empty() {
                tokio::time::sleep(run.retry_pause).await;
            }
            dirty = true;
        }

        if let Some(consumer) = &consumer {
            metrics.set_ready(consumer.assignment().is_ok_and(|a| a.count() > 0));
        }
        if report.checkpoints > 0 {
            metrics
                .checkpoint_age_seconds
                .set(last_checkpoint.elapsed().as_secs_f64());
        }
        if dirty && (stopping || last_checkpoint.elapsed() >= run.checkpoint_interval) {
            checkpoint(
                &mut engine,
                &mut output,
                checkpoints.as_ref(),
                consumer.as_ref(),
                &reached,
                &files_done,
                &mut report,
                &metrics,
            )
            .await?;
            last_checkpoint = Instant::now();
            dirty = false;
        }
    }
    tracing::info!(file = %latencies.file(), event_lag = %latencies.lag(), "latency at shutdown");
    let _ = server_stop.send(());
    if let Some(server) = server {
        let _ = server.await;
    }
    if let Output::Kafka { producer, .. } = &output {
        use rdkafka::producer::Producer;
        producer
            .flush(Duration::from_secs(30))
            .context("flushing the producer")?;
    }
    Ok(report)
}

/// Flushes folded alerts, writes the state with the offsets it reflects, then commits them.
#[allow(clippy::too_many_arguments)] // the run loop's state, lent for one step
async fn checkpoint(
    engine: &mut Engine,
    output: &mut Output,
    store: Option<&CheckpointStore>,
    consumer: Option<&StreamConsumer>,
    reached: &BTreeMap<(String, i32), i64>,
    files_done: &BTreeSet<String>,
    report: &mut RunReport,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let held = engine.flush();
    output.deliver(&held, &[]).await?;
    held.iter().for_each(|a| metrics.anomaly(a));
    report.anomalies += held.len() as u64;
    if let Some(store) = store {
        let (principals, seen_ids, watermark) = engine.snapshot();
        let mut offsets: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        for ((topic, partition), offset) in reached {
            offsets
                .entry(topic.clone())
                .or_default()
                .insert(*partition, *offset);
        }
        let checkpoint = Checkpoint {
            version: CHECKPOINT_VERSION,
            offsets,
            files_done: files_done.clone(),
            principals,
            seen_by_minute: seen_ids,
            seen_ids: Vec::new(),
            watermark,
        };
        store.save(checkpoint).await?;
    }
    if let Some(consumer) = consumer {
        if !reached.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), offset) in reached {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
            }
            // A failed commit is not fatal: the checkpoint holds the state, and the next
            // checkpoint commits these offsets again; a crash before then replays a little more.
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                tracing::warn!(error = %e, "committing offsets failed; retrying at the next checkpoint");
            }
        }
    }
    report.checkpoints += 1;
    metrics
        .checkpoint_last_success
        .set(chrono::Utc::now().timestamp() as f64);
    metrics.checkpoint_age_seconds.set(0.0);
    if let Some(consumer) = consumer {
        // Lag per assigned partition: the log end minus the position reached.
        if let Ok(assignment) = consumer.assignment() {
            for tp in assignment.elements() {
                let reached_at = reached.get(&(tp.topic().to_owned(), tp.partition())).copied();
                if let (Ok((_, high)), Some(at)) = (
                    consumer.fetch_watermarks(tp.topic(), tp.partition(), Duration::from_secs(5)),
                    reached_at,
                ) {
                    metrics
                        .consumer_lag
                        .with_label_values(&[&tp.partition().to_string()])
                        .set(high - at);
                }
            }
        }
    }
    tracing::info!(
        checkpoints = report.checkpoints,
        "checkpoint written and offsets committed"
    );
    Ok(())
}

struct BatchOutcome {
    anomalies: Vec<Anomaly>,
    dead: Vec<(Option<Vec<u8>>, DeadLetter)>,
    /// Notifications to retry (transient failures), by topic, partition, offset.
    retry: BTreeSet<(String, i32, i64)>,
}

async fn process_batch(
    engine: &mut Engine,
    fetcher: &Fetcher,
    batch: &[Notification],
    report: &mut RunReport,
    metrics: &Metrics,
    latencies: &Latencies,
) -> BatchOutcome {
    let mut dead = Vec::new();
    let mut retry = BTreeSet::new();
    let source = |n: &Notification| DeadLetterSource {
        topic: n.topic.clone(),
        partition: n.partition,
        offset: n.offset,
    };
    let payload_text = |n: &Notification| String::from_utf8_lossy(&n.payload).into_owned();

    // Notifications → objects.
    let mut wanted: Vec<(usize, ObjectRef)> = Vec::new();
    for (i, n) in batch.iter().enumerate() {
        report.notifications += 1;
        if let Some(obj) = &n.direct {
            wanted.push((i, obj.clone()));
            continue;
        }
        let notice = decode_notification(&n.payload);
        let outcome = if !notice.problems.is_empty() {
            "dead_letter"
        } else if notice.objects.is_empty() {
            "ignored"
        } else {
            "processed"
        };
        metrics.notifications.with_label_values(&[outcome]).inc();
        for problem in notice.problems {
            dead.push((
                n.key.clone(),
                DeadLetter {
                    reason: problem.reason.to_owned(),
                    detail: problem.detail,
                    source: source(n),
                    object: None,
                    payload: payload_text(n),
                },
            ));
        }
        wanted.extend(notice.objects.into_iter().map(|o| (i, o)));
    }

    // Objects → bytes, concurrently (the fetcher bounds how many at once).
    let fetched = join_all(wanted.iter().map(|(_, o)| fetcher.fetch(o))).await;
    let mut files: Vec<(Arc<str>, Bytes)> = Vec::new();
    let mut file_owner: Vec<usize> = Vec::new();
    for ((i, object), result) in wanted.iter().zip(fetched) {
        let n = &batch[*i];
        let url = if object.bucket.is_empty() {
            object.key.clone()
        } else {
            format!("s3://{}/{}", object.bucket, object.key)
        };
        match result {
            Ok(bytes) => {
                files.push((Arc::from(url.as_str()), bytes));
                file_owner.push(*i);
            }
            Err(e) if e.is_poison() => dead.push((
                n.key.clone(),
                fetch_dead_letter(&e, source(n), url, payload_text(n)),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "transient fetch failure; the notification will be retried");
                retry.insert((n.topic.clone(), n.partition, n.offset));
            }
        }
    }
    // A notification to retry is not processed now, even in part: it will be, whole, later.
    let keep: Vec<bool> = file_owner
        .iter()
        .map(|i| !retry.contains(&(batch[*i].topic.clone(), batch[*i].partition, batch[*i].offset)))
        .collect();
    let files: Vec<(Arc<str>, Bytes)> = files
        .into_iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(f, _)| f)
        .collect();
    let file_owner: Vec<usize> = file_owner
        .into_iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(o, _)| o)
        .collect();

    // Bytes → events → anomalies, off the async threads.
    let taken = std::mem::replace(
        engine,
        Engine {
            detectors: Vec::new(),
            rules: None,
            limits: DecodeLimits::default(),
            workers: 1,
        },
    );
    let (mut back, decoded, anomalies) = tokio::task::spawn_blocking(move || {
        let mut engine = taken;
        let (decoded, anomalies) = engine.process(&files);
        (
            engine,
            (decoded, files.into_iter().map(|f| f.0).collect::<Vec<_>>()),
            anomalies,
        )
    })
    .await
    .expect("the detection task does not panic");
    std::mem::swap(engine, &mut back);
    let (decoded, names) = decoded;
    let now = chrono::Utc::now().timestamp();
    for (((file, counts), name), owner) in decoded.iter().zip(&names).zip(&file_owner) {
        report.files += 1;
        report.records += counts.records as u64;
        let skipped = file.skipped.len() as u64;
        metrics.records.with_label_values(&["skipped"]).inc_by(skipped);
        metrics
            .records
            .with_label_values(&["event"])
            .inc_by(counts.records as u64 - skipped);
        let outcome = match (&file.error, file.skip) {
            (Some(_), _) => "failed",
            (None, Some(_)) => "skipped",
            (None, None) => "decoded",
        };
        metrics.files.with_label_values(&[outcome]).inc();
        metrics.file_seconds.observe(file.took.as_secs_f64());
        latencies.record_file(file.took);
        if let Some(newest) = counts.newest {
            metrics.event_lag_seconds.observe((now - newest).max(0) as f64);
            latencies.record_lag(now - newest);
        }
        let n = &batch[*owner];
        if let Some(error) = &file.error {
            dead.push((
                n.key.clone(),
                DeadLetter {
                    reason: error.reason().to_owned(),
                    detail: error.to_string(),
                    source: source(n),
                    object: Some(name.to_string()),
                    payload: payload_text(n),
                },
            ));
        }
    }
    BatchOutcome {
        anomalies,
        dead,
        retry,
    }
}

fn fetch_dead_letter(e: &FetchError, source: DeadLetterSource, url: String, payload: String) -> DeadLetter {
    DeadLetter {
        reason: e.reason().to_owned(),
        detail: e.to_string(),
        source,
        object: Some(url),
        payload,
    }
}

/// Log files under `dir` not yet processed, oldest delivery first, at most `max`; and how many
/// are waiting in all.
fn list_folder(
    dir: &std::path::Path,
    done: &BTreeSet<String>,
    max: usize,
) -> anyhow::Result<(Vec<String>, usize)> {
    let (files, _) = crate::replay::list_inputs(&[dir.to_owned()])?;
    let mut pending: Vec<String> = files
        .into_iter()
        .filter_map(|f| {
            f.path
                .strip_prefix(dir)
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
        })
        .filter(|k| !done.contains(k))
        .collect();
    let total = pending.len();
    pending.truncate(max);
    Ok((pending, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn event(id: &str, time: i64) -> Event {
        let record = format!(
            r#"{{"eventVersion":"1.08","eventTime":"{}","eventSource":"s3.amazonaws.com","eventName":"GetObject","eventID":"{id}","userIdentity":{{"type":"IAMUser","arn":"arn:aws:iam::111122223333:user/a","accountId":"111122223333"}}}}"#,
            crate::event::format_time(time)
        );
        let raw: crate::record::RawRecord = serde_json::from_str(&record).unwrap();
        Event::from_record(&raw, &record, &Arc::from("test")).unwrap()
    }

    fn duplicates_after_restore(checkpoint: &str) -> u64 {
        let settings = Settings::default();
        let mut engine = Engine::new(&settings, None);
        engine.restore(serde_json::from_str(checkpoint).unwrap());
        let e = event("a", 1_700_000_000);
        let shard = shard_of(&e.principal.key, engine.detectors.len());
        engine.detectors[shard].process(&e, &mut Vec::new());
        engine.detectors[shard].stats.duplicates
    }

    #[test]
    fn checkpoints_of_both_versions_restore_the_event_ids_they_hold() {
        let hash = xxhash_rust::xxh3::xxh3_64(b"a");
        let minute = 1_700_000_000 / 60;
        let v1 = format!(
            r#"{{"version":1,"offsets":{{}},"files_done":[],"principals":[],"seen_ids":[{hash}],"watermark":1700000000}}"#
        );
        assert_eq!(duplicates_after_restore(&v1), 1);
        let v2 = format!(
            r#"{{"version":2,"offsets":{{}},"files_done":[],"principals":[],"seen_by_minute":[[{minute},[{hash}]]],"watermark":1700000000}}"#
        );
        assert_eq!(duplicates_after_restore(&v2), 1);
        // Another minute holds another event.
        let elsewhere = v2.replace(&minute.to_string(), &(minute - 1).to_string());
        assert_eq!(duplicates_after_restore(&elsewhere), 0);

        // What a snapshot writes reads back the same.
        let settings = Settings::default();
        let mut engine = Engine::new(&settings, None);
        engine.restore(serde_json::from_str(&v2).unwrap());
        let (principals, seen_by_minute, watermark) = engine.snapshot();
        let written = Checkpoint {
            version: CHECKPOINT_VERSION,
            principals,
            seen_by_minute,
            watermark,
            ..Checkpoint::default()
        };
        assert_eq!(
            duplicates_after_restore(&serde_json::to_string(&written).unwrap()),
            1
        );
    }
}
