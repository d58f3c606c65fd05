//! The node plan: one value describing what goes onto a node, built once from the resolved
//! extensions and the target OS, and rendered by every way of getting it there.
//!
//! `compose` renders it into a disk image with debugfs; provisioning configs and the node
//! agent render the same value, so a node composed into a disk, one provisioned by Ignition
//! and one provisioned by cloud-init end up with the same files, links and units. The paths
//! come from [`sysext_model::node`], the transfer files from [`release_index::transfer`].

use std::path::PathBuf;

use release_index::transfer;
use serde::{Deserialize, Serialize};
use signing::{Sha256Digest, Sha512Digest};
use sysext_model::{node, BaseUrl, ImageName};

/// The unit the plan installs on nodes whose OS does not start the units extensions ship
/// ([`node::SYSEXT_UNITS_SERVICE`]); its comments say why and how.
pub const SYSEXT_UNITS_UNIT: &str = include_str!("sysext-units.service");

/// The distribution a node runs, as far as the plan is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NodeOs {
    /// Flatcar Container Linux: the OS enables systemd-sysext.service, and its
    /// ensure-sysext.service starts the extensions' units.
    Flatcar,
    /// Ubuntu (and Debian): systemd-sysext.service ships disabled and nothing starts the
    /// extensions' units; composer enables it and installs sysext-units.service.
    Ubuntu,
}

/// Where an image's bytes come from when the plan is rendered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageSource {
    /// A verified file on this machine (composing a disk).
    Local(PathBuf),
    /// A URL the node downloads from (provisioning), checked against the plan's digests.
    Url(String),
}

/// One extension image to install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedImage {
    /// Its published file name.
    #[serde(serialize_with = "as_display")]
    pub image: ImageName,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256.
    pub sha256: Sha256Digest,
    /// SHA-512 (Ignition's `verification.hash`).
    pub sha512: Sha512Digest,
    /// Where the bytes come from.
    pub source: ImageSource,
}

fn as_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// One thing on the node's filesystem, in creation order (directories before their contents).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Entry {
    /// A directory (root-owned, 0755), created with its missing parents.
    Dir {
        /// Absolute path.
        path: String,
    },
    /// An extension image (root-owned, 0644).
    Image {
        /// Absolute path: `/opt/extensions/<ext>/<file>`.
        path: String,
        /// What goes there.
        #[serde(flatten)]
        image: PlannedImage,
    },
    /// A small file with known contents (root-owned).
    File {
        /// Absolute path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Contents.
        contents: Vec<u8>,
    },
    /// A symbolic link.
    Link {
        /// Absolute path of the link.
        path: String,
        /// Where it points.
        target: String,
        /// The OS may create this path itself (Flatcar's tmpfiles link its built-in runtimes
        /// into `/etc/extensions`), so whatever is there must be replaced, not refused.
        /// Every renderer replaces what it writes; this tells the ones that refuse existing
        /// paths by default (Ignition) to say so.
        replace: bool,
    },
}

impl Entry {
    /// The entry's absolute path.
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path } | Entry::Image { path, .. } | Entry::File { path, .. } | Entry::Link { path, .. } => {
                path
            }
        }
    }
}

/// A unit the plan enables: `WantedBy=` link from `wanted_by`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EnabledUnit {
    /// Unit name, e.g. `systemd-sysext.service`.
    pub name: String,
    /// The target that wants it, e.g. `sysinit.target`.
    pub wanted_by: String,
    /// The OS already enables it (Flatcar enables systemd-sysext.service in `/usr`).
    /// Renderers that state enablement declaratively (Ignition) still say so, which is a
    /// no-op there; renderers that create the link (compose, which cannot see Flatcar's
    /// `/usr` partition) leave the OS's own enablement alone.
    pub by_os: bool,
    /// Enabled only where the node has the unit (systemd-sysupdate.timer: not every
    /// distribution's systemd ships sysupdate); elsewhere it is skipped, not an error.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub if_present: bool,
}

impl EnabledUnit {
    /// `/etc/systemd/system/<target>.wants/<unit>`.
    pub fn link(&self) -> String {
        node::wants_link(&self.wanted_by, &self.name)
    }
}

/// What goes onto a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodePlan {
    /// The target distribution.
    pub os: NodeOs,
    /// Files, directories, images and links, in creation order.
    pub entries: Vec<Entry>,
    /// Units to enable.
    pub enable: Vec<EnabledUnit>,
}

