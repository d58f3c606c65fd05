//! `composer node sync`: make the node hold, and run, the newest release of each channel it
//! follows.
//!
//! 1. Lock the root; read the state; a run that died is reported and its staging
//!    directories removed (the rest of its work is redone below, idempotently).
//! 2. Open the signed index: signature, expiry, then the serial against the one this node
//!    accepted before from that index (and `min-serial`); while the server is unreachable,
//!    retry with a doubling delay for `--retry-for`. An accepted index is recorded at once
//!    (a later replay of an older one is refused even if this run fails further on).
//! 3. Resolve every channel for the node's architecture and check, by systemd-sysext's
//!    rules, that the node would merge the image; build the node plan and check that every
//!    path it writes is free or replaceable. Nothing has been written to the node yet.
//! 4. Download what is not installed (an installed image whose digests do not match is
//!    downloaded again) into a staging directory beside its destination, verified while it
//!    streams and cross-checked with the index; then install the plan: images renamed into
//!    place, then files and links switched atomically.
//! 5. On the running system: refresh systemd-sysext, check each extension merged, reload
//!    the manager where needed, start the targets the extensions hook their units into.
//!
//! A refusal at any point before step 4's switch leaves the node's links, files and merged
//! extensions exactly as they were. Each step from 4 on is recorded in the state file
//! before it starts.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use release_index::client::ClientError;
use release_index::index::Artifact;
use release_index::source::Backend;
use release_index::timestamp::Timestamp;
use serde::Serialize;
use signing::{KeyId, PublicKey};
use sysext_model::compat::{self, Host};
use sysext_model::{node, Arch, ChannelRef, ExtensionName, ExtensionRelease, ImageName};

use super::activate::{self, Activation, Shipped};
use super::install::{self, Change, STAGING_PREFIX};
use super::lock;
use super::root::NodeRoot;
use super::state::{IndexRecord, Installed, Operation, State, StepKind, Synced};
use super::NodeError;
use crate::plan::{ImageSource, NodeOs, NodePlan, PlanRequest, PlannedImage};
use crate::source::{ReleaseIndex, SourceError};

/// Longest wait between two attempts to reach the server.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What to sync.
#[derive(Debug)]
pub struct SyncRequest {
    /// The node's root.
    pub root: NodeRoot,
    /// The release.
    pub backend: Arc<dyn Backend>,
    /// The key its index must be signed with.
    pub pubkey: PublicKey,
    /// The channels to follow, one per extension.
    pub extensions: Vec<ChannelRef>,
    /// The node's architecture.
    pub arch: Arch,
    /// The node's OS, if not read from its os-release.
    pub os: Option<NodeOs>,
    /// Also install sysupdate transfer files.
    pub sysupdate: bool,
    /// Refuse an index with a lower serial.
    pub min_serial: Option<u64>,
    /// Refresh systemd-sysext and start units (only ever on the running system).
    pub activate: bool,
    /// Do nothing if a sync has completed on this node before.
    pub once: bool,
    /// How long to keep retrying an unreachable server.
    pub retry_for: Duration,
    /// How long to wait for another run's lock.
    pub lock_wait: Duration,
}

/// What happened to an extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Already installed and linked.
    Unchanged,
    /// Installed where there was none.
    Installed,
    /// The link now points at a newer (or other) image; the previous one is kept.
    Switched,
}

/// One extension's result.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ExtensionReport {
    /// The extension.
    #[serde(serialize_with = "super::as_display")]
    pub name: ExtensionName,
    /// The channel followed.
    #[serde(serialize_with = "super::as_display")]
    pub channel: ChannelRef,
    /// The image it resolved to.
    #[serde(serialize_with = "super::as_display")]
    pub image: ImageName,
    /// What happened.
    pub outcome: Outcome,
    /// Where the link pointed before, if elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// What a sync did.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SyncReport {
    /// The node's root.
    pub root: PathBuf,
    /// The release.
    pub index: String,
    /// The serial of its index (none when `--once` had nothing to do).
    pub serial: Option<u64>,
    /// The OS the plan was built for.
    pub os: Option<NodeOs>,
    /// Per extension.
    pub extensions: Vec<ExtensionReport>,
    /// Images downloaded.
    pub downloaded: Vec<String>,
    /// Paths changed.
    pub changes: Vec<Change>,
    /// Refresh, reload and start (run, or what would run), when anything needed it.
    pub activation: Option<Activation>,
    /// A previous run that did not finish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Operation>,
    /// Why nothing was done (`--once`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// The plan's OS for a node with this os-release: Flatcar by its ID, anything else is
