//! Batch replay: log files on disk in, anomalies and a summary out.
//!
//! ```text
//!  files (sorted by delivery time) ─► dispatcher ─► decode workers (N) ─► router (file order)
//!        ─► detector shards (by principal) ─► sink (JSON lines)
//! ```
//! Decoding, the expensive part, runs on every core. The router takes decoded files back in their
//! sorted order, so each shard sees its principals' events in the same order on every run and the
//! anomalies raised do not depend on thread timing. Every queue is bounded: at most a few files
//! per worker are in memory at once.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::alert::AlertStats;
use crate::anomaly::{Anomaly, Kind};
use crate::config::Settings;
use crate::decode::{DecodeLimits, DecodedFile, Decoder};
use crate::detect::{shard_of, Detector, DetectorStats};
use crate::event::{Event, RecordSkip};
use crate::metrics::Latencies;
use crate::rules::RuleSet;

/// A file to replay and the name it goes by in reports.
#[derive(Debug, Clone)]
pub struct InputFile {
    pub path: PathBuf,
    pub name: Arc<str>,
}

fn percentiles_json(p: crate::metrics::Percentiles) -> serde_json::Value {
    serde_json::json!({"p50": p.p50, "p90": p.p90, "p99": p.p99, "p999": p.p999, "count": p.count})
}

/// Lists the files under `inputs`: files as given, folders recursively. Within folders only
/// `.json`, `.jsonl` and `.gz` files are taken; the rest are counted as skipped. The list is
/// sorted by the delivery time in CloudTrail file names, then by path, so that replay follows
/// event time as closely as the names allow.
pub fn list_inputs(inputs: &[PathBuf]) -> Result<(Vec<InputFile>, usize), std::io::Error> {
    let mut files = Vec::new();
    let mut not_log_files = 0;
    for input in inputs {
        let meta = std::fs::metadata(input)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", input.display())))?;
        if meta.is_file() {
            files.push(input.clone());
            continue;
        }
        for entry in walkdir::WalkDir::new(input).follow_links(true) {
            let entry = entry.map_err(std::io::Error::other)?;
            if !entry.file_type().is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy();
            if [".json", ".jsonl", ".gz"].iter().any(|ext| name.ends_with(ext)) {
                files.push(entry.into_path());
            } else {
                not_log_files += 1;
            }
        }
    }
    files.sort_by(|a, b| delivery_time(a).cmp(delivery_time(b)).then_with(|| a.cmp(b)));
    files.dedup();
    let files = files
        .into_iter()
        .map(|path| InputFile {
            name: Arc::from(path.display().to_string()),
            path,
        })
        .collect();
    Ok((files, not_log_files))
}

