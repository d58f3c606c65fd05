//! Downloads with verification while streaming, a retry policy, mirrors and a local cache.
//!
//! Artifacts are written to a temporary file in the cache while being hashed; the file is
//! renamed to its digest only after the digest matched. Nothing downstream ever sees an
//! unverified byte. Small metadata files (checksums, version pins) are cached by URL, so a
//! rebuild of the same inputs performs no network request at all.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use signing::{HashingWriter, Sha256Digest};

/// Metadata files (checksums, pins) are tiny; refuse anything that is obviously not one.
const SMALL_LIMIT: u64 = 1 << 20;

/// A download failure, naming the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server answered with an error status.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// URL requested.
        url: String,
        /// Status code and reason.
        status: String,
        /// Whether another attempt may succeed (408, 429, 5xx).
        retryable: bool,
        /// The server's Retry-After, if any.
        retry_after: Option<Duration>,
    },
    /// The connection failed or broke off.
    #[error("GET {url}: {message}")]
    Transport {
        /// URL requested.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The body ended before the announced length.
    #[error("GET {url}: body truncated after {got} of {expected} bytes")]
    Truncated {
        /// URL requested.
        url: String,
        /// Content-Length.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// The content does not have the expected digest.
    #[error("sha256 mismatch for {url}: expected {expected} ({expected_from}), got {actual}")]
    DigestMismatch {
        /// URL requested.
        url: String,
        /// Expected digest.
        expected: Sha256Digest,
        /// Where the expected digest came from.
        expected_from: String,
        /// Digest of what arrived.
        actual: Sha256Digest,
    },
    /// A metadata file larger than any checksum file.
    #[error("GET {url}: more than {limit} bytes; this should be a small text file")]
    TooLarge {
        /// URL requested.
        url: String,
        /// Size limit.
        limit: u64,
    },
    /// Local file trouble (cache or file:// mirror). The cause is part of the message, not
    /// a separate source, so error chains do not repeat it.
    #[error("{}: {cause}", path.display())]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Cause.
        cause: io::Error,
    },
    /// The URL cannot be fetched at all.
    #[error("{url}: {message}")]
    BadUrl {
        /// URL given.
        url: String,
        /// Why.
        message: String,
    },
}

impl FetchError {
    fn is_retryable(&self) -> bool {
        match self {
            FetchError::Status { retryable, .. } => *retryable,
            FetchError::Transport { .. } | FetchError::Truncated { .. } => true,
            _ => false,
        }
    }

    fn io(path: &Path, source: io::Error) -> Self {
        FetchError::Io { path: path.to_owned(), cause: source }
    }
}

/// Where downloads come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mirror {
    /// The upstream hosts themselves.
    Upstream,
    /// One base URL (`http(s)://` or `file://`) that serves every upstream path.
    Base(String),
}

impl Mirror {
    /// Parses `--mirror`: an http(s) or file URL.
    pub fn parse(s: &str) -> Result<Self, FetchError> {
        let ok = s.starts_with("http://") || s.starts_with("https://") || s.starts_with("file:///");
        if !ok {
            return Err(FetchError::BadUrl {
                url: s.to_owned(),
                message: "a mirror must be an http://, https:// or file:/// URL".into(),
            });
        }
        Ok(Mirror::Base(s.trim_end_matches('/').to_owned()))
    }

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
}

/// How the fetcher behaves.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Mirror to use.
    pub mirror: Mirror,
    /// Cache directory (created if missing).
    pub cache_dir: PathBuf,
    /// Further attempts after a retryable failure.
    pub retries: u32,
    /// First backoff delay; doubled on every retry.
    pub backoff: Duration,
}

/// A small file as fetched.
#[derive(Clone, Debug)]
pub struct Small {
    /// Contents.
    pub bytes: Vec<u8>,
    /// Their digest.
    pub sha256: Sha256Digest,
}

/// Fetches upstream files through the cache.
pub struct Fetcher {
    client: reqwest::blocking::Client,
    opts: FetchOptions,
    progress: MultiProgress,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher").field("opts", &self.opts).finish_non_exhaustive()
    }
}

/// A sink that can start over when a retry begins.
trait Sink: Write {
    fn restart(&mut self) -> io::Result<()>;
}

