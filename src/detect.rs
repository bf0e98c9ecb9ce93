//! The stateful half: baselines and the detectors that judge each event against them.
//!
//! In: [`Event`]s of the principals this shard owns (every event of one principal must reach the
//! same [`Detector`]; [`shard_of`] says which). Out: [`Anomaly`]s.
//!
//! Per event, in order: drop it if its eventID was seen (CloudTrail repeats records); raise
//! `dormant_principal` if the principal was silent longer than `dormant.after`; raise one
//! `new_value` anomaly listing every dimension new for a mature principal, scored
//! `1 - Π(1 - weight)` over the novel dimensions so that several at once score higher; count the
//! event in its rate interval and raise `rate_spike` / `error_spike` once per interval when the
//! interval stands out against the principal's own history. All of it is driven by event time.
//!
//! Memory is bounded: values per dimension are capped ([`crate::baseline`]), principals idle past
//! `idle_expiry` are swept, the principal count is capped (least recently active go first), and
//! the eventID memory is two bounded generations.

use compact_str::CompactString;
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::hash_map::Entry;
use std::collections::BTreeSet;

use std::sync::Arc;

use rsigma_eval::{CorrelationEngine, ResultBody};

use crate::alert::{AlertFolder, AlertStats};
use crate::anomaly::{
    anomaly_id, now_rfc3339, Anomaly, BaselineInfo, DimensionBaseline, DimensionReport, Evidence, Kind,
    PrincipalInfo, Severity, SCHEMA,
};
use crate::baseline::{Dimension, PrincipalBaseline, Seen, DIMENSIONS};
use crate::config::DetectorSettings;
use crate::event::{format_time, format_time_compact, Event};
use crate::net::write_network_prefix;
use crate::rules::RuleSet;
use crate::useragent::AgentFamilies;
use crate::view::RecordView;

/// The shard that owns a principal, out of `shards`.
pub fn shard_of(principal_key: &str, shards: usize) -> usize {
    (xxhash_rust::xxh3::xxh3_64(principal_key.as_bytes()) % shards as u64) as usize
}

/// A shard's whole state, as a snapshot holds it: baselines, the eventID memory, threshold-rule
/// counters and the alerts still open for repeats, with the clock they were judged by.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DetectorState {
    pub principals: Vec<(CompactString, PrincipalBaseline)>,
    /// Hashes of the eventIDs remembered for de-duplication, by minute of event time.
    pub seen_ids: SeenIds,
    pub watermark: i64,
    #[serde(default)]
    pub next_sweep: Option<i64>,
    /// Threshold rules' windows, by rule id (see `CorrelationEngine::export_state`).
    #[serde(default)]
    pub correlations: Option<rsigma_eval::CorrelationSnapshot>,
    #[serde(default)]
    pub open_alerts: Vec<crate::alert::Open>,
}

/// Hashes of eventIDs by minute of event time, as a checkpoint keeps them.
pub type SeenIds = Vec<(i64, Vec<u64>)>;

/// Counters a detector keeps about itself.
#[derive(Debug, Clone, Default)]
pub struct DetectorStats {
    pub events: u64,
    pub duplicates: u64,
    pub late_for_rate: u64,
    pub principals_expired: u64,
    pub principals_evicted: u64,
}

/// One shard's baselines and detectors.
pub struct Detector {
    settings: DetectorSettings,
    principals: FxHashMap<CompactString, PrincipalBaseline>,
    seen_ids: EventIdMemory,
    /// Latest event time seen: the shard's clock.
    watermark: i64,
    next_sweep: i64,
    rules: Option<Arc<RuleSet>>,
    /// Threshold (correlation) rules: counted per shard, since they group by principal.
    correlations: Option<CorrelationEngine>,
    alerts: AlertFolder,
    /// Anomalies raised by the current event, before the alert lifecycle.
    raised: Vec<Anomaly>,
    dimension_values: DimensionValues,
    agents: AgentFamilies,
    pub stats: DetectorStats,
}

impl Detector {
    /// A detector for one shard of `shards`; capacities are divided between shards.
    pub fn new(settings: DetectorSettings, shards: usize) -> Self {
        Detector::with_rules(settings, shards, None)
    }

