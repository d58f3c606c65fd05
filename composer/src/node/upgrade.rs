//! `composer node upgrade` and `composer node rollback`: guarded, journaled switches of one
//! extension at a time from the image it runs to another, with an automatic undo.
//!
//! An upgrade of one extension runs these steps, each recorded in the state file before it
//! starts ([`StepKind`]): resolve the target in the signed index (policy below) → download
//! and verify it beside the installed one → pre-hook (e.g. drain) → switch
//! `/etc/extensions/<ext>.raw` (a new link renamed over the old) → refresh systemd-sysext and
//! check the new identity is merged → reload the manager → `kubeadm upgrade node` from the new
//! image (kubernetes, on a node that has joined a cluster) → restart the extension's units →
//! health check → post-hook (e.g. uncordon) → prune old images.
//!
//! A failure at any step after the switch undoes it: the previous image is linked, merged and
//! its units restarted and checked; the error names the step that failed. A run that dies
//! (SIGKILL, power cut) leaves its record in the state file, and the next `composer node`
//! command ([`recover`]) completes it if its health check had passed, and undoes it
//! otherwise. Either way the link only ever points at an image that was verified in full
//! before the switch.
//!
//! **Policy.** By default only patch upgrades within the installed minor. `--allow-minor`
//! moves exactly one minor up (the channel the node follows moves with it); skipping a minor
//! is refused, and so is a major change; a downgrade needs an explicit `--to` and
//! `--allow-downgrade`. A version whose health check failed on this node is not tried again
//! unless named with `--to`. Before a kubernetes minor step on a node with a kubeconfig
//! (`/etc/kubernetes/kubelet.conf`), the API server's `/version` is read and an upgrade that
//! would make the kubelet newer than the API server is refused (Kubernetes' skew policy).
//!
//! `--reboot-flag` stages instead: the link is switched for the next boot's merge and
//! `/run/reboot-required` is touched (kured's convention); the running node is not refreshed.

use std::fs;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use release_index::image::RELEASE_PREFIX;
use release_index::index::Artifact;
use release_index::source::Backend;
use release_index::timestamp::Timestamp;
use serde::Serialize;
use signing::PublicKey;
use sysext_model::compat::{self, Host};
use sysext_model::{node, Arch, Channel, ChannelRef, ExtensionName, ExtensionRelease, ImageName, Version};

use super::activate::{run_command, Shipped};
use super::history::{self, Event, Outcome};
use super::install::STAGING_PREFIX;
use super::lock;
use super::root::NodeRoot;
use super::state::{Installed, Operation, State, StepKind, SwitchRecord};
use super::sync::{open_index, verified};
use super::NodeError;
use crate::plan::{ImageSource, PlannedImage};

/// The flag file kured and unattended-upgrades use to ask for a reboot.
pub const REBOOT_REQUIRED: &str = "/run/reboot-required";
/// The kubeconfig of a node that has joined a cluster.
pub const KUBELET_KUBECONFIG: &str = "/etc/kubernetes/kubelet.conf";
/// The kubeadm step's default command, run after the merge, before the kubelet restarts.
pub const KUBEADM_UPGRADE: &str = "kubeadm upgrade node";
/// How many images of an extension an upgrade keeps, the running and the previous included.
pub const DEFAULT_KEEP: usize = 3;
/// The container runtime: restarted only when named, since that stops running pods' shims.
const RUNTIME_UNIT: &str = "containerd.service";

/// What is allowed besides patch upgrades.
#[derive(Clone, Copy, Debug, Default)]
pub struct Policy {
    /// One minor up.
    pub allow_minor: bool,
    /// A lower version, with `--to`.
    pub allow_downgrade: bool,
}

/// Commands run at the hooks (through `sh -c`, with `COMPOSER_EXTENSION`,
/// `COMPOSER_FROM_VERSION` and `COMPOSER_TO_VERSION` set).
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    /// Before the switch; failing stops the upgrade with nothing switched.
    pub pre: Option<String>,
    /// After the health check passed.
    pub post: Option<String>,
    /// Replaces the default health check; retried until it succeeds or the timeout ends.
    pub health: Option<String>,
    /// The kubeadm step for kubernetes (`None`: skipped).
    pub kubeadm: Option<String>,
}

/// What to upgrade.
#[derive(Debug)]
pub struct UpgradeRequest {
    /// The node's root.
    pub root: NodeRoot,
    /// The release.
    pub backend: Arc<dyn Backend>,
    /// The key its index must be signed with.
    pub pubkey: PublicKey,
    /// The node's architecture.
    pub arch: Arch,
    /// Refuse an index with a lower serial.
    pub min_serial: Option<u64>,
    /// The extensions to upgrade; empty means every installed one.
    pub extensions: Vec<ExtensionName>,
    /// An exact target version (one extension only).
    pub to: Option<Version>,
    /// Follow this channel instead (`1.32`, `~1.31`): the newest version it admits, by the
    /// same policy as `--to`.
    pub channel: Option<Channel>,
    /// What besides patch upgrades is allowed.
    pub policy: Policy,
    /// Resolve and check, change nothing.
    pub dry_run: bool,
    /// The hooks.
    pub hooks: Hooks,
    /// How long the health check may take.
    pub timeout: Duration,
    /// Units to restart instead of the extension's own (containerd's only when named here).
    pub restart: Option<Vec<String>>,
    /// Stage the switch for the next boot instead of activating it now.
    pub reboot_flag: bool,
    /// Images to keep per extension.
    pub keep: usize,
    /// How long to wait for another run's lock.
    pub lock_wait: Duration,
}

