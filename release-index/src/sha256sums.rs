//! `SHA256SUMS` exactly as GNU `sha256sum` writes it and systemd-sysupdate reads it:
//! `<64 lowercase hex><two spaces><name>\n` per file, sorted by name, a final newline, no
//! comments and no blank lines (sysupdate rejects lines shorter than 67 bytes).

use std::collections::BTreeMap;
use std::fmt;

use signing::Sha256Digest;

/// A checksum list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sha256Sums {
    entries: BTreeMap<String, Sha256Digest>,
}

/// Why a `SHA256SUMS` file is refused, with the 1-based line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("SHA256SUMS line {line}: {reason}")]
pub struct Sha256SumsError {
    line: usize,
    reason: String,
}

/// Whether `name` can be listed: a plain file name sysupdate accepts.
pub fn valid_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("empty or special file name");
    }
    if name.contains('/') {
        return Err("names are plain file names, without '/'");
    }
    if name.starts_with('\\') {
        return Err("escaped names (leading '\\') are not accepted by systemd-sysupdate");
    }
    if name.chars().any(char::is_control) {
        return Err("control characters in a file name");
    }
    Ok(())
}

impl Sha256Sums {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces an entry.
    pub fn insert(&mut self, name: &str, digest: Sha256Digest) -> Result<(), &'static str> {
        valid_name(name)?;
        self.entries.insert(name.to_owned(), digest);
        Ok(())
    }

    /// The digest listed for `name`.
    pub fn get(&self, name: &str) -> Option<&Sha256Digest> {
        self.entries.get(name)
    }

    /// Entries sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Sha256Digest)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Parses strictly: anything `sha256sum -c` or sysupdate would stumble over is an error.
    pub fn parse(text: &str) -> Result<Self, Sha256SumsError> {
        let mut sums = Self::new();
        if text.is_empty() {
            return Ok(sums);
        }
        let err = |line, reason: &str| Sha256SumsError { line, reason: reason.to_owned() };
        let body = text.strip_suffix('\n').ok_or_else(|| err(text.lines().count(), "missing final newline"))?;
        for (i, line) in body.split('\n').enumerate() {
            let n = i + 1;
            let (hash, rest) = line
                .split_at_checked(64)
                .ok_or_else(|| err(n, "expected 64 hex characters, two spaces and a file name"))?;
            if !hash.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
                return Err(err(n, "the digest must be 64 lowercase hex characters"));
            }
            let name = rest
                .strip_prefix("  ")
                .or_else(|| rest.strip_prefix(" *"))
                .ok_or_else(|| err(n, "expected two spaces (or ' *') between digest and name"))?;
            valid_name(name).map_err(|r| err(n, r))?;
            let digest = hash.parse().map_err(|_| err(n, "invalid digest"))?;
            if sums.entries.insert(name.to_owned(), digest).is_some() {
                return Err(err(n, &format!("'{name}' is listed twice")));
            }
        }
        Ok(sums)
    }
}

impl fmt::Display for Sha256Sums {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, digest) in &self.entries {
            writeln!(f, "{digest}  {name}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_gnu_format_sorted_and_round_trips() {
        let mut s = Sha256Sums::new();
        s.insert("kubernetes-v1.31.3-x86-64.raw", Sha256Digest::of(b"b")).unwrap();
        s.insert("cni-v1.6.2-arm64.raw", Sha256Digest::of(b"a")).unwrap();
        let text = s.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("  cni-v1.6.2-arm64.raw") && lines[0].len() == 64 + 2 + 20);
        assert!(text.ends_with('\n'));
        assert_eq!(Sha256Sums::parse(&text).unwrap(), s);
    }

    #[test]
    fn refuses_what_sysupdate_refuses() {
        let d = Sha256Digest::of(b"").to_string();
        let cases = [
            (format!("{d}  a.raw"), "missing final newline"),
            (format!("{d}  a.raw\n\n"), "expected 64 hex"),
            (format!("# comment\n{d}  a.raw\n"), "expected 64 hex"),
            (format!("{}  a.raw\n", d.to_uppercase()), "lowercase"),
            (format!("{d} a.raw\n"), "two spaces"),
            (format!("{d}  dir/a.raw\n"), "without '/'"),
            (format!("{d}  \\a.raw\n"), "escaped names"),
            (format!("{d}  a.raw\n{d}  a.raw\n"), "listed twice"),
        ];
        for (text, want) in cases {
            let err = Sha256Sums::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        assert!(Sha256Sums::parse(&format!("{d} *a.raw\n")).is_ok(), "binary-mode marker is GNU format too");
        assert!(Sha256Sums::new().insert("a/b", Sha256Digest::of(b"")).is_err());
    }
}
