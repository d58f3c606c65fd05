//! Tier 1: composing bakery-built extensions into synthetic Flatcar and Ubuntu disks with the
//! real e2fsprogs, sfdisk and qemu-img, unprivileged; the result is read back with debugfs.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use release_index::transfer;
use sysext_tests::disk::{self, DiskSpec, UsrFs};
use sysext_tests::sandbox::{FLATCAR_OS_RELEASE, UBUNTU_OS_RELEASE};

/// Reads back what compose wrote for each extension: link, image bytes, owner and mode.
fn assert_installed(image: &Path, offset: u64, exts: &[&Path], scratch: &Path) {
    for ext in exts {
        let file = ext.file_name().unwrap().to_string_lossy().into_owned();
        let name = file.split('-').next().unwrap();
        let dest = format!("/opt/extensions/{name}/{file}");
        let link = debugfs(image, offset, &format!("stat /etc/extensions/{name}.raw"));
        assert!(link.contains(&format!("Fast link dest: \"{dest}\"")), "{link}");
        let st = debugfs(image, offset, &format!("stat {dest}"));
        assert!(st.contains("Type: regular") && st.contains("Mode:  0644"), "{st}");
        assert!(st.contains("User:     0   Group:     0"), "{st}");
        let dumped = scratch.join(format!("dumped-{file}"));
        dump(image, offset, &dest, &dumped);
        assert_eq!(sha256(&dumped), sha256(ext), "{dest} differs from {}", ext.display());
        let dir = debugfs(image, offset, &format!("stat /opt/extensions/{name}"));
        assert!(dir.contains("Type: directory") && dir.contains("Mode:  0755"), "{dir}");
    }
}

fn composes_into_a_flatcar_layout_disk() {
    let Case { exts, work } = case();
    let disk = flatcar_disk(work.path());
    let before = sha256(&disk.path);
    let out = work.path().join("composed.img");
    let o =
        compose(&disk.path, &out, &exts.all(), &["--sysupdate", "--sysupdate-url", "https://ext.example/", "--json"]);
    assert_ok(&o);
    assert_eq!(sha256(&disk.path), before, "input modified");

    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["target"]["distro"], "flatcar");
    assert_eq!(report["target"]["root"]["number"], 9);
    assert_eq!(report["target"]["os_release"]["from"], "partition 3 'USR-A':/lib/os-release");
    assert_eq!(report["extensions"][0]["accepted"]["rule"], "any-id");

    assert_installed(&out, disk.root_offset, &exts.all(), work.path());
    // sysupdate: the per-minor channel, byte-identical to the release-index renderer, plus noop.
    let (stem, text) = transfer::patch_channel(
        &"kubernetes".parse().unwrap(),
        &K8S.parse().unwrap(),
        &"https://ext.example/kubernetes/".parse().unwrap(),
        transfer::Verify::No,
    )
    .unwrap();
    for suffix in ["conf", "transfer"] {
        let got = debugfs(&out, disk.root_offset, &format!("cat /etc/sysupdate.kubernetes.d/{stem}.{suffix}"));
        assert_eq!(got, text);
    }
    assert_eq!(debugfs(&out, disk.root_offset, "cat /etc/sysupdate.d/noop.conf"), transfer::noop());
    // USR-A is never touched: the same bytes as in the input.
    let usr = |p: &Path| {
        let mut f = std::fs::File::open(p).unwrap();
        use std::io::{Read, Seek, SeekFrom};
        f.seek(SeekFrom::Start(19 << 20)).unwrap();
        let mut b = vec![0u8; 24 << 20];
        f.read_exact(&mut b).unwrap();
        signing::Sha256Digest::of(&b)
    };
    assert_eq!(usr(&out), usr(&disk.path), "USR-A changed");
    // The output is sparse like the input.
    let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&out).unwrap()) * 512;
    assert!(
        allocated < std::fs::metadata(&out).unwrap().len() / 2,
        "output is not sparse: {allocated} bytes allocated"
    );

    // inspect sees what compose wrote.
    let o = composer().args(["inspect", "--json", "--image"]).arg(&out).output().unwrap();
    assert_ok(&o);
    let inspected: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(inspected["distro"], "flatcar");
    let names: Vec<&str> =
        inspected["extensions"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cni", "containerd", "kubernetes"]);
    // With containerd installed, Flatcar's own runtimes are masked, not listed as extensions.
    assert_eq!(
        inspected["masked"],
        serde_json::json!(["/etc/extensions/containerd-flatcar.raw", "/etc/extensions/docker-flatcar.raw"])
    );
    assert_eq!(
        inspected["extensions"][2]["link"],
        format!("/opt/extensions/kubernetes/kubernetes-{K8S}-{}.raw", exts.arch)
    );
    let o = composer().args(["inspect", "--image"]).arg(&out).output().unwrap();
    assert!(
        stdout(&o).contains("kubernetes   /etc/extensions/kubernetes.raw -> /opt/extensions/kubernetes/"),
        "{}",
        stdout(&o)
    );
}