impl Sink for Vec<u8> {
    fn restart(&mut self) -> io::Result<()> {
        self.clear();
        Ok(())
    }
}

/// A download into a file, hashed on the way; a retry truncates the file and starts a fresh
/// hash, so the digest always covers exactly the bytes of the last attempt.
struct HashedFile(HashingWriter<std::fs::File>);

impl Write for HashedFile {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Sink for HashedFile {
    fn restart(&mut self) -> io::Result<()> {
        let mut file = self.0.get_ref().try_clone()?;
        file.restart()?;
        self.0 = HashingWriter::new(file);
        Ok(())
    }
}

impl Sink for std::fs::File {
    fn restart(&mut self) -> io::Result<()> {
        use std::io::Seek;
        self.set_len(0)?;
        self.rewind().map(|_| ())
    }
}

/// Copies a body into the sink, tracking progress and the announced length.
fn copy_body(
    url: &str,
    mut body: impl Read,
    len: Option<u64>,
    sink: &mut dyn Write,
    bar: &ProgressBar,
) -> Result<u64, FetchError> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut got = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if let Some(expected) = len {
                    return Err(FetchError::Truncated { url: url.to_owned(), expected, got });
                }
                return Err(FetchError::Transport { url: url.to_owned(), message: error_chain(&e) });
            }
        };
        sink.write_all(&buf[..n])
            .map_err(|e| FetchError::Transport { url: url.to_owned(), message: format!("writing: {e}") })?;
        got += n as u64;
        bar.inc(n as u64);
    }
    if let Some(expected) = len {
        if got != expected {
            return Err(FetchError::Truncated { url: url.to_owned(), expected, got });
        }
    }
    Ok(got)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

impl Fetcher {
    /// A fetcher with its own HTTP client; progress bars draw on stderr only when it is a terminal.
    pub fn new(opts: FetchOptions) -> Result<Self, FetchError> {
        let client = reqwest::blocking::Client::builder()
            .user_agent(concat!("bakery/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // Applies to each read: a stalled transfer fails instead of hanging forever.
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| FetchError::BadUrl { url: String::new(), message: error_chain(&e) })?;
        std::fs::create_dir_all(opts.cache_dir.join("sha256")).map_err(|e| FetchError::io(&opts.cache_dir, e))?;
        std::fs::create_dir_all(opts.cache_dir.join("url")).map_err(|e| FetchError::io(&opts.cache_dir, e))?;
        Ok(Self { client, opts, progress: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()) })
    }

    /// The URL actually requested for an upstream URL.
    pub fn effective_url(&self, upstream: &str) -> String {
        self.opts.mirror.map(upstream)
    }

    fn bar(&self, label: &str, len: Option<u64>) -> ProgressBar {
        let bar = self.progress.add(ProgressBar::no_length());
        bar.set_style(crate::progress::byte_style());
        bar.set_prefix(label.to_owned());
        if let Some(len) = len {
            bar.set_length(len);
        }
        bar
    }

