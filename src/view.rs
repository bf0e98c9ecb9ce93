//! A CloudTrail record read straight from its JSON text: the fields the engine reads, and the
//! record as Sigma rules see it.
//!
//! In: one record's JSON text, borrowed from the inflated file. Out: field lookups by dotted path
//! (`userIdentity.type`, `requestParameters.ipPermissions.items.ipRanges.items.cidrIp`) for the
//! Sigma evaluator. Only the top level is indexed up front (a slice of key → the value's JSON
//! text, by [`crate::scan`]); nested objects are indexed when a rule asks for a path through them, and no `serde_json::Value` is
//! built except for keyword rules, which need every string. A path through an array follows every
//! element, so a rule matches when any element does.

use std::borrow::Cow;
use std::cell::OnceCell;

use rsigma_eval::{Event, EventValue};
use serde_json::Value;

/// Nesting followed at most; deeper paths resolve to nothing.
const MAX_DEPTH: usize = 32;

/// An object's keys, each with its value's JSON text (see [`crate::scan`]).
pub type Entries<'a> = Vec<(Cow<'a, str>, &'a str)>;

/// Top-level keys the engine reads from every record, located once when the record is indexed
/// so that reading one does not search the record's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    EventTime,
    EventSource,
    EventName,
    EventType,
    EventId,
    AwsRegion,
    SourceIpAddress,
    UserAgent,
    ErrorCode,
    RecipientAccountId,
    UserIdentity,
}

impl Known {
    const COUNT: usize = 11;

    pub fn of(key: &str) -> Option<Known> {
        // By length first: most of a record's keys are of no length here and cost one compare.
        Some(match key.len() {
            7 if key == "eventID" => Known::EventId,
            9 => match key {
                "eventTime" => Known::EventTime,
                "eventName" => Known::EventName,
                "eventType" => Known::EventType,
                "awsRegion" => Known::AwsRegion,
                "userAgent" => Known::UserAgent,
                "errorCode" => Known::ErrorCode,
                _ => return None,
            },
            11 if key == "eventSource" => Known::EventSource,
            12 if key == "userIdentity" => Known::UserIdentity,
            15 if key == "sourceIPAddress" => Known::SourceIpAddress,
            18 if key == "recipientAccountId" => Known::RecipientAccountId,
            _ => return None,
        })
    }
}

/// One record, indexed at its top level.
pub struct RecordView<'a> {
    raw: &'a str,
    top: Entries<'a>,
    /// Where each [`Known`] key is among the entries (its first occurrence), plus one; 0: absent.
    known: [u32; Known::COUNT],
    /// Whether a top-level key has a dot in it, so that a dotted path could name it whole.
    dotted_keys: bool,
    /// Whether the record's text has a backslash anywhere: without one, no string in it has an
    /// escape, and every string value is the text between its quotes.
    escapes: bool,
    /// `userIdentity`'s entries, parsed on first use: the principal and many rules read it.
    identity: OnceCell<Option<Entries<'a>>>,
    /// A key standing for the exact text of `userIdentity`, when the decoder has one (see
    /// [`crate::principal::IdentityKey`]).
    identity_key: Option<crate::principal::IdentityKey>,
}

impl<'a> RecordView<'a> {
    /// Indexes a record's top level. `None` when the text is not a JSON object.
    pub fn new(raw: &'a str) -> Option<RecordView<'a>> {
        let top = parse_object(raw)?;
        Some(RecordView::from_entries(raw, top))
    }

    /// A view of an object already indexed, whose text is `raw`.
    pub fn from_entries(raw: &'a str, top: Entries<'a>) -> RecordView<'a> {
        let mut known = [0; Known::COUNT];
        let mut dotted_keys = false;
        for (i, (key, _)) in top.iter().enumerate() {
            match Known::of(key) {
                Some(k) => {
                    let at = &mut known[k as usize];
                    if *at == 0 {
                        *at = u32::try_from(i + 1).unwrap_or(0);
                    }
                }
                // Keys are short: a loop without early exit costs less than a search call each,
                // and nested gates ask for this on every record.
                None => dotted_keys |= key.bytes().fold(false, |dot, b| dot | (b == b'.')),
            }
        }
        RecordView {
            raw,
            top,
            known,
            dotted_keys,
            escapes: memchr::memchr(b'\\', raw.as_bytes()).is_some(),
            identity: OnceCell::new(),
            identity_key: None,
        }
    }

    /// Notes the key of this record's `userIdentity` text: gate verdicts that depend on that text
    /// are then remembered by the key, and the text is neither hashed nor compared again.
    pub fn set_identity_key(&mut self, key: crate::principal::IdentityKey) {
        self.identity_key = Some(key);
    }

    pub fn identity_key(&self) -> Option<crate::principal::IdentityKey> {
        self.identity_key
    }

    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The top-level entries, in order, values unparsed.
    pub fn entries(&self) -> &[(Cow<'a, str>, &'a str)] {
        &self.top
    }

