//! End-to-end tests of the rule commands and of rules in a replay, running the real binary.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use serde_json::Value;
use trailwatch::labels::Labels;

fn rule_fixtures() -> std::path::PathBuf {
    manifest_dir().join("tests/rule_fixtures")
}

#[test]
fn every_shipped_rule_passes_its_tests_and_has_both_verdicts() {
    let out = run_ok(&[
        "rules",
        "test",
        &path_str(&manifest_dir().join("rules")),
        "--strict",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rule tests: 0 failed"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // The built-in copy is the same set.
    let builtin = run_ok(&["rules", "test", "--strict"]);
    let builtin = String::from_utf8_lossy(&builtin.stdout);
    assert_eq!(stdout.lines().next(), builtin.lines().next());
}

#[test]
fn a_rule_that_does_not_parse_fails_check_with_file_and_line() {
    let out = run(&["rules", "check", &path_str(&rule_fixtures().join("broken"))]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad_condition.yml:9:"), "{stderr}");
}

#[test]
fn a_rule_the_evaluator_cannot_compile_is_reported_by_name_and_reason() {
    let out = run(&["rules", "check", &path_str(&rule_fixtures().join("uncompilable"))]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad_regex.yml") && stderr.contains("Rule With An Invalid Regular Expression"),
        "{stderr}"
    );
    assert!(stderr.to_lowercase().contains("regex"), "{stderr}");
}

#[test]
fn a_wrong_test_verdict_fails_and_names_the_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(manifest_dir().join("rules/aws_leave_organization.yml")).unwrap();
    // Swap the verdicts.
    let swapped = text
        .replace("  match:", "  was_match:")
        .replace("  nomatch:", "  match:")
        .replace("  was_match:", "  nomatch:");
    std::fs::write(tmp.path().join("swapped.yml"), swapped).unwrap();
    let out = run(&["rules", "test", &path_str(tmp.path())]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAIL") && stdout.contains("AWS Account Left the Organization"),
        "{stdout}"
    );
    assert!(stdout.contains("`match` test 1 did not match"), "{stdout}");
}

fn write_log(dir: &Path, records: &[Value]) {
    std::fs::create_dir_all(dir).unwrap();
    let body = serde_json::json!({ "Records": records });
    std::fs::write(
        dir.join("111122223333_CloudTrail_us-east-1_20260302T1000Z_Test.json"),
        body.to_string(),
    )
    .unwrap();
}

fn record(id: &str, source: &str, name: &str, agent: &str) -> Value {
    serde_json::json!({
        "eventVersion": "1.09", "eventTime": "2026-03-02T10:00:00Z", "eventID": id,
        "eventSource": source, "eventName": name, "awsRegion": "us-east-1",
        "sourceIPAddress": "198.51.100.7", "userAgent": agent,
        "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/alice",
                         "accountId": "111122223333", "userName": "alice"},
        "recipientAccountId": "111122223333"
    })
}

#[test]
fn a_sigma_rule_written_elsewhere_loads_and_matches_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    write_log(
        &logs,
        &[
            record("e-1", "sts.amazonaws.com", "GetSessionToken", "Mozilla/5.0"),
            record("e-2", "sts.amazonaws.com", "GetSessionToken", "aws-cli/2.15.0"),
        ],
    );
    let foreign = rule_fixtures().join("foreign");
    let out = run_ok(&["rules", "check", &path_str(&foreign)]);
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("1 rules loaded (0 thresholds), 0 left out, 1 for other log sources"));
    let (anomalies, summary) = replay_with(&[&logs], tmp.path(), &["--rules", &path_str(&foreign)]);
    let matches: Vec<&Value> = anomalies.iter().filter(|a| a["kind"] == "rule_match").collect();
    assert_eq!(matches.len(), 1, "{anomalies:#?}");
    assert_eq!(matches[0]["rule"]["id"], "9c1b9a3e-3f7a-4b8e-9d5e-2f1c6a0b7e41");
    assert_eq!(matches[0]["evidence"]["event_ids"][0], "e-1");
    assert_eq!(summary["rule_matches"]["9c1b9a3e-3f7a-4b8e-9d5e-2f1c6a0b7e41"], 1);
}

