//! Entry points of the fuzz targets in `fuzz/` (and of `tests/fuzz_corpus.rs`, which
//! replays their committed corpora): each decodes the fuzzer's bytes, runs the parser
//! production uses on them, and panics when an accepted result breaks an invariant the
//! rest of composer relies on. Not an API.

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use crate::disk::{e2fs, fsprobe, gpt::Gpt};

/// A disk image of any length (up to 2^64-1 bytes) that holds the fuzzer's bytes at its
/// start and at its end and zeros between, so a backup GPT in the last LBA and partitions
/// ending near 2^64 are reachable from a few kilobytes of input.
#[derive(Debug)]
pub struct VirtualDisk<'a> {
    head: &'a [u8],
    tail: &'a [u8],
    len: u64,
    pos: u64,
}

impl<'a> VirtualDisk<'a> {
    /// `[disk length: u64 LE][head length: u32 LE][head][tail]`; the length is raised to
    /// hold both parts.
    pub fn decode(data: &'a [u8]) -> Option<Self> {
        let len = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
        let split = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?) as usize;
        let rest = &data[12..];
        let (head, tail) = rest.split_at(split.min(rest.len()));
        let len = len.max((head.len() + tail.len()) as u64);
        Some(Self { head, tail, len, pos: 0 })
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it has no bytes (never: the decoded length holds both parts).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn byte(&self, at: u64) -> u8 {
        let tail_start = self.len - self.tail.len() as u64;
        if at < self.head.len() as u64 {
            self.head[at as usize]
        } else if at >= tail_start {
            self.tail[(at - tail_start) as usize]
        } else {
            0
        }
    }
}

impl Read for VirtualDisk<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = self.byte(self.pos + i as u64);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for VirtualDisk<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}

/// The GPT reader on a [`VirtualDisk`]: whatever it accepts lies inside the disk, is not
/// empty, and does not overlap.
pub fn gpt(data: &[u8]) {
    let Some(mut disk) = VirtualDisk::decode(data) else { return };
    let len = disk.len();
    let Ok(table) = Gpt::read_from(&mut disk, len, Path::new("fuzz.img")) else { return };
    let mut parts: Vec<_> = table.partitions.iter().collect();
    parts.sort_by_key(|p| p.offset);
    for p in &parts {
        let end = p.offset.checked_add(p.size).expect("partition end overflows");
        assert!(p.size > 0 && end <= len, "partition {} outside the disk: {p:?}", p.number);
    }
    for w in parts.windows(2) {
        assert!(w[0].offset + w[0].size <= w[1].offset, "overlap: {:?}", w);
    }
}

/// The filesystem probe on a partition holding the fuzzer's bytes: an ext superblock it
/// accepts has sizes that can be multiplied and compared without overflow.
pub fn ext_superblock(data: &[u8]) {
    let probe = fsprobe::probe(&mut Cursor::new(data), 0, data.len() as u64).expect("reading from memory");
    if let Some(e) = probe.ext {
        assert!((1024..=65536).contains(&e.block_size), "{e:?}");
        let size = e.blocks.checked_mul(e.block_size).expect("size overflows");
        assert!(e.free_blocks <= e.blocks && e.reserved_blocks <= e.blocks && e.free_inodes <= e.inodes, "{e:?}");
        assert!(e.free_bytes() <= size && e.size_bytes() == size);
        let _ = (e.unclean(), e.features.names(), e.features.unsupported());
    } else {
        assert!(probe.problem.is_none() || probe.kind.is_ext(), "{probe:?}");
    }
}

/// The debugfs output parsers; the first byte picks one (and, for a `stat` session, how
/// many paths debugfs reported as not found), the rest is the output.
pub fn debugfs_output(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    match selector % 4 {
        0 => {
            if let Ok(st) = e2fs::parse_stat(&text) {
                assert!(st.mode <= 0o7777, "{st:?}");
            }
        }
        1 => {
            if let Ok(entries) = e2fs::parse_ls(&text) {
                assert!(entries.iter().all(|e| !e.name.is_empty() && !e.name.contains('/') && e.name != "."));
            }
        }
        2 => {
            let section = e2fs::extents_section(&text, "/opt/extensions/k/k.raw").unwrap_or(&text);
            if let Ok(extents) = e2fs::parse_extents(section) {
                for e in extents {
                    assert!(
                        e.len > 0 && e.lblk.checked_add(e.len - 1).is_some() && e.pblk.checked_add(e.len - 1).is_some()
                    );
                }
            }
        }
        _ => {
            let paths = ["/etc/extensions".to_owned(), "/etc/extensions/kubernetes.raw".to_owned()];
            let not_found = usize::from(selector / 4 % 3);
            if let Ok(stats) = e2fs::parse_stat_session(&text, &paths, not_found) {
                assert_eq!(stats.len(), paths.len());
                assert_eq!(stats.iter().filter(|s| s.is_none()).count(), not_found);
            }
        }
    }
}
