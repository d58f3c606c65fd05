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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
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
///
/// Like nginx's worker processes, there is one single-threaded event loop per core, and no
/// request ever hops between threads (a work-stealing runtime measured a tenth more CPU per
/// request). This thread accepts and hands each connection to the loop with the fewest open
/// connections: loops that accepted for themselves from one socket took whole bursts of
/// connections each, and left the other core idle.
pub fn run(opts: &ServeOptions) -> Result<(), ServeError> {
    let release = Release::open(&opts.release_dir)?;
    let tls = opts.tls.as_ref().map(|t| tls::acceptor(&t.cert, &t.key)).transpose()?;
    raise_fd_limit();
    let setup = |what| move |source| ServeError::Setup { what, source };
    let control =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(setup("starting the runtime"))?;
    let log = Arc::new(AccessLog::new(opts.log_format));
    let listen_err = |source| ServeError::Listen { addr: opts.listen, source };
    let (listener, mut term, mut int) = {
        let _entered = control.enter();
        let listener = bind(opts.listen).map_err(listen_err)?;
        // Installed before the address is announced: a script may signal right after reading it.
        let term = signal(SignalKind::terminate()).map_err(setup("installing signal handlers"))?;
        let int = signal(SignalKind::interrupt()).map_err(setup("installing signal handlers"))?;
        (listener, term, int)
    };
    let local = listener.local_addr().map_err(listen_err)?;
    let url = format!("{}://{local}/", if tls.is_some() { "https" } else { "http" });

    let loops = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shared = Arc::new(Shared {
        service: Service::new(release, log.clone()),
        tls,
        log: log.clone(),
        open: (0..loops).map(|_| AtomicUsize::new(0)).collect(),
    });
    let (stop_tx, stop_rx) = watch::channel(Stop::Serve);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut threads = Vec::with_capacity(loops);
    let mut queues = Vec::with_capacity(loops);
    for n in 0..loops {
        let (queue, incoming) = mpsc::unbounded_channel();
        let (shared, stop, done) = (shared.clone(), stop_rx.clone(), done_tx.clone());
        let thread = std::thread::Builder::new()
            .name(format!("composer-serve-{n}"))
            .spawn(move || {
                let result = event_loop(incoming, shared, stop);
                let _ = done.send(result);
            })
            .map_err(setup("starting the event loops"))?;
        threads.push(thread);
        queues.push(queue);
    }
    drop(done_tx);
    {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "listening on {url}");
        let _ = out.flush();
    }
    log.event(&format!("serving {} on {url}", opts.release_dir.display()));

    let result = control.block_on(async {
        let signal_name = loop {
            tokio::select! {
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                // An event loop that fails to start ends the server.
                Some(Err(e)) = done_rx.recv() => {
                    let _ = stop_tx.send(Stop::Now);
                    return Err(e);
                }
                accepted = listener.accept() => match accepted.and_then(|(s, peer)| Ok((s.into_std()?, peer))) {
                    Ok((stream, peer)) => {
                        let open = Open::new(&shared);
                        let _ = queues[open.n].send(Accepted { stream, peer, open });
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
        // Closing the queues tells the loops to stop taking connections and drain.
        drop(queues);
        let grace = opts.shutdown_grace;
        let open: usize = shared.open.iter().map(|n| n.load(Ordering::Relaxed)).sum();
        log.event(&format!(
            "{signal_name}: not accepting connections; waiting up to {} for {open} open connection(s)",
            humantime::format_duration(grace),
        ));
        let mut running = loops;
        let all_done = async {
            while running > 0 && done_rx.recv().await.is_some() {
                running -= 1;
            }
        };
        tokio::select! {
            () = all_done => log.event("all connections closed; exiting"),
            () = tokio::time::sleep(grace) => log.event("grace period over; closing the remaining connections"),
            _ = term.recv() => log.event("SIGTERM again; closing the remaining connections"),
            _ = int.recv() => log.event("SIGINT again; closing the remaining connections"),
        }
        let _ = stop_tx.send(Stop::Now);
        Ok(())
    });
    for thread in threads {
        let _ = thread.join();
    }
    result
}

/// What the event loops share.
struct Shared {
    service: Service,
    tls: Option<TlsAcceptor>,
    log: Arc<AccessLog>,
    /// Open connections of each event loop.
    open: Vec<AtomicUsize>,
}

/// Tells the event loops to close what is still open, once the grace period is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Serve,
    Now,
}

/// A connection on its way to an event loop.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    open: Open,
}

/// Counts a connection against its event loop while it lives.
struct Open {
    shared: Arc<Shared>,
    n: usize,
}

impl Open {
    /// Picks the event loop with the fewest open connections.
    fn new(shared: &Arc<Shared>) -> Self {
        let n = (0..shared.open.len()).min_by_key(|&n| shared.open[n].load(Ordering::Relaxed)).unwrap_or(0);
        shared.open[n].fetch_add(1, Ordering::Relaxed);
        Self { shared: shared.clone(), n }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.shared.open[self.n].fetch_sub(1, Ordering::Relaxed);
    }
}

/// One event loop: serves the connections it is handed until the queue closes, then waits
/// for them to finish (or for the order to close them).
fn event_loop(
    mut incoming: mpsc::UnboundedReceiver<Accepted>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Stop>,
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ServeError::Setup { what: "starting an event loop", source })?;
    runtime.block_on(async {
        let graceful = GracefulShutdown::new();
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).keep_alive(true);
        while let Some(Accepted { stream, peer, open }) = incoming.recv().await {
            match TcpStream::from_std(stream) {
                Ok(stream) => {
                    let conn =
                        Connection { peer, shared: shared.clone(), http: http.clone(), watcher: graceful.watcher() };
                    tokio::spawn(conn.run(stream, open));
                }
                Err(e) => shared.log.event(&format!("{peer}: {e}")),
            }
        }
        tokio::select! {
            () = graceful.shutdown() => {}
            _ = stop.wait_for(|s| *s == Stop::Now) => {}
        }
    });
    // Blocking reads of abandoned downloads are not worth waiting for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
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

/// One accepted connection.
struct Connection {
    peer: SocketAddr,
    shared: Arc<Shared>,
    http: http1::Builder,
    watcher: Watcher,
}

impl Connection {
    async fn run(self, stream: TcpStream, _open: Open) {
        let Connection { peer, shared, http, watcher } = self;
        let _ = stream.set_nodelay(true);
        let service = shared.clone();
        let svc = hyper::service::service_fn(move |req| {
            std::future::ready(Ok::<_, Infallible>(service.service.handle(&req, peer)))
        });
        let result = match &shared.tls {
            None => watcher.watch(http.serve_connection(TokioIo::new(stream), svc)).await,
            Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => watcher.watch(http.serve_connection(TokioIo::new(stream), svc)).await,
                Ok(Err(e)) => return shared.log.event(&format!("{peer}: TLS handshake failed: {e}")),
                Err(_) => return shared.log.event(&format!("{peer}: TLS handshake timed out")),
            },
        };
        // Clients that go away are routine (their request lines say "aborted"); requests hyper
        // refused before they reached the service are worth a line.
        if let Err(e) = result {
            if e.is_parse() || e.is_parse_too_large() || e.is_timeout() {
                shared.log.event(&format!("{peer}: {e}"));
            }
        }
    }
}