/// The `YYYYMMDDTHHMMZ` in `<account>_CloudTrail_<region>_<time>_<id>.json.gz`, if present.
fn delivery_time(path: &Path) -> &str {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.split('_')
        .nth(3)
        .filter(|t| t.len() == 14 && t.ends_with('Z'))
        .unwrap_or("")
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Summary {
    pub files: u64,
    pub files_decoded: u64,
    pub files_skipped: BTreeMap<&'static str, u64>,
    pub files_failed: BTreeMap<&'static str, u64>,
    /// The first failures, with their file and reason.
    pub failures: Vec<String>,
    pub records: u64,
    pub records_skipped: BTreeMap<RecordSkip, u64>,
    /// The first skipped records, with their file and index.
    pub skipped_examples: Vec<String>,
    pub events: u64,
    pub duplicates: u64,
    pub principals: usize,
    pub values_held: usize,
    pub bytes_held: usize,
    pub anomalies: BTreeMap<Kind, u64>,
    /// Emitted rule matches by rule id.
    pub rule_matches: BTreeMap<String, u64>,
    pub alerts: AlertStats,
    /// Per-file processing time and event lag (of each file's newest event).
    pub latencies: Arc<Latencies>,
    pub elapsed: Duration,
}

const EXAMPLES: usize = 20;

impl Summary {
    pub fn events_per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn add_file(&mut self, file: &InputFile, decoded: &DecodedFile) {
        self.files += 1;
        self.latencies.record_file(decoded.took);
        if let Some(newest) = decoded.events.iter().map(|e| e.time).max() {
            self.latencies.record_lag(chrono::Utc::now().timestamp() - newest);
        }
        self.records += (decoded.events.len() + decoded.skipped.len()) as u64;
        if let Some(skip) = decoded.skip {
            *self.files_skipped.entry(skip.as_str()).or_default() += 1;
        } else if decoded.error.is_none() {
            self.files_decoded += 1;
        }
        if let Some(error) = &decoded.error {
            *self.files_failed.entry(error.reason()).or_default() += 1;
            tracing::warn!(file = %file.name, reason = error.reason(), salvaged = decoded.events.len(), "file failed: {error}");
            if self.failures.len() < EXAMPLES {
                self.failures.push(format!("{}: {error}", file.name));
            }
        }
        for skipped in &decoded.skipped {
            *self.records_skipped.entry(skipped.reason).or_default() += 1;
            if self.skipped_examples.len() < EXAMPLES {
                self.skipped_examples.push(format!(
                    "{} record {}: {}",
                    file.name,
                    skipped.index,
                    skipped.reason.as_str()
                ));
            }
        }
        if !decoded.skipped.is_empty() {
            tracing::info!(file = %file.name, skipped = decoded.skipped.len(), "records skipped");
        }
    }

    /// The summary as JSON, for scripts and tests.
    pub fn to_json(&self) -> serde_json::Value {
        let skipped: BTreeMap<&'static str, u64> = self
            .records_skipped
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        let anomalies: BTreeMap<&'static str, u64> =
            self.anomalies.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        serde_json::json!({
            "files": {"read": self.files, "decoded": self.files_decoded, "skipped": self.files_skipped,
                      "failed": self.files_failed, "failures": self.failures},
            "records": {"read": self.records, "events": self.events, "duplicates": self.duplicates,
                        "skipped": skipped, "skipped_examples": self.skipped_examples},
            "principals": self.principals,
            "baseline_values": self.values_held,
            "baseline_bytes": self.bytes_held,
            "anomalies": anomalies,
            "rule_matches": self.rule_matches,
            "alerts": {"folded": self.alerts.folded, "suppressed": self.alerts.suppressed, "shadowed": self.alerts.shadowed},
            "latency": {
                "file_seconds": percentiles_json(self.latencies.file()),
                "event_lag_seconds": percentiles_json(self.latencies.lag()),
            },
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "events_per_second": self.events_per_second(),
        })
    }

    /// The end-of-run report, as printed on stderr.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let join = |m: &BTreeMap<&'static str, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        s += &format!(
            "files: {} read, {} decoded, skipped [{}], failed [{}]\n",
            self.files,
            self.files_decoded,
            join(&self.files_skipped),
            join(&self.files_failed)
        );
        for failure in &self.failures {
            s += &format!("  failed: {failure}\n");
        }
        let skipped: BTreeMap<&'static str, u64> = self
            .records_skipped
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        s += &format!(
            "records: {} read, {} events, {} duplicates, skipped [{}]\n",
            self.records,
            self.events,
            self.duplicates,
            join(&skipped)
        );
        for example in &self.skipped_examples {
            s += &format!("  skipped: {example}\n");
        }
        s += &format!(
            "principals: {}, baseline values held: {} (~{} KiB)\n",
            self.principals,
            self.values_held,
            self.bytes_held / 1024
        );
        let anomalies: BTreeMap<&'static str, u64> =
            self.anomalies.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        s += &format!(
            "anomalies: {} [{}]\n",
            anomalies.values().sum::<u64>(),
            join(&anomalies)
        );
        s += &format!("latency per file: {}\n", self.latencies.file());
        s += &format!("event lag (newest event per file): {}\n", self.latencies.lag());
        s += &format!(
            "alerts: {} repeats folded, {} suppressed, {} shadowed\n",
            self.alerts.folded, self.alerts.suppressed, self.alerts.shadowed
        );
        s += &format!(
            "throughput: {:.0} events/s ({} records in {:.2}s)\n",
            self.events_per_second(),
            self.records,
            self.elapsed.as_secs_f64()
        );
        s
    }
}

