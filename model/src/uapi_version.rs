//! Version ordering as systemd orders `@v` (UAPI.10, `strverscmp_improved`): what
//! systemd-sysupdate uses to pick "newest", so the release index must agree with it.
//!
//! Notable consequences: `1.30.2 < 1.30.10`; `1.31.0~rc1 < 1.31.0` but `1.31.0-rc.1 > 1.31.0`;
//! `v1.31.0 < 1.31.0` (letters sort below digits); `1.0 < 1.0.0`.

use std::cmp::Ordering;

fn is_version_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

/// Leading zeros do not count: `00123` equals `123`.
fn strip_zeros(n: &[u8]) -> &[u8] {
    &n[n.iter().take_while(|&&c| c == b'0').count()..]
}

/// Compares two version strings the way systemd does.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    if a.is_empty() || b.is_empty() {
        return a.cmp(b);
    }
    let first = |s: &[u8]| s.first().copied().unwrap_or(0);
    loop {
        while !a.is_empty() && !is_version_char(a[0]) {
            a = &a[1..];
        }
        while !b.is_empty() && !is_version_char(b[0]) {
            b = &b[1..];
        }
        // '~' marks a pre-release: the side that has it is older.
        if first(a) == b'~' || first(b) == b'~' {
            let r = (first(a) != b'~').cmp(&(first(b) != b'~'));
            if r.is_ne() {
                return r;
            }
            (a, b) = (&a[1..], &b[1..]);
        }
        // Apart from '~' segments, the string with more segments is newer.
        if a.is_empty() || b.is_empty() {
            return a.cmp(b);
        }
        for sep in [b'-', b'^', b'.'] {
            if first(a) == sep || first(b) == sep {
                let r = (first(a) != sep).cmp(&(first(b) != sep));
                if r.is_ne() {
                    return r;
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
        let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
        let alphas = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_alphabetic()).count();
        if first(a).is_ascii_digit() || first(b).is_ascii_digit() {
            let (la, lb) = (digits(a), digits(b));
            // A numeric segment is newer than an empty one.
            let r = (la != 0).cmp(&(lb != 0));
            if r.is_ne() {
                return r;
            }
            let (na, nb) = (&a[..la], &b[..lb]);
            let (sa, sb) = (strip_zeros(na), strip_zeros(nb));
            let r = sa.len().cmp(&sb.len()).then_with(|| sa.cmp(sb));
            if r.is_ne() {
                return r;
            }
            (a, b) = (&a[la..], &b[lb..]);
        } else {
            let (la, lb) = (alphas(a), alphas(b));
            let n = la.min(lb);
            let r = a[..n].cmp(&b[..n]).then(la.cmp(&lb));
            if r.is_ne() {
                return r;
            }
            (a, b) = (&a[la..], &b[lb..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Pairs whose order matters for sysext channels.
    const CASES: &[(&str, &str)] = &[
        ("1.30.2", "1.30.10"),
        ("1.31.0~rc1", "1.31.0"),
        ("1.31.0", "1.31.0-rc.1"),
        ("v1.31.0", "1.31.0"),
        ("1.0", "1.0.0"),
        ("v1.31.3", "v1.31.10"),
        ("v1.31.9", "v1.32.0"),
        ("2.0.4", "2.0.4+build1"),
        ("2.0.4", "2.0.40"),
        ("1.2.3", "1.2.3"),
        ("001", "1"),
        ("1.0a", "1.0b"),
        ("1.0abc", "1.0abcd"),
        ("1_1", "1.1"),
        ("1^git1", "1.1"),
        ("1.9", "1a"),
        ("122.1", "123~rc1"),
        ("123~rc1", "123~rc2"),
        ("2", "10"),
        ("a", "1"),
    ];

    #[test]
    fn known_orders() {
        assert_eq!(compare("1.30.2", "1.30.10"), Ordering::Less);
        assert_eq!(compare("1.31.0-rc.1", "1.31.0"), Ordering::Greater);
        assert_eq!(compare("1.31.0~rc1", "1.31.0"), Ordering::Less);
        assert_eq!(compare("v1.31.0", "1.31.0"), Ordering::Less);
        assert_eq!(compare("001", "1"), Ordering::Equal);
        for (a, b) in CASES {
            assert_eq!(compare(a, b), compare(b, a).reverse(), "{a} vs {b} is not antisymmetric");
        }
    }

    /// The real consumer decides: systemd-analyze compare-versions must agree on every case.
    #[test]
    fn agrees_with_systemd() {
        let probe = Command::new("systemd-analyze").args(["compare-versions", "1", "2"]).output();
        // Exit codes encode the result and differ between releases; the printed form does not.
        if !probe.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("1 < 2")) {
            // Same rule as sysext_tests::skip (this crate cannot depend on it): CI must not skip.
            assert!(
                std::env::var_os("SYSEXT_TESTS_NO_SKIP").is_none(),
                "systemd-analyze compare-versions is not available"
            );
            eprintln!("SKIPPED: systemd-analyze compare-versions is not available");
            return;
        }
        for (a, b) in CASES.iter().flat_map(|&(a, b)| [(a, b), (b, a)]) {
            let out = Command::new("systemd-analyze").args(["compare-versions", a, b]).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let theirs = if text.contains(" < ") {
                Ordering::Less
            } else if text.contains(" > ") {
                Ordering::Greater
            } else if text.contains(" == ") {
                Ordering::Equal
            } else {
                panic!("unexpected output for {a} {b}: {text}")
            };
            assert_eq!(compare(a, b), theirs, "{a} vs {b}: systemd says {text}");
        }
    }
}
