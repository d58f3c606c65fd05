//! Deterministic `.tar.gz` builder, including hostile archives.
//!
//! Upstream release tarballs are rebuilt here from tiny stand-in files. Two things matter:
//!
//! * **Determinism.** Digests of fake artifacts end up in test expectations and release
//!   indexes, so the same entries must give the same bytes on every run and machine: owner
//!   0/0, mtime 0, empty user/group names, and a gzip header with mtime 0 and no file name.
//! * **Verbatim names.** The product must refuse archives with `..`, absolute paths or odd entry
//!   types. The `tar` crate's `set_path` refuses to *write* such names, so this builder fills the
//!   header's name and link-name fields itself (adding GNU long-name records when a name does not
//!   fit) and never validates anything. Entries come out in the order they were added.

use std::io::Write;

use flate2::{Compression, GzBuilder};
pub use tar::EntryType;
use tar::Header;

/// Length of the name and link-name fields of a tar header.
const NAME_FIELD: usize = 100;

/// One entry as it will be written.
#[derive(Debug, Clone)]
struct Entry {
    name: Vec<u8>,
    link: Vec<u8>,
    kind: EntryType,
    mode: u32,
    data: Vec<u8>,
}

/// Builds a gzip-compressed tar archive with reproducible bytes. See the module docs.
///
/// ```
/// use sysext_tests::TarGz;
/// let tgz = TarGz::new()
///     .dir("bin/", 0o755)
///     .file("bin/tool", 0o755, b"#!/bin/sh\n")
///     .symlink("bin/alias", "tool")
///     .build();
/// assert_eq!(tgz, TarGz::new().dir("bin/", 0o755).file("bin/tool", 0o755, b"#!/bin/sh\n")
///     .symlink("bin/alias", "tool").build());
/// ```
#[derive(Debug, Clone, Default)]
pub struct TarGz {
    entries: Vec<Entry>,
}

impl TarGz {
    /// Names and links an unpacker must refuse: traversal, an absolute path, an invalid
    /// UTF-8 name, a FIFO, links out of the tree.
    pub fn hostile_sample() -> TarGz {
        TarGz::new()
            .raw_entry("../escape.txt", EntryType::Regular, 0o644, "pwned\n")
            .raw_entry("/etc/absolute.txt", EntryType::Regular, 0o644, "abs\n")
            .raw_entry("bin/../../up", EntryType::Regular, 0o755, "")
            .raw_entry(b"bad\xffname", EntryType::Regular, 0o644, "x")
            .raw_entry("fifo", EntryType::Fifo, 0o644, "")
            .symlink("evil-link", "../../../etc/passwd")
            .hardlink("evil-hard", "/etc/shadow")
    }

    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// A regular file. `name` is written exactly as given (no `./` added or removed).
    pub fn file(self, name: &str, mode: u32, bytes: impl AsRef<[u8]>) -> Self {
        self.push(name.as_bytes(), b"", EntryType::Regular, mode, bytes.as_ref())
    }

    /// A directory. Written as given, so pass `"bin/"` or `"./"` to get the trailing slash
    /// that GNU tar (and therefore real upstream tarballs) use.
    pub fn dir(self, name: &str, mode: u32) -> Self {
        self.push(name.as_bytes(), b"", EntryType::Directory, mode, b"")
    }

    /// A symbolic link (mode 0777, like GNU tar records them). The target is verbatim, so
    /// `"../../etc"` or `"/etc/passwd"` are allowed, for escape tests.
    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.push(name.as_bytes(), target.as_bytes(), EntryType::Symlink, 0o777, b"")
    }

    /// A hard link to an earlier member (or, verbatim, to anything else, for escape tests).
    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.push(name.as_bytes(), target.as_bytes(), EntryType::Link, 0o644, b"")
    }

    /// Any entry with a name given as raw bytes: not UTF-8, containing `..`, starting with `/`,
    /// or of any type (FIFO, character device, ...). `bytes` becomes the entry's data and size.
    pub fn raw_entry(self, name: impl AsRef<[u8]>, entry_type: EntryType, mode: u32, bytes: impl AsRef<[u8]>) -> Self {
        self.push(name.as_ref(), b"", entry_type, mode, bytes.as_ref())
    }

    /// Like [`TarGz::raw_entry`] but also sets the link-name field (for hostile links with
    /// non-UTF-8 names or targets).
    pub fn raw_link(self, name: impl AsRef<[u8]>, entry_type: EntryType, target: impl AsRef<[u8]>) -> Self {
        let mode = if entry_type == EntryType::Symlink { 0o777 } else { 0o644 };
        self.push(name.as_ref(), target.as_ref(), entry_type, mode, b"")
    }

    fn push(mut self, name: &[u8], link: &[u8], kind: EntryType, mode: u32, data: &[u8]) -> Self {
        self.entries.push(Entry { name: name.to_vec(), link: link.to_vec(), kind, mode, data: data.to_vec() });
        self
    }

    /// The uncompressed tar stream (handy when a test wants another compression).
    pub fn build_tar(&self) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            // Names that do not fit get a GNU `././@LongLink` record first (what GNU tar does);
            // the header field then keeps the first 100 bytes, as GNU tar writes it too.
            if entry.name.len() > NAME_FIELD {
                append_long(&mut builder, EntryType::GNULongName, &entry.name);
            }
            if entry.link.len() > NAME_FIELD {
                append_long(&mut builder, EntryType::GNULongLink, &entry.link);
            }
            let mut header = blank_header(entry.kind, entry.mode, entry.data.len() as u64);
            set_field(&mut header.as_old_mut().name, &entry.name);
            set_field(&mut header.as_old_mut().linkname, &entry.link);
            header.set_cksum();
            builder.append(&header, entry.data.as_slice()).expect("writing to a Vec");
        }
        builder.into_inner().expect("writing to a Vec")
    }

    /// The gzip-compressed archive.
    pub fn build(&self) -> Vec<u8> {
        gzip(&self.build_tar())
    }
}

