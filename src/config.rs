//! Configuration: one TOML file, every key optional with a documented default.
//!
//! In: TOML text. Out: [`Settings`], validated typed values. Parsing rejects unknown keys (serde's
//! `deny_unknown_fields`, whose message names the key); validation reports every bad value at
//! once, each with its dotted key name. Nothing here does I/O beyond reading the file.
//!
//! The typed settings every stage takes are defined here too ([`RunSettings`], [`FetchSettings`],
//! [`AlertPolicy`], [`Role`], ...), so that this module depends on no stage: only on the names
//! of the output schema's kinds and severities ([`crate::anomaly`]) and on the number of baseline
//! dimensions. What the stages do with their settings (an S3 client from [`StoreSettings`], a
//! suppression matching an anomaly) is implemented beside the stage.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use ipnet::IpNet;

use crate::anomaly::{is_kind, parse_severity, Severity};

/// The file as written. Each field's doc line is its reference entry in the README.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub replay: RawReplay,
    pub engine: RawEngine,
    pub baseline: RawBaseline,
    pub novelty: RawNovelty,
    pub rate: RawRate,
    pub errors: RawErrors,
    pub dormant: RawDormant,
    pub rules: RawRules,
    pub alerts: RawAlerts,
    /// Suppressions: an anomaly matching every condition of one entry is dropped.
    pub suppress: Vec<RawSuppression>,
    pub source: RawSource,
    pub sink: RawSink,
    pub kafka: RawKafka,
    pub s3: RawS3,
    pub fetch: RawFetch,
    pub checkpoint: RawCheckpoint,
    pub batch: RawBatch,
    pub metrics: RawMetrics,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Address `run` serves /metrics, /healthz and /readyz on; empty: not served.
    pub listen: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: "127.0.0.1:9898".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSource {
    /// Where `run` reads notifications: "kafka" (the notifications topic) or "folder" (watch `folder`).
    pub kind: String,
    /// The folder watched when `kind = "folder"`.
    pub folder: Option<PathBuf>,
    /// How often the folder is listed for new files.
    pub poll_interval: String,
    /// Reads of a folder file that keeps failing (unreadable) before it is dead-lettered; waits double from `fetch.retry_pause` up to `fetch.max_backoff`.
    pub max_attempts: u32,
}

