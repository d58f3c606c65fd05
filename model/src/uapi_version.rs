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

    #[test]
    fn known_orders() {
        assert_eq!(compare("1.30.2", "1.30.10"), Ordering::Less);
        assert_eq!(compare("1.31.0-rc.1", "1.31.0"), Ordering::Greater);
        assert_eq!(compare("1.31.0~rc1", "1.31.0"), Ordering::Less);
        assert_eq!(compare("v1.31.0", "1.31.0"), Ordering::Less);
        assert_eq!(compare("001", "1"), Ordering::Equal);
        assert_eq!(compare("1.9", "1a"), compare("1a", "1.9").reverse());
    }
}
