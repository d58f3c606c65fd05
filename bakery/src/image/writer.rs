//! Assembles an image in mksquashfs order: superblock, compressor options, data and fragment
//! blocks, inode table, directory table, fragment table, id table, padding.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};

use super::compression::{self, Codec};
use super::data::{self, CodecSpec, DataSection, Source};
use super::format::{self, DirEntry, DirIndex, DirInode, FileInode, InodeBase, Superblock};
use super::metadata::{MetaPos, MetadataWriter};
use super::{ImageError, ImageOptions, ImageSummary};
use crate::tree::{Dir, Node, Tree};

/// Longest symlink target the kernel will follow (PATH_MAX without the NUL).
const MAX_SYMLINK_TARGET: usize = 4095;

/// The tree flattened in pre-order, which is also the inode numbering mksquashfs uses:
/// entries are numbered 1.. in pre-order and the root comes last.
struct Flat<'t> {
    /// `nodes[0]` is the root.
    nodes: Vec<FlatNode<'t>>,
    /// Regular files in data order (pre-order), indexed by `FlatKind::File::data`.
    sources: Vec<Source<'t>>,
}

struct FlatNode<'t> {
    name: &'t str,
    kind: FlatKind<'t>,
}

enum FlatKind<'t> {
    Dir { mode: u32, parent: usize, children: Vec<usize> },
    File { mode: u32, data: usize },
    Symlink(&'t str),
}

impl<'t> Flat<'t> {
    fn new(tree: &'t Tree) -> Result<Self, ImageError> {
        let mut flat = Flat { nodes: Vec::new(), sources: Vec::new() };
        flat.nodes.push(FlatNode {
            name: "",
            kind: FlatKind::Dir { mode: tree.root().mode, parent: 0, children: Vec::new() },
        });
        flat.visit(tree.root(), 0, "")?;
        if flat.nodes.len() >= u32::MAX as usize {
            return Err(ImageError::TooLarge(format!(
                "{} entries; squashfs numbers inodes with 32 bits",
                flat.nodes.len()
            )));
        }
        Ok(flat)
    }

    fn visit(&mut self, dir: &'t Dir, me: usize, path: &str) -> Result<(), ImageError> {
        let mut children = Vec::with_capacity(dir.entries.len());
        for (name, node) in &dir.entries {
            let child_path = format!("{path}/{name}");
            check_name(name).map_err(|reason| ImageError::InvalidEntry { path: child_path.clone(), reason })?;
            let index = self.nodes.len();
            children.push(index);
            match node {
                Node::Dir(d) => {
                    self.nodes.push(FlatNode {
                        name,
                        kind: FlatKind::Dir { mode: d.mode, parent: me, children: Vec::new() },
                    });
                    self.visit(d, index, &child_path)?;
                }
                Node::File(f) => {
                    self.nodes.push(FlatNode { name, kind: FlatKind::File { mode: f.mode, data: self.sources.len() } });
                    self.sources.push(Source { image_path: child_path, source: &f.source });
                }
                Node::Symlink(target) => {
                    check_target(target).map_err(|reason| ImageError::InvalidEntry { path: child_path, reason })?;
                    self.nodes.push(FlatNode { name, kind: FlatKind::Symlink(target) });
                }
            }
        }
        if let FlatKind::Dir { children: slot, .. } = &mut self.nodes[me].kind {
            *slot = children;
        }
        Ok(())
    }

    fn number(&self, index: usize) -> u32 {
        if index == 0 {
            self.nodes.len() as u32
        } else {
            index as u32
        }
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(format!("invalid file name {name:?}"));
    }
    if name.len() > 256 {
        return Err("file names are limited to 256 bytes".into());
    }
    Ok(())
}

fn check_target(target: &str) -> Result<(), String> {
    if target.is_empty() || target.contains('\0') {
        return Err(format!("invalid symlink target {target:?}"));
    }
    if target.len() > MAX_SYMLINK_TARGET {
        return Err(format!(
            "symlink target is {} bytes, the kernel follows at most {MAX_SYMLINK_TARGET}",
            target.len()
        ));
    }
    Ok(())
}

/// Builds the inode and directory tables bottom-up: a directory's listing needs its children's
/// inode positions and its own inode needs the listing's position, so children come first.
struct Tables<'f, 't> {
    flat: &'f Flat<'t>,
    data: &'f DataSection,
    mtime: u32,
    codec: Codec,
    inodes: MetadataWriter,
    dirs: MetadataWriter,
    buf: Vec<u8>,
}

