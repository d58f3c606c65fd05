//! Making a running node use what was installed: refresh systemd-sysext, reload the service
//! manager where the node's systemd does not, and start the units the extensions ship.
//!
//! - `systemctl reload-or-restart systemd-sysext.service`: on 255 and later the unit's
//!   reload is `systemd-sysext refresh`, and an image with `EXTENSION_RELOAD_MANAGER=1`
//!   makes it reload the manager itself; 252 (Debian 12) has no reload, so this restarts
//!   the unit (unmerge, merge). Going through the unit, not running `systemd-sysext refresh`
//!   directly, keeps it active: otherwise a later start of `sysinit.target`, which wants
//!   it, would run `merge` on merged hierarchies and fail.
//! - Each extension is then checked to be merged with the identity of the image installed
//!   (systemd-sysext skips an incompatible image silently).
//! - `systemctl daemon-reload` on systemd < 255 (or unknown), when a unit file outside the
//!   images changed, or when an image with units does not ask for the reload.
//! - `systemctl start --no-block TARGET…` for the targets the images hook their units into
//!   (`<target>.d/*.conf` drop-ins with `Wants=`/`Upholds=`, `<target>.wants/` and
//!   `.upholds/` links): a new start job for a target pulls in what it now wants, even when
//!   the target is active, where a reload alone starts nothing (measured on 252). A unit
//!   already running is not started twice. `--no-block` because the first-boot unit runs
//!   inside `multi-user.target`'s transaction: waiting for that target from within it
//!   would wait for itself.
//!
//! On a root that is not the running system nothing is run; the report lists the commands.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use release_index::image::RELEASE_PREFIX;
use serde::Serialize;
use sysext_model::{ExtensionName, ExtensionRelease};

use super::root::NodeRoot;
use super::NodeError;

/// The first systemd whose systemd-sysext reloads the manager (`EXTENSION_RELOAD_MANAGER=`).
pub const RELOAD_MANAGER_SYSTEMD: u32 = 255;
/// Where extensions ship units.
const UNIT_DIR: &str = "/usr/lib/systemd/system/";

/// What an installed image brings to the service manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Shipped {
    /// The extension.
    #[serde(serialize_with = "super::as_display")]
    pub name: ExtensionName,
    /// Unit files it ships.
    pub units: Vec<String>,
    /// Targets its drop-ins or links hook units into.
    pub targets: Vec<String>,
    /// It sets `EXTENSION_RELOAD_MANAGER=1`.
    pub reloads_manager: bool,
}

impl Shipped {
    /// Reads what the image at `path` (named `name`, with `release` as its identity) ships.
    pub fn of(path: &Path, name: &ExtensionName, release: &ExtensionRelease) -> Result<Self, NodeError> {
        let contents = release_index::image::read(path).map_err(crate::source::SourceError::from)?;
        let mut units = BTreeSet::new();
        let mut targets = BTreeSet::new();
        for entry in &contents.entries {
            let Some(rest) = entry.path.strip_prefix(UNIT_DIR) else { continue };
            match rest.split_once('/') {
                None if entry.kind != "dir" => {
                    units.insert(rest.to_owned());
                }
                Some((dir, _)) => {
                    for suffix in [".d", ".wants", ".upholds"] {
                        if let Some(target) = dir.strip_suffix(suffix).filter(|t| t.ends_with(".target")) {
                            targets.insert(target.to_owned());
                        }
                    }
                }
                None => {}
            }
        }
        Ok(Self {
            name: name.clone(),
            units: units.into_iter().collect(),
            targets: targets.into_iter().collect(),
            reloads_manager: release.get("EXTENSION_RELOAD_MANAGER") == Some("1"),
        })
    }
}

/// What activation does (or would do).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Activation {
    /// Whether the commands ran.
    pub ran: bool,
    /// Why they did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// The node's systemd version, if known.
    pub systemd: Option<u32>,
    /// The commands, in order.
    pub commands: Vec<Vec<String>>,
    /// The units the extensions ship.
    pub units: Vec<String>,
    /// The targets started to start them.
    pub targets: Vec<String>,
}

