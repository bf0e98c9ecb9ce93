//! `rule_match`: the Sigma rules a record matched, and the thresholds (correlations) counted per
//! principal that an event completes.

use std::sync::Arc;

use rsigma_eval::ResultBody;

use super::{anomaly, baseline_info, Detector};
use crate::anomaly::{anomaly_id, Anomaly, BaselineInfo, Kind, Severity};
use crate::event::{format_time_compact, Event};
use crate::view::RecordView;

impl Detector {
    /// Rule matches: one anomaly per matched rule (base rules of thresholds excepted), and the
    /// thresholds the event completes.
    pub(super) fn match_rules(&mut self, event: &Event, out: &mut Vec<Anomaly>) {
        if event.rule_hits.is_empty() {
            return;
        }
        // Compiled now if there are thresholds: below, the rules and the engine are borrowed apart.
        self.correlations();
        let Some(rules) = &self.rules else { return };
        let baseline = self.principals.get(&event.principal_digest()).map(|(_, b)| b);
        let info = |mature| {
            baseline.map_or(
                BaselineInfo {
                    events: 0,
                    since: format_time_compact(event.time),
                    mature,
                },
                |b| baseline_info(b, mature),
            )
        };
        let mature = baseline
            .is_some_and(|b| b.is_mature(self.settings.learning_period, self.settings.learning_events));
        for &hit in &event.rule_hits {
            let rule = &rules.rules()[usize::from(hit)];
            if rule.feeds_correlation_only || rule.is_correlation {
                continue;
            }
            let id = anomaly_id(&[Kind::RuleMatch.as_str(), &rule.id, &event.event_id]);
            let reason = rule.match_reason.clone();
            out.push(rule_anomaly(event, rule, id, info(mature), reason));
        }
        let (Some(engine), Some(raw)) = (&mut self.correlations, &event.raw) else {
            return;
        };
        let Some(view) = RecordView::new(raw) else { return };
        for result in rules.correlate(engine, &view, &event.rule_hits, event.time) {
            let ResultBody::Correlation(body) = &result.body else {
                continue;
            };
            let Some(index) = rules.lookup(result.header.rule_id.as_deref(), &result.header.rule_title)
            else {
                continue;
            };
            let rule = &rules.rules()[index];
            let group: Vec<String> = body.group_key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let id = anomaly_id(&[
                Kind::RuleMatch.as_str(),
                &rule.id,
                &group.join(","),
                &event.event_id,
            ]);
            let reason = format!(
                "{} matching events within {}s ({})",
                body.aggregated_value,
                body.timespan_secs,
                group.join(", ")
            );
            let mut a = rule_anomaly(event, rule, id, info(mature), reason);
            a.count = body.aggregated_value.max(1.0) as u64;
            let refs = body.event_refs.iter().flatten().filter_map(|r| r.id.clone());
            let mut ids: Vec<String> = refs.filter(|id| *id != event.event_id).collect();
            ids.truncate(crate::alert::MAX_EVENT_IDS - 1);
            a.evidence.event_ids.extend(ids);
            out.push(a);
        }
    }
}

fn level_score(level: Severity) -> f64 {
    match level {
        Severity::Info => 0.1,
        Severity::Low => 0.3,
        Severity::Medium => 0.5,
        Severity::High => 0.8,
        Severity::Critical => 0.95,
    }
}

/// A `rule_match` anomaly for `rule`, at the rule's level.
fn rule_anomaly(
    event: &Event,
    rule: &crate::rules::RuleInfo,
    id: String,
    baseline: BaselineInfo,
    reason: String,
) -> Anomaly {
    let (severity, outcome) = rule.verdict(event.error_code.as_deref());
    let mut a = anomaly(
        event,
        Kind::RuleMatch,
        id,
        level_score(severity),
        baseline,
        reason,
    );
    a.severity = severity;
    a.outcome = outcome;
    if let (Some(crate::anomaly::Outcome::Failed), Some(code)) = (outcome, &event.error_code) {
        a.reason = format!("{} on a call that failed ({code})", a.reason);
    }
    a.rule = Some(Arc::clone(&rule.shown));
    a
}
