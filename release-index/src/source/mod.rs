//! Where a release is read from, behind one trait: a directory on this machine, an HTTP(S)
//! base URL or an OCI registry.
//!
//! Every backend gives the same view (relative paths → bytes), so the [`crate::client`] and
//! [`crate::verify`] treat a release on disk, behind a web server or in a registry
//! identically, and a new backend plugs in without touching the others.

mod dir;
mod http;
mod oci;

use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

pub use dir::{walk, DirBackend};
pub use http::HttpBackend;
pub use oci::OciBackend;
use sysext_model::BaseUrl;

use crate::http::{HttpClient, HttpOptions};
use crate::oci::{OciOptions, OciRepo};

/// A read that failed, naming the path or URL.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{location}: {cause}")]
pub struct SourceError {
    /// Path or URL.
    pub location: String,
    /// What went wrong.
    pub cause: String,
}

/// A release as a tree of files addressed by relative paths (`index.json`,
/// `kubernetes/SHA256SUMS`).
pub trait Backend: fmt::Debug + Send + Sync {
    /// The release itself (its directory or base URL), for messages and reports.
    fn name(&self) -> String;

    /// The path or URL of `relative`, for messages.
    fn location(&self, relative: &str) -> String;

    /// Opens `relative` for streaming; `Ok(None)` if it does not exist.
    fn open(&self, relative: &str) -> Result<Option<Box<dyn Read + Send>>, SourceError>;

    /// Reads a small file whole, refusing more than `limit` bytes; `Ok(None)` if it does not
    /// exist.
    fn read(&self, relative: &str, limit: u64) -> Result<Option<Vec<u8>>, SourceError> {
        let Some(reader) = self.open(relative)? else { return Ok(None) };
        let mut buf = Vec::new();
        reader
            .take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| SourceError { location: self.location(relative), cause: e.to_string() })?;
        if buf.len() as u64 > limit {
            return Err(SourceError { location: self.location(relative), cause: format!("larger than {limit} bytes") });
        }
        Ok(Some(buf))
    }

    /// Every file in the release, if this backend can enumerate them (a directory can, a web
    /// server cannot).
    fn list(&self) -> Option<Result<Vec<String>, SourceError>> {
        None
    }

    /// The local path of `relative`, if the release is on this machine.
    fn local_path(&self, _relative: &str) -> Option<PathBuf> {
        None
    }

    /// A URL that serves the file with this sha256 to any HTTP client, if the backend has one
    /// apart from the release's own layout (a registry's blob URL).
    fn blob_url(&self, _sha256: &signing::Sha256Digest) -> Option<String> {
        None
    }
}

/// Where a release is, as given on a command line: a directory or the URL it is served from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseSource {
    /// A directory on this machine (`file://` URLs become this too).
    Dir(PathBuf),
    /// An `http(s)://` base URL.
    Url(BaseUrl),
    /// A repository in an OCI registry (`oci://` or `oci+http://`).
    Oci(OciRepo),
}

impl FromStr for ReleaseSource {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("http://") || s.starts_with("https://") {
            let url: BaseUrl = s.parse().map_err(|e: sysext_model::BaseUrlParseError| SourceError {
                location: s.into(),
                cause: e.to_string(),
            })?;
            return Ok(Self::Url(url));
        }
        if crate::oci::is_oci(s) {
            let repo: OciRepo = s
                .parse()
                .map_err(|e: crate::oci::OciRepoParseError| SourceError { location: s.into(), cause: e.to_string() })?;
            return Ok(Self::Oci(repo));
        }
        if let Some(path) = s.strip_prefix("file://") {
            return Ok(Self::Dir(PathBuf::from(path)));
        }
        if s.contains("://") {
            return Err(SourceError {
                location: s.into(),
                cause: "expected a directory, a file:// URL, an http(s):// URL or oci://REGISTRY/REPOSITORY".into(),
            });
        }
        Ok(Self::Dir(PathBuf::from(s)))
    }
}

crate::serde_via_str!(ReleaseSource);

impl fmt::Display for ReleaseSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir(d) => write!(f, "{}", d.display()),
            Self::Url(u) => u.fmt(f),
            Self::Oci(r) => r.fmt(f),
        }
    }
}

impl ReleaseSource {
    /// The backend that reads this release, fetching over HTTP with `http` (a registry is
    /// reached with the same timeouts, retries and CA file, and credentials from the auth
    /// files).
    pub fn backend_with(&self, http: &HttpClient) -> Arc<dyn Backend> {
        self.backend_with_credentials(http, None)
    }

    /// Like [`Self::backend_with`], with explicit registry credentials for `oci://` sources.
    pub fn backend_with_credentials(
        &self,
        http: &HttpClient,
        credentials: Option<&crate::oci::auth::Credentials>,
    ) -> Arc<dyn Backend> {
        match self {
            Self::Dir(d) => Arc::new(DirBackend::new(d.clone())),
            Self::Url(u) => Arc::new(HttpBackend::new(u.clone(), http.clone())),
            Self::Oci(r) => Arc::new(OciBackend::new(
                r.clone(),
                OciOptions { http: http.options().clone(), credentials: credentials.cloned() },
            )),
        }
    }

    /// The backend that reads this release, with the default HTTP policy.
    pub fn backend(&self) -> Result<Arc<dyn Backend>, SourceError> {
        let http = HttpClient::new(HttpOptions::default())
            .map_err(|e| SourceError { location: self.to_string(), cause: e.to_string() })?;
        Ok(self.backend_with(&http))
    }
}
