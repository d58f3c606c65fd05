//! Small synthetic disk images with the real partition layouts of Flatcar (spec-digest §4.5)
//! and Ubuntu cloud images (§4.6), built without root by the real tools: `sfdisk` for the
//! table, `mkfs.ext4 -d` (populated from a directory, written at an offset inside the disk
//! file) and `mkfs.vfat --offset`. Images are sparse, so a 200 MiB disk costs a few MiB.

use std::path::{Path, PathBuf};
use std::process::Command;

use sysext_model::Arch;

use crate::tiny_executable;

/// Tools the builders run.
pub const DISK_TOOLS: [&str; 3] = ["sfdisk", "mkfs.ext4", "mkfs.vfat"];

const MIB: u64 = 1024 * 1024;

/// The filesystem label of an Ubuntu cloud image's root (what `root=LABEL=` names).
pub const UBUNTU_ROOT_LABEL: &str = "cloudimg-rootfs";

/// How Flatcar's USR-A is formatted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsrFs {
    /// ext2 with `/lib/os-release` (Flatcar before 3794).
    Ext2,
    /// Only a btrfs superblock signature: unreadable without mounting, as on current Flatcar.
    Btrfs,
}

/// What to put in a synthetic disk.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// Size of the root partition in MiB.
    pub root_mib: u64,
    /// The image's os-release.
    pub os_release: String,
    /// Architecture of the ELF executables placed in /usr (how composer detects it).
    pub arch: Arch,
    /// Flatcar only: USR-A's filesystem.
    pub usr_fs: UsrFs,
    /// The systemd version whose `libsystemd-shared-<version>.so` /usr holds (where that
    /// distribution installs it), or none.
    pub systemd: Option<u32>,
}

impl DiskSpec {
    /// A spec with a 96 MiB root.
    pub fn new(os_release: &str, arch: Arch) -> Self {
        Self { root_mib: 96, os_release: os_release.to_owned(), arch, usr_fs: UsrFs::Ext2, systemd: Some(255) }
    }
}

/// A built disk and where its root filesystem is.
#[derive(Debug, Clone)]
pub struct SyntheticDisk {
    /// The disk image.
    pub path: PathBuf,
    /// Byte offset of the root partition (ROOT or cloudimg-rootfs).
    pub root_offset: u64,
    /// Size of the root partition in bytes.
    pub root_size: u64,
    /// Its partition number.
    pub root_number: u32,
}

/// A system tool by name, also found in the sbin directories an unprivileged `PATH` lacks.
pub(crate) fn tool(name: &str) -> Command {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    Command::new(found.unwrap_or_else(|| name.into()))
}

pub(crate) fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn sfdisk(disk: &Path, script: &str) {
    let mut child = tool("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running sfdisk");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("writing the sfdisk script");
    let out = child.wait_with_output().expect("waiting for sfdisk");
    assert!(out.status.success(), "sfdisk failed: {}\n{script}", String::from_utf8_lossy(&out.stderr));
}

/// `mkfs.ext4` of `size` bytes at `offset` inside `disk`, populated from `tree`.
fn mkfs_ext(disk: &Path, offset: u64, size: u64, fs_type: &str, label: &str, tree: Option<&Path>, extra: &[&str]) {
    let mut cmd = tool(&format!("mkfs.{fs_type}"));
    cmd.args(["-q", "-F", "-L", label, "-E"]).arg(format!("offset={offset}")).args(extra);
    if let Some(t) = tree {
        cmd.arg("-d").arg(t);
    }
    cmd.arg(disk).arg(format!("{}k", size / 1024));
    run(&mut cmd);
}

pub(crate) fn mkfs_vfat(disk: &Path, offset: u64, size: u64, label: &str) {
    run(tool("mkfs.vfat")
        // FAT16 whatever the size of the file around it (mkfs.vfat would pick FAT32 for a
        // small volume at an offset in a large disk, and then refuse it as too small).
        .args(["-F", "16", "-n", label, "--offset"])
        .arg((offset / 512).to_string())
        .arg(disk)
        .arg((size / 1024).to_string()));
}

fn write(path: &Path, contents: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().expect("has a parent")).expect("creating directories");
    std::fs::write(path, contents).expect("writing a tree file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn symlink(target: &str, link: &Path) {
    std::fs::create_dir_all(link.parent().expect("has a parent")).expect("creating directories");
    std::os::unix::fs::symlink(target, link).expect("creating a symlink");
}

struct Part<'a> {
    number: u32,
    start_mib: u64,
    size_mib: u64,
    type_guid: &'a str,
    name: &'a str,
    uuid: Option<&'a str>,
}

