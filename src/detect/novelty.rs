//! `new_value`: a mature principal's first use of a value on one or more dimensions (service,
//! API call, source address, network, user-agent family, region), scored `1 - Π(1 - weight)` over
//! the novel dimensions so that several at once score higher.

use compact_str::CompactString;

use super::{anomaly, baseline_info};
use crate::anomaly::{anomaly_id, Anomaly, DimensionBaseline, DimensionReport, Kind};
use crate::baseline::{Dimension, PrincipalBaseline, Seen, DIMENSIONS};
use crate::config::DetectorSettings;
use crate::event::{format_time, Event};
use crate::net::write_network_prefix;
use crate::useragent::AgentFamilies;

/// The anomaly `event` raises, given what its `values` were to the baseline (`seen`, observed
/// already), if its novel dimensions weigh enough.
pub(super) fn judge(
    event: &Event,
    baseline: &PrincipalBaseline,
    s: &DetectorSettings,
    values: &[Option<&str>; DIMENSIONS],
    seen: [Option<Seen>; DIMENSIONS],
) -> Option<Anomaly> {
    let novelty = s.novelty.as_ref()?;
    let score = 1.0
        - seen
            .iter()
            .zip(novelty.weights)
            .filter(|(seen, _)| matches!(seen, Some(Seen::Novel)))
            .map(|(_, w)| 1.0 - w)
            .product::<f64>();
    if score < novelty.min_score || score <= 0.0 {
        return None;
    }
    let reports = Dimension::ALL
        .iter()
        .zip(seen)
        .enumerate()
        .filter_map(|(i, (&d, seen))| Some(dimension_report(baseline, d, values[i]?, seen?)))
        .collect();
    Some(new_value(event, baseline, score, reports))
}

/// The dimension values an event does not hold as they stand (its API call, its network, the
/// family of an agent not classified yet), built in buffers reused from event to event so that
/// judging an event copies and allocates nothing.
#[derive(Default)]
pub(super) struct DimensionValues {
    api_call: String,
    network: String,
    family: CompactString,
}

impl DimensionValues {
    /// `event`'s value on each dimension, in [`Dimension::ALL`] order.
    pub(super) fn of<'v>(
        &'v mut self,
        event: &'v Event,
        agents: &mut AgentFamilies,
    ) -> [Option<&'v str>; DIMENSIONS] {
        self.api_call.clear();
        self.api_call.push_str(&event.event_source);
        self.api_call.push(':');
        self.api_call.push_str(&event.event_name);
        self.network.clear();
        if let Some(ip) = event.ip {
            write_network_prefix(ip, &mut self.network);
        }
        let family = match (&event.agent_family, &event.user_agent) {
            (Some(family), _) => Some(family.as_str()),
            (None, Some(agent)) => {
                self.family = agents.family(agent);
                Some(self.family.as_str())
            }
            (None, None) => None,
        };
        [
            Some(&event.event_source),
            Some(&self.api_call),
            event.source.as_deref(),
            event.ip.map(|_| self.network.as_str()),
            family,
            event.aws_region.as_deref(),
        ]
    }
}

/// Describes one dimension of an event against the baseline it met. Called after the event was
/// observed, so the event's own value is left out of `distinct` and `top` when it is novel.
fn dimension_report(
    baseline: &PrincipalBaseline,
    dimension: Dimension,
    value: &str,
    seen: Seen,
) -> DimensionReport {
    let set = &baseline.dimensions[dimension as usize];
    let (novel, first_seen) = match seen {
        Seen::Known { first_seen } => (false, Some(format_time(first_seen))),
        Seen::Novel => (true, None),
    };
    DimensionReport {
        name: dimension.name().into(),
        value: value.to_owned(),
        novel,
        baseline: DimensionBaseline {
            distinct: set.len() - usize::from(novel),
            first_seen,
            top: set
                .top(4)
                .into_iter()
                .filter(|v| !novel || *v != value)
                .take(3)
                .map(Into::into)
                .collect(),
        },
    }
}

fn new_value(
    event: &Event,
    baseline: &PrincipalBaseline,
    score: f64,
    mut reports: Vec<DimensionReport>,
) -> Anomaly {
    let novel: Vec<&str> = reports
        .iter()
        .filter(|r| r.novel)
        .map(|r| r.name.as_ref())
        .collect();
    let reason = format!("first use by this principal of: {}", novel.join(", "));
    reports.sort_by_key(|r| !r.novel);
    let id = anomaly_id(&[Kind::NewValue.as_str(), &event.principal.key, &event.event_id]);
    let mut a = anomaly(
        event,
        Kind::NewValue,
        id,
        score,
        baseline_info(baseline, true),
        reason,
    );
    a.dimensions = reports;
    a
}
