//! Batch replay: log files on disk or under an S3 prefix in, anomalies and a summary out.
//!
//! ```text
//!  files (sorted by delivery time) ─► workers (one per core): read, inflate, decode, rules
//!        ─► per-shard queues, by file number ─► detector shards (by principal) ─► sink
//! ```
//! Each worker takes the next file, decodes it, notes each event's shard and queues the file for
//! every shard under its number; then it advances its own shard, applying queued files in file
//! order, so that a shard's baselines stay in one core's cache. No thread is bound to a shard,
//! though: whichever worker holds a shard's lock advances it, and a worker helps another's shard
//! when that one falls half a window behind, when it must wait, and when the files run out, so
//! both cores stay on useful work. Each shard still sees its principals' events in the same order
//! on every run, so the anomalies raised do not depend on thread timing. Workers stay within a
//! window of files ahead of the slowest shard, which bounds the events held in the queues.
//!
//! Objects (`s3://` inputs) are fetched ahead of the workers, in file order, by one thread running
//! `fetch.concurrency` requests at a time; at most twice that many fetched objects wait for a
//! worker, which bounds the memory they hold.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::alert::AlertStats;
use crate::anomaly::{Anomaly, Kind, RuleInfo};
use crate::config::FetchSettings;
use crate::config::Settings;
use crate::decode::{DecodeLimits, DecodedFile, Decoder, FileError};
use crate::detect::Detector;
use crate::engine::{partition_of_hash, SharedEvents, StatePartition};
use crate::event::{Event, RecordSkip};
use crate::fetch::{FetchError, Fetcher};
use crate::metrics::Latencies;
use crate::notification::ObjectRef;
use crate::rules::RuleSet;

/// A file to replay and the name it goes by in reports.
#[derive(Debug, Clone)]
pub struct InputFile {
    pub location: Location,
    pub name: Arc<str>,
}

/// Where a file to replay is.
#[derive(Debug, Clone)]
pub enum Location {
    Path(PathBuf),
    Object(ObjectRef),
}

impl InputFile {
    /// A file on disk, named by its path.
    pub fn local(path: PathBuf) -> InputFile {
        InputFile {
            name: Arc::from(path.display().to_string()),
            location: Location::Path(path),
        }
    }

    /// An object, named by its `s3://` URL.
    pub fn object(object: ObjectRef) -> InputFile {
        InputFile {
            name: Arc::from(format!("s3://{}/{}", object.bucket, object.key)),
            location: Location::Object(object),
        }
    }

    /// The file's path, if it is on disk.
    pub fn path(&self) -> Option<&Path> {
        match &self.location {
            Location::Path(path) => Some(path),
            Location::Object(_) => None,
        }
    }

    /// The name's `YYYYMMDDTHHMMZ` delivery time, to sort by; empty if it has none.
    fn delivery_stamp(&self) -> &str {
        crate::decode::delivery_stamp(&self.name).unwrap_or("")
    }
}

/// Sorts `files` by the delivery time in their names, then by name, and drops repeats: replay
/// follows event time as closely as the names allow.
pub fn sort_inputs(files: &mut Vec<InputFile>) {
    // Each file's delivery time is read once, not once per comparison: for tens of thousands of
    // files, sorting was a noticeable share of a replay, spent before any worker starts.
    let mut keyed: Vec<(String, InputFile)> = std::mem::take(files)
        .into_iter()
        .map(|f| (f.delivery_stamp().to_owned(), f))
        .collect();
    keyed.sort_unstable_by(|a, b| (a.0.as_str(), &*a.1.name).cmp(&(b.0.as_str(), &*b.1.name)));
    keyed.dedup_by(|a, b| a.1.name == b.1.name);
    *files = keyed.into_iter().map(|(_, f)| f).collect();
}

fn percentiles_json(p: crate::metrics::Percentiles) -> serde_json::Value {
    serde_json::json!({"p50": p.p50, "p90": p.p90, "p99": p.p99, "p999": p.p999, "count": p.count})
}

