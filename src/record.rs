//! The CloudTrail record as the engine reads it.
//!
//! In: one JSON object of a log file's `Records` array, borrowed from the inflated buffer.
//! Out: a [`RawRecord`] holding only the fields the engine needs, borrowed where the JSON has no
//! escapes. Every field is optional and lenient about its JSON type ([`Text`]): CloudTrail has
//! changed shape across eventVersion 1.0 to 1.11, and real trails carry numbers where strings are
//! documented, `null` request parameters and unknown fields. Deciding whether a record is usable is
//! [`crate::event`]'s job, not the parser's, so that one odd field never loses a whole file.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::view::{Known, RecordView};

/// A JSON scalar read as text: strings as they are (borrowed when unescaped), numbers and booleans
/// rendered, `null` as absent. Objects and arrays are skipped and read as absent, because no field
/// the engine keys on is structured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text<'a>(pub Option<Cow<'a, str>>);

impl<'a> Text<'a> {
    /// The value, or `None` when absent, `null`, structured or empty.
    pub fn get(&self) -> Option<&str> {
        self.0.as_deref().filter(|s| !s.is_empty())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;

        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v))))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(if v { "true" } else { "false" }))))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
        }

        deserializer.deserialize_any(TextVisitor)
    }
}

/// A nested object that may instead be `null`, a scalar or an array in odd records: anything but
/// an object reads as the default (all fields absent).
#[derive(Debug, Clone, Default)]
pub struct Lenient<T>(pub T);

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LenientVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de> + Default> Visitor<'de> for LenientVisitor<T> {
            type Value = Lenient<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Lenient)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(T::default()))
            }
            fn visit_borrowed_str<E: de::Error>(self, _: &'de str) -> Result<Self::Value, E> {
                Ok(Lenient(T::default()))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Lenient(T::default()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(T::default()))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient(T::default()))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient(T::default()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(T::default()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient(T::default()))
            }
        }

        deserializer.deserialize_any(LenientVisitor(PhantomData))
    }
}

/// The fields of one CloudTrail record that the engine uses. Names follow the CloudTrail
/// documentation, whose capitalisation is irregular (`eventID`, `sourceIPAddress`), hence the
/// explicit renames.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RawRecord<'a> {
    #[serde(rename = "eventTime", borrow)]
    pub event_time: Text<'a>,
    #[serde(rename = "eventSource", borrow)]
    pub event_source: Text<'a>,
    #[serde(rename = "eventName", borrow)]
    pub event_name: Text<'a>,
    #[serde(rename = "eventType", borrow)]
    pub event_type: Text<'a>,
    #[serde(rename = "eventID", borrow)]
    pub event_id: Text<'a>,
    #[serde(rename = "awsRegion", borrow)]
    pub aws_region: Text<'a>,
    #[serde(rename = "sourceIPAddress", borrow)]
    pub source_ip: Text<'a>,
    #[serde(rename = "userAgent", borrow)]
    pub user_agent: Text<'a>,
    #[serde(rename = "errorCode", borrow)]
    pub error_code: Text<'a>,
    #[serde(rename = "recipientAccountId", borrow)]
    pub recipient_account_id: Text<'a>,
    #[serde(rename = "userIdentity", borrow)]
    pub user_identity: Option<Lenient<UserIdentity<'a>>>,
}

