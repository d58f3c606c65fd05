//! What the agent remembers about a node: `/var/lib/composer/node.json`.
//!
//! Per release index the last one accepted (serial, digest, key), so a replayed older index
//! or a fork is refused even across reboots; per extension what is installed, from which
//! index and serial, with its digests and the image the link pointed at before; the last
//! sync that changed something; and, while a run changes the node, the operation in
//! progress with its steps, each recorded before it starts. A run that dies (SIGKILL, power
//! cut) leaves that record, and the next run reports it, removes its leftovers and
//! finishes the work. The file is replaced atomically (temporary file, fsync, rename,
//! directory fsync) and only when its contents change: a run that changes nothing on the
//! node writes nothing, not even here.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};

use release_index::client::Accepted;
use release_index::timestamp::Timestamp;
use serde::{Deserialize, Serialize};
use signing::{KeyId, PublicKey, Sha256Digest, Sha512Digest};
use sysext_model::{ChannelRef, ExtensionName, ExtensionRelease, ImageName};

use super::root::{sync_dir, NodeRoot};
use super::NodeError;

/// The directory the agent keeps its state and lock in.
pub const STATE_DIR: &str = "/var/lib/composer";
/// The state file.
pub const STATE_FILE: &str = "/var/lib/composer/node.json";
/// The format this code writes and the only one it reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The agent's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct State {
    /// Format version.
    pub schema_version: u32,
    /// The last accepted index, by where it is read from (URL or directory).
    #[serde(default)]
    pub indexes: BTreeMap<String, IndexRecord>,
    /// What is installed, by extension.
    #[serde(default)]
    pub extensions: BTreeMap<ExtensionName, Installed>,
    /// The last sync that changed the node (or the first one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<Synced>,
    /// The operation in progress; present after a run that did not finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            indexes: BTreeMap::new(),
            extensions: BTreeMap::new(),
            synced: None,
            operation: None,
        }
    }
}

/// An index accepted before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct IndexRecord {
    /// Its serial: a lower one is refused from now on.
    pub serial: u64,
    /// sha256 of its bytes: another index with the same serial is refused.
    pub index_sha256: Sha256Digest,
    /// The key that signed it.
    pub key_id: KeyId,
    /// When it was first accepted.
    pub accepted_at: Timestamp,
    /// The key learned through key rotations the index carried, which the node trusts instead
    /// of `--pubkey` from then on (absent: `--pubkey` itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_key: Option<PublicKey>,
    /// The `--pubkey` that `trusted-key` was learned from: given another one (an emergency
    /// rotation), the node starts over from that key and retires what it trusted before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configured_key_id: Option<KeyId>,
    /// Keys retired by rotations the node followed: an index they sign is refused.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub retired_keys: BTreeSet<KeyId>,
}

impl IndexRecord {
    /// The record of an index the release-index client accepted at `at`.
    pub fn new(accepted: Accepted, at: Timestamp) -> Self {
        let Accepted { serial, index_sha256, key_id, trusted_key, configured_key_id, retired_keys } = accepted;
        Self { serial, index_sha256, key_id, accepted_at: at, trusted_key, configured_key_id, retired_keys }
    }

    /// What the release-index client compares a new index with, and trusts keys by.
    pub fn accepted(&self) -> Accepted {
        Accepted {
            serial: self.serial,
            index_sha256: self.index_sha256,
            key_id: self.key_id,
            trusted_key: self.trusted_key.clone(),
            configured_key_id: self.configured_key_id,
            retired_keys: self.retired_keys.clone(),
        }
    }
}

/// An installed extension.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Installed {
    /// The channel it follows.
    pub channel: ChannelRef,
    /// The image the link points at.
    pub image: ImageName,
    /// Its node path, `/opt/extensions/<ext>/<file>`.
    pub path: String,
    /// The link systemd-sysext merges it through, `/etc/extensions/<ext>.raw`.
    pub link: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256.
    pub sha256: Sha256Digest,
    /// SHA-512.
    pub sha512: Sha512Digest,
    /// Its `extension-release.<ext>` fields, which the merged one must equal.
    pub extension_release: ExtensionRelease,
    /// The index it was resolved in.
    pub index: String,
    /// That index's serial when it was installed.
    pub serial: u64,
    /// When the link was switched to it.
    pub installed_at: Timestamp,
    /// Where the link pointed before, if elsewhere (that image is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// The SHA-256 of that previous image, which `composer node rollback` checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_sha256: Option<Sha256Digest>,
}

impl Installed {
    /// The record of `artifact` installed now for `channel` from `index` (its serial),
    /// replacing the image at `previous` (with that SHA-256).
    pub fn of(
        artifact: &release_index::index::Artifact,
        channel: ChannelRef,
        (index, serial): (String, u64),
        previous: Option<(String, Option<Sha256Digest>)>,
    ) -> Self {
        let (previous, previous_sha256) = previous.map_or((None, None), |(p, d)| (Some(p), d));
        Self {
            link: sysext_model::node::current_link(&channel.name),
            channel,
            image: artifact.file.clone(),
            path: sysext_model::node::image_path(&artifact.file),
            size: artifact.size,
            sha256: artifact.sha256,
            sha512: artifact.sha512,
            extension_release: artifact.extension_release.clone(),
            index,
            serial,
            installed_at: Timestamp::now(),
            previous,
            previous_sha256,
        }
    }
}

/// The last sync that changed the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Synced {
    /// When it finished.
    pub at: Timestamp,
    /// The index it followed.
    pub index: String,
    /// That index's serial.
    pub serial: u64,
    /// Whether the extensions were merged and their units started (false when activation
    /// was skipped: `--no-activate`, or a root that is not the running system).
    pub activated: bool,
}

