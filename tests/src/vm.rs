//! Real first boots: Debian guests under QEMU (TCG) for the boot tier.
//!
//! [`debian`] builds a Debian disk once per [`Recipe`] ([`DEBIAN12`] with systemd 252,
//! [`DEBIAN13`] with systemd 257) and caches it: `debootstrap`
//! (minbase plus the kernel, systemd, udev, dbus, cloud-init and curl), then a few edits
//! (fstab by label, systemd-networkd with DHCP, cloud-init limited to the NoCloud
//! datasource, an empty machine-id so the boot is a first boot, the [`PROBE`]), written with
//! `mkfs.ext4 -d` into Ubuntu's cloud-image layout ([`crate::disk::ubuntu_layout`]: root
//! `cloudimg-rootfs` on partition 1). systemd-sysext.service stays disabled, as Debian and
//! Ubuntu ship it. The kernel and initrd are copied out of the tree and booted directly
//! (`-kernel`/`-initrd`, `root=LABEL=cloudimg-rootfs`), so no bootloader is involved.
//!
//! [`Guest::boot`] runs one boot of a disk: `-no-reboot`, the serial console into a file,
//! and a second serial port that the guest's [`PROBE`] writes its report to once the boot
//! has settled (`key=value` lines, see [`Report`]) before it powers the guest off. The
//! network is QEMU's user-mode network with `restrict=on` (nothing outside QEMU is reachable
//! from the guest) and at most one forward, from `10.0.2.100:8080` in the guest to a port on
//! this machine's 127.0.0.1. The QEMU process is killed when the [`Guest`] run ends, however
//! it ends: by its handle's drop, and by `setpriv --pdeathsig KILL` when the test process
//! itself is killed.
//!
//! The cache lives in the directory the caller names, in a subdirectory named by a hash of
//! the recipe, so changing the recipe rebuilds and reruns reuse it. `debootstrap` downloads
//! from `SYSEXT_TESTS_DEBIAN_MIRROR` (default `http://deb.debian.org/debian`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use signing::Sha256Digest;

use crate::disk::{self, UBUNTU_ROOT_LABEL};

/// What building and booting a guest runs: declare these as the boot tests' tools.
pub const VM_TOOLS: [&str; 9] =
    ["qemu-system-x86_64", "qemu-img", "debootstrap", "cp", "sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "setpriv"];

/// Environment variable naming the Debian mirror debootstrap downloads from.
pub const MIRROR_ENV: &str = "SYSEXT_TESTS_DEBIAN_MIRROR";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// The Debian mirror debootstrap downloads from: [`MIRROR_ENV`], else deb.debian.org.
pub fn debian_mirror() -> String {
    std::env::var(MIRROR_ENV).unwrap_or_else(|_| DEFAULT_MIRROR.to_owned())
}

/// The guest's address of the one port forwarded to this machine's loopback.
pub const FORWARD_ADDR: &str = "10.0.2.100:8080";

/// Set in QEMU's environment (and so in the relay's, see [`relay_if_requested`]) to the
/// loopback address the guest's forwarded connections go to.
pub const RELAY_ENV: &str = "SYSEXT_TESTS_VM_RELAY";

/// debootstrap resolves plain dependencies only: python3-cffi-backend provides the virtual
/// packages python3-cryptography (cloud-init's) depends on.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "linux-image-amd64",
    "cloud-init",
    "python3-cffi-backend",
    "curl",
    "e2fsprogs",
    "kmod",
];

/// Debian 12: systemd 252, which does not reload the manager after a merge. Any change to a
/// recipe (or to [`PROBE`] and [`PROBE_UNIT`]) gives it a new cache key.
pub const DEBIAN12: Recipe = Recipe {
    name: "debian12",
    suite: "bookworm",
    systemd: 252,
    packages: PACKAGES,
    root_mib: 2048,
    kernel_cmdline: "console=ttyS0 panic=-1 net.ifnames=0",
};

/// Debian 13: systemd 257, the version current Flatcar ships, whose systemd-sysext reloads
/// the manager after a merge when an image asks for it.
pub const DEBIAN13: Recipe = Recipe {
    name: "debian13",
    suite: "trixie",
    systemd: 257,
    packages: PACKAGES,
    root_mib: 2048,
    kernel_cmdline: "console=ttyS0 panic=-1 net.ifnames=0",
};

