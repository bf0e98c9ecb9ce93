//! A JSON scanner that indexes without building values: an object's keys with the raw text of
//! each value, an array's elements as raw texts.
//!
//! In: UTF-8 text (already checked: every slice taken at a structural byte is a `str`). Out: key
//! and value slices borrowed from the text; keys with escapes are unescaped, owned. Every value
//! passed over is checked to be JSON as RFC 8259 and `serde_json` define it (strings closed, no
//! raw control characters, valid escapes, numbers by the grammar, containers balanced with their
//! commas and colons), so a file that `serde_json` refuses is refused here, at the same byte or
//! near it. Skipping uses no recursion, so nesting of any depth is passed over (as `serde_json`
//! passes over ignored values), one bit of memory per level.
//!
//! Why not a parser crate: a CloudTrail record is read for a dozen top-level fields while most of
//! its bytes are nested request and response bodies passed over. `serde_json` passes over them a
//! token at a time through its visitor machinery (the largest cost of a replay); sonic-rs's lazy
//! values measured slower still here. This scanner passes over a nested value sixty-four bytes at
//! a time (the `blocks` module) and reads the fields wanted a byte at a time, string contents
//! sixteen bytes at a time.

use std::borrow::Cow;

mod blocks;

/// Why the text is not JSON, and the byte offset where that was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanError {
    pub offset: usize,
    pub what: &'static str,
}

impl ScanError {
    /// Line and column (both from 1, the column in bytes) of the error in `text`.
    pub fn line_column(&self, text: &str) -> (usize, usize) {
        let before = &text.as_bytes()[..self.offset.min(text.len())];
        let line = memchr::memchr_iter(b'\n', before).count() + 1;
        let column = before.len() - memchr::memrchr(b'\n', before).map_or(0, |at| at + 1) + 1;
        (line, column)
    }
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.what)
    }
}

type Result<T> = std::result::Result<T, ScanError>;

