//! Helpers shared by the end-to-end tests: run the real binary, generate trails, read results.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_trailwatch");

pub fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "trailwatch panicked:\n{stderr}");
    out
}

pub fn run_ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "trailwatch {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn replay_with_summary(inputs: &[&Path], dir: &Path) -> (Vec<Value>, Value) {
    replay_with(inputs, dir, &[])
}

/// Replays `inputs` with `extra` arguments; returns the anomalies and the JSON summary.
pub fn replay_with(inputs: &[&Path], dir: &Path, extra: &[&str]) -> (Vec<Value>, Value) {
    let anomalies = dir.join("anomalies.jsonl");
    let summary = dir.join("summary.json");
    let mut args = vec![
        "replay".to_owned(),
        "--output".into(),
        path_str(&anomalies),
        "--summary".into(),
        path_str(&summary),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(inputs.iter().map(|p| path_str(p)));
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let anomalies = std::fs::read_to_string(anomalies)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each anomaly line is JSON"))
        .collect();
    let summary = serde_json::from_slice(&std::fs::read(summary).unwrap()).unwrap();
    (anomalies, summary)
}

/// Each anomaly's `evidence.event_ids`.
pub fn evidence(anomalies: &[Value]) -> Vec<Vec<String>> {
    anomalies
        .iter()
        .map(|a| {
            a["evidence"]["event_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_str().unwrap().to_owned())
                .collect()
        })
        .collect()
}

pub fn path_str(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_owned()
}

pub fn generate(dir: &Path, seed: u64, days: u32, principals: u32, per_day: u32) {
    run_ok(&[
        "generate",
        "--out",
        &path_str(dir),
        "--seed",
        &seed.to_string(),
        "--days",
        &days.to_string(),
        "--principals",
        &principals.to_string(),
        "--events-per-day",
        &per_day.to_string(),
    ]);
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walk(dir);
    files.sort();
    files
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A child process (a server a test started) killed when dropped.
pub struct Server(pub std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A log file delivered at `stamp` (`20250602T1005Z`) whose one record is `StopLogging` by
/// the user `stopper` at `time`, with eventID `id`.
pub fn write_stopper_file(dir: &Path, stamp: &str, time: &str, id: &str) {
    let record = serde_json::json!({"eventVersion": "1.09", "eventTime": time, "eventID": id,
        "eventSource": "cloudtrail.amazonaws.com", "eventName": "StopLogging", "awsRegion": "us-east-1",
        "sourceIPAddress": "198.51.100.9", "userAgent": "aws-cli/2.15.0", "requestParameters": {"name": "main"},
        "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/stopper",
                         "accountId": "111122223333", "userName": "stopper"},
        "recipientAccountId": "111122223333"});
    let name = format!("111122223333_CloudTrail_us-east-1_{stamp}_{id}.json");
    let part = dir.join(format!(".{name}.part"));
    std::fs::write(&part, serde_json::json!({ "Records": [record] }).to_string()).unwrap();
    std::fs::rename(part, dir.join(name)).unwrap();
}

/// Anomalies by id, with each one's count.
pub fn ids_and_counts(anomalies: &[Value]) -> BTreeSet<(String, u64)> {
    anomalies
        .iter()
        .map(|a| (a["id"].as_str().unwrap().to_owned(), a["count"].as_u64().unwrap()))
        .collect()
}
