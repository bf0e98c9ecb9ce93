//! Property tests over arbitrary input for each parser that reads what others write: the log
//! decoder, the notification parser, the rule loader and the configuration. Each asserts no
//! panic and that every problem is reported with a known reason. Case counts are bounded so the
//! suite stays fast; `PROPTEST_CASES` raises them for a longer run.

use std::io::Write;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};
use trailwatch::config::Settings;
use trailwatch::decode::{DecodeLimits, Decoder};
use trailwatch::metrics::DEAD_LETTER_REASONS;
use trailwatch::notification::decode_notification;
use trailwatch::rules::RuleSet;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn decode(name: &str, bytes: &[u8]) -> trailwatch::decode::DecodedFile {
    Decoder::new(DecodeLimits {
        max_inflated_bytes: 1 << 20,
    })
    .decode(&Arc::from(name), bytes)
}

/// A JSON value of any shape, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        Just(Value::from("2025-06-02T10:00:00Z")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A record: CloudTrail's fields, each present or not, with values of any shape.
fn any_record() -> impl Strategy<Value = Value> {
    let fields = [
        "eventTime",
        "eventSource",
        "eventName",
        "eventID",
        "userIdentity",
        "sourceIPAddress",
        "userAgent",
        "awsRegion",
        "errorCode",
        "eventType",
        "recipientAccountId",
    ];
    prop_oneof![
        4 => prop::collection::vec(prop::option::of(any_json()), fields.len()).prop_map(move |values| {
            let mut record = serde_json::Map::new();
            for (field, value) in fields.iter().zip(values) {
                if let Some(value) = value {
                    record.insert((*field).to_owned(), value);
                }
            }
            Value::Object(record)
        }),
        1 => any_json(),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_decoder_reports_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        for name in ["f.json", "f.jsonl", "f.json.gz"] {
            let f = decode(name, &bytes);
            if let Some(error) = &f.error {
                prop_assert!(DEAD_LETTER_REASONS.contains(&error.reason()), "{}", error.reason());
            }
        }
        // The same bytes compressed, whole and cut anywhere.
        let gz = gzip(&bytes);
        for cut in [gz.len(), gz.len() / 2, gz.len().saturating_sub(1)] {
            let f = decode("f.json.gz", &gz[..cut]);
            if let Some(error) = &f.error {
                prop_assert!(DEAD_LETTER_REASONS.contains(&error.reason()), "{}", error.reason());
            }
        }
    }

    #[test]
    fn every_record_of_any_shape_is_an_event_or_a_counted_skip(
        records in prop::collection::vec(any_record(), 0..12),
        cut in any::<prop::sample::Index>(),
    ) {
        let text = json!({ "Records": records }).to_string();
        let f = decode("f.json", text.as_bytes());
        prop_assert!(f.error.is_none(), "{:?}", f.error);
        prop_assert_eq!(f.events.len() + f.skipped.len(), records.len());
        // Compressed and cut: whatever is kept is a prefix of the whole, never more.
        let gz = gzip(text.as_bytes());
        let at = cut.index(gz.len());
        let cut_file = decode("f.json.gz", &gz[..at]);
        prop_assert!(cut_file.events.len() <= f.events.len());
        for (kept, whole) in cut_file.events.iter().zip(&f.events) {
            prop_assert_eq!(&kept.event_id, &whole.event_id);
        }
    }

    #[test]
    fn the_notification_parser_reports_arbitrary_input(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
        value in any_json(),
    ) {
        for payload in [bytes, value.to_string().into_bytes()] {
            let notice = decode_notification(&payload);
            for problem in &notice.problems {
                prop_assert!(DEAD_LETTER_REASONS.contains(&problem.reason), "{}", problem.reason);
            }
        }
    }

    #[test]
    fn the_configuration_reports_arbitrary_text(text in ".{0,400}") {
        let _ = Settings::from_toml(&text, "fuzz.toml");
    }

    #[test]
    fn the_configuration_names_every_key_it_refuses(
        entries in prop::collection::vec(
            (
                prop::sample::select(vec!["replay", "baseline", "rate", "fetch", "batch", "alerts", "kafka", "nope"]),
                prop::sample::select(vec![
                    "workers", "max_file_bytes", "window", "interval", "factor", "min_events",
                    "concurrency", "max_backoff", "max_messages", "dedup_window", "brokers", "bogus",
                ]),
                prop_oneof![
                    any::<i64>().prop_map(toml::Value::Integer),
                    any::<f64>().prop_map(toml::Value::Float),
                    any::<bool>().prop_map(toml::Value::Boolean),
                    "[0-9]{1,25}[smhdy]".prop_map(toml::Value::String),
                    ".{0,8}".prop_map(toml::Value::String),
                ],
            ),
            0..6,
        ),
    ) {
        let mut table = toml::Table::new();
        for (section, key, value) in entries {
            table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap()
                .insert(key.to_owned(), value);
        }
        let text = toml::to_string(&table).unwrap();
        if let Err(e) = Settings::from_toml(&text, "fuzz.toml") {
            let message = e.to_string();
            let problems: Vec<&str> = message.lines().skip(1).collect();
            prop_assert!(!problems.is_empty(), "{}", message);
            for problem in problems {
                let key = problem.trim().split(':').next().unwrap_or("");
                prop_assert!(
                    table.keys().any(|section| key.starts_with(section.as_str())),
                    "a problem not naming a key written: {:?} in\n{}", problem, text
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_rule_loader_reports_arbitrary_text(text in "(.|\n){0,300}") {
        if let Err(e) = RuleSet::from_sources(vec![("fuzz.yml".to_owned(), text)]) {
            prop_assert!(e.to_string().contains("fuzz.yml"), "{}", e);
        }
    }

    #[test]
    fn the_rule_loader_reports_rules_of_any_shape(
        value in any_json(),
        condition in prop::sample::select(vec!["sel", "not sel", "sel and x", "1 of sel*", "sel | count() > 3", ")"]),
    ) {
        let yaml = format!(
            "title: Fuzz\nlogsource: {{product: aws, service: cloudtrail}}\ndetection:\n  sel: {}\n  condition: {condition}\n",
            value
        );
        if let Err(e) = RuleSet::from_sources(vec![("fuzz.yml".to_owned(), yaml)]) {
            prop_assert!(e.to_string().contains("fuzz.yml"), "{}", e);
        }
    }
}
