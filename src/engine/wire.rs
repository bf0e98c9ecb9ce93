//! The events topic's records: what the decode stage hands the detect stage.
//!
//! Two kinds of message travel on the topic, JSON-encoded:
//! - an [`EventRecord`], keyed by principal key (so a principal's events share a partition): one
//!   decoded CloudTrail record, with the detection rules it matched named by rule id (indices
//!   would not survive a rule set loaded in another order);
//! - a [`SourceMark`], sent by a decode process to every partition after each batch: "the
//!   notifications of source partition `source` (of `sources`) are decoded up to event time
//!   `time`". The detect stage's input watermark is the least mark over all sources, which is what
//!   makes its event order independent of which decode process was faster (see
//!   [`super::StatePartition`]).

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::rules::RuleSet;

/// One decoded record, as the events topic carries it.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventRecord {
    pub event: Event,
    /// Ids of the detection rules the record matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
}

impl EventRecord {
    pub fn of(event: Event, rules: Option<&RuleSet>) -> EventRecord {
        let ids = match rules {
            Some(set) => event
                .rule_hits
                .iter()
                .filter_map(|&i| set.rules().get(usize::from(i)))
                .map(|r| r.id.clone())
                .collect(),
            None => Vec::new(),
        };
        EventRecord { event, rules: ids }
    }

    /// The event, its rule hits mapped back to `rules`' indices; ids this process does not know
    /// (another rule set) are dropped.
    pub fn into_event(self, rules: Option<&RuleSet>) -> Event {
        let mut event = self.event;
        // Taken once here rather than at each use in the detector.
        event.principal_hashes = Some(event.principal_hashes());
        if let Some(set) = rules {
            event.rule_hits = self
                .rules
                .iter()
                .filter_map(|id| set.lookup(Some(id), id))
                .map(crate::rules::RuleIndex::of)
                .collect();
        }
        event
    }
}

/// How far one source partition of notifications has been decoded, in event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMark {
    /// The notifications topic's partition.
    pub source: u32,
    /// How many partitions the notifications topic has.
    pub sources: u32,
    /// Unix seconds: events of this source older than this, less the reorder window, are not
    /// expected any more.
    pub time: i64,
}

/// A message of the events topic.
// One message is decoded at a time and taken apart at once: boxing the event would only add an
// allocation per record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventsMessage {
    Event(EventRecord),
    Mark(SourceMark),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{DecodeLimits, Decoder};

    #[test]
    fn events_read_back_carry_their_principals_hashes() {
        let text = r#"{"Records":[{"eventTime":"2024-01-01T00:00:00Z","eventSource":"s3.amazonaws.com",
            "eventName":"GetObject","eventID":"a",
            "userIdentity":{"type":"IAMUser","accountId":"111122223333","userName":"alice"}}]}"#;
        let decoded = Decoder::new(DecodeLimits::default()).decode(&"f.json".into(), text.as_bytes());
        let event = decoded.events.into_iter().next().unwrap();
        let hashes = event.principal_hashes;
        assert!(hashes.is_some());
        let wire = serde_json::to_string(&EventRecord::of(event, None)).unwrap();
        let back: EventRecord = serde_json::from_str(&wire).unwrap();
        // Not carried on the wire: taken again from the key when the event is read.
        assert_eq!(back.event.principal_hashes, None);
        assert_eq!(back.into_event(None).principal_hashes, hashes);
    }
}
