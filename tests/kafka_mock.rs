//! `run` against librdkafka's in-process mock cluster (real Kafka protocol), with broker errors
//! injected mid-run: nothing lost, offsets committed only for finished work.

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

const NOTIFICATIONS: &str = "notifications";
const ANOMALIES: &str = "anomalies";
const DEAD: &str = "dead-letters";

fn settings() -> Settings {
    let mut settings =
        Settings::from_toml("[replay]\nworkers = 2\n[alerts]\ndedup_window = \"0s\"\n", "test").unwrap();
    settings.detector.learning_period = 2 * 86_400;
    settings
}

/// Object keys of the trail, relative to `root`, in delivery order.
fn keys(root: &Path) -> Vec<String> {
    let (files, _) = list_inputs(&[root.join("AWSLogs")]).unwrap();
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
    let (files, _) = list_inputs(&[trail.join("AWSLogs")]).unwrap();
    let mut expected_lines = Vec::new();
    replay(
        files,
        &settings(),
        Some(Arc::clone(&rules)),
        &mut expected_lines,
        &|_| {},
    )
    .unwrap();
    let expected: BTreeSet<String> = String::from_utf8(expected_lines)
        .unwrap()
        .lines()
        .map(id_of)
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

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let mut payloads: Vec<String> = keys(&trail)
        .into_iter()
        .map(|k| serde_json::json!({"s3Bucket": "trail", "s3ObjectKey": [k]}).to_string())
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
        producer
            .send(
                FutureRecord::<(), _>::to(NOTIFICATIONS).payload(p),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
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
