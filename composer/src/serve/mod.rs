//! `composer serve`: a read-only HTTP/1.1 (optionally TLS) server for the release directory
//! `bakery publish` writes, in the same URL layout, so stock systemd-sysupdate transfer files,
//! Flatcar's Butane snippets and `bakery verify-release` work against it unchanged.
//!
//! The only async code of the workspace lives here, on a tokio runtime that [`run`] starts
//! and stops. The pieces:
//!
//! * `release`: which directory answers a request (the publish-managed symlink is followed
//!   per request, so a publish takes effect at once and never mixes two generations within
//!   one response); `generation`: the files opened from it, kept while it is current;
//! * `files`: which paths are acceptable, and opening exactly that regular file beneath the
//!   generation without following symlinks;
//! * `conditional` and `etag`: validators, `If-*` headers and byte ranges; `content`: media
//!   types and `Cache-Control`;
//! * `http` and `body`: the response, streamed from the one file it was opened with; `log`:
//!   the access log; `tls`: rustls.

mod body;
mod conditional;
mod content;
mod etag;
mod files;
mod generation;
mod http;
mod log;
mod release;
mod tls;

use std::convert::Infallible;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::TlsAcceptor;

pub use self::log::LogFormat;
pub use self::release::ReleaseError;
pub use self::tls::TlsError;

use self::http::Service;
use self::log::AccessLog;
use self::release::Release;

/// A client gets this long to send its request headers (also the keep-alive idle limit).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// And this long to finish a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pending connections the kernel queues before `accept`; it caps this at `somaxconn`.
const BACKLOG: u32 = 4096;

/// A certificate chain and its key, both PEM.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// What to serve, where and how.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The release directory (publish's symlink) or a plain copy of one.
    pub release_dir: PathBuf,
    /// The address to listen on; port 0 picks a free one (printed on stdout).
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate.
    pub tls: Option<TlsFiles>,
    /// Access log format.
    pub log_format: LogFormat,
    /// After SIGTERM/SIGINT, how long in-flight requests may take before they are cut off.
    pub shutdown_grace: Duration,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The release directory cannot be served.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// The certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: io::Error,
    },
    /// The runtime or a signal handler could not be set up.
    #[error("{what}: {source}")]
    Setup {
        /// What failed.
        what: &'static str,
        /// Cause.
        source: io::Error,
    },
}

/// Serves until SIGTERM or SIGINT, then lets in-flight requests finish (up to
/// `shutdown_grace`) and returns. The first line on stdout is `listening on URL`.
pub fn run(opts: &ServeOptions) -> Result<(), ServeError> {
    let release = Release::open(&opts.release_dir)?;
    let tls = opts.tls.as_ref().map(|t| tls::acceptor(&t.cert, &t.key)).transpose()?;
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("composer-serve")
        .build()
        .map_err(|source| ServeError::Setup { what: "starting the runtime", source })?;
    let result = runtime.block_on(serve(release, tls, opts));
    // Blocking reads of abandoned downloads are not worth waiting for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Every connection holds a socket, and every download a file: lift the soft descriptor limit
/// to the hard one (as nginx's `worker_rlimit_nofile` and Go's runtime do), so a default soft
/// limit of 1024 does not cap concurrent clients.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current < limit.maximum.or(Some(u64::MAX)) {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // A restarted server must not wait for the old one's TIME_WAIT sockets.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn serve(release: Release, tls: Option<TlsAcceptor>, opts: &ServeOptions) -> Result<(), ServeError> {
    let log = Arc::new(AccessLog::new(opts.log_format));
    let listen_err = |source| ServeError::Listen { addr: opts.listen, source };
    let listener = bind(opts.listen).map_err(listen_err)?;
    let local = listener.local_addr().map_err(listen_err)?;
    // Installed before the address is announced: a script may signal right after reading it.
    let sig_err = |source| ServeError::Setup { what: "installing signal handlers", source };
    let mut term = signal(SignalKind::terminate()).map_err(sig_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(sig_err)?;
    let url = format!("{}://{local}/", if tls.is_some() { "https" } else { "http" });
    {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "listening on {url}");
        let _ = out.flush();
    }
    log.event(&format!("serving {} on {url}", opts.release_dir.display()));

    let service = Arc::new(Service::new(release, log.clone()));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).keep_alive(true);
    let signal_name = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let conn = Connection {
                        peer,
                        service: service.clone(),
                        http: http.clone(),
                        tls: tls.clone(),
                        watcher: graceful.watcher(),
                        log: log.clone(),
                    };
                    tokio::spawn(conn.run(stream));
                }
                Err(e) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    log.event(&format!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    };
    drop(listener);
    let grace = opts.shutdown_grace;
    log.event(&format!(
        "{signal_name}: not accepting connections; waiting up to {} for {} open connection(s)",
        humantime::format_duration(grace),
        graceful.count()
    ));
    tokio::select! {
        () = graceful.shutdown() => log.event("all connections closed; exiting"),
        () = tokio::time::sleep(grace) => log.event("grace period over; closing the remaining connections"),
        _ = term.recv() => log.event("SIGTERM again; closing the remaining connections"),
        _ = int.recv() => log.event("SIGINT again; closing the remaining connections"),
    }
    Ok(())
}

/// One accepted connection.
struct Connection {
    peer: SocketAddr,
    service: Arc<Service>,
    http: http1::Builder,
    tls: Option<TlsAcceptor>,
    watcher: Watcher,
    log: Arc<AccessLog>,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let Connection { peer, service, http, tls, watcher, log } = self;
        let _ = stream.set_nodelay(true);
        let svc =
            hyper::service::service_fn(move |req| std::future::ready(Ok::<_, Infallible>(service.handle(&req, peer))));
        let result = match tls {
            None => watcher.watch(http.serve_connection(TokioIo::new(stream), svc)).await,
            Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => watcher.watch(http.serve_connection(TokioIo::new(stream), svc)).await,
                Ok(Err(e)) => return log.event(&format!("{peer}: TLS handshake failed: {e}")),
                Err(_) => return log.event(&format!("{peer}: TLS handshake timed out")),
            },
        };
        // Clients that go away are routine (their request lines say "aborted"); requests hyper
        // refused before they reached the service are worth a line.
        if let Err(e) = result {
            if e.is_parse() || e.is_parse_too_large() || e.is_timeout() {
                log.event(&format!("{peer}: {e}"));
            }
        }
    }
}
