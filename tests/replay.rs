//! End-to-end tests of `trailwatch generate` and `trailwatch replay`, running the real binary.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use serde_json::Value;
use trailwatch::decode::Decoder;
use trailwatch::labels::Labels;

#[test]
fn generated_incidents_are_all_found_with_under_one_false_positive_per_thousand_events() {
    let tmp = tempfile::tempdir().unwrap();
    let trail = tmp.path().join("trail");
    generate(&trail, 7, 12, 40, 120);
    let (anomalies, summary) = replay_with_summary(&[&trail.join("AWSLogs")], tmp.path());

    let labels = Labels::load(&trail.join("labels.jsonl")).unwrap();
    let evidence = evidence(&anomalies);
    let score = labels.score_evidence(evidence.iter().map(Vec::as_slice));
    assert_eq!(
        score.found.len(),
        trailwatch::generate::INCIDENTS.len(),
        "labels name every incident"
    );
    assert!(
        score.missed().is_empty(),
        "missed incidents: {:?}",
        score.missed()
    );

    // Benign events once principals are past learning (3 days by default).
    let start = 1_772_409_600; // the generator's default first day
    let learned = start + 3 * 86_400;
    let mut decoder = Decoder::default();
    let mut benign_after_learning = 0u64;
    for file in files_under(&trail.join("AWSLogs")) {
        let bytes = std::fs::read(&file).unwrap();
        let decoded = decoder.decode(&Arc::from(path_str(&file)), &bytes);
        benign_after_learning += decoded
            .events
            .iter()
            .filter(|e| e.time >= learned && labels.incident_of(&e.event_id).is_none())
            .count() as u64;
    }
    assert!(
        benign_after_learning > 20_000,
        "a trail big enough to measure: {benign_after_learning}"
    );
    assert!(
        score.false_positives * 1000 < benign_after_learning,
        "{} false positives on {benign_after_learning} benign events",
        score.false_positives
    );

    // The generator's digests are skipped and its repeated records dropped, not counted twice.
    assert!(summary["files"]["skipped"]["digest"].as_u64().unwrap() > 0);
    assert!(summary["records"]["duplicates"].as_u64().unwrap() > 0);
    assert_eq!(summary["files"]["failed"], serde_json::json!({}));
}

#[test]
fn anomalies_carry_the_schema_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let trail = tmp.path().join("trail");
    generate(&trail, 3, 10, 12, 60);
    let (anomalies, _) = replay_with_summary(&[&trail], tmp.path());
    assert!(!anomalies.is_empty());
    for a in &anomalies {
        assert_eq!(a["schema"], "trailwatch.anomaly/v1");
        assert_eq!(a["id"].as_str().unwrap().len(), 32);
        for field in [
            "kind",
            "severity",
            "score",
            "detected_at",
            "event_time",
            "principal",
            "baseline",
            "evidence",
            "count",
        ] {
            assert!(!a[field].is_null(), "{field} missing in {a}");
        }
        assert!(!a["principal"]["key"].as_str().unwrap().is_empty());
        assert!(!a["evidence"]["event_ids"].as_array().unwrap().is_empty());
        assert!(a["evidence"]["object"].as_str().unwrap().ends_with(".json.gz"));
        if a["kind"] == "new_value" {
            let dims = a["dimensions"].as_array().unwrap();
            assert!(dims.iter().any(|d| d["novel"] == true), "{a}");
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    generate(&a, 11, 10, 10, 40);
    generate(&b, 11, 10, 10, 40);
    generate(&c, 12, 10, 10, 40);
    let (fa, fb) = (files_under(&a), files_under(&b));
    let rel = |root: &Path, files: &[PathBuf]| -> Vec<PathBuf> {
        files
            .iter()
            .map(|f| f.strip_prefix(root).unwrap().to_owned())
            .collect()
    };
    assert_eq!(rel(&a, &fa), rel(&b, &fb));
    for (x, y) in fa.iter().zip(&fb) {
        assert_eq!(
            std::fs::read(x).unwrap(),
            std::fs::read(y).unwrap(),
            "{} differs",
            x.display()
        );
    }
    assert_ne!(
        std::fs::read(a.join("labels.jsonl")).unwrap(),
        std::fs::read(c.join("labels.jsonl")).unwrap()
    );
}

#[test]
fn replaying_the_same_input_gives_the_same_anomalies_and_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let trail = tmp.path().join("trail");
    generate(&trail, 5, 10, 16, 60);
    let strip = |anomalies: Vec<Value>| -> Vec<String> {
        let mut lines: Vec<String> = anomalies
            .into_iter()
            .map(|mut a| {
                a.as_object_mut().unwrap().remove("detected_at");
                a.to_string()
            })
            .collect();
        lines.sort();
        lines
    };
    let first = tmp.path().join("1");
    let second = tmp.path().join("2");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    let (a, summary_a) = replay_with_summary(&[&trail], &first);
    let (b, summary_b) = replay_with_summary(&[&trail], &second);
    assert!(!a.is_empty());
    assert_eq!(strip(a.clone()), strip(b));
    // More workers than cores, each running shards in turn: the same accounting, and the same
    // principals flagged for the same reasons (repeats fold per shard, so counts may differ).
    let third = tmp.path().join("3");
    std::fs::create_dir_all(&third).unwrap();
    let config = tmp.path().join("workers.toml");
    std::fs::write(&config, "[replay]\nworkers = 5\n").unwrap();
    let (c, summary_c) = replay_with(&[&trail], &third, &["--config", &path_str(&config)]);
    let flagged = |anomalies: &[Value]| -> std::collections::BTreeSet<String> {
        anomalies
            .iter()
            .map(|a| format!("{} {} {}", a["kind"], a["principal"]["key"], a["rule"]["id"]))
            .collect()
    };
    assert_eq!(flagged(&a), flagged(&c));
    for summary in [&summary_b, &summary_c] {
        for key in ["records", "files", "principals"] {
            assert_eq!(summary[key], summary_a[key], "{key}");
        }
    }
}

