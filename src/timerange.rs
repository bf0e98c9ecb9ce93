//! A replay's time range: which log files to read, by the time CloudTrail delivered them.
//!
//! CloudTrail names each file for the time it was delivered
//! (`<account>_CloudTrail_<region>_20240501T1035Z_<id>.json.gz`) and files it under
//! `.../CloudTrail/<region>/2024/05/01/`. A range picks files by that time: the name's (see
//! [`crate::decode::delivery_time`]), else the object's last-modified time. The events in a file
//! are a few minutes older than its delivery, so a range that starts at midnight reads the last
//! minutes of the day before only if it starts a little earlier.

use chrono::{DateTime, NaiveDate};

/// Files delivered at or after `since` and before `until` (seconds since the epoch); either end
/// may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub since: Option<i64>,
    pub until: Option<i64>,
}

impl TimeRange {
    /// From `--since` and `--until`: each an RFC 3339 time (`2024-05-01T10:00:00Z`) or a UTC date
    /// (`2024-05-01`, its midnight).
    pub fn parse(since: Option<&str>, until: Option<&str>) -> anyhow::Result<TimeRange> {
        let since = since.map(|s| parse_time(s).map_err(|e| anyhow::anyhow!("--since {s:?}: {e}")));
        let until = until.map(|s| parse_time(s).map_err(|e| anyhow::anyhow!("--until {s:?}: {e}")));
        let range = TimeRange {
            since: since.transpose()?,
            until: until.transpose()?,
        };
        if let (Some(since), Some(until)) = (range.since, range.until) {
            anyhow::ensure!(since < until, "--since must be before --until");
        }
        Ok(range)
    }

    pub fn is_open(&self) -> bool {
        self.since.is_none() && self.until.is_none()
    }

    pub fn contains(&self, time: i64) -> bool {
        self.since.is_none_or(|s| time >= s) && self.until.is_none_or(|u| time < u)
    }

    /// Whether `[from, to)` and the range share a moment.
    pub fn overlaps(&self, from: i64, to: i64) -> bool {
        self.since.is_none_or(|s| to > s) && self.until.is_none_or(|u| from < u)
    }

    /// Whether a folder of CloudTrail's date layout may hold files of the range. `parts` are the
    /// folder's trailing date parts as found: `[year]`, `[year, month]` or `[year, month, day]`.
    pub fn may_hold(&self, parts: &[u32]) -> bool {
        let (from, to) = match *parts {
            [year] => (ymd(year, 1, 1), ymd(year + 1, 1, 1)),
            [year, 12] => (ymd(year, 12, 1), ymd(year + 1, 1, 1)),
            [year, month] => (ymd(year, month, 1), ymd(year, month + 1, 1)),
            [year, month, day] => {
                let start = ymd(year, month, day);
                (start, start.map(|s| s + 86_400))
            }
            _ => return true,
        };
        match (from, to) {
            (Some(from), Some(to)) => self.overlaps(from, to),
            // Not a date after all (month 13): not pruned.
            _ => true,
        }
    }
}

fn ymd(year: u32, month: u32, day: u32) -> Option<i64> {
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp())
}

fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp());
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp());
    }
    Err("not an RFC 3339 time (2024-05-01T10:00:00Z) or a date (2024-05-01)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAY_1: i64 = 1_714_521_600; // 2024-05-01T00:00:00Z

    #[test]
    fn ends_are_times_or_dates_and_the_end_is_excluded() {
        let r = TimeRange::parse(Some("2024-05-01"), Some("2024-05-01T10:00:00+02:00")).unwrap();
        assert_eq!(r.since, Some(MAY_1));
        assert_eq!(r.until, Some(MAY_1 + 8 * 3600));
        assert!(r.contains(MAY_1));
        assert!(!r.contains(MAY_1 - 1));
        assert!(!r.contains(MAY_1 + 8 * 3600));
        assert!(TimeRange::parse(Some("2024-05-02"), Some("2024-05-01")).is_err());
        assert!(TimeRange::parse(Some("yesterday"), None).is_err());
        assert!(TimeRange::parse(None, None).unwrap().is_open());
    }

    #[test]
    fn date_folders_outside_the_range_are_pruned() {
        let r = TimeRange::parse(Some("2024-05-01"), Some("2024-05-03")).unwrap();
        assert!(r.may_hold(&[2024]));
        assert!(!r.may_hold(&[2023]));
        assert!(r.may_hold(&[2024, 5]));
        assert!(!r.may_hold(&[2024, 4]));
        assert!(!r.may_hold(&[2024, 6]));
        assert!(r.may_hold(&[2024, 5, 1]));
        assert!(r.may_hold(&[2024, 5, 2]));
        assert!(!r.may_hold(&[2024, 5, 3]));
        assert!(!r.may_hold(&[2024, 4, 30]));
        assert!(r.may_hold(&[2024, 13]), "not a date: kept");
        let december = TimeRange::parse(Some("2024-12-31"), None).unwrap();
        assert!(december.may_hold(&[2024, 12]));
        assert!(!december.may_hold(&[2024, 11]));
    }
}
