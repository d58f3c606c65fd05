//! OpenPGP signatures for stock systemd-sysupdate.
//!
//! systemd-sysupdate (through systemd-pull) trusts a `SHA256SUMS` only through a detached
//! OpenPGP signature, `SHA256SUMS.gpg`, checked against the keyring
//! `/etc/systemd/import-pubring.pgp` (older releases: `import-pubring.gpg`). This module makes
//! both from the release's Ed25519 key, with rpgp:
//!
//! * **One secret, two keys.** The OpenPGP key is *derived* from the Ed25519 key:
//!   its secret is `SHA-256("bakery openpgp release key v1\0" ‖ ed25519 seed)`. Using the
//!   Ed25519 secret itself would be unsound: an OpenPGP EdDSA signature is a plain Ed25519
//!   signature over a 32-byte digest, so every `SHA256SUMS.gpg` would also be a valid raw
//!   signature of a 32-byte file, and `bakery sign` of a crafted 32-byte file would forge a
//!   `SHA256SUMS.gpg`. Hashing the seed with a label gives an independent key (no signature
//!   made by one verifies under the other) that still needs no second secret to back up.
//! * **Stable fingerprint.** The key is a version 4 EdDSA (Ed25519) key, which GnuPG 2.2 and
//!   2.4 read, with the fixed creation time [`CREATION_TIME`] and a self-signature made at that
//!   same time; Ed25519 is deterministic, so the exported keyring is the same bytes for the
//!   same Ed25519 key every time, and so is its fingerprint.
//! * **The certificate** has one user ID, `bakery release key <key id>`, naming the Ed25519
//!   key it belongs to, and may sign and certify. It never expires: a release's expiry is in
//!   its signed index.
//!
//! [`Cert::verify_detached`] is this crate's own check (used by `verify-release`); the tests
//! check the same files with GnuPG's `gpgv`.

use std::fmt;

use pgp::composed::{Deserializable, DetachedSignature, SignedKeyDetails, SignedPublicKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::public_key::PublicKeyAlgorithm;
use pgp::crypto::{ed25519, eddsa_legacy};
use pgp::packet::{
    KeyFlags, PacketTrait, PubKeyInner, SecretKey, SignatureConfig, SignatureType, Subpacket, SubpacketData, UserId,
};
use pgp::ser::Serialize;
use pgp::types::{
    EddsaLegacyPublicParams, KeyDetails, KeyVersion, PacketHeaderVersion, Password, PlainSecretParams, PublicParams,
    SecretParams, SignedUser, Timestamp,
};
use sha2::Digest;

use crate::PrivateKey;

/// Creation time of every derived key: 2024-01-01T00:00:00Z. Part of the fingerprint, so it
/// never changes.
pub const CREATION_TIME: u32 = 1_704_067_200;

/// Domain separation for the derivation.
const DERIVATION_LABEL: &[u8] = b"bakery openpgp release key v1\0";

/// Largest keyring or signature file parsed.
pub const MAX_OPENPGP_BYTES: usize = 1 << 20;

/// Why an OpenPGP file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenPgpError {
    /// Not a keyring, or not one this module can use.
    #[error("not an OpenPGP keyring with an Ed25519 signing key: {0}")]
    Keyring(String),
    /// Not a detached binary signature.
    #[error("not an OpenPGP detached signature: {0}")]
    Malformed(String),
    /// No key of the keyring made the signature.
    #[error("the signature was made by key {issuer}, which is not in the keyring ({keyring})")]
    UnknownIssuer {
        /// Issuer named in the signature.
        issuer: String,
        /// Fingerprints in the keyring.
        keyring: String,
    },
    /// The signature does not match the data.
    #[error(
        "the signature does not verify with key {0}: the file was modified after signing, or signed with another key"
    )]
    Mismatch(Fingerprint),
}

/// A version 4 OpenPGP fingerprint, shown as GnuPG shows it: 40 uppercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 20]);

