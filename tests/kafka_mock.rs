//! `run` against librdkafka's in-process mock cluster (real Kafka protocol), with broker errors
//! injected mid-run: nothing lost, offsets committed only for finished work.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use trailwatch::config::Settings;
use trailwatch::config::StoreSettings;
use trailwatch::generate::{generate, GenerateOptions};
use trailwatch::metrics::Metrics;
use trailwatch::replay::{list_inputs, replay};
use trailwatch::rules::RuleSet;
use trailwatch::run::{run, DeadLetter};

use common::{evidence, ids_and_counts, write_stopper_file};
use serde_json::Value;

const NOTIFICATIONS: &str = "notifications";
const ANOMALIES: &str = "anomalies";
const DEAD: &str = "dead-letters";

fn settings() -> Settings {
    let mut settings =
        Settings::from_toml("[replay]\nworkers = 2\n[alerts]\ndedup_window = \"0s\"\n", "test").unwrap();
    settings.detector.learning_period = 2 * 86_400;
    settings
}

/// Object keys of the log files under `listed`, relative to `root`, in delivery order.
fn keys(root: &Path, listed: &Path) -> Vec<String> {
    let (files, _) = list_inputs(&[listed.to_owned()]).unwrap();
    files
        .iter()
        .map(|f| {
            f.path()
                .unwrap()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The anomaly lines replay raises over the log files under `dir`.
fn replayed(dir: &Path, settings: &Settings, rules: &Arc<RuleSet>) -> Vec<String> {
    let (files, _) = list_inputs(&[dir.to_owned()]).unwrap();
    let mut lines = Vec::new();
    replay(files, settings, Some(Arc::clone(rules)), &mut lines, &|_| {}).unwrap();
    String::from_utf8(lines)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The notification of one object of the trail's bucket.
fn notification(key: &str) -> String {
    serde_json::json!({"s3Bucket": "trail", "s3ObjectKey": [key]}).to_string()
}

/// A producer to the mock cluster at `brokers`.
fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap()
}

/// Produces `payload` to the notifications topic.
async fn notify(producer: &FutureProducer, payload: &str) {
    producer
        .send(
            FutureRecord::<(), _>::to(NOTIFICATIONS).payload(payload),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
}

/// An anomaly line's `id`.
fn id_of(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn read_topic(
    brokers: &str,
    topic: &str,
    want: impl Fn(&[String]) -> bool,
    limit: Duration,
) -> Vec<String> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("verify-{topic}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !want(&got) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()),
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mock_cluster_run_loses_nothing_through_broker_errors() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "trailwatch=info".into()))
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("bucket");
    generate(&GenerateOptions {
        out: trail.clone(),
        seed: 5,
        days: 10,
        principals: 12,
        events_per_day: 40,
        ..GenerateOptions::default()
    })
    .unwrap();
    // Bad objects beside the good ones.
    std::fs::write(
        trail.join("corrupt.json.gz"),
        [
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 0x07, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    )
    .unwrap();
    std::fs::write(trail.join("not-cloudtrail.json"), br#"{"hello":"world"}"#).unwrap();
    // An object that fails as if only for now, every time, while the others are fetched: read
    // `source.max_attempts` times, then given up on. (Reading /proc/self/mem from its start
    // fails for everyone, root included.)
    std::os::unix::fs::symlink("/proc/self/mem", trail.join("unreadable.json")).unwrap();

    let rules = Arc::new(RuleSet::builtin().unwrap());
    // What replay raises over the same files, in the same order, is what run must deliver.
    let expected: BTreeSet<String> = replayed(&trail.join("AWSLogs"), &settings(), &rules)
        .iter()
        .map(|l| id_of(l))
        .collect();
    assert!(
        expected.len() >= 5,
        "the trail raises anomalies: {}",
        expected.len()
    );

    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic(NOTIFICATIONS, 1, 3).unwrap();
    cluster.create_topic(ANOMALIES, 2, 3).unwrap();
    cluster.create_topic(DEAD, 1, 3).unwrap();
    // The mock cluster takes no CreateTopics requests: the events topic is made here.
    cluster.create_topic("trailwatch-events", 12, 3).unwrap();
    let brokers = cluster.bootstrap_servers();

    let producer = producer(&brokers);
    let mut payloads: Vec<String> = keys(&trail, &trail.join("AWSLogs"))
        .iter()
        .map(|k| notification(k))
        .collect();
    let bad = [
        "{\"Type\":\"Notification\",\"Message\":".to_owned(),
        r#"{"unexpected":"shape"}"#.to_owned(),
        r#"{"s3Bucket":"trail","s3ObjectKey":["AWSLogs/missing.json.gz"]}"#.to_owned(),
        r#"{"s3Bucket":"trail","s3ObjectKey":["corrupt.json.gz"]}"#.to_owned(),
        r#"{"s3Bucket":"trail","s3ObjectKey":["not-cloudtrail.json"]}"#.to_owned(),
        r#"{"s3Bucket":"trail","s3ObjectKey":["unreadable.json"]}"#.to_owned(),
    ];
    // Bad input in the middle of the stream: the pipeline must go on past it.
    let middle = payloads.len() / 2;
    payloads.splice(middle..middle, bad.iter().cloned());
    for p in &payloads {
        notify(&producer, p).await;
    }

    // Broker errors while trailwatch produces and commits: retried, not lost.
    let transient = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 4];
    cluster.request_errors(RDKafkaApiKey::Produce, &transient);
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 2],
    );

    let mut run_settings = Settings::from_toml(
        &format!(
            "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"trailwatch-test\"\n\
             notifications_topic = \"{NOTIFICATIONS}\"\nanomalies_topic = \"{ANOMALIES}\"\n\
             dead_letter_topic = \"{DEAD}\"\n\
             [fetch]\nconcurrency = 8\nretries = 0\nmax_backoff = \"50ms\"\nretry_pause = \"100ms\"\n\
             [checkpoint]\nurl = \"{}\"\ninterval = \"500ms\"\n\
             [batch]\nmax_messages = 200\nmax_wait = \"200ms\"\n[metrics]\nlisten = \"\"\n\
             [source]\nmax_attempts = 3\n",
            dir.path().join("checkpoint").display()
        ),
        "mock cluster test",
    )
    .expect("valid settings")
    .run;
    // The folder stands in for the bucket the notifications name.
    run_settings.fetch.store = StoreSettings::Local(trail.clone());
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(run(
        settings(),
        run_settings,
        Some(rules),
        Arc::clone(&metrics),
        async move {
            let _ = stop_rx.await;
        },
    ));

    let want = expected.len();
    let anomalies = read_topic(
        &brokers,
        ANOMALIES,
        |got| got.iter().map(|l| id_of(l)).collect::<BTreeSet<_>>().len() >= want,
        Duration::from_secs(120),
    )
    .await;
    let dead = read_topic(
        &brokers,
        DEAD,
        |got| got.len() >= bad.len(),
        Duration::from_secs(30),
    )
    .await;
    let _ = stop_tx.send(()); // the service may have stopped on its own: its result says why
    let report = tokio::time::timeout(Duration::from_secs(60), service)
        .await
        .expect("the service stops within a minute of being told to")
        .expect("the service task does not panic")
        .unwrap_or_else(|e| panic!("the service fails: {e:#}"));

    let got: BTreeSet<String> = anomalies.iter().map(|l| id_of(l)).collect();
    assert_eq!(
        got, expected,
        "run delivers exactly the anomalies replay raises (duplicates allowed)"
    );

    let dead: Vec<DeadLetter> = dead.iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let reasons: BTreeSet<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "corrupt_gzip",
            "malformed_notification",
            "missing_object",
            "not_cloudtrail",
            "unknown_shape",
            "unreadable"
        ]
        .into_iter()
        .collect()
    );
    let unreadable = dead.iter().find(|d| d.reason == "unreadable").unwrap();
    assert!(
        unreadable.detail.contains("gave up after 3 attempts")
            && unreadable.object.as_deref() == Some("s3://trail/unreadable.json"),
        "{unreadable:?}"
    );
    assert!(dead
        .iter()
        .all(|d| d.source.topic == NOTIFICATIONS && d.source.offset >= 0));
    // The notifications after the unreadable one were read again with it, each time.
    assert!(report.notifications as usize >= payloads.len());
    assert!(report.retries >= 2, "{report:?}");

    // Every notification was finished, so every offset is committed.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "trailwatch-test")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(NOTIFICATIONS, 0);
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let offset = committed.find_partition(NOTIFICATIONS, 0).unwrap().offset();
    assert_eq!(offset, Offset::Offset(payloads.len() as i64));

    // The metrics saw the same run.
    let text = metrics.render();
    for reason in [
        "corrupt_gzip",
        "malformed_notification",
        "missing_object",
        "not_cloudtrail",
        "unknown_shape",
        "unreadable",
    ] {
        assert!(
            text.contains(&format!("trailwatch_dead_letters_total{{reason=\"{reason}\"}} 1")),
            "{reason}:\n{text}"
        );
    }
    assert!(text.contains("trailwatch_checkpoint_last_success_timestamp_seconds"));
    assert_eq!(metrics.files.with_label_values(&["failed"]).get(), 2);
    assert!(metrics.anomalies.with_label_values(&["rule_match", "high"]).get() > 0);
}

