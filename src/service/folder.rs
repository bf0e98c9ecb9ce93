//! The one-process service over a watched folder: no Kafka, state in memory, checkpointed whole.
//!
//! ```text
//!  folder (new files) ─► batch ─► decode (all cores) ─► state partitions (in memory, all cores)
//!    ─► sink + dead letters ─► every checkpoint interval: every partition's state + files done
//! ```
//! A batch's anomalies and dead letters are acknowledged by the sink before the batch counts as
//! done; the checkpoint holds the partitions' whole state (open alert folds included, so folding
//! does not depend on when checkpoints fall) and the files it reflects. When the folder has been
//! quiet for `engine.idle_after`, the partitions' clocks move to the present (for a historical
//! trail, only as far as [`crate::engine::idle_clock`] says): what waits in the reorder buffers is
//! judged and alerts whose window has passed are emitted, as the end of a replay does.
//!
//! Nothing in the folder stops the service. A path the listing cannot take (a symlink loop, a
//! dangling link, a FIFO) is dead-lettered once with its reason, for as long as it stays so; a
//! file that cannot be read is tried again after a doubling wait, while the files beside it go
//! on, and dead-lettered after `source.max_attempts` tries. A stop is looked for before every
//! batch, so a backlog does not delay it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::FutureExt as _;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};

use crate::anomaly::Anomaly;
use crate::baseline::PrincipalBaseline;
use crate::config::{RunSettings, Settings};
use crate::decode::{DecodeLimits, DecodedFile};
use crate::detect::{Detector, SeenIds};
use crate::engine::{partition_of, partition_of_hash, PartitionSnapshot, StatePartition};
use crate::event::Event;
use crate::fetch::Fetcher;
use crate::metrics::{Latencies, Metrics};
use crate::notification::ObjectRef;
use crate::replay::{scan_inputs, Escaped, ListProblem, Listing};
use crate::rules::RuleSet;
use crate::run::RunReport;
use crate::service::batch::{decode_batch, given_up, DecoderPool, KeyedDeadLetter, Notification};
use crate::sink::{DeadLetter, DeadLetterSource, Output};

/// The checkpoint: every partition's state and the files it reflects.
#[derive(Default, Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    /// Files already processed, by path under the folder.
    files_done: BTreeSet<String>,
    /// Files that failed to be read, with their failed reads so far: a restart does not give a
    /// file that keeps failing its `source.max_attempts` again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    failed_reads: BTreeMap<String, u32>,
    /// Version 3: each partition's whole state, in partition order.
    #[serde(default)]
    partitions: Vec<PartitionSnapshot>,
    /// The newest event time decoded, where an idle clock stops for a historical trail (see
    /// [`crate::engine::idle_clock`]); absent from older checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    newest_event: Option<i64>,
    /// Versions 1 and 2: baselines of every partition together.
    #[serde(default)]
    principals: Vec<(compact_str::CompactString, PrincipalBaseline)>,
    /// Version 2: hashes of the eventIDs remembered, by minute of event time.
    #[serde(default)]
    seen_by_minute: SeenIds,
    /// Version 1: hashes with no time, taken as of the watermark.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seen_ids: Vec<u64>,
    #[serde(default)]
    watermark: i64,
}

const CHECKPOINT_VERSION: u32 = 3;
/// Checkpoints of this version and later are read.
const OLDEST_CHECKPOINT_VERSION: u32 = 1;
const CHECKPOINT_NAME: &str = "trailwatch-state.json.gz";

/// Decoding and state partitions, on every core.
struct Engine {
    partitions: Vec<StatePartition>,
    pool: Option<DecoderPool>,
    rules: Option<Arc<RuleSet>>,
    workers: usize,
    /// The newest event time decoded, where an idle clock stops for a historical trail (see
    /// [`crate::engine::idle_clock`]).
    newest_event: Option<i64>,
}