/// Lists the files under `inputs`: files as given, folders recursively. Within folders only
/// `.json`, `.jsonl` and `.gz` files are taken; the rest are counted as skipped. The list is
/// sorted by the delivery time in CloudTrail file names, then by path, so that replay follows
/// event time as closely as the names allow.
///
/// The first path in a folder that cannot be listed (see [`scan_inputs`]) is an error; a replay
/// uses [`scan_inputs`], which lists everything else and reports such paths.
pub fn list_inputs(inputs: &[PathBuf]) -> Result<(Vec<InputFile>, usize), std::io::Error> {
    let listing = scan_inputs(inputs)?;
    if let Some(problem) = listing.problems.into_iter().next() {
        return Err(std::io::Error::other(problem.to_string()));
    }
    Ok((listing.files, listing.not_log_files))
}

/// Why a path found in a folder is not replayed. A bounded set: these are summary and metric
/// labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unlisted {
    /// A symbolic link to one of its own ancestor folders.
    SymlinkLoop,
    /// A symbolic link to nothing.
    DanglingSymlink,
    /// A folder (or link) that cannot be read: permissions, I/O.
    Unreadable,
    /// A FIFO, socket or device named like a log file: opening it could block or never end.
    NotARegularFile,
}

impl Unlisted {
    pub fn as_str(self) -> &'static str {
        match self {
            Unlisted::SymlinkLoop => "symlink_loop",
            Unlisted::DanglingSymlink => "dangling_symlink",
            Unlisted::Unreadable => "unreadable",
            Unlisted::NotARegularFile => "not_a_regular_file",
        }
    }
}

/// A path under an input folder that could not be listed or is not replayed, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {} ({detail})", .path.display(), .reason.as_str())]
pub struct ListProblem {
    pub path: PathBuf,
    pub reason: Unlisted,
    pub detail: String,
}

/// What [`scan_inputs`] found.
#[derive(Debug, Default)]
pub struct Listing {
    /// The log files, in replay order (see [`list_inputs`]).
    pub files: Vec<InputFile>,
    /// Files in folders not named like log files.
    pub not_log_files: usize,
    /// Paths in folders that could not be listed or read, each with its reason; the rest of the
    /// folder is listed.
    pub problems: Vec<ListProblem>,
}

/// [`list_inputs`], going on past what cannot be listed in a folder (a symlink loop, a dangling
/// symlink, an unreadable folder, a FIFO): each is reported in [`Listing::problems`]. Only an
/// input named on the command line that does not exist is an error.
pub fn scan_inputs(inputs: &[PathBuf]) -> Result<Listing, std::io::Error> {
    let mut files = Vec::new();
    let mut not_log_files = 0;
    let mut problems = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", input.display())))?;
        if meta.is_file() {
            files.push(input.clone());
            continue;
        }
        for entry in walkdir::WalkDir::new(input).follow_links(true) {
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    problems.push(list_problem(input, &error));
                    continue;
                }
            };
            if entry.file_type().is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy();
            let log_file = [".json", ".jsonl", ".gz"].iter().any(|ext| name.ends_with(ext));
            if !entry.file_type().is_file() {
                if log_file {
                    problems.push(ListProblem {
                        path: entry.into_path(),
                        reason: Unlisted::NotARegularFile,
                        detail: "not a regular file".into(),
                    });
                } else {
                    not_log_files += 1;
                }
            } else if log_file {
                files.push(entry.into_path());
            } else {
                not_log_files += 1;
            }
        }
    }
    let mut files = files.into_iter().map(InputFile::local).collect();
    sort_inputs(&mut files);
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    problems.dedup_by(|a, b| a.path == b.path);
    Ok(Listing {
        files,
        not_log_files,
        problems,
    })
}

/// Too many levels of symbolic links (Linux, the BSDs and macOS differ; this is Linux's).
const ELOOP: i32 = 40;

fn list_problem(input: &Path, error: &walkdir::Error) -> ListProblem {
    let path = error.path().unwrap_or(input).to_owned();
    let is_link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
    let io_kind = error.io_error().map(std::io::Error::kind);
    let reason = if error.loop_ancestor().is_some()
        || error.io_error().and_then(std::io::Error::raw_os_error) == Some(ELOOP)
    {
        Unlisted::SymlinkLoop
    } else if is_link && io_kind == Some(std::io::ErrorKind::NotFound) {
        Unlisted::DanglingSymlink
    } else {
        Unlisted::Unreadable
    };
    let detail = match error.io_error() {
        Some(io) => io.to_string(),
        None => match error.loop_ancestor() {
            Some(ancestor) => format!("leads back to {}", ancestor.display()),
            None => error.to_string(),
        },
    };
    ListProblem { path, reason, detail }
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
    /// Events that reached their partition more than the reorder window late, judged at once.
    pub late_events: u64,
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
    /// Examples as workers found them, with their file's number, until the summary is final.
    noted_failures: Vec<(usize, String)>,
    noted_skips: Vec<(usize, String)>,
    /// The thread freeing the replay's state after it returned (see [`Summary::wait_for_teardown`]).
    teardown: Option<std::thread::JoinHandle<()>>,
}