impl Default for RawSource {
    fn default() -> Self {
        RawSource {
            kind: "kafka".into(),
            folder: None,
            poll_interval: "5s".into(),
            max_attempts: 5,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSink {
    /// Where `run` writes anomalies: "kafka" (the anomalies topic), "file" (`path`) or "stdout".
    pub kind: String,
    /// The JSON-lines file when `kind = "file"`.
    pub path: Option<PathBuf>,
    /// Dead letters for the file and stdout sinks, as JSON lines (default: standard error).
    pub dead_letters: Option<PathBuf>,
}

impl Default for RawSink {
    fn default() -> Self {
        RawSink {
            kind: "kafka".into(),
            path: None,
            dead_letters: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKafka {
    /// Bootstrap servers.
    pub brokers: String,
    /// Consumer group of the `run` processes.
    pub group_id: String,
    /// Topic of CloudTrail delivery notifications.
    pub notifications_topic: String,
    /// Topic anomalies are produced to, keyed by principal.
    pub anomalies_topic: String,
    /// Topic between the decode and detect stages: decoded events keyed by principal; created with `engine.partitions` partitions if missing.
    pub events_topic: String,
    /// Topic of dead letters: input that could not be processed, with the reason.
    pub dead_letter_topic: String,
    /// librdkafka properties passed through unchanged (security.protocol, sasl.*, ssl.*, ...).
    pub librdkafka: BTreeMap<String, String>,
}

/// The librdkafka options are shown by name only: SASL and TLS passwords are among them.
impl std::fmt::Debug for RawKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawKafka")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("notifications_topic", &self.notifications_topic)
            .field("anomalies_topic", &self.anomalies_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("librdkafka", &self.librdkafka.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for RawKafka {
    fn default() -> Self {
        RawKafka {
            brokers: "localhost:9092".into(),
            group_id: "trailwatch".into(),
            notifications_topic: "cloudtrail-notifications".into(),
            anomalies_topic: "trailwatch-anomalies".into(),
            events_topic: "trailwatch-events".into(),
            dead_letter_topic: "trailwatch-dead-letters".into(),
            librdkafka: BTreeMap::new(),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawS3 {
    /// Region of the log buckets (default: AWS_REGION, else us-east-1).
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store (default: AWS).
    pub endpoint: Option<String>,
    /// Allow plain HTTP to `endpoint`.
    pub allow_http: bool,
    /// Access key id, "env:NAME" or "file:/path" (default: the standard AWS credential sources).
    pub access_key_id: Option<String>,
    /// Secret access key, "env:NAME" or "file:/path"; required with `access_key_id`.
    pub secret_access_key: Option<String>,
    /// Session token of temporary keys, "env:NAME" or "file:/path".
    pub session_token: Option<String>,
}

/// The keys are shown by whether they are set only.
impl std::fmt::Debug for RawS3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("RawS3")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &set(&self.access_key_id))
            .field("secret_access_key", &set(&self.secret_access_key))
            .field("session_token", &set(&self.session_token))
            .finish()
    }
}

/// Keys whose values may be secrets: never quoted in a message.
fn secret_key(path: &[Step<'_>]) -> bool {
    matches!(
        path,
        [Step::Key("kafka"), Step::Key("librdkafka"), ..]
            | [
                Step::Key("s3"),
                Step::Key("access_key_id" | "secret_access_key" | "session_token")
            ]
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFetch {
    /// Objects fetched at once, at most.
    pub concurrency: usize,
    /// Retries of a transient fetch failure, with backoff.
    pub retries: usize,
    /// Longest wait between retries.
    pub max_backoff: String,
    /// Pause before a notification whose object still failed is tried again.
    pub retry_pause: String,
}

impl Default for RawFetch {
    fn default() -> Self {
        RawFetch {
            concurrency: 16,
            retries: 5,
            max_backoff: "10s".into(),
            retry_pause: "5s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCheckpoint {
    /// Where state is checkpointed: a folder, "file:///path" or "s3://bucket/prefix"; empty: nowhere.
    pub url: String,
    /// How often state is checkpointed and offsets committed.
    pub interval: String,
}

impl Default for RawCheckpoint {
    fn default() -> Self {
        RawCheckpoint {
            url: String::new(),
            interval: "60s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBatch {
    /// Notifications processed together, at most.
    pub max_messages: usize,
    /// Longest wait to fill a batch.
    pub max_wait: String,
}

impl Default for RawBatch {
    fn default() -> Self {
        RawBatch {
            max_messages: 256,
            max_wait: "1s".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRules {
    /// Folder of Sigma rules replacing the shipped ones (`--rules` on the command line wins).
    pub dir: Option<PathBuf>,
    /// Folders of Sigma rules loaded beside them (SigmaHQ's CloudTrail rules, say); a rule there
    /// that cannot be used is left out with its reason (`--extra-rules` adds to the list).
    pub extra_dirs: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAlerts {
    /// Repeats of one (kind, rule, principal) within this much event time fold into one anomaly ("0s": emit each).
    pub dedup_window: String,
    /// Rules (id or title) evaluated and counted but not emitted.
    pub shadow_rules: Vec<String>,
    /// Severity per rule (id or title): info, low, medium, high or critical.
    pub severity: BTreeMap<String, String>,
}

impl Default for RawAlerts {
    fn default() -> Self {
        RawAlerts {
            dedup_window: "15m".into(),
            shadow_rules: Vec::new(),
            severity: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSuppression {
    /// Only anomalies of these rules (id or title); empty: any.
    pub rules: Vec<String>,
    /// Only anomalies of these kinds (new_value, rate_spike, ...); empty: any.
    pub kinds: Vec<String>,
    /// Principal keys.
    pub principals: Vec<String>,
    /// Account IDs.
    pub accounts: Vec<String>,
    /// Source networks, as CIDRs.
    pub cidrs: Vec<String>,
    /// Substrings of the user agent.
    pub user_agents: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEngine {
    /// State partitions principals are spread over (by Kafka's key hash); in a cluster, the events topic's partition count, fixed once the topic exists.
    pub partitions: u32,
    /// Event time an event waits in its partition's reorder buffer, so that events arriving out of order are judged in order; "0s" judges them as they come.
    pub reorder_window: String,
    /// Wall-clock quiet after which a caught-up notifications partition counts as idle, and the decode stage moves its mark to the present.
    pub idle_after: String,
}

impl Default for RawEngine {
    fn default() -> Self {
        RawEngine {
            partitions: 12,
            reorder_window: "10m".into(),
            idle_after: "10s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReplay {
    /// Threads that decode files and run the detector shards (one shard each); 0 means one per core.
    pub workers: usize,
    /// Largest log file accepted, in bytes, inflated or on disk; larger files fail with `too_large`.
    pub max_file_bytes: usize,
    /// Farthest a record's eventTime may be from its file's delivery time ("0s": unchecked).
    pub max_event_time_skew: String,
}

impl Default for RawReplay {
    fn default() -> Self {
        RawReplay {
            workers: 0,
            max_file_bytes: 1 << 30,
            max_event_time_skew: "1d".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBaseline {
    /// How long a value is remembered after it was last seen ("30d").
    pub window: String,
    /// History span a principal needs before it raises novelty anomalies ("3d").
    pub learning_period: String,
    /// Events a principal needs before it raises novelty anomalies.
    pub learning_events: u64,
    /// Values remembered per principal and dimension; past it the least recently seen is evicted.
    pub max_values_per_dimension: usize,
    /// A principal silent for this long is forgotten ("90d"); must exceed `dormant.after`.
    pub idle_expiry: String,
    /// Principals held at most; past it the least recently active are forgotten first.
    pub max_principals: usize,
    /// eventIDs remembered for de-duplication (per shard, in two generations).
    pub dedup_capacity: usize,
}

impl Default for RawBaseline {
    fn default() -> Self {
        RawBaseline {
            window: "30d".into(),
            learning_period: "3d".into(),
            learning_events: 100,
            max_values_per_dimension: 48,
            idle_expiry: "90d".into(),
            max_principals: 1_000_000,
            dedup_capacity: 1_000_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNovelty {
    /// Raise new-value anomalies.
    pub enabled: bool,
    /// Least score (0..1) for an event's novel dimensions to raise an anomaly.
    pub min_score: f64,
    /// Weight of a new eventSource (service).
    pub event_source: f64,
    /// Weight of a new eventSource:eventName (API call).
    pub api_call: f64,
    /// Weight of a new sourceIPAddress.
    pub source_ip: f64,
    /// Weight of a new network (/24 or /64).
    pub network: f64,
    /// Weight of a new user-agent family.
    pub user_agent: f64,
    /// Weight of a new awsRegion.
    pub region: f64,
}

impl Default for RawNovelty {
    fn default() -> Self {
        RawNovelty {
            enabled: true,
            min_score: 0.3,
            event_source: 0.3,
            api_call: 0.15,
            source_ip: 0.1,
            network: 0.3,
            user_agent: 0.25,
            region: 0.35,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRate {
    /// Raise rate-spike anomalies.
    pub enabled: bool,
    /// Length of the interval events are counted in ("1h").
    pub interval: String,
    /// Least events in one interval for a spike.
    pub min_events: u64,
    /// A spike is this many times the principal's mean events per active interval, or more.
    pub factor: f64,
    /// Active intervals of history a principal needs before spikes are judged.
    pub min_intervals: u64,
}

impl Default for RawRate {
    fn default() -> Self {
        RawRate {
            enabled: true,
            interval: "1h".into(),
            min_events: 200,
            factor: 10.0,
            min_intervals: 12,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawErrors {
    /// Raise error-spike anomalies (AccessDenied, Unauthorized*, *Denied).
    pub enabled: bool,
    /// Least denied calls in one rate interval for a spike.
    pub min_errors: u64,
    /// Least share (0..1) of the interval's calls that were denied.
    pub min_ratio: f64,
    /// A spike is this many times the principal's mean denied calls per active interval, or more.
    pub factor: f64,
}

impl Default for RawErrors {
    fn default() -> Self {
        RawErrors {
            enabled: true,
            min_errors: 20,
            min_ratio: 0.3,
            factor: 5.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDormant {
    /// Raise dormant-principal anomalies.
    pub enabled: bool,
    /// Silence after which a principal's next event is a wake-up ("7d").
    pub after: String,
    /// Events a principal must have had before its silence counts.
    pub min_events: u64,
}

impl Default for RawDormant {
    fn default() -> Self {
        RawDormant {
            enabled: true,
            after: "7d".into(),
            min_events: 20,
        }
    }
}

/// Longest event-time span a setting may give (windows, periods, expiries): a hundred years,
/// far beyond any use, and far inside the range of the seconds event time is counted in.
pub const MAX_EVENT_TIME_SPAN: Duration = Duration::from_secs(100 * 365 * 86_400);
const MAX_EVENT_TIME_SPAN_TEXT: &str = "36500d";
/// Longest wall-clock wait a service setting may give (polls, backoffs, pauses, intervals).
pub const MAX_SERVICE_WAIT: Duration = Duration::from_secs(86_400);
const MAX_SERVICE_WAIT_TEXT: &str = "1d";
/// Most threads `replay.workers` may start.
pub const MAX_WORKERS: u64 = 1024;
/// Largest `replay.max_file_bytes`: 4 GiB, beyond any CloudTrail log file (50 MB compressed).
pub const MAX_FILE_BYTES: u64 = 4 << 30;
/// Most principals or eventIDs held: each costs memory.
pub const MAX_ENTRIES: u64 = 1_000_000_000;
/// Most objects fetched at once.
pub const MAX_FETCH_CONCURRENCY: usize = 1024;
/// Most retries of one fetch.
pub const MAX_FETCH_RETRIES: usize = 100;
/// Most notifications in one batch.
pub const MAX_BATCH_MESSAGES: usize = 100_000;
/// Most reads of a folder file that keeps failing.
pub const MAX_READ_ATTEMPTS: u32 = 1000;

/// A configuration value that names a secret rather than holding it: `"env:NAME"` is the value of
/// environment variable `NAME`, `"file:/path"` the contents of a file (without a final line
/// break, as a mounted secret often ends). Any other value is itself. Errors name the variable
/// or file, never a value.
pub fn resolve_secret(value: &str) -> Result<String, String> {
    if let Some(name) = value.strip_prefix("env:") {
        std::env::var(name).map_err(|e| match e {
            std::env::VarError::NotPresent => format!("environment variable {name} is not set"),
            std::env::VarError::NotUnicode(_) => format!("environment variable {name} is not UTF-8"),
        })
    } else if let Some(path) = value.strip_prefix("file:") {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        Ok(text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text)
            .to_owned())
    } else {
        Ok(value.to_owned())
    }
}

/// Every unknown key and wrongly typed value in `table`, each with its dotted key. Each key is
/// tried alone against the file's structure, so that one problem does not hide the next (serde
/// stops at the first). Values under `kafka.librdkafka` are not quoted in messages: they may be
/// secrets.
/// Also returns the table without them, for the values' own checks.
fn structure_problems(table: &toml::Table) -> (Vec<String>, toml::Table) {
    let mut problems = Vec::new();
    let mut clean = toml::Table::new();
    for (key, value) in table {
        let mut path = vec![Step::Key(key)];
        if let Some(value) = check_value(&mut path, value, &mut problems) {
            clean.insert(key.clone(), value);
        }
    }
    (problems, clean)
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn dotted(path: &[Step<'_>]) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Key(k)
                if k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Step::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(&format!("{k:?}"));
            }
            Step::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// A configuration holding only `leaf` at `path` (arrays of one element).
fn only(path: &[Step<'_>], leaf: toml::Value) -> toml::Value {
    path.iter().rev().fold(leaf, |inner, step| match step {
        Step::Key(k) => toml::Value::Table(toml::Table::from_iter([((*k).to_owned(), inner)])),
        Step::Index(_) => toml::Value::Array(vec![inner]),
    })
}

/// `value` with what does not fit removed, or `None` when nothing of it fits.
fn check_value<'a>(
    path: &mut Vec<Step<'a>>,
    value: &'a toml::Value,
    problems: &mut Vec<String>,
) -> Option<toml::Value> {
    let fits = |candidate: toml::Value| RawConfig::deserialize(candidate).map(|_| ());
    let report = |path: &[Step<'_>], e: toml::de::Error, problems: &mut Vec<String>| {
        let key = dotted(path);
        let secret = secret_key(path);
        let message = if secret && !e.message().starts_with("unknown field") {
            "must be a string".to_owned()
        } else {
            e.message().trim().replace('\n', "; ")
        };
        problems.push(format!("{key}: {message}"));
    };
    match value {
        toml::Value::Table(table) => {
            // A table where a table belongs, then each of its keys alone.
            if let Err(e) = fits(only(path, toml::Value::Table(toml::Table::new()))) {
                report(path, e, problems);
                return None;
            }
            let mut clean = toml::Table::new();
            for (key, inner) in table {
                path.push(Step::Key(key));
                if let Some(inner) = check_value(path, inner, problems) {
                    clean.insert(key.clone(), inner);
                }
                path.pop();
            }
            Some(toml::Value::Table(clean))
        }
        toml::Value::Array(items) if items.iter().any(toml::Value::is_table) => {
            let mut clean = Vec::new();
            for (i, item) in items.iter().enumerate() {
                path.push(Step::Index(i));
                // An element is kept, what fits of it, so later elements keep their numbers.
                let item = check_value(path, item, problems)
                    .unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
                clean.push(item);
                path.pop();
            }
            Some(toml::Value::Array(clean))
        }
        leaf => match fits(only(path, leaf.clone())) {
            Ok(()) => Some(leaf.clone()),
            Err(e) => {
                report(path, e, problems);
                None
            }
        },
    }
}

/// Validated settings. Shown (`{:?}`) with the librdkafka option values withheld.
#[derive(Clone)]
pub struct Settings {
    pub run: RunSettings,
    pub engine: EngineSettings,
    pub workers: NonZeroUsize,
    pub rules_dir: Option<PathBuf>,
    /// Folders of rules loaded beside `rules_dir`'s (or the shipped ones).
    pub rules_extra: Vec<PathBuf>,
    pub max_file_bytes: usize,
    /// Seconds a record's eventTime may be from its file's delivery time; 0: unchecked.
    pub max_event_time_skew: i64,
    pub detector: DetectorSettings,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The run settings withhold secrets themselves (Kafka options, S3 keys).
        f.debug_struct("Settings")
            .field("run", &self.run)
            .field("workers", &self.workers)
            .field("rules_dir", &self.rules_dir)
            .field("rules_extra", &self.rules_extra)
            .field("max_file_bytes", &self.max_file_bytes)
            .field("max_event_time_skew", &self.max_event_time_skew)
            .field("detector", &self.detector)
            .finish()
    }
}

/// How state is partitioned and events ordered (see [`crate::engine`]).
#[derive(Debug, Clone, Copy)]
pub struct EngineSettings {
    pub partitions: u32,
    /// Seconds of event time.
    pub reorder_window: i64,
    pub idle_after: Duration,
}

/// What the stateful half needs; times in seconds of event time.
#[derive(Debug, Clone)]
pub struct DetectorSettings {
    pub window: i64,
    pub learning_period: i64,
    pub learning_events: u64,
    pub max_values_per_dimension: usize,
    pub idle_expiry: i64,
    pub max_principals: usize,
    pub dedup_capacity: usize,
    pub novelty: Option<NoveltySettings>,
    pub rate: Option<RateSettings>,
    pub errors: Option<ErrorSettings>,
    pub dormant_after: Option<i64>,
    pub dormant_min_events: u64,
    /// Rate interval, used by the rate and error detectors alike.
    pub interval: i64,
    pub alerts: AlertPolicy,
}

#[derive(Debug, Clone)]
pub struct NoveltySettings {
    pub min_score: f64,
    /// Weights in [`crate::baseline::Dimension`] order.
    pub weights: [f64; crate::baseline::DIMENSIONS],
}

#[derive(Debug, Clone)]
pub struct RateSettings {
    pub min_events: u64,
    pub factor: f64,
    pub min_intervals: u64,
}

#[derive(Debug, Clone)]
pub struct ErrorSettings {
    pub min_errors: u64,
    pub min_ratio: f64,
    pub factor: f64,
}

/// Every problem found in a configuration, each naming its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("{path}: invalid configuration:\n  {}", .problems.join("\n  "))]
    Invalid { path: String, problems: Vec<String> },
}

// Typed settings: what the configuration is validated into, and what the stages take.

/// Which stages a `run` process takes part in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    Decode,
    Detect,
    /// Both, in one process (still through the events topic, so replicas form a cluster).
    #[default]
    All,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "decode" => Ok(Role::Decode),
            "detect" => Ok(Role::Detect),
            "all" => Ok(Role::All),
            other => Err(format!("\"decode\", \"detect\" or \"all\", got {other:?}")),
        }
    }
}

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

/// Kafka settings; `options` pass through to librdkafka unchanged (TLS, SASL, ...). Shown
/// (`{:?}`) with the options' values withheld: SASL and TLS passwords are among them.
#[derive(Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group_id: String,
    pub notifications_topic: String,
    pub anomalies_topic: String,
    pub events_topic: String,
    pub dead_letter_topic: String,
    pub options: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options: BTreeMap<&str, &str> = self.options.keys().map(|k| (k.as_str(), "<withheld>")).collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("notifications_topic", &self.notifications_topic)
            .field("anomalies_topic", &self.anomalies_topic)
            .field("events_topic", &self.events_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("options", &options)
            .finish()
    }
}

/// Everything `trailwatch run` needs.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub source: Source,
    pub sink: Sink,
    /// Dead letters for non-Kafka sinks: a JSON-lines file (default: beside the sink, or stderr).
    pub dead_letter_file: Option<PathBuf>,
    pub kafka: KafkaSettings,
    pub fetch: FetchSettings,
    /// `file:///path`, a plain path, or `s3://bucket/prefix`; `None`: no checkpoints.
    pub checkpoint_url: Option<String>,
    pub checkpoint_interval: Duration,
    pub batch_max_messages: usize,
    pub batch_max_wait: Duration,
    /// Pause before retrying a notification whose object failed transiently.
    pub retry_pause: Duration,
    /// Tries of an object that keeps failing before it is dead-lettered: a folder's file at once,
    /// an object named by a notification only while other objects are fetched meanwhile (when
    /// nothing can be fetched, the store is down, and notifications wait for it).
    pub max_attempts: u32,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Which stages this process runs (Kafka source only).
    pub role: Role,
    /// The `[s3]` settings, for an `s3://` checkpoint URL.
    pub s3: StoreSettings,
}

/// Where objects come from.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// S3 or an S3-compatible store.
    S3 {
        /// Region; `None`: from the environment (`AWS_REGION`), else `us-east-1`.
        region: Option<String>,
        /// Endpoint URL for S3-compatible stores; `None`: AWS.
        endpoint: Option<String>,
        /// Allow plain HTTP (for a local S3-compatible store).
        allow_http: bool,
        /// Keys from the configuration; `None`: the standard AWS credential sources.
        credentials: Option<S3Credentials>,
    },
    /// A folder holding objects by key; the bucket name is ignored.
    Local(PathBuf),
}

/// S3 keys given in the configuration (each perhaps read from the environment or a file, see
/// [`crate::config::resolve_secret`]). Shown (`{:?}`) with the secret and the token withheld.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .finish()
    }
}

/// A password, key or token: its value is never shown, in `{:?}` or `{}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the client that sends it; never for a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<withheld>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<withheld>")
    }
}

#[derive(Debug, Clone)]
pub struct FetchSettings {
    pub store: StoreSettings,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Retries of a transient failure before giving up on this attempt.
    pub retries: usize,
    /// Longest wait between retries.
    pub max_backoff: Duration,
    /// Largest object fetched, in bytes.
    pub max_object_bytes: usize,
}

/// One suppression: an anomaly matching every condition given is dropped. Within a condition,
/// any listed value matches.
#[derive(Debug, Clone, Default)]
pub struct Suppression {
    pub rules: HashSet<String>,
    pub kinds: HashSet<String>,
    pub principals: HashSet<String>,
    pub accounts: HashSet<String>,
    pub cidrs: Vec<IpNet>,
    /// Substrings of the user agent.
    pub user_agents: Vec<String>,
}

/// The lifecycle's settings.
#[derive(Debug, Clone, Default)]
pub struct AlertPolicy {
    /// Seconds of event time within which repeats fold into one anomaly; 0 emits each.
    pub dedup_window: i64,
    /// Rules (by id or title) evaluated and counted but not emitted.
    pub shadow_rules: HashSet<String>,
    /// Severity per rule (by id or title).
    pub severity: HashMap<String, Severity>,
    pub suppressions: Vec<Suppression>,
}

/// Passthrough properties refused because they would weaken delivery: offsets are committed by
/// trailwatch only after the work behind them is done, and every record is acknowledged by all
/// in-sync replicas, idempotently.
pub fn weakening_option(key: &str, value: &str) -> Option<&'static str> {
    match (key, value.trim()) {
        ("enable.auto.commit", v) if v != "false" => {
            Some("offsets are committed by trailwatch once the work behind them is done")
        }
        ("enable.auto.offset.store", v) if v != "false" => {
            Some("offsets are stored by trailwatch once the work behind them is done")
        }
        ("enable.idempotence", v) if v != "true" => {
            Some("records must not be duplicated or reordered by producer retries")
        }
        ("acks" | "request.required.acks", v) if v != "all" && v != "-1" => {
            Some("records must be acknowledged by every in-sync replica")
        }
        _ => None,
    }
}

impl Settings {
    /// How a replay fetches `s3://` inputs: the `[s3]` store, with the `[fetch]` limits.
    pub fn replay_fetch(&self) -> FetchSettings {
        FetchSettings {
            store: self.run.s3.clone(),
            ..self.run.fetch.clone()
        }
    }

    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        Settings::from_toml(&text, &name)
    }

    /// Parses and validates TOML text; `origin` names it in errors. Every unknown key, wrongly
    /// typed value and bad value is reported, not only the first.
    pub fn from_toml(text: &str, origin: &str) -> Result<Settings, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            source: Box::new(e),
        })?;
        let invalid = |problems| ConfigError::Invalid {
            path: origin.to_owned(),
            problems,
        };
        let (mut problems, clean) = structure_problems(&table);
        // What fits is checked too, so that a file's every problem is named in one go. Each key
        // fits alone; together they could still not (not so far): said as serde says it.
        let raw = RawConfig::deserialize(toml::Value::Table(clean))
            .map_err(|e| invalid(vec![e.message().trim().replace('\n', "; ")]))?;
        match raw.validate() {
            Ok(settings) if problems.is_empty() => Ok(settings),
            Ok(_) => Err(invalid(problems)),
            Err(more) => {
                problems.extend(more);
                Err(invalid(problems))
            }
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        RawConfig::default().validate().expect("the defaults are valid")
    }
}

impl RawConfig {
    /// Checks every value and builds typed settings, or lists every problem.
    pub fn validate(&self) -> Result<Settings, Vec<String>> {
        let mut problems = Vec::new();
        let mut duration = |key: &str, text: &str| -> i64 {
            match humantime::parse_duration(text) {
                Ok(d) if d > MAX_EVENT_TIME_SPAN => {
                    problems.push(format!(
                        "{key}: at most {}, got {text:?}",
                        MAX_EVENT_TIME_SPAN_TEXT
                    ));
                    1
                }
                Ok(d) if d >= Duration::from_secs(1) => d.as_secs() as i64,
                Ok(_) => {
                    problems.push(format!("{key}: must be at least one second, got {text:?}"));
                    1
                }
                Err(e) => {
                    problems.push(format!(
                        "{key}: not a duration ({e}), got {text:?}; write e.g. \"30d\", \"1h\""
                    ));
                    1
                }
            }
        };
        let window = duration("baseline.window", &self.baseline.window);
        let learning_period = duration("baseline.learning_period", &self.baseline.learning_period);
        let idle_expiry = duration("baseline.idle_expiry", &self.baseline.idle_expiry);
        let interval = duration("rate.interval", &self.rate.interval);
        let dormant_after = duration("dormant.after", &self.dormant.after);
        let dedup_window = match humantime::parse_duration(&self.alerts.dedup_window) {
            Ok(d) if d > MAX_EVENT_TIME_SPAN => {
                problems.push(format!(
                    "alerts.dedup_window: at most {}, got {:?}",
                    MAX_EVENT_TIME_SPAN_TEXT, self.alerts.dedup_window
                ));
                0
            }
            Ok(d) => d.as_secs() as i64,
            Err(e) => {
                problems.push(format!(
                    "alerts.dedup_window: not a duration ({e}), got {:?}",
                    self.alerts.dedup_window
                ));
                0
            }
        };
        let max_event_time_skew = match humantime::parse_duration(&self.replay.max_event_time_skew) {
            Ok(d) if d > MAX_EVENT_TIME_SPAN => {
                problems.push(format!(
                    "replay.max_event_time_skew: at most {}, got {:?}",
                    MAX_EVENT_TIME_SPAN_TEXT, self.replay.max_event_time_skew
                ));
                0
            }
            Ok(d) => d.as_secs() as i64,
            Err(e) => {
                problems.push(format!(
                    "replay.max_event_time_skew: not a duration ({e}), got {:?}",
                    self.replay.max_event_time_skew
                ));
                0
            }
        };
        let mut severity = std::collections::HashMap::new();
        for (rule, level) in &self.alerts.severity {
            match parse_severity(level) {
                Some(s) => {
                    severity.insert(rule.clone(), s);
                }
                None => problems.push(format!(
                    "alerts.severity.{rule:?}: not a severity (info, low, medium, high, critical), got {level:?}"
                )),
            }
        }
        let mut suppressions = Vec::new();
        for (i, raw) in self.suppress.iter().enumerate() {
            let mut cidrs = Vec::new();
            for cidr in &raw.cidrs {
                match cidr
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                {
                    Ok(net) => cidrs.push(net),
                    Err(_) => problems.push(format!("suppress[{i}].cidrs: not a CIDR, got {cidr:?}")),
                }
            }
            for kind in raw.kinds.iter().filter(|k| !is_kind(k)) {
                problems.push(format!("suppress[{i}].kinds: not an anomaly kind, got {kind:?}"));
            }
            let empty = raw.principals.is_empty()
                && raw.accounts.is_empty()
                && cidrs.is_empty()
                && raw.user_agents.is_empty()
                && raw.rules.is_empty()
                && raw.kinds.is_empty();
            if empty {
                problems.push(format!(
                    "suppress[{i}]: names no condition, so it would drop every anomaly"
                ));
            }
            suppressions.push(Suppression {
                rules: raw.rules.iter().cloned().collect(),
                kinds: raw.kinds.iter().cloned().collect(),
                principals: raw.principals.iter().cloned().collect(),
                accounts: raw.accounts.iter().cloned().collect(),
                cidrs,
                user_agents: raw.user_agents.clone(),
            });
        }

        let mut positive = |key: &str, value: u64| {
            if value == 0 {
                problems.push(format!("{key}: must be greater than 0"));
            }
        };
        positive("replay.max_file_bytes", self.replay.max_file_bytes as u64);
        positive(
            "baseline.max_values_per_dimension",
            self.baseline.max_values_per_dimension as u64,
        );
        positive("baseline.max_principals", self.baseline.max_principals as u64);
        positive("baseline.dedup_capacity", self.baseline.dedup_capacity as u64);
        positive("rate.min_events", self.rate.min_events);
        positive("errors.min_errors", self.errors.min_errors);

        let n = &self.novelty;
        let fractions = [
            ("novelty.min_score", n.min_score),
            ("novelty.event_source", n.event_source),
            ("novelty.api_call", n.api_call),
            ("novelty.source_ip", n.source_ip),
            ("novelty.network", n.network),
            ("novelty.user_agent", n.user_agent),
            ("novelty.region", n.region),
            ("errors.min_ratio", self.errors.min_ratio),
        ];
        for (key, value) in fractions {
            if !(0.0..=1.0).contains(&value) {
                problems.push(format!("{key}: must be between 0 and 1, got {value}"));
            }
        }
        for (key, value) in [
            ("rate.factor", self.rate.factor),
            ("errors.factor", self.errors.factor),
        ] {
            if !(value >= 1.0 && value.is_finite()) {
                problems.push(format!("{key}: must be at least 1, got {value}"));
            }
        }
        if self.baseline.max_values_per_dimension > u16::MAX as usize {
            problems.push(format!("baseline.max_values_per_dimension: at most {}", u16::MAX));
        }
        for (key, value, most) in [
            ("replay.workers", self.replay.workers as u64, MAX_WORKERS),
            (
                "replay.max_file_bytes",
                self.replay.max_file_bytes as u64,
                MAX_FILE_BYTES,
            ),
            (
                "baseline.max_principals",
                self.baseline.max_principals as u64,
                MAX_ENTRIES,
            ),
            (
                "baseline.dedup_capacity",
                self.baseline.dedup_capacity as u64,
                MAX_ENTRIES,
            ),
        ] {
            if value > most {
                problems.push(format!("{key}: at most {most}, got {value}"));
            }
        }
        if self.dormant.enabled && idle_expiry <= dormant_after {
            problems.push(format!(
                "baseline.idle_expiry: must exceed dormant.after ({}), or dormant principals are forgotten before they wake",
                self.dormant.after
            ));
        }
        let engine = self.engine_settings(&mut problems);
        let run = self.run_settings(&mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        let workers = NonZeroUsize::new(self.replay.workers)
            .or_else(|| std::thread::available_parallelism().ok())
            .unwrap_or(NonZeroUsize::MIN);
        Ok(Settings {
            run,
            engine,
            workers,
            rules_dir: self.rules.dir.clone(),
            rules_extra: self.rules.extra_dirs.clone(),
            max_file_bytes: self.replay.max_file_bytes,
            max_event_time_skew,
            detector: DetectorSettings {
                window,
                learning_period,
                learning_events: self.baseline.learning_events,
                max_values_per_dimension: self.baseline.max_values_per_dimension,
                idle_expiry,
                max_principals: self.baseline.max_principals,
                dedup_capacity: self.baseline.dedup_capacity,
                novelty: n.enabled.then_some(NoveltySettings {
                    min_score: n.min_score,
                    weights: [
                        n.event_source,
                        n.api_call,
                        n.source_ip,
                        n.network,
                        n.user_agent,
                        n.region,
                    ],
                }),
                rate: self.rate.enabled.then_some(RateSettings {
                    min_events: self.rate.min_events,
                    factor: self.rate.factor,
                    min_intervals: self.rate.min_intervals,
                }),
                errors: self.errors.enabled.then_some(ErrorSettings {
                    min_errors: self.errors.min_errors,
                    min_ratio: self.errors.min_ratio,
                    factor: self.errors.factor,
                }),
                dormant_after: self.dormant.enabled.then_some(dormant_after),
                dormant_min_events: self.dormant.min_events,
                interval,
                alerts: AlertPolicy {
                    dedup_window,
                    shadow_rules: self.alerts.shadow_rules.iter().cloned().collect(),
                    severity,
                    suppressions,
                },
            },
        })
    }
}

/// The most state partitions: a Kafka topic's partitions are counted in an `i32`, and each
/// partition holds a detector, whose capacities are divided between partitions.
const MOST_PARTITIONS: u32 = 10_000;

impl RawConfig {
    fn engine_settings(&self, problems: &mut Vec<String>) -> EngineSettings {
        let e = &self.engine;
        if !(1..=MOST_PARTITIONS).contains(&e.partitions) {
            problems.push(format!(
                "engine.partitions: from 1 to {MOST_PARTITIONS}, got {}",
                e.partitions
            ));
        }
        let mut duration = |key: &str, text: &str, most: Duration| match humantime::parse_duration(text) {
            Ok(d) if d <= most => d,
            Ok(_) => {
                problems.push(format!(
                    "{key}: at most {}, got {text:?}",
                    humantime::format_duration(most)
                ));
                Duration::ZERO
            }
            Err(e) => {
                problems.push(format!("{key}: not a duration ({e}), got {text:?}"));
                Duration::ZERO
            }
        };
        let reorder_window = duration(
            "engine.reorder_window",
            &e.reorder_window,
            Duration::from_secs(7 * 86_400),
        );
        let idle_after = duration("engine.idle_after", &e.idle_after, Duration::from_secs(86_400));
        EngineSettings {
            partitions: e.partitions.clamp(1, MOST_PARTITIONS),
            reorder_window: reorder_window.as_secs() as i64,
            idle_after: idle_after.max(Duration::from_millis(100)),
        }
    }

    /// The `[s3]` keys, each read from where it names; `None` when no key is given.
    fn s3_credentials(&self, problems: &mut Vec<String>) -> Option<S3Credentials> {
        let mut read = |key: &str, value: &Option<String>| {
            let value = value.as_deref()?;
            resolve_secret(value)
                .map_err(|problem| problems.push(format!("s3.{key}: {problem}")))
                .ok()
        };
        let id = read("access_key_id", &self.s3.access_key_id);
        let secret = read("secret_access_key", &self.s3.secret_access_key);
        let token = read("session_token", &self.s3.session_token);
        match (&self.s3.access_key_id, &self.s3.secret_access_key) {
            (None, None) if self.s3.session_token.is_none() => return None,
            (Some(_), Some(_)) => {}
            _ => {
                problems.push(
                    "s3.access_key_id, s3.secret_access_key: both or neither (a session_token needs both)"
                        .into(),
                );
                return None;
            }
        }
        Some(S3Credentials {
            access_key_id: id?,
            secret_access_key: Secret::new(secret?),
            session_token: token.map(Secret::new),
        })
    }

    fn run_settings(&self, problems: &mut Vec<String>) -> RunSettings {
        let mut duration = |key: &str, text: &str| match humantime::parse_duration(text) {
            Ok(d) if d > MAX_SERVICE_WAIT => {
                problems.push(format!("{key}: at most {}, got {text:?}", MAX_SERVICE_WAIT_TEXT));
                Duration::from_secs(1)
            }
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("{key}: not a duration ({e}), got {text:?}"));
                Duration::from_secs(1)
            }
        };
        let poll = duration("source.poll_interval", &self.source.poll_interval);
        let max_backoff = duration("fetch.max_backoff", &self.fetch.max_backoff);
        let retry_pause = duration("fetch.retry_pause", &self.fetch.retry_pause);
        let checkpoint_interval = duration("checkpoint.interval", &self.checkpoint.interval);
        let batch_max_wait = duration("batch.max_wait", &self.batch.max_wait);
        let source = match (self.source.kind.as_str(), &self.source.folder) {
            ("kafka", _) => Source::Kafka,
            ("folder", Some(path)) => Source::Folder {
                path: path.clone(),
                poll,
            },
            ("folder", None) => {
                problems.push("source.folder: required when source.kind = \"folder\"".into());
                Source::Kafka
            }
            (other, _) => {
                problems.push(format!("source.kind: \"kafka\" or \"folder\", got {other:?}"));
                Source::Kafka
            }
        };
        let sink = match (self.sink.kind.as_str(), &self.sink.path) {
            ("kafka", _) => Sink::Kafka,
            ("stdout", _) => Sink::Stdout,
            ("file", Some(path)) => Sink::File(path.clone()),
            ("file", None) => {
                problems.push("sink.path: required when sink.kind = \"file\"".into());
                Sink::Stdout
            }
            (other, _) => {
                problems.push(format!(
                    "sink.kind: \"kafka\", \"file\" or \"stdout\", got {other:?}"
                ));
                Sink::Stdout
            }
        };
        for (key, value, most) in [
            ("fetch.concurrency", self.fetch.concurrency, MAX_FETCH_CONCURRENCY),
            ("batch.max_messages", self.batch.max_messages, MAX_BATCH_MESSAGES),
            (
                "source.max_attempts",
                self.source.max_attempts as usize,
                MAX_READ_ATTEMPTS as usize,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{key}: must be greater than 0"));
            } else if value > most {
                problems.push(format!("{key}: at most {most}, got {value}"));
            }
        }
        if self.fetch.retries > MAX_FETCH_RETRIES {
            problems.push(format!(
                "fetch.retries: at most {MAX_FETCH_RETRIES}, got {}",
                self.fetch.retries
            ));
        }
        let mut librdkafka = BTreeMap::new();
        for (key, value) in &self.kafka.librdkafka {
            match resolve_secret(value) {
                Ok(value) => {
                    librdkafka.insert(key.clone(), value);
                }
                Err(problem) => problems.push(format!("kafka.librdkafka.{key:?}: {problem}")),
            }
        }
        let k = &self.kafka;
        for (key, value) in [
            ("kafka.brokers", &k.brokers),
            ("kafka.group_id", &k.group_id),
            ("kafka.notifications_topic", &k.notifications_topic),
            ("kafka.anomalies_topic", &k.anomalies_topic),
            ("kafka.events_topic", &k.events_topic),
            ("kafka.dead_letter_topic", &k.dead_letter_topic),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("{key}: must not be empty"));
            }
        }
        for (key, value) in &k.librdkafka {
            if let Some(why) = weakening_option(key, value) {
                problems.push(format!("kafka.librdkafka.{key}: {value:?} is refused: {why}"));
            }
        }
        let s3 = StoreSettings::S3 {
            region: self.s3.region.clone(),
            endpoint: self.s3.endpoint.clone(),
            allow_http: self.s3.allow_http,
            credentials: self.s3_credentials(problems),
        };
        let store = match &source {
            Source::Folder { path, .. } => StoreSettings::Local(path.clone()),
            Source::Kafka => s3.clone(),
        };
        RunSettings {
            source,
            sink,
            dead_letter_file: self.sink.dead_letters.clone(),
            kafka: KafkaSettings {
                brokers: k.brokers.clone(),
                group_id: k.group_id.clone(),
                notifications_topic: k.notifications_topic.clone(),
                anomalies_topic: k.anomalies_topic.clone(),
                events_topic: k.events_topic.clone(),
                dead_letter_topic: k.dead_letter_topic.clone(),
                options: librdkafka,
            },
            fetch: FetchSettings {
                store,
                concurrency: self.fetch.concurrency.max(1),
                retries: self.fetch.retries,
                max_backoff,
                max_object_bytes: self.replay.max_file_bytes,
            },
            checkpoint_url: Some(self.checkpoint.url.clone()).filter(|u| !u.trim().is_empty()),
            checkpoint_interval,
            batch_max_messages: self.batch.max_messages.max(1),
            batch_max_wait,
            retry_pause,
            max_attempts: self.source.max_attempts,
            role: Role::default(),
            s3,
            metrics_listen: match self.metrics.listen.trim() {
                "" => None,
                text => match text.parse() {
                    Ok(addr) => Some(addr),
                    Err(_) => {
                        problems.push(format!(
                            "metrics.listen: not an address like \"0.0.0.0:9898\", got {text:?}"
                        ));
                        None
                    }
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        let s = Settings::from_toml("", "t").unwrap();
        assert_eq!(s.detector.window, 30 * 86_400);
        assert_eq!(s.detector.interval, 3600);
        assert!(s.detector.novelty.is_some());
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = Settings::from_toml("[baseline]\nwindw = \"3d\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("windw"), "{err}");
        let err = Settings::from_toml("[nope]\n", "t").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn every_bad_value_is_reported_with_its_key() {
        let err = Settings::from_toml(
            "[baseline]\nwindow = \"soon\"\nmax_values_per_dimension = 0\n[novelty]\nregion = 2.0\n[rate]\nfactor = 0.5\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "baseline.window",
            "baseline.max_values_per_dimension",
            "novelty.region",
            "rate.factor",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err = Settings::from_toml("[rate]\nmin_events = \"many\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("min_events"), "{err}");
    }

    #[test]
    fn the_shipped_reference_file_states_the_defaults() {
        let text = include_str!("../deploy/trailwatch.toml");
        let from_file = Settings::from_toml(text, "deploy/trailwatch.toml").unwrap();
        assert_eq!(
            format!("{:?}", from_file.detector),
            format!("{:?}", Settings::default().detector)
        );
        assert_eq!(from_file.max_file_bytes, Settings::default().max_file_bytes);
        // Every key with a default is written out (keys with no default are shown commented out).
        let table: toml::Table = toml::from_str(text).unwrap();
        let keys: usize = table.values().map(|v| v.as_table().unwrap().len()).sum();
        let per_section = [
            3, /* engine */ 3, 7, 8, 5, 4, 3, /* rules */ 0, /* alerts */ 3,
            /* source */ 3, /* sink */ 1, /* kafka */ 7, /* s3 */ 1, /* fetch */ 4,
            /* checkpoint */ 2, /* batch */ 2, /* metrics */ 1,
        ];
        assert_eq!(keys, per_section.iter().sum::<usize>());
    }

    #[test]
    fn alert_settings_are_validated_by_key() {
        let err = Settings::from_toml(
            "[alerts]\ndedup_window = \"soon\"\n[alerts.severity]\nr1 = \"urgent\"\n[[suppress]]\ncidrs = [\"10.0.0.0/33\"]\nkinds = [\"odd\"]\n[[suppress]]\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "alerts.dedup_window",
            "alerts.severity.\"r1\"",
            "suppress[0].cidrs",
            "suppress[0].kinds",
            "suppress[1]",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
        let ok = Settings::from_toml(
            "[alerts]\nshadow_rules = [\"r2\"]\n[[suppress]]\ncidrs = [\"10.0.0.0/8\", \"192.0.2.1\"]\nrules = [\"r1\"]\n",
            "t",
        )
        .unwrap();
        assert_eq!(ok.detector.alerts.suppressions[0].cidrs.len(), 2);
        assert!(ok.detector.alerts.shadow_rules.contains("r2"));
    }

    #[test]
    fn run_settings_are_validated_by_key() {
        let err = Settings::from_toml(
            "[source]\nkind = \"folder\"\n[sink]\nkind = \"file\"\n[kafka]\nbrokers = \"\"\n[fetch]\nconcurrency = 0\n[batch]\nmax_wait = \"soon\"\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "source.folder",
            "sink.path",
            "kafka.brokers",
            "fetch.concurrency",
            "batch.max_wait",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
        let ok =
            Settings::from_toml("[kafka.librdkafka]\n\"security.protocol\" = \"SASL_SSL\"\n", "t").unwrap();
        assert_eq!(ok.run.kafka.options["security.protocol"], "SASL_SSL");
    }

    #[test]
    fn every_unknown_key_and_wrong_type_is_named_at_once() {
        let err = Settings::from_toml(
            "[baseline]\nwindw = \"3d\"\nlearning_events = \"many\"\n[rate]\nfactr = 2.0\nmin_events = -1\n\
             [nope]\nx = 1\n[[suppress]]\nprincipal = [\"a\"]\n[alerts]\nshadow_rules = [1]\n[replay]\nworkers = \"all\"\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "baseline.windw",
            "baseline.learning_events",
            "rate.factr",
            "rate.min_events",
            "nope",
            "suppress[0].principal",
            "alerts.shadow_rules",
            "replay.workers",
        ] {
            assert!(err.contains(&format!("{key}: ")), "{key} missing from: {err}");
        }
        // A table where a value belongs, and a value where a table belongs.
        let err = Settings::from_toml("baseline = 3\n[rate.interval]\nx = 1\n", "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("baseline: ") && err.contains("rate.interval: "),
            "{err}"
        );
    }

    #[test]
    fn durations_and_numbers_past_what_the_process_can_do_are_refused_by_key() {
        let err = Settings::from_toml(
            "[baseline]\nwindow = \"300000000000y\"\nlearning_period = \"18446744073709551615s\"\n\
             [alerts]\ndedup_window = \"1000000y\"\n[replay]\nworkers = 9223372036854775807\nmax_event_time_skew = \"1000000y\"\n\
             [fetch]\nconcurrency = 9223372036854775807\nmax_backoff = \"100000000y\"\nretries = 1000000\n\
             [batch]\nmax_messages = 9223372036854775807\n[source]\npoll_interval = \"500y\"\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "baseline.window",
            "baseline.learning_period",
            "alerts.dedup_window",
            "replay.workers",
            "replay.max_event_time_skew",
            "fetch.concurrency",
            "fetch.max_backoff",
            "fetch.retries",
            "batch.max_messages",
            "source.poll_interval",
        ] {
            assert!(err.contains(&format!("{key}: ")), "{key} missing from: {err}");
        }
        let ok =
            Settings::from_toml("[replay]\nworkers = 1024\n[baseline]\nwindow = \"3650d\"\n", "t").unwrap();
        assert_eq!(ok.workers.get(), 1024);
        assert_eq!(ok.detector.window, 3650 * 86_400);
    }

    #[test]
    fn secrets_come_from_the_environment_or_a_file_and_are_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-a-file\n").unwrap();
        // SAFETY: this test alone reads or writes this variable.
        unsafe { std::env::set_var("TRAILWATCH_TEST_SASL_PASSWORD", "from-the-env") };
        let text = format!(
            "[kafka.librdkafka]\n\"sasl.password\" = \"env:TRAILWATCH_TEST_SASL_PASSWORD\"\n\
             \"ssl.key.password\" = \"file:{}\"\n\"sasl.username\" = \"plain-written\"\n",
            file.display()
        );
        let s = Settings::from_toml(&text, "t").unwrap();
        let options = &s.run.kafka.options;
        assert_eq!(options["sasl.password"], "from-the-env");
        assert_eq!(options["ssl.key.password"], "from-a-file");
        assert_eq!(options["sasl.username"], "plain-written");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("from-the-env") && !shown.contains("from-a-file"),
            "{shown}"
        );
        let raw: RawConfig = toml::from_str(&text).unwrap();
        assert!(!format!("{raw:?}").contains("TRAILWATCH_TEST_SASL_PASSWORD"));

        let err = Settings::from_toml(
            "[kafka.librdkafka]\n\"sasl.password\" = \"env:TRAILWATCH_TEST_UNSET_VARIABLE\"\n\
             \"ssl.key.password\" = \"file:/nonexistent/secret\"\n\"sasl.oauthbearer.client.secret\" = 123456789\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("TRAILWATCH_TEST_UNSET_VARIABLE is not set"), "{err}");
        assert!(err.contains("/nonexistent/secret"), "{err}");
        assert!(
            err.contains("\"sasl.oauthbearer.client.secret\": must be a string"),
            "{err}"
        );
        assert!(
            !err.contains("123456789"),
            "a secret written with the wrong type is not shown: {err}"
        );
    }

    #[test]
    fn s3_keys_come_from_the_environment_or_a_file_and_are_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3-secret-from-a-file\n").unwrap();
        // SAFETY: this test alone reads or writes this variable.
        unsafe { std::env::set_var("TRAILWATCH_TEST_S3_TOKEN", "s3-token-from-the-env") };
        let text = format!(
            "[s3]\naccess_key_id = \"AKIDEXAMPLE\"\nsecret_access_key = \"file:{}\"\n\
             session_token = \"env:TRAILWATCH_TEST_S3_TOKEN\"\n",
            file.display()
        );
        let s = Settings::from_toml(&text, "t").unwrap();
        let StoreSettings::S3 {
            credentials: Some(credentials),
            ..
        } = &s.run.s3
        else {
            panic!("no S3 credentials in {:?}", s.run.s3);
        };
        assert_eq!(credentials.access_key_id, "AKIDEXAMPLE");
        assert_eq!(credentials.secret_access_key.expose(), "s3-secret-from-a-file");
        assert_eq!(
            credentials.session_token.as_ref().map(|t| t.expose()),
            Some("s3-token-from-the-env")
        );
        let shown = format!("{s:?} {:?}", toml::from_str::<RawConfig>(&text).unwrap());
        assert!(
            !shown.contains("s3-secret-from-a-file") && !shown.contains("s3-token-from-the-env"),
            "{shown}"
        );
        assert!(!shown.contains(&file.display().to_string()), "{shown}");

        // A secret without its key id, and a secret written with the wrong type.
        let err = Settings::from_toml(
            "[s3]\nsecret_access_key = \"env:TRAILWATCH_TEST_UNSET_S3\"\nsession_token = 987654321\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("s3.access_key_id, s3.secret_access_key: both or neither"),
            "{err}"
        );
        assert!(err.contains("TRAILWATCH_TEST_UNSET_S3 is not set"), "{err}");
        assert!(err.contains("s3.session_token: must be a string"), "{err}");
        assert!(!err.contains("987654321"), "{err}");
    }

    #[test]
    fn idle_expiry_must_outlast_dormancy() {
        let err = Settings::from_toml("[baseline]\nidle_expiry = \"1d\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("baseline.idle_expiry"), "{err}");
    }
}
