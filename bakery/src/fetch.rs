//! Upstream downloads through the shared HTTP client, verified while they stream, and a local
//! cache that can never outlive what it was checked against.
//!
//! Artifacts are cached by their digest only: a file is renamed to its digest after the
//! digest matched, and re-hashed whenever it is used, so a cache entry is either exactly the
//! bytes a checksum vouched for or it is noticed and replaced. Small metadata files
//! (checksums, version pins) are cached by the URL actually fetched, mirror included, and only
//! once they parsed: an error page answering a `.sha256` request is never stored, and what one
//! mirror said is never believed for another.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use release_index::http::{Event, FileSink, HttpClient, HttpError, HttpOptions, Mirror};
use signing::Sha256Digest;

use crate::tempfiles::TempFile;

/// Metadata files (checksums, pins) are tiny; refuse anything that is obviously not one.
const SMALL_LIMIT: u64 = 1 << 20;

/// A download failure, naming the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The transfer failed.
    #[error(transparent)]
    Http(#[from] HttpError),
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
    /// A metadata file that does not say what it should.
    #[error("{url}: {reason}")]
    Invalid {
        /// URL fetched.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// Cache trouble. The cause is part of the message, not a separate source, so error
    /// chains do not repeat it.
    #[error("{}: {cause}", path.display())]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Cause.
        cause: std::io::Error,
    },
    /// `--offline` and the file is not in the cache.
    #[error("{url}: not in the cache ({}), and --offline forbids downloading it", path.display())]
    Offline {
        /// URL that would have been fetched.
        url: String,
        /// Where it was looked for.
        path: PathBuf,
    },
}

impl FetchError {
    fn io(path: &Path, cause: std::io::Error) -> Self {
        FetchError::Io { path: path.to_owned(), cause }
    }
}

/// How the fetcher behaves.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Mirror to use.
    pub mirror: Mirror,
    /// Cache directory (created if missing).
    pub cache_dir: PathBuf,
    /// Timeouts, low-speed limit and retries.
    pub http: HttpOptions,
    /// Never touch the network: everything must come from the cache.
    pub offline: bool,
}

/// Fetches upstream files through the cache.
pub struct Fetcher {
    client: HttpClient,
    opts: FetchOptions,
    progress: MultiProgress,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher").field("opts", &self.opts).finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher; progress bars draw on stderr only when it is a terminal.
    pub fn new(opts: FetchOptions) -> Result<Self, FetchError> {
        let client = HttpClient::new(opts.http.clone())?;
        for dir in ["sha256", "url", "tmp"] {
            let d = opts.cache_dir.join(dir);
            std::fs::create_dir_all(&d).map_err(|e| FetchError::io(&d, e))?;
            // Downloads and scratch directories of runs that were killed.
            crate::tempfiles::remove_stale_with(&d, crate::tempfiles::legacy_cache_temp)
                .map_err(|e| FetchError::io(&d, e))?;
        }
        Ok(Self { client, opts, progress: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()) })
    }

    /// The URL actually requested for an upstream URL.
    pub fn effective_url(&self, upstream: &str) -> String {
        self.opts.mirror.map(upstream)
    }

    /// A progress bar and retry warnings for one transfer.
    fn observer(&self, label: &str) -> (ProgressBar, impl FnMut(Event<'_>) + '_) {
        let bar = self.progress.add(ProgressBar::no_length());
        bar.set_style(crate::progress::byte_style());
        bar.set_prefix(label.to_owned());
        let b = bar.clone();
        let observe = move |e: Event<'_>| match e {
            Event::Started(len) => {
                b.reset();
                if let Some(len) = len {
                    b.set_length(len);
                }
            }
            Event::Progress(n) => b.inc(n),
            Event::Retrying { error, wait, attempt, of } => self
                .progress
                .suspend(|| eprintln!("warning: {error}; retrying in {:.1}s ({attempt}/{of})", wait.as_secs_f32())),
        };
        (bar, observe)
    }

    fn url_cache_path(&self, url: &str) -> PathBuf {
        self.opts.cache_dir.join("url").join(Sha256Digest::of(url.as_bytes()).to_hex())
    }

    fn digest_cache_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.opts.cache_dir.join("sha256").join(digest.to_hex())
    }

    /// Fetches a small text file (checksum, version pin) and hands it to `parse`. What parsed
    /// is cached under the URL actually fetched, so a rebuild from the same source makes no
    /// request, and a response that did not parse is never stored. Returns the parsed value
    /// and the digest of the bytes.
    pub fn fetch_small<T>(
        &self,
        upstream: &str,
        label: &str,
        parse: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<(T, Sha256Digest), FetchError> {
        let url = self.effective_url(upstream);
        let cached = self.url_cache_path(&url);
        if let Ok(bytes) = std::fs::read(&cached) {
            if let Ok(value) = parse(&bytes) {
                return Ok((value, Sha256Digest::of(&bytes)));
            }
            // Written by an older build that stored before parsing: never trust it.
            let _ = std::fs::remove_file(&cached);
        }
        if self.opts.offline {
            return Err(FetchError::Offline { url, path: cached });
        }
        let mut bytes = Vec::new();
        let (bar, mut observe) = self.observer(label);
        let got = self.client.fetch_into(&url, Some(SMALL_LIMIT), false, &mut bytes, &mut observe);
        bar.finish_and_clear();
        got?;
        let value = parse(&bytes).map_err(|reason| FetchError::Invalid { url: url.clone(), reason })?;
        self.store(&cached, &bytes)?;
        Ok((value, Sha256Digest::of(&bytes)))
    }

    fn store(&self, dest: &Path, bytes: &[u8]) -> Result<(), FetchError> {
        let dir = dest.parent().expect("cache paths have a parent");
        let mut tmp = TempFile::new_in(dir).map_err(|e| FetchError::io(dir, e))?;
        tmp.file_mut().write_all(bytes).map_err(|e| FetchError::io(dest, e))?;
        tmp.into_named().and_then(|t| t.rename(dest)).map_err(|e| FetchError::io(dest, e))
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
        if self.opts.offline {
            return Err(FetchError::Offline { url, path: dest });
        }
        let dir = dest.parent().expect("cache paths have a parent");
        let tmp = TempFile::new_in(dir).map_err(|e| FetchError::io(dir, e))?;
        let file = tmp.file().try_clone().map_err(|e| FetchError::io(&dest, e))?;
        // Messages name the cache entry being written, not the temporary file's fd.
        let mut sink = FileSink::new(file, &dest);
        let (bar, mut observe) = self.observer(label);
        let got = self.client.fetch_into(&url, None, false, &mut sink, &mut observe);
        bar.finish_and_clear();
        got?;
        let (digests, file) = sink.finish();
        if digests.sha256 != *expected {
            return Err(FetchError::DigestMismatch {
                url,
                expected: *expected,
                expected_from: expected_from.to_owned(),
                actual: digests.sha256,
            });
        }
        file.sync_all().map_err(|e| FetchError::io(&dest, e))?;
        tmp.into_named().and_then(|t| t.rename(&dest)).map_err(|e| FetchError::io(&dest, e))?;
        Ok(dest)
    }
}
