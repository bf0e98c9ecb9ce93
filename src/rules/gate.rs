//! Which rules a record can possibly match, from a few fields read once per record.
//!
//! In: the parsed Sigma rules. Out: a [`GateIndex`] that, given a record, returns the rules worth
//! evaluating. Most CloudTrail rules name the call they watch (`eventName: StopLogging`), so for
//! a typical record only one or two of the shipped rules are candidates and the rest are never
//! evaluated.
//!
//! Each rule gets at most one *gate*: a field that must equal or contain one of a few literals,
//! or must be present, on every record the rule matches. It is derived from the rule's condition:
//!
//! - a selection (a mapping) requires each of its plain-equality items (`field: value`, no
//!   modifier, no wildcard), that a field matched with `contains`, `startswith` or `endswith`
//!   contains one of its literals, and each `field|exists: true`;
//! - `a and b` requires what either requires; `a or b`, `1 of x*` and a list of conditions
//!   require only what every alternative requires on the same field (values united);
//! - `not a`, keyword searches and everything else require nothing.
//!
//! A candidate's other requirements are then looked for in the JSON text of the top-level key
//! they are (or are under), when it has no escape and is all ASCII, so that a record lacking them
//! is not handed to the evaluator: a literal, the last key of a nested path that must be present,
//! and for `field: true`, what the evaluator reads as true.
//!
//! A rule with no gate is evaluated on every record. The index over-approximates: it may name a
//! rule that then does not match, never omit one that would (the values compare ASCII
//! case-insensitively, as Sigma's plain strings do; a field that is not a plain ASCII string lets
//! every rule gated on it through, since the evaluator lower-cases beyond ASCII, KELVIN SIGN to
//! `k`; a literal beyond ASCII gives no gate). `tests/rules.rs` checks it against the evaluator run on
//! every rule.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use memchr::memmem::Finder;
use rustc_hash::FxHashMap;

use rsigma_eval::{Event, EventValue};

use crate::generations::Generations;
use crate::view::RecordView;
use rsigma_parser::{
    ConditionExpr, Detection, DetectionItem, Detections, Modifier, Quantifier, SelectorPattern, SigmaRule,
    SigmaValue,
};

/// What a rule requires of one field (values and needles lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Requirement {
    /// Only that it is present.
    Present,
    /// That it is present and reads as true to the evaluator: `true`, or a string `true`, `1` or
    /// `yes` in any case (or an array holding one).
    TrueLike,
    /// That it equals one of these.
    OneOf(BTreeSet<String>),
    /// That it contains one of these.
    ContainsAny(BTreeSet<String>),
}

use Requirement::{ContainsAny, OneOf, Present, TrueLike};

/// Requirements that must all hold, by field.
type Requirements = BTreeMap<String, Requirement>;

/// Adds `req` on `field` to `reqs`: both must hold, so value sets intersect, and otherwise the
/// stronger of the two is kept (either alone is still necessary).
fn require(reqs: &mut Requirements, field: &str, req: Requirement) {
    let Some(have) = reqs.get_mut(field) else {
        reqs.insert(field.to_owned(), req);
        return;
    };
    *have = match (std::mem::replace(have, Present), req) {
        (OneOf(a), OneOf(b)) => OneOf(a.intersection(&b).cloned().collect()),
        (kept @ OneOf(_), _) | (_, kept @ OneOf(_)) => kept,
        (kept @ ContainsAny(_), _) | (_, kept @ ContainsAny(_)) => kept,
        (TrueLike, _) | (_, TrueLike) => TrueLike,
        (Present, Present) => Present,
    };
}

/// What holds when either of two requirements does: a value equal to a literal also contains it.
fn unite(a: Requirement, b: &Requirement) -> Requirement {
    match (a, b) {
        (OneOf(a), OneOf(b)) => OneOf(a.union(b).cloned().collect()),
        (OneOf(a) | ContainsAny(a), OneOf(b) | ContainsAny(b)) => ContainsAny(a.union(b).cloned().collect()),
        (TrueLike, TrueLike) => TrueLike,
        _ => Present,
    }
}

/// Requirements every alternative shares: fields all of them require, requirements united.
fn either(alternatives: Vec<Requirements>) -> Requirements {
    let mut alternatives = alternatives.into_iter();
    let Some(mut common) = alternatives.next() else {
        return Requirements::new();
    };
    for alt in alternatives {
        common = common
            .into_iter()
            .filter_map(|(field, req)| Some((field.clone(), unite(req, alt.get(&field)?))))
            .collect();
    }
    common
}

