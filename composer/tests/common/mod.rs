//! Helpers shared by composer's integration tests: real extension images built once per test
//! binary by bakery against the fake upstream, synthetic disks, and the composer binary.
#![allow(dead_code)] // each test binary uses a different subset

#[allow(dead_code)] // used by the root tests only
pub mod namespace;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use sysext_tests::disk::{self, DiskSpec, SyntheticDisk, DISK_TOOLS};
use sysext_tests::harness::Need;
use sysext_tests::sandbox::{FLATCAR_OS_RELEASE, UBUNTU_OS_RELEASE};
use sysext_tests::{Arch, FakeUpstream, FixtureServer};

pub const K8S: &str = "v1.31.3";
pub const CONTAINERD: &str = "2.0.4";
pub const RUNC: &str = "v1.2.5";
pub const CNI: &str = "v1.6.2";

/// Extension images built by bakery.
pub struct Extensions {
    pub arch: Arch,
    pub kubernetes: PathBuf,
    pub containerd: PathBuf,
    pub cni: PathBuf,
    /// kubernetes for the other architecture.
    pub foreign_kubernetes: PathBuf,
    /// kubernetes built with `--os ubuntu:24.04` (ID=ubuntu, VERSION_ID=24.04).
    pub ubuntu_kubernetes: PathBuf,
}

impl Extensions {
    pub fn all(&self) -> [&Path; 3] {
        [&self.kubernetes, &self.containerd, &self.cni]
    }
}

/// Builds one extension with bakery against the fake upstream at `mirror`, into
/// `dir/<arch>-<os>/`.
pub fn bake(dir: &Path, mirror: &str, ext: &str, version: &str, arch: Arch, os: &str) -> PathBuf {
    let out = dir.join(format!("{arch}-{os}").replace(':', "_"));
    let code = bakery::cli::main_from_iter([
        "bakery",
        "create",
        ext,
        version,
        "--arch",
        arch.as_str(),
        "--os",
        os,
        "--mirror",
        mirror,
        "--retries",
        "1",
        "--cache",
        dir.join("cache").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code, std::process::ExitCode::SUCCESS, "bakery create {ext} {version} --arch {arch} --os {os} failed");
    out.join(format!("{ext}-{version}-{arch}.raw"))
}

/// The host architecture (tests that call this declare [`Need::SupportedHost`]).
pub fn host_arch() -> Arch {
    Arch::host().expect("the harness runs this test only on x86-64 and arm64 hosts")
}

/// Builds the extensions once per test binary (they are reproducible, so rebuilding into the
/// same directory with --force is harmless).
pub fn extensions() -> &'static Extensions {
    static BUILT: OnceLock<Extensions> = OnceLock::new();
    BUILT.get_or_init(|| {
        let arch = Arch::host().expect("supported host architecture");
        let other = Arch::ALL.into_iter().find(|a| *a != arch).unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "composer-extensions-{}",
            std::env::current_exe().unwrap().file_name().unwrap().to_string_lossy()
        ));
        let server = FixtureServer::start();
        let up = FakeUpstream::new(&server);
        up.kubernetes(K8S).containerd(CONTAINERD, RUNC).cni(CNI);
        let m = up.mirror();
        Extensions {
            arch,
            kubernetes: bake(&dir, &m, "kubernetes", K8S, arch, "_any"),
            containerd: bake(&dir, &m, "containerd", CONTAINERD, arch, "_any"),
            cni: bake(&dir, &m, "cni", CNI, arch, "_any"),
            foreign_kubernetes: bake(&dir, &m, "kubernetes", K8S, other, "_any"),
            ubuntu_kubernetes: bake(&dir, &m, "kubernetes", K8S, arch, "ubuntu:24.04"),
        }
    })
}

/// What most tests start from: the extensions and a scratch directory.
pub struct Case {
    pub exts: &'static Extensions,
    pub work: tempfile::TempDir,
}

/// The extensions and a scratch directory (tests that call this declare [`disk_needs`]).
pub fn case() -> Case {
    Case { exts: extensions(), work: tempfile::tempdir().unwrap() }
}

