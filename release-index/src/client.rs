//! The consumer side of a release: what composer and the node agent use to trust an index and
//! fetch artifacts from it.
//!
//! Order matters: the signature is checked on the raw bytes before anything is parsed, then
//! expiry, then the serial against the last one this client accepted (a replayed older index,
//! or a different index with the same serial, is refused). An index that the trusted key did
//! not sign is parsed only to read its key rotations ([`crate::rotation`]): if a chain of
//! records, each signed by the key it retires, leads from the trusted key to the index's key,
//! the index is checked with that key, and a client with a state file trusts only that key
//! from then on (the keys passed are retired, and an index they sign is refused).
//!
//! The trusted key is the one the client is configured with. A state file remembers a key
//! learned through rotations together with the configured key it was learned from; when the
//! configured key changes (an emergency rotation: the operator replaced it out of band), the
//! learned key is retired too and the client starts over from the configured key, serial
//! included, since what it accepted under the old trust may have come from a stolen key.
//!
//! Artifacts are hashed while they stream into a temporary file beside their destination and
//! renamed into place only when size, SHA-256 and SHA-512 all match the signed index.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use signing::{DigestsWriter, KeyId, PublicKey, Sha256Digest};

use crate::index::{Artifact, Index, IndexError, MAX_INDEX_BYTES};
use crate::layout;
use crate::rotation::TrustError;
use crate::source::{Backend, SourceError};
use crate::timestamp::Timestamp;

/// Why the client refused an index or an artifact.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A read failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A file the release must have is not there.
    #[error("{location}: not found")]
    Missing {
        /// Path or URL.
        location: String,
    },
    /// The index signature does not verify.
    #[error("{location}: signature does not verify with key {key_id}; refusing the index")]
    BadSignature {
        /// Path or URL of the signature.
        location: String,
        /// The key tried.
        key_id: KeyId,
    },
    /// The index is signed but unusable.
    #[error("{location}: {source}")]
    Index {
        /// Path or URL.
        location: String,
        /// Why.
        source: IndexError,
    },
    /// The index is signed by a key this client does not (or no longer) trust.
    #[error("{location}: {reason}")]
    Untrusted {
        /// Path or URL.
        location: String,
        /// Why.
        reason: TrustError,
    },
    /// The index names another key than the one it verified with (a mix-up, not an attack).
    #[error("{location}: names signing key {named}, but verified with {ours}")]
    KeyMismatch {
        /// Path or URL.
        location: String,
        /// Key id written in the index.
        named: KeyId,
        /// Our key.
        ours: KeyId,
    },
    /// The index is past its expiry: the mirror may be frozen.
    #[error("{location}: expired at {expires} (now {now}); the release must be republished")]
    Expired {
        /// Path or URL.
        location: String,
        /// Expiry.
        expires: Timestamp,
        /// Now.
        now: Timestamp,
    },
    /// The index is older than one already accepted.
    #[error(
        "{location}: serial {serial} is lower than {accepted}, which this client already accepted; refusing a rollback"
    )]
    Rollback {
        /// Path or URL.
        location: String,
        /// Serial offered.
        serial: u64,
        /// Serial accepted before.
        accepted: u64,
    },
    /// A different index with a serial already accepted.
    #[error("{location}: serial {serial} was already accepted with different content; refusing a forked release")]
    Fork {
        /// Path or URL.
        location: String,
        /// Serial offered.
        serial: u64,
    },
    /// The state file is unreadable or unwritable.
    #[error("{}: {cause}", path.display())]
    State {
        /// State file.
        path: PathBuf,
        /// Why.
        cause: String,
    },
    /// A downloaded artifact does not match the index.
    #[error("{location}: {reason}")]
    Artifact {
        /// Path or URL.
        location: String,
        /// Why.
        reason: String,
    },
    /// Local file trouble.
    #[error("{}: {cause}", path.display())]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        cause: io::Error,
    },
}

