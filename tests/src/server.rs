//! An in-process HTTP/1.1 fixture server for download tests.
//!
//! Deliberately tiny and synchronous (std::net, one thread per connection): tests need to
//! control exactly what goes over the wire — truncated bodies, transient 5xx, dropped
//! connections, slow responses — which a full server framework makes hard, and no test may
//! reach the internet, so every download in the test suite goes through one of these.
//!
//! Every response carries `Connection: close`: one request per connection keeps the
//! fault-injection counters ("the first k requests") unambiguous.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a connection may take to send its request. Bounded so a stuck client cannot keep
/// the server (and thus a test's Drop) alive forever.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted; ours are a few hundred bytes.
const MAX_HEAD: usize = 64 * 1024;

/// What the server sends for one path, plus injected faults. Build with [`Response::ok`] or
/// [`Response::status`] and chain the behaviours.
///
/// Fault order for the n-th request to a path (counting from 0 since [`FixtureServer::set`]):
/// first the `drop_first` requests are dropped, then the `fail_first` ones get the failure
/// status, and every later one gets the real response. `delay` applies before every answer.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    body: Arc<[u8]>,
    headers: Vec<(String, String)>,
    truncate_after: Option<usize>,
    fail_first: usize,
    fail_status: u16,
    drop_first: usize,
    delay: Duration,
    trickle: Option<Duration>,
    hang_after: Option<usize>,
}

impl Response {
    /// `200 OK` with `body`, served as `application/octet-stream`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::status(200).body(body)
    }

    /// A response with the given status and an empty body.
    pub fn status(code: u16) -> Self {
        Response {
            status: code,
            body: Arc::from(Vec::new()),
            headers: Vec::new(),
            truncate_after: None,
            fail_first: 0,
            fail_status: 503,
            drop_first: 0,
            delay: Duration::ZERO,
            trickle: None,
            hang_after: None,
        }
    }

    /// `302 Found` to `location` (absolute URL or path), like GitHub's release downloads,
    /// which redirect to a CDN.
    pub fn redirect(location: &str) -> Self {
        Self::status(302).header("Location", location)
    }

    /// Replaces the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Arc::from(body.into());
        self
    }

    /// Adds a response header. `Content-Length` and `Connection` are always set by the server.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Announces the full `Content-Length` but sends only the first `n` body bytes, then closes
    /// the connection: the client sees a truncated body (usually an error from its HTTP stack).
    pub fn truncate_after(mut self, n: usize) -> Self {
        self.truncate_after = Some(n);
        self
    }

    /// The first `k` requests get `status` (e.g. 503) with a short body; later ones succeed.
    pub fn fail_first(mut self, k: usize, status: u16) -> Self {
        self.fail_first = k;
        self.fail_status = status;
        self
    }

    /// The first `k` requests have their connection closed after the request is read, without
    /// any response: the client sees a connection error.
    pub fn drop_first(mut self, k: usize) -> Self {
        self.drop_first = k;
        self
    }

    /// Waits this long before answering (or dropping) every request; for timeout and
    /// parallelism tests. Cut short when the server shuts down.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sends the head at once, then the body one byte every `interval`: a server that never
    /// stalls long enough for a read timeout but would take forever.
    pub fn trickle(mut self, interval: Duration) -> Self {
        self.trickle = Some(interval);
        self
    }

    /// Reads the request and never answers, keeping the connection open until the server
    /// shuts down (or the client goes away).
    pub fn never_answer(self) -> Self {
        self.hang_after(None)
    }

    /// Sends the head and the first `n` body bytes (`None`: not even the head), then keeps
    /// the connection open without sending anything more until the server shuts down.
    pub fn hang_after(mut self, n: impl Into<Option<usize>>) -> Self {
        // usize::MAX stands for "before the head".
        self.hang_after = Some(n.into().unwrap_or(usize::MAX));
        self
    }

    /// The body as configured (before any truncation).
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }
}

/// A route and how many requests it has seen since it was set.
#[derive(Debug)]
struct Route {
    response: Response,
    seen: usize,
}

/// State shared between the handle and the server threads.
#[derive(Debug, Default)]
struct Shared {
    routes: Mutex<HashMap<String, Route>>,
    /// Paths of all requests, in arrival order.
    log: Mutex<Vec<String>>,
    stopping: AtomicBool,
}

