//! The detect stage: throughput from the events topic, and the time to take up one partition's
//! state as a function of its size.
//!
//! `cargo bench --bench detect -- [--principals 120,600,3000] [--days N] [--events-per-day N]`
//!
//! For each principal count, a trail is generated and decoded once (the decode stage's work, not
//! measured here); its events become events-topic records keyed by principal, as the decode stage
//! writes them. Then:
//! - **in process**: one thread reads every record of the 12 partitions (JSON to event, reorder
//!   buffer, detectors, shipped rules' threshold counters): the detect stage's cost per core;
//! - **through Kafka**: the records are produced to librdkafka's mock cluster (each partition's
//!   first 4 MiB: the mock keeps no more), followed by a mark that releases them all, and one
//!   `run --role detect` consumes them; events/s from its first record to its last (the group
//!   join before is not counted). The detect stage runs on one thread per process, so this is
//!   also per core;
//! - **restore**: each partition is snapshotted into a local checkpoint store and taken up again
//!   (read, inflate, parse, rebuild), as a detect process does on assignment: median time, by the
//!   snapshot's size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use trailwatch::config::Role;
use trailwatch::config::Settings;
use trailwatch::config::StoreSettings;
use trailwatch::decode::{DecodeLimits, Decoder};
use trailwatch::detect::Detector;
use trailwatch::engine::wire::{EventRecord, EventsMessage, SourceMark};
use trailwatch::engine::{partition_of, StatePartition};
use trailwatch::generate::{generate, GenerateOptions};
use trailwatch::metrics::Metrics;
use trailwatch::replay::list_inputs;
use trailwatch::rules::RuleSet;
use trailwatch::run::run;
use trailwatch::state::SnapshotStore;

/// The allocator the `trailwatch` binary runs with, so figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PARTITIONS: u32 = 12;

/// What librdkafka's mock cluster keeps of a partition, with room to spare.
const MOCK_PARTITION_BYTES: usize = 4 << 20;

/// Events-topic records of a generated trail, by partition, in the order the decode stage would
/// write them (files by delivery time).
struct Records {
    by_partition: Vec<Vec<(String, Vec<u8>)>>,
    events: usize,
    newest: i64,
}

fn records(principals: u32, days: u32, events_per_day: u32, rules: &Arc<RuleSet>) -> Records {
    let dir = tempfile::tempdir().unwrap();
    generate(&GenerateOptions {
        out: dir.path().to_owned(),
        seed: 5,
        days,
        principals,
        events_per_day,
        ..GenerateOptions::default()
    })
    .unwrap();
    let (files, _) = list_inputs(&[dir.path().join("AWSLogs")]).unwrap();
    let mut decoder = Decoder::with_rules(DecodeLimits::default(), Some(Arc::clone(rules)));
    let mut by_partition: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); PARTITIONS as usize];
    let (mut events, mut newest) = (0, i64::MIN);
    for file in files {
        let bytes = std::fs::read(file.path().unwrap()).unwrap();
        for event in decoder.decode(&file.name, &bytes).events {
            let key = event.principal.key.to_string();
            newest = newest.max(event.time);
            let payload =
                serde_json::to_vec(&EventsMessage::Event(EventRecord::of(event, Some(rules)))).unwrap();
            by_partition[partition_of(&key, PARTITIONS) as usize].push((key, payload));
            events += 1;
        }
    }
    Records {
        by_partition,
        events,
        newest,
    }
}

/// The mark that releases every record: one source, past the newest event by the reorder window.
fn final_mark(settings: &Settings, newest: i64) -> Vec<u8> {
    serde_json::to_vec(&EventsMessage::Mark(SourceMark {
        source: 0,
        sources: 1,
        time: newest + settings.engine.reorder_window + 1,
    }))
    .unwrap()
}

fn fresh(settings: &Settings, rules: &Arc<RuleSet>) -> StatePartition {
    let detector = Detector::with_rules(
        settings.detector.clone(),
        PARTITIONS as usize,
        Some(Arc::clone(rules)),
    );
    StatePartition::sourced(detector, settings.engine.reorder_window)
}

/// Judges every record in one thread, as one detect process owning every partition does.
fn in_process(
    settings: &Settings,
    rules: &Arc<RuleSet>,
    records: &Records,
) -> (Duration, Vec<StatePartition>, usize) {
    let mark = final_mark(settings, records.newest);
    let started = Instant::now();
    let mut out = Vec::new();
    let mut anomalies = 0;
    let mut partitions = Vec::new();
    for payloads in &records.by_partition {
        let mut partition = fresh(settings, rules);
        for (_, payload) in payloads
            .iter()
            .map(|(k, p)| (k, &p[..]))
            .chain([(&String::new(), &mark[..])])
        {
            match serde_json::from_slice::<EventsMessage>(payload).unwrap() {
                EventsMessage::Event(record) => partition.offer(record.into_event(Some(rules)), &mut out),
                EventsMessage::Mark(mark) => partition.mark(mark, &mut out),
            }
            anomalies += out.len();
            out.clear();
        }
        partitions.push(partition);
    }
    (started.elapsed(), partitions, anomalies)
}

