//! The anomaly event, schema `trailwatch.anomaly/v1`: what every detector emits and every sink
//! writes, one JSON object per line or message, keyed by principal.
//!
//! Guarantees: `id` is a digest of what the anomaly is about (kind, principal, triggering eventID,
//! and the interval for rate detectors), never of wall-clock time, so replaying the same input
//! yields the same ids and consumers can drop duplicates. `evidence.event_ids` always names the
//! CloudTrail `eventID`s behind the anomaly.

use std::borrow::Cow;
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::event::{format_time_compact, Event};
use crate::principal::Principal;

pub const SCHEMA: &str = "trailwatch.anomaly/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    NewValue,
    RateSpike,
    ErrorSpike,
    DormantPrincipal,
    ImpossibleTravel,
    RuleMatch,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::NewValue,
        Kind::RateSpike,
        Kind::ErrorSpike,
        Kind::DormantPrincipal,
        Kind::ImpossibleTravel,
        Kind::RuleMatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NewValue => "new_value",
            Kind::RateSpike => "rate_spike",
            Kind::ErrorSpike => "error_spike",
            Kind::DormantPrincipal => "dormant_principal",
            Kind::ImpossibleTravel => "impossible_travel",
            Kind::RuleMatch => "rule_match",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// The name the schema writes (serde's).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// The severity a score in 0..1 maps to.
    pub fn from_score(score: f64) -> Severity {
        match score {
            s if s >= 0.9 => Severity::Critical,
            s if s >= 0.7 => Severity::High,
            s if s >= 0.45 => Severity::Medium,
            s if s >= 0.2 => Severity::Low,
            _ => Severity::Info,
        }
    }
}

/// Whether the call behind a single-event rule match succeeded (no `errorCode`) or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
        }
    }
}

impl Severity {
    /// The severity of a rule match on a call that failed, for a rule whose level is `self` and
    /// that does not say failures matter: one step lower, and never above `low`.
    pub fn of_failed_attempt(self) -> Severity {
        match self {
            Severity::Info | Severity::Low => Severity::Info,
            Severity::Medium | Severity::High | Severity::Critical => Severity::Low,
        }
    }
}

/// Anomalies are read back only from the detect stage's own state snapshots (open alert folds),
/// never from outside input.
///
/// An alert storm raises an anomaly for each of thousands of events, so what an anomaly holds is
/// cheap to build: times are inline strings, the principal, the rule, the agent and the object
/// are shared with the event and the rule set rather than copied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Anomaly {
    pub schema: Cow<'static, str>,
    pub id: String,
    pub kind: Kind,
    pub severity: Severity,
    pub score: f64,
    pub detected_at: CompactString,
    pub event_time: CompactString,
    /// Event time of the first and last events folded into this anomaly.
    pub first_seen: CompactString,
    pub last_seen: CompactString,
    pub principal: PrincipalInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<RuleInfo>>,
    /// For single-event rule matches: whether the call succeeded or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dimensions: Vec<DimensionReport>,
    pub baseline: BaselineInfo,
    pub evidence: Evidence,
    /// What the detector measured, in words: the anomaly's explanation.
    pub reason: String,
    pub count: u64,
}

/// Who an anomaly is about: the event's principal, shared with the event. Written as
/// `{"key", "type", "account_id", "arn", "session"}`, the session left out when there is none.
#[derive(Debug, Clone)]
pub struct PrincipalInfo(pub Arc<Principal>);