/// What happened to one extension.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct UpgradeReport {
    /// The extension.
    #[serde(serialize_with = "super::as_display")]
    pub extension: ExtensionName,
    /// The image it ran.
    #[serde(serialize_with = "super::as_display")]
    pub from: ImageName,
    /// The image it runs now (or would, with `--dry-run`; the same as `from` when up to date).
    #[serde(serialize_with = "super::as_display")]
    pub to: ImageName,
    /// `up-to-date`, `upgraded`, `staged` (for the next boot), `would-upgrade` (dry run),
    /// `installed` (a root that is not the running system: nothing activated).
    pub outcome: &'static str,
    /// Why the version was chosen or nothing was done.
    pub reason: String,
    /// Images downloaded.
    pub downloaded: Vec<String>,
    /// Commands run, in order.
    pub ran: Vec<String>,
    /// Images removed by pruning.
    pub pruned: Vec<String>,
}

/// One extension's candidate: the version picked and why.
#[derive(Debug)]
struct Target<'a> {
    version: &'a Version,
    artifact: &'a Artifact,
    minor_step: bool,
    reason: String,
}

fn semver_of(v: &Version, what: &str) -> Result<semver::Version, NodeError> {
    v.semver().ok_or_else(|| NodeError::Policy(format!("{what} {v} is not a semantic version; upgrade by --to only")))
}

/// Picks the version `installed` moves to among the index's `available` versions of it (for
/// the node's architecture), by the policy; `Ok(None)` when there is nothing newer allowed.
fn pick<'a>(
    installed: &Version,
    available: &[(&'a Version, &'a Artifact)],
    to: Option<&Version>,
    policy: Policy,
    failed_here: &dyn Fn(&ImageName) -> Option<String>,
) -> Result<Option<Target<'a>>, NodeError> {
    let cur = semver_of(installed, "the installed version")?;
    if let Some(to) = to {
        let Some(&(version, artifact)) = available.iter().find(|(v, _)| *v == to) else {
            let list: Vec<String> = available.iter().map(|(v, _)| v.to_string()).collect();
            return Err(NodeError::Policy(format!(
                "--to {to}: not in the signed index for this architecture (it has {})",
                if list.is_empty() { "none".into() } else { list.join(", ") }
            )));
        };
        let want = semver_of(version, "--to")?;
        if want == cur {
            return Ok(None);
        }
        if want < cur {
            if !policy.allow_downgrade {
                return Err(NodeError::Policy(format!(
                    "--to {to} is older than the installed {installed}; a downgrade also needs --allow-downgrade"
                )));
            }
            if want.major != cur.major || cur.minor - want.minor > 1 {
                return Err(NodeError::Policy(format!(
                    "--to {to}: a downgrade goes back at most one minor from {installed}"
                )));
            }
            let minor_step = want.minor != cur.minor;
            return Ok(Some(Target { version, artifact, minor_step, reason: format!("--to {to} (a downgrade)") }));
        }
        let minor_step = check_step(&cur, &want, installed, version, policy)?;
        return Ok(Some(Target { version, artifact, minor_step, reason: format!("--to {to}") }));
    }
    let mut best: Option<(semver::Version, &'a Version, &'a Artifact)> = None;
    let mut skipped = Vec::new();
    for &(v, a) in available {
        let Some(sv) = v.semver() else { continue };
        let allowed_minor = sv.minor == cur.minor || (policy.allow_minor && sv.minor == cur.minor + 1);
        if sv <= cur || !sv.pre.is_empty() || sv.major != cur.major || !allowed_minor {
            continue;
        }
        if let Some(why) = failed_here(&a.file) {
            skipped.push(format!("{v} ({why})"));
            continue;
        }
        // The newest patch of the installed minor first: a minor step starts from the
        // newest patch of the minor before it.
        let better = match &best {
            None => true,
            Some((b, ..)) => (sv.minor == cur.minor && b.minor != cur.minor) || (sv.minor == b.minor && sv > *b),
        };
        if better {
            best = Some((sv, v, a));
        }
    }
    let Some((sv, version, artifact)) = best else {
        if !skipped.is_empty() {
            return Err(NodeError::Policy(format!(
                "the newer versions failed their health check on this node before: {}; pass --to VERSION to try one again",
                skipped.join(", ")
            )));
        }
        return Ok(None);
    };
    let minor_step = sv.minor != cur.minor;
    let reason = if minor_step {
        format!("one minor up with --allow-minor: the newest patch of {}.{}", sv.major, sv.minor)
    } else {
        format!("the newest patch of {}.{}", cur.major, cur.minor)
    };
    Ok(Some(Target { version, artifact, minor_step, reason }))
}

/// The policy for an upgrade from `cur` to `want` (`want > cur`); whether it is a minor step.
fn check_step(
    cur: &semver::Version,
    want: &semver::Version,
    installed: &Version,
    to: &Version,
    policy: Policy,
) -> Result<bool, NodeError> {
    if want.major != cur.major {
        return Err(NodeError::Policy(format!(
            "{installed} → {to} changes the major version; composer upgrades one minor at a time within a major"
        )));
    }
    match want.minor - cur.minor {
        0 => Ok(false),
        1 if policy.allow_minor => Ok(true),
        1 => Err(NodeError::Policy(format!("{installed} → {to} is a minor upgrade; pass --allow-minor"))),
        n => Err(NodeError::Policy(format!(
            "{installed} → {to} skips {} minor version(s); upgrade one minor at a time (Kubernetes supports no skipping)",
            n - 1
        ))),
    }
}