    /// A detector that also raises `rule_match` anomalies for the rules records matched.
    pub fn with_rules(settings: DetectorSettings, shards: usize, rules: Option<Arc<RuleSet>>) -> Self {
        let shards = shards.max(1);
        let mut settings = settings;
        settings.max_principals = (settings.max_principals / shards).max(1);
        let dedup = (settings.dedup_capacity / shards).max(1);
        Detector {
            principals: FxHashMap::default(),
            seen_ids: EventIdMemory::new(dedup),
            watermark: i64::MIN,
            next_sweep: i64::MIN,
            correlations: rules.as_ref().and_then(|r| r.correlation_engine()),
            rules,
            alerts: AlertFolder::new(settings.alerts.clone()),
            raised: Vec::new(),
            dimension_values: DimensionValues::default(),
            agents: AgentFamilies::default(),
            settings,
            stats: DetectorStats::default(),
        }
    }

    /// The shard's whole state, for a snapshot; open alerts stay open.
    pub fn snapshot(&self) -> DetectorState {
        let mut principals: Vec<(CompactString, PrincipalBaseline)> = self
            .principals
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        principals.sort_by(|a, b| a.0.cmp(&b.0));
        DetectorState {
            principals,
            seen_ids: self.seen_ids.snapshot(),
            watermark: self.watermark,
            next_sweep: Some(self.next_sweep),
            correlations: self.correlations.as_ref().map(CorrelationEngine::export_state),
            open_alerts: self.alerts.open_alerts(),
        }
    }

    /// Takes up a snapshot's state in a new detector.
    pub fn restore_state(&mut self, state: DetectorState) {
        self.restore(state.principals, &state.seen_ids, state.watermark);
        if let Some(next) = state.next_sweep {
            self.next_sweep = next;
        }
        if let (Some(engine), Some(snapshot)) = (&mut self.correlations, state.correlations) {
            if !engine.import_state(snapshot) {
                tracing::warn!("threshold-rule state of another format was not restored");
            }
        }
        self.alerts.restore_open(state.open_alerts);
    }

    /// Emits the open alerts whose window has passed by `now`, an input watermark that may run
    /// ahead of the events judged.
    pub fn expire_alerts(&mut self, now: i64, out: &mut Vec<Anomaly>) {
        self.alerts.expire_now(now, out);
    }

    /// Adds a checkpoint's state (or the part of it this shard owns).
    pub fn restore(
        &mut self,
        principals: impl IntoIterator<Item = (CompactString, PrincipalBaseline)>,
        seen_ids: &[(i64, Vec<u64>)],
        watermark: i64,
    ) {
        self.principals.extend(principals);
        for (minute, ids) in seen_ids {
            for id in ids {
                self.seen_ids.insert_hash(*minute, *id);
            }
        }
        self.watermark = self.watermark.max(watermark);
    }

    /// What the alert lifecycle did.
    pub fn alert_stats(&self) -> &AlertStats {
        &self.alerts.stats
    }

    /// Emits every anomaly still held by the alert lifecycle (end of input, shutdown).
    pub fn flush(&mut self, out: &mut Vec<Anomaly>) {
        self.alerts.flush(out);
    }

    pub fn principals(&self) -> usize {
        self.principals.len()
    }

    pub fn values_held(&self) -> usize {
        self.principals.values().map(PrincipalBaseline::values_held).sum()
    }

    /// Approximate bytes held by baselines, keys included.
    pub fn bytes_held(&self) -> usize {
        self.principals
            .iter()
            .map(|(k, b)| {
                b.bytes()
                    + std::mem::size_of::<CompactString>()
                    + if k.is_heap_allocated() { k.len() } else { 0 }
            })
            .sum()
    }

    /// Judges one event, appending any anomalies it raises to `out`.
    pub fn process(&mut self, event: &Event, out: &mut Vec<Anomaly>) {
        if !self.seen_ids.insert(event.time, &event.event_id) {
            self.stats.duplicates += 1;
            return;
        }
        self.stats.events += 1;
        self.advance_clock(event.time);
        let mut raised = std::mem::take(&mut self.raised);
        self.judge(event, &mut raised);
        self.match_rules(event, &mut raised);
        for anomaly in raised.drain(..) {
            self.alerts.admit(anomaly, event.time, out);
        }
        self.alerts.expire(self.watermark, out);
        self.raised = raised;
    }