/// The literal of a plain ASCII string value with no wildcard, lower-cased. (The evaluator
/// lower-cases beyond ASCII, which ASCII lower-casing cannot stand for.)
fn literal(value: &SigmaValue) -> Option<String> {
    match value {
        SigmaValue::String(s) if !s.contains_wildcards() => s
            .as_plain()
            .filter(|p| p.is_ascii())
            .map(|p| p.to_ascii_lowercase()),
        _ => None,
    }
}

fn item_requirement(item: &DetectionItem) -> Option<(&str, Requirement)> {
    let field = item.field.name.as_deref()?;
    let literals = || -> Option<BTreeSet<String>> {
        let values: Option<BTreeSet<String>> = item.values.iter().map(literal).collect();
        values.filter(|v| !v.is_empty())
    };
    let modifiers = item.field.modifiers.as_slice();
    if modifiers.is_empty() {
        // Equal to `true`, or to a number: no literal to look for, but an absent field equals
        // neither.
        let all = |f: fn(&SigmaValue) -> bool| !item.values.is_empty() && item.values.iter().all(f);
        let true_like = all(|v| matches!(v, SigmaValue::Bool(true)));
        let numeric = all(|v| matches!(v, SigmaValue::Integer(_) | SigmaValue::Float(_)));
        return literals().map(|v| (field, OneOf(v))).or_else(|| {
            if true_like {
                Some((field, TrueLike))
            } else {
                numeric.then_some((field, Present))
            }
        });
    }
    // String matchers: `contains`, `startswith` or `endswith` (of every needle with `all`, in
    // any case with `cased`).
    let string_matchers = modifiers.iter().all(|m| {
        matches!(
            m,
            Modifier::Contains | Modifier::StartsWith | Modifier::EndsWith | Modifier::All | Modifier::Cased
        )
    });
    // A value that starts or ends with a needle contains it, so it contains one of them at least.
    let contains = string_matchers
        && modifiers
            .iter()
            .any(|m| matches!(m, Modifier::Contains | Modifier::StartsWith | Modifier::EndsWith));
    if let Some(needles) = literals().filter(|_| contains) {
        return Some((field, ContainsAny(needles)));
    }
    let exists_true = modifiers == [Modifier::Exists] && item.values == [SigmaValue::Bool(true)];
    // No absent field satisfies a string matcher: the field must at least be there.
    let positive = string_matchers
        && !item.values.is_empty()
        && item
            .values
            .iter()
            .all(|v| matches!(v, SigmaValue::String(s) if !s.original.is_empty()));
    (exists_true || positive).then_some((field, Present))
}

fn detection_requirements(detection: &Detection) -> Requirements {
    match detection {
        Detection::AllOf(items) => {
            let mut reqs = Requirements::new();
            for (field, req) in items.iter().filter_map(item_requirement) {
                require(&mut reqs, field, req);
            }
            reqs
        }
        Detection::AnyOf(alternatives) if !alternatives.is_empty() => {
            either(alternatives.iter().map(detection_requirements).collect())
        }
        _ => Requirements::new(),
    }
}

/// Whether a detection name matches a selector pattern (`selection_*`, `them`).
fn selects(pattern: &SelectorPattern, name: &str) -> bool {
    match pattern {
        SelectorPattern::Them => !name.starts_with('_'),
        SelectorPattern::Pattern(p) => glob(p.as_bytes(), name.as_bytes()),
    }
}

fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => glob(rest, name) || (!name.is_empty() && glob(pattern, &name[1..])),
        (Some((b'?', rest)), Some((_, tail))) => glob(rest, tail),
        (Some((p, rest)), Some((n, tail))) => p == n && glob(rest, tail),
        _ => false,
    }
}

fn condition_requirements(expr: &ConditionExpr, detections: &Detections) -> Requirements {
    match expr {
        ConditionExpr::Identifier(name) => detections
            .named
            .get(name)
            .map(detection_requirements)
            .unwrap_or_default(),
        ConditionExpr::And(parts) => {
            let mut reqs = Requirements::new();
            for part in parts {
                for (field, req) in condition_requirements(part, detections) {
                    require(&mut reqs, &field, req);
                }
            }
            reqs
        }
        ConditionExpr::Or(parts) => either(
            parts
                .iter()
                .map(|p| condition_requirements(p, detections))
                .collect(),
        ),
        ConditionExpr::Not(_) => Requirements::new(),
        ConditionExpr::Selector { quantifier, pattern } => {
            let chosen: Vec<Requirements> = detections
                .named
                .iter()
                .filter(|(name, _)| selects(pattern, name))
                .map(|(_, d)| detection_requirements(d))
                .collect();
            match quantifier {
                _ if chosen.is_empty() => Requirements::new(),
                Quantifier::All => {
                    let mut reqs = Requirements::new();
                    for (field, req) in chosen.into_iter().flatten() {
                        require(&mut reqs, &field, req);
                    }
                    reqs
                }
                Quantifier::Any | Quantifier::Count(1) => either(chosen),
                // `N of` with N > 1 (or 0): an alternative may skip any one of them.
                Quantifier::Count(_) => Requirements::new(),
            }
        }
    }
}

