//! Signature detections: Sigma rules over CloudTrail records.
//!
//! In: Sigma rule files (the shipped set in `rules/`, built into the binary, or a folder given by
//! the user). Out: a [`RuleSet`] whose detection rules are evaluated on every record in the
//! stateless half ([`RuleSet::evaluate`]) and whose correlation (threshold) rules run per shard in
//! the stateful half ([`RuleSet::correlation_engine`]), since they count per principal.
//!
//! Evaluation uses `rsigma-eval` (see the README for why): rules are parsed and compiled once at
//! start-up. A rule that does not parse is an error naming its file and line; a rule that uses a
//! feature the evaluator does not support is reported by name and reason and left out, never
//! dropped silently; rules for other log sources are skipped and counted.
//!
//! Rule files may carry their own test events under a `tests:` key (`match:` and `nomatch:`
//! lists; for a correlation rule each item is a sequence of events), which
//! [`RuleSet::run_tests`] checks.

pub mod coverage;
mod gate;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rsigma_eval::{CompiledRule, CorrelationConfig, CorrelationEngine, Engine};
use rsigma_parser::{CorrelationRule, Level, SigmaCollection, SigmaRule};
use serde_json::Value;

use crate::anomaly::{Outcome, Severity};
use crate::event::parse_event_time;
use crate::view::RecordView;
pub use gate::{GateIndex, GateMemo};

/// A detection rule's index in [`RuleSet::rules`], as events carry it. 32 bits: a rule set of
/// any size a process can load is indexed without wrapping (two bytes more per match than 16
/// bits, on the few events that match a rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleIndex(u32);

impl RuleIndex {
    /// The index of rule `i`; [`RuleSet`] holds fewer than `u32::MAX` rules (checked at load).
    pub fn of(i: usize) -> RuleIndex {
        RuleIndex(u32::try_from(i).unwrap_or(u32::MAX))
    }
}

impl From<RuleIndex> for usize {
    fn from(index: RuleIndex) -> usize {
        index.0 as usize
    }
}

include!(concat!(env!("OUT_DIR"), "/builtin_rules.rs"));

/// What the anomaly stream says of a rule.
#[derive(Debug, Clone)]
pub struct RuleInfo {
    pub id: String,
    pub title: String,
    pub tags: Vec<String>,
    /// Id, title and tags as each of the rule's anomalies carries them, shared rather than copied
    /// into every one.
    pub shown: Arc<crate::anomaly::RuleInfo>,
    /// The explanation of a single-event match, written once.
    pub match_reason: String,
    pub level: Severity,
    pub file: String,
    /// A base rule that only feeds correlations: its own hits raise nothing.
    pub feeds_correlation_only: bool,
    /// A base rule some correlation counts: only records that hit one are kept whole for the
    /// correlation engine.
    pub feeds_correlation: bool,
    pub is_correlation: bool,
    /// The rule says a failed call matters as much as a successful one (`trailwatch: {failures:
    /// keep}` in its file).
    pub keep_failures: bool,
}

impl RuleInfo {
    /// A rule of `id`, `title` and `tags` with what its anomalies show of it; the rest is a
    /// single-event rule at `info` level, to be filled in.
    fn shown(id: String, title: String, tags: Vec<String>) -> RuleInfo {
        RuleInfo {
            shown: Arc::new(crate::anomaly::RuleInfo::new(
                id.clone(),
                title.clone(),
                tags.clone(),
            )),
            match_reason: format!("matched rule {title:?}"),
            id,
            title,
            tags,
            level: Severity::Info,
            file: String::new(),
            feeds_correlation_only: false,
            feeds_correlation: false,
            is_correlation: false,
            keep_failures: false,
        }
    }

    /// The severity and outcome of a match on a record with `error_code`. A single-event match
    /// on a call that failed is a failed attempt: it carries [`Outcome::Failed`] and a lower
    /// severity ([`Severity::of_failed_attempt`]) unless the rule keeps failures. Threshold
    /// rules count attempts whatever their outcome and keep their level, with no outcome.
    pub fn verdict(&self, error_code: Option<&str>) -> (Severity, Option<Outcome>) {
        if self.is_correlation {
            return (self.level, None);
        }
        match error_code {
            Some(code) if !code.is_empty() => {
                let severity = if self.keep_failures {
                    self.level
                } else {
                    self.level.of_failed_attempt()
                };
                (severity, Some(Outcome::Failed))
            }
            _ => (self.level, Some(Outcome::Succeeded)),
        }
    }
}

