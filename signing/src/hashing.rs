use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::Sha256Digest;

/// A reader that hashes every byte it hands out.
///
/// Stack it between a network body and a file so that the digest is known the moment the last
/// byte is written, without a second pass over the data.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new(), bytes: 0 }
    }

    /// Number of bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// Consumes the reader and returns the digest of everything read and the inner reader.
    pub fn finish(self) -> (Sha256Digest, R) {
        (Sha256Digest::from_bytes(self.hasher.finalize().into()), self.inner)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A writer that hashes every byte written through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), bytes: 0 }
    }

    /// The wrapped writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Number of bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Consumes the writer and returns the digest of everything written and the inner writer.
    pub fn finish(self) -> (Sha256Digest, W) {
        (Sha256Digest::from_bytes(self.hasher.finalize().into()), self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_and_writer_agree_with_one_shot_digest() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut reader = HashingReader::new(&data[..]);
        let mut writer = HashingWriter::new(Vec::new());
        io::copy(&mut reader, &mut writer).unwrap();
        assert_eq!(reader.bytes_read(), data.len() as u64);
        assert_eq!(writer.bytes_written(), data.len() as u64);
        let (rd, _) = reader.finish();
        let (wd, out) = writer.finish();
        assert_eq!(rd, Sha256Digest::of(&data));
        assert_eq!(wd, rd);
        assert_eq!(out, data);
    }
}