fn composes_into_an_ubuntu_layout_disk_and_enables_sysext() {
    let Case { exts, work } = case();
    let disk = ubuntu_disk(work.path());
    let before = sha256(&disk.path);
    let out = work.path().join("composed.img");
    let o = compose(&disk.path, &out, &exts.all(), &[]);
    assert_ok(&o);
    assert_eq!(sha256(&disk.path), before);
    assert_eq!(stdout(&o).trim(), out.display().to_string());
    assert_installed(&out, disk.root_offset, &exts.all(), work.path());
    let wants = debugfs(&out, disk.root_offset, "stat /etc/systemd/system/sysinit.target.wants/systemd-sysext.service");
    assert!(wants.contains("Fast link dest: \"/usr/lib/systemd/system/systemd-sysext.service\""), "{wants}");
    // No sysupdate files unless asked.
    assert!(debugfs(&out, disk.root_offset, "ls -p /etc").lines().all(|l| !l.contains("sysupdate")));

    // `check` agrees, and explains the rule per extension.
    let mut cmd = composer();
    cmd.args(["check", "--image"]).arg(&disk.path);
    for e in exts.all() {
        cmd.arg("-e").arg(e);
    }
    let o = cmd.output().unwrap();
    assert_ok(&o);
    assert!(stdout(&o).contains("Ubuntu, root in partition 1"), "{}", stdout(&o));
    assert!(stdout(&o).contains("will merge"), "{}", stdout(&o));
}

fn ubuntu_images_pinned_to_the_release_compose_into_ubuntu() {
    let Case { exts, work } = case();
    let disk = ubuntu_disk(work.path());
    let out = work.path().join("composed.img");
    // A relative extension path works although debugfs runs in a scratch directory.
    let dir = exts.ubuntu_kubernetes.parent().unwrap();
    let file = exts.ubuntu_kubernetes.file_name().unwrap();
    let o = composer()
        .current_dir(dir)
        .args(["compose", "--json", "--image"])
        .arg(&disk.path)
        .arg("--out")
        .arg(&out)
        .arg("-e")
        .arg(file)
        .output()
        .unwrap();
    assert_ok(&o);
    assert_installed(&out, disk.root_offset, &[&exts.ubuntu_kubernetes], work.path());
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["extensions"][0]["accepted"], serde_json::json!({"rule": "version-id", "version_id": "24.04"}));
}

fn qcow2_in_qcow2_out() {
    let exts = extensions();
    let work = tempfile::tempdir().unwrap();
    let disk = flatcar_disk(work.path());
    let qcow = work.path().join("flatcar.qcow2");
    let st = Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&disk.path).arg(&qcow).status();
    assert!(st.unwrap().success());
    let before = sha256(&qcow);
    let out = work.path().join("composed.qcow2");
    let o = compose(&qcow, &out, &exts.all(), &["--output-format", "qcow2"]);
    assert_ok(&o);
    assert_eq!(sha256(&qcow), before);
    assert_eq!(&std::fs::read(&out).unwrap()[..4], b"QFI\xfb", "output is not qcow2");
    let raw = work.path().join("back.raw");
    let st = Command::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "raw"]).arg(&out).arg(&raw).status();
    assert!(st.unwrap().success());
    assert_installed(&raw, disk.root_offset, &exts.all(), work.path());
}