/// The trailwatch-specific settings of a rule, under its `trailwatch:` key (a custom attribute,
/// so the file stays valid Sigma): `failures: keep` or `failures: lower` (the default).
fn keep_failures<V: serde::Serialize>(attributes: &HashMap<String, V>) -> Result<bool, String> {
    let Some(settings) = attributes.get("trailwatch") else {
        return Ok(false);
    };
    let settings = serde_json::to_value(settings).map_err(|e| e.to_string())?;
    let Some(settings) = settings.as_object() else {
        return Err("`trailwatch:` must be a mapping".into());
    };
    for key in settings.keys() {
        if key != "failures" {
            return Err(format!("unknown key `trailwatch.{key}`"));
        }
    }
    match settings.get("failures").map(|v| v.as_str()) {
        None => Ok(false),
        Some(Some("keep")) => Ok(true),
        Some(Some("lower")) => Ok(false),
        Some(other) => Err(format!(
            "`trailwatch.failures` must be `keep` or `lower`, not {other:?}"
        )),
    }
}

/// Why rules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid rules:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// A loaded, compiled rule set.
pub struct RuleSet {
    rules: Vec<RuleInfo>,
    index: HashMap<String, usize>,
    /// Detection rules, compiled, in the order of `rules`.
    compiled: Vec<CompiledRule>,
    /// Which of them a record can match.
    gates: GateIndex,
    /// The same rules in the evaluator's own engine, which indexes every field the rules name:
    /// the reference the gated path is checked against.
    engine: Engine,
    collection: SigmaCollection,
    /// Rules and correlations left out, with their file, title and reason.
    pub unsupported: Vec<String>,
    /// Rules and files of the extra folders left out, with their file and reason (see
    /// [`RuleSet::with_extra`]).
    pub extra_left_out: Vec<String>,
    /// Rules skipped because their log source is not AWS CloudTrail.
    pub other_logsource: usize,
    /// `(file, rule index, tests)` for every rule that carries tests.
    tests: Vec<(String, usize, Value)>,
    /// Rules that raise alerts but carry no tests.
    pub untested: Vec<String>,
}

fn severity(level: Option<Level>) -> Severity {
    match level {
        Some(Level::Informational) => Severity::Info,
        Some(Level::Low) => Severity::Low,
        Some(Level::Medium) | None => Severity::Medium,
        Some(Level::High) => Severity::High,
        Some(Level::Critical) => Severity::Critical,
    }
}

fn is_cloudtrail(rule: &SigmaRule) -> bool {
    let eq = |v: &Option<String>, want: &str| v.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(want));
    eq(&rule.logsource.product, "aws")
        && (rule.logsource.service.is_none() || eq(&rule.logsource.service, "cloudtrail"))
}

/// The line of the `condition:` whose text an error message quotes, if any.
fn line_of_condition(text: &str, message: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix("condition:")
                .map(str::trim)
                .is_some_and(|c| !c.is_empty() && message.contains(c))
        })
        .map(|i| i + 1)
}

/// The line a YAML error message names, if any.
fn line_of(message: &str) -> Option<usize> {
    let at = message.find("line ")?;
    message[at + 5..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .field("unsupported", &self.unsupported)
            .finish()
    }
}

/// Largest rule file accepted: the largest Sigma rules run to a few KiB.
pub const MAX_RULE_FILE_BYTES: usize = 1 << 20;

/// Deepest nesting accepted in a rule file (block indentation, sequence dashes and flow brackets
/// together): Sigma rules nest a handful of levels.
pub const MAX_RULE_NESTING: usize = 64;

