//! On-disk encodings of squashfs 4.0 structures (all little-endian).

use super::metadata::{MetaPos, METADATA_SIZE};

/// `hsqs`.
pub(crate) const MAGIC: u32 = 0x7371_7368;
/// Size of the superblock at offset 0.
pub(crate) const SUPERBLOCK_SIZE: u64 = 96;
/// Marks an absent table (xattrs, export) or an absent fragment.
pub(crate) const NONE_U64: u64 = u64::MAX;
/// "No fragment" / "no xattr" in 32-bit fields.
pub(crate) const NONE_U32: u32 = u32::MAX;
/// Set in a data block or fragment size word when the bytes are stored uncompressed.
pub(crate) const STORED_BLOCK: u32 = 1 << 24;
/// Images are padded to this multiple, so loop devices see whole sectors.
pub(crate) const PAD_TO: u64 = 4096;

/// Superblock flags.
pub(crate) const FLAG_NO_XATTRS: u16 = 0x0200;
pub(crate) const FLAG_COMPRESSOR_OPTIONS: u16 = 0x0400;

/// Inode types; directory entries always carry the basic type.
pub(crate) const BASIC_DIR: u16 = 1;
pub(crate) const BASIC_FILE: u16 = 2;
pub(crate) const BASIC_SYMLINK: u16 = 3;
pub(crate) const EXT_DIR: u16 = 8;
pub(crate) const EXT_FILE: u16 = 9;

/// Most entries one directory header may cover.
pub(crate) const DIR_HEADER_MAX_ENTRIES: usize = 256;

/// The superblock; everything not listed here is fixed by this writer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Superblock {
    pub inode_count: u32,
    pub mtime: u32,
    pub block_size: u32,
    pub block_log: u16,
    pub fragment_count: u32,
    pub compressor: u16,
    pub flags: u16,
    pub id_count: u16,
    pub root_inode: u64,
    pub bytes_used: u64,
    pub id_table: u64,
    pub inode_table: u64,
    pub directory_table: u64,
    pub fragment_table: u64,
}

impl Superblock {
    pub(crate) fn to_bytes(&self) -> [u8; SUPERBLOCK_SIZE as usize] {
        let mut b = Vec::with_capacity(SUPERBLOCK_SIZE as usize);
        put32(&mut b, MAGIC);
        put32(&mut b, self.inode_count);
        put32(&mut b, self.mtime);
        put32(&mut b, self.block_size);
        put32(&mut b, self.fragment_count);
        put16(&mut b, self.compressor);
        put16(&mut b, self.block_log);
        put16(&mut b, self.flags);
        put16(&mut b, self.id_count);
        put16(&mut b, 4);
        put16(&mut b, 0);
        put64(&mut b, self.root_inode);
        put64(&mut b, self.bytes_used);
        put64(&mut b, self.id_table);
        put64(&mut b, NONE_U64); // xattr id table
        put64(&mut b, self.inode_table);
        put64(&mut b, self.directory_table);
        put64(&mut b, self.fragment_table);
        put64(&mut b, NONE_U64); // export table
        b.try_into().expect("superblock is 96 bytes")
    }
}

pub(crate) fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// The header shared by every inode; uid and gid always use id index 0 (root).
///
/// `mode` holds permission bits only: the file type comes from the inode type, and the kernel
/// rejects inodes whose mode carries `S_IFMT` bits.
fn inode_header(b: &mut Vec<u8>, kind: u16, mode: u16, mtime: u32, number: u32) {
    debug_assert_eq!(mode & !0o7777, 0);
    put16(b, kind);
    put16(b, mode);
    put16(b, 0);
    put16(b, 0);
    put32(b, mtime);
    put32(b, number);
}

/// Fields common to every inode this writer produces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InodeBase {
    /// Permission bits (`0o7777`), without the type.
    pub permissions: u16,
    pub mtime: u32,
    pub number: u32,
}

/// One entry of an extended directory's lookup index: the first directory header that
/// starts in a given metadata block of the directory table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirIndex<'a> {
    /// Offset of the header inside this directory's listing.
    pub listing_offset: u32,
    /// The directory-table block holding that header.
    pub block: u32,
    /// Name of the header's first entry.
    pub name: &'a str,
}

