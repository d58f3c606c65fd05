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

/// ext feature flags, as the superblock stores them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Features {
    /// `s_feature_compat`.
    pub compat: u32,
    /// `s_feature_incompat`.
    pub incompat: u32,
    /// `s_feature_ro_compat`.
    pub ro_compat: u32,
}

/// Incompatible features by bit, with e2fsprogs' names.
const INCOMPAT: [(u32, &str); 16] = [
    (0x1, "compression"),
    (0x2, "filetype"),
    (0x4, "needs_recovery"),
    (0x8, "journal_dev"),
    (0x10, "meta_bg"),
    (0x40, "extent"),
    (0x80, "64bit"),
    (0x100, "mmp"),
    (0x200, "flex_bg"),
    (0x400, "ea_inode"),
    (0x1000, "dirdata"),
    (0x2000, "metadata_csum_seed"),
    (0x4000, "large_dir"),
    (0x8000, "inline_data"),
    (0x10000, "encrypt"),
    (0x20000, "casefold"),
];

/// Read-only-compatible features by bit.
const RO_COMPAT: [(u32, &str); 17] = [
    (0x1, "sparse_super"),
    (0x2, "large_file"),
    (0x4, "btree_dir"),
    (0x8, "huge_file"),
    (0x10, "uninit_bg"),
    (0x20, "dir_nlink"),
    (0x40, "extra_isize"),
    (0x80, "snapshot"),
    (0x100, "quota"),
    (0x200, "bigalloc"),
    (0x400, "metadata_csum"),
    (0x800, "replica"),
    (0x1000, "read-only"),
    (0x2000, "project"),
    (0x4000, "shared_blocks"),
    (0x8000, "verity"),
    (0x10000, "orphan_present"),
];

const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const RO_COMPAT_ORPHAN_PRESENT: u32 = 0x10000;
/// What ext2 and ext3 may have; anything beyond makes it ext4, as blkid decides.
const EXT3_INCOMPAT: u32 = 0x2 | INCOMPAT_RECOVER | 0x10;
const EXT3_RO_COMPAT: u32 = 0x1 | 0x2 | 0x4;
const COMPAT_HAS_JOURNAL: u32 = 0x4;

/// Why composer cannot edit a filesystem with this feature correctly.
fn refusal(incompat: bool, bit: u32) -> Option<&'static str> {
    Some(match (incompat, bit) {
        (true, 0x1) | (true, 0x1000) | (false, 0x80) | (false, 0x800) => "e2fsprogs does not support it",
        (true, 0x8) => "this is an external journal device, not a filesystem",
        (true, 0x8000) => {
            "small files keep their data inside the inode, and debugfs cannot allocate blocks for such a file (composer copies images into blocks debugfs allocates)"
        }
        (false, 0x200) => {
            "blocks are allocated in clusters, which composer's space accounting and in-place copy do not handle"
        }
        (false, 0x1000) => "the filesystem is marked read-only",
        (false, 0x4000) => "blocks are shared between files, and writing into them in place is unsafe",
        _ => return None,
    })
}

