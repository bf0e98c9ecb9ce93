//! Throughput, side by side in one run, on two trails.
//!
//! The realistic trail (`generate --shape realistic`: production record shapes, thousands of
//! principals over 30 days) in three variants from the same seed: as generated (a few rule
//! matches), with no record a shipped rule matches ("quiet"), and with a large share that do
//! (an alert storm). Each round runs, in turn: the floor, the full replay with the shipped rules,
//! the replay without rules, the quiet and storm replays, and the Python peer
//! (`benches/peer.py`) in its first rounds. Then the classic trail (`generate`'s default shape):
//! floor, full replay, replay without rules. Then, in a child process, memory per principal.
//!
//! The floor is the limit, written apart from the engine: libdeflate inflates each file whole,
//! sonic-rs parses the records typed and borrowed into the fields the engine reads, on every core.
//!
//! After the rounds, the stages on one core: inflate, the floor, the engine's decoder without and
//! with rules, the detectors alone, each over the realistic trail's files held in memory.
//!
//! `cargo bench --bench throughput -- [--runs N] [--skip-stages | --stages-only] [--skip-memory]`,
//! sized by the environment: `TRAILWATCH_BENCH_RECORDS` (realistic trail, default 400000),
//! `TRAILWATCH_BENCH_STORM_RECORDS` (quiet and storm trails, default 200000),
//! `TRAILWATCH_BENCH_STORM_SHARE` (default 0.136),
//! `TRAILWATCH_BENCH_CLASSIC_RECORDS` (default 300000), `TRAILWATCH_BENCH_PEER_RUNS` (default 2),
//! `TRAILWATCH_BENCH_DIR` (keep the trails there and reuse them; default a temporary folder).
//!
//! Every measurement reads the same files, which the first pass leaves in the page cache. Ratios
//! are medians of per-round ratios, printed with the lowest and highest.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use trailwatch::config::Settings;
use trailwatch::detect::Detector;
use trailwatch::event::Event;
use trailwatch::generate::realistic::{generate_realistic, RealisticOptions};
use trailwatch::generate::{generate, GenerateOptions};
use trailwatch::principal::Principal;
use trailwatch::replay::{list_inputs, replay, InputFile};
use trailwatch::rules::RuleSet;

/// The allocator the `trailwatch` binary runs with, tuned as it is, so figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The floor's view of a log file: the fields the engine reads, borrowed where unescaped.
#[derive(Deserialize)]
struct FloorFile<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<FloorRecord<'a>>,
}

#[derive(Deserialize)]
struct FloorRecord<'a> {
    #[serde(rename = "eventTime", borrow, default)]
    event_time: Option<Cow<'a, str>>,
    #[serde(rename = "eventSource", borrow, default)]
    event_source: Option<Cow<'a, str>>,
    #[serde(rename = "eventName", borrow, default)]
    event_name: Option<Cow<'a, str>>,
    #[serde(rename = "eventType", borrow, default)]
    event_type: Option<Cow<'a, str>>,
    #[serde(rename = "eventID", borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(rename = "awsRegion", borrow, default)]
    aws_region: Option<Cow<'a, str>>,
    #[serde(rename = "sourceIPAddress", borrow, default)]
    source_ip: Option<Cow<'a, str>>,
    #[serde(rename = "userAgent", borrow, default)]
    user_agent: Option<Cow<'a, str>>,
    #[serde(rename = "errorCode", borrow, default)]
    error_code: Option<Cow<'a, str>>,
    #[serde(rename = "recipientAccountId", borrow, default)]
    recipient_account_id: Option<Cow<'a, str>>,
    #[serde(rename = "userIdentity", borrow, default)]
    user_identity: Option<FloorIdentity<'a>>,
}

#[derive(Deserialize)]
struct FloorIdentity<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "principalId", borrow, default)]
    principal_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arn: Option<Cow<'a, str>>,
    #[serde(rename = "accountId", borrow, default)]
    account_id: Option<Cow<'a, str>>,
    #[serde(rename = "userName", borrow, default)]
    user_name: Option<Cow<'a, str>>,
    #[serde(rename = "invokedBy", borrow, default)]
    invoked_by: Option<Cow<'a, str>>,
    #[serde(rename = "sessionContext", borrow, default)]
    session_context: Option<FloorSession<'a>>,
}