/// Everything every match of `rule` requires, by field.
fn requirements(rule: &SigmaRule) -> Requirements {
    either(
        rule.detection
            .conditions
            .iter()
            .map(|c| condition_requirements(c, &rule.detection))
            .collect(),
    )
}

/// Calls are the most selective and the cheapest to read; then services; then any other
/// top-level field; nested fields cost a parse of their parent per record.
fn rank(field: &str, req: &Requirement) -> u32 {
    let by_field = match field {
        "eventName" => 0,
        "eventSource" => 1,
        f if !f.contains('.') => 2,
        _ => 10,
    };
    by_field
        + match req {
            OneOf(_) => 0,
            ContainsAny(_) => 3,
            Present | TrueLike => 4,
        }
}

/// The gate of one rule, its single most selective requirement (`None` when it has none), and
/// the rest of its requirements.
fn gate_and_rest(rule: &SigmaRule) -> (Option<(String, Requirement)>, Requirements) {
    let mut reqs = requirements(rule);
    let gate = reqs
        .iter()
        .min_by_key(|(field, req)| rank(field, req))
        .map(|(field, _)| field.clone());
    (gate.and_then(|field| reqs.remove_entry(&field)), reqs)
}

#[cfg(test)]
fn gate_of(rule: &SigmaRule) -> Option<(String, Requirement)> {
    gate_and_rest(rule).0
}

/// What a candidate rule further requires of fields beyond its gate (`rest`): for each, the
/// top-level key the field is (or is under) and texts of which the key's JSON (without escapes,
/// lower-cased) must contain one: the field's literals, or for a nested field that need only be
/// present, the last key of its path. Checked before the evaluator parses the parent or reads
/// the field: a rule gated on `eventSource: lambda.amazonaws.com` is not evaluated on a Lambda
/// record whose `eventName` lacks the call the rule watches.
fn prechecks_of(rest: Requirements) -> Vec<Precheck> {
    let mut prechecks = Vec::new();
    for (field, req) in rest {
        if !field.contains('.') && !matches!(req, OneOf(_) | ContainsAny(_)) {
            continue;
        }
        let key = || vec![field.rsplit('.').next().unwrap_or(&field).to_ascii_lowercase()];
        let mut check = |texts: Vec<String>| {
            let texts = texts.iter().map(|t| Finder::new(t.as_bytes()).into_owned());
            prechecks.push(Precheck::new(&field, texts.collect()));
        };
        match req {
            OneOf(texts) | ContainsAny(texts) => check(texts.into_iter().collect()),
            Present => check(key()),
            TrueLike => {
                check(key());
                // The JSON of what the evaluator reads as true, lower-cased.
                check(["true", "\"1\"", "\"yes\""].map(String::from).to_vec());
            }
        }
    }
    prechecks
}

/// A search of a field's text, or a nested field's parent text, for what the field must hold.
#[derive(Debug)]
struct Precheck {
    /// The field.
    field: String,
    /// The top-level key it is under; `None` for a top-level field, whose own text is searched.
    root: Option<String>,
    texts: Vec<Finder<'static>>,
}

impl Precheck {
    /// For `field`, whose text (or parent's, for a nested field) must contain one of `texts`.
    fn new(field: &str, texts: Vec<Finder<'static>>) -> Precheck {
        Precheck {
            field: field.to_owned(),
            root: field.split_once('.').map(|(root, _)| root.to_owned()),
            texts,
        }
    }

    /// False when `event` cannot satisfy the requirement this stands for.
    fn passes(&self, event: &RecordView<'_>, parent: &mut Folded) -> bool {
        let Some(root) = &self.root else {
            // Only a string is searched: the evaluator may read a number in another form than
            // its JSON text (`1E2` as 100).
            return event
                .top_level_text(&self.field)
                .is_some_and(|text| !text.starts_with('"') || self.found_in(text, parent));
        };
        // (A path that is itself a top-level key, dots and all, is read as such.)
        if event.top_level_text(&self.field).is_some() {
            return true;
        }
        event
            .top_level_text(root)
            .is_some_and(|text| self.found_in(text, parent))
    }

    /// Whether `text` (JSON) may hold one of the texts: it does, lower-cased, or it cannot be
    /// told from the JSON.
    fn found_in(&self, text: &str, folded: &mut Folded) -> bool {
        // An escape hides what it stands for; a character beyond ASCII may lower-case to one of
        // the texts (KELVIN SIGN to `k`) where ASCII lower-casing leaves it be.
        if memchr::memchr(b'\\', text.as_bytes()).is_some() || !text.is_ascii() {
            return true;
        }
        let text = folded.of(text).as_bytes();
        self.texts.iter().any(|t| t.find(text).is_some())
    }
}

