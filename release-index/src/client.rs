//! The consumer side of a release: what composer and the node agent use to trust an index and
//! fetch artifacts from it.
//!
//! Order matters: the signature is checked on the raw bytes before anything is parsed, then
//! expiry, then the serial against the last one this client accepted (a replayed older index,
//! or a different index with the same serial, is refused). Artifacts are hashed while they
//! stream into a temporary file beside their destination and renamed into place only when
//! size, SHA-256 and SHA-512 all match the signed index.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use signing::{DigestsWriter, KeyId, PublicKey, Sha256Digest};

use crate::index::{Artifact, Index, IndexError, MAX_INDEX_BYTES};
use crate::layout;
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

/// What the client remembers between runs.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct State {
    serial: u64,
    index_sha256: Sha256Digest,
    key_id: KeyId,
}

/// An index whose signature, expiry and serial have been checked.
#[derive(Clone, Debug)]
pub struct TrustedIndex {
    /// The index.
    pub index: Index,
    /// sha256 of its bytes.
    pub sha256: Sha256Digest,
}

/// Reads one release with one key.
#[derive(Debug)]
pub struct Client {
    source: Arc<dyn Backend>,
    pubkey: PublicKey,
    state_file: Option<PathBuf>,
    min_serial: Option<u64>,
}

impl Client {
    /// A client for `source`; with a state file, serials are remembered across runs.
    pub fn new(source: Arc<dyn Backend>, pubkey: PublicKey, state_file: Option<PathBuf>) -> Self {
        Self { source, pubkey, state_file, min_serial: None }
    }

    /// Also refuses an index whose serial is below `min` (one the caller saw before), for
    /// callers that keep no state file.
    pub fn with_min_serial(mut self, min: Option<u64>) -> Self {
        self.min_serial = min;
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

    /// Fetches and checks the index as of `now`, and records its serial in the state file.
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
        if !self.pubkey.verify(&bytes, &sig) {
            return Err(ClientError::BadSignature {
                location: self.source.location(&sig_name),
                key_id: self.pubkey.key_id(),
            });
        }
        let index = Index::parse(&bytes).map_err(|source| ClientError::Index { location: location.clone(), source })?;
        if index.key_id != self.pubkey.key_id() {
            return Err(ClientError::KeyMismatch { location, named: index.key_id, ours: self.pubkey.key_id() });
        }
        if index.expires <= now {
            return Err(ClientError::Expired { location, expires: index.expires, now });
        }
        let sha256 = Sha256Digest::of(&bytes);
        if let Some(min) = self.min_serial.filter(|m| index.serial < *m) {
            return Err(ClientError::Rollback { location, serial: index.serial, accepted: min });
        }
        if let Some(path) = &self.state_file {
            if let Some(state) = read_state(path)? {
                if index.serial < state.serial {
                    return Err(ClientError::Rollback { location, serial: index.serial, accepted: state.serial });
                }
                if index.serial == state.serial && sha256 != state.index_sha256 {
                    return Err(ClientError::Fork { location, serial: index.serial });
                }
            }
            write_state(path, &State { serial: index.serial, index_sha256: sha256, key_id: index.key_id })?;
        }
        Ok(TrustedIndex { index, sha256 })
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

fn read_state(path: &Path) -> Result<Option<State>, ClientError> {
    let err = |cause: String| ClientError::State { path: path.to_owned(), cause };
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| err(format!("unreadable state ({e}); refusing to guess the last accepted serial"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(e.to_string())),
    }
}

fn write_state(path: &Path, state: &State) -> Result<(), ClientError> {
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
