//! Which distribution a disk image is, where its writable root filesystem is, and who it
//! says it is (os-release and architecture).
//!
//! Partitions are found by name, never by number (Ubuntu renumbered /boot twice):
//! Flatcar's root by PARTLABEL `ROOT` (spec-digest §4.5), Ubuntu's by filesystem label
//! `cloudimg-rootfs` (§4.6). Flatcar's `USR-A`/`USR-B` are dm-verity protected and A/B
//! updated, so they are only ever read.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sysext_model::Arch;
use sysext_model::ExtensionRelease;

use crate::disk::e2fs::{E2fsError, Ext, Kind};
use crate::disk::fsprobe::{self, FsKind, Probe};
use crate::disk::gpt::{types, Gpt, Partition};

/// A supported target distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Distro {
    /// Flatcar Container Linux.
    Flatcar,
    /// Ubuntu cloud image.
    Ubuntu,
}

/// `--target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TargetChoice {
    /// Flatcar if a partition is labelled ROOT, Ubuntu if a filesystem is labelled cloudimg-rootfs.
    #[default]
    Auto,
    /// Flatcar layout.
    Flatcar,
    /// Ubuntu cloud image layout.
    Ubuntu,
}

/// Flatcar's root PARTLABEL.
pub const FLATCAR_ROOT_LABEL: &str = "ROOT";
/// Flatcar's active /usr PARTLABEL on a fresh image.
pub const FLATCAR_USR_LABEL: &str = "USR-A";
/// Ubuntu's root filesystem label.
pub const UBUNTU_ROOT_FS_LABEL: &str = "cloudimg-rootfs";

/// A partition and what is in it.
#[derive(Clone, Debug, Serialize)]
pub struct ProbedPartition {
    /// The GPT entry.
    #[serde(flatten)]
    pub partition: Partition,
    /// The filesystem found in it.
    pub filesystem: Probe,
}

impl ProbedPartition {
    /// `partition 9 'ROOT'`, for messages.
    pub fn describe(&self) -> String {
        format!("partition {} '{}'", self.partition.number, self.partition.label)
    }
}

/// Reads the table and probes every partition.
pub fn probe_partitions(image: &Path, gpt: &Gpt) -> std::io::Result<Vec<ProbedPartition>> {
    let mut f = File::open(image)?;
    gpt.partitions
        .iter()
        .map(|p| Ok(ProbedPartition { partition: p.clone(), filesystem: fsprobe::probe(&mut f, p.offset, p.size)? }))
        .collect()
}

/// Where a host fact came from.
#[derive(Clone, Debug, Serialize)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Where it was read, e.g. `partition 1 'cloudimg-rootfs':/usr/lib/os-release`.
    pub from: String,
}

/// A recognised target image.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// Distribution.
    pub distro: Distro,
    /// The partition composer writes into.
    pub root: ProbedPartition,
    /// The target's os-release.
    pub os_release: Sourced<ExtensionRelease>,
    /// The target's architecture.
    pub arch: Sourced<Arch>,
    /// The target's systemd major version, when it could be determined.
    pub systemd: Option<Sourced<u32>>,
}

impl Target {
    /// The ext filesystem to edit.
    pub fn root_fs(&self, image: &Path) -> Ext {
        Ext::new(image, self.root.partition.offset)
    }
}