/// A position in a JSON text. The methods that walk a container (`next_key`, `next_element`) are
/// called in turn with the value methods, the caller keeping track of where it is.
pub struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    pub fn new(text: &'a str) -> Self {
        Scanner { text, pos: 0 }
    }

    pub fn offset(&self) -> usize {
        self.pos
    }

    fn error<T>(&self, what: &'static str) -> Result<T> {
        Err(ScanError {
            offset: self.pos,
            what,
        })
    }

    /// The next byte that is not whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        while let Some(&b) = bytes.get(self.pos) {
            match b {
                b' ' | b'\n' | b'\r' | b'\t' => self.pos += 1,
                _ => return Some(b),
            }
        }
        None
    }

    /// Whether the next value opens with `open` (`{` or `[`), consuming it if so.
    pub fn enter(&mut self, open: u8) -> bool {
        let opens = self.peek() == Some(open);
        self.pos += usize::from(opens);
        opens
    }

    /// In an object just entered (`first`) or after a value: the next key, its colon consumed;
    /// `None` at the closing brace, consumed.
    pub fn next_key(&mut self, first: &mut bool) -> Result<Option<Cow<'a, str>>> {
        match self.peek() {
            Some(b'}') => {
                self.pos += 1;
                return Ok(None);
            }
            Some(b',') if !*first => {
                self.pos += 1;
                if self.peek() != Some(b'"') {
                    return self.error("expected a key");
                }
            }
            Some(b'"') if *first => {}
            Some(_) if *first => return self.error("expected a key or '}'"),
            Some(_) => return self.error("expected ',' or '}'"),
            None => return self.error("the text ends inside an object"),
        }
        *first = false;
        let key = self.string_value()?;
        self.colon()?;
        Ok(Some(key))
    }

    /// The entries of an object just entered, through its closing brace.
    pub fn entries(&mut self) -> Result<Vec<(Cow<'a, str>, &'a str)>> {
        // A CloudTrail record has about two dozen top-level keys.
        let mut entries = Vec::with_capacity(24);
        self.entries_into(&mut entries)?;
        Ok(entries)
    }

    /// [`Scanner::entries`], written into `entries` (cleared first), so that a caller indexing
    /// record after record reuses one vector.
    pub fn entries_into(&mut self, entries: &mut Vec<(Cow<'a, str>, &'a str)>) -> Result<()> {
        entries.clear();
        let mut first = true;
        while let Some(key) = self.next_key(&mut first)? {
            entries.push((key, self.value()?));
        }
        Ok(())
    }

    /// In an array just entered (`first`) or after an element: whether an element follows (its
    /// comma consumed); `false` at the closing bracket, consumed.
    pub fn next_element(&mut self, first: &mut bool) -> Result<bool> {
        match self.peek() {
            Some(b']') => {
                self.pos += 1;
                Ok(false)
            }
            Some(b',') if !*first => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) if *first => {
                *first = false;
                Ok(true)
            }
            Some(_) => self.error("expected ',' or ']'"),
            None => self.error("the text ends inside an array"),
        }
    }

    /// Only whitespace is left.
    pub fn end(&mut self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => self.error("trailing characters"),
        }
    }

    /// Passes over one value, checking it, and gives its text.
    pub fn value(&mut self) -> Result<&'a str> {
        let Some(first) = self.peek() else {
            return self.error("expected a value");
        };
        let start = self.pos;
        match first {
            b'{' | b'[' => self.container()?,
            _ => self.scalar(first)?,
        }
        Ok(&self.text[start..self.pos])
    }

    /// A string, number or literal starting with `first`, at the position.
    fn scalar(&mut self, first: u8) -> Result<()> {
        match first {
            b'"' => self.string().map(|_| ()),
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => self.error("expected a value"),
        }
    }

    fn literal(&mut self, word: &'static str) -> Result<()> {
        if self.text.as_bytes()[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            self.error("expected a value")
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<()> {
        let bytes = self.text.as_bytes();
        let digits = |at: &mut usize| {
            let from = *at;
            while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            *at > from
        };
        let mut at = self.pos;
        at += usize::from(bytes.get(at) == Some(&b'-'));
        match bytes.get(at) {
            Some(b'0') => at += 1,
            Some(b'1'..=b'9') => {
                digits(&mut at);
            }
            _ => {
                self.pos = at;
                return self.error("invalid number");
            }
        }
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            if !digits(&mut at) {
                self.pos = at;
                return self.error("invalid number");
            }
        }
        if matches!(bytes.get(at), Some(b'e' | b'E')) {
            at += 1;
            at += usize::from(matches!(bytes.get(at), Some(b'+' | b'-')));
            if !digits(&mut at) {
                self.pos = at;
                return self.error("invalid number");
            }
        }
        self.pos = at;
        Ok(())
    }

    /// A string at the position (its opening quote), as its contents: borrowed when it has no
    /// escape, else unescaped.
    fn string_value(&mut self) -> Result<Cow<'a, str>> {
        let start = self.pos;
        let escaped = self.string()?;
        let raw = &self.text[start..self.pos];
        if !escaped {
            return Ok(Cow::Borrowed(&raw[1..raw.len() - 1]));
        }
        // Checked above; the parser only unescapes.
        serde_json::from_str::<String>(raw)
            .map(Cow::Owned)
            .or_else(|_| self.error("invalid string"))
    }

    /// Passes over a string at the position (its opening quote); says whether it has escapes.
    fn string(&mut self) -> Result<bool> {
        let bytes = self.text.as_bytes();
        self.pos += 1;
        let mut escaped = false;
        loop {
            self.pos += special_offset(&bytes[self.pos..]);
            match bytes.get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(_) => return self.error("control character in a string"),
                None => return self.error("the text ends inside a string"),
            }
        }
    }

    /// An escape at the position (its backslash).
    fn escape(&mut self) -> Result<()> {
        let bytes = self.text.as_bytes();
        self.pos += 1;
        match bytes.get(self.pos) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 1;
                Ok(())
            }
            Some(b'u') => {
                let hex = bytes.get(self.pos + 1..self.pos + 5);
                if hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    self.pos += 5;
                    Ok(())
                } else {
                    self.error("invalid unicode escape")
                }
            }
            Some(_) => self.error("invalid escape"),
            None => self.error("the text ends inside a string"),
        }
    }

    /// Passes over an object or array at the position: sixty-four bytes at a time, and byte by
    /// byte when that finds a fault, to say what it is and where.
    fn container(&mut self) -> Result<()> {
        match blocks::container_end(self.text, self.pos) {
            Some(end) => {
                self.pos = end;
                Ok(())
            }
            None => self.container_bytewise(),
        }
    }

    /// Passes over an object or array at the position a byte at a time, without recursion: the
    /// open containers are bits of a stack (1: object).
    fn container_bytewise(&mut self) -> Result<()> {
        let mut open = Nesting::default();
        let mut depth = 0usize;
        // Whether the next token opens a value (true) or follows one (false).
        let mut want_value = true;
        loop {
            if want_value {
                let Some(b) = self.peek() else {
                    return self.error("the text ends inside a container");
                };
                match b {
                    b'{' | b'[' => {
                        let object = b == b'{';
                        open.set(depth, object);
                        depth += 1;
                        self.pos += 1;
                        let close = if object { b'}' } else { b']' };
                        match self.peek() {
                            Some(b) if b == close => {
                                self.pos += 1;
                                depth -= 1;
                                want_value = false;
                            }
                            _ if object => self.key()?,
                            _ => {}
                        }
                        if depth == 0 {
                            return Ok(());
                        }
                    }
                    _ => {
                        self.scalar(b)?;
                        want_value = false;
                    }
                }
                continue;
            }
            let in_object = open.get(depth - 1);
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    if in_object {
                        self.key()?;
                    }
                    want_value = true;
                }
                Some(b'}') if in_object => {
                    self.pos += 1;
                    depth -= 1;
                }
                Some(b']') if !in_object => {
                    self.pos += 1;
                    depth -= 1;
                }
                Some(_) if in_object => return self.error("expected ',' or '}'"),
                Some(_) => return self.error("expected ',' or ']'"),
                None => return self.error("the text ends inside a container"),
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }

    /// A key and its colon, at the key's opening quote (or where one is wanted).
    fn key(&mut self) -> Result<()> {
        if self.peek() != Some(b'"') {
            return self.error("expected a key");
        }
        self.string()?;
        self.colon()
    }

    fn colon(&mut self) -> Result<()> {
        if self.peek() != Some(b':') {
            return self.error("expected ':'");
        }
        self.pos += 1;
        Ok(())
    }
}