fn table(disk: &Path, total_mib: u64, parts: &[Part<'_>]) {
    std::fs::File::create(disk).and_then(|f| f.set_len(total_mib * MIB)).expect("creating the disk file");
    let name = disk.file_name().expect("file name").to_string_lossy().into_owned();
    let mut script = String::from("label: gpt\n");
    for p in parts {
        let uuid = p.uuid.map(|u| format!(", uuid={u}")).unwrap_or_default();
        script.push_str(&format!(
            "{name}{} : start={}, size={}, type={}, name=\"{}\"{uuid}\n",
            p.number,
            p.start_mib * MIB / 512,
            p.size_mib * MIB / 512,
            p.type_guid,
            p.name
        ));
    }
    sfdisk(disk, &script);
}

/// A Flatcar-layout disk: the nine partitions of `disk_layout.json` with their numbers,
/// labels and type GUIDs, scaled down; USR-A holds `/lib/os-release` and an ELF
/// `/lib/systemd/systemd` (or only a btrfs signature); ROOT is an ext4 with `/etc/os-release`
/// linking into /usr (dangling on ROOT, as on Flatcar) and no /opt yet.
pub fn flatcar(dir: &Path, spec: &DiskSpec) -> SyntheticDisk {
    const BLANK: &str = "00000000-0000-0000-0000-000000000000";
    let disk = dir.join("flatcar.img");
    let root_start = 1 + 16 + 2 + 24 + 24 + 1 + 16 + 1 + 1;
    let parts = [
        Part {
            number: 1,
            start_mib: 1,
            size_mib: 16,
            type_guid: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            name: "EFI-SYSTEM",
            uuid: None,
        },
        Part {
            number: 2,
            start_mib: 17,
            size_mib: 2,
            type_guid: "21686148-6449-6E6F-744E-656564454649",
            name: "BIOS-BOOT",
            uuid: None,
        },
        Part {
            number: 3,
            start_mib: 19,
            size_mib: 24,
            type_guid: "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6",
            name: "USR-A",
            uuid: Some("7130C94A-213A-4E5A-8E26-6CCE9662F132"),
        },
        Part {
            number: 4,
            start_mib: 43,
            size_mib: 24,
            type_guid: "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6",
            name: "USR-B",
            uuid: Some("E03DD35C-7C2D-4A47-B3FE-27F15780A57C"),
        },
        Part {
            number: 5,
            start_mib: 67,
            size_mib: 1,
            type_guid: BLANK,
            name: "ROOT-C",
            uuid: Some("D82521B4-07AC-4F1C-8840-DDEFEDC332F3"),
        },
        Part {
            number: 6,
            start_mib: 68,
            size_mib: 16,
            type_guid: "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            name: "OEM",
            uuid: None,
        },
        Part {
            number: 7,
            start_mib: 84,
            size_mib: 1,
            type_guid: "C95DC21A-DF0E-4340-8D7B-26CBFA9A03E0",
            name: "OEM-CONFIG",
            uuid: None,
        },
        Part { number: 8, start_mib: 85, size_mib: 1, type_guid: BLANK, name: "flatcar-reserved", uuid: None },
        Part {
            number: 9,
            start_mib: root_start,
            size_mib: spec.root_mib,
            type_guid: "3884DD41-8582-4404-B9A8-E9B84F2DF50E",
            name: "ROOT",
            uuid: None,
        },
    ];
    table(&disk, root_start + spec.root_mib + 1, &parts);
    mkfs_vfat(&disk, MIB, 16 * MIB, "EFI-SYSTEM");

    let usr = tempfile::tempdir().expect("temp dir");
    let u = usr.path();
    write(&u.join("lib/os-release"), spec.os_release.as_bytes(), 0o644);
    write(&u.join("lib/systemd/systemd"), &tiny_executable(spec.arch, "systemd\n"), 0o755);
    write(
        &u.join("lib/systemd/system/systemd-sysext.service"),
        b"[Unit]\nDescription=Merge System Extension Images\n",
        0o644,
    );
    symlink("../lib/systemd/systemd", &u.join("bin/systemd"));
    if let Some(v) = spec.systemd {
        // Gentoo's (so Flatcar's) private library directory.
        write(&u.join(format!("lib64/systemd/libsystemd-shared-{v}.so")), b"\x7fELF", 0o644);
    }
    match spec.usr_fs {
        UsrFs::Ext2 => mkfs_ext(&disk, 19 * MIB, 24 * MIB, "ext2", "USR-A", Some(u), &[]),
        UsrFs::Btrfs => {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&disk).expect("opening the disk");
            f.seek(SeekFrom::Start(19 * MIB + 0x10040)).expect("seek");
            f.write_all(b"_BHRfS_M").expect("writing a btrfs signature");
        }
    }

    let root = tempfile::tempdir().expect("temp dir");
    let r = root.path();
    symlink("../usr/lib/os-release", &r.join("etc/os-release"));
    std::fs::create_dir_all(r.join("var/lib")).expect("mkdir");
    std::fs::create_dir_all(r.join("home")).expect("mkdir");
    mkfs_ext(&disk, root_start * MIB, spec.root_mib * MIB, "ext4", "ROOT", Some(r), &[]);
    SyntheticDisk { path: disk, root_offset: root_start * MIB, root_size: spec.root_mib * MIB, root_number: 9 }
}

