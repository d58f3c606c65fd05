use std::str::FromStr;

use super::HttpError;

/// Where upstream downloads come from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Mirror {
    /// The upstream hosts themselves.
    #[default]
    Upstream,
    /// One base URL (`http(s)://` or `file:///`) that serves every upstream path.
    Base(String),
}

impl FromStr for Mirror {
    type Err = HttpError;

    /// Parses `--mirror`: an http(s) or file URL.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.starts_with("http://") || s.starts_with("https://") || s.starts_with("file:///");
        if !ok {
            return Err(HttpError::BadUrl {
                url: s.to_owned(),
                message: "a mirror must be an http://, https:// or file:/// URL".into(),
            });
        }
        Ok(Mirror::Base(s.trim_end_matches('/').to_owned()))
    }
}

impl Mirror {
    /// Where to fetch an upstream URL from: the host is replaced, the path kept.
    pub fn map(&self, upstream: &str) -> String {
        match self {
            Mirror::Upstream => upstream.to_owned(),
            Mirror::Base(base) => {
                let after_scheme = upstream.split_once("://").map_or(upstream, |(_, r)| r);
                let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
                format!("{base}{path}")
            }
        }
    }

    /// The mirror's own spelling, for cache keys and messages; `None` for upstream.
    pub fn base(&self) -> Option<&str> {
        match self {
            Mirror::Upstream => None,
            Mirror::Base(b) => Some(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_host_and_keeps_path() {
        let m: Mirror = "http://10.0.0.1:8080/mirror/".parse().unwrap();
        assert_eq!(
            m.map("https://dl.k8s.io/v1.31.3/bin/linux/amd64/kubelet"),
            "http://10.0.0.1:8080/mirror/v1.31.3/bin/linux/amd64/kubelet"
        );
        assert_eq!(
            m.map("https://github.com/containerd/containerd/releases/download/v2.0.4/x.tar.gz"),
            "http://10.0.0.1:8080/mirror/containerd/containerd/releases/download/v2.0.4/x.tar.gz"
        );
        assert_eq!(Mirror::Upstream.map("https://dl.k8s.io/a"), "https://dl.k8s.io/a");
        assert!("dl.k8s.io".parse::<Mirror>().is_err());
        assert_eq!("file:///srv/m".parse::<Mirror>().unwrap().map("https://dl.k8s.io/a/b"), "file:///srv/m/a/b");
    }
}
