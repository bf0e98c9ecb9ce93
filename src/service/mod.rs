//! The streaming service: `trailwatch run`, in its roles.
//!
//! ```text
//!  notifications topic ─► decode stage ─► events topic (keyed by principal) ─► detect stage ─► sinks
//!  (any process can decode any file)      (P partitions = P state partitions)  (a process owns partitions)
//! ```
//! - [`decode`]: notifications → events on the events topic; stateless.
//! - [`detect`]: the events topic's partitions → anomalies; each partition's state snapshotted
//!   with its offset, moved on rebalance.
//! - [`folder`]: the one-process service over a watched folder, with no Kafka.
//! - [`batch`]: notifications → decoded files, shared by the decode stage and the folder service.
//!
//! A process runs the decode stage, the detect stage, or both (`--role all`, the default): any
//! number of processes with the same configuration form one correct cluster, because every
//! principal's events go through its one events-topic partition, whoever decoded them.

pub mod batch;
pub mod decode;
pub mod detect;
pub mod folder;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};

use crate::config::{Role, RunSettings, Settings};
use crate::metrics::Metrics;
use crate::rules::RuleSet;
use crate::run::RunReport;
use crate::sink::{check_options, client_config, create_client, ClientKind};

/// The partition count of `topic`.
pub fn partition_count<C: ClientContext>(client: &Client<C>, topic: &str) -> anyhow::Result<u32> {
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .with_context(|| format!("reading the metadata of topic {topic}"))?;
    let count = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    Ok(count as u32)
}

/// How long a stopping stage waits for its consumer's last commit and its leaving the group.
pub const LEAVE_GROUP_WITHIN: Duration = Duration::from_secs(15);

/// Runs `leave` (a consumer's last commit, then dropping it, which revokes what it owns and
/// tells the group's coordinator it is gone) on a thread of its own, and waits for it at most
/// `within`; `true` when it finished.
///
/// librdkafka waits as long as the coordinator takes to answer, and a coordinator in the middle
/// of a rebalance can hold the answer for as long as the rebalance lasts. Past `within`, the
/// stage stops without the answer: everything judged is already delivered, snapshotted and its
/// offsets committed (or read again at the next start, as after a crash), and the coordinator
/// drops the member once its session times out (`session.timeout.ms`).
pub fn leave_group(stage: &'static str, within: Duration, leave: impl FnOnce() + Send + 'static) -> bool {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("{stage}-leave"))
        .spawn(move || {
            leave();
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!(stage, error = %e, "no thread to leave the group on: stopping without leaving it");
        return false;
    }
    let left = done_rx.recv_timeout(within).is_ok();
    if left {
        tracing::info!(stage, "left the consumer group");
    } else {
        tracing::warn!(
            stage,
            waited_s = within.as_secs(),
            "leaving the consumer group took too long: stopping without waiting for the \
             coordinator, which drops this member when its session times out"
        );
    }
    left
}

/// Creates the events topic with `engine.partitions` partitions if it is missing; refuses to
/// run if it exists with another count (re-keying would split principals' state).
async fn ensure_events_topic(settings: &Settings, run: &RunSettings) -> anyhow::Result<()> {
    let kafka = &run.kafka;
    let admin: AdminClient<DefaultClientContext> = create_client(
        &client_config(kafka, ClientKind::Admin, &[]),
        kafka,
        "the Kafka admin client",
    )?;
    let want = settings.engine.partitions;
    let topic = &kafka.events_topic;
    // Created first, not looked up first: a metadata request for a missing topic makes some
    // brokers create it with their default partition count.
    let new = NewTopic::new(topic, want as i32, TopicReplication::Fixed(-1));
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    match admin.create_topics([&new], &options).await {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(_) => tracing::info!(topic, partitions = want, "created the events topic"),
                    Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, code)) => anyhow::bail!("creating the events topic {topic}: {code}"),
                }
            }
        }
        // A cluster that does not take CreateTopics requests: the topic must exist already.
        Err(e) => {
            tracing::warn!(topic, error = %e, "could not create the events topic; expecting it to exist")
        }
    }
    // Wait until the topic's partitions are known.
    let mut have = 0;
    for _ in 0..100 {
        have = tokio::task::block_in_place(|| partition_count(admin.inner(), topic))?;
        if have > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(
        have == want,
        "the events topic {topic} has {have} partitions and engine.partitions is {want}: a principal's \
         state lives in the partition its key hashes to, so the count is fixed once the topic exists; \
         set engine.partitions = {have}, or start over with a new events topic (and checkpoint.url)"
    );
    Ok(())
}

