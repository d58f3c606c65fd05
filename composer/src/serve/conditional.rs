//! Validators, conditional requests and byte ranges (RFC 9110 §8.8, §13, §14), as pure
//! functions over header values so each rule is tested on its own.
//!
//! The entity tag is the exact validator. `Last-Modified` has HTTP's one-second resolution:
//! a file replaced within the second of its predecessor's mtime looks unmodified to a client
//! that sends only `If-Modified-Since`, which is why `If-None-Match` takes precedence.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE};

/// A strong entity tag, stored with its quotes: `"…"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ETag(String);

impl ETag {
    /// An entity tag around `opaque`, which must not contain `"` (callers use hex and `-`).
    pub fn new(opaque: &str) -> Self {
        debug_assert!(!opaque.contains('"'));
        Self(format!("\"{opaque}\""))
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the current representation is compared against.
#[derive(Clone, Debug)]
pub struct Validators {
    /// Strong entity tag.
    pub etag: ETag,
    /// Modification time, truncated to the second as HTTP dates are.
    pub last_modified: SystemTime,
}

impl Validators {
    /// Truncates `mtime` to whole seconds.
    pub fn new(etag: ETag, mtime: SystemTime) -> Self {
        let secs = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self { etag, last_modified: UNIX_EPOCH + Duration::from_secs(secs) }
    }

    /// The `Last-Modified` header value.
    pub fn last_modified_header(&self) -> String {
        httpdate::fmt_http_date(self.last_modified)
    }
}

/// The outcome of the precondition headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Answer normally.
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// An entity-tag list as sent in `If-Match` / `If-None-Match`.
#[derive(Debug, PartialEq, Eq)]
enum TagList<'a> {
    Any,
    /// `(weak, opaque-tag with quotes)`.
    Tags(Vec<(bool, &'a str)>),
}

/// Parses `*` or `#entity-tag`; `None` when malformed (the header is then ignored).
fn tag_list(value: &str) -> Option<TagList<'_>> {
    let value = value.trim();
    if value == "*" {
        return Some(TagList::Any);
    }
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let (weak, r) = match rest.strip_prefix("W/") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let body = r.strip_prefix('"')?;
        let end = body.find('"')?;
        tags.push((weak, &r[..end + 2]));
        rest = &body[end + 1..];
        let next = rest.trim_start_matches([' ', '\t']);
        if !next.is_empty() && !next.starts_with(',') {
            return None;
        }
        rest = next;
    }
    if tags.is_empty() {
        return None;
    }
    Some(TagList::Tags(tags))
}

fn header<'a>(headers: &'a HeaderMap, name: &http::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn date(headers: &HeaderMap, name: &http::HeaderName) -> Option<SystemTime> {
    header(headers, name).and_then(|v| httpdate::parse_http_date(v.trim()).ok())
}

/// Evaluates `If-Match`, `If-Unmodified-Since`, `If-None-Match` and `If-Modified-Since` in the
/// order RFC 9110 §13.2.2 prescribes, for a GET or HEAD of an existing file.
pub fn preconditions(headers: &HeaderMap, v: &Validators) -> Precondition {
    // If-Match uses the strong comparison, If-None-Match the weak one (§8.8.3.2).
    match header(headers, &IF_MATCH).and_then(tag_list) {
        Some(TagList::Any) => {}
        Some(TagList::Tags(tags)) => {
            if !tags.iter().any(|(weak, t)| !weak && *t == v.etag.as_str()) {
                return Precondition::Failed;
            }
        }
        None => {
            if let Some(since) = date(headers, &IF_UNMODIFIED_SINCE) {
                if v.last_modified > since {
                    return Precondition::Failed;
                }
            }
        }
    }
    match header(headers, &IF_NONE_MATCH).and_then(tag_list) {
        Some(TagList::Any) => Precondition::NotModified,
        Some(TagList::Tags(tags)) => {
            if tags.iter().any(|(_, t)| *t == v.etag.as_str()) {
                Precondition::NotModified
            } else {
                Precondition::Proceed
            }
        }
        None => match date(headers, &IF_MODIFIED_SINCE) {
            Some(since) if v.last_modified <= since => Precondition::NotModified,
            _ => Precondition::Proceed,
        },
    }
}

/// Which bytes to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ranged {
    /// The whole file (200).
    Full,
    /// Bytes `start..=end` (206).
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// 416, with `Content-Range: bytes */LEN`.
    Unsatisfiable,
}

