//! The boot tier: real first boots of Debian guests under QEMU (TCG), checked from inside the
//! guest by its probe (see `sysext_tests::vm`): Debian 12 (systemd 252, which does not reload
//! the manager after a merge) and Debian 13 (systemd 257, the generation current Flatcar
//! ships, which reloads it when an image asks), each made with debootstrap in Ubuntu's
//! cloud-image layout with systemd-sysext.service disabled as on Ubuntu. Every test runs on
//! both.
//!
//! * A node provisioned by cloud-init: a NoCloud seed holds `composer provision cloud-init`
//!   output, which fetches from `composer serve` (the real binary) on 127.0.0.1 serving a
//!   release published with `bakery publish`; the guest reaches it through QEMU's one
//!   forward, from 10.0.2.100:8080 to that port on this machine's loopback.
//! * A disk made by `composer compose` from the same base disk, booted without cloud-init.
//!
//! Both must end with kubernetes, containerd and cni merged, containerd.service active,
//! kubelet.service started (without a kubeadm config it exits and is restarted every 10 s,
//! as on a real node waiting for `kubeadm join`), cni-plugins.service done and /opt/cni/bin
//! populated, in one boot, each unit started once.
//!
//! The extension images are bakery builds of the real recipes (units, drop-ins, the CNI
//! script) around stand-in binaries from the fake upstream: tiny static executables that
//! print their name and exit, except `containerd`, which must stay running for the unit to
//! be active: a tiny static executable that prints that it is a stand-in, tells systemd it
//! is ready (`Type=notify`, on the system manager's `/run/systemd/notify`) and waits for a
//! signal (`sysext_tests::elf::notify_daemon_executable`).
//!
//! Each boot takes 35–90 s under TCG, depending on the machine's load; the base image is
//! built once (debootstrap, a few minutes) and cached under the target directory by a hash
//! of its recipe (`SYSEXT_TESTS_VM_CACHE` overrides where).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use common::server::Server;
use common::*;
use sysext_tests::elf::notify_daemon_executable;
use sysext_tests::harness::Need;
use sysext_tests::harness::Test;
use sysext_tests::upstream::{message, CNI_PLUGINS};
use sysext_tests::vm::{self, BaseImage, Boot, Guest, Recipe, Report, DEBIAN12, DEBIAN13, VM_TOOLS};
use sysext_tests::{tiny_executable, Arch, FakeUpstream, FixtureServer};

/// What `composer provision` is asked for; resolved in the signed index.
const CHANNELS: [&str; 3] = ["kubernetes@1.31", "containerd@2.0", "cni@latest"];
/// Where the guest downloads from: QEMU forwards it to `composer serve` on 127.0.0.1.
const GUEST_BASE_URL: &str = "http://10.0.2.100:8080/";

/// What the containerd stand-in prints (in the guest's journal) before it says it is ready.
const CONTAINERD_STANDIN: &str = "containerd STAND-IN from composer's boot tier (not containerd): ready, waiting\n";

fn cache() -> PathBuf {
    std::env::var_os("SYSEXT_TESTS_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm"))
}

/// Where a boot's console, report and QEMU log are kept (overwritten by the next run), so a
/// failure can be looked at after the scratch directory is gone.
fn logs(recipe: &Recipe, test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot-logs").join(recipe.name).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn base(recipe: &Recipe) -> &'static BaseImage {
    let base = vm::debian(&cache(), recipe);
    if let Some(took) = base.built_in {
        eprintln!("boot tier: built the {} base image in {:.0?} ({:?})", recipe.name, took, base.facts);
    }
    base
}

/// The three extensions for the guest (x86-64, `ID=_any`), built once.
fn extensions() -> &'static [PathBuf; 3] {
    static BUILT: OnceLock<[PathBuf; 3]> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot-extensions");
        let server = FixtureServer::start();
        let up = FakeUpstream::new(&server);
        up.kubernetes(K8S).cni(CNI).containerd_with(CONTAINERD, RUNC, |name, arch| {
            if name == "containerd" {
                notify_daemon_executable("/run/systemd/notify", CONTAINERD_STANDIN)
            } else {
                tiny_executable(arch, &message(name, CONTAINERD, arch))
            }
        });
        let m = up.mirror();
        let arch = Arch::X86_64;
        [("kubernetes", K8S), ("containerd", CONTAINERD), ("cni", CNI)]
            .map(|(ext, version)| bake(&dir, &m, ext, version, arch, "_any"))
    })
}

fn bakery(args: &[&str]) {
    let code = bakery::cli::main_from_iter(std::iter::once("bakery").chain(args.iter().copied()));
    assert_eq!(code, std::process::ExitCode::SUCCESS, "bakery {args:?} failed");
}