impl Features {
    /// Names of the features set, e2fsprogs spelling; unknown bits as `incompat:0x…`.
    pub fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (set, table, kind) in
            [(self.incompat, &INCOMPAT[..], "incompat"), (self.ro_compat, &RO_COMPAT[..], "ro_compat")]
        {
            for bit in (0..32).map(|i| 1u32 << i).filter(|b| set & b != 0) {
                match table.iter().find(|(b, _)| *b == bit) {
                    Some((_, name)) => out.push((*name).to_owned()),
                    None => out.push(format!("{kind}:{bit:#x}")),
                }
            }
        }
        out
    }

    /// The features composer cannot handle, each with the reason: `inline_data`,
    /// `bigalloc`, `read-only`, `shared_blocks`, an external journal, the ones e2fsprogs
    /// does not support, any bit unknown to e2fsprogs 1.47 (an unknown incompatible or
    /// read-only-compatible feature means writing could corrupt it), and a missing `extent`
    /// (images are written through their extent map).
    pub fn unsupported(&self) -> Vec<(String, &'static str)> {
        let mut out = Vec::new();
        for (set, table, incompat) in [(self.incompat, &INCOMPAT[..], true), (self.ro_compat, &RO_COMPAT[..], false)] {
            for bit in (0..32).map(|i| 1u32 << i).filter(|b| set & b != 0) {
                match table.iter().find(|(b, _)| *b == bit) {
                    Some((_, name)) => {
                        if let Some(why) = refusal(incompat, bit) {
                            out.push(((*name).to_owned(), why));
                        }
                    }
                    None => out.push((
                        format!("{}:{bit:#x}", if incompat { "incompat" } else { "ro_compat" }),
                        "an unknown feature, which neither e2fsprogs nor composer can edit safely",
                    )),
                }
            }
        }
        if self.incompat & INCOMPAT_EXTENTS == 0 {
            out.push((
                "^extent".to_owned(),
                "files use block maps, and composer writes images through their extent map",
            ));
        }
        out
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
    /// Total inodes.
    pub inodes: u32,
    /// Free inodes.
    pub free_inodes: u32,
    /// `needs_recovery`: the journal holds unreplayed transactions (the image was not cleanly
    /// unmounted), so offline edits would be overwritten at the next mount.
    pub needs_recovery: bool,
    /// `s_state`: bit 0 "cleanly unmounted", bit 1 "errors detected".
    pub state: u16,
    /// `s_error_count`: errors the kernel recorded since the last e2fsck.
    pub error_count: u32,
    /// `s_last_orphan` or `orphan_present`: inodes deleted while open, to be released by
    /// the next mount or e2fsck.
    pub orphans: bool,
    /// Feature flags.
    pub features: Features,
}

const STATE_VALID: u16 = 0x1;
const STATE_ERROR: u16 = 0x2;

