//! The outputs: anomalies and dead letters, to Kafka topics or JSON-lines files.
//!
//! In: anomalies and [`DeadLetter`]s. Out: each acknowledged by the broker (`acks=all`,
//! idempotent producer) or written and flushed, before [`Output::deliver`] returns: callers
//! commit input positions only after that.

use std::time::Duration;

use anyhow::Context as _;
use futures::future::join_all;
use rdkafka::config::{ClientConfig, FromClientConfig};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::anomaly::Anomaly;
use crate::config::{KafkaSettings, RunSettings, Sink};

/// What every producer of trailwatch is set to: idempotent, acknowledged by all in-sync
/// replicas, keyed records routed by Kafka's own key hash (as the Java client does), so that the
/// events topic's partition of a principal is [`crate::engine::partition_of`] it.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("partitioner", "murmur2_random"),
    ("linger.ms", "5"),
];

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

/// The outputs: anomalies and dead letters.
pub enum Output {
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
    /// The outputs `run` names: Kafka topics, or files (stdout and stderr by default).
    pub async fn open(run: &RunSettings) -> anyhow::Result<Output> {
        Ok(match &run.sink {
            Sink::Kafka => {
                check_options(&run.kafka)?;
                let config = client_config(&run.kafka, ClientKind::Producer, PRODUCER_DEFAULTS);
                let producer: FutureProducer = create_client(&config, &run.kafka, "the Kafka producer")?;
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
                let dead_letters: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &run.dead_letter_file
                {
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
        })
    }

    /// Sends everything and waits until each is acknowledged (Kafka) or written and flushed.
    pub async fn deliver(
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
                        FutureRecord::to(topic).key(a.principal.key.as_str()).payload(p),
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
                    a.write_json(&mut buf);
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

/// Which kind of librdkafka client a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    Consumer,
    Producer,
    Admin,
}

/// librdkafka properties only a consumer reads: given to a producer, librdkafka warns at every
/// start (CONFWARN), so passthrough options are split by client.
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "group.protocol",
    "group.protocol.type",
    "group.remote.assignor",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "isolation.level",
    "consume.callback.max.messages",
    "enable.partition.eof",
    "check.crcs",
];

/// librdkafka properties only a producer reads.
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "retry.backoff.ms",
    "retry.backoff.max.ms",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "acks",
    "request.required.acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "partitioner",
    "sticky.partitioning.linger.ms",
];

/// Why librdkafka refuses `key` = `value` (an unknown property, a value it cannot take, one this
/// build does not support), in words that do not hold the value: options hold passwords, and
/// librdkafka's own errors quote the value refused.
pub fn refused_option(key: &str, value: &str) -> Option<String> {
    let mut config = ClientConfig::new();
    config.set(key, value);
    match config.create_native_config() {
        Ok(_) => None,
        Err(KafkaError::ClientConfig(_, description, _, _)) => Some(withhold(&description, [value])),
        Err(other) => Some(withhold(&other.to_string(), [value])),
    }
}

/// Every passthrough option librdkafka refuses, each named with why, none with its value: checked
/// before any client is made, so that no client's error can quote a password.
pub fn check_options(kafka: &KafkaSettings) -> anyhow::Result<()> {
    let refused: Vec<String> = kafka
        .options
        .iter()
        .filter_map(|(key, value)| {
            refused_option(key, value).map(|why| format!("  kafka.librdkafka.{key:?}: {why}"))
        })
        .collect();
    anyhow::ensure!(
        refused.is_empty(),
        "librdkafka refuses options:\n{}",
        refused.join("\n")
    );
    Ok(())
}

/// `text` with each of `values` in it replaced by `<withheld>`.
fn withhold<'a>(text: &str, values: impl IntoIterator<Item = &'a str>) -> String {
    values
        .into_iter()
        .filter(|v| !v.is_empty())
        .fold(text.to_owned(), |text, v| text.replace(v, "<withheld>"))
}

/// A librdkafka client of `kafka`'s configuration; an error says what failed without the
/// values of the passthrough options (librdkafka's errors quote them).
pub fn create_client<T: FromClientConfig>(
    config: &ClientConfig,
    kafka: &KafkaSettings,
    what: &str,
) -> anyhow::Result<T> {
    config.create().map_err(|e| {
        let message = match &e {
            KafkaError::ClientConfig(_, description, key, _) => format!("{key}: {description}"),
            other => other.to_string(),
        };
        anyhow::anyhow!(
            "creating {what}: {}",
            withhold(&message, kafka.options.values().map(String::as_str))
        )
    })
}

/// A librdkafka configuration for one kind of client: the brokers, then `defaults`, then the
/// user's passthrough options that this kind of client reads, which win over both.
pub fn client_config(kafka: &KafkaSettings, kind: ClientKind, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (k, v) in defaults {
        config.set(*k, *v);
    }
    // Static membership from the environment (a pod's name), so that one manifest serves every
    // replica; `group.instance.id` in the passthrough options wins over it.
    if let (ClientKind::Consumer, Ok(id)) = (kind, std::env::var("TRAILWATCH_INSTANCE_ID")) {
        if !id.trim().is_empty() {
            config.set("group.instance.id", id.trim());
        }
    }
    for (k, v) in &kafka.options {
        let skip = match kind {
            ClientKind::Consumer => PRODUCER_ONLY.contains(&k.as_str()),
            ClientKind::Producer => CONSUMER_ONLY.contains(&k.as_str()),
            ClientKind::Admin => PRODUCER_ONLY.contains(&k.as_str()) || CONSUMER_ONLY.contains(&k.as_str()),
        };
        if !skip {
            config.set(k, v);
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_librdkafka_refuses_are_named_without_their_values() {
        let why = refused_option("sasl.passwrd", "a-password-under-a-misspelt-key").unwrap();
        assert!(why.contains("sasl.passwrd"), "{why}");
        assert!(!why.contains("a-password"), "{why}");
        let why = refused_option("security.protocol", "NOT-A-PROTOCOL-7f3a").unwrap();
        assert!(!why.contains("NOT-A-PROTOCOL-7f3a"), "{why}");
        assert_eq!(refused_option("sasl.password", "any value at all"), None);
    }
}