/// Rules that a record can match, by a few gate fields.
#[derive(Debug, Default)]
pub struct GateIndex {
    /// Tells indexes apart, for [`GateMemo`].
    id: u64,
    rules: usize,
    /// Rules with no gate.
    always: Vec<usize>,
    fields: Vec<GateField>,
    /// Per rule, what it requires of nested fields beyond its gate (mostly nothing).
    prechecks: Vec<Vec<Precheck>>,
}

#[derive(Debug, Default)]
struct GateField {
    field: String,
    /// Lower-cased value → rules gated on the field equalling it.
    values: FxHashMap<String, Vec<usize>>,
    /// Lower-cased needles, and for each the rules gated on the field containing it (or another
    /// of theirs).
    needles: Vec<(Finder<'static>, Vec<usize>)>,
    /// Rules gated on the field being present.
    present: Vec<usize>,
    /// Rules gated on values or needles, let through when the value is not a plain string.
    valued: Vec<usize>,
    /// For a nested field gated only on literals (values or needles): when the JSON of the
    /// top-level key it is under contains none of them, the nested value is not parsed at all.
    precheck: Option<Precheck>,
    /// Gated on presence alone, at the top level: the value need not be read.
    presence_only: bool,
    /// Gated on needles alone, at the top level: judged afresh for each record, not remembered.
    /// Such a field (a user agent, an error code) is searched for words, and its values run to
    /// thousands (the AWS CLI names each command it runs in its agent): the memo cycled, each
    /// lookup a cache miss or two, while judging is a lower-cased copy on the stack and a search
    /// per needle. One worker's replay of the realistic trail with the shipped rules: 2.19 s of CPU
    /// remembered, 2.12 s judged afresh (medians of 10 interleaved runs; 1.94 s without rules).
    needles_only: bool,
    /// For a nested field, the top-level key it is under.
    root: Option<String>,
    /// Whether that key is `userIdentity`, whose text a decoder may know by a key.
    under_identity: bool,
}

impl GateIndex {
    /// Indexes `rules`, whose positions are the rule numbers returned.
    pub fn new<'r>(rules: impl IntoIterator<Item = &'r SigmaRule>) -> GateIndex {
        static INDEXES: AtomicU64 = AtomicU64::new(1);
        let mut index = GateIndex {
            id: INDEXES.fetch_add(1, Ordering::Relaxed),
            ..GateIndex::default()
        };
        let mut fields: BTreeMap<String, GateField> = BTreeMap::new();
        for (i, rule) in rules.into_iter().enumerate() {
            index.rules = i + 1;
            let (gate, rest) = gate_and_rest(rule);
            index.prechecks.push(prechecks_of(rest));
            let Some((field, req)) = gate else {
                index.always.push(i);
                continue;
            };
            let entry = fields.entry(field.clone()).or_insert_with(|| GateField {
                field,
                ..GateField::default()
            });
            match req {
                Present | TrueLike => entry.present.push(i),
                OneOf(values) => {
                    entry.valued.push(i);
                    for value in values {
                        entry.values.entry(value).or_default().push(i);
                    }
                }
                ContainsAny(needles) => {
                    entry.valued.push(i);
                    for needle in needles {
                        match entry
                            .needles
                            .iter_mut()
                            .find(|(n, _)| n.needle() == needle.as_bytes())
                        {
                            Some((_, rules)) => rules.push(i),
                            None => entry
                                .needles
                                .push((Finder::new(needle.as_bytes()).into_owned(), vec![i])),
                        }
                    }
                }
            }
        }
        index.fields = fields.into_values().collect();
        for gate in &mut index.fields {
            let Some((root, _)) = gate.field.split_once('.') else {
                gate.presence_only = gate.valued.is_empty();
                gate.needles_only =
                    gate.values.is_empty() && gate.present.is_empty() && !gate.needles.is_empty();
                continue;
            };
            gate.root = Some(root.to_owned());
            // The identity's key stands for its text up to its credentials (see
            // `crate::principal::IdentityKey`), so a gate on a credential is judged by the text.
            // Every other field's value is the same in all texts a key stands for: a string
            // lies outside the credentials, and an object holding them matches no literal.
            let leaf = gate.field.rsplit('.').next().unwrap_or_default();
            gate.under_identity =
                root == "userIdentity" && !crate::principal::CREDENTIAL_KEYS.contains(&leaf);
            if gate.present.is_empty() {
                let texts = gate
                    .values
                    .keys()
                    .map(|v| Finder::new(v.as_bytes()).into_owned())
                    .chain(gate.needles.iter().map(|(n, _)| n.clone()))
                    .collect();
                gate.precheck = Some(Precheck::new(&gate.field, texts));
            }
        }
        index
    }

