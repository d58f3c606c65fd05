//! Signing-key rotation: how a client that trusts one key comes to trust the next, and never
//! a key nobody it trusts vouched for.
//!
//! A **planned rotation** is one record, made by the old key (`bakery vouch`):
//!
//! ```json
//! { "old-key": "<64 hex>", "new-key": "<64 hex>", "signed-at": "2027-01-05T10:00:00Z",
//!   "signature": "<128 hex>" }
//! ```
//!
//! The signature is the old key's Ed25519 signature over the text
//! `bakery key rotation v1\nold-key <hex>\nnew-key <hex>\nsigned-at <time>\n` (the label keeps
//! it from ever meaning the same as a signature over a release file). `bakery publish
//! --rotation` appends the record to the index's `key-rotations` and signs the index with the
//! new key; every later index carries the whole chain, oldest first, so a client that was
//! offline for several rotations walks them all.
//!
//! A client holding key K accepts an index signed by S when S = K, or when the chain holds a
//! record made by K and the records from there lead to S; each record is checked when the
//! index is parsed ([`check_chain`]). A client with a state file then trusts S alone and
//! remembers K (and every key passed) as **retired**: an index signed by a retired key is
//! refused from then on, even a genuine one, because the key's owner said it is no longer to
//! be used. An **emergency rotation** (the old key is lost or compromised, so it cannot or
//! must not vouch) is done out of band: the node's configured key is replaced, and the client
//! starts over from that key (see [`crate::client`]).

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use signing::{KeyId, PrivateKey, PublicKey};

use crate::timestamp::Timestamp;

/// A raw 64-byte Ed25519 signature, as 128 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RawSignature(pub [u8; 64]);

impl fmt::Display for RawSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for RawSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawSignature({self})")
    }
}

impl std::str::FromStr for RawSignature {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut raw = [0u8; 64];
        if s.len() != 128 || s.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(format!("expected an Ed25519 signature as 128 lowercase hex characters, got {s:?}"));
        }
        hex::decode_to_slice(s, &mut raw).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Self(raw))
    }
}

crate::serde_via_str!(RawSignature);
sysext_model::string_schema!(
    RawSignature,
    "RawSignature",
    "Raw Ed25519 signature as 128 lowercase hex characters.",
    "^[0-9a-f]{128}$"
);

/// One planned rotation: `old-key` vouches for `new-key`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KeyRotation {
    /// The key being retired, which signs this record.
    pub old_key: PublicKey,
    /// The key that signs the release from now on.
    pub new_key: PublicKey,
    /// When the old key signed the record.
    pub signed_at: Timestamp,
    /// The old key's signature over the rotation statement (see the module docs).
    pub signature: RawSignature,
}

/// Why a rotation record cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The record's file could not be read.
    #[error("{}: {cause}", path.display())]
    Io {
        /// Record file.
        path: std::path::PathBuf,
        /// Cause.
        cause: std::io::Error,
    },
    /// Not a rotation record.
    #[error("{}: not a key rotation record: {reason}", path.display())]
    Malformed {
        /// Record file.
        path: std::path::PathBuf,
        /// Parser message.
        reason: String,
    },
    /// The signature is not the old key's.
    #[error("{}: not signed by the key it retires ({})", path.display(), old)]
    Forged {
        /// Record file.
        path: std::path::PathBuf,
        /// Key id of the key named as old.
        old: KeyId,
    },
}

impl KeyRotation {
    /// The exact bytes the old key signs.
    pub fn statement(old_key: &PublicKey, new_key: &PublicKey, signed_at: Timestamp) -> Vec<u8> {
        format!("bakery key rotation v1\nold-key {old_key}\nnew-key {new_key}\nsigned-at {signed_at}\n").into_bytes()
    }

    /// The old key vouches for `new_key` at `signed_at`.
    pub fn sign(old: &PrivateKey, new_key: &PublicKey, signed_at: Timestamp) -> Self {
        let old_key = old.public();
        let signature = RawSignature(old.sign(&Self::statement(&old_key, new_key, signed_at)));
        Self { old_key, new_key: new_key.clone(), signed_at, signature }
    }