#[derive(Deserialize)]
struct FloorSession<'a> {
    #[serde(rename = "sessionIssuer", borrow, default)]
    session_issuer: Option<FloorIssuer<'a>>,
    #[serde(rename = "sourceIdentity", borrow, default)]
    source_identity: Option<Cow<'a, str>>,
    #[serde(rename = "ec2RoleDelivery", borrow, default)]
    ec2_role_delivery: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct FloorIssuer<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arn: Option<Cow<'a, str>>,
    #[serde(rename = "userName", borrow, default)]
    user_name: Option<Cow<'a, str>>,
}

impl FloorRecord<'_> {
    /// Touches every field read, so that none is optimised away.
    fn weight(&self) -> usize {
        let len = |v: &Option<Cow<str>>| v.as_ref().map_or(0, |s| s.len());
        let identity = self.user_identity.as_ref().map_or(0, |u| {
            let session = u.session_context.as_ref().map_or(0, |c| {
                let issuer = c
                    .session_issuer
                    .as_ref()
                    .map_or(0, |i| len(&i.kind) + len(&i.arn) + len(&i.user_name));
                issuer + len(&c.source_identity) + len(&c.ec2_role_delivery)
            });
            len(&u.kind)
                + len(&u.principal_id)
                + len(&u.arn)
                + len(&u.account_id)
                + len(&u.user_name)
                + len(&u.invoked_by)
                + session
        });
        len(&self.event_time)
            + len(&self.event_source)
            + len(&self.event_name)
            + len(&self.event_type)
            + len(&self.event_id)
            + len(&self.aws_region)
            + len(&self.source_ip)
            + len(&self.user_agent)
            + len(&self.error_code)
            + len(&self.recipient_account_id)
            + identity
    }
}

/// Inflates a gzip file whole with libdeflate into `out`, sized from the trailer's length.
fn inflate(decompressor: &mut libdeflater::Decompressor, bytes: &[u8], out: &mut Vec<u8>) -> bool {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        out.clear();
        out.extend_from_slice(bytes);
        return true;
    }
    let claimed = bytes.len().checked_sub(4).map_or(0, |at| {
        u32::from_le_bytes(bytes[at..].try_into().unwrap_or_default()) as usize
    });
    let mut room = claimed.max(1024);
    loop {
        out.resize(room, 0);
        match decompressor.gzip_decompress(bytes, out) {
            Ok(n) => {
                out.truncate(n);
                return true;
            }
            Err(libdeflater::DecompressionError::InsufficientSpace) if room < 1 << 30 => room *= 2,
            Err(_) => return false,
        }
    }
}

/// The floor's work on one file: inflated into `buf`, parsed typed; its records and the weight of
/// the fields read (nothing for a file that does not inflate or parse).
fn floor_file(
    decompressor: &mut libdeflater::Decompressor,
    bytes: &[u8],
    buf: &mut Vec<u8>,
) -> (usize, usize) {
    if !inflate(decompressor, bytes, buf) {
        return (0, 0);
    }
    match sonic_rs::from_slice::<FloorFile>(buf) {
        Ok(f) => (f.records.len(), f.records.iter().map(FloorRecord::weight).sum()),
        Err(_) => (0, 0),
    }
}

/// Inflate and typed parse of every record, on `threads` threads; returns the records seen.
fn floor(files: &[InputFile], threads: usize) -> usize {
    let next = AtomicUsize::new(0);
    let total = AtomicUsize::new(0);
    let checksum = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = Vec::new();
                let mut decompressor = libdeflater::Decompressor::new();
                let (mut n, mut sum) = (0, 0);
                while let Some(file) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let bytes = std::fs::read(file.path().unwrap()).expect("readable");
                    let (records, weight) = floor_file(&mut decompressor, &bytes, &mut buf);
                    n += records;
                    sum += weight;
                }
                total.fetch_add(n, Ordering::Relaxed);
                checksum.fetch_add(sum, Ordering::Relaxed);
            });
        }
    });
    std::hint::black_box(checksum.into_inner());
    total.into_inner()
}

