//! A running `composer serve` (the real binary, on 127.0.0.1:0), for the tests that serve a
//! release: the access log it writes on stderr is collected line by line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `composer serve`; killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT/`.
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `composer serve DIR --listen 127.0.0.1:0` plus `extra`; waits for its first line.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_composer"))
            .arg("serve")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let mut server = Self { child, addr: "127.0.0.1:1".parse().unwrap(), url: String::new(), log };
        let first = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(Ok(line))) => line,
            other => panic!("no 'listening on' line ({other:?}); stderr:\n{}", server.log().join("\n")),
        };
        let url = first.strip_prefix("listening on ").unwrap_or_else(|| panic!("first line: {first}"));
        let hostport = url.split("://").nth(1).unwrap().trim_end_matches('/');
        server.addr = hostport.parse().unwrap();
        server.url = url.to_owned();
        server
    }

    /// The access log so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line satisfies `pred`, and returns it.
    pub fn wait_for_log(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self.log().into_iter().find(|l| pred(l)) {
                return line;
            }
            assert!(Instant::now() < deadline, "no log line {what}:\n{}", self.log().join("\n"));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The access log line of the request for `path`.
    pub fn request_line(&self, path: &str) -> String {
        self.wait_for_log(path, |l| l.contains(&format!(" {path} ")))
    }

    /// Sends `sig` to the server.
    pub fn signal(&self, sig: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), sig).unwrap();
    }

    /// Waits for the server to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {within:?}:\n{}", self.log().join("\n"));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Access log lines of requests for images (`.raw` paths).
    pub fn image_requests(&self) -> Vec<String> {
        self.log().into_iter().filter(|l| l.contains(".raw ")).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
