//! Stock systemd-sysupdate (systemd 257, from a Debian 13 chroot) against `composer serve` on
//! 127.0.0.1, with the transfer file and keyring `bakery publish --openpgp` wrote: it checks
//! `SHA256SUMS.gpg` (Verify=yes) with gpg, installs the newest patch release and points the
//! CurrentSymlink at it, installs the next one once it is published, and refuses a
//! checksum list that the key did not sign.
//!
//! The chroot is made once with debootstrap (minbase plus systemd, systemd-container, which
//! ships systemd-sysupdate and systemd-pull, dbus and gpg) and cached in the target
//! directory; every run works on an overlay over it in a private mount namespace, so the
//! cache is never changed and every mount goes away with the namespace, failure or not.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::server::Server;
use release_index::publish::{publish, NewImage, PublishOptions};
use release_index::timestamp::Timestamp;
use signing::PrivateKey;
use sysext_model::Arch;

/// Where the chroot is cached: beside the build, so `cargo clean` removes it.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target/tmp has a parent").join("sysupdate-debian13")
}

/// The cached Debian 13 root, made on first use. A debootstrap that fails or is killed
/// leaves only `root.partial`, which the next run removes. The tests of this binary run in
/// parallel and another binary may run at the same time: one thread and one process at a
/// time (a mutex and an `flock` on `lock`) makes it, the others wait and use it.
fn debian_root() -> PathBuf {
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _making = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = cache_dir();
    let root = dir.join("root");
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs).unwrap();
    let lock = std::fs::File::create(dir.join("lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    if root.join("usr/lib/systemd/systemd-sysupdate").is_file() {
        return root;
    }
    let partial = dir.join("root.partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).unwrap();
    }
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", "--include=systemd,systemd-container,dbus,gpg"])
        .arg(format!("--cache-dir={}", debs.display()))
        .args(["trixie"])
        .arg(&partial)
        .arg(sysext_tests::vm::debian_mirror())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debootstrap failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for leftover in std::fs::read_dir(partial.join("var/cache/apt/archives")).unwrap().flatten() {
        if leftover.path().extension().is_some_and(|e| e == "deb") {
            let _ = std::fs::remove_file(leftover.path());
        }
    }
    std::fs::rename(&partial, &root).unwrap();
    root
}