    /// Rule matches: one anomaly per matched rule (base rules of thresholds excepted), and the
    /// thresholds the event completes.
    fn match_rules(&mut self, event: &Event, out: &mut Vec<Anomaly>) {
        let Some(rules) = &self.rules else { return };
        if event.rule_hits.is_empty() {
            return;
        }
        let baseline = self.principals.get(event.principal.key.as_str());
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

    /// The baseline detectors.
    fn judge(&mut self, event: &Event, out: &mut Vec<Anomaly>) {
        let s = &self.settings;
        let baseline = match self.principals.get_mut(event.principal.key.as_str()) {
            Some(b) => b,
            None => {
                if self.principals.len() >= s.max_principals {
                    self.evict_least_active();
                }
                self.principals
                    .entry(event.principal.key.clone())
                    .or_insert_with(|| PrincipalBaseline::new(event.time))
            }
        };
        let s = &self.settings;
        let mature = baseline.is_mature(s.learning_period, s.learning_events);

        if let Some(after) = s.dormant_after {
            let silence = event.time - baseline.last_seen;
            if baseline.events >= s.dormant_min_events && silence >= after {
                out.push(dormant(event, baseline, silence, mature));
            }
        }

        let values = self.dimension_values.of(event, &mut self.agents);
        let seen: [Option<Seen>; DIMENSIONS] = std::array::from_fn(|i| {
            let value = values[i]?;
            Some(baseline.dimensions[i].observe(value, event.time, s.window, s.max_values_per_dimension))
        });
        if let (true, Some(novelty)) = (mature, &s.novelty) {
            let score = 1.0
                - seen
                    .iter()
                    .zip(novelty.weights)
                    .filter(|(seen, _)| matches!(seen, Some(Seen::Novel)))
                    .map(|(_, w)| 1.0 - w)
                    .product::<f64>();
            if score >= novelty.min_score && score > 0.0 {
                let reports = Dimension::ALL
                    .iter()
                    .zip(seen)
                    .enumerate()
                    .filter_map(|(i, (&d, seen))| Some(dimension_report(baseline, d, values[i]?, seen?)))
                    .collect();
                out.push(new_value(event, baseline, score, reports));
            }
        }

        let interval_index = event.time.div_euclid(s.interval);
        let history = (
            baseline.rate.intervals,
            baseline.rate.mean_events,
            baseline.rate.mean_denied,
        );
        let Some(interval) = baseline.rate.count(interval_index, event.is_denied()) else {
            self.stats.late_for_rate += 1;
            baseline.events += 1;
            baseline.first_seen = baseline.first_seen.min(event.time);
            return;
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

        baseline.events += 1;
        baseline.first_seen = baseline.first_seen.min(event.time);
        baseline.last_seen = baseline.last_seen.max(event.time);
    }

    /// Moves the shard's clock and, once per day of event time, sweeps idle principals and
    /// expired values.
    fn advance_clock(&mut self, time: i64) {
        self.watermark = self.watermark.max(time);
        if self.watermark < self.next_sweep {
            return;
        }
        self.next_sweep = self.watermark + 86_400;
        let idle_horizon = self.watermark - self.settings.idle_expiry;
        let value_horizon = self.watermark - self.settings.window;
        let before = self.principals.len();
        self.principals.retain(|_, b| b.last_seen >= idle_horizon);
        self.stats.principals_expired += (before - self.principals.len()) as u64;
        for b in self.principals.values_mut() {
            b.dimensions.iter_mut().for_each(|d| d.expire(value_horizon));
        }
    }

    /// Forgets the least recently active tenth of the principals, making room at the cap in
    /// amortised constant time per new principal.
    fn evict_least_active(&mut self) {
        let mut last_seen: Vec<i64> = self.principals.values().map(|b| b.last_seen).collect();
        let drop = (last_seen.len() / 10).max(1);
        let (_, cutoff, _) = last_seen.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        let before = self.principals.len();
        let mut budget = drop;
        self.principals.retain(|_, b| {
            if budget > 0 && b.last_seen <= cutoff {
                budget -= 1;
                false
            } else {
                true
            }
        });
        self.stats.principals_evicted += (before - self.principals.len()) as u64;
    }
}

/// The dimension values an event does not hold as they stand (its API call, its network, the
/// family of an agent not classified yet), built in buffers reused from event to event so that
/// judging an event copies and allocates nothing.
#[derive(Default)]
struct DimensionValues {
    api_call: String,
    network: String,
    family: CompactString,
}

impl DimensionValues {
    /// `event`'s value on each dimension, in [`Dimension::ALL`] order.
    fn of<'v>(&'v mut self, event: &'v Event, agents: &mut AgentFamilies) -> [Option<&'v str>; DIMENSIONS] {
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

fn baseline_info(baseline: &PrincipalBaseline, mature: bool) -> BaselineInfo {
    BaselineInfo {
        events: baseline.events,
        since: format_time_compact(baseline.first_seen),
        mature,
    }
}

fn anomaly(
    event: &Event,
    kind: Kind,
    id: String,
    score: f64,
    baseline: BaselineInfo,
    reason: String,
) -> Anomaly {
    let time = format_time_compact(event.time);
    Anomaly {
        schema: SCHEMA.into(),
        id,
        kind,
        severity: Severity::from_score(score),
        score: (score * 1000.0).round() / 1000.0,
        detected_at: now_rfc3339(),
        event_time: time.clone(),
        first_seen: time.clone(),
        last_seen: time,
        principal: PrincipalInfo::of(event),
        rule: None,
        outcome: None,
        dimensions: Vec::new(),
        baseline,
        evidence: Evidence::of(event),
        reason,
        count: 1,
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

/// The eventIDs a shard has seen, as 64-bit hashes, by minute of event time. A duplicate carries
/// its original's `eventTime`, so it is looked for among the IDs of that minute alone: a table
/// small enough to stay in cache while a stream's events of that minute go by (one table of every
/// ID cost a cache miss per event, and regrew as it filled). Bounded: past `capacity` IDs the
/// oldest minutes are forgotten first, so a file delivered twice is recognised however late the
/// second copy comes, as long as its minute is still held.
struct EventIdMemory {
    capacity: usize,
    held: usize,
    by_minute: FxHashMap<i64, FxHashSet<u64>>,
    /// The minutes held, oldest first.
    minutes: BTreeSet<i64>,
}

impl EventIdMemory {
    fn new(capacity: usize) -> Self {
        EventIdMemory {
            capacity,
            held: 0,
            by_minute: FxHashMap::default(),
            minutes: BTreeSet::new(),
        }
    }

    /// Remembers `id`, of an event at `time`; false when it was already remembered.
    fn insert(&mut self, time: i64, id: &str) -> bool {
        self.insert_hash(time.div_euclid(60), xxhash_rust::xxh3::xxh3_64(id.as_bytes()))
    }

    fn insert_hash(&mut self, minute: i64, hash: u64) -> bool {
        let ids = match self.by_minute.entry(minute) {
            Entry::Occupied(held) => held.into_mut(),
            Entry::Vacant(new) => {
                self.minutes.insert(minute);
                new.insert(FxHashSet::default())
            }
        };
        if !ids.insert(hash) {
            return false;
        }
        self.held += 1;
        while self.held > self.capacity {
            let Some(oldest) = self.minutes.pop_first() else {
                break;
            };
            self.held -= self.by_minute.remove(&oldest).map_or(0, |ids| ids.len());
        }
        true
    }

    /// Every hash held, by minute, oldest first.
    fn snapshot(&self) -> SeenIds {
        self.minutes
            .iter()
            .filter_map(|m| {
                let mut ids: Vec<u64> = self.by_minute.get(m)?.iter().copied().collect();
                ids.sort_unstable();
                Some((*m, ids))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::principal::Principal;
    use std::sync::Arc;

    const HOUR: i64 = 3600;
    const DAY: i64 = 86_400;

    fn settings() -> DetectorSettings {
        let mut s = Settings::default().detector;
        s.alerts.dedup_window = 0;
        s.learning_period = DAY;
        s.learning_events = 10;
        s
    }

    fn event(id: &str, time: i64, name: &str, ip: &str) -> Event {
        Event {
            event_id: id.into(),
            time,
            event_source: "s3.amazonaws.com".into(),
            event_name: name.into(),
            aws_region: Some("us-east-1".into()),
            source: Some(ip.into()),
            ip: ip.parse().ok(),
            user_agent: Some("aws-cli/2.0".into()),
            agent_family: None,
            error_code: None,
            principal: Arc::new(Principal {
                key: "arn:aws:iam::1:user/u".into(),
                kind: "IAMUser".into(),
                account_id: Some("1".into()),
                arn: Some("arn:aws:iam::1:user/u".into()),
                session: None,
            }),
            object: Arc::from("f"),
            rule_hits: Vec::new(),
            raw: None,
        }
    }

    /// Two days of one habitual call, an event every hour.
    fn trained(d: &mut Detector) {
        let mut out = Vec::new();
        for h in 0..48 {
            d.process(
                &event(&format!("h{h}"), h * HOUR, "GetObject", "198.51.100.1"),
                &mut out,
            );
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn novel_values_after_learning_raise_one_anomaly_listing_each() {
        let mut d = Detector::new(settings(), 1);
        trained(&mut d);
        let mut out = Vec::new();
        let mut e = event("x1", 49 * HOUR, "DeleteBucket", "203.0.113.9");
        e.aws_region = Some("ap-south-1".into());
        d.process(&e, &mut out);
        assert_eq!(out.len(), 1);
        let a = &out[0];
        assert_eq!(a.kind, Kind::NewValue);
        let novel: Vec<&str> = a
            .dimensions
            .iter()
            .filter(|d| d.novel)
            .map(|d| d.name.as_ref())
            .collect();
        assert_eq!(
            novel,
            [
                "eventSource:eventName",
                "sourceIPAddress",
                "sourceNetwork",
                "awsRegion"
            ]
        );
        assert_eq!(a.evidence.event_ids, ["x1"]);
        let ip = a.dimensions.iter().find(|d| d.name == "sourceIPAddress").unwrap();
        assert_eq!(ip.baseline.top, ["198.51.100.1"]);
    }

    #[test]
    fn more_novel_dimensions_score_higher() {
        let mut one = Detector::new(settings(), 1);
        let mut many = Detector::new(settings(), 1);
        trained(&mut one);
        trained(&mut many);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut e = event("x", 49 * HOUR, "GetObject", "198.51.100.1");
        e.aws_region = Some("ap-south-1".into());
        one.process(&e, &mut a);
        e.source = Some("203.0.113.9".into());
        e.ip = e.source.as_deref().and_then(|s| s.parse().ok());
        many.process(&e, &mut b);
        assert!(b[0].score > a[0].score, "{} vs {}", b[0].score, a[0].score);
    }

    #[test]
    fn immature_principals_raise_no_novelty() {
        let mut d = Detector::new(settings(), 1);
        let mut out = Vec::new();
        for h in 0..5 {
            d.process(
                &event(
                    &format!("e{h}"),
                    h * HOUR,
                    &format!("Call{h}"),
                    &format!("203.0.{h}.1"),
                ),
                &mut out,
            );
        }
        assert!(out.is_empty());
    }

    #[test]
    fn duplicate_event_ids_are_counted_once() {
        let mut d = Detector::new(settings(), 1);
        trained(&mut d);
        let mut out = Vec::new();
        let e = event("dup", 49 * HOUR, "DeleteBucket", "203.0.113.9");
        d.process(&e, &mut out);
        d.process(&e, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(d.stats.duplicates, 1);
    }

    #[test]
    fn event_id_memory_is_bounded_but_remembers_recent_ids() {
        let mut m = EventIdMemory::new(100);
        for i in 0..10_000 {
            // Ten events a minute.
            let time = i * 6;
            assert!(m.insert(time, &i.to_string()));
            assert!(!m.insert(time, &i.to_string()));
            assert!(m.held <= 100);
        }
        assert_eq!(m.held, m.by_minute.values().map(|ids| ids.len()).sum::<usize>());
        assert_eq!(m.minutes.len(), m.by_minute.len());
        // The newest minutes are held; the oldest are forgotten.
        assert!(!m.insert(9_999 * 6, "9999"));
        assert!(m.insert(0, "0"));
    }

    #[test]
    fn a_duplicate_is_recognised_by_its_time_however_late_it_comes() {
        let mut m = EventIdMemory::new(1_000);
        assert!(m.insert(100, "a"));
        for i in 0..500 {
            assert!(m.insert(200 + i, &format!("later{i}")));
        }
        assert!(!m.insert(100, "a"));
        // The same ID at another time is another event.
        assert!(m.insert(160, "a"));
    }

    #[test]
    fn a_long_silence_is_a_dormant_principal() {
        let mut d = Detector::new(settings(), 1);
        trained(&mut d);
        let mut out = Vec::new();
        d.process(
            &event("late", 47 * HOUR + 10 * DAY, "GetObject", "198.51.100.1"),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, Kind::DormantPrincipal);
    }

    #[test]
    fn a_burst_against_a_quiet_history_is_one_rate_spike() {
        let mut s = settings();
        s.rate.as_mut().unwrap().min_events = 50;
        s.rate.as_mut().unwrap().min_intervals = 12;
        let mut d = Detector::new(s, 1);
        trained(&mut d);
        let mut out = Vec::new();
        for i in 0..300 {
            d.process(
                &event(&format!("b{i}"), 48 * HOUR + i, "GetObject", "198.51.100.1"),
                &mut out,
            );
        }
        let spikes: Vec<_> = out.iter().filter(|a| a.kind == Kind::RateSpike).collect();
        assert_eq!(spikes.len(), 1, "{out:?}");
        assert_eq!(spikes[0].evidence.event_ids, ["b49"]);
    }

    #[test]
    fn a_burst_of_denied_calls_is_an_error_spike() {
        let mut d = Detector::new(settings(), 1);
        trained(&mut d);
        let mut out = Vec::new();
        for i in 0..40 {
            let mut e = event(&format!("d{i}"), 48 * HOUR + i, "GetObject", "198.51.100.1");
            e.error_code = Some("AccessDenied".into());
            d.process(&e, &mut out);
        }
        let spikes: Vec<_> = out.iter().filter(|a| a.kind == Kind::ErrorSpike).collect();
        assert_eq!(spikes.len(), 1, "{out:?}");
    }

    #[test]
    fn the_principal_cap_evicts_the_least_active() {
        let mut s = settings();
        s.max_principals = 100;
        let mut d = Detector::new(s, 1);
        let mut out = Vec::new();
        for i in 0..1000 {
            let mut e = event(&format!("p{i}"), i, "GetObject", "198.51.100.1");
            Arc::make_mut(&mut e.principal).key = format!("p{i}").into();
            d.process(&e, &mut out);
            assert!(d.principals() <= 100);
        }
        assert!(d.principals.contains_key("p999"));
        assert!(!d.principals.contains_key("p0"));
    }

    #[test]
    fn a_million_addresses_for_one_principal_stay_bounded() {
        let mut d = Detector::new(settings(), 1);
        let mut out = Vec::new();
        for i in 0..1_000_000u32 {
            let ip = std::net::Ipv4Addr::from(i).to_string();
            d.process(
                &event(&format!("i{i}"), i64::from(i / 100), "GetObject", &ip),
                &mut out,
            );
        }
        let cap = settings().max_values_per_dimension;
        assert!(d.values_held() <= 6 * cap);
        assert!(d.bytes_held() < 64 * 1024, "{}", d.bytes_held());
    }

    #[test]
    fn idle_principals_expire() {
        let mut d = Detector::new(settings(), 1);
        let mut out = Vec::new();
        let mut e = event("a", 0, "GetObject", "198.51.100.1");
        Arc::make_mut(&mut e.principal).key = "idle".into();
        d.process(&e, &mut out);
        d.process(&event("b", 200 * DAY, "GetObject", "198.51.100.1"), &mut out);
        assert_eq!(d.principals(), 1);
        assert_eq!(d.stats.principals_expired, 1);
    }

    #[test]
    fn a_restored_snapshot_continues_where_the_original_stopped() {
        let mut original = Detector::new(settings(), 1);
        trained(&mut original);
        let state = original.snapshot();
        let json = serde_json::to_string(&state).unwrap();
        let state: DetectorState = serde_json::from_str(&json).unwrap();
        let mut restored = Detector::new(settings(), 1);
        restored.restore(state.principals, &state.seen_ids, state.watermark);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (d, out) in [(&mut original, &mut a), (&mut restored, &mut b)] {
            // A duplicate of a trained event, then a novel one.
            d.process(&event("h3", 3 * HOUR, "GetObject", "198.51.100.1"), out);
            d.process(&event("x", 49 * HOUR, "DeleteBucket", "203.0.113.9"), out);
        }
        assert_eq!(a.len(), 1);
        assert_eq!(b.len(), 1);
        assert_eq!(a[0].id, b[0].id);
        assert_eq!(restored.stats.duplicates, 1);
    }

    #[test]
    fn anomaly_ids_do_not_depend_on_when_they_were_raised() {
        let run = || {
            let mut d = Detector::new(settings(), 1);
            trained(&mut d);
            let mut out = Vec::new();
            d.process(&event("x1", 49 * HOUR, "DeleteBucket", "203.0.113.9"), &mut out);
            out.into_iter().map(|a| a.id).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
