//! Detection coverage: which ATT&CK techniques the loaded rules are tagged with, and which entries
//! of the attack-emulation catalogue (`rules/catalogue.toml`: public AWS attack techniques by id,
//! each with the rules that flag it on its own events) have a rule that is loaded, raises alerts
//! and matches its own `match` test events.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Deserialize;

use super::RuleSet;

/// The shipped catalogue.
const BUILTIN: &str = include_str!("../../rules/catalogue.toml");

/// One attack technique of the catalogue and the rules meant to flag it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Technique {
    pub id: String,
    pub tactic: String,
    /// Rule ids (or titles).
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    #[serde(rename = "technique")]
    pub techniques: Vec<Technique>,
}

impl Catalogue {
    /// The catalogue built into the binary.
    pub fn builtin() -> Catalogue {
        Catalogue::parse(BUILTIN).expect("the shipped catalogue parses")
    }

    pub fn parse(text: &str) -> Result<Catalogue, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// How one catalogue entry fares against a rule set.
#[derive(Debug, Clone)]
pub struct EntryCoverage {
    pub technique: Technique,
    /// Indices of the listed rules that are loaded, raise alerts and match their own tests.
    pub covering: Vec<usize>,
    /// Listed rules that are not loaded, or loaded but not covering, with the reason.
    pub problems: Vec<String>,
}

/// The coverage of a rule set.
#[derive(Debug, Clone)]
pub struct Coverage {
    /// ATT&CK technique (`T1562.008`) to the indices of the alerting rules tagged with it.
    pub attack: BTreeMap<String, Vec<usize>>,
    pub entries: Vec<EntryCoverage>,
}

/// The ATT&CK technique a Sigma tag names (`attack.t1562.008` -> `T1562.008`), if any.
pub fn attack_technique(tag: &str) -> Option<String> {
    let id = tag.strip_prefix("attack.")?;
    let digits = id.strip_prefix('t').or_else(|| id.strip_prefix('T'))?;
    let (main, sub) = digits.split_once('.').unwrap_or((digits, ""));
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !numeric(main) || !(sub.is_empty() || numeric(sub)) {
        return None;
    }
    Some(format!("T{digits}"))
}

impl Coverage {
    pub fn of(rules: &RuleSet, catalogue: &Catalogue) -> Coverage {
        let mut attack: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, rule) in rules.rules().iter().enumerate() {
            if rule.feeds_correlation_only {
                continue;
            }
            for technique in rule.tags.iter().filter_map(|t| attack_technique(t)) {
                attack.entry(technique).or_default().push(i);
            }
        }
        let entries = catalogue
            .techniques
            .iter()
            .map(|technique| {
                let mut covering = Vec::new();
                let mut problems = Vec::new();
                for name in &technique.rules {
                    match rules.lookup(Some(name), name) {
                        None => problems.push(format!("{name}: not loaded")),
                        Some(i) if rules.rules()[i].feeds_correlation_only => {
                            problems.push(format!("{name}: only feeds thresholds, raises nothing"))
                        }
                        Some(i) if !rules.matches_own_tests(i) => {
                            problems.push(format!("{name}: has no `match` test event it matches"))
                        }
                        Some(i) => covering.push(i),
                    }
                }
                EntryCoverage {
                    technique: technique.clone(),
                    covering,
                    problems,
                }
            })
            .collect();
        Coverage { attack, entries }
    }

    /// Catalogue entries no loaded rule covers.
    pub fn uncovered(&self) -> Vec<&EntryCoverage> {
        self.entries.iter().filter(|e| e.covering.is_empty()).collect()
    }

    /// The report `trailwatch rules coverage` prints.
    pub fn render(&self, rules: &RuleSet) -> String {
        let title = |i: &usize| rules.rules()[*i].title.as_str();
        let mut out = String::new();
        let _ = writeln!(out, "ATT&CK techniques: {}", self.attack.len());
        for (technique, indices) in &self.attack {
            let titles: Vec<&str> = indices.iter().map(title).collect();
            let _ = writeln!(out, "  {technique:<10} {}", titles.join("; "));
        }
        let covered = self.entries.len() - self.uncovered().len();
        let _ = writeln!(
            out,
            "catalogue: {covered} of {} techniques covered",
            self.entries.len()
        );
        for entry in &self.entries {
            let t = &entry.technique;
            if entry.covering.is_empty() {
                let _ = writeln!(
                    out,
                    "  MISSING {:<40} {:<20} {}",
                    t.id,
                    t.tactic,
                    entry.problems.join("; ")
                );
            } else {
                let titles: Vec<&str> = entry.covering.iter().map(title).collect();
                let _ = writeln!(
                    out,
                    "  covered {:<40} {:<20} {}",
                    t.id,
                    t.tactic,
                    titles.join("; ")
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_tags_name_techniques_and_sub_techniques_only() {
        assert_eq!(attack_technique("attack.t1562.008").as_deref(), Some("T1562.008"));
        assert_eq!(attack_technique("attack.t1098").as_deref(), Some("T1098"));
        assert_eq!(attack_technique("attack.persistence"), None);
        assert_eq!(attack_technique("attack.ta0003"), None);
        assert_eq!(attack_technique("car.2013-01-002"), None);
    }

    #[test]
    fn every_catalogue_entry_is_covered_by_the_shipped_rules() {
        let rules = RuleSet::builtin().unwrap();
        let catalogue = Catalogue::builtin();
        assert!(catalogue.techniques.len() >= 44);
        let coverage = Coverage::of(&rules, &catalogue);
        let missing: Vec<_> = coverage.uncovered().iter().map(|e| &e.technique.id).collect();
        assert!(missing.is_empty(), "{missing:?}");
        // Every rule the catalogue names is loaded and covering, not only one per entry.
        let problems: Vec<_> = coverage.entries.iter().flat_map(|e| &e.problems).collect();
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn an_entry_whose_rules_are_missing_is_reported_uncovered() {
        let rules = RuleSet::empty();
        let catalogue = Catalogue::parse(
            "[[technique]]\nid = \"cloudtrail-stop\"\ntactic = \"defense-evasion\"\nrules = [\"nope\"]\n",
        )
        .unwrap();
        let coverage = Coverage::of(&rules, &catalogue);
        assert_eq!(coverage.uncovered().len(), 1);
        assert!(coverage.render(&rules).contains("MISSING cloudtrail-stop"));
        assert!(coverage.render(&rules).contains("catalogue: 0 of 1"));
    }
}
