//! Getting a writable raw copy of the input disk, and writing the result in the requested
//! format. The input is only ever opened for reading.
//!
//! Disk images are mostly holes (an 8 GiB Flatcar image holds well under 1 GiB of data), so
//! every copy here keeps them: raw inputs are copied extent by extent (`SEEK_DATA`/`SEEK_HOLE`
//! plus `copy_file_range`, so the kernel moves the bytes and may share them), and decompressed
//! streams skip writing all-zero blocks.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::scratch::{self, ScratchDir};

/// What the input file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputFormat {
    /// A raw disk image.
    Raw,
    /// A qcow2 image (converted with `qemu-img`).
    Qcow2,
    /// A raw image compressed with xz.
    Xz,
    /// A raw image compressed with zstd.
    Zstd,
    /// A raw image compressed with bzip2 (Flatcar's `.bin.bz2`).
    Bzip2,
}

/// The format of `OUT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    /// A sparse raw disk image.
    Raw,
    /// qcow2, via `qemu-img convert`.
    Qcow2,
}

/// Identifies the input by its first bytes (file names lie; magic numbers do not).
pub fn detect(path: &Path) -> Result<InputFormat> {
    let mut head = [0u8; 6];
    let mut f = File::open(path).with_context(|| format!("opening input image {}", path.display()))?;
    let n = f.read(&mut head).with_context(|| format!("reading {}", path.display()))?;
    let head = &head[..n];
    Ok(if head.starts_with(b"QFI\xfb") {
        InputFormat::Qcow2
    } else if head.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
        InputFormat::Xz
    } else if head.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        InputFormat::Zstd
    } else if head.starts_with(b"BZh") {
        InputFormat::Bzip2
    } else {
        InputFormat::Raw
    })
}

/// Runs an external tool, putting its command line and stderr into the error.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("{shown} failed ({}): {}", out.status, tail.join(" | "));
    }
    Ok(())
}

/// Writes a raw copy of `input` to `dest` (which must not exist).
pub fn materialize(input: &Path, format: InputFormat, dest: &Path) -> Result<()> {
    let open = || File::open(input).with_context(|| format!("opening input image {}", input.display()));
    let ctx = || format!("decompressing {} ({format:?}) into {}", input.display(), dest.display());
    match format {
        InputFormat::Raw => copy_sparse_file(&open()?, dest)
            .map(drop)
            .with_context(|| format!("copying {} to {}", input.display(), dest.display())),
        InputFormat::Qcow2 => {
            run(Command::new("qemu-img").args(["convert", "-q", "-f", "qcow2", "-O", "raw"]).arg(input).arg(dest))
                .with_context(|| format!("converting qcow2 image {} to raw", input.display()))
        }
        InputFormat::Xz => write_sparse(liblzma::read::XzDecoder::new_multi_decoder(io::BufReader::new(open()?)), dest)
            .map(drop)
            .with_context(ctx),
        InputFormat::Zstd => write_sparse(zstd::stream::read::Decoder::new(open()?)?, dest).map(drop).with_context(ctx),
        InputFormat::Bzip2 => write_sparse(bzip2::read::MultiBzDecoder::new(io::BufReader::new(open()?)), dest)
            .map(drop)
            .with_context(ctx),
    }
}

const BLOCK: usize = 64 * 1024;