/// How the base image is made.
#[derive(Clone, Copy, Debug)]
pub struct Recipe {
    /// What the cache directories are named after.
    pub name: &'static str,
    /// Debian suite, as debootstrap names it.
    pub suite: &'static str,
    /// The systemd version the suite ships (checked against the built tree).
    pub systemd: u32,
    /// Packages added to debootstrap's minbase.
    pub packages: &'static [&'static str],
    /// Size of the root partition.
    pub root_mib: u64,
    /// Kernel command line besides `root=`.
    pub kernel_cmdline: &'static str,
}

/// Files written into the tree before debootstrap runs (path, mode, contents): dpkg without
/// fsync (the tree is thrown away if anything fails), and an initrd with only the modules
/// the guest's root needs, instead of most of them: it is built three times while
/// debootstrap configures, and booting a small one under TCG is much faster.
const PRESEED: &[(&str, u32, &str)] = &[
    ("etc/dpkg/dpkg.cfg.d/boot-tier-unsafe-io", 0o644, "force-unsafe-io\n"),
    ("etc/initramfs-tools/conf.d/boot-tier", 0o644, "MODULES=list\n"),
    (
        "etc/initramfs-tools/hooks/boot-tier",
        0o755,
        "#!/bin/sh\n# The modules a QEMU guest with its root on virtio-blk needs (MODULES=list).\n[ \"$1\" = prereqs ] && exit 0\n. /usr/share/initramfs-tools/hook-functions\nmanual_add_modules virtio_pci virtio_blk ext4 crc32c_generic\n",
    ),
];

/// Removed from the tree after debootstrap (they only served building it).
const UNSEED: &[&str] = &["etc/dpkg/dpkg.cfg.d/boot-tier-unsafe-io"];

/// Units masked in the guest: periodic jobs and helpers that only slow a TCG boot down and
/// have nothing to do with what the tier checks.
const MASKED: &[&str] = &[
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "getty-static.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
    "systemd-pstore.service",
];

/// Files the recipe writes into the tree (path, mode, contents).
const FILES: &[(&str, u32, &str)] = &[
    ("etc/fstab", 0o644, "LABEL=cloudimg-rootfs / ext4 defaults 0 1\n"),
    ("etc/hostname", 0o644, "boot-tier\n"),
    ("etc/systemd/network/20-wired.network", 0o644, "[Match]\nName=eth*\n\n[Network]\nDHCP=ipv4\n"),
    // Only the NoCloud seed, and the network stays systemd-networkd's: cloud-init has no
    // renderer for it on Debian 12 and would otherwise write an ifupdown config nothing reads.
    // No locales package in minbase: the locale module would only fail.
    (
        "etc/cloud/cloud.cfg.d/90-boot-tier.cfg",
        0o644,
        "datasource_list: [NoCloud]\nnetwork: {config: disabled}\nlocale: false\n",
    ),
    ("usr/local/libexec/boot-probe", 0o755, PROBE),
    ("etc/systemd/system/boot-probe.service", 0o644, PROBE_UNIT),
];

/// Enablement links the recipe creates (link, target), as `systemctl enable` would.
const LINKS: &[(&str, &str)] = &[
    (
        "etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        "/lib/systemd/system/systemd-networkd.service",
    ),
    ("etc/systemd/system/sockets.target.wants/systemd-networkd.socket", "/lib/systemd/system/systemd-networkd.socket"),
    (
        "etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service",
        "/lib/systemd/system/systemd-networkd-wait-online.service",
    ),
    ("etc/systemd/system/multi-user.target.wants/boot-probe.service", "/etc/systemd/system/boot-probe.service"),
];

/// The units whose state the probe reports.
pub const PROBED_UNITS: [&str; 7] = [
    "containerd.service",
    "kubelet.service",
    "cni-plugins.service",
    "systemd-sysext.service",
    "sysext-units.service",
    "composer-provision.service",
    "cloud-final.service",
];

/// The unit that runs [`PROBE`]: `Type=simple`, so its own start job does not hold up the
/// end of the boot it waits for.
pub const PROBE_UNIT: &str = "[Unit]
Description=Boot tier probe: report to the host on ttyS1, then power off
After=basic.target

[Service]
Type=simple
ExecStart=/usr/local/libexec/boot-probe
StandardOutput=journal+console
StandardError=journal+console
";