    /// Rules evaluated on every record.
    pub fn ungated(&self) -> usize {
        self.always.len()
    }

    /// Calls `visit` with each rule `event` can match, in ascending order, each once. With a
    /// `memo`, each gate's verdict is remembered by the JSON text it was reached from, so that a
    /// value seen before is neither lower-cased nor searched again; a memo serves one index and
    /// is reset when used with another.
    pub fn candidates(
        &self,
        event: &RecordView<'_>,
        memo: Option<&mut GateMemo>,
        mut visit: impl FnMut(usize),
    ) {
        const STACK_WORDS: usize = 8;
        let words = self.rules.div_ceil(64);
        let mut stack = [0u64; STACK_WORDS];
        let mut heap = Vec::new();
        let mask: &mut [u64] = if words <= STACK_WORDS {
            &mut stack[..words]
        } else {
            heap.resize(words, 0);
            &mut heap
        };
        let mut mark = |rules: &[usize]| {
            for &r in rules {
                mask[r / 64] |= 1 << (r % 64);
            }
        };
        mark(&self.always);
        let mut memo = memo.map(|m| m.serve(self));
        // Lower-casing buffers, made only when a verdict is not remembered.
        let mut scratch = None;
        for (i, gate) in self.fields.iter().enumerate() {
            if gate.presence_only {
                if event.top_level_text(&gate.field).is_some() {
                    mark(&gate.present);
                }
                continue;
            }
            // The verdict depends on the field's text, or for a nested field on its top-level
            // parent's (a top-level key with the dotted path itself, never seen in CloudTrail, is
            // judged afresh).
            let literal = event.top_level_text(&gate.field);
            let (text, rememberable) = match &gate.root {
                Some(root) if literal.is_none() => (event.top_level_text(root), true),
                Some(_) => (literal, false),
                None => (literal, !gate.needles_only),
            };
            let Some(text) = text else { continue };
            let mut judge = || gate.verdict(event, scratch.get_or_insert_with(Scratch::default));
            // Under `userIdentity`, whose text the decoder knows by a key, by the key.
            let identity_key = event.identity_key().filter(|_| gate.under_identity);
            match (memo.as_mut().filter(|_| rememberable), identity_key) {
                (Some(m), Some(key)) => recall(&mut m.by_gate[i].by_identity, key, judge, &mut mark),
                (Some(m), None) => {
                    let digest = m.digest(text);
                    recall(&mut m.by_gate[i].by_text, digest, judge, &mut mark)
                }
                _ => mark(&judge()),
            }
        }
        for (w, &bits) in mask.iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                let rule = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let prechecks = &self.prechecks[rule];
                if prechecks.is_empty() || {
                    let parent = &mut scratch.get_or_insert_with(Scratch::default).parent;
                    prechecks.iter().all(|p| p.passes(event, parent))
                } {
                    visit(rule);
                }
            }
        }
    }
}

impl GateField {
    /// The rules this gate lets through for `event`.
    fn verdict(&self, event: &RecordView<'_>, scratch: &mut Scratch) -> Vec<usize> {
        let mut rules = Vec::new();
        if let Some(precheck) = &self.precheck {
            if !precheck.passes(event, &mut scratch.parent) {
                return rules;
            }
        }
        let Some(value) = event.get_field(&self.field) else {
            return rules;
        };
        rules.extend_from_slice(&self.present);
        match value {
            // The evaluator lower-cases beyond ASCII (KELVIN SIGN to `k`): a value that is not
            // ASCII is left to it, as any other shape is.
            EventValue::Str(s) if !s.is_ascii() => rules.extend_from_slice(&self.valued),
            EventValue::Str(s) => {
                let folded = scratch.value.of(&s);
                if let Some(equal) = self.values.get(folded) {
                    rules.extend_from_slice(equal);
                }
                for (needle, containing) in &self.needles {
                    if needle.find(folded.as_bytes()).is_some() {
                        rules.extend_from_slice(containing);
                    }
                }
            }
            // A null equals and contains no literal; any other shape is left to the evaluator.
            EventValue::Null => {}
            _ => rules.extend_from_slice(&self.valued),
        }
        rules
    }
}

/// How many verdicts by text a gate remembers in a generation: far more than the distinct call
/// names or agents of a stream's recent records.
const VERDICTS_REMEMBERED: usize = 4096;

