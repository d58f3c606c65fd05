//! Points in time as the index writes them: RFC 3339 in UTC with whole seconds.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A UTC timestamp with one-second resolution, written `2026-11-22T10:00:00Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

/// Why a string is not a timestamp.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid timestamp '{0}': expected RFC 3339 in UTC, e.g. 2026-11-22T10:00:00Z")]
pub struct TimestampParseError(String);

impl Timestamp {
    /// Seconds since the Unix epoch.
    pub const fn from_unix(secs: u64) -> Self {
        Self(secs)
    }

    /// The current time (truncated to whole seconds).
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// Seconds since the Unix epoch.
    pub const fn unix(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating.
    pub fn after(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d.as_secs()))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Self(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }
}

/// The last second RFC 3339's four-digit years can write: 9999-12-31T23:59:59Z.
const LAST_WRITABLE: u64 = 253_402_300_799;

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Later instants cannot come from a parse and are refused by publish; should one be
        // formatted anyway, it reads as the last writable second rather than panicking.
        let t = UNIX_EPOCH + Duration::from_secs(self.0.min(LAST_WRITABLE));
        write!(f, "{}", humantime::format_rfc3339_seconds(t))
    }
}

impl FromStr for Timestamp {
    type Err = TimestampParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only the canonical form: a signed document has exactly one spelling of each instant.
        let t = humantime::parse_rfc3339(s).map_err(|_| TimestampParseError(s.to_owned()))?;
        let ts = Self::from(t);
        if ts.to_string() != s {
            return Err(TimestampParseError(s.to_owned()));
        }
        Ok(ts)
    }
}

crate::serde_via_str!(Timestamp);

impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "UTC, whole seconds: YYYY-MM-DDTHH:MM:SSZ.",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"
        })
    }
}

/// The longest validity an index may be given: ten years. Nodes re-fetch long before, and
/// anything beyond would only risk overflowing a timestamp.
pub const MAX_VALIDITY: Duration = Duration::from_secs(3653 * 86_400);

/// Parses a validity period such as `30d`, `12h` or `2w` (at most [`MAX_VALIDITY`]).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration '{s}': {e}; expected e.g. 30d, 12h or 2w"))?;
    if d.as_secs() == 0 {
        return Err(format!("invalid duration '{s}': must be at least one second"));
    }
    if d > MAX_VALIDITY {
        return Err(format!("invalid duration '{s}': at most 10 years (3653d)"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_rfc3339_only() {
        let t: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        assert_eq!(t.unix(), 1_795_341_600);
        assert_eq!(t.to_string(), "2026-11-22T10:00:00Z");
        assert_eq!(t.after(Duration::from_secs(86_400)).to_string(), "2026-11-23T10:00:00Z");
        for bad in ["2026-11-22", "2026-11-22T10:00:00.5Z", "2026-11-22T10:00:00+01:00", "2026-11-22 10:00:00Z", ""] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("expected e.g. 30d"));
        assert_eq!(parse_duration("3653d").unwrap(), MAX_VALIDITY);
        for huge in ["3654d", "99999y", "9999999999d", "18446744073709551615s"] {
            let e = parse_duration(huge).unwrap_err();
            assert!(e.contains("at most 10 years") || e.contains("invalid duration"), "{huge}: {e}");
        }
    }

    #[test]
    fn far_future_timestamps_format_without_panicking() {
        assert_eq!(Timestamp::from_unix(u64::MAX).to_string(), "9999-12-31T23:59:59Z");
        assert_eq!(Timestamp::from_unix(0).after(Duration::MAX).to_string(), "9999-12-31T23:59:59Z");
    }
}
