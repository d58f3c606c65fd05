//! Hostile disks and extension files: images and tables built wrong on purpose (in each
//! test, from the synthetic Flatcar and Ubuntu disks), which composer must refuse with the
//! reason, before writing, leaving no OUT and the input unchanged; never compose, panic, or
//! pass a check on something it did not understand.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use sysext_tests::disk::{self, DiskSpec};
use sysext_tests::sandbox::UBUNTU_OS_RELEASE;

/// A fresh subdirectory of the test's scratch directory, for one more disk.
fn sub(work: &tempfile::TempDir, name: &str) -> PathBuf {
    let d = work.path().join(name);
    std::fs::create_dir(&d).unwrap();
    d
}

/// Runs a debugfs write request (`ssv …`, `feature …`) on the filesystem at `offset`.
fn debugfs_w(image: &Path, offset: u64, request: &str) {
    let out = Command::new(composer::disk::e2fs::find_tool("debugfs"))
        .args(["-w", "-R", request])
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.lines().count() <= 1, "debugfs -w -R '{request}': {err}");
}

/// Rewrites both copies of the GPT's entry array with `edit` and recomputes every CRC, so
/// the table is intact and only what it says is hostile.
fn rewrite_gpt(image: &Path, edit: impl Fn(&mut [u8])) {
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(image).unwrap();
    let last = f.metadata().unwrap().len() / 512 - 1;
    for lba in [1, last] {
        let mut header = vec![0u8; 512];
        f.seek(SeekFrom::Start(lba * 512)).unwrap();
        f.read_exact(&mut header).unwrap();
        assert_eq!(&header[..8], b"EFI PART");
        let entries_at = u64::from_le_bytes(header[72..80].try_into().unwrap()) * 512;
        let mut entries = vec![0u8; 128 * 128];
        f.seek(SeekFrom::Start(entries_at)).unwrap();
        f.read_exact(&mut entries).unwrap();
        edit(&mut entries);
        f.seek(SeekFrom::Start(entries_at)).unwrap();
        f.write_all(&entries).unwrap();
        header[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
        header[16..20].fill(0);
        let crc = crc32fast::hash(&header[..92]);
        header[16..20].copy_from_slice(&crc.to_le_bytes());
        f.seek(SeekFrom::Start(lba * 512)).unwrap();
        f.write_all(&header).unwrap();
    }
}

/// Sets the first and last LBA of partition `number`.
fn set_range(entries: &mut [u8], number: usize, first: u64, last: u64) {
    let e = &mut entries[(number - 1) * 128..number * 128];
    e[32..40].copy_from_slice(&first.to_le_bytes());
    e[40..48].copy_from_slice(&last.to_le_bytes());
}

/// Overwrites a 32-bit field of the ext superblock at `offset` directly (no checksum
/// update: composer must refuse from the superblock alone, before e2fsprogs looks).
fn poke_superblock(image: &Path, offset: u64, field: u64, value: u32) {
    let mut f = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    f.seek(SeekFrom::Start(offset + 1024 + field)).unwrap();
    f.write_all(&value.to_le_bytes()).unwrap();
}

/// `composer check --image IN -e …` plus `extra`.
fn check(image: &Path, exts: &[&Path], extra: &[&str]) -> std::process::Output {
    let mut cmd = composer();
    cmd.arg("check").arg("--image").arg(image);
    for e in exts {
        cmd.arg("-e").arg(e);
    }
    cmd.args(extra).output().unwrap()
}

/// compose and check both refuse, naming every needle.
fn assert_both_refuse(image: &Path, out: &Path, exts: &[&Path], needles: &[&str]) {
    let before = sha256(image);
    let o = compose(image, out, exts, &[]);
    assert_refused(&o, out, image, &before, needles);
    let o = check(image, exts, &[]);
    assert!(!o.status.success(), "check passed:\n{}", stdout(&o));
    for n in needles {
        assert!(stderr(&o).contains(n), "check's error does not mention '{n}':\n{}", stderr(&o));
    }
}

// ---- item 1: a file named for another version ----

fn refuses_an_extension_file_named_for_another_version() {
    let Case { exts, work } = case();
    let disk = flatcar_disk(work.path());
    let renamed = work.path().join(format!("cni-v1.6.3-{}.raw", exts.arch));
    std::fs::copy(&exts.cni, &renamed).unwrap();
    let out = work.path().join("out.img");
    assert_both_refuse(
        &disk.path,
        &out,
        &[&renamed],
        &[&format!(
            "cni-v1.6.3-{}.raw: the file name says SYSEXT_VERSION_ID=v1.6.3 but extension-release.cni has SYSEXT_VERSION_ID={CNI}",
            exts.arch
        )],
    );
}

// ---- item 2: a replayed older release ----

fn min_serial_refuses_a_replayed_older_release() {
    let Case { exts, work } = case();
    let (release, pubkey, publisher) = signed_release(work.path(), &[&exts.cni]);
    // Re-signing publishes serial 2; generation 1 stays on disk, as an attacker's mirror
    // would keep serving it.
    publisher.publish(&[]);
    let old = work.path().join("release.generations/0000000001");
    assert!(old.join("index.json").is_file(), "generation 1 is kept");

    let disk = flatcar_disk(work.path());
    let run = |index: &Path, min: &str| {
        composer()
            .args(["check", "-e", "cni@latest", "--image"])
            .arg(&disk.path)
            .arg("--index")
            .arg(index)
            .args(["--pubkey", pubkey.to_str().unwrap(), "--min-serial", min])
            .output()
            .unwrap()
    };
    // The old generation verifies on its own: only the floor tells it is a replay.
    assert_ok(&run(&old, "1"));
    let o = run(&old, "2");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("serial 1 is lower than 2") && stderr(&o).contains("refusing a rollback"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("release.generations/0000000001"), "{}", stderr(&o));
    assert_ok(&run(&release, "2"));
    let o = run(&release, "3");
    assert!(stderr(&o).contains("serial 2 is lower than 3"), "{}", stderr(&o));
}

// ---- item 3: the verified bytes are the installed bytes ----

fn installs_the_verified_private_copy() {
    let Case { exts, work } = case();
    let disk = ubuntu_disk(work.path());
    let original = work.path().join(exts.kubernetes.file_name().unwrap());
    std::fs::copy(&exts.kubernetes, &original).unwrap();
    let want = sha256(&original);

    // The library: the resolved extension is a private copy holding the hashed bytes, and
    // the plan installs that copy, so replacing the original afterwards changes nothing.
    let resolved = composer::source::resolve(
        &composer::source::ExtensionSource::File(original.clone()),
        composer::source::ResolveOptions::default(),
    )
    .unwrap();
    assert_eq!(resolved.path, original, "the report names the file given");
    assert_ne!(resolved.verified_copy, original);
    assert!(resolved
        .verified_copy
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("composer-extension-"));
    std::fs::write(&original, b"replaced after it was verified").unwrap();
    assert_eq!(sha256(&resolved.verified_copy), want);
    assert_eq!(resolved.sha256.to_string(), want);
    let gpt = composer::disk::gpt::Gpt::read(&disk.path).unwrap();
    let parts = composer::disk::target::probe_partitions(&disk.path, &gpt).unwrap();
    let target = composer::disk::target::detect(
        &disk.path,
        &gpt,
        &parts,
        composer::disk::target::TargetChoice::Auto,
        &Default::default(),
    )
    .unwrap();
    let verdict =
        composer::compose::Verdict { extension: resolved.clone(), accepted: sysext_model::compat::Accepted::AnyId };
    let plan = composer::compose::node_plan(&target, &[verdict], None, None);
    let (_, planned) = plan.images().next().unwrap();
    assert_eq!(planned.source, composer::plan::ImageSource::Local(resolved.verified_copy.clone()));
    drop(resolved);

    // The binary: what landed in the image is what the report says was verified.
    std::fs::copy(&exts.kubernetes, &original).unwrap();
    let out = work.path().join("out.img");
    let o = compose(&disk.path, &out, &[&original], &["--json"]);
    assert_ok(&o);
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let ext = &report["extensions"][0]["extension"];
    assert_eq!(ext["sha256"], want);
    assert_eq!(ext["path"].as_str().unwrap(), original.to_str().unwrap(), "the report names the file given");
    let dumped = work.path().join("dumped.raw");
    let file = original.file_name().unwrap().to_string_lossy().into_owned();
    dump(&out, disk.root_offset, &format!("/opt/extensions/kubernetes/{file}"), &dumped);
    assert_eq!(sha256(&dumped), want);
}

// ---- item 4: a root filesystem marked as having errors ----

fn refuses_a_root_filesystem_with_errors() {
    let Case { exts, work } = case();
    let disk = flatcar_disk(work.path());
    // e2fsck -fn passes such a filesystem; composer must look at the superblock itself.
    debugfs_w(&disk.path, disk.root_offset, "ssv state 3");
    let st = Command::new(composer::disk::e2fs::find_tool("e2fsck"))
        .arg("-fn")
        .arg(format!("{}?offset={}", disk.path.display(), disk.root_offset))
        .output()
        .unwrap();
    assert!(st.status.success(), "e2fsck -fn is expected to pass this filesystem");
    let out = work.path().join("out.img");
    assert_both_refuse(
        &disk.path,
        &out,
        &[&exts.cni],
        &[
            "the ext4 filesystem in partition 9 'ROOT' is marked as having errors",
            &format!("e2fsck -f 'COPY?offset={}'", disk.root_offset),
        ],
    );

    let disk = ubuntu_disk(&sub(&work, "u"));
    debugfs_w(&disk.path, disk.root_offset, "ssv error_count 2");
    assert_both_refuse(
        &disk.path,
        &out,
        &[&exts.cni],
        &["the ext4 filesystem in partition 1 '' has 2 filesystem errors recorded by the kernel; repair a copy first"],
    );

    let disk = ubuntu_disk(&sub(&work, "v"));
    debugfs_w(&disk.path, disk.root_offset, "ssv state 0");
    assert_both_refuse(&disk.path, &out, &[&exts.cni], &["is not marked clean (state lacks 'clean')"]);
}

// ---- item 5: two candidates for the root ----

fn refuses_two_root_partitions() {
    let Case { exts, work } = case();
    let disk = flatcar_disk(work.path());
    let st = Command::new("sfdisk").args(["--quiet", "--part-label"]).arg(&disk.path).args(["6", "ROOT"]).status();
    assert!(st.unwrap().success());
    let out = work.path().join("out.img");
    assert_both_refuse(
        &disk.path,
        &out,
        &[&exts.cni],
        &["several partitions are labelled ROOT: partition 6 'ROOT' and partition 9 'ROOT'; refusing to guess"],
    );

    let disk = ubuntu_disk(&sub(&work, "u"));
    // Ubuntu's /boot (partition 16) relabelled like the root.
    debugfs_w(&disk.path, 21 << 20, "ssv volume_name cloudimg-rootfs");
    assert_both_refuse(
        &disk.path,
        &out,
        &[&exts.cni],
        &["several filesystems are labelled cloudimg-rootfs: partition 1 '' and partition 16 ''"],
    );
    // Naming the layout does not make the Ubuntu one less ambiguous.
    let o = compose(&disk.path, &out, &[&exts.cni], &["--target", "ubuntu"]);
    assert!(!o.status.success() && stderr(&o).contains("several filesystems are labelled cloudimg-rootfs"));

    // One of each layout: --target decides.
    let disk = ubuntu_disk(&sub(&work, "both"));
    let st = Command::new("sfdisk").args(["--quiet", "--part-label"]).arg(&disk.path).args(["16", "ROOT"]).status();
    assert!(st.unwrap().success());
    assert_both_refuse(
        &disk.path,
        &out,
        &[&exts.cni],
        &["both a Flatcar root (PARTLABEL ROOT) and an Ubuntu root (filesystem cloudimg-rootfs) are present: partition 16 'ROOT' and partition 1 ''", "pass --target flatcar or --target ubuntu"],
    );
    assert_ok(&compose(&disk.path, &out, &[&exts.cni], &["--target", "ubuntu"]));
}

// ---- item 6: ext4 features composer cannot write ----

fn refuses_inline_data_naming_the_feature() {
    let Case { exts, work } = case();
    let disk = ubuntu_disk(work.path());
    debugfs_w(&disk.path, disk.root_offset, "feature inline_data");
    let out = work.path().join("out.img");
    // Before: "fallocate: No block for an inode with inline data" from deep inside debugfs.
    assert_both_refuse(
        &disk.path,
        &out,
        &[&exts.cni],
        &[
            "the ext4 filesystem in partition 1 '' uses inline_data, which composer cannot write into correctly",
            "debugfs cannot allocate blocks for such a file",
        ],
    );
    let o = composer().args(["inspect", "--json", "--image"]).arg(&disk.path).output().unwrap();
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["problem"].as_str().unwrap().contains("uses inline_data"), "{v}");
}

