//! The event the detectors see: one usable CloudTrail record, owned and compact.
//!
//! In: a [`RawRecord`] borrowed from a log file. Out: an [`Event`] or the [`RecordSkip`] reason it
//! is not usable. Short strings (event names, services, regions) are stored inline by
//! `CompactString`, so most events cost no heap allocation beyond the event ID and user agent.

use std::net::IpAddr;
use std::sync::Arc;

use compact_str::{format_compact, CompactString};

use crate::net::parse_source_ip;
use crate::principal::{self, Principal, PrincipalHashes};
use crate::record::RawRecord;
use crate::useragent::AgentFamilies;

/// One CloudTrail event, reduced to what baselines and anomalies use. Serialized (rule hits
/// aside, which travel by rule id: see [`crate::engine::wire`]) as the compact event record
/// that the decode stage hands to the detect stage.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// `eventID`; for records older than eventVersion 1.01, which have none, a digest of the record.
    pub event_id: CompactString,
    /// Event time in Unix seconds.
    pub time: i64,
    pub event_source: CompactString,
    pub event_name: CompactString,
    pub aws_region: Option<CompactString>,
    /// `sourceIPAddress` as written (an address, a service name, a list).
    pub source: Option<CompactString>,
    /// The address `source` names, if it names one.
    pub ip: Option<IpAddr>,
    /// Shared by the events of one agent (see [`crate::useragent::AgentFamilies`]).
    pub user_agent: Option<Arc<str>>,
    /// The family of `user_agent` (see [`crate::useragent`]), found when the event is built.
    pub agent_family: Option<CompactString>,
    pub error_code: Option<CompactString>,
    /// Shared by the events of one identity (see [`crate::principal::PrincipalCache`]).
    pub principal: Arc<Principal>,
    /// The object the event was read from, shared by every event of a file.
    pub object: Arc<str>,
    /// Detection rules the record matched (indices into the rule set).
    #[serde(skip)]
    pub rule_hits: Vec<crate::rules::RuleIndex>,
    /// The record's JSON, kept only when it matched a rule (correlations read it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Box<str>>,
    /// The principal key's hashes (see [`PrincipalHashes`]): set by the decoder from the principal
    /// cache, and for an event read back from the events topic when it is read; taken from the
    /// key when unset. A plain field, not a once-cell: setting a `OnceLock` went through its
    /// `Once` on every record.
    #[serde(skip)]
    pub principal_hashes: Option<PrincipalHashes>,
}

/// Why a record was not turned into an event. A bounded set: these are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordSkip {
    /// An element of `Records` that is not a JSON object.
    NotAnObject,
    /// An object whose fields could not be read (should not happen: fields are lenient).
    Unreadable,
    MissingEventTime,
    BadEventTime,
    MissingEventSource,
    MissingEventName,
    /// CloudTrail Insights records describe API rates, not a principal's calls.
    InsightRecord,
    /// An `eventTime` further from its file's delivery time (or, for a file whose name carries
    /// none, further ahead of the wall clock) than `replay.max_event_time_skew`: kept out of the
    /// detectors, whose clock is event time.
    EventTimeOutOfRange,
}

impl RecordSkip {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordSkip::NotAnObject => "not_an_object",
            RecordSkip::Unreadable => "unreadable",
            RecordSkip::MissingEventTime => "missing_event_time",
            RecordSkip::BadEventTime => "bad_event_time",
            RecordSkip::MissingEventSource => "missing_event_source",
            RecordSkip::MissingEventName => "missing_event_name",
            RecordSkip::InsightRecord => "insight_record",
            RecordSkip::EventTimeOutOfRange => "event_time_out_of_range",
        }
    }
}

impl Event {
    /// Validates a record and builds its event. `raw` is the record's JSON text, used only to name
    /// records that carry no `eventID`.
    pub fn from_record(record: &RawRecord<'_>, raw: &str, object: &Arc<str>) -> Result<Event, RecordSkip> {
        let principal = principal::derive(
            record.user_identity.as_ref().map(|u| &u.0),
            record.recipient_account_id.get(),
        );
        let agents = &mut AgentFamilies::default();
        Event::with_principal(record, raw, object, Arc::new(principal), agents)
    }

