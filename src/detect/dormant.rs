//! `dormant_principal`: a principal active again after a silence longer than `dormant.after`.

use super::{anomaly, baseline_info};
use crate::anomaly::{anomaly_id, Anomaly, Kind};
use crate::baseline::PrincipalBaseline;
use crate::config::DetectorSettings;
use crate::event::{format_time, Event};

/// The anomaly `event` raises if its principal, with enough history, was silent for
/// `dormant.after` or longer. Judged before the event is counted in the baseline.
pub(super) fn judge(
    event: &Event,
    baseline: &PrincipalBaseline,
    s: &DetectorSettings,
    mature: bool,
) -> Option<Anomaly> {
    let after = s.dormant_after?;
    let silence = event.time - baseline.last_seen;
    (baseline.events >= s.dormant_min_events && silence >= after)
        .then(|| dormant(event, baseline, silence, mature))
}

fn dormant(event: &Event, baseline: &PrincipalBaseline, silence: i64, mature: bool) -> Anomaly {
    let days = silence as f64 / 86_400.0;
    let score = (0.5 + days / 60.0).min(0.9);
    let reason = format!(
        "active again after {days:.1} days of silence (last seen {})",
        format_time(baseline.last_seen)
    );
    let id = anomaly_id(&[
        Kind::DormantPrincipal.as_str(),
        &event.principal.key,
        &event.event_id,
    ]);
    anomaly(
        event,
        Kind::DormantPrincipal,
        id,
        score,
        baseline_info(baseline, mature),
        reason,
    )
}
