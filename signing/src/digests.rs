//! Size, SHA-256 and SHA-512 of one byte stream, computed in a single pass.
//!
//! A release index records all three for every artifact: sysupdate and `sha256sum` check
//! SHA-256, Ignition's `verification.hash` is most often written as SHA-512, and the size lets
//! a client stop a download that runs long before hashing gigabytes of garbage.

use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest, Sha256, Sha512};

use crate::Sha256Digest;

/// A SHA-512 digest, displayed and parsed as 128 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha512Digest([u8; 64]);

/// Why a string is not a SHA-512 digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected 128 lowercase hex characters for a sha512 digest, got {0:?}")]
pub struct Sha512ParseError(String);

impl Sha512Digest {
    /// Digest of an in-memory buffer.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha512::digest(data).into())
    }
}

crate::digest::hex_digest!(Sha512Digest, "sha512");

impl FromStr for Sha512Digest {
    type Err = Sha512ParseError;

    /// Strict: exactly 128 lowercase hex digits, because this form only ever appears in files we
    /// write ourselves.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 64];
        if s.len() != 128 || s.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(Sha512ParseError(s.to_owned()));
        }
        hex::decode_to_slice(s, &mut bytes).map_err(|_| Sha512ParseError(s.to_owned()))?;
        Ok(Self(bytes))
    }
}

/// Size and both digests of a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digests {
    /// Number of bytes.
    pub size: u64,
    /// SHA-256 of the bytes.
    pub sha256: Sha256Digest,
    /// SHA-512 of the bytes.
    pub sha512: Sha512Digest,
}

impl Digests {
    /// Digests of an in-memory buffer.
    pub fn of(data: &[u8]) -> Self {
        let mut h = DigestsHasher::default();
        h.update(data);
        h.finish()
    }

    /// Digests of everything `reader` yields.
    pub fn of_reader(reader: impl Read) -> io::Result<Self> {
        let mut w = DigestsWriter::new(io::sink());
        copy(reader, &mut w)?;
        Ok(w.finish().0)
    }
}

/// Incremental computation of [`Digests`].
#[derive(Clone, Debug, Default)]
pub struct DigestsHasher {
    size: u64,
    sha256: Sha256,
    sha512: Sha512,
}

impl DigestsHasher {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.size += data.len() as u64;
        self.sha256.update(data);
        self.sha512.update(data);
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The result.
    pub fn finish(self) -> Digests {
        Digests {
            size: self.size,
            sha256: Sha256Digest::from_bytes(self.sha256.finalize().into()),
            sha512: Sha512Digest(self.sha512.finalize().into()),
        }
    }
}

/// A writer that computes [`Digests`] of everything written through it, so a file's recorded
/// digests describe exactly the bytes that reached the disk.
#[derive(Debug)]
pub struct DigestsWriter<W> {
    inner: W,
    hasher: DigestsHasher,
}

impl<W: Write> DigestsWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: DigestsHasher::default() }
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.hasher.size()
    }

    /// The digests and the inner writer.
    pub fn finish(self) -> (Digests, W) {
        (self.hasher.finish(), self.inner)
    }
}

impl<W: Write> Write for DigestsWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `io::copy` with a large buffer: hashing dominates, and 256 KiB reads keep syscalls out of
/// the profile.
pub fn copy(mut reader: impl Read, writer: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                writer.write_all(&buf[..n])?;
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_known_vectors_and_round_trips() {
        let d = Digests::of(b"abc");
        assert_eq!(d.size, 3);
        assert_eq!(d.sha256.to_string(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(
            d.sha512.to_string(),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
        assert_eq!(d.sha512.to_string().parse::<Sha512Digest>().unwrap(), d.sha512);
        let json = serde_json::to_string(&d.sha512).unwrap();
        assert_eq!(serde_json::from_str::<Sha512Digest>(&json).unwrap(), d.sha512);
        let data = vec![5u8; 700_000];
        assert_eq!(Digests::of_reader(&data[..]).unwrap(), Digests::of(&data));
    }

    #[test]
    fn sha512_parse_is_strict() {
        let hex = Sha512Digest::of(b"").to_string();
        assert!(hex.to_uppercase().parse::<Sha512Digest>().is_err());
        assert!(hex[..127].parse::<Sha512Digest>().is_err());
        assert!(format!("{}g", &hex[..127]).parse::<Sha512Digest>().is_err());
    }
}
