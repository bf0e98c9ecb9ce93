//! Log-file decoding: bytes of one object in, events and a report of what was skipped out.
//!
//! Accepts CloudTrail's `{"Records":[...]}` files, gzip-compressed or not (recognised by the gzip
//! magic, not the name), and JSON-lines files of one record per line (`.jsonl`, as exports from
//! Athena or CloudWatch Logs write them). Digest and Insights files are recognised by key
//! ([`classify_key`]) and by content and skipped, not failed.
//!
//! Guarantees: one bad record never costs the file (it is skipped and counted with its index and
//! reason); a file that fails part-way (truncated gzip or JSON) keeps every record before the
//! failure and reports the failure with the file and the reason; nothing here panics on input.
//! The file is walked in one pass by [`crate::scan::Scanner`], which checks it is JSON and indexes
//! each record's top level as it goes; the fields are then read borrowed from the reused inflate
//! buffer into [`RawRecord`]s. No `serde_json::Value` is built.

use std::cell::RefCell;
use std::sync::Arc;

use crate::event::{Event, RecordSkip};
use crate::gunzip::{Gunzip, GunzipError};
use crate::principal::{self, PrincipalCache};
use crate::record::RawRecord;
use crate::rules::{GateMemo, RuleSet};
use crate::scan::{ScanError, Scanner};
use crate::useragent::AgentFamilies;
use crate::view::{Entries, RecordView};

/// Why an object is not decoded at all. A bounded set: these are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileSkip {
    /// A `CloudTrail-Digest` file: integrity hashes, no events.
    Digest,
    /// A `CloudTrail-Insight` file: rate summaries, no principal's calls.
    Insight,
    /// Not a log file by its name (folder replay only considers `.json`, `.jsonl` and `.gz`).
    NotALogFile,
    /// Delivered outside a replay's `--since`/`--until`.
    OutsideTimeRange,
}

impl FileSkip {
    pub fn as_str(self) -> &'static str {
        match self {
            FileSkip::Digest => "digest",
            FileSkip::Insight => "insight",
            FileSkip::NotALogFile => "not_a_log_file",
            FileSkip::OutsideTimeRange => "outside_time_range",
        }
    }
}

/// Why a file failed, wholly or part-way.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt gzip after {inflated} bytes: {source}")]
    Gzip { inflated: usize, source: GunzipError },
    #[error("truncated gzip: the file ends after {inflated} inflated bytes; the {records} records before the cut are kept")]
    Truncated { inflated: usize, records: usize },
    #[error("larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("invalid JSON at line {line} column {column} (after {records} records): {message}")]
    Json {
        line: usize,
        column: usize,
        records: usize,
        message: String,
    },
    #[error("not a CloudTrail log file: the JSON has no Records array")]
    NoRecords,
    #[error("not UTF-8 at byte {offset}")]
    NotUtf8 { offset: usize },
    /// An object of an `s3://` replay input that could not be fetched.
    #[error("{0}")]
    Fetch(#[from] crate::fetch::FetchError),
}

impl FileError {
    /// The failure's class, for metrics and summaries.
    pub fn reason(&self) -> &'static str {
        match self {
            FileError::Io(_) => "io",
            FileError::Gzip { .. } => "corrupt_gzip",
            FileError::Truncated { .. } => "truncated_gzip",
            FileError::TooLarge { .. } => "too_large",
            FileError::Json { .. } => "invalid_json",
            FileError::NoRecords => "not_cloudtrail",
            FileError::NotUtf8 { .. } => "not_utf8",
            FileError::Fetch(e) => e.reason(),
        }
    }
}

/// A skipped record: where it was and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRecord {
    /// Index in `Records` (or line number, from 1, in a JSON-lines file).
    pub index: usize,
    pub reason: RecordSkip,
}

/// The result of decoding one object.
#[derive(Debug, Default)]
pub struct DecodedFile {
    /// Each with its principal's hashes set (see [`crate::principal::PrincipalHashes`]).
    pub events: Vec<Event>,
    pub skipped: Vec<SkippedRecord>,
    /// Set when the object was skipped as a whole.
    pub skip: Option<FileSkip>,
    /// Set when the object failed; `events` still holds what was read before the failure.
    pub error: Option<FileError>,
    /// Time spent inflating, parsing and evaluating rules.
    pub took: std::time::Duration,
}

