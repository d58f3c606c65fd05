//! The one HTTP client everything here downloads through: bakery's upstream fetcher, the
//! release-index client and `verify-release` over a URL.
//!
//! One policy, written once:
//! - **Time bounds.** A connect timeout; a read timeout that fails a server which accepts and
//!   never answers, or stops sending; and a low-speed limit like curl's (`--speed-limit` over
//!   `--speed-time`), because a server trickling one byte every few seconds passes any read
//!   timeout. The error names the URL and the limit that tripped.
//! - **Retries** only where another attempt can help: connection failures, timeouts,
//!   truncated bodies and HTTP 408, 429 and 5xx, with exponential backoff or the server's
//!   `Retry-After` (seconds or an HTTP date, capped). Anything else is an answer. A failure
//!   to write locally (a full disk) is never retried: the network is not at fault.
//! - **Proxies** from `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, as curl reads them.
//! - **Mirrors** ([`Mirror`]): one base URL that serves every upstream path, for air-gapped sites.
//! - `file://` URLs read local files through the same interface.

mod body;
mod mirror;
mod sink;

use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use body::Body;
pub use mirror::Mirror;
pub use sink::{FileSink, Sink};

/// How the client behaves. [`HttpOptions::default`] is what the command-line tools use unless
/// told otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpOptions {
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest wait for the response headers or for any single read of the body; also the
    /// window over which the low-speed limit is measured (curl's `--speed-time`).
    pub timeout: Duration,
    /// Fewest bytes per second, averaged over `timeout`, before a transfer is abandoned
    /// (curl's `--speed-limit`). 0 disables the check.
    pub low_speed_limit: u64,
    /// Further attempts after a failure that another attempt may fix.
    pub retries: u32,
    /// First backoff delay; doubled on every retry.
    pub backoff: Duration,
    /// Longest `Retry-After` honoured; longer ones are cut to this.
    pub max_retry_after: Duration,
    /// `User-Agent` header.
    pub user_agent: String,
    /// A PEM file of CA certificates trusted in addition to the system's (a private CA for an
    /// internal mirror or registry). `SSL_CERT_FILE` and `SSL_CERT_DIR` replace the system
    /// store instead, as for curl.
    pub ca_file: Option<PathBuf>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(15),
            timeout: Duration::from_secs(30),
            low_speed_limit: 1024,
            retries: 4,
            backoff: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(30),
            user_agent: concat!("sysext-bakery/", env!("CARGO_PKG_VERSION")).to_owned(),
            ca_file: None,
        }
    }
}

/// A download that failed, naming the URL (or local path) and why.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The server answered with an error status.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// URL requested.
        url: String,
        /// Status code and reason, e.g. `503 Service Unavailable`.
        status: String,
        /// The numeric code.
        code: u16,
        /// The server's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The connection failed or broke off.
    #[error("GET {url}: {message}")]
    Transport {
        /// URL requested.
        url: String,
        /// What went wrong, with its causes.
        message: String,
    },
    /// No response headers, or no body bytes, within the read timeout.
    #[error("GET {url}: no data for {}s (read timeout {}s)", .limit.as_secs_f32(), .limit.as_secs_f32())]
    Stalled {
        /// URL requested.
        url: String,
        /// The timeout that tripped.
        limit: Duration,
    },
    /// The transfer ran below the low-speed limit for a whole window.
    #[error("GET {url}: {got} bytes in {}s, below the low-speed limit of {min} bytes/s over {}s", .window.as_secs_f32(), .window.as_secs_f32())]
    TooSlow {
        /// URL requested.
        url: String,
        /// Bytes received in the window.
        got: u64,
        /// The limit in bytes per second.
        min: u64,
        /// The window.
        window: Duration,
    },
    /// The body ended before its announced length.
    #[error("GET {url}: body truncated after {got} of {expected} bytes")]
    Truncated {
        /// URL requested.
        url: String,
        /// `Content-Length`.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// More bytes than the caller accepts for this file.
    #[error("GET {url}: more than {limit} bytes; refusing to read further")]
    TooLarge {
        /// URL requested.
        url: String,
        /// Size limit.
        limit: u64,
    },
    /// Writing what arrived failed on this machine (a full disk, say). Never retried.
    #[error("{}: {cause}", path.display())]
    Local {
        /// Where it was being written.
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

impl HttpError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            HttpError::Status { code, .. } => *code == 408 || *code == 429 || (500..600).contains(code),
            HttpError::Transport { .. }
            | HttpError::Stalled { .. }
            | HttpError::TooSlow { .. }
            | HttpError::Truncated { .. } => true,
            HttpError::TooLarge { .. } | HttpError::Local { .. } | HttpError::BadUrl { .. } => false,
        }
    }

    /// The HTTP status, if the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// What happened during a transfer, for progress bars and warnings.
