//! Ed25519 keys and detached signatures.
//!
//! Formats are chosen so that stock tools can check everything: private keys are PKCS#8 v1
//! PEM (OpenSSL 3.0 cannot read the v2 form ed25519-dalek writes by default), public keys are
//! SPKI PEM, and a signature is the raw 64-byte Ed25519 signature over the exact file bytes,
//! stored next to the file as `<file>.sig`, so
//! `openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in FILE -sigfile FILE.sig` agrees.

use std::fmt;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::Sha256Digest;

/// A key problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{}: {cause}", path.display())]
    Io {
        /// Key file.
        path: PathBuf,
        /// Cause.
        cause: std::io::Error,
    },
    /// The file is not a key of the expected kind.
    #[error("{}: not an Ed25519 {what} in PEM form ({reason})", path.display())]
    Format {
        /// Key file.
        path: PathBuf,
        /// "private key (PKCS#8)" or "public key (SPKI)".
        what: &'static str,
        /// Parser message.
        reason: String,
    },
    /// Refusing to replace an existing key.
    #[error("{}: already exists; refusing to overwrite a key", path.display())]
    Exists {
        /// Key file.
        path: PathBuf,
    },
    /// The system random number generator failed.
    #[error("no randomness for key generation: {0}")]
    Random(String),
}

/// Why a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// There is no `.sig` next to the file.
    #[error("{}: no signature file (expected {})", file.display(), sig.display())]
    Missing {
        /// Signed file.
        file: PathBuf,
        /// Where the signature should be.
        sig: PathBuf,
    },
    /// The `.sig` is not 64 bytes.
    #[error("{}: a signature is 64 bytes, this has {len}", sig.display())]
    Malformed {
        /// Signature file.
        sig: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The signature does not match the file under this key.
    #[error("{}: signature does not verify with key {key_id}: the file was modified after signing, or it was signed with another key", file.display())]
    Mismatch {
        /// Signed file.
        file: PathBuf,
        /// Key tried.
        key_id: KeyId,
    },
    /// Reading the file or signature failed.
    #[error("{}: {cause}", path.display())]
    Io {
        /// File involved.
        path: PathBuf,
        /// Cause (as text, so the error stays comparable).
        cause: String,
    },
}

/// Why 32 bytes (or 64 hex characters) are not a usable public key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublicKeyParseError {
    /// Not 64 lowercase hex characters.
    #[error("expected a raw Ed25519 public key as 64 lowercase hex characters, got {0:?}")]
    NotHex(String),
    /// Not the encoding of a curve point.
    #[error("not an Ed25519 public key (not a curve point)")]
    NotAPoint,
    /// A small-order point.
    #[error("a weak (small-order) Ed25519 public key, which anyone can sign for")]
    Weak,
}

/// The raw public key as 64 lowercase hex characters (how index.json carries keys).
impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.to_bytes()))
    }
}

impl std::str::FromStr for PublicKey {
    type Err = PublicKeyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut raw = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(PublicKeyParseError::NotHex(s.to_owned()));
        }
        hex::decode_to_slice(s, &mut raw).map_err(|_| PublicKeyParseError::NotHex(s.to_owned()))?;
        Self::from_bytes(&raw)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Short key identifier: the first 16 hex characters of sha256(raw public key).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Why a string is not a key id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected a key id of 16 lowercase hex characters, got {0:?}")]
pub struct KeyIdParseError(String);

impl std::str::FromStr for KeyId {
    type Err = KeyIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut id = [0u8; 8];
        if s.len() != 16 || s.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(KeyIdParseError(s.to_owned()));
        }
        hex::decode_to_slice(s, &mut id).map_err(|_| KeyIdParseError(s.to_owned()))?;
        Ok(KeyId(id))
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

fn key_id_of(public: &VerifyingKey) -> KeyId {
    let digest = Sha256Digest::of(public.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest.as_bytes()[..8]);
    KeyId(id)
}

/// The path of a file's detached signature: `<file>.sig`.
pub fn signature_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// A private signing key.
pub struct PrivateKey(SigningKey);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({})", self.key_id())
    }
}