fn compressed_inputs_are_streamed() {
    let Case { exts, work } = case();
    let disk = flatcar_disk(work.path());
    for (tool, suffix) in [("xz", "xz"), ("zstd", "zst"), ("bzip2", "bz2")] {
        let st = Command::new(tool).args(["-k", "-q", "-f"]).arg(&disk.path).status().unwrap();
        assert!(st.success(), "{tool}");
        let compressed = work.path().join(format!("flatcar.img.{suffix}"));
        let before = sha256(&compressed);
        let out = work.path().join(format!("composed-{suffix}.img"));
        let o = compose(&compressed, &out, &[&exts.kubernetes], &["--json"]);
        assert_ok(&o);
        assert_eq!(sha256(&compressed), before);
        let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(
            report["format"],
            match suffix {
                "xz" => "xz",
                "zst" => "zstd",
                _ => "bzip2",
            }
        );
        assert_installed(&out, disk.root_offset, &[&exts.kubernetes], work.path());
        let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&out).unwrap()) * 512;
        assert!(allocated < std::fs::metadata(&out).unwrap().len() / 2, "{suffix}: decompressed output is not sparse");
    }
}

fn recomposing_replaces_links_and_keeps_the_filesystem_clean() {
    let Case { exts, work } = case();
    let disk = ubuntu_disk(work.path());
    let once = work.path().join("once.img");
    assert_ok(&compose(&disk.path, &once, &[&exts.kubernetes], &[]));
    let twice = work.path().join("twice.img");
    assert_ok(&compose(&once, &twice, &exts.all(), &[]));
    assert_installed(&twice, disk.root_offset, &exts.all(), work.path());
}

fn reads_the_backup_gpt_when_the_primary_is_damaged() {
    let Case { exts, work } = case();
    let disk = flatcar_disk(work.path());
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk.path).unwrap();
        f.seek(SeekFrom::Start(512 + 16)).unwrap();
        f.write_all(&[0xde, 0xad, 0xbe, 0xef]).unwrap();
    }
    let o = composer().args(["inspect", "--json", "--image"]).arg(&disk.path).output().unwrap();
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["table"], "backup");
    assert!(v["table_problem"].as_str().unwrap().contains("header CRC32"), "{v}");
    let out = work.path().join("composed.img");
    assert_ok(&compose(&disk.path, &out, &[&exts.cni], &[]));
}

fn btrfs_usr_needs_os_release_and_arch() {
    let arch = host_arch();
    let exts = extensions();
    let work = tempfile::tempdir().unwrap();
    let mut spec = DiskSpec::new(FLATCAR_OS_RELEASE, arch);
    spec.usr_fs = UsrFs::Btrfs;
    let disk = disk::flatcar(work.path(), &spec);
    let before = sha256(&disk.path);
    let out = work.path().join("composed.img");
    let o = compose(&disk.path, &out, &[&exts.kubernetes], &[]);
    assert_refused(&o, &out, &disk.path, &before, &["partition 3 'USR-A' holds btrfs", "--os-release FILE"]);

    let os_release = work.path().join("os-release");
    std::fs::write(&os_release, FLATCAR_OS_RELEASE).unwrap();
    let o = compose(&disk.path, &out, &[&exts.kubernetes], &["--os-release", os_release.to_str().unwrap()]);
    assert_refused(&o, &out, &disk.path, &before, &["cannot tell the image's architecture", "--arch"]);

    let o = compose(
        &disk.path,
        &out,
        &[&exts.kubernetes],
        &["--os-release", os_release.to_str().unwrap(), "--arch", arch.as_str()],
    );
    assert_ok(&o);
    assert_installed(&out, disk.root_offset, &[&exts.kubernetes], work.path());

    // inspect still lists what is installed, and says what it could not read.
    let o = composer().args(["inspect", "--json", "--image"]).arg(&out).output().unwrap();
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["distro"], "flatcar");
    assert_eq!(v["extensions"][0]["name"], "kubernetes");
    assert!(v["problem"].as_str().unwrap().contains("--os-release FILE"), "{v}");
    assert!(v.get("os_release").is_none(), "{v}");
}

