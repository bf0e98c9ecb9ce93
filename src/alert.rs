//! The alert lifecycle every detector's anomalies go through, rules and baselines alike.
//!
//! In: anomalies as detectors raise them, in event-time order per shard. Out: the anomalies to
//! emit. In order: a rule in shadow mode is counted and dropped; suppressions (principals,
//! accounts, CIDRs, user agents, optionally limited to some rules or kinds) drop what they
//! match; per-rule severity overrides apply; then repeats fold: anomalies with the same dedup key
//! (kind, rule, principal) within `dedup_window` of event time become one, carrying the count,
//! first and last seen, and the eventIDs behind it (up to [`MAX_EVENT_IDS`]). A folded anomaly is
//! emitted when its window has passed in event time, or at [`AlertFolder::flush`]. With a zero
//! window every anomaly is emitted at once.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;

use rustc_hash::FxHashMap;

use crate::anomaly::{Anomaly, Outcome};
use crate::config::{AlertPolicy, Suppression};
use crate::event::parse_event_time;
use crate::net::parse_source_ip;

/// eventIDs an anomaly carries at most; `count` still counts them all.
pub const MAX_EVENT_IDS: usize = 20;

impl Suppression {
    fn matches(&self, a: &Anomaly) -> bool {
        let rule_id = a.rule.as_ref().map(|r| r.id.as_str());
        let ip: Option<IpAddr> = a.evidence.source_ip.as_deref().and_then(parse_source_ip);
        let agent = a.evidence.user_agent.as_deref().unwrap_or("");
        (self.rules.is_empty() || rule_id.is_some_and(|id| self.rules.contains(id)))
            && (self.kinds.is_empty() || self.kinds.contains(a.kind.as_str()))
            && (self.principals.is_empty() || self.principals.contains(a.principal.key.as_str()))
            && (self.accounts.is_empty()
                || a.principal
                    .account_id
                    .as_deref()
                    .is_some_and(|acct| self.accounts.contains(acct)))
            && (self.cidrs.is_empty() || ip.is_some_and(|ip| self.cidrs.iter().any(|net| net.contains(&ip))))
            && (self.user_agents.is_empty() || self.user_agents.iter().any(|ua| agent.contains(ua.as_str())))
    }
}

/// What the lifecycle did, for the summary and metrics.
#[derive(Debug, Clone, Default)]
pub struct AlertStats {
    pub shadowed: u64,
    pub suppressed: u64,
    pub folded: u64,
}

/// An alert still open for repeats: the anomaly so far and the event time its window started.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Open {
    pub anomaly: Anomaly,
    pub first: i64,
}

impl Open {
    /// The order alerts are emitted and saved in: by the start of their window, then by id.
    fn oldest_first(a: &Open, b: &Open) -> std::cmp::Ordering {
        a.first
            .cmp(&b.first)
            .then_with(|| a.anomaly.id.cmp(&b.anomaly.id))
    }
}

/// One shard's open alerts.
pub struct AlertFolder {
    policy: AlertPolicy,
    /// Boxed: an anomaly is some 450 bytes, which the table moved on every insertion, removal
    /// and growth, and the expiry's sort moved again.
    open: FxHashMap<u64, Box<Open>>,
    /// When each open alert's window started, and its key, earliest first: what `expire` looks
    /// at instead of every open alert. An alert emitted and opened again under the same key
    /// leaves its earlier entry behind, which `expire` skips.
    starts: BinaryHeap<Reverse<(i64, u64)>>,
    next_expiry_check: i64,
    pub stats: AlertStats,
}

impl AlertFolder {
    pub fn new(policy: AlertPolicy) -> Self {
        AlertFolder {
            policy,
            open: FxHashMap::default(),
            starts: BinaryHeap::new(),
            next_expiry_check: i64::MIN,
            stats: AlertStats::default(),
        }
    }