/// treated like Ubuntu (systemd-sysext.service is enabled by the plan).
pub fn detect_os(os_release: &ExtensionRelease) -> NodeOs {
    if os_release.get("ID") == Some("flatcar") {
        NodeOs::Flatcar
    } else {
        NodeOs::Ubuntu
    }
}

/// Whether trying again later may help: the release could not be reached or read.
fn unreachable(e: &SourceError) -> bool {
    matches!(e, SourceError::Index(ClientError::Source(_)))
}

/// Runs `f`, and while it fails because the server is unreachable, again after 1 s, 2 s, 4 s
/// … (at most 30 s) for as long as `limit` allows.
fn retrying<T>(
    limit: Duration,
    progress: &mut dyn FnMut(&str),
    mut f: impl FnMut() -> Result<T, SourceError>,
) -> Result<T, SourceError> {
    let start = Instant::now();
    let mut wait = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        match f() {
            Err(e) if unreachable(&e) && start.elapsed() + wait <= limit => {
                progress(&format!("{e}; attempt {attempt} failed, retrying in {}s", wait.as_secs()));
                std::thread::sleep(wait);
                wait = (wait * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Opens the signed index of `backend`: signature, expiry, then the serial against the one
/// this node accepted from it before (and `min_serial`), retrying an unreachable server for
/// `retry_for`. A newly accepted index is recorded in the state at once: a replay of an older
/// one is refused from then on, whatever happens next.
pub(super) fn open_index(
    root: &NodeRoot,
    state: &mut State,
    backend: &Arc<dyn Backend>,
    pubkey: &PublicKey,
    min_serial: Option<u64>,
    retry_for: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<ReleaseIndex, NodeError> {
    let location = backend.name();
    let accepted = state.indexes.get(&location).map(IndexRecord::accepted);
    // A key retired while following the release from one location stays retired at every
    // other (a mirror the node is pointed at later), as long as the node's key is the same.
    let configured = pubkey.key_id();
    let retired: BTreeSet<KeyId> = state
        .indexes
        .values()
        .filter(|r| r.configured_key_id.unwrap_or(r.key_id) == configured)
        .flat_map(|r| r.retired_keys.iter().copied())
        .collect();
    let index = retrying(retry_for, progress, || {
        ReleaseIndex::open_after(backend.clone(), pubkey.clone(), min_serial, accepted.clone(), retired.clone())
    })?;
    let trusted = index.trusted();
    if accepted.as_ref() != Some(&trusted.accepted()) {
        state.indexes.insert(location, IndexRecord::new(trusted.accepted(), Timestamp::now()));
        // Recorded now: a replay of an older index, or one signed by a key a rotation
        // retired, is refused from here on, whatever happens next.
        state.save(root)?;
    }
    Ok(index)
}

/// Whether the file at `path` is exactly `planned` (size, SHA-256, SHA-512).
pub(super) fn verified(path: &Path, planned: &PlannedImage) -> Result<bool, NodeError> {
    let io = |cause| NodeError::Io { path: path.to_owned(), cause };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(e)),
    };
    if !meta.is_file() || meta.len() != planned.size {
        return Ok(false);
    }
    let got = signing::Digests::of_reader(fs::File::open(path).map_err(io)?).map_err(io)?;
    Ok(got.sha256 == planned.sha256 && got.sha512 == planned.sha512)
}

/// Syncs the node; `progress` receives one line per notable event (for stderr).
pub fn sync(req: &SyncRequest, progress: &mut dyn FnMut(&str)) -> Result<SyncReport, NodeError> {
    let root = &req.root;
    let _lock = lock::acquire(root, req.lock_wait, progress)?;
    let mut state = State::load(root)?;
    super::upgrade::recover(root, &mut state, progress)?;
    let location = req.backend.name();
    let mut report = SyncReport {
        root: root.dir().to_owned(),
        index: location.clone(),
        serial: None,
        os: None,
        extensions: Vec::new(),
        downloaded: Vec::new(),
        changes: Vec::new(),
        activation: None,
        interrupted: state.operation.take(),
        skipped: None,
    };
    let mut dirty = false;
    if let Some(op) = &report.interrupted {
        let step = op.steps.iter().rev().find(|s| !s.done).or(op.steps.last());
        let step = step.map_or("its start".to_owned(), |s| format!("step {}", serde_json::to_string(&s.step).unwrap()));
        progress(&format!(
            "a previous {} (pid {}, started {}) stopped during {step}; finishing it",
            op.kind, op.pid, op.started_at
        ));
        dirty = true;
    } else if req.once {
        if let Some(s) = state.synced.as_ref().filter(|s| s.activated || !root.is_live()) {
            report.skipped = Some(format!(
                "a sync completed at {} (serial {} of {}); --once does nothing more",
                s.at, s.serial, s.index
            ));
            return Ok(report);
        }
    }

    let (_, os_release) = root.os_release()?;
    let systemd = root.systemd_version();
    let os = req.os.unwrap_or_else(|| detect_os(&os_release));
    report.os = Some(os);
    let host = Host { os_release, arch: req.arch, systemd };

    let index = open_index(root, &mut state, &req.backend, &req.pubkey, req.min_serial, req.retry_for, progress)?;
    let trusted = index.trusted();
    report.serial = Some(index.serial());

    let mut picked: Vec<(&ChannelRef, &Artifact)> = Vec::new();
    for channel in &req.extensions {
        if let Some((other, _)) = picked.iter().find(|(c, _)| c.name == channel.name) {
            return Err(NodeError::Duplicate {
                name: channel.name.clone(),
                channel: channel.to_string(),
                other: other.to_string(),
            });
        }
        let artifact = index.lookup(channel, req.arch)?;
        compat::check(&artifact.extension_release, &host).map_err(|reason| NodeError::Incompatible {
            channel: channel.to_string(),
            image: artifact.file.clone(),
            reason: Box::new(reason),
        })?;
        picked.push((channel, artifact));
    }
    let images: Vec<PlannedImage> = picked
        .iter()
        .map(|(_, a)| PlannedImage {
            image: a.file.clone(),
            size: a.size,
            sha256: a.sha256,
            sha512: a.sha512,
            source: ImageSource::Url(index.source().location(&a.file.to_string())),
        })
        .collect();
    let base = index.base_url().clone();
    let keyring = if req.sysupdate { index.openpgp_keyring()? } else { None };
    let plan = NodePlan::build(&PlanRequest {
        os,
        images: &images,
        sysupdate: req.sysupdate.then_some(&base),
        keyring: keyring.as_deref(),
    });
    install::check(&plan, root)?;
    for left in install::remove_leftovers(&plan, root)? {
        progress(&format!("removed {}, left by a run that did not finish", left.display()));
    }

    let mut need: Vec<(&str, &PlannedImage)> = Vec::new();
    for (path, planned) in plan.images() {
        if !verified(&root.path(path), planned)? {
            if root.path(path).symlink_metadata().is_ok() {
                progress(&format!("{path} does not match the signed index; downloading it again"));
            }
            need.push((path, planned));
        }
    }
    let pending = install::pending(&plan, root)?;
    let links_before: BTreeMap<&ExtensionName, Option<String>> = picked
        .iter()
        .map(|(c, _)| {
            let link = fs::read_link(root.path(&node::current_link(&c.name))).ok();
            (&c.name, link.map(|t| t.to_string_lossy().into_owned()))
        })
        .collect();

    if !need.is_empty() || !pending.is_empty() {
        // Kept until installed: dropping one removes its staging directory.
        let mut stages = Vec::new();
        let mut staged: Vec<(String, PathBuf)> = Vec::new();
        if !need.is_empty() {
            state.begin(root, StepKind::Download, need.iter().map(|(p, _)| (*p).to_owned()).collect())?;
            for (path, planned) in &need {
                let dir = &path[..path.rfind('/').expect("image paths are absolute")];
                root.put_dir(dir)?;
                let host_dir = root.path(dir);
                let stage = tempfile::Builder::new()
                    .prefix(STAGING_PREFIX)
                    .tempdir_in(&host_dir)
                    .map_err(|cause| NodeError::Io { path: host_dir.clone(), cause })?;
                let artifact = trusted.index.artifact(&planned.image).expect("planned from this index");
                progress(&format!("downloading {}", index.source().location(&artifact.file.to_string())));
                let (file, _) = retrying(req.retry_for, progress, || index.download(artifact, stage.path()))?;
                report.downloaded.push(artifact.file.to_string());
                staged.push(((*path).to_owned(), file));
                stages.push(stage);
            }
            state.finish_step();
        }
        state.begin(root, StepKind::Install, staged.iter().map(|(p, _)| p.clone()).collect())?;
        let mut switch = || {
            state.finish_step();
            state.begin(root, StepKind::Switch, pending.clone())
        };
        report.changes = install::install(&plan, root, &staged, &mut switch)?;
        state.finish_step();
        drop(stages);
        dirty = true;
    }

    let now = Timestamp::now();
    for (channel, artifact) in &picked {
        let name = &channel.name;
        let path = node::image_path(&artifact.file);
        let before = links_before.get(name).cloned().flatten();
        let relinked = before.as_deref() != Some(path.as_str());
        let downloaded = report.downloaded.contains(&artifact.file.to_string());
        let outcome = if !relinked && !downloaded {
            Outcome::Unchanged
        } else if relinked && before.is_some() {
            Outcome::Switched
        } else {
            Outcome::Installed
        };
        let previous = before.filter(|_| relinked);
        report.extensions.push(ExtensionReport {
            name: name.clone(),
            channel: (*channel).clone(),
            image: artifact.file.clone(),
            outcome,
            previous: previous.clone(),
        });
        let record = state.extensions.get(name);
        let same = record.is_some_and(|r| {
            r.image == artifact.file && r.sha256 == artifact.sha256 && r.channel == **channel && r.index == location
        });
        if !same {
            let before = match &previous {
                Some(p) => Some((p.clone(), record.filter(|r| &r.path == p).map(|r| r.sha256))),
                None => record.and_then(|r| Some((r.previous.clone()?, r.previous_sha256))),
            };
            let mut installed = Installed::of(artifact, (*channel).clone(), (location.clone(), index.serial()), before);
            installed.installed_at = now;
            state.extensions.insert(name.clone(), installed);
            dirty = true;
        }
    }

    let expected: Vec<(ExtensionName, ExtensionRelease, String)> =
        picked.iter().map(|(c, a)| (c.name.clone(), a.extension_release.clone(), node::image_path(&a.file))).collect();
    let changed = !report.changes.is_empty();
    // A run that died while activating left links switched and units perhaps not started.
    let unfinished =
        report.interrupted.as_ref().is_some_and(|op| op.steps.iter().any(|s| s.step == StepKind::Activate));
    let activated_before = state.synced.as_ref().is_some_and(|s| s.activated) && !unfinished;
    let wanted = changed || (root.is_live() && (!activated_before || !activate::all_merged(root, &expected)));
    if wanted {
        let shipped = picked
            .iter()
            .map(|(c, a)| Shipped::of(&root.path(&node::image_path(&a.file)), &c.name, &a.extension_release))
            .collect::<Result<Vec<_>, _>>()?;
        let units_changed = report.changes.iter().any(|c| c.path.starts_with("/etc/systemd/"));
        let mut activation = activate::plan(systemd, &shipped, units_changed);
        if !root.is_live() {
            activation.skipped =
                Some(format!("{} is not the running system; these run on the node", root.dir().display()));
        } else if !req.activate {
            activation.skipped = Some("--no-activate".into());
        } else {
            state.begin(root, StepKind::Activate, activation.targets.clone())?;
            activate::run(&mut activation, root, &expected)?;
            state.finish_step();
        }
        report.activation = Some(activation);
    }
    let activated = report.activation.as_ref().map_or(activated_before, |a| a.ran);
    if changed || report.activation.is_some() || state.synced.is_none() {
        state.synced = Some(Synced { at: now, index: location, serial: index.serial(), activated });
        dirty = true;
    }
    state.operation = None;
    if dirty {
        state.save(root)?;
    }
    Ok(report)
}