    /// The top-level entries, given back for the next record to be indexed into.
    pub fn into_entries(self) -> Entries<'a> {
        self.top
    }

    /// The JSON text of a top-level value, unparsed.
    pub fn top_level_text(&self, key: &str) -> Option<&'a str> {
        self.top_level(key)
    }

    /// A top-level value, unparsed: the first of its key, as JSON parsers keep no single rule
    /// for repeated keys and every reader here must see the same one.
    pub fn top_level(&self, key: &str) -> Option<&'a str> {
        match Known::of(key) {
            Some(k) => self.known(k),
            None if !self.dotted_keys && key.contains('.') => None,
            None => lookup(&self.top, key),
        }
    }

    /// The contents of a string value of this record that has no escapes, borrowed; `None` for
    /// any other value (see [`crate::record::plain_string`]). One search of the whole record for a
    /// backslash answers for all its values, where most records have none.
    pub fn plain_string(&self, value: &'a str) -> Option<&'a str> {
        if self.escapes {
            return crate::record::plain_string(value);
        }
        value.strip_prefix('"')?.strip_suffix('"')
    }

    /// A [`Known`] top-level value, unparsed.
    pub fn known(&self, key: Known) -> Option<&'a str> {
        let at = self.known[key as usize].checked_sub(1)?;
        self.top.get(at as usize).map(|(_, v)| *v)
    }

    /// The entries of `userIdentity`, when it is an object.
    pub fn identity(&self) -> Option<&Entries<'a>> {
        self.identity
            .get_or_init(|| self.known(Known::UserIdentity).and_then(parse_object))
            .as_ref()
    }
}

fn parse_object(raw: &str) -> Option<Entries<'_>> {
    // Keys in CloudTrail have no escapes, so they borrow; an escaped key still parses, owned.
    crate::scan::object_entries(raw)
}

/// A JSON string (an object key, or a value), borrowed when it has no escapes (serde's own `Cow`
/// always copies).
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

fn lookup<'a>(entries: &Entries<'a>, key: &str) -> Option<&'a str> {
    entries.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// Converts a raw JSON value to the evaluator's value, borrowing strings without escapes.
fn to_event_value(text: &str, depth: usize) -> EventValue<'_> {
    if let Some(s) = crate::record::plain_string(text) {
        return EventValue::Str(Cow::Borrowed(s));
    }
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<Key<'_>>(text)
            .map(|k| EventValue::Str(k.0))
            .unwrap_or(EventValue::Null),
        Some(b't') => EventValue::Bool(true),
        Some(b'f') => EventValue::Bool(false),
        Some(b'n') | None => EventValue::Null,
        Some(b'[') if depth < MAX_DEPTH => crate::scan::array_elements(text)
            .map(|items| EventValue::Array(items.into_iter().map(|i| to_event_value(i, depth + 1)).collect()))
            .unwrap_or(EventValue::Null),
        Some(b'{') if depth < MAX_DEPTH => parse_object(text)
            .map(|entries| {
                EventValue::Map(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k, to_event_value(v, depth + 1)))
                        .collect(),
                )
            })
            .unwrap_or(EventValue::Null),
        Some(_) => match text.parse::<i64>() {
            Ok(n) => EventValue::Int(n),
            Err(_) => text
                .parse::<f64>()
                .map(EventValue::Float)
                .unwrap_or(EventValue::Null),
        },
    }
}

/// Follows the dotted `path` from `raw`, collecting every value it reaches (several when it
/// crosses arrays).
fn follow<'a>(raw: &'a str, path: Option<&str>, depth: usize, out: &mut Vec<EventValue<'a>>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Some(path) = path else {
        out.push(to_event_value(raw, depth));
        return;
    };
    match raw.as_bytes().first() {
        Some(b'{') => {
            let (first, rest) = split_path(path);
            if let Some(next) = parse_object(raw).and_then(|entries| lookup(&entries, first)) {
                follow(next, rest, depth + 1, out);
            }
        }
        Some(b'[') => {
            if let Some(items) = crate::scan::array_elements(raw) {
                for item in items {
                    follow(item, Some(path), depth + 1, out);
                }
            }
        }
        _ => {}
    }
}

/// `a.b.c` → (`a`, `b.c`); `a` → (`a`, none).
fn split_path(path: &str) -> (&str, Option<&str>) {
    match path.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (path, None),
    }
}