impl Engine {
    fn new(settings: &Settings, rules: Option<Arc<RuleSet>>) -> Engine {
        let count = settings.engine.partitions as usize;
        let limits = DecodeLimits {
            max_inflated_bytes: settings.max_file_bytes,
        };
        Engine {
            partitions: (0..count)
                .map(|_| {
                    let detector = Detector::with_rules(settings.detector.clone(), count, rules.clone());
                    StatePartition::local(detector, settings.engine.reorder_window)
                })
                .collect(),
            pool: Some(DecoderPool::new(
                settings.workers.get(),
                limits,
                rules.clone(),
                settings.max_event_time_skew,
            )),
            rules,
            workers: settings.workers.get(),
            newest_event: None,
        }
    }

    /// Routes the files' events to their partitions, in file order, and runs the partitions in
    /// parallel; blocking.
    fn detect(&mut self, files: &mut [(DecodedFile, usize)]) -> Vec<Anomaly> {
        let count = self.partitions.len();
        let mut routed: Vec<Vec<Event>> = vec![Vec::new(); count];
        for (file, _) in files.iter_mut() {
            for event in std::mem::take(&mut file.events) {
                self.newest_event = Some(self.newest_event.map_or(event.time, |t| t.max(event.time)));
                routed[partition_of_hash(event.partition_hash(), count as u32) as usize].push(event);
            }
        }
        self.each_partition(routed, |partition, events, out| {
            for event in events {
                partition.offer(event, out);
            }
        })
    }

    /// The input is caught up: partitions' clocks move to `now` (see
    /// [`crate::engine::idle_clock`]).
    fn idle(&mut self, now: i64) -> Vec<Anomaly> {
        let routed = vec![Vec::new(); self.partitions.len()];
        self.each_partition(routed, |partition, _, out| partition.idle(now, out))
    }

    fn each_partition(
        &mut self,
        routed: Vec<Vec<Event>>,
        work: impl Fn(&mut StatePartition, Vec<Event>, &mut Vec<Anomaly>) + Sync,
    ) -> Vec<Anomaly> {
        let per_thread = self.partitions.len().div_ceil(self.workers.max(1));
        let mut routed = routed.into_iter();
        let work = &work;
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .partitions
                .chunks_mut(per_thread)
                .map(|chunk| {
                    let events: Vec<Vec<Event>> = routed.by_ref().take(chunk.len()).collect();
                    s.spawn(move || {
                        let mut out = Vec::new();
                        for (partition, events) in chunk.iter_mut().zip(events) {
                            work(partition, events, &mut out);
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("a partition does not panic"))
                .collect()
        })
    }

    fn snapshot(&self) -> Vec<PartitionSnapshot> {
        let rules = self.rules.as_deref();
        self.partitions.iter().map(|p| p.snapshot(rules)).collect()
    }

    fn restore(&mut self, settings: &Settings, checkpoint: Checkpoint) {
        self.newest_event = checkpoint.newest_event;
        let count = self.partitions.len();
        let rules = self.rules.as_deref();
        let fresh = || Detector::with_rules(settings.detector.clone(), count, self.rules.clone());
        if !checkpoint.partitions.is_empty() {
            if checkpoint.partitions.len() != count {
                tracing::warn!(
                    held = checkpoint.partitions.len(),
                    configured = count,
                    "the checkpoint holds another number of partitions; its principals are spread anew"
                );
            } else {
                self.partitions = checkpoint
                    .partitions
                    .into_iter()
                    .map(|s| StatePartition::restore(fresh(), settings.engine.reorder_window, s, rules))
                    .collect();
                return;
            }
        }
        // Versions 1 and 2 (or another partition count): baselines by principal, every eventID to
        // every partition (an ID's partition is not known from its hash).
        let mut parts: Vec<Vec<(compact_str::CompactString, PrincipalBaseline)>> = vec![Vec::new(); count];
        let mut seen = checkpoint.seen_by_minute;
        let mut watermark = checkpoint.watermark;
        if !checkpoint.seen_ids.is_empty() {
            seen.push((checkpoint.watermark.div_euclid(60), checkpoint.seen_ids));
        }
        let mut principals = checkpoint.principals;
        for snapshot in checkpoint.partitions {
            principals.extend(snapshot.detector.principals);
            seen.extend(snapshot.detector.seen_ids);
            watermark = watermark.max(snapshot.detector.watermark);
        }
        for (key, baseline) in principals {
            parts[partition_of(&key, count as u32) as usize].push((key, baseline));
        }
        for (part, principals) in parts.into_iter().enumerate() {
            let mut detector = fresh();
            detector.restore(principals, &seen, watermark);
            self.partitions[part] = StatePartition::local(detector, settings.engine.reorder_window);
        }
    }

    fn principals(&self) -> usize {
        self.partitions.iter().map(|p| p.detector().principals()).sum()
    }

    fn values_held(&self) -> usize {
        self.partitions.iter().map(|p| p.detector().values_held()).sum()
    }

    fn held(&self) -> usize {
        self.partitions.iter().map(StatePartition::held).sum()
    }
}

/// The checkpoint store of the folder service: one object.
struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
}

impl CheckpointStore {
    fn open(url: &str, s3: &crate::config::StoreSettings) -> anyhow::Result<CheckpointStore> {
        let (store, prefix) = crate::state::open_store(url, s3)?;
        let path = if prefix.is_empty() {
            ObjectPath::from(CHECKPOINT_NAME)
        } else {
            ObjectPath::from(format!("{prefix}/{CHECKPOINT_NAME}"))
        };
        Ok(CheckpointStore { store, path })
    }

