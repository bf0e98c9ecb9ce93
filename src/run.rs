//! `trailwatch run`: the settings it takes and where it goes.
//!
//! With a Kafka source, the service runs its stages ([`crate::service`]): decode, detect, or both,
//! through the events topic, so that any number of processes form one cluster. With a watched
//! folder, one process holds every state partition in memory ([`crate::service::folder`]).
//! Either way, a batch's anomalies and dead letters are acknowledged by the sink before the input
//! behind them counts as done, and state is checkpointed with the input positions it reflects: a
//! crash replays from there, and anomalies raised again carry the same ids.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::rules::RuleSet;
pub use crate::service::Role;
pub use crate::sink::{DeadLetter, DeadLetterSource};

/// Where notifications come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A Kafka topic, consumed as a consumer group.
    Kafka,
    /// A folder watched for new log files (S3 key layout or not); no Kafka needed. A file that
    /// cannot be read is tried `max_attempts` times, then dead-lettered.
    Folder {
        path: PathBuf,
        poll: Duration,
        max_attempts: u32,
    },
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
    /// Which stages this process runs (Kafka source only).
    pub role: Role,
    /// The `[s3]` settings, for an `s3://` checkpoint URL.
    pub s3: crate::fetch::StoreSettings,
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

/// Runs the service until `shutdown` resolves (SIGTERM/SIGINT in the binary), then finishes the
/// work in hand, checkpoints, commits and returns.
pub async fn run(
    settings: Settings,
    run: RunSettings,
    rules: Option<Arc<RuleSet>>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<RunReport> {
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
    let report = match &run.source {
        Source::Kafka => {
            crate::service::run_kafka(settings, run.clone(), rules, Arc::clone(&metrics), shutdown).await
        }
        Source::Folder {
            path,
            poll,
            max_attempts,
        } => {
            let folder = crate::service::folder::FolderSource {
                path: path.clone(),
                poll: *poll,
                max_attempts: *max_attempts,
            };
            crate::service::folder::run(&settings, &run, &folder, rules, &metrics, shutdown).await
        }
    };
    let _ = server_stop.send(());
    if let Some(server) = server {
        let _ = server.await;
    }
    report
}