#[test]
fn suppressions_and_shadow_mode_keep_rule_matches_out_of_the_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    write_log(
        &logs,
        &[
            record(
                "e-1",
                "organizations.amazonaws.com",
                "LeaveOrganization",
                "aws-cli/2.15.0",
            ),
            record(
                "e-2",
                "kms.amazonaws.com",
                "ScheduleKeyDeletion",
                "aws-cli/2.15.0",
            ),
        ],
    );
    let (anomalies, _) = replay_with(&[&logs], tmp.path(), &[]);
    let titles = |anomalies: &[Value]| -> Vec<String> {
        let mut t: Vec<String> = anomalies
            .iter()
            .filter_map(|a| a["rule"]["title"].as_str().map(String::from))
            .collect();
        t.sort();
        t
    };
    assert_eq!(
        titles(&anomalies),
        [
            "AWS Account Left the Organization",
            "AWS KMS Key Deletion Scheduled or Key Disabled"
        ]
    );

    let config = tmp.path().join("trailwatch.toml");
    std::fs::write(
        &config,
        "[alerts]\nshadow_rules = [\"AWS Account Left the Organization\"]\n\
         [alerts.severity]\n\"AWS KMS Key Deletion Scheduled or Key Disabled\" = \"critical\"\n\
         [[suppress]]\ncidrs = [\"198.51.100.0/24\"]\nkinds = [\"new_value\"]\n",
    )
    .unwrap();
    let run_dir = tmp.path().join("configured");
    std::fs::create_dir_all(&run_dir).unwrap();
    let (anomalies, summary) = replay_with(&[&logs], &run_dir, &["--config", &path_str(&config)]);
    assert_eq!(
        titles(&anomalies),
        ["AWS KMS Key Deletion Scheduled or Key Disabled"]
    );
    assert_eq!(
        anomalies.iter().find(|a| a["rule"].is_object()).unwrap()["severity"],
        "critical"
    );
    assert_eq!(summary["alerts"]["shadowed"], 1);

    std::fs::write(
        &config,
        "[[suppress]]\nprincipals = [\"arn:aws:iam::111122223333:user/alice\"]\n",
    )
    .unwrap();
    let run_dir = tmp.path().join("suppressed");
    std::fs::create_dir_all(&run_dir).unwrap();
    let (anomalies, summary) = replay_with(&[&logs], &run_dir, &["--config", &path_str(&config)]);
    assert!(anomalies.is_empty(), "{anomalies:#?}");
    assert_eq!(summary["alerts"]["suppressed"], 2);
}