/// The settings of the mock cluster's service for `dir`, its objects read from `store`.
fn run_settings(brokers: &str, dir: &Path, store: &Path) -> trailwatch::config::RunSettings {
    let mut run = Settings::from_toml(
        &format!(
            "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"trailwatch-test\"\n\
             notifications_topic = \"{NOTIFICATIONS}\"\nanomalies_topic = \"{ANOMALIES}\"\n\
             dead_letter_topic = \"{DEAD}\"\n\
             [kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
             [checkpoint]\nurl = \"{}\"\ninterval = \"200ms\"\n\
             [batch]\nmax_messages = 200\nmax_wait = \"100ms\"\n[metrics]\nlisten = \"\"\n",
            dir.join("checkpoint").display()
        ),
        "mock cluster test",
    )
    .expect("valid settings")
    .run;
    run.fetch.store = StoreSettings::Local(store.to_owned());
    run
}

/// A historical trail in two parts, with the service stopped after the first and another
/// process taking its notifications partition over before the second. The new process goes
/// idle before the second part comes: it reads the newest event time the first one committed
/// with its offset, so its idle mark stops short of the second part, which is then judged in
/// event-time order, as replay judges it. (Marking the present, it would judge the second
/// part late, in the order it came, and its alert would be the later record's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_taking_a_historical_trail_over_after_a_pause_gives_replays_anomalies() {
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("bucket");
    std::fs::create_dir(&trail).unwrap();
    write_stopper_file(&trail, "20250602T1005Z", "2025-06-02T10:00:00Z", "stop-first");
    // An hour later in event time, delivered in the opposite order of their events.
    write_stopper_file(&trail, "20250602T1110Z", "2025-06-02T11:03:00Z", "stop-later");
    write_stopper_file(&trail, "20250602T1115Z", "2025-06-02T11:01:00Z", "stop-earlier");
    let names = keys(&trail, &trail);

    let settings = || {
        Settings::from_toml(
            "[replay]\nworkers = 2\n[engine]\nidle_after = \"200ms\"\n",
            "test",
        )
        .unwrap()
    };
    let rules = Arc::new(RuleSet::builtin().unwrap());
    let replayed: Vec<Value> = replayed(&trail, &settings(), &rules)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replayed.len(), 2, "{replayed:#?}");

    let cluster = MockCluster::new(1).unwrap();
    for (topic, partitions) in [
        (NOTIFICATIONS, 1),
        (ANOMALIES, 1),
        (DEAD, 1),
        ("trailwatch-events", 12),
    ] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let producer = producer(&brokers);
    let start = || {
        let metrics = Arc::new(Metrics::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = tokio::spawn(run(
            settings(),
            run_settings(&brokers, dir.path(), &trail),
            Some(Arc::clone(&rules)),
            Arc::clone(&metrics),
            async move {
                let _ = stopped.await;
            },
        ));
        (service, stop, metrics)
    };
    let stop = |service: tokio::task::JoinHandle<anyhow::Result<_>>,
                stop: tokio::sync::oneshot::Sender<()>| async move {
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(60), service)
            .await
            .expect("the service stops within a minute of being told to")
            .expect("the service task does not panic")
            .unwrap_or_else(|e| panic!("the service fails: {e:#}"));
    };
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what} within a minute");
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // The first part, committed, and a pause past `engine.idle_after`.
    let (service, stop_first, _) = start();
    notify(&producer, &notification(&names[0])).await;
    tokio::task::block_in_place(|| until("the first part committed", &|| committed_offset(&brokers) == 1));
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop(service, stop_first).await;

    // Another process takes the partition over and goes idle; then the second part comes.
    let (service, stop_second, metrics) = start();
    tokio::task::block_in_place(|| until("the partition assigned", &|| metrics.is_ready()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    notify(&producer, &notification(&names[1])).await;
    notify(&producer, &notification(&names[2])).await;
    let served = read_topic(
        &brokers,
        ANOMALIES,
        |got| got.iter().any(|l| l.contains("\"count\":2")),
        Duration::from_secs(60),
    )
    .await;
    stop(service, stop_second).await;

    let served: Vec<Value> = served.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        ids_and_counts(&served),
        ids_and_counts(&replayed),
        "the service's anomalies (ids and counts) are replay's\nservice: {served:#?}"
    );
    assert_eq!(
        evidence(&served).last().map(|ids| ids[0].as_str()),
        Some("stop-earlier"),
        "the second alert is opened by the earlier record"
    );
}

/// The notifications offset the service's group committed.
fn committed_offset(brokers: &str) -> i64 {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "trailwatch-test")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(NOTIFICATIONS, 0);
    consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .ok()
        .and_then(|c| c.find_partition(NOTIFICATIONS, 0)?.offset().to_raw())
        .unwrap_or(0)
}
