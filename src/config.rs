//! Configuration: one TOML file, every key optional with a documented default.
//!
//! In: TOML text. Out: [`Settings`], validated typed values. Parsing rejects unknown keys (serde's
//! `deny_unknown_fields`, whose message names the key); validation reports every bad value at
//! once, each with its dotted key name. Nothing here does I/O beyond reading the file.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::alert::{is_kind, parse_severity, AlertPolicy, Suppression};

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
}

impl Default for RawSource {
    fn default() -> Self {
        RawSource {
            kind: "kafka".into(),
            folder: None,
            poll_interval: "5s".into(),
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

#[derive(Debug, Deserialize)]
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawS3 {
    /// Region of the log buckets (default: AWS_REGION, else us-east-1).
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store (default: AWS).
    pub endpoint: Option<String>,
    /// Allow plain HTTP to `endpoint`.
    pub allow_http: bool,
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
    /// Largest inflated log file accepted, in bytes; larger files fail with `too_large`.
    pub max_file_bytes: usize,
}

impl Default for RawReplay {
    fn default() -> Self {
        RawReplay {
            workers: 0,
            max_file_bytes: 1 << 30,
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

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub run: crate::run::RunSettings,
    pub engine: EngineSettings,
    pub workers: NonZeroUsize,
    pub rules_dir: Option<PathBuf>,
    pub max_file_bytes: usize,
    pub detector: DetectorSettings,
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

impl Settings {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        Settings::from_toml(&text, &name)
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            source: Box::new(e),
        })?;
        raw.validate().map_err(|problems| ConfigError::Invalid {
            path: origin.to_owned(),
            problems,
        })
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
            Ok(d) => d.as_secs() as i64,
            Err(e) => {
                problems.push(format!(
                    "alerts.dedup_window: not a duration ({e}), got {:?}",
                    self.alerts.dedup_window
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
        if self.dormant.enabled && idle_expiry <= dormant_after {
            problems.push(format!(
                "baseline.idle_expiry: must exceed dormant.after ({}), or dormant principals are forgotten before they wake",
                self.dormant.after
            ));
        }
        let engine = self.engine_settings(&mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }

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
            max_file_bytes: self.replay.max_file_bytes,
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

    fn run_settings(&self, problems: &mut Vec<String>) -> crate::run::RunSettings {
        use crate::fetch::{FetchSettings, StoreSettings};
        use crate::run::{KafkaSettings, RunSettings, Sink, Source};
        let mut duration = |key: &str, text: &str| match humantime::parse_duration(text) {
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
        for (key, value) in [
            ("fetch.concurrency", self.fetch.concurrency),
            ("batch.max_messages", self.batch.max_messages),
        ] {
            if value == 0 {
                problems.push(format!("{key}: must be greater than 0"));
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
            if let Some(why) = crate::sink::weakening_option(key, value) {
                problems.push(format!("kafka.librdkafka.{key}: {value:?} is refused: {why}"));
            }
        }
        let store = match &source {
            Source::Folder { path, .. } => StoreSettings::Local(path.clone()),
            Source::Kafka => StoreSettings::S3 {
                region: self.s3.region.clone(),
                endpoint: self.s3.endpoint.clone(),
                allow_http: self.s3.allow_http,
            },
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
                options: k.librdkafka.clone(),
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
            role: crate::service::Role::default(),
            s3: StoreSettings::S3 {
                region: self.s3.region.clone(),
                endpoint: self.s3.endpoint.clone(),
                allow_http: self.s3.allow_http,
            },
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
            2, 7, 8, 5, 4, 3, /* rules */ 0, /* alerts */ 3, /* source */ 2,
            /* sink */ 1, /* kafka */ 6, /* s3 */ 1, /* fetch */ 4,
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
    fn idle_expiry_must_outlast_dormancy() {
        let err = Settings::from_toml("[baseline]\nidle_expiry = \"1d\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("baseline.idle_expiry"), "{err}");
    }
}