impl Event for RecordView<'_> {
    fn get_field(&self, path: &str) -> Option<EventValue<'_>> {
        if let Some(v) = self.top_level(path) {
            return Some(to_event_value(v, 0));
        }
        let (first, rest) = path.split_once('.')?;
        let mut found = Vec::new();
        match self.identity().filter(|_| first == "userIdentity") {
            // The same step `follow` takes, from the entries already parsed.
            Some(entries) => {
                let (second, rest) = split_path(rest);
                follow(lookup(entries, second)?, rest, 2, &mut found);
            }
            None => follow(self.top_level(first)?, Some(rest), 1, &mut found),
        }
        match found.len() {
            0 => None,
            1 => found.pop(),
            _ => Some(EventValue::Array(found)),
        }
    }

    fn any_string_value(&self, pred: &dyn Fn(&str) -> bool) -> bool {
        self.all_string_values().iter().any(|s| pred(s))
    }

    fn all_string_values(&self) -> Vec<Cow<'_, str>> {
        let mut out = Vec::new();
        if let Ok(value) = serde_json::from_str::<Value>(self.raw) {
            collect_strings(&value, &mut out, 0);
        }
        out
    }

    /// The record as the evaluator keeps it in threshold state: its `eventID`, as `id` (the
    /// evaluator names the events behind a threshold result by an `id` field). Only references
    /// are kept (trailwatch never asks the evaluator for whole events), so the rest of the record
    /// is not converted.
    fn to_json(&self) -> Value {
        let id = self.known(Known::EventId).map(|v| match to_event_value(v, 0) {
            EventValue::Str(s) => Value::String(s.into_owned()),
            _ => serde_json::from_str(v).unwrap_or(Value::Null),
        });
        match id {
            Some(id) => serde_json::json!({ "id": id, "eventID": id }),
            None => serde_json::json!({}),
        }
    }
}

fn collect_strings(value: &Value, out: &mut Vec<Cow<'_, str>>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match value {
        Value::String(s) => out.push(Cow::Owned(s.clone())),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out, depth + 1)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out, depth + 1)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"eventName":"AuthorizeSecurityGroupIngress","userIdentity":{"type":"Root","n":5},
        "requestParameters":{"ipPermissions":{"items":[
            {"ipRanges":{"items":[{"cidrIp":"10.0.0.0/8"}]}},
            {"ipRanges":{"items":[{"cidrIp":"0.0.0.0/0"}]}}]}},
        "responseElements":null,"readOnly":false,"flat.key":"x","msg":"a\"b"}"#;

    #[test]
    fn top_level_and_nested_fields_resolve() {
        let v = RecordView::new(RECORD).unwrap();
        assert_eq!(
            v.get_field("eventName"),
            Some(EventValue::Str("AuthorizeSecurityGroupIngress".into()))
        );
        assert_eq!(
            v.get_field("userIdentity.type"),
            Some(EventValue::Str("Root".into()))
        );
        assert_eq!(v.get_field("userIdentity.n"), Some(EventValue::Int(5)));
        assert_eq!(v.get_field("readOnly"), Some(EventValue::Bool(false)));
        assert_eq!(v.get_field("responseElements"), Some(EventValue::Null));
        assert_eq!(v.get_field("flat.key"), Some(EventValue::Str("x".into())));
        assert_eq!(v.get_field("msg"), Some(EventValue::Str("a\"b".into())));
    }

    #[test]
    fn missing_and_null_paths_resolve_to_nothing() {
        let v = RecordView::new(RECORD).unwrap();
        assert_eq!(v.get_field("nope"), None);
        assert_eq!(v.get_field("userIdentity.arn"), None);
        assert_eq!(v.get_field("responseElements.ConsoleLogin"), None);
        assert_eq!(v.get_field("eventName.deeper"), None);
    }

    #[test]
    fn paths_through_arrays_collect_every_element() {
        let v = RecordView::new(RECORD).unwrap();
        let got = v.get_field("requestParameters.ipPermissions.items.ipRanges.items.cidrIp");
        assert_eq!(
            got,
            Some(EventValue::Array(vec![
                EventValue::Str("10.0.0.0/8".into()),
                EventValue::Str("0.0.0.0/0".into())
            ]))
        );
    }

    #[test]
    fn keyword_search_sees_nested_strings() {
        let v = RecordView::new(RECORD).unwrap();
        assert!(v.any_string_value(&|s| s == "0.0.0.0/0"));
        assert!(!v.any_string_value(&|s| s == "absent"));
    }

    #[test]
    fn known_keys_are_told_from_keys_of_the_same_length() {
        let names = [
            "eventTime",
            "eventSource",
            "eventName",
            "eventType",
            "eventID",
            "awsRegion",
            "sourceIPAddress",
            "userAgent",
            "errorCode",
            "recipientAccountId",
            "userIdentity",
        ];
        for (i, name) in names.iter().enumerate() {
            assert_eq!(Known::of(name).map(|k| k as usize), Some(i), "{name}");
            // The same length, one letter off; and a prefix.
            let mut twin = name.to_string();
            twin.replace_range(..1, "x");
            assert_eq!(Known::of(&twin), None, "{twin}");
            assert_eq!(Known::of(&name[..name.len() - 1]), None);
        }
        assert_eq!(Known::of("eventid"), None);
    }

    #[test]
    fn a_dotted_top_level_key_is_found_whole() {
        let v = RecordView::new(r#"{"a.b":1,"a":{"b":2},"eventName":"X"}"#).unwrap();
        assert_eq!(v.top_level_text("a.b"), Some("1"));
        let plain = RecordView::new(r#"{"a":{"b":2}}"#).unwrap();
        assert_eq!(plain.top_level_text("a.b"), None);
        assert_eq!(v.top_level_text("eventName"), Some(r#""X""#));
    }

    #[test]
    fn non_objects_have_no_view() {
        assert!(RecordView::new("7").is_none());
        assert!(RecordView::new("[1]").is_none());
    }
}