/// An index a client accepted before, which every later index is compared with: its serial
/// must not be lower, and an index with the same serial must be the same bytes. This is what
/// the state file holds; callers that keep their own state (the node agent) pass it with
/// [`Client::with_accepted`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Accepted {
    /// Its serial.
    pub serial: u64,
    /// sha256 of its bytes.
    pub index_sha256: Sha256Digest,
    /// The key it was signed with.
    pub key_id: KeyId,
    /// The key learned through key rotations (absent: the configured key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_key: Option<PublicKey>,
    /// The configured key `trusted-key` was learned from (absent: `key-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured_key_id: Option<KeyId>,
    /// Keys retired by key rotations this client followed, or by an operator who replaced
    /// the configured key: an index they sign is refused.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub retired_keys: BTreeSet<KeyId>,
}

/// What the client trusts before it looks at an index.
struct Trust {
    key: PublicKey,
    retired: BTreeSet<KeyId>,
    /// The serials and index digests accepted under the configured key (the floors a new
    /// index must not go below).
    floors: Vec<(u64, Sha256Digest)>,
}

impl Trust {
    fn from_records<'a>(configured: &PublicKey, records: impl IntoIterator<Item = &'a Accepted>) -> Self {
        let mut trust = Self { key: configured.clone(), retired: BTreeSet::new(), floors: Vec::new() };
        let mut newest = None;
        let mut replaced = false;
        for r in records {
            // Without a learned key, that index was signed by the configured key of the time.
            let learned_from = r.configured_key_id.unwrap_or(r.key_id);
            trust.retired.extend(r.retired_keys.iter().copied());
            if learned_from == configured.key_id() {
                trust.floors.push((r.serial, r.index_sha256));
                if newest.as_ref().is_none_or(|(serial, _)| r.serial > *serial) {
                    newest = Some((r.serial, r.trusted_key.clone()));
                }
            } else {
                // Replaced out of band (an emergency rotation): whatever was trusted before
                // is retired, and so are its serials, which a stolen key may have inflated.
                replaced = true;
                trust.retired.extend([learned_from, r.key_id]);
                trust.retired.extend(r.trusted_key.as_ref().map(PublicKey::key_id));
            }
        }
        let current = newest.is_some();
        if let Some((_, Some(learned))) = newest {
            trust.key = learned;
        }
        if replaced && !current {
            // The operator's word overrides a retirement: they may go back to an older key.
            trust.retired.remove(&configured.key_id());
        }
        trust.retired.remove(&trust.key.key_id());
        trust
    }
}

/// An index whose signature, expiry and serial have been checked.
#[derive(Clone, Debug)]
pub struct TrustedIndex {
    /// The index.
    pub index: Index,
    /// sha256 of its bytes.
    pub sha256: Sha256Digest,
    accepted: Accepted,
}

impl TrustedIndex {
    /// What a client that accepted this index remembers of it, the keys it learned and
    /// retired included.
    pub fn accepted(&self) -> Accepted {
        self.accepted.clone()
    }
}

/// Reads one release with one key.
#[derive(Debug)]
pub struct Client {
    source: Arc<dyn Backend>,
    pubkey: PublicKey,
    state_file: Option<PathBuf>,
    min_serial: Option<u64>,
    accepted: Option<Accepted>,
    retired: BTreeSet<KeyId>,
}

impl Client {
    /// A client for `source`; with a state file, serials are remembered across runs.
    pub fn new(source: Arc<dyn Backend>, pubkey: PublicKey, state_file: Option<PathBuf>) -> Self {
        Self { source, pubkey, state_file, min_serial: None, accepted: None, retired: BTreeSet::new() }
    }

    /// Also refuses an index whose serial is below `min` (one the caller saw before), for
    /// callers that keep no state file.
    pub fn with_min_serial(mut self, min: Option<u64>) -> Self {
        self.min_serial = min;
        self
    }