/// A directory inode: extended when it has a lookup index or its listing needs a 32-bit size.
#[derive(Debug, Clone)]
pub(crate) struct DirInode<'a> {
    pub base: InodeBase,
    pub listing: MetaPos,
    /// Listing bytes + 3 (the kernel counts the implicit `.` and `..`).
    pub file_size: u32,
    pub nlink: u32,
    pub parent: u32,
    pub index: Vec<DirIndex<'a>>,
}

impl DirInode<'_> {
    pub(crate) fn encode(&self, b: &mut Vec<u8>) {
        let mode = self.base.permissions;
        let block = u32::try_from(self.listing.block).expect("directory table below 4 GiB checked by caller");
        let basic_size = u16::try_from(self.file_size).ok().filter(|_| self.index.is_empty());
        if let Some(size) = basic_size {
            inode_header(b, BASIC_DIR, mode, self.base.mtime, self.base.number);
            put32(b, block);
            put32(b, self.nlink);
            put16(b, size);
            put16(b, self.listing.offset);
            put32(b, self.parent);
        } else {
            inode_header(b, EXT_DIR, mode, self.base.mtime, self.base.number);
            put32(b, self.nlink);
            put32(b, self.file_size);
            put32(b, block);
            put32(b, self.parent);
            put16(b, self.index.len() as u16);
            put16(b, self.listing.offset);
            put32(b, NONE_U32);
            for i in &self.index {
                put32(b, i.listing_offset);
                put32(b, i.block);
                put32(b, i.name.len() as u32 - 1);
                b.extend_from_slice(i.name.as_bytes());
            }
        }
    }
}

/// A regular file inode.
#[derive(Debug, Clone)]
pub(crate) struct FileInode<'a> {
    pub base: InodeBase,
    /// Absolute offset of the first data block (0 when there is none).
    pub start: u64,
    pub size: u64,
    /// Bytes not stored because their blocks were all zero (recorded by extended inodes).
    pub sparse: u64,
    /// (fragment index, offset inside the fragment) for the tail end.
    pub fragment: Option<(u32, u32)>,
    /// Size word of each full block.
    pub blocks: &'a [u32],
}

impl FileInode<'_> {
    pub(crate) fn encode(&self, b: &mut Vec<u8>) {
        let mode = self.base.permissions;
        let (frag, frag_offset) = self.fragment.unwrap_or((NONE_U32, 0));
        // Like mksquashfs, sparse files stay basic: readers find holes from the zero-sized
        // entries in the block list, and sqfsdiff reports a differing inode type otherwise.
        match (u32::try_from(self.start), u32::try_from(self.size)) {
            (Ok(start), Ok(size)) => {
                inode_header(b, BASIC_FILE, mode, self.base.mtime, self.base.number);
                put32(b, start);
                put32(b, frag);
                put32(b, frag_offset);
                put32(b, size);
            }
            _ => {
                inode_header(b, EXT_FILE, mode, self.base.mtime, self.base.number);
                put64(b, self.start);
                put64(b, self.size);
                put64(b, self.sparse);
                put32(b, 1);
                put32(b, frag);
                put32(b, frag_offset);
                put32(b, NONE_U32);
            }
        }
        for &word in self.blocks {
            put32(b, word);
        }
    }
}

/// A symlink inode.
pub(crate) fn encode_symlink(b: &mut Vec<u8>, base: InodeBase, target: &str) {
    inode_header(b, BASIC_SYMLINK, 0o777, base.mtime, base.number);
    put32(b, 1);
    put32(b, target.len() as u32);
    b.extend_from_slice(target.as_bytes());
}

/// One child as a directory listing needs it.
#[derive(Debug, Clone)]
pub(crate) struct DirEntry<'a> {
    pub name: &'a str,
    pub inode: MetaPos,
    pub number: u32,
    pub basic_type: u16,
}

/// One directory header and the entries it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run {
    pub entries: std::ops::Range<usize>,
    /// The header opens a new 8 KiB stretch of the listing and gets a lookup index entry.
    pub indexed: bool,
}

