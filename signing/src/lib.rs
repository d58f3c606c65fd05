//! Integrity primitives shared by `bakery`, `release-index` and `composer`.
//!
//! Everything that decides whether a byte may be trusted lives here, so that the rules are
//! written once: digests are parsed strictly, and data is hashed while it streams so that a
//! consumer never has to buffer a download before checking it.
#![warn(missing_docs)]

use sysext_model::string_schema;

mod digest;
mod digests;
mod hashing;
mod keys;
pub mod openpgp;

pub use digest::{DigestParseError, Sha256Digest};
pub use digests::{copy, Digests, DigestsHasher, DigestsWriter, Sha512Digest, Sha512ParseError};
pub use hashing::{HashingReader, HashingWriter};
pub use keys::{
    keygen, signature_path, KeyError, KeyId, KeyIdParseError, PrivateKey, PublicKey, PublicKeyParseError, VerifyError,
};

string_schema!(Sha256Digest, "Sha256Digest", "SHA-256 as 64 lowercase hex characters.", "^[0-9a-f]{64}$");
string_schema!(Sha512Digest, "Sha512Digest", "SHA-512 as 128 lowercase hex characters.", "^[0-9a-f]{128}$");
string_schema!(
    openpgp::Fingerprint,
    "OpenPgpFingerprint",
    "OpenPGP v4 fingerprint as 40 uppercase hex characters.",
    "^[0-9A-F]{40}$"
);
string_schema!(PublicKey, "PublicKey", "Raw Ed25519 public key as 64 lowercase hex characters.", "^[0-9a-f]{64}$");
string_schema!(KeyId, "KeyId", "First 16 hex characters of sha256 of the raw Ed25519 public key.", "^[0-9a-f]{16}$");