#[derive(Debug)]
pub enum Event<'a> {
    /// A response arrived; its length, if announced.
    Started(Option<u64>),
    /// This many more bytes arrived.
    Progress(u64),
    /// An attempt failed and the next starts after `wait`.
    Retrying {
        /// Why.
        error: &'a HttpError,
        /// The delay before the next attempt.
        wait: Duration,
        /// Attempt number of the retry (1 = first retry).
        attempt: u32,
        /// Retries allowed.
        of: u32,
    },
}

/// A response whose status was a success, ready to stream.
#[derive(Debug)]
pub struct Response {
    /// `Content-Length`, if announced.
    pub len: Option<u64>,
    /// The body, with the client's time bounds enforced on every read.
    pub body: Body,
}

/// The shared HTTP client. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    inner: reqwest::blocking::Client,
    opts: HttpOptions,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").field("opts", &self.opts).finish_non_exhaustive()
    }
}

/// Joins an error's chain into one line, skipping causes the message already contains.
pub fn error_chain(e: &dyn std::error::Error) -> String {
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

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut {
                return true;
            }
            // `io::Error::source` skips the wrapped error itself and goes straight to its
            // source, so reqwest's body-read timeout (a reqwest::Error inside an io::Error)
            // is only visible here.
            if io.get_ref().is_some_and(|inner| is_timeout(inner)) {
                return true;
            }
        }
        if c.downcast_ref::<reqwest::Error>().is_some_and(reqwest::Error::is_timeout) {
            return true;
        }
        cur = c.source();
    }
    false
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

