//! The stateful half: baselines and the detectors that judge each event against them.
//!
//! In: [`Event`]s of the principals this shard owns (every event of one principal must reach the
//! same [`Detector`]; [`shard_of`] says which). Out: [`Anomaly`]s.
//!
//! Per event, in order, one detector a file: drop it if its eventID was seen (CloudTrail repeats
//! records; `dedup`); raise `dormant_principal` if the principal was silent longer than
//! `dormant.after` (`dormant`); raise one `new_value` anomaly listing every dimension new for a
//! mature principal (`novelty`); count the event in its rate interval and raise `rate_spike` /
//! `error_spike` once per interval when the interval stands out against the principal's own
//! history (`rate`); then the Sigma rules it matched and the thresholds it completes (`rules`).
//! This module holds the baselines, the clock and what every anomaly is built from. All of it is
//! driven by event time.
//!
//! Memory is bounded: values per dimension are capped ([`crate::baseline`]), principals idle past
//! `idle_expiry` are swept, the principal count is capped (least recently active go first), and
//! the eventID memory holds at most `baseline.dedup_capacity` IDs, the oldest minutes forgotten
//! first.

mod dedup;
mod dormant;
mod novelty;
mod rate;
mod rules;

use compact_str::CompactString;
use rustc_hash::FxHashMap;

use std::sync::Arc;

use rsigma_eval::CorrelationEngine;