/// The node agent's files, which `provision --agent` adds to the plan of the composer image
/// ([`NodePlan::with_agent`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentFiles {
    /// `/etc/composer/node.toml`.
    pub config: String,
    /// The release's public key (SPKI PEM).
    pub pubkey: String,
    /// `composer-node-sync.service`.
    pub unit: String,
    /// Enable `composer-node-upgrade.timer` (the service and the timer are installed either
    /// way, so `systemctl enable --now composer-node-upgrade.timer` turns it on later).
    pub auto_upgrade: bool,
}

/// What a plan is built from.
#[derive(Clone, Debug)]
pub struct PlanRequest<'a> {
    /// The target distribution.
    pub os: NodeOs,
    /// The images, one per extension.
    pub images: &'a [PlannedImage],
    /// Install sysupdate transfer files that follow this release base URL.
    pub sysupdate: Option<&'a BaseUrl>,
    /// With `sysupdate`: the release's OpenPGP keyring; installed where systemd-pull reads it,
    /// and the transfer files say `Verify=yes`.
    pub keyring: Option<&'a [u8]>,
}

impl NodePlan {
    /// Builds the plan. Each extension gets `/opt/extensions/<ext>/<file>` and the link
    /// `/etc/extensions/<ext>.raw`; with sysupdate, `/etc/sysupdate.<ext>.d/` with the
    /// transfer file for the installed minor (patch releases only: Kubernetes does not
    /// support skipping minors; versions without MAJOR.MINOR follow every release) in both
    /// `.conf` and `.transfer` form, and `noop.conf`; systemd-sysext.service enabled
    /// (Ubuntu ships it disabled, and without it nothing merges at boot; Flatcar enables it
    /// itself). On Flatcar, installing containerd masks the built-in `containerd-flatcar`
    /// and `docker-flatcar` extensions with links to `/dev/null`, as Flatcar documents, so
    /// two containerds never merge. On Ubuntu, which has nothing like Flatcar's
    /// ensure-sysext.service, [`node::SYSEXT_UNITS_SERVICE`] is installed in
    /// `/etc/systemd/system` and enabled for `sysinit.target` beside systemd-sysext.service:
    /// without it the extensions merge at boot but their services never start (systemd 252
    /// does not reload after a merge).
    pub fn build(req: &PlanRequest<'_>) -> NodePlan {
        let mut entries = vec![Entry::Dir { path: node::EXTENSIONS_DIR.to_owned() }];
        for planned in req.images {
            let name = &planned.image.name;
            entries.push(Entry::Dir { path: node::image_dir(name) });
            let path = node::image_path(&planned.image);
            entries.push(Entry::Image { path: path.clone(), image: planned.clone() });
            entries.push(Entry::Link { path: node::current_link(name), target: path, replace: false });
            if req.os == NodeOs::Flatcar && name.as_str() == node::CONTAINERD {
                for builtin in node::FLATCAR_BUILTIN_RUNTIMES {
                    entries.push(Entry::Link {
                        path: node::link_for(builtin),
                        target: node::MASKED.to_owned(),
                        replace: true,
                    });
                }
            }
            if let Some(base) = req.sysupdate {
                let dir = node::sysupdate_dir(name);
                entries.push(Entry::Dir { path: dir.clone() });
                let source = base.dir(name.as_str());
                let verify = if req.keyring.is_some() { transfer::Verify::Yes } else { transfer::Verify::No };
                let (stem, text) = transfer::patch_channel(name, &planned.image.version, &source, verify)
                    .unwrap_or_else(|| (name.to_string(), transfer::any_version(name, &source, verify)));
                for suffix in ["conf", "transfer"] {
                    entries.push(Entry::File {
                        path: format!("{dir}/{stem}.{suffix}"),
                        mode: 0o644,
                        contents: text.clone().into_bytes(),
                    });
                }
            }
        }
        if let (Some(_), Some(keyring)) = (req.sysupdate, req.keyring) {
            // `/etc/systemd` is on every node, but renderers create a file's directory only
            // where the plan names it, and a scratch root (`--root`) may not have it yet.
            let parent = std::path::Path::new(node::SYSUPDATE_KEYRING).parent().expect("an absolute path");
            entries.push(Entry::Dir { path: parent.to_str().expect("UTF-8").to_owned() });
            entries.push(Entry::File {
                path: node::SYSUPDATE_KEYRING.to_owned(),
                mode: 0o644,
                contents: keyring.to_vec(),
            });
        }
        if req.sysupdate.is_some() {
            entries.push(Entry::Dir { path: node::SYSUPDATE_DEFAULT_DIR.to_owned() });
            entries.push(Entry::File {
                path: node::noop_transfer(),
                mode: 0o644,
                contents: transfer::noop().as_bytes().to_vec(),
            });
        }
        if req.os == NodeOs::Ubuntu {
            let unit = node::etc_unit(node::SYSEXT_UNITS_SERVICE);
            let wants = node::wants_dir(node::SYSEXT_WANTED_BY);
            entries.push(Entry::Dir { path: wants.clone() });
            entries.push(Entry::File { path: unit.clone(), mode: 0o644, contents: SYSEXT_UNITS_UNIT.into() });
            entries.push(Entry::Link {
                path: node::wants_link(node::SYSEXT_WANTED_BY, node::SYSEXT_UNITS_SERVICE),
                target: unit,
                replace: false,
            });
        }
        let mut enable = vec![EnabledUnit {
            name: node::SYSEXT_SERVICE.to_owned(),
            wanted_by: node::SYSEXT_WANTED_BY.to_owned(),
            by_os: req.os == NodeOs::Flatcar,
            if_present: false,
        }];
        if req.sysupdate.is_some() {
            // The transfer files do nothing until something runs sysupdate; Flatcar's own
            // sysext-bakery instructions enable this timer too.
            enable.push(EnabledUnit {
                name: node::SYSUPDATE_TIMER.to_owned(),
                wanted_by: node::SYSUPDATE_WANTED_BY.to_owned(),
                by_os: false,
                if_present: true,
            });
        }
        NodePlan { os: req.os, entries, enable }
    }