impl Tables<'_, '_> {
    /// Writes the inode of `index` (after its whole subtree) and returns where it starts.
    fn emit(&mut self, index: usize) -> Result<MetaPos, ImageError> {
        let flat = self.flat;
        let node = &flat.nodes[index];
        let mtime = self.mtime;
        let base = |mode: u32| InodeBase { permissions: (mode & 0o7777) as u16, mtime, number: flat.number(index) };
        self.buf.clear();
        match &node.kind {
            FlatKind::File { mode, data } => {
                let d = &self.data.files[*data];
                FileInode {
                    base: base(*mode),
                    start: d.start,
                    size: d.size,
                    sparse: d.sparse,
                    fragment: d.fragment,
                    blocks: &d.blocks,
                }
                .encode(&mut self.buf);
            }
            FlatKind::Symlink(target) => format::encode_symlink(&mut self.buf, base(0o777), target),
            FlatKind::Dir { mode, parent, children } => {
                let mut entries = Vec::with_capacity(children.len());
                let mut subdirs = 0u32;
                for &child in children {
                    let inode = self.emit(child)?;
                    let basic_type = match flat.nodes[child].kind {
                        FlatKind::Dir { .. } => {
                            subdirs += 1;
                            format::BASIC_DIR
                        }
                        FlatKind::File { .. } => format::BASIC_FILE,
                        FlatKind::Symlink(_) => format::BASIC_SYMLINK,
                    };
                    entries.push(DirEntry {
                        name: flat.nodes[child].name,
                        inode,
                        number: flat.number(child),
                        basic_type,
                    });
                }
                let (listing, listing_len, dir_index) = self.write_listing(&entries)?;
                let file_size = u32::try_from(listing_len + 3)
                    .map_err(|_| ImageError::TooLarge("a directory listing exceeds 4 GiB".into()))?;
                let parent = if index == 0 { flat.nodes.len() as u32 + 1 } else { flat.number(*parent) };
                self.buf.clear();
                DirInode { base: base(*mode), listing, file_size, nlink: 2 + subdirs, parent, index: dir_index }
                    .encode(&mut self.buf);
            }
        }
        let pos = self.inodes.position();
        check_table(pos, "inode")?;
        self.inodes.write(&mut self.codec, &self.buf).map_err(|e| compress_error(&self.codec, e))?;
        Ok(pos)
    }

    /// Appends a directory listing; returns its start, its length and the lookup index an
    /// extended directory inode carries (the kernel starts name lookups from the last entry
    /// not past the name, instead of from the first header).
    fn write_listing<'n>(&mut self, entries: &[DirEntry<'n>]) -> Result<(MetaPos, u64, Vec<DirIndex<'n>>), ImageError> {
        let start = self.dirs.position();
        check_table(start, "directory")?;
        let mut index = Vec::new();
        let mut len = 0u64;
        let mut buf = Vec::new();
        for run in format::header_runs(entries) {
            let at = self.dirs.position();
            check_table(at, "directory")?;
            if run.indexed {
                index.push(DirIndex {
                    listing_offset: len as u32,
                    block: at.block as u32,
                    name: entries[run.entries.start].name,
                });
            }
            buf.clear();
            format::encode_dir_run(&mut buf, &entries[run.entries]);
            self.dirs.write(&mut self.codec, &buf).map_err(|e| compress_error(&self.codec, e))?;
            len += buf.len() as u64;
        }
        Ok((start, len, index))
    }
}

/// Table offsets are stored in 32 bits (directory headers, directory inodes).
fn check_table(pos: MetaPos, table: &str) -> Result<(), ImageError> {
    if pos.block > u64::from(u32::MAX) {
        return Err(ImageError::TooLarge(format!("the {table} table exceeds 4 GiB")));
    }
    Ok(())
}

fn compress_error(codec: &Codec, e: std::io::Error) -> ImageError {
    ImageError::Compress { compression: codec.compression(), reason: e.to_string() }
}

/// Counts bytes so table offsets can be taken without seeking.
struct Out<W> {
    inner: W,
    pos: u64,
}