/// An Ubuntu-cloud-image-layout disk as on 24.04 (on-disk order 14, 15, 16, 1): BIOS boot,
/// ESP (vfat `UEFI`), XBOOTLDR (ext4 `BOOT`) and the ext4 root `cloudimg-rootfs` (made as
/// livecd-rootfs does: 4 KiB blocks, `-i 8192`, `-m 0`) with a merged-usr tree, os-release
/// and a disabled systemd-sysext.service.
pub fn ubuntu(dir: &Path, spec: &DiskSpec) -> SyntheticDisk {
    let root = tempfile::tempdir().expect("temp dir");
    let r = root.path();
    write(&r.join("usr/lib/os-release"), spec.os_release.as_bytes(), 0o644);
    symlink("../usr/lib/os-release", &r.join("etc/os-release"));
    write(&r.join("usr/lib/systemd/systemd"), &tiny_executable(spec.arch, "systemd\n"), 0o755);
    write(
        &r.join("usr/lib/systemd/system/systemd-sysext.service"),
        b"[Unit]\nDescription=Merge System Extension Images\n[Install]\nWantedBy=sysinit.target\n",
        0o644,
    );
    if let Some(v) = spec.systemd {
        // Ubuntu 22.04's 249 keeps it in /usr/lib/systemd, 24.04's 255 (and Debian 12's 252)
        // in the multiarch directory.
        let dir = match (v, spec.arch) {
            (..252, _) => "usr/lib/systemd".to_owned(),
            (_, Arch::X86_64) => "usr/lib/x86_64-linux-gnu/systemd".to_owned(),
            (_, Arch::Arm64) => "usr/lib/aarch64-linux-gnu/systemd".to_owned(),
        };
        write(&r.join(format!("{dir}/libsystemd-shared-{v}.so")), b"\x7fELF", 0o644);
    }
    for l in ["bin", "lib", "sbin"] {
        symlink(&format!("usr/{l}"), &r.join(l));
    }
    for d in ["usr/bin", "usr/sbin", "etc/systemd/system", "opt", "var/lib", "home"] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    ubuntu_layout(&dir.join("ubuntu.img"), r, spec.root_mib)
}

/// The partition layout of an Ubuntu 24.04 cloud image (see [`ubuntu`]) written to `disk`,
/// with a root filesystem of `root_mib` MiB populated from `tree` (`mkfs.ext4 -d` keeps
/// owners, modes, links, device nodes and extended attributes).
pub fn ubuntu_layout(disk: &Path, tree: &Path, root_mib: u64) -> SyntheticDisk {
    let root_start = 1 + 4 + 16 + 16;
    let parts = [
        Part {
            number: 14,
            start_mib: 1,
            size_mib: 4,
            type_guid: "21686148-6449-6E6F-744E-656564454649",
            name: "",
            uuid: None,
        },
        Part {
            number: 15,
            start_mib: 5,
            size_mib: 16,
            type_guid: "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            name: "",
            uuid: None,
        },
        Part {
            number: 16,
            start_mib: 21,
            size_mib: 16,
            type_guid: "BC13C2FF-59E6-4262-A352-B275FD6F7172",
            name: "",
            uuid: None,
        },
        Part {
            number: 1,
            start_mib: root_start,
            size_mib: root_mib,
            type_guid: "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            name: "",
            uuid: None,
        },
    ];
    table(disk, root_start + root_mib + 1, &parts);
    mkfs_vfat(disk, 5 * MIB, 16 * MIB, "UEFI");
    mkfs_ext(disk, 21 * MIB, 16 * MIB, "ext4", "BOOT", None, &[]);
    mkfs_ext(
        disk,
        root_start * MIB,
        root_mib * MIB,
        "ext4",
        UBUNTU_ROOT_LABEL,
        Some(tree),
        &["-b", "4096", "-i", "8192", "-m", "0"],
    );
    SyntheticDisk { path: disk.to_owned(), root_offset: root_start * MIB, root_size: root_mib * MIB, root_number: 1 }
}

/// A disk with only an MBR (DOS) partition table holding one ext4 partition.
pub fn mbr_only(dir: &Path) -> PathBuf {
    let disk = dir.join("mbr.img");
    std::fs::File::create(&disk).and_then(|f| f.set_len(40 * MIB)).expect("creating the disk file");
    sfdisk(&disk, "label: dos\nstart=2048, size=61440, type=83\n");
    mkfs_ext(&disk, MIB, 30 * MIB, "ext4", "cloudimg-rootfs", None, &[]);
    disk
}
