//! trailwatch: streaming anomaly detection for AWS CloudTrail.
//!
//! CloudTrail log files go in; per-principal baselines of what each identity normally does are
//! kept over a sliding window of event time; explainable anomalies (schema
//! `trailwatch.anomaly/v1`) come out.
//!
//! # Layout
//! The modules are the stages of the data flow, in order:
//!
//! - [`notification`]: delivery notifications (SNS, SQS, S3 events, EventBridge) → objects to fetch.
//! - [`fetch`]: objects from S3 (or a local folder) through `object_store`, bounded and retried.
//! - [`decode`]: one object's bytes (gzip or not) → events, with skipped records and file
//!   failures reported by file, index and reason; [`gunzip`] inflates them and [`scan`] walks
//!   the JSON, checking it and indexing each record without building values.
//! - [`record`]: the borrowed, lenient view of one CloudTrail record the decoder parses into;
//!   [`view`] indexes its JSON text once, for the fields the engine reads and the paths rules ask
//!   for (it is the event Sigma rules are evaluated on).
//! - [`event`]: a record validated into the owned [`event::Event`] detectors see.
//! - [`principal`]: `userIdentity` → the stable principal key baselines are kept under.
//! - [`net`], [`useragent`]: the derived dimensions (network prefix, user-agent family).
//! - [`baseline`]: per-principal value sets and rate history, bounded in memory.
//! - [`engine`]: state partitions (principal → partition by Kafka's key hash), each a detector
//!   behind a reorder buffer, snapshotted whole; the unit every mode runs.
//! - [`detect`]: the detectors (new value, rate and error spikes, dormant principal), one
//!   [`detect::Detector`] per shard of principals.
//! - [`rules`]: Sigma rules, evaluated on each record (detections) and per shard (thresholds).
//! - [`alert`]: the alert lifecycle: shadow mode, suppressions, severity overrides, folding repeats.
//! - [`anomaly`]: the output schema and deterministic anomaly ids.
//! - [`sink`]: anomalies and dead letters out, to Kafka topics or JSON-lines files.
//! - [`service`]: `trailwatch run`: the decode and detect stages over Kafka, and the folder
//!   service; [`run`] holds its settings and picks the mode.
//! - [`state`]: the checkpoint store of partition snapshots, fenced by offset.
//! - [`replay`]: the batch pipeline over files on disk or under an S3 prefix, on every core;
//!   [`timerange`] picks the files of a time range by their delivery time.
//! - [`generate`]: synthetic trails with labelled incidents, for demos, tests and benchmarks.
//! - [`labels`]: scoring anomalies against a generated trail's labels.
//! - [`metrics`]: Prometheus metrics, `/metrics`, `/healthz`, `/readyz`, latency percentiles.
//! - [`config`]: the TOML configuration, validated into typed settings.
//! - [`allocator`]: settings for the allocator the binary runs with.

pub mod alert;
pub mod allocator;
pub mod anomaly;
pub mod baseline;
pub mod config;
pub mod decode;
pub mod detect;
pub mod engine;
pub mod event;
pub mod fetch;
pub mod generate;
mod generations;
pub mod gunzip;
pub mod labels;
pub mod metrics;
pub mod net;
pub mod notification;
pub mod principal;
pub mod record;
pub mod replay;
pub mod rules;
pub mod run;
pub mod scan;
pub mod service;
pub mod sink;
pub mod state;
pub mod timerange;
pub mod useragent;
pub mod view;