impl<W: Write> Out<W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        self.inner.write_all(bytes).map_err(ImageError::Write)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes a table of metadata blocks followed by its index of absolute block offsets;
    /// returns the index's offset, which is what the superblock points at.
    fn indexed_table(&mut self, codec: &mut Codec, entries: &[u8]) -> Result<u64, ImageError> {
        let mut table = MetadataWriter::new();
        table.write(codec, entries).map_err(|e| compress_error(codec, e))?;
        let (bytes, starts) = table.finish(codec).map_err(|e| compress_error(codec, e))?;
        let table_start = self.pos;
        self.put(&bytes)?;
        let index_start = self.pos;
        let index: Vec<u8> = starts.iter().flat_map(|s| (table_start + s).to_le_bytes()).collect();
        self.put(&index)?;
        Ok(index_start)
    }
}

pub(crate) fn write_image(
    tree: &Tree,
    options: &ImageOptions,
    file: &mut File,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ImageSummary, ImageError> {
    let spec = CodecSpec {
        compression: options.compression,
        level: options.effective_level()?,
        block_size: options.block_size,
    };
    let flat = Flat::new(tree)?;
    let codec = spec.build()?;

    file.seek(SeekFrom::Start(0)).map_err(ImageError::Write)?;
    let mut out = Out { inner: BufWriter::with_capacity(1 << 20, &mut *file), pos: 0 };
    // Placeholder; the real superblock is written last, once every offset is known.
    out.put(&[0; format::SUPERBLOCK_SIZE as usize])?;
    let mut flags = format::FLAG_NO_XATTRS;
    if let Some(opts) = compression::options_block(spec.compression, spec.level) {
        // Stored uncompressed, as mksquashfs does: readers parse it before they can decompress.
        out.put(&(opts.len() as u16 | 0x8000).to_le_bytes())?;
        out.put(&opts)?;
        flags |= format::FLAG_COMPRESSOR_OPTIONS;
    }

    let data = data::write_data(&flat.sources, spec, options.threads.get(), &mut out.inner, &mut out.pos, progress)?;

    let mut tables = Tables {
        flat: &flat,
        data: &data,
        mtime: options.mtime,
        codec,
        inodes: MetadataWriter::new(),
        dirs: MetadataWriter::new(),
        buf: Vec::new(),
    };
    let root = tables.emit(0)?;
    let Tables { mut codec, inodes, dirs, .. } = tables;
    let (inode_bytes, _) = inodes.finish(&mut codec).map_err(|e| compress_error(&codec, e))?;
    let (dir_bytes, _) = dirs.finish(&mut codec).map_err(|e| compress_error(&codec, e))?;

    let inode_table = out.pos;
    out.put(&inode_bytes)?;
    let directory_table = out.pos;
    out.put(&dir_bytes)?;
    // Without fragments mksquashfs still points this at the end of the directory table, and
    // unsquashfs uses it to find where that table ends.
    let fragment_table = if data.fragments.is_empty() {
        out.pos
    } else {
        let mut entries = Vec::with_capacity(data.fragments.len() * 16);
        for f in &data.fragments {
            format::put64(&mut entries, f.start);
            format::put32(&mut entries, f.size_word);
            format::put32(&mut entries, 0);
        }
        out.indexed_table(&mut codec, &entries)?
    };
    // The only owner is root: one id, 0.
    let id_table = out.indexed_table(&mut codec, &0u32.to_le_bytes())?;
    let bytes_used = out.pos;
    let image_size = bytes_used.div_ceil(format::PAD_TO) * format::PAD_TO;
    out.put(&vec![0; (image_size - bytes_used) as usize])?;
    out.inner.flush().map_err(ImageError::Write)?;
    drop(out);

    let fragments =
        u32::try_from(data.fragments.len()).map_err(|_| ImageError::TooLarge("more than 2^32 fragments".into()))?;
    let superblock = Superblock {
        inode_count: flat.nodes.len() as u32,
        mtime: options.mtime,
        block_size: spec.block_size.get(),
        block_log: spec.block_size.log2(),
        fragment_count: fragments,
        compressor: compression::compressor_id(spec.compression),
        flags,
        id_count: 1,
        root_inode: root.inode_ref(),
        bytes_used,
        id_table,
        inode_table,
        directory_table,
        fragment_table,
    };
    file.seek(SeekFrom::Start(0)).map_err(ImageError::Write)?;
    file.write_all(&superblock.to_bytes()).map_err(ImageError::Write)?;
    file.set_len(image_size).map_err(ImageError::Write)?;

    Ok(ImageSummary {
        bytes_used,
        image_size,
        inodes: superblock.inode_count,
        data_blocks: data.data_blocks,
        fragments,
    })
}
