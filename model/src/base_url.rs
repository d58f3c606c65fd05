use std::fmt;
use std::str::FromStr;

/// The URL a release directory is served from: `http(s)://…/`, always with a trailing `/`,
/// so that joining a relative path is plain concatenation and never drops a path segment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BaseUrl(String);

/// Why a string is not a base URL.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid base URL '{0}': expected http:// or https:// followed by a host, without spaces, query or fragment (systemd-sysupdate downloads url-file sources over HTTP)")]
pub struct BaseUrlParseError(String);

impl BaseUrl {
    /// The URL, ending in `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// URL of a path inside the release (`relative` has no leading `/`).
    pub fn join(&self, relative: &str) -> String {
        format!("{}{}", self.0, relative.trim_start_matches('/'))
    }

    /// The base URL of a directory inside the release, e.g. `<base>/kubernetes/`.
    pub fn dir(&self, relative: &str) -> BaseUrl {
        let joined = self.join(relative);
        BaseUrl(if joined.ends_with('/') { joined } else { format!("{joined}/") })
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BaseUrl {
    type Err = BaseUrlParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BaseUrlParseError(s.to_owned());
        let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).ok_or_else(err)?;
        let host = rest.split('/').next().unwrap_or_default();
        if host.is_empty() || s.bytes().any(|c| c <= b' ' || c >= 0x7f || matches!(c, b'?' | b'#' | b'"' | b'\\')) {
            return Err(err());
        }
        Ok(Self(if s.ends_with('/') { s.to_owned() } else { format!("{s}/") }))
    }
}

crate::serde_via_str!(BaseUrl);
crate::string_schema!(
    BaseUrl,
    "BaseUrl",
    "http(s) URL of the release directory, ending in '/'.",
    "^https?://[^/?#\\s]+(/[^?#\\s]*)?/$"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_joins() {
        assert_eq!("https://x.org/a".parse::<BaseUrl>().unwrap().as_str(), "https://x.org/a/");
        let base: BaseUrl = "http://127.0.0.1:8080/".parse().unwrap();
        assert_eq!(base.join("SHA256SUMS"), "http://127.0.0.1:8080/SHA256SUMS");
        assert_eq!(base.dir("kubernetes").as_str(), "http://127.0.0.1:8080/kubernetes/");
        assert_eq!(base.dir("kubernetes/").as_str(), "http://127.0.0.1:8080/kubernetes/");
        for bad in ["ftp://x/", "https:///a", "https://x/a b", "https://x/?q", "/srv/release"] {
            assert!(bad.parse::<BaseUrl>().is_err(), "{bad}");
        }
    }
}