const EXAMPLES: usize = 20;

impl Summary {
    /// Waits until the replay's state is freed. A command that ends with the replay need not:
    /// the process ends first. One that goes on to other work, timed or not, waits here, so that
    /// the freeing does not take that work's core.
    pub fn wait_for_teardown(&mut self) {
        if let Some(teardown) = self.teardown.take() {
            let _ = teardown.join();
        }
    }

    pub fn events_per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Accounts for file number `seq`.
    fn add_file(&mut self, seq: usize, file: &InputFile, decoded: &DecodedFile) {
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
            tracing::warn!(file = %Escaped(&file.name), reason = error.reason(), salvaged = decoded.events.len(), "file failed: {error}");
            if self.noted_failures.len() < EXAMPLES {
                self.noted_failures.push((seq, format!("{}: {error}", file.name)));
            }
        }
        for skipped in &decoded.skipped {
            *self.records_skipped.entry(skipped.reason).or_default() += 1;
            if self.noted_skips.len() < EXAMPLES {
                self.noted_skips.push((
                    seq,
                    format!(
                        "{} record {}: {}",
                        file.name,
                        skipped.index,
                        skipped.reason.as_str()
                    ),
                ));
            }
        }
        if !decoded.skipped.is_empty() {
            tracing::info!(file = %Escaped(&file.name), skipped = decoded.skipped.len(), "records skipped");
        }
    }

    /// Accounts for the paths a folder listing could not take: each counts as a file read and
    /// failed, with its reason, and the first are named among the failures.
    pub fn add_unlisted(&mut self, problems: &[ListProblem]) {
        for problem in problems {
            self.files += 1;
            *self.files_failed.entry(problem.reason.as_str()).or_default() += 1;
            tracing::warn!(path = %Escaped(&problem.path.display().to_string()), reason = problem.reason.as_str(), "not replayed: {}", problem.detail);
        }
        let room = EXAMPLES.saturating_sub(self.failures.len());
        let named: Vec<String> = problems.iter().take(room).map(ToString::to_string).collect();
        self.failures.splice(0..0, named);
        self.failures.truncate(EXAMPLES);
    }

    /// Adds another worker's accounting to this one.
    fn merge(&mut self, other: Summary) {
        let add = |to: &mut BTreeMap<&'static str, u64>, from: BTreeMap<&'static str, u64>| {
            from.into_iter().for_each(|(k, v)| *to.entry(k).or_default() += v)
        };
        self.files += other.files;
        self.files_decoded += other.files_decoded;
        add(&mut self.files_skipped, other.files_skipped);
        add(&mut self.files_failed, other.files_failed);
        self.records += other.records;
        for (reason, n) in other.records_skipped {
            *self.records_skipped.entry(reason).or_default() += n;
        }
        self.noted_failures.extend(other.noted_failures);
        self.noted_skips.extend(other.noted_skips);
    }

    /// The first examples in file order, whichever worker found them.
    fn settle_examples(&mut self) {
        for (noted, examples) in [
            (&mut self.noted_failures, &mut self.failures),
            (&mut self.noted_skips, &mut self.skipped_examples),
        ] {
            noted.sort();
            examples.extend(noted.drain(..).take(EXAMPLES).map(|(_, e)| e));
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
                        "late": self.late_events, "skipped": skipped, "skipped_examples": self.skipped_examples},
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
            s += &format!("  failed: {}\n", Escaped(failure));
        }
        let skipped: BTreeMap<&'static str, u64> = self
            .records_skipped
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        s += &format!(
            "records: {} read, {} events, {} duplicates, {} late, skipped [{}]\n",
            self.records,
            self.events,
            self.duplicates,
            self.late_events,
            join(&skipped)
        );
        for example in &self.skipped_examples {
            s += &format!("  skipped: {}\n", Escaped(example));
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

/// Text from the input (file names, above all) as it is shown on a terminal or in a log: control
/// characters (line breaks, escape sequences) written as Rust escapes, so that a file named with a
/// newline cannot start a line of its own.
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{85}') {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Files a worker may run ahead of the slowest shard, per worker.
const WINDOW_PER_WORKER: usize = 32;

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
    let limits = DecodeLimits {
        max_inflated_bytes: settings.max_file_bytes,
    };
    let partitions = settings.engine.partitions as usize;
    let shards: Vec<Shard> = (0..partitions)
        .map(|i| {
            let detector = Detector::with_rules(settings.detector.clone(), partitions, rules.clone());
            Shard::new(i, StatePartition::local(detector, settings.engine.reorder_window))
        })
        .collect();
    let plan = Plan {
        files: &files,
        next_file: AtomicUsize::new(0),
        window: WINDOW_PER_WORKER * workers,
        shards: &shards,
        latencies: Arc::new(Latencies::default()),
        spare: (0..workers)
            .map(|_| Mutex::new(Vec::new()))
            .collect::<Vec<_>>()
            .into(),
        fetched: Prefetched::default(),
    };
    let (anomaly_tx, anomaly_rx) = bounded::<Written>(64);

    let mut anomalies = BTreeMap::new();
    let mut rule_matches: BTreeMap<String, u64> = BTreeMap::new();
    let mut write_result = Ok(());
    let mut write = |batch: Written| {
        for (kind, n) in Kind::ALL.into_iter().zip(batch.kinds) {
            if n > 0 {
                *anomalies.entry(kind).or_default() += n;
            }
        }
        for (rule, n) in batch.rules {
            // The rule's id is copied once, not for each batch of its anomalies.
            match rule_matches.get_mut(&rule.id) {
                Some(count) => *count += n,
                None => {
                    rule_matches.insert(rule.id.clone(), n);
                }
            }
        }
        if write_result.is_ok() {
            write_result = sink.write_all(&batch.lines);
        }
    };

    let mut summary = std::thread::scope(|scope| {
        if files.iter().any(|f| matches!(f.location, Location::Object(_))) {
            let fetch = settings.replay_fetch();
            scope.spawn(|| plan.fetched.fetch_all(&files, fetch));
        }
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let (plan, rules, anomalies) = (&plan, rules.clone(), anomaly_tx.clone());
                let skew = settings.max_event_time_skew;
                scope.spawn(move || work(worker, plan, (limits, skew), rules, &anomalies, progress))
            })
            .collect();
        drop(anomaly_tx);
        anomaly_rx.iter().for_each(&mut write);
        let mut summary = Summary {
            latencies: Arc::clone(&plan.latencies),
            ..Summary::default()
        };
        for handle in handles {
            summary.merge(handle.join().expect("a replay worker does not panic"));
        }
        summary
    });

    // Every queued file was applied by the worker that queued it, or by the one holding the shard
    // then (see `Shard::advance`); what is left is each partition's reorder buffer and open alerts.
    let mut finished = Vec::with_capacity(shards.len());
    for shard in shards {
        let mut state = shard.state.into_inner().expect("a shard's lock is not poisoned");
        debug_assert!(shard.pending.into_inner().map_or(true, |p| p.is_empty()));
        let mut out = std::mem::take(&mut state.out);
        state.partition.finish(&mut out);
        write(Written::of(&mut out));
        summary.late_events += state.partition.stats.late;
        let detector = state.partition.detector();
        summary.events += detector.stats.events;
        summary.duplicates += detector.stats.duplicates;
        summary.principals += detector.principals();
        summary.values_held += detector.values_held();
        summary.bytes_held += detector.bytes_held();
        let alerts = detector.alert_stats();
        summary.alerts.shadowed += alerts.shadowed;
        summary.alerts.suppressed += alerts.suppressed;
        summary.alerts.folded += alerts.folded;
        finished.push(state);
    }
    // Freeing every principal's baselines and every remembered event ID took a twentieth of a
    // replay's time, on one core, after the work was done: a thread of its own frees them while
    // the summary is written (and the process may end first).
    let teardown = std::thread::Builder::new()
        .name("replay-teardown".into())
        .spawn(move || drop(finished));
    write_result?;
    sink.flush()?;
    summary.settle_examples();
    summary.anomalies = anomalies;
    summary.rule_matches = rule_matches;
    summary.elapsed = started.elapsed();
    summary.teardown = teardown.ok();
    Ok(summary)
}

