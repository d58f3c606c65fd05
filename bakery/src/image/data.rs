//! The data section: file blocks and fragment blocks, compressed in parallel and written in a
//! fixed order.
//!
//! One reader thread cuts files into blocks and packs tail ends into fragments, numbering every
//! job; `threads` workers compress; the calling thread writes results strictly in job order.
//! Every layout decision (which block goes where, which tail lands in which fragment) is made
//! by the single reader, so the output never depends on thread count or timing. A fixed pool of
//! credits, taken by the reader per job and returned by the writer once the job is on disk,
//! bounds the blocks in memory no matter how unevenly the workers progress.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::Path;

use crossbeam_channel::{Receiver, Sender};

use super::compression::Codec;
use super::format::STORED_BLOCK;
use super::options::{BlockSize, Compression};
use super::ImageError;
use crate::tree::FileSource;

/// A regular file to store, with its path in the image for error messages.
#[derive(Debug)]
pub(crate) struct Source<'t> {
    pub image_path: String,
    pub source: &'t FileSource,
}

/// Where one file's bytes ended up.
#[derive(Debug, Default, Clone)]
pub(crate) struct FileData {
    pub size: u64,
    /// Offset of the first block; 0 for files without blocks, as mksquashfs writes.
    pub start: u64,
    pub blocks: Vec<u32>,
    pub sparse: u64,
    pub fragment: Option<(u32, u32)>,
}

/// A fragment table entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fragment {
    pub start: u64,
    pub size_word: u32,
}

/// Everything the tables need to know about the data section.
#[derive(Debug)]
pub(crate) struct DataSection {
    pub files: Vec<FileData>,
    pub fragments: Vec<Fragment>,
    /// Full blocks recorded in block lists (sparse ones included).
    pub data_blocks: u64,
}

/// Compressor settings every worker builds its own context from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CodecSpec {
    pub compression: Compression,
    pub level: i32,
    pub block_size: BlockSize,
}

impl CodecSpec {
    pub(crate) fn build(self) -> Result<Codec, ImageError> {
        Codec::new(self.compression, self.level, self.block_size).map_err(|e| self.error(e))
    }

    pub(crate) fn error(self, e: io::Error) -> ImageError {
        ImageError::Compress { compression: self.compression, reason: e.to_string() }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A full block of the file with this index.
    Block(u32),
    Fragment,
}

struct Job {
    seq: u64,
    kind: Kind,
    data: Vec<u8>,
}

enum Stored {
    /// An all-zero block: recorded with size 0, nothing written.
    Sparse,
    Raw(Vec<u8>),
    Compressed(Vec<u8>),
}

struct Done {
    seq: u64,
    kind: Kind,
    stored: Stored,
}

/// What the reader decided per file: its size and where its tail went.
type Placement = (u64, Option<(u32, u32)>);

/// Writes every file's data at `*pos` onwards, advancing `*pos`.
pub(crate) fn write_data<W: Write>(
    sources: &[Source<'_>],
    spec: CodecSpec,
    threads: usize,
    out: &mut W,
    pos: &mut u64,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<DataSection, ImageError> {
    // Enough jobs in flight to keep every worker busy while the writer waits for the oldest.
    let credits_count = threads * 3 + 1;
    let (credit_tx, credit_rx) = crossbeam_channel::bounded(credits_count);
    for _ in 0..credits_count {
        credit_tx.send(()).expect("receiver is alive");
    }
    let (job_tx, job_rx) = crossbeam_channel::unbounded::<Job>();
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Result<Done, ImageError>>();

    std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_all(sources, spec.block_size, job_tx, credit_rx, progress));
        for _ in 0..threads {
            let jobs = job_rx.clone();
            let done = done_tx.clone();
            scope.spawn(move || compress_all(spec, jobs, done));
        }
        drop((job_rx, done_tx));
        let written = write_in_order(sources.len(), spec.block_size, done_rx, credit_tx, out, pos);
        let placements = reader.join().expect("reader thread panicked");
        // A write error stops the reader early: report that cause, not the cancellation.
        let mut section = written?;
        let placements = placements
            .map_err(|e| e.unwrap_or_else(|| ImageError::Write(io::Error::other("data pipeline stopped early"))))?;
        for (file, (size, fragment)) in section.files.iter_mut().zip(placements) {
            file.size = size;
            file.fragment = fragment;
        }
        Ok(section)
    })
}

