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

use anyhow::{bail, Context, Result};
use serde::Serialize;

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

/// Copies only the data extents of `src`; holes stay holes.
fn copy_sparse_file(src: &File, dest: &Path) -> io::Result<u64> {
    let len = src.metadata()?.len();
    let out = File::create_new(dest)?;
    out.set_len(len)?;
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(src, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            // ENXIO: no data after `pos`, the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(src, rustix::fs::SeekFrom::Hole(data))?.min(len);
        copy_range(src, &out, data, hole - data)?;
        pos = hole;
    }
    Ok(len)
}

fn copy_range(src: &File, out: &File, start: u64, mut remaining: u64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (start, start);
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
    dir: tempfile::TempDir,
    out: PathBuf,
}

impl Staging {
    /// Creates the scratch directory beside `out`.
    pub fn beside(out: &Path) -> Result<Self> {
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let dir = tempfile::Builder::new()
            .prefix(".composer-")
            .tempdir_in(parent)
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
