//! Delivery notifications: a message payload in, the log-file objects it announces out.
//!
//! Understood shapes, nested in any order up to [`MAX_DEPTH`] levels:
//! - CloudTrail's own SNS message: `{"s3Bucket":"b","s3ObjectKey":["k", ...]}`;
//! - an SNS envelope (`{"Type":"Notification","Message":"<json string>"}`) or a Lambda SNS record
//!   (`{"Sns":{"Message":...}}`);
//! - SQS messages (`{"body":"<json string>"}`, `{"Body":...}`), alone or in a `Records` batch, where
//!   the body may itself be SNS (double encoded);
//! - S3 event notifications (`Records[].s3.bucket.name` / `.object.key`, URL-encoded keys);
//!   `ObjectCreated:*` only, other events ignored; `s3:TestEvent` ignored;
//! - EventBridge `Object Created` events from `aws.s3` (`detail.bucket.name` / `detail.object.key`);
//! - a payload that is a JSON string holding any of the above.
//!
//! Digest and Insights keys are ignored, not fetched. Anything else is a [`Problem`] with a
//! bounded reason, to be dead-lettered with the original payload; the objects found beside it (an
//! SQS batch with one garbage body) are still returned. Nothing here panics on input.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::decode::classify_key;

/// Nesting followed at most.
pub const MAX_DEPTH: usize = 8;

/// A log file to fetch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub bucket: String,
    pub key: String,
}

/// Why part of a notification was not used, though nothing was wrong with it. Metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ignored {
    /// S3's `s3:TestEvent`, sent when notifications are configured.
    TestEvent,
    /// A `CloudTrail-Digest` key.
    Digest,
    /// A `CloudTrail-Insight` key.
    Insight,
    /// An S3 or EventBridge event other than an object creation.
    NotCreation,
}

impl Ignored {
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::TestEvent => "test_event",
            Ignored::Digest => "digest",
            Ignored::Insight => "insight",
            Ignored::NotCreation => "not_creation",
        }
    }
}

/// A part of a notification that could not be used. `reason` is a bounded label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub detail: String,
}

/// What one notification announced.
#[derive(Debug, Default)]
pub struct Notice {
    pub objects: Vec<ObjectRef>,
    pub ignored: BTreeMap<Ignored, u32>,
    pub problems: Vec<Problem>,
}

impl Notice {
    fn problem(&mut self, reason: &'static str, detail: impl Into<String>) {
        self.problems.push(Problem {
            reason,
            detail: detail.into(),
        });
    }

    fn object(&mut self, bucket: &str, key: String) {
        match classify_key(&key) {
            Some(crate::decode::FileSkip::Digest) => *self.ignored.entry(Ignored::Digest).or_default() += 1,
            Some(crate::decode::FileSkip::Insight) => *self.ignored.entry(Ignored::Insight).or_default() += 1,
            _ if bucket.is_empty() || key.is_empty() => {
                self.problem("missing_bucket_or_key", format!("bucket {bucket:?}, key {key:?}"))
            }
            _ => self.objects.push(ObjectRef {
                bucket: bucket.to_owned(),
                key,
            }),
        }
    }
}

/// Decodes one notification payload.
pub fn decode_notification(payload: &[u8]) -> Notice {
    let mut notice = Notice::default();
    match serde_json::from_slice::<Value>(payload) {
        Ok(value) => decode_value(&value, 0, &mut notice),
        Err(e) => notice.problem("malformed_notification", format!("not JSON: {e}")),
    }
    notice
}

fn decode_value(value: &Value, depth: usize, notice: &mut Notice) {
    if depth > MAX_DEPTH {
        notice.problem("unknown_shape", "nested deeper than the notification shapes go");
        return;
    }
    let obj = match value {
        Value::String(inner) => {
            match serde_json::from_str::<Value>(inner) {
                Ok(v) => decode_value(&v, depth + 1, notice),
                Err(e) => notice.problem(
                    "malformed_notification",
                    format!("embedded message is not JSON: {e}"),
                ),
            }
            return;
        }
        Value::Object(obj) => obj,
        other => {
            notice.problem(
                "unknown_shape",
                format!("a JSON {} is no notification", kind(other)),
            );
            return;
        }
    };
    let str_of = |k: &str| obj.get(k).and_then(Value::as_str);

    if let (Some(bucket), Some(keys)) = (str_of("s3Bucket"), obj.get("s3ObjectKey")) {
        // CloudTrail's own notification.
        match keys {
            Value::Array(keys) => {
                for key in keys {
                    match key.as_str() {
                        Some(k) => notice.object(bucket, k.to_owned()),
                        None => notice.problem("unknown_shape", "s3ObjectKey holds a non-string"),
                    }
                }
            }
            Value::String(k) => notice.object(bucket, k.clone()),
            _ => notice.problem("unknown_shape", "s3ObjectKey is neither a list nor a string"),
        }
    } else if let Some(message) = obj
        .get("Message")
        .filter(|_| obj.contains_key("Type") || obj.contains_key("TopicArn"))
    {
        decode_value(message, depth + 1, notice);
    } else if let Some(sns) = obj.get("Sns").or_else(|| obj.get("sns")) {
        match sns.get("Message") {
            Some(message) => decode_value(message, depth + 1, notice),
            None => notice.problem("unknown_shape", "SNS record without a Message"),
        }
    } else if let Some(body) = obj.get("body").or_else(|| obj.get("Body")) {
        decode_value(body, depth + 1, notice);
    } else if str_of("Event") == Some("s3:TestEvent") {
        *notice.ignored.entry(Ignored::TestEvent).or_default() += 1;
    } else if let Some(records) = obj.get("Records") {
        match records {
            Value::Array(records) if !records.is_empty() => {
                for record in records {
                    decode_record(record, depth + 1, notice);
                }
            }
            _ => notice.problem("unknown_shape", "Records is not a non-empty list"),
        }
    } else if let Some(detail_type) = str_of("detail-type") {
        decode_eventbridge(obj, detail_type, notice);
    } else {
        let keys: Vec<&str> = obj.keys().take(8).map(String::as_str).collect();
        notice.problem("unknown_shape", format!("an object with keys {keys:?}"));
    }
}