/// The API server's version, read from `/version` of the cluster in the node's kubeconfig.
fn api_server_version(root: &NodeRoot) -> Result<Option<semver::Version>, NodeError> {
    let path = root.path(KUBELET_KUBECONFIG);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => return Err(NodeError::Io { path, cause }),
    };
    let bad = |reason: String| NodeError::Skew(format!("{}: {reason}", path.display()));
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let context_name = doc["current-context"].as_str().unwrap_or_default();
    let cluster_name = doc["contexts"]
        .as_sequence()
        .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some(context_name)))
        .and_then(|c| c["context"]["cluster"].as_str());
    let clusters = doc["clusters"].as_sequence().cloned().unwrap_or_default();
    let cluster = match cluster_name {
        Some(n) => clusters.iter().find(|c| c["name"].as_str() == Some(n)),
        None => clusters.first(),
    }
    .ok_or_else(|| bad("no cluster for its current-context".into()))?;
    let server = cluster["cluster"]["server"].as_str().ok_or_else(|| bad("the cluster has no server".into()))?;
    let ca_dir = tempfile::tempdir().map_err(|cause| NodeError::Io { path: std::env::temp_dir(), cause })?;
    let mut opts = release_index::http::HttpOptions { retries: 1, ..Default::default() };
    if let Some(data) = cluster["cluster"]["certificate-authority-data"].as_str() {
        use base64::Engine as _;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| bad(format!("certificate-authority-data: {e}")))?;
        let ca = ca_dir.path().join("ca.pem");
        fs::write(&ca, pem).map_err(|cause| NodeError::Io { path: ca.clone(), cause })?;
        opts.ca_file = Some(ca);
    }
    let url = format!("{}/version", server.trim_end_matches('/'));
    let http = release_index::http::HttpClient::new(opts).map_err(|e| NodeError::Skew(e.to_string()))?;
    let body = http
        .read(&url, 64 << 10)
        .map_err(|e| NodeError::Skew(format!("reading the API server's version: {e}")))?
        .ok_or_else(|| NodeError::Skew(format!("{url}: 404")))?;
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| NodeError::Skew(format!("{url}: not a version document: {e}")))?;
    let git = v["gitVersion"].as_str().ok_or_else(|| NodeError::Skew(format!("{url}: no gitVersion")))?;
    let parsed = semver::Version::parse(git.trim_start_matches('v'))
        .map_err(|e| NodeError::Skew(format!("{url}: gitVersion {git}: {e}")))?;
    Ok(Some(parsed))
}

/// The units an upgrade of `shipped` restarts by default: the ones it ships, but never the
/// container runtime unless named (restarting it is not free for running pods), and no
/// templates.
fn default_restart(shipped: &Shipped) -> Vec<String> {
    shipped
        .units
        .iter()
        .filter(|u| u.ends_with(".service") && !u.contains('@') && u.as_str() != RUNTIME_UNIT)
        .cloned()
        .collect()
}