impl std::ops::Deref for PrincipalInfo {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

/// [`PrincipalInfo`] as the schema writes it.
#[derive(Serialize, Deserialize)]
struct PrincipalFields<P> {
    key: P,
    #[serde(rename = "type")]
    kind: P,
    account_id: Option<P>,
    arn: Option<P>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<P>,
}

impl Serialize for PrincipalInfo {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let p = &*self.0;
        PrincipalFields {
            key: p.key.as_str(),
            kind: p.kind.as_str(),
            account_id: p.account_id.as_deref(),
            arn: p.arn.as_deref(),
            session: p.session.as_deref(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PrincipalInfo {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let p = PrincipalFields::<CompactString>::deserialize(deserializer)?;
        Ok(PrincipalInfo(Arc::new(Principal {
            key: p.key,
            kind: p.kind,
            account_id: p.account_id,
            arn: p.arn,
            session: p.session,
        })))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleInfo {
    pub id: String,
    pub title: String,
    pub tags: Vec<String>,
    /// The rule as the schema writes it, made on first use: each of the rule's anomalies writes
    /// the same bytes, and in an alert storm thousands do.
    #[serde(skip)]
    json: std::sync::OnceLock<Box<[u8]>>,
}

impl RuleInfo {
    pub fn new(id: String, title: String, tags: Vec<String>) -> RuleInfo {
        RuleInfo {
            id,
            title,
            tags,
            json: std::sync::OnceLock::new(),
        }
    }

    /// `{"id":...,"title":...,"tags":[...]}`.
    fn json(&self) -> &[u8] {
        self.json.get_or_init(|| {
            let mut out = Vec::new();
            let mut r = JsonObject::open(&mut out);
            r.str("id", &self.id);
            r.str("title", &self.title);
            r.strings("tags", &self.tags);
            r.close();
            out.into_boxed_slice()
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DimensionReport {
    pub name: Cow<'static, str>,
    pub value: String,
    pub novel: bool,
    pub baseline: DimensionBaseline,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DimensionBaseline {
    /// Distinct values held for this dimension before this event.
    pub distinct: usize,
    /// When this value was first seen; `null` when it is novel.
    pub first_seen: Option<String>,
    /// The most used values, most used first.
    pub top: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineInfo {
    pub events: u64,
    pub since: CompactString,
    pub mature: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evidence {
    pub event_ids: Vec<String>,
    pub event_name: CompactString,
    pub event_source: CompactString,
    pub source_ip: Option<CompactString>,
    pub user_agent: Option<Arc<str>>,
    pub aws_region: Option<CompactString>,
    pub error_code: Option<CompactString>,
    pub object: Arc<str>,
}

impl Evidence {
    /// The evidence of one event: its fields as the event holds them (short ones inline, the
    /// agent and the object shared).
    pub fn of(event: &Event) -> Evidence {
        Evidence {
            event_ids: vec![event.event_id.to_string()],
            event_name: event.event_name.clone(),
            event_source: event.event_source.clone(),
            source_ip: event.source.clone(),
            user_agent: event.user_agent.clone(),
            aws_region: event.aws_region.clone(),
            error_code: event.error_code.clone(),
            object: Arc::clone(&event.object),
        }
    }
}

impl PrincipalInfo {
    pub fn of(event: &Event) -> PrincipalInfo {
        PrincipalInfo(Arc::clone(&event.principal))
    }
}

impl Anomaly {
    /// Appends the anomaly's JSON to `out`, byte for byte as `serde_json::to_writer` writes it.
    ///
    /// The sinks write anomalies by the thousand in an alert storm, and serde_json looks at each
    /// byte of each string for characters to escape one at a time: about 12,000 instructions
    /// per anomaly of the storm trail, most of what emitting one cost. Here a string is checked
    /// sixteen bytes a step (the scanner's search for a string's end) and the runs between
    /// characters to escape copied whole; those few are escaped as serde_json escapes them.
    /// Numbers are written by serde_json.
    /// `tests::written_json_is_serde_json_s` holds the two equal, field order included.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut json = JsonObject::open(out);
        json.str("schema", &self.schema);
        json.str("id", &self.id);
        json.name("kind", self.kind.as_str());
        json.name("severity", self.severity.as_str());
        json.number("score", &self.score);
        json.str("detected_at", &self.detected_at);
        json.str("event_time", &self.event_time);
        json.str("first_seen", &self.first_seen);
        json.str("last_seen", &self.last_seen);
        {
            let p = &*self.principal;
            let mut principal = json.object("principal");
            principal.str("key", &p.key);
            principal.str("type", &p.kind);
            principal.option("account_id", p.account_id.as_deref());
            principal.option("arn", p.arn.as_deref());
            if let Some(session) = &p.session {
                principal.str("session", session);
            }
            principal.close();
        }
        if let Some(rule) = &self.rule {
            json.key("rule");
            json.out.extend_from_slice(rule.json());
        }
        if let Some(outcome) = self.outcome {
            json.name("outcome", outcome.as_str());
        }
        if !self.dimensions.is_empty() {
            json.key("dimensions");
            for (i, d) in self.dimensions.iter().enumerate() {
                json.out.push(if i == 0 { b'[' } else { b',' });
                let mut dimension = JsonObject::open(json.out);
                dimension.str("name", &d.name);
                dimension.str("value", &d.value);
                dimension.bool("novel", d.novel);
                let mut b = dimension.object("baseline");
                b.number("distinct", &d.baseline.distinct);
                b.option("first_seen", d.baseline.first_seen.as_deref());
                b.strings("top", &d.baseline.top);
                b.close();
                dimension.close();
            }
            json.out.push(b']');
        }
        {
            let mut b = json.object("baseline");
            b.number("events", &self.baseline.events);
            b.str("since", &self.baseline.since);
            b.bool("mature", self.baseline.mature);
            b.close();
        }
        {
            let e = &self.evidence;
            let mut evidence = json.object("evidence");
            evidence.strings("event_ids", &e.event_ids);
            evidence.str("event_name", &e.event_name);
            evidence.str("event_source", &e.event_source);
            evidence.option("source_ip", e.source_ip.as_deref());
            evidence.option("user_agent", e.user_agent.as_deref());
            evidence.option("aws_region", e.aws_region.as_deref());
            evidence.option("error_code", e.error_code.as_deref());
            evidence.str("object", &e.object);
            evidence.close();
        }
        json.str("reason", &self.reason);
        json.number("count", &self.count);
        json.close();
    }
}

/// A JSON object being written, compact as serde_json writes it: `{"key":value,...}`.
struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> JsonObject<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        JsonObject { out, empty: true }
    }

    fn close(self) {
        self.out.push(b'}');
    }

    /// Writes the next key (the schema's, which need no escaping) and its colon.
    fn key(&mut self, key: &str) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn object(&mut self, key: &str) -> JsonObject<'_> {
        self.key(key);
        JsonObject::open(self.out)
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        write_json_str(self.out, value);
    }

    /// A name of the schema's own (a kind, a severity, an outcome), which needs no escaping.
    fn name(&mut self, key: &str, value: &'static str) {
        self.key(key);
        self.out.push(b'"');
        self.out.extend_from_slice(value.as_bytes());
        self.out.push(b'"');
    }

    fn option(&mut self, key: &str, value: Option<&str>) {
        self.key(key);
        match value {
            Some(value) => write_json_str(self.out, value),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    fn strings(&mut self, key: &str, values: &[String]) {
        self.key(key);
        self.out.push(b'[');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            write_json_str(self.out, value);
        }
        self.out.push(b']');
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn number<N: Serialize>(&mut self, key: &str, value: &N) {
        self.key(key);
        serde_json::to_writer(&mut *self.out, value).expect("a number serialises into memory");
    }
}

/// Writes `text` as a JSON string, escaped as serde_json escapes it. The characters JSON escapes
/// (a control character, a quote, a backslash) are found sixteen bytes a step and the runs
/// between them copied whole: a rule match's reason quotes the rule's title, and handing every
/// such string to serde_json's byte-at-a-time escaping cost 500 instructions an anomaly.
///
/// Inlined into each field's writing: most strings need no escape, and a call per string (an
/// anomaly writes two dozen) cost more in saving and restoring registers than the copy itself.
#[inline]
fn write_json_str(out: &mut Vec<u8>, text: &str) {
    out.reserve(text.len() + 2);
    out.push(b'"');
    let plain = copy_plain(out, text.as_bytes());
    if plain < text.len() {
        write_escaped(out, &text.as_bytes()[plain..]);
    }
    out.push(b'"');
}

/// Writes the rest of a string from its first character to escape.
#[inline(never)]
fn write_escaped(out: &mut Vec<u8>, mut rest: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    while let Some(&special) = rest.first() {
        match special {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            control => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(control >> 4)],
                HEX[usize::from(control & 0xf)],
            ]),
        }
        rest = &rest[1..];
        let plain = copy_plain(out, rest);
        rest = &rest[plain..];
    }
}

/// Appends to `out` the run of `bytes` before its first quote, backslash or control character
/// (the characters JSON escapes, which end a string's plain run in the scanner too), and returns
/// the run's length.
///
/// Sixteen bytes a step, each step stored before it is checked and the part after a special
/// then cut off; the last step overlaps the one before. Checking a string first and copying it
/// after read it twice and called `memcpy` for each of an anomaly's two dozen strings.
#[inline(always)]
fn copy_plain(out: &mut Vec<u8>, bytes: &[u8]) -> usize {
    let len = bytes.len();
    #[cfg(target_arch = "x86_64")]
    if len >= 16 {
        use std::arch::x86_64::{_mm_loadu_si128, _mm_storeu_si128};
        out.reserve(len);
        let old = out.len();
        // SAFETY: each step reads and writes the 16 bytes at `at`, with `at + 16 <= len`:
        // inside `bytes`, and inside the room reserved after `out`'s `old` bytes. The length is
        // then set to cover only bytes written.
        unsafe {
            let (src, dst) = (bytes.as_ptr(), out.as_mut_ptr().add(old));
            let plain = crate::scan::first_special_by_steps(len, |at| {
                let chunk = _mm_loadu_si128(src.add(at).cast());
                _mm_storeu_si128(dst.add(at).cast(), chunk);
                crate::scan::special_mask(chunk)
            });
            out.set_len(old + plain);
            return plain;
        }
    }
    let plain = crate::scan::special_offset(bytes);
    out.extend_from_slice(&bytes[..plain]);
    plain
}

/// The deterministic id of an anomaly: a digest of its identifying parts, each followed by 0x1f.
pub fn anomaly_id(parts: &[&str]) -> String {
    // Hashed in one call: the streaming hasher's state took more to set up than the parts to hash.
    // The parts are joined on the stack when they fit (a kind, a rule id and an eventID do).
    let len: usize = parts.iter().map(|p| p.len() + 1).sum();
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let joined: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let mut at = 0;
    for part in parts {
        joined[at..at + part.len()].copy_from_slice(part.as_bytes());
        joined[at + part.len()] = 0x1f;
        at += part.len() + 1;
    }
    hex128(xxhash_rust::xxh3::xxh3_128(joined))
}

/// `value` as 32 lower-case hex digits, as `format!("{value:032x}")` writes it, without the
/// formatting machinery (a tenth of what building an anomaly cost).
fn hex128(value: u128) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits: Vec<u8> = (0..32)
        .rev()
        .map(|i| DIGITS[(value >> (4 * i)) as usize & 0xf])
        .collect();
    String::from_utf8(digits).expect("hex digits are ASCII")
}

/// The current wall-clock time, for `detected_at`: formatted once a second per thread, as an
/// alert storm raises thousands of anomalies in each.
pub fn now_rfc3339() -> CompactString {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, CompactString)> =
            std::cell::RefCell::new((i64::MIN, CompactString::default()));
    }
    let now = chrono::Utc::now().timestamp();
    LAST.with_borrow_mut(|(second, text)| {
        if *second != now {
            *second = now;
            *text = format_time_compact(now);
        }
        text.clone()
    })
}

/// Severity names as the configuration writes them.
pub fn parse_severity(text: &str) -> Option<Severity> {
    Some(match text {
        "info" | "informational" => Severity::Info,
        "low" => Severity::Low,
        "medium" => Severity::Medium,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        _ => return None,
    })
}

/// The kinds a suppression may name.
pub fn is_kind(text: &str) -> bool {
    Kind::ALL.iter().any(|k| k.as_str() == text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(session: Option<&str>) -> PrincipalInfo {
        PrincipalInfo(Arc::new(Principal {
            key: "arn:aws:iam::111122223333:role/ops".into(),
            kind: "AssumedRole".into(),
            account_id: Some("111122223333".into()),
            arn: session.map(|s| format!("arn:aws:sts::111122223333:assumed-role/ops/{s}").into()),
            session: session.map(Into::into),
        }))
    }

    fn rule_match() -> Anomaly {
        Anomaly {
            schema: SCHEMA.into(),
            id: anomaly_id(&["rule_match", "r", "e"]),
            kind: Kind::RuleMatch,
            severity: Severity::Low,
            score: 0.5,
            detected_at: "2026-12-03T15:30:39Z".into(),
            event_time: "2026-03-02T00:01:28Z".into(),
            first_seen: "2026-03-02T00:01:28Z".into(),
            last_seen: "2026-03-02T00:09:00Z".into(),
            principal: principal(Some("ops-a9c826d9")),
            rule: Some(Arc::new(RuleInfo::new(
                "0a016424-721c-a786-29d1-805e671c5334".into(),
                "AWS EBS Encryption by Default Disabled".into(),
                vec!["attack.impact".into(), "attack.t1486".into()],
            ))),
            outcome: Some(Outcome::Failed),
            dimensions: Vec::new(),
            baseline: BaselineInfo {
                events: 1,
                since: "2026-03-02T00:01:28Z".into(),
                mature: false,
            },
            evidence: Evidence {
                event_ids: vec!["5a99ecd9-3f15-45df-803e-12b95bc6add3".into(), "e2".into()],
                event_name: "DisableEbsEncryptionByDefault".into(),
                event_source: "ec2.amazonaws.com".into(),
                source_ip: Some("2a05:d018:2192:ae8b::fd93".into()),
                user_agent: Some("APN/1.0 HashiCorp/1.0 Terraform/1.9.7 (+https://www.terraform.io)".into()),
                aws_region: Some("us-west-2".into()),
                error_code: Some("AccessDenied".into()),
                object: "AWSLogs/111122223333/CloudTrail/us-west-2/2026/03/02/f.json.gz".into(),
            },
            reason:
                "matched rule \"AWS EBS Encryption by Default Disabled\" on a call that failed (AccessDenied)"
                    .into(),
            count: 3,
        }
    }

    fn new_value() -> Anomaly {
        let dimension =
            |name: &'static str, value: &str, first_seen: Option<&str>, top: &[&str]| DimensionReport {
                name: name.into(),
                value: value.into(),
                novel: first_seen.is_none(),
                baseline: DimensionBaseline {
                    distinct: top.len(),
                    first_seen: first_seen.map(Into::into),
                    top: top.iter().map(|t| t.to_string()).collect(),
                },
            };
        Anomaly {
            kind: Kind::NewValue,
            severity: Severity::High,
            score: 0.784,
            principal: principal(None),
            rule: None,
            outcome: None,
            dimensions: vec![
                dimension(
                    "sourceIPAddress",
                    "203.0.113.9",
                    None,
                    &["198.51.100.1", "198.51.100.2"],
                ),
                dimension("awsRegion", "eu-west-1", Some("2026-03-01T00:00:00Z"), &[]),
            ],
            evidence: Evidence {
                source_ip: None,
                user_agent: None,
                aws_region: None,
                error_code: None,
                ..rule_match().evidence
            },
            ..rule_match()
        }
    }

    #[test]
    fn written_json_is_serde_json_s() {
        let same = |a: &Anomaly| {
            let mut written = Vec::new();
            a.write_json(&mut written);
            let expected = serde_json::to_vec(a).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&written),
                String::from_utf8_lossy(&expected)
            );
        };
        same(&rule_match());
        same(&new_value());
        // Every kind, severity and outcome; scores as detectors compute them and odd ones.
        let mut a = new_value();
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            a.kind = kind;
            a.severity = [
                Severity::Info,
                Severity::Low,
                Severity::Medium,
                Severity::High,
                Severity::Critical,
            ][i % 5];
            a.outcome = [None, Some(Outcome::Succeeded), Some(Outcome::Failed)][i % 3];
            same(&a);
        }
        for score in
            (0..=1000)
                .map(|s| f64::from(s) / 1000.0)
                .chain([1e-7, 0.1 + 0.2, 123_456.75, f64::NAN, -0.0])
        {
            a.score = score;
            same(&a);
        }
        a.count = u64::MAX;
        a.baseline.events = 0;
        a.dimensions.clear();
        same(&a);
        // Text JSON escapes (quotes, backslashes, control characters) at each place in and
        // around a block of 32 bytes, and text it leaves as it is (DEL, non-ASCII, U+2028).
        for special in [
            "\"", "\\", "\n", "\t", "\u{1}", "\u{1f}", "\u{7f}", "é", "\u{2028}", "😀", "\u{0}",
        ] {
            for at in [0, 1, 30, 31, 32, 33, 63, 64, 100] {
                let text = format!("{}{special}{}", "a".repeat(at), "b".repeat(40));
                let mut a = rule_match();
                a.reason = text.clone();
                a.evidence.user_agent = Some(text.as_str().into());
                a.evidence.event_ids.push(text.clone());
                a.dimensions = new_value().dimensions;
                a.dimensions[0].value = text.clone();
                a.dimensions[1].baseline.top.push(text.clone());
                a.principal = PrincipalInfo(Arc::new(Principal {
                    session: Some(text.as_str().into()),
                    ..(*principal(None)).clone()
                }));
                same(&a);
            }
        }
        let mut empty = rule_match();
        empty.reason.clear();
        empty.evidence.event_name = "".into();
        empty.rule = Some(Arc::new(RuleInfo::new(String::new(), String::new(), Vec::new())));
        same(&empty);
    }

