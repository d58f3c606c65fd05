//! One compressor context per thread, producing exactly the stream formats the kernel's
//! squashfs decompressors expect.

use std::io;

use super::options::{BlockSize, Compression};

/// A compressor with reusable state: each worker thread owns one, so contexts (zstd's tables,
/// zlib's window) are allocated once per thread rather than once per block.
pub(crate) struct Codec {
    compression: Compression,
    kind: Kind,
}

enum Kind {
    /// One-shot frames: zstd sees the whole block, so it records the content size and caps the
    /// window at the block size, which is what the kernel's decompressor is sized for.
    Zstd(zstd::bulk::Compressor<'static>),
    /// A fresh `.xz` stream per block (CRC32 check, LZMA2 with dict = block size): the kernel
    /// preallocates a dictionary of the block size and rejects streams asking for more.
    Xz(liblzma::stream::Filters),
    /// zlib streams, as squashfs-tools' `compress2` makes them.
    Gzip(flate2::Compress),
    /// Raw LZ4 blocks (no frame), what the kernel's `LZ4_decompress_safe` reads.
    Lz4,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.kind {
            Kind::Zstd(_) => "zstd",
            Kind::Xz(_) => "xz",
            Kind::Gzip(_) => "gzip",
            Kind::Lz4 => "lz4",
        };
        f.debug_struct("Codec").field("kind", &name).finish()
    }
}

/// zstd match finder parameters that replace zstd's own at a level (the window stays zstd's,
/// capped at the block by the one-shot frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ZstdTuning {
    strategy: zstd::zstd_safe::Strategy,
    chain_log: u32,
    hash_log: u32,
    search_log: u32,
    min_match: u32,
    target_length: u32,
}

/// The default zstd level, tuned for speed (see [`Compression::default_level`]).
pub(crate) const FAST_TUNED_ZSTD_LEVEL: i32 = 10;
/// The slow, small zstd level (`--level 16`, the previous default), tuned for size.
pub(crate) const SMALL_TUNED_ZSTD_LEVEL: i32 = 16;

/// The parameters bakery uses instead of zstd's at `level`; `None` for stock zstd.
///
/// Two levels are retuned for executables (machine code and Go's tables are full of short
/// repeats, and one squashfs block is at most 1 MiB), chosen on a frontier measured on 166 MiB
/// of Kubernetes-built Go binaries in 1 MiB blocks. Compressed data relative to zlib 9 in
/// 128 KiB blocks (what `mksquashfs -all-root -noappend` writes), and speed per core relative
/// to zlib 9's (whole images against Flatcar's pipeline: bench/README.md):
/// - 10, the default: zstd 10's lazy2 parser with minimum match 4 instead of 5, 2^19/2^20
///   chain/hash tables (zstd 10: 2^20/2^21), searching 2^6 deep for matches of up to 32
///   bytes: 0.847x at ~3.5x zlib's speed; stock zstd 10 gives 0.857x at ~5x, stock 12 0.856x
///   at ~3x, and nothing stock below 16 reaches 0.85x;
/// - 16: zstd 16's optimal parser (btopt) with minimum match 3, 2^16/2^17 tables and a
///   search depth of 2^3: 0.810x at ~0.9x zlib's speed (stock 16: 0.813x at ~0.4x).
///
/// Every other level is exactly zstd's.
fn zstd_tuning(level: i32) -> Option<ZstdTuning> {
    use zstd::zstd_safe::Strategy;
    match level {
        FAST_TUNED_ZSTD_LEVEL => Some(ZstdTuning {
            strategy: Strategy::ZSTD_lazy2,
            chain_log: 19,
            hash_log: 20,
            search_log: 6,
            min_match: 4,
            target_length: 32,
        }),
        SMALL_TUNED_ZSTD_LEVEL => Some(ZstdTuning {
            strategy: Strategy::ZSTD_btopt,
            chain_log: 16,
            hash_log: 17,
            search_log: 3,
            min_match: 3,
            target_length: 32,
        }),
        _ => None,
    }
}