// ---- item 7: partition tables and superblocks that cannot be true ----

fn refuses_impossible_partitions_and_superblocks() {
    let Case { exts, work } = case();
    let out = work.path().join("out.img");

    // Valid CRCs, ROOT ending at LBA 2^64-1: once an 18 EB partition (a panic in debug builds).
    let disk = flatcar_disk(&sub(&work, "a"));
    let first = disk.root_offset / 512;
    rewrite_gpt(&disk.path, |e| set_range(e, 9, first, u64::MAX));
    let needle = format!(
        "the primary GPT is intact but invalid: partition 9 'ROOT' (LBA {first}..=18446744073709551615) lies beyond any disk"
    );
    assert_both_refuse(&disk.path, &out, &[&exts.cni], &[&needle]);
    let o = composer().args(["inspect", "--image"]).arg(&disk.path).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains(&needle), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));

    // OEM (6) grown into OEM-CONFIG (7).
    let disk = flatcar_disk(&sub(&work, "b"));
    rewrite_gpt(&disk.path, |e| set_range(e, 6, 68 * 2048, 86 * 2048));
    assert_both_refuse(
        &disk.path,
        &out,
        &[&exts.cni],
        &["partitions 6 'OEM' (bytes", "and 7 'OEM-CONFIG' (bytes", "overlap"],
    );

    // A truncated download: the end of ROOT and the backup table are gone.
    let disk = flatcar_disk(&sub(&work, "c"));
    let f = std::fs::OpenOptions::new().write(true).open(&disk.path).unwrap();
    f.set_len(disk.root_offset + disk.root_size / 2).unwrap();
    drop(f);
    assert_both_refuse(
        &disk.path,
        &out,
        &[&exts.cni],
        &["partition 9 'ROOT'", "past the end of the disk image", "truncated"],
    );

    // Superblocks: a block size of 2^30, more free blocks than blocks.
    let disk = flatcar_disk(&sub(&work, "d"));
    poke_superblock(&disk.path, disk.root_offset, 0x18, 20);
    assert_both_refuse(
        &disk.path,
        &out,
        &[&exts.cni],
        &["the ext4 superblock in partition 9 'ROOT' is inconsistent: the superblock's block size is 2^(10+20) bytes"],
    );
    let disk = flatcar_disk(&sub(&work, "e"));
    poke_superblock(&disk.path, disk.root_offset, 0xC, u32::MAX);
    assert_both_refuse(&disk.path, &out, &[&exts.cni], &["counts 4294967295 free blocks of"]);
}