/// Why an image is not a target composer can write into.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Neither layout.
    #[error("{}: neither a Flatcar image (no partition with PARTLABEL ROOT) nor an Ubuntu cloud image (no filesystem labelled cloudimg-rootfs); partitions: {found}", image.display())]
    Unrecognised {
        /// Image.
        image: PathBuf,
        /// What is there.
        found: String,
    },
    /// The requested layout's root is missing.
    #[error("{}: {what} not found; expected {expected}; partitions: {found}", image.display())]
    Missing {
        /// Image.
        image: PathBuf,
        /// What was looked for.
        what: &'static str,
        /// What a correct image has.
        expected: &'static str,
        /// What is there.
        found: String,
    },
    /// The root holds the wrong filesystem.
    #[error("{}: {partition} holds {found}; expected ext4", image.display())]
    NotExt4 {
        /// Image.
        image: PathBuf,
        /// Which partition.
        partition: String,
        /// What it holds.
        found: &'static str,
    },
    /// The filesystem claims more space than its partition.
    #[error("{}: the filesystem in {partition} is {fs_size} bytes but the partition is only {part_size} bytes; refusing to write past the partition", image.display())]
    Oversized {
        /// Image.
        image: PathBuf,
        /// Which partition.
        partition: String,
        /// Filesystem size.
        fs_size: u64,
        /// Partition size.
        part_size: u64,
    },
    /// Two candidates for the root: composer will not guess which one boots.
    #[error("{}: {what}: {candidates}; refusing to guess which one the system boots from{hint}", image.display())]
    Ambiguous {
        /// Image.
        image: PathBuf,
        /// What was found twice.
        what: &'static str,
        /// The partitions found.
        candidates: String,
        /// What the user can do, if anything.
        hint: &'static str,
    },
    /// The ext superblock's counts cannot be true.
    #[error("{}: the ext4 superblock in {partition} is inconsistent: {problem}", image.display())]
    BadSuperblock {
        /// Image.
        image: PathBuf,
        /// Which partition.
        partition: String,
        /// What is wrong.
        problem: String,
    },
    /// Features composer cannot edit correctly.
    #[error("{}: the ext4 filesystem in {partition} uses {features}, which composer cannot write into correctly: {reasons}", image.display())]
    UnsupportedFeatures {
        /// Image.
        image: PathBuf,
        /// Which partition.
        partition: String,
        /// The feature names.
        features: String,
        /// Why, per feature.
        reasons: String,
    },
    /// Errors recorded, or not cleanly unmounted.
    #[error("{}: the ext4 filesystem in {partition} {why}; repair a copy first (e2fsck -f 'COPY?offset={offset}') and compose from the copy", image.display())]
    Unclean {
        /// Image.
        image: PathBuf,
        /// Which partition.
        partition: String,
        /// What the superblock says.
        why: String,
        /// Byte offset of the partition, for the e2fsck device name.
        offset: u64,
    },
    /// Unreplayed journal.
    #[error("{}: the ext4 filesystem in {partition} needs journal recovery (it was not cleanly unmounted); replay it first with e2fsck -fy on a copy", image.display())]
    NeedsRecovery {
        /// Image.
        image: PathBuf,
        /// Which partition.
        partition: String,
    },
    /// Flatcar's /usr cannot be read without mounting.
    #[error("{}: cannot read os-release: {partition} holds {fs}, which composer reads only as ext2/3/4 (Flatcar images since 3794 use btrfs); pass --os-release FILE with the image's /usr/lib/os-release", image.display())]
    UsrUnreadable {
        /// Image.
        image: PathBuf,
        /// Which partition.
        partition: String,
        /// Its filesystem.
        fs: &'static str,
    },
    /// No os-release where expected.
    #[error("{}: no os-release in {partition} (looked for {looked}); pass --os-release FILE", image.display())]
    NoOsRelease {
        /// Image.
        image: PathBuf,
        /// Where.
        partition: String,
        /// Paths tried.
        looked: String,
    },
    /// The os-release does not parse.
    #[error("{from}: not os-release syntax: {cause}")]
    BadOsRelease {
        /// Where it was read.
        from: String,
        /// Parser message.
        cause: String,
    },
    /// Reading `--os-release` failed.
    #[error("{}: {cause}", path.display())]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        cause: std::io::Error,
    },
    /// The architecture could not be determined.
    #[error("{}: cannot tell the image's architecture (no readable ELF executable such as /usr/lib/systemd/systemd and no architecture-specific partition type); pass --arch x86-64 or --arch arm64", image.display())]
    UnknownArch {
        /// Image.
        image: PathBuf,
    },
    /// debugfs failed.
    #[error(transparent)]
    E2fs(#[from] E2fsError),
}