fn apply(c: &mut zstd::bulk::Compressor<'static>, t: ZstdTuning) -> io::Result<()> {
    use zstd::zstd_safe::CParameter;
    c.set_parameter(CParameter::Strategy(t.strategy))?;
    c.set_parameter(CParameter::ChainLog(t.chain_log))?;
    c.set_parameter(CParameter::HashLog(t.hash_log))?;
    c.set_parameter(CParameter::SearchLog(t.search_log))?;
    c.set_parameter(CParameter::MinMatch(t.min_match))?;
    c.set_parameter(CParameter::TargetLength(t.target_length))?;
    Ok(())
}

impl Codec {
    /// A context for `compression` at an already validated `level`.
    pub(crate) fn new(compression: Compression, level: i32, block_size: BlockSize) -> io::Result<Self> {
        let kind = match compression {
            Compression::Zstd => {
                let mut c = zstd::bulk::Compressor::new(level)?;
                if let Some(tuning) = zstd_tuning(level) {
                    apply(&mut c, tuning)?;
                }
                Kind::Zstd(c)
            }
            Compression::Xz => {
                let preset = u32::try_from(level).map_err(|_| io::Error::other("negative xz preset"))?;
                let mut lzma = liblzma::stream::LzmaOptions::new_preset(preset).map_err(io::Error::other)?;
                lzma.dict_size(block_size.get());
                let mut filters = liblzma::stream::Filters::new();
                filters.lzma2(&lzma);
                Kind::Xz(filters)
            }
            Compression::Gzip => {
                let level = u32::try_from(level).map_err(|_| io::Error::other("negative gzip level"))?;
                Kind::Gzip(flate2::Compress::new(flate2::Compression::new(level), true))
            }
            Compression::Lz4 => Kind::Lz4,
        };
        Ok(Self { compression, kind })
    }

    /// Which compressor this is, for error messages.
    pub(crate) fn compression(&self) -> Compression {
        self.compression
    }

    /// Compresses `input` into `out` (replacing its contents).
    ///
    /// Returns `false` when the result is not smaller than the input: squashfs then stores the
    /// block raw, and `out` is meaningless.
    pub(crate) fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<bool> {
        out.clear();
        if input.is_empty() {
            return Ok(false);
        }
        match &mut self.kind {
            Kind::Zstd(z) => {
                out.reserve(zstd::zstd_safe::compress_bound(input.len()));
                z.compress_to_buffer(input, out)?;
            }
            Kind::Xz(filters) => {
                let mut stream = liblzma::stream::Stream::new_stream_encoder(filters, liblzma::stream::Check::Crc32)
                    .map_err(io::Error::other)?;
                out.reserve(input.len() + input.len() / 16 + 256);
                loop {
                    let consumed = usize::try_from(stream.total_in()).map_err(io::Error::other)?;
                    match stream
                        .process_vec(&input[consumed..], out, liblzma::stream::Action::Finish)
                        .map_err(io::Error::other)?
                    {
                        liblzma::stream::Status::StreamEnd => break,
                        _ => out.reserve(out.capacity().max(4096)),
                    }
                }
            }
            Kind::Gzip(z) => {
                z.reset();
                out.reserve(input.len() + input.len() / 8 + 64);
                loop {
                    let consumed = usize::try_from(z.total_in()).map_err(io::Error::other)?;
                    match z
                        .compress_vec(&input[consumed..], out, flate2::FlushCompress::Finish)
                        .map_err(io::Error::other)?
                    {
                        flate2::Status::StreamEnd => break,
                        _ => out.reserve(out.capacity().max(4096)),
                    }
                }
            }
            Kind::Lz4 => {
                out.resize(lz4_flex::block::get_maximum_output_size(input.len()), 0);
                let n = lz4_flex::block::compress_into(input, out).map_err(io::Error::other)?;
                out.truncate(n);
            }
        }
        Ok(out.len() < input.len())
    }
}