/// Splits sorted entries into directory headers the way mksquashfs does: a header covers at
/// most 256 entries that share one inode-table block and whose inode numbers are within an i16
/// of its base, and a new header (with an index entry) starts where an entry would reach more
/// than 8 KiB past the previous index point. Matching mksquashfs keeps the choice between basic
/// and extended (indexed) directory inodes identical to it.
pub(crate) fn header_runs(entries: &[DirEntry<'_>]) -> Vec<Run> {
    const HEADER: usize = 12;
    const ENTRY: usize = 8;
    let mut runs = Vec::new();
    let (mut start, mut indexed) = (0, false);
    let (mut listing, mut index_mark) = (HEADER, 0);
    for (i, e) in entries.iter().enumerate() {
        let first = &entries[start];
        let delta = i64::from(e.number) - i64::from(first.number);
        let crosses = listing + ENTRY + e.name.len() - index_mark > METADATA_SIZE;
        if i > start
            && (i - start == DIR_HEADER_MAX_ENTRIES
                || e.inode.block != first.inode.block
                || i16::try_from(delta).is_err()
                || crosses)
        {
            runs.push(Run { entries: start..i, indexed });
            if crosses {
                index_mark = listing;
            }
            (start, indexed) = (i, crosses);
            listing += HEADER;
        }
        listing += ENTRY + e.name.len();
    }
    if start < entries.len() {
        runs.push(Run { entries: start..entries.len(), indexed });
    }
    runs
}

/// Encodes one directory header and its entries.
pub(crate) fn encode_dir_run(b: &mut Vec<u8>, run: &[DirEntry<'_>]) {
    let first = &run[0];
    put32(b, run.len() as u32 - 1);
    put32(b, u32::try_from(first.inode.block).expect("inode table below 4 GiB checked by caller"));
    put32(b, first.number);
    for e in run {
        put16(b, e.inode.offset);
        put16(b, (i64::from(e.number) - i64::from(first.number)) as i16 as u16);
        put16(b, e.basic_type);
        put16(b, e.name.len() as u16 - 1);
        b.extend_from_slice(e.name.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, block: u64, number: u32) -> DirEntry<'_> {
        DirEntry { name, inode: MetaPos { block, offset: 0 }, number, basic_type: BASIC_FILE }
    }

    #[test]
    fn superblock_layout() {
        let sb = Superblock {
            inode_count: 7,
            block_size: 131072,
            block_log: 17,
            compressor: 1,
            flags: FLAG_NO_XATTRS,
            id_count: 1,
            root_inode: 0xbe,
            bytes_used: 0x129,
            id_table: 0x121,
            inode_table: 0x60,
            directory_table: 0xb0,
            fragment_table: 0xf6,
            ..Superblock::default()
        };
        let b = sb.to_bytes();
        assert_eq!(&b[0..4], b"hsqs");
        assert_eq!(&b[0x1c..0x20], &[4, 0, 0, 0], "version 4.0");
        assert_eq!(u16::from_le_bytes([b[0x16], b[0x17]]), 17);
        assert_eq!(u64::from_le_bytes(b[0x28..0x30].try_into().unwrap()), 0x129);
        assert_eq!(&b[0x38..0x40], &[0xff; 8], "no xattr table");
        assert_eq!(&b[0x58..0x60], &[0xff; 8], "no export table");
        assert_eq!(u64::from_le_bytes(b[0x50..0x58].try_into().unwrap()), 0xf6);
    }

    fn ranges(runs: &[Run]) -> Vec<std::ops::Range<usize>> {
        runs.iter().map(|r| r.entries.clone()).collect()
    }

    #[test]
    fn header_runs_split_at_256_block_change_and_i16() {
        let many: Vec<_> = (0..600).map(|i| entry("n", 0, 1 + i)).collect();
        assert_eq!(ranges(&header_runs(&many)), [0..256, 256..512, 512..600]);
        assert!(header_runs(&many).iter().all(|r| !r.indexed), "600 * 9 bytes stay below 8 KiB");

        let blocks = [entry("a", 0, 1), entry("b", 0, 2), entry("c", 40, 3), entry("d", 40, 4)];
        assert_eq!(ranges(&header_runs(&blocks)), [0..2, 2..4]);

        let far = [entry("a", 0, 1), entry("b", 0, 1 + 32767), entry("c", 0, 1 + 32768)];
        assert_eq!(ranges(&header_runs(&far)), [0..2, 2..3]);

        assert!(header_runs(&[]).is_empty());
    }

    #[test]
    fn header_runs_index_every_8k_of_listing() {
        // 92-byte names make 100-byte entries: the header (12) and 81 entries fill 8112 bytes;
        // the 82nd would end at 8212 > 8192, so it opens an indexed header at offset 8112.
        let name = "x".repeat(92);
        let entries: Vec<_> = (0..200).map(|i| entry(&name, 0, 1 + i)).collect();
        let runs = header_runs(&entries);
        assert_eq!(ranges(&runs), [0..81, 81..162, 162..200]);
        assert_eq!(runs.iter().map(|r| r.indexed).collect::<Vec<_>>(), [false, true, true]);
        // The next stretch is measured from that header: 12 + 81 entries again.
        let mut b = Vec::new();
        for r in &runs[..2] {
            encode_dir_run(&mut b, &entries[r.entries.clone()]);
        }
        assert_eq!(b.len(), 2 * 12 + 162 * 100);
    }

    #[test]
    fn dir_run_encoding() {
        let run = [entry("ab", 0x20, 10), entry("c", 0x20, 12)];
        let mut b = Vec::new();
        encode_dir_run(&mut b, &run);
        assert_eq!(&b[..12], &[1, 0, 0, 0, 0x20, 0, 0, 0, 10, 0, 0, 0]);
        assert_eq!(&b[12..22], &[0, 0, 0, 0, 2, 0, 1, 0, b'a', b'b']);
        assert_eq!(&b[22..], &[0, 0, 2, 0, 2, 0, 0, 0, b'c']);
    }

    #[test]
    fn file_inode_uses_extended_form_only_when_needed() {
        let base = InodeBase { permissions: 0o755, mtime: 5, number: 3 };
        let mut b = Vec::new();
        FileInode { base, start: 96, size: 10, sparse: 0, fragment: Some((0, 4)), blocks: &[] }.encode(&mut b);
        assert_eq!(b.len(), 32);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), BASIC_FILE);
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 0o755, "permissions only, no S_IFREG");

        let mut b = Vec::new();
        FileInode { base, start: 96, size: 1 << 20, sparse: 1 << 17, fragment: None, blocks: &[0, 5] }.encode(&mut b);
        assert_eq!((b.len(), u16::from_le_bytes([b[0], b[1]])), (32 + 8, BASIC_FILE), "sparse files stay basic");

        for (start, size, sparse) in [(1u64 << 32, 10u64, 0u64), (0, 1 << 32, 1 << 17)] {
            let mut b = Vec::new();
            FileInode { base, start, size, sparse, fragment: None, blocks: &[1, 2] }.encode(&mut b);
            assert_eq!(u16::from_le_bytes([b[0], b[1]]), EXT_FILE);
            assert_eq!(b.len(), 56 + 8);
            assert_eq!(&b[44..48], &[0xff; 4], "no fragment");
        }
    }

    #[test]
    fn dir_inode_switches_to_extended_above_u16() {
        let base = InodeBase { permissions: 0o700, mtime: 0, number: 9 };
        let listing = MetaPos { block: 0, offset: 12 };
        let mut b = Vec::new();
        DirInode { base, listing, file_size: 65535, nlink: 2, parent: 10, index: vec![] }.encode(&mut b);
        assert_eq!((b.len(), u16::from_le_bytes([b[0], b[1]])), (32, BASIC_DIR));
        let mut b = Vec::new();
        let index = vec![DirIndex { listing_offset: 8112, block: 300, name: "xyz" }];
        DirInode { base, listing, file_size: 9000, nlink: 2, parent: 10, index }.encode(&mut b);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), EXT_DIR, "an index needs the extended form");
        let mut b = Vec::new();
        let index = vec![DirIndex { listing_offset: 8000, block: 300, name: "xyz" }];
        DirInode { base, listing, file_size: 65536, nlink: 2, parent: 10, index }.encode(&mut b);
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), EXT_DIR);
        assert_eq!(b.len(), 40 + 12 + 3);
        assert_eq!(u16::from_le_bytes([b[32], b[33]]), 1, "index count");
    }
}