/// What the caller knows better than the image.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--os-release FILE`.
    pub os_release: Option<PathBuf>,
    /// `--arch`.
    pub arch: Option<Arch>,
    /// `--systemd-version`.
    pub systemd: Option<u32>,
}

fn summary(parts: &[ProbedPartition]) -> String {
    if parts.is_empty() {
        return "none".into();
    }
    parts
        .iter()
        .map(|p| {
            let label = p.filesystem.label.as_deref().map(|l| format!(" label {l}")).unwrap_or_default();
            format!("{} '{}' ({}{label})", p.partition.number, p.partition.label, p.filesystem.kind.as_str())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Recognises the target in an image whose partitions were probed.
pub fn detect(
    image: &Path,
    gpt: &Gpt,
    parts: &[ProbedPartition],
    choice: TargetChoice,
    overrides: &Overrides,
) -> Result<Target, TargetError> {
    let (distro, root) = find_root(image, parts, choice)?;
    if root.filesystem.kind != FsKind::Ext4 {
        return Err(TargetError::NotExt4 {
            image: image.to_owned(),
            partition: root.describe(),
            found: root.filesystem.kind.as_str(),
        });
    }
    let Some(ext) = root.filesystem.ext else {
        return Err(TargetError::BadSuperblock {
            image: image.to_owned(),
            partition: root.describe(),
            problem: root.filesystem.problem.clone().unwrap_or_else(|| "unreadable".into()),
        });
    };
    let unsupported = ext.features.unsupported();
    if !unsupported.is_empty() {
        return Err(TargetError::UnsupportedFeatures {
            image: image.to_owned(),
            partition: root.describe(),
            features: unsupported.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
            reasons: unsupported.iter().map(|(n, why)| format!("{n}: {why}")).collect::<Vec<_>>().join("; "),
        });
    }
    if ext.size_bytes() > root.partition.size {
        return Err(TargetError::Oversized {
            image: image.to_owned(),
            partition: root.describe(),
            fs_size: ext.size_bytes(),
            part_size: root.partition.size,
        });
    }
    if ext.needs_recovery {
        return Err(TargetError::NeedsRecovery { image: image.to_owned(), partition: root.describe() });
    }
    if let Some(why) = ext.unclean() {
        return Err(TargetError::Unclean {
            image: image.to_owned(),
            partition: root.describe(),
            why,
            offset: root.partition.offset,
        });
    }

    // Where the target's /usr is: inside the root on Ubuntu, USR-A on Flatcar (whose
    // filesystem is the *contents* of /usr, so paths lose their /usr prefix).
    let usr: Option<(&ProbedPartition, &str)> = match distro {
        Distro::Ubuntu => Some((root, "/usr")),
        Distro::Flatcar => parts.iter().find(|p| p.partition.label == FLATCAR_USR_LABEL).map(|p| (p, "")),
    };
    let os_release = match &overrides.os_release {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|cause| TargetError::Io { path: path.clone(), cause })?;
            let from = path.display().to_string();
            let value = ExtensionRelease::parse(&text)
                .map_err(|e| TargetError::BadOsRelease { from: from.clone(), cause: e.to_string() })?;
            Sourced { value, from }
        }
        None => read_os_release(image, distro, root, usr)?,
    };
    let arch = match overrides.arch {
        Some(a) => Sourced { value: a, from: "--arch".into() },
        None => detect_arch(image, gpt, usr)?,
    };
    let systemd = match overrides.systemd {
        Some(v) => Some(Sourced { value: v, from: "--systemd-version".into() }),
        None => detect_systemd(image, usr)?,
    };
    Ok(Target { distro, root: root.clone(), os_release, arch, systemd })
}

/// The partition composer would write into, by layout: the `ROOT` PARTLABEL (Flatcar) or
/// the `cloudimg-rootfs` filesystem label (Ubuntu).
pub fn find_root<'a>(
    image: &Path,
    parts: &'a [ProbedPartition],
    choice: TargetChoice,
) -> Result<(Distro, &'a ProbedPartition), TargetError> {
    let only = |what: &'static str, found: Vec<&'a ProbedPartition>| match found[..] {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(TargetError::Ambiguous {
            image: image.to_owned(),
            what,
            candidates: found.iter().map(|p| p.describe()).collect::<Vec<_>>().join(" and "),
            hint: "",
        }),
    };
    let flatcar_root = only(
        "several partitions are labelled ROOT",
        parts.iter().filter(|p| p.partition.label == FLATCAR_ROOT_LABEL).collect(),
    );
    let ubuntu_root = only(
        "several filesystems are labelled cloudimg-rootfs",
        parts.iter().filter(|p| p.filesystem.label.as_deref() == Some(UBUNTU_ROOT_FS_LABEL)).collect(),
    );
    let missing =
        |what, expected| TargetError::Missing { image: image.to_owned(), what, expected, found: summary(parts) };
    let (distro, root) = match choice {
        TargetChoice::Flatcar => (
            Distro::Flatcar,
            flatcar_root?
                .ok_or_else(|| missing("partition with PARTLABEL ROOT", "Flatcar's ROOT (ext4, partition 9)"))?,
        ),
        TargetChoice::Ubuntu => (
            Distro::Ubuntu,
            ubuntu_root?.ok_or_else(|| {
                missing("filesystem labelled cloudimg-rootfs", "Ubuntu's root filesystem (ext4, usually partition 1)")
            })?,
        ),
        TargetChoice::Auto => match (flatcar_root?, ubuntu_root?) {
            (Some(f), Some(u)) => return Err(TargetError::Ambiguous {
                image: image.to_owned(),
                what:
                    "both a Flatcar root (PARTLABEL ROOT) and an Ubuntu root (filesystem cloudimg-rootfs) are present",
                candidates: format!("{} and {}", f.describe(), u.describe()),
                hint: "; pass --target flatcar or --target ubuntu",
            }),
            (Some(r), None) => (Distro::Flatcar, r),
            (None, Some(r)) => (Distro::Ubuntu, r),
            (None, None) => return Err(TargetError::Unrecognised { image: image.to_owned(), found: summary(parts) }),
        },
    };
    Ok((distro, root))
}