/// Checks a rule file's size and nesting before it is parsed. The depth is estimated from the
/// text: each line's place in the stack of indentations above it, the `- ` items it opens, and
/// the `[`/`{` open outside quotes; an estimate that errs towards deeper, never shallower.
fn check_rule_shape(text: &str) -> Result<(), String> {
    if text.len() > MAX_RULE_FILE_BYTES {
        return Err(format!(
            "{} bytes, more than a rule file may hold ({MAX_RULE_FILE_BYTES})",
            text.len()
        ));
    }
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    for (n, line) in text.lines().enumerate() {
        let body = line.trim_start_matches(' ');
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = line.len() - body.len();
        if flow == 0 {
            while indents.last().is_some_and(|&top| top >= indent) {
                indents.pop();
            }
            indents.push(indent);
        }
        let mut rest = body;
        let mut dashes = 0;
        while let Some(after) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("-\t")) {
            dashes += 1;
            rest = after.trim_start();
        }
        let mut deepest_flow = flow;
        let mut quote = None;
        let mut escaped = false;
        for c in rest.chars() {
            match (quote, c) {
                (Some('"'), '\\') if !escaped => {
                    escaped = true;
                    continue;
                }
                (Some(q), c) if c == q && !escaped => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => {
                    flow += 1;
                    deepest_flow = deepest_flow.max(flow);
                }
                (None, ']' | '}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            escaped = false;
        }
        let depth = indents.len() + dashes + deepest_flow;
        if depth > MAX_RULE_NESTING {
            return Err(format!(
                "line {}: nested {depth} levels deep, more than a rule may be ({MAX_RULE_NESTING})",
                n + 1
            ));
        }
    }
    Ok(())
}

impl RuleSet {
    /// The rules built into the binary.
    pub fn builtin() -> Result<RuleSet, RuleError> {
        RuleSet::from_sources(builtin_sources())
    }

    /// Every `.yml` and `.yaml` file under `dir`, recursively.
    pub fn from_dir(dir: &Path) -> Result<RuleSet, RuleError> {
        RuleSet::from_sources(read_dir(dir)?)
    }

    /// The rules of `base` (a folder, else the shipped ones) and, beside them, those of the
    /// `extra` folders (a collection such as SigmaHQ's, unmodified). A bad rule in `base` fails
    /// the load, as it does alone; one in an extra folder (it does not parse, it uses what the
    /// evaluator does not support, its id is already taken) is left out, named with its reason
    /// in [`RuleSet::unsupported`], and the others load.
    pub fn with_extra(base: Option<&Path>, extra: &[PathBuf]) -> Result<RuleSet, RuleError> {
        let base = match base {
            Some(dir) => read_dir(dir)?,
            None => builtin_sources(),
        };
        let mut added = Vec::new();
        for dir in extra {
            added.extend(read_dir(dir)?);
        }
        RuleSet::from_parts(base, added)
    }

    /// Parses and compiles rule files given as `(name, text)`.
    pub fn from_sources(sources: Vec<(String, String)>) -> Result<RuleSet, RuleError> {
        RuleSet::from_parts(sources, Vec::new())
    }
}

fn builtin_sources() -> Vec<(String, String)> {
    BUILTIN
        .iter()
        .map(|(name, text)| (format!("rules/{name}"), (*text).to_owned()))
        .collect()
}

/// Every `.yml` and `.yaml` file under `dir`, recursively, as `(path, text)`.
fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, RuleError> {
    let mut sources = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(|e| RuleError::Read {
            path: dir.display().to_string(),
            source: e.into(),
        })?;
        let name = entry.file_name().to_string_lossy();
        if entry.file_type().is_file() && (name.ends_with(".yml") || name.ends_with(".yaml")) {
            let path = entry.path().display().to_string();
            let text = std::fs::read_to_string(entry.path()).map_err(|source| RuleError::Read {
                path: path.clone(),
                source,
            })?;
            sources.push((path, text));
        }
    }
    Ok(sources)
}