/// Which open containers are objects, by depth: the first 256 levels inline, deeper ones (never
/// in CloudTrail, possible in hostile input) on the heap.
#[derive(Default)]
struct Nesting {
    inline: [u64; 4],
    deeper: Vec<u64>,
}

impl Nesting {
    fn set(&mut self, depth: usize, object: bool) {
        let (word, bit) = (depth / 64, depth % 64);
        let words = match word.checked_sub(self.inline.len()) {
            None => &mut self.inline[word],
            Some(beyond) => {
                if self.deeper.len() <= beyond {
                    self.deeper.resize(beyond + 1, 0);
                }
                &mut self.deeper[beyond]
            }
        };
        *words = (*words & !(1 << bit)) | (u64::from(object) << bit);
    }

    fn get(&self, depth: usize) -> bool {
        let (word, bit) = (depth / 64, depth % 64);
        let words = match word.checked_sub(self.inline.len()) {
            None => self.inline[word],
            Some(beyond) => self.deeper[beyond],
        };
        words >> bit & 1 == 1
    }
}

/// The entries of the object that is the whole of `text` (whitespace around it aside); `None`
/// when it is not one.
pub fn object_entries(text: &str) -> Option<Vec<(Cow<'_, str>, &str)>> {
    let mut scan = Scanner::new(text);
    if !scan.enter(b'{') {
        return None;
    }
    let entries = scan.entries().ok()?;
    scan.end().ok()?;
    Some(entries)
}