#[test]
fn odd_and_broken_fixtures_are_reported_file_by_file_and_nothing_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = manifest_dir().join("tests/fixtures");
    let (_, summary) = replay_with_summary(&[&fixtures.join("odd"), &fixtures.join("broken")], tmp.path());

    let failed: BTreeMap<String, u64> = serde_json::from_value(summary["files"]["failed"].clone()).unwrap();
    let expected: BTreeMap<String, u64> = [
        ("corrupt_gzip", 1),
        ("truncated_gzip", 1),
        ("invalid_json", 3),
        ("not_cloudtrail", 1),
        ("not_utf8", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(failed, expected);
    let failures: Vec<&str> = summary["files"]["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for (file, why) in [
        ("truncated.json:", "after 1 records"),
        ("truncated.json.gz:", "the 0 records before the cut are kept"),
        ("not-gzip.json.gz:", "corrupt gzip"),
        ("no-records.json:", "no Records"),
        ("records-not-array.json:", "invalid"),
        ("empty.json:", "invalid JSON"),
        ("binary.json:", "not UTF-8"),
    ] {
        assert!(
            failures.iter().any(|f| f.contains(file) && f.contains(why)),
            "no failure for {file} with {why:?} in {failures:#?}"
        );
    }
    assert_eq!(summary["files"]["skipped"]["digest"], 2);
    // broken/README.txt.
    assert_eq!(summary["files"]["skipped"]["not_a_log_file"], 1);

    let skipped: BTreeMap<String, u64> =
        serde_json::from_value(summary["records"]["skipped"].clone()).unwrap();
    for reason in [
        "not_an_object",
        "missing_event_time",
        "bad_event_time",
        "missing_event_source",
        "insight_record",
        "unreadable",
    ] {
        assert_eq!(skipped.get(reason), Some(&1), "{reason} in {skipped:?}");
    }
    // 17 distinct odd records, and the one record before the cut in truncated.json.
    assert_eq!(summary["records"]["events"], 18);
    // odd-01 twice in the log file, and the three JSON-lines records repeat log-file records.
    assert_eq!(summary["records"]["duplicates"], 4);
    let examples = summary["records"]["skipped_examples"].as_array().unwrap();
    assert!(examples.iter().any(|e| e
        .as_str()
        .unwrap()
        .contains("FixtureOddShapes1.json.gz record 18: not_an_object")));
}

/// The reference corpora of third-party samples: the folder `TRAILWATCH_CORPORA` names, else
/// `../shared/corpora` beside the repository when it is there. A clone without them runs the
/// corpora test over the project's own fixtures, which take the same shapes.
fn reference_corpora() -> Option<PathBuf> {
    match std::env::var_os("TRAILWATCH_CORPORA") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            assert!(
                dir.is_dir(),
                "TRAILWATCH_CORPORA={} is not a folder",
                dir.display()
            );
            Some(dir)
        }
        None => Some(manifest_dir().join("../shared/corpora")).filter(|d| d.is_dir()),
    }
}