    /// Whether the old key made this record.
    pub fn verifies(&self) -> bool {
        self.old_key.verify(&Self::statement(&self.old_key, &self.new_key, self.signed_at), &self.signature.0)
    }

    /// The record file `bakery vouch` writes.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a rotation serialises");
        s.push('\n');
        s
    }

    /// Reads and checks a record file.
    pub fn read(path: &Path) -> Result<Self, RotationError> {
        let bytes = std::fs::read(path).map_err(|cause| RotationError::Io { path: path.to_owned(), cause })?;
        let record: Self = serde_json::from_slice(&bytes)
            .map_err(|e| RotationError::Malformed { path: path.to_owned(), reason: e.to_string() })?;
        if record.old_key == record.new_key {
            return Err(RotationError::Malformed {
                path: path.to_owned(),
                reason: "old-key and new-key are the same".into(),
            });
        }
        if !record.verifies() {
            return Err(RotationError::Forged { path: path.to_owned(), old: record.old_key.key_id() });
        }
        Ok(record)
    }
}

/// Checks an index's rotation chain: every record made by the key it retires, each record
/// starting where the previous one ended, no key twice (a retired key never comes back), and
/// the last record ending at `signer`, the key that signs the index.
pub fn check_chain(rotations: &[KeyRotation], signer: KeyId) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for (i, r) in rotations.iter().enumerate() {
        let (old, new) = (r.old_key.key_id(), r.new_key.key_id());
        let n = i + 1;
        if !r.verifies() {
            return Err(format!("key rotation {n} ({old} -> {new}) is not signed by {old}, the key it retires"));
        }
        if let Some(prev) = i.checked_sub(1).map(|p| &rotations[p]) {
            if prev.new_key != r.old_key {
                return Err(format!(
                    "key rotation {n} starts at {old}, but rotation {i} ended at {}",
                    prev.new_key.key_id()
                ));
            }
        } else {
            seen.insert(old);
        }
        if !seen.insert(new) {
            return Err(format!("key rotation {n} returns to {new}, a key the chain already retired"));
        }
    }
    match rotations.last() {
        Some(last) if last.new_key.key_id() != signer => Err(format!(
            "the last key rotation ends at {}, but the index is signed by key-id {signer}",
            last.new_key.key_id()
        )),
        _ => Ok(()),
    }
}

/// Why a client refuses the key an index is signed with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// The key was retired by a rotation this client followed.
    #[error("signed by key {signer}, which this client retired when it followed a key rotation to {trusted}")]
    Retired {
        /// The index's key.
        signer: KeyId,
        /// The key the client trusts now.
        trusted: KeyId,
    },
    /// A rotation record is forged or the chain is broken.
    #[error("its key rotations cannot be followed: {0}")]
    BadRotation(String),
    /// Nothing leads from the trusted key to the signer.
    #[error("signed by key {signer}, which this client does not trust: it trusts {trusted}, and no key rotation in the index is signed by {trusted}")]
    Untrusted {
        /// The index's key.
        signer: KeyId,
        /// The key the client trusts.
        trusted: KeyId,
    },
}