/// What the workers share.
struct Plan<'a> {
    files: &'a [InputFile],
    /// The number of the next file to take.
    next_file: AtomicUsize,
    /// How many files a worker may be ahead of the slowest shard.
    window: usize,
    shards: &'a [Shard],
    latencies: Arc<Latencies>,
    /// Per worker, event vectors every shard is done with, for the worker to decode into again.
    spare: Spare,
    /// Objects fetched ahead, by file number.
    fetched: Prefetched,
}

impl Plan<'_> {
    /// A vector for `worker` to decode into. Its old events are dropped here, by the thread that
    /// built them: frees stay local to the allocating thread's heap.
    fn spare_events(&self, worker: usize) -> Vec<Event> {
        let mut events = self.spare[worker]
            .lock()
            .map(|mut s| s.pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        events.clear();
        events
    }
}

/// Per worker, event vectors to decode into again.
type Spare = Arc<[Mutex<Vec<Vec<Event>>>]>;

/// One file's events, shared by every shard, each taking those of its principals, and held by
/// a shard while one of its events waits in the reorder buffer.
struct FileEvents {
    events: Vec<Event>,
    /// The shard of each event.
    shards: Vec<u32>,
    /// The worker that decoded them.
    worker: usize,
    /// Where the vector goes back to when every shard is done with it, and how many may wait
    /// there.
    spare: Spare,
    keep: usize,
}