    /// One attempt: streams `url` into `sink`, returns the byte count.
    fn attempt(&self, url: &str, label: &str, limit: Option<u64>, sink: &mut dyn Write) -> Result<u64, FetchError> {
        if let Some(path) = url.strip_prefix("file://") {
            let file = std::fs::File::open(path).map_err(|e| FetchError::io(Path::new(path), e))?;
            let len = file.metadata().map_err(|e| FetchError::io(Path::new(path), e))?.len();
            if limit.is_some_and(|l| len > l) {
                return Err(FetchError::TooLarge { url: url.to_owned(), limit: limit.unwrap_or_default() });
            }
            let bar = self.bar(label, Some(len));
            let r = copy_body(url, file, Some(len), sink, &bar);
            bar.finish_and_clear();
            return r;
        }
        let resp = self
            .client
            .get(url)
            .send()
            .map_err(|e| FetchError::Transport { url: url.to_owned(), message: error_chain(&e) })?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let code = status.as_u16();
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: status.to_string(),
                retryable: code == 408 || code == 429 || status.is_server_error(),
                retry_after,
            });
        }
        let len = resp.content_length();
        if let (Some(limit), Some(len)) = (limit, len) {
            if len > limit {
                return Err(FetchError::TooLarge { url: url.to_owned(), limit });
            }
        }
        let bar = self.bar(label, len);
        let body = resp.take(limit.map_or(u64::MAX, |l| l + 1));
        let r = copy_body(url, body, len, sink, &bar);
        bar.finish_and_clear();
        let got = r?;
        if limit.is_some_and(|l| got > l) {
            return Err(FetchError::TooLarge { url: url.to_owned(), limit: limit.unwrap_or_default() });
        }
        Ok(got)
    }

    /// Runs attempts with the retry policy: only transport failures, truncation and 408/429/5xx
    /// are retried, with exponential backoff (or the server's Retry-After, capped at 30 s).
    fn with_retries(&self, url: &str, label: &str, limit: Option<u64>, sink: &mut dyn Sink) -> Result<u64, FetchError> {
        let mut delay = self.opts.backoff;
        let mut attempt = 0;
        loop {
            sink.restart().map_err(|e| FetchError::Transport {
                url: url.to_owned(),
                message: format!("resetting download: {e}"),
            })?;
            match self.attempt(url, label, limit, sink) {
                Ok(n) => return Ok(n),
                Err(e) if e.is_retryable() && attempt < self.opts.retries => {
                    attempt += 1;
                    let wait = match &e {
                        FetchError::Status { retry_after: Some(ra), .. } => (*ra).min(Duration::from_secs(30)),
                        _ => delay,
                    };
                    self.progress.suspend(|| {
                        eprintln!(
                            "warning: {e}; retrying in {:.1}s ({attempt}/{})",
                            wait.as_secs_f32(),
                            self.opts.retries
                        )
                    });
                    std::thread::sleep(wait);
                    delay = delay.saturating_mul(2);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn url_cache_path(&self, upstream: &str) -> PathBuf {
        self.opts.cache_dir.join("url").join(Sha256Digest::of(upstream.as_bytes()).to_hex())
    }

    fn digest_cache_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.opts.cache_dir.join("sha256").join(digest.to_hex())
    }

    /// Fetches a small text file (checksum, version pin), cached by its upstream URL: release
    /// metadata of a published version does not change.
    pub fn fetch_small(&self, upstream: &str, label: &str) -> Result<Small, FetchError> {
        let cached = self.url_cache_path(upstream);
        if let Ok(bytes) = std::fs::read(&cached) {
            return Ok(Small { sha256: Sha256Digest::of(&bytes), bytes });
        }
        let url = self.effective_url(upstream);
        let mut bytes = Vec::new();
        self.with_retries(&url, label, Some(SMALL_LIMIT), &mut bytes)?;
        self.store(&cached, &bytes)?;
        Ok(Small { sha256: Sha256Digest::of(&bytes), bytes })
    }

    fn store(&self, dest: &Path, bytes: &[u8]) -> Result<(), FetchError> {
        let dir = dest.parent().expect("cache paths have a parent");
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| FetchError::io(dir, e))?;
        tmp.write_all(bytes).map_err(|e| FetchError::io(tmp.path(), e))?;
        tmp.persist(dest).map_err(|e| FetchError::io(dest, e.error))?;
        Ok(())
    }

    /// Fetches an artifact whose digest is known, returning the verified cache file.
    ///
    /// A cached copy is re-hashed before use, so a corrupted cache is noticed and replaced.
    pub fn fetch_verified(
        &self,
        upstream: &str,
        expected: &Sha256Digest,
        expected_from: &str,
        label: &str,
    ) -> Result<PathBuf, FetchError> {
        let dest = self.digest_cache_path(expected);
        if let Ok(file) = std::fs::File::open(&dest) {
            if Sha256Digest::of_reader(file).map_err(|e| FetchError::io(&dest, e))? == *expected {
                return Ok(dest);
            }
            self.progress.suspend(|| eprintln!("warning: cached {} is corrupt; downloading it again", dest.display()));
        }
        let url = self.effective_url(upstream);
        let dir = dest.parent().expect("cache paths have a parent");
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| FetchError::io(dir, e))?;
        let file = tmp.as_file().try_clone().map_err(|e| FetchError::io(tmp.path(), e))?;
        let mut sink = HashedFile(HashingWriter::new(file));
        self.with_retries(&url, label, None, &mut sink)?;
        let (actual, file) = sink.0.finish();
        if actual != *expected {
            return Err(FetchError::DigestMismatch {
                url,
                expected: *expected,
                expected_from: expected_from.to_owned(),
                actual,
            });
        }
        file.sync_all().map_err(|e| FetchError::io(tmp.path(), e))?;
        tmp.persist(&dest).map_err(|e| FetchError::io(&dest, e.error))?;
        Ok(dest)
    }
}