/// CPU time used by every thread of this process so far (Linux; zero elsewhere), at the
/// kernel's clock-tick resolution (10 ms), small against runs of a second on each core.
fn process_cpu() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat").ok().and_then(|stat| {
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    });
    Duration::from_millis(ticks.unwrap_or(0) * 10)
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Feeds `principals` synthetic principals with a typical habit (20 events over 4 days: 3
/// services, 6 calls, 2 addresses, 1 agent, 1 region) and reports bytes held per principal.
fn memory_per_principal(principals: usize) -> (f64, u64) {
    let mut settings = Settings::default().detector;
    settings.max_principals = principals * 2;
    let mut detector = Detector::new(settings, 1);
    let object: Arc<str> = Arc::from("bench");
    let mut out = Vec::new();
    let calls = [
        ("s3.amazonaws.com", "GetObject"),
        ("s3.amazonaws.com", "PutObject"),
        ("kms.amazonaws.com", "Decrypt"),
        ("kms.amazonaws.com", "GenerateDataKey"),
        ("sts.amazonaws.com", "AssumeRole"),
        ("sts.amazonaws.com", "GetCallerIdentity"),
    ];
    for p in 0..principals {
        let key = format!("arn:aws:iam::111122223333:role/service-role-{p:07}");
        for e in 0..20u32 {
            let (source, name) = calls[e as usize % calls.len()];
            let ip = format!("10.{}.{}.{}", (p >> 16) & 255, (p >> 8) & 255, 1 + (e % 2));
            let event = Event {
                event_id: format!("{p}-{e}").into(),
                time: 1_772_409_600 + i64::from(e) * 18_000,
                event_source: source.into(),
                event_name: name.into(),
                aws_region: Some("eu-west-1".into()),
                ip: ip.parse().ok(),
                source: Some(ip.into()),
                user_agent: Some("aws-sdk-go-v2/1.25.3 os/linux lang/go#1.22.1".into()),
                agent_family: None,
                error_code: None,
                principal: Arc::new(Principal {
                    key: key.as_str().into(),
                    kind: "AssumedRole".into(),
                    account_id: Some("111122223333".into()),
                    arn: None,
                    session: None,
                }),
                object: Arc::clone(&object),
                principal_hashes: Default::default(),
                rule_hits: Vec::new(),
                raw: None,
            };
            detector.process(&event, &mut out);
        }
    }
    (
        detector.bytes_held() as f64 / detector.principals() as f64,
        peak_rss_kib(),
    )
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A realistic trail of about `records` records under `dir` (reused when already there).
fn realistic_trail(dir: &Path, records: u64, rule_share: f64) -> PathBuf {
    let out = dir.join(format!("realistic-{records}-{rule_share}-1h"));
    if !out.join("labels.jsonl").exists() {
        let defaults = RealisticOptions::default();
        let options = RealisticOptions {
            out: out.clone(),
            events_per_day: records as f64 / f64::from(defaults.principals) / f64::from(defaults.days),
            rule_share,
            file_span: 3_600,
            ..defaults
        };
        let started = Instant::now();
        let report = generate_realistic(&options).expect("the trail is written");
        eprintln!(
            "generated a realistic trail (rule share {rule_share}): {} records in {} files in {:.1}s",
            report.records,
            report.files,
            started.elapsed().as_secs_f64()
        );
    }
    out
}

fn classic_trail(dir: &Path, records: u32) -> PathBuf {
    let out = dir.join(format!("classic-{records}"));
    if !out.join("labels.jsonl").exists() {
        // About 0.9 records per principal-day-event: see the generator's rhythms.
        let options = GenerateOptions {
            out: out.clone(),
            principals: (records / (14 * 270)).max(8),
            events_per_day: 270,
            ..GenerateOptions::default()
        };
        let report = generate(&options).expect("the trail is written");
        eprintln!(
            "generated the classic trail: {} records in {} files",
            report.records, report.files
        );
    }
    out
}

/// A trail's log files, with a line about their size.
fn trail_files(name: &str, dir: &Path) -> Vec<InputFile> {
    let (files, _) = list_inputs(&[dir.join("AWSLogs")]).expect("the trail lists");
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f.path().unwrap()).map_or(0, |m| m.len()))
        .sum();
    println!(
        "{name}: {} files, {:.1} MiB compressed",
        files.len(),
        bytes as f64 / 1048576.0
    );
    files
}

