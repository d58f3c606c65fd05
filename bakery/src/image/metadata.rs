//! Metadata blocks: the 8 KiB compressed units that hold inodes, directory listings and the
//! fragment and id tables.

use std::io;

use super::compression::Codec;

/// Uncompressed size of a full metadata block.
pub(crate) const METADATA_SIZE: usize = 8192;

/// Set in a metadata block header when the block is stored uncompressed.
const STORED: u16 = 0x8000;

/// Where something starts inside a metadata table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MetaPos {
    /// Offset of the (compressed) block from the start of the table.
    pub block: u64,
    /// Offset inside the uncompressed block.
    pub offset: u16,
}

impl MetaPos {
    /// The 48+16 bit reference squashfs stores for inodes (root inode, export table).
    pub(crate) fn inode_ref(self) -> u64 {
        (self.block << 16) | u64::from(self.offset)
    }
}

/// Accumulates a metadata table in memory, compressing each block as soon as it is full.
///
/// Whole tables are kept in memory: they are a few bytes per inode, small next to the data.
#[derive(Debug, Default)]
pub(crate) struct MetadataWriter {
    /// Finished blocks, each with its 2-byte header.
    done: Vec<u8>,
    /// The block being filled; always shorter than `METADATA_SIZE` between calls, so that
    /// `position` never points past a full block.
    pending: Vec<u8>,
    scratch: Vec<u8>,
    /// Start of each finished block, relative to the table start.
    block_starts: Vec<u64>,
}

impl MetadataWriter {
    /// An empty table.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Where the next byte written will land.
    pub(crate) fn position(&self) -> MetaPos {
        MetaPos { block: self.done.len() as u64, offset: self.pending.len() as u16 }
    }

    /// Appends bytes; entries may span block boundaries.
    pub(crate) fn write(&mut self, codec: &mut Codec, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let take = (METADATA_SIZE - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() == METADATA_SIZE {
                self.flush(codec)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, codec: &mut Codec) -> io::Result<()> {
        self.block_starts.push(self.done.len() as u64);
        let (header, body) = if codec.compress(&self.pending, &mut self.scratch)? {
            (self.scratch.len() as u16, &self.scratch)
        } else {
            (self.pending.len() as u16 | STORED, &self.pending)
        };
        self.done.extend_from_slice(&header.to_le_bytes());
        self.done.extend_from_slice(body);
        self.pending.clear();
        Ok(())
    }

    /// Flushes the last partial block; returns the table bytes and each block's start.
    pub(crate) fn finish(mut self, codec: &mut Codec) -> io::Result<(Vec<u8>, Vec<u64>)> {
        if !self.pending.is_empty() {
            self.flush(codec)?;
        }
        Ok((self.done, self.block_starts))
    }
}

#[cfg(test)]
mod tests {
    use super::super::options::{BlockSize, Compression};
    use super::*;

    fn codec() -> Codec {
        Codec::new(Compression::Gzip, 9, BlockSize::default()).unwrap()
    }

    /// Splits a table back into uncompressed blocks.
    fn blocks(table: &[u8]) -> Vec<(bool, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = table;
        while !rest.is_empty() {
            let header = u16::from_le_bytes([rest[0], rest[1]]);
            let len = usize::from(header & !STORED);
            let body = &rest[2..2 + len];
            let stored = header & STORED != 0;
            let data = if stored {
                body.to_vec()
            } else {
                let mut d = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(body), &mut d).unwrap();
                d
            };
            out.push((stored, data));
            rest = &rest[2 + len..];
        }
        out
    }

    #[test]
    fn exact_block_fill_moves_position_to_next_block() {
        let mut c = codec();
        let mut w = MetadataWriter::new();
        w.write(&mut c, &[7u8; METADATA_SIZE - 1]).unwrap();
        assert_eq!(w.position(), MetaPos { block: 0, offset: (METADATA_SIZE - 1) as u16 });
        w.write(&mut c, &[7u8]).unwrap();
        let pos = w.position();
        assert_eq!(pos.offset, 0);
        assert!(pos.block > 2 && pos.block < 200, "a compressed block of sevens: {pos:?}");
        let (table, starts) = w.finish(&mut c).unwrap();
        assert_eq!(table.len() as u64, pos.block, "no empty trailing block");
        assert_eq!(starts, [0]);
        assert_eq!(blocks(&table), [(false, vec![7u8; METADATA_SIZE])]);
    }

    #[test]
    fn writes_span_blocks_and_keep_order() {
        let mut c = codec();
        let mut w = MetadataWriter::new();
        let data: Vec<u8> = (0..20000u32).map(|i| (i * 7 % 251) as u8).collect();
        w.write(&mut c, &data[..5000]).unwrap();
        w.write(&mut c, &data[5000..]).unwrap();
        assert_eq!(w.position().offset as usize, 20000 - 2 * METADATA_SIZE);
        let (table, starts) = w.finish(&mut c).unwrap();
        let got = blocks(&table);
        assert_eq!(got.len(), 3);
        assert_eq!(starts.len(), 3);
        assert_eq!(got.iter().map(|(_, d)| d.len()).collect::<Vec<_>>(), [8192, 8192, 20000 - 16384]);
        assert_eq!(got.into_iter().flat_map(|(_, d)| d).collect::<Vec<_>>(), data);
    }

    #[test]
    fn incompressible_blocks_are_stored_with_the_flag() {
        let mut c = codec();
        let mut w = MetadataWriter::new();
        w.write(&mut c, &[0, 0, 0, 0]).unwrap();
        let (table, _) = w.finish(&mut c).unwrap();
        assert_eq!(table, [0x04, 0x80, 0, 0, 0, 0]);
    }

    #[test]
    fn empty_table_is_empty() {
        let mut c = codec();
        let (table, starts) = MetadataWriter::new().finish(&mut c).unwrap();
        assert!(table.is_empty() && starts.is_empty());
    }

    #[test]
    fn inode_ref_packs_block_and_offset() {
        assert_eq!(MetaPos { block: 0x1234, offset: 0x56 }.inode_ref(), 0x1234_0056);
    }
}