/// The elements of the array that is the whole of `text`; `None` when it is not one.
pub fn array_elements(text: &str) -> Option<Vec<&str>> {
    let mut scan = Scanner::new(text);
    if !scan.enter(b'[') {
        return None;
    }
    let mut elements = Vec::new();
    let mut first = true;
    while scan.next_element(&mut first).ok()? {
        elements.push(scan.value().ok()?);
    }
    scan.end().ok()?;
    Some(elements)
}

/// The offset in `bytes` of the first quote, backslash or control character (`bytes.len()` when
/// none): where a string's plain run ends.
///
/// Sixteen bytes a step, the last step overlapping the one before it; a run shorter than sixteen
/// bytes is read as two overlapping words. Most strings in a record are that short, and reading
/// their tail a byte at a time cost more than the whole steps before it.
#[inline]
pub(crate) fn special_offset(bytes: &[u8]) -> usize {
    let len = bytes.len();
    #[cfg(target_arch = "x86_64")]
    if len >= 16 {
        use std::arch::x86_64::_mm_loadu_si128;
        // SAFETY: `first_special_by_steps` asks only for steps with `at + 16 <= len`, so the
        // load reads inside `bytes`.
        return first_special_by_steps(len, |at| unsafe {
            special_mask(_mm_loadu_si128(bytes.as_ptr().add(at).cast()))
        });
    }
    if len >= 8 {
        let word = |at: usize| {
            let bytes: [u8; 8] = bytes[at..at + 8].try_into().expect("eight bytes");
            special_bytes(u64::from_le_bytes(bytes))
        };
        let (first, last) = (word(0), word(len - 8));
        return if first != 0 {
            first.trailing_zeros() as usize / 8
        } else if last != 0 {
            len - 8 + last.trailing_zeros() as usize / 8
        } else {
            len
        };
    }
    bytes
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .unwrap_or(len)
}

/// The offset of the first special among `len` (at least 16) bytes read sixteen at a time by
/// `step`, which gives the [`special_mask`] of the sixteen at an offset; `len` when none. The last
/// step overlaps the one before, so every step is whole: `at + 16 <= len` at each.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn first_special_by_steps(len: usize, mut step: impl FnMut(usize) -> u32) -> usize {
    debug_assert!(len >= 16);
    let mut at = 0;
    while at + 16 < len {
        let mask = step(at);
        if mask != 0 {
            return at + mask.trailing_zeros() as usize;
        }
        at += 16;
    }
    // The bytes this step shares with the one before have no special among them.
    let last = len - 16;
    let mask = step(last);
    if mask == 0 {
        len
    } else {
        last + mask.trailing_zeros() as usize
    }
}

/// A bit for each of the 16 bytes of `chunk` that is a quote, backslash or control character.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn special_mask(chunk: std::arch::x86_64::__m128i) -> u32 {
    // SSE2 is part of x86-64.
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is there on every x86-64 processor.
    unsafe {
        let special = _mm_or_si128(
            _mm_or_si128(
                _mm_cmpeq_epi8(chunk, _mm_set1_epi8(b'"' as i8)),
                _mm_cmpeq_epi8(chunk, _mm_set1_epi8(b'\\' as i8)),
            ),
            // Unsigned `chunk <= 0x1f`: the smaller of the two is `chunk` itself.
            _mm_cmpeq_epi8(_mm_min_epu8(chunk, _mm_set1_epi8(0x1f)), chunk),
        );
        _mm_movemask_epi8(special) as u32
    }
}