    async fn load(&self) -> anyhow::Result<Option<Checkpoint>> {
        let bytes = match self.store.get(&self.path).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e).context("reading the checkpoint"),
        };
        let checkpoint: Checkpoint = tokio::task::spawn_blocking(move || -> anyhow::Result<Checkpoint> {
            Ok(serde_json::from_reader(flate2::read::GzDecoder::new(&bytes[..]))?)
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

/// The watched folder and how its files are read.
#[derive(Debug, Clone)]
pub struct FolderSource {
    pub path: PathBuf,
    /// How often the folder is listed for new files.
    pub poll: Duration,
    /// Reads of a file that keeps failing before it is dead-lettered.
    pub max_attempts: u32,
}

/// A file that failed to be read, waiting to be tried again.
struct Attempts {
    failures: u32,
    next: Instant,
}

/// The wait after a file's `failures`-th failed read: doubling from `pause`, at most `max`
/// (or `pause`, if that is longer).
fn backoff(pause: Duration, max: Duration, failures: u32) -> Duration {
    let doubled = pause.saturating_mul(1 << failures.saturating_sub(1).min(20));
    doubled.min(max.max(pause))
}

/// Runs the folder service until `shutdown` resolves, then finishes the batch in hand,
/// checkpoints and returns. `shutdown` is looked at before every batch, so a backlog of files is
/// no reason to wait: what is left of it is taken up by the next run, from the checkpoint.
pub async fn run(
    settings: &Settings,
    run: &RunSettings,
    folder: &FolderSource,
    rules: Option<Arc<RuleSet>>,
    metrics: &Metrics,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<RunReport> {
    tokio::pin!(shutdown);
    let mut stopping = false;
    let mut report = RunReport::default();
    let latencies = Latencies::default();
    anyhow::ensure!(
        std::fs::metadata(&folder.path).is_ok_and(|m| m.is_dir()),
        "source.folder {}: not a folder",
        Escaped(&folder.path.display().to_string())
    );
    let mut engine = Engine::new(settings, rules);
    let checkpoints = run
        .checkpoint_url
        .as_deref()
        .map(|url| CheckpointStore::open(url, &run.s3))
        .transpose()?;
    let mut files_done = BTreeSet::new();
    let mut retrying: HashMap<String, Attempts> = HashMap::new();
    if let Some(store) = &checkpoints {
        if let Some(mut checkpoint) = store.load().await? {
            tracing::info!(partitions = checkpoint.partitions.len(), "restoring checkpoint");
            files_done = std::mem::take(&mut checkpoint.files_done);
            let now = Instant::now();
            retrying = std::mem::take(&mut checkpoint.failed_reads)
                .into_iter()
                .map(|(file, failures)| (file, Attempts { failures, next: now }))
                .collect();
            engine.restore(settings, checkpoint);
        }
    }
    let fetcher = Fetcher::new(run.fetch.clone());
    let mut output = Output::open(run).await?;
    metrics.set_ready(true);
    let mut last_checkpoint = Instant::now();
    let mut last_input = Instant::now();
    let mut idle_done = false;
    let mut dirty = false;
    // Paths the listing cannot take, reported once each for as long as they stay so.
    let mut unlisted_reported: BTreeSet<PathBuf> = BTreeSet::new();

    loop {
        if !stopping && shutdown.as_mut().now_or_never().is_some() {
            stopping = true;
        }
        let mut anomalies = Vec::new();
        let mut dead = Vec::new();
        if !stopping {
            let listing = list_folder(&folder.path, &files_done, &retrying, run.batch_max_messages);
            unlisted_reported.retain(|p| listing.unlisted.iter().any(|u| &u.path == p));
            for problem in listing.unlisted {
                if unlisted_reported.insert(problem.path.clone()) {
                    dead.push(unlisted_dead_letter(&folder.path, &problem));
                }
            }
            // The folder's backlog is its lag: files waiting beyond this batch.
            metrics
                .consumer_lag
                .with_label_values(&["folder"])
                .set((listing.pending - listing.files.len()) as i64);
            if listing.files.is_empty() && dead.is_empty() {
                tokio::select! {
                    _ = &mut shutdown => stopping = true,
                    _ = tokio::time::sleep(folder.poll) => {}
                }
            }
            // Each file its own position, so that a file to retry holds back only itself.
            let batch: Vec<Notification> = listing
                .files
                .into_iter()
                .enumerate()
                .map(|(i, key)| Notification {
                    topic: String::new(),
                    partition: 0,
                    offset: i as i64,
                    key: None,
                    payload: Vec::new(),
                    direct: Some(ObjectRef {
                        bucket: String::new(),
                        key,
                    }),
                })
                .collect();

            if !batch.is_empty() {
                last_input = Instant::now();
                idle_done = false;
                let mut decoded = decode_batch(
                    &mut engine.pool,
                    &fetcher,
                    &batch,
                    &mut report,
                    metrics,
                    &latencies,
                )
                .await;
                let retry_errors = std::mem::take(&mut decoded.retry_errors);
                let (engine_back, found) = tokio::task::spawn_blocking(move || {
                    let found = engine.detect(&mut decoded.files);
                    (engine, (found, decoded.dead, decoded.retry))
                })
                .await
                .expect("detection does not panic");
                engine = engine_back;
                let (found, batch_dead, retry) = found;
                anomalies = found;
                dead.extend(batch_dead);
                for n in &batch {
                    if let Some(obj) = &n.direct {
                        if !retry.contains(&n.position()) {
                            retrying.remove(&obj.key);
                            files_done.insert(obj.key.clone());
                        }
                    }
                }
                report.retries += retry.len() as u64;
                let now = Instant::now();
                for (i, object, error) in retry_errors {
                    let Some(obj) = &batch[i].direct else { continue };
                    let attempts = retrying.entry(obj.key.clone()).or_insert(Attempts {
                        failures: 0,
                        next: now,
                    });
                    attempts.failures += 1;
                    if attempts.failures >= folder.max_attempts {
                        // Tried enough: a file that cannot be read is input that cannot be used.
                        tracing::warn!(file = %Escaped(&obj.key), reason = error.reason(), attempts = attempts.failures, "giving up on a file: {}", Escaped(&error.to_string()));
                        dead.push(given_up(&batch[i], &object, &error, attempts.failures));
                        retrying.remove(&obj.key);
                        files_done.insert(obj.key.clone());
                    } else {
                        attempts.next =
                            now + backoff(run.retry_pause, run.fetch.max_backoff, attempts.failures);
                    }
                }
                dirty = true;
            } else if !idle_done && last_input.elapsed() >= settings.engine.idle_after {
                // Caught up: what waits for later events is judged now.
                idle_done = true;
                // The present, or short of it for a historical trail.
                let now = crate::engine::idle_clock(
                    chrono::Utc::now().timestamp(),
                    engine.newest_event,
                    settings.engine.reorder_window,
                    settings.detector.alerts.dedup_window,
                );
                let (engine_back, found) = tokio::task::spawn_blocking(move || {
                    let found = engine.idle(now);
                    (engine, found)
                })
                .await
                .expect("detection does not panic");
                engine = engine_back;
                anomalies = found;
                dirty = true;
            }
        }
        if !anomalies.is_empty() || !dead.is_empty() {
            output.deliver(&anomalies, &dead).await?;
            report.anomalies += anomalies.len() as u64;
            anomalies.iter().for_each(|a| metrics.anomaly(a));
            for (_, d) in &dead {
                *report.dead_letters.entry(d.reason.clone()).or_default() += 1;
                metrics.dead_letters.with_label_values(&[d.reason.as_str()]).inc();
            }
        }
        metrics.principals.set(engine.principals() as i64);
        metrics.baseline_values.set(engine.values_held() as i64);
        metrics.events_held.set(engine.held() as i64);
        if report.checkpoints > 0 {
            metrics
                .checkpoint_age_seconds
                .set(last_checkpoint.elapsed().as_secs_f64());
        }
        if dirty && (stopping || last_checkpoint.elapsed() >= run.checkpoint_interval) {
            if let Some(store) = &checkpoints {
                store
                    .save(Checkpoint {
                        version: CHECKPOINT_VERSION,
                        files_done: files_done.clone(),
                        failed_reads: retrying.iter().map(|(f, a)| (f.clone(), a.failures)).collect(),
                        partitions: engine.snapshot(),
                        newest_event: engine.newest_event,
                        ..Checkpoint::default()
                    })
                    .await?;
            }
            report.checkpoints += 1;
            metrics
                .checkpoint_last_success
                .set(chrono::Utc::now().timestamp() as f64);
            metrics.checkpoint_age_seconds.set(0.0);
            tracing::info!(checkpoints = report.checkpoints, "checkpoint written");
            last_checkpoint = Instant::now();
            dirty = false;
        }
        if stopping {
            break;
        }
    }
    tracing::info!(
        files_done = files_done.len(),
        "stopped: the batch in hand finished and checkpointed"
    );
    tracing::info!(file = %latencies.file(), event_lag = %latencies.lag(), "latency at shutdown");
    Ok(report)
}

/// What one look at the folder found.
struct FolderListing {
    /// Files to process now, oldest delivery first.
    files: Vec<String>,
    /// Files not yet processed, including those waiting to be tried again.
    pending: usize,
    /// Paths that cannot be listed or read: symlink loops, dangling links, FIFOs.
    unlisted: Vec<ListProblem>,
}

/// Log files under `dir` not yet processed and not waiting to be tried again, oldest delivery
/// first, at most `max`. A folder that cannot be listed at all (gone for a while, say) holds no
/// files for now: the service goes on, and looks again at the next poll.
fn list_folder(
    dir: &Path,
    done: &BTreeSet<String>,
    retrying: &HashMap<String, Attempts>,
    max: usize,
) -> FolderListing {
    let listing = match scan_inputs(&[dir.to_owned()]) {
        Ok(listing) => listing,
        Err(e) => {
            tracing::warn!(folder = %Escaped(&dir.display().to_string()), "cannot list the watched folder: {}", Escaped(&e.to_string()));
            Listing::default()
        }
    };
    let now = Instant::now();
    let mut pending = 0;
    let mut files = Vec::new();
    for file in listing.files {
        let Some(key) = file
            .path()
            .and_then(|p| p.strip_prefix(dir).ok())
            .map(|p| p.to_string_lossy().into_owned())
        else {
            continue;
        };
        if done.contains(&key) {
            continue;
        }
        pending += 1;
        let waiting = retrying.get(&key).is_some_and(|a| a.next > now);
        if !waiting && files.len() < max {
            files.push(key);
        }
    }
    FolderListing {
        files,
        pending,
        unlisted: listing.problems,
    }
}

/// The dead letter of a path the listing could not take, named relative to the folder; logged.
fn unlisted_dead_letter(dir: &Path, problem: &ListProblem) -> KeyedDeadLetter {
    let path = problem.path.strip_prefix(dir).unwrap_or(&problem.path);
    let path = path.display().to_string();
    tracing::warn!(path = %Escaped(&path), reason = problem.reason.as_str(), "not processed: {}", Escaped(&problem.detail));
    (
        None,
        DeadLetter {
            reason: problem.reason.as_str().to_owned(),
            detail: problem.detail.clone(),
            source: DeadLetterSource {
                topic: String::new(),
                partition: 0,
                offset: 0,
            },
            object: Some(path),
            payload: String::new(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, time: i64) -> Event {
        let record = format!(
            r#"{{"eventVersion":"1.08","eventTime":"{}","eventSource":"s3.amazonaws.com","eventName":"GetObject","eventID":"{id}","userIdentity":{{"type":"IAMUser","arn":"arn:aws:iam::111122223333:user/a","accountId":"111122223333"}}}}"#,
            crate::event::format_time(time)
        );
        let raw: crate::record::RawRecord = serde_json::from_str(&record).unwrap();
        Event::from_record(&raw, &record, &Arc::from("test")).unwrap()
    }

    #[test]
    fn waits_between_reads_of_a_failing_file_double_up_to_the_longest() {
        let ms = Duration::from_millis;
        let waits: Vec<Duration> = (1..=6).map(|n| backoff(ms(100), ms(1000), n)).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        // A pause longer than the longest wait is still waited.
        assert_eq!(backoff(ms(5000), ms(1000), 3), ms(5000));
        assert_eq!(backoff(ms(100), ms(1000), u32::MAX), ms(1000));
    }

    fn duplicates_after_restore(checkpoint: &str) -> u64 {
        let mut settings = Settings::default();
        settings.engine.reorder_window = 0;
        let mut engine = Engine::new(&settings, None);
        engine.restore(&settings, serde_json::from_str(checkpoint).unwrap());
        let e = event("a", 1_700_000_000);
        let part = partition_of(&e.principal.key, engine.partitions.len() as u32) as usize;
        engine.partitions[part].offer(e, &mut Vec::new());
        engine.partitions[part].detector().stats.duplicates
    }

    #[test]
    fn checkpoints_of_every_version_restore_the_event_ids_they_hold() {
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
        let mut settings = Settings::default();
        settings.engine.reorder_window = 0;
        let mut engine = Engine::new(&settings, None);
        engine.restore(&settings, serde_json::from_str(&v2).unwrap());
        let written = Checkpoint {
            version: CHECKPOINT_VERSION,
            partitions: engine.snapshot(),
            ..Checkpoint::default()
        };
        assert_eq!(
            duplicates_after_restore(&serde_json::to_string(&written).unwrap()),
            1
        );
    }
}