/// What composing synthetic disks needs: the disk tools, e2fsprogs and a host architecture
/// the extensions are built for.
pub fn disk_needs() -> Vec<Need> {
    DISK_TOOLS.iter().chain(&["debugfs", "e2fsck"]).map(|t| Need::Tool(t)).chain([Need::SupportedHost]).collect()
}

pub fn flatcar_disk(dir: &Path) -> SyntheticDisk {
    disk::flatcar(dir, &DiskSpec::new(FLATCAR_OS_RELEASE, Arch::host().unwrap()))
}

pub fn ubuntu_disk(dir: &Path) -> SyntheticDisk {
    disk::ubuntu(dir, &DiskSpec::new(UBUNTU_OS_RELEASE, Arch::host().unwrap()))
}

/// The composer binary with a clean environment.
pub fn composer() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_composer"));
    cmd.env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// `composer compose --image IN --out OUT -e …` plus `extra`.
pub fn compose(image: &Path, out: &Path, exts: &[&Path], extra: &[&str]) -> Output {
    let mut cmd = composer();
    cmd.arg("compose").arg("--image").arg(image).arg("--out").arg(out);
    for e in exts {
        cmd.arg("-e").arg(e);
    }
    cmd.args(extra).output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_ok(o: &Output) {
    assert!(o.status.success(), "composer failed:\nstdout: {}\nstderr: {}", stdout(o), stderr(o));
}

pub fn sha256(path: &Path) -> String {
    signing::Sha256Digest::of_reader(std::fs::File::open(path).unwrap()).unwrap().to_string()
}

/// Runs a read-only debugfs request against the filesystem at `offset` in `image`.
pub fn debugfs(image: &Path, offset: u64, request: &str) -> String {
    let out = Command::new("debugfs")
        .env("DEBUGFS_PAGER", "__none__")
        .arg("-R")
        .arg(request)
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Dumps a file out of the filesystem at `offset` into `dest`.
pub fn dump(image: &Path, offset: u64, path: &str, dest: &Path) {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump {path} {}", dest.display()))
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .unwrap();
    assert!(dest.exists(), "debugfs could not dump {path}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Asserts a refused run: non-zero exit, the message contains every `needle`, OUT does not
/// exist, no scratch files are left beside it, and the input is byte-identical.
pub fn assert_refused(o: &Output, out: &Path, input: &Path, input_sha: &str, needles: &[&str]) {
    assert!(!o.status.success(), "composer succeeded but should have refused:\n{}", stderr(o));
    let err = stderr(o);
    for n in needles {
        assert!(err.contains(n), "error does not mention '{n}':\n{err}");
    }
    assert!(!out.exists(), "{} exists after a refused run", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".composer-"))
        .collect();
    assert!(leftovers.is_empty(), "scratch files left: {leftovers:?}");
    assert_eq!(sha256(input), input_sha, "the input image changed");
}

/// Publishes the test extensions into a signed release directory; returns it and the key pair.
pub fn release(dir: &Path, exts: &Extensions) -> (PathBuf, PathBuf) {
    let (release, public, _) = signed_release(dir, &exts.all());
    (release, public)
}

/// Makes a key pair in `dir/keys` and publishes `images` into `dir/release` (serial 1);
/// returns the release, the public key and the options, for publishing again with the same
/// key (a later serial).
pub fn signed_release(dir: &Path, images: &[&Path]) -> (PathBuf, PathBuf, Publisher) {
    let keys = dir.join("keys");
    signing::keygen(&keys).unwrap();
    let publisher = Publisher {
        key: signing::PrivateKey::read_pem(&keys.join("private.pem")).unwrap(),
        release: dir.join("release"),
    };
    let images: Vec<_> = images.iter().map(|p| bakery::release::new_image(p).unwrap()).collect();
    publisher.publish(&images);
    (publisher.release.clone(), keys.join("public.pem"), publisher)
}

/// Publishes into one release directory with one key.
pub struct Publisher {
    pub key: signing::PrivateKey,
    pub release: PathBuf,
}

impl Publisher {
    pub fn publish(&self, images: &[release_index::publish::NewImage]) {
        let opts = release_index::publish::PublishOptions {
            release_dir: &self.release,
            key: &self.key,
            rotation: None,
            openpgp: false,
            base_url: Some("https://sysext.example.org/ext/".parse().unwrap()),
            valid_for: std::time::Duration::from_secs(86_400),
            now: release_index::timestamp::Timestamp::now(),
            keep_generations: 3,
            fail_after: None,
        };
        release_index::publish::publish(images, &opts).unwrap();
    }
}

/// A squashfs extension `<name>-<version>-<arch>.raw` with `ID=_any` and `len` bytes of
/// incompressible payload (from `seed`), made with mksquashfs (no compression, so the size is predictable).
pub fn squashfs_extension(dir: &Path, name: &str, version: &str, arch: Arch, seed: u64, len: usize) -> PathBuf {
    let tree = dir.join(format!("tree-{name}"));
    std::fs::create_dir_all(tree.join("usr/lib/extension-release.d")).unwrap();
    std::fs::create_dir_all(tree.join(format!("usr/share/{name}"))).unwrap();
    std::fs::write(
        tree.join(format!("usr/lib/extension-release.d/extension-release.{name}")),
        format!("ID=_any\nARCHITECTURE={arch}\n"),
    )
    .unwrap();
    let payload = sysext_tests::noise(seed, len);
    std::fs::write(tree.join(format!("usr/share/{name}/payload")), payload).unwrap();
    let image = dir.join(format!("{name}-{version}-{arch}.raw"));
    let st = Command::new("mksquashfs")
        .arg(&tree)
        .arg(&image)
        .args(["-all-root", "-noappend", "-quiet", "-noI", "-noD", "-noF", "-noX"])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    image
}

/// Everything under `root`: kind, mode, and bytes or link target, one line per entry.
pub fn tree(root: &Path) -> Vec<String> {
    tree_lines(root, false)
}

/// [`tree`] with each entry's inode and modification time too: equal only if nothing was
/// rewritten, not even with the same bytes.
pub fn tree_with_times(root: &Path) -> Vec<String> {
    tree_lines(root, true)
}

fn tree_lines(root: &Path, times: bool) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    fn walk(root: &Path, dir: &Path, times: bool, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.mode() & 0o7777;
            let stamp = if times {
                format!(" ino {} mtime {}.{:09}", meta.ino(), meta.mtime(), meta.mtime_nsec())
            } else {
                String::new()
            };
            if meta.file_type().is_symlink() {
                out.push(format!("symlink {rel} -> {}{stamp}", std::fs::read_link(&p).unwrap().display()));
            } else if meta.is_dir() {
                out.push(format!("dir {mode:o} {rel}{stamp}"));
                walk(root, &p, times, out);
            } else {
                out.push(format!("file {mode:o} {rel} sha256 {}{stamp}", sha256(&p)));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, times, &mut out);
    out
}

/// Every entry of the plan is in `root` as planned, each enabled unit is linked (to the
/// unit file the plan writes in /etc/systemd/system, or the OS's in /usr/lib/systemd/system),
/// and no scratch file is left.
pub fn assert_root_holds(root: &Path, plan: &composer::plan::NodePlan) {
    use composer::plan::Entry;
    let lines = tree(root);
    for e in &plan.entries {
        let want = match e {
            Entry::Dir { path } => format!("dir 755 {path}"),
            Entry::Image { path, image } => format!("file 644 {path} sha256 {}", image.sha256),
            Entry::File { path, mode, contents } => {
                format!("file {mode:o} {path} sha256 {}", signing::Sha256Digest::of(contents))
            }
            Entry::Link { path, target, .. } => format!("symlink {path} -> {target}"),
        };
        assert!(lines.contains(&want), "missing '{want}' in:\n{}", lines.join("\n"));
    }
    for u in plan.enable.iter().filter(|u| !u.by_os) {
        let etc = format!("/etc/systemd/system/{}", u.name);
        let planned = plan.entries.iter().any(|e| e.path() == etc);
        let unit = if planned { etc } else { format!("/usr/lib/systemd/system/{}", u.name) };
        if u.if_present && !planned && root.join(unit.trim_start_matches('/')).symlink_metadata().is_err() {
            let link = format!("symlink {} -> ", u.link());
            assert!(!lines.iter().any(|l| l.starts_with(&link)), "{} enabled without its unit", u.name);
            continue;
        }
        let want = format!("symlink {} -> {unit}", u.link());
        assert!(lines.contains(&want), "missing '{want}' in:\n{}", lines.join("\n"));
    }
    let leftovers: Vec<_> = lines
        .iter()
        .filter(|l| l.contains(".composer-provision.") || l.contains(".composer-new") || l.contains(".composer-sync-"))
        .collect();
    assert!(leftovers.is_empty(), "scratch files left: {leftovers:?}");
}

/// composer's version, which its extension carries.
pub const COMPOSER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `composer` extension, built by bakery with the recipe in composer/extension from this
/// build's composer binary, laid out as that recipe's `--mirror` expects (the steps the
/// README gives); once per test binary. lz4, because the debug binary is large and the
/// compression level is not what is tested.
pub fn composer_extension() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let arch = host_arch();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("composer-self-{}", std::env::current_exe().unwrap().file_name().unwrap().to_string_lossy()));
        let _ = std::fs::remove_dir_all(&dir);
        let dist = dir.join(format!("dist/{COMPOSER_VERSION}/{arch}"));
        std::fs::create_dir_all(&dist).unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_composer"), dist.join("composer")).unwrap();
        std::fs::write(dist.join("composer.sha256"), sha256(&dist.join("composer"))).unwrap();
        let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("extension");
        let out = dir.join("out");
        let code = bakery::cli::main_from_iter([
            "bakery",
            "create",
            "composer",
            COMPOSER_VERSION,
            "--arch",
            arch.as_str(),
            "--recipes",
            recipes.to_str().unwrap(),
            "--mirror",
            &format!("file://{}", dir.join("dist").display()),
            "--compression",
            "lz4",
            "--cache",
            dir.join("cache").to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, std::process::ExitCode::SUCCESS, "bakery create composer {COMPOSER_VERSION} failed");
        out.join(format!("composer-{COMPOSER_VERSION}-{arch}.raw"))
    })
}