fn signatures_are_checked_with_pubkey() {
    let Case { exts, work } = case();
    let disk = ubuntu_disk(work.path());
    let before = sha256(&disk.path);
    let keys = work.path().join("keys");
    signing::keygen(&keys).unwrap();
    let key = signing::PrivateKey::read_pem(&keys.join("private.pem")).unwrap();
    let signed = work.path().join(exts.kubernetes.file_name().unwrap());
    std::fs::copy(&exts.kubernetes, &signed).unwrap();
    let pubkey = keys.join("public.pem");
    let args = ["--pubkey", pubkey.to_str().unwrap()];

    let out = work.path().join("composed.img");
    let o = compose(&disk.path, &out, &[&signed], &args);
    assert_refused(&o, &out, &disk.path, &before, &["no signature file", ".raw.sig"]);

    key.sign_file(&signed).unwrap();
    assert_ok(&compose(&disk.path, &out, &[&signed], &args));
    std::fs::remove_file(&out).unwrap();

    // A different key's signature is refused.
    let other = work.path().join("other");
    signing::keygen(&other).unwrap();
    signing::PrivateKey::read_pem(&other.join("private.pem")).unwrap().sign_file(&signed).unwrap();
    let o = compose(&disk.path, &out, &[&signed], &args);
    assert_refused(&o, &out, &disk.path, &before, &["signature does not verify"]);
}

