//! The access log: one line per request on stderr, as text or as one JSON object per line;
//! server events (listening, shutdown) go through the same writer in the same format.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `TIME PEER METHOD PATH STATUS BYTES DURATION [gen=SERIAL] [aborted] [(NOTE)]`.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One finished (or abandoned) request.
#[derive(Debug)]
pub struct RequestRecord {
    /// Client address.
    pub peer: SocketAddr,
    /// Request method.
    pub method: String,
    /// Request target as received (path and query, still percent-encoded).
    pub target: String,
    /// Response status.
    pub status: u16,
    /// Body bytes handed to the connection.
    pub bytes: u64,
    /// From the request's arrival to the end of its body.
    pub duration: Duration,
    /// Whether the whole body was sent (false: the client went away, or a read failed).
    pub complete: bool,
    /// The generation served from, for publish-managed releases.
    pub generation: Option<u64>,
    /// Why a request was refused or failed, for the operator.
    pub note: Option<String>,
}

/// Writes log lines to stderr.
#[derive(Debug)]
pub struct AccessLog {
    format: LogFormat,
}

/// Bytes outside printable ASCII, escaped so a log line stays one line of text.
fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 512;
    if s.len() <= MAX && s.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'"') {
        return s.into();
    }
    let mut out = String::with_capacity(s.len().min(MAX));
    for b in s.bytes() {
        if out.len() >= MAX {
            out.push_str("...");
            break;
        }
        if (0x21..0x7f).contains(&b) && b != b'"' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.into()
}

impl AccessLog {
    /// A log in `format`.
    pub fn new(format: LogFormat) -> Self {
        Self { format }
    }

    fn write(&self, mut line: String) {
        line.push('\n');
        // One write per line, so lines from concurrent requests never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn now() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }

    /// Formats a request line.
    pub fn format_request(&self, r: &RequestRecord) -> String {
        let ms = r.duration.as_secs_f64() * 1000.0;
        match self.format {
            LogFormat::Text => {
                use std::fmt::Write as _;
                let mut line = String::with_capacity(160);
                let _ = write!(
                    line,
                    "{} {} {} {} {} {} {ms:.3}ms",
                    humantime::format_rfc3339_millis(SystemTime::now()),
                    r.peer,
                    printable(&r.method),
                    printable(&r.target),
                    r.status,
                    r.bytes
                );
                if let Some(g) = r.generation {
                    let _ = write!(line, " gen={g:010}");
                }
                if !r.complete {
                    line.push_str(" aborted");
                }
                if let Some(note) = &r.note {
                    let _ = write!(line, " ({note})");
                }
                line
            }
            LogFormat::Json => serde_json::json!({
                "time": Self::now(),
                "peer": r.peer.to_string(),
                "method": r.method,
                "path": r.target,
                "status": r.status,
                "bytes": r.bytes,
                "duration_ms": (ms * 1000.0).round() / 1000.0,
                "complete": r.complete,
                "generation": r.generation,
                "note": r.note,
            })
            .to_string(),
        }
    }

    /// Logs a request.
    pub fn request(&self, r: &RequestRecord) {
        self.write(self.format_request(r));
    }

    /// Logs a server event.
    pub fn event(&self, message: &str) {
        let line = match self.format {
            LogFormat::Text => format!("{} {message}", Self::now()),
            LogFormat::Json => serde_json::json!({ "time": Self::now(), "event": message }).to_string(),
        };
        self.write(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RequestRecord {
        RequestRecord {
            peer: "127.0.0.1:4242".parse().unwrap(),
            method: "GET".into(),
            target: "/a b\n\"".into(),
            status: 206,
            bytes: 100,
            duration: Duration::from_micros(1500),
            complete: false,
            generation: Some(7),
            note: Some("why".into()),
        }
    }

    #[test]
    fn text_lines_stay_one_line() {
        let line = AccessLog::new(LogFormat::Text).format_request(&record());
        let (_, rest) = line.split_once(' ').unwrap();
        assert_eq!(rest, "127.0.0.1:4242 GET /a%20b%0A%22 206 100 1.500ms gen=0000000007 aborted (why)");
        assert!(printable(&"x".repeat(2000)).ends_with("..."));
    }

    #[test]
    fn json_lines_carry_every_field() {
        let line = AccessLog::new(LogFormat::Json).format_request(&record());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/a b\n\"");
        assert_eq!(v["status"], 206);
        assert_eq!(v["bytes"], 100);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["complete"], false);
        assert_eq!(v["generation"], 7);
        assert_eq!(v["peer"], "127.0.0.1:4242");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
}
