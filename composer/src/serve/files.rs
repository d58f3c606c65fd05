//! Containment: which request paths name a file of the release, and opening exactly that file.
//!
//! Two independent fences. First, [`RelPath::from_request`] accepts only plain names below
//! the root: no dot segments or hidden names, no empty segments, no backslashes, NULs or
//! control characters, and no encoded slashes (each segment is percent-decoded on its own,
//! so `%2f` can never become a separator). Second, [`open_regular`] asks the kernel to resolve
//! the path beneath the root's directory descriptor and to refuse every symlink on the way
//! (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and opens for reading only what
//! an `O_PATH` probe showed to be a regular file, so FIFOs and device nodes are never opened.
//! Where `openat2` is unavailable (kernels before 5.6, seccomp filters), the path is walked one
//! segment at a time with `O_NOFOLLOW` instead, which gives the same answer.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{openat, openat2, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

/// Longest request path accepted, encoded; release paths are a few dozen bytes.
const MAX_PATH: usize = 1024;
/// Longest single name (NAME_MAX).
const MAX_NAME: usize = 255;
/// Deepest path accepted; a release is two levels deep.
const MAX_DEPTH: usize = 8;

/// A request path that names something below the root: plain names joined by `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelPath(String);

/// Why a request path is refused before anything is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathRefusal {
    /// Not a path this server could ever serve (400).
    #[error("malformed path: {0}")]
    Malformed(&'static str),
    /// A hidden name (`.lock`, `.tmp-*`, `.swap` links): answered as if absent (404).
    #[error("hidden name")]
    Hidden,
    /// The root or a path ending in `/`: there are no listings (404).
    #[error("directory")]
    Directory,
}

impl RelPath {
    /// Validates the path of a request target (still percent-encoded, without the query).
    pub fn from_request(raw: &str) -> Result<Self, PathRefusal> {
        use PathRefusal::*;
        if raw.len() > MAX_PATH {
            return Err(Malformed("too long"));
        }
        let rest = raw.strip_prefix('/').ok_or(Malformed("does not start with /"))?;
        if rest.is_empty() {
            return Err(Directory);
        }
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.len() > MAX_DEPTH {
            return Err(Malformed("too deep"));
        }
        let mut names = Vec::with_capacity(segments.len());
        for (i, seg) in segments.iter().enumerate() {
            if seg.is_empty() {
                return Err(if i + 1 == segments.len() { Directory } else { Malformed("empty segment") });
            }
            let name = decode_segment(seg)?;
            if name == "." || name == ".." {
                return Err(Malformed("dot segment"));
            }
            if name.len() > MAX_NAME {
                return Err(Malformed("name too long"));
            }
            names.push(name);
        }
        // Hidden names are checked only once the whole path is known to be well-formed, so
        // `/.x/..` is a 400 like any other traversal attempt.
        if names.iter().any(|n| n.starts_with('.')) {
            return Err(Hidden);
        }
        Ok(Self(names.join("/")))
    }

    /// The path relative to the root, e.g. `kubernetes/SHA256SUMS`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last name.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Percent-decodes one segment strictly: every `%` starts a two-digit hex escape, and the
/// result is UTF-8 without separators or control characters.
fn decode_segment(seg: &str) -> Result<String, PathRefusal> {
    use PathRefusal::Malformed;
    let raw = seg.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = if raw[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).ok_or(Malformed("truncated percent escape"))?;
            let hex = std::str::from_utf8(hex).map_err(|_| Malformed("bad percent escape"))?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| Malformed("bad percent escape"))?;
            i += 3;
            b
        } else {
            i += 1;
            raw[i - 1]
        };
        match b {
            b'/' => return Err(Malformed("encoded slash")),
            b'\\' => return Err(Malformed("backslash")),
            0 => return Err(Malformed("NUL")),
            0x01..=0x1f | 0x7f => return Err(Malformed("control character")),
            _ => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| Malformed("not UTF-8"))
}

/// An open regular file and what `fstat` said about it when it was opened.
#[derive(Debug)]
pub struct OpenFile {
    /// The file, open for reading; every byte of a response comes from it.
    pub file: File,
    /// Its metadata.
    pub stat: Stat,
}

