//! Entry points of bakery's fuzz targets in `fuzz/` (and of `tests/fuzz_corpus.rs`, which
//! replays their committed corpora): each decodes the fuzzer's bytes, runs the code
//! production uses on them, and panics when an accepted result breaks an invariant the rest
//! of bakery relies on. Not an API.

use crate::archive::{check_link, member_name};
use crate::checksums::digest_for;

/// The published-checksum reader, the trust root of every upstream download: never panics,
/// and a digest it returns is one the file really states for that entry, so a rendered
/// `sha256sum` line for it reads back the same (for names a line can carry: not starting
/// with `*`, the binary-mode marker). Input: the entry name up to the first newline, then
/// the checksum file. Returns whether a digest was accepted.
pub fn checksums(data: &[u8]) -> bool {
    let Ok(data) = std::str::from_utf8(data) else { return false };
    let (entry, text) = data.split_once('\n').unwrap_or((data, ""));
    let Ok(digest) = digest_for(text, entry) else { return false };
    let hex = digest.to_hex();
    assert!(text.to_ascii_lowercase().contains(&hex), "{hex} is not in the file");
    if !entry.is_empty() && !entry.starts_with('*') && !entry.contains(char::is_whitespace) && !entry.contains('/') {
        let line = format!("{digest}  {entry}\n");
        assert_eq!(digest_for(&line, entry).expect("a rendered line reads back"), digest);
    }
    true
}

/// What [`archive_member`] accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    /// Nothing: the name (or the link target) was refused.
    Refused,
    /// The member's name.
    Name,
    /// The name and the link target.
    Link,
}

/// The archive member checks (`archive::member_name`, `archive::check_link`): never panic,
/// accept only names that stay inside the archive and carry no control characters,
/// normalise idempotently, and accept only link targets that, resolved, stay inside.
///
/// Input: one kind byte (`s` symlink, `h` hard link, anything else a plain member), the name
/// up to the first NUL, then the link target.
pub fn archive_member(data: &[u8]) -> Member {
    let Some((&kind, rest)) = data.split_first() else { return Member::Refused };
    let (name, target) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(Some(normal)) = member_name(name) else { return Member::Refused };
    assert!(!normal.starts_with('/') && !normal.chars().any(char::is_control), "{normal:?}");
    assert!(normal.split('/').all(|p| !p.is_empty() && p != "." && p != ".."), "{normal:?}");
    assert_eq!(member_name(normal.as_bytes()).unwrap().as_deref(), Some(normal.as_str()));
    let hard = match kind {
        b's' => false,
        b'h' => true,
        _ => return Member::Name,
    };
    if check_link(&normal, target, hard).is_err() {
        return Member::Name;
    }
    let target = std::str::from_utf8(target).expect("accepted targets are UTF-8");
    assert!(!target.starts_with('/') && !target.chars().any(char::is_control), "{target:?}");
    // Resolve it independently: a symlink from its own directory, a hard link from the
    // archive root.
    let mut at: Vec<&str> = if hard { Vec::new() } else { normal.split('/').collect() };
    if !hard {
        at.pop();
    }
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => assert!(at.pop().is_some(), "{normal} -> {target} leaves the archive"),
            p => at.push(p),
        }
    }
    Member::Link
}