/// `bakery keygen` and `bakery publish` of the extensions into `work/release`, for nodes
/// that download from [`GUEST_BASE_URL`]; returns the release and the public key.
fn publish(work: &Path) -> (PathBuf, PathBuf) {
    let keys = work.join("keys");
    let release = work.join("release");
    bakery(&["keygen", "--out", keys.to_str().unwrap()]);
    let mut args = vec![
        "publish".to_owned(),
        "--to".to_owned(),
        release.display().to_string(),
        "--key".to_owned(),
        keys.join("private.pem").display().to_string(),
        "--base-url".to_owned(),
        GUEST_BASE_URL.to_owned(),
    ];
    args.extend(extensions().iter().map(|p| p.display().to_string()));
    bakery(&args.iter().map(String::as_str).collect::<Vec<_>>());
    (release, keys.join("public.pem"))
}

fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed:\nstdout: {}\nstderr: {}", stdout(o), stderr(o));
}

/// What every first boot must show, whichever way the extensions got there.
fn assert_services_started(boot: &Boot, recipe: &Recipe) {
    let r = &boot.report;
    let context = || format!("report:\n{r}\nconsole (end):\n{}", last_lines(&boot.console, 60));
    assert_eq!(vm::kernel_starts(&boot.console), 1, "the guest booted more than once; {}", context());
    let systemd = recipe.systemd;
    assert!(
        r.get("systemd").starts_with(&format!("systemd {systemd} ")),
        "not {}'s systemd {systemd}: {}",
        recipe.suite,
        r.get("systemd")
    );
    for ext in ["kubernetes", "containerd", "cni"] {
        assert!(
            r.get("merged").split(' ').any(|f| f == format!("extension-release.{ext}")),
            "{ext} is not merged; {}",
            context()
        );
    }
    assert_eq!(r.get("kubectl"), message("kubectl", K8S, Arch::X86_64).trim_end(), "kubectl from the image runs");
    assert_eq!(r.get("containerd_bin"), "/usr/bin/containerd");

    let unit = |u: &str, p: &str| r.unit(u, p).to_owned();
    // containerd really runs: the stand-in told systemd it is ready and stays up; started
    // once, never restarted.
    assert_eq!(
        (unit("containerd.service", "ActiveState"), unit("containerd.service", "SubState")),
        ("active".to_owned(), "running".to_owned()),
        "containerd.service; {}",
        context()
    );
    assert_eq!(unit("containerd.service", "events"), "S", "containerd started once; {}", context());
    // The kubelet was started once; without a kubeadm config it exits and the manager
    // restarts it (Restart=always, every 10 s): every start after the first follows a
    // restart the manager scheduled itself.
    assert_ne!(unit("kubelet.service", "ExecMainStartTimestampMonotonic"), "0", "kubelet never started; {}", context());
    assert!(
        ["active", "activating"].contains(&unit("kubelet.service", "ActiveState").as_str()),
        "kubelet.service is {}; {}",
        unit("kubelet.service", "ActiveState"),
        context()
    );
    let events = unit("kubelet.service", "events");
    let after_first = events.strip_prefix('S').unwrap_or_else(|| panic!("kubelet events {events:?}; {}", context()));
    assert!(
        after_first.trim_end_matches('R').split_inclusive('S').all(|step| step == "RS"),
        "kubelet started other than by its own Restart= ({events}: S start, R scheduled restart); {}",
        context()
    );
    // cni-plugins ran once and populated /opt/cni/bin.
    assert_eq!(
        (unit("cni-plugins.service", "ActiveState"), unit("cni-plugins.service", "Result")),
        ("active".to_owned(), "success".to_owned()),
        "cni-plugins.service; {}",
        context()
    );
    assert_eq!(unit("cni-plugins.service", "events"), "S", "cni-plugins started once");
    let installed: Vec<&str> = r.get("opt_cni_bin").split(' ').collect();
    for plugin in CNI_PLUGINS {
        assert!(installed.contains(&plugin), "/opt/cni/bin lacks {plugin}: {installed:?}");
    }
    // Enabled for the next boots: the merge and the unit that starts the services after it.
    assert_eq!(unit("systemd-sysext.service", "ActiveState"), "active");
    assert_eq!(unit("systemd-sysext.service", "events"), "S", "merged once");
    assert_eq!(unit("systemd-sysext.service", "enabled"), "enabled");
    assert_eq!(unit("sysext-units.service", "enabled"), "enabled");
    assert_eq!(r.get("failed"), "", "failed units; {}", context());
    eprintln!(
        "boot tier: {} in {:.0?}, boot settled after {} s of uptime, {} manager reloads, services up {} s later; kubelet {}",
        r.get("systemd"),
        boot.elapsed,
        r.get("settled_after_s"),
        r.get("reloads"),
        r.get("waited_s"),
        r.get("kubelet.service.events"),
    );
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A first boot with a NoCloud seed holding `composer provision cloud-init` output: the
/// guest downloads the images from `composer serve` on this machine, verifies, merges and
/// starts them, with no reboot.
fn cloud_init_first_boot_fetches_from_composer_serve(recipe: &Recipe) {
    let base = base(recipe);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (release, pubkey) = publish(w);
    let server = Server::start(&release, &[]);
    let user_data = w.join("user-data");
    let mut cmd = composer();
    cmd.args(["provision", "cloud-init", "--index", &server.url, "--pubkey"]).arg(&pubkey);
    for c in CHANNELS {
        cmd.args(["-e", c]);
    }
    cmd.args(["--arch", "x86-64", "--base-url", GUEST_BASE_URL, "--out"]).arg(&user_data);
    ok(&cmd.output().unwrap(), "composer provision cloud-init");
    vm::nocloud_seed(&w.join("seed.img"), &std::fs::read_to_string(&user_data).unwrap(), "boot-tier-cloud-init");
    vm::overlay(&base.disk, &w.join("disk.qcow2"));

    let boot = Guest::new(base, &w.join("disk.qcow2"), &logs(recipe, "cloud-init"))
        .seed(&w.join("seed.img"))
        .forward(server.addr.port())
        .boot();
    let r: &Report = &boot.report;
    assert!(r.get("cloud_init").contains("status: done"), "cloud-init: {}\n{r}", r.get("cloud_init"));
    assert_eq!(
        (r.unit("composer-provision.service", "ActiveState"), r.unit("composer-provision.service", "Result")),
        ("active", "success"),
        "the provisioning script; report:\n{r}"
    );
    assert_services_started(&boot, recipe);
    // The provisioning script reloaded the manager and started multi-user.target itself;
    // sysext-units.service, enabled for the next boots, had nothing to do in this one (it
    // is wanted by sysinit.target, which was long active).
    assert_eq!(r.unit("sysext-units.service", "events"), "", "{r}");
    // Every image came from composer serve, once.
    let log = server.log();
    for image in extensions() {
        let name = image.file_name().unwrap().to_str().unwrap();
        let gets = log.iter().filter(|l| l.contains(&format!("GET /{name} ")) && l.contains(" 200 ")).count();
        assert_eq!(gets, 1, "{name} downloaded {gets} times; access log:\n{}", log.join("\n"));
    }
}

/// A disk made by `composer compose` from the same base disk boots with the services of its
/// extensions started; no cloud-init, no network beyond QEMU's own.
fn composed_disk_starts_the_services_at_first_boot(recipe: &Recipe) {
    let base = base(recipe);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let out = w.join("composed.raw");
    let exts: Vec<&Path> = extensions().iter().map(PathBuf::as_path).collect();
    ok(&compose(&base.disk, &out, &exts, &[]), "composer compose");
    let boot = Guest::new(base, &out, &logs(recipe, "compose")).kernel_arg("cloud-init=disabled").boot();
    assert!(boot.report.get("cloud_init").contains("disabled"), "{}", boot.report);
    assert_eq!(boot.report.unit("composer-provision.service", "LoadState"), "not-found");
    assert_services_started(&boot, recipe);
    // What started them: the unit the plan installs, once, after the merge.
    let r = &boot.report;
    assert_eq!(
        (r.unit("sysext-units.service", "ActiveState"), r.unit("sysext-units.service", "events")),
        ("active", "S"),
        "{r}"
    );
    let merged: u64 = r.unit("systemd-sysext.service", "ExecMainStartTimestampMonotonic").parse().unwrap();
    let reloaded: u64 = r.unit("sysext-units.service", "ExecMainStartTimestampMonotonic").parse().unwrap();
    assert!(reloaded > merged, "sysext-units.service ran before the merge: {r}");
}

fn main() -> std::process::ExitCode {
    // QEMU runs this binary as the relay for each connection the guest makes to the server.
    vm::relay_if_requested();
    let boot_test = |name, run| Test::new(name, run).root().tools(&VM_TOOLS).needs([Need::X86Host]);
    sysext_tests::harness::run(vec![
        boot_test("debian12::cloud_init_first_boot_fetches_from_composer_serve", || {
            cloud_init_first_boot_fetches_from_composer_serve(&DEBIAN12)
        }),
        boot_test("debian12::composed_disk_starts_the_services_at_first_boot", || {
            composed_disk_starts_the_services_at_first_boot(&DEBIAN12)
        }),
        boot_test("debian13::cloud_init_first_boot_fetches_from_composer_serve", || {
            cloud_init_first_boot_fetches_from_composer_serve(&DEBIAN13)
        }),
        boot_test("debian13::composed_disk_starts_the_services_at_first_boot", || {
            composed_disk_starts_the_services_at_first_boot(&DEBIAN13)
        }),
    ])
}
