//! Response bodies: nothing, a buffer, or a byte range streamed from one open file; each
//! writes its access log line when the connection is done with it (finished or abandoned),
//! so the line carries the bytes really handed over and the full duration.

use std::fs::File;
use std::future::Future as _;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::task::JoinHandle;

use super::log::{AccessLog, RequestRecord};

/// Files up to this size are read whole when they are opened, in the handler: from the page
/// cache that takes microseconds, and it saves a round trip through the blocking pool for
/// `index.json`, `SHA256SUMS`, transfer files and signatures (and in a managed release the
/// bytes are kept with the open file).
pub const INLINE_MAX: u64 = 128 * 1024;

/// Larger files are read in chunks of this size on the blocking pool, one chunk ahead of the
/// socket: big enough that the per-chunk hand-off is noise next to copying the bytes.
const CHUNK: u64 = 512 * 1024;

/// What the log line needs besides what the body counts.
#[derive(Debug)]
pub struct Pending {
    /// The access log.
    pub log: Arc<AccessLog>,
    /// When the request arrived.
    pub start: Instant,
    /// The record, without bytes, duration and completeness yet.
    pub record: RequestRecord,
}

#[derive(Debug)]
enum Inner {
    Empty,
    Buffer(Option<Bytes>),
    File(FileStream),
}

/// A response body that logs its request when dropped.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Inner,
    sent: u64,
    done: bool,
    pending: Option<Pending>,
}

impl ResponseBody {
    fn new(inner: Inner, pending: Pending) -> Self {
        let done = matches!(inner, Inner::Empty);
        Self { inner, sent: 0, done, pending: Some(pending) }
    }

    /// No body (HEAD, 304, 416).
    pub fn empty(pending: Pending) -> Self {
        Self::new(Inner::Empty, pending)
    }

    /// A body already in memory.
    pub fn buffer(bytes: Bytes, pending: Pending) -> Self {
        if bytes.is_empty() {
            return Self::empty(pending);
        }
        Self::new(Inner::Buffer(Some(bytes)), pending)
    }

    /// Bytes `start..end` of `file`, read as the connection asks for them.
    pub fn file(file: Arc<File>, start: u64, end: u64, pending: Pending) -> Self {
        if start >= end {
            return Self::empty(pending);
        }
        Self::new(Inner::File(FileStream { file, next: start, end, left: end - start, read: None }), pending)
    }
}

/// Reads `len` bytes at `offset`; a file that got shorter is an error, never a short body.
pub fn read_at(file: &File, offset: u64, len: u64) -> io::Result<Bytes> {
    let mut buf = vec![0; usize::try_from(len).map_err(io::Error::other)?];
    file.read_exact_at(&mut buf, offset)?;
    Ok(Bytes::from(buf))
}

#[derive(Debug)]
struct FileStream {
    file: Arc<File>,
    /// Offset of the next chunk to read.
    next: u64,
    end: u64,
    /// Bytes not yet handed to the connection.
    left: u64,
    read: Option<JoinHandle<io::Result<Bytes>>>,
}

impl FileStream {
    fn start_read(&mut self) {
        if self.next >= self.end {
            return;
        }
        let len = CHUNK.min(self.end - self.next);
        let (file, offset) = (self.file.clone(), self.next);
        self.read = Some(tokio::task::spawn_blocking(move || read_at(&file, offset, len)));
        self.next += len;
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if self.read.is_none() {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            self.start_read();
        }
        let Some(read) = self.read.as_mut() else { return Poll::Ready(None) };
        let result = ready!(Pin::new(read).poll(cx));
        self.read = None;
        let chunk = match result {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(e)) => return Poll::Ready(Some(Err(e))),
            Err(e) => return Poll::Ready(Some(Err(io::Error::other(e)))),
        };
        self.left -= chunk.len() as u64;
        // Read the next chunk while the connection writes this one.
        self.start_read();
        Poll::Ready(Some(Ok(chunk)))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let next = match &mut this.inner {
            Inner::Empty => None,
            Inner::Buffer(b) => b.take().map(Ok),
            Inner::File(f) => ready!(f.poll_chunk(cx)),
        };
        match next {
            Some(Ok(chunk)) => {
                this.sent += chunk.len() as u64;
                if this.is_end_stream() {
                    this.done = true;
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Some(Err(e)) => {
                if let Some(p) = &mut this.pending {
                    p.record.note.get_or_insert_with(|| format!("read failed: {e}"));
                }
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Buffer(b) => b.is_none(),
            Inner::File(f) => f.left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Buffer(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::File(f) => SizeHint::with_exact(f.left),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(mut p) = self.pending.take() {
            p.record.bytes = self.sent;
            p.record.duration = p.start.elapsed();
            p.record.complete = self.done;
            p.log.request(&p.record);
        }
    }
}