impl<'a> RawRecord<'a> {
    /// Reads the fields from a record's view (see [`crate::view::RecordView`]), parsing only the
    /// values the engine uses: the rest of the record is not scanned again, and `userIdentity` is
    /// read from the entries the view shares with the rules.
    pub fn from_view(view: &RecordView<'a>) -> RawRecord<'a> {
        let mut r = RawRecord::top_level(view);
        r.user_identity = RawRecord::identity_of(view);
        r
    }

    /// The `userIdentity` of a record's view.
    pub fn identity_of(view: &RecordView<'a>) -> Option<Lenient<UserIdentity<'a>>> {
        let value = view.known(Known::UserIdentity)?;
        match view.identity() {
            Some(entries) => Some(Lenient(UserIdentity::from_entries(entries))),
            None => nested(value),
        }
    }

    /// [`RawRecord::from_view`] but for `userIdentity`, which is left unread. Where a key is
    /// repeated, the first is read, as the rules read it.
    pub fn top_level(view: &RecordView<'a>) -> RawRecord<'a> {
        let field = |key| {
            view.known(key)
                .map(|v| match view.plain_string(v) {
                    Some(s) => Text(Some(Cow::Borrowed(s))),
                    None => parsed_text(v),
                })
                .unwrap_or_default()
        };
        RawRecord {
            event_time: field(Known::EventTime),
            event_source: field(Known::EventSource),
            event_name: field(Known::EventName),
            event_type: field(Known::EventType),
            event_id: field(Known::EventId),
            aws_region: field(Known::AwsRegion),
            source_ip: field(Known::SourceIpAddress),
            user_agent: field(Known::UserAgent),
            error_code: field(Known::ErrorCode),
            recipient_account_id: field(Known::RecipientAccountId),
            user_identity: None,
        }
    }
}

fn text(v: &str) -> Text<'_> {
    match plain_string(v) {
        Some(s) => Text(Some(Cow::Borrowed(s))),
        None => parsed_text(v),
    }
}

/// A value that is not a plain string, read by the parser.
fn parsed_text(v: &str) -> Text<'_> {
    serde_json::from_str(v).unwrap_or_default()
}

fn nested<'a, T: Deserialize<'a> + Default>(v: &'a str) -> Option<Lenient<T>> {
    serde_json::from_str::<Option<Lenient<T>>>(v).ok().flatten()
}

/// The contents of a JSON string value with no escapes, borrowed without running a parser; `None`
/// for any other value, which then needs one. (A `RawValue` is valid JSON, so a string with no
/// backslash is exactly the text between its quotes.)
pub fn plain_string(value: &str) -> Option<&str> {
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    memchr::memchr(b'\\', inner.as_bytes()).is_none().then_some(inner)
}

/// `userIdentity`, with every documented type's fields (see [`crate::principal`]).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UserIdentity<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Text<'a>,
    #[serde(rename = "principalId", borrow)]
    pub principal_id: Text<'a>,
    #[serde(borrow)]
    pub arn: Text<'a>,
    #[serde(rename = "accountId", borrow)]
    pub account_id: Text<'a>,
    #[serde(rename = "userName", borrow)]
    pub user_name: Text<'a>,
    #[serde(rename = "invokedBy", borrow)]
    pub invoked_by: Text<'a>,
    #[serde(rename = "identityProvider", borrow)]
    pub identity_provider: Text<'a>,
    #[serde(rename = "sessionContext", borrow)]
    pub session_context: Option<Lenient<SessionContext<'a>>>,
    #[serde(rename = "onBehalfOf", borrow)]
    pub on_behalf_of: Option<Lenient<OnBehalfOf<'a>>>,
}