/// Each file of `files` (`(name, text)`) parsed, or the problem that stopped it, in order. Parsing
/// the YAML is most of what loading a rule set costs, and the files are independent: they are
/// parsed on every core, so that start-up waits less before the first log file is read.
fn parse_all(files: &[(String, String)]) -> Vec<Result<SigmaCollection, String>> {
    let parse = |(file, text): &(String, String)| {
        // The YAML parser's time grows faster than the nesting of what it reads: a rule is
        // checked for size and depth first, so that a hostile file cannot stall start-up.
        check_rule_shape(text).map_err(|problem| format!("{file}: {problem}"))?;
        rsigma_parser::parse_sigma_yaml(text).map_err(|e| {
            let msg = e.to_string();
            format!("{file}:{}: {msg}", line_of(&msg).unwrap_or(1))
        })
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || files.len() < 2 {
        return files.iter().map(parse).collect();
    }
    // Files are dealt out by size, the largest first, each to the thread with the least text so
    // far: one threshold rule's test events can outweigh dozens of other files.
    let mut by_size: Vec<usize> = (0..files.len()).collect();
    by_size.sort_by_key(|&i| std::cmp::Reverse(files[i].1.len()));
    let mut shares: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); threads.min(files.len())];
    for i in by_size {
        let share = shares
            .iter_mut()
            .min_by_key(|(bytes, _)| *bytes)
            .expect("at least one share");
        share.0 += files[i].1.len();
        share.1.push(i);
    }
    let mut parsed: Vec<Option<Result<SigmaCollection, String>>> = files.iter().map(|_| None).collect();
    std::thread::scope(|scope| {
        let parsers: Vec<_> = shares
            .into_iter()
            .map(|(_, share)| {
                scope.spawn(move || {
                    share
                        .into_iter()
                        .map(|i| (i, parse(&files[i])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for parser in parsers {
            match parser.join() {
                Ok(done) => done.into_iter().for_each(|(i, result)| parsed[i] = Some(result)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    parsed
        .into_iter()
        .map(|result| result.expect("every file was dealt to a thread"))
        .collect()
}

/// Where a rule came from, and the test events it carried.
struct Origin {
    file: String,
    /// The rule's `tests` (its `match` and `nomatch` events), as JSON.
    tests: Option<Value>,
}

impl Origin {
    /// The origin of a rule read from `file`. Its tests are taken out of the rule's other
    /// attributes: rsigma converts those at each compilation of the rule (once for the
    /// evaluator, once more for each state partition's correlation engine), and the tests, whole
    /// CloudTrail records, made up almost all of them.
    fn of<V: serde::Serialize>(file: &str, attributes: &mut HashMap<String, V>) -> Origin {
        Origin {
            file: file.to_owned(),
            tests: attributes
                .remove("tests")
                .map(|t| serde_json::to_value(t).unwrap_or(Value::Null)),
        }
    }
}

impl RuleSet {
    /// Parses and compiles `sources`, then `extra` beside them: a problem in `sources` fails the
    /// load, one in `extra` leaves its file or rule out (see [`RuleSet::with_extra`]).
    fn from_parts(
        sources: Vec<(String, String)>,
        extra: Vec<(String, String)>,
    ) -> Result<RuleSet, RuleError> {
        let mut errors = Vec::new();
        let mut left_out = Vec::new();
        let mut collection = SigmaCollection::new();
        let mut rule_files = Vec::new();
        let mut correlation_files = Vec::new();
        let mut other_logsource = 0;
        // Rule ids and names taken, with the file that took them.
        let mut taken: HashMap<String, String> = HashMap::new();
        // `sources` come first; the rest are extra.
        let shipped = sources.len();
        let extra_files: Vec<String> = extra.iter().map(|(file, _)| file.clone()).collect();
        let files: Vec<(String, String)> = sources.into_iter().chain(extra).collect();
        for (n, ((file, text), parsed)) in files.iter().zip(parse_all(&files)).enumerate() {
            let problems = if n < shipped { &mut errors } else { &mut left_out };
            let parsed = match parsed {
                Ok(parsed) => parsed,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            if n >= shipped && !parsed.errors.is_empty() {
                // Part of an extra file cannot be read: none of it is used.
                for e in &parsed.errors {
                    let line = line_of_condition(text, e).or_else(|| line_of(e)).unwrap_or(1);
                    left_out.push(format!("{file}:{line}: {e}"));
                }
                continue;
            }
            for e in &parsed.errors {
                let line = line_of_condition(text, e).or_else(|| line_of(e)).unwrap_or(1);
                errors.push(format!("{file}:{line}: {e}"));
            }
            for mut rule in parsed.rules {
                if !is_cloudtrail(&rule) {
                    other_logsource += 1;
                    continue;
                }
                let keys = [rule.id.as_deref(), rule.name.as_deref()];
                if n >= shipped {
                    if let Some(owner) = keys.into_iter().flatten().find_map(|k| taken.get(k)) {
                        left_out.push(format!(
                            "{file}: rule {:?}: its id or name is already taken by {owner}",
                            rule.title
                        ));
                        continue;
                    }
                }
                for key in keys.into_iter().flatten() {
                    taken.entry(key.to_owned()).or_insert_with(|| file.clone());
                }
                rule_files.push(Origin::of(file, &mut rule.custom_attributes));
                collection.rules.push(rule);
            }
            for mut correlation in parsed.correlations {
                correlation_files.push(Origin::of(file, &mut correlation.custom_attributes));
                collection.correlations.push(correlation);
            }
        }
        if collection.rules.len() + collection.correlations.len() >= u32::MAX as usize {
            errors.push(format!("more than {} rules", u32::MAX - 1));
        }
        if !errors.is_empty() {
            return Err(RuleError::Invalid(errors));
        }

        let mut unsupported = left_out;
        let mut engine = Engine::new();
        let mut kept = SigmaCollection::new();
        let mut kept_files = Vec::new();
        let mut compiled = Vec::new();
        for (rule, origin) in collection.rules.into_iter().zip(rule_files) {
            match rsigma_eval::compile_rule(&rule).and_then(|c| engine.add_rule(&rule).map(|()| c)) {
                Ok(c) => {
                    compiled.push(c);
                    kept.rules.push(rule);
                    kept_files.push(origin);
                }
                Err(e) => unsupported.push(format!("{}: rule {:?}: {e}", origin.file, rule.title)),
            }
        }
        let gates = GateIndex::new(&kept.rules);
        // A correlation is kept when every rule it counts was kept.
        let known: HashSet<&str> = kept
            .rules
            .iter()
            .flat_map(|r| [r.id.as_deref(), r.name.as_deref()])
            .flatten()
            .collect();
        let mut kept_correlations: Vec<(CorrelationRule, Origin)> = Vec::new();
        for (correlation, origin) in collection.correlations.into_iter().zip(correlation_files) {
            let missing: Vec<&String> = correlation
                .rules
                .iter()
                .filter(|r| !known.contains(r.as_str()))
                .collect();
            if missing.is_empty() {
                kept_correlations.push((correlation, origin));
            } else {
                unsupported.push(format!(
                    "{}: correlation {:?}: refers to rules not loaded: {missing:?}",
                    origin.file, correlation.title
                ));
            }
        }
        let mut feeds_only: HashSet<String> = HashSet::new();
        let mut feeds_any: HashSet<String> = HashSet::new();
        for (c, _) in &kept_correlations {
            feeds_any.extend(c.rules.iter().cloned());
            if !c.generate {
                feeds_only.extend(c.rules.iter().cloned());
            }
        }

        let mut rules = Vec::new();
        let mut tests = Vec::new();
        let mut untested = Vec::new();
        for (
            rule,
            Origin {
                file,
                tests: rule_tests,
            },
        ) in kept.rules.iter().zip(kept_files)
        {
            let feeds = [rule.id.as_deref(), rule.name.as_deref()]
                .into_iter()
                .flatten()
                .any(|k| feeds_only.contains(k));
            let feeds_correlation = [rule.id.as_deref(), rule.name.as_deref()]
                .into_iter()
                .flatten()
                .any(|k| feeds_any.contains(k));
            let index = rules.len();
            let keep_failures = keep_failures(&rule.custom_attributes)
                .map_err(|e| RuleError::Invalid(vec![format!("{file}: rule {:?}: {e}", rule.title)]))?;
            if let Some(t) = rule_tests {
                tests.push((file.clone(), index, t));
            } else if !feeds {
                untested.push(format!("{file}: {}", rule.title));
            }
            rules.push(RuleInfo {
                level: severity(rule.level),
                file: file.clone(),
                feeds_correlation_only: feeds,
                feeds_correlation,
                is_correlation: false,
                keep_failures,
                ..RuleInfo::shown(
                    rule.id.clone().unwrap_or_else(|| rule.title.clone()),
                    rule.title.clone(),
                    rule.tags.clone(),
                )
            });
        }
        for (
            c,
            Origin {
                file,
                tests: rule_tests,
            },
        ) in &mut kept_correlations
        {
            let index = rules.len();
            if c.custom_attributes.contains_key("trailwatch") {
                return Err(RuleError::Invalid(vec![format!(
                    "{file}: correlation {:?}: `trailwatch:` settings apply to single-event rules; a threshold counts attempts whatever their outcome",
                    c.title
                )]));
            }
            match rule_tests.take() {
                Some(t) => tests.push((file.clone(), index, t)),
                None => untested.push(format!("{file}: {}", c.title)),
            }
            rules.push(RuleInfo {
                level: severity(c.level),
                file: file.clone(),
                feeds_correlation_only: false,
                feeds_correlation: false,
                is_correlation: true,
                keep_failures: false,
                ..RuleInfo::shown(
                    c.id.clone().unwrap_or_else(|| c.title.clone()),
                    c.title.clone(),
                    c.tags.clone(),
                )
            });
        }
        kept.correlations = kept_correlations.into_iter().map(|(c, _)| c).collect();
        // Each state partition builds its own correlation engine from this collection, and
        // detections reach it already evaluated: it needs the rules the correlations count,
        // not a compiled copy of every rule (twelve partitions compiled the whole set twelve
        // times over, some fifty megabytes).
        let counted: HashSet<&str> = kept
            .correlations
            .iter()
            .flat_map(|c| c.rules.iter().map(String::as_str))
            .collect();
        let is_counted = |r: &SigmaRule| {
            r.id.as_deref().is_some_and(|id| counted.contains(id))
                || r.name.as_deref().is_some_and(|name| counted.contains(name))
        };
        kept.rules.retain(is_counted);
        kept.filters.clear();
        let mut index = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            index.insert(r.id.clone(), i);
            index.entry(r.title.clone()).or_insert(i);
        }
        // What was left out of the extra folders is theirs to report; the rest is this set's.
        let (extra_left_out, unsupported): (Vec<String>, Vec<String>) =
            unsupported.into_iter().partition(|problem| {
                extra_files.iter().any(|f| {
                    problem
                        .strip_prefix(f.as_str())
                        .is_some_and(|rest| rest.starts_with(':'))
                })
            });
        Ok(RuleSet {
            rules,
            index,
            compiled,
            gates,
            engine,
            collection: kept,
            unsupported,
            extra_left_out,
            other_logsource,
            tests,
            untested,
        })
    }

    /// An empty rule set.
    pub fn empty() -> RuleSet {
        RuleSet::from_sources(Vec::new()).expect("no rules cannot fail")
    }

    pub fn rules(&self) -> &[RuleInfo] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn correlations(&self) -> usize {
        self.collection.correlations.len()
    }

    /// The rule a result names, by id or title.
    pub fn lookup(&self, id: Option<&str>, title: &str) -> Option<usize> {
        id.and_then(|id| self.index.get(id))
            .or_else(|| self.index.get(title))
            .copied()
    }

    /// Detection rules a record matches, as indices into [`RuleSet::rules`].
    pub fn evaluate(&self, view: &RecordView<'_>, out: &mut Vec<RuleIndex>) {
        self.evaluate_in(view, None, out);
    }

    /// [`RuleSet::evaluate`], with the gates' verdicts remembered in `memo` from record to record
    /// (see [`GateMemo`]): what a decoding thread calls.
    pub fn evaluate_with(&self, view: &RecordView<'_>, memo: &mut GateMemo, out: &mut Vec<RuleIndex>) {
        self.evaluate_in(view, Some(memo), out);
    }

    fn evaluate_in(&self, view: &RecordView<'_>, memo: Option<&mut GateMemo>, out: &mut Vec<RuleIndex>) {
        // Only whether a rule matched is wanted here. `evaluate_rule` answers with a result
        // built for a match: the condition evaluated a second time for its details, the fields
        // that matched collected, the rule's header (title, id, tags, custom attributes)
        // cloned: about 8,800 instructions per matching record of the storm trail (callgrind).
        // Its conditions are evaluated directly instead, to the same verdict; the selections
        // they list are not read.
        let mut selections = Vec::new();
        self.gates.candidates(view, memo, |i| {
            let rule = &self.compiled[i];
            let matched = rule.conditions.iter().any(|condition| {
                selections.clear();
                rsigma_eval::compiler::eval_condition(condition, &rule.detections, view, &mut selections)
            });
            if matched {
                out.push(RuleIndex::of(i));
            }
        });
    }

    /// Detection rules that are evaluated on every record, for want of a gate.
    pub fn ungated(&self) -> usize {
        self.gates.ungated()
    }

    /// [`RuleSet::evaluate`] through the evaluator's own engine, with no gates: the reference
    /// the gated evaluation must agree with.
    pub fn evaluate_ungated(&self, view: &RecordView<'_>, out: &mut Vec<RuleIndex>) {
        for result in self.engine.evaluate(view) {
            if let Some(i) = self.lookup(result.header.rule_id.as_deref(), &result.header.rule_title) {
                out.push(RuleIndex::of(i));
            }
        }
    }

    /// Feeds one record to a shard's correlation engine, with the detection rules it matched
    /// (`hits`, from [`RuleSet::evaluate`]) rather than evaluating every rule a second time.
    ///
    /// The engine reads which rule each detection is of and nothing else of it: the detections
    /// are made from the rules' headers alone, for the rules a correlation counts. Evaluating the
    /// rules again for results that list the selections and fields that matched cost 8,000
    /// instructions a hit (callgrind, storm trail).
    pub fn correlate(
        &self,
        engine: &mut CorrelationEngine,
        view: &RecordView<'_>,
        hits: &[RuleIndex],
        time: i64,
    ) -> Vec<rsigma_eval::EvaluationResult> {
        let detections = hits
            .iter()
            .map(|&i| usize::from(i))
            .filter(|&i| self.rules.get(i).is_some_and(|r| r.feeds_correlation))
            .filter_map(|i| self.compiled.get(i))
            .map(|rule| rsigma_eval::EvaluationResult {
                header: rsigma_eval::RuleHeader {
                    rule_title: rule.title.clone(),
                    rule_id: rule.id.clone(),
                    level: rule.level,
                    tags: Vec::new(),
                    custom_attributes: Arc::clone(&rule.custom_attributes),
                    enrichments: None,
                },
                body: rsigma_eval::ResultBody::Detection(rsigma_eval::DetectionBody {
                    matched_selections: Vec::new(),
                    matched_fields: Vec::new(),
                    event: None,
                }),
            })
            .collect();
        engine.process_with_detections(view, detections, time)
    }

    /// A fresh correlation engine for one shard, when there are correlation rules.
    pub fn correlation_engine(&self) -> Option<CorrelationEngine> {
        if self.collection.correlations.is_empty() {
            return None;
        }
        let config = CorrelationConfig {
            emit_detections: false,
            correlation_event_mode: rsigma_eval::CorrelationEventMode::Refs,
            ..CorrelationConfig::default()
        };
        let mut engine = CorrelationEngine::new(config);
        // Compilation already succeeded once for every kept rule.
        engine.add_collection(&self.collection).ok()?;
        Some(engine)
    }

    /// Runs every rule's embedded test events. Returns one line per failure.
    pub fn run_tests(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for (file, index, tests) in &self.tests {
            let rule = &self.rules[*index];
            let name = format!("{file}: {}", rule.title);
            let (matches, nomatches) = (tests.get("match"), tests.get("nomatch"));
            for (want, cases) in [(true, matches), (false, nomatches)] {
                let Some(cases) = cases.and_then(Value::as_array).filter(|c| !c.is_empty()) else {
                    failures.push(format!(
                        "{name}: no `{}` test events",
                        if want { "match" } else { "nomatch" }
                    ));
                    continue;
                };
                for (n, case) in cases.iter().enumerate() {
                    let got = if rule.is_correlation {
                        let events = case.as_array().cloned().unwrap_or_else(|| vec![case.clone()]);
                        self.correlation_fires(*index, &events)
                    } else {
                        self.detection_fires(*index, case)
                    };
                    if got != want {
                        failures.push(format!(
                            "{name}: `{}` test {} {}",
                            if want { "match" } else { "nomatch" },
                            n + 1,
                            if want { "did not match" } else { "matched" }
                        ));
                    }
                }
            }
        }
        failures
    }

    /// Whether a rule carries `match` test events and fires on every one of them.
    pub fn matches_own_tests(&self, index: usize) -> bool {
        let Some(rule) = self.rules.get(index) else {
            return false;
        };
        let cases = self
            .tests
            .iter()
            .filter(|(_, i, _)| *i == index)
            .filter_map(|(_, _, tests)| tests.get("match").and_then(Value::as_array))
            .flatten()
            .collect::<Vec<_>>();
        !cases.is_empty()
            && cases.iter().all(|case| {
                if rule.is_correlation {
                    let events = case.as_array().cloned().unwrap_or_else(|| vec![(*case).clone()]);
                    self.correlation_fires(index, &events)
                } else {
                    self.detection_fires(index, case)
                }
            })
    }

    fn detection_fires(&self, index: usize, event: &Value) -> bool {
        let text = event.to_string();
        let Some(view) = RecordView::new(&text) else {
            return false;
        };
        let mut hits = Vec::new();
        self.evaluate(&view, &mut hits);
        hits.contains(&RuleIndex::of(index))
    }

    fn correlation_fires(&self, index: usize, events: &[Value]) -> bool {
        let Some(mut engine) = self.correlation_engine() else {
            return false;
        };
        let mut fired = false;
        for event in events {
            let text = event.to_string();
            let Some(view) = RecordView::new(&text) else {
                continue;
            };
            let time = event
                .get("eventTime")
                .and_then(Value::as_str)
                .and_then(parse_event_time)
                .unwrap_or(0);
            let mut hits = Vec::new();
            self.evaluate(&view, &mut hits);
            for result in self.correlate(&mut engine, &view, &hits, time) {
                if result.is_correlation()
                    && self.lookup(result.header.rule_id.as_deref(), &result.header.rule_title) == Some(index)
                {
                    fired = true;
                }
            }
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(files: &[(&str, &str)]) -> Result<RuleSet, RuleError> {
        RuleSet::from_sources(
            files
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
        )
    }

    const STOP: &str = "title: Stop\nid: r1\nlogsource: {product: aws, service: cloudtrail}\n\
        detection:\n  sel:\n    eventName: StopLogging\n  condition: sel\nlevel: high\ntags: [attack.t1562.008]\n";

    #[test]
    fn the_shipped_rules_load_and_pass_their_tests() {
        let rules = RuleSet::builtin().unwrap();
        assert!(rules.unsupported.is_empty(), "{:?}", rules.unsupported);
        assert!(rules.len() >= 60);
        assert!(rules.correlations() >= 10);
        assert_eq!(rules.run_tests(), Vec::<String>::new());
        assert!(rules.untested.is_empty(), "{:?}", rules.untested);
    }

    #[test]
    fn a_rule_matches_through_the_record_view() {
        let rules = set(&[("stop.yml", STOP)]).unwrap();
        let record = r#"{"eventName":"StopLogging","eventSource":"cloudtrail.amazonaws.com"}"#;
        let mut hits = Vec::new();
        rules.evaluate(&RecordView::new(record).unwrap(), &mut hits);
        assert_eq!(hits, [RuleIndex::of(0)]);
        assert_eq!(rules.rules()[0].level, Severity::High);
        hits.clear();
        rules.evaluate(
            &RecordView::new(r#"{"eventName":"StartLogging"}"#).unwrap(),
            &mut hits,
        );
        assert!(hits.is_empty());
    }

    #[test]
    fn sigma_matching_is_case_insensitive_and_modifiers_work() {
        let rule = "title: M\nlogsource: {product: aws, service: cloudtrail}\ndetection:\n  a:\n    userAgent|contains: KALI\n  \
            b:\n    sourceIPAddress|cidr: 203.0.113.0/24\n  c:\n    errorCode|re: '^Access'\n  condition: a and b and c\n";
        let rules = set(&[("m.yml", rule)]).unwrap();
        let record = r#"{"userAgent":"x os/linux#6-kali1","sourceIPAddress":"203.0.113.9","errorCode":"AccessDenied"}"#;
        let mut hits = Vec::new();
        rules.evaluate(&RecordView::new(record).unwrap(), &mut hits);
        assert_eq!(hits, [RuleIndex::of(0)]);
    }

    #[test]
    fn keyword_rules_search_every_string_in_the_record() {
        let rule = "title: K\nlogsource: {product: aws, service: cloudtrail}\ndetection:\n  keywords:\n    - 'mimikatz'\n  condition: keywords\n";
        let rules = set(&[("k.yml", rule)]).unwrap();
        let mut hits = Vec::new();
        let record =
            r#"{"eventName":"RunInstances","requestParameters":{"userData":{"script":"run Mimikatz now"}}}"#;
        rules.evaluate(&RecordView::new(record).unwrap(), &mut hits);
        assert_eq!(hits, [RuleIndex::of(0)]);
        hits.clear();
        rules.evaluate(
            &RecordView::new(r#"{"eventName":"RunInstances"}"#).unwrap(),
            &mut hits,
        );
        assert!(hits.is_empty());
    }

    #[test]
    fn a_rule_that_does_not_parse_names_the_file_and_line() {
        let err = set(&[("bad.yml", "title: x\ndetection: [\n")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.yml:"), "{err}");
        assert!(
            err.contains("line") || err.contains(":2:") || err.contains(":3:"),
            "{err}"
        );
        let err = set(&[(
            "cond.yml",
            "title: x\nlogsource: {product: aws}\ndetection:\n  sel: {a: 1}\n  condition: sel and (\n",
        )])
        .unwrap_err()
        .to_string();
        assert!(err.contains("cond.yml:5:"), "{err}");
    }

    #[test]
    fn rules_for_other_log_sources_are_counted_not_loaded() {
        let windows = "title: W\nlogsource: {product: windows, service: security}\ndetection:\n  s: {EventID: 4625}\n  condition: s\n";
        let rules = set(&[("stop.yml", STOP), ("w.yml", windows)]).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules.other_logsource, 1);
    }

    #[test]
    fn a_wrong_test_verdict_is_reported_by_rule() {
        let rule = format!("{STOP}tests:\n  match:\n    - {{eventName: StartLogging}}\n  nomatch:\n    - {{eventName: StopLogging}}\n");
        let rules = set(&[("t.yml", &rule)]).unwrap();
        let failures = rules.run_tests();
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].contains("t.yml: Stop: `match` test 1 did not match"));
        assert!(failures[1].contains("`nomatch` test 1 matched"));
    }

    #[test]
    fn a_failed_call_lowers_the_severity_unless_the_rule_keeps_failures() {
        let lower = set(&[("stop.yml", STOP)]).unwrap();
        let rule = &lower.rules()[0];
        assert!(!rule.keep_failures);
        assert_eq!(rule.verdict(None), (Severity::High, Some(Outcome::Succeeded)));
        assert_eq!(rule.verdict(Some("")), (Severity::High, Some(Outcome::Succeeded)));
        assert_eq!(
            rule.verdict(Some("AccessDenied")),
            (Severity::Low, Some(Outcome::Failed))
        );
        let keep = format!("{STOP}trailwatch:\n  failures: keep\n");
        let keep = set(&[("stop.yml", &keep)]).unwrap();
        assert_eq!(
            keep.rules()[0].verdict(Some("AccessDenied")),
            (Severity::High, Some(Outcome::Failed))
        );
    }

    #[test]
    fn failure_settings_are_checked() {
        let bad = format!("{STOP}trailwatch:\n  failures: maybe\n");
        let err = set(&[("stop.yml", &bad)]).unwrap_err().to_string();
        assert!(err.contains("stop.yml") && err.contains("maybe"), "{err}");
        let unknown = format!("{STOP}trailwatch:\n  failure: keep\n");
        let err = set(&[("stop.yml", &unknown)]).unwrap_err().to_string();
        assert!(err.contains("trailwatch.failure"), "{err}");
        let corr = "title: C\ncorrelation:\n  type: event_count\n  rules: [r1]\n  group-by: [a]\n  timespan: 5m\n  condition: {gte: 2}\ntrailwatch: {failures: keep}\n";
        let err = set(&[("stop.yml", STOP), ("c.yml", corr)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.yml") && err.contains("single-event"), "{err}");
    }

    #[test]
    fn a_correlation_over_missing_rules_is_reported() {
        let corr = "title: C\ncorrelation:\n  type: event_count\n  rules: [nope]\n  group-by: [a]\n  timespan: 5m\n  condition: {gte: 2}\n";
        let rules = set(&[("c.yml", corr)]).unwrap();
        assert_eq!(rules.correlations(), 0);
        assert!(
            rules.unsupported[0].contains("c.yml: correlation \"C\""),
            "{:?}",
            rules.unsupported
        );
    }
}