    /// Also checks the index against `accepted` (one this caller accepted before and kept in
    /// its own state): a lower serial is a rollback, the same serial with other bytes a fork.
    pub fn with_accepted(mut self, accepted: Option<Accepted>) -> Self {
        self.accepted = accepted;
        self
    }

    /// Also refuses indexes signed by `retired`: keys this caller retired while following
    /// key rotations of the same release read from elsewhere (another mirror), with the
    /// same configured key.
    pub fn with_retired(mut self, retired: BTreeSet<KeyId>) -> Self {
        self.retired = retired;
        self
    }

    /// The release this client reads.
    pub fn source(&self) -> &dyn Backend {
        self.source.as_ref()
    }

    /// Fetches and checks the index now.
    pub fn fetch_index(&self) -> Result<TrustedIndex, ClientError> {
        self.fetch_index_at(Timestamp::now())
    }

    /// Fetches and checks the index as of `now`, and records its serial (and any key it
    /// learned through rotations) in the state file.
    pub fn fetch_index_at(&self, now: Timestamp) -> Result<TrustedIndex, ClientError> {
        let location = self.source.location(layout::INDEX);
        let sig_name = layout::sig(layout::INDEX);
        let bytes = self
            .source
            .read(layout::INDEX, MAX_INDEX_BYTES)?
            .ok_or(ClientError::Missing { location: location.clone() })?;
        let sig = self
            .source
            .read(&sig_name, 1024)?
            .ok_or(ClientError::Missing { location: self.source.location(&sig_name) })?;
        let stored = match &self.state_file {
            Some(path) => read_state(path)?,
            None => None,
        };
        let mut trust = Trust::from_records(&self.pubkey, self.accepted.iter().chain(&stored));
        trust.retired.extend(self.retired.iter().copied());
        let bad_signature = |key: &PublicKey| ClientError::BadSignature {
            location: self.source.location(&sig_name),
            key_id: key.key_id(),
        };
        let (index, signer, passed) = if trust.key.verify(&bytes, &sig) {
            let index =
                Index::parse(&bytes).map_err(|source| ClientError::Index { location: location.clone(), source })?;
            if index.key_id != trust.key.key_id() {
                return Err(ClientError::KeyMismatch { location, named: index.key_id, ours: trust.key.key_id() });
            }
            // The configured key itself, retired by a rotation followed elsewhere.
            if trust.retired.contains(&index.key_id) {
                let source = TrustError::Retired { signer: index.key_id, trusted: trust.key.key_id() };
                return Err(ClientError::Untrusted { location, reason: source });
            }
            (index, trust.key.clone(), Vec::new())
        } else {
            // Not signed by the trusted key: perhaps by a successor it vouched for. The
            // rotation records authenticate themselves, so reading them before the signature
            // is checked trusts nothing yet.
            let index = match Index::parse(&bytes) {
                Ok(index) => index,
                Err(IndexError::Rotation(why)) => {
                    return Err(ClientError::Untrusted { location, reason: TrustError::BadRotation(why) })
                }
                Err(_) => return Err(bad_signature(&trust.key)),
            };
            if index.key_id == trust.key.key_id() {
                return Err(bad_signature(&trust.key));
            }
            let (signer, passed) =
                crate::rotation::resolve(&trust.key, &trust.retired, index.key_id, &index.key_rotations)
                    .map_err(|reason| ClientError::Untrusted { location: self.source.location(&sig_name), reason })?;
            if !signer.verify(&bytes, &sig) {
                return Err(bad_signature(&signer));
            }
            (index, signer, passed)
        };
        if index.expires <= now {
            return Err(ClientError::Expired { location, expires: index.expires, now });
        }
        let sha256 = Sha256Digest::of(&bytes);
        if let Some(min) = self.min_serial.filter(|m| index.serial < *m) {
            return Err(ClientError::Rollback { location, serial: index.serial, accepted: min });
        }
        for (serial, digest) in &trust.floors {
            if index.serial < *serial {
                return Err(ClientError::Rollback { location, serial: index.serial, accepted: *serial });
            }
            if index.serial == *serial && sha256 != *digest {
                return Err(ClientError::Fork { location, serial: index.serial });
            }
        }
        let mut retired_keys = trust.retired;
        retired_keys.extend(passed);
        let learned = signer != self.pubkey;
        let accepted = Accepted {
            serial: index.serial,
            index_sha256: sha256,
            key_id: index.key_id,
            trusted_key: learned.then(|| signer.clone()),
            configured_key_id: learned.then(|| self.pubkey.key_id()),
            retired_keys,
        };
        if let Some(path) = &self.state_file {
            write_state(path, &accepted)?;
        }
        let trusted = TrustedIndex { index, sha256, accepted };
        Ok(trusted)
    }

