//! Where a release is read from: a local directory or an HTTP(S) base URL.
//!
//! Both give the same view (relative paths → bytes), so the client and `verify-release` treat
//! a release on disk and a release behind a web server identically.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

/// A release directory or the URL it is served from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleaseSource {
    /// A directory on this machine (`file://` URLs become this too).
    Dir(PathBuf),
    /// An `http(s)://` base URL, always ending in `/`.
    Url(String),
}

/// A read that failed, naming the path or URL.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{location}: {cause}")]
pub struct SourceError {
    /// Path or URL.
    pub location: String,
    /// What went wrong.
    pub cause: String,
}

impl FromStr for ReleaseSource {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("http://") || s.starts_with("https://") {
            let url: crate::index::BaseUrl = s.parse().map_err(|e: crate::index::BaseUrlParseError| SourceError {
                location: s.into(),
                cause: e.to_string(),
            })?;
            return Ok(Self::Url(url.to_string()));
        }
        if let Some(path) = s.strip_prefix("file://") {
            return Ok(Self::Dir(PathBuf::from(path)));
        }
        if s.contains("://") {
            return Err(SourceError {
                location: s.into(),
                cause: "expected a directory, a file:// URL or an http(s):// URL".into(),
            });
        }
        Ok(Self::Dir(PathBuf::from(s)))
    }
}

impl fmt::Display for ReleaseSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir(d) => write!(f, "{}", d.display()),
            Self::Url(u) => f.write_str(u),
        }
    }
}

/// Attempts per HTTP request: transient failures (connection trouble, 408, 429, 5xx) are
/// retried; anything else is an answer.
const ATTEMPTS: u32 = 3;

fn http() -> &'static reqwest::blocking::Client {
    static CLIENT: OnceLock<reqwest::blocking::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::blocking::Client::builder()
            .user_agent(concat!("release-index/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // Per read, not per transfer: a stalled server fails instead of hanging a node.
            .timeout(Duration::from_secs(120))
            .build()
            .expect("the TLS backend initialises")
    })
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl ReleaseSource {
    /// The path or URL of `relative`, for messages and downloads.
    pub fn location(&self, relative: &str) -> String {
        match self {
            Self::Dir(d) => d.join(relative).display().to_string(),
            Self::Url(u) => format!("{u}{relative}"),
        }
    }

    /// The local path of `relative`, for directories.
    pub fn local_path(&self, relative: &str) -> Option<PathBuf> {
        match self {
            Self::Dir(d) => Some(d.join(relative)),
            Self::Url(_) => None,
        }
    }

    /// Opens `relative` for streaming; `Ok(None)` if it does not exist (ENOENT or HTTP 404).
    pub fn open(&self, relative: &str) -> Result<Option<Box<dyn Read + Send>>, SourceError> {
        let location = self.location(relative);
        let err = |cause: String| SourceError { location: location.clone(), cause };
        match self {
            Self::Dir(d) => match std::fs::File::open(d.join(relative)) {
                Ok(f) => Ok(Some(Box::new(f))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(err(e.to_string())),
            },
            Self::Url(_) => {
                let mut attempt = 1;
                loop {
                    let transient = match http().get(&location).send() {
                        Ok(resp) if resp.status().is_success() => return Ok(Some(Box::new(resp))),
                        Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => return Ok(None),
                        Ok(resp) => {
                            let code = resp.status().as_u16();
                            let e = format!("HTTP {}", resp.status());
                            if !(code == 408 || code == 429 || resp.status().is_server_error()) {
                                return Err(err(e));
                            }
                            e
                        }
                        Err(e) => chain(&e),
                    };
                    if attempt >= ATTEMPTS {
                        return Err(err(format!("{transient} (after {ATTEMPTS} attempts)")));
                    }
                    std::thread::sleep(Duration::from_millis(250 << attempt));
                    attempt += 1;
                }
            }
        }
    }

    /// Reads a small file whole; refuses more than `limit` bytes. `Ok(None)` if it does not exist.
    pub fn read(&self, relative: &str, limit: u64) -> Result<Option<Vec<u8>>, SourceError> {
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
}

/// Reads everything below `dir` as relative paths, following symlinks to files (hard links
/// and the release symlink are how publish lays a release out). Directories only.
pub fn walk(dir: &Path) -> io::Result<Vec<String>> {
    fn go(root: &Path, rel: &str, out: &mut Vec<String>) -> io::Result<()> {
        for entry in std::fs::read_dir(root.join(rel))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if std::fs::metadata(root.join(&path)).is_ok_and(|m| m.is_dir()) {
                go(root, &path, out)?;
            } else {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(dir, "", &mut out)?;
    out.sort();
    Ok(out)
}