use crate::alert::{AlertFolder, AlertStats};
use crate::anomaly::{now_rfc3339, Anomaly, BaselineInfo, Evidence, Kind, PrincipalInfo, Severity, SCHEMA};
use crate::baseline::PrincipalBaseline;
use crate::config::DetectorSettings;
use crate::event::{format_time_compact, Event};
use crate::rules::RuleSet;
use crate::useragent::AgentFamilies;
use dedup::EventIdMemory;
use novelty::DimensionValues;

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
    /// Baselines by [`Event::principal_digest`], each with its principal key.
    principals: FxHashMap<u128, (CompactString, PrincipalBaseline)>,
    seen_ids: EventIdMemory,
    /// Latest event time seen: the shard's clock.
    watermark: i64,
    next_sweep: i64,
    rules: Option<Arc<RuleSet>>,
    /// Threshold (correlation) rules: counted per shard, since they group by principal. Compiled
    /// when the shard first needs it (see [`Detector::correlations`]).
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
            correlations: None,
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
        let mut principals: Vec<(CompactString, PrincipalBaseline)> =
            self.principals.values().cloned().collect();
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

    /// The threshold-rule engine, compiled at the first call when there are threshold rules. A
    /// replay keeps a detector per partition (twelve by default): compiled as each was made,
    /// the rules' thresholds held up the first file by a quarter of start-up. Until it is
    /// compiled the engine has counted nothing, so compiling it late changes no answer.
    fn correlations(&mut self) -> Option<&mut CorrelationEngine> {
        if self.correlations.is_none() {
            self.correlations = self.rules.as_ref().and_then(|r| r.correlation_engine());
        }
        self.correlations.as_mut()
    }

    /// Takes up a snapshot's state in a new detector.
    pub fn restore_state(&mut self, state: DetectorState) {
        self.restore(state.principals, &state.seen_ids, state.watermark);
        if let Some(next) = state.next_sweep {
            self.next_sweep = next;
        }
        if let (Some(snapshot), Some(engine)) = (state.correlations, self.correlations()) {
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
        self.principals.extend(
            principals
                .into_iter()
                .map(|(key, baseline)| (crate::principal::key_digest(&key), (key, baseline))),
        );
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
        self.principals.values().map(|(_, b)| b.values_held()).sum()
    }

    /// Approximate bytes held by baselines, keys included.
    pub fn bytes_held(&self) -> usize {
        self.principals
            .values()
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

    /// The baseline detectors: dormancy, novelty, rate and error spikes.
    fn judge(&mut self, event: &Event, out: &mut Vec<Anomaly>) {
        let s = &self.settings;
        let digest = event.principal_digest();
        let (_, baseline) = match self.principals.get_mut(&digest) {
            Some(b) => b,
            None => {
                if self.principals.len() >= s.max_principals {
                    self.evict_least_active();
                }
                self.principals
                    .entry(digest)
                    .or_insert_with(|| (event.principal.key.clone(), PrincipalBaseline::new(event.time)))
            }
        };
        baseline.prefetch_hashes();
        let s = &self.settings;
        let mature = baseline.is_mature(s.learning_period, s.learning_events);
        out.extend(dormant::judge(event, baseline, s, mature));

        let values = self.dimension_values.of(event, &mut self.agents);
        let seen = baseline.observe(&values, event.time, s.window, s.max_values_per_dimension);
        if mature {
            out.extend(novelty::judge(event, baseline, s, &values, seen));
        }

        let counted = rate::judge(event, baseline, s, out);
        if !counted {
            self.stats.late_for_rate += 1;
        }
        baseline.events += 1;
        baseline.first_seen = baseline.first_seen.min(event.time);
        if counted {
            baseline.last_seen = baseline.last_seen.max(event.time);
        }
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
        self.principals.retain(|_, (_, b)| b.last_seen >= idle_horizon);
        self.stats.principals_expired += (before - self.principals.len()) as u64;
        for (_, b) in self.principals.values_mut() {
            b.dimensions.iter_mut().for_each(|d| d.expire(value_horizon));
        }
    }

    /// Forgets the least recently active tenth of the principals, making room at the cap in
    /// amortised constant time per new principal. Ties go by key, so that which principals are
    /// forgotten does not depend on the map's order (its digests are seeded per process).
    fn evict_least_active(&mut self) {
        let mut order: Vec<(i64, &CompactString, u128)> = self
            .principals
            .iter()
            .map(|(digest, (key, b))| (b.last_seen, key, *digest))
            .collect();
        let drop = (order.len() / 10).max(1);
        order.select_nth_unstable(drop - 1);
        let forgotten: Vec<u128> = order[..drop].iter().map(|(_, _, digest)| *digest).collect();
        for digest in forgotten {
            self.principals.remove(&digest);
        }
        self.stats.principals_evicted += drop as u64;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::event::test_event as event;
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

    /// An event of the principal `key`.
    fn event_of(key: &str, id: &str, time: i64) -> Event {
        let mut e = event(id, time, "GetObject", "198.51.100.1");
        Arc::make_mut(&mut e.principal).key = key.into();
        e
    }

    /// A detector holding at most `max_principals` principals.
    fn capped(max_principals: usize) -> Detector {
        let mut s = settings();
        s.max_principals = max_principals;
        Detector::new(s, 1)
    }

    #[test]
    fn the_principal_cap_evicts_the_least_active() {
        let mut d = capped(100);
        let mut out = Vec::new();
        for i in 0..1000 {
            d.process(&event_of(&format!("p{i}"), &format!("p{i}"), i), &mut out);
            assert!(d.principals() <= 100);
        }
        let held = |key: &str| d.principals.contains_key(&crate::principal::key_digest(key));
        assert!(held("p999"));
        assert!(!held("p0"));
    }

    #[test]
    fn principals_tied_at_the_cap_are_evicted_by_key() {
        let mut d = capped(20);
        let mut out = Vec::new();
        // Twenty principals last seen at the same second, then one more.
        for i in (0..21).rev() {
            d.process(&event_of(&format!("p{i:02}"), &format!("e{i}"), 1_000), &mut out);
        }
        let mut held: Vec<String> = d.principals.values().map(|(k, _)| k.to_string()).collect();
        held.sort();
        // The tie went by key: the first two keys of the twenty were forgotten.
        assert_eq!(held.len(), 19);
        assert_eq!(held[0], "p00");
        assert!(!held.contains(&"p01".to_owned()) && !held.contains(&"p02".to_owned()));
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
        d.process(&event_of("idle", "a", 0), &mut out);
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
