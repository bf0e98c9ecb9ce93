//! Hostile input: each case is reported with its source and reason, counted, and the rest of the
//! input still processed; nothing panics, memory stays within the documented bounds.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use trailwatch::rules::RuleSet;
use trailwatch::view::RecordView;

const GOOD: &str = "tests/fixtures/odd/AWSLogs/111122223333/CloudTrail/us-east-1/2025/06/02/111122223333_CloudTrail_us-east-1_20250602T1005Z_FixtureOddShapes1.json.gz";

fn symlink(target: impl AsRef<Path>, link: impl AsRef<Path>) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

#[test]
fn a_folder_replay_goes_on_past_loops_dangling_links_and_unreadable_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let trail = tmp.path().join("trail");
    let sub = trail.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::copy(manifest_dir().join(GOOD), sub.join("good.json.gz")).unwrap();
    symlink(&trail, sub.join("loop")); // a folder linking to its ancestor
    symlink("self.json", trail.join("self.json")); // a link to itself
    symlink(trail.join("nowhere.json.gz"), trail.join("dangling.json.gz"));
    // A file no one can read, root included: reading /proc/self/mem from offset 0 fails.
    symlink("/proc/self/mem", trail.join("unreadable.json"));
    let fifo = trail.join("pipe.json");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // A folder its owner cannot list; root can, so it counts only for others.
    let locked = trail.join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::write(locked.join("inside.json"), b"{}").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let locked_out = std::fs::read_dir(&locked).is_err();

    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let (_, summary) = replay_with_summary(&[&trail], &out_dir);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();

    let failed = &summary["files"]["failed"];
    assert_eq!(failed["symlink_loop"], 2, "{summary}");
    assert_eq!(failed["dangling_symlink"], 1, "{summary}");
    assert_eq!(failed["not_a_regular_file"], 1, "{summary}");
    assert_eq!(failed["io"], 1, "the unreadable file: {summary}");
    if locked_out {
        assert_eq!(failed["unreadable"], 1, "{summary}");
    }
    let failures = summary["files"]["failures"].to_string();
    for name in [
        "loop",
        "self.json",
        "dangling.json.gz",
        "pipe.json",
        "unreadable.json",
    ] {
        assert!(failures.contains(name), "{name} not named in {failures}");
    }
    // The good file beside them was replayed whole.
    assert_eq!(summary["files"]["decoded"], 1, "{summary}");
    assert!(summary["records"]["events"].as_u64().unwrap() >= 17);
}

#[test]
fn a_file_name_cannot_forge_a_line_of_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let trail = tmp.path().join("trail");
    std::fs::create_dir(&trail).unwrap();
    let forged = "x\nfiles: 999 read, 999 decoded, skipped [], failed []\n\u{1b}[2Kx.json";
    std::fs::write(trail.join(forged), b"not json").unwrap();
    let out = run_ok(&["replay", "--output", "/dev/null", &path_str(&trail)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.lines().any(|l| l.starts_with("files: 999")),
        "a forged line:\n{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "an escape sequence reached the terminal:\n{stderr}"
    );
    assert!(
        stderr.contains(r"x\nfiles: 999 read"),
        "the name is shown, escaped:\n{stderr}"
    );
}

