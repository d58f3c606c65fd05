//! `composer node status`: what the state file says is installed, checked against the node:
//! does each link point at the recorded image, is the image there with its recorded size,
//! and (on the running system) is the extension merged as installed. Reads only; takes no
//! lock (the state file is replaced atomically, so it is read whole or not at all).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use release_index::image::RELEASE_PREFIX;
use serde::Serialize;
use sysext_model::{ExtensionName, ExtensionRelease};

use super::root::NodeRoot;
use super::state::{IndexRecord, Installed, Operation, State, Synced, STATE_FILE};
use super::NodeError;

/// One extension as recorded and as found.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ExtensionStatus {
    /// The extension.
    #[serde(serialize_with = "super::as_display")]
    pub name: ExtensionName,
    /// What the state file records.
    #[serde(flatten)]
    pub installed: Installed,
    /// Where the link points now.
    pub link_target: Option<String>,
    /// The image is there with the recorded size.
    pub image_present: bool,
    /// Merged as installed (only known on the running system).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged: Option<bool>,
}

/// The node's status.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatusReport {
    /// The node's root.
    pub root: PathBuf,
    /// The state file read.
    pub state_file: PathBuf,
    /// Indexes accepted, by location.
    pub indexes: BTreeMap<String, IndexRecord>,
    /// Installed extensions.
    pub extensions: Vec<ExtensionStatus>,
    /// The last sync that changed the node.
    pub synced: Option<Synced>,
    /// A run that did not finish (the next sync finishes it).
    pub interrupted: Option<Operation>,
    /// What does not match the state file; empty on a healthy node.
    pub problems: Vec<String>,
}

/// Reads the state of `root` and checks it against the node.
pub fn status(root: &NodeRoot) -> Result<StatusReport, NodeError> {
    let state = State::load(root)?;
    let mut problems = Vec::new();
    let mut extensions = Vec::new();
    for (name, installed) in &state.extensions {
        let link_target = fs::read_link(root.path(&installed.link)).ok().map(|t| t.to_string_lossy().into_owned());
        if link_target.as_deref() != Some(installed.path.as_str()) {
            problems.push(format!(
                "{}: points at {}, the state records {}",
                installed.link,
                link_target.as_deref().unwrap_or("nothing"),
                installed.path
            ));
        }
        let image_present =
            fs::metadata(root.path(&installed.path)).is_ok_and(|m| m.is_file() && m.len() == installed.size);
        if !image_present {
            problems.push(format!("{}: missing or not {} bytes", installed.path, installed.size));
        }
        let merged = root.is_live().then(|| {
            fs::read_to_string(root.path(&format!("{RELEASE_PREFIX}{name}")))
                .ok()
                .and_then(|t| ExtensionRelease::parse(&t).ok())
                .is_some_and(|r| r == installed.extension_release)
        });
        if merged == Some(false) {
            problems.push(format!("{name}: not merged as installed ({})", installed.image));
        }
        extensions.push(ExtensionStatus {
            name: name.clone(),
            installed: installed.clone(),
            link_target,
            image_present,
            merged,
        });
    }
    if let Some(op) = &state.operation {
        problems.push(format!(
            "a {} (pid {}, started {}) did not finish; the next composer node sync, upgrade or rollback finishes or undoes it",
            op.kind, op.pid, op.started_at
        ));
    }
    Ok(StatusReport {
        root: root.dir().to_owned(),
        state_file: root.path(STATE_FILE),
        indexes: state.indexes,
        extensions,
        synced: state.synced,
        interrupted: state.operation,
        problems,
    })
}