    /// Takes one raised anomaly at event time `now`; appends what is due to `out`.
    pub fn admit(&mut self, mut anomaly: Anomaly, now: i64, out: &mut Vec<Anomaly>) {
        if let Some(rule) = &anomaly.rule {
            if self.policy.shadow_rules.contains(&rule.id) || self.policy.shadow_rules.contains(&rule.title) {
                self.stats.shadowed += 1;
                return;
            }
            if let Some(&severity) = self
                .policy
                .severity
                .get(&rule.id)
                .or_else(|| self.policy.severity.get(&rule.title))
            {
                anomaly.severity = severity;
            }
        }
        if self.policy.suppressions.iter().any(|s| s.matches(&anomaly)) {
            self.stats.suppressed += 1;
            return;
        }
        self.expire(now, out);
        if self.policy.dedup_window <= 0 {
            out.push(anomaly);
            return;
        }
        let key = dedup_key(&anomaly);
        match self.open.get_mut(&key) {
            Some(open) if now - open.first <= self.policy.dedup_window => {
                self.stats.folded += 1;
                fold(&mut open.anomaly, anomaly);
            }
            _ => {
                self.starts.push(Reverse((now, key)));
                if let Some(previous) = self.open.insert(key, Box::new(Open { anomaly, first: now })) {
                    out.push(previous.anomaly);
                }
            }
        }
    }

    /// Emits the alerts whose window has passed by event time `now`. Checked at most once per
    /// minute of event time, so the cost is not paid per event.
    pub fn expire(&mut self, now: i64, out: &mut Vec<Anomaly>) {
        if now < self.next_expiry_check || self.open.is_empty() {
            return;
        }
        self.next_expiry_check = now + 60;
        let window = self.policy.dedup_window;
        let mut emitted = Vec::new();
        while let Some(&Reverse((first, key))) = self.starts.peek() {
            if now - first <= window {
                break;
            }
            self.starts.pop();
            if self.open.get(&key).is_some_and(|o| o.first == first) {
                emitted.extend(self.open.remove(&key));
            }
        }
        emitted.sort_by(|a, b| Open::oldest_first(a, b));
        out.extend(emitted.into_iter().map(|o| o.anomaly));
    }

    /// Emits the alerts whose window has passed by `now`, however recently that was checked: for
    /// a clock that moves without events (the detect stage's input watermark).
    pub fn expire_now(&mut self, now: i64, out: &mut Vec<Anomaly>) {
        self.next_expiry_check = i64::MIN;
        self.expire(now, out);
    }

    /// The open alerts, oldest first, for a state snapshot: they stay open across it.
    pub fn open_alerts(&self) -> Vec<Open> {
        let mut open: Vec<Open> = self.open.values().map(|o| Open::clone(o)).collect();
        open.sort_by(Open::oldest_first);
        open
    }

    /// Reopens the alerts a snapshot held.
    pub fn restore_open(&mut self, open: Vec<Open>) {
        for o in open {
            let key = dedup_key(&o.anomaly);
            self.starts.push(Reverse((o.first, key)));
            self.open.insert(key, Box::new(o));
        }
    }

    /// Emits every open alert (end of input, or shutdown).
    pub fn flush(&mut self, out: &mut Vec<Anomaly>) {
        self.starts.clear();
        let mut open: Vec<Box<Open>> = self.open.drain().map(|(_, o)| o).collect();
        open.sort_by(|a, b| Open::oldest_first(a, b));
        out.extend(open.into_iter().map(|o| o.anomaly));
    }
}

/// What makes repeats one alert: kind, rule and principal, and for a rule match whether the
/// call succeeded (a failed attempt and a success of the same rule are different alerts).
///
/// Each part is hashed in one call, seeded with the digest of the parts before it: setting up a
/// streaming hasher's state took more than hashing these few short strings.
fn dedup_key(a: &Anomaly) -> u64 {
    use xxhash_rust::xxh3::xxh3_64_with_seed;
    let outcome = match a.outcome {
        None => 0,
        Some(Outcome::Succeeded) => 1,
        Some(Outcome::Failed) => 2,
    };
    let kind = xxh3_64_with_seed(a.kind.as_str().as_bytes(), outcome);
    let rule = a.rule.as_ref().map_or("", |r| r.id.as_str());
    xxh3_64_with_seed(
        a.principal.key.as_bytes(),
        xxh3_64_with_seed(rule.as_bytes(), kind),
    )
}