impl HttpClient {
    /// A client with these options.
    pub fn new(opts: HttpOptions) -> Result<Self, HttpError> {
        let mut builder = reqwest::blocking::Client::builder()
            .user_agent(opts.user_agent.clone())
            .connect_timeout(opts.connect_timeout)
            // reqwest applies this to the wait for the response and to every body read.
            .timeout(opts.timeout);
        if let Some(ca) = &opts.ca_file {
            let bad = |message: String| HttpError::BadUrl { url: format!("--ca-file {}", ca.display()), message };
            let pem = std::fs::read(ca).map_err(|e| bad(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(error_chain(&e)))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let inner = builder.build().map_err(|e| HttpError::BadUrl { url: String::new(), message: error_chain(&e) })?;
        Ok(Self { inner, opts })
    }

    /// The options in force.
    pub fn options(&self) -> &HttpOptions {
        &self.opts
    }

    /// One request, no retries: a success status gives the body; 404 gives `None` when
    /// `missing_ok`; anything else is an error.
    fn attempt(&self, url: &str, missing_ok: bool) -> Result<Option<Response>, HttpError> {
        if let Some(path) = url.strip_prefix("file://") {
            let path = PathBuf::from(path);
            return match std::fs::File::open(&path) {
                Ok(file) => {
                    let len = file.metadata().map_err(|cause| HttpError::Local { path: path.clone(), cause })?.len();
                    Ok(Some(Response { len: Some(len), body: Body::file(url, file, len) }))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && missing_ok => Ok(None),
                Err(cause) => Err(HttpError::Local { path, cause }),
            };
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(HttpError::BadUrl {
                url: url.to_owned(),
                message: "expected an http://, https:// or file:// URL".into(),
            });
        }
        let resp = self.inner.get(url).send().map_err(|e| {
            if is_timeout(&e) {
                HttpError::Stalled { url: url.to_owned(), limit: self.opts.timeout }
            } else {
                HttpError::Transport { url: url.to_owned(), message: error_chain(&e) }
            }
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND && missing_ok {
            return Ok(None);
        }
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            return Err(HttpError::Status {
                url: url.to_owned(),
                status: status.to_string(),
                code: status.as_u16(),
                retry_after,
            });
        }
        let len = resp.content_length();
        Ok(Some(Response { len, body: Body::http(url, resp, len, &self.opts) }))
    }

    /// Runs `op` with the retry policy; `observe` hears about every retry.
    fn with_retries<T>(
        &self,
        observe: &mut dyn FnMut(Event<'_>),
        mut op: impl FnMut(&mut dyn FnMut(Event<'_>)) -> Result<T, HttpError>,
    ) -> Result<T, HttpError> {
        let mut delay = self.opts.backoff;
        let mut attempt = 0;
        loop {
            match op(observe) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < self.opts.retries => {
                    attempt += 1;
                    let wait = match &e {
                        HttpError::Status { retry_after: Some(ra), .. } => (*ra).min(self.opts.max_retry_after),
                        _ => delay,
                    };
                    observe(Event::Retrying { error: &e, wait, attempt, of: self.opts.retries });
                    std::thread::sleep(wait);
                    delay = delay.saturating_mul(2);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens `url` for streaming, retrying until a response arrives; `Ok(None)` on 404 (or a
    /// missing `file://` path). The body is not retried: a caller that verifies while it
    /// streams decides itself what a broken body means.
    pub fn open(&self, url: &str) -> Result<Option<Response>, HttpError> {
        self.with_retries(&mut |_| {}, |_| self.attempt(url, true))
    }

    /// Downloads `url` whole into `sink`, retrying the whole transfer (the sink starts over)
    /// on any retryable failure, and refusing more than `limit` bytes. Returns the byte count.
    /// `Ok(None)` on 404 when `missing_ok`.
    pub fn fetch_into(
        &self,
        url: &str,
        limit: Option<u64>,
        missing_ok: bool,
        sink: &mut dyn Sink,
        observe: &mut dyn FnMut(Event<'_>),
    ) -> Result<Option<u64>, HttpError> {
        self.with_retries(observe, |observe| {
            sink.restart().map_err(|cause| HttpError::Local { path: sink.path(), cause })?;
            let Some(resp) = self.attempt(url, missing_ok)? else { return Ok(None) };
            if let (Some(limit), Some(len)) = (limit, resp.len) {
                if len > limit {
                    return Err(HttpError::TooLarge { url: url.to_owned(), limit });
                }
            }
            observe(Event::Started(resp.len));
            copy_body(url, resp.body, limit, sink, observe).map(Some)
        })
    }

    /// Reads a small file whole (at most `limit` bytes); `Ok(None)` on 404.
    pub fn read(&self, url: &str, limit: u64) -> Result<Option<Vec<u8>>, HttpError> {
        let mut buf = Vec::new();
        Ok(self.fetch_into(url, Some(limit), true, &mut buf, &mut |_| {})?.map(|_| buf))
    }
}

fn copy_body(
    url: &str,
    mut body: Body,
    limit: Option<u64>,
    sink: &mut dyn Sink,
    observe: &mut dyn FnMut(Event<'_>),
) -> Result<u64, HttpError> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(body.error(e)),
        };
        got += n as u64;
        if limit.is_some_and(|l| got > l) {
            return Err(HttpError::TooLarge { url: url.to_owned(), limit: limit.unwrap_or_default() });
        }
        sink.write(&buf[..n]).map_err(|cause| HttpError::Local { path: sink.path(), cause })?;
        observe(Event::Progress(n as u64));
    }
    body.finish(got)?;
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(90)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let status =
            |code: u16| HttpError::Status { url: "u".into(), status: code.to_string(), code, retry_after: None };
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(status(code).is_retryable(), "{code}");
        }
        for code in [400, 401, 403, 404, 410] {
            assert!(!status(code).is_retryable(), "{code}");
        }
        let full = HttpError::Local { path: "/cache/x".into(), cause: io::Error::from_raw_os_error(28) };
        assert!(!full.is_retryable(), "ENOSPC is not the network's fault");
        assert!(full.to_string().contains("No space left on device"), "{full}");
    }
}
