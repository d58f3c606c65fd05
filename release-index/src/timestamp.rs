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

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = UNIX_EPOCH + Duration::from_secs(self.0);
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

/// Parses a validity period such as `30d`, `12h` or `2w`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration '{s}': {e}; expected e.g. 30d, 12h or 2w"))?;
    if d.as_secs() == 0 {
        return Err(format!("invalid duration '{s}': must be at least one second"));
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
    }
}