impl ExtInfo {
    /// Free space in bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free_blocks * self.block_size
    }

    /// Size of the filesystem in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks * self.block_size
    }

    /// Why the filesystem is not in a state to be edited offline, in words for the user:
    /// not marked clean, marked with errors, errors recorded, or orphans pending. `e2fsck -n`
    /// passes such filesystems (it only reports what it would repair in the metadata it
    /// walks), so this is checked separately.
    pub fn unclean(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.state & STATE_VALID == 0 {
            why.push("is not marked clean (state lacks 'clean')".to_owned());
        }
        if self.state & STATE_ERROR != 0 {
            why.push("is marked as having errors (state 'with errors')".to_owned());
        }
        if self.error_count != 0 {
            why.push(format!("has {} filesystem errors recorded by the kernel", self.error_count));
        }
        if self.orphans {
            why.push("has orphaned inodes waiting to be released".to_owned());
        }
        (!why.is_empty()).then(|| why.join(", "))
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
    /// ext details, when the superblock is consistent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ext: Option<ExtInfo>,
    /// Why an ext superblock was not understood (then `ext` is absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
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

/// Which ext the superblock's features make it.
fn ext_kind(f: &Features) -> FsKind {
    if f.incompat & !EXT3_INCOMPAT != 0 || f.ro_compat & !EXT3_RO_COMPAT != 0 {
        FsKind::Ext4
    } else if f.compat & COMPAT_HAS_JOURNAL != 0 {
        FsKind::Ext3
    } else {
        FsKind::Ext2
    }
}

/// Decodes the 1024-byte ext superblock, refusing counts that cannot be true (the
/// partition's bytes come from whoever made the image; a block count times a block size
/// that overflows would otherwise size the filesystem at a few bytes).
pub fn parse_ext_superblock(sb: &[u8]) -> Result<ExtInfo, String> {
    if sb.len() < 1024 || le16(sb, 0x38) != 0xEF53 {
        return Err("no ext superblock (magic 0xEF53 at byte 1080)".into());
    }
    let features = Features { compat: le32(sb, 0x5C), incompat: le32(sb, 0x60), ro_compat: le32(sb, 0x64) };
    let is64 = features.incompat & INCOMPAT_64BIT != 0;
    let hi = |at: usize| if is64 { u64::from(le32(sb, at)) << 32 } else { 0 };
    let log = le32(sb, 0x18);
    // ext4 supports 1 KiB to 64 KiB blocks.
    if log > 6 {
        return Err(format!("the superblock's block size is 2^(10+{log}) bytes; expected 1 KiB to 64 KiB"));
    }
    let block_size = 1024u64 << log;
    let blocks = u64::from(le32(sb, 0x4)) | hi(0x150);
    let reserved_blocks = u64::from(le32(sb, 0x8)) | hi(0x154);
    let free_blocks = u64::from(le32(sb, 0xC)) | hi(0x158);
    let (inodes, free_inodes) = (le32(sb, 0x0), le32(sb, 0x10));
    if blocks == 0 || blocks.checked_mul(block_size).is_none() {
        return Err(format!(
            "the superblock counts {blocks} blocks of {block_size} bytes, which is no filesystem size"
        ));
    }
    if free_blocks > blocks {
        return Err(format!("the superblock counts {free_blocks} free blocks of {blocks} in total"));
    }
    if reserved_blocks > blocks {
        return Err(format!("the superblock reserves {reserved_blocks} blocks of {blocks} in total"));
    }
    if free_inodes > inodes {
        return Err(format!("the superblock counts {free_inodes} free inodes of {inodes} in total"));
    }
    Ok(ExtInfo {
        block_size,
        blocks,
        reserved_blocks,
        free_blocks,
        inodes,
        free_inodes,
        needs_recovery: features.incompat & INCOMPAT_RECOVER != 0,
        state: le16(sb, 0x3A),
        error_count: le32(sb, 0x194),
        orphans: le32(sb, 0xE8) != 0 || features.ro_compat & RO_COMPAT_ORPHAN_PRESENT != 0,
        features,
    })
}

/// Probes the partition of `size` bytes at `offset`.
pub fn probe(f: &mut (impl Read + Seek), offset: u64, size: u64) -> std::io::Result<Probe> {
    let unknown = Probe { kind: FsKind::Unknown, label: None, ext: None, problem: None };
    let head = read_upto(f, offset, 4096.min(size) as usize)?;
    if head.len() >= 2048 && le16(&head, 1024 + 0x38) == 0xEF53 {
        let sb = &head[1024..2048];
        let features = Features { compat: le32(sb, 0x5C), incompat: le32(sb, 0x60), ro_compat: le32(sb, 0x64) };
        let (ext, problem) = match parse_ext_superblock(sb) {
            Ok(e) => (Some(e), None),
            Err(p) => (None, Some(p)),
        };
        return Ok(Probe { kind: ext_kind(&features), label: label(&sb[0x78..0x88]), ext, problem });
    }
    if head.len() >= 4 && &head[..4] == b"hsqs" {
        return Ok(Probe { kind: FsKind::Squashfs, ..unknown });
    }
    if head.len() >= 512 && head[510..512] == [0x55, 0xAA] {
        if &head[0x52..0x5A] == b"FAT32   " {
            return Ok(Probe { kind: FsKind::Vfat, label: label(&head[0x47..0x52]), ..unknown });
        }
        if &head[0x36..0x3B] == b"FAT16" || &head[0x36..0x3B] == b"FAT12" {
            return Ok(Probe { kind: FsKind::Vfat, label: label(&head[0x2B..0x36]), ..unknown });
        }
    }
    if size >= 0x10000 + 0x1000 {
        if let Some(at) = offset.checked_add(0x10000) {
            let sb = read_upto(f, at, 0x1000)?;
            if sb.len() >= 0x22B && &sb[0x40..0x48] == b"_BHRfS_M" {
                return Ok(Probe { kind: FsKind::Btrfs, label: label(&sb[0x12B..0x22B]), ..unknown });
            }
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
        d[sb..sb + 4].copy_from_slice(&100u32.to_le_bytes());
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

        assert_eq!(e.unclean(), Some("is not marked clean (state lacks 'clean')".to_owned()));
        assert_eq!(e.features.unsupported(), []);

        d[sb + 0x60..sb + 0x64].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(probe(&mut Cursor::new(&d), 0, 8192).unwrap().kind, FsKind::Ext2);
    }

    fn ext4() -> Vec<u8> {
        let mut d = vec![0u8; 4096];
        let sb = 1024;
        d[sb..sb + 4].copy_from_slice(&100u32.to_le_bytes());
        d[sb + 0x4..sb + 0x8].copy_from_slice(&1000u32.to_le_bytes());
        d[sb + 0x38..sb + 0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        d[sb + 0x3A..sb + 0x3C].copy_from_slice(&1u16.to_le_bytes());
        d[sb + 0x60..sb + 0x64].copy_from_slice(&0x2C2u32.to_le_bytes());
        d
    }

    fn set32(d: &mut [u8], at: usize, v: u32) {
        d[1024 + at..1024 + at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn parsed(d: &[u8]) -> Probe {
        probe(&mut Cursor::new(d), 0, d.len() as u64).unwrap()
    }

    #[test]
    fn impossible_superblock_counts_are_problems_not_sizes() {
        let e = parsed(&ext4()).ext.unwrap();
        assert_eq!((e.block_size, e.unclean()), (1024, None));
        for (at, value, want) in [
            (0x18, 7, "block size is 2^(10+7) bytes"),
            (0x18, u32::MAX, "2^(10+4294967295)"),
            (0xC, 1001, "1001 free blocks of 1000"),
            (0x8, 5000, "reserves 5000 blocks of 1000"),
            (0x10, 101, "101 free inodes of 100"),
            (0x4, 0, "counts 0 blocks"),
        ] {
            let mut d = ext4();
            set32(&mut d, at, value);
            let p = parsed(&d);
            assert_eq!(p.kind, FsKind::Ext4);
            assert!(p.ext.is_none());
            assert!(p.problem.as_deref().unwrap().contains(want), "{at:#x}={value}: {:?}", p.problem);
        }
        // 64bit: a block count whose byte size overflows u64.
        let mut d = ext4();
        set32(&mut d, 0x60, 0x2C2 | 0x80);
        set32(&mut d, 0x18, 6);
        set32(&mut d, 0x150, u32::MAX);
        assert!(parsed(&d).problem.unwrap().contains("which is no filesystem size"));
    }

    #[test]
    fn error_state_and_features_are_reported() {
        let mut d = ext4();
        d[1024 + 0x3A] = 3;
        assert_eq!(parsed(&d).ext.unwrap().unclean().unwrap(), "is marked as having errors (state 'with errors')");
        let mut d = ext4();
        set32(&mut d, 0x194, 4);
        set32(&mut d, 0xE8, 12);
        assert_eq!(
            parsed(&d).ext.unwrap().unclean().unwrap(),
            "has 4 filesystem errors recorded by the kernel, has orphaned inodes waiting to be released"
        );

        let mut d = ext4();
        set32(&mut d, 0x60, 0x2C2 | 0x8000 | 0x4000_0000);
        set32(&mut d, 0x64, 0x200);
        let f = parsed(&d).ext.unwrap().features;
        let names: Vec<String> = f.unsupported().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["inline_data", "incompat:0x40000000", "bigalloc"]);
        assert!(f.names().contains(&"extent".to_owned()));
        // ext3 plus huge_file is ext4 to blkid, and has no extents.
        let mut d = ext4();
        set32(&mut d, 0x5C, 0x4);
        set32(&mut d, 0x60, 0x2);
        assert_eq!(parsed(&d).kind, FsKind::Ext3);
        set32(&mut d, 0x64, 0x8);
        let p = parsed(&d);
        assert_eq!(p.kind, FsKind::Ext4);
        assert_eq!(p.ext.unwrap().features.unsupported()[0].0, "^extent");
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