/// Why a file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Nothing there (404).
    #[error("not found")]
    NotFound,
    /// A symlink on the way, or a path that would leave the root (404).
    #[error("symlink refused")]
    Symlink,
    /// A directory, FIFO, socket or device (404).
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    /// Permissions or other trouble (500; the log says which).
    #[error("{0}")]
    Io(std::io::Error),
}

impl From<Errno> for OpenError {
    fn from(e: Errno) -> Self {
        match e {
            Errno::NOENT | Errno::NOTDIR => Self::NotFound,
            Errno::LOOP | Errno::XDEV => Self::Symlink,
            e => Self::Io(e.into()),
        }
    }
}

/// `O_PATH | O_NOFOLLOW` opens a trailing symlink itself, so the probe sees it here.
fn check_regular(stat: &Stat) -> Result<(), OpenError> {
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => return Ok(()),
        FileType::Symlink => return Err(OpenError::Symlink),
        FileType::Directory => "directory",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "unknown type",
    };
    Err(OpenError::NotRegular(kind))
}

/// Set once `openat2` turned out to be unavailable, so later requests skip straight to the walk.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

const READ_FLAGS: OFlags =
    OFlags::RDONLY.union(OFlags::CLOEXEC).union(OFlags::NOFOLLOW).union(OFlags::NONBLOCK).union(OFlags::NOCTTY);
const PROBE_FLAGS: OFlags = OFlags::PATH.union(OFlags::CLOEXEC).union(OFlags::NOFOLLOW);

/// Opens `rel` beneath the directory `root`, refusing symlinks, escapes and anything but a
/// regular file.
pub fn open_regular(root: impl AsFd, rel: &RelPath) -> Result<OpenFile, OpenError> {
    let root = root.as_fd();
    let open = |flags: OFlags| -> Result<OwnedFd, OpenError> {
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match openat2(root, rel.as_str(), flags, Mode::empty(), how) {
                Err(Errno::NOSYS | Errno::PERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
                other => return Ok(other?),
            }
        }
        walk(root, rel, flags)
    };
    let probe = open(PROBE_FLAGS)?;
    let probed = rustix::fs::fstat(&probe).map_err(|e| OpenError::Io(e.into()))?;
    check_regular(&probed)?;
    let fd = open(READ_FLAGS)?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| OpenError::Io(e.into()))?;
    if (stat.st_dev, stat.st_ino) != (probed.st_dev, probed.st_ino) {
        // Replaced between the probe and the open: only possible in a plain directory being
        // rewritten, and the next request sees the new file.
        return Err(OpenError::NotFound);
    }
    check_regular(&stat)?;
    Ok(OpenFile { file: File::from(fd), stat })
}

/// The `openat2` fallback: one `openat(O_NOFOLLOW)` per segment. Segments are plain names
/// ([`RelPath`] guarantees it), so this cannot climb out either.
fn walk(root: std::os::fd::BorrowedFd<'_>, rel: &RelPath, flags: OFlags) -> Result<OwnedFd, OpenError> {
    let mut names = rel.as_str().split('/').peekable();
    let mut dir: Option<OwnedFd> = None;
    while let Some(name) = names.next() {
        let at = dir.as_ref().map_or(root, |d| d.as_fd());
        if names.peek().is_none() {
            return Ok(openat(at, name, flags, Mode::empty())?);
        }
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        dir = Some(openat(at, name, flags, Mode::empty())?);
    }
    Err(OpenError::NotFound)
}

/// Opens a directory for use as a root (following symlinks in the path the operator gave).
pub fn open_dir(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?)
}

