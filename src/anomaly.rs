//! The anomaly event, schema `trailwatch.anomaly/v1`: what every detector emits and every sink
//! writes, one JSON object per line or message, keyed by principal.
//!
//! Guarantees: `id` is a digest of what the anomaly is about (kind, principal, triggering eventID,
//! and the interval for rate detectors), never of wall-clock time, so replaying the same input
//! yields the same ids and consumers can drop duplicates. `evidence.event_ids` always names the
//! CloudTrail `eventID`s behind the anomaly.

use std::borrow::Cow;
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::event::{format_time_compact, Event};
use crate::principal::Principal;

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
///
/// An alert storm raises an anomaly for each of thousands of events, so what an anomaly holds is
/// cheap to build: times are inline strings, the principal, the rule, the agent and the object
/// are shared with the event and the rule set rather than copied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Anomaly {
    pub schema: Cow<'static, str>,
    pub id: String,
    pub kind: Kind,
    pub severity: Severity,
    pub score: f64,
    pub detected_at: CompactString,
    pub event_time: CompactString,
    /// Event time of the first and last events folded into this anomaly.
    pub first_seen: CompactString,
    pub last_seen: CompactString,
    pub principal: PrincipalInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<RuleInfo>>,
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

/// Who an anomaly is about: the event's principal, shared with the event. Written as
/// `{"key", "type", "account_id", "arn", "session"}`, the session left out when there is none.
#[derive(Debug, Clone)]
pub struct PrincipalInfo(pub Arc<Principal>);

impl std::ops::Deref for PrincipalInfo {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

/// [`PrincipalInfo`] as the schema writes it.
#[derive(Serialize, Deserialize)]
struct PrincipalFields<P> {
    key: P,
    #[serde(rename = "type")]
    kind: P,
    account_id: Option<P>,
    arn: Option<P>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<P>,
}

impl Serialize for PrincipalInfo {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let p = &*self.0;
        PrincipalFields {
            key: p.key.as_str(),
            kind: p.kind.as_str(),
            account_id: p.account_id.as_deref(),
            arn: p.arn.as_deref(),
            session: p.session.as_deref(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PrincipalInfo {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let p = PrincipalFields::<CompactString>::deserialize(deserializer)?;
        Ok(PrincipalInfo(Arc::new(Principal {
            key: p.key,
            kind: p.kind,
            account_id: p.account_id,
            arn: p.arn,
            session: p.session,
        })))
    }
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
    pub since: CompactString,
    pub mature: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Evidence {
    pub event_ids: Vec<String>,
    pub event_name: CompactString,
    pub event_source: CompactString,
    pub source_ip: Option<CompactString>,
    pub user_agent: Option<Arc<str>>,
    pub aws_region: Option<CompactString>,
    pub error_code: Option<CompactString>,
    pub object: Arc<str>,
}

impl Evidence {
    /// The evidence of one event: its fields as the event holds them (short ones inline, the
    /// agent and the object shared).
    pub fn of(event: &Event) -> Evidence {
        Evidence {
            event_ids: vec![event.event_id.to_string()],
            event_name: event.event_name.clone(),
            event_source: event.event_source.clone(),
            source_ip: event.source.clone(),
            user_agent: event.user_agent.clone(),
            aws_region: event.aws_region.clone(),
            error_code: event.error_code.clone(),
            object: Arc::clone(&event.object),
        }
    }
}

impl PrincipalInfo {
    pub fn of(event: &Event) -> PrincipalInfo {
        PrincipalInfo(Arc::clone(&event.principal))
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
pub fn now_rfc3339() -> CompactString {
    format_time_compact(chrono::Utc::now().timestamp())
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
