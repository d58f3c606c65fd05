//! Published checksum files, the trust root of every upstream download: a bare digest (as
//! dl.k8s.io serves `kubelet.sha256`) or a `sha256sum` list (`<hex>  name`, `<hex> *name`).
//!
//! Strict where leniency would let one bad line decide: a list naming the same file twice with
//! different digests is refused rather than read first-wins, and lines that are not
//! `sha256sum` output are errors, not skipped.

use signing::Sha256Digest;

/// Finds the digest for `entry` (a file's base name) in a published checksum file.
pub fn digest_for(text: &str, entry: &str) -> Result<Sha256Digest, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty; expected a sha256 digest or sha256sum output".into());
    }
    if !trimmed.contains(char::is_whitespace) {
        return trimmed.parse().map_err(|e| format!("not a sha256 checksum file: {e}"));
    }
    let mut found: Option<Sha256Digest> = None;
    let mut names = Vec::new();
    for (i, line) in trimmed.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(hash), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("line {}: expected '<sha256>  <file name>', got {:?}", i + 1, truncate(line)));
        };
        let digest: Sha256Digest = hash.parse().map_err(|e| format!("line {}: {e}", i + 1))?;
        let name = name.trim_start_matches('*');
        let base = name.rsplit('/').next().unwrap_or(name);
        if base == entry {
            if let Some(previous) = found.filter(|p| *p != digest) {
                return Err(format!(
                    "lists '{entry}' twice with different digests ({previous} and {digest}); refusing to pick one"
                ));
            }
            found = Some(digest);
        } else {
            names.push(base.to_owned());
        }
    }
    found.ok_or_else(|| {
        format!(
            "no entry for '{entry}' (it lists: {})",
            if names.is_empty() { "nothing".into() } else { names.join(", ") }
        )
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn both_upstream_forms() {
        assert_eq!(digest_for(D, "kubelet").unwrap().to_hex(), D);
        assert_eq!(digest_for(&format!("{D}\n"), "kubelet").unwrap().to_hex(), D);
        let list = format!("{}  runc.amd64\n{D}  runc.arm64\n{D} *./dir/other\n", "0".repeat(64));
        assert_eq!(digest_for(&list, "runc.arm64").unwrap().to_hex(), D);
        assert_eq!(digest_for(&list, "other").unwrap().to_hex(), D);
        let err = digest_for(&list, "runc.s390x").unwrap_err();
        assert_eq!(err, "no entry for 'runc.s390x' (it lists: runc.amd64, runc.arm64, other)");
    }

    #[test]
    fn refuses_what_is_not_a_checksum_list() {
        assert!(digest_for("<html>404</html>", "x").is_err());
        assert!(digest_for("", "x").is_err());
        let html = "<html>\n<body>Not Found</body>\n</html>\n";
        assert!(digest_for(html, "x").unwrap_err().starts_with("line 1:"), "{}", digest_for(html, "x").unwrap_err());
    }

    #[test]
    fn two_digests_for_one_name_are_refused() {
        let other = "1".repeat(64);
        let list = format!("{D}  kubelet\n{other}  kubelet\n");
        let err = digest_for(&list, "kubelet").unwrap_err();
        assert!(err.contains("twice with different digests"), "{err}");
        // The same digest twice is harmless.
        assert_eq!(digest_for(&format!("{D}  kubelet\n{D}  ./kubelet\n"), "kubelet").unwrap().to_hex(), D);
    }
}