/// Opens a generation directory, which must not itself be a symlink.
pub fn open_dir_nofollow(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, Mode::empty())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathRefusal::*;

    fn ok(raw: &str) -> String {
        RelPath::from_request(raw).unwrap_or_else(|e| panic!("{raw}: {e}")).0
    }

    fn refused(raw: &str) -> PathRefusal {
        RelPath::from_request(raw).map(|p| panic!("{raw} accepted as {p}")).unwrap_err()
    }

    #[test]
    fn accepts_release_paths() {
        assert_eq!(ok("/index.json"), "index.json");
        assert_eq!(ok("/kubernetes/kubernetes-v1.31.3-x86-64.raw"), "kubernetes/kubernetes-v1.31.3-x86-64.raw");
        assert_eq!(ok("/k3s-v1.32.2%2Bk3s1-x86-64.raw"), "k3s-v1.32.2+k3s1-x86-64.raw");
        assert_eq!(ok("/a%20b"), "a b");
        assert_eq!(ok("/x..y"), "x..y", "dots inside a name are just dots");
    }

    #[test]
    fn refuses_traversal_raw_and_encoded() {
        for raw in [
            "/..",
            "/../etc/passwd",
            "/kubernetes/../../secret",
            "/./index.json",
            "/%2e%2e/secret",
            "/%2E%2E/secret",
            "/.%2e/secret",
            "/%2e/index.json",
            "/kubernetes/%2e%2e/%2e%2e/secret",
            "/%2fetc/passwd",
            "/kubernetes%2f..%2f..%2fsecret",
            "/%2F",
            "/..%5c..%5csecret",
            "/a\\b",
            "/%5c",
            "/index.json%00.raw",
            "/%00",
            "/a%0ab",
            "/a%7f",
            "//etc/passwd",
            "/kubernetes//SHA256SUMS",
            "etc/passwd",
            "*",
            "/%",
            "/%2",
            "/%zz",
            "/%c3%28",
        ] {
            assert!(matches!(refused(raw), Malformed(_)), "{raw}: {:?}", refused(raw));
        }
        assert_eq!(refused(&format!("/{}", "a/".repeat(MAX_DEPTH + 1))), Malformed("too deep"));
        assert_eq!(refused(&format!("/{}", "a".repeat(MAX_PATH))), Malformed("too long"));
    }

    #[test]
    fn hidden_names_and_directories_look_absent() {
        for raw in ["/.lock", "/.tmp-0000000002/index.json", "/.release.swap-12", "/kubernetes/.hidden", "/%2elock"] {
            assert_eq!(refused(raw), Hidden, "{raw}");
        }
        assert_eq!(refused("/.x/%2e%2e"), Malformed("dot segment"), "traversal wins over hidden");
        for raw in ["/", "/kubernetes/"] {
            assert_eq!(refused(raw), Directory, "{raw}");
        }
    }

    #[test]
    fn opens_only_regular_files_beneath_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/file"), b"inside").unwrap();
        std::fs::write(dir.path().join("secret"), b"outside").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("up")).unwrap();
        std::os::unix::fs::symlink("sub/file", root.join("inside-link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("dirlink")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, root.join("fifo"), FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
        let fd = open_dir(&root).unwrap();
        let rel = |s: &str| RelPath::from_request(s).unwrap();

        for fallback in [false, true] {
            NO_OPENAT2.store(fallback, Ordering::Relaxed);
            let f = open_regular(&fd, &rel("/sub/file")).unwrap();
            assert_eq!(f.stat.st_size, 6);
            assert!(matches!(open_regular(&fd, &rel("/up")), Err(OpenError::Symlink)));
            assert!(matches!(open_regular(&fd, &rel("/inside-link")), Err(OpenError::Symlink)));
            let r = open_regular(&fd, &rel("/dirlink/secret"));
            assert!(matches!(r, Err(OpenError::Symlink | OpenError::NotFound)), "fallback {fallback}: {r:?}");
            assert!(matches!(open_regular(&fd, &rel("/fifo")), Err(OpenError::NotRegular("fifo"))));
            assert!(matches!(open_regular(&fd, &rel("/sub")), Err(OpenError::NotRegular("directory"))));
            assert!(matches!(open_regular(&fd, &rel("/missing")), Err(OpenError::NotFound)));
            assert!(matches!(open_regular(&fd, &rel("/sub/file/x")), Err(OpenError::NotFound)));
        }
        NO_OPENAT2.store(false, Ordering::Relaxed);
    }
}
