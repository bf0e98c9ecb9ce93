//! Throughput, side by side in one run: the floor (inflate and typed parsing of the records and
//! nothing else) on one core and on all cores, rule evaluation and the decoding stage alone on one
//! core, and the full replay with every detector and the shipped rules, with and without the
//! rules; then, in a child process, memory per principal.
//!
//! `cargo bench --bench throughput -- [--records N] [--runs N] [--trail DIR] [--skip-memory]`
//!
//! The trail is generated once (or read from `--trail`); every measurement reads the same files,
//! which the first pass leaves in the page cache. Figures are medians of `--runs` runs; the
//! all-core floor and the replays are interleaved run by run, and their ratios are medians of
//! per-run ratios.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use trailwatch::config::Settings;
use trailwatch::decode::{DecodeLimits, Decoder};
use trailwatch::detect::Detector;
use trailwatch::event::Event;
use trailwatch::generate::{generate, GenerateOptions};
use trailwatch::gunzip::Gunzip;
use trailwatch::principal::Principal;
use trailwatch::record::RawRecord;
use trailwatch::replay::{list_inputs, replay, InputFile};
use trailwatch::rules::{GateMemo, RecordView, RuleSet};

/// The allocator the `trailwatch` binary runs with, tuned as it is, so figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Deserialize)]
struct FloorFile<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<RawRecord<'a>>,
}

#[derive(Deserialize)]
struct RawFile<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<&'a serde_json::value::RawValue>,
}

/// Inflates a file with the engine's own gzip reader (one per thread, reused, as the engine's):
/// the floor and the engine inflate alike, so their ratio measures everything else.
fn inflate(gunzip: &mut Gunzip, bytes: &[u8], out: &mut Vec<u8>) {
    out.clear();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        gunzip
            .inflate(bytes, out, usize::MAX)
            .expect("generated files inflate");
    } else {
        out.extend_from_slice(bytes);
    }
}

/// Inflate and typed parse of every record, on `threads` threads; returns the records seen.
fn floor(files: &[InputFile], threads: usize) -> usize {
    let next = AtomicUsize::new(0);
    let total = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = Vec::new();
                let mut gunzip = Gunzip::default();
                let mut n = 0;
                while let Some(file) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let bytes = std::fs::read(&file.path).expect("readable");
                    inflate(&mut gunzip, &bytes, &mut buf);
                    if let Ok(f) = serde_json::from_slice::<FloorFile>(&buf) {
                        n += f.records.len();
                    }
                }
                total.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
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