/// Streams `reader` into a new file, seeking over all-zero blocks so they stay holes.
fn write_sparse(mut reader: impl Read, dest: &Path) -> io::Result<u64> {
    let mut out = File::create_new(dest)?;
    let mut buf = vec![0u8; BLOCK];
    let mut len = 0u64;
    loop {
        let mut filled = 0;
        while filled < BLOCK {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        if buf[..filled].iter().all(|&b| b == 0) {
            out.seek(SeekFrom::Current(filled as i64))?;
        } else {
            out.write_all(&buf[..filled])?;
        }
        len += filled as u64;
        if filled < BLOCK {
            break;
        }
    }
    out.set_len(len)?;
    Ok(len)
}

/// A raw copy running on another thread, so it overlaps with the read-only analysis of the
/// input and with the edit. One byte range (the partition to edit) is copied first and
/// announced, so the edit can start while the rest of the disk is still being copied; the
/// edit and the rest of the copy never touch the same bytes.
#[derive(Debug)]
pub struct BackgroundCopy {
    handle: Option<std::thread::JoinHandle<io::Result<u64>>>,
    cancel: Arc<AtomicBool>,
    first_done: std::sync::mpsc::Receiver<()>,
    input: PathBuf,
    dest: PathBuf,
}

impl BackgroundCopy {
    /// Starts copying the raw image `input` to `dest`, the bytes `first` before all others.
    pub fn start(input: &Path, dest: &Path, first: std::ops::Range<u64>) -> Result<Self> {
        let src = File::open(input).with_context(|| format!("opening input image {}", input.display()))?;
        let cancel = Arc::new(AtomicBool::new(false));
        let (flag, to) = (cancel.clone(), dest.to_owned());
        let (tx, first_done) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || copy_sparse_file_with(&src, &to, &flag, first, Some(tx)));
        Ok(Self { handle: Some(handle), cancel, first_done, input: input.to_owned(), dest: dest.to_owned() })
    }

    /// Waits until the first range is in place (or the copy failed, which [`Self::finish`]
    /// then reports).
    pub fn wait_first(&self) -> Result<()> {
        self.first_done.recv().map_err(|_| anyhow::anyhow!("copying {} stopped early", self.input.display()))
    }

    /// Waits for the copy to finish.
    pub fn finish(mut self) -> Result<()> {
        let handle = self.handle.take().expect("joined once");
        let result = handle.join().map_err(|_| anyhow::anyhow!("the copy thread panicked"))?;
        result.map(drop).with_context(|| format!("copying {} to {}", self.input.display(), self.dest.display()))
    }
}

impl Drop for BackgroundCopy {
    /// An abandoned copy (a refusal) stops at its next chunk and is waited for, so nothing
    /// writes into the scratch directory after its guard removed it.
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Copies only the data extents of `src`; holes stay holes.
fn copy_sparse_file(src: &File, dest: &Path) -> io::Result<u64> {
    copy_sparse_file_with(src, dest, &AtomicBool::new(false), 0..0, None)
}

fn copy_sparse_file_with(
    src: &File,
    dest: &Path,
    cancel: &AtomicBool,
    first: std::ops::Range<u64>,
    first_done: Option<std::sync::mpsc::Sender<()>>,
) -> io::Result<u64> {
    let len = src.metadata()?.len();
    let out = File::create_new(dest)?;
    out.set_len(len)?;
    let first = first.start.min(len)..first.end.min(len);
    let copied = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Flush behind the copy: every e2fsprogs run fsyncs the image when it closes it, so
        // the copied gigabytes reach the disk before the first edit is done either way.
        // Writing them back while the rest is still being read overlaps the two instead of
        // doing them in turn, and keeps dirty memory low on small CI machines. Errors surface
        // in the final fdatasync below.
        scope.spawn(|| {
            while !copied.load(Ordering::Relaxed) && !cancel.load(Ordering::Relaxed) {
                let _ = rustix::fs::fdatasync(&out);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let result = (|| {
            copy_extents(src, &out, first.clone(), cancel)?;
            if let Some(tx) = first_done {
                let _ = tx.send(());
            }
            copy_extents(src, &out, 0..first.start, cancel)?;
            copy_extents(src, &out, first.end..len, cancel)
        })();
        copied.store(true, Ordering::Relaxed);
        result
    })?;
    rustix::fs::fdatasync(&out)?;
    Ok(len)
}

/// Copies the data extents of `src` within `range`.
fn copy_extents(src: &File, out: &File, range: std::ops::Range<u64>, cancel: &AtomicBool) -> io::Result<()> {
    let mut pos = range.start;
    while pos < range.end {
        let data = match rustix::fs::seek(src, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) if d < range.end => d,
            Ok(_) => break,
            // ENXIO: no data after `pos`, the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(src, rustix::fs::SeekFrom::Hole(data))?.min(range.end);
        // In chunks, so a cancelled copy stops soon.
        let mut at = data;
        while at < hole {
            if cancel.load(Ordering::Relaxed) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "copy cancelled"));
            }
            let n = (hole - at).min(64 << 20);
            copy_range(src, out, at, n)?;
            at += n;
        }
        pos = hole;
    }
    Ok(())
}

