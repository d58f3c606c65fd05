//! One request: method, path, open, preconditions, range, headers, body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, LAST_MODIFIED,
    RETRY_AFTER, X_CONTENT_TYPE_OPTIONS,
};
use http::{Method, Request, Response, StatusCode};

use super::body::{Pending, ResponseBody};
use super::conditional::{self, Precondition, Ranged};
use super::content;
use super::files::{OpenError, PathRefusal, RelPath};
use super::log::{AccessLog, RequestRecord};
use super::release::Release;

/// Everything requests share.
#[derive(Debug)]
pub struct Service {
    release: Release,
    log: Arc<AccessLog>,
}

/// A response before its body is attached.
struct Answer {
    status: StatusCode,
    headers: Vec<(http::HeaderName, HeaderValue)>,
    body: Body,
    note: Option<String>,
}

enum Body {
    Empty,
    Text(&'static str),
    Buffer(Bytes),
    File { file: Arc<std::fs::File>, start: u64, end: u64 },
}

fn value(s: &str) -> HeaderValue {
    // Every value built here is ASCII (paths never reach a header).
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl Answer {
    fn error(status: StatusCode, note: impl Into<String>) -> Self {
        let text = match status {
            StatusCode::BAD_REQUEST => "bad request\n",
            StatusCode::NOT_FOUND => "not found\n",
            StatusCode::METHOD_NOT_ALLOWED => "method not allowed\n",
            StatusCode::SERVICE_UNAVAILABLE => "release unavailable\n",
            _ => "internal server error\n",
        };
        Self {
            status,
            headers: vec![
                (CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8")),
                (CONTENT_LENGTH, HeaderValue::from(text.len())),
                // A 404 now may be a file the next publish adds.
                (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body: Body::Text(text),
            note: Some(note.into()),
        }
    }
}

impl Service {
    /// A service for `release`, logging to `log`.
    pub fn new(release: Release, log: Arc<AccessLog>) -> Self {
        Self { release, log }
    }

    /// Answers one request; never fails (errors are responses).
    pub fn handle<B>(&self, req: &Request<B>, peer: SocketAddr) -> Response<ResponseBody> {
        let start = Instant::now();
        let target = req.uri().path_and_query().map_or_else(|| req.uri().to_string(), |p| p.as_str().to_owned());
        let mut generation = None;
        let answer = self.answer(req, &mut generation);
        let mut resp = Response::new(());
        *resp.status_mut() = answer.status;
        let headers = resp.headers_mut();
        for (k, v) in answer.headers {
            headers.insert(k, v);
        }
        let pending = Pending {
            log: self.log.clone(),
            start,
            record: RequestRecord {
                peer,
                method: req.method().to_string(),
                target,
                status: answer.status.as_u16(),
                bytes: 0,
                duration: Duration::ZERO,
                complete: false,
                generation,
                note: answer.note,
            },
        };
        // HEAD gets GET's headers (Content-Length included) and never a body.
        let body = if req.method() == Method::HEAD { Body::Empty } else { answer.body };
        let body = match body {
            Body::Empty => ResponseBody::empty(pending),
            Body::Text(t) => ResponseBody::buffer(Bytes::from_static(t.as_bytes()), pending),
            Body::Buffer(b) => ResponseBody::buffer(b, pending),
            Body::File { file, start, end } => ResponseBody::file(file, start, end, pending),
        };
        resp.map(|()| body)
    }

    fn answer<B>(&self, req: &Request<B>, generation: &mut Option<u64>) -> Answer {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                let mut a = Answer::error(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
                a.headers.push((ALLOW, HeaderValue::from_static("GET, HEAD")));
                return a;
            }
        };
        let rel = match RelPath::from_request(req.uri().path()) {
            Ok(rel) => rel,
            Err(e @ PathRefusal::Malformed(_)) => return Answer::error(StatusCode::BAD_REQUEST, e.to_string()),
            Err(e) => return Answer::error(StatusCode::NOT_FOUND, e.to_string()),
        };
        let current = match self.release.current() {
            Ok(g) => g,
            Err(e) => {
                let mut a = Answer::error(StatusCode::SERVICE_UNAVAILABLE, e.0);
                a.headers.push((RETRY_AFTER, HeaderValue::from_static("5")));
                return a;
            }
        };
        *generation = current.serial;
        let entry = match current.open(&rel) {
            Ok(e) => e,
            Err(e @ OpenError::Io(_)) => return Answer::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            Err(e) => return Answer::error(StatusCode::NOT_FOUND, e.to_string()),
        };
        drop(current);
        let (validators, len) = (&entry.validators, entry.len);

        let mut headers = vec![
            (ETAG, entry.etag_header.clone()),
            (LAST_MODIFIED, entry.last_modified_header.clone()),
            (CACHE_CONTROL, HeaderValue::from_static(content::cache_control(&rel))),
        ];
        match conditional::preconditions(req.headers(), validators) {
            Precondition::Proceed => {}
            Precondition::NotModified => {
                return Answer { status: StatusCode::NOT_MODIFIED, headers, body: Body::Empty, note: None }
            }
            Precondition::Failed => {
                headers.push((CONTENT_LENGTH, HeaderValue::from(0)));
                return Answer { status: StatusCode::PRECONDITION_FAILED, headers, body: Body::Empty, note: None };
            }
        }
        headers.push((ACCEPT_RANGES, HeaderValue::from_static("bytes")));
        headers.push((CONTENT_TYPE, HeaderValue::from_static(content::content_type(&rel))));
        headers.push((X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")));
        // Range is defined for GET only (RFC 9110 §14.2); HEAD answers as a plain GET would.
        let ranged = if head { Ranged::Full } else { conditional::range(req.headers(), validators, len) };
        let (status, start, end) = match ranged {
            Ranged::Full => (StatusCode::OK, 0, len),
            Ranged::Partial { start, end } => {
                headers.push((CONTENT_RANGE, value(&format!("bytes {start}-{end}/{len}"))));
                (StatusCode::PARTIAL_CONTENT, start, end + 1)
            }
            Ranged::Unsatisfiable => {
                headers.push((CONTENT_RANGE, value(&format!("bytes */{len}"))));
                headers.push((CONTENT_LENGTH, HeaderValue::from(0)));
                return Answer { status: StatusCode::RANGE_NOT_SATISFIABLE, headers, body: Body::Empty, note: None };
            }
        };
        headers.push((CONTENT_LENGTH, HeaderValue::from(end - start)));
        let body = match &entry.content {
            _ if head => Body::Empty,
            Some(bytes) => Body::Buffer(bytes.slice(start as usize..end as usize)),
            None => Body::File { file: entry.file.clone(), start, end },
        };
        Answer { status, headers, body, note: None }
    }
}