thread_local! {
    /// The time spent waiting for replays' state to be freed, after they returned.
    static TEARDOWN: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// What one replay found: records read and anomalies emitted.
fn replay_files(files: &[InputFile], settings: &Settings, rules: Option<Arc<RuleSet>>) -> (usize, u64) {
    let mut sink = std::io::sink();
    let mut summary = replay(files.to_vec(), settings, rules, &mut sink, &|_| {}).expect("replay runs");
    let read = (summary.records as usize, summary.anomalies.values().sum());
    // Timed until the replay returns, as the command's user waits; its state is freed after that,
    // and the freeing is not left to take a core from the next measurement.
    let timed = Instant::now();
    summary.wait_for_teardown();
    TEARDOWN.with(|t| t.set(t.get() + timed.elapsed()));
    read
}

/// The Python peer, or why it cannot run.
fn peer_command() -> Result<std::process::Command, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer.py");
    match std::process::Command::new("python3")
        .args(["-c", "import orjson"])
        .output()
    {
        Err(e) => Err(format!("python3 cannot be started: {e}")),
        Ok(out) if !out.status.success() => Err("python3 has no orjson module".into()),
        Ok(_) => {
            let mut command = std::process::Command::new("python3");
            command.arg(script);
            Ok(command)
        }
    }
}

/// Runs the peer over `dir` on `threads` processes; returns its records, anomalies and seconds.
fn run_peer(dir: &Path, threads: usize) -> (usize, u64, f64) {
    let mut command = peer_command().expect("the peer was found runnable");
    let out = command
        .args(["--workers", &threads.to_string()])
        .arg(dir)
        .output()
        .expect("the peer runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        text.split_whitespace()
            .skip_while(|w| *w != name)
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    };
    (
        field("records").parse().expect("the peer's record count"),
        field("anomalies").parse().expect("the peer's anomaly count"),
        field("seconds").parse().expect("the peer's seconds"),
    )
}

/// Median (of the two middle values for an even count), lowest and highest.
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n.is_multiple_of(2) {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    } else {
        values[n / 2]
    };
    (median, values[0], values[n - 1])
}