    /// Downloads `artifact` into `dest_dir` (as its file name), verifying size and digests
    /// while streaming; the file appears only once it is verified.
    pub fn fetch_artifact(&self, artifact: &Artifact, dest_dir: &Path) -> Result<PathBuf, ClientError> {
        let file = artifact.file.to_string();
        let location = self.source.location(&file);
        let reader = self.source.open(&file)?.ok_or(ClientError::Missing { location: location.clone() })?;
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |cause| ClientError::Io { path, cause }
        };
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{file}."))
            .suffix(".partial")
            .tempfile_in(dest_dir)
            .map_err(io_err(dest_dir))?;
        let mut w = DigestsWriter::new(tmp);
        // One byte more than promised is enough to know the server sends too much.
        let copied = signing::copy(reader.take(artifact.size + 1), &mut w);
        copied.map_err(|e| ClientError::Artifact {
            location: location.clone(),
            reason: format!("download failed: {e}"),
        })?;
        let (got, mut tmp) = w.finish();
        let mismatch = |reason: String| ClientError::Artifact { location: location.clone(), reason };
        if got.size != artifact.size {
            let size =
                if got.size > artifact.size { format!("more than {}", artifact.size) } else { got.size.to_string() };
            return Err(mismatch(format!("{size} bytes, the signed index says {}", artifact.size)));
        }
        if got.sha256 != artifact.sha256 {
            return Err(mismatch(format!(
                "sha256 {} does not match the signed index ({})",
                got.sha256, artifact.sha256
            )));
        }
        if got.sha512 != artifact.sha512 {
            return Err(mismatch(format!(
                "sha512 {} does not match the signed index ({})",
                got.sha512, artifact.sha512
            )));
        }
        let dest = dest_dir.join(&file);
        tmp.flush().map_err(io_err(&dest))?;
        tmp.as_file().set_permissions(fs::Permissions::from_mode(0o644)).map_err(io_err(&dest))?;
        tmp.as_file().sync_all().map_err(io_err(&dest))?;
        tmp.persist(&dest).map_err(|e| ClientError::Io { path: dest.clone(), cause: e.error })?;
        fs::File::open(dest_dir).and_then(|d| d.sync_all()).map_err(io_err(dest_dir))?;
        Ok(dest)
    }
}

fn read_state(path: &Path) -> Result<Option<Accepted>, ClientError> {
    let err = |cause: String| ClientError::State { path: path.to_owned(), cause };
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| err(format!("unreadable state ({e}); refusing to guess the last accepted serial"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(e.to_string())),
    }
}

fn write_state(path: &Path, state: &Accepted) -> Result<(), ClientError> {
    let err = |cause: String| ClientError::State { path: path.to_owned(), cause };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| err(e.to_string()))?;
    let mut json = serde_json::to_vec_pretty(state).expect("state serialises");
    json.push(b'\n');
    tmp.write_all(&json).map_err(|e| err(e.to_string()))?;
    tmp.as_file().sync_all().map_err(|e| err(e.to_string()))?;
    tmp.persist(path).map_err(|e| err(e.error.to_string()))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| err(e.to_string()))
}