#[test]
fn closed_standard_streams_end_a_replay_quietly() {
    let fixtures = manifest_dir().join("tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let anomalies = tmp.path().join("anomalies.jsonl");
    // Standard error closed by its reader (as `2>&1 | head -3` does), anomalies to a file.
    let mut child = Command::new(BIN)
        .args(["replay", "--output", &path_str(&anomalies), &path_str(&fixtures)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    // Both closed, anomalies to standard output: a reader that went away is no failure.
    let trail = tmp.path().join("trail");
    generate(&trail, 3, 10, 12, 60);
    let mut child = Command::new(BIN)
        .args(["replay", &path_str(&trail)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// `(kind, principal, event ids)` of each anomaly.
fn behaviour(anomalies: &[Value]) -> BTreeSet<String> {
    anomalies
        .iter()
        .map(|a| {
            format!(
                "{} {} {}",
                a["kind"], a["principal"]["key"], a["evidence"]["event_ids"]
            )
        })
        .collect()
}

#[test]
fn records_dated_far_from_their_delivery_cannot_blind_the_detectors() {
    let tmp = tempfile::tempdir().unwrap();
    let trail = tmp.path().join("trail");
    generate(&trail, 7, 12, 40, 120);
    let clean = tmp.path().join("clean");
    std::fs::create_dir(&clean).unwrap();
    let (before, _) = replay_with_summary(&[&trail], &clean);
    assert!(
        before.iter().filter(|a| a["kind"] != "rule_match").count() >= 5,
        "a trail with behavioural anomalies to lose"
    );

    // 64 records dated 9999-12-31, of many principals, in one file in the middle of the trail.
    let day = trail.join("AWSLogs/111122223333/CloudTrail/us-east-1/2026/03/07");
    std::fs::create_dir_all(&day).unwrap();
    let records: Vec<Value> = (0..64)
        .map(|i| {
            json!({"eventVersion": "1.09", "eventTime": "9999-12-31T23:59:59Z", "eventID": format!("forged-{i}"),
                   "eventSource": "s3.amazonaws.com", "eventName": "ListBuckets", "awsRegion": "us-east-1",
                   "sourceIPAddress": "198.51.100.9", "userAgent": "aws-cli/2.15.0",
                   "userIdentity": {"type": "IAMUser", "arn": format!("arn:aws:iam::111122223333:user/user{i:03}"),
                                    "accountId": "111122223333", "userName": format!("user{i:03}")},
                   "recipientAccountId": "111122223333"})
        })
        .collect();
    std::fs::write(
        day.join("111122223333_CloudTrail_us-east-1_20260307T1200Z_Forged.json"),
        json!({ "Records": records }).to_string(),
    )
    .unwrap();
    let forged = tmp.path().join("forged");
    std::fs::create_dir(&forged).unwrap();
    let (after, summary) = replay_with_summary(&[&trail], &forged);
    assert_eq!(
        summary["records"]["skipped"]["event_time_out_of_range"], 64,
        "{summary}"
    );
    assert_eq!(behaviour(&after), behaviour(&before));
}

#[test]
fn long_values_are_held_as_a_prefix_and_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let trail = tmp.path().join("trail");
    std::fs::create_dir(&trail).unwrap();
    // 48 distinct 1 MiB event names from one principal.
    let records: Vec<Value> = (0..48)
        .map(|i| {
            json!({"eventTime": "2025-06-02T10:00:00Z", "eventID": format!("long-{i}"),
                   "eventSource": "s3.amazonaws.com", "eventName": format!("{i:02}{}", "N".repeat(1 << 20)),
                   "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/long",
                                    "accountId": "111122223333", "userName": "long"}})
        })
        .collect();
    std::fs::write(
        trail.join("111122223333_CloudTrail_us-east-1_20250602T1005Z_Long.json"),
        json!({ "Records": records }).to_string(),
    )
    .unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let (_, summary) = replay_with_summary(&[&trail], &out);
    assert_eq!(summary["records"]["events"], 48);
    let held = summary["baseline_bytes"].as_u64().unwrap();
    assert!(
        held < 256 << 10,
        "{held} bytes held in baselines for 48 MiB of names"
    );
    // Distinct names stay distinct values.
    assert!(summary["baseline_values"].as_u64().unwrap() >= 48, "{summary}");
}

#[test]
fn a_file_larger_than_the_limit_is_refused_by_its_size() {
    let tmp = tempfile::tempdir().unwrap();
    let trail = tmp.path().join("trail");
    std::fs::create_dir(&trail).unwrap();
    // 64 GiB, sparse: read whole, it would exhaust the machine's memory.
    let huge = std::fs::File::create(trail.join("huge.json")).unwrap();
    huge.set_len(64 << 30).unwrap();
    std::fs::copy(manifest_dir().join(GOOD), trail.join("good.json.gz")).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let (_, summary) = replay_with_summary(&[&trail], &out);
    assert_eq!(summary["files"]["failed"]["too_large"], 1, "{summary}");
    assert_eq!(summary["files"]["decoded"], 1);
    assert!(summary["files"]["failures"].to_string().contains("huge.json"));
}

#[test]
fn every_configuration_problem_is_named_in_one_go() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.toml");
    std::fs::write(
        &config,
        "[baseline]\nwindw = \"3d\"\nwindow = \"9999999999999y\"\n[rate]\nmin_events = \"many\"\nfactor = 0.5\n\
         [replay]\nworkers = 9223372036854775807\n[fetch]\nconcurrency = 9223372036854775807\nmax_backoff = \"9999999y\"\n",
    )
    .unwrap();
    let out = run(&["replay", "--config", &path_str(&config), GOOD]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "baseline.windw",
        "baseline.window",
        "rate.min_events",
        "rate.factor",
        "replay.workers",
        "fetch.concurrency",
        "fetch.max_backoff",
    ] {
        assert!(stderr.contains(key), "{key} not named:\n{stderr}");
    }
}

fn rule(i: usize) -> (String, String) {
    (
        format!("r{i}.yml"),
        format!(
            "title: Rule {i}\nid: 00000000-0000-4000-8000-{i:012}\nlogsource: {{product: aws, service: cloudtrail}}\n\
             detection:\n  sel:\n    eventName: Op{i}\n  condition: sel\nlevel: low\n"
        ),
    )
}

#[test]
fn more_rules_than_sixteen_bits_index_still_name_the_rule_matched() {
    let count = 65_540;
    let rules = RuleSet::from_sources((0..count).map(rule).collect()).unwrap();
    assert_eq!(rules.len(), count);
    for i in [3, 65_535, 65_536, 65_539] {
        let record = format!(r#"{{"eventName":"Op{i}","eventSource":"s3.amazonaws.com"}}"#);
        let mut hits = Vec::new();
        rules.evaluate(&RecordView::new(&record).unwrap(), &mut hits);
        let titles: Vec<&str> = hits
            .iter()
            .map(|&h| rules.rules()[usize::from(h)].title.as_str())
            .collect();
        assert_eq!(titles, [format!("Rule {i}")], "record {record}");
    }
}

#[test]
fn deeply_nested_yaml_in_a_rule_is_refused_by_file_before_parsing() {
    let flow = format!(
        "title: Deep\nlogsource: {{product: aws, service: cloudtrail}}\ndetection:\n  sel:\n    eventName: {}x{}\n  condition: sel\n",
        "[".repeat(40_000),
        "]".repeat(40_000)
    );
    let mut block = String::from("title: Deep\nlogsource: {product: aws, service: cloudtrail}\ndetection:\n");
    for depth in 1..300 {
        block += &format!("{}k{depth}:\n", "  ".repeat(depth));
    }
    let mut dashes = String::from("title: Deep\ndetection:\n  sel:\n    eventName:\n      ");
    dashes += &"- ".repeat(10_000);
    dashes += "x\n";
    for (name, text) in [("flow.yml", flow), ("block.yml", block), ("dashes.yml", dashes)] {
        let err = RuleSet::from_sources(vec![(name.to_owned(), text), rule(1)])
            .err()
            .unwrap_or_else(|| panic!("{name} was accepted"))
            .to_string();
        assert!(err.contains(name) && err.contains("nested"), "{name}: {err}");
    }
    let huge = format!("title: Big\ndescription: {}\n", "x".repeat(2 << 20));
    let err = RuleSet::from_sources(vec![("big.yml".to_owned(), huge)])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("big.yml") && err.contains("bytes"), "{err}");
    // Through the command: the file is named, the exit status says the rules did not load.
    let tmp = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(tmp.path().join("deep.yml")).unwrap();
    write!(
        f,
        "title: Deep\ndetection:\n  sel: {}1{}\n",
        "[".repeat(80_000),
        "]".repeat(80_000)
    )
    .unwrap();
    let out = run(&["rules", "check", &path_str(tmp.path())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("deep.yml"));
}

// The folder service: `trailwatch run` over a watched folder.

/// A log file whose one record, `StopLogging` by `user`, is a rule match of its own.
fn write_stop_logging(dir: &Path, n: usize) {
    let record = json!({"eventVersion": "1.09", "eventTime": "2025-06-02T10:00:00Z", "eventID": format!("stop-{n}"),
        "eventSource": "cloudtrail.amazonaws.com", "eventName": "StopLogging", "awsRegion": "us-east-1",
        "sourceIPAddress": "198.51.100.9", "userAgent": "aws-cli/2.15.0", "requestParameters": {"name": "main"},
        "userIdentity": {"type": "IAMUser", "arn": format!("arn:aws:iam::111122223333:user/stopper{n}"),
                         "accountId": "111122223333", "userName": format!("stopper{n}")},
        "recipientAccountId": "111122223333"});
    let name = format!("111122223333_CloudTrail_us-east-1_20250602T1005Z_Stop{n}.json");
    // Written aside and renamed, so that the service never lists a file half written.
    let part = dir.join(format!(".{name}.part"));
    std::fs::write(&part, json!({ "Records": [record] }).to_string()).unwrap();
    std::fs::rename(part, dir.join(name)).unwrap();
}

/// A running `trailwatch run` over a watched folder, its outputs in `dir`.
struct FolderService {
    server: Server,
    dir: std::path::PathBuf,
}

impl FolderService {
    /// Starts the service on `watched`, with `source` lines added to its `[source]` section and
    /// `extra` sections; its log at `info` goes to `dir/stderr.log`. A checkpoint is written
    /// every 200 ms while there is something new.
    fn start(dir: &Path, watched: &Path, source: &str, extra: &str) -> FolderService {
        let config = format!(
            "[source]\nkind = \"folder\"\nfolder = \"{}\"\npoll_interval = \"100ms\"\n{source}\n\
             [sink]\nkind = \"file\"\npath = \"{}\"\ndead_letters = \"{}\"\n\
             [checkpoint]\nurl = \"{}\"\ninterval = \"200ms\"\n[metrics]\nlisten = \"\"\n{extra}\n",
            watched.display(),
            dir.join("anomalies.jsonl").display(),
            dir.join("dead.jsonl").display(),
            dir.join("checkpoint").display(),
        );
        FolderService::start_with(dir, &config, "info", &[])
    }

    /// Starts `trailwatch run` with `config`, logging at `log` to `dir/stderr.log`, with `env`.
    fn start_with(dir: &Path, config: &str, log: &str, env: &[(&str, &str)]) -> FolderService {
        let path = dir.join("trailwatch.toml");
        std::fs::write(&path, config).unwrap();
        let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config", &path_str(&path)])
            .env("RUST_LOG", log)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        FolderService {
            server: Server(child),
            dir: dir.to_owned(),
        }
    }

    fn lines(&self, name: &str) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each output line is JSON"))
            .collect()
    }

    fn anomalies(&self) -> Vec<Value> {
        self.lines("anomalies.jsonl")
    }

    fn dead_letters(&self) -> Vec<Value> {
        self.lines("dead.jsonl")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Whether the rule match of `write_stop_logging(_, n)` was written.
    fn has_stop_logging(&self, n: usize) -> bool {
        let id = format!("stop-{n}");
        self.anomalies().iter().any(|a| {
            a["evidence"]["event_ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|i| i == &id))
        })
    }

    /// Waits until `condition` holds, failing with what was waited for and the service's log.
    fn wait_until(&mut self, what: &str, mut condition: impl FnMut(&FolderService) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !condition(self) {
            if let Some(status) = self.server.0.try_wait().unwrap() {
                panic!("the service ended ({status}) before {what}:\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the process to end; its exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.server.0.id() as libc::pid_t;
        // SAFETY: signals a child this test started and has not yet waited for.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.server.0.try_wait().unwrap() {
                let stderr = self.stderr();
                assert!(!stderr.contains("panicked"), "the service panicked:\n{stderr}");
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after SIGTERM:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The files the last checkpoint reflects.
    fn files_done(&self) -> Vec<String> {
        let bytes = std::fs::read(self.dir.join("checkpoint/trailwatch-state.json.gz")).unwrap();
        let checkpoint: Value = serde_json::from_reader(flate2::read::GzDecoder::new(&bytes[..])).unwrap();
        checkpoint["files_done"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_owned())
            .collect()
    }
}

/// Fast polls and retries, rule matches emitted as soon as the folder is quiet.
const QUICK: &str =
    "[engine]\nidle_after = \"200ms\"\n[fetch]\nretry_pause = \"50ms\"\nmax_backoff = \"100ms\"\n";

#[test]
fn a_historical_trail_dropped_in_two_parts_with_a_pause_gives_replays_anomalies() {
    two_parts_of_a_historical_trail(false);
}

#[test]
fn a_historical_trail_dropped_in_two_parts_with_a_restart_between_gives_replays_anomalies() {
    two_parts_of_a_historical_trail(true);
}

/// Drops a historical trail into a watched folder in two parts, with a pause (and, with
/// `restart`, a stop and a start) between them, and compares the anomalies with replay's.
fn two_parts_of_a_historical_trail(restart: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let watched = tmp.path().join("watched");
    std::fs::create_dir(&watched).unwrap();
    // The first day's part, then a pause long past `engine.idle_after`: its alert is emitted.
    write_stopper_file(&watched, "20250602T1005Z", "2025-06-02T10:00:00Z", "stop-first");
    let mut service = FolderService::start(tmp.path(), &watched, "", QUICK);
    service.wait_until("the first part's alert", |s| s.anomalies().len() == 1);
    std::thread::sleep(Duration::from_millis(600));
    if restart {
        // The restarted service is quiet too, long enough to go idle before the second part.
        assert!(service.terminate().success());
        service = FolderService::start(tmp.path(), &watched, "", QUICK);
        std::thread::sleep(Duration::from_millis(600));
    }
    // The second part, an hour later in event time: two files whose records are in the
    // opposite order of their delivery. Replay judges them in event-time order, so their
    // alert is the earlier record's, with both counted; judged in the order they came, the
    // alert would be the later record's.
    write_stopper_file(&watched, "20250602T1110Z", "2025-06-02T11:03:00Z", "stop-later");
    write_stopper_file(&watched, "20250602T1115Z", "2025-06-02T11:01:00Z", "stop-earlier");
    service.wait_until("the second part's alert", |s| {
        s.anomalies().iter().any(|a| a["count"] == 2)
    });
    assert!(service.terminate().success());
    let served = service.anomalies();

    let replay_dir = tmp.path().join("replay");
    std::fs::create_dir(&replay_dir).unwrap();
    let (replayed, _) = replay_with_summary(&[&watched], &replay_dir);
    assert_eq!(
        ids_and_counts(&served),
        ids_and_counts(&replayed),
        "the service's anomalies (ids and counts) are replay's\nservice: {served:#?}\nlog:\n{}",
        service.stderr()
    );
    assert_eq!(
        evidence(&served).last().map(|ids| ids[0].as_str()),
        Some("stop-earlier"),
        "the second alert is opened by the earlier record"
    );
}

#[test]
fn links_that_loop_or_lead_nowhere_and_fifos_in_a_watched_folder_are_dead_lettered_once_and_the_service_goes_on(
) {
    let tmp = tempfile::tempdir().unwrap();
    let watched = tmp.path().join("watched");
    std::fs::create_dir(&watched).unwrap();
    write_stop_logging(&watched, 1);
    let mut service = FolderService::start(tmp.path(), &watched, "", QUICK);
    service.wait_until("the first file's anomaly", |s| s.has_stop_logging(1));

    // Bad entries appear beside a new good file while the service runs.
    let sub = watched.join("sub");
    std::fs::create_dir(&sub).unwrap();
    symlink(&watched, sub.join("loop")); // a folder linking to its ancestor
    symlink("self.json", watched.join("self.json")); // a link to itself
    symlink(watched.join("nowhere.json.gz"), watched.join("dangling.json.gz"));
    // A FIFO named like a log file: opening it would block until a writer comes.
    let made = Command::new("mkfifo")
        .arg(watched.join("pipe.json"))
        .status()
        .unwrap();
    assert!(made.success());
    write_stop_logging(&watched, 2);
    service.wait_until("the second file's anomaly and four dead letters", |s| {
        s.has_stop_logging(2) && s.dead_letters().len() >= 4
    });
    // Polls go on past them: a later file is processed, and nothing is reported twice.
    write_stop_logging(&watched, 3);
    service.wait_until("the third file's anomaly", |s| s.has_stop_logging(3));

    let mut reported: Vec<(String, String)> = service
        .dead_letters()
        .iter()
        .map(|d| {
            (
                d["object"].as_str().unwrap().to_owned(),
                d["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    reported.sort();
    let expected = [
        ("dangling.json.gz", "dangling_symlink"),
        ("pipe.json", "not_a_regular_file"),
        ("self.json", "symlink_loop"),
        ("sub/loop", "symlink_loop"),
    ]
    .map(|(p, r)| (p.to_owned(), r.to_owned()));
    assert_eq!(reported, expected, "{}", service.stderr());
    let stderr = service.stderr();
    for (path, reason) in &expected {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&format!("path={path}")) && l.contains(reason.as_str())),
            "{path} not logged with {reason}:\n{stderr}"
        );
    }

    let status = service.terminate();
    assert_eq!(status.code(), Some(0), "{}", service.stderr());
    let stderr = service.stderr();
    assert!(
        stderr.contains("\"dangling_symlink\": 1") && stderr.contains("\"symlink_loop\": 2"),
        "counted in the report:\n{stderr}"
    );
    assert_eq!(service.anomalies().len(), 3);
}

#[test]
fn an_unreadable_file_in_a_watched_folder_is_tried_a_bounded_number_of_times_then_dead_lettered() {
    let tmp = tempfile::tempdir().unwrap();
    let watched = tmp.path().join("watched");
    std::fs::create_dir(&watched).unwrap();
    // A file no one can read, root included: reading /proc/self/mem from offset 0 fails.
    symlink("/proc/self/mem", watched.join("unreadable.json"));
    write_stop_logging(&watched, 1);
    let mut service = FolderService::start(tmp.path(), &watched, "max_attempts = 3", QUICK);
    service.wait_until(
        "the good file's anomaly and the unreadable file's dead letter",
        |s| s.has_stop_logging(1) && !s.dead_letters().is_empty(),
    );
    let dead = service.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["reason"], "unreadable");
    assert_eq!(dead[0]["object"], "unreadable.json");
    let detail = dead[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("Input/output error") && detail.contains("gave up after 3 attempts"),
        "{detail}"
    );
    // Given up on: later polls leave it alone and take the files that come.
    write_stop_logging(&watched, 2);
    service.wait_until("a later file's anomaly", |s| s.has_stop_logging(2));
    let tries = service
        .stderr()
        .lines()
        .filter(|l| l.contains("cannot read unreadable.json"))
        .count();
    // Three failed reads, the last one logged again as given up on.
    assert_eq!(tries, 4, "{}", service.stderr());
    assert_eq!(service.terminate().code(), Some(0), "{}", service.stderr());
    assert_eq!(service.dead_letters().len(), 1);
    let done = service.files_done();
    assert!(done.iter().any(|f| f == "unreadable.json"), "{done:?}");
}

#[test]
fn a_restart_does_not_give_a_file_that_keeps_failing_its_attempts_again() {
    let tmp = tempfile::tempdir().unwrap();
    let watched = tmp.path().join("watched");
    std::fs::create_dir(&watched).unwrap();
    symlink("/proc/self/mem", watched.join("unreadable.json"));
    let failed_reads = |s: &FolderService| {
        s.stderr()
            .lines()
            .filter(|l| l.contains("cannot read unreadable.json") && !l.contains("giving up"))
            .count()
    };
    // Slow retries, so that the first run is stopped between two of them.
    let slow =
        "[engine]\nidle_after = \"200ms\"\n[fetch]\nretry_pause = \"300ms\"\nmax_backoff = \"300ms\"\n";
    let mut first = FolderService::start(tmp.path(), &watched, "max_attempts = 4", slow);
    first.wait_until("two failed reads", |s| failed_reads(s) >= 2);
    assert_eq!(first.terminate().code(), Some(0), "{}", first.stderr());
    let before = failed_reads(&first);
    let given_up_before = first.dead_letters().len();

    let mut second = FolderService::start(tmp.path(), &watched, "max_attempts = 4", slow);
    second.wait_until("the file given up on", |s| s.dead_letters().len() == 1);
    let after = failed_reads(&second);
    assert_eq!(second.terminate().code(), Some(0), "{}", second.stderr());
    assert_eq!(
        before + after,
        4,
        "four reads in all across the restart ({before} before it, {after} after; given up before it: {given_up_before})"
    );
    let dead = second.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]["detail"]
            .as_str()
            .unwrap()
            .contains("gave up after 4 attempts"),
        "{dead:?}"
    );
}

#[test]
fn sigterm_during_a_backlog_at_start_up_stops_the_folder_service_cleanly_without_draining_it() {
    let tmp = tempfile::tempdir().unwrap();
    let watched = tmp.path().join("watched");
    std::fs::create_dir(&watched).unwrap();
    let total = 3000;
    for i in 0..total {
        let record = json!({"eventVersion": "1.09", "eventTime": "2025-06-02T10:00:00Z", "eventID": format!("backlog-{i}"),
            "eventSource": "s3.amazonaws.com", "eventName": "ListBuckets",
            "userIdentity": {"type": "IAMUser", "arn": format!("arn:aws:iam::111122223333:user/u{}", i % 50),
                             "accountId": "111122223333"}});
        std::fs::write(
            watched.join(format!(
                "111122223333_CloudTrail_us-east-1_20250602T1005Z_Backlog{i:05}.json"
            )),
            json!({ "Records": [record] }).to_string(),
        )
        .unwrap();
    }
    // One file a batch: the backlog is long, and the first checkpoint says that it is being
    // worked through (the signal handlers are in place by then).
    let mut service = FolderService::start(tmp.path(), &watched, "", "[batch]\nmax_messages = 1\n");
    service.wait_until("the first files to be processed", |s| {
        s.stderr().contains("checkpoint written")
    });
    let status = service.terminate();
    assert_eq!(status.code(), Some(0), "{}", service.stderr());
    let stderr = service.stderr();
    let done = service.files_done();
    assert!(
        !done.is_empty() && done.len() < total,
        "{} of {total} files in the final checkpoint:\n{stderr}",
        done.len()
    );
    // The final checkpoint holds exactly the files the run reports processed.
    assert!(
        stderr.contains(&format!("{} files, {} records", done.len(), done.len())),
        "{} files in the checkpoint:\n{stderr}",
        done.len()
    );
}

/// An S3 stand-in on loopback: GET answers 404 (no checkpoint yet), PUT 200; every request's
/// head is kept.
struct FakeS3 {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeS3 {
    fn start() -> FakeS3 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (heads, stop) = (Arc::clone(&heads), Arc::clone(&stop));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Some(head) = FakeS3::answer(stream) {
                                heads.lock().unwrap().push(head);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }
        });
        FakeS3 {
            port,
            heads,
            stop,
            thread: Some(thread),
        }
    }

    /// Reads one request and answers it; the request's head.
    fn answer(mut stream: TcpStream) -> Option<String> {
        stream.set_nonblocking(false).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).ok()? == 0 {
                return None;
            }
            raw.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&raw).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        stream.read_exact(&mut body).ok()?;
        let answer = if head.starts_with("PUT ") {
            "HTTP/1.1 200 OK\r\nETag: \"1\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        } else {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code>\
                        <Message>The specified key does not exist.</Message></Error>";
            format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            )
        };
        stream.write_all(answer.as_bytes()).ok()?;
        Some(head)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for FakeS3 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn s3_keys_from_the_environment_and_a_file_sign_requests_and_never_appear_in_the_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let watched = tmp.path().join("watched");
    std::fs::create_dir(&watched).unwrap();
    write_stop_logging(&watched, 1);
    let secret = "S3-secret-key-from-a-file-6f1c";
    let token = "S3-session-token-from-the-environment-92ab";
    std::fs::write(tmp.path().join("secret"), format!("{secret}\n")).unwrap();
    let s3 = FakeS3::start();
    let config = format!(
        "[source]\nkind = \"folder\"\nfolder = \"{}\"\npoll_interval = \"100ms\"\n\
         [sink]\nkind = \"file\"\npath = \"{}\"\ndead_letters = \"{}\"\n\
         [checkpoint]\nurl = \"s3://state/trailwatch\"\ninterval = \"200ms\"\n[metrics]\nlisten = \"\"\n\
         [s3]\nendpoint = \"http://127.0.0.1:{}\"\nallow_http = true\nregion = \"us-east-1\"\n\
         access_key_id = \"env:TRAILWATCH_TEST_KEY_ID\"\nsecret_access_key = \"file:{}\"\n\
         session_token = \"env:TRAILWATCH_TEST_SESSION_TOKEN\"\n{QUICK}",
        watched.display(),
        tmp.path().join("anomalies.jsonl").display(),
        tmp.path().join("dead.jsonl").display(),
        s3.port,
        tmp.path().join("secret").display(),
    );
    let mut service = FolderService::start_with(
        tmp.path(),
        &config,
        "trace",
        &[
            ("TRAILWATCH_TEST_KEY_ID", "AKIDTRAILWATCHTEST"),
            ("TRAILWATCH_TEST_SESSION_TOKEN", token),
        ],
    );
    service.wait_until("the anomaly and a checkpoint put to the store", |_| {
        s3.heads().iter().any(|h| h.starts_with("PUT "))
    });
    service.wait_until("the anomaly", |s| s.has_stop_logging(1));
    assert_eq!(service.terminate().code(), Some(0), "{}", service.stderr());

    // The keys came from where the configuration names: requests are signed with them.
    let heads = s3.heads().join("\n").to_ascii_lowercase();
    assert!(heads.contains("credential=akidtrailwatchtest/"), "{heads}");
    assert!(
        heads.contains(&format!("x-amz-security-token: {}", token.to_ascii_lowercase())),
        "{heads}"
    );
    // And are nowhere in the log, even at its most detailed.
    let stderr = service.stderr();
    assert!(stderr.lines().count() > 20, "a detailed log:\n{stderr}");
    for value in [secret, token] {
        assert!(!stderr.contains(value), "{value} in the log");
    }
}

#[test]
fn kafka_passwords_never_appear_in_the_logs_or_in_configuration_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let password = "sasl-password-from-a-file-4d7e";
    std::fs::write(tmp.path().join("password"), password).unwrap();
    let typo = "password-under-a-misspelt-key-81c0";
    let config = |extra: &str| {
        format!(
            "[source]\nkind = \"kafka\"\n[sink]\nkind = \"file\"\npath = \"{}\"\n[metrics]\nlisten = \"\"\n\
             [kafka]\nbrokers = \"127.0.0.1:{}\"\n[kafka.librdkafka]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
             \"sasl.mechanism\" = \"PLAIN\"\n\"sasl.username\" = \"env:TRAILWATCH_TEST_SASL_USER\"\n\
             \"sasl.password\" = \"file:{}\"\n\"debug\" = \"all\"\n{extra}",
            tmp.path().join("anomalies.jsonl").display(),
            free_port(),
            tmp.path().join("password").display(),
        )
    };
    let env = [("TRAILWATCH_TEST_SASL_USER", "trailwatch")];

    // A broker that does not answer: the clients are made, librdkafka logs all it does.
    let mut service = FolderService::start_with(tmp.path(), &config(""), "trace", &env);
    service.wait_until("a librdkafka client", |s| {
        s.stderr().contains("Create new librdkafka client")
    });
    // Stopping while start-up waits on the broker.
    assert_eq!(service.terminate().code(), Some(0), "{}", service.stderr());
    let stderr = service.stderr();
    assert!(!stderr.contains(password), "the password in the log:\n{stderr}");

    // An option librdkafka refuses is named by its key; its value (librdkafka's own error quotes
    // it) is not shown.
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg({
            let path = tmp.path().join("typo.toml");
            std::fs::write(&path, config(&format!("\"sasl.passwrd\" = \"{typo}\"\n"))).unwrap();
            path
        })
        .envs(env)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sasl.passwrd"), "{stderr}");
    assert!(!stderr.contains(typo), "the value in the error:\n{stderr}");
}