    /// Adds the node agent: its configuration and the release's public key in
    /// `/etc/composer/`, and `composer-node-sync.service` in `/etc/systemd/system/`, enabled
    /// for `multi-user.target`. The plan's images must include the composer extension that
    /// ships the agent's binary.
    pub fn with_agent(mut self, agent: &AgentFiles) -> NodePlan {
        use crate::node::{config, unit};
        self.entries.push(Entry::Dir { path: config::CONFIG_DIR.to_owned() });
        for (path, contents) in [(config::CONFIG_PATH, &agent.config), (config::PUBKEY_PATH, &agent.pubkey)] {
            self.entries.push(Entry::File {
                path: path.to_owned(),
                mode: 0o644,
                contents: contents.clone().into_bytes(),
            });
        }
        self.entries.push(Entry::Dir { path: node::ETC_UNITS_DIR.to_owned() });
        self.entries.push(Entry::File {
            path: unit::UNIT_PATH.to_owned(),
            mode: 0o644,
            contents: agent.unit.clone().into_bytes(),
        });
        self.enable.push(EnabledUnit {
            name: unit::UNIT.to_owned(),
            wanted_by: unit::WANTED_BY.to_owned(),
            by_os: false,
            if_present: false,
        });
        for (path, contents) in
            [(unit::UPGRADE_UNIT_PATH, unit::upgrade_unit()), (unit::UPGRADE_TIMER_PATH, unit::upgrade_timer())]
        {
            self.entries.push(Entry::File { path: path.to_owned(), mode: 0o644, contents: contents.into_bytes() });
        }
        if agent.auto_upgrade {
            self.enable.push(EnabledUnit {
                name: unit::UPGRADE_TIMER.to_owned(),
                wanted_by: unit::TIMER_WANTED_BY.to_owned(),
                by_os: false,
                if_present: false,
            });
        }
        self
    }

