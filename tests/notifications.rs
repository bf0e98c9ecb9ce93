//! Notification decoding over the project's own fixtures of every delivery shape.

mod common;

use common::manifest_dir;
use trailwatch::notification::{decode_notification, Ignored};

fn decode(name: &str) -> trailwatch::notification::Notice {
    let path = manifest_dir().join("tests/notification_fixtures").join(name);
    decode_notification(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

const KEY: &str = "AWSLogs/111122223333/CloudTrail/us-east-1/2026/03/02/111122223333_CloudTrail_us-east-1_20260302T1005Z_Fixture00000001.json.gz";

#[test]
fn every_delivery_shape_names_its_object() {
    for name in [
        "cloudtrail-sns-message.json",
        "sns-envelope.json",
        "sqs-sns-double-encoded.json",
        "s3-event.json",
        "sqs-s3-event.json",
        "eventbridge-object-created.json",
    ] {
        let n = decode(name);
        assert!(n.problems.is_empty(), "{name}: {:?}", n.problems);
        assert_eq!(n.objects.len(), 1, "{name}");
        assert_eq!(n.objects[0].bucket, "trail-bucket", "{name}");
        assert_eq!(n.objects[0].key, KEY, "{name}");
    }
}

#[test]
fn url_encoded_keys_are_decoded() {
    let n = decode("s3-event-urlencoded-key.json");
    assert_eq!(
        n.objects[0].key,
        "AWSLogs/111122223333/CloudTrail/us-east-1/2026/03/02/odd name=1.json.gz"
    );
}

#[test]
fn ignored_shapes_are_counted_not_failed() {
    assert_eq!(decode("s3-test-event.json").ignored[&Ignored::TestEvent], 1);
    assert_eq!(decode("cloudtrail-sns-digest.json").ignored[&Ignored::Digest], 1);
}

#[test]
fn bad_shapes_have_distinct_reasons() {
    assert_eq!(
        decode("malformed.json").problems[0].reason,
        "malformed_notification"
    );
    assert_eq!(decode("unknown-shape.json").problems[0].reason, "unknown_shape");
    let batch = decode("sqs-batch-with-garbage.json");
    assert_eq!(batch.objects.len(), 1);
    assert_eq!(batch.problems.len(), 1);
}