/// A run that changes the node, step by step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Operation {
    /// What ran: `sync`.
    pub kind: String,
    /// Its process id.
    pub pid: u32,
    /// When it started.
    pub started_at: Timestamp,
    /// The steps begun, in order; the last one may not have finished.
    pub steps: Vec<Step>,
    /// For `upgrade` and `rollback`: what is being switched, so the next run can complete
    /// or undo it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<SwitchRecord>,
}

/// The switch of one extension's link from one image to another (`upgrade`, `rollback`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SwitchRecord {
    /// The extension.
    pub extension: ExtensionName,
    /// The record of the image the link pointed at before.
    pub from: Installed,
    /// The record of the image it is switched to.
    pub to: Installed,
    /// The units restarted after the switch (and after undoing it).
    pub restart: Vec<String>,
    /// Run after the health check passes, and after an undo whose health check passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_hook: Option<String>,
}

/// One step of an operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Step {
    /// Which.
    pub step: StepKind,
    /// What it is about (images, paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// Whether it finished.
    pub done: bool,
}

/// The steps of a sync, in their order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    /// Images downloaded and verified into staging directories beside their destination.
    Download,
    /// Directories created and verified images renamed into place; nothing merged changed.
    Install,
    /// Files written and links switched: what systemd-sysext merges next changed here.
    Switch,
    /// systemd-sysext refreshed, the manager reloaded, the extensions' units started.
    Activate,
    /// `upgrade`: the pre-hook (e.g. drain); nothing is switched before it succeeds.
    PreHook,
    /// `upgrade`: systemd-sysext refreshed after the switch.
    Refresh,
    /// `upgrade`: the service manager reloaded.
    Reload,
    /// `upgrade`: `kubeadm upgrade node` from the new image.
    Kubeadm,
    /// `upgrade`: the extension's units restarted.
    Restart,
    /// `upgrade`: the health check of the new version.
    HealthCheck,
    /// `upgrade`: the post-hook (e.g. uncordon).
    PostHook,
    /// `upgrade`: old images removed.
    Prune,
    /// The switch undone: the previous image linked, merged and its units restarted.
    Undo,
}

impl State {
    /// Reads the state of `root`; a node without one has the empty state. An unreadable file
    /// is an error: guessing would forget the serials accepted.
    pub fn load(root: &NodeRoot) -> Result<State, NodeError> {
        let path = root.path(STATE_FILE);
        let bad = |reason: String| NodeError::State { path: path.clone(), reason };
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(bad(e.to_string())),
        };
        #[derive(Deserialize)]
        struct Head {
            #[serde(rename = "schema-version")]
            schema_version: u32,
        }
        if let Ok(head) = serde_json::from_slice::<Head>(&bytes) {
            if head.schema_version != SCHEMA_VERSION {
                return Err(bad(format!(
                    "schema-version {} is not {SCHEMA_VERSION}, the only one this composer reads",
                    head.schema_version
                )));
            }
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            bad(format!("unreadable ({e}); refusing to guess what was installed and which serials were accepted"))
        })
    }

    /// Writes the state of `root` atomically.
    pub fn save(&self, root: &NodeRoot) -> Result<(), NodeError> {
        let path = root.path(STATE_FILE);
        let bad = |reason: String| NodeError::State { path: path.clone(), reason };
        root.put_dir(STATE_DIR)?;
        let dir = root.path(STATE_DIR);
        let mut json = serde_json::to_vec_pretty(self).expect("the state serialises");
        json.push(b'\n');
        let mut tmp =
            tempfile::Builder::new().prefix(".node.json.").tempfile_in(&dir).map_err(|e| bad(e.to_string()))?;
        tmp.write_all(&json).and_then(|()| tmp.as_file().sync_all()).map_err(|e| bad(e.to_string()))?;
        tmp.persist(&path).map_err(|e| bad(e.error.to_string()))?;
        sync_dir(&dir)
    }

    /// Begins `step` of the operation in progress and saves the state before it runs.
    pub fn begin(&mut self, root: &NodeRoot, step: StepKind, subjects: Vec<String>) -> Result<(), NodeError> {
        let op = self.operation.get_or_insert_with(|| Operation {
            kind: "sync".into(),
            pid: std::process::id(),
            started_at: Timestamp::now(),
            steps: Vec::new(),
            switch: None,
        });
        op.steps.push(Step { step, subjects, done: false });
        self.save(root)
    }

    /// Marks the current step finished (saved with the next write).
    pub fn finish_step(&mut self) {
        if let Some(step) = self.operation.as_mut().and_then(|o| o.steps.last_mut()) {
            step.done = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::open(dir.path()).unwrap();
        assert_eq!(State::load(&root).unwrap(), State::default());
        let mut state = State::default();
        state.begin(&root, StepKind::Download, vec!["kubernetes-v1.31.3-x86-64.raw".into()]).unwrap();
        state.finish_step();
        state.save(&root).unwrap();
        let back = State::load(&root).unwrap();
        assert_eq!(back, state);
        assert!(back.operation.unwrap().steps[0].done);
        let text = fs::read_to_string(dir.path().join("var/lib/composer/node.json")).unwrap();
        assert!(text.contains("\"step\": \"download\""), "{text}");

        fs::write(dir.path().join("var/lib/composer/node.json"), "{\"schema-version\": 9}").unwrap();
        let err = State::load(&root).unwrap_err().to_string();
        assert!(err.contains("schema-version 9 is not 1"), "{err}");
        fs::write(dir.path().join("var/lib/composer/node.json"), "garbage").unwrap();
        let err = State::load(&root).unwrap_err().to_string();
        assert!(err.contains("node.json: unreadable") && err.contains("refusing to guess"), "{err}");
    }
}
