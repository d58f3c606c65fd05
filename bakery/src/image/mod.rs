//! Writing a [`Tree`](crate::tree::Tree) as a squashfs image: the one seam behind which the
//! image format lives.
//!
//! The writer is pure Rust and deterministic by construction: the same tree and options give
//! a bit-identical image whatever the thread count. Every entry is owned by root and carries
//! `ImageOptions::mtime`. Data blocks are compressed on `threads` workers while one reader
//! streams source files block by block, so memory stays bounded by a few blocks per thread.
//!
//! Layout follows mksquashfs (squashfs 4.0): superblock, optional compressor options, data and
//! fragment blocks, inode table, directory table, fragment table, id table, zero padding to
//! 4 KiB. There is no export table and no xattr table.
//!
//! Where squashfs leaves a choice, the writer makes mksquashfs' so that `sqfsdiff` (which also
//! compares inode numbers and types) sees no difference to a mksquashfs image of the same tree:
//! inodes are numbered in pre-order with the root last, directories whose listing spans more
//! than one 8 KiB stretch get an extended inode with a lookup index, and files with all-zero
//! (sparse) blocks keep basic inodes. Unlike mksquashfs' default, the tail end of every file,
//! not only of files smaller than a block, is packed into a fragment.

mod compression;
mod data;
mod format;
mod metadata;
mod options;
mod writer;

use std::path::PathBuf;

pub use options::{BlockSize, BlockSizeError, Compression, CompressionParseError, ImageOptions};

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSummary {
    /// Bytes of filesystem, as recorded in the superblock.
    pub bytes_used: u64,
    /// Size of the image file: `bytes_used` padded to a multiple of 4 KiB.
    pub image_size: u64,
    /// Number of inodes, the root directory included.
    pub inodes: u32,
    /// Full data blocks in file block lists (all-zero ones included, though they take no space).
    pub data_blocks: u64,
    /// Fragment blocks holding the tail ends of files.
    pub fragments: u32,
}

/// Why an image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The requested level does not exist for the compressor.
    #[error("invalid {compression} compression level {level}: {reason}")]
    InvalidLevel {
        /// The compressor.
        compression: Compression,
        /// The rejected level.
        level: i32,
        /// The accepted range, or why none is accepted.
        reason: String,
    },
    /// A tree entry squashfs or the kernel cannot represent.
    #[error("cannot store '{path}' in the image: {reason}")]
    InvalidEntry {
        /// Path inside the image.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A source file could not be opened or read.
    #[error("reading source file {} for '{image_path}' failed", path.display())]
    ReadSource {
        /// The file on the build host.
        path: PathBuf,
        /// Where it was going in the image.
        image_path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The compressor library reported an error.
    #[error("{compression} compression failed: {reason}")]
    Compress {
        /// The compressor.
        compression: Compression,
        /// The library's message.
        reason: String,
    },
    /// Writing to the output file failed.
    #[error("writing the image failed")]
    Write(#[source] std::io::Error),
    /// The tree exceeds a squashfs limit.
    #[error("image too large: {0}")]
    TooLarge(String),
}

impl ImageOptions {
    /// The level that will be used: `level`, validated, or the compressor's default.
    pub fn effective_level(&self) -> Result<i32, ImageError> {
        let c = self.compression;
        match (self.level, c.level_range()) {
            (None, _) => Ok(c.default_level()),
            (Some(level), Some(range)) if range.contains(&level) => Ok(level),
            (Some(level), Some(range)) => Err(ImageError::InvalidLevel {
                compression: c,
                level,
                reason: format!("expected {}..={}", range.start(), range.end()),
            }),
            (Some(level), None) => Err(ImageError::InvalidLevel {
                compression: c,
                level,
                reason: format!("{c} has no compression levels"),
            }),
        }
    }
}

/// Writes `tree` as a squashfs image into `out`, from offset 0, and sets the file's length to
/// the padded image size. The caller owns temp-file handling and the final rename.
pub fn write_image(
    tree: &crate::tree::Tree,
    options: &ImageOptions,
    out: &mut std::fs::File,
) -> Result<ImageSummary, ImageError> {
    writer::write_image(tree, options, out, &|_| {})
}

/// [`write_image`], calling `progress` with the number of input bytes each time a block of
/// file data has been read (from the reader thread; the sum reaches the total file size).
pub fn write_image_with_progress(
    tree: &crate::tree::Tree,
    options: &ImageOptions,
    out: &mut std::fs::File,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ImageSummary, ImageError> {
    writer::write_image(tree, options, out, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_validated() {
        let opts = |compression, level| ImageOptions { compression, level, ..ImageOptions::default() };
        assert_eq!(opts(Compression::Zstd, None).effective_level().unwrap(), Compression::Zstd.default_level());
        assert_eq!(opts(Compression::Xz, Some(0)).effective_level().unwrap(), 0);
        assert_eq!(opts(Compression::Zstd, Some(22)).effective_level().unwrap(), 22);
        for (c, bad) in [
            (Compression::Zstd, 0),
            (Compression::Zstd, 23),
            (Compression::Gzip, 0),
            (Compression::Gzip, 10),
            (Compression::Xz, -1),
            (Compression::Xz, 10),
            (Compression::Lz4, 1),
        ] {
            let err = opts(c, Some(bad)).effective_level().unwrap_err();
            assert!(matches!(err, ImageError::InvalidLevel { level, .. } if level == bad), "{c} {bad}");
            assert!(err.to_string().contains(c.as_str()), "{err}");
        }
    }
}