/// Limits on one object.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest inflated size accepted. CloudTrail caps compressed files at 50 MB.
    pub max_inflated_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_inflated_bytes: 1 << 30,
        }
    }
}

/// What an object's key says it is.
pub fn classify_key(key: &str) -> Option<FileSkip> {
    if key.contains("/CloudTrail-Digest/") || key.contains("_CloudTrail-Digest_") {
        Some(FileSkip::Digest)
    } else if key.contains("/CloudTrail-Insight/") || key.contains("_CloudTrail-Insight_") {
        Some(FileSkip::Insight)
    } else {
        None
    }
}

/// A decoder that keeps its inflate buffer between files, and evaluates detection rules on each
/// record while it is still borrowed from that buffer.
pub struct Decoder {
    inflater: Inflater,
    rules: Option<Arc<RuleSet>>,
    /// Largest distance in seconds between a record's `eventTime` and its file's delivery time
    /// (see [`Decoder::with_event_time_skew`]); 0: unchecked.
    max_event_time_skew: i64,
    /// Caches the records of a file fill while they borrow from the inflater's buffer.
    principals: RefCell<PrincipalCache>,
    agents: RefCell<AgentFamilies>,
    gates: RefCell<GateMemo>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            inflater: Inflater::default(),
            rules: None,
            max_event_time_skew: DEFAULT_MAX_EVENT_TIME_SKEW,
            principals: RefCell::default(),
            agents: RefCell::default(),
            gates: RefCell::default(),
        }
    }
}

/// The default of `replay.max_event_time_skew`: one day. CloudTrail delivers a record minutes
/// after the call, rarely hours; a day leaves room for late deliveries and skewed clocks, while a
/// record dated further from its file (a forged or corrupt `eventTime`, say 9999-12-31) would
/// move the detectors' event-time clock and make every later event look old or new.
pub const DEFAULT_MAX_EVENT_TIME_SKEW: i64 = 86_400;

/// The delivery time in a CloudTrail log file's name
/// (`<account>_CloudTrail_<region>_YYYYMMDDTHHMMZ_<id>.json.gz`), in Unix seconds.
pub fn delivery_time(object: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(delivery_stamp(object)?, "%Y%m%dT%H%MZ")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// The `YYYYMMDDTHHMMZ` in a CloudTrail log file's name, as written (unchecked as a date).
pub fn delivery_stamp(object: &str) -> Option<&str> {
    let name = object.rsplit(['/', '\\']).next()?;
    name.split('_')
        .nth(3)
        .filter(|t| t.len() == 14 && t.ends_with('Z'))
}

/// Inflates objects into a buffer reused from one to the next.
#[derive(Default)]
struct Inflater {
    limits: DecodeLimits,
    buffer: Vec<u8>,
    /// Reused for every gzip member (its window and tables are a few dozen KiB).
    gunzip: Gunzip,
}

/// What decoding one record needs besides the record.
#[derive(Clone, Copy)]
struct Context<'o> {
    object: &'o Arc<str>,
    /// The event times accepted, inclusive (see [`Decoder::with_event_time_skew`]).
    time_range: (i64, i64),
    /// The whole inflated file, which records borrow from.
    text: &'o str,
    rules: Option<&'o RuleSet>,
    principals: &'o RefCell<PrincipalCache>,
    agents: &'o RefCell<AgentFamilies>,
    gates: &'o RefCell<GateMemo>,
}

impl Decoder {
    pub fn new(limits: DecodeLimits) -> Self {
        Decoder::with_rules(limits, None)
    }

    /// A decoder that also evaluates `rules` on every record.
    pub fn with_rules(limits: DecodeLimits, rules: Option<Arc<RuleSet>>) -> Self {
        Decoder {
            inflater: Inflater {
                limits,
                ..Inflater::default()
            },
            rules: rules.filter(|r| !r.is_empty()),
            ..Decoder::default()
        }
    }

    /// Skips (as [`RecordSkip::EventTimeOutOfRange`]) every record whose `eventTime` is more than
    /// `seconds` from its file's delivery time, or, when the file's name carries none, more than
    /// `seconds` ahead of the wall clock. 0 turns the check off. The default is
    /// [`DEFAULT_MAX_EVENT_TIME_SKEW`].
    pub fn with_event_time_skew(mut self, seconds: i64) -> Self {
        self.max_event_time_skew = seconds.max(0);
        self
    }