    proptest::proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(
            text in "(\\PC|[\\x00-\\x1f\"\\\\\\x7f\\u{2028}]){0,80}",
        ) {
            let mut written = Vec::new();
            write_json_str(&mut written, &text);
            proptest::prop_assert_eq!(String::from_utf8(written).unwrap(), serde_json::to_string(&text).unwrap());
        }
    }

    #[test]
    fn ids_are_written_as_32_hex_digits() {
        let mut value = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        for v in [0, 1, 0xf, 0x10, u128::MAX, u128::MAX >> 4, 1 << 127] {
            assert_eq!(hex128(v), format!("{v:032x}"));
        }
        for _ in 0..1_000 {
            value = value
                .wrapping_mul(0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645)
                .wrapping_add(1);
            assert_eq!(hex128(value), format!("{value:032x}"));
        }
    }

    #[test]
    fn ids_are_deterministic_and_part_boundaries_matter() {
        assert_eq!(
            anomaly_id(&["new_value", "p", "e1"]),
            anomaly_id(&["new_value", "p", "e1"])
        );
        assert_ne!(
            anomaly_id(&["new_value", "p", "e1"]),
            anomaly_id(&["new_value", "p", "e2"])
        );
        assert_ne!(anomaly_id(&["ab", "c"]), anomaly_id(&["a", "bc"]));
        assert_eq!(anomaly_id(&["x"]).len(), 32);
        // Ids are those of every earlier version, which hashed the parts as a stream.
        let long = "x".repeat(300);
        for parts in [
            &["new_value", "p", "e1"][..],
            &[],
            &[""],
            &["rule_match", &long, "e"],
        ] {
            let mut stream = xxhash_rust::xxh3::Xxh3::new();
            for part in parts {
                stream.update(part.as_bytes());
                stream.update(&[0x1f]);
            }
            assert_eq!(anomaly_id(parts), hex128(stream.digest128()));
        }
    }

    #[test]
    fn a_failed_attempt_is_at_most_low_and_always_lower() {
        for (level, failed) in [
            (Severity::Critical, Severity::Low),
            (Severity::High, Severity::Low),
            (Severity::Medium, Severity::Low),
            (Severity::Low, Severity::Info),
            (Severity::Info, Severity::Info),
        ] {
            assert_eq!(level.of_failed_attempt(), failed, "{level:?}");
        }
    }

    #[test]
    fn severities_rise_with_score() {
        assert_eq!(Severity::from_score(0.1), Severity::Info);
        assert_eq!(Severity::from_score(0.3), Severity::Low);
        assert_eq!(Severity::from_score(0.5), Severity::Medium);
        assert_eq!(Severity::from_score(0.8), Severity::High);
        assert_eq!(Severity::from_score(0.95), Severity::Critical);
    }
}
