//! The anomaly event, schema `trailwatch.anomaly/v1`: what every detector emits and every sink
//! writes, one JSON object per line or message, keyed by principal.
//!
//! Guarantees: `id` is a digest of what the anomaly is about (kind, principal, triggering eventID,
//! and the interval for rate detectors), never of wall-clock time, so replaying the same input
//! yields the same ids and consumers can drop duplicates. `evidence.event_ids` always names the
//! CloudTrail `eventID`s behind the anomaly.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::event::{format_time, Event};

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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Anomaly {
    pub schema: Cow<'static, str>,
    pub id: String,
    pub kind: Kind,
    pub severity: Severity,
    pub score: f64,
    pub detected_at: String,
    pub event_time: String,
    /// Event time of the first and last events folded into this anomaly.
    pub first_seen: String,
    pub last_seen: String,
    pub principal: PrincipalInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleInfo>,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrincipalInfo {
    pub key: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub account_id: Option<String>,
    pub arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleInfo {
    pub id: String,
    pub title: String,
    pub tags: Vec<String>,
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
    pub since: String,
    pub mature: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evidence {
    pub event_ids: Vec<String>,
    pub event_name: String,
    pub event_source: String,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub aws_region: Option<String>,
    pub error_code: Option<String>,
    pub object: String,
}

impl Evidence {
    pub fn of(event: &Event) -> Evidence {
        Evidence {
            event_ids: vec![event.event_id.to_string()],
            event_name: event.event_name.to_string(),
            event_source: event.event_source.to_string(),
            source_ip: event.source.as_deref().map(Into::into),
            user_agent: event.user_agent.as_deref().map(Into::into),
            aws_region: event.aws_region.as_deref().map(Into::into),
            error_code: event.error_code.as_deref().map(Into::into),
            object: event.object.to_string(),
        }
    }
}

impl PrincipalInfo {
    pub fn of(event: &Event) -> PrincipalInfo {
        let p = &event.principal;
        PrincipalInfo {
            key: p.key.to_string(),
            kind: p.kind.to_string(),
            account_id: p.account_id.as_deref().map(Into::into),
            arn: p.arn.as_deref().map(Into::into),
            session: p.session.as_deref().map(Into::into),
        }
    }
}

/// The deterministic id of an anomaly: a digest of its identifying parts.
pub fn anomaly_id(parts: &[&str]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update(&[0x1f]);
    }
    format!("{:032x}", hasher.digest128())
}

/// The current wall-clock time, for `detected_at`.
pub fn now_rfc3339() -> String {
    format_time(chrono::Utc::now().timestamp())
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
