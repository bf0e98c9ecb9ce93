//! Metrics: Prometheus text on `/metrics`, with `/healthz` and `/readyz` beside it.
//!
//! Every metric is declared here, registered into a [`Registry`] owned by [`Metrics`] (not the
//! global one, so tests run side by side), and has a help text. Labels take values from bounded
//! sets only: outcomes, reasons, kinds, severities, the loaded rules' ids, partitions of the
//! notifications topic. Never a principal, a key or raw error text.
//!
//! Latency percentiles for summaries and shutdown logs come from [`Latencies`] (hdrhistogram).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub const NAMESPACE: &str = "trailwatch";

/// Every dead-letter reason: notification problems, fetch failures and file failures.
pub const DEAD_LETTER_REASONS: [&str; 19] = [
    "malformed_notification",
    "unknown_shape",
    "missing_bucket_or_key",
    "missing_object",
    "access_denied",
    "object_too_large",
    "invalid_key",
    "io",
    "corrupt_gzip",
    "truncated_gzip",
    "too_large",
    "invalid_json",
    "not_cloudtrail",
    "not_utf8",
    "fetch_failed",
    "unreadable",
    "symlink_loop",
    "dangling_symlink",
    "not_a_regular_file",
];

/// Every metric trailwatch exports.
pub struct Metrics {
    pub registry: Registry,
    /// Notifications by outcome: processed, ignored, dead_letter, retried.
    pub notifications: IntCounterVec,
    /// Files by outcome: decoded, skipped, failed.
    pub files: IntCounterVec,
    /// Records by outcome: event, skipped.
    pub records: IntCounterVec,
    pub anomalies: IntCounterVec,
    pub rule_matches: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub file_seconds: Histogram,
    pub event_lag_seconds: Histogram,
    pub principals: IntGauge,
    pub baseline_values: IntGauge,
    pub checkpoint_age_seconds: Gauge,
    pub checkpoint_last_success: Gauge,
    pub consumer_lag: IntGaugeVec,
    /// Detect stage: state partitions this process owns.
    pub partitions_owned: IntGauge,
    /// Detect stage: time to take up a partition's state on assignment.
    pub partition_restore_seconds: Histogram,
    /// Detect stage: bytes of the snapshot each restore read.
    pub partition_restore_bytes: Histogram,
    /// Detect stage: rebalances, by kind (assign, revoke).
    pub rebalances: IntCounterVec,
    /// Detect stage: seconds since each owned partition's state was last snapshotted.
    pub partition_state_age_seconds: IntGaugeVec,
    /// Detect stage: events not yet read from the events topic, by partition.
    pub events_lag: IntGaugeVec,
    /// Events that reached their partition more than the reorder window late.
    pub late_events: IntCounter,
    /// Events waiting in reorder buffers.
    pub events_held: IntGauge,
    /// Decode stage: events produced to the events topic.
    pub events_produced: IntCounter,
    /// Detect stage: event records read from the events topic (marks not counted).
    pub events_consumed: IntCounter,
    /// Detect stage: partition snapshots that could not be read and were passed over for an
    /// older one.
    pub snapshots_unreadable: IntCounter,
    pub build_info: IntGaugeVec,
    ready: AtomicBool,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace(NAMESPACE), labels).expect("a valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("each metric registers once");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .namespace(NAMESPACE)
                    .buckets(buckets),
            )
            .expect("a valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("each metric registers once");
            h
        };
        let plain_counter = |name: &str, help: &str| {
            let c =
                IntCounter::with_opts(Opts::new(name, help).namespace(NAMESPACE)).expect("a valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("each metric registers once");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(Opts::new(name, help).namespace(NAMESPACE)).expect("a valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("each metric registers once");
            g
        };
        let float_gauge = |name: &str, help: &str| {
            let g = Gauge::with_opts(Opts::new(name, help).namespace(NAMESPACE)).expect("a valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("each metric registers once");
            g
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g =
                IntGaugeVec::new(Opts::new(name, help).namespace(NAMESPACE), labels).expect("a valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("each metric registers once");
            g
        };
        let m = Metrics {
            notifications: counter(
                &registry,
                "notifications_total",
                "Delivery notifications consumed, by outcome.",
                &["outcome"],
            ),
            files: counter(
                &registry,
                "files_total",
                "Log files read, by outcome.",
                &["outcome"],
            ),
            records: counter(
                &registry,
                "records_total",
                "CloudTrail records read, by outcome.",
                &["outcome"],
            ),
            anomalies: counter(
                &registry,
                "anomalies_total",
                "Anomalies emitted, by kind and severity.",
                &["kind", "severity"],
            ),
            rule_matches: counter(
                &registry,
                "rule_matches_total",
                "Rule-match anomalies emitted, by rule id.",
                &["rule"],
            ),
            dead_letters: counter(
                &registry,
                "dead_letters_total",
                "Inputs sent to the dead-letter output, by reason.",
                &["reason"],
            ),
            file_seconds: histogram(
                "file_processing_seconds",
                "Time to inflate, parse and evaluate rules on one log file.",
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            ),
            event_lag_seconds: histogram(
                "event_lag_seconds",
                "Detection time minus eventTime of each file's newest event.",
                vec![
                    60.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0, 604800.0,
                ],
            ),
            principals: gauge("principals", "Principals with a baseline held."),
            baseline_values: gauge(
                "baseline_values",
                "Values held across every principal's baseline dimensions.",
            ),
            checkpoint_age_seconds: float_gauge(
                "checkpoint_age_seconds",
                "Seconds since the last successful checkpoint.",
            ),
            checkpoint_last_success: float_gauge(
                "checkpoint_last_success_timestamp_seconds",
                "Unix time of the last successful checkpoint.",
            ),
            consumer_lag: gauge_vec(
                "consumer_lag",
                "Notifications not yet consumed, by partition of the notifications topic (`folder`: files waiting in the watched folder).",
                &["partition"],
            ),
            partitions_owned: gauge("partitions_owned", "State partitions (events-topic partitions) this process owns."),
            partition_restore_seconds: histogram(
                "partition_restore_seconds",
                "Time to take up one state partition on assignment: find, read and decode its snapshot.",
                vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            ),
            partition_restore_bytes: histogram(
                "partition_restore_bytes",
                "Compressed size of each snapshot restored.",
                prometheus::exponential_buckets(1024.0, 4.0, 12).expect("valid buckets"),
            ),
            rebalances: counter(
                &registry,
                "rebalances_total",
                "Partition assignments and revocations of the detect stage.",
                &["kind"],
            ),
            partition_state_age_seconds: gauge_vec(
                "partition_state_age_seconds",
                "Seconds since an owned state partition was last snapshotted (events-topic partition).",
                &["partition"],
            ),
            events_lag: gauge_vec(
                "events_lag",
                "Events not yet judged, by events-topic partition owned.",
                &["partition"],
            ),
            late_events: plain_counter("late_events_total", "Events judged out of order: more than engine.reorder_window late."),
            events_held: gauge("events_held", "Events waiting in the reorder buffers of owned partitions."),
            events_produced: plain_counter("events_produced_total", "Decoded events produced to the events topic."),
            events_consumed: plain_counter("events_consumed_total", "Event records the detect stage read from the events topic."),
            snapshots_unreadable: plain_counter("snapshots_unreadable_total", "Partition snapshots that could not be read; the partition was taken up from an older one."),
            build_info: gauge_vec(
                "build_info",
                "Always 1; labels say which build runs.",
                &["version"],
            ),
            ready: AtomicBool::new(false),
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Counters with bounded outcomes start at zero, so dashboards and alerts see them at once.
        for outcome in ["processed", "ignored", "dead_letter", "retried"] {
            m.notifications.with_label_values(&[outcome]);
        }
        for outcome in ["decoded", "skipped", "failed"] {
            m.files.with_label_values(&[outcome]);
        }
        for outcome in ["event", "skipped"] {
            m.records.with_label_values(&[outcome]);
        }
        for reason in DEAD_LETTER_REASONS {
            m.dead_letters.with_label_values(&[reason]);
        }
        for kind in ["assign", "revoke"] {
            m.rebalances.with_label_values(&[kind]);
        }
        m
    }

    /// Starts every loaded rule's match counter at zero.
    pub fn register_rules(&self, rules: &crate::rules::RuleSet) {
        for rule in rules.rules().iter().filter(|r| !r.feeds_correlation_only) {
            self.rule_matches.with_label_values(&[rule.id.as_str()]);
        }
    }

    /// The registry as Prometheus text.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding does not fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }

    /// Marks the service ready (rules loaded, state restored, input assigned) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Counts one emitted anomaly.
    pub fn anomaly(&self, a: &crate::anomaly::Anomaly) {
        let severity = serde_json::to_value(a.severity).ok();
        let severity = severity.as_ref().and_then(|v| v.as_str()).unwrap_or("unknown");
        self.anomalies
            .with_label_values(&[a.kind.as_str(), severity])
            .inc();
        if let Some(rule) = &a.rule {
            self.rule_matches.with_label_values(&[rule.id.as_str()]).inc();
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown` resolves. Returns the
/// bound address (useful with port 0).
pub async fn serve(
    metrics: Arc<Metrics>,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let for_metrics = Arc::clone(&metrics);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = Arc::clone(&for_metrics);
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let m = Arc::clone(&metrics);
                async move {
                    if m.is_ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        );
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok((bound, handle))
}

/// p50, p90, p99 and p99.9.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub count: u64,
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {} p90 {} p99 {} p99.9 {} (n={})",
            fmt_secs(self.p50),
            fmt_secs(self.p90),
            fmt_secs(self.p99),
            fmt_secs(self.p999),
            self.count
        )
    }
}

fn fmt_secs(s: f64) -> String {
    match s {
        s if s < 1e-3 => format!("{:.0}µs", s * 1e6),
        s if s < 1.0 => format!("{:.1}ms", s * 1e3),
        s if s < 120.0 => format!("{s:.1}s"),
        s if s < 7200.0 => format!("{:.1}m", s / 60.0),
        s => format!("{:.1}h", s / 3600.0),
    }
}

/// Per-file processing time and event lag, for percentiles (hdrhistogram, 3 significant digits).
pub struct Latencies {
    /// Microseconds.
    file: Mutex<hdrhistogram::Histogram<u64>>,
    /// Seconds.
    lag: Mutex<hdrhistogram::Histogram<u64>>,
}

impl std::fmt::Debug for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latencies")
            .field("file", &self.file())
            .field("lag", &self.lag())
            .finish()
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            file: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ),
            lag: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 10 * 365 * 86_400, 3).expect("valid bounds"),
            ),
        }
    }
}

impl Latencies {
    pub fn record_file(&self, took: Duration) {
        let micros = (took.as_micros() as u64).clamp(1, 3_600_000_000);
        self.file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(micros)
            .ok();
    }

    pub fn record_lag(&self, seconds: i64) {
        let s = seconds.clamp(1, 10 * 365 * 86_400) as u64;
        self.lag.lock().unwrap_or_else(|e| e.into_inner()).record(s).ok();
    }

    fn percentiles(h: &hdrhistogram::Histogram<u64>, unit: f64) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: h.value_at_quantile(0.5) as f64 * unit,
            p90: h.value_at_quantile(0.9) as f64 * unit,
            p99: h.value_at_quantile(0.99) as f64 * unit,
            p999: h.value_at_quantile(0.999) as f64 * unit,
            count: h.len(),
        }
    }

    /// Per-file processing time, in seconds.
    pub fn file(&self) -> Percentiles {
        Latencies::percentiles(&self.file.lock().unwrap_or_else(|e| e.into_inner()), 1e-6)
    }

    /// Event lag, in seconds.
    pub fn lag(&self) -> Percentiles {
        Latencies::percentiles(&self.lag.lock().unwrap_or_else(|e| e.into_inner()), 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_and_the_namespace() {
        let m = Metrics::new();
        m.consumer_lag.with_label_values(&["0"]).set(3);
        let text = m.render();
        for family in m.registry.gather() {
            assert!(family.name().starts_with("trailwatch_"), "{}", family.name());
            assert!(!family.help().is_empty(), "{}", family.name());
        }
        assert!(text.contains("trailwatch_build_info{version=\""));
        assert!(text.contains("trailwatch_notifications_total{outcome=\"dead_letter\"} 0"));
    }

    #[test]
    fn every_dead_letter_reason_is_known_to_the_metrics() {
        use crate::decode::FileError;
        let io = || std::io::Error::other("x");
        let file_errors = [
            FileError::Io(io()),
            FileError::Gzip {
                inflated: 0,
                source: crate::gunzip::GunzipError::Truncated,
            },
            FileError::Truncated {
                inflated: 0,
                records: 0,
            },
            FileError::TooLarge { limit: 1 },
            FileError::Json {
                line: 1,
                column: 1,
                records: 0,
                message: String::new(),
            },
            FileError::NoRecords,
            FileError::NotUtf8 { offset: 0 },
        ];
        for e in file_errors {
            assert!(DEAD_LETTER_REASONS.contains(&e.reason()), "{}", e.reason());
        }
        let s = || String::new();
        let fetch_errors = [
            crate::fetch::FetchError::NotFound {
                bucket: s(),
                key: s(),
            },
            crate::fetch::FetchError::Denied {
                bucket: s(),
                key: s(),
                message: s(),
            },
            crate::fetch::FetchError::TooLarge {
                bucket: s(),
                key: s(),
                size: 0,
                limit: 0,
            },
            crate::fetch::FetchError::InvalidKey {
                key: s(),
                message: s(),
            },
        ];
        for e in fetch_errors {
            assert!(DEAD_LETTER_REASONS.contains(&e.reason()), "{}", e.reason());
        }
    }

    #[test]
    fn percentiles_come_from_recorded_values() {
        let l = Latencies::default();
        for ms in 1..=1000 {
            l.record_file(Duration::from_millis(ms));
        }
        let p = l.file();
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 0.5).abs() < 0.01, "{p:?}");
        assert!((p.p99 - 0.99).abs() < 0.01, "{p:?}");
        assert!(p.p999 >= p.p99);
        assert_eq!(Latencies::default().lag().count, 0);
    }

    #[tokio::test]
    async fn the_server_answers_metrics_health_and_readiness() {
        let m = Arc::new(Metrics::new());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr, handle) = serve(Arc::clone(&m), "127.0.0.1:0".parse().unwrap(), async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        m.set_ready(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/metrics").await.contains("trailwatch_build_info"));
        tx.send(()).unwrap();
        handle.await.unwrap();
    }
}