/// Produces the records to the mock cluster and times one detect-only `run` over them.
async fn through_kafka(settings: &Settings, rules: &Arc<RuleSet>, records: &Records) -> (u64, Duration) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("n", 1, 1).unwrap();
    cluster.create_topic("a", 1, 1).unwrap();
    cluster.create_topic("d", 1, 1).unwrap();
    cluster.create_topic("e", PARTITIONS as i32, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let mark = final_mark(settings, records.newest);
    let mut want = 0u64;
    for (partition, payloads) in records.by_partition.iter().enumerate() {
        // The mock cluster keeps a few megabytes per partition and drops the oldest records past
        // that: a partition's first records only, up to what it keeps.
        let mut bytes = 0;
        let kept = payloads
            .iter()
            .take_while(|(_, p)| {
                bytes += p.len() + 64;
                bytes <= MOCK_PARTITION_BYTES
            })
            .count();
        want += kept as u64;
        let mut deliveries = Vec::with_capacity(kept + 1);
        for (key, payload) in &payloads[..kept] {
            let record = FutureRecord::to("e")
                .partition(partition as i32)
                .key(key.as_bytes())
                .payload(&payload[..]);
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        let record = FutureRecord::<[u8], [u8]>::to("e")
            .partition(partition as i32)
            .payload(&mark[..]);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        for d in deliveries {
            d.await.unwrap().unwrap();
        }
        use rdkafka::producer::Producer as _;
        let (low, _) = producer
            .client()
            .fetch_watermarks("e", partition as i32, Duration::from_secs(5))
            .unwrap();
        assert_eq!(low, 0, "the mock cluster kept partition {partition} whole");
    }

    let mut run_settings = Settings::from_toml(
        &format!(
            "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"detect-bench\"\n\
             notifications_topic = \"n\"\nanomalies_topic = \"a\"\nevents_topic = \"e\"\n\
             dead_letter_topic = \"d\"\n[batch]\nmax_wait = \"20ms\"\n[metrics]\nlisten = \"\"\n"
        ),
        "detect bench",
    )
    .expect("valid settings")
    .run;
    run_settings.role = Role::Detect;
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(run(
        settings.clone(),
        run_settings,
        Some(Arc::clone(rules)),
        Arc::clone(&metrics),
        async move {
            let _ = stopped.await;
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    let mut reported = Instant::now();
    while metrics.events_consumed.get() < want && Instant::now() < deadline {
        if reported.elapsed() > Duration::from_secs(10) {
            eprintln!("  … {} of {want} records read", metrics.events_consumed.get());
            reported = Instant::now();
        }
        if first.is_none() && metrics.events_consumed.get() > 0 {
            first = Some((Instant::now(), metrics.events_consumed.get()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ended = Instant::now();
    let consumed = metrics.events_consumed.get();
    stop.send(()).unwrap();
    service.await.unwrap().unwrap();
    assert_eq!(consumed, want, "the detect stage read every record");
    let (began, already) = first.expect("the detect stage read something");
    // Per record after the first one seen, scaled to all of them.
    (
        want,
        (ended - began).mul_f64(want as f64 / (want - already).max(1) as f64),
    )
}

/// Snapshots each partition into a local store and takes it up again: (median seconds, mean
/// compressed bytes, mean principals) per partition.
async fn restore(
    settings: &Settings,
    rules: &Arc<RuleSet>,
    partitions: Vec<StatePartition>,
) -> (f64, usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(
        &dir.path().display().to_string(),
        &StoreSettings::Local(dir.path().to_owned()),
    )
    .unwrap();
    let mut principals = 0;
    for (i, partition) in partitions.iter().enumerate() {
        principals += partition.detector().principals();
        store
            .save(i as u32, 1, "bench", partition.snapshot(Some(rules)))
            .await
            .unwrap();
    }
    drop(partitions);
    let mut times = Vec::new();
    let mut bytes = 0;
    for round in 0..3 {
        for i in 0..PARTITIONS {
            let started = Instant::now();
            let found = store.load(i).await.unwrap().0.expect("a snapshot");
            let size = found.bytes;
            let detector = Detector::with_rules(
                settings.detector.clone(),
                PARTITIONS as usize,
                Some(Arc::clone(rules)),
            );
            let restored = StatePartition::restore(
                detector,
                settings.engine.reorder_window,
                found.snapshot,
                Some(rules),
            );
            times.push(started.elapsed().as_secs_f64());
            std::hint::black_box(restored);
            if round == 0 {
                bytes += size;
            }
        }
    }
    times.sort_by(f64::total_cmp);
    (
        times[times.len() / 2],
        bytes / PARTITIONS as usize,
        principals / PARTITIONS as usize,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    trailwatch::allocator::configure();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let principal_counts: Vec<u32> = arg("--principals")
        .unwrap_or_else(|| "120,600,3000".into())
        .split(',')
        .map(|n| n.parse().expect("--principals N,N,..."))
        .collect();
    let days: u32 = arg("--days").map_or(14, |v| v.parse().expect("--days N"));
    let events_per_day: u32 = arg("--events-per-day").map_or(40, |v| v.parse().expect("--events-per-day N"));

    let settings = Settings::default();
    let rules = Arc::new(RuleSet::builtin().unwrap());
    println!(
        "detect stage, {PARTITIONS} partitions, shipped rules, {days} days, {events_per_day} events per principal-day"
    );
    println!(
        "{:>10} {:>9} {:>16} {:>16} {:>14} {:>12} {:>12}",
        "principals",
        "events",
        "in process ev/s",
        "via Kafka ev/s",
        "principals/p",
        "snapshot/p",
        "restore p50"
    );
    for principals in principal_counts {
        let records = records(principals, days, events_per_day, &rules);
        let (took, partitions, _) = in_process(&settings, &rules, &records);
        let in_process_rate = records.events as f64 / took.as_secs_f64();
        let (read, took) = through_kafka(&settings, &rules, &records).await;
        let kafka_rate = read as f64 / took.as_secs_f64();
        let (restore_s, bytes, per_partition) = restore(&settings, &rules, partitions).await;
        println!(
            "{principals:>10} {:>9} {:>16.0} {:>16.0} {per_partition:>14} {:>9.1} KiB {:>9.2} ms",
            records.events,
            in_process_rate,
            kafka_rate,
            bytes as f64 / 1024.0,
            restore_s * 1000.0
        );
    }
}