/// Replays `root`; asserts every file under it is accounted for and returns the summary.
fn replay_accounting_for_every_file(root: &Path) -> Value {
    let tmp = tempfile::tempdir().unwrap();
    let (_, summary) = replay_with_summary(&[root], tmp.path());
    let total = files_under(root).len() as u64;
    let files = &summary["files"];
    let sum = |m: &Value| {
        m.as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        files["read"].as_u64().unwrap() + files["skipped"]["not_a_log_file"].as_u64().unwrap_or(0),
        total
    );
    // Every file read is accounted for: decoded, skipped as a whole, or failed with a reason.
    assert_eq!(
        files["decoded"].as_u64().unwrap() + sum(&files["failed"]) + sum(&files["skipped"])
            - files["skipped"]["not_a_log_file"].as_u64().unwrap_or(0),
        files["read"].as_u64().unwrap()
    );
    assert!(summary["records"]["events"].as_u64().unwrap() > 0);
    summary
}

#[test]
fn every_file_in_the_reference_corpora_replays_without_stopping() {
    match reference_corpora() {
        Some(corpora) => {
            replay_accounting_for_every_file(&corpora);
        }
        None => {
            let fixtures = manifest_dir().join("tests/fixtures");
            let summary = replay_accounting_for_every_file(&fixtures);
            // The shapes the corpora hold, in the project's own files: decoded, failed, skipped.
            for reason in [
                "truncated_gzip",
                "invalid_json",
                "not_cloudtrail",
                "corrupt_gzip",
                "not_utf8",
            ] {
                assert!(
                    summary["files"]["failed"][reason].as_u64().unwrap_or(0) > 0,
                    "{reason}: {}",
                    summary["files"]
                );
            }
        }
    }
}

#[test]
fn the_fixtures_hold_the_shapes_real_input_takes() {
    let tmp = tempfile::tempdir().unwrap();
    let shapes = manifest_dir().join("tests/fixtures/shapes");
    let (_, summary) = replay_with_summary(&[&shapes], tmp.path());
    let failed: BTreeMap<String, u64> = serde_json::from_value(summary["files"]["failed"].clone()).unwrap();
    let expected: BTreeMap<String, u64> = [("invalid_json", 1), ("not_cloudtrail", 4), ("truncated_gzip", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(failed, expected);
    let failures = summary["files"]["failures"].to_string();
    for (file, why) in [
        ("cut-trailing-record.json", "after 1 records"),
        (
            "FixtureCutShort.json.gz",
            "the 18 records before the cut are kept",
        ),
        ("misspelt-records.json", "no Records"),
        ("eventbridge-api-call.json", "no Records"),
        ("sns-envelope.json", "no Records"),
        ("cloudtrail-notification-body.json", "no Records"),
    ] {
        assert!(
            failures.contains(file) && failures.contains(why),
            "{file}: {why:?} in {failures}"
        );
    }
    // Six records of odd shapes decoded, the null one and two that are not objects skipped; 18
    // records of the cut gzip file and one before the cut of the plain one kept.
    assert_eq!(summary["records"]["events"], 25);
    assert_eq!(summary["records"]["skipped"]["missing_event_time"], 1);
    assert_eq!(summary["records"]["skipped"]["not_an_object"], 2);
}

#[test]
fn a_bad_config_value_is_an_error_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.toml");
    std::fs::write(
        &config,
        "[baseline]\nwindow = \"fortnight\"\n[rate]\nfactor = 0\n",
    )
    .unwrap();
    let out = run(&[
        "replay",
        "--config",
        &path_str(&config),
        &path_str(&manifest_dir().join("tests/fixtures/odd")),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("baseline.window") && stderr.contains("rate.factor"),
        "{stderr}"
    );

    std::fs::write(&config, "[baseline]\nwindw = \"3d\"\n").unwrap();
    let out = run(&[
        "replay",
        "--config",
        &path_str(&config),
        &path_str(&manifest_dir().join("tests/fixtures/odd")),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("windw"));
}

#[test]
fn a_missing_input_path_is_an_error_naming_it() {
    let out = run(&["replay", "/nonexistent/trail"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/trail"));
}
