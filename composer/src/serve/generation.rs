//! One generation (or plain directory) and the files opened from it.
//!
//! A committed generation never changes, so what was opened from it stays true for as long
//! as it is current: its files are opened once and kept (small ones with their bytes), so a
//! request for them costs reading the link and checking the generation's identity, and no
//! open, read or close. That is what lets the server keep up with nginx on small files, and
//! every byte of a response still comes from the one file of the generation the request was
//! resolved to. A plain directory can change under us, so there every request opens its file
//! anew.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;

use super::body;
use super::conditional::Validators;
use super::content;
use super::etag::{self, Digests};
use super::files::{self, OpenError, OpenFile, RelPath};

/// At most this many files of one generation are kept open (a release with a hundred images
/// has about four hundred files).
const MAX_ENTRIES: usize = 1024;
/// And at most this many bytes of small files kept in memory.
const MAX_CACHED_BYTES: u64 = 64 << 20;

/// What identifies one generation directory: a serial can come back after a manual rollback
/// (publish deletes the never-current generation with the next serial and builds it anew),
/// and the new directory may even reuse the old inode number, but not its ctime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirId {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl DirId {
    /// The identity of the directory `stat` describes.
    pub fn of(stat: &rustix::fs::Stat) -> Self {
        Self { dev: stat.st_dev, ino: stat.st_ino, ctime: (stat.st_ctime, stat.st_ctime_nsec as i64) }
    }
}

/// An open file ready to answer requests.
#[derive(Debug)]
pub struct Entry {
    /// The file; large bodies stream from it.
    pub file: Arc<File>,
    /// Its length.
    pub len: u64,
    /// Its ETag and Last-Modified.
    pub validators: Validators,
    /// The same as header values, formatted once.
    pub etag_header: HeaderValue,
    /// `Last-Modified`.
    pub last_modified_header: HeaderValue,
    /// Its bytes, for files up to [`body::INLINE_MAX`].
    pub content: Option<Bytes>,
}

/// A directory requests are answered from.
#[derive(Debug)]
pub struct Generation {
    /// The directory (an `O_PATH` descriptor).
    pub dir: OwnedFd,
    /// The publish serial, for managed releases.
    pub serial: Option<u64>,
    /// The directory's identity, for managed releases.
    pub id: Option<DirId>,
    /// Files opened so far, for managed releases (committed generations never change).
    files: Option<RwLock<HashMap<String, Arc<Entry>>>>,
    cached_bytes: AtomicU64,
    digests: OnceLock<Digests>,
}

impl Generation {
    /// A committed generation of a managed release.
    pub fn managed(dir: OwnedFd, serial: u64, id: DirId) -> Self {
        Self {
            dir,
            serial: Some(serial),
            id: Some(id),
            files: Some(RwLock::new(HashMap::new())),
            cached_bytes: AtomicU64::new(0),
            digests: OnceLock::new(),
        }
    }

    /// A plain directory, opened for one request.
    pub fn plain(dir: OwnedFd) -> Self {
        Self { dir, serial: None, id: None, files: None, cached_bytes: AtomicU64::new(0), digests: OnceLock::new() }
    }

    /// The image digests its index lists (read once).
    pub fn digests(&self) -> &Digests {
        self.digests.get_or_init(|| etag::load_digests(&self.dir).unwrap_or_default())
    }

    /// The file at `rel`, opened beneath this directory (or kept from an earlier request).
    pub fn open(&self, rel: &RelPath) -> Result<Arc<Entry>, OpenError> {
        if let Some(files) = &self.files {
            if let Some(entry) = files.read().ok().and_then(|f| f.get(rel.as_str()).cloned()) {
                return Ok(entry);
            }
        }
        let OpenFile { file, stat } = files::open_regular(&self.dir, rel)?;
        let len = u64::try_from(stat.st_size).unwrap_or(0);
        let mtime = UNIX_EPOCH + Duration::from_secs(u64::try_from(stat.st_mtime).unwrap_or(0));
        let validators = Validators::new(etag::etag(self, content::image(rel).as_ref(), &stat), mtime);
        let content =
            if len <= body::INLINE_MAX { Some(body::read_at(&file, 0, len).map_err(OpenError::Io)?) } else { None };
        let header = |s: &str| HeaderValue::from_str(s).map_err(|e| OpenError::Io(std::io::Error::other(e)));
        let etag_header = header(validators.etag.as_str())?;
        let last_modified_header = header(&validators.last_modified_header())?;
        let entry =
            Arc::new(Entry { file: Arc::new(file), len, validators, etag_header, last_modified_header, content });
        if let Some(files) = &self.files {
            let size = entry.content.as_ref().map_or(0, |c| c.len() as u64);
            if let Ok(mut files) = files.write() {
                let room = self.cached_bytes.load(Ordering::Relaxed) + size <= MAX_CACHED_BYTES;
                if files.len() < MAX_ENTRIES && room && !files.contains_key(rel.as_str()) {
                    self.cached_bytes.fetch_add(size, Ordering::Relaxed);
                    files.insert(rel.as_str().to_owned(), entry.clone());
                }
            }
        }
        Ok(entry)
    }
}