/// kubernetes `version` for the host, built by bakery against the fake upstream; once per
/// test binary and version.
pub fn kubernetes_image(version: &'static str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(&str, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap();
    if let Some((_, p)) = built.iter().find(|(v, _)| *v == version) {
        return p.clone();
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "composer-kubernetes-{version}-{}",
        std::env::current_exe().unwrap().file_name().unwrap().to_string_lossy()
    ));
    let server = FixtureServer::start();
    let up = FakeUpstream::new(&server);
    up.kubernetes(version);
    let path = bake(&dir, &up.mirror(), "kubernetes", version, host_arch(), "_any");
    built.push((version, path.clone()));
    path
}

/// `bakery publish IMAGES --to RELEASE --key KEY` plus `extra`, as a user runs it.
pub fn bakery_publish(release: &Path, key: &Path, images: &[&Path], extra: &[&str]) {
    let mut args: Vec<std::ffi::OsString> = vec!["bakery".into(), "publish".into()];
    args.extend(images.iter().map(|p| p.as_os_str().to_owned()));
    args.extend(["--to".into(), release.as_os_str().to_owned(), "--key".into(), key.as_os_str().to_owned()]);
    args.extend(extra.iter().map(std::ffi::OsString::from));
    let code = bakery::cli::main_from_iter(args);
    assert_eq!(code, std::process::ExitCode::SUCCESS, "bakery publish {images:?} {extra:?} failed");
}

/// The node plan's entry for the image at `path`, which nodes download from `base` + its name.
#[allow(dead_code)] // not every test binary builds plans
pub fn planned_image(path: &Path, base: &str) -> composer::plan::PlannedImage {
    let d = signing::Digests::of(&std::fs::read(path).unwrap());
    let file = path.file_name().unwrap().to_str().unwrap();
    composer::plan::PlannedImage {
        image: file.parse().unwrap(),
        size: d.size,
        sha256: d.sha256,
        sha512: d.sha512,
        source: composer::plan::ImageSource::Url(format!("{base}{file}")),
    }
}