#[test]
fn injected_tampering_root_and_mfa_incidents_raise_rule_matches_with_rule_details() {
    let tmp = tempfile::tempdir().unwrap();
    let trail = tmp.path().join("trail");
    generate(&trail, 21, 12, 20, 60);
    let (anomalies, _) = replay_with_summary(&[&trail.join("AWSLogs")], tmp.path());
    let labels = Labels::load(&trail.join("labels.jsonl")).unwrap();
    for (incident, rule_title) in [
        (
            "cloudtrail_tampering",
            "AWS CloudTrail Logging Stopped or Trail Deleted",
        ),
        ("root_usage", "AWS Root Console Login"),
        ("console_login_no_mfa", "AWS Console Login Without MFA"),
    ] {
        let hit = anomalies.iter().find(|a| {
            a["kind"] == "rule_match"
                && a["rule"]["title"] == rule_title
                && a["evidence"]["event_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|id| labels.incident_of(id.as_str().unwrap()) == Some(incident))
        });
        let hit = hit.unwrap_or_else(|| panic!("no {rule_title:?} match for {incident}"));
        assert!(!hit["rule"]["id"].as_str().unwrap().is_empty());
        assert!(
            hit["rule"]["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t.as_str().unwrap().starts_with("attack.t")),
            "{hit}"
        );
    }
}

/// Every record's JSON text in the `.json`/`.json.gz` log files under `dir`.
fn records_under(dir: &Path) -> Vec<String> {
    use std::io::Read;
    let mut out = Vec::new();
    for path in walk(dir) {
        let bytes = std::fs::read(&path).unwrap();
        let mut text = String::new();
        if bytes.starts_with(&[0x1f, 0x8b]) {
            if flate2::read::MultiGzDecoder::new(&bytes[..])
                .read_to_string(&mut text)
                .is_err()
            {
                continue;
            }
        } else {
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        if let Ok(Value::Object(file)) = serde_json::from_str::<Value>(&text) {
            if let Some(Value::Array(records)) = file.get("Records") {
                out.extend(records.iter().map(Value::to_string));
            }
        }
    }
    out
}

/// Rules whose conditions stress the gates: alternatives over different fields, wildcards,
/// negations, `all of`, `1 of`, lists of conditions, nested and keyword fields, `exists`, `null`.
const GATE_RULES: &str = r#"
title: Numbers Matched As Text
logsource: {product: aws, service: cloudtrail}
detection:
  top:
    eventSource: ec2.amazonaws.com
    eventVersion|startswith: '100'
  nested:
    eventSource: ec2.amazonaws.com
    requestParameters.maxResults|endswith: '00'
  condition: top or nested
---
title: Or Over Different Fields
logsource: {product: aws, service: cloudtrail}
detection:
  a: {eventName: GetObject}
  b: {eventSource: kms.amazonaws.com}
  condition: a or b
---
title: Wildcard Call
logsource: {product: aws, service: cloudtrail}
detection:
  sel: {eventName: 'Get*'}
  condition: sel
---
title: All Of Selections
logsource: {product: aws, service: cloudtrail}
detection:
  sel_call: {eventName: [Decrypt, GetObject, AssumeRole]}
  sel_source: {eventSource: [kms.amazonaws.com, sts.amazonaws.com]}
  condition: all of sel_*
---
title: One Of Selections Or Not
logsource: {product: aws, service: cloudtrail}
detection:
  sel_a: {eventName: ConsoleLogin}
  sel_b: {userIdentity.type: Root}
  filter: {awsRegion: us-east-1}
  condition: 1 of sel_* and not filter
---
title: Two Conditions
logsource: {product: aws, service: cloudtrail}
detection:
  a: {eventName: PutObject}
  b: {errorCode|exists: true}
  condition: [a, b]
---
title: Null And Absent
logsource: {product: aws, service: cloudtrail}
detection:
  sel: {eventSource: s3.amazonaws.com, errorCode: null}
  condition: sel
---
title: Negated Only
logsource: {product: aws, service: cloudtrail}
detection:
  f: {eventSource: s3.amazonaws.com}
  condition: not f
---
title: Keywords
logsource: {product: aws, service: cloudtrail}
detection:
  keywords: [AccessDenied]
  condition: keywords
---
title: Nested And Modifiers
logsource: {product: aws, service: cloudtrail}
detection:
  sel:
    userIdentity.sessionContext.sessionIssuer.type: Role
    userAgent|contains|all: [aws, linux]
    sourceIPAddress|cidr: 10.0.0.0/8
  condition: sel
---
title: Nested Scalars Beyond The Gate
logsource: {product: aws, service: cloudtrail}
detection:
  sel:
    eventName: [GetParameter, GetParameters]
    requestParameters.withDecryption: true
    requestParameters.maxResults: 50
  condition: sel
---
title: Nested Literal Beyond The Gate
logsource: {product: aws, service: cloudtrail}
detection:
  sel:
    eventName: GetObject
    requestParameters.bucketName: Secret-Bucket
  condition: sel
---
title: Case Of Values
logsource: {product: aws, service: cloudtrail}
detection:
  sel: {eventname: getobject, eventName: GETOBJECT}
  condition: sel
---
title: Long-Term Key
logsource: {product: aws, service: cloudtrail}
detection:
  sel: {userIdentity.accessKeyId|startswith: AKIA}
  condition: sel
---
title: Session Created In 2024
logsource: {product: aws, service: cloudtrail}
detection:
  sel: {userIdentity.sessionContext.attributes.creationDate|startswith: '2024'}
  condition: sel
---
title: Session Holding A Long-Term Key
logsource: {product: aws, service: cloudtrail}
detection:
  sel: {userIdentity.sessionContext|contains: AKIA}
  condition: sel
"#;

#[test]
fn gated_evaluation_agrees_with_the_evaluator_on_every_record() {
    use trailwatch::rules::{GateMemo, RuleSet};
    use trailwatch::view::RecordView;
    let tmp = tempfile::tempdir().unwrap();
    let trail = tmp.path().join("trail");
    generate(&trail, 5, 10, 10, 60);
    let mut records = records_under(&trail);
    let generated = records.len();
    records.extend(records_under(&manifest_dir().join("tests/fixtures")));
    // Each shipped rule's own test events, matching and not.
    for file in walk(&manifest_dir().join("rules")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in text.split("\n---") {
            let Ok(doc) = yaml_serde::from_str::<Value>(doc) else {
                continue;
            };
            for verdict in ["match", "nomatch"] {
                for case in doc["tests"][verdict].as_array().into_iter().flatten() {
                    // A threshold rule's case is a sequence of events.
                    match case {
                        Value::Array(events) => records.extend(events.iter().map(Value::to_string)),
                        event => records.push(event.to_string()),
                    }
                }
            }
        }
    }
    assert!(generated > 1000, "{generated} generated records");
    // Values a text search would miss (an escape), a dotted top-level key, odd shapes.
    records.extend(
        [
            r#"{"eventSource":"signin.amazonaws.com","eventName":"ConsoleLogin","userIdentity":{"type":"R\u006fot"}}"#,
            r#"{"eventSource":"s3.amazonaws.com","eventName":"GetObject","userIdentity":{"type":["Root"]}}"#,
            r#"{"eventSource":"s3.amazonaws.com","eventName":"GetObject","userIdentity.type":"Root"}"#,
            r#"{"eventSource":"s3.amazonaws.com","eventName":"GetObject","userIdentity":"Root"}"#,
            r#"{"eventSource":"s3.amazonaws.com","eventName":"GetObject","userIdentity":{"type":"ROOT"},"userAgent":"KALI"}"#,
            // Nested requirements beyond a gate, searched for in the parent's text first.
            r#"{"eventName":"GetParameter","requestParameters":{"withDecryption":true,"maxResults":50}}"#,
            r#"{"eventName":"GetParameter","requestParameters":{"withDecryption":false,"maxResults":50}}"#,
            r#"{"eventName":"GetParameter","requestParameters":{"withDecryption":"true","maxResults":"50"}}"#,
            r#"{"eventName":"GetParameter","requestParameters":{"withDecryption":"YES","maxResults":50}}"#,
            r#"{"eventName":"GetParameter","requestParameters":{"withDecryption":"1","maxResults":50}}"#,
            r#"{"eventName":"GetParameter","requestParameters":{"withDecryption":1,"maxResults":50}}"#,
            r#"{"eventName":"GetParameter","requestParameters":{"withDecryption":[false,true],"maxResults":50}}"#,
            r#"{"eventName":"GetParameter","requestParameters":{"withDecryption":"no","maxResults":50,"note":"true"}}"#,
            r#"{"eventName":"GetParameter","requestParameters":{"with\u0044ecryption":true,"maxResults":50}}"#,
            r#"{"eventName":"GetParameter","requestParameters.withDecryption":true,"requestParameters":{"maxResults":50}}"#,
            r#"{"eventName":"GetParameters","requestParameters":{"items":[{"withDecryption":true}],"maxResults":50}}"#,
            r#"{"eventName":"GetParameter","requestParameters":{"maxResults":50}}"#,
            r#"{"eventName":"GetObject","requestParameters":{"bucketName":"SECRET-BUCKET"}}"#,
            r#"{"eventName":"GetObject","requestParameters":{"bucketName":"secret\u002dbucket"}}"#,
            r#"{"eventName":"GetObject","requestParameters":{"bucketName":"other"}}"#,
            r#"{"eventName":"GetObject","requestParameters":null}"#,
            // Requirements beyond a gate on top-level fields, searched for in the field's text
            // first; numbers the evaluator may read in another form than their text.
            r#"{"eventSource":"lambda.amazonaws.com","eventName":"UpdateFunctionCode20150331v2","userAgent":"aws-cli/2"}"#,
            r#"{"eventSource":"lambda.amazonaws.com","eventName":"updatefunctioncode","userAgent":"aws-cli/2"}"#,
            r#"{"eventSource":"lambda.amazonaws.com","eventName":"GetFunction20150331v2","userAgent":"aws-cli/2"}"#,
            r#"{"eventSource":"lambda.amazonaws.com","eventName":"AddPermission20150331v2","requestParameters":{"principal":"*"}}"#,
            r#"{"eventSource":"lambda.amazonaws.com","eventName":"CreateFunctionUrlConfig20211031","requestParameters":{"authType":"NONE"}}"#,
            r#"{"eventSource":"lambda.amazonaws.com","eventName":["UpdateFunctionCode"]}"#,
            r#"{"eventSource":"ec2.amazonaws.com","eventName":"DescribeInstances","eventVersion":1E2}"#,
            r#"{"eventSource":"ec2.amazonaws.com","eventName":"DescribeInstances","eventVersion":100.0}"#,
            r#"{"eventSource":"ec2.amazonaws.com","eventName":"DescribeInstances","eventVersion":"1.08","requestParameters":{"maxResults":1E2}}"#,
            r#"{"eventSource":"ec2.amazonaws.com","eventName":"DescribeInstances","requestParameters":{"maxResults":1000}}"#,
            r#"{"eventSource":"iam.amazonaws.com","eventName":"ListUsers","errorCode":"AccessDenied"}"#,
            r#"{"eventSource":"iam.amazonaws.com","eventName":"ListUsers","errorCode":"Client.UnauthorizedOperation"}"#,
            r#"{"eventSource":"iam.amazonaws.com","eventName":"ListUsers","errorCode":"ThrottlingException"}"#,
            r#"{"eventSource":"iam.amazonaws.com","eventName":"ListUsers","errorCode":"ACCESSDENIED"}"#,
            // A sign that lower-cases to an ASCII letter (KELVIN SIGN to `k`), raw and escaped.
            "{\"eventSource\":\"kms.amazonaws.com\",\"eventName\":\"Schedule\u{212A}eyDeletion\"}",
            r#"{"eventSource":"kms.amazonaws.com","eventName":"Schedule\u212AeyDeletion"}"#,
            "{\"eventName\":\"GetObject\",\"requestParameters\":{\"bucketName\":\"SECRET-BUC\u{212A}ET\"}}",
            // Rules judged without the evaluator: a filter's `exists` and `endswith` on odd values.
            r#"{"eventSource":"logs.amazonaws.com","eventName":"DeleteLogGroup","userIdentity":{"invokedBy":null},"sourceIPAddress":"203.0.113.9"}"#,
            r#"{"eventSource":"logs.amazonaws.com","eventName":"DeleteLogGroup","userIdentity":{"invokedBy":""},"sourceIPAddress":"203.0.113.9"}"#,
            r#"{"eventSource":"logs.amazonaws.com","eventName":"DeleteLogGroup","userIdentity":"x","sourceIPAddress":"LAMBDA.AMAZONAWS.COM"}"#,
            r#"{"eventSource":"logs.amazonaws.com","eventName":"DeleteLogGroup","sourceIPAddress":"amazonaws.com"}"#,
            r#"{"eventSource":"logs.amazonaws.com","eventName":"DeleteLogGroup","sourceIPAddress":".amazonaws.com"}"#,
            r#"{"eventSource":"logs.amazonaws.com","eventName":"DeleteLogGroup","sourceIPAddress":["lambda.amazonaws.com"]}"#,
            r#"{"eventSource":"logs.amazonaws.com","eventName":"DeleteLogGroup","sourceIPAddress":7}"#,
            r#"{"eventSource":"logs.amazonaws.com","eventName":"DeleteLogGroup","sourceIPAddress":null}"#,
            r#"{"eventSource":"logs.amazonaws.com","eventName":"DeleteLogGroup","sourceIPAddress":"lambda.amazonaws.com\u0000"}"#,
            r#"{"eventSource":"LOGS.amazonaws.com","eventName":"deleteloggroup"}"#,
            r#"{"eventSource":"logs.amazonaws.com ","eventName":"DeleteLogGroup"}"#,
            r#"{"eventSource":null,"eventName":"DeleteLogGroup"}"#,
            r#"{"eventSource":["logs.amazonaws.com"],"eventName":"DeleteLogGroup"}"#,
            r#"{"eventSource":"bedrock.amazonaws.com","eventName":"Converse","userIdentity":{"invokedBy":"bedrock.amazonaws.com"}}"#,
            r#"{"eventSource":"bedrock.amazonaws.com","eventName":"Converse","userIdentity":{"invokedBy":null}}"#,
            r#"{"eventSource":"bedrock.amazonaws.com","eventName":"Converse","userIdentity":{"invokedBy":{}}}"#,
            r#"{"eventSource":"bedrock.amazonaws.com","eventName":"Converse","userIdentity":{"type":"IAMUser"}}"#,
            // Sessions of one identity, which differ only in their credentials and so share
            // its key: a verdict on a credential is not the key's to remember.
            r#"{"eventName":"GetObject","userIdentity":{"type":"AssumedRole","arn":"arn:aws:sts::1:assumed-role/R/s","accessKeyId":"ASIAONE","sessionContext":{"attributes":{"creationDate":"2023-05-01T00:00:00Z"}}}}"#,
            r#"{"eventName":"GetObject","userIdentity":{"type":"AssumedRole","arn":"arn:aws:sts::1:assumed-role/R/s","accessKeyId":"AKIATWO","sessionContext":{"attributes":{"creationDate":"2023-05-01T01:00:00Z"}}}}"#,
            r#"{"eventName":"GetObject","userIdentity":{"type":"AssumedRole","arn":"arn:aws:sts::1:assumed-role/R/s","accessKeyId":"ASIATHREE","sessionContext":{"attributes":{"creationDate":"2024-05-01T02:00:00Z"}}}}"#,
            r#"{"eventName":"GetObject","userIdentity":{"type":"AssumedRole","arn":"arn:aws:sts::1:assumed-role/R/s","accessKeyId":"ASIAFOUR","sessionContext":{"attributes":{"creationDate":"2023-05-01T03:00:00Z","accessKeyId":"AKIAFIVE"}}}}"#,
        ]
        .map(String::from),
    );
    // Texts too long for the gates to remember, seen twice each.
    let pad = "x".repeat(5000);
    for _ in 0..2 {
        records.push(format!(
            r#"{{"eventSource":"s3.amazonaws.com","eventName":"GetObject","userIdentity":{{"type":"Root","pad":"{pad}"}},"userAgent":"kali {pad}"}}"#
        ));
        records.push(format!(
            r#"{{"eventSource":"s3.amazonaws.com","eventName":"GetObject","userIdentity":{{"type":"IAMUser","pad":"{pad}"}},"userAgent":"aws-cli {pad}"}}"#
        ));
    }

    let mut sources: Vec<(String, String)> = vec![("gates.yml".into(), GATE_RULES.into())];
    for file in walk(&manifest_dir().join("rules")) {
        if file.extension().is_some_and(|e| e == "yml") {
            sources.push((path_str(&file), std::fs::read_to_string(&file).unwrap()));
        }
    }
    let rules = RuleSet::from_sources(sources).unwrap();
    assert!(rules.unsupported.is_empty(), "{:?}", rules.unsupported);
    assert!(
        rules.ungated() >= 3,
        "the stress rules without a gate are evaluated everywhere"
    );

    let mut matched_records = 0;
    let mut rules_seen = std::collections::BTreeSet::new();
    // The memo is kept across records, as a decoder keeps it: verdicts remembered from one
    // record must hold for every later record with the same text.
    let mut memo = GateMemo::default();
    // And as a decoder keeps it with the keys its principal cache gives identity texts.
    let mut identities = trailwatch::principal::PrincipalCache::default();
    let mut keyed_memo = GateMemo::default();
    for record in &records {
        let (Some(view), Some(mut keyed_view)) = (RecordView::new(record), RecordView::new(record)) else {
            continue;
        };
        if let Some(identity) = keyed_view.top_level_text("userIdentity") {
            let known = identities.get(identity, None, || trailwatch::principal::Principal {
                key: "k".into(),
                kind: "t".into(),
                account_id: None,
                arn: None,
                session: None,
            });
            if let Some(key) = known.identity_key {
                keyed_view.set_identity_key(key);
            }
        }
        let (mut gated, mut remembered, mut keyed, mut full) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        rules.evaluate(&view, &mut gated);
        rules.evaluate_with(&view, &mut memo, &mut remembered);
        rules.evaluate_with(&keyed_view, &mut keyed_memo, &mut keyed);
        rules.evaluate_ungated(&view, &mut full);
        full.sort_unstable();
        assert_eq!(gated, full, "record {record}");
        assert_eq!(remembered, full, "record {record}, verdicts remembered");
        assert_eq!(
            keyed, full,
            "record {record}, verdicts remembered by identity key"
        );
        matched_records += usize::from(!gated.is_empty());
        rules_seen.extend(gated);
    }
    // The comparison covers matches, not only misses: most rules matched some record.
    assert!(matched_records > 100, "{matched_records}");
    assert!(
        rules_seen.len() * 4 > rules.len() * 3,
        "{} of {}",
        rules_seen.len(),
        rules.len()
    );
}

#[test]
fn a_threshold_anomaly_names_the_events_behind_it() {
    use std::sync::Arc;
    use trailwatch::config::Settings;
    use trailwatch::decode::{DecodeLimits, Decoder};
    use trailwatch::detect::Detector;
    use trailwatch::rules::RuleSet;

    let records: Vec<Value> = (0..20)
        .map(|i| {
            serde_json::json!({
                "eventVersion": "1.09",
                "eventTime": format!("2026-03-02T10:00:{:02}Z", i * 2),
                "eventSource": "iam.amazonaws.com",
                "eventName": "ListUsers",
                "errorCode": "AccessDenied",
                "awsRegion": "us-east-1",
                "sourceIPAddress": "203.0.113.7",
                "userAgent": "aws-cli/2.15.0",
                "eventID": format!("denied-{i:02}"),
                "recipientAccountId": "111122223333",
                "userIdentity": {"type": "IAMUser", "accountId": "111122223333",
                    "arn": "arn:aws:iam::111122223333:user/mallory", "userName": "mallory"},
            })
        })
        .collect();
    let file = serde_json::json!({ "Records": records }).to_string();
    let rules = Arc::new(RuleSet::builtin().unwrap());
    let decoded = Decoder::with_rules(DecodeLimits::default(), Some(Arc::clone(&rules)))
        .decode(&Arc::from("burst.json"), file.as_bytes());
    assert_eq!(decoded.events.len(), 20);

    let mut settings = Settings::default().detector;
    settings.alerts.dedup_window = 0;
    let mut detector = Detector::with_rules(settings, 1, Some(rules));
    let mut out = Vec::new();
    for event in &decoded.events {
        detector.process(event, &mut out);
    }
    detector.flush(&mut out);
    let burst = out
        .iter()
        .find(|a| {
            a.rule
                .as_ref()
                .is_some_and(|r| r.title == "AWS Burst of Denied Calls")
        })
        .expect("twenty denied calls in 40 seconds complete the threshold");
    // The event that completed it, then the latest of those the evaluator kept for the threshold
    // (it keeps ten references per group), by eventID.
    let ids = &burst.evidence.event_ids;
    let want: Vec<String> = std::iter::once(19)
        .chain(10..19)
        .map(|i| format!("denied-{i:02}"))
        .collect();
    assert_eq!(ids, &want);
}

#[test]
fn every_catalogue_technique_is_covered_and_a_missing_rule_is_named() {
    let out = run_ok(&["rules", "coverage", "--strict"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("catalogue: 44 of 44 techniques covered"),
        "{stdout}"
    );
    assert!(!stdout.contains("MISSING"), "{stdout}");
    assert!(stdout.contains("T1562.008"), "{stdout}");

    // Without the flow-log rule, its technique is reported and --strict fails.
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(manifest_dir().join("rules")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".yml") && name != "aws_vpc_flow_logs_deleted.yml" {
            std::fs::copy(&path, tmp.path().join(&name)).unwrap();
        }
    }
    let out = run(&["rules", "coverage", &path_str(tmp.path()), "--strict"]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("catalogue: 43 of 44 techniques covered"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("MISSING vpc-remove-flow-logs") && l.contains("not loaded")),
        "{stdout}"
    );
}

fn call(id: &str, source: &str, name: &str, user: &str, error: Option<&str>) -> Value {
    let mut r = record(id, source, name, "aws-cli/2.15.0");
    r["userIdentity"]["arn"] = format!("arn:aws:iam::111122223333:user/{user}").into();
    r["userIdentity"]["userName"] = user.into();
    if let Some(code) = error {
        r["errorCode"] = code.into();
        r["errorMessage"] = "You are not authorized to perform this operation.".into();
    }
    r
}

#[test]
fn a_failed_call_is_a_failed_attempt_at_lower_severity_unless_the_rule_keeps_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let ec2 = "ec2.amazonaws.com";
    let org = "organizations.amazonaws.com";
    write_log(
        &logs,
        &[
            call("ok-1", ec2, "DeleteFlowLogs", "alice", None),
            call(
                "denied-1",
                ec2,
                "DeleteFlowLogs",
                "bob",
                Some("Client.UnauthorizedOperation"),
            ),
            call(
                "denied-2",
                org,
                "LeaveOrganization",
                "carol",
                Some("AccessDeniedException"),
            ),
        ],
    );
    let (anomalies, _) = replay_with(&[&logs], tmp.path(), &[]);
    let by_event = |id: &str| -> &Value {
        anomalies
            .iter()
            .find(|a| a["kind"] == "rule_match" && a["evidence"]["event_ids"][0] == id)
            .unwrap_or_else(|| panic!("no rule match for {id}: {anomalies:#?}"))
    };
    let ok = by_event("ok-1");
    assert_eq!(ok["rule"]["title"], "AWS VPC Flow Logs Deleted");
    assert_eq!(
        (&ok["outcome"], &ok["severity"]),
        (&"succeeded".into(), &"high".into())
    );

    let denied = by_event("denied-1");
    assert_eq!(denied["rule"]["title"], "AWS VPC Flow Logs Deleted");
    assert_eq!(
        (&denied["outcome"], &denied["severity"]),
        (&"failed".into(), &"low".into())
    );
    assert!(
        denied["reason"]
            .as_str()
            .unwrap()
            .contains("failed (Client.UnauthorizedOperation)"),
        "{denied}"
    );

    // Leaving the organization keeps its severity when it is refused: the attempt is the news.
    let leave = by_event("denied-2");
    assert_eq!(leave["rule"]["title"], "AWS Account Left the Organization");
    assert_eq!(
        (&leave["outcome"], &leave["severity"]),
        (&"failed".into(), &"high".into())
    );
}

#[test]
fn a_bad_failures_setting_is_refused_with_the_rule_named() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(manifest_dir().join("rules/aws_leave_organization.yml")).unwrap();
    std::fs::write(
        tmp.path().join("bad.yml"),
        text.replace("failures: keep", "failures: sometimes"),
    )
    .unwrap();
    let out = run(&["rules", "check", &path_str(tmp.path())]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yml")
            && stderr.contains("AWS Account Left the Organization")
            && stderr.contains("sometimes"),
        "{stderr}"
    );
}

#[test]
fn a_rule_collection_loads_beside_the_shipped_rules_each_rule_loaded_or_refused_by_name() {
    let collection = rule_fixtures().join("collection");
    let out = run_ok(&["rules", "check", "--extra", &path_str(&collection)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("extra folders: 2 rules loaded, 3 left out"),
        "{stdout}"
    );
    for (file, reason) in [
        ("aws_broken_yaml.yml:9", "YAML parse error"),
        (
            "aws_cloudtrail_stop_logging_copy.yml",
            "already taken by rules/aws_cloudtrail_logging_stopped.yml",
        ),
        ("aws_bad_regex.yml", "invalid regex"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("left out:") && l.contains(file) && l.contains(reason)),
            "{file}: {reason}\n{stdout}"
        );
    }

    // Replayed with the collection beside them, the shipped rules and the collection's both match.
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    write_log(
        &logs,
        &[
            record("e-1", "cloudtrail.amazonaws.com", "StopLogging", "aws-cli/2.15.0"),
            record("e-2", "iam.amazonaws.com", "ListUsers", "aws-cli/2.15.0"),
        ],
    );
    let (anomalies, _) = replay_with(&[&logs], tmp.path(), &["--extra-rules", &path_str(&collection)]);
    let matched: BTreeSet<&str> = anomalies
        .iter()
        .filter(|a| a["kind"] == "rule_match")
        .map(|a| a["rule"]["id"].as_str().unwrap())
        .collect();
    for id in [
        "2e7abed5-658e-430d-8569-80bb0977e471", // shipped: logging stopped
        "4db60cc0-36fb-4c7f-a1a4-5b0c7d1e9f21", // the collection's
        "5e2a1f3c-8d4b-4e7a-9b1c-2d3e4f5a6b7c",
    ] {
        assert!(matched.contains(id), "{id} among {matched:?}");
    }

    // A rule folder of one's own cannot be half-loaded: the same files replacing the shipped
    // rules are refused whole.
    let out = run(&["rules", "check", &path_str(&collection)]);
    assert!(!out.status.success());
}