    /// [`Event::from_record`] with the principal already known, and the user agent's text and
    /// family taken from `agents`.
    pub fn with_principal(
        record: &RawRecord<'_>,
        raw: &str,
        object: &Arc<str>,
        principal: Arc<Principal>,
        agents: &mut AgentFamilies,
    ) -> Result<Event, RecordSkip> {
        if record.event_type.get() == Some("AwsCloudTrailInsight") {
            return Err(RecordSkip::InsightRecord);
        }
        let time_text = record.event_time.get().ok_or(RecordSkip::MissingEventTime)?;
        let time = parse_event_time(time_text).ok_or(RecordSkip::BadEventTime)?;
        let event_source = record.event_source.get().ok_or(RecordSkip::MissingEventSource)?;
        let event_name = record.event_name.get().ok_or(RecordSkip::MissingEventName)?;
        let event_id = match record.event_id.get() {
            Some(id) => bounded(id),
            None => format_compact!("nid-{:032x}", xxhash_rust::xxh3::xxh3_128(raw.as_bytes())),
        };
        let source = record.source_ip.get();
        let (user_agent, agent_family) = record.user_agent.get().map(|agent| agents.agent(agent)).unzip();
        Ok(Event {
            event_id,
            time,
            event_source: bounded(event_source),
            event_name: bounded(event_name),
            aws_region: record.aws_region.get().map(bounded),
            source: source.map(bounded),
            ip: source.and_then(parse_source_ip),
            user_agent,
            agent_family: agent_family.map(|f| if f.len() > MAX_VALUE_BYTES { bounded(&f) } else { f }),
            error_code: record.error_code.get().map(bounded),
            principal,
            object: Arc::clone(object),
            rule_hits: Vec::new(),
            raw: None,
            principal_hashes: Default::default(),
        })
    }

    /// The principal key's hashes, known from the decoder or taken now.
    pub fn principal_hashes(&self) -> PrincipalHashes {
        self.principal_hashes
            .unwrap_or_else(|| PrincipalHashes::of(&self.principal.key))
    }

    /// [`PrincipalHashes::digest`]: a shard finds the baseline by it.
    pub fn principal_digest(&self) -> u128 {
        self.principal_hashes().digest
    }

    /// [`PrincipalHashes::partition`]: the event is routed by it.
    pub fn partition_hash(&self) -> u32 {
        self.principal_hashes().partition
    }

    /// Whether the call was refused for want of permission: `AccessDenied`, `Unauthorized*`,
    /// `*Denied`, `*AccessDeniedException`, `*Forbidden*`.
    pub fn is_denied(&self) -> bool {
        self.error_code.as_deref().is_some_and(is_denied_code)
    }
}

/// Longest value an event keeps whole (event ID, service, API name, region, source, user-agent
/// family, error code): these are what baselines, de-duplication and anomalies hold, so a record
/// with a 4 MiB `eventName` must not put 4 MiB in a baseline. Real values are far shorter.
pub const MAX_VALUE_BYTES: usize = 256;

/// What is kept of a longer value: its first bytes (up to a character boundary), then `…#` and
/// the xxh3-64 digest of the whole value in hex, so distinct long values stay distinct.
pub const LONG_VALUE_PREFIX_BYTES: usize = 200;

/// `value` whole when it is at most [`MAX_VALUE_BYTES`] long, else its prefix and digest.
pub fn bounded(value: &str) -> CompactString {
    if value.len() <= MAX_VALUE_BYTES {
        return CompactString::from(value);
    }
    let mut cut = LONG_VALUE_PREFIX_BYTES;
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    format_compact!(
        "{}…#{:016x}",
        &value[..cut],
        xxhash_rust::xxh3::xxh3_64(value.as_bytes())
    )
}

/// See [`Event::is_denied`].
pub fn is_denied_code(code: &str) -> bool {
    code.starts_with("Unauthorized")
        || code.starts_with("Client.Unauthorized")
        || code.ends_with("Denied")
        || code.ends_with("DeniedException")
        || code.contains("Forbidden")
}

/// Parses CloudTrail's `eventTime` to Unix seconds. The common `YYYY-MM-DDTHH:MM:SSZ` form is
/// read directly; anything else goes through a full RFC 3339 parser.
pub fn parse_event_time(text: &str) -> Option<i64> {
    fast_utc_seconds(text).or_else(|| {
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp())
    })
}