/// The key an index naming `signer` must be signed with, for a client that trusts `trusted`
/// and has retired `retired`, and the keys the client retires once it accepts that index.
/// `rotations` must have passed [`check_chain`] (as every parsed index has).
pub fn resolve(
    trusted: &PublicKey,
    retired: &BTreeSet<KeyId>,
    signer: KeyId,
    rotations: &[KeyRotation],
) -> Result<(PublicKey, Vec<KeyId>), TrustError> {
    if retired.contains(&signer) {
        return Err(TrustError::Retired { signer, trusted: trusted.key_id() });
    }
    if trusted.key_id() == signer {
        return Ok((trusted.clone(), Vec::new()));
    }
    let untrusted = TrustError::Untrusted { signer, trusted: trusted.key_id() };
    let start = rotations.iter().position(|r| r.old_key == *trusted).ok_or(untrusted.clone())?;
    let path = &rotations[start..];
    if let Some(r) = path.iter().find(|r| retired.contains(&r.new_key.key_id())) {
        return Err(TrustError::Retired { signer: r.new_key.key_id(), trusted: trusted.key_id() });
    }
    let last = path.last().expect("position found one");
    if last.new_key.key_id() != signer {
        return Err(untrusted);
    }
    Ok((last.new_key.clone(), path.iter().map(|r| r.old_key.key_id()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timestamp = Timestamp::from_unix(1_795_341_600);

    #[test]
    fn records_verify_and_refuse_forgeries() {
        let (k1, k2, k3) =
            (PrivateKey::generate().unwrap(), PrivateKey::generate().unwrap(), PrivateKey::generate().unwrap());
        let r = KeyRotation::sign(&k1, &k2.public(), T);
        assert!(r.verifies());
        let json = r.to_json();
        assert_eq!(serde_json::from_str::<KeyRotation>(&json).unwrap(), r);
        // A record naming k1 as old but signed by k3.
        let mut forged = KeyRotation::sign(&k3, &k2.public(), T);
        forged.old_key = k1.public();
        assert!(!forged.verifies());
        // A changed time or new key breaks the signature.
        let mut moved = r.clone();
        moved.new_key = k3.public();
        assert!(!moved.verifies());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        std::fs::write(&p, forged.to_json()).unwrap();
        assert!(matches!(KeyRotation::read(&p), Err(RotationError::Forged { .. })));
        std::fs::write(&p, "{}").unwrap();
        assert!(KeyRotation::read(&p).unwrap_err().to_string().contains("not a key rotation record"));
    }

    #[test]
    fn chains_and_resolution() {
        let k: Vec<PrivateKey> = (0..4).map(|_| PrivateKey::generate().unwrap()).collect();
        let chain = vec![KeyRotation::sign(&k[0], &k[1].public(), T), KeyRotation::sign(&k[1], &k[2].public(), T)];
        let id = |i: usize| k[i].key_id();
        check_chain(&chain, id(2)).unwrap();
        assert!(check_chain(&chain, id(1)).unwrap_err().contains("ends at"));
        assert!(check_chain(&chain[1..2], id(2)).is_ok(), "history may start later");
        let gap = vec![chain[0].clone(), KeyRotation::sign(&k[3], &k[2].public(), T)];
        assert!(check_chain(&gap, id(2)).unwrap_err().contains("starts at"));
        let cycle = vec![chain[0].clone(), KeyRotation::sign(&k[1], &k[0].public(), T)];
        assert!(check_chain(&cycle, id(0)).unwrap_err().contains("already retired"));
        let mut forged = chain.clone();
        forged[1].signed_at = T.after(std::time::Duration::from_secs(1));
        assert!(check_chain(&forged, id(2)).unwrap_err().contains("not signed by"));

        let none = BTreeSet::new();
        // Directly trusted; through two rotations; from the middle.
        assert_eq!(resolve(&k[2].public(), &none, id(2), &chain).unwrap(), (k[2].public(), vec![]));
        assert_eq!(resolve(&k[0].public(), &none, id(2), &chain).unwrap(), (k[2].public(), vec![id(0), id(1)]));
        assert_eq!(resolve(&k[1].public(), &none, id(2), &chain).unwrap(), (k[2].public(), vec![id(1)]));
        // A stranger's key, and a retired one.
        assert_eq!(
            resolve(&k[3].public(), &none, id(2), &chain),
            Err(TrustError::Untrusted { signer: id(2), trusted: id(3) })
        );
        let retired: BTreeSet<KeyId> = [id(0), id(1)].into();
        assert_eq!(
            resolve(&k[2].public(), &retired, id(1), &chain[..1]),
            Err(TrustError::Retired { signer: id(1), trusted: id(2) })
        );
    }
}