/// A public verification key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|cause| KeyError::Io { path: path.to_owned(), cause })
}

/// Writes `contents` to a new file with `mode`, failing if it exists.
fn create_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |cause: std::io::Error| {
        if cause.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists { path: path.to_owned() }
        } else {
            KeyError::Io { path: path.to_owned(), cause }
        }
    };
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

impl PrivateKey {
    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// Reads a PKCS#8 PEM private key (v1 or v2).
    pub fn read_pem(path: &Path) -> Result<Self, KeyError> {
        let pem = read(path)?;
        SigningKey::from_pkcs8_pem(&pem).map(Self).map_err(|e| KeyError::Format {
            path: path.to_owned(),
            what: "private key (PKCS#8)",
            reason: e.to_string(),
        })
    }

    /// PKCS#8 v1 PEM (no embedded public key), which OpenSSL 3.0 reads.
    pub fn to_pem(&self) -> String {
        let bytes = KeypairBytes { secret_key: self.0.to_bytes(), public_key: None };
        bytes.to_pkcs8_pem(LineEnding::LF).expect("encoding a 32-byte key cannot fail").to_string()
    }

    /// The 32-byte Ed25519 seed, for deriving other keys from it ([`crate::openpgp`]).
    pub(crate) fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The key id of the matching public key.
    pub fn key_id(&self) -> KeyId {
        key_id_of(&self.0.verifying_key())
    }

    /// Raw 64-byte signature over `data`.
    pub fn sign(&self, data: &[u8]) -> [u8; 64] {
        self.0.sign(data).to_bytes()
    }

    /// Signs a file, writing `<file>.sig` (via a temporary file and rename); returns its path.
    pub fn sign_file(&self, file: &Path) -> Result<PathBuf, KeyError> {
        let io = |path: &Path, cause| KeyError::Io { path: path.to_owned(), cause };
        let data = std::fs::read(file).map_err(|e| io(file, e))?;
        let sig = signature_path(file);
        let dir = sig.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io(dir, e))?;
        std::io::Write::write_all(&mut tmp, &self.sign(&data)).map_err(|e| io(tmp.path(), e))?;
        tmp.as_file().sync_all().map_err(|e| io(&sig, e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644)).map_err(|e| io(&sig, e))?;
        }
        tmp.persist(&sig).map_err(|e| io(&sig, e.error))?;
        Ok(sig)
    }
}

impl PublicKey {
    /// Reads an SPKI PEM public key.
    pub fn read_pem(path: &Path) -> Result<Self, KeyError> {
        let pem = read(path)?;
        VerifyingKey::from_public_key_pem(&pem).map(Self).map_err(|e| KeyError::Format {
            path: path.to_owned(),
            what: "public key (SPKI)",
            reason: e.to_string(),
        })
    }

    /// SPKI PEM.
    pub fn to_pem(&self) -> String {
        self.0.to_public_key_pem(LineEnding::LF).expect("encoding a 32-byte key cannot fail")
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        key_id_of(&self.0)
    }

    /// The raw 32-byte public key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// A public key from its raw 32 bytes; refuses encodings that are not a point, and
    /// small-order ("weak") keys, under which signatures prove nothing.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, PublicKeyParseError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| PublicKeyParseError::NotAPoint)?;
        if key.is_weak() {
            return Err(PublicKeyParseError::Weak);
        }
        Ok(Self(key))
    }

    /// Checks a raw signature over `data`.
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 64]>::try_from(signature) else { return false };
        // Strict: refuses small-order keys and non-canonical encodings, so no second signature
        // over the same bytes can pass for ours.
        self.0.verify_strict(data, &Signature::from_bytes(&bytes)).is_ok()
    }

    /// Checks `<file>.sig` against `file`.
    pub fn verify_file(&self, file: &Path) -> Result<(), VerifyError> {
        let data = std::fs::read(file).map_err(|e| VerifyError::Io { path: file.to_owned(), cause: e.to_string() })?;
        self.verify_detached(file, &data)
    }

    /// Checks `<file>.sig` against `data`, the bytes already read from `file`: for callers
    /// that must check exactly the bytes they go on to use.
    pub fn verify_detached(&self, file: &Path, data: &[u8]) -> Result<(), VerifyError> {
        let sig_path = signature_path(file);
        let sig = match std::fs::read(&sig_path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VerifyError::Missing { file: file.to_owned(), sig: sig_path })
            }
            Err(e) => return Err(VerifyError::Io { path: sig_path, cause: e.to_string() }),
        };
        if sig.len() != 64 {
            return Err(VerifyError::Malformed { sig: sig_path, len: sig.len() });
        }
        if self.verify(data, &sig) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch { file: file.to_owned(), key_id: self.key_id() })
        }
    }
}

