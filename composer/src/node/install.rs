//! Rendering a [`NodePlan`] onto a node's root: every kind of entry the plan has
//! (directories, images, small files, links and masks, enabled units), so whatever the plan
//! grows is installed by the agent as it is by `compose` and provisioning.
//!
//! In three steps, so a failure leaves the node as it was: [`check`] (every path is free or
//! of a kind that may be replaced; nothing written), then the images (downloaded and
//! verified by the caller into staging directories), then [`install`] in two passes:
//! directories and images renamed into place first, and only once every image is there the
//! files and links, each switched atomically. [`pending`] says what would change without
//! changing it, so a run with nothing to do writes nothing.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::root::NodeRoot;
use super::NodeError;
use crate::plan::{EnabledUnit, Entry, NodePlan};

/// Where systemd looks for a unit `systemctl enable` links to, in its order.
const UNIT_DIRS: [&str; 3] = ["/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"];

/// One path the run changed (or would change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Node path.
    pub path: String,
    /// `created`, `replaced` or `installed`.
    pub action: &'static str,
}

fn conflict(path: &str, reason: impl Into<String>) -> NodeError {
    NodeError::Conflict { path: path.to_owned(), reason: reason.into() }
}

/// Every existing ancestor of `node` must be a directory (or a link to one).
fn check_parents(root: &NodeRoot, node: &str) -> Result<(), NodeError> {
    let mut cur = String::new();
    let parts: Vec<&str> = node.trim_start_matches('/').split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        cur.push('/');
        cur.push_str(part);
        let p = root.path(&cur);
        if p.symlink_metadata().is_ok() && !p.is_dir() {
            return Err(conflict(&cur, format!("exists and is not a directory, so {node} cannot be created")));
        }
    }
    Ok(())
}

/// `node` is written by renaming over it: a file or link there may be replaced, a
/// directory may not.
fn check_replaceable(root: &NodeRoot, node: &str) -> Result<(), NodeError> {
    check_parents(root, node)?;
    if fs::symlink_metadata(root.path(node)).is_ok_and(|m| m.is_dir()) {
        return Err(conflict(node, "is a directory; expected a file or link to replace"));
    }
    Ok(())
}

/// Where `unit` is, as `systemctl enable` would link to it: a unit file the plan writes, or
/// one on the node.
/// `None`: the node lacks a unit the plan enables only where present.
fn unit_file(root: &NodeRoot, plan: &NodePlan, unit: &EnabledUnit) -> Result<Option<String>, NodeError> {
    for dir in UNIT_DIRS {
        let node = format!("{dir}/{}", unit.name);
        let planned = plan.entries.iter().any(|e| matches!(e, Entry::File { path, .. } if *path == node));
        if planned || root.path(&node).is_file() {
            return Ok(Some(node));
        }
    }
    if unit.if_present {
        return Ok(None);
    }
    Err(conflict(&unit.link(), format!("enables {}, which is in none of {}", unit.name, UNIT_DIRS.join(", "))))
}

/// Checks, writing nothing, that the plan can be installed on `root`.
pub fn check(plan: &NodePlan, root: &NodeRoot) -> Result<(), NodeError> {
    for entry in &plan.entries {
        match entry {
            Entry::Dir { path } => {
                check_parents(root, path)?;
                let p = root.path(path);
                if p.symlink_metadata().is_ok() && !p.is_dir() {
                    return Err(conflict(path, "exists and is not a directory"));
                }
            }
            Entry::Image { path, .. } | Entry::File { path, .. } | Entry::Link { path, .. } => {
                check_replaceable(root, path)?
            }
        }
    }
    for unit in plan.enable.iter().filter(|u| !u.by_os) {
        if unit_file(root, plan, unit)?.is_some() {
            check_replaceable(root, &unit.link())?;
        }
    }
    Ok(())
}

fn is_file_with(path: &Path, contents: &[u8], mode: u32) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o7777 == mode)
        && fs::read(path).is_ok_and(|b| b == contents)
}

fn links_to(path: &Path, target: &str) -> bool {
    fs::read_link(path).is_ok_and(|t| t == Path::new(target))
}

/// The node paths the plan would change on `root`, images excluded (the caller knows which
/// it downloaded).
pub fn pending(plan: &NodePlan, root: &NodeRoot) -> Result<Vec<String>, NodeError> {
    let mut out = Vec::new();
    for entry in &plan.entries {
        let p = root.path(entry.path());
        let same = match entry {
            Entry::Dir { .. } => p.is_dir(),
            Entry::Image { .. } => true,
            Entry::File { contents, mode, .. } => is_file_with(&p, contents, *mode),
            Entry::Link { target, .. } => links_to(&p, target),
        };
        if !same {
            out.push(entry.path().to_owned());
        }
    }
    for unit in plan.enable.iter().filter(|u| !u.by_os) {
        let Some(target) = unit_file(root, plan, unit)? else { continue };
        if !links_to(&root.path(&unit.link()), &target) {
            out.push(unit.link());
        }
    }
    Ok(out)
}