/// The guest side of the report: waits until every job of the boot is done (cloud-init's
/// final stage included), then up to 30 s more for the extensions' services to be up, and
/// writes what the host asserts on to ttyS1 as `key=value` lines ending with `done=1`.
pub const PROBE: &str = r#"#!/bin/sh
# boot-probe: reports this boot to the test on the host (second serial port), then powers off.
set -u
out=/dev/ttyS1
stty -F "$out" raw -echo 2>/dev/null || true
say() { printf '%s=%s\n' "$1" "$2" >"$out"; }
oneline() { tr '\n' ' ' | sed 's/ *$//'; }
say probe started
timeout 900 systemctl is-system-running --wait >/dev/null 2>&1
# cloud-init's stages are jobs of the boot, but what they start may not be: wait for it too.
if command -v cloud-init >/dev/null && [ -e /run/cloud-init/enabled ]; then
    timeout 900 cloud-init status --wait >/dev/null 2>&1
    timeout 900 systemctl is-system-running --wait >/dev/null 2>&1
fi
say settled_after_s "$(cut -d' ' -f1 /proc/uptime)"
say state "$(systemctl is-system-running 2>&1)"
# The services an extension ships may start a little after the boot settled (Upholds=, a
# restart delay); give them 30 s, and report whatever they are then.
i=0
while [ "$i" -lt 30 ]; do
    if [ "$(systemctl show -p ActiveState --value containerd.service)" = active ] &&
        [ "$(systemctl show -p ActiveState --value cni-plugins.service)" = active ] &&
        [ "$(systemctl show -p ExecMainStartTimestampMonotonic --value kubelet.service)" != 0 ]; then
        break
    fi
    sleep 1
    i=$((i + 1))
done
say waited_s "$i"
say uptime_s "$(cut -d' ' -f1 /proc/uptime)"
say boot_id "$(cat /proc/sys/kernel/random/boot_id)"
say systemd "$(systemctl --version | head -n1)"
say merged "$(ls /usr/lib/extension-release.d 2>/dev/null | oneline)"
say sysext_status "$(systemd-sysext status 2>&1 | oneline)"
say sysext_enabled "$(systemctl is-enabled systemd-sysext.service 2>&1)"
say kubectl "$(kubectl version --client 2>&1 | oneline)"
say containerd_bin "$(command -v containerd)"
say opt_cni_bin "$(ls /opt/cni/bin 2>/dev/null | oneline)"
say cloud_init "$(cloud-init status 2>&1 | oneline)"
say failed "$(systemctl --failed --plain --no-legend 2>&1 | oneline)"
say jobs "$(systemctl list-jobs --no-legend 2>/dev/null | wc -l)"
say reloads "$(journalctl -b -o cat _PID=1 2>/dev/null | grep -c '^Reloading')"
for u in containerd.service kubelet.service cni-plugins.service systemd-sysext.service sysext-units.service composer-provision.service cloud-final.service; do
    systemctl show -p LoadState,ActiveState,SubState,Result,NRestarts,ExecMainStartTimestampMonotonic "$u" |
        while IFS= read -r line; do say "$u.${line%%=*}" "${line#*=}"; done
    # What the manager did with it, in order: S a start, R a restart it scheduled itself
    # (Restart=). One snapshot of the journal, so the sequence is consistent.
    say "$u.events" "$(journalctl -b -o cat _PID=1 UNIT="$u" 2>/dev/null |
        sed -n -e 's/^Starting .*/S/p' -e 's/.*Scheduled restart job.*/R/p' | tr -d '\n')"
    say "$u.enabled" "$(systemctl is-enabled "$u" 2>&1)"
done
say done 1
# For whoever reads the console after a failure: this boot's journal.
journalctl -b --no-pager -o short-monotonic >/dev/console 2>&1
systemctl poweroff --no-block
"#;

/// A cached base image.
#[derive(Debug)]
pub struct BaseImage {
    /// The raw disk (Ubuntu cloud-image layout); never booted, only copied or used as a
    /// backing file.
    pub disk: PathBuf,
    /// The kernel to boot.
    pub kernel: PathBuf,
    /// Its initrd.
    pub initrd: PathBuf,
    /// `key=value` facts recorded while building (systemd version, kernel, packages).
    pub facts: BTreeMap<String, String>,
    /// How long building took, if this process built it.
    pub built_in: Option<Duration>,
    /// What it was built from.
    pub recipe: Recipe,
}