/// Runs `script` in a private mount namespace where `$M` is an overlay of the Debian root
/// (its upper layer in `work`, so the node keeps what earlier runs installed) with /proc,
/// /sys, /dev, /run and /tmp, and `$W` is `work`.
fn in_chroot(root: &Path, work: &Path, script: &str) -> Output {
    let prelude = format!(
        "set -eu
M='{m}'; W='{w}'
mkdir -p \"$W/up\" \"$W/ovl-work\" \"$M\"
mount --make-rprivate /
mount -t overlay overlay -o lowerdir='{root}',upperdir=\"$W/up\",workdir=\"$W/ovl-work\" \"$M\"
mount -t proc proc \"$M/proc\"
mount -t sysfs sysfs \"$M/sys\"
mount --bind /dev \"$M/dev\"
mount -t tmpfs tmpfs \"$M/run\"
mount -t tmpfs tmpfs \"$M/tmp\"
",
        m = work.join("merged").display(),
        w = work.display(),
        root = root.display(),
    );
    Command::new("unshare").args(["-m", "sh", "-c", &format!("{prelude}{script}")]).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A release in `<work>/release` of kubernetes images for the host's architecture.
struct Release {
    key: PrivateKey,
    dir: PathBuf,
    work: PathBuf,
    arch: Arch,
}

impl Release {
    /// v1.31.3 published and served by `composer serve` on loopback, with the server's URL as
    /// its base URL: published once with a placeholder, so there is a directory to serve, then
    /// again with the URL.
    fn served(work: &Path) -> (Release, Server) {
        let arch = Arch::host().expect("a supported host");
        let release =
            Release { key: PrivateKey::generate().unwrap(), dir: work.join("release"), work: work.to_owned(), arch };
        release.publish(&[release.image("v1.31.3", 1)], "http://127.0.0.1:9/");
        let server = Server::start(&release.dir, &[]);
        release.publish(&[], &server.url);
        (release, server)
    }

    fn image(&self, version: &str, seed: u64) -> NewImage {
        let made = common::squashfs_extension(&self.work, "kubernetes", version, self.arch, seed, 4096);
        bakery::release::new_image(&made).unwrap()
    }

    fn publish(&self, images: &[NewImage], base_url: &str) {
        let opts = PublishOptions {
            release_dir: &self.dir,
            key: &self.key,
            rotation: None,
            openpgp: true,
            base_url: Some(base_url.parse().unwrap()),
            valid_for: std::time::Duration::from_secs(86_400),
            now: Timestamp::now(),
            keep_generations: 3,
            fail_after: None,
        };
        publish(images, &opts).unwrap();
    }
}

fn stock_sysupdate_verifies_and_installs_each_new_version() {
    let arch = Arch::host().expect("a supported host");
    let root = debian_root();
    let version = Command::new("chroot").arg(&root).args(["/usr/lib/systemd/systemd-sysupdate", "--version"]).output();
    let version = text(&version.unwrap());
    assert!(version.starts_with("systemd 257"), "the chroot's sysupdate: {version}");

    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (release, server) = Release::served(w);
    let transfer = release.dir.join("kubernetes/kubernetes-v1.31.transfer");
    let transfer_text = std::fs::read_to_string(&transfer).unwrap();
    assert!(transfer_text.starts_with("[Transfer]\nVerify=yes\n"), "{transfer_text}");
    assert!(transfer_text.contains(&format!("Path={}kubernetes/\n", server.url)), "{transfer_text}");

    // The node: the release's transfer file in /etc/sysupdate.kubernetes.d/, its keyring
    // where systemd-pull looks (both names), and sysupdate run for that component.
    let setup = format!(
        "mkdir -p \"$M/etc/sysupdate.kubernetes.d\" \"$M/opt/extensions/kubernetes\" \"$M/etc/extensions\"
cp '{transfer}' \"$M/etc/sysupdate.kubernetes.d/\"
cp '{keyring}' \"$M/etc/systemd/import-pubring.gpg\"
cp '{keyring}' \"$M/etc/systemd/import-pubring.pgp\"
",
        transfer = transfer.display(),
        keyring = release.dir.join("import-pubring.gpg").display(),
    );
    let update = "chroot \"$M\" /usr/lib/systemd/systemd-sysupdate -C kubernetes update\n\
                  echo LINK=$(chroot \"$M\" readlink -f /etc/extensions/kubernetes.raw)\n\
                  ls \"$M/opt/extensions/kubernetes\"\n";
    let sha = |v: &str| {
        let name = format!("kubernetes-{v}-{arch}.raw");
        signing::Sha256Digest::of(&std::fs::read(release.dir.join(&name)).unwrap())
    };

    // 1. v1.31.3 is installed from nothing.
    let o = in_chroot(
        &root,
        w,
        &format!("{setup}{update}sha256sum \"$M/opt/extensions/kubernetes/kubernetes-v1.31.3-{arch}.raw\"\n"),
    );
    let out = text(&o);
    assert!(o.status.success(), "sysupdate failed:\n{out}");
    assert!(out.contains(&format!("LINK=/opt/extensions/kubernetes/kubernetes-v1.31.3-{arch}.raw")), "{out}");
    assert!(out.contains(&sha("v1.31.3").to_hex()), "the installed bytes are the published ones:\n{out}");
    assert!(server.log().iter().any(|l| l.contains(" /kubernetes/SHA256SUMS.gpg ")), "{:#?}", server.log());

    // 2. v1.31.4 is published: the same node (same overlay) installs it and moves the link.
    release.publish(&[release.image("v1.31.4", 2)], &server.url);
    let o = in_chroot(&root, w, update);
    let out = text(&o);
    assert!(o.status.success(), "sysupdate failed:\n{out}");
    assert!(out.contains(&format!("LINK=/opt/extensions/kubernetes/kubernetes-v1.31.4-{arch}.raw")), "{out}");
    assert!(out.contains(&format!("kubernetes-v1.31.3-{arch}.raw")), "the previous one is kept:\n{out}");

    // 3. A v1.31.5 whose checksum list was altered after signing (as a hostile mirror would):
    // sysupdate refuses it and the node stays on v1.31.4.
    release.publish(&[release.image("v1.31.5", 3)], &server.url);
    let sums = std::fs::canonicalize(release.dir.join("kubernetes/SHA256SUMS")).unwrap();
    let listed = std::fs::read_to_string(&sums).unwrap();
    std::fs::remove_file(&sums).unwrap();
    std::fs::write(&sums, listed.replacen(&sha("v1.31.5").to_hex(), &"0".repeat(64), 1)).unwrap();
    let o = in_chroot(&root, w, update);
    let out = text(&o);
    assert!(!o.status.success(), "sysupdate accepted a checksum list the key did not sign:\n{out}");
    assert!(out.contains("gpg: BAD signature"), "refused for another reason than the signature:\n{out}");
    assert!(!out.contains(&format!("v1.31.5-{arch}.raw →")) && !out.contains("Successfully installed"), "{out}");
    let o = in_chroot(&root, w, "echo LINK=$(chroot \"$M\" readlink -f /etc/extensions/kubernetes.raw)\n");
    assert!(
        text(&o).contains(&format!("LINK=/opt/extensions/kubernetes/kubernetes-v1.31.4-{arch}.raw")),
        "{}",
        text(&o)
    );
}

/// The agent's `--sysupdate` on a node that stock sysupdate then keeps current: `composer node
/// sync --sysupdate --root` into the Debian 13 root installs v1.31.3, the transfer file with
/// `Verify=yes` and the release's keyring where systemd-pull reads it; once v1.31.4 is
/// published, the chroot's systemd-sysupdate, with only what composer installed, verifies
/// `SHA256SUMS.gpg` and switches to it.
fn the_agents_sysupdate_files_verify_with_stock_sysupdate() {
    let arch = Arch::host().expect("a supported host");
    let root = debian_root();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (release, server) = Release::served(w);
    let pubkey = w.join("release.pub");
    std::fs::write(&pubkey, release.key.public().to_pem()).unwrap();
    let sync = format!(
        "'{composer}' node sync --index '{url}' --pubkey '{pubkey}' -e kubernetes@1.31 --sysupdate --root \"$M\" --retries 0 >/dev/null
head -2 \"$M/etc/sysupdate.kubernetes.d/kubernetes-v1.31.transfer\"
cmp '{keyring}' \"$M/etc/systemd/import-pubring.gpg\" && echo KEYRING=same
",
        composer = env!("CARGO_BIN_EXE_composer"),
        url = server.url,
        pubkey = pubkey.display(),
        keyring = release.dir.join("import-pubring.gpg").display(),
    );
    let o = in_chroot(&root, w, &sync);
    let out = text(&o);
    assert!(o.status.success(), "composer node sync failed:\n{out}");
    assert!(out.contains("[Transfer]\nVerify=yes\n") && out.contains("KEYRING=same"), "{out}");

    release.publish(&[release.image("v1.31.4", 2)], &server.url);
    let update = "chroot \"$M\" /usr/lib/systemd/systemd-sysupdate -C kubernetes update\n\
                  echo LINK=$(chroot \"$M\" readlink -f /etc/extensions/kubernetes.raw)\n";
    let o = in_chroot(&root, w, update);
    let out = text(&o);
    assert!(o.status.success(), "sysupdate failed:\n{out}");
    assert!(out.contains(&format!("LINK=/opt/extensions/kubernetes/kubernetes-v1.31.4-{arch}.raw")), "{out}");
    assert!(server.log().iter().any(|l| l.contains(" /kubernetes/SHA256SUMS.gpg ")), "{:#?}", server.log());
}

fn main() -> std::process::ExitCode {
    let tools = ["debootstrap", "unshare", "chroot", "mksquashfs"];
    sysext_tests::harness::run(vec![
        sysext_tests::test!(stock_sysupdate_verifies_and_installs_each_new_version).root().tools(&tools),
        sysext_tests::test!(the_agents_sysupdate_files_verify_with_stock_sysupdate).root().tools(&tools),
    ])
}