/// Finds the digest for `entry` in a published checksum file: either a bare digest (as
/// dl.k8s.io serves) or `sha256sum` output (`<hex>  name`, `<hex> *name`).
pub fn parse_checksum_file(text: &str, entry: &str) -> Result<Sha256Digest, String> {
    let trimmed = text.trim();
    if !trimmed.contains(char::is_whitespace) {
        return trimmed.parse().map_err(|e| format!("not a sha256 checksum file: {e}"));
    }
    let mut names = Vec::new();
    for line in trimmed.lines() {
        let mut parts = line.split_whitespace();
        let (Some(hash), Some(name)) = (parts.next(), parts.next()) else { continue };
        let name = name.trim_start_matches('*');
        let base = name.rsplit('/').next().unwrap_or(name);
        if base == entry {
            return hash.parse().map_err(|e| format!("entry for '{entry}': {e}"));
        }
        names.push(base.to_owned());
    }
    Err(format!(
        "no entry for '{entry}' (it lists: {})",
        if names.is_empty() { "nothing".into() } else { names.join(", ") }
    ))
}

/// The value of a fetched variable (e.g. a pinned version): one token of safe characters.
pub fn parse_variable(bytes: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
    let value = text.trim();
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!("expected a single version-like token, got {:?}", text.chars().take(80).collect::<String>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn mirror_replaces_host_and_keeps_path() {
        let m = Mirror::parse("http://10.0.0.1:8080/mirror/").unwrap();
        assert_eq!(
            m.map("https://dl.k8s.io/v1.31.3/bin/linux/amd64/kubelet"),
            "http://10.0.0.1:8080/mirror/v1.31.3/bin/linux/amd64/kubelet"
        );
        assert_eq!(
            m.map("https://github.com/containerd/containerd/releases/download/v2.0.4/x.tar.gz"),
            "http://10.0.0.1:8080/mirror/containerd/containerd/releases/download/v2.0.4/x.tar.gz"
        );
        assert_eq!(Mirror::Upstream.map("https://dl.k8s.io/a"), "https://dl.k8s.io/a");
        assert!(Mirror::parse("dl.k8s.io").is_err());
        assert_eq!(Mirror::parse("file:///srv/m").unwrap().map("https://dl.k8s.io/a/b"), "file:///srv/m/a/b");
    }

    #[test]
    fn checksum_files_in_both_upstream_forms() {
        assert_eq!(parse_checksum_file(D, "kubelet").unwrap().to_hex(), D);
        assert_eq!(parse_checksum_file(&format!("{D}\n"), "kubelet").unwrap().to_hex(), D);
        let list = format!("{}  runc.amd64\n{D}  runc.arm64\n{D} *./dir/other\n", "0".repeat(64));
        assert_eq!(parse_checksum_file(&list, "runc.arm64").unwrap().to_hex(), D);
        assert_eq!(parse_checksum_file(&list, "other").unwrap().to_hex(), D);
        let err = parse_checksum_file(&list, "runc.s390x").unwrap_err();
        assert_eq!(err, "no entry for 'runc.s390x' (it lists: runc.amd64, runc.arm64, other)");
        assert!(parse_checksum_file("<html>404</html>", "x").is_err());
    }

    #[test]
    fn variables_are_single_tokens() {
        assert_eq!(parse_variable(b"v1.2.5\n").unwrap(), "v1.2.5");
        assert!(parse_variable(b"v1.2.5/../../x").is_err());
        assert!(parse_variable(b"<html>").is_err());
        assert!(parse_variable(b"").is_err());
    }
}