/// One element of a `Records` list: an S3 event, an SQS message or an SNS record.
fn decode_record(record: &Value, depth: usize, notice: &mut Notice) {
    if let Some(s3) = record.get("s3") {
        let event = record.get("eventName").and_then(Value::as_str).unwrap_or("");
        if !event.starts_with("ObjectCreated") {
            *notice.ignored.entry(Ignored::NotCreation).or_default() += 1;
            return;
        }
        let bucket = s3.pointer("/bucket/name").and_then(Value::as_str).unwrap_or("");
        match s3.pointer("/object/key").and_then(Value::as_str) {
            Some(key) => match url_decode(key) {
                Some(key) => notice.object(bucket, key),
                None => notice.problem(
                    "malformed_notification",
                    format!("key is not valid URL encoding: {key:?}"),
                ),
            },
            None => notice.problem("missing_bucket_or_key", "S3 event without s3.object.key"),
        }
    } else if record.get("eventVersion").is_some()
        && record
            .get("eventSource")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.starts_with("aws:"))
    {
        notice.problem(
            "unknown_shape",
            "a CloudTrail record, not a delivery notification",
        );
    } else {
        decode_value(record, depth, notice);
    }
}

fn decode_eventbridge(obj: &serde_json::Map<String, Value>, detail_type: &str, notice: &mut Notice) {
    if obj.get("source").and_then(Value::as_str) != Some("aws.s3") {
        notice.problem(
            "unknown_shape",
            format!("EventBridge {detail_type:?} event, not from aws.s3"),
        );
        return;
    }
    if detail_type != "Object Created" {
        *notice.ignored.entry(Ignored::NotCreation).or_default() += 1;
        return;
    }
    let detail = obj.get("detail");
    let bucket = detail
        .and_then(|d| d.pointer("/bucket/name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    match detail
        .and_then(|d| d.pointer("/object/key"))
        .and_then(Value::as_str)
    {
        // EventBridge keys are not URL-encoded.
        Some(key) => notice.object(bucket, key.to_owned()),
        None => notice.problem(
            "missing_bucket_or_key",
            "EventBridge event without detail.object.key",
        ),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Decodes an S3 event key: `+` is a space, `%XX` a byte. `None` when the result is not UTF-8 or
/// an escape is cut short.
pub fn url_decode(key: &str) -> Option<String> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = key.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(payload: &str) -> Vec<(String, String)> {
        let n = decode_notification(payload.as_bytes());
        assert!(n.problems.is_empty(), "{:?}", n.problems);
        n.objects.into_iter().map(|o| (o.bucket, o.key)).collect()
    }

    const KEY: &str = "AWSLogs/111122223333/CloudTrail/us-east-1/2026/03/02/111122223333_CloudTrail_us-east-1_20260302T1005Z_a.json.gz";

    #[test]
    fn cloudtrail_sns_message_lists_keys() {
        let p = format!(r#"{{"s3Bucket":"trail","s3ObjectKey":["{KEY}","{KEY}2"]}}"#);
        assert_eq!(
            objects(&p),
            [("trail".into(), KEY.into()), ("trail".into(), format!("{KEY}2"))]
        );
    }

    #[test]
    fn sns_envelope_and_double_encoded_sqs_unwrap() {
        let inner = format!(r#"{{"s3Bucket":"trail","s3ObjectKey":["{KEY}"]}}"#);
        let sns = serde_json::json!({"Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:x", "Message": inner});
        assert_eq!(objects(&sns.to_string()), [("trail".into(), KEY.into())]);
        let sqs = serde_json::json!({"Records": [{"messageId": "1", "body": sns.to_string(), "eventSource": "aws:sqs"}]});
        assert_eq!(objects(&sqs.to_string()), [("trail".into(), KEY.into())]);
        let as_string = serde_json::Value::String(sns.to_string()).to_string();
        assert_eq!(objects(&as_string), [("trail".into(), KEY.into())]);
    }

    #[test]
    fn s3_events_decode_url_encoded_keys_and_skip_other_events() {
        let p = r#"{"Records":[
            {"eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"a+b%3Dc.json.gz"}}},
            {"eventSource":"aws:s3","eventName":"ObjectRemoved:Delete","s3":{"bucket":{"name":"b"},"object":{"key":"x"}}}]}"#;
        let n = decode_notification(p.as_bytes());
        assert_eq!(
            n.objects,
            [ObjectRef {
                bucket: "b".into(),
                key: "a b=c.json.gz".into()
            }]
        );
        assert_eq!(n.ignored[&Ignored::NotCreation], 1);
    }

    #[test]
    fn test_events_digests_and_insights_are_ignored() {
        let n = decode_notification(br#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#);
        assert!(n.objects.is_empty() && n.problems.is_empty());
        assert_eq!(n.ignored[&Ignored::TestEvent], 1);
        let p = r#"{"s3Bucket":"b","s3ObjectKey":["AWSLogs/1/CloudTrail-Digest/us-east-1/2026/03/02/d.json.gz","AWSLogs/1/CloudTrail-Insight/us-east-1/2026/03/02/i.json.gz"]}"#;
        let n = decode_notification(p.as_bytes());
        assert!(n.objects.is_empty());
        assert_eq!(
            (n.ignored[&Ignored::Digest], n.ignored[&Ignored::Insight]),
            (1, 1)
        );
    }

    #[test]
    fn eventbridge_object_created() {
        let p = r#"{"detail-type":"Object Created","source":"aws.s3","detail":{"bucket":{"name":"b"},"object":{"key":"k+1.json.gz"}}}"#;
        assert_eq!(objects(p), [("b".into(), "k+1.json.gz".into())]);
        let deleted = r#"{"detail-type":"Object Deleted","source":"aws.s3","detail":{"bucket":{"name":"b"},"object":{"key":"k"}}}"#;
        assert_eq!(
            decode_notification(deleted.as_bytes()).ignored[&Ignored::NotCreation],
            1
        );
    }

    #[test]
    fn a_garbage_body_in_a_batch_loses_only_itself() {
        let good = format!(r#"{{"s3Bucket":"trail","s3ObjectKey":["{KEY}"]}}"#);
        let p = serde_json::json!({"Records": [{"body": good}, {"body": "garbage{"}]});
        let n = decode_notification(p.to_string().as_bytes());
        assert_eq!(n.objects.len(), 1);
        assert_eq!(n.problems.len(), 1);
        assert_eq!(n.problems[0].reason, "malformed_notification");
    }

    #[test]
    fn other_shapes_are_problems_with_reasons() {
        for (payload, reason) in [
            ("not json", "malformed_notification"),
            ("42", "unknown_shape"),
            (r#"{"hello":"world"}"#, "unknown_shape"),
            (r#"{"Records":[]}"#, "unknown_shape"),
            (
                r#"{"Records":[{"eventVersion":"1.08","eventSource":"s3.amazonaws.com","eventName":"GetObject"}]}"#,
                "unknown_shape",
            ),
            (r#"{"Messagess":"x","Type":"Notification"}"#, "unknown_shape"),
            (r#"{"s3Bucket":"b","s3ObjectKey":[""]}"#, "missing_bucket_or_key"),
            (
                r#"{"detail-type":"Object Created","source":"aws.ec2","detail":{}}"#,
                "unknown_shape",
            ),
        ] {
            let n = decode_notification(payload.as_bytes());
            assert!(n.objects.is_empty(), "{payload}");
            assert_eq!(
                n.problems.first().map(|p| p.reason),
                Some(reason),
                "{payload}: {:?}",
                n.problems
            );
        }
    }

    #[test]
    fn deep_nesting_stops() {
        let mut p = serde_json::json!({"s3Bucket": "b", "s3ObjectKey": ["k"]});
        for _ in 0..20 {
            p = serde_json::json!({"body": p.to_string()});
        }
        let n = decode_notification(p.to_string().as_bytes());
        assert!(n.objects.is_empty());
        assert_eq!(n.problems[0].reason, "unknown_shape");
    }

    #[test]
    fn url_decoding() {
        assert_eq!(url_decode("a+b%20c%2Fd").as_deref(), Some("a b c/d"));
        assert_eq!(url_decode("bad%2"), None);
        assert_eq!(url_decode("bad%zz"), None);
        assert_eq!(url_decode("%ff"), None);
    }
}