impl AsRef<[Event]> for FileEvents {
    fn as_ref(&self) -> &[Event] {
        &self.events
    }
}

impl Drop for FileEvents {
    /// The last shard done with a file hands its vector back, events and all: the worker that
    /// built them drops them when it takes the vector again.
    fn drop(&mut self) {
        if let Ok(mut spare) = self.spare[self.worker].lock() {
            // As many as can be in flight: a vector dropped here would be allocated (and its
            // pages faulted in) again for a later file.
            if spare.len() < self.keep {
                spare.push(std::mem::take(&mut self.events));
            }
        }
    }
}

/// A batch of anomalies as JSON lines, with what the summary counts of them. Written by the
/// worker that raised them, while their strings are in its cache and freed by the thread that
/// made them: written by the thread that writes to the sink, each anomaly's two dozen strings
/// were a cache miss each there, most of what an anomaly cost in an alert storm.
struct Written {
    lines: Vec<u8>,
    /// Anomalies by kind, in the order of [`Kind::ALL`].
    kinds: [u64; Kind::ALL.len()],
    /// Rule matches by rule, each rule once.
    rules: Vec<(Arc<RuleInfo>, u64)>,
}

impl Written {
    /// The anomalies of `batch` written, leaving it empty (with its room) for the next ones.
    fn of(batch: &mut Vec<Anomaly>) -> Written {
        let mut written = Written {
            // Most anomalies take one to two kilobytes.
            lines: Vec::with_capacity(batch.len() * 2048),
            kinds: [0; Kind::ALL.len()],
            rules: Vec::new(),
        };
        for anomaly in batch.drain(..) {
            if let Some(i) = Kind::ALL.iter().position(|&k| k == anomaly.kind) {
                written.kinds[i] += 1;
            }
            if let Some(rule) = &anomaly.rule {
                // A batch holds the anomalies of a few rules at most.
                match written.rules.iter_mut().find(|(r, _)| Arc::ptr_eq(r, rule)) {
                    Some((_, count)) => *count += 1,
                    None => written.rules.push((Arc::clone(rule), 1)),
                }
            }
            anomaly.write_json(&mut written.lines);
            written.lines.push(b'\n');
        }
        written
    }
}

/// One state partition and the files queued for it.
struct Shard {
    index: u32,
    /// Decoded files not yet applied, by file number; every file is queued, with events for the
    /// shard or not, so the shard can tell when the next file is ready.
    pending: Mutex<BTreeMap<usize, Arc<FileEvents>>>,
    state: Mutex<ShardState>,
    /// `state.next`, readable without the lock.
    next: AtomicUsize,
}

struct ShardState {
    partition: StatePartition,
    /// The number of the next file to apply.
    next: usize,
    out: Vec<Anomaly>,
}

impl Shard {
    fn new(index: usize, partition: StatePartition) -> Shard {
        Shard {
            index: index as u32,
            pending: Mutex::new(BTreeMap::new()),
            state: Mutex::new(ShardState {
                partition,
                next: 0,
                out: Vec::new(),
            }),
            next: AtomicUsize::new(0),
        }
    }

