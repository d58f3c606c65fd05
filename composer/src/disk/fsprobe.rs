//! Recognising the filesystem inside a partition from its superblock, without mounting.
//!
//! Only the fields composer decides on are read: the kind (ext2/3/4 are edited or read with
//! e2fsprogs, btrfs is recognised so the error can say so), the label (Ubuntu's root is found
//! by `cloudimg-rootfs`), and the ext block and inode counts for the free-space check.

use std::io::{Read, Seek, SeekFrom};

use serde::Serialize;

/// What a partition holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsKind {
    /// ext2 (no journal, no extents).
    Ext2,
    /// ext3 (journal, no extents).
    Ext3,
    /// ext4 (extents, 64bit or flex_bg).
    Ext4,
    /// btrfs.
    Btrfs,
    /// FAT12/16/32.
    Vfat,
    /// squashfs.
    Squashfs,
    /// Nothing recognised (blank, or a raw payload such as GRUB's core).
    Unknown,
}

impl FsKind {
    /// The name `blkid` would print.
    pub fn as_str(self) -> &'static str {
        match self {
            FsKind::Ext2 => "ext2",
            FsKind::Ext3 => "ext3",
            FsKind::Ext4 => "ext4",
            FsKind::Btrfs => "btrfs",
            FsKind::Vfat => "vfat",
            FsKind::Squashfs => "squashfs",
            FsKind::Unknown => "unknown",
        }
    }

    /// Whether e2fsprogs can read it.
    pub fn is_ext(self) -> bool {
        matches!(self, FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4)
    }
}

/// The ext superblock fields composer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ExtInfo {
    /// Block size in bytes.
    pub block_size: u64,
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks (including the root-reserved ones, which composed files may use: systemd
    /// reads them as root).
    pub free_blocks: u64,
    /// Blocks reserved for root.
    pub reserved_blocks: u64,
    /// Free inodes.
    pub free_inodes: u32,
    /// `needs_recovery`: the journal holds unreplayed transactions (the image was not cleanly
    /// unmounted), so offline edits would be overwritten at the next mount.
    pub needs_recovery: bool,
}

impl ExtInfo {
    /// Free space in bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free_blocks * self.block_size
    }

    /// Size of the filesystem in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks * self.block_size
    }
}

/// The result of probing a partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// Filesystem kind.
    pub kind: FsKind,
    /// Filesystem label, if the kind has one and it is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// ext details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ext: Option<ExtInfo>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn label(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
    let s = String::from_utf8_lossy(&bytes[..end]).trim_end().to_owned();
    (!s.is_empty()).then_some(s)
}

/// Reads `len` bytes at `offset`, or fewer near the end of the partition.
fn read_upto(f: &mut (impl Read + Seek), offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len);
    f.take(len as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Probes the partition of `size` bytes at `offset`.
pub fn probe(f: &mut (impl Read + Seek), offset: u64, size: u64) -> std::io::Result<Probe> {
    let unknown = Probe { kind: FsKind::Unknown, label: None, ext: None };
    let head = read_upto(f, offset, 4096.min(size as usize))?;
    if head.len() >= 2048 && le16(&head, 1024 + 0x38) == 0xEF53 {
        let sb = &head[1024..2048];
        let compat = le32(sb, 0x5C);
        let incompat = le32(sb, 0x60);
        let is64 = incompat & 0x80 != 0;
        let hi = |at: usize| if is64 { u64::from(le32(sb, at)) << 32 } else { 0 };
        let kind = if incompat & (0x40 | 0x80 | 0x200) != 0 {
            FsKind::Ext4
        } else if compat & 0x4 != 0 {
            FsKind::Ext3
        } else {
            FsKind::Ext2
        };
        let ext = ExtInfo {
            block_size: 1024u64 << le32(sb, 0x18).min(16),
            blocks: u64::from(le32(sb, 0x4)) | hi(0x150),
            reserved_blocks: u64::from(le32(sb, 0x8)) | hi(0x154),
            free_blocks: u64::from(le32(sb, 0xC)) | hi(0x158),
            free_inodes: le32(sb, 0x10),
            needs_recovery: incompat & 0x4 != 0,
        };
        return Ok(Probe { kind, label: label(&sb[0x78..0x88]), ext: Some(ext) });
    }
    if head.len() >= 4 && &head[..4] == b"hsqs" {
        return Ok(Probe { kind: FsKind::Squashfs, label: None, ext: None });
    }
    if head.len() >= 512 && head[510..512] == [0x55, 0xAA] {
        if &head[0x52..0x5A] == b"FAT32   " {
            return Ok(Probe { kind: FsKind::Vfat, label: label(&head[0x47..0x52]), ext: None });
        }
        if &head[0x36..0x3B] == b"FAT16" || &head[0x36..0x3B] == b"FAT12" {
            return Ok(Probe { kind: FsKind::Vfat, label: label(&head[0x2B..0x36]), ext: None });
        }
    }
    if size >= 0x10000 + 0x1000 {
        let sb = read_upto(f, offset + 0x10000, 0x1000)?;
        if sb.len() >= 0x22B && &sb[0x40..0x48] == b"_BHRfS_M" {
            return Ok(Probe { kind: FsKind::Btrfs, label: label(&sb[0x12B..0x22B]), ext: None });
        }
    }
    Ok(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn recognises_ext4_and_reads_counts() {
        let mut d = vec![0u8; 8192];
        let sb = 1024;
        d[sb + 0x38..sb + 0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        d[sb + 0x4..sb + 0x8].copy_from_slice(&1000u32.to_le_bytes());
        d[sb + 0xC..sb + 0x10].copy_from_slice(&600u32.to_le_bytes());
        d[sb + 0x10..sb + 0x14].copy_from_slice(&77u32.to_le_bytes());
        d[sb + 0x18..sb + 0x1C].copy_from_slice(&2u32.to_le_bytes());
        d[sb + 0x60..sb + 0x64].copy_from_slice(&0x240u32.to_le_bytes());
        d[sb + 0x78..sb + 0x7C].copy_from_slice(b"ROOT");
        let p = probe(&mut Cursor::new(&d), 0, d.len() as u64).unwrap();
        assert_eq!(p.kind, FsKind::Ext4);
        assert_eq!(p.label.as_deref(), Some("ROOT"));
        let e = p.ext.unwrap();
        assert_eq!((e.block_size, e.blocks, e.free_blocks, e.free_inodes), (4096, 1000, 600, 77));
        assert_eq!(e.free_bytes(), 600 * 4096);

        d[sb + 0x60..sb + 0x64].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(probe(&mut Cursor::new(&d), 0, 8192).unwrap().kind, FsKind::Ext2);
    }

    #[test]
    fn recognises_btrfs_and_blank() {
        let mut d = vec![0u8; 0x20000];
        assert_eq!(probe(&mut Cursor::new(&d), 0, d.len() as u64).unwrap().kind, FsKind::Unknown);
        d[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
        d[0x1012B..0x1012E].copy_from_slice(b"USR");
        let p = probe(&mut Cursor::new(&d), 0, d.len() as u64).unwrap();
        assert_eq!((p.kind, p.label.as_deref()), (FsKind::Btrfs, Some("USR")));
    }
}