impl BaseImage {
    /// The kernel command line.
    pub fn cmdline(&self) -> String {
        format!("root=LABEL={UBUNTU_ROOT_LABEL} ro {}", self.recipe.kernel_cmdline)
    }
}

fn key(text: &str) -> String {
    Sha256Digest::of(text.as_bytes()).to_hex()[..16].to_owned()
}

/// The cache key of the debootstrap stage: suite, packages and what is written before it.
pub fn tree_key(recipe: &Recipe) -> String {
    let mut text = format!("{}\n{:?}\n", recipe.suite, recipe.packages);
    for (path, mode, contents) in PRESEED {
        let _ = writeln!(text, "{path} {mode:o}\n{contents}");
    }
    key(&text)
}

/// The cache key of the image: the tree's and everything done to it after debootstrap.
pub fn recipe_key(recipe: &Recipe) -> String {
    let mut text = format!("{}\n{recipe:?}\n{UNSEED:?}\n{MASKED:?}\n", tree_key(recipe));
    for (path, mode, contents) in FILES {
        let _ = writeln!(text, "{path} {mode:o}\n{contents}");
    }
    for (link, target) in LINKS {
        let _ = writeln!(text, "{link} -> {target}");
    }
    key(&text)
}

/// The base image of `recipe`, built into `cache/<name>-<key>` unless it is there already
/// (from the debootstrap tree in `cache/debootstrap-<suite>-<key>`, itself cached, so changing
/// only what is done after debootstrap costs a minute, not a download). Built once per process;
/// a failed build fails every caller with its message, without building again. Concurrent
/// builds (two test binaries) each build into a scratch directory and the first rename wins.
///
/// # Panics
/// When building fails (debootstrap's log is quoted).
pub fn debian(cache: &Path, recipe: &Recipe) -> &'static BaseImage {
    type Built = &'static Result<BaseImage, String>;
    // One build at a time: two debootstraps on two cores only slow each other down.
    static BUILT: Mutex<BTreeMap<&'static str, Built>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let result: Built = built.entry(recipe.name).or_insert_with(|| {
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load_or_build(cache, recipe))).map_err(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default()
            });
        Box::leak(Box::new(result))
    });
    drop(built);
    match result {
        Ok(base) => base,
        Err(why) => panic!("building the {} ({}) base image failed: {why}", recipe.name, recipe.suite),
    }
}