impl Fingerprint {
    /// The 20 bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    fn of(fp: &pgp::types::Fingerprint) -> Option<Self> {
        <[u8; 20]>::try_from(fp.as_bytes()).ok().map(Self)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode_upper(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Why a string is not a fingerprint.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected an OpenPGP v4 fingerprint of 40 uppercase hex characters, got {0:?}")]
pub struct FingerprintParseError(String);

impl std::str::FromStr for Fingerprint {
    type Err = FingerprintParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut fp = [0u8; 20];
        if s.len() != 40 || s.bytes().any(|c| c.is_ascii_lowercase()) {
            return Err(FingerprintParseError(s.to_owned()));
        }
        hex::decode_to_slice(s, &mut fp).map_err(|_| FingerprintParseError(s.to_owned()))?;
        Ok(Self(fp))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The OpenPGP signing key derived from a release's Ed25519 key.
pub struct OpenPgpKey {
    secret: SecretKey,
    cert: Cert,
}

impl fmt::Debug for OpenPgpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpenPgpKey({})", self.cert.fingerprint())
    }
}

fn subpacket(data: SubpacketData) -> Subpacket {
    Subpacket::regular(data).expect("small fixed subpackets encode")
}

impl OpenPgpKey {
    /// Derives the key (see the module docs); the same `key` always gives the same bytes.
    pub fn derive(key: &PrivateKey) -> Self {
        let mut hasher = sha2::Sha256::new();
        hasher.update(DERIVATION_LABEL);
        hasher.update(key.seed());
        let seed: [u8; 32] = hasher.finalize().into();
        let secret = ed25519::SecretKey::try_from_bytes(seed, ed25519::Mode::EdDSALegacy)
            .expect("every 32-byte string is an Ed25519 secret");
        let public_params = PublicParams::EdDSALegacy(EddsaLegacyPublicParams::from(&secret));
        let created = Timestamp::from_secs(CREATION_TIME);
        let inner = PubKeyInner::new(KeyVersion::V4, PublicKeyAlgorithm::EdDSALegacy, created, None, public_params)
            .expect("a v4 EdDSA key is valid");
        let public = pgp::packet::PublicKey::from_inner(inner).expect("a v4 EdDSA key is valid");
        let params = SecretParams::Plain(PlainSecretParams::EdDSALegacy(eddsa_legacy::SecretKey::Ed25519(secret)));
        let secret = SecretKey::new(public.clone(), params).expect("the secret matches its public key");

        let uid = UserId::from_str(PacketHeaderVersion::New, format!("bakery release key {}", key.key_id()))
            .expect("an ASCII user ID");
        let mut flags = KeyFlags::default();
        flags.set_certify(true);
        flags.set_sign(true);
        let mut config =
            SignatureConfig::v4(SignatureType::CertPositive, PublicKeyAlgorithm::EdDSALegacy, HashAlgorithm::Sha256);
        config.hashed_subpackets = vec![
            subpacket(SubpacketData::SignatureCreationTime(created)),
            subpacket(SubpacketData::IssuerFingerprint(secret.fingerprint())),
            subpacket(SubpacketData::KeyFlags(flags)),
            subpacket(SubpacketData::IsPrimary(true)),
        ];
        config.unhashed_subpackets = vec![subpacket(SubpacketData::IssuerKeyId(secret.legacy_key_id()))];
        let self_sig = config
            .sign_certification(&secret, &public, &Password::empty(), uid.tag(), &uid)
            .expect("signing with an unlocked Ed25519 key cannot fail");
        let details = SignedKeyDetails::new(vec![], vec![], vec![SignedUser::new(uid, vec![self_sig])], vec![]);
        let cert = Cert(SignedPublicKey::new(public, details, vec![]));
        Self { secret, cert }
    }

    /// The public certificate.
    pub fn cert(&self) -> &Cert {
        &self.cert
    }

    /// The key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.cert.fingerprint()
    }

    /// A detached binary signature over `data` made at `created` (Unix seconds), in the binary
    /// form `gpg --detach-sign` writes (what systemd-pull reads as `SHA256SUMS.gpg`).
    pub fn sign_detached(&self, data: &[u8], created: u32) -> Vec<u8> {
        let mut config =
            SignatureConfig::v4(SignatureType::Binary, PublicKeyAlgorithm::EdDSALegacy, HashAlgorithm::Sha256);
        config.hashed_subpackets = vec![
            subpacket(SubpacketData::SignatureCreationTime(Timestamp::from_secs(created))),
            subpacket(SubpacketData::IssuerFingerprint(self.secret.fingerprint())),
        ];
        config.unhashed_subpackets = vec![subpacket(SubpacketData::IssuerKeyId(self.secret.legacy_key_id()))];
        let sig = config
            .sign(&self.secret, &Password::empty(), data)
            .expect("signing with an unlocked Ed25519 key cannot fail");
        DetachedSignature::new(sig).to_bytes().expect("a signature serialises")
    }
}

/// An OpenPGP certificate (transferable public key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cert(SignedPublicKey);

