//! `rate_spike` and `error_spike`: an interval of a principal's calls, or of its denied calls,
//! that stands out against its own history of active intervals. Each is raised once per interval.

use super::{anomaly, baseline_info};
use crate::anomaly::{anomaly_id, Anomaly, Kind};
use crate::baseline::PrincipalBaseline;
use crate::config::DetectorSettings;
use crate::event::{format_time, Event};

/// Counts `event` in its interval and appends the spikes the interval now makes to `out`;
/// false when the interval is older than the history kept (the event is not counted).
pub(super) fn judge(
    event: &Event,
    baseline: &mut PrincipalBaseline,
    s: &DetectorSettings,
    out: &mut Vec<Anomaly>,
) -> bool {
    let interval_index = event.time.div_euclid(s.interval);
    let history = (
        baseline.rate.intervals,
        baseline.rate.mean_events,
        baseline.rate.mean_denied,
    );
    let Some(interval) = baseline.rate.count(interval_index, event.is_denied()) else {
        return false;
    };
    let counts = *interval;
    let raise_rate = s.rate.as_ref().is_some_and(|rate| {
        !counts.raised_rate
            && counts.events >= rate.min_events
            && history.0 >= rate.min_intervals
            && counts.events as f64 >= rate.factor * history.1.max(1.0)
    });
    let raise_denied = s.errors.as_ref().is_some_and(|errors| {
        !counts.raised_denied
            && counts.denied >= errors.min_errors
            && counts.denied as f64 >= errors.min_ratio * counts.events as f64
            && counts.denied as f64 >= errors.factor * history.2.max(1.0)
    });
    interval.raised_rate |= raise_rate;
    interval.raised_denied |= raise_denied;
    if raise_rate {
        out.push(rate_spike(
            event,
            baseline,
            Kind::RateSpike,
            counts.events,
            history.1,
            interval_index,
            s.interval,
        ));
    }
    if raise_denied {
        out.push(rate_spike(
            event,
            baseline,
            Kind::ErrorSpike,
            counts.denied,
            history.2,
            interval_index,
            s.interval,
        ));
    }
    true
}

fn rate_spike(
    event: &Event,
    baseline: &PrincipalBaseline,
    kind: Kind,
    count: u64,
    mean: f64,
    interval_index: i64,
    interval: i64,
) -> Anomaly {
    let ratio = count as f64 / mean.max(1.0);
    let score = (0.4 + ratio.log10() / 5.0).clamp(0.4, 0.95);
    let what = if kind == Kind::RateSpike {
        "calls"
    } else {
        "denied calls"
    };
    let reason = format!(
        "{count} {what} in the interval from {} against a mean of {mean:.1} per active interval ({ratio:.0}x)",
        format_time(interval_index * interval)
    );
    let id = anomaly_id(&[kind.as_str(), &event.principal.key, &interval_index.to_string()]);
    let mut a = anomaly(event, kind, id, score, baseline_info(baseline, true), reason);
    a.count = count;
    a
}