fn load_or_build(cache: &Path, recipe: &Recipe) -> BaseImage {
    let dir = cache.join(format!("{}-{}", recipe.name, recipe_key(recipe)));
    let mut built_in = None;
    if !dir.join("facts").is_file() {
        let started = Instant::now();
        let tree = debootstrapped(cache, recipe);
        build(cache, recipe, &tree, &dir);
        prune(cache, &format!("{}-", recipe.name), &dir);
        built_in = Some(started.elapsed());
    }
    let facts = std::fs::read_to_string(dir.join("facts"))
        .expect("reading the cached image's facts")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    BaseImage {
        disk: dir.join("disk.raw"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        facts,
        built_in,
        recipe: *recipe,
    }
}

/// Removes the other cached builds of one stage (older recipes).
fn prune(cache: &Path, prefix: &str, keep: &Path) {
    for e in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) && e.path() != keep {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Unmounts whatever is still mounted below a directory (debootstrap mounts /proc and /sys
/// in its target while configuring) when dropped, then removes the directory.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let prefix = format!("{}/", self.0.display());
        let mut below: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in below {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The debootstrap tree for [`tree_key`], built unless cached.
fn debootstrapped(cache: &Path, recipe: &Recipe) -> PathBuf {
    let prefix = format!("debootstrap-{}-", recipe.suite);
    let dir = cache.join(format!("{prefix}{}", tree_key(recipe)));
    let tree = dir.join("tree");
    if dir.join("complete").is_file() {
        return tree;
    }
    std::fs::create_dir_all(cache).expect("creating the image cache");
    let scratch = Scratch(cache.join(format!(".debootstrap-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    let target = scratch.0.join("tree");
    std::fs::create_dir_all(&target).expect("creating the debootstrap target");
    for (path, mode, contents) in PRESEED {
        write(&target.join(path), contents.as_bytes(), *mode);
    }
    let mirror = debian_mirror();
    let log = scratch.0.join("debootstrap.log");
    let status = disk::tool("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", recipe.packages.join(",")))
        .arg(recipe.suite)
        .arg(&target)
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("creating debootstrap's log"))
        .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).expect("log")))
        .status()
        .expect("running debootstrap");
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let inner = std::fs::read_to_string(target.join("debootstrap/debootstrap.log")).unwrap_or_default();
        panic!(
            "debootstrap {} from {mirror} failed ({status}):\n{}\n{}",
            recipe.suite,
            tail(&text, 30),
            tail(&inner, 40)
        );
    }
    for e in std::fs::read_dir(target.join("var/cache/apt/archives")).into_iter().flatten().flatten() {
        if e.path().is_file() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    std::fs::write(scratch.0.join("complete"), format!("mirror={mirror}\n")).expect("marking the tree complete");
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::rename(&scratch.0, &dir).is_err() {
        assert!(dir.join("complete").is_file(), "could not move the tree to {}", dir.display());
    }
    prune(cache, &prefix, &dir);
    tree
}

/// The image in `dir`, from a copy of the debootstrap `tree`.
fn build(cache: &Path, recipe: &Recipe, debootstrapped: &Path, dir: &Path) {
    let scratch = Scratch(cache.join(format!(".building-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    std::fs::create_dir_all(&scratch.0).expect("creating a scratch directory");
    let tree = scratch.0.join("tree");
    disk::run(disk::tool("cp").args(["-a", "--reflink=auto"]).arg(debootstrapped).arg(&tree));

    for path in UNSEED {
        std::fs::remove_file(tree.join(path)).expect("removing a build-time file");
    }
    for (path, mode, contents) in FILES {
        write(&tree.join(path), contents.as_bytes(), *mode);
    }
    for (link, target) in LINKS {
        let at = tree.join(link);
        std::fs::create_dir_all(at.parent().expect("parent")).expect("mkdir");
        let _ = std::fs::remove_file(&at);
        std::os::unix::fs::symlink(target, &at).expect("creating an enablement link");
    }
    for unit in MASKED {
        let at = tree.join("etc/systemd/system").join(unit);
        let _ = std::fs::remove_file(&at);
        std::os::unix::fs::symlink("/dev/null", &at).expect("masking a unit");
    }
    // An empty machine-id makes the boot a first boot (ConditionFirstBoot=, a new id).
    std::fs::write(tree.join("etc/machine-id"), b"").expect("emptying machine-id");
    let _ = std::fs::remove_file(tree.join("var/lib/dbus/machine-id"));
    for e in std::fs::read_dir(tree.join("var/lib/apt/lists")).into_iter().flatten().flatten() {
        if e.path().is_file() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    assert!(
        !tree.join("etc/systemd/system/sysinit.target.wants/systemd-sysext.service").exists(),
        "Debian enabled systemd-sysext.service; the tier needs it disabled as on Ubuntu"
    );

    // Facts the tests report.
    let mut facts = String::new();
    let shared = std::fs::read_dir(tree.join("usr/lib/x86_64-linux-gnu/systemd"))
        .expect("systemd's private library directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find_map(|n| n.strip_prefix("libsystemd-shared-").and_then(|r| r.strip_suffix(".so")).map(str::to_owned))
        .expect("libsystemd-shared-*.so");
    assert!(
        shared.split(['.', '-', '~']).next() == Some(recipe.systemd.to_string().as_str()),
        "{} ships libsystemd-shared-{shared}.so, not systemd {}",
        recipe.suite,
        recipe.systemd
    );
    let _ = writeln!(facts, "systemd={shared}");
    let boot: Vec<String> = std::fs::read_dir(tree.join("boot"))
        .expect("/boot")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let kernel = boot.iter().find(|n| n.starts_with("vmlinuz-")).expect("a kernel in /boot");
    let version = kernel.trim_start_matches("vmlinuz-");
    let initrd = format!("initrd.img-{version}");
    assert!(boot.contains(&initrd), "no {initrd} in /boot: {boot:?}");
    let _ = writeln!(facts, "kernel={version}");
    let _ = writeln!(facts, "suite={}", recipe.suite);
    std::fs::copy(tree.join("boot").join(kernel), scratch.0.join("vmlinuz")).expect("copying the kernel");
    std::fs::copy(tree.join("boot").join(&initrd), scratch.0.join("initrd.img")).expect("copying the initrd");

    disk::ubuntu_layout(&scratch.0.join("disk.raw"), &tree, recipe.root_mib);
    std::fs::remove_dir_all(&tree).expect("removing the tree");
    std::fs::write(scratch.0.join("facts"), facts).expect("writing facts");
    let _ = std::fs::remove_dir_all(dir);
    if std::fs::rename(&scratch.0, dir).is_err() {
        assert!(dir.join("facts").is_file(), "could not move the built image to {}", dir.display());
    }
}

fn write(path: &Path, contents: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A copy-on-write disk (qcow2) backed by `base`, so a test's boot never changes it.
pub fn overlay(base: &Path, out: &Path) {
    disk::run(disk::tool("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]).arg(base).arg(out));
}

/// A NoCloud seed: a vfat volume labelled `CIDATA` holding `user-data` and `meta-data`.
pub fn nocloud_seed(out: &Path, user_data: &str, instance_id: &str) {
    std::fs::File::create(out).and_then(|f| f.set_len(16 << 20)).expect("creating the seed");
    disk::mkfs_vfat(out, 0, 16 << 20, "CIDATA");
    let dir = out.with_extension("d");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("user-data"), user_data).expect("user-data");
    std::fs::write(dir.join("meta-data"), format!("instance-id: {instance_id}\nlocal-hostname: boot-tier\n"))
        .expect("meta-data");
    for f in ["user-data", "meta-data"] {
        disk::run(disk::tool("mcopy").arg("-i").arg(out).arg(dir.join(f)).arg(format!("::{f}")));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One boot of a disk.
#[derive(Debug)]
pub struct Guest<'a> {
    base: &'a BaseImage,
    disk: PathBuf,
    dir: PathBuf,
    seed: Option<PathBuf>,
    forward_to: Option<u16>,
    cmdline: Vec<String>,
    timeout: Duration,
}

/// What a boot produced.
#[derive(Debug)]
pub struct Boot {
    /// The serial console.
    pub console: String,
    /// The probe's report.
    pub report: Report,
    /// From starting QEMU to its exit.
    pub elapsed: Duration,
}

/// The probe's `key=value` lines: `<unit>.<Property>` (`ActiveState`, `SubState`, `Result`,
/// `NRestarts`, `ExecMainStartTimestampMonotonic`, `LoadState`), `<unit>.events` and
/// `<unit>.enabled` for the units in [`PROBED_UNITS`], and the facts the probe lists.
#[derive(Debug, Clone, Default)]
pub struct Report(pub BTreeMap<String, String>);

impl Report {
    /// Parses the report text; later keys win.
    pub fn parse(text: &str) -> Report {
        Report(
            text.lines()
                .map(|l| l.trim_end_matches('\r'))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// The value of `key`, or `""`.
    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or("", String::as_str)
    }

    /// A property of a probed unit (`ActiveState`, `SubState`, `NRestarts`, `events`, …).
    pub fn unit(&self, unit: &str, property: &str) -> &str {
        self.get(&format!("{unit}.{property}"))
    }

    /// Whether the probe finished.
    pub fn complete(&self) -> bool {
        self.get("done") == "1"
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, v) in &self.0 {
            writeln!(f, "  {k}={v}")?;
        }
        Ok(())
    }
}

/// Held while a guest runs.
static BOOTING: Mutex<()> = Mutex::new(());

/// The QEMU process; killed and reaped on drop.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl<'a> Guest<'a> {
    /// A boot of `disk` (raw or qcow2) with `base`'s kernel; console and report files go
    /// into `dir`.
    pub fn new(base: &'a BaseImage, disk: &Path, dir: &Path) -> Self {
        Self {
            base,
            disk: disk.to_owned(),
            dir: dir.to_owned(),
            seed: None,
            forward_to: None,
            cmdline: Vec::new(),
            timeout: Duration::from_secs(1800),
        }
    }

    /// Attaches a NoCloud seed (see [`nocloud_seed`]).
    pub fn seed(mut self, seed: &Path) -> Self {
        self.seed = Some(seed.to_owned());
        self
    }

    /// Gives the guest a network whose only reachable address is [`FORWARD_ADDR`], forwarded
    /// to `127.0.0.1:port` on this machine.
    pub fn forward(mut self, port: u16) -> Self {
        self.forward_to = Some(port);
        self
    }

    /// Adds a kernel command line argument.
    pub fn kernel_arg(mut self, arg: &str) -> Self {
        self.cmdline.push(arg.to_owned());
        self
    }

    /// Boots, waits for the guest to power off (at most the timeout, then QEMU is killed)
    /// and returns the console and the report.
    ///
    /// # Panics
    /// When QEMU fails or times out, or the probe did not finish; the console's tail is
    /// quoted.
    pub fn boot(self) -> Boot {
        std::fs::create_dir_all(&self.dir).expect("mkdir");
        let console = self.dir.join("console.log");
        let report = self.dir.join("report.log");
        let format = if self.disk.extension().is_some_and(|e| e == "qcow2") { "qcow2" } else { "raw" };
        // QEMU dies with the thread that started it (PR_SET_PDEATHSIG, kept across setpriv's
        // exec), so a test process killed by a signal or a timeout leaves no guest behind;
        // a panic or a normal end kills it through the handle's drop.
        let mut cmd = disk::tool("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", "qemu-system-x86_64"]);
        // One TCG thread for both vCPUs: with a thread per vCPU, Debian 13's kernel (6.12)
        // sometimes hit an int3 of its own live code patching (text_poke_bp) in a
        // translation the other vCPU still ran, and died ("Oops: int3" in sched_clock_cpu)
        // before userspace. Serialised vCPUs never run stale code.
        cmd.args(["-machine", "pc", "-accel", "tcg,thread=single", "-cpu", "max", "-smp", "2", "-m", "1024"])
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.base.kernel)
            .arg("-initrd")
            .arg(&self.base.initrd)
            .arg("-append")
            .arg([self.base.cmdline()].into_iter().chain(self.cmdline.iter().cloned()).collect::<Vec<_>>().join(" "))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format={format},cache=unsafe", qemu_path(&self.disk)))
            .arg("-serial")
            .arg(format!("file:{}", qemu_path(&console)))
            .arg("-serial")
            .arg(format!("file:{}", qemu_path(&report)));
        if let Some(seed) = &self.seed {
            cmd.arg("-drive").arg(format!("file={},if=virtio,format=raw,readonly=on", qemu_path(seed)));
        }
        // Always a network (DHCP from QEMU itself, so network-online.target is reached),
        // restricted: nothing beyond QEMU's own addresses and the one forward. The forward
        // runs a relay per connection (`cmd:`): a `tcp:` character device instead would be
        // one connection to the server for the whole boot, which the server closes when it
        // idles, after which the guest's connections go nowhere.
        let mut nic = "user,model=virtio-net-pci,restrict=on".to_owned();
        if let Some(port) = self.forward_to {
            let exe = std::env::current_exe().expect("the test binary's path");
            let exe = exe
                .to_str()
                .filter(|p| !p.contains(['\'', ',', ' ']))
                .unwrap_or_else(|| panic!("{} cannot be named in QEMU's guestfwd= option", exe.display()));
            nic.push_str(&format!(",guestfwd=tcp:{FORWARD_ADDR}-cmd:{exe}"));
            cmd.env(RELAY_ENV, format!("127.0.0.1:{port}"));
        }
        cmd.arg("-nic").arg(nic);
        let qemu_log = self.dir.join("qemu.log");
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&qemu_log).expect("qemu log"))
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&qemu_log).expect("qemu log")));
        // One guest at a time: two TCG guests on a 2-core machine would each boot at half
        // speed (and past their timeouts under load).
        let _one = BOOTING.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let mut qemu = Qemu(cmd.spawn().expect("starting qemu-system-x86_64 under setpriv"));
        let status = loop {
            if let Some(status) = qemu.0.try_wait().expect("waiting for qemu") {
                break status;
            }
            if started.elapsed() > self.timeout {
                drop(qemu);
                panic!(
                    "the guest did not power off within {:?}; console:\n{}",
                    self.timeout,
                    tail(&read_lossy(&console), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let elapsed = started.elapsed();
        drop(qemu);
        let console_text = read_lossy(&console);
        let report = Report::parse(&read_lossy(&report));
        assert!(
            status.success(),
            "qemu exited with {status}: {}\nconsole:\n{}",
            read_lossy(&qemu_log),
            tail(&console_text, 60)
        );
        assert!(
            report.complete(),
            "the probe did not finish; report:\n{report}\nconsole:\n{}",
            tail(&console_text, 80)
        );
        Boot { console: console_text, report, elapsed }
    }
}

/// Makes this process the relay for one forwarded guest connection when QEMU started it for
/// one ([`RELAY_ENV`] set): copies standard input (the guest's connection) to a TCP
/// connection to that address and what comes back to standard output, then exits. Only a
/// loopback address is accepted. Call it first thing in a boot test's `main`.
pub fn relay_if_requested() {
    let Some(to) = std::env::var_os(RELAY_ENV) else { return };
    // Standard error is the guest's connection too: say nothing on failure, exit non-zero.
    let code = match to.to_str().and_then(|t| t.parse::<std::net::SocketAddr>().ok()) {
        Some(addr) if addr.ip().is_loopback() => match relay(addr) {
            Ok(()) => 0,
            Err(_) => 1,
        },
        _ => 2,
    };
    std::process::exit(code);
}

fn relay(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let server = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    let mut up = server.try_clone()?;
    let upstream = std::thread::spawn(move || {
        let copied = std::io::copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
        copied
    });
    let mut down = &server;
    std::io::copy(&mut down, &mut std::io::stdout().lock())?;
    // The server is done; the guest may still be sending (it should not), ignore it.
    drop(upstream);
    Ok(())
}

/// A path in a QEMU option value, where a comma would end the value.
fn qemu_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

fn read_lossy(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

/// How many times the guest's kernel started, from its console (`-no-reboot` ends QEMU at
/// a reboot, so a report from a second boot cannot exist; this says so explicitly).
pub fn kernel_starts(console: &str) -> usize {
    // The kernel's own banner, `[    0.000000] Linux version …`; not the same message in the
    // journal the probe copies to the console (`[    0.000000] host kernel: Linux version …`).
    console
        .lines()
        .filter(|l| {
            let text = l.trim_start_matches('\r');
            let after = text.strip_prefix('[').and_then(|t| t.split_once("] ")).map_or(text, |(_, rest)| rest);
            after.starts_with("Linux version ")
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_parses_probe_lines() {
        let r = Report::parse("probe=started\r\ncontainerd.service.ActiveState=active\nmerged=a b\ndone=1\n");
        assert!(r.complete());
        assert_eq!(r.unit("containerd.service", "ActiveState"), "active");
        assert_eq!(r.get("merged"), "a b");
        assert_eq!(r.get("missing"), "");
        assert!(!Report::parse("probe=started\n").complete());
    }

    #[test]
    fn the_key_follows_the_recipe() {
        assert_eq!(recipe_key(&DEBIAN12), recipe_key(&DEBIAN12));
        assert_eq!(recipe_key(&DEBIAN12).len(), 16);
        // Each suite has a tree and an image of its own.
        assert_ne!(tree_key(&DEBIAN12), tree_key(&DEBIAN13));
        assert_ne!(recipe_key(&DEBIAN12), recipe_key(&DEBIAN13));
        // The report ends with done=1, and the guest powers off last (after copying its
        // journal to the console).
        let done = PROBE.find("say done 1\n").expect("the probe says done");
        assert!(PROBE.ends_with("\nsystemctl poweroff --no-block\n"));
        assert!(!PROBE[done + 1..].contains("say "), "nothing is reported after done=1");
        for u in PROBED_UNITS {
            assert!(PROBE.contains(u), "the probe reports {u}");
        }
    }

    #[test]
    fn kernel_starts_counts_the_banner_not_the_journal_copy() {
        let console = "[    0.000000] Linux version 6.1.0-50-amd64 (debian-kernel@lists.debian.org)\n\
                       [    1.2] systemd[1]: started\n\
                       [    0.000000] boot-tier kernel: Linux version 6.1.0-50-amd64\n";
        assert_eq!(kernel_starts(console), 1);
        assert_eq!(kernel_starts(&format!("{console}\r[    0.000000] Linux version 6.1.0\n")), 2);
        assert_eq!(kernel_starts("no kernel here\n"), 0);
    }

    #[test]
    fn commas_in_paths_are_escaped_for_qemu() {
        assert_eq!(qemu_path(Path::new("/tmp/a,b")), "/tmp/a,,b");
    }
}