    /// The event times a record of `object` may have.
    fn event_time_range(&self, object: &str) -> (i64, i64) {
        let skew = self.max_event_time_skew;
        if skew == 0 {
            return (i64::MIN, i64::MAX);
        }
        match delivery_time(object) {
            // The name gives the minute the file was written, whose records are no later.
            Some(delivered) => (
                delivered.saturating_sub(skew),
                delivered.saturating_add(60 + skew),
            ),
            None => (i64::MIN, chrono::Utc::now().timestamp().saturating_add(skew)),
        }
    }

    /// Decodes one object's bytes. `object` names it in events and reports.
    pub fn decode(&mut self, object: &Arc<str>, bytes: &[u8]) -> DecodedFile {
        self.decode_into(object, bytes, Vec::new())
    }

    /// [`Decoder::decode`], with the events written into `events` (cleared first): a caller
    /// that decodes many files hands back the vectors it is done with, rather than allocating
    /// (and faulting in) a new one per file.
    pub fn decode_into(&mut self, object: &Arc<str>, bytes: &[u8], mut events: Vec<Event>) -> DecodedFile {
        let started = std::time::Instant::now();
        events.clear();
        let mut decoded = DecodedFile {
            events,
            ..DecodedFile::default()
        };
        self.decode_untimed(object, bytes, &mut decoded);
        decoded.took = started.elapsed();
        decoded
    }

    fn decode_untimed(&mut self, object: &Arc<str>, bytes: &[u8], out: &mut DecodedFile) {
        if let Some(skip) = classify_key(object) {
            out.skip = Some(skip);
            return;
        }
        let time_range = self.event_time_range(object);
        let json_lines = object.ends_with(".jsonl") || object.ends_with(".jsonl.gz");
        let (text, truncated) = match self.inflater.inflate(bytes) {
            Ok(text) => (text, None),
            Err(Inflated::Truncated(prefix)) => {
                let inflated = prefix.len();
                // Of a cut JSON-lines file, only the lines ended before the cut; of a records
                // object, the records the parser finds closed (see `LogFileSeed`).
                let prefix = match json_lines {
                    true => prefix.rfind('\n').map_or("", |end| &prefix[..end]),
                    false => prefix,
                };
                (prefix, Some(inflated))
            }
            Err(Inflated::Failed(error)) => {
                out.error = Some(error);
                return;
            }
        };
        let ctx = Context {
            object,
            text,
            time_range,
            rules: self.rules.as_deref(),
            principals: &self.principals,
            agents: &self.agents,
            gates: &self.gates,
        };
        out.events.reserve(expected_records(text));
        if json_lines {
            decode_json_lines(ctx, text, out)
        } else {
            decode_records_object(ctx, text, out)
        }
        if let Some(inflated) = truncated {
            // The parser's complaint about the cut text is this, said better.
            out.skip = None;
            out.error = Some(FileError::Truncated {
                inflated,
                records: out.events.len() + out.skipped.len(),
            });
        }
    }
}

impl Inflater {
    /// Inflates every gzip member of `bytes` into the buffer, as a multi-member decoder would:
    /// bytes after a member must start another.
    fn inflate_gzip(&mut self, bytes: &[u8]) -> Result<(), FileError> {
        self.buffer.clear();
        let limit = self.limits.max_inflated_bytes;
        self.gunzip
            .inflate(bytes, &mut self.buffer, limit)
            .map_err(|source| match source {
                GunzipError::TooLarge { limit } => FileError::TooLarge { limit },
                source => FileError::Gzip {
                    inflated: self.buffer.len(),
                    source,
                },
            })
    }