/// Installs the plan: `staged` holds, by node path, the verified images to rename into
/// place (an image not in it is already installed and verified). Directories and images
/// first, then files, links and enablement links; `before_switch` runs between the two
/// passes (the caller journals the step). Returns what changed.
pub fn install(
    plan: &NodePlan,
    root: &NodeRoot,
    staged: &[(String, PathBuf)],
    before_switch: &mut dyn FnMut() -> Result<(), NodeError>,
) -> Result<Vec<Change>, NodeError> {
    let mut changes = Vec::new();
    for entry in &plan.entries {
        match entry {
            Entry::Dir { path } => {
                if root.put_dir(path)? {
                    changes.push(Change { path: path.clone(), action: "created" });
                }
            }
            Entry::Image { path, .. } => {
                if let Some((_, from)) = staged.iter().find(|(p, _)| p == path) {
                    let existed = root.path(path).symlink_metadata().is_ok();
                    root.put_staged(from, path)?;
                    changes.push(Change { path: path.clone(), action: if existed { "replaced" } else { "installed" } });
                }
            }
            Entry::File { .. } | Entry::Link { .. } => {}
        }
    }
    before_switch()?;
    let mut put = |path: &str, changed: bool, existed: bool| {
        if changed {
            changes.push(Change { path: path.to_owned(), action: if existed { "replaced" } else { "created" } });
        }
    };
    for entry in &plan.entries {
        match entry {
            Entry::File { path, mode, contents } => {
                let existed = exists(root, path);
                put(path, root.put_file(path, contents, *mode)?, existed);
            }
            Entry::Link { path, target, .. } => {
                let existed = exists(root, path);
                put(path, root.put_link(path, target)?, existed);
            }
            Entry::Dir { .. } | Entry::Image { .. } => {}
        }
    }
    for unit in plan.enable.iter().filter(|u| !u.by_os) {
        let Some(target) = unit_file(root, plan, unit)? else { continue };
        let link = unit.link();
        root.put_dir(&link[..link.rfind('/').expect("an absolute path")])?;
        let existed = exists(root, &link);
        put(&link, root.put_link(&link, &target)?, existed);
    }
    Ok(changes)
}

fn exists(root: &NodeRoot, node: &str) -> bool {
    root.path(node).symlink_metadata().is_ok()
}

/// Removes staging directories (`.composer-sync-*`) a killed run left in the image
/// directories of `plan`; returns what it removed.
pub fn remove_leftovers(plan: &NodePlan, root: &NodeRoot) -> Result<Vec<PathBuf>, NodeError> {
    let mut removed = Vec::new();
    let dirs: Vec<&str> = plan
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Image { path, .. } => path.rsplit_once('/').map(|(d, _)| d),
            _ => None,
        })
        .collect();
    for dir in dirs {
        let Ok(read) = fs::read_dir(root.path(dir)) else { continue };
        for e in read.flatten() {
            if e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
                let p = e.path();
                match fs::remove_dir_all(&p) {
                    Ok(()) => removed.push(p),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(cause) => return Err(NodeError::Io { path: p, cause }),
                }
            }
        }
    }
    Ok(removed)
}

/// Prefix of the staging directories downloads go into, beside their destination.
pub const STAGING_PREFIX: &str = ".composer-sync-";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ImageSource, NodeOs, PlanRequest, PlannedImage};
    use signing::{Sha256Digest, Sha512Digest};

    fn plan() -> NodePlan {
        let image = PlannedImage {
            image: "cni-v1.6.2-x86-64.raw".parse().unwrap(),
            size: 4,
            sha256: Sha256Digest::of(b"data"),
            sha512: Sha512Digest::of(b"data"),
            source: ImageSource::Url("https://example.org/cni-v1.6.2-x86-64.raw".into()),
        };
        NodePlan::build(&PlanRequest { os: NodeOs::Ubuntu, images: &[image], sysupdate: None, keyring: None })
    }

    fn root_with_unit() -> (tempfile::TempDir, NodeRoot) {
        let dir = tempfile::tempdir().unwrap();
        let unit = dir.path().join("usr/lib/systemd/system/systemd-sysext.service");
        fs::create_dir_all(unit.parent().unwrap()).unwrap();
        fs::write(unit, "[Unit]\n").unwrap();
        let root = NodeRoot::open(dir.path()).unwrap();
        (dir, root)
    }

    #[test]
    fn what_is_in_the_way_is_named_before_anything_is_written() {
        let (dir, root) = root_with_unit();
        check(&plan(), &root).unwrap();
        assert_eq!(
            pending(&plan(), &root).unwrap(),
            [
                "/etc/extensions",
                "/opt/extensions/cni",
                "/etc/extensions/cni.raw",
                // On Ubuntu/Debian the agent installs the unit that starts the extensions'
                // services after the merge, like compose and provisioning.
                "/etc/systemd/system/sysinit.target.wants",
                "/etc/systemd/system/sysext-units.service",
                "/etc/systemd/system/sysinit.target.wants/sysext-units.service",
                "/etc/systemd/system/sysinit.target.wants/systemd-sysext.service"
            ]
        );

        fs::create_dir_all(dir.path().join("etc/extensions/cni.raw")).unwrap();
        let err = check(&plan(), &root).unwrap_err().to_string();
        assert_eq!(err, "/etc/extensions/cni.raw: is a directory; expected a file or link to replace");
        fs::remove_dir(dir.path().join("etc/extensions/cni.raw")).unwrap();
        fs::remove_dir(dir.path().join("etc/extensions")).unwrap();

        fs::create_dir_all(dir.path().join("opt")).unwrap();
        fs::write(dir.path().join("opt/extensions"), "").unwrap();
        let err = check(&plan(), &root).unwrap_err().to_string();
        assert!(err.starts_with("/opt/extensions: exists and is not a directory"), "{err}");
        fs::remove_file(dir.path().join("opt/extensions")).unwrap();

        fs::remove_file(dir.path().join("usr/lib/systemd/system/systemd-sysext.service")).unwrap();
        let err = check(&plan(), &root).unwrap_err().to_string();
        assert!(err.contains("enables systemd-sysext.service, which is in none of /etc/systemd/system"), "{err}");
        assert!(!dir.path().join("etc/extensions").exists(), "check writes nothing");
    }
}
