//! Integrity primitives shared by `bakery`, `release-index` and `composer`.
//!
//! Everything that decides whether a byte may be trusted lives here, so that the rules are
//! written once: digests are parsed strictly, and data is hashed while it streams so that a
//! consumer never has to buffer a download before checking it.
#![warn(missing_docs)]

mod digest;
mod hashing;
mod keys;

pub use digest::{DigestParseError, Sha256Digest};
pub use hashing::{HashingReader, HashingWriter};
pub use keys::{keygen, signature_path, KeyError, KeyId, PrivateKey, PublicKey, VerifyError};