fn channels_come_from_a_signed_release_index() {
    let Case { exts, work } = case();
    let (release, pubkey) = release(work.path(), exts);
    let disk = flatcar_disk(work.path());
    let before = sha256(&disk.path);
    let out = work.path().join("composed.img");
    let index_args = ["--index", release.to_str().unwrap(), "--pubkey", pubkey.to_str().unwrap()];
    let o = composer()
        .args(["compose", "--image"])
        .arg(&disk.path)
        .arg("--out")
        .arg(&out)
        .args(["-e", "kubernetes@1.31", "-e", "containerd@~2.0", "-e", "cni@latest", "--sysupdate", "--json"])
        .args(index_args)
        .output()
        .unwrap();
    assert_ok(&o);
    assert_eq!(sha256(&disk.path), before);
    assert_installed(&out, disk.root_offset, &exts.all(), work.path());
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(report.to_string().contains("index serial 1"), "{report:#}");
    // Transfer files point where the signed index says the release is served.
    let conf = debugfs(&out, disk.root_offset, "cat /etc/sysupdate.kubernetes.d/kubernetes-v1.31.conf");
    assert!(conf.contains("\nPath=https://sysext.example.org/ext/kubernetes/\n"), "{conf}");

    // Over HTTP, from the same release.
    let server = sysext_tests::FixtureServer::start();
    for path in release_index::source::walk(&release).unwrap() {
        server.set(&format!("/ext/{path}"), sysext_tests::Response::ok(std::fs::read(release.join(&path)).unwrap()));
    }
    let url = server.url_for("/ext/");
    let out2 = work.path().join("composed-http.img");
    let o = composer()
        .args(["compose", "--image"])
        .arg(&disk.path)
        .arg("--out")
        .arg(&out2)
        .args(["-e", "kubernetes@>=1.30, <1.32", "--index", &url, "--pubkey", pubkey.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ok(&o);
    assert_installed(&out2, disk.root_offset, &[&exts.kubernetes], work.path());

    // Refusals: no matching version, no index, a stranger's key, a tampered artifact.
    let refused = work.path().join("refused.img");
    let run = |extra: &[&str]| {
        composer().args(["compose", "--image"]).arg(&disk.path).arg("--out").arg(&refused).args(extra).output().unwrap()
    };
    let o = run(&["-e", "kubernetes@1.40", "--index", &url, "--pubkey", pubkey.to_str().unwrap()]);
    assert_refused(&o, &refused, &disk.path, &before, &["kubernetes@1.40: no", "available: v1.31.3"]);
    let o = run(&["-e", "kubernetes@1.31"]);
    assert_refused(&o, &refused, &disk.path, &before, &["pass --index URL|DIR and --pubkey PUB"]);
    let o = run(&["-e", "kubernetes@1.31", "--index", &url]);
    assert_refused(&o, &refused, &disk.path, &before, &["needs --pubkey"]);
    let stranger = work.path().join("stranger");
    signing::keygen(&stranger).unwrap();
    let o = run(&["-e", "kubernetes@1.31", "--index", &url, "--pubkey", stranger.join("public.pem").to_str().unwrap()]);
    assert_refused(&o, &refused, &disk.path, &before, &["index.json.sig", "which this client does not trust"]);
    let file = exts.kubernetes.file_name().unwrap().to_string_lossy().into_owned();
    let mut bytes = std::fs::read(&exts.kubernetes).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    server.set(&format!("/ext/{file}"), sysext_tests::Response::ok(bytes));
    let o = run(&["-e", "kubernetes@1.31", "--index", &url, "--pubkey", pubkey.to_str().unwrap()]);
    assert_refused(&o, &refused, &disk.path, &before, &[&file, "does not match the signed index"]);
}

// ---- bad input: each refuses with a clear error, writes no OUT, leaves the input unchanged ----

fn refuses_a_file_that_is_not_a_disk() {
    let Case { exts, work } = case();
    let input = work.path().join("notes.txt");
    std::fs::write(&input, "hello\n".repeat(1000)).unwrap();
    let before = sha256(&input);
    let out = work.path().join("out.img");
    let o = compose(&input, &out, &[&exts.kubernetes], &[]);
    assert_refused(&o, &out, &input, &before, &["notes.txt: not a disk image", "no GPT header"]);
}

fn refuses_an_mbr_only_disk() {
    let Case { exts, work } = case();
    let input = disk::mbr_only(work.path());
    let before = sha256(&input);
    let out = work.path().join("out.img");
    let o = compose(&input, &out, &[&exts.kubernetes], &[]);
    assert_refused(&o, &out, &input, &before, &["mbr.img: has an MBR (DOS) partition table but no GPT"]);
}

fn refuses_a_disk_without_a_root_partition() {
    let Case { exts, work } = case();
    let disk = flatcar_disk(work.path());
    // Rename ROOT so neither layout matches.
    let st = Command::new("sfdisk").args(["--quiet", "--part-label"]).arg(&disk.path).args(["9", "DATA"]).status();
    assert!(st.unwrap().success());
    let before = sha256(&disk.path);
    let out = work.path().join("out.img");
    let o = compose(&disk.path, &out, &[&exts.kubernetes], &[]);
    assert_refused(&o, &out, &disk.path, &before, &["no partition with PARTLABEL ROOT", "9 'DATA' (ext4 label ROOT)"]);
    let o = compose(&disk.path, &out, &[&exts.kubernetes], &["--target", "flatcar"]);
    assert_refused(&o, &out, &disk.path, &before, &["partition with PARTLABEL ROOT not found", "partition 9"]);
}

fn refuses_a_root_that_is_not_ext4() {
    let Case { exts, work } = case();
    let disk = flatcar_disk(work.path());
    let st = Command::new("mkfs.ext2")
        .args(["-q", "-F", "-L", "ROOT", "-E"])
        .arg(format!("offset={}", disk.root_offset))
        .arg(&disk.path)
        .arg(format!("{}k", disk.root_size / 1024))
        .status();
    assert!(st.unwrap().success());
    let before = sha256(&disk.path);
    let out = work.path().join("out.img");
    let o = compose(&disk.path, &out, &[&exts.kubernetes], &[]);
    assert_refused(&o, &out, &disk.path, &before, &["partition 9 'ROOT' holds ext2; expected ext4"]);
}

fn refuses_when_the_filesystem_is_full() {
    let arch = host_arch();
    let exts = extensions();
    let work = tempfile::tempdir().unwrap();
    let mut spec = DiskSpec::new(UBUNTU_OS_RELEASE, arch);
    spec.root_mib = 8;
    let disk = disk::ubuntu(work.path(), &spec);
    // Fill the root filesystem so less than one image fits.
    let filler = work.path().join("filler");
    let free = {
        let stats = debugfs(&disk.path, disk.root_offset, "stats");
        let get = |k: &str| -> u64 { stats.lines().find_map(|l| l.strip_prefix(k)).unwrap().trim().parse().unwrap() };
        get("Free blocks:") * get("Block size:")
    };
    std::fs::write(&filler, vec![1u8; (free - 64 * 1024) as usize]).unwrap();
    let st = Command::new("debugfs")
        .args(["-w", "-R"])
        .arg(format!("write {} filler", filler.display()))
        .arg(format!("{}?offset={}", disk.path.display(), disk.root_offset))
        .output()
        .unwrap();
    assert!(st.status.success());
    let before = sha256(&disk.path);
    let out = work.path().join("out.img");
    let o = compose(&disk.path, &out, &exts.all(), &[]);
    assert_refused(
        &o,
        &out,
        &disk.path,
        &before,
        &["partition 1 '' (ext4) has", "bytes free but composing needs", "more bytes or grow the partition"],
    );
}

fn refuses_an_extension_for_another_architecture() {
    let arch = host_arch();
    let exts = extensions();
    let work = tempfile::tempdir().unwrap();
    let disk = flatcar_disk(work.path());
    let before = sha256(&disk.path);
    let out = work.path().join("out.img");
    let o = compose(&disk.path, &out, &[&exts.containerd, &exts.foreign_kubernetes], &[]);
    let other = exts.foreign_kubernetes.file_name().unwrap().to_string_lossy().into_owned();
    let msg = format!("{other}: systemd-sysext would skip it at boot: ARCHITECTURE=");
    assert_refused(
        &o,
        &out,
        &disk.path,
        &before,
        &[&msg, &format!("but the image is {arch}; expected ARCHITECTURE={arch} or _any")],
    );
    // `check` reports the same, and exits non-zero.
    let o =
        composer().args(["check", "--image"]).arg(&disk.path).arg("-e").arg(&exts.foreign_kubernetes).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&msg), "{}", stderr(&o));
}