/// Gzip with a reproducible header: mtime 0, no file name, fixed OS byte.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    // GzBuilder leaves mtime at 0 and the name unset unless told otherwise; spelled out so a
    // future flate2 default change cannot make archives time-dependent.
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .operating_system(3) // Unix
        .write(Vec::new(), Compression::default());
    encoder.write_all(data).expect("writing to a Vec");
    encoder.finish().expect("writing to a Vec")
}

/// A GNU header with everything reproducible set and no name yet.
fn blank_header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    header
}

/// Appends a GNU long-name/long-link record carrying `value` (NUL-terminated, like GNU tar).
fn append_long(builder: &mut tar::Builder<Vec<u8>>, kind: EntryType, value: &[u8]) {
    let mut data = value.to_vec();
    data.push(0);
    let mut header = blank_header(kind, 0o644, data.len() as u64);
    set_field(&mut header.as_old_mut().name, b"././@LongLink");
    header.set_cksum();
    builder.append(&header, data.as_slice()).expect("writing to a Vec");
}

/// Copies `value` into a fixed-size header field, truncating and NUL-padding.
fn set_field(field: &mut [u8; NAME_FIELD], value: &[u8]) {
    let n = value.len().min(NAME_FIELD);
    field.fill(0);
    field[..n].copy_from_slice(&value[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// (path bytes, link bytes, type, mode, data) of one entry as read back.
    type ReadEntry = (Vec<u8>, Option<Vec<u8>>, EntryType, u32, Vec<u8>);

    /// Every entry, read back with the tar crate.
    fn read_back(tgz: &[u8]) -> Vec<ReadEntry> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path_bytes().into_owned();
                let link = e.link_name_bytes().map(|l| l.into_owned());
                let kind = e.header().entry_type();
                let mode = e.header().mode().unwrap();
                assert_eq!(e.header().mtime().unwrap(), 0);
                assert_eq!(e.header().uid().unwrap(), 0);
                assert_eq!(e.header().gid().unwrap(), 0);
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, link, kind, mode, data)
            })
            .collect()
    }

    fn sample() -> TarGz {
        TarGz::new()
            .dir("bin/", 0o755)
            .file("bin/containerd", 0o755, b"\x7fELF fake")
            .file("README.md", 0o644, "hello\n")
            .symlink("bin/link", "containerd")
            .hardlink("bin/hard", "bin/containerd")
    }

    #[test]
    fn same_input_same_bytes_and_reproducible_gzip_header() {
        let a = sample().build();
        assert_eq!(a, sample().build());
        assert_eq!(&a[..4], &[0x1f, 0x8b, 8, 0], "gzip, deflate, no FNAME/FEXTRA flags");
        assert_eq!(&a[4..8], &[0, 0, 0, 0], "mtime 0");
        assert_ne!(a, sample().file("x", 0o644, "").build());
    }

    #[test]
    fn tar_crate_reads_back_every_entry() {
        let entries = read_back(&sample().build());
        let summary: Vec<_> = entries
            .iter()
            .map(|(p, l, k, m, d)| (String::from_utf8(p.clone()).unwrap(), l.clone(), *k, *m, d.len()))
            .collect();
        assert_eq!(
            summary,
            [
                ("bin/".into(), None, EntryType::Directory, 0o755, 0),
                ("bin/containerd".into(), None, EntryType::Regular, 0o755, 9),
                ("README.md".into(), None, EntryType::Regular, 0o644, 6),
                ("bin/link".into(), Some(b"containerd".to_vec()), EntryType::Symlink, 0o777, 0),
                ("bin/hard".into(), Some(b"bin/containerd".to_vec()), EntryType::Link, 0o644, 0),
            ]
        );
        assert_eq!(entries[2].4, b"hello\n");
    }

    #[test]
    fn hostile_names_survive_verbatim_in_the_tar_crate() {
        let entries = read_back(&TarGz::hostile_sample().build());
        let names: Vec<&[u8]> = entries.iter().map(|e| e.0.as_slice()).collect();
        assert_eq!(
            names,
            [
                &b"../escape.txt"[..],
                b"/etc/absolute.txt",
                b"bin/../../up",
                b"bad\xffname",
                b"fifo",
                b"evil-link",
                b"evil-hard",
            ]
        );
        assert_eq!(entries[4].2, EntryType::Fifo);
        assert_eq!(entries[5].1.as_deref(), Some(&b"../../../etc/passwd"[..]));
        assert_eq!(entries[6].1.as_deref(), Some(&b"/etc/shadow"[..]));
    }

    #[test]
    fn long_names_use_gnu_records_and_round_trip() {
        let long = format!("{}/file", "d".repeat(150));
        let long_target = format!("../{}", "t".repeat(120));
        let tgz = TarGz::new()
            .file(&long, 0o600, "data")
            .symlink("short", &long_target)
            .raw_entry(format!("../{long}"), EntryType::Regular, 0o644, "")
            .build();
        let entries = read_back(&tgz);
        assert_eq!(entries.len(), 3, "long-name records are not entries of their own");
        assert_eq!(entries[0].0, long.as_bytes());
        assert_eq!(entries[0].4, b"data");
        assert_eq!(entries[1].1.as_deref(), Some(long_target.as_bytes()));
        assert_eq!(entries[2].0, format!("../{long}").as_bytes());
    }

    #[test]
    fn empty_archive_is_valid() {
        assert!(read_back(&TarGz::new().build()).is_empty());
    }
}