/// Gate verdicts already reached, by gate and by the JSON text each depends on. Field values
/// recur record after record (a few hundred calls, agents and identities), so most records are
/// judged by one hash lookup per gate. One per decoding thread; bounded in entries, and in bytes
/// whatever a file holds: a text is remembered by its digest (xxh3-128 under a seed drawn for the
/// process, so that no file can be written to make two texts share one), never copied.
#[derive(Debug)]
pub struct GateMemo {
    /// The index served: a memo used with another index starts afresh.
    index: u64,
    by_gate: Vec<Verdicts>,
    seed: u64,
}

impl Default for GateMemo {
    fn default() -> Self {
        GateMemo {
            index: 0,
            by_gate: Vec::new(),
            seed: crate::principal::random_seed(),
        }
    }
}

/// One gate's remembered verdicts, by the digest of the text they were reached from, or for a
/// gate under `userIdentity` by the key standing for that text. Identities are remembered as many
/// as the principal cache remembers: with fewer, a stream of thousands of role sessions (each
/// session its own text) found four in ten identities forgotten and parsed them again.
#[derive(Debug)]
struct Verdicts {
    by_text: Generations<u128, Box<[usize]>>,
    by_identity: Generations<crate::principal::IdentityKey, Box<[usize]>>,
}

impl Default for Verdicts {
    fn default() -> Self {
        Verdicts {
            by_text: Generations::new(VERDICTS_REMEMBERED, usize::MAX),
            by_identity: Generations::new(crate::principal::PRINCIPALS_REMEMBERED, usize::MAX),
        }
    }
}

/// Marks the verdict `verdicts` remember under `key`, or `judge`'s, then remembering it.
fn recall<K: std::hash::Hash + Eq + Copy>(
    verdicts: &mut Generations<K, Box<[usize]>>,
    key: K,
    judge: impl FnOnce() -> Vec<usize>,
    mark: &mut impl FnMut(&[usize]),
) {
    verdicts.with(key, || (judge().into_boxed_slice(), 0), |rules| mark(rules));
}

impl GateMemo {
    /// The memo, ready for `index`'s gates.
    fn serve(&mut self, index: &GateIndex) -> &mut Self {
        if self.index != index.id {
            self.index = index.id;
            self.by_gate = index.fields.iter().map(|_| Verdicts::default()).collect();
        }
        self
    }

    fn digest(&self, text: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128_with_seed(text.as_bytes(), self.seed)
    }
}

/// Buffers for lower-casing a value and a nested field's parent.
#[derive(Default)]
struct Scratch {
    value: Folded,
    parent: Folded,
}

/// A value lower-cased for lookup, on the stack when short (field values mostly are).
struct Folded {
    short: [u8; 128],
    long: String,
}

impl Default for Folded {
    fn default() -> Self {
        Folded {
            short: [0; 128],
            long: String::new(),
        }
    }
}