fn read_os_release(
    image: &Path,
    distro: Distro,
    root: &ProbedPartition,
    usr: Option<(&ProbedPartition, &str)>,
) -> Result<Sourced<ExtensionRelease>, TargetError> {
    // systemd reads /etc/os-release first and falls back to /usr/lib/os-release; on Flatcar
    // /etc/os-release on ROOT is only a link into /usr.
    let (part, candidates): (&ProbedPartition, Vec<String>) = match (distro, usr) {
        (Distro::Ubuntu, _) => (root, vec!["/etc/os-release".into(), "/usr/lib/os-release".into()]),
        (Distro::Flatcar, Some((usr, prefix))) => (usr, vec![format!("{prefix}/lib/os-release")]),
        (Distro::Flatcar, None) => {
            return Err(TargetError::NoOsRelease {
                image: image.to_owned(),
                partition: "the image (no USR-A partition)".into(),
                looked: "USR-A:/lib/os-release".into(),
            })
        }
    };
    if !part.filesystem.kind.is_ext() {
        return Err(TargetError::UsrUnreadable {
            image: image.to_owned(),
            partition: part.describe(),
            fs: part.filesystem.kind.as_str(),
        });
    }
    let fs = Ext::new(image, part.partition.offset);
    for c in &candidates {
        let Some(real) = resolve_within(&fs, c, distro == Distro::Flatcar)? else { continue };
        if let Some(bytes) = fs.cat(&real)? {
            let from = format!("{}:{real}", part.describe());
            let value = ExtensionRelease::parse(&String::from_utf8_lossy(&bytes))
                .map_err(|e| TargetError::BadOsRelease { from: from.clone(), cause: e.to_string() })?;
            return Ok(Sourced { value, from });
        }
    }
    Err(TargetError::NoOsRelease { image: image.to_owned(), partition: part.describe(), looked: candidates.join(", ") })
}