/// Locks ignoring poisoning: a panicking test thread must not cascade into every other test
/// that shares the server.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running fixture server on `127.0.0.1`. Stops (stops accepting, joins its threads) on drop.
///
/// All methods take `&self`, so routes can be changed while requests are in flight and the
/// server can be shared between threads (wrap it in an `Arc` if needed).
#[derive(Debug)]
pub struct FixtureServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FixtureServer {
    /// Binds `127.0.0.1:0` and starts serving; every path is 404 until [`FixtureServer::set`].
    ///
    /// # Panics
    /// If no local port can be bound (a broken test machine).
    pub fn start() -> FixtureServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("fixture-server-{}", addr.port()))
                .spawn(move || accept_loop(listener, shared))
                .expect("spawn accept thread")
        };
        FixtureServer { addr, shared, acceptor: Some(acceptor) }
    }

    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `url()` joined with `path` (which should start with `/`).
    pub fn url_for(&self, path: &str) -> String {
        format!("{}{path}", self.url())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `response` at `path` (exact match, query string ignored), replacing any previous
    /// route and resetting its fault counters.
    pub fn set(&self, path: &str, response: Response) {
        lock(&self.shared.routes).insert(path.to_owned(), Route { response, seen: 0 });
    }

    /// Stops serving `path` (it becomes 404).
    pub fn remove(&self, path: &str) {
        lock(&self.shared.routes).remove(path);
    }

    /// The response configured for `path`, if any.
    pub fn get(&self, path: &str) -> Option<Response> {
        lock(&self.shared.routes).get(path).map(|r| r.response.clone())
    }

    /// How many requests for `path` arrived (including failed, dropped and 404 ones).
    pub fn hits(&self, path: &str) -> usize {
        lock(&self.shared.log).iter().filter(|p| *p == path).count()
    }

    /// How many requests arrived in total.
    pub fn total_hits(&self) -> usize {
        lock(&self.shared.log).len()
    }

    /// Paths of all requests so far, in arrival order (query strings removed).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.log).clone()
    }

    /// Forgets the request log (routes and their fault counters are kept).
    pub fn clear_log(&self) {
        lock(&self.shared.log).clear();
    }
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept(); it sees the flag and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        workers.retain(|w| !w.is_finished());
        let shared = Arc::clone(&shared);
        match std::thread::Builder::new().name("fixture-conn".into()).spawn(move || handle(stream, &shared)) {
            Ok(worker) => workers.push(worker),
            // Out of threads: the stream was moved into the failed closure and is closed,
            // which the client sees as a connection error. Nothing better to do.
            Err(_) => continue,
        }
    }
    // Joining bounds every connection's lifetime to the server's: timeouts and the
    // interruptible delay keep this short.
    for worker in workers {
        let _ = worker.join();
    }
}

/// A parsed request head: method and routing path.
struct Request {
    method: String,
    path: String,
}

/// Reads the request head; `None` for anything unparsable (including the shutdown wake-up).
fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.take(MAX_HEAD as u64));
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?;
    // Drain headers up to the blank line; a GET/HEAD has no body to read.
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        if header == "\r\n" || header == "\n" {
            break;
        }
    }
    Some(Request { method, path: routing_path(target) })
}

/// The path used for routing: absolute-form targets lose scheme and authority, and the query
/// string and fragment are dropped.
fn routing_path(target: &str) -> String {
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let end = target.find(['?', '#']).unwrap_or(target.len());
    target[..end].to_owned()
}

/// What to do with one request, decided under the routes lock.
enum Action {
    Drop,
    Send { status: u16, headers: Vec<(String, String)>, body: Arc<[u8]>, limit: Option<usize>, faults: Faults },
}

/// How a response misbehaves while it is being sent.
#[derive(Clone, Copy, Default)]
struct Faults {
    trickle: Option<Duration>,
    hang_after: Option<usize>,
}

fn handle(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Some(request) = read_request(&stream) else {
        return;
    };
    lock(&shared.log).push(request.path.clone());

    let (action, delay) = decide(shared, &request.path);
    if !sleep_unless_stopping(delay, shared) {
        return;
    }
    match action {
        Action::Drop => {
            // Request fully read, so closing sends a clean FIN: the client sees the
            // connection close before any response byte.
            let _ = stream.shutdown(Shutdown::Both);
        }
        Action::Send { status, headers, body, limit, faults } => {
            let head_only = request.method.eq_ignore_ascii_case("HEAD");
            // Errors mean the client went away early; that is its business, not a failure here.
            let sent = send(&stream, status, &headers, &body, limit, head_only, faults, shared);
            if sent.is_ok() && faults.hang_after.is_some() {
                hang(&stream, shared);
                return;
            }
            let _ = stream.shutdown(Shutdown::Write);
            // Read whatever the client still sends (usually nothing) so the close is not
            // turned into a reset that could discard the response it has yet to read.
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = std::io::copy(&mut (&stream).take(MAX_HEAD as u64), &mut std::io::sink());
        }
    }
}