/// The compressor options block mksquashfs writes for these settings, if any.
///
/// lz4 always needs one (the kernel refuses lz4 images without `version = 1`). zstd and gzip get
/// one only for non-default levels, as with mksquashfs, so readers can report the level; no
/// reader needs it to decompress. xz needs none: dict = block size is the default.
pub(crate) fn options_block(compression: Compression, level: i32) -> Option<Vec<u8>> {
    match compression {
        // { version: LZ4_LEGACY = 1, flags: 0 (not HC) }
        Compression::Lz4 => Some([1i32.to_le_bytes(), 0i32.to_le_bytes()].concat()),
        // { compression_level }; squashfs-tools' default is 15, bakery's 16 (tuned).
        Compression::Zstd if level != 15 => Some(level.to_le_bytes().to_vec()),
        // { compression_level, window_size: 15, strategy: 0 }; squashfs-tools' default level is 9.
        Compression::Gzip if level != 9 => {
            Some([&level.to_le_bytes()[..], &15i16.to_le_bytes(), &0i16.to_le_bytes()].concat())
        }
        _ => None,
    }
}

/// The squashfs compressor id stored in the superblock.
pub(crate) fn compressor_id(compression: Compression) -> u16 {
    match compression {
        Compression::Gzip => 1,
        Compression::Xz => 4,
        Compression::Lz4 => 5,
        Compression::Zstd => 6,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: a repeating text with a counter mixed in.
        (0..len).map(|i| b"squashfs block "[i % 15] ^ ((i / 4096) as u8 & 3)).collect()
    }

    fn decompress(c: Compression, data: &[u8], len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        match c {
            Compression::Zstd => return zstd::bulk::decompress(data, len).unwrap(),
            Compression::Xz => liblzma::read::XzDecoder::new(data).read_to_end(&mut out).map(drop).unwrap(),
            Compression::Gzip => flate2::read::ZlibDecoder::new(data).read_to_end(&mut out).map(drop).unwrap(),
            Compression::Lz4 => return lz4_flex::block::decompress(data, len).unwrap(),
        }
        out
    }

    #[test]
    fn every_codec_round_trips_and_reuses_its_context() {
        let bs = BlockSize::new(131072).unwrap();
        for c in Compression::ALL {
            let mut codec = Codec::new(c, c.default_level(), bs).unwrap();
            let mut out = Vec::new();
            for len in [1usize, 100, 8192, 131072] {
                let input = sample(len);
                if codec.compress(&input, &mut out).unwrap() {
                    assert!(out.len() < input.len());
                    assert_eq!(decompress(c, &out, len), input, "{c} {len}");
                }
            }
            assert!(codec.compress(&sample(131072), &mut out).unwrap(), "{c} should shrink text");
        }
    }

    #[test]
    fn incompressible_input_is_reported() {
        let noise = sysext_tests::noise(1, 65536);
        for c in Compression::ALL {
            let mut codec = Codec::new(c, c.default_level(), BlockSize::default()).unwrap();
            assert!(!codec.compress(&noise, &mut Vec::new()).unwrap(), "{c}");
        }
    }

    #[test]
    fn zstd_frames_are_single_segment() {
        // The kernel sizes its zstd window to the block size; a single-segment frame's window
        // is its content size, which never exceeds a block.
        for level in [FAST_TUNED_ZSTD_LEVEL, SMALL_TUNED_ZSTD_LEVEL, 19, 22] {
            let mut codec = Codec::new(Compression::Zstd, level, BlockSize::default()).unwrap();
            let mut out = Vec::new();
            assert!(codec.compress(&sample(1 << 20), &mut out).unwrap());
            assert_eq!(&out[..4], &[0x28, 0xB5, 0x2F, 0xFD]);
            let descriptor = out[4];
            assert_ne!(descriptor & 0x20, 0, "single segment flag at level {level}");
            assert_eq!(descriptor >> 6, 2, "4-byte content size");
            assert_eq!(u32::from_le_bytes(out[5..9].try_into().unwrap()), 1 << 20);
        }
    }

    /// Short repeats: 4-byte words from a small table between noise bytes, the pattern of
    /// machine code where the tuned parameters (minimum match 3-4) differ from stock zstd's.
    fn short_repeats(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as u8
        };
        let words: Vec<[u8; 4]> = (0..64).map(|_| [next(), next(), next(), next()]).collect();
        let mut out = Vec::with_capacity(len + 5);
        while out.len() < len {
            out.extend_from_slice(&words[usize::from(next()) % words.len()]);
            out.push(next());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn tuned_levels_differ_from_stock_zstd_and_decode() {
        assert_eq!(Compression::Zstd.default_level(), FAST_TUNED_ZSTD_LEVEL);
        // Whole 1 MiB blocks, as bakery writes them: on 256 KiB inputs the two happened to
        // compress alike.
        let input = short_repeats(1 << 20);
        for level in [FAST_TUNED_ZSTD_LEVEL, SMALL_TUNED_ZSTD_LEVEL] {
            let mut tuned = Vec::new();
            Codec::new(Compression::Zstd, level, BlockSize::default()).unwrap().compress(&input, &mut tuned).unwrap();
            let stock = zstd::bulk::compress(&input, level).unwrap();
            assert_ne!(tuned, stock, "level {level} must use the tuned parameters");
            assert_eq!(zstd::bulk::decompress(&tuned, input.len()).unwrap(), input);
        }
    }

    #[test]
    fn other_zstd_levels_are_stock() {
        let input = sample(1 << 18);
        for level in (1..=22).filter(|l| zstd_tuning(*l).is_none()) {
            let mut ours = Vec::new();
            Codec::new(Compression::Zstd, level, BlockSize::default()).unwrap().compress(&input, &mut ours).unwrap();
            assert_eq!(ours, zstd::bulk::compress(&input, level).unwrap(), "level {level}");
        }
        assert_eq!((1..=22).filter(|l| zstd_tuning(*l).is_some()).count(), 2);
    }

    #[test]
    fn xz_dictionary_is_the_block_size() {
        let bs = BlockSize::new(65536).unwrap();
        let mut codec = Codec::new(Compression::Xz, 9, bs).unwrap();
        let mut out = Vec::new();
        assert!(codec.compress(&sample(65536), &mut out).unwrap());
        // Stream header (12 bytes) with CRC32 check type 0x01, then the block header whose
        // LZMA2 filter properties byte encodes the dictionary: 64 KiB is 2^16 -> (16 - 12) * 2.
        assert_eq!(&out[..6], b"\xFD7zXZ\0");
        assert_eq!(out[7], 0x01, "CRC32 check");
        let block_header = &out[12..];
        let filter_flags = &block_header[2..];
        assert_eq!(filter_flags[0], 0x21, "LZMA2 filter id");
        assert_eq!(filter_flags[1], 1, "one property byte");
        assert_eq!(filter_flags[2], 8, "dict = 64 KiB");
    }

    #[test]
    fn options_blocks_match_squashfs_tools() {
        assert_eq!(options_block(Compression::Lz4, 0), Some(vec![1, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(options_block(Compression::Zstd, 15), None);
        assert_eq!(options_block(Compression::Zstd, 19), Some(vec![19, 0, 0, 0]));
        assert_eq!(options_block(Compression::Zstd, 16), Some(vec![16, 0, 0, 0]));
        assert_eq!(options_block(Compression::Zstd, 10), Some(vec![10, 0, 0, 0]));
        assert_eq!(options_block(Compression::Gzip, 9), None);
        assert_eq!(options_block(Compression::Gzip, 6), Some(vec![6, 0, 0, 0, 15, 0, 0, 0]));
        assert_eq!(options_block(Compression::Xz, 6), None);
    }
}
