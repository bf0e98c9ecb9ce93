//! Scoring anomalies against a generated trail's labels.
//!
//! In: `labels.jsonl` (one `{"event_id","incident"}` per injected event) and the anomalies a
//! replay raised. Out: which incidents were found (an anomaly names one of their events) and how
//! many anomalies name no injected event at all (false positives).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use crate::anomaly::Anomaly;

#[derive(Debug, Deserialize)]
struct Label {
    event_id: String,
    incident: String,
}

/// The injected events of a trail, by eventID.
#[derive(Debug, Default)]
pub struct Labels {
    incident_of: HashMap<String, String>,
}

/// How a replay did against the labels.
#[derive(Debug, Default)]
pub struct Score {
    /// Every incident, with the number of anomalies that name one of its events.
    pub found: BTreeMap<String, u64>,
    pub false_positives: u64,
}

impl Score {
    pub fn missed(&self) -> Vec<&str> {
        self.found
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

impl Labels {
    pub fn load(path: &Path) -> std::io::Result<Labels> {
        let text = std::fs::read_to_string(path)?;
        let mut incident_of = HashMap::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let label: Label = serde_json::from_str(line).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}:{}: {e}", path.display(), n + 1),
                )
            })?;
            incident_of.insert(label.event_id, label.incident);
        }
        Ok(Labels { incident_of })
    }

    pub fn len(&self) -> usize {
        self.incident_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.incident_of.is_empty()
    }

    pub fn incident_of(&self, event_id: &str) -> Option<&str> {
        self.incident_of.get(event_id).map(String::as_str)
    }

    /// Scores anomalies: each is credited to the incidents whose events it names, or counted as
    /// a false positive when it names none.
    pub fn score<'a>(&self, anomalies: impl IntoIterator<Item = &'a Anomaly>) -> Score {
        self.score_evidence(anomalies.into_iter().map(|a| a.evidence.event_ids.as_slice()))
    }

    /// As [`Labels::score`], given each anomaly's `evidence.event_ids`.
    pub fn score_evidence<'a>(&self, evidence: impl IntoIterator<Item = &'a [String]>) -> Score {
        let mut score = Score::default();
        for incident in self.incident_of.values() {
            score.found.entry(incident.clone()).or_insert(0);
        }
        for event_ids in evidence {
            let mut credited = false;
            for id in event_ids {
                if let Some(incident) = self.incident_of.get(id) {
                    *score.found.entry(incident.clone()).or_default() += 1;
                    credited = true;
                    break;
                }
            }
            if !credited {
                score.false_positives += 1;
            }
        }
        score
    }
}