    fn queue(&self, seq: usize, events: Arc<FileEvents>) {
        self.pending
            .lock()
            .expect("the queue's lock is not poisoned")
            .insert(seq, events);
    }

    fn take(&self, seq: usize) -> Option<Arc<FileEvents>> {
        self.pending
            .lock()
            .expect("the queue's lock is not poisoned")
            .remove(&seq)
    }

    fn has(&self, seq: usize) -> bool {
        self.pending
            .lock()
            .expect("the queue's lock is not poisoned")
            .contains_key(&seq)
    }

    /// Applies queued files in order for as long as the next one is there, unless another
    /// worker is already doing so.
    fn advance(&self, anomalies: &Sender<Written>) {
        loop {
            let Ok(mut guard) = self.state.try_lock() else {
                return;
            };
            let state = &mut *guard;
            while let Some(file) = self.take(state.next) {
                let shared: SharedEvents = file.clone();
                for (at, &shard) in file.shards.iter().enumerate() {
                    if shard == self.index {
                        state.partition.offer_shared(&shared, at, &mut state.out);
                    }
                }
                state.next += 1;
                self.next.store(state.next, Ordering::Release);
            }
            if !state.out.is_empty() {
                // The sink may have stopped on a write error, which replay reports.
                let _ = anomalies.send(Written::of(&mut state.out));
            }
            let next = state.next;
            drop(guard);
            // A file queued while this worker held the lock found it taken and was left here.
            if !self.has(next) {
                return;
            }
        }
    }
}