fn measure(label: &str, runs: usize, mut f: impl FnMut() -> usize) -> (f64, usize) {
    let mut times = Vec::new();
    let mut records = 0;
    for _ in 0..runs {
        let start = Instant::now();
        records = f();
        times.push(start.elapsed());
    }
    let m = median(times);
    let rate = records as f64 / m.as_secs_f64();
    println!(
        "{label:<34} {rate:>12.0} records/s   (median {:.3}s of {runs}, {records} records)",
        m.as_secs_f64()
    );
    (rate, records)
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

fn main() {
    trailwatch::allocator::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let records: u32 = arg("--records").map_or(1_000_000, |v| v.parse().expect("--records N"));
    let runs: usize = arg("--runs").map_or(5, |v| v.parse().expect("--runs N"));
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
    if !args.iter().any(|a| a == "--skip-memory") {
        let exe = std::env::current_exe().expect("the benchmark's own path");
        let status = std::process::Command::new(exe)
            .arg("--memory-only")
            .status()
            .expect("the memory measurement runs");
        assert!(status.success(), "the memory measurement failed");
    }

    let temp = tempfile::tempdir().expect("a temporary folder");
    let trail = match arg("--trail") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = temp.path().join("trail");
            // About 0.9 records per principal-day-event: see the generator's rhythms.
            let principals = (records / (14 * 270)).max(8);
            let options = GenerateOptions {
                out: dir.clone(),
                principals,
                events_per_day: 270,
                ..GenerateOptions::default()
            };
            let started = Instant::now();
            let report = generate(&options).expect("the trail is written");
            eprintln!(
                "generated {} records in {} files in {:.1}s",
                report.records,
                report.files,
                started.elapsed().as_secs_f64()
            );
            dir
        }
    };
    let (files, _) = list_inputs(&[trail.join("AWSLogs")]).expect("the trail lists");
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(&f.path).map_or(0, |m| m.len()))
        .sum();
    println!(
        "machine: {threads} cores; trail: {} files, {:.1} MiB compressed",
        files.len(),
        bytes as f64 / 1048576.0
    );

    let n = floor(&files, 1);

    // Rule evaluation alone, on records already inflated and split.
    let rules = Arc::new(RuleSet::builtin().expect("the shipped rules load"));
    let mut texts = Vec::new();
    let mut buf = Vec::new();
    let mut gunzip = Gunzip::default();
    for file in &files {
        inflate(
            &mut gunzip,
            &std::fs::read(&file.path).expect("readable"),
            &mut buf,
        );
        texts.push(String::from_utf8(buf.clone()).expect("UTF-8"));
    }
    let raws: Vec<&str> = texts
        .iter()
        .flat_map(|t| {
            serde_json::from_str::<RawFile>(t)
                .map(|f| f.records)
                .unwrap_or_default()
        })
        .map(|r| r.get())
        .collect();
    let (rules_rate, _) = measure(
        &format!("rule evaluation alone, 1 core ({} rules)", rules.len()),
        runs,
        || {
            // With the gates' memory, as a decoding thread evaluates them.
            let mut hits = Vec::new();
            let mut memo = GateMemo::default();
            for raw in &raws {
                if let Some(view) = RecordView::new(raw) {
                    rules.evaluate_with(&view, &mut memo, &mut hits);
                    hits.clear();
                }
            }
            raws.len()
        },
    );
    drop(raws);
    drop(texts);

    // One core: the floor, the engine's decoding stage alone (read, inflate, index, build events,
    // run the rules) and the whole replay with one worker, interleaved run by run.
    let one_worker = Settings {
        workers: std::num::NonZeroUsize::MIN,
        ..Settings::default()
    };
    let one_core = interleaved(
        runs,
        n,
        &mut [
            &mut || floor(&files, 1),
            &mut || {
                let mut decoder = Decoder::with_rules(DecodeLimits::default(), Some(Arc::clone(&rules)));
                let mut n = 0;
                for file in &files {
                    let bytes = std::fs::read(&file.path).expect("readable");
                    let decoded = decoder.decode(&file.name, &bytes);
                    n += decoded.events.len() + decoded.skipped.len();
                }
                n
            },
            &mut || {
                let mut sink = std::io::sink();
                let summary = replay(
                    files.clone(),
                    &one_worker,
                    Some(Arc::clone(&rules)),
                    &mut sink,
                    &|_| {},
                )
                .expect("replay runs");
                summary.records as usize
            },
        ],
    );
    let one_core_rates = one_core.report(
        n,
        &[
            "floor, 1 core (inflate + parse)",
            "decode + rules (engine's stage 1), 1 core",
            "full replay, 1 core (workers = 1)",
        ],
    );
    let floor_one = one_core_rates[0];

    // The floor on every core and the two replays, interleaved run by run in the same way.
    let settings = Settings::default();
    let replay_files = |rules: Option<Arc<RuleSet>>| {
        let mut sink = std::io::sink();
        let summary = replay(files.clone(), &settings, rules, &mut sink, &|_| {}).expect("replay runs");
        summary.records as usize
    };
    let all_cores = interleaved(
        runs,
        n,
        &mut [
            &mut || floor(&files, threads),
            &mut || replay_files(Some(Arc::clone(&rules))),
            &mut || replay_files(None),
        ],
    );
    let floor_all = all_cores.report(
        n,
        &[
            &format!("floor, {threads} cores"),
            &format!("full replay, {threads} cores"),
            &format!("replay without rules, {threads} cores"),
        ],
    )[0];

    println!();
    println!("records per run: {n}");
    for (rounds, cores) in [(&one_core, 1), (&all_cores, threads)] {
        let names: &[(usize, &str)] = if cores == 1 {
            &[(1, "decode + rules"), (2, "full")]
        } else {
            &[(1, "full"), (2, "replay without rules")]
        };
        for &(i, name) in names {
            let (median, low, high) = rounds.ratio(i);
            println!(
                "{name} / floor ({cores} core{}): {median:.2} (median of per-run ratios, {low:.2} to {high:.2})",
                if cores == 1 { "" } else { "s" }
            );
        }
    }
    let cpu = |i: usize| all_cores.cpu_per_million(i, n);
    let (floor_cpu, full_cpu, no_rules_cpu) = (cpu(0), cpu(1), cpu(2));
    println!(
        "CPU-seconds per million records, {threads} cores: floor {floor_cpu:.2}, full {full_cpu:.2}, \
         without rules {no_rules_cpu:.2}; floor / full {:.2}, floor / without rules {:.2}",
        floor_cpu / full_cpu,
        floor_cpu / no_rules_cpu
    );
    println!(
        "CPU-seconds per million records, 1 core: floor {:.2}, full {:.2}",
        one_core.cpu_per_million(0, n),
        one_core.cpu_per_million(2, n)
    );
    println!(
        "floor scaling, {threads} cores / 1 core: {:.2}",
        floor_all / floor_one
    );
    println!(
        "rule evaluation alone / floor (1 core): {:.2}",
        rules_rate / floor_one
    );
}