// ---- item 8: debugfs output composer does not understand ----

/// A `debugfs` earlier on PATH that leaves the owner out of what the real one prints for
/// `stat` (`User: 0 Group: 0 Project: 0 Size: N` becomes `Project: 0 Size: N`).
fn debugfs_without_owners(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = composer::disk::e2fs::find_tool("debugfs");
    let script = bin.join("debugfs");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\nset -o pipefail\n{} \"$@\" | sed -E 's/^User: +[0-9]+ +Group: +[0-9]+ +//'\n",
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    bin
}

fn refuses_debugfs_output_it_does_not_understand() {
    let Case { exts, work } = case();
    let disk = flatcar_disk(work.path());
    let before = sha256(&disk.path);
    let bin = debugfs_without_owners(work.path());
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = work.path().join("out.img");
    // Without the owner, "root-owned" was once read from the missing fields as uid 0 and
    // the composed image passed its read-back.
    let mut cmd = composer();
    cmd.env("PATH", &path)
        .arg("compose")
        .arg("--image")
        .arg(&disk.path)
        .arg("--out")
        .arg(&out)
        .arg("-e")
        .arg(&exts.cni);
    let o = cmd.output().unwrap();
    assert_refused(&o, &out, &disk.path, &before, &["cannot understand the output of 'stat", "no 'User:' field"]);
}