fn decide(shared: &Shared, path: &str) -> (Action, Duration) {
    let mut routes = lock(&shared.routes);
    let Some(route) = routes.get_mut(path) else {
        let body: Arc<[u8]> = Arc::from(format!("404 not found: {path}\n").into_bytes());
        let headers = vec![("Content-Type".to_owned(), "text/plain".to_owned())];
        return (Action::Send { status: 404, headers, body, limit: None, faults: Faults::default() }, Duration::ZERO);
    };
    let n = route.seen;
    route.seen += 1;
    let r = &route.response;
    let action = if n < r.drop_first {
        Action::Drop
    } else if n < r.drop_first + r.fail_first {
        let body = format!("injected failure {} for request {n} to {path}\n", r.fail_status);
        Action::Send {
            status: r.fail_status,
            headers: vec![("Content-Type".to_owned(), "text/plain".to_owned())],
            body: Arc::from(body.into_bytes()),
            limit: None,
            faults: Faults::default(),
        }
    } else {
        let mut headers = r.headers.clone();
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            headers.push(("Content-Type".to_owned(), "application/octet-stream".to_owned()));
        }
        let faults = Faults { trickle: r.trickle, hang_after: r.hang_after };
        Action::Send { status: r.status, headers, body: Arc::clone(&r.body), limit: r.truncate_after, faults }
    };
    (action, r.delay)
}

/// Sleeps `delay` in small steps; false if the server started shutting down meanwhile.
fn sleep_unless_stopping(delay: Duration, shared: &Shared) -> bool {
    let until = Instant::now() + delay;
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

/// Keeps a connection open, sending nothing, until the server stops or the client closes it.
fn hang(stream: &TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = [0u8; 512];
    while !shared.stopping.load(Ordering::SeqCst) {
        match (&*stream).read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn send(
    mut stream: &TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    limit: Option<usize>,
    head_only: bool,
    faults: Faults,
    shared: &Shared,
) -> std::io::Result<()> {
    if faults.hang_after == Some(usize::MAX) {
        return Ok(());
    }
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    if !head_only {
        let n = limit.or(faults.hang_after).unwrap_or(body.len()).min(body.len());
        match faults.trickle {
            Some(interval) => {
                for byte in &body[..n] {
                    if !sleep_unless_stopping(interval, shared) {
                        return Err(std::io::ErrorKind::Interrupted.into());
                    }
                    stream.write_all(std::slice::from_ref(byte))?;
                    stream.flush()?;
                }
            }
            None => stream.write_all(&body[..n])?,
        }
    }
    stream.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_path_ignores_query_fragment_and_authority() {
        assert_eq!(routing_path("/a/b?x=1"), "/a/b");
        assert_eq!(routing_path("/a#frag"), "/a");
        assert_eq!(routing_path("http://example.invalid/a/b?q"), "/a/b");
        assert_eq!(routing_path("http://example.invalid"), "/");
    }

    /// A raw HTTP exchange, for behaviour that a real client would hide.
    fn raw(server: &FixtureServer, request: &str) -> Vec<u8> {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }

    #[test]
    fn head_sends_length_without_body() {
        let server = FixtureServer::start();
        server.set("/f", Response::ok(vec![7u8; 1234]));
        let out = String::from_utf8(raw(&server, "HEAD /f HTTP/1.1\r\nHost: x\r\n\r\n")).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Content-Length: 1234\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n"), "no body after the head: {out}");
    }

    #[test]
    fn truncation_is_visible_on_the_wire() {
        let server = FixtureServer::start();
        server.set("/t", Response::ok(vec![1u8; 100]).truncate_after(10));
        let out = raw(&server, "GET /t HTTP/1.1\r\nHost: x\r\n\r\n");
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&out[..split]);
        assert!(head.contains("Content-Length: 100\r\n"), "{head}");
        assert_eq!(out.len() - split, 10);
    }

    #[test]
    fn dropped_connection_gets_no_bytes_and_garbage_is_ignored() {
        let server = FixtureServer::start();
        server.set("/d", Response::ok("x").drop_first(1));
        assert!(raw(&server, "GET /d HTTP/1.1\r\n\r\n").is_empty());
        assert!(!raw(&server, "GET /d HTTP/1.1\r\n\r\n").is_empty());
        // Unparsable input and clients that vanish are neither logged nor fatal.
        assert!(raw(&server, "\r\n").is_empty());
        drop(TcpStream::connect(server.addr()).unwrap());
        assert_eq!(server.requests(), ["/d", "/d"]);
    }

    #[test]
    fn hang_after_sends_a_prefix_and_keeps_the_connection_open() {
        let server = FixtureServer::start();
        server.set("/h", Response::ok(vec![1u8; 100]).hang_after(10));
        server.set("/n", Response::ok("x").never_answer());
        for (path, body_bytes) in [("/h", Some(10)), ("/n", None)] {
            let mut s = TcpStream::connect(server.addr()).unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes()).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            let mut out = Vec::new();
            let err = s.read_to_end(&mut out).unwrap_err();
            assert!(matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{err}");
            match body_bytes {
                Some(n) => {
                    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    assert_eq!(out.len() - split, n);
                }
                None => assert!(out.is_empty()),
            }
        }
    }
}
