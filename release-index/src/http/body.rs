//! A response body with the client's time bounds enforced on every read.

use std::fmt;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use super::{error_chain, is_timeout, HttpError, HttpOptions};

enum Inner {
    Http(reqwest::blocking::Response),
    File(std::fs::File),
}

/// A response body: reads fail with a [`HttpError`] (wrapped in `io::Error`, see
/// [`Body::error`]) when the server stalls or trickles below the low-speed limit.
pub struct Body {
    url: String,
    inner: Inner,
    len: Option<u64>,
    timeout: Duration,
    low_speed_limit: u64,
    window_start: Instant,
    window_bytes: u64,
    got: u64,
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body").field("url", &self.url).field("len", &self.len).finish_non_exhaustive()
    }
}

/// Carried inside `io::Error` so that [`Body::error`] can recover the precise reason.
#[derive(Debug)]
struct BoundError(HttpError);

impl fmt::Display for BoundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BoundError {}

impl Body {
    pub(super) fn http(url: &str, resp: reqwest::blocking::Response, len: Option<u64>, opts: &HttpOptions) -> Self {
        Self::new(url, Inner::Http(resp), len, opts.timeout, opts.low_speed_limit)
    }

    pub(super) fn file(url: &str, file: std::fs::File, len: u64) -> Self {
        Self::new(url, Inner::File(file), Some(len), Duration::MAX, 0)
    }

    fn new(url: &str, inner: Inner, len: Option<u64>, timeout: Duration, low_speed_limit: u64) -> Self {
        Self {
            url: url.to_owned(),
            inner,
            len,
            timeout,
            low_speed_limit,
            window_start: Instant::now(),
            window_bytes: 0,
            got: 0,
        }
    }

    /// The URL this body comes from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Turns an error from [`Read::read`] into the precise [`HttpError`]: the limit that
    /// tripped, a truncated body (when the length was announced) or a broken connection.
    pub fn error(&self, e: io::Error) -> HttpError {
        if e.get_ref().is_some_and(|inner| inner.is::<BoundError>()) {
            let inner = e.into_inner().expect("checked above");
            return inner
                .downcast::<BoundError>()
                .map(|b| b.0)
                .unwrap_or_else(|other| HttpError::Transport { url: self.url.clone(), message: other.to_string() });
        }
        if is_timeout(&e) {
            return HttpError::Stalled { url: self.url.clone(), limit: self.timeout };
        }
        if let Some(expected) = self.len {
            return HttpError::Truncated { url: self.url.clone(), expected, got: self.got };
        }
        HttpError::Transport { url: self.url.clone(), message: error_chain(&e) }
    }

    /// Checks the end of the body against its announced length.
    pub fn finish(&self, got: u64) -> Result<(), HttpError> {
        match self.len {
            Some(expected) if got < expected => Err(HttpError::Truncated { url: self.url.clone(), expected, got }),
            _ => Ok(()),
        }
    }

    fn check_speed(&mut self) -> io::Result<()> {
        if self.low_speed_limit == 0 {
            return Ok(());
        }
        let elapsed = self.window_start.elapsed();
        if elapsed < self.timeout {
            return Ok(());
        }
        let min_bytes = self.low_speed_limit.saturating_mul(elapsed.as_secs().max(1));
        if self.window_bytes < min_bytes {
            return Err(io::Error::other(BoundError(HttpError::TooSlow {
                url: self.url.clone(),
                got: self.window_bytes,
                min: self.low_speed_limit,
                window: self.timeout,
            })));
        }
        self.window_start = Instant::now();
        self.window_bytes = 0;
        Ok(())
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            Inner::Http(r) => r.read(buf)?,
            Inner::File(f) => f.read(buf)?,
        };
        self.got += n as u64;
        self.window_bytes += n as u64;
        if n > 0 {
            self.check_speed()?;
        }
        Ok(n)
    }
}