impl Cert {
    /// The fingerprint of its primary key.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.0.fingerprint()).expect("v4 keys have 20-byte fingerprints")
    }

    /// The binary form `gpg --export` writes: a keyring with this one key, ready for
    /// `/etc/systemd/import-pubring.pgp` (and `gpgv --keyring`).
    pub fn to_keyring(&self) -> Vec<u8> {
        self.0.to_bytes().expect("a certificate serialises")
    }

    /// Reads a binary keyring (one or more certificates, as `gpg --export` writes or `cat`
    /// concatenates). Every certificate must carry a valid self-signature.
    pub fn parse_keyring(bytes: &[u8]) -> Result<Vec<Cert>, OpenPgpError> {
        let bad = |e: String| OpenPgpError::Keyring(e);
        if bytes.len() > MAX_OPENPGP_BYTES {
            return Err(bad(format!("{} bytes, more than any keyring of release keys", bytes.len())));
        }
        let mut certs = Vec::new();
        for cert in SignedPublicKey::from_bytes_many(bytes).map_err(|e| bad(e.to_string()))? {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            cert.verify_bindings().map_err(|e| bad(format!("key {}: self-signature: {e}", cert.fingerprint())))?;
            if Fingerprint::of(&cert.fingerprint()).is_none() {
                return Err(bad(format!("key {} is not a version 4 key", cert.fingerprint())));
            }
            certs.push(Cert(cert));
        }
        if certs.is_empty() {
            return Err(bad("no key in it".into()));
        }
        Ok(certs)
    }

    /// Reads a release's keyring, which must hold exactly the key `want` (the fingerprint the
    /// signed index names): anything else in it would be trusted by sysupdate too.
    pub fn parse_release_keyring(bytes: &[u8], want: Fingerprint) -> Result<Vec<Cert>, OpenPgpError> {
        let certs = Self::parse_keyring(bytes)?;
        if certs.len() != 1 || certs[0].fingerprint() != want {
            return Err(OpenPgpError::Keyring(format!(
                "does not hold exactly OpenPGP key {want}, which the signed index names"
            )));
        }
        Ok(certs)
    }

    /// Checks a detached binary signature over `data` against the first of `keyring` that
    /// issued it.
    pub fn verify_detached(keyring: &[Cert], data: &[u8], signature: &[u8]) -> Result<Fingerprint, OpenPgpError> {
        let bad = |e: String| OpenPgpError::Malformed(e);
        if signature.len() > MAX_OPENPGP_BYTES {
            return Err(bad(format!("{} bytes", signature.len())));
        }
        let mut sigs = DetachedSignature::from_bytes_many(signature).map_err(|e| bad(e.to_string()))?;
        let sig = sigs.next().ok_or_else(|| bad("no signature packet".into()))?.map_err(|e| bad(e.to_string()))?;
        if sigs.next().is_some() {
            return Err(bad("more than one signature".into()));
        }
        if sig.signature.typ() != Some(SignatureType::Binary) {
            return Err(bad(format!("a {:?} signature, expected a binary document signature", sig.signature.typ())));
        }
        let issuers: Vec<String> = sig
            .signature
            .issuer_fingerprint()
            .iter()
            .map(|f| f.to_string())
            .chain(sig.signature.issuer_key_id().iter().map(|k| k.to_string()))
            .collect();
        let issued = |c: &&Cert| {
            sig.signature.issuer_fingerprint().iter().any(|f| **f == c.0.fingerprint())
                || sig.signature.issuer_key_id().iter().any(|k| **k == c.0.legacy_key_id())
        };
        let Some(cert) = keyring.iter().find(issued) else {
            return Err(OpenPgpError::UnknownIssuer {
                issuer: issuers.join(", "),
                keyring: keyring.iter().map(|c| c.fingerprint().to_string()).collect::<Vec<_>>().join(", "),
            });
        };
        sig.verify(&cert.0, data).map_err(|_| OpenPgpError::Mismatch(cert.fingerprint()))?;
        Ok(cert.fingerprint())
    }
}

/// The property the `openpgp` fuzz target checks, and the corpus replay with it: keyrings and
/// detached signatures come from releases (`import-pubring.gpg`, `SHA256SUMS.gpg`), so reading
/// them never panics, a keyring that parses writes back to one that parses to the same keys,
/// and a signature accepted is one of the keyring's keys'. `data` is a 2-byte big-endian
/// length and that many bytes of keyring, the same for a signature, then the signed bytes.
pub fn fuzz_property(data: &[u8]) {
    fn take(data: &[u8]) -> Option<(&[u8], &[u8])> {
        let (len, rest) = data.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        Some(rest.split_at(len))
    }
    let Some((keyring, rest)) = take(data) else { return };
    let Some((signature, signed)) = take(rest) else { return };
    let Ok(certs) = Cert::parse_keyring(keyring) else { return };
    let again: Vec<u8> = certs.iter().flat_map(Cert::to_keyring).collect();
    assert_eq!(Cert::parse_keyring(&again).expect("a keyring written back parses"), certs);
    if let Ok(fingerprint) = Cert::verify_detached(&certs, signed, signature) {
        assert!(certs.iter().any(|c| c.fingerprint() == fingerprint), "accepted by a key not in the keyring");
    }
}