/// The range to answer a GET with, from `Range` and `If-Range`, for a file of `len` bytes.
pub fn range(headers: &HeaderMap, v: &Validators, len: u64) -> Ranged {
    let Some(value) = header(headers, &RANGE) else { return Ranged::Full };
    if let Some(cond) = header(headers, &IF_RANGE) {
        // Only a strong match keeps the range (§13.1.5): an entity tag compared strongly, or
        // exactly our Last-Modified date.
        let cond = cond.trim();
        let matches = if cond.starts_with('"') || cond.starts_with("W/") {
            cond == v.etag.as_str()
        } else {
            httpdate::parse_http_date(cond).is_ok_and(|d| d == v.last_modified)
        };
        if !matches {
            return Ranged::Full;
        }
    }
    parse_range(value, len)
}

/// Parses a `Range` value for a file of `len` bytes.
///
/// A single range is honoured. A list of several is answered with the whole file (200, which
/// §14.2 allows: a server may ignore `Range`): multipart/byteranges responses are not what
/// sysupdate, curl resumes or download managers ask for, and the full body is always a
/// correct answer, whereas 416 would be wrong for satisfiable ranges. A value that does not
/// parse, or another unit, is ignored the same way (§14.2).
pub fn parse_range(value: &str, len: u64) -> Ranged {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return Ranged::Full };
    let spec = spec.trim();
    if spec.contains(',') {
        return Ranged::Full;
    }
    let Some((first, last)) = spec.split_once('-') else { return Ranged::Full };
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let number = |s: &str| if digits(s) { s.parse::<u64>().ok() } else { None };
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match number(last) {
            Some(0) => Ranged::Unsatisfiable,
            Some(_) if len == 0 => Ranged::Unsatisfiable,
            Some(n) => Ranged::Partial { start: len.saturating_sub(n), end: len - 1 },
            // Too many digits for u64 is still "more than the file": all of it.
            None if digits(last) && len > 0 => Ranged::Partial { start: 0, end: len - 1 },
            None if digits(last) => Ranged::Unsatisfiable,
            None => Ranged::Full,
        },
        // bytes=A- and bytes=A-B.
        (false, _) => {
            let Some(start) = number(first) else {
                return if digits(first) { Ranged::Unsatisfiable } else { Ranged::Full };
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match number(last) {
                    Some(e) => e,
                    None if digits(last) => u64::MAX,
                    None => return Ranged::Full,
                }
            };
            if end < start {
                return Ranged::Full;
            }
            if start >= len {
                return Ranged::Unsatisfiable;
            }
            Ranged::Partial { start, end: end.min(len - 1) }
        }
        (true, true) => Ranged::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn v() -> Validators {
        Validators::new(ETag::new("abc"), UNIX_EPOCH + Duration::from_millis(1_795_341_600_700))
    }

    fn headers(pairs: &[(http::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, val) in pairs {
            h.append(k.clone(), HeaderValue::from_str(val).unwrap());
        }
        h
    }

    const LM: &str = "Sun, 22 Nov 2026 10:00:00 GMT";

    #[test]
    fn ranges() {
        use Ranged::*;
        for (value, want) in [
            ("bytes=0-99", Partial { start: 0, end: 99 }),
            ("bytes=0-0", Partial { start: 0, end: 0 }),
            ("bytes=10-", Partial { start: 10, end: 999 }),
            ("bytes=990-2000", Partial { start: 990, end: 999 }),
            ("bytes=-10", Partial { start: 990, end: 999 }),
            ("bytes=-5000", Partial { start: 0, end: 999 }),
            ("bytes=999-", Partial { start: 999, end: 999 }),
            (" bytes= 5 - 6 ", Partial { start: 5, end: 6 }),
            ("bytes=0-99999999999999999999999", Partial { start: 0, end: 999 }),
            ("bytes=-99999999999999999999999", Partial { start: 0, end: 999 }),
            ("bytes=1000-", Unsatisfiable),
            ("bytes=1000-1001", Unsatisfiable),
            ("bytes=99999999999999999999999-", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            // Several ranges: the whole file.
            ("bytes=0-1,5-6", Full),
            ("bytes=0-1, 2000-3000", Full),
            // Unparseable or another unit: ignored.
            ("bytes=5-1", Full),
            ("bytes=a-b", Full),
            ("bytes=-", Full),
            ("bytes=1", Full),
            ("bytes=+1-2", Full),
            ("bytes=0x1-2", Full),
            ("items=0-1", Full),
            ("", Full),
        ] {
            assert_eq!(parse_range(value, 1000), want, "{value:?}");
        }
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-1", 0), Unsatisfiable);
    }

    #[test]
    fn if_range_keeps_the_range_only_on_a_strong_match() {
        let r = |extra: &[(http::HeaderName, &str)]| {
            let mut pairs = vec![(RANGE, "bytes=0-9")];
            pairs.extend_from_slice(extra);
            range(&headers(&pairs), &v(), 100)
        };
        let partial = Ranged::Partial { start: 0, end: 9 };
        assert_eq!(r(&[]), partial);
        assert_eq!(r(&[(IF_RANGE, "\"abc\"")]), partial);
        assert_eq!(r(&[(IF_RANGE, LM)]), partial);
        assert_eq!(r(&[(IF_RANGE, "\"other\"")]), Ranged::Full);
        assert_eq!(r(&[(IF_RANGE, "W/\"abc\"")]), Ranged::Full, "weak tags never match If-Range");
        assert_eq!(r(&[(IF_RANGE, "Sun, 22 Nov 2026 09:59:59 GMT")]), Ranged::Full);
        assert_eq!(r(&[(IF_RANGE, "garbage")]), Ranged::Full);
        assert_eq!(range(&headers(&[(IF_RANGE, "\"abc\"")]), &v(), 100), Ranged::Full, "no Range, no range");
    }

    #[test]
    fn preconditions_in_rfc_order() {
        use Precondition::*;
        let p = |pairs: &[(http::HeaderName, &str)]| preconditions(&headers(pairs), &v());
        assert_eq!(p(&[]), Proceed);
        assert_eq!(p(&[(IF_NONE_MATCH, "\"abc\"")]), NotModified);
        assert_eq!(p(&[(IF_NONE_MATCH, "W/\"abc\"")]), NotModified, "If-None-Match compares weakly");
        assert_eq!(p(&[(IF_NONE_MATCH, "\"x\", \"abc\"")]), NotModified);
        assert_eq!(p(&[(IF_NONE_MATCH, "\"x\",W/\"y\"")]), Proceed);
        assert_eq!(p(&[(IF_NONE_MATCH, "*")]), NotModified);
        assert_eq!(p(&[(IF_NONE_MATCH, "\"ab")]), Proceed, "malformed: ignored");
        assert_eq!(p(&[(IF_MODIFIED_SINCE, LM)]), NotModified);
        assert_eq!(p(&[(IF_MODIFIED_SINCE, "Sun, 22 Nov 2026 10:00:01 GMT")]), NotModified);
        assert_eq!(p(&[(IF_MODIFIED_SINCE, "Sun, 22 Nov 2026 09:59:59 GMT")]), Proceed);
        assert_eq!(p(&[(IF_MODIFIED_SINCE, "Sunday, 22-Nov-26 10:00:00 GMT")]), NotModified, "RFC 850 dates");
        assert_eq!(p(&[(IF_MODIFIED_SINCE, "yesterday")]), Proceed);
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(p(&[(IF_NONE_MATCH, "\"x\""), (IF_MODIFIED_SINCE, LM)]), Proceed);
        assert_eq!(p(&[(IF_MATCH, "\"abc\"")]), Proceed);
        assert_eq!(p(&[(IF_MATCH, "*")]), Proceed);
        assert_eq!(p(&[(IF_MATCH, "W/\"abc\"")]), Failed, "If-Match compares strongly");
        assert_eq!(p(&[(IF_MATCH, "\"x\"")]), Failed);
        assert_eq!(p(&[(IF_UNMODIFIED_SINCE, "Sun, 22 Nov 2026 09:59:59 GMT")]), Failed);
        assert_eq!(p(&[(IF_UNMODIFIED_SINCE, LM)]), Proceed);
        assert_eq!(p(&[(IF_MATCH, "\"abc\""), (IF_UNMODIFIED_SINCE, "Sun, 22 Nov 2026 09:59:59 GMT")]), Proceed);
        assert_eq!(p(&[(IF_MATCH, "\"abc\""), (IF_NONE_MATCH, "\"abc\"")]), NotModified);
    }

    #[test]
    fn validators_truncate_to_seconds() {
        assert_eq!(v().last_modified_header(), LM);
        assert_eq!(v().etag.as_str(), "\"abc\"");
    }
}