impl<'a> UserIdentity<'a> {
    /// Reads the fields from the object's entries, as [`RawRecord::from_view`] does.
    fn from_entries(entries: &[(Cow<'a, str>, &'a str)]) -> UserIdentity<'a> {
        let mut id = UserIdentity::default();
        for (key, value) in entries {
            let value: &'a str = value;
            match key.as_ref() {
                "type" => id.kind = text(value),
                "principalId" => id.principal_id = text(value),
                "arn" => id.arn = text(value),
                "accountId" => id.account_id = text(value),
                "userName" => id.user_name = text(value),
                "invokedBy" => id.invoked_by = text(value),
                "identityProvider" => id.identity_provider = text(value),
                "sessionContext" => id.session_context = nested(value),
                "onBehalfOf" => id.on_behalf_of = nested(value),
                _ => {}
            }
        }
        id
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SessionContext<'a> {
    #[serde(rename = "sessionIssuer", borrow)]
    pub session_issuer: Option<Lenient<SessionIssuer<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SessionIssuer<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Text<'a>,
    #[serde(borrow)]
    pub arn: Text<'a>,
    #[serde(rename = "userName", borrow)]
    pub user_name: Text<'a>,
    #[serde(rename = "accountId", borrow)]
    pub account_id: Text<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OnBehalfOf<'a> {
    #[serde(rename = "userId", borrow)]
    pub user_id: Text<'a>,
    #[serde(rename = "identityStoreArn", borrow)]
    pub identity_store_arn: Text<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_reads_scalars_of_any_type_and_skips_structures() {
        let r: RawRecord = serde_json::from_str(
            r#"{"eventTime":"2024-01-01T00:00:00Z","recipientAccountId":1.05,"eventID":12,
                "errorCode":null,"awsRegion":{"x":1},"userAgent":["a"],"eventName":true}"#,
        )
        .unwrap();
        assert_eq!(r.recipient_account_id.get(), Some("1.05"));
        assert_eq!(r.event_id.get(), Some("12"));
        assert_eq!(r.error_code.get(), None);
        assert_eq!(r.aws_region.get(), None);
        assert_eq!(r.user_agent.get(), None);
        assert_eq!(r.event_name.get(), Some("true"));
    }

    #[test]
    fn unescaped_strings_are_borrowed() {
        let json = r#"{"eventSource":"s3.amazonaws.com","userAgent":"a\"b"}"#;
        let r: RawRecord = serde_json::from_str(json).unwrap();
        assert!(matches!(r.event_source.0, Some(Cow::Borrowed(_))));
        assert_eq!(r.user_agent.get(), Some("a\"b"));
    }

    #[test]
    fn nested_objects_of_the_wrong_type_read_as_empty() {
        let r: RawRecord = serde_json::from_str(
            r#"{"userIdentity":"oops","responseElements":null,
                "additionalEventData":{"MFAUsed":"No","other":{"deep":[1,2]}}}"#,
        )
        .unwrap();
        assert!(r.user_identity.unwrap().0.kind.get().is_none());
    }

    #[test]
    fn reading_from_entries_agrees_with_a_full_parse() {
        let json = r#"{"eventTime":"2024-01-01T00:00:00Z","eventSource":"s3.amazonaws.com","eventName":7,
            "requestParameters":{"deep":{"x":[1,2]}},"userIdentity":{"type":"AssumedRole",
            "sessionContext":{"sessionIssuer":{"arn":"arn:aws:iam::1:role/R"}}},"responseElements":null,
            "additionalEventData":{"MFAUsed":"No"},"userAgent":"a\"b"}"#;
        let full: RawRecord = serde_json::from_str(json).unwrap();
        let view = crate::view::RecordView::new(json).unwrap();
        let fast = RawRecord::from_view(&view);
        assert_eq!(format!("{full:?}"), format!("{fast:?}"));
    }

    #[test]
    fn a_repeated_key_is_read_as_the_rules_read_it() {
        use rsigma_eval::{Event, EventValue};
        // A record cannot show the rules one call and the baselines another.
        let json = r#"{"eventName":"StopLogging","eventSource":"cloudtrail.amazonaws.com",
            "eventName":"DescribeTrails","eventTime":"2024-01-01T00:00:00Z"}"#;
        let view = crate::view::RecordView::new(json).unwrap();
        let record = RawRecord::top_level(&view);
        assert_eq!(record.event_name.get(), Some("StopLogging"));
        assert!(matches!(view.get_field("eventName"), Some(EventValue::Str(s)) if s == "StopLogging"));
        assert_eq!(view.top_level_text("eventName"), Some(r#""StopLogging""#));
    }

    #[test]
    fn a_dotted_top_level_key_is_found_whole() {
        let json = r#"{"userIdentity.type":"Root","userIdentity":{"type":"IAMUser"}}"#;
        let view = crate::view::RecordView::new(json).unwrap();
        assert_eq!(view.top_level_text("userIdentity.type"), Some(r#""Root""#));
        let plain = crate::view::RecordView::new(r#"{"userIdentity":{"type":"IAMUser"}}"#).unwrap();
        assert_eq!(plain.top_level_text("userIdentity.type"), None);
    }

    #[test]
    fn session_issuer_may_be_empty() {
        let r: RawRecord = serde_json::from_str(
            r#"{"userIdentity":{"type":"AssumedRole","sessionContext":{"sessionIssuer":{}}}}"#,
        )
        .unwrap();
        let ui = r.user_identity.unwrap().0;
        let issuer = ui.session_context.unwrap().0.session_issuer.unwrap().0;
        assert!(issuer.arn.get().is_none());
    }
}
