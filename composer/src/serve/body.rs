//! Response bodies: nothing, a buffer, or a byte range streamed from one open file; each
//! writes its access log line when the connection is done with it (finished or abandoned),
//! so the line carries the bytes really handed over and the full duration.

use std::fs::File;
use std::future::Future as _;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use rustix::io::{Errno, ReadWriteFlags};
use tokio::task::JoinHandle;

use super::log::{AccessLog, RequestRecord};

/// Files up to this size are read whole when they are opened, in the handler: from the page
/// cache that takes microseconds, and it saves a round trip through the blocking pool for
/// `index.json`, `SHA256SUMS`, transfer files and signatures (and in a managed release the
/// bytes are kept with the open file).
pub const INLINE_MAX: u64 = 128 * 1024;

/// Larger files are read in chunks of this size as the connection asks for them: big enough
/// that the per-chunk overhead is noise next to copying the bytes, small enough that a
/// thousand concurrent downloads hold a quarter of a gigabyte at most.
const CHUNK: u64 = 256 * 1024;

/// Chunk buffers kept for reuse. A fresh buffer per chunk costs a page fault per 4 KiB and a
/// memset (a fifth of the CPU time of a download, measured); a reused one costs neither.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// At most this many idle buffers (64 × 256 KiB = 16 MiB) are kept.
const POOL_MAX: usize = 64;

/// A chunk buffer that goes back to [`POOL`] when the connection is done with it.
struct Pooled {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if let Ok(mut pool) = POOL.lock() {
            if pool.len() < POOL_MAX {
                pool.push(buf);
            }
        }
    }
}

/// Reads `len` (at most [`CHUNK`]) bytes at `offset` into a pooled buffer.
fn read_chunk(file: &File, offset: u64, len: u64) -> io::Result<Bytes> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    let mut buf = POOL.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default();
    if buf.len() < len {
        buf.resize(CHUNK as usize, 0);
    }
    file.read_exact_at(&mut buf[..len], offset)?;
    Ok(Bytes::from_owner(Pooled { buf, len }))
}

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
    /// Offset of the next byte to read.
    next: u64,
    end: u64,
    /// Bytes not yet handed to the connection.
    left: u64,
    read: Option<JoinHandle<io::Result<Bytes>>>,
}

/// Set when a file system refuses `RWF_NOWAIT`, so every chunk goes to the blocking pool.
static NO_NOWAIT: AtomicBool = AtomicBool::new(false);

/// Reads up to `len` bytes at `offset` only if they are in the page cache (`preadv2` with
/// `RWF_NOWAIT`): `Ok(None)` means the read would wait for the disk.
fn read_cached(file: &File, offset: u64, len: u64) -> io::Result<Option<Bytes>> {
    if NO_NOWAIT.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(io::Error::other)?;
    let mut buf = POOL.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default();
    if buf.len() < len {
        buf.resize(CHUNK as usize, 0);
    }
    let read = rustix::io::preadv2(file, &mut [io::IoSliceMut::new(&mut buf[..len])], offset, ReadWriteFlags::NOWAIT);
    match read {
        Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(n) => Ok(Some(Bytes::from_owner(Pooled { buf, len: n }))),
        Err(Errno::AGAIN) => Ok(None),
        Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
            NO_NOWAIT.store(true, Ordering::Relaxed);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

impl FileStream {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let chunk = match self.read.as_mut() {
            Some(read) => {
                let result = ready!(Pin::new(read).poll(cx));
                self.read = None;
                match result {
                    Ok(Ok(chunk)) => chunk,
                    Ok(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Err(e) => return Poll::Ready(Some(Err(io::Error::other(e)))),
                }
            }
            None => {
                let len = CHUNK.min(self.end - self.next);
                // From the page cache a chunk takes tens of microseconds: read it right here,
                // as nginx does, and leave only reads that would wait for the disk to the
                // blocking pool, so a cold disk never stalls the connections of a worker.
                match read_cached(&self.file, self.next, len) {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => {
                        let (file, offset) = (self.file.clone(), self.next);
                        self.read = Some(tokio::task::spawn_blocking(move || read_chunk(&file, offset, len)));
                        return self.poll_chunk(cx);
                    }
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
        };
        self.next += chunk.len() as u64;
        self.left -= chunk.len() as u64;
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    fn pending() -> Pending {
        Pending {
            log: Arc::new(AccessLog::new(super::super::log::LogFormat::Text)),
            start: Instant::now(),
            record: RequestRecord {
                peer: "127.0.0.1:1".parse().unwrap(),
                method: "GET".into(),
                target: "/test".into(),
                status: 200,
                bytes: 0,
                duration: std::time::Duration::ZERO,
                complete: false,
                generation: None,
                note: None,
            },
        }
    }

    /// Polls `body` to its end on a runtime; the bytes, or the error that ended it.
    fn collect(mut body: ResponseBody) -> io::Result<Vec<u8>> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async move {
            let mut out = Vec::new();
            while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                out.extend_from_slice(frame?.data_ref().unwrap());
            }
            assert!(body.is_end_stream());
            Ok(out)
        })
    }

    #[test]
    fn streams_exact_ranges_from_the_page_cache_and_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        for blocking in [false, true] {
            NO_NOWAIT.store(blocking, Ordering::Relaxed);
            for (start, end) in [(0, data.len() as u64), (5, CHUNK + 9), (CHUNK, 2 * CHUNK)] {
                let body = ResponseBody::file(file.clone(), start, end, pending());
                assert_eq!(body.size_hint().exact(), Some(end - start));
                let got = collect(body).unwrap();
                assert!(got == data[start as usize..end as usize], "blocking {blocking}: {start}..{end}");
            }
            // A file that shrank under us ends the body with an error, never a short body.
            let short = ResponseBody::file(file.clone(), 0, data.len() as u64 + CHUNK, pending());
            assert_eq!(collect(short).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        }
        NO_NOWAIT.store(false, Ordering::Relaxed);
    }
}