/// Replays `files` through the detectors, writing each anomaly as one JSON line to `sink`.
/// `progress` is told of each file decoded.
pub fn replay(
    files: Vec<InputFile>,
    settings: &Settings,
    rules: Option<Arc<RuleSet>>,
    sink: &mut dyn Write,
    progress: &(dyn Fn(u64) + Sync),
) -> std::io::Result<Summary> {
    let started = Instant::now();
    let workers = settings.workers.get();
    let shards = std::env::var("TW_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(workers);
    let limits = DecodeLimits {
        max_inflated_bytes: settings.max_file_bytes,
    };

    let (work_tx, work_rx) = bounded::<(InputFile, Sender<DecodedFile>)>(workers);
    let (order_tx, order_rx) = bounded::<(InputFile, Receiver<DecodedFile>)>(workers * 2);
    let (anomaly_tx, anomaly_rx) = bounded::<Vec<Anomaly>>(64);

    std::thread::scope(|scope| -> std::io::Result<Summary> {
        scope.spawn(move || dispatch(files, work_tx, order_tx));
        for _ in 0..workers {
            let work_rx = work_rx.clone();
            let rules = rules.clone();
            scope.spawn(move || decode_worker(work_rx, limits, rules));
        }
        drop(work_rx);

        let mut shard_txs = Vec::with_capacity(shards);
        let mut shard_handles = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = bounded::<Vec<Event>>(8);
            shard_txs.push(tx);
            let anomaly_tx = anomaly_tx.clone();
            let detector = Detector::with_rules(settings.detector.clone(), shards, rules.clone());
            shard_handles.push(scope.spawn(move || run_shard(detector, rx, anomaly_tx)));
        }
        drop(anomaly_tx);

        let router = scope.spawn(move || route(order_rx, shard_txs, progress));

        let mut anomalies = BTreeMap::new();
        let mut rule_matches: BTreeMap<String, u64> = BTreeMap::new();
        let mut write_result = Ok(());
        for batch in anomaly_rx {
            for anomaly in batch {
                *anomalies.entry(anomaly.kind).or_default() += 1;
                if let Some(rule) = &anomaly.rule {
                    *rule_matches.entry(rule.id.clone()).or_default() += 1;
                }
                if write_result.is_ok() {
                    write_result = serde_json::to_writer(&mut *sink, &anomaly)
                        .map_err(std::io::Error::from)
                        .and_then(|()| sink.write_all(b"\n"));
                }
            }
        }
        write_result?;
        sink.flush()?;

        let mut summary = router.join().expect("the router does not panic");
        for handle in shard_handles {
            let report = handle.join().expect("a shard does not panic");
            summary.events += report.stats.events;
            summary.duplicates += report.stats.duplicates;
            summary.principals += report.principals;
            summary.values_held += report.values;
            summary.bytes_held += report.bytes;
            summary.alerts.shadowed += report.alerts.shadowed;
            summary.alerts.suppressed += report.alerts.suppressed;
            summary.alerts.folded += report.alerts.folded;
        }
        summary.anomalies = anomalies;
        summary.rule_matches = rule_matches;
        summary.elapsed = started.elapsed();
        Ok(summary)
    })
}

/// Hands files to the workers in order, and the matching result slots to the router in the same
/// order. Both queues are bounded, so at most a few files are in flight.
fn dispatch(
    files: Vec<InputFile>,
    work: Sender<(InputFile, Sender<DecodedFile>)>,
    order: Sender<(InputFile, Receiver<DecodedFile>)>,
) {
    for file in files {
        let (tx, rx) = bounded(1);
        if order.send((file.clone(), rx)).is_err() || work.send((file, tx)).is_err() {
            return;
        }
    }
}

fn decode_worker(
    work: Receiver<(InputFile, Sender<DecodedFile>)>,
    limits: DecodeLimits,
    rules: Option<Arc<RuleSet>>,
) {
    let mut decoder = Decoder::with_rules(limits, rules);
    let mut bytes = Vec::new();
    for (file, result) in work {
        bytes.clear();
        let read = std::fs::File::open(&file.path).and_then(|mut f| f.read_to_end(&mut bytes));
        let decoded = match read {
            Ok(_) => decoder.decode(&file.name, &bytes),
            Err(e) => DecodedFile {
                error: Some(e.into()),
                ..DecodedFile::default()
            },
        };
        // The router may have stopped; nothing is lost by not sending then.
        let _ = result.send(decoded);
    }
}

/// Takes decoded files in order, accounts for them, and sends each shard its events.
fn route(
    order: Receiver<(InputFile, Receiver<DecodedFile>)>,
    shards: Vec<Sender<Vec<Event>>>,
    progress: &(dyn Fn(u64) + Sync),
) -> Summary {
    let mut summary = Summary::default();
    for (file, result) in order {
        let decoded = result.recv().unwrap_or_else(|_| DecodedFile {
            error: Some(std::io::Error::other("decode worker stopped").into()),
            ..DecodedFile::default()
        });
        summary.add_file(&file, &decoded);
        progress(1);
        let per_shard = decoded.events.len() / shards.len() + 16;
        let mut batches: Vec<Vec<Event>> = (0..shards.len()).map(|_| Vec::with_capacity(per_shard)).collect();
        for event in decoded.events {
            batches[shard_of(&event.principal.key, shards.len())].push(event);
        }
        for (tx, batch) in shards.iter().zip(batches) {
            if !batch.is_empty() && tx.send(batch).is_err() {
                return summary;
            }
        }
    }
    summary
}

/// What a shard reports at the end.
struct ShardReport {
    stats: DetectorStats,
    alerts: AlertStats,
    principals: usize,
    values: usize,
    bytes: usize,
}

fn run_shard(
    mut detector: Detector,
    events: Receiver<Vec<Event>>,
    anomalies: Sender<Vec<Anomaly>>,
) -> ShardReport {
    let mut out = Vec::new();
    for batch in events {
        for event in &batch {
            detector.process(event, &mut out);
        }
        if !out.is_empty() && anomalies.send(std::mem::take(&mut out)).is_err() {
            break;
        }
    }
    detector.flush(&mut out);
    if !out.is_empty() {
        // The sink may have stopped on a write error, which replay reports.
        let _ = anomalies.send(out);
    }
    ShardReport {
        stats: detector.stats.clone(),
        alerts: detector.alert_stats().clone(),
        principals: detector.principals(),
        values: detector.values_held(),
        bytes: detector.bytes_held(),
    }
}
