//! End-to-end latency, notification produced → anomaly acknowledged on Kafka, against librdkafka's
//! mock cluster, through both stages (decode, the 12-partition events topic, detect):
//! `cargo bench --bench latency -- [--notifications N] [--interval-ms N] [--batch-wait-ms N]`.
//!
//! Each notification names a log file holding one `StopLogging` call (a rule match), produced at a
//! steady pace; the latency of each is the time from its production to the arrival of its anomaly
//! on the anomalies topic (which `run` produces only after fetch, decode, rules and detection).
//! Percentiles via hdrhistogram. The batch wait (`batch.max_wait`) is part of what is measured.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use trailwatch::config::Settings;
use trailwatch::config::StoreSettings;
use trailwatch::metrics::Metrics;
use trailwatch::rules::RuleSet;
use trailwatch::run::run;

/// The allocator the `trailwatch` binary runs with, so figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn record(id: &str) -> serde_json::Value {
    serde_json::json!({"eventVersion": "1.09", "eventTime": "2026-03-02T10:00:00Z", "eventID": id,
        "eventSource": "cloudtrail.amazonaws.com", "eventName": "StopLogging", "awsRegion": "us-east-1",
        "sourceIPAddress": "198.51.100.7", "userAgent": "aws-cli/2.15.0",
        "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/alice",
                         "accountId": "111122223333", "userName": "alice"},
        "requestParameters": {"name": "org-trail"}, "recipientAccountId": "111122223333"})
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    trailwatch::allocator::configure();
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let count: usize = arg("--notifications").map_or(500, |v| v.parse().expect("--notifications N"));
    let interval =
        Duration::from_millis(arg("--interval-ms").map_or(10, |v| v.parse().expect("--interval-ms N")));
    let max_wait =
        Duration::from_millis(arg("--batch-wait-ms").map_or(20, |v| v.parse().expect("--batch-wait-ms N")));

    let dir = tempfile::tempdir().unwrap();
    for i in 0..count {
        let body = serde_json::json!({"Records": [record(&format!("lat-{i}"))]});
        std::fs::write(dir.path().join(format!("f{i}.json")), body.to_string()).unwrap();
    }
    let cluster = MockCluster::new(1).unwrap();
    for topic in ["n", "a", "d"] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    // The events topic between the two stages, one partition per state partition.
    cluster.create_topic("e", 12, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let mut settings = Settings::from_toml(
        // No reorder window: an event is judged once every source has decoded up to its time.
        // With the default 10-minute window an event also waits for the watermark to pass it by
        // ten minutes of event time, which for live traffic adds about that much wall time to
        // every anomaly (a bench of steady, same-time records would only measure that wait).
        "[alerts]\ndedup_window = \"0s\"\n[engine]\nreorder_window = \"0s\"\n",
        "bench",
    )
    .unwrap();
    settings.detector.learning_events = u64::MAX; // rules only: no baseline anomalies
                                                  // librdkafka waits up to 500 ms for a fetch to fill by default; a latency-minded deployment
                                                  // lowers it through the passthrough, as here.
    let mut run_settings = Settings::from_toml(
        &format!(
            "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"latency\"\n\
             notifications_topic = \"n\"\nanomalies_topic = \"a\"\nevents_topic = \"e\"\n\
             dead_letter_topic = \"d\"\n[kafka.librdkafka]\n\"fetch.wait.max.ms\" = \"10\"\n\
             [fetch]\nretries = 0\n[metrics]\nlisten = \"\"\n"
        ),
        "latency bench",
    )
    .expect("valid settings")
    .run;
    run_settings.fetch.store = StoreSettings::Local(dir.path().to_owned());
    run_settings.batch_max_wait = max_wait;
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let rules = Arc::new(RuleSet::builtin().unwrap());
    let service = tokio::spawn(run(
        settings,
        run_settings,
        Some(rules),
        Arc::clone(&metrics),
        async move {
            let _ = stopped.await;
        },
    ));

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "latency-reader")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    consumer.subscribe(&["a"]).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    // Let the service join its groups before timing anything (on the mock cluster, the events
    // topic's creation request first times out: the mock takes none).
    let waiting = Instant::now();
    while !metrics.is_ready() && waiting.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let producing = {
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            for i in 0..count {
                let payload =
                    serde_json::json!({"s3Bucket": "b", "s3ObjectKey": [format!("f{i}.json")]}).to_string();
                sent.lock().unwrap().insert(format!("lat-{i}"), Instant::now());
                producer
                    .send(
                        FutureRecord::<(), _>::to("n").payload(&payload),
                        Duration::from_secs(5),
                    )
                    .await
                    .unwrap();
                tokio::time::sleep(interval).await;
            }
        })
    };
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let started = Instant::now();
    while histogram.len() < count as u64 && started.elapsed() < Duration::from_secs(300) {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await else {
            break;
        };
        let arrived = Instant::now();
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
        let id = v["evidence"]["event_ids"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Some(at) = sent.lock().unwrap().remove(&id) {
            histogram
                .record((arrived - at).as_micros().max(1) as u64)
                .unwrap();
        }
    }
    producing.await.unwrap();
    stop.send(()).unwrap();
    service.await.unwrap().unwrap();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "notification produced → anomaly on Kafka, {} of {count} notifications, one every {:?}, batch.max_wait {:?}:",
        histogram.len(),
        interval,
        max_wait
    );
    println!(
        "  p50 {:.1} ms   p99 {:.1} ms   p99.9 {:.1} ms   max {:.1} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        histogram.max() as f64 / 1000.0
    );
}