/// Resolves symlinks as the booted system sees them: a `/usr` partition is mounted at `/usr`.
fn resolve_within(fs: &Ext, path: &str, usr_partition: bool) -> Result<Option<String>, E2fsError> {
    fs.resolve_mounted_at(path, if usr_partition { "/usr" } else { "/" })
}

fn detect_arch(image: &Path, gpt: &Gpt, usr: Option<(&ProbedPartition, &str)>) -> Result<Sourced<Arch>, TargetError> {
    for p in &gpt.partitions {
        let arch = match p.type_guid {
            t if t == types::ROOT_X86_64 || t == types::USR_X86_64 => Some(Arch::X86_64),
            t if t == types::ROOT_ARM64 || t == types::USR_ARM64 => Some(Arch::Arm64),
            _ => None,
        };
        if let Some(value) = arch {
            return Ok(Sourced { value, from: format!("type of partition {} '{}'", p.number, p.label) });
        }
    }
    if let Some((part, prefix)) = usr.filter(|(p, _)| p.filesystem.kind.is_ext()) {
        let fs = Ext::new(image, part.partition.offset);
        for bin in ["/lib/systemd/systemd", "/bin/bash", "/bin/sh", "/bin/true"] {
            let path = format!("{prefix}{bin}");
            let Some(real) = resolve_within(&fs, &path, prefix.is_empty())? else { continue };
            if !matches!(fs.stat(&real)?.map(|s| s.kind), Some(Kind::File(_))) {
                continue;
            }
            let Some(bytes) = fs.cat(&real)? else { continue };
            if let Some(value) = sysext_model::elf::arch(&bytes) {
                return Ok(Sourced { value, from: format!("ELF machine of {}:{real}", part.describe()) });
            }
        }
    }
    Err(TargetError::UnknownArch { image: image.to_owned() })
}

/// Where systemd keeps `libsystemd-shared-<version>.so`, relative to `/usr`: upstream's
/// default (Ubuntu 22.04: 249), Gentoo's lib64 (Flatcar), and Debian's multiarch directory
/// (Debian 12: 252, Ubuntu 24.04: 255).
pub const SYSTEMD_LIB_DIRS: [&str; 4] =
    ["/lib/systemd", "/lib64/systemd", "/lib/x86_64-linux-gnu/systemd", "/lib/aarch64-linux-gnu/systemd"];

/// The image's systemd version, from the name of its private library. Several versions
/// (a leftover from an upgrade) count as the oldest, so a rule that needs a newer systemd is
/// never assumed to hold.
fn detect_systemd(image: &Path, usr: Option<(&ProbedPartition, &str)>) -> Result<Option<Sourced<u32>>, TargetError> {
    let Some((part, prefix)) = usr.filter(|(p, _)| p.filesystem.kind.is_ext()) else { return Ok(None) };
    let fs = Ext::new(image, part.partition.offset);
    let mut found: Vec<(u32, String)> = Vec::new();
    for dir in SYSTEMD_LIB_DIRS {
        let dir = format!("{prefix}{dir}");
        for e in fs.list(&dir)?.unwrap_or_default() {
            if let Some(v) = sysext_model::compat::systemd_version_of_library(&e.name) {
                found.push((v, format!("{dir}/{}", e.name)));
            }
        }
    }
    found.sort();
    let Some((value, _)) = found.first().cloned() else { return Ok(None) };
    let files: Vec<&str> = found.iter().map(|(_, f)| f.as_str()).collect();
    Ok(Some(Sourced { value, from: format!("{}:{}", part.describe(), files.join(", ")) }))
}