fn main() {
    trailwatch::allocator::configure();
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let runs: usize = arg("--runs").map_or_else(
        || env_or("TRAILWATCH_BENCH_RUNS", 5),
        |v| v.parse().expect("--runs N"),
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Memory in a child process of its own, so that its peak RSS is the baselines' alone and the
    // throughput runs start from a fresh heap.
    if args.iter().any(|a| a == "--memory-only") {
        for principals in [100_000, 1_000_000] {
            let (per, rss) = memory_per_principal(principals);
            println!(
                "memory: {principals} principals: {per:.0} bytes per principal held; peak RSS {:.0} MiB",
                rss as f64 / 1024.0
            );
        }
        return;
    }

    let temp = tempfile::tempdir().expect("a temporary folder");
    let dir = std::env::var_os("TRAILWATCH_BENCH_DIR").map_or_else(|| temp.path().to_owned(), PathBuf::from);
    let records: u64 = env_or("TRAILWATCH_BENCH_RECORDS", 400_000);
    let storm_records: u64 = env_or("TRAILWATCH_BENCH_STORM_RECORDS", 200_000);
    let storm_share: f64 = env_or("TRAILWATCH_BENCH_STORM_SHARE", 0.136);
    let classic_records: u32 = env_or("TRAILWATCH_BENCH_CLASSIC_RECORDS", 300_000);
    let peer_runs: usize = env_or("TRAILWATCH_BENCH_PEER_RUNS", 2);

    let realistic_dir = realistic_trail(&dir, records, RealisticOptions::default().rule_share);
    let quiet_dir = realistic_trail(&dir, storm_records, 0.0);
    let storm_dir = realistic_trail(&dir, storm_records, storm_share);
    let classic_dir = classic_trail(&dir, classic_records);

    println!("machine: {threads} cores; {runs} rounds");
    let realistic = trail_files("realistic trail", &realistic_dir);
    let quiet = trail_files("quiet trail (no rule matches)", &quiet_dir);
    let storm = trail_files(
        &format!("storm trail ({storm_share} of records match rules)"),
        &storm_dir,
    );
    let classic = trail_files("classic trail", &classic_dir);

    let peer = peer_command();
    if let Err(why) = &peer {
        println!("python peer skipped: {why}");
    }

    let rules = Arc::new(RuleSet::builtin().expect("the shipped rules load"));
    if args.iter().any(|a| a == "--stages-only") {
        stages(&realistic, &rules, runs);
        return;
    }
    let settings = Settings::default();
    let n = floor(&realistic, threads);

    // One round: floor, full, without rules, quiet, storm, and the peer in the first rounds.
    let mut rounds: Vec<Round> = Vec::new();
    let (mut quiet_anomalies, mut storm_anomalies, mut full_anomalies) = (0, 0, 0);
    let mut peer_anomalies = 0;
    for round in 0..runs {
        let mut times = Vec::new();
        let mut timed = |f: &mut dyn FnMut() -> usize, expect: Option<usize>| {
            let (start, cpu, untimed) = (Instant::now(), process_cpu(), TEARDOWN.get());
            let got = f();
            if let Some(expect) = expect {
                assert_eq!(got, expect, "every measurement reads every record");
            }
            // The wall time without the wait for a replay's state to be freed; the CPU time with it.
            let wall = start.elapsed().saturating_sub(TEARDOWN.get() - untimed);
            times.push((wall, process_cpu().saturating_sub(cpu)));
        };
        timed(&mut || floor(&realistic, threads), Some(n));
        timed(
            &mut || {
                let (r, a) = replay_files(&realistic, &settings, Some(Arc::clone(&rules)));
                full_anomalies = a;
                r
            },
            Some(n),
        );
        timed(&mut || replay_files(&realistic, &settings, None).0, Some(n));
        timed(
            &mut || {
                let (r, a) = replay_files(&quiet, &settings, Some(Arc::clone(&rules)));
                quiet_anomalies = a;
                r
            },
            None,
        );
        timed(
            &mut || {
                let (r, a) = replay_files(&storm, &settings, Some(Arc::clone(&rules)));
                storm_anomalies = a;
                r
            },
            None,
        );
        let mut peer_seconds = None;
        if peer.is_ok() && round < peer_runs {
            let (r, a, seconds) = run_peer(&realistic_dir, threads);
            assert_eq!(r, n, "the peer reads every record");
            peer_anomalies = a;
            peer_seconds = Some(seconds);
        }
        rounds.push(Round { times, peer_seconds });
    }

    let wall = |i: usize| median(rounds.iter().map(|r| r.times[i].0).collect());
    let cpu = |i: usize| median(rounds.iter().map(|r| r.times[i].1).collect());
    let labels = [
        format!("floor, {threads} threads (libdeflate + sonic-rs)"),
        "full replay, shipped rules".into(),
        "replay without rules".into(),
        "quiet trail, full replay".into(),
        "storm trail, full replay".into(),
    ];
    let counts = [n, n, n, 0, 0];
    println!();
    println!("realistic trail, {n} records; medians of {runs} interleaved rounds:");
    for (i, label) in labels.iter().enumerate() {
        let rate = if counts[i] > 0 {
            format!("{:>10.0} records/s", counts[i] as f64 / wall(i).as_secs_f64())
        } else {
            String::new()
        };
        println!(
            "  {label:<44} {:>7.3}s  {rate}   CPU {:.2}s",
            wall(i).as_secs_f64(),
            cpu(i).as_secs_f64()
        );
    }
    let ratio = |i: usize| {
        spread(
            rounds
                .iter()
                .map(|r| r.times[0].0.as_secs_f64() / r.times[i].0.as_secs_f64())
                .collect(),
        )
    };
    let cpu_ratio = |i: usize| {
        spread(
            rounds
                .iter()
                .map(|r| r.times[0].1.as_secs_f64() / r.times[i].1.as_secs_f64().max(1e-3))
                .collect(),
        )
    };
    for (i, name) in [(1, "full replay / floor"), (2, "without rules / floor")] {
        let (m, lo, hi) = ratio(i);
        let (cm, clo, chi) = cpu_ratio(i);
        println!(
            "  {name}: {m:.2} (per round {lo:.2} to {hi:.2}); by CPU time {cm:.2} ({clo:.2} to {chi:.2})"
        );
    }
    println!("  anomalies: full replay {full_anomalies}; quiet {quiet_anomalies}; storm {storm_anomalies}");
    let extra = storm_anomalies.saturating_sub(quiet_anomalies).max(1) as f64;
    let per = |k: usize| {
        spread(
            rounds
                .iter()
                .map(|r| (r.times[4].k_secs(k) - r.times[3].k_secs(k)) / extra * 1e6)
                .collect(),
        )
    };
    let (m, lo, hi) = per(0);
    let (cm, clo, chi) = per(1);
    println!(
        "  per emitted anomaly beyond the quiet run: {m:.1} µs wall (per round {lo:.1} to {hi:.1}); {cm:.1} µs CPU ({clo:.1} to {chi:.1})"
    );
    let peer_ratios: Vec<f64> = rounds
        .iter()
        .filter_map(|r| Some(r.peer_seconds? / r.times[1].0.as_secs_f64()))
        .collect();
    if !peer_ratios.is_empty() {
        let seconds = rounds
            .iter()
            .filter_map(|r| r.peer_seconds)
            .fold(f64::MAX, f64::min);
        let (m, lo, hi) = spread(peer_ratios.clone());
        println!(
            "  python peer ({threads} processes, orjson): best {seconds:.2}s, {:.0} records/s, {peer_anomalies} anomalies",
            n as f64 / seconds
        );
        println!(
            "  full replay / python peer: {m:.1}× faster (per round {lo:.1} to {hi:.1}, {} rounds)",
            peer_ratios.len()
        );
    }

    if !args.iter().any(|a| a == "--skip-stages") {
        stages(&realistic, &rules, runs);
    }

    // The classic trail: floor and the two replays, interleaved.
    let c = floor(&classic, threads);
    let mut classic_rounds = Vec::new();
    for _ in 0..runs {
        let mut times = Vec::new();
        for job in 0..3 {
            let (start, cpu) = (Instant::now(), process_cpu());
            let got = match job {
                0 => floor(&classic, threads),
                1 => replay_files(&classic, &settings, Some(Arc::clone(&rules))).0,
                _ => replay_files(&classic, &settings, None).0,
            };
            assert_eq!(got, c, "every measurement reads every record");
            times.push((start.elapsed(), process_cpu().saturating_sub(cpu)));
        }
        classic_rounds.push(Round {
            times,
            peer_seconds: None,
        });
    }
    println!();
    println!("classic trail, {c} records; medians of {runs} interleaved rounds:");
    for (i, label) in ["floor", "full replay, shipped rules", "replay without rules"]
        .iter()
        .enumerate()
    {
        let w = median(classic_rounds.iter().map(|r| r.times[i].0).collect());
        println!(
            "  {label:<44} {:>7.3}s  {:>10.0} records/s",
            w.as_secs_f64(),
            c as f64 / w.as_secs_f64()
        );
    }
    for (i, name) in [(1, "full replay / floor"), (2, "without rules / floor")] {
        let (m, lo, hi) = spread(
            classic_rounds
                .iter()
                .map(|r| r.times[0].0.as_secs_f64() / r.times[i].0.as_secs_f64())
                .collect(),
        );
        println!("  {name}: {m:.2} (per round {lo:.2} to {hi:.2})");
    }

    if !args.iter().any(|a| a == "--skip-memory") {
        println!();
        let exe = std::env::current_exe().expect("the benchmark's own path");
        let status = std::process::Command::new(exe)
            .arg("--memory-only")
            .status()
            .expect("the memory measurement runs");
        assert!(status.success(), "the memory measurement failed");
    }
}

/// Where a record's time goes, on one core, against the floor's: the realistic trail's files read
/// into memory, then each stage over all of them, best of `runs` passes. Inflate alone; the floor
/// (inflate and typed parse); the engine's decoder (inflate, scan, principal, event) without rules
/// and with the shipped rules; and the detectors alone, one partition fed the decoded events.
fn stages(files: &[InputFile], rules: &Arc<RuleSet>, runs: usize) {
    use trailwatch::decode::{DecodeLimits, Decoder};
    use trailwatch::engine::{SharedEvents, StatePartition};

    let files: Vec<(Arc<str>, Vec<u8>)> = files
        .iter()
        .filter_map(|f| Some((Arc::clone(&f.name), std::fs::read(f.path()?).ok()?)))
        .collect();
    let best = |stage: &mut dyn FnMut() -> usize| {
        (0..runs.max(1))
            .map(|_| {
                let started = Instant::now();
                let count = std::hint::black_box(stage());
                (started.elapsed(), count)
            })
            .min()
            .expect("at least one pass")
    };
    let mut decompressor = libdeflater::Decompressor::new();
    let mut buf = Vec::new();
    let (inflate_time, _) = best(&mut || {
        files
            .iter()
            .map(|(_, bytes)| usize::from(inflate(&mut decompressor, bytes, &mut buf)) * buf.len())
            .sum()
    });
    let (floor_time, records) = best(&mut || {
        let mut records = 0;
        for (_, bytes) in &files {
            let (n, weight) = floor_file(&mut decompressor, bytes, &mut buf);
            records += n;
            std::hint::black_box(weight);
        }
        records
    });
    let decode = |rules: Option<Arc<RuleSet>>| {
        let mut decoder = Decoder::with_rules(DecodeLimits::default(), rules);
        best(&mut || {
            files
                .iter()
                .map(|(name, bytes)| decoder.decode(name, bytes).events.len())
                .sum()
        })
        .0
    };
    let decode_time = decode(None);
    let rules_time = decode(Some(Arc::clone(rules)));
    let mut decoder = Decoder::with_rules(DecodeLimits::default(), None);
    // Shared as a replay shares a file's events between partitions.
    let events: Vec<SharedEvents> = files
        .iter()
        .map(|(name, bytes)| Arc::new(decoder.decode(name, bytes).events) as SharedEvents)
        .collect();
    let settings = Settings::default();
    let (detect_time, _) = best(&mut || {
        let detector = Detector::new(settings.detector.clone(), 1);
        let mut partition = StatePartition::local(detector, settings.engine.reorder_window);
        let mut out = Vec::new();
        for file in &events {
            for at in 0..(**file).as_ref().len() {
                partition.offer_shared(file, at, &mut out);
            }
        }
        partition.finish(&mut out);
        out.len()
    });
    let per = |t: Duration| t.as_secs_f64() * 1e9 / records.max(1) as f64;
    println!();
    println!("realistic trail on one core, files in memory, best of {runs} passes ({records} records):");
    for (label, time) in [
        ("inflate (libdeflate)", inflate_time),
        ("floor: inflate + typed parse (sonic-rs)", floor_time),
        ("decoder without rules (inflate included)", decode_time),
        ("decoder with the shipped rules", rules_time),
        ("detectors, one partition", detect_time),
    ] {
        println!(
            "  {label:<44} {:>7.1} ms  {:>6.0} ns a record",
            time.as_secs_f64() * 1e3,
            per(time)
        );
    }
    let parse = floor_time.saturating_sub(inflate_time);
    let engine = |decode: Duration| decode.saturating_sub(inflate_time) + detect_time;
    println!(
        "  beyond inflating: floor {:.0} ns a record; engine without rules {:.0} ns ({:.1}×), with rules {:.0} ns ({:.1}×)",
        per(parse),
        per(engine(decode_time)),
        engine(decode_time).as_secs_f64() / parse.as_secs_f64().max(1e-9),
        per(engine(rules_time)),
        engine(rules_time).as_secs_f64() / parse.as_secs_f64().max(1e-9),
    );
}

/// One round's (wall, CPU) time per measurement, and the peer's seconds where it ran.
struct Round {
    times: Vec<(Duration, Duration)>,
    peer_seconds: Option<f64>,
}

trait Seconds {
    /// Wall (0) or CPU (1) seconds.
    fn k_secs(&self, k: usize) -> f64;
}

impl Seconds for (Duration, Duration) {
    fn k_secs(&self, k: usize) -> f64 {
        if k == 0 {
            self.0.as_secs_f64()
        } else {
            self.1.as_secs_f64()
        }
    }
}
