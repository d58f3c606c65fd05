//! bakery's published-checksum reader (`checksums::digest_for`), the trust root of every
//! upstream download: never panics, and a digest it returns is one the file really states
//! for that entry, so a rendered `sha256sum` line for it reads back the same (for names a
//! line can carry: not starting with `*`, the binary-mode marker).
//!
//! Input: the entry name up to the first newline, then the checksum file.
#![no_main]

use bakery::checksums::digest_for;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(data) = std::str::from_utf8(data) else { return };
    let (entry, text) = data.split_once('\n').unwrap_or((data, ""));
    if let Ok(digest) = digest_for(text, entry) {
        let hex = digest.to_hex();
        assert!(text.to_ascii_lowercase().contains(&hex), "{hex} is not in the file");
        if !entry.is_empty() && !entry.starts_with('*') && !entry.contains(char::is_whitespace) && !entry.contains('/') {
            let line = format!("{digest}  {entry}\n");
            assert_eq!(digest_for(&line, entry).expect("a rendered line reads back"), digest);
        }
    }
});