/// Wall and CPU times of measurements run in turn, round after round.
struct Rounds {
    /// Per round, each measurement's (wall, CPU) time.
    times: Vec<Vec<(Duration, Duration)>>,
}

/// Runs every job once per round, for `runs` rounds, so that a slow stretch of a shared machine
/// weighs on all of them alike. Every job must read all `n` records.
fn interleaved(runs: usize, n: usize, jobs: &mut [&mut dyn FnMut() -> usize]) -> Rounds {
    let times = (0..runs)
        .map(|_| {
            jobs.iter_mut()
                .map(|job| {
                    let (start, cpu_start) = (Instant::now(), process_cpu());
                    assert_eq!(job(), n, "every measurement reads every record");
                    // CPU time of every thread: unlike wall time, it does not count the moments
                    // a busy neighbour holds a core.
                    (start.elapsed(), process_cpu().saturating_sub(cpu_start))
                })
                .collect()
        })
        .collect();
    Rounds { times }
}

impl Rounds {
    fn wall(&self, i: usize) -> Vec<Duration> {
        self.times.iter().map(|round| round[i].0).collect()
    }

    /// Prints each measurement's median rate under its label; returns the rates.
    fn report(&self, n: usize, labels: &[&str]) -> Vec<f64> {
        let runs = self.times.len();
        labels
            .iter()
            .enumerate()
            .map(|(i, label)| {
                let m = median(self.wall(i));
                let rate = n as f64 / m.as_secs_f64();
                println!(
                    "{label:<42} {rate:>10.0} records/s   (median {:.3}s of {runs}, interleaved)",
                    m.as_secs_f64()
                );
                rate
            })
            .collect()
    }

    /// Median, lowest and highest of the per-round ratios of measurement 0's time to `i`'s.
    fn ratio(&self, i: usize) -> (f64, f64, f64) {
        let mut per_run: Vec<f64> = self
            .times
            .iter()
            .map(|round| round[0].0.as_secs_f64() / round[i].0.as_secs_f64())
            .collect();
        per_run.sort_by(f64::total_cmp);
        (per_run[per_run.len() / 2], per_run[0], per_run[per_run.len() - 1])
    }

    /// Median CPU-seconds per million records of measurement `i`.
    fn cpu_per_million(&self, i: usize, n: usize) -> f64 {
        let cpu = self.times.iter().map(|round| round[i].1).collect();
        median(cpu).as_secs_f64() * 1e6 / n as f64
    }
}