    /// Inflates gzip input (by magic number) into the reused buffer and checks it is UTF-8.
    /// Plain input is checked in place. A gzip stream that is cut short gives the text inflated
    /// before the cut (up to its last whole character), which the caller parses only for records
    /// that close before it; a corrupt stream is an error, its text unused.
    fn inflate<'b>(&'b mut self, bytes: &'b [u8]) -> Result<&'b str, Inflated<'b>> {
        if self.buffer.capacity() > KEEP_INFLATE_BUFFER {
            // One large file does not keep its size in every worker for the rest of the run.
            self.buffer = Vec::new();
        }
        let data: &[u8] = if bytes.starts_with(&[0x1f, 0x8b]) {
            match self.inflate_gzip(bytes) {
                Ok(()) => &self.buffer,
                Err(FileError::Gzip {
                    source: GunzipError::Truncated,
                    ..
                }) => {
                    let valid = match simdutf8::compat::from_utf8(&self.buffer) {
                        Ok(_) => self.buffer.len(),
                        Err(e) => e.valid_up_to(),
                    };
                    let text = std::str::from_utf8(&self.buffer[..valid]).unwrap_or_default();
                    return Err(Inflated::Truncated(text));
                }
                Err(error) => return Err(Inflated::Failed(error)),
            }
        } else {
            if bytes.len() > self.limits.max_inflated_bytes {
                return Err(Inflated::Failed(FileError::TooLarge {
                    limit: self.limits.max_inflated_bytes,
                }));
            }
            bytes
        };
        // Checked with SIMD: std's byte-wise check of every inflated byte was ~2 % of a replay.
        simdutf8::compat::from_utf8(data).map_err(|e| {
            Inflated::Failed(FileError::NotUtf8 {
                offset: e.valid_up_to(),
            })
        })
    }
}

/// Inflate buffers larger than this are released before the next file.
const KEEP_INFLATE_BUFFER: usize = 64 << 20;

/// Why [`Inflater::inflate`] gave no whole text.
enum Inflated<'b> {
    /// The gzip stream was cut short: the text before the cut.
    Truncated(&'b str),
    Failed(FileError),
}

/// A first guess at a file's record count, so the events vector rarely grows: CloudTrail records
/// run from a few hundred bytes to a few KiB.
fn expected_records(text: &str) -> usize {
    text.len() / 1024 + 1
}

fn decode_records_object(ctx: Context<'_>, text: &str, out: &mut DecodedFile) {
    match walk_log_file(ctx, out) {
        Ok(Shape::Records) => {}
        Ok(Shape::Digest) => out.skip = Some(FileSkip::Digest),
        Ok(Shape::Other) => out.error = Some(FileError::NoRecords),
        Err(e) => {
            let (line, column) = e.line_column(text);
            out.error = Some(FileError::Json {
                line,
                column,
                records: out.events.len() + out.skipped.len(),
                message: e.what.to_owned(),
            })
        }
    }
}

/// What the top-level value turned out to be.
enum Shape {
    Records,
    Digest,
    Other,
}

/// Walks the top-level value, decoding `Records` element by element into `out`, so that an error
/// part-way leaves every earlier record decoded.
fn walk_log_file(ctx: Context<'_>, out: &mut DecodedFile) -> Result<Shape, ScanError> {
    let mut scan = Scanner::new(ctx.text);
    if !scan.enter(b'{') {
        scan.value()?;
        scan.end()?;
        return Ok(Shape::Other);
    }
    let mut shape = Shape::Other;
    let mut first = true;
    while let Some(key) = scan.next_key(&mut first)? {
        match key.as_ref() {
            "Records" => {
                walk_records(ctx, &mut scan, out)?;
                shape = Shape::Records;
            }
            "digestStartTime" | "digestS3Object" | "logFiles" if !matches!(shape, Shape::Records) => {
                scan.value()?;
                shape = Shape::Digest;
            }
            _ => {
                scan.value()?;
            }
        }
    }
    scan.end()?;
    Ok(shape)
}

/// The `Records` value: each element indexed at its top level in the one pass that checks it,
/// values left as text; a record with unexpected content is then skipped alone.
fn walk_records<'o>(
    ctx: Context<'o>,
    scan: &mut Scanner<'o>,
    out: &mut DecodedFile,
) -> Result<(), ScanError> {
    let text = ctx.text;
    if !scan.enter(b'[') {
        let at = scan.offset();
        return match scan.value()? {
            "null" => Ok(()),
            _ => Err(ScanError {
                offset: at,
                what: "Records is not an array",
            }),
        };
    }
    let mut index = 0;
    let mut first = true;
    // One vector indexes every record in turn: a CloudTrail record has about two dozen keys.
    let mut entries = Vec::with_capacity(24);
    while scan.next_element(&mut first)? {
        if scan.enter(b'{') {
            let start = scan.offset() - 1;
            scan.entries_into(&mut entries)?;
            let raw = &text[start..scan.offset()];
            let view = RecordView::from_entries(raw, std::mem::take(&mut entries));
            entries = push_view(ctx, view, index, out);
        } else {
            scan.value()?;
            out.skipped.push(SkippedRecord {
                index,
                reason: RecordSkip::NotAnObject,
            });
        }
        index += 1;
    }
    Ok(())
}

