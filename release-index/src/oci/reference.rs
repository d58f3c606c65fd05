//! `oci://REGISTRY/REPOSITORY`: where a release lives in a registry.

use std::fmt;
use std::str::FromStr;

/// A repository in an OCI registry, as given on a command line: `oci://HOST[:PORT]/PATH`
/// (HTTPS) or `oci+http://HOST[:PORT]/PATH` (plain HTTP, for a registry on loopback or inside
/// a trusted network).
///
/// The whole repository is one release: its tags are the images, versions and the index (see
/// [`crate::oci`]), so a reference names no tag or digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OciRepo {
    /// `host` or `host:port`.
    pub registry: String,
    /// The repository path, e.g. `sysext/release`.
    pub repository: String,
    /// Talk plain HTTP instead of HTTPS.
    pub plain_http: bool,
}

/// Why a string is not an `oci://` reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid OCI repository '{given}': {reason} (expected oci://REGISTRY/REPOSITORY or oci+http://REGISTRY/REPOSITORY)"
)]
pub struct OciRepoParseError {
    given: String,
    reason: String,
}

/// Whether `s` names an OCI repository (by its scheme).
pub fn is_oci(s: &str) -> bool {
    s.starts_with("oci://") || s.starts_with("oci+http://")
}

/// One path component of a repository name, as the distribution spec's grammar allows:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: one '.', one or two '_', or any number of '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        // An IPv6 literal is bracketed; a bare colon separates the port.
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p)),
        _ => (r, None),
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            }));
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0))
}

impl FromStr for OciRepo {
    type Err = OciRepoParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| OciRepoParseError { given: s.to_owned(), reason: reason.to_owned() };
        let (rest, plain_http) = if let Some(r) = s.strip_prefix("oci://") {
            (r, false)
        } else if let Some(r) = s.strip_prefix("oci+http://") {
            (r, true)
        } else {
            return Err(err("no oci:// or oci+http:// scheme"));
        };
        let rest = rest.trim_end_matches('/');
        let Some((registry, repository)) = rest.split_once('/') else {
            return Err(err("no repository after the registry"));
        };
        if !valid_registry(registry) {
            return Err(err("the registry must be HOST or HOST:PORT"));
        }
        if repository.contains('@') || repository.rsplit('/').next().is_some_and(|last| last.contains(':')) {
            return Err(err("a release is a whole repository: name no tag or digest"));
        }
        if !repository.split('/').all(valid_component) {
            return Err(err(
                "repository path components are lowercase letters and digits, separated by '.', '_', '__' or dashes",
            ));
        }
        if repository.len() > 255 {
            return Err(err("the repository name is longer than 255 characters"));
        }
        Ok(Self { registry: registry.to_owned(), repository: repository.to_owned(), plain_http })
    }
}

impl fmt::Display for OciRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.plain_http { "oci+http" } else { "oci" };
        write!(f, "{scheme}://{}/{}", self.registry, self.repository)
    }
}

impl OciRepo {
    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.plain_http {
            "http"
        } else {
            "https"
        }
    }

    /// The registry API URL of a blob, which any HTTP client can fetch where the registry
    /// allows anonymous pulls.
    pub fn blob_url(&self, digest: &str) -> String {
        format!("{}://{}/v2/{}/blobs/{digest}", self.scheme(), self.registry, self.repository)
    }

    /// The registry API URL of a manifest by tag or digest.
    pub fn manifest_url(&self, reference: &str) -> String {
        format!("{}://{}/v2/{}/manifests/{reference}", self.scheme(), self.registry, self.repository)
    }

    /// `oci://REGISTRY/REPO:TAG` or `…@DIGEST`, for messages.
    pub fn at(&self, reference: &str) -> String {
        if reference.contains(':') {
            format!("{self}@{reference}")
        } else {
            format!("{self}:{reference}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses() {
        for s in ["oci://127.0.0.1:5000/rel", "oci+http://localhost/a/b-c/d__e", "oci://ghcr.io/org/sysext.x"] {
            let r: OciRepo = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
        let r: OciRepo = "oci://reg.example:443/team/release/".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.plain_http),
            ("reg.example:443", "team/release", false)
        );
        assert_eq!(r.blob_url("sha256:ab"), "https://reg.example:443/v2/team/release/blobs/sha256:ab");
        assert_eq!(r.at("index"), "oci://reg.example:443/team/release:index");
        assert_eq!(r.at("sha256:ab"), "oci://reg.example:443/team/release@sha256:ab");
        for bad in [
            "oci://reg",
            "oci://reg/",
            "oci://reg/Upper",
            "oci://reg/a:tag",
            "oci://reg/a@sha256:00",
            "oci://reg:0/a",
            "oci://reg:x/a",
            "oci://reg/a..b",
            "oci://reg/-a",
            "http://reg/a",
            "oci:///a",
        ] {
            assert!(bad.parse::<OciRepo>().is_err(), "{bad}");
        }
        assert!(is_oci("oci+http://x/y") && !is_oci("https://x/y"));
    }
}
