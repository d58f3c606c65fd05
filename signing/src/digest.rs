use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
///
/// Displayed and parsed as 64 lowercase hex characters, the form `sha256sum`, upstream
/// `.sha256` files and systemd-sysupdate's `SHA256SUMS` use. Parsing also accepts a
/// `sha256:` prefix (OCI style) and uppercase hex, because upstream checksum files are not
/// uniform, but it never accepts a digest of the wrong length.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; 32]);

/// Why a string is not a SHA-256 digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestParseError {
    /// Not 64 hex characters long.
    #[error("expected 64 hex characters for a sha256 digest, got {0} characters")]
    Length(usize),
    /// Contains something other than hex digits.
    #[error("expected only hex digits in a sha256 digest, got {0:?}")]
    NotHex(String),
}

impl Sha256Digest {
    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Digest of an in-memory buffer.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// Digest of everything `reader` yields, read in large chunks.
    pub fn of_reader(mut reader: impl Read) -> io::Result<Self> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(Self(hasher.finalize().into())),
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// `to_hex`, `Display` (lowercase hex), `Debug` (`<algorithm>:<hex>`) and serde as the hex
/// string, for a digest newtype over a byte array.
macro_rules! hex_digest {
    ($t:ident, $algorithm:literal) => {
        impl $t {
            /// Lowercase hex form (same as `Display`).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!($algorithm, ":{}"), self.to_hex())
            }
        }

        sysext_model::serde_via_str!($t);
    };
}
pub(crate) use hex_digest;

hex_digest!(Sha256Digest, "sha256");

impl FromStr for Sha256Digest {
    type Err = DigestParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        if hex_part.len() != 64 {
            return Err(DigestParseError::Length(hex_part.len()));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part.to_ascii_lowercase(), &mut bytes)
            .map_err(|_| DigestParseError::NotHex(s.to_owned()))?;
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn round_trips_through_display() {
        let d: Sha256Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Sha256Digest::of(b""));
        assert_eq!(format!("{d:?}"), format!("sha256:{EMPTY}"));
    }

    #[test]
    fn accepts_prefix_and_uppercase() {
        let upper = EMPTY.to_ascii_uppercase();
        assert_eq!(upper.parse::<Sha256Digest>().unwrap(), Sha256Digest::of(b""));
        let prefixed = format!("sha256:{EMPTY}");
        assert_eq!(prefixed.parse::<Sha256Digest>().unwrap(), Sha256Digest::of(b""));
    }

    #[test]
    fn rejects_wrong_length_and_non_hex() {
        assert_eq!("abc".parse::<Sha256Digest>(), Err(DigestParseError::Length(3)));
        let bad = "g".repeat(64);
        assert!(matches!(bad.parse::<Sha256Digest>(), Err(DigestParseError::NotHex(_))));
    }

    #[test]
    fn reader_digest_matches_buffer_digest() {
        let data = vec![7u8; 1_000_000];
        assert_eq!(Sha256Digest::of_reader(&data[..]).unwrap(), Sha256Digest::of(&data));
    }

    #[test]
    fn serde_uses_plain_hex() {
        let d = Sha256Digest::of(b"");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Sha256Digest>(&json).unwrap(), d);
    }
}