fn decode_json_lines(ctx: Context<'_>, text: &str, out: &mut DecodedFile) {
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        push_record(ctx, line, n + 1, out);
    }
    // A JSON-lines file none of whose lines is a record is some other file, not a trail of bad
    // records: report it once, as the object form does.
    if out.events.is_empty() && !out.skipped.is_empty() {
        out.error = Some(FileError::NoRecords);
        out.skipped.clear();
    }
}

/// Decodes one record's JSON text into `out`.
fn push_record(ctx: Context<'_>, raw: &str, index: usize, out: &mut DecodedFile) {
    match RecordView::new(raw) {
        Some(view) => {
            push_view(ctx, view, index, out);
        }
        None => {
            let reason = if raw.starts_with('{') {
                RecordSkip::Unreadable
            } else {
                RecordSkip::NotAnObject
            };
            out.skipped.push(SkippedRecord { index, reason });
        }
    }
}

/// Decodes one indexed record into `out`. The engine's fields are read from the index and the
/// rules evaluated against it, so the record is not scanned a second time. Gives back the index's
/// entries, for the next record.
fn push_view<'o>(ctx: Context<'_>, view: RecordView<'o>, index: usize, out: &mut DecodedFile) -> Entries<'o> {
    let record = RawRecord::top_level(&view);
    let recipient = record.recipient_account_id.get();
    let derive = || {
        let identity = RawRecord::identity_of(&view);
        principal::derive(identity.as_ref().map(|u| &u.0), recipient)
    };
    let principal::Known {
        principal,
        identity_key,
        hashes,
    } = match view.top_level_text("userIdentity") {
        Some(identity) => ctx.principals.borrow_mut().get(identity, recipient, derive),
        None => principal::Known::new(derive(), None),
    };
    let mut view = view;
    if let Some(key) = identity_key {
        view.set_identity_key(key);
    }
    // User agents are classified here, while the text is in cache, and once per distinct agent,
    // whose text the events share.
    let agents = &mut ctx.agents.borrow_mut();
    let result =
        Event::with_principal(&record, view.raw(), ctx.object, principal, agents).map(|mut event| {
            event.principal_hashes = Some(hashes);
            if let Some(rules) = ctx.rules {
                rules.evaluate_with(&view, &mut ctx.gates.borrow_mut(), &mut event.rule_hits);
                // Kept whole only for the correlation engine, and only when a rule it counts was
                // hit: in an alert storm of other rules, every matching record was copied and
                // indexed again for nothing.
                let rules_info = rules.rules();
                let feeds = |&hit: &crate::rules::RuleIndex| {
                    rules_info
                        .get(usize::from(hit))
                        .is_some_and(|r| r.feeds_correlation)
                };
                if event.rule_hits.iter().any(feeds) {
                    event.raw = Some(view.raw().into());
                }
            }
            event
        });
    let (earliest, latest) = ctx.time_range;
    match result {
        Ok(event) if (earliest..=latest).contains(&event.time) => {
            out.events.push(event);
        }
        Ok(_) => out.skipped.push(SkippedRecord {
            index,
            reason: RecordSkip::EventTimeOutOfRange,
        }),
        Err(reason) => out.skipped.push(SkippedRecord { index, reason }),
    }
    view.into_entries()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn decode(name: &str, bytes: &[u8]) -> DecodedFile {
        Decoder::default().decode(&Arc::from(name), bytes)
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    const TWO: &str = r#"{"Records":[
        {"eventTime":"2024-01-01T00:00:00Z","eventSource":"s3.amazonaws.com","eventName":"GetObject","eventID":"a"},
        {"eventTime":"2024-01-01T00:00:01Z","eventSource":"s3.amazonaws.com","eventName":"PutObject","eventID":"b"}]}"#;

    #[test]
    fn plain_and_gzip_files_decode_alike() {
        let plain = decode("f.json", TWO.as_bytes());
        let gz = decode("f.json.gz", &gzip(TWO.as_bytes()));
        assert_eq!(plain.events.len(), 2);
        assert_eq!(gz.events.len(), 2);
        assert!(plain.error.is_none() && gz.error.is_none());
        assert_eq!(gz.events[1].event_name, "PutObject");
    }

    #[test]
    fn each_event_comes_with_its_principals_hashes() {
        let text = r#"{"Records":[
            {"eventTime":"2024-01-01T00:00:00Z","eventSource":"s3.amazonaws.com","eventName":"GetObject","eventID":"a",
             "userIdentity":{"type":"IAMUser","accountId":"111122223333","userName":"alice"}},
            {"eventTime":"2024-01-01T00:00:01Z","eventSource":"s3.amazonaws.com","eventName":"GetObject","eventID":"b",
             "userIdentity":{"type":"IAMUser","accountId":"111122223333","userName":"bob"}},
            {"eventTime":"2024-01-01T00:00:02Z","eventSource":"s3.amazonaws.com","eventName":"GetObject","eventID":"c",
             "recipientAccountId":"111122223333"},
            {"eventTime":"2024-01-01T00:00:03Z","eventSource":"s3.amazonaws.com","eventName":"GetObject","eventID":"d",
             "userIdentity":{"type":"IAMUser","accountId":"111122223333","userName":"alice"}}]}"#;
        let f = decode("f.json", text.as_bytes());
        assert_eq!(f.events.len(), 4);
        for event in &f.events {
            // Set by the decoder, and what they would be if taken from the key.
            let hashes = event.principal_hashes;
            assert_eq!(hashes, Some(principal::PrincipalHashes::of(&event.principal.key)));
        }
        assert_ne!(f.events[0].partition_hash(), f.events[1].partition_hash());
        assert_eq!(f.events[0].principal_hashes(), f.events[3].principal_hashes());
    }

    #[test]
    fn a_bad_record_is_skipped_with_its_index() {
        let text = r#"{"Records":[7,{"eventSource":"x","eventName":"y"},
            {"eventTime":"2024-01-01T00:00:00Z","eventSource":"s","eventName":"n"}],"other":1}"#;
        let f = decode("f.json", text.as_bytes());
        assert_eq!(f.events.len(), 1);
        assert_eq!(
            f.skipped,
            vec![
                SkippedRecord {
                    index: 0,
                    reason: RecordSkip::NotAnObject
                },
                SkippedRecord {
                    index: 1,
                    reason: RecordSkip::MissingEventTime
                },
            ]
        );
    }

    #[test]
    fn truncated_json_keeps_the_records_before_the_cut() {
        let cut = &TWO[..TWO.len() - 40];
        let f = decode("f.json", cut.as_bytes());
        assert_eq!(f.events.len(), 1);
        let err = f.error.expect("a truncated file is an error");
        assert_eq!(err.reason(), "invalid_json");
        assert!(err.to_string().contains("after 1 records"), "{err}");
    }

    #[test]
    fn truncated_gzip_keeps_the_records_closed_before_the_cut() {
        let many: String = format!(
            r#"{{"Records":[{}]}}"#,
            (0..200)
                .map(|i| format!(
                    r#"{{"eventTime":"2024-01-01T00:00:00Z","eventSource":"s3.amazonaws.com","eventName":"GetObject","eventID":"e{i}","requestParameters":{{"key":"{:x}"}}}}"#,
                    xxhash_rust::xxh3::xxh3_64(&(i as u32).to_le_bytes())
                ))
                .collect::<Vec<_>>()
                .join(",")
        );
        let gz = gzip(many.as_bytes());
        for cut in [gz.len() / 2, gz.len() / 3, gz.len() - 9] {
            let f = decode("f.json.gz", &gz[..cut]);
            let err = f.error.expect("a cut file is reported");
            assert_eq!(err.reason(), "truncated_gzip", "cut at {cut}: {err}");
            assert!(
                !f.events.is_empty(),
                "cut at {cut}: records before the cut are kept"
            );
            assert!(f.events.len() < 200 || cut == gz.len() - 9);
            // Kept records are whole and in order; none is made up from a cut one.
            for (i, e) in f.events.iter().enumerate() {
                assert_eq!(e.event_id, format!("e{i}"));
            }
            assert!(
                err.to_string().contains(&format!("{} records", f.events.len())),
                "{err}"
            );
        }
        // A cut JSON-lines file keeps the lines ended before the cut.
        let lines: String = (0..100)
            .map(|i| format!("{{\"eventTime\":\"2024-01-01T00:00:00Z\",\"eventSource\":\"s\",\"eventName\":\"n\",\"eventID\":\"l{i}\"}}\n"))
            .collect();
        let gz = gzip(lines.as_bytes());
        let f = decode("f.jsonl.gz", &gz[..gz.len() - 12]);
        assert_eq!(f.error.unwrap().reason(), "truncated_gzip");
        assert!(
            f.skipped.is_empty(),
            "the cut line is not a record: {:?}",
            f.skipped
        );
        assert!(!f.events.is_empty());
        // Damage that is not a cut keeps nothing.
        let mut flipped = gzip(many.as_bytes());
        let at = flipped.len() / 2;
        flipped[at] ^= 0x55;
        let f = decode("f.json.gz", &flipped);
        assert_ne!(f.error.as_ref().map(FileError::reason), Some("truncated_gzip"));
    }

    #[test]
    fn records_far_from_the_delivery_time_are_skipped() {
        let name = "AWSLogs/1/CloudTrail/us-east-1/2024/01/01/1_CloudTrail_us-east-1_20240101T0005Z_x.json";
        let text = r#"{"Records":[
            {"eventTime":"2024-01-01T00:00:00Z","eventSource":"s","eventName":"a"},
            {"eventTime":"9999-12-31T23:59:59Z","eventSource":"s","eventName":"b"},
            {"eventTime":"1970-01-01T00:00:00Z","eventSource":"s","eventName":"c"},
            {"eventTime":"2023-12-31T01:00:00Z","eventSource":"s","eventName":"d"}]}"#;
        let f = decode(name, text.as_bytes());
        let names: Vec<&str> = f.events.iter().map(|e| e.event_name.as_str()).collect();
        assert_eq!(names, ["a", "d"]);
        assert_eq!(
            f.skipped.iter().map(|s| (s.index, s.reason)).collect::<Vec<_>>(),
            [
                (1, RecordSkip::EventTimeOutOfRange),
                (2, RecordSkip::EventTimeOutOfRange)
            ]
        );
        // No delivery time in the name: only times ahead of the wall clock are out of range.
        let f = decode("loose.json", text.as_bytes());
        assert_eq!(f.events.len(), 3);
        assert_eq!(f.skipped.len(), 1);
        // Turned off, every time is taken.
        let f = Decoder::default()
            .with_event_time_skew(0)
            .decode(&Arc::from(name), text.as_bytes());
        assert_eq!(f.events.len(), 4);
        assert_eq!(delivery_time(name), Some(1_704_067_500));
        assert_eq!(
            delivery_time("1_CloudTrail_us-east-1_2024x101T0005Z_x.json"),
            None
        );
    }

    #[test]
    fn the_delivery_time_is_read_from_cloudtrail_names() {
        let name = "111122223333_CloudTrail_us-east-1_20240501T1035Z_abcDEF123.json.gz";
        assert_eq!(
            delivery_time(name),
            Some(1_714_521_600 + 10 * 3600 + 35 * 60 /* 2024-05-01T10:35Z */)
        );
        assert_eq!(delivery_time("events.json.gz"), None);
        assert_eq!(delivery_time("a_b_c_20241301T1035Z_x.json.gz"), None);
    }

    #[test]
    fn every_gzip_member_is_inflated_and_the_decoder_is_reused() {
        let (head, tail) = TWO.split_at(TWO.len() / 2);
        let mut two_members = gzip(head.as_bytes());
        two_members.extend(gzip(tail.as_bytes()));
        let mut decoder = Decoder::default();
        for _ in 0..3 {
            let f = decoder.decode(&Arc::from("f.json.gz"), &two_members);
            assert!(f.error.is_none(), "{:?}", f.error);
            assert_eq!(f.events.len(), 2);
        }
        // After a file that fails, the next one still decodes.
        let mut trailing = gzip(TWO.as_bytes());
        trailing.extend_from_slice(b"not gzip");
        let f = decoder.decode(&Arc::from("f.json.gz"), &trailing);
        assert_eq!(f.error.unwrap().reason(), "corrupt_gzip");
        assert_eq!(
            decoder.decode(&Arc::from("f.json.gz"), &two_members).events.len(),
            2
        );
    }

    #[test]
    fn garbage_after_the_gzip_magic_is_a_gzip_error() {
        let f = decode("f.json.gz", &[0x1f, 0x8b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(f.error.unwrap().reason(), "corrupt_gzip");
    }

    #[test]
    fn inflating_past_the_limit_is_refused() {
        let big = gzip(&vec![b' '; 10_000]);
        let f = Decoder::new(DecodeLimits {
            max_inflated_bytes: 1000,
        })
        .decode(&Arc::from("f.gz"), &big);
        assert_eq!(f.error.unwrap().reason(), "too_large");
    }

    #[test]
    fn digests_are_skipped_by_key_and_by_content() {
        let by_key = decode(
            "AWSLogs/1/CloudTrail-Digest/us-east-1/2024/01/01/x.json.gz",
            b"junk",
        );
        assert_eq!(by_key.skip, Some(FileSkip::Digest));
        let by_content = decode(
            "x.json",
            br#"{"awsAccountId":"1","digestStartTime":"t","logFiles":[]}"#,
        );
        assert_eq!(by_content.skip, Some(FileSkip::Digest));
        assert!(by_content.error.is_none());
        let insight = decode("AWSLogs/1/CloudTrail-Insight/us-east-1/2024/01/01/x.json.gz", b"");
        assert_eq!(insight.skip, Some(FileSkip::Insight));
    }

    #[test]
    fn json_without_records_is_not_cloudtrail() {
        for text in [
            r#"{"Type":"Notification"}"#,
            "[1,2]",
            "42",
            r#"{"Records":"nope"}"#,
        ] {
            let f = decode("x.json", text.as_bytes());
            assert!(f.error.is_some(), "{text}");
        }
    }

    #[test]
    fn records_null_is_an_empty_file() {
        let f = decode("x.json", br#"{"Records":null}"#);
        assert!(f.error.is_none());
        assert!(f.events.is_empty());
    }

    #[test]
    fn json_lines_decode_line_by_line() {
        let text = "{\"eventTime\":\"2024-01-01T00:00:00Z\",\"eventSource\":\"s\",\"eventName\":\"n\"}\n\nnot json\n{\"doc\":1}\n";
        let f = decode("x.jsonl", text.as_bytes());
        assert_eq!(f.events.len(), 1);
        assert_eq!(
            f.skipped[0],
            SkippedRecord {
                index: 3,
                reason: RecordSkip::NotAnObject
            }
        );
        assert_eq!(
            f.skipped[1],
            SkippedRecord {
                index: 4,
                reason: RecordSkip::MissingEventTime
            }
        );
    }

    #[test]
    fn json_lines_without_a_single_record_are_not_cloudtrail() {
        let f = decode(
            "labels.jsonl",
            b"{\"event_id\":\"a\",\"incident\":\"x\"}\n{\"event_id\":\"b\"}\n",
        );
        assert_eq!(f.error.unwrap().reason(), "not_cloudtrail");
        assert!(f.skipped.is_empty());
    }

    #[test]
    fn not_utf8_is_reported() {
        let f = decode("x.json", b"{\"Records\":[\"\xff\"]}");
        assert_eq!(f.error.unwrap().reason(), "not_utf8");
    }

    #[test]
    fn braces_and_escapes_inside_strings_do_not_split_records() {
        let text = r#"{"Records":[{"eventTime":"2025-01-01T00:00:00Z","eventSource":"s","eventName":"n","msg":"{ \" } \\"},
                     {"eventTime":"2025-01-01T00:00:01Z","eventSource":"s","eventName":"m"}]}"#;
        let f = decode("x.json", text.as_bytes());
        assert_eq!(f.events.len(), 2);
    }
}