    /// The images the plan installs.
    pub fn images(&self) -> impl Iterator<Item = (&str, &PlannedImage)> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Image { path, image } => Some((path.as_str(), image)),
            _ => None,
        })
    }

    /// The links the plan creates, with their targets.
    pub fn links(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Link { path, target, .. } => Some((path.as_str(), target.as_str())),
            _ => None,
        })
    }

    /// Every absolute path the plan creates on the node: its entries and the links that
    /// enable its units.
    pub fn paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.entries.iter().map(|e| e.path().to_owned()).collect();
        paths.extend(self.enable.iter().map(EnabledUnit::link));
        paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(file: &str) -> PlannedImage {
        PlannedImage {
            image: file.parse().unwrap(),
            size: 4,
            sha256: Sha256Digest::of(b"data"),
            sha512: Sha512Digest::of(b"data"),
            source: ImageSource::Url(format!("https://example.org/r/{file}")),
        }
    }

    #[test]
    fn flatcar_plan_with_sysupdate() {
        let images = [planned("kubernetes-v1.31.3-x86-64.raw"), planned("cni-v1.6.2-x86-64.raw")];
        let base: BaseUrl = "https://example.org/r".parse().unwrap();
        let plan = NodePlan::build(&PlanRequest {
            os: NodeOs::Flatcar,
            images: &images,
            sysupdate: Some(&base),
            keyring: None,
        });
        let paths: Vec<&str> = plan.entries.iter().map(Entry::path).collect();
        assert_eq!(
            paths,
            [
                "/etc/extensions",
                "/opt/extensions/kubernetes",
                "/opt/extensions/kubernetes/kubernetes-v1.31.3-x86-64.raw",
                "/etc/extensions/kubernetes.raw",
                "/etc/sysupdate.kubernetes.d",
                "/etc/sysupdate.kubernetes.d/kubernetes-v1.31.conf",
                "/etc/sysupdate.kubernetes.d/kubernetes-v1.31.transfer",
                "/opt/extensions/cni",
                "/opt/extensions/cni/cni-v1.6.2-x86-64.raw",
                "/etc/extensions/cni.raw",
                "/etc/sysupdate.cni.d",
                "/etc/sysupdate.cni.d/cni-v1.6.conf",
                "/etc/sysupdate.cni.d/cni-v1.6.transfer",
                "/etc/sysupdate.d",
                "/etc/sysupdate.d/noop.conf",
            ]
        );
        let Entry::File { contents, .. } = &plan.entries[5] else { panic!("transfer file") };
        let contents = String::from_utf8_lossy(contents);
        assert!(contents.contains("Path=https://example.org/r/kubernetes/\nMatchPattern=kubernetes-v1.31.@v-%a.raw\n"));
        assert!(plan.enable[0].by_os, "Flatcar enables systemd-sysext itself");
        // The timer the transfer files need, not enabled by Flatcar, only where it exists.
        let timer = &plan.enable[1];
        assert_eq!((timer.name.as_str(), timer.by_os, timer.if_present), ("systemd-sysupdate.timer", false, true));
        assert_eq!(timer.link(), "/etc/systemd/system/timers.target.wants/systemd-sysupdate.timer");
        assert_eq!(plan.enable.len(), 2);
        assert!(
            !plan.paths().iter().any(|p| p.contains(node::SYSEXT_UNITS_SERVICE)),
            "Flatcar's ensure-sysext.service starts the extensions' units"
        );
        assert_eq!(
            plan.links().collect::<Vec<_>>()[0],
            ("/etc/extensions/kubernetes.raw", "/opt/extensions/kubernetes/kubernetes-v1.31.3-x86-64.raw")
        );
    }

    /// Renderers create a directory only where the plan names it: every entry's directory is
    /// a `Dir` entry before it, or below one (directories are made with their parents).
    #[test]
    fn every_entry_comes_after_its_directory() {
        let images = [planned("kubernetes-v1.31.3-x86-64.raw"), planned("containerd-v2.0.1-x86-64.raw")];
        let base: BaseUrl = "https://example.org/r/".parse().unwrap();
        let keyring = [0x99u8];
        for os in [NodeOs::Ubuntu, NodeOs::Flatcar] {
            for (sysupdate, keyring) in [(None, None), (Some(&base), None), (Some(&base), Some(&keyring[..]))] {
                let plan = NodePlan::build(&PlanRequest { os, images: &images, sysupdate, keyring });
                let mut made: Vec<&str> = Vec::new();
                for entry in &plan.entries {
                    if let Entry::Dir { path } = entry {
                        made.push(path);
                        continue;
                    }
                    let parent = std::path::Path::new(entry.path()).parent().unwrap().to_str().unwrap();
                    assert!(
                        made.iter().any(|d| *d == parent || d.starts_with(&format!("{parent}/"))),
                        "{os:?}, sysupdate {}, keyring {}: {} comes before its directory",
                        sysupdate.is_some(),
                        keyring.is_some(),
                        entry.path()
                    );
                }
            }
        }
    }

    #[test]
    fn a_signed_release_gets_verify_and_its_keyring() {
        let images = [planned("kubernetes-v1.31.3-x86-64.raw")];
        let base: BaseUrl = "https://example.org/r/".parse().unwrap();
        let keyring = [0x99u8, 0x00, 0x33, 0xff];
        let req = PlanRequest { os: NodeOs::Ubuntu, images: &images, sysupdate: Some(&base), keyring: Some(&keyring) };
        let plan = NodePlan::build(&req);
        let transfer = plan.entries.iter().find(|e| e.path().ends_with(".transfer")).unwrap();
        let Entry::File { contents, .. } = transfer else { panic!("a file") };
        assert!(contents.starts_with(b"[Transfer]\nVerify=yes\n"));
        let ring = plan.entries.iter().find(|e| e.path() == node::SYSUPDATE_KEYRING).expect("the keyring");
        assert!(matches!(ring, Entry::File { contents, mode: 0o644, .. } if contents == &keyring));
        // Without sysupdate nothing reads it, and without a keyring nothing is verified.
        let plain = NodePlan::build(&PlanRequest { sysupdate: None, ..req.clone() });
        assert!(!plain.paths().iter().any(|p| p == node::SYSUPDATE_KEYRING));
        let unsigned = NodePlan::build(&PlanRequest { keyring: None, ..req });
        let Some(Entry::File { contents, .. }) = unsigned.entries.iter().find(|e| e.path().ends_with(".transfer"))
        else {
            panic!("a transfer file")
        };
        assert!(contents.starts_with(b"[Transfer]\nVerify=false\n"));
    }

    #[test]
    fn ubuntu_enables_systemd_sysext() {
        let images = [planned("containerd-2.0.4-arm64.raw")];
        let plan =
            NodePlan::build(&PlanRequest { os: NodeOs::Ubuntu, images: &images, sysupdate: None, keyring: None });
        let paths: Vec<&str> = plan.entries.iter().map(Entry::path).collect();
        assert_eq!(
            paths,
            [
                "/etc/extensions",
                "/opt/extensions/containerd",
                "/opt/extensions/containerd/containerd-2.0.4-arm64.raw",
                "/etc/extensions/containerd.raw",
                "/etc/systemd/system/sysinit.target.wants",
                "/etc/systemd/system/sysext-units.service",
                "/etc/systemd/system/sysinit.target.wants/sysext-units.service",
            ],
            "no transfer files and no Flatcar masks on Ubuntu, and the unit that starts the extensions' services"
        );
        assert_eq!(plan.enable[0].link(), "/etc/systemd/system/sysinit.target.wants/systemd-sysext.service");
        assert!(!plan.enable[0].by_os);
        assert!(plan.links().any(|l| l
            == (
                "/etc/systemd/system/sysinit.target.wants/sysext-units.service",
                "/etc/systemd/system/sysext-units.service"
            )));
        let Entry::File { contents, mode: 0o644, .. } = &plan.entries[5] else { panic!("the unit file") };
        let contents = String::from_utf8_lossy(contents);
        assert!(contents.contains("\nBindsTo=systemd-sysext.service\nAfter=systemd-sysext.service\n"));
        assert!(contents.contains("\n[Install]\nWantedBy=sysinit.target\n"), "enabled where the link says");
    }

    #[test]
    fn containerd_masks_flatcars_builtin_runtimes() {
        let images = [planned("containerd-2.0.4-x86-64.raw")];
        let plan =
            NodePlan::build(&PlanRequest { os: NodeOs::Flatcar, images: &images, sysupdate: None, keyring: None });
        let links: Vec<_> = plan
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Link { path, target, replace } => Some((path.as_str(), target.as_str(), *replace)),
                _ => None,
            })
            .collect();
        assert_eq!(
            links,
            [
                ("/etc/extensions/containerd.raw", "/opt/extensions/containerd/containerd-2.0.4-x86-64.raw", false),
                ("/etc/extensions/containerd-flatcar.raw", "/dev/null", true),
                ("/etc/extensions/docker-flatcar.raw", "/dev/null", true),
            ]
        );
        // Without containerd, Flatcar keeps its own runtime.
        let images = [planned("kubernetes-v1.31.3-x86-64.raw")];
        let plan =
            NodePlan::build(&PlanRequest { os: NodeOs::Flatcar, images: &images, sysupdate: None, keyring: None });
        assert!(plan.links().all(|(_, t)| t != "/dev/null"));
    }
}
