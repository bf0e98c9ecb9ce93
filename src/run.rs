//! `trailwatch run`: where it goes, given its [`RunSettings`].
//!
//! With a Kafka source, the service runs its stages ([`crate::service`]): decode, detect, or both,
//! through the events topic, so that any number of processes form one cluster. With a watched
//! folder, one process holds every state partition in memory ([`crate::service::folder`]).
//! Either way, a batch's anomalies and dead letters are acknowledged by the sink before the input
//! behind them counts as done, and state is checkpointed with the input positions it reflects: a
//! crash replays from there, and anomalies raised again carry the same ids.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{RunSettings, Settings, Source};
use crate::metrics::Metrics;
use crate::rules::RuleSet;
pub use crate::sink::{DeadLetter, DeadLetterSource};

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
        Source::Folder { path, poll } => {
            let folder = crate::service::folder::FolderSource {
                path: path.clone(),
                poll: *poll,
                max_attempts: run.max_attempts,
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