fn fast_utc_seconds(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let time = date.and_hms_opt(num(11..13)?, num(14..16)?, num(17..19)?)?;
    Some(time.and_utc().timestamp())
}

/// Formats Unix seconds as RFC 3339 UTC (`2024-01-02T03:04:05Z`), as chrono's
/// `%Y-%m-%dT%H:%M:%SZ` does. Every anomaly carries several times: years 0 to 9999 are written
/// directly, without chrono's format-string interpreter (which cost about 3 µs per anomaly);
/// other years, which chrono writes with a sign, and seconds beyond chrono's range go to chrono.
pub fn format_time(secs: i64) -> String {
    format_time_compact(secs).into()
}

/// [`format_time`] as an inline string: the 20 bytes of a time of the years 0 to 9999 need no
/// allocation.
pub fn format_time_compact(secs: i64) -> CompactString {
    match rfc3339_utc(secs) {
        Some(bytes) => std::str::from_utf8(&bytes).expect("digits and separators").into(),
        None => chrono::DateTime::from_timestamp(secs, 0)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| secs.to_string())
            .into(),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for `secs`, if its year is 0 to 9999.
fn rfc3339_utc(secs: i64) -> Option<[u8; 20]> {
    /// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    const FIRST: i64 = -62_167_219_200;
    const LAST: i64 = 253_402_300_799;
    if !(FIRST..=LAST).contains(&secs) {
        return None;
    }
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let second = secs.rem_euclid(86_400) as u32;
    let mut out = *b"0000-00-00T00:00:00Z";
    let year = year as u32;
    for (at, value) in [
        (0, year / 100),
        (2, year % 100),
        (5, month),
        (8, day),
        (11, second / 3600),
        (14, second / 60 % 60),
        (17, second % 60),
    ] {
        out[at] = b'0' + (value / 10) as u8;
        out[at + 1] = b'0' + (value % 10) as u8;
    }
    Some(out)
}

/// The proleptic Gregorian (year, month, day) of a day counted from 1970-01-01: Howard Hinnant's
/// `civil_from_days`, over 400-year eras that begin on a 1 March.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: 0 is March, 11 is February.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One IAM user's call to S3, with eventID `id`, from `ip`: what the detectors' and the
/// partitions' tests feed them.
#[cfg(test)]
pub(crate) fn test_event(id: &str, time: i64, name: &str, ip: &str) -> Event {
    Event {
        event_id: id.into(),
        time,
        event_source: "s3.amazonaws.com".into(),
        event_name: name.into(),
        aws_region: Some("us-east-1".into()),
        source: Some(ip.into()),
        ip: ip.parse().ok(),
        user_agent: Some("aws-cli/2.0".into()),
        agent_family: None,
        error_code: None,
        principal: Arc::new(Principal {
            key: "arn:aws:iam::1:user/u".into(),
            kind: "IAMUser".into(),
            account_id: Some("1".into()),
            arn: Some("arn:aws:iam::1:user/u".into()),
            session: None,
        }),
        object: Arc::from("f"),
        principal_hashes: Default::default(),
        rule_hits: Vec::new(),
        raw: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> Result<Event, RecordSkip> {
        let r: RawRecord = serde_json::from_str(json).unwrap();
        Event::from_record(&r, json, &Arc::from("file"))
    }

    #[test]
    fn event_times_parse_in_both_forms() {
        assert_eq!(parse_event_time("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(parse_event_time("2024-02-29T12:00:00Z"), Some(1_709_208_000));
        assert_eq!(
            parse_event_time("2024-02-29T12:00:00.250+00:00"),
            Some(1_709_208_000)
        );
        assert_eq!(parse_event_time("2024-02-30T12:00:00Z"), None);
        assert_eq!(parse_event_time("yesterday"), None);
        assert_eq!(format_time(1_709_208_000), "2024-02-29T12:00:00Z");
    }

    #[test]
    fn records_without_essentials_are_skipped_with_the_reason() {
        assert_eq!(
            event(r#"{"eventSource":"s","eventName":"n"}"#).unwrap_err(),
            RecordSkip::MissingEventTime
        );
        assert_eq!(
            event(r#"{"eventTime":"soon","eventSource":"s","eventName":"n"}"#).unwrap_err(),
            RecordSkip::BadEventTime
        );
        assert_eq!(
            event(r#"{"eventTime":"2024-01-01T00:00:00Z","eventName":"n"}"#).unwrap_err(),
            RecordSkip::MissingEventSource
        );
        assert_eq!(
            event(r#"{"eventTime":"2024-01-01T00:00:00Z","eventSource":"s"}"#).unwrap_err(),
            RecordSkip::MissingEventName
        );
        assert_eq!(
            event(r#"{"eventType":"AwsCloudTrailInsight","eventTime":"2024-01-01T00:00:00Z"}"#).unwrap_err(),
            RecordSkip::InsightRecord
        );
    }

    #[test]
    fn times_are_formatted_as_chrono_formats_them() {
        let chrono = |secs: i64| {
            chrono::DateTime::from_timestamp(secs, 0)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_else(|| secs.to_string())
        };
        const DAY: i64 = 86_400;
        // The ends of the directly written years and of chrono's range, the epoch, leap days
        // (2000 is a leap year, 1900 and 2100 are not), ends of months and years.
        let mut times = vec![
            0,
            -1,
            1,
            -62_167_219_200,
            -62_167_219_201,
            253_402_300_799,
            253_402_300_800,
            i64::MIN,
            i64::MAX,
        ];
        for end in [
            chrono::DateTime::<chrono::Utc>::MIN_UTC,
            chrono::DateTime::<chrono::Utc>::MAX_UTC,
        ] {
            times.extend([end.timestamp() - 1, end.timestamp(), end.timestamp() + 1]);
        }
        for date in [
            "2000-02-29T00:00:00Z",
            "1900-03-01T00:00:00Z",
            "2100-03-01T00:00:00Z",
            "2024-12-31T23:59:59Z",
            "1969-12-31T23:59:59Z",
            "1600-03-01T00:00:00Z",
        ] {
            let t = parse_event_time(date).unwrap();
            times.extend([t - DAY - 1, t - 1, t, t + 1, t + DAY]);
        }
        // Every day from 1599 to 2401 at a second that moves through the day, then pseudo-random
        // seconds over and beyond the years 0 to 9999.
        let first = parse_event_time("1599-01-01T00:00:00Z").unwrap();
        times.extend((0..293_000).map(|d| first + d * DAY + (d * 7_919) % DAY));
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            // SplitMix64.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            times.push((z % 400_000_000_000) as i64 - 100_000_000_000);
        }
        for t in times {
            assert_eq!(format_time(t), chrono(t), "{t}");
        }
    }

    #[test]
    fn records_without_event_id_get_a_stable_one() {
        let json = r#"{"eventTime":"2024-01-01T00:00:00Z","eventSource":"s","eventName":"n"}"#;
        let a = event(json).unwrap();
        let b = event(json).unwrap();
        assert!(a.event_id.starts_with("nid-"));
        assert_eq!(a.event_id, b.event_id);
    }

    #[test]
    fn long_values_are_kept_as_a_prefix_and_a_digest() {
        let name = "Get".to_owned() + &"é".repeat(2 << 20);
        let other = "Get".to_owned() + &"é".repeat((2 << 20) - 1) + "e";
        let json = format!(
            r#"{{"eventTime":"2024-01-01T00:00:00Z","eventSource":"s","eventName":"{name}","eventID":"{name}","errorCode":"{other}"}}"#
        );
        let e = event(&json).unwrap();
        for value in [&e.event_name, &e.event_id, e.error_code.as_ref().unwrap()] {
            assert!(value.len() <= MAX_VALUE_BYTES, "{} bytes", value.len());
            assert!(value.starts_with("Getéé"), "{value}");
        }
        assert_eq!(e.event_name, e.event_id);
        assert_ne!(
            e.event_name,
            *e.error_code.as_ref().unwrap(),
            "distinct values stay distinct"
        );
        assert_eq!(bounded("GetObject"), "GetObject");
        assert_eq!(bounded(&"x".repeat(MAX_VALUE_BYTES)), "x".repeat(MAX_VALUE_BYTES));
    }

    #[test]
    fn denied_codes() {
        for code in [
            "AccessDenied",
            "Client.UnauthorizedOperation",
            "UnauthorizedOperation",
            "AccessDeniedException",
            "Forbidden",
        ] {
            assert!(is_denied_code(code), "{code}");
        }
        for code in ["NoSuchBucket", "ThrottlingException", "InvalidParameterValue"] {
            assert!(!is_denied_code(code), "{code}");
        }
    }
}
