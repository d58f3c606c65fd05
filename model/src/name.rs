use std::fmt;
use std::str::FromStr;

/// The name of a system extension, e.g. `kubernetes`.
///
/// It is the `NAME` in `extension-release.NAME`, the stable `/etc/extensions/NAME.raw` link
/// and the first part of every image file name. Lowercase letters, digits, `_` and `-`, at
/// most 64 characters; no `-`-separated part may look like the start of a version (a digit, or
/// `v` and a digit), so that `NAME-VERSION-ARCH.raw` always splits one way.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtensionName(String);

/// Why a string is not an extension name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid extension name '{given}': {reason}")]
pub struct NameParseError {
    given: String,
    reason: &'static str,
}

pub(crate) fn starts_like_version(s: &str) -> bool {
    let b = s.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_digit() => true,
        Some(b'v') => b.get(1).is_some_and(u8::is_ascii_digit),
        _ => false,
    }
}

impl ExtensionName {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by name be indexed with a plain `&str`.
impl std::borrow::Borrow<str> for ExtensionName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExtensionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ExtensionName {
    type Err = NameParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| Err(NameParseError { given: s.to_owned(), reason });
        if s.is_empty() || s.len() > 64 {
            return err("expected 1 to 64 characters");
        }
        if !s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-') {
            return err("expected only lowercase letters, digits, '_' and '-'");
        }
        if !s.as_bytes()[0].is_ascii_lowercase() {
            return err("expected a lowercase letter first");
        }
        if s.ends_with('-') || s.contains("--") {
            return err("'-' must separate two non-empty parts");
        }
        if s.split('-').skip(1).any(starts_like_version) {
            return err("a part after '-' must not start like a version (a digit, or 'v' and a digit)");
        }
        Ok(Self(s.to_owned()))
    }
}

crate::serde_via_str!(ExtensionName);
crate::string_schema!(
    ExtensionName,
    "ExtensionName",
    "Extension name: extension-release.NAME and /etc/extensions/NAME.raw.",
    "^[a-z][a-z0-9_-]{0,63}$"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_names() {
        for n in ["kubernetes", "containerd", "cni", "k3s", "docker-compose", "wasm_shims"] {
            assert_eq!(n.parse::<ExtensionName>().unwrap().to_string(), n);
        }
    }

    #[test]
    fn rejects_ambiguous_or_unsafe_names() {
        for n in ["", "Kubernetes", "kube/let", "kube.raw", "-x", "x-", "a--b", "foo-2", "foo-v1", "1foo"] {
            assert!(n.parse::<ExtensionName>().is_err(), "{n} should be rejected");
        }
    }
}