impl Folded {
    fn of(&mut self, value: &str) -> &str {
        if value.len() <= self.short.len() {
            let short = &mut self.short[..value.len()];
            short.copy_from_slice(value.as_bytes());
            short.make_ascii_lowercase();
            // ASCII lower-casing keeps UTF-8 valid.
            std::str::from_utf8(short).unwrap_or_default()
        } else {
            self.long.clear();
            self.long.push_str(value);
            self.long.make_ascii_lowercase();
            &self.long
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> SigmaRule {
        let text = format!("title: t\nlogsource:\n  product: aws\n  service: cloudtrail\n{yaml}");
        rsigma_parser::parse_sigma_yaml(&text).unwrap().rules.remove(0)
    }

    fn gate(yaml: &str) -> Option<(String, Requirement)> {
        gate_of(&rule(yaml))
    }

    fn set(values: &[&str]) -> BTreeSet<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    /// The rules `index` hands to the evaluator for `record`, without a memo.
    fn candidates_of(index: &GateIndex, record: &str) -> Vec<usize> {
        let view = RecordView::new(record).unwrap();
        let mut out = Vec::new();
        index.candidates(&view, None, |r| out.push(r));
        out
    }

    fn one_of(field: &str, values: &[&str]) -> Option<(String, Requirement)> {
        Some((field.into(), OneOf(set(values))))
    }

    #[test]
    fn verdicts_that_recur_outlive_a_stream_of_others() {
        let mut memo = Generations::new(4, usize::MAX);
        let mut judged = 0;
        let mut recall = |memo: &mut Generations<u64, Box<[usize]>>, key: u64| {
            let mut marked = Vec::new();
            super::recall(
                memo,
                key,
                || {
                    judged += 1;
                    vec![key as usize]
                },
                &mut |rules| marked.extend_from_slice(rules),
            );
            assert_eq!(marked, [key as usize]);
        };
        // Key 0 recurs between runs of keys seen once, more of them than a generation holds.
        for round in 0..10u64 {
            recall(&mut memo, 0);
            for other in 0..5 {
                recall(&mut memo, 1 + round * 5 + other);
            }
        }
        assert_eq!(judged, 1 + 50);
        let [(recent, _), (older, _)] = memo.held();
        assert!(recent + older <= 8);
    }

    #[test]
    fn a_gate_on_needles_alone_is_judged_afresh_and_one_on_values_remembered() {
        let agent = rule("detection:\n  sel:\n    userAgent|contains: kali\n  condition: sel\n");
        let call = rule("detection:\n  sel:\n    eventName: StopLogging\n  condition: sel\n");
        let index = GateIndex::new([&agent, &call]);
        let mut memo = GateMemo::default();
        for i in 0..20 {
            let record = format!(r#"{{"eventName":"StopLogging","userAgent":"aws-cli/2.{i} command/kali"}}"#);
            let view = RecordView::new(&record).unwrap();
            let mut out = Vec::new();
            index.candidates(&view, Some(&mut memo), |r| out.push(r));
            assert_eq!(out, [0, 1], "{record}");
        }
        let held = |field: &str| {
            let i = index.fields.iter().position(|g| g.field == field).unwrap();
            let [(recent, _), (older, _)] = memo.by_gate[i].by_text.held();
            recent + older
        };
        assert_eq!(held("userAgent"), 0);
        assert_eq!(held("eventName"), 1);
    }

    #[test]
    fn nested_requirements_beyond_the_gate_are_checked_on_the_parent_text_first() {
        let yaml = "detection:\n  sel:\n    eventName: GetParameter\n    requestParameters.withDecryption: true\n    requestParameters.name: /Prod/Db\n  condition: sel\n";
        let index = GateIndex::new([&rule(yaml)]);
        let candidates = |record: &str| candidates_of(&index, record);
        let call = r#"{"eventName":"GetParameter","requestParameters":"#;
        assert_eq!(
            candidates(&format!(r#"{call}{{"withDecryption":true,"name":"/prod/db"}}}}"#)),
            [0]
        );
        // Neither the key nor the literal in the parent's text: not handed to the evaluator.
        assert!(candidates(&format!(r#"{call}{{"name":"/prod/db"}}}}"#)).is_empty());
        assert!(candidates(&format!(
            r#"{call}{{"withDecryption":false,"name":"/prod/db"}}}}"#
        ))
        .is_empty());
        for true_like in ["true", r#""True""#, r#""1""#, r#""YES""#, "[false,true]"] {
            assert_eq!(
                candidates(&format!(
                    r#"{call}{{"withDecryption":{true_like},"name":"/prod/db"}}}}"#
                )),
                [0],
                "{true_like}"
            );
        }
        assert!(candidates(&format!(r#"{call}{{"withDecryption":true,"name":"/dev/db"}}}}"#)).is_empty());
        assert!(candidates(r#"{"eventName":"GetParameter"}"#).is_empty());
        // An escape, or the dotted path as a top-level key: left to the evaluator.
        assert_eq!(
            candidates(&format!(
                r#"{call}{{"with\u0044ecryption":true,"name":"/prod/db"}}}}"#
            )),
            [0]
        );
        assert_eq!(
            candidates(&format!(
                r#"{call}{{"name":"/prod/db"}},"requestParameters.withDecryption":true}}"#
            )),
            [0]
        );
        // `true` is met by a value that reads as true; a number requires the field; `false` and
        // `null` do not.
        assert_eq!(
            gate("detection:\n  s:\n    requestParameters.withDecryption: true\n  condition: s\n"),
            Some(("requestParameters.withDecryption".into(), TrueLike))
        );
        assert_eq!(
            gate("detection:\n  s:\n    requestParameters.maxResults: 50\n  condition: s\n"),
            Some(("requestParameters.maxResults".into(), Present))
        );
        assert_eq!(
            gate("detection:\n  s:\n    requestParameters.force: false\n  condition: s\n"),
            None
        );
    }

    #[test]
    fn top_level_requirements_beyond_the_gate_are_checked_on_the_field_text_first() {
        let yaml = "detection:\n  sel:\n    eventSource: lambda.amazonaws.com\n    eventName|startswith: UpdateFunctionCode\n  condition: sel\n";
        assert_eq!(
            gate(yaml),
            Some(("eventSource".into(), OneOf(set(&["lambda.amazonaws.com"]))))
        );
        let index = GateIndex::new([&rule(yaml)]);
        let candidates = |record: &str| candidates_of(&index, record);
        let lambda = r#"{"eventSource":"lambda.amazonaws.com","eventName":"#;
        assert_eq!(
            candidates(&format!(r#"{lambda}"UpdateFunctionCode20150331v2"}}"#)),
            [0]
        );
        assert_eq!(candidates(&format!(r#"{lambda}"updatefunctioncode"}}"#)), [0]);
        // Another call of the service, or none: not handed to the evaluator.
        assert!(candidates(&format!(r#"{lambda}"GetFunction"}}"#)).is_empty());
        assert!(candidates(r#"{"eventSource":"lambda.amazonaws.com"}"#).is_empty());
        // A value that is not a string: left to the evaluator.
        assert_eq!(candidates(&format!("{lambda}1E2}}")), [0]);
        assert_eq!(candidates(&format!(r#"{lambda}["GetFunction"]}}"#)), [0]);
        // An escape, or a character beyond ASCII, hides what the value holds: evaluated.
        assert_eq!(
            candidates(&format!(r#"{lambda}"\u0055pdateFunctionCode"}}"#)),
            [0]
        );
        assert_eq!(candidates(&format!(r#"{lambda}"\u212Aey"}}"#)), [0]);
        assert_eq!(candidates(&format!("{lambda}\"Upd\u{212A}\"}}")), [0]);
    }

    #[test]
    fn a_selection_is_gated_on_its_call() {
        let g = gate("detection:\n  sel:\n    eventSource: cloudtrail.amazonaws.com\n    eventName: [StopLogging, DeleteTrail]\n  condition: sel\n");
        assert_eq!(g, one_of("eventName", &["deletetrail", "stoplogging"]));
    }

    #[test]
    fn alternatives_unite_their_values_and_keep_only_shared_fields() {
        let g = gate("detection:\n  a:\n    eventSource: ec2.amazonaws.com\n    eventName: GetPasswordData\n  b:\n    eventSource: rds.amazonaws.com\n  condition: a or b\n");
        assert_eq!(
            g,
            one_of("eventSource", &["ec2.amazonaws.com", "rds.amazonaws.com"])
        );
        let g = gate(
            "detection:\n  sel_a:\n    eventName: A\n  sel_b:\n    eventName: B\n  condition: 1 of sel_*\n",
        );
        assert_eq!(g, one_of("eventName", &["a", "b"]));
    }

    #[test]
    fn negations_wildcards_and_modifiers_give_no_value_gate() {
        assert_eq!(
            gate("detection:\n  f:\n    eventName: X\n  condition: not f\n"),
            None
        );
        assert_eq!(
            gate("detection:\n  s:\n    eventName: Get*\n  condition: s\n"),
            None
        );
        assert_eq!(
            gate("detection:\n  s:\n    userAgent|contains: [Kali, parrot]\n  condition: s\n"),
            Some(("userAgent".into(), ContainsAny(set(&["kali", "parrot"]))))
        );
        // Starting or ending with a literal, the value contains it.
        assert_eq!(
            gate("detection:\n  s:\n    errorCode|startswith: Access\n  condition: s\n"),
            Some(("errorCode".into(), ContainsAny(set(&["access"]))))
        );
        assert_eq!(
            gate("detection:\n  s:\n    errorCode|endswith|all: [Denied, Access]\n  condition: s\n"),
            Some(("errorCode".into(), ContainsAny(set(&["access", "denied"]))))
        );
        // A wildcard in a literal, or a transforming modifier, gives only presence.
        assert_eq!(
            gate("detection:\n  s:\n    errorCode|startswith: Acc*ss\n  condition: s\n"),
            Some(("errorCode".into(), Present))
        );
        assert_eq!(
            gate("detection:\n  s:\n    errorCode|base64|startswith: Access\n  condition: s\n"),
            None
        );
        assert_eq!(
            gate("detection:\n  s:\n    errorCode|exists: true\n  condition: s\n"),
            Some(("errorCode".into(), Present))
        );
        // Equal to one, or containing another: containing one of both.
        assert_eq!(
            gate(
                "detection:\n  a:\n    userAgent: X\n  b:\n    userAgent|contains: y\n  condition: a or b\n"
            ),
            Some(("userAgent".into(), ContainsAny(set(&["x", "y"]))))
        );
        assert_eq!(
            gate("detection:\n  s:\n    errorCode|exists: false\n  condition: s\n"),
            None
        );
        // An alternative without the field lets every record through.
        assert_eq!(
            gate("detection:\n  a:\n    eventName: X\n  b:\n    userAgent|re: kali\n  condition: a or b\n"),
            None
        );
    }

    #[test]
    fn a_rule_and_its_filter_keep_the_selection_gate() {
        let g = gate("detection:\n  sel:\n    userIdentity.type: Root\n  filter:\n    eventType: AwsServiceEvent\n  condition: sel and not filter\n");
        assert_eq!(g, one_of("userIdentity.type", &["root"]));
    }

    #[test]
    fn globs_match_detection_names() {
        assert!(glob(b"sel_*", b"sel_a"));
        assert!(glob(b"*", b""));
        assert!(!glob(b"sel_*", b"filter"));
        assert!(glob(b"v?", b"v4"));
    }
}
