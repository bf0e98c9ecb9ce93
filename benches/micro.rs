//! Micro-benchmarks of each stage on typical input: `cargo bench --bench micro`.

use std::io::Write;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use trailwatch::config::Settings;
use trailwatch::decode::{DecodeLimits, Decoder};
use trailwatch::detect::Detector;
use trailwatch::gunzip::Gunzip;
use trailwatch::notification::decode_notification;
use trailwatch::principal;
use trailwatch::record::RawRecord;
use trailwatch::rules::{GateMemo, RuleSet};
use trailwatch::view::RecordView;

/// The allocator the `trailwatch` binary runs with, so figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RECORD: &str = r#"{"eventVersion":"1.09","userIdentity":{"type":"AssumedRole","principalId":"AROAEXAMPLE:svc-session","arn":"arn:aws:sts::111122223333:assumed-role/svc-role/svc-session","accountId":"111122223333","accessKeyId":"ASIAEXAMPLE","sessionContext":{"sessionIssuer":{"type":"Role","principalId":"AROAEXAMPLE","arn":"arn:aws:iam::111122223333:role/svc-role","accountId":"111122223333","userName":"svc-role"},"attributes":{"creationDate":"2026-03-02T00:00:00Z","mfaAuthenticated":"false"}}},"eventTime":"2026-03-02T10:00:00Z","eventSource":"kms.amazonaws.com","eventName":"Decrypt","awsRegion":"eu-west-1","sourceIPAddress":"203.0.113.10","userAgent":"aws-sdk-go-v2/1.25.3 os/linux lang/go#1.22.1 md/GOOS#linux md/GOARCH#amd64","requestParameters":{"encryptionAlgorithm":"SYMMETRIC_DEFAULT","encryptionContext":{"aws:lambda:FunctionArn":"arn:aws:lambda:eu-west-1:111122223333:function:api"}},"responseElements":null,"requestID":"5d9b2f1e-1c7a-4f55-9a43-0b2c9e6f8d21","eventID":"EVENT-ID","readOnly":true,"eventType":"AwsApiCall","managementEvent":true,"recipientAccountId":"111122223333","eventCategory":"Management","tlsDetails":{"tlsVersion":"TLSv1.3","cipherSuite":"TLS_AES_128_GCM_SHA256","clientProvidedHostHeader":"kms.eu-west-1.amazonaws.com"}}"#;

fn log_file(records: usize) -> Vec<u8> {
    let body: Vec<String> = (0..records)
        .map(|i| RECORD.replace("EVENT-ID", &format!("e-{i}")))
        .collect();
    let text = format!("{{\"Records\":[{}]}}", body.join(","));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap()
}

fn benches(c: &mut Criterion) {
    let rules = Arc::new(RuleSet::builtin().unwrap());

    let inner = serde_json::json!({"s3Bucket": "trail", "s3ObjectKey": ["AWSLogs/111122223333/CloudTrail/eu-west-1/2026/03/02/111122223333_CloudTrail_eu-west-1_20260302T1005Z_abc.json.gz"]});
    let sns = serde_json::json!({"Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:eu-west-1:1:t", "Message": inner.to_string()}).to_string();
    c.bench_function("notification/sns_envelope", |b| {
        b.iter(|| decode_notification(black_box(sns.as_bytes())))
    });

    let file = log_file(100);
    let object: Arc<str> = Arc::from("bench.json.gz");
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(100));
    // The floor for the same file: inflate and typed parsing of the records, nothing else.
    g.bench_function("floor_file_100_records", |b| {
        #[derive(serde::Deserialize)]
        struct Floor<'a> {
            #[serde(rename = "Records", borrow)]
            records: Vec<RawRecord<'a>>,
        }
        // The same inflater the engine uses, reused as the engine reuses it.
        let mut text = Vec::new();
        let mut gunzip = Gunzip::default();
        b.iter(|| {
            text.clear();
            gunzip
                .inflate(black_box(&file[..]), &mut text, usize::MAX)
                .unwrap();
            serde_json::from_slice::<Floor>(&text).unwrap().records.len()
        })
    });
    let mut plain = Decoder::new(DecodeLimits::default());
    g.bench_function("file_100_records", |b| {
        b.iter(|| plain.decode(&object, black_box(&file)))
    });
    let mut with_rules = Decoder::with_rules(DecodeLimits::default(), Some(Arc::clone(&rules)));
    g.bench_function("file_100_records_with_rules", |b| {
        b.iter(|| with_rules.decode(&object, black_box(&file)))
    });
    g.finish();

    let record: RawRecord = serde_json::from_str(RECORD).unwrap();
    c.bench_function("principal/assumed_role", |b| {
        b.iter(|| {
            principal::derive(
                black_box(record.user_identity.as_ref().map(|u| &u.0)),
                Some("111122223333"),
            )
        })
    });

    let view = RecordView::new(RECORD).unwrap();
    c.bench_function(&format!("rules/evaluate_{}_rules", rules.len()), |b| {
        let mut hits = Vec::new();
        b.iter(|| {
            hits.clear();
            rules.evaluate(black_box(&view), &mut hits);
        })
    });
    // The same with the gates' memory warm, as for a record whose values recur.
    c.bench_function(&format!("rules/evaluate_{}_rules_remembered", rules.len()), |b| {
        let mut hits = Vec::new();
        let mut memo = GateMemo::default();
        b.iter(|| {
            hits.clear();
            rules.evaluate_with(black_box(&view), &mut memo, &mut hits);
        })
    });

    // Steady state: a principal past learning sees a call it knows.
    let events = Decoder::new(DecodeLimits::default())
        .decode(&object, &file)
        .events;
    let mut settings = Settings::default().detector;
    settings.learning_period = 0;
    settings.learning_events = 1;
    let mut detector = Detector::new(settings, 1);
    let mut out = Vec::new();
    for e in &events {
        detector.process(e, &mut out);
    }
    let mut known = events[0].clone();
    let mut n = 0u64;
    c.bench_function("detect/known_event", |b| {
        b.iter(|| {
            n += 1;
            known.event_id = format!("k-{n}").into();
            detector.process(black_box(&known), &mut out);
            out.clear();
        })
    });
}

criterion_group!(micro, benches);
criterion_main!(micro);