/// Writes a new key pair as `DIR/private.pem` (mode 0600) and `DIR/public.pem` (0644),
/// refusing to overwrite either; returns the key id.
pub fn keygen(dir: &Path) -> Result<KeyId, KeyError> {
    std::fs::create_dir_all(dir).map_err(|cause| KeyError::Io { path: dir.to_owned(), cause })?;
    let private_path = dir.join("private.pem");
    let public_path = dir.join("public.pem");
    for p in [&private_path, &public_path] {
        if p.exists() {
            return Err(KeyError::Exists { path: p.clone() });
        }
    }
    let key = PrivateKey::generate()?;
    create_new(&private_path, key.to_pem().as_bytes(), 0o600)?;
    create_new(&public_path, key.public().to_pem().as_bytes(), 0o644)?;
    Ok(key.key_id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keygen_writes_v1_pkcs8_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let id = keygen(dir.path()).unwrap();
        let private = dir.path().join("private.pem");
        assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        let pem = std::fs::read_to_string(&private).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        // v1 PKCS#8 for Ed25519 is exactly 48 bytes of DER: 64 base64 characters.
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert_eq!(body.len(), 64, "not PKCS#8 v1: {pem}");
        let key = PrivateKey::read_pem(&private).unwrap();
        assert_eq!(key.key_id(), id);
        assert_eq!(PublicKey::read_pem(&dir.path().join("public.pem")).unwrap().key_id(), id);
        assert!(matches!(keygen(dir.path()), Err(KeyError::Exists { .. })));
        assert_eq!(std::fs::read_to_string(&private).unwrap(), pem, "the key was replaced");
    }

    #[test]
    fn signatures_verify_and_detect_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate().unwrap();
        let other = PrivateKey::generate().unwrap();
        let file = dir.path().join("image.raw");
        std::fs::write(&file, vec![7u8; 100_000]).unwrap();
        assert_eq!(
            key.public().verify_file(&file),
            Err(VerifyError::Missing { file: file.clone(), sig: dir.path().join("image.raw.sig") })
        );
        let sig = key.sign_file(&file).unwrap();
        assert_eq!(std::fs::read(&sig).unwrap().len(), 64);
        key.public().verify_file(&file).unwrap();
        assert!(matches!(other.public().verify_file(&file), Err(VerifyError::Mismatch { .. })));
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[50_000] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let err = key.public().verify_file(&file).unwrap_err();
        assert!(err.to_string().contains("modified after signing"), "{err}");
        std::fs::write(&sig, [0u8; 10]).unwrap();
        assert!(matches!(key.public().verify_file(&file), Err(VerifyError::Malformed { len: 10, .. })));
    }

    #[test]
    fn raw_public_keys_round_trip_and_refuse_weak_ones() {
        let key = PrivateKey::generate().unwrap().public();
        let text = key.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<PublicKey>().unwrap(), key);
        assert!(matches!(text.to_uppercase().parse::<PublicKey>(), Err(PublicKeyParseError::NotHex(_))));
        // The identity point (small order): every signature would "verify".
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity), Err(PublicKeyParseError::Weak));
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), key);
    }

    #[test]
    fn garbage_keys_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        std::fs::write(&p, "not a key").unwrap();
        let err = PrivateKey::read_pem(&p).unwrap_err().to_string();
        assert!(err.contains("k.pem: not an Ed25519 private key (PKCS#8)"), "{err}");
        let err = PublicKey::read_pem(&p).unwrap_err().to_string();
        assert!(err.contains("k.pem: not an Ed25519 public key (SPKI)"), "{err}");
    }
}