/// Folds a repeat into the open anomaly: the first one's id, explanation and severity stay
/// (raised to the highest seen); counts add up; event IDs accumulate up to the cap.
fn fold(open: &mut Anomaly, repeat: Anomaly) {
    open.count += repeat.count;
    open.severity = open.severity.max(repeat.severity);
    open.score = open.score.max(repeat.score);
    let later = |a: &str, b: &str| match (parse_event_time(a), parse_event_time(b)) {
        (Some(x), Some(y)) => x > y,
        _ => false,
    };
    if later(&repeat.last_seen, &open.last_seen) {
        open.last_seen = repeat.last_seen;
    }
    if later(&open.first_seen, &repeat.first_seen) {
        open.first_seen = repeat.first_seen;
    }
    for id in repeat.evidence.event_ids {
        if open.evidence.event_ids.len() >= MAX_EVENT_IDS {
            break;
        }
        if !open.evidence.event_ids.contains(&id) {
            open.evidence.event_ids.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::{BaselineInfo, Evidence, Kind, PrincipalInfo, RuleInfo, Severity, SCHEMA};
    use crate::event::format_time;

    fn anomaly(id: &str, time: i64, rule: Option<&str>, event: &str) -> Anomaly {
        Anomaly {
            schema: SCHEMA.into(),
            id: id.into(),
            kind: if rule.is_some() {
                Kind::RuleMatch
            } else {
                Kind::NewValue
            },
            severity: Severity::Medium,
            score: 0.5,
            detected_at: Default::default(),
            event_time: format_time(time).into(),
            first_seen: format_time(time).into(),
            last_seen: format_time(time).into(),
            principal: PrincipalInfo(std::sync::Arc::new(crate::principal::Principal {
                key: "p".into(),
                kind: "IAMUser".into(),
                account_id: Some("111".into()),
                arn: None,
                session: None,
            })),
            rule: rule.map(|r| std::sync::Arc::new(RuleInfo::new(r.into(), format!("{r} title"), vec![]))),
            outcome: None,
            dimensions: vec![],
            baseline: BaselineInfo {
                events: 0,
                since: Default::default(),
                mature: false,
            },
            evidence: Evidence {
                event_ids: vec![event.into()],
                event_name: "n".into(),
                event_source: "s".into(),
                source_ip: Some("10.1.2.3".into()),
                user_agent: Some("aws-cli/2".into()),
                aws_region: None,
                error_code: None,
                object: "f".into(),
            },
            reason: String::new(),
            count: 1,
        }
    }

    fn policy(window: i64) -> AlertPolicy {
        AlertPolicy {
            dedup_window: window,
            ..AlertPolicy::default()
        }
    }

    #[test]
    fn repeats_within_the_window_fold_into_one() {
        let mut f = AlertFolder::new(policy(600));
        let mut out = Vec::new();
        f.admit(anomaly("a", 0, Some("r"), "e1"), 0, &mut out);
        f.admit(anomaly("b", 100, Some("r"), "e2"), 100, &mut out);
        f.admit(anomaly("c", 200, Some("r"), "e2"), 200, &mut out);
        assert!(out.is_empty());
        f.admit(anomaly("d", 1000, Some("r"), "e3"), 1000, &mut out);
        assert_eq!(out.len(), 1);
        let a = &out[0];
        assert_eq!(a.id, "a");
        assert_eq!(a.count, 3);
        assert_eq!(a.evidence.event_ids, ["e1", "e2"]);
        assert_eq!(a.first_seen, format_time(0));
        assert_eq!(a.last_seen, format_time(200));
        f.flush(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].id, "d");
        assert_eq!(f.stats.folded, 2);
    }

    #[test]
    fn an_alert_opened_again_keeps_its_own_window() {
        let mut f = AlertFolder::new(policy(600));
        let mut out = Vec::new();
        let ids = |out: &[Anomaly]| out.iter().map(|a| (a.id.clone(), a.count)).collect::<Vec<_>>();
        f.admit(anomaly("a", 0, Some("r"), "e1"), 0, &mut out);
        f.admit(anomaly("x", 599, Some("x"), "e2"), 599, &mut out);
        // Past a's window but before the next look for due alerts: a goes, b opens in its place.
        f.admit(anomaly("b", 601, Some("r"), "e3"), 601, &mut out);
        assert_eq!(ids(&out), [("a".into(), 1)]);
        // a's start comes up again here; b's window runs to 1201.
        f.admit(anomaly("y", 700, Some("y"), "e4"), 700, &mut out);
        f.admit(anomaly("c", 800, Some("r"), "e5"), 800, &mut out);
        assert_eq!(ids(&out), [("a".into(), 1)]);
        f.admit(anomaly("z", 1300, Some("z"), "e6"), 1300, &mut out);
        // y's window ends at 1300 itself: it stays open.
        assert_eq!(ids(&out), [("a".into(), 1), ("x".into(), 1), ("b".into(), 2)]);
        f.flush(&mut out);
        assert_eq!(ids(&out[3..]), [("y".into(), 1), ("z".into(), 1)]);
    }

    #[test]
    fn open_folds_read_back_from_their_snapshot() {
        // A rule match has no dimensions, which its JSON leaves out; the snapshot must still load.
        let mut f = AlertFolder::new(policy(600));
        let mut out = Vec::new();
        f.admit(anomaly("a", 0, Some("r"), "e1"), 0, &mut out);
        f.admit(anomaly("b", 100, Some("r"), "e2"), 100, &mut out);
        let json = serde_json::to_string(&f.open_alerts()).unwrap();
        let open: Vec<Open> = serde_json::from_str(&json).unwrap();
        let mut g = AlertFolder::new(policy(600));
        g.restore_open(open);
        g.admit(anomaly("c", 200, Some("r"), "e3"), 200, &mut out);
        g.flush(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].id.as_str(), out[0].count), ("a", 3));
        assert_eq!(out[0].evidence.event_ids, ["e1", "e2", "e3"]);
    }

    #[test]
    fn different_rules_do_not_fold() {
        let mut f = AlertFolder::new(policy(600));
        let mut out = Vec::new();
        f.admit(anomaly("a", 0, Some("r1"), "e1"), 0, &mut out);
        f.admit(anomaly("b", 0, Some("r2"), "e1"), 0, &mut out);
        f.flush(&mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_zero_window_emits_each() {
        let mut f = AlertFolder::new(policy(0));
        let mut out = Vec::new();
        f.admit(anomaly("a", 0, Some("r"), "e1"), 0, &mut out);
        f.admit(anomaly("b", 1, Some("r"), "e2"), 1, &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn shadow_rules_are_counted_not_emitted() {
        let mut p = policy(0);
        p.shadow_rules.insert("r".into());
        let mut f = AlertFolder::new(p);
        let mut out = Vec::new();
        f.admit(anomaly("a", 0, Some("r"), "e1"), 0, &mut out);
        f.admit(anomaly("b", 0, None, "e1"), 0, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(f.stats.shadowed, 1);
    }

    #[test]
    fn suppressions_need_every_condition() {
        let mut p = policy(0);
        p.suppressions.push(Suppression {
            cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            rules: ["r".to_string()].into(),
            ..Suppression::default()
        });
        p.suppressions.push(Suppression {
            user_agents: vec!["terraform".into()],
            ..Suppression::default()
        });
        let mut f = AlertFolder::new(p);
        let mut out = Vec::new();
        f.admit(anomaly("a", 0, Some("r"), "e1"), 0, &mut out); // rule r from 10/8: dropped
        f.admit(anomaly("b", 0, Some("other"), "e1"), 0, &mut out); // other rule: kept
        let mut outside = anomaly("c", 0, Some("r"), "e1");
        outside.evidence.source_ip = Some("203.0.113.1".into());
        f.admit(outside, 0, &mut out); // outside the CIDR: kept
        let mut tf = anomaly("d", 0, None, "e1");
        tf.evidence.user_agent = Some("APN/1.0 HashiCorp/1.0 terraform/1.5".into());
        f.admit(tf, 0, &mut out); // any kind, terraform agent: dropped
        let ids: Vec<&str> = out.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!(f.stats.suppressed, 2);
    }

    #[test]
    fn severity_overrides_apply_by_rule() {
        let mut p = policy(0);
        p.severity.insert("r title".into(), Severity::Critical);
        let mut f = AlertFolder::new(p);
        let mut out = Vec::new();
        f.admit(anomaly("a", 0, Some("r"), "e1"), 0, &mut out);
        assert_eq!(out[0].severity, Severity::Critical);
    }
}