// ---- item 9: the image's systemd version ----

fn old_systemd_refuses_any_id_images() {
    let arch = host_arch();
    let Case { exts, work } = case();
    let jammy = "PRETTY_NAME=\"Ubuntu 22.04.5 LTS\"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"22.04\"\n";
    let out = work.path().join("out.img");

    let mut spec = DiskSpec::new(jammy, arch);
    spec.systemd = Some(249);
    let disk = disk::ubuntu(&sub(&work, "249"), &spec);
    let needle = "ID=_any needs systemd 252 or later, but the image has systemd 249";
    assert_both_refuse(
        &disk.path,
        &out,
        &[&exts.cni],
        &[needle, "systemd 249 from partition 1 '':/usr/lib/systemd/libsystemd-shared-249.so"],
    );
    let o = composer().args(["inspect", "--json", "--image"]).arg(&disk.path).output().unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["systemd"], 249);

    spec.systemd = Some(252);
    let disk = disk::ubuntu(&sub(&work, "252"), &spec);
    let o = check(&disk.path, &[&exts.cni], &["--json"]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["target"]["systemd"]["value"], 252);
    let triplet = if arch == sysext_tests::Arch::X86_64 { "x86_64-linux-gnu" } else { "aarch64-linux-gnu" };
    assert_eq!(
        v["target"]["systemd"]["from"],
        format!("partition 1 '':/usr/lib/{triplet}/systemd/libsystemd-shared-252.so")
    );
    assert_eq!(v["warnings"], serde_json::json!([]));
    let o = check(&disk.path, &[&exts.cni], &[]);
    assert!(stdout(&o).contains(", systemd 252 ("), "{}", stdout(&o));
    // The override is what counts when given.
    let o = check(&disk.path, &[&exts.cni], &["--systemd-version", "249"]);
    assert!(!o.status.success() && stderr(&o).contains(needle), "{}", stderr(&o));

    // Flatcar keeps it in lib64 on USR-A.
    let o = check(&flatcar_disk(&sub(&work, "f")).path, &[&exts.cni], &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["target"]["systemd"]["from"], "partition 3 'USR-A':/lib64/systemd/libsystemd-shared-255.so");

    // Unknown: said on stderr and in the report, and composing goes on.
    spec = DiskSpec::new(UBUNTU_OS_RELEASE, arch);
    spec.systemd = None;
    let disk = disk::ubuntu(&sub(&work, "none"), &spec);
    let o = compose(&disk.path, &out, &[&exts.cni], &["--json"]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("warning: ")
            && stderr(&o).contains("cannot tell the image's systemd version")
            && stderr(&o).contains("use ID=_any, which needs systemd 252 or later"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["target"]["systemd"], serde_json::Value::Null);
    assert!(v["warnings"][0].as_str().unwrap().contains("--systemd-version"), "{v}");
}

fn main() -> std::process::ExitCode {
    sysext_tests::harness::run(vec![
        sysext_tests::test!(refuses_an_extension_file_named_for_another_version).needs(disk_needs()),
        sysext_tests::test!(min_serial_refuses_a_replayed_older_release).needs(disk_needs()),
        sysext_tests::test!(installs_the_verified_private_copy).needs(disk_needs()),
        sysext_tests::test!(refuses_a_root_filesystem_with_errors).needs(disk_needs()),
        sysext_tests::test!(refuses_two_root_partitions).needs(disk_needs()),
        sysext_tests::test!(refuses_inline_data_naming_the_feature).needs(disk_needs()),
        sysext_tests::test!(refuses_impossible_partitions_and_superblocks).needs(disk_needs()),
        sysext_tests::test!(refuses_debugfs_output_it_does_not_understand).needs(disk_needs()).tools(&["bash", "sed"]),
        sysext_tests::test!(old_systemd_refuses_any_id_images).needs(disk_needs()),
    ])
}