/// Copies `len` bytes from `src` at `start` to `out` at the same offset, in the kernel.
fn copy_range(src: &File, out: &File, start: u64, len: u64) -> io::Result<()> {
    copy_between(src, start, out, start, len)
}

/// Copies `remaining` bytes from `src` at `off_in` to `out` at `off_out`, in the kernel where
/// the filesystem allows it.
pub(crate) fn copy_between(src: &File, off_in: u64, out: &File, off_out: u64, mut remaining: u64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (off_in, off_out);
    while remaining > 0 {
        let chunk = remaining.min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut off_in), out, Some(&mut off_out), chunk) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "input shrank while copying")),
            Ok(n) => remaining -= n as u64,
            // Across filesystems on old kernels, or on filesystems without support: plain copy.
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::INVAL,
            ) => {
                let mut r = src.try_clone()?;
                let mut w = out.try_clone()?;
                r.seek(SeekFrom::Start(off_in))?;
                w.seek(SeekFrom::Start(off_out))?;
                let copied = io::copy(&mut r.take(remaining), &mut w)?;
                if copied != remaining {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "input shrank while copying"));
                }
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Converts the composed raw image into `dest` in the requested format.
pub fn write_output(raw: &Path, format: OutputFormat, dest: &Path) -> Result<()> {
    match format {
        OutputFormat::Raw => fs_err::rename(raw, dest).map_err(Into::into),
        OutputFormat::Qcow2 => {
            run(Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "qcow2"]).arg(raw).arg(dest))
                .with_context(|| format!("converting the composed image to qcow2 at {}", dest.display()))
        }
    }
}

/// A scratch directory next to `OUT`, so the final rename is atomic and the large temporary
/// files land on the filesystem that has room for the output anyway. Removed on drop, so an
/// error leaves nothing behind.
#[derive(Debug)]
pub struct Staging {
    dir: ScratchDir,
    out: PathBuf,
}

impl Staging {
    /// Creates the scratch directory beside `out`, first removing those of killed runs.
    pub fn beside(out: &Path) -> Result<Self> {
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        scratch::sweep(parent, scratch::STAGING_PREFIX);
        let dir = ScratchDir::new_in(parent, scratch::STAGING_PREFIX)
            .with_context(|| format!("creating a scratch directory in {}", parent.display()))?;
        Ok(Self { dir, out: out.to_owned() })
    }

    /// The scratch directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Moves a finished file into place as `OUT`.
    pub fn publish(self, finished: &Path) -> Result<()> {
        fs_err::rename(finished, &self.out)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_writes_keep_zeros_as_holes() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 4 * BLOCK + 100];
        data[BLOCK + 5] = 7;
        data[4 * BLOCK + 99] = 9;
        let dest = dir.path().join("out");
        assert_eq!(write_sparse(&data[..], &dest).unwrap(), data.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), data);

        let copy = dir.path().join("copy");
        copy_sparse_file(&File::open(&dest).unwrap(), &copy).unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), data);

        // A range copied first, announced, and the rest around it.
        let copy = dir.path().join("copy2");
        let first = BLOCK as u64 + 3..3 * BLOCK as u64;
        let copier = BackgroundCopy::start(&dest, &copy, first).unwrap();
        copier.wait_first().unwrap();
        copier.finish().unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), data);
    }

    #[test]
    fn detects_by_magic() {
        let dir = tempfile::tempdir().unwrap();
        for (bytes, want) in [
            (&b"QFI\xfb\0\0\0\x03"[..], InputFormat::Qcow2),
            (&[0xFD, b'7', b'z', b'X', b'Z', 0, 0][..], InputFormat::Xz),
            (&[0x28, 0xB5, 0x2F, 0xFD, 0][..], InputFormat::Zstd),
            (&b"BZh91AY"[..], InputFormat::Bzip2),
            (&[0u8; 16][..], InputFormat::Raw),
        ] {
            let p = dir.path().join("x");
            std::fs::write(&p, bytes).unwrap();
            assert_eq!(detect(&p).unwrap(), want);
        }
    }
}