/// The high bit of each byte of `word` (little-endian) that may be a quote, backslash or control
/// character. The lowest set bit is exact: a false one only ever follows a true one, where the
/// borrow of a subtraction carried on into the next byte.
#[inline]
pub(crate) fn special_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    below(0x20) | zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Scans `text` as one value and says whether it is JSON.
    fn accepts(text: &str) -> bool {
        let mut scan = Scanner::new(text);
        scan.value().is_ok() && scan.end().is_ok()
    }

    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    }

    #[test]
    fn values_are_passed_over_whole() {
        let text = r#" {"a" : [1, -2.5e+3, "x\"y\\", {"b":null}], "c":true, "é":"ü\u00e9"} , 7"#;
        let mut scan = Scanner::new(text);
        assert_eq!(
            scan.value().unwrap(),
            r#"{"a" : [1, -2.5e+3, "x\"y\\", {"b":null}], "c":true, "é":"ü\u00e9"}"#
        );
        assert_eq!(scan.end().unwrap_err().what, "trailing characters");
    }

    #[test]
    fn entries_borrow_plain_keys_and_unescape_the_others() {
        let entries = object_entries(r#"{"eventName":"GetObject","k\u0065y":{"n":[1,2]},"e":""}"#).unwrap();
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["eventName", "key", "e"]);
        assert!(matches!(entries[0].0, Cow::Borrowed(_)));
        assert!(matches!(entries[1].0, Cow::Owned(_)));
        let values: Vec<&str> = entries.iter().map(|(_, v)| *v).collect();
        assert_eq!(values, [r#""GetObject""#, r#"{"n":[1,2]}"#, r#""""#]);
        assert_eq!(object_entries("{}").unwrap().len(), 0);
        assert_eq!(object_entries("[1]"), None);
        assert_eq!(
            array_elements(r#"[ 1 ,{"a":[]}, "x" ]"#).unwrap(),
            ["1", r#"{"a":[]}"#, r#""x""#]
        );
        assert_eq!(array_elements("[]").unwrap().len(), 0);
    }

    #[test]
    fn what_serde_json_refuses_is_refused() {
        for bad in [
            "",
            "{",
            "[",
            "}",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "[1,]",
            "[1 2]",
            "{\"a\":1 \"b\":2}",
            "{1:2}",
            "\"abc",
            "\"a\u{1}b\"",
            "\"\\x\"",
            "\"\\u12g4\"",
            "01",
            "-",
            "1.",
            "1e",
            "1e+",
            ".5",
            "+1",
            "tru",
            "nul",
            "[true false]",
            "{\"a\" 1}",
            "[}",
            "{]",
            "[[]",
            "\"\\",
        ] {
            assert!(!accepts(bad), "accepted {bad:?}");
            assert!(!serde_accepts(bad), "serde_json accepts {bad:?}");
        }
    }

    #[test]
    fn deep_nesting_is_passed_over_without_recursion() {
        for depth in [1, 63, 64, 65, 255, 256, 257, 100_000] {
            let open: String = (0..depth)
                .map(|i| if i % 3 == 0 { "{\"k\":" } else { "[" })
                .collect();
            let close: String = (0..depth)
                .rev()
                .map(|i| if i % 3 == 0 { "}" } else { "]" })
                .collect();
            let text = format!("{open}1{close}");
            assert!(accepts(&text), "depth {depth}");
            // One closing bracket of the wrong kind, anywhere, is refused.
            let swapped = if close.starts_with('}') { "]" } else { "}" };
            let wrong = format!("{open}1{swapped}{}", &close[1..]);
            assert!(!accepts(&wrong), "depth {depth}");
        }
        // Half a million open containers: an error, not a stack overflow.
        let deep = "[{\"a\":".repeat(500_000);
        assert!(!accepts(&deep));
    }

    /// Passes over the container at the start of `text` a byte at a time.
    fn bytewise_end(text: &str) -> Option<usize> {
        let mut scan = Scanner::new(text);
        scan.container_bytewise().ok().map(|()| scan.pos)
    }

    #[test]
    fn blocks_stop_where_the_byte_walk_stops() {
        // Faults after the container's close are not the container's, in its last block or later.
        for text in [
            r#"{"a":[1,{"b":"x\"y"}],"c":-0.5e3} "\q" "#,
            "[1] \"\u{1}\"",
            "[\"a\\u00e9\",true,null,false,{}] ]]]",
            "{\"k\":\"v\"}",
        ] {
            assert_eq!(blocks::container_end(text, 0), bytewise_end(text), "{text:?}");
            for end in blocks::container_end_every_way(text, 0) {
                assert_eq!(end, bytewise_end(text), "{text:?}");
            }
            assert!(bytewise_end(text).is_some(), "{text:?}");
        }
        // Containers and strings that cross blocks.
        let long = format!(
            r#"{{"{}":[{}"\\\"{}"],"z":{{}}}}"#,
            "k".repeat(70),
            "1,".repeat(40),
            "é".repeat(50)
        );
        for start in 0..3 {
            let text = format!("{}{long}", " ".repeat(start));
            assert_eq!(blocks::container_end(&text, start), Some(text.len()));
            for end in blocks::container_end_every_way(&text, start) {
                assert_eq!(end, Some(text.len()));
            }
            assert!(accepts(&text));
        }
    }

    #[test]
    fn errors_say_where() {
        let text = "{\"a\":1,\n \"b\":[1,\n  2,,3]}";
        let mut scan = Scanner::new(text);
        let err = scan.value().unwrap_err();
        assert_eq!(err.line_column(text), (3, 5));
        assert_eq!(err.what, "expected a value");
    }

    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            "(.|\n|\"|\\\\){0,40}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(5, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
                prop::collection::vec(("(.|\"){0,12}", inner), 0..8)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_json_is_passed_over_whole(value in any_json(), pretty in any::<bool>()) {
            let text = match pretty {
                true => serde_json::to_string_pretty(&value).unwrap(),
                false => serde_json::to_string(&value).unwrap(),
            };
            let padded = format!(" {text}\n");
            let mut scan = Scanner::new(&padded);
            prop_assert_eq!(scan.value().unwrap(), text.as_str());
            prop_assert!(scan.end().is_ok());
            if let serde_json::Value::Object(map) = &value {
                let compact = serde_json::to_string(&value).unwrap();
                let entries = object_entries(&compact).unwrap();
                prop_assert_eq!(entries.len(), map.len());
                for (key, raw) in entries {
                    prop_assert_eq!(serde_json::to_string(&map[key.as_ref()]).unwrap(), raw);
                }
            }
        }

        #[test]
        fn damaged_json_is_refused_as_serde_json_refuses_it(
            value in any_json(),
            cut in any::<prop::sample::Index>(),
            byte in prop::sample::select(vec![b'"', b'\\', b',', b':', b'{', b'}', b'[', b']', b'1', b'-', b'e', b' ', b'\n', 0x01, b'u']),
            replace in any::<bool>(),
        ) {
            let mut bytes = serde_json::to_string(&value).unwrap().into_bytes();
            let at = cut.index(bytes.len() + 1);
            if replace && at < bytes.len() {
                // Only an ASCII byte is replaced, so the text stays UTF-8.
                if bytes[at].is_ascii() {
                    bytes[at] = byte;
                }
            } else {
                bytes.insert(at, byte);
            }
            let Ok(text) = String::from_utf8(bytes) else { return Ok(()) };
            prop_assert_eq!(accepts(&text), serde_accepts(&text), "{:?}", text);
            if text.starts_with(['{', '[']) {
                prop_assert_eq!(blocks::container_end(&text, 0), bytewise_end(&text), "{:?}", text);
                for end in blocks::container_end_every_way(&text, 0) {
                    prop_assert_eq!(end, bytewise_end(&text), "{:?}", text);
                }
            }
        }

        #[test]
        fn plain_runs_end_at_the_first_special_byte(
            bytes in prop::collection::vec(
                // Mostly plain text, so that runs of every length up to the first special occur.
                prop_oneof![30 => (0x23u8..=0xff).prop_filter("plain", |&b| b != b'\\'), 1 => any::<u8>()],
                0..80,
            ),
        ) {
            let expected = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(bytes.len());
            prop_assert_eq!(special_offset(&bytes), expected);
        }
    }
}