fn cmd(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// The commands that activate `shipped` on a node with `systemd`; `units_changed` says that
/// a unit file or enablement link outside the images changed.
pub fn plan(systemd: Option<u32>, shipped: &[Shipped], units_changed: bool) -> Activation {
    let mut commands = vec![cmd(&["systemctl", "reload-or-restart", sysext_model::node::SYSEXT_SERVICE])];
    let old = systemd.is_none_or(|v| v < RELOAD_MANAGER_SYSTEMD);
    if old || units_changed || shipped.iter().any(|s| !s.units.is_empty() && !s.reloads_manager) {
        commands.push(cmd(&["systemctl", "daemon-reload"]));
    }
    let targets: BTreeSet<String> = shipped.iter().flat_map(|s| s.targets.iter().cloned()).collect();
    if !targets.is_empty() {
        let mut start = cmd(&["systemctl", "start", "--no-block"]);
        start.extend(targets.iter().cloned());
        commands.push(start);
    }
    Activation {
        ran: false,
        skipped: None,
        systemd,
        commands,
        units: shipped.iter().flat_map(|s| s.units.iter().cloned()).collect(),
        targets: targets.into_iter().collect(),
    }
}

pub(super) fn run_command(words: &[String]) -> Result<(), NodeError> {
    let shown = words.join(" ");
    let out = Command::new(&words[0]).args(&words[1..]).output().map_err(|e| NodeError::Command {
        command: shown.clone(),
        status: "not run".into(),
        output: e.to_string(),
    })?;
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if output.is_empty() {
            output = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        return Err(NodeError::Command { command: shown, status: out.status.to_string(), output });
    }
    Ok(())
}

/// Runs `activation` on the running system: refresh, the merge check for `expected`
/// (each extension with the identity of its installed image), reload, start.
pub fn run(
    activation: &mut Activation,
    root: &NodeRoot,
    expected: &[(ExtensionName, ExtensionRelease, String)],
) -> Result<(), NodeError> {
    let (refresh, rest) = activation.commands.split_first().expect("activation refreshes first");
    run_command(refresh)?;
    for (name, release, image) in expected {
        let path = root.path(&format!("{RELEASE_PREFIX}{name}"));
        let merged = std::fs::read_to_string(&path).ok().and_then(|t| ExtensionRelease::parse(&t).ok());
        if merged.as_ref() != Some(release) {
            return Err(NodeError::NotMerged { name: name.clone(), image: image.clone(), found: merged.is_some() });
        }
    }
    for words in rest {
        run_command(words)?;
    }
    activation.ran = true;
    Ok(())
}

/// Whether every extension in `expected` is merged with the identity of its installed image
/// (on the running system).
pub fn all_merged(root: &NodeRoot, expected: &[(ExtensionName, ExtensionRelease, String)]) -> bool {
    expected.iter().all(|(name, release, _)| {
        std::fs::read_to_string(root.path(&format!("{RELEASE_PREFIX}{name}")))
            .ok()
            .and_then(|t| ExtensionRelease::parse(&t).ok())
            .as_ref()
            == Some(release)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(units: &[&str], targets: &[&str], reloads: bool) -> Shipped {
        Shipped {
            name: "kubernetes".parse().unwrap(),
            units: units.iter().map(|s| (*s).to_owned()).collect(),
            targets: targets.iter().map(|s| (*s).to_owned()).collect(),
            reloads_manager: reloads,
        }
    }

    #[test]
    fn systemd_252_reloads_itself_255_only_when_an_image_does_not() {
        let k = [shipped(&["kubelet.service"], &["multi-user.target"], true)];
        let words = |a: &Activation| a.commands.iter().map(|c| c.join(" ")).collect::<Vec<_>>();
        assert_eq!(
            words(&plan(Some(252), &k, false)),
            [
                "systemctl reload-or-restart systemd-sysext.service",
                "systemctl daemon-reload",
                "systemctl start --no-block multi-user.target"
            ]
        );
        assert_eq!(
            words(&plan(Some(257), &k, false)),
            ["systemctl reload-or-restart systemd-sysext.service", "systemctl start --no-block multi-user.target"]
        );
        assert!(words(&plan(None, &k, false)).contains(&"systemctl daemon-reload".to_owned()), "unknown is old");
        assert!(words(&plan(Some(257), &k, true)).contains(&"systemctl daemon-reload".to_owned()));
        let no_flag = [shipped(&["x.service"], &[], false)];
        assert_eq!(
            words(&plan(Some(255), &no_flag, false)),
            ["systemctl reload-or-restart systemd-sysext.service", "systemctl daemon-reload"]
        );
    }
}