/// A seed for the fuzz target: `keyring` and `signature` over `signed` in its input layout.
pub fn fuzz_input(keyring: &[u8], signature: &[u8], signed: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for part in [keyring, signature] {
        v.extend_from_slice(&u16::try_from(part.len()).expect("seed parts fit in 64 KiB").to_be_bytes());
        v.extend_from_slice(part);
    }
    v.extend_from_slice(signed);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snakeoil() -> PrivateKey {
        let pem = include_str!("../../tests/fixtures/keys/snakeoil-private.pem");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        std::fs::write(&p, pem).unwrap();
        PrivateKey::read_pem(&p).unwrap()
    }

    #[test]
    fn derivation_is_deterministic_and_independent_of_the_ed25519_key() {
        let key = snakeoil();
        let a = OpenPgpKey::derive(&key);
        let b = OpenPgpKey::derive(&key);
        assert_eq!(a.cert().to_keyring(), b.cert().to_keyring(), "same key, same bytes");
        // Pinned: the fingerprint nodes are told to trust must never drift with a dependency.
        assert_eq!(a.fingerprint().to_string(), include_str!("../../tests/fixtures/keys/snakeoil-openpgp.fpr").trim());
        let other = OpenPgpKey::derive(&PrivateKey::generate().unwrap());
        assert_ne!(a.fingerprint(), other.fingerprint());

        // The OpenPGP key is not the Ed25519 key: its raw signatures do not verify as ours.
        let sig = a.sign_detached(b"data", CREATION_TIME + 1);
        let raw = &sig[sig.len() - 64..];
        assert!(!key.public().verify(b"data", raw));
    }

    #[test]
    fn signatures_round_trip_and_refuse_tampering_and_strangers() {
        let key = OpenPgpKey::derive(&snakeoil());
        let keyring = Cert::parse_keyring(&key.cert().to_keyring()).unwrap();
        assert_eq!(keyring.len(), 1);
        assert_eq!(keyring[0].fingerprint(), key.fingerprint());
        let sig = key.sign_detached(b"hello\n", 1_795_341_600);
        assert_eq!(sig, key.sign_detached(b"hello\n", 1_795_341_600), "deterministic");
        assert_eq!(Cert::verify_detached(&keyring, b"hello\n", &sig), Ok(key.fingerprint()));
        assert_eq!(Cert::verify_detached(&keyring, b"hellO\n", &sig), Err(OpenPgpError::Mismatch(key.fingerprint())));

        let stranger = OpenPgpKey::derive(&PrivateKey::generate().unwrap());
        let err = Cert::verify_detached(&keyring, b"hello\n", &stranger.sign_detached(b"hello\n", 1)).unwrap_err();
        assert!(matches!(err, OpenPgpError::UnknownIssuer { .. }), "{err}");
        // A keyring of both (`cat a.pgp b.pgp`) accepts both.
        let mut both = key.cert().to_keyring();
        both.extend(stranger.cert().to_keyring());
        let both = Cert::parse_keyring(&both).unwrap();
        assert_eq!(Cert::verify_detached(&both, b"x", &stranger.sign_detached(b"x", 1)), Ok(stranger.fingerprint()));

        assert!(matches!(Cert::verify_detached(&keyring, b"x", b"garbage"), Err(OpenPgpError::Malformed(_))));
        assert!(matches!(Cert::parse_keyring(b"garbage"), Err(OpenPgpError::Keyring(_))));
        assert!(matches!(Cert::parse_keyring(b""), Err(OpenPgpError::Keyring(_))));
    }

    #[test]
    fn fingerprints_round_trip() {
        let fp: Fingerprint = "0123456789ABCDEF0123456789ABCDEF01234567".parse().unwrap();
        assert_eq!(fp.to_string(), "0123456789ABCDEF0123456789ABCDEF01234567");
        assert!("0123456789abcdef0123456789abcdef01234567".parse::<Fingerprint>().is_err());
        assert!("0123".parse::<Fingerprint>().is_err());
    }
}