fn work(
    worker: usize,
    plan: &Plan<'_>,
    (limits, max_event_time_skew): (DecodeLimits, i64),
    rules: Option<Arc<RuleSet>>,
    anomalies: &Sender<Written>,
    progress: &(dyn Fn(u64) + Sync),
) -> Summary {
    let mut summary = Summary {
        latencies: Arc::clone(&plan.latencies),
        ..Summary::default()
    };
    let mut decoder = Decoder::with_rules(limits, rules).with_event_time_skew(max_event_time_skew);
    let mut bytes = Vec::new();
    let shards = plan.shards.len();
    loop {
        let seq = plan.next_file.fetch_add(1, Ordering::Relaxed);
        let Some(file) = plan.files.get(seq) else {
            // Every file is queued or being decoded by another worker, which applies what it
            // queues to its own shard; what is left on the others is applied here.
            for shard in plan.shards {
                shard.advance(anomalies);
            }
            return summary;
        };
        // Every earlier file is taken: the slowest shard waits for one another worker is still
        // decoding, or for one queued and left to the shard's own worker, applied here.
        while seq >= slowest(plan.shards) + plan.window {
            for shard in plan.shards {
                shard.advance(anomalies);
            }
            if seq >= slowest(plan.shards) + plan.window {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        bytes.clear();
        let failed = |error| DecodedFile {
            error: Some(error),
            ..DecodedFile::default()
        };
        let decoded = match &file.location {
            Location::Path(path) => match read_bounded(path, limits.max_inflated_bytes, &mut bytes) {
                Ok(()) => decoder.decode_into(&file.name, &bytes, plan.spare_events(worker)),
                Err(error) => failed(error),
            },
            Location::Object(_) => match plan.fetched.take(seq) {
                Ok(object) => decoder.decode_into(&file.name, &object, plan.spare_events(worker)),
                Err(error) => failed(FileError::Fetch(error)),
            },
        };
        if bytes.capacity() > KEEP_READ_BUFFER {
            // One large file does not keep its size in every worker for the rest of the replay.
            bytes = Vec::new();
        }
        summary.add_file(seq, file, &decoded);
        progress(1);
        let events = Arc::new(FileEvents {
            shards: decoded
                .events
                .iter()
                .map(|event| partition_of_hash(event.partition_hash(), shards as u32))
                .collect(),
            events: decoded.events,
            worker,
            spare: Arc::clone(&plan.spare),
            keep: plan.window,
        });
        for shard in plan.shards {
            shard.queue(seq, Arc::clone(&events));
        }
        drop(events);
        // A worker keeps to its own shards, whose baselines then stay in its core's cache, and
        // helps another only when that one has fallen half a window behind.
        let workers = plan.spare.len();
        for (i, shard) in plan.shards.iter().enumerate() {
            if i % workers == worker || shard.next.load(Ordering::Acquire) + plan.window / 2 <= seq {
                shard.advance(anomalies);
            }
        }
    }
}

/// A fetched object, and its room among those held ahead (freed when a worker takes it).
type Slot = (Result<bytes::Bytes, FetchError>, OwnedSemaphorePermit);

/// Objects fetched ahead of the workers, by file number, each waiting for the worker that took
/// its number.
#[derive(Default)]
struct Prefetched {
    slots: Mutex<HashMap<usize, Slot>>,
    arrived: Condvar,
}

impl Prefetched {
    /// Fetches the objects among `files`, in file order, `concurrency` at a time, holding at most
    /// twice that many for the workers. Runs on a thread of its own until every object is fetched
    /// or has failed.
    fn fetch_all(&self, files: &[InputFile], settings: FetchSettings) {
        use futures::StreamExt as _;
        let ahead = Arc::new(Semaphore::new(2 * settings.concurrency.max(1)));
        let concurrency = settings.concurrency.max(1);
        let fetcher = Fetcher::new(settings);
        let objects = files.iter().enumerate().filter_map(|(seq, f)| match &f.location {
            Location::Object(object) => Some((seq, object)),
            Location::Path(_) => None,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for fetching starts");
        runtime.block_on(
            futures::stream::iter(objects)
                .map(|(seq, object)| {
                    let (fetcher, ahead) = (&fetcher, Arc::clone(&ahead));
                    async move {
                        let room = ahead
                            .acquire_owned()
                            .await
                            .expect("the semaphore is never closed");
                        (seq, fetcher.fetch(object).await, room)
                    }
                })
                .buffered(concurrency)
                .for_each(|(seq, fetched, room)| {
                    self.slots
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(seq, (fetched, room));
                    self.arrived.notify_all();
                    std::future::ready(())
                }),
        );
    }

    /// Waits for object number `seq` and takes it, making room for another.
    fn take(&self, seq: usize) -> Result<bytes::Bytes, FetchError> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some((fetched, _room)) = slots.remove(&seq) {
                return fetched;
            }
            slots = self.arrived.wait(slots).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Read buffers larger than this are released after their file.
const KEEP_READ_BUFFER: usize = 64 << 20;

/// Reads a file whole into `bytes`, unless it holds more than `limit` bytes: a file larger than
/// the largest inflated file accepted is refused by its size, before it is read (a compressed file
/// larger than the limit would inflate past it), and one that grows while read stops at the limit.
pub fn read_bounded(path: &Path, limit: usize, bytes: &mut Vec<u8>) -> Result<(), FileError> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size > limit as u64 {
        return Err(FileError::TooLarge { limit });
    }
    bytes.reserve(size as usize);
    file.take(limit as u64 + 1).read_to_end(bytes)?;
    if bytes.len() > limit {
        bytes.clear();
        return Err(FileError::TooLarge { limit });
    }
    Ok(())
}

fn slowest(shards: &[Shard]) -> usize {
    shards
        .iter()
        .map(|s| s.next.load(Ordering::Acquire))
        .min()
        .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_listed_by_delivery_time_then_path_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "b/111111111111_CloudTrail_us-east-1_20260302T0010Z_x.json.gz",
            "a/222222222222_CloudTrail_eu-west-1_20260302T0015Z_y.json.gz",
            "a/111111111111_CloudTrail_us-east-1_20260302T0010Z_z.json.gz",
            "c/loose.json",
            "c/notes.txt",
        ];
        for name in names {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"{}").unwrap();
        }
        let root = dir.path().to_owned();
        let listed_twice = [root.clone(), root.join("a")];

        let (files, not_log_files) = list_inputs(&listed_twice).unwrap();

        let relative: Vec<_> = files
            .iter()
            .map(|f| {
                f.path()
                    .unwrap()
                    .strip_prefix(&root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            relative,
            [
                "c/loose.json",
                "a/111111111111_CloudTrail_us-east-1_20260302T0010Z_z.json.gz",
                "b/111111111111_CloudTrail_us-east-1_20260302T0010Z_x.json.gz",
                "a/222222222222_CloudTrail_eu-west-1_20260302T0015Z_y.json.gz",
            ]
        );
        assert_eq!(not_log_files, 1);
        assert_eq!(&*files[0].name, root.join("c/loose.json").display().to_string());
    }
}