fn sh(cmd: &str, sw: &SwitchRecord) -> Result<(), String> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .env("COMPOSER_EXTENSION", sw.extension.as_str())
        .env("COMPOSER_FROM_VERSION", sw.from.image.version.as_str())
        .env("COMPOSER_TO_VERSION", sw.to.image.version.as_str())
        .output()
        .map_err(|e| format!("`{cmd}` could not run: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if said.is_empty() {
        said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    Err(format!("`{cmd}` failed ({}){}", out.status, if said.is_empty() { String::new() } else { format!(": {said}") }))
}

fn systemctl(words: &[&str], ran: &mut Vec<String>) -> Result<(), String> {
    let mut cmd = vec!["systemctl".to_owned()];
    cmd.extend(words.iter().map(|w| (*w).to_owned()));
    ran.push(cmd.join(" "));
    run_command(&cmd).map_err(|e| e.to_string())
}

fn merged_release(root: &NodeRoot, name: &ExtensionName) -> Option<ExtensionRelease> {
    fs::read_to_string(root.path(&format!("{RELEASE_PREFIX}{name}")))
        .ok()
        .and_then(|t| ExtensionRelease::parse(&t).ok())
}

/// The default health check: every restarted unit active, and the image merged; for
/// kubernetes, the merged kubelet reports the new version.
fn healthy(root: &NodeRoot, rec: &Installed, name: &ExtensionName, units: &[String]) -> Result<(), String> {
    if merged_release(root, name).as_ref() != Some(&rec.extension_release) {
        return Err(format!("{} is not merged", rec.image));
    }
    for unit in units {
        let out = Command::new("systemctl").args(["is-active", unit]).output().map_err(|e| e.to_string())?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if state != "active" {
            return Err(format!("{unit} is {}", if state.is_empty() { "unknown" } else { &state }));
        }
    }
    if name.as_str() == "kubernetes" {
        let kubelet = root.path("/usr/bin/kubelet");
        let out = Command::new(&kubelet)
            .arg("--version")
            .output()
            .map_err(|e| format!("{} --version: {e}", kubelet.display()))?;
        let said = String::from_utf8_lossy(&out.stdout);
        let want = rec.image.version.as_str();
        if !said.split_whitespace().any(|w| w == want) {
            return Err(format!("kubelet --version says {:?}, not {want}", said.trim()));
        }
    }
    Ok(())
}

/// Runs the health check (default or `--health-check`) until it passes or `timeout` ends.
fn health_check(
    root: &NodeRoot,
    sw: &SwitchRecord,
    target: &Installed,
    command: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let result = match command {
            Some(cmd) => sh(cmd, sw),
            None => healthy(root, target, &sw.extension, &sw.restart),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{e} (after {})", humantime::format_duration(timeout)))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// What [`activate`] runs besides the refresh, reload and restart.
#[derive(Clone, Copy)]
struct Checks<'a> {
    kubeadm: Option<&'a str>,
    health: Option<&'a str>,
    timeout: Duration,
}

/// Which step failed and why.
struct Failed {
    step: StepKind,
    reason: String,
}

/// Makes the running node use `target` after its link was switched: refresh (and check the
/// merge), reload, the kubeadm step, restart, health check. Each step journaled first.
fn activate(
    root: &NodeRoot,
    state: &mut State,
    sw: &SwitchRecord,
    checks: &Checks<'_>,
    ran: &mut Vec<String>,
) -> Result<(), Failed> {
    let Checks { kubeadm, health, timeout } = *checks;
    let target = &sw.to;
    let step = |state: &mut State, step: StepKind| {
        state.finish_step();
        state.begin(root, step, vec![sw.extension.to_string()]).map_err(|e| Failed { step, reason: e.to_string() })
    };
    step(state, StepKind::Refresh)?;
    systemctl(&["reload-or-restart", node::SYSEXT_SERVICE], ran)
        .map_err(|reason| Failed { step: StepKind::Refresh, reason })?;
    if merged_release(root, &sw.extension).as_ref() != Some(&target.extension_release) {
        return Err(Failed {
            step: StepKind::Refresh,
            reason: format!("systemd-sysext did not merge {} after the refresh", target.image),
        });
    }
    step(state, StepKind::Reload)?;
    systemctl(&["daemon-reload"], ran).map_err(|reason| Failed { step: StepKind::Reload, reason })?;
    if let Some(cmd) = kubeadm {
        step(state, StepKind::Kubeadm)?;
        ran.push(cmd.to_owned());
        sh(cmd, sw).map_err(|reason| Failed { step: StepKind::Kubeadm, reason })?;
    }
    if !sw.restart.is_empty() {
        step(state, StepKind::Restart)?;
        let mut words = vec!["restart"];
        words.extend(sw.restart.iter().map(String::as_str));
        systemctl(&words, ran).map_err(|reason| Failed { step: StepKind::Restart, reason })?;
    }
    step(state, StepKind::HealthCheck)?;
    health_check(root, sw, target, health, timeout).map_err(|reason| Failed { step: StepKind::HealthCheck, reason })
}

/// Switches back to `sw.from` and checks it: link, refresh, reload, restart, health check
/// (the default one, with the same timeout). Journaled as [`StepKind::Undo`].
fn undo(
    root: &NodeRoot,
    state: &mut State,
    sw: &SwitchRecord,
    timeout: Duration,
    ran: &mut Vec<String>,
) -> Result<(), String> {
    state.finish_step();
    state.begin(root, StepKind::Undo, vec![sw.from.path.clone()]).map_err(|e| e.to_string())?;
    root.put_link(&sw.from.link, &sw.from.path).map_err(|e| e.to_string())?;
    state.extensions.insert(sw.extension.clone(), sw.from.clone());
    state.save(root).map_err(|e| e.to_string())?;
    if !root.is_live() {
        return Ok(());
    }
    systemctl(&["reload-or-restart", node::SYSEXT_SERVICE], ran)?;
    systemctl(&["daemon-reload"], ran)?;
    if !sw.restart.is_empty() {
        let mut words = vec!["restart"];
        words.extend(sw.restart.iter().map(String::as_str));
        systemctl(&words, ran)?;
    }
    let back = SwitchRecord { from: sw.to.clone(), to: sw.from.clone(), ..sw.clone() };
    health_check(root, &back, &sw.from, None, timeout)
}

/// Completes or undoes an `upgrade` or `rollback` that did not finish (a SIGKILL or a power
/// cut): undone if its health check had not passed, completed (post-hook, state) if it had.
/// Staging directories it left are removed. A `sync` that did not finish is left to sync.
pub fn recover(root: &NodeRoot, state: &mut State, progress: &mut dyn FnMut(&str)) -> Result<(), NodeError> {
    let Some(op) = state.operation.clone() else { return Ok(()) };
    let Some(sw) = op.switch.clone() else { return Ok(()) };
    let begun = |k: StepKind| op.steps.iter().any(|s| s.step == k);
    let passed = op.steps.iter().any(|s| s.step == StepKind::HealthCheck && s.done)
        || begun(StepKind::PostHook)
        || begun(StepKind::Prune);
    let last =
        op.steps.last().map_or("its start".to_owned(), |s| format!("step {}", serde_json::to_string(&s.step).unwrap()));
    remove_staging(root, &node::image_dir(&sw.extension));
    let mut ran = Vec::new();
    let (outcome, note) = if !begun(StepKind::Switch) {
        (Outcome::Interrupted, format!("stopped during {last}, before the switch; nothing to undo"))
    } else if passed || (op.kind == "upgrade" && begun(StepKind::Switch) && !root.is_live() && !begun(StepKind::Undo)) {
        // On a root that is not running nothing after the switch can be checked: the switch
        // was the upgrade. The image was verified in full before the switch began.
        root.put_link(&sw.to.link, &sw.to.path)?;
        state.extensions.insert(sw.extension.clone(), sw.to.clone());
        if let Some(post) = sw.post_hook.as_deref().filter(|_| !begun(StepKind::Undo)) {
            if let Err(e) = sh(post, &sw) {
                progress(&format!("post-hook after recovery: {e}"));
            }
        }
        (Outcome::Upgraded, format!("stopped during {last}, after its health check passed; completed"))
    } else {
        match undo(root, state, &sw, Duration::from_secs(60), &mut ran) {
            Ok(()) => (Outcome::RolledBack, format!("stopped during {last}; switched back to {}", sw.from.image)),
            Err(e) => {
                (Outcome::Failed, format!("stopped during {last}; switching back to {} failed: {e}", sw.from.image))
            }
        }
    };
    progress(&format!("a previous {} of {} (pid {}, started {}) {note}", op.kind, sw.extension, op.pid, op.started_at));
    history::append(
        root,
        &Event {
            at: Timestamp::now(),
            extension: sw.extension.clone(),
            action: format!("{} (recovered)", op.kind),
            from: sw.from.image.clone(),
            to: sw.to.image.clone(),
            outcome,
            step: op.steps.last().map(|s| s.step),
            reason: Some(note),
        },
    )?;
    state.operation = None;
    state.save(root)
}

fn remove_staging(root: &NodeRoot, dir: &str) {
    let Ok(entries) = fs::read_dir(root.path(dir)) else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Removes the oldest images of `name` beyond `keep`, never the linked one or the previous
/// one; returns what it removed.
fn prune(root: &NodeRoot, name: &ExtensionName, keep: usize, linked: &str, previous: &str) -> Vec<String> {
    let dir = node::image_dir(name);
    let Ok(entries) = fs::read_dir(root.path(&dir)) else { return Vec::new() };
    let mut images: Vec<(semver::Version, String)> = entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_str()?.to_owned();
            let image: ImageName = file.parse().ok()?;
            (image.name == *name).then_some(())?;
            Some((image.version.semver()?, format!("{dir}/{file}")))
        })
        .collect();
    images.sort();
    let mut removed = Vec::new();
    let excess = images.len().saturating_sub(keep.max(2));
    for (_, path) in images.into_iter().filter(|(_, p)| p != linked && p != previous).take(excess) {
        if fs::remove_file(root.path(&path)).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// Upgrades the node's extensions one at a time; stops at the first that fails (after
/// undoing its switch).
pub fn upgrade(req: &UpgradeRequest, progress: &mut dyn FnMut(&str)) -> Result<Vec<UpgradeReport>, NodeError> {
    let root = &req.root;
    let _lock = lock::acquire(root, req.lock_wait, progress)?;
    let mut state = State::load(root)?;
    recover(root, &mut state, progress)?;
    if state.operation.is_some() {
        return Err(NodeError::Policy(
            "a composer node sync did not finish; run composer node sync to finish it first".into(),
        ));
    }
    let names: Vec<ExtensionName> =
        if req.extensions.is_empty() { state.extensions.keys().cloned().collect() } else { req.extensions.clone() };
    if names.is_empty() {
        return Err(NodeError::Policy(
            "nothing is installed here; composer node sync installs extensions first".into(),
        ));
    }
    if req.to.is_some() && names.len() != 1 {
        return Err(NodeError::Policy(
            "--to names a version of one extension: name it (composer node upgrade EXT --to V)".into(),
        ));
    }
    let index = open_index(root, &mut state, &req.backend, &req.pubkey, req.min_serial, Duration::ZERO, progress)?;
    let (_, os_release) = root.os_release()?;
    let host = Host { os_release, arch: req.arch, systemd: root.systemd_version() };
    let history = history::read(root)?;
    let mut reports = Vec::new();
    for name in &names {
        let installed = state.extensions.get(name).cloned().ok_or_else(|| {
            NodeError::Policy(format!("{name} is not installed here (composer node sync installs it)"))
        })?;
        let available: Vec<(&Version, &Artifact)> = index
            .trusted()
            .index
            .extensions
            .get(name)
            .map(|vs| vs.iter().filter_map(|(v, a)| Some((v, a.get(&req.arch)?))).collect())
            .unwrap_or_default();
        let failed_here = |image: &ImageName| {
            history
                .iter()
                .rev()
                .find(|e| &e.to == image && e.action == "upgrade" && e.outcome == Outcome::RolledBack)
                .map(|e| format!("rolled back at {}", e.at))
        };
        let mut report = UpgradeReport {
            extension: name.clone(),
            from: installed.image.clone(),
            to: installed.image.clone(),
            outcome: "up-to-date",
            reason: String::new(),
            downloaded: Vec::new(),
            ran: Vec::new(),
            pruned: Vec::new(),
        };
        // --channel: its newest version, then the same policy as an explicit --to.
        let from_channel = match &req.channel {
            Some(c) => Some(c.newest(available.iter().map(|(v, _)| *v)).cloned().ok_or_else(|| {
                NodeError::Policy(format!("--channel {c}: no version of {name} for {} in the signed index", req.arch))
            })?),
            None => None,
        };
        let to = req.to.as_ref().or(from_channel.as_ref());
        let Some(mut target) = pick(&installed.image.version, &available, to, req.policy, &failed_here)? else {
            report.reason = format!("no newer version allowed in serial {} of {}", index.serial(), index.location());
            reports.push(report);
            continue;
        };
        if let Some(c) = &req.channel {
            target.reason = format!("--channel {c}: its newest version");
        }
        let artifact = target.artifact;
        report.to = artifact.file.clone();
        report.reason = target.reason.clone();
        compat::check(&artifact.extension_release, &host).map_err(|reason| NodeError::Incompatible {
            channel: name.to_string(),
            image: artifact.file.clone(),
            reason: Box::new(reason),
        })?;
        if target.minor_step && name.as_str() == "kubernetes" {
            if let Some(api) = api_server_version(root)? {
                let want = semver_of(target.version, "the target")?;
                if (want.major, want.minor) > (api.major, api.minor) {
                    return Err(NodeError::Skew(format!(
                        "{name} {}: the API server runs v{api}; a kubelet newer than the API server is not supported \
                         (upgrade the control plane first)",
                        target.version
                    )));
                }
            }
        }
        if req.dry_run {
            report.outcome = "would-upgrade";
            reports.push(report);
            continue;
        }
        let path = node::image_path(&artifact.file);
        let channel = if let Some(c) = &req.channel {
            ChannelRef { name: name.clone(), channel: c.clone() }
        } else if target.minor_step {
            let sv = semver_of(target.version, "the target")?;
            let spelled = format!("{}.{}", sv.major, sv.minor);
            ChannelRef {
                name: name.clone(),
                channel: spelled.parse::<Channel>().map_err(|e| NodeError::Policy(e.to_string()))?,
            }
        } else {
            installed.channel.clone()
        };
        let to = Installed::of(
            artifact,
            channel,
            (index.location(), index.serial()),
            Some((installed.path.clone(), Some(installed.sha256))),
        );
        let mut sw = SwitchRecord {
            extension: name.clone(),
            from: installed.clone(),
            to: to.clone(),
            restart: Vec::new(),
            post_hook: req.hooks.post.clone(),
        };
        state.operation = Some(Operation {
            kind: "upgrade".into(),
            pid: std::process::id(),
            started_at: Timestamp::now(),
            steps: Vec::new(),
            switch: Some(sw.clone()),
        });

        // Download and verify beside the installed image (kept if the upgrade fails).
        let planned = PlannedImage {
            image: artifact.file.clone(),
            size: artifact.size,
            sha256: artifact.sha256,
            sha512: artifact.sha512,
            source: ImageSource::Url(index.source().location(&artifact.file.to_string())),
        };
        state.begin(root, StepKind::Download, vec![path.clone()])?;
        if !verified(&root.path(&path), &planned)? {
            let dir = node::image_dir(name);
            root.put_dir(&dir)?;
            let host_dir = root.path(&dir);
            let stage = tempfile::Builder::new()
                .prefix(STAGING_PREFIX)
                .tempdir_in(&host_dir)
                .map_err(|cause| NodeError::Io { path: host_dir.clone(), cause })?;
            progress(&format!("downloading {}", index.source().location(&artifact.file.to_string())));
            let (file, _) = index.download(artifact, stage.path())?;
            root.put_staged(&file, &path)?;
            report.downloaded.push(artifact.file.to_string());
        }
        sw.restart = match &req.restart {
            Some(units) => units.clone(),
            None => default_restart(&Shipped::of(&root.path(&path), name, &artifact.extension_release)?),
        };
        if let Some(op) = state.operation.as_mut() {
            op.switch = Some(sw.clone());
        }
        let kubeadm = req
            .hooks
            .kubeadm
            .as_deref()
            .filter(|_| name.as_str() == "kubernetes" && root.path(KUBELET_KUBECONFIG).exists());

        if let Some(pre) = &req.hooks.pre {
            state.finish_step();
            state.begin(root, StepKind::PreHook, vec![pre.clone()])?;
            report.ran.push(pre.clone());
            if let Err(reason) = sh(pre, &sw) {
                state.operation = None;
                state.save(root)?;
                record(root, &sw, "upgrade", Outcome::Stopped, Some(StepKind::PreHook), Some(reason.clone()))?;
                return Err(NodeError::UpgradeFailed {
                    extension: name.clone(),
                    step: StepKind::PreHook,
                    reason,
                    after: format!("nothing was switched; {} still runs", installed.image),
                });
            }
        }

        state.finish_step();
        state.begin(root, StepKind::Switch, vec![to.link.clone(), path.clone()])?;
        root.put_link(&to.link, &path)?;
        state.extensions.insert(name.clone(), to.clone());
        if req.reboot_flag || !root.is_live() {
            state.finish_step();
            let why = if req.reboot_flag {
                root.put_dir("/run")?;
                root.put_file(REBOOT_REQUIRED, b"", 0o644)?;
                report.outcome = "staged";
                format!("linked for the next boot; {REBOOT_REQUIRED} touched")
            } else {
                report.outcome = "installed";
                format!("{} is not the running system: linked only", root.dir().display())
            };
            state.operation = None;
            state.save(root)?;
            record(root, &sw, "upgrade", Outcome::Staged, None, Some(why.clone()))?;
            report.reason = format!("{}; {why}", report.reason);
            reports.push(report);
            continue;
        }
        let checks = Checks { kubeadm, health: req.hooks.health.as_deref(), timeout: req.timeout };
        let result = activate(root, &mut state, &sw, &checks, &mut report.ran);
        if let Err(failed) = result {
            progress(&format!(
                "{name}: step {} failed: {}; switching back to {}",
                step_name(failed.step),
                failed.reason,
                installed.image
            ));
            let undone = undo(root, &mut state, &sw, req.timeout, &mut report.ran);
            let after = match &undone {
                Ok(()) => format!("switched back to {}, which is merged and healthy", installed.image),
                Err(e) => format!("switching back to {} failed too: {e}", installed.image),
            };
            if undone.is_ok() {
                if let Some(post) = &req.hooks.post {
                    report.ran.push(post.clone());
                    if let Err(e) = sh(post, &sw) {
                        progress(&format!("post-hook after the rollback: {e}"));
                    }
                }
            }
            state.operation = None;
            state.save(root)?;
            let outcome = if undone.is_ok() { Outcome::RolledBack } else { Outcome::Failed };
            record(root, &sw, "upgrade", outcome, Some(failed.step), Some(format!("{}; {after}", failed.reason)))?;
            return Err(NodeError::UpgradeFailed {
                extension: name.clone(),
                step: failed.step,
                reason: failed.reason,
                after,
            });
        }
        if let Some(post) = &req.hooks.post {
            state.finish_step();
            state.begin(root, StepKind::PostHook, vec![post.clone()])?;
            report.ran.push(post.clone());
            if let Err(e) = sh(post, &sw) {
                // The new version is healthy: keep it, and say the hook failed.
                progress(&format!("{name}: post-hook: {e}"));
            }
        }
        state.finish_step();
        state.begin(root, StepKind::Prune, vec![])?;
        report.pruned = prune(root, name, req.keep, &path, &installed.path);
        state.operation = None;
        state.save(root)?;
        record(root, &sw, "upgrade", Outcome::Upgraded, None, Some(report.reason.clone()))?;
        report.outcome = "upgraded";
        reports.push(report);
    }
    Ok(reports)
}

fn step_name(step: StepKind) -> String {
    serde_json::to_value(step).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn record(
    root: &NodeRoot,
    sw: &SwitchRecord,
    action: &str,
    outcome: Outcome,
    step: Option<StepKind>,
    reason: Option<String>,
) -> Result<(), NodeError> {
    history::append(
        root,
        &Event {
            at: Timestamp::now(),
            extension: sw.extension.clone(),
            action: action.into(),
            from: sw.from.image.clone(),
            to: sw.to.image.clone(),
            outcome,
            step,
            reason,
        },
    )
}

/// What `composer node rollback` needs.
#[derive(Debug)]
pub struct RollbackRequest {
    /// The node's root.
    pub root: NodeRoot,
    /// The extension.
    pub extension: ExtensionName,
    /// Units to restart instead of the extension's own.
    pub restart: Option<Vec<String>>,
    /// How long the health check may take.
    pub timeout: Duration,
    /// How long to wait for another run's lock.
    pub lock_wait: Duration,
}

/// Switches `extension` back to the image it ran before (kept on the node by every upgrade
/// and sync), checked against the digest recorded for it, then activates and checks it as
/// an upgrade does. Works without the release server.
pub fn rollback(req: &RollbackRequest, progress: &mut dyn FnMut(&str)) -> Result<UpgradeReport, NodeError> {
    let root = &req.root;
    let name = &req.extension;
    let _lock = lock::acquire(root, req.lock_wait, progress)?;
    let mut state = State::load(root)?;
    recover(root, &mut state, progress)?;
    let installed = state
        .extensions
        .get(name)
        .cloned()
        .ok_or_else(|| NodeError::Policy(format!("{name} is not installed here")))?;
    let previous = installed
        .previous
        .clone()
        .ok_or_else(|| NodeError::Policy(format!("{name}: no previous image recorded; nothing to roll back to")))?;
    let image: ImageName = previous
        .rsplit('/')
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| NodeError::Policy(format!("{name}: the previous image {previous} has no image name")))?;
    let host_path = root.path(&previous);
    let file = fs::File::open(&host_path).map_err(|cause| NodeError::Io { path: host_path.clone(), cause })?;
    let digests =
        signing::Digests::of_reader(file).map_err(|cause| NodeError::Io { path: host_path.clone(), cause })?;
    if installed.previous_sha256.is_some_and(|want| want != digests.sha256) {
        return Err(NodeError::Policy(format!(
            "{previous}: its SHA-256 is {}, not the {} recorded when it was installed; refusing to switch to it",
            digests.sha256,
            installed.previous_sha256.map(|d| d.to_string()).unwrap_or_default()
        )));
    }
    let contents = release_index::image::read(&host_path).map_err(crate::source::SourceError::from)?;
    let release = contents
        .extension_release
        .get(name.as_str())
        .cloned()
        .ok_or_else(|| NodeError::Policy(format!("{previous}: has no extension-release.{name}")))?;
    let from = installed.clone();
    let to = Installed {
        image: image.clone(),
        path: previous.clone(),
        size: digests.size,
        sha256: digests.sha256,
        sha512: digests.sha512,
        extension_release: release,
        installed_at: Timestamp::now(),
        previous: Some(installed.path.clone()),
        previous_sha256: Some(installed.sha256),
        channel: channel_of(&installed.channel, &image, &installed.image),
        ..installed.clone()
    };
    let restart = match &req.restart {
        Some(u) => u.clone(),
        None => default_restart(&Shipped::of(&host_path, name, &to.extension_release)?),
    };
    let sw = SwitchRecord { extension: name.clone(), from, to: to.clone(), restart, post_hook: None };
    state.operation = Some(Operation {
        kind: "rollback".into(),
        pid: std::process::id(),
        started_at: Timestamp::now(),
        steps: Vec::new(),
        switch: Some(sw.clone()),
    });
    state.begin(root, StepKind::Switch, vec![to.link.clone(), previous.clone()])?;
    root.put_link(&to.link, &previous)?;
    state.extensions.insert(name.clone(), to.clone());
    let mut report = UpgradeReport {
        extension: name.clone(),
        from: installed.image.clone(),
        to: image,
        outcome: "rolled-back",
        reason: "composer node rollback".into(),
        downloaded: Vec::new(),
        ran: Vec::new(),
        pruned: Vec::new(),
    };
    if root.is_live() {
        let checks = Checks { kubeadm: None, health: None, timeout: req.timeout };
        if let Err(failed) = activate(root, &mut state, &sw, &checks, &mut report.ran) {
            // Rolling back the rollback: the image it replaced was running.
            let undone = undo(root, &mut state, &sw, req.timeout, &mut report.ran);
            state.operation = None;
            state.save(root)?;
            let after = match undone {
                Ok(()) => format!("switched back to {}", installed.image),
                Err(e) => format!("switching back to {} failed too: {e}", installed.image),
            };
            record(
                root,
                &sw,
                "rollback",
                Outcome::Failed,
                Some(failed.step),
                Some(format!("{}; {after}", failed.reason)),
            )?;
            return Err(NodeError::UpgradeFailed {
                extension: name.clone(),
                step: failed.step,
                reason: failed.reason,
                after,
            });
        }
    } else {
        report.reason = format!("{} is not the running system: linked only", root.dir().display());
    }
    state.operation = None;
    state.save(root)?;
    record(root, &sw, "rollback", Outcome::RolledBack, None, None)?;
    Ok(report)
}

/// The channel after switching from `from` to `to`: a rollback across a minor follows the
/// minor it returns to.
fn channel_of(channel: &ChannelRef, to: &ImageName, from: &ImageName) -> ChannelRef {
    match (to.version.semver(), from.version.semver()) {
        (Some(t), Some(f)) if t.minor != f.minor || t.major != f.major => {
            format!("{}@{}.{}", channel.name, t.major, t.minor).parse().unwrap_or_else(|_| channel.clone())
        }
        _ => channel.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(file: &str) -> Artifact {
        Artifact {
            file: file.parse().unwrap(),
            size: 1,
            sha256: signing::Sha256Digest::of(b""),
            sha512: signing::Sha512Digest::of(b""),
            extension_release: ExtensionRelease::parse("ID=_any\n").unwrap(),
            inputs: Vec::new(),
        }
    }

    fn check(installed: &str, to: Option<&str>, policy: Policy) -> Result<Option<String>, String> {
        let versions: Vec<Version> =
            ["v1.30.9", "v1.31.3", "v1.31.4", "v1.31.5", "v1.32.0", "v1.32.1", "v1.33.0", "v2.0.0"]
                .iter()
                .map(|v| v.parse().unwrap())
                .collect();
        let arts: Vec<Artifact> = versions.iter().map(|v| artifact(&format!("kubernetes-{v}-x86-64.raw"))).collect();
        let available: Vec<(&Version, &Artifact)> = versions.iter().zip(arts.iter()).collect();
        let to = to.map(|t| t.parse::<Version>().unwrap());
        pick(&installed.parse().unwrap(), &available, to.as_ref(), policy, &|_| None)
            .map(|t| t.map(|t| t.version.to_string()))
            .map_err(|e| e.to_string())
    }

    const PATCH: Policy = Policy { allow_minor: false, allow_downgrade: false };
    const MINOR: Policy = Policy { allow_minor: true, allow_downgrade: false };
    const DOWN: Policy = Policy { allow_minor: false, allow_downgrade: true };

    #[test]
    fn patch_only_by_default_one_minor_when_allowed() {
        assert_eq!(check("v1.31.3", None, PATCH).unwrap().as_deref(), Some("v1.31.5"));
        assert_eq!(check("v1.31.5", None, PATCH).unwrap(), None, "up to date within its minor");
        assert_eq!(check("v1.31.3", None, MINOR).unwrap().as_deref(), Some("v1.31.5"), "patches first");
        assert_eq!(check("v1.31.5", None, MINOR).unwrap().as_deref(), Some("v1.32.1"), "then one minor");
        assert_eq!(check("v1.32.1", None, MINOR).unwrap().as_deref(), Some("v1.33.0"));
    }

    #[test]
    fn skipping_majors_and_downgrades_are_refused() {
        let err = check("v1.31.5", Some("v1.32.0"), PATCH).unwrap_err();
        assert!(err.contains("is a minor upgrade; pass --allow-minor"), "{err}");
        let err = check("v1.31.5", Some("v1.33.0"), MINOR).unwrap_err();
        assert!(err.contains("skips 1 minor version(s)"), "{err}");
        assert!(check("v1.33.0", Some("v2.0.0"), MINOR).unwrap_err().contains("major"));
        let err = check("v1.31.5", Some("v1.31.3"), PATCH).unwrap_err();
        assert!(err.contains("also needs --allow-downgrade"), "{err}");
        assert_eq!(check("v1.31.5", Some("v1.31.3"), DOWN).unwrap().as_deref(), Some("v1.31.3"));
        assert!(check("v1.32.1", Some("v1.30.9"), DOWN).unwrap_err().contains("at most one minor"));
        assert!(check("v1.31.3", Some("v1.31.9"), PATCH).unwrap_err().contains("not in the signed index"));
        assert_eq!(check("v1.31.3", Some("v1.31.3"), PATCH).unwrap(), None);
    }

    #[test]
    fn a_version_that_failed_here_is_skipped_unless_named() {
        let versions: Vec<Version> = ["v1.31.3", "v1.31.4"].iter().map(|v| v.parse().unwrap()).collect();
        let arts: Vec<Artifact> = versions.iter().map(|v| artifact(&format!("kubernetes-{v}-x86-64.raw"))).collect();
        let available: Vec<(&Version, &Artifact)> = versions.iter().zip(arts.iter()).collect();
        let failed = |i: &ImageName| (i.version.as_str() == "v1.31.4").then(|| "rolled back".to_owned());
        let err = pick(&versions[0], &available, None, PATCH, &failed).unwrap_err().to_string();
        assert!(err.contains("v1.31.4 (rolled back)") && err.contains("--to"), "{err}");
        let t = pick(&versions[0], &available, Some(&versions[1]), PATCH, &failed).unwrap().unwrap();
        assert_eq!(t.version, &versions[1]);
    }
}