/// Runs the Kafka service in `role` until `shutdown` resolves.
pub async fn run_kafka(
    settings: Settings,
    run: RunSettings,
    rules: Option<Arc<RuleSet>>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<RunReport> {
    let role = run.role;
    check_options(&run.kafka)?;
    tokio::pin!(shutdown);
    // Start-up waits on the brokers for as long as they take to answer (or not): a stop asked
    // meanwhile ends it, with nothing consumed yet and nothing to checkpoint.
    let ensuring = tokio::spawn({
        let (settings, run) = (settings.clone(), run.clone());
        async move { ensure_events_topic(&settings, &run).await }
    });
    tokio::select! {
        ensured = ensuring => ensured.context("checking the events topic")??,
        _ = &mut shutdown => {
            tracing::info!("stopped while starting: nothing consumed yet");
            return Ok(RunReport::default());
        }
    }
    let mut report = RunReport::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_detect = Arc::new(AtomicBool::new(false));

    let detect = (role != Role::Decode).then(|| {
        let (settings, run, rules, metrics) =
            (settings.clone(), run.clone(), rules.clone(), Arc::clone(&metrics));
        let (runtime, stop) = (tokio::runtime::Handle::current(), Arc::clone(&stop_detect));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("detect".into())
            .spawn(move || {
                let _ = done_tx.send(detect::run(settings, run, rules, metrics, runtime, stop));
            })
            .map(|_| done_rx)
    });
    let mut detect = match detect {
        Some(spawned) => Some(spawned.context("starting the detect stage")?),
        None => None,
    };

    let (decode_result, detect_result) = {
        let decoding = async {
            if role == Role::Detect {
                return Ok(());
            }
            decode::run(&settings, &run, rules.clone(), &metrics, stop_rx, &mut report).await
        };
        tokio::pin!(decoding);
        let mut decode_result = None;
        let mut detect_result = None;
        loop {
            tokio::select! {
                _ = &mut shutdown, if !*stop_tx.borrow() => {
                    tracing::info!("stopping: finishing the work in hand");
                    // `send_replace`, not `send`: with no decode stage (role detect) there is
                    // no receiver, `send` would leave the flag down and the finished signal
                    // future would be polled again.
                    stop_tx.send_replace(true);
                    stop_detect.store(true, Ordering::Relaxed);
                }
                result = &mut decoding, if decode_result.is_none() => {
                    if result.is_err() || role == Role::Decode {
                        stop_detect.store(true, Ordering::Relaxed);
                    }
                    decode_result = Some(result);
                }
                result = async { detect.as_mut().expect("guarded").await }, if detect.is_some() && detect_result.is_none() => {
                    let result = result.unwrap_or_else(|_| Err(anyhow::anyhow!("the detect stage stopped")));
                    stop_tx.send_replace(true);
                    detect_result = Some(result);
                }
            }
            let decode_done = decode_result.is_some();
            let detect_done = detect.is_none() || detect_result.is_some();
            if decode_done && detect_done {
                break;
            }
        }
        (decode_result, detect_result)
    };
    decode_result.unwrap_or(Ok(()))?;
    if let Some(result) = detect_result {
        let detected = result?;
        report.anomalies += detected.anomalies;
        report.checkpoints += detected.snapshots;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::leave_group;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn leaving_the_group_is_waited_for_when_it_finishes() {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        assert!(leave_group("test", Duration::from_secs(30), move || {
            flag.store(true, Ordering::SeqCst)
        }));
        assert!(
            ran.load(Ordering::SeqCst),
            "the step ran before leave_group returned"
        );
    }

    #[test]
    fn a_coordinator_that_never_answers_does_not_hold_the_stop() {
        // The step ends only when `_never_tx` is dropped, at the end of the test: leave_group
        // returns on its bound or not at all.
        let (_never_tx, never_rx) = std::sync::mpsc::channel::<()>();
        let left = leave_group("test", Duration::from_millis(200), move || {
            let _ = never_rx.recv();
        });
        assert!(!left, "a step still waiting is reported as not finished");
    }
}