fn refuses_an_extension_for_another_os() {
    let Case { exts, work } = case();
    let disk = flatcar_disk(work.path());
    let before = sha256(&disk.path);
    let out = work.path().join("out.img");
    let o = compose(&disk.path, &out, &[&exts.ubuntu_kubernetes], &[]);
    assert_refused(
        &o,
        &out,
        &disk.path,
        &before,
        &[
            "ID=flatcar VERSION_ID=4152.2.0 SYSEXT_LEVEL=1.0 from partition 3 'USR-A':/lib/os-release",
            "ID=ubuntu but the image's os-release has ID=flatcar; expected ID=flatcar or ID=_any",
        ],
    );
}

fn refuses_to_overwrite_out_or_the_input() {
    let Case { exts, work } = case();
    let disk = flatcar_disk(work.path());
    let before = sha256(&disk.path);
    let o = compose(&disk.path, &disk.path, &[&exts.kubernetes], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is the input image; composer never modifies its input"), "{}", stderr(&o));
    assert_eq!(sha256(&disk.path), before);
    let existing = work.path().join("exists.img");
    std::fs::write(&existing, b"keep").unwrap();
    let o = compose(&disk.path, &existing, &[&exts.kubernetes], &[]);
    assert!(stderr(&o).contains("already exists; refusing to overwrite it"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep");
}

/// A 40 MiB image in a filesystem of 1 KiB blocks and 8 MiB block groups cannot be one
/// extent: the allocate-then-fill path must follow a multi-extent map (with an index block).
fn composes_a_large_image_spanning_many_extents() {
    let arch = host_arch();
    let work = tempfile::tempdir().unwrap();
    let image = squashfs_extension(work.path(), "big", "1.0", arch, 1, 40 << 20);
    let disk = flatcar_disk(work.path());
    let out = work.path().join("composed.img");
    assert_ok(&compose(&disk.path, &out, &[&image], &[]));
    let ex = debugfs(&out, disk.root_offset, &format!("ex /opt/extensions/big/big-1.0-{arch}.raw"));
    let leaves = ex.lines().filter(|l| l.contains(" - ")).count();
    assert!(leaves > 2, "expected several extents:\n{ex}");
    assert!(!ex.contains("Uninit"), "{ex}");
    assert_installed(&out, disk.root_offset, &[&image], work.path());
}

/// Link targets of 60 bytes or more are stored in a data block, not in the inode: the
/// read-back and `inspect` must follow those too.
fn long_extension_names_get_slow_symlinks() {
    let arch = host_arch();
    let work = tempfile::tempdir().unwrap();
    let name = "kubernetes-device-plugins-extra";
    let image = squashfs_extension(work.path(), name, "v1.31.3", arch, 1, 4096);
    let disk = ubuntu_disk(work.path());
    let out = work.path().join("composed.img");
    assert_ok(&compose(&disk.path, &out, &[&image], &[]));
    let target = format!("/opt/extensions/{name}/{name}-v1.31.3-{arch}.raw");
    assert!(target.len() >= 60);
    let st = debugfs(&out, disk.root_offset, &format!("stat /etc/extensions/{name}.raw"));
    assert!(st.contains("Type: symlink") && !st.contains("Fast link dest"), "{st}");
    let o = composer().args(["inspect", "--json", "--image"]).arg(&out).output().unwrap();
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["extensions"][0]["link"], target);
    assert_eq!(v["extensions"][0]["resolves_to"], target);
}

fn main() -> std::process::ExitCode {
    sysext_tests::harness::run(vec![
        sysext_tests::test!(composes_into_a_flatcar_layout_disk).needs(disk_needs()),
        sysext_tests::test!(composes_into_an_ubuntu_layout_disk_and_enables_sysext).needs(disk_needs()),
        sysext_tests::test!(ubuntu_images_pinned_to_the_release_compose_into_ubuntu).needs(disk_needs()),
        sysext_tests::test!(qcow2_in_qcow2_out).needs(disk_needs()).tools(&["qemu-img"]),
        sysext_tests::test!(compressed_inputs_are_streamed).needs(disk_needs()).tools(&["xz", "zstd", "bzip2"]),
        sysext_tests::test!(recomposing_replaces_links_and_keeps_the_filesystem_clean).needs(disk_needs()),
        sysext_tests::test!(reads_the_backup_gpt_when_the_primary_is_damaged).needs(disk_needs()),
        sysext_tests::test!(btrfs_usr_needs_os_release_and_arch).needs(disk_needs()),
        sysext_tests::test!(signatures_are_checked_with_pubkey).needs(disk_needs()),
        sysext_tests::test!(channels_come_from_a_signed_release_index).needs(disk_needs()),
        sysext_tests::test!(refuses_a_file_that_is_not_a_disk).needs(disk_needs()),
        sysext_tests::test!(refuses_an_mbr_only_disk).needs(disk_needs()),
        sysext_tests::test!(refuses_a_disk_without_a_root_partition).needs(disk_needs()),
        sysext_tests::test!(refuses_a_root_that_is_not_ext4).needs(disk_needs()),
        sysext_tests::test!(refuses_when_the_filesystem_is_full).needs(disk_needs()),
        sysext_tests::test!(refuses_an_extension_for_another_architecture).needs(disk_needs()),
        sysext_tests::test!(refuses_an_extension_for_another_os).needs(disk_needs()),
        sysext_tests::test!(refuses_to_overwrite_out_or_the_input).needs(disk_needs()),
        sysext_tests::test!(composes_a_large_image_spanning_many_extents).needs(disk_needs()).tools(&["mksquashfs"]),
        sysext_tests::test!(compose_writes_exactly_the_node_plan).needs(disk_needs()),
        sysext_tests::test!(long_extension_names_get_slow_symlinks).needs(disk_needs()).tools(&["mksquashfs"]),
    ])
}

/// One line per entry of a composed root: kind, mode, owner and what it holds, read with debugfs.
fn manifest_line(image: &Path, offset: u64, path: &str, scratch: &Path) -> String {
    let st = debugfs(image, offset, &format!("stat {path}"));
    let field = |key: &str| st.split(key).nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("?").to_owned();
    let (mode, uid, gid) = (field("Mode: "), field("User: "), field("Group: "));
    let kind = field("Type: ");
    let what = match kind.as_str() {
        "regular" => {
            let dumped = scratch.join("manifest-dump");
            let _ = std::fs::remove_file(&dumped);
            dump(image, offset, path, &dumped);
            format!("sha256 {}", sha256(&dumped))
        }
        "symlink" => {
            let fast = st.split("Fast link dest: \"").nth(1).and_then(|r| r.split('"').next());
            format!("-> {}", fast.expect("composer's links are fast links"))
        }
        _ => String::new(),
    };
    format!("{kind} {mode} {uid}:{gid} {path} {what}").trim_end().to_owned()
}

/// compose renders the node plan: built here once from the same inputs, every entry of the
/// plan is in the composed root exactly as planned (kind, mode, owner, bytes, link target),
/// the enabled units are linked, and nothing else appears where the plan writes. The
/// resulting manifest, image digests included, is pinned.
fn compose_writes_exactly_the_node_plan() {
    use composer::plan::{Entry, ImageSource, NodeOs, NodePlan, PlanRequest, PlannedImage};
    let Case { exts, work } = case();
    let base: sysext_model::BaseUrl = "https://ext.example/r".parse().unwrap();
    for (os, disk, sysupdate) in
        [(NodeOs::Flatcar, flatcar_disk(work.path()), true), (NodeOs::Ubuntu, ubuntu_disk(work.path()), false)]
    {
        let images: Vec<PlannedImage> = exts
            .all()
            .iter()
            .map(|p| {
                let d = signing::Digests::of(&std::fs::read(p).unwrap());
                PlannedImage {
                    image: p.file_name().unwrap().to_str().unwrap().parse().unwrap(),
                    size: d.size,
                    sha256: d.sha256,
                    sha512: d.sha512,
                    source: ImageSource::Local(p.to_path_buf()),
                }
            })
            .collect();
        let plan =
            NodePlan::build(&PlanRequest { os, images: &images, sysupdate: sysupdate.then_some(&base), keyring: None });
        let out = work.path().join(format!("composed-{os:?}.img"));
        let extra: &[&str] = if sysupdate { &["--sysupdate", "--sysupdate-url", "https://ext.example/r"] } else { &[] };
        assert_ok(&compose(&disk.path, &out, &exts.all(), extra));

        let at = disk.root_offset;
        let mut manifest = Vec::new();
        for entry in &plan.entries {
            let line = manifest_line(&out, at, entry.path(), work.path());
            let expected = match entry {
                Entry::Dir { path } => format!("directory 0755 0:0 {path}"),
                Entry::Image { path, image } => format!("regular 0644 0:0 {path} sha256 {}", image.sha256),
                Entry::File { path, mode, contents } => {
                    format!("regular 0{mode:o} 0:0 {path} sha256 {}", signing::Sha256Digest::of(contents))
                }
                Entry::Link { path, target, .. } => format!("symlink 0777 0:0 {path} -> {target}"),
            };
            assert_eq!(line, expected, "{os:?}: {} is not as planned", entry.path());
            manifest.push(line);
        }
        for unit in plan.enable.iter().filter(|u| !u.by_os) {
            let line = manifest_line(&out, at, &unit.link(), work.path());
            let shipped = format!("/usr/lib/systemd/system/{}", unit.name);
            if unit.if_present && manifest_line(&out, at, &shipped, work.path()).starts_with('?') {
                // systemd-sysupdate.timer, on a disk whose root partition has no such unit:
                // on Flatcar it lives in the separate /usr, linked as `systemctl enable`
                // would; elsewhere skipped, not linked to nothing.
                if os == NodeOs::Flatcar {
                    assert_eq!(line, format!("symlink 0777 0:0 {} -> {shipped}", unit.link()), "{os:?}");
                } else {
                    assert!(line.starts_with('?'), "{os:?}: {line}");
                }
                continue;
            }
            assert!(
                line.starts_with(&format!("symlink 0777 0:0 {} -> ", unit.link())) && line.ends_with(&unit.name),
                "{os:?}: {line}"
            );
            manifest.push(line);
        }
        // Nothing beyond the plan (its entries and the links enabling its units) in the
        // directories it writes.
        let paths = plan.paths();
        let planned: std::collections::BTreeSet<&str> = paths.iter().map(String::as_str).collect();
        for dir in plan.entries.iter().filter_map(|e| match e {
            Entry::Dir { path } if path != "/etc" => Some(path.as_str()),
            _ => None,
        }) {
            for line in debugfs(&out, at, &format!("ls -p {dir}")).lines() {
                let name = line.split('/').nth(5).unwrap_or_default();
                if name.is_empty() || name == "." || name == ".." {
                    continue;
                }
                let path = format!("{dir}/{name}");
                assert!(planned.contains(path.as_str()), "{os:?}: {path} was written but is not in the plan");
            }
        }
        // Image digests depend on the architecture the extensions were built for.
        insta::assert_snapshot!(format!("node-plan-{os:?}-{}", exts.arch).to_lowercase(), manifest.join("\n"));
    }
}
