//! Replays the committed fuzz corpora of bakery's targets (fuzz/corpus/checksums and
//! fuzz/corpus/archive_member) through the properties the targets check, so every seed and
//! every fixed crash stays covered in ordinary test runs.

use std::path::{Path, PathBuf};

use bakery::archive::{check_link, member_name};
use bakery::checksums::digest_for;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    files
}

#[test]
fn checksums_seeds() {
    let mut accepted = 0;
    for (path, bytes) in corpus("checksums") {
        let Ok(data) = std::str::from_utf8(&bytes) else { continue };
        let (entry, text) = data.split_once('\n').unwrap_or((data, ""));
        if let Ok(digest) = digest_for(text, entry) {
            assert!(text.to_ascii_lowercase().contains(&digest.to_hex()), "{}", path.display());
            if !entry.is_empty()
                && !entry.starts_with('*')
                && !entry.contains(char::is_whitespace)
                && !entry.contains('/')
            {
                assert_eq!(digest_for(&format!("{digest}  {entry}\n"), entry).unwrap(), digest, "{}", path.display());
            }
            accepted += 1;
        }
    }
    assert!(accepted >= 2, "the bare digest and the list seeds must be accepted");
}

#[test]
fn archive_member_seeds() {
    let (mut names, mut links) = (0, 0);
    for (path, bytes) in corpus("archive_member") {
        let Some((&kind, rest)) = bytes.split_first() else { continue };
        let (name, target) = match rest.iter().position(|&b| b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let Ok(Some(normal)) = member_name(name) else { continue };
        names += 1;
        assert!(normal.split('/').all(|p| !p.is_empty() && p != "." && p != ".."), "{}", path.display());
        assert!(!normal.chars().any(char::is_control), "{}", path.display());
        assert_eq!(member_name(normal.as_bytes()).unwrap().as_deref(), Some(normal.as_str()), "{}", path.display());
        let hard = match kind {
            b's' => false,
            b'h' => true,
            _ => continue,
        };
        if check_link(&normal, target, hard).is_ok() {
            links += 1;
            let target = std::str::from_utf8(target).unwrap();
            let mut at: Vec<&str> = if hard { Vec::new() } else { normal.split('/').collect() };
            if !hard {
                at.pop();
            }
            for part in target.split('/') {
                match part {
                    "" | "." => {}
                    ".." => assert!(at.pop().is_some(), "{}: {normal} -> {target} leaves", path.display()),
                    p => at.push(p),
                }
            }
        }
    }
    assert!(names >= 3 && links >= 2, "the well-formed seeds must be accepted ({names} names, {links} links)");
}