/// Cuts files into blocks and tails, in order. Returns each file's size and fragment slot, or
/// the read error; `Err(None)` means the writer gave up first and has the error to report.
fn read_all(
    sources: &[Source<'_>],
    block_size: BlockSize,
    jobs: Sender<Job>,
    credits: Receiver<()>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Placement>, Option<ImageError>> {
    let bs = block_size.get() as usize;
    let mut seq = 0u64;
    // Sends a job once a credit is free; fails only when the writer has given up.
    let mut send = |kind: Kind, data: Vec<u8>| -> Result<(), Option<ImageError>> {
        credits.recv().map_err(|_| None)?;
        jobs.send(Job { seq, kind, data }).map_err(|_| None)?;
        seq += 1;
        Ok(())
    };
    let mut placements = Vec::with_capacity(sources.len());
    let mut fragment = Vec::with_capacity(bs);
    let mut fragment_index = 0u32;
    for (index, src) in sources.iter().enumerate() {
        let file_index = u32::try_from(index).map_err(|_| ImageError::TooLarge("more than 2^32 files".into()))?;
        let read_error = |e: io::Error| ImageError::ReadSource {
            path: match src.source {
                FileSource::Path(p) => p.clone(),
                FileSource::Bytes(_) => "<in-memory>".into(),
            },
            image_path: src.image_path.clone(),
            source: e,
        };
        let mut input = Input::open(src.source).map_err(read_error)?;
        let mut size = 0u64;
        let tail = loop {
            let mut block = Vec::with_capacity(bs);
            input.fill(&mut block, bs).map_err(read_error)?;
            size += block.len() as u64;
            progress(block.len() as u64);
            if block.len() < bs {
                break block;
            }
            send(Kind::Block(file_index), block)?;
        };
        let mut slot = None;
        if !tail.is_empty() {
            if fragment.len() + tail.len() > bs {
                send(Kind::Fragment, std::mem::replace(&mut fragment, Vec::with_capacity(bs)))?;
                fragment_index += 1;
            }
            slot = Some((fragment_index, fragment.len() as u32));
            fragment.extend_from_slice(&tail);
        }
        placements.push((size, slot));
    }
    if !fragment.is_empty() {
        send(Kind::Fragment, fragment)?;
    }
    Ok(placements)
}

/// A file being cut into blocks.
enum Input<'a> {
    File(std::fs::File),
    Bytes(&'a [u8]),
}

impl<'a> Input<'a> {
    fn open(source: &'a FileSource) -> io::Result<Self> {
        Ok(match source {
            FileSource::Path(p) => Input::File(open_regular(p)?),
            FileSource::Bytes(b) => Input::Bytes(b),
        })
    }

    /// Reads up to `max` bytes; fewer only at the end of the file.
    fn fill(&mut self, buf: &mut Vec<u8>, max: usize) -> io::Result<()> {
        match self {
            Input::Bytes(rest) => {
                let (now, later) = rest.split_at(max.min(rest.len()));
                buf.extend_from_slice(now);
                *rest = later;
                Ok(())
            }
            Input::File(f) => {
                // `take` + `read_to_end` loops over short reads and EINTR for us, without
                // zero-filling the buffer first.
                Read::by_ref(f).take(max as u64).read_to_end(buf)?;
                Ok(())
            }
        }
    }
}

/// Opens a source file, refusing anything but a regular file (a FIFO would block forever,
/// a directory would fail later with a confusing error).
fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    let f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(f)
}

fn compress_all(spec: CodecSpec, jobs: Receiver<Job>, done: Sender<Result<Done, ImageError>>) {
    let mut codec = match spec.build() {
        Ok(c) => c,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    let mut scratch = Vec::new();
    for job in jobs {
        let stored = if matches!(job.kind, Kind::Block(_)) && is_zero(&job.data) {
            Ok(Stored::Sparse)
        } else {
            match codec.compress(&job.data, &mut scratch) {
                Ok(true) => Ok(Stored::Compressed(std::mem::take(&mut scratch))),
                Ok(false) => Ok(Stored::Raw(job.data)),
                Err(e) => Err(spec.error(e)),
            }
        };
        let msg = stored.map(|stored| Done { seq: job.seq, kind: job.kind, stored });
        let failed = msg.is_err();
        if done.send(msg).is_err() || failed {
            return;
        }
    }
}

fn is_zero(data: &[u8]) -> bool {
    // OR-folding fixed chunks vectorises; a plain `all(|b| b == 0)` does not.
    data.chunks(256).all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Writes results in job order and returns the credit of each job written.
fn write_in_order<W: Write>(
    file_count: usize,
    block_size: BlockSize,
    results: Receiver<Result<Done, ImageError>>,
    credits: Sender<()>,
    out: &mut W,
    pos: &mut u64,
) -> Result<DataSection, ImageError> {
    let mut section =
        DataSection { files: vec![FileData::default(); file_count], fragments: Vec::new(), data_blocks: 0 };
    let mut waiting = BTreeMap::new();
    let mut next = 0u64;
    for result in results {
        let done = result?;
        waiting.insert(done.seq, done);
        while let Some(done) = waiting.remove(&next) {
            let (bytes, word) = match &done.stored {
                Stored::Sparse => (&[][..], 0),
                Stored::Raw(b) => (&b[..], b.len() as u32 | STORED_BLOCK),
                Stored::Compressed(b) => (&b[..], b.len() as u32),
            };
            match done.kind {
                Kind::Block(file) => {
                    let f = &mut section.files[file as usize];
                    if f.blocks.is_empty() {
                        f.start = *pos;
                    }
                    f.blocks.push(word);
                    if matches!(done.stored, Stored::Sparse) {
                        // Only full blocks become sparse; tails always go to fragments.
                        f.sparse += u64::from(block_size.get());
                    }
                    section.data_blocks += 1;
                }
                Kind::Fragment => section.fragments.push(Fragment { start: *pos, size_word: word }),
            }
            out.write_all(bytes).map_err(ImageError::Write)?;
            *pos += bytes.len() as u64;
            next += 1;
            // The reader may already be done; a missing receiver is fine.
            let _ = credits.send(());
        }
    }
    Ok(section)
}
