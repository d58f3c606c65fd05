//! Releases pulled from a real OCI registry (Debian's docker-registry) by composer: bakery
//! publishes the test extensions with `--to oci://`, composer composes a disk from
//! `-e oci://REGISTRY/REPO:NAME@CHANNEL` and the real `systemd-sysext merge` runs the
//! kubelet from it; tampering in the registry is refused; `provision` points nodes at the
//! registry's blob URLs only where the registry serves them without credentials; the node
//! agent syncs from the registry and the real merge of what it installed runs the kubelet.
//!
//! Credentials come from one auth file for the whole test process (REGISTRY_AUTH_FILE, set in
//! `main` before any test runs), to which each registry adds its own entry.

mod common;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Mutex, OnceLock};

use common::*;
use sysext_tests::sandbox::FLATCAR_OS_RELEASE;
use sysext_tests::upstream::runs_check;
use sysext_tests::{MergeSandbox, TestRegistry, MERGE_TOOLS, REGISTRY_TOOLS};

static AUTH_FILE: OnceLock<PathBuf> = OnceLock::new();
static AUTH_LOCK: Mutex<()> = Mutex::new(());

/// Adds the secure registry's credentials to the process's auth file.
fn log_in(reg: &TestRegistry) {
    let _g = AUTH_LOCK.lock().unwrap();
    let path = AUTH_FILE.get().expect("set in main");
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reg.auth_file(scratch.path())).unwrap()).unwrap();
    for (k, v) in entry["auths"].as_object().unwrap() {
        doc["auths"][k] = v.clone();
    }
    std::fs::write(path, serde_json::to_vec(&doc).unwrap()).unwrap();
}

struct Published {
    reg: TestRegistry,
    repo: String,
    pubkey: PathBuf,
    work: tempfile::TempDir,
    exts: &'static Extensions,
}

fn bakery(args: &[&str]) -> ExitCode {
    bakery::cli::main_from_iter(std::iter::once("bakery").chain(args.iter().copied()))
}

/// The test extensions published with `bakery publish --to oci://…`.
fn published(secure: bool) -> Published {
    let Case { exts, work } = case();
    let reg = if secure { TestRegistry::secure() } else { TestRegistry::plain() };
    if secure {
        log_in(&reg);
    }
    let keys = work.path().join("keys");
    signing::keygen(&keys).unwrap();
    let repo = reg.repo("sysext/release");
    let key = keys.join("private.pem");
    let mut args: Vec<String> = exts.all().iter().map(|p| p.display().to_string()).collect();
    args.extend(["--to".into(), repo.clone(), "--key".into(), key.display().to_string()]);
    args.extend(["--base-url".into(), "https://sysext.example.org/ext/".into(), "--retries".into(), "1".into()]);
    if let Some(ca) = reg.ca_file() {
        args.extend(["--ca-file".into(), ca.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(bakery(&["publish"].iter().copied().chain(args).collect::<Vec<_>>()), ExitCode::SUCCESS);
    Published { reg, repo, pubkey: keys.join("public.pem"), work, exts }
}

impl Published {
    fn net_args(&self) -> Vec<String> {
        let mut v = vec!["--pubkey".to_owned(), self.pubkey.display().to_string(), "--retries".into(), "1".into()];
        if let Some(ca) = self.reg.ca_file() {
            v.extend(["--ca-file".into(), ca.display().to_string()]);
        }
        v
    }

    fn channel(&self, c: &str) -> String {
        format!("{}:{c}", self.repo)
    }

    fn compose(&self, disk: &Path, out: &Path) -> std::process::Output {
        let mut cmd = composer();
        cmd.arg("compose").arg("--image").arg(disk).arg("--out").arg(out);
        for c in ["kubernetes@1.31", "containerd@2.0", "cni@latest"] {
            cmd.arg("-e").arg(self.channel(c));
        }
        cmd.args(self.net_args()).output().unwrap()
    }
}

fn composes_from_a_registry_and_the_kubelet_runs() {
    let p = published(true);
    let disk = flatcar_disk(p.work.path());
    let out = p.work.path().join("composed.img");
    let o = p.compose(&disk.path, &out);
    assert_ok(&o);
    let arch = p.exts.arch;
    let mut node = MergeSandbox::new(FLATCAR_OS_RELEASE);
    node.composed_root(&out, disk.root_offset, disk.root_size);
    let mut checks = runs_check("kubelet", K8S, arch);
    checks.push_str(&runs_check("containerd", CONTAINERD, arch));
    checks.push_str("readlink /etc/extensions/kubernetes.raw\n");
    let res = node.run(&checks);
    assert!(res.success, "merge failed:\nstdout: {}\nstderr: {}", res.stdout, res.stderr);
    assert!(res.stdout.contains(&format!("/opt/extensions/kubernetes/kubernetes-{K8S}-{arch}.raw")), "{}", res.stdout);
    assert_eq!(res.leftover_loop_devices, Vec::<String>::new());
}

fn registry_tampering_stops_a_compose() {
    let p = published(false);
    let disk = flatcar_disk(p.work.path());
    let out = p.work.path().join("composed.img");
    let input_sha = sha256(&disk.path);
    // Tag another blob as the kubernetes image, through the registry's API.
    let tag = format!("kubernetes-{K8S}-{}", p.exts.arch);
    let path = format!("/v2/sysext/release/manifests/{tag}");
    let resp = p.reg.get(&path).header("Accept", "application/vnd.oci.image.manifest.v1+json").send().unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&resp.bytes().unwrap()).unwrap();
    let containerd = m["layers"][0].clone();
    let cd_tag = format!("containerd-{CONTAINERD}-{}", p.exts.arch);
    let cd = p
        .reg
        .get(&format!("/v2/sysext/release/manifests/{cd_tag}"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    let cd: serde_json::Value = serde_json::from_slice(&cd.bytes().unwrap()).unwrap();
    m["layers"][0]["digest"] = cd["layers"][0]["digest"].clone();
    m["layers"][0]["size"] = cd["layers"][0]["size"].clone();
    assert_ne!(m["layers"][0], containerd);
    let put = p
        .reg
        .request(reqwest::Method::PUT, &path)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&m).unwrap())
        .send()
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let o = p.compose(&disk.path, &out);
    assert_refused(&o, &out, &disk.path, &input_sha, &[&format!("sysext/release:{tag}"), "the signed index"]);
}

/// Ignition and cloud-init configs from a registry: blob URLs a node fetches anonymously,
/// each the image the signed index names; refused where pulls need credentials.
fn provision_points_nodes_at_blob_urls_only_when_sound() {
    let p = published(false);
    let mut cmd = composer();
    cmd.args(["provision", "ignition", "-e"]).arg(p.channel("kubernetes@1.31"));
    cmd.args(["--arch", p.exts.arch.as_str()]).args(p.net_args());
    let o = cmd.output().unwrap();
    assert_ok(&o);
    let config: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let file = config["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with(".raw"))
        .unwrap()
        .clone();
    let url = file["contents"]["source"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/v2/sysext/release/blobs/sha256:", p.reg.url())), "{url}");
    let hash = file["contents"]["verification"]["hash"].as_str().unwrap();
    // What Ignition does: one anonymous GET, then the hash check.
    let body = reqwest::blocking::Client::new().get(url).send().unwrap().bytes().unwrap();
    assert_eq!(format!("sha512-{}", signing::Sha512Digest::of(&body)), hash);
    assert_eq!(body.as_ref(), std::fs::read(&p.exts.kubernetes).unwrap().as_slice());

    let mut cmd = composer();
    cmd.args(["provision", "ignition", "--sysupdate", "-e"]).arg(p.channel("kubernetes@1.31"));
    cmd.args(["--arch", p.exts.arch.as_str()]).args(p.net_args());
    let o = cmd.output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("which a registry does not serve"), "{}", stderr(&o));

    // A registry that wants credentials: nodes could not fetch, so no config is written.
    let s = published(true);
    let out = s.work.path().join("node.ign");
    let mut cmd = composer();
    cmd.args(["provision", "ignition", "--index", &s.repo, "-e", "kubernetes@1.31", "--out"]).arg(&out);
    cmd.args(["--arch", s.exts.arch.as_str()]).args(s.net_args());
    let o = cmd.output().unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("without credentials") && err.contains("401"), "{err}");
    assert!(err.contains("bakery mirror"), "says the way out: {err}");
    assert!(!out.exists());
    // With --base-url the registry is only where the release is resolved.
    let mut cmd = composer();
    cmd.args([
        "provision",
        "ignition",
        "--index",
        &s.repo,
        "-e",
        "kubernetes@1.31",
        "--base-url",
        "https://cdn.example/ext/",
    ]);
    cmd.args(["--arch", s.exts.arch.as_str()]).args(s.net_args());
    let o = cmd.output().unwrap();
    assert_ok(&o);
    assert!(stdout(&o).contains(&format!("https://cdn.example/ext/kubernetes-{K8S}-{}.raw", s.exts.arch)));
}

/// The agent on a node whose release lives in a registry (TLS, credentials from the auth
/// file): `composer node sync --index oci://…` into a scratch Flatcar root verifies and
/// installs the three images, the real `systemd-sysext merge` of what it installed runs the
/// kubelet, and a second sync downloads nothing.
fn node_sync_from_a_registry_and_the_kubelet_runs() {
    let p = published(true);
    let root = p.work.path().join("node");
    for (path, text) in [("etc/os-release", FLATCAR_OS_RELEASE), ("usr/lib64/systemd/libsystemd-shared-257.so", "")] {
        std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
        std::fs::write(root.join(path), text).unwrap();
    }
    let sync = || {
        let mut cmd = composer();
        cmd.args(["node", "sync", "--index", &p.repo, "--root"]).arg(&root);
        for c in ["kubernetes@1.31", "containerd@2.0", "cni@latest"] {
            cmd.args(["-e", c]);
        }
        let o = cmd.arg("--json").args(p.net_args()).output().unwrap();
        assert_ok(&o);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let first = sync();
    assert_eq!(first["downloaded"].as_array().map(Vec::len), Some(3), "{first:#}");
    let arch = p.exts.arch;
    let mut node = MergeSandbox::new(FLATCAR_OS_RELEASE);
    for (ext, image) in [("kubernetes", &p.exts.kubernetes), ("containerd", &p.exts.containerd), ("cni", &p.exts.cni)] {
        let name = image.file_name().unwrap();
        let installed = root.join("opt/extensions").join(ext).join(name);
        assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(image).unwrap(), "{}", installed.display());
        assert_eq!(
            std::fs::read_link(root.join(format!("etc/extensions/{ext}.raw"))).unwrap(),
            Path::new("/opt/extensions").join(ext).join(name)
        );
        node.etc_link(ext, &installed);
    }
    let mut checks = runs_check("kubelet", K8S, arch);
    checks.push_str(&runs_check("containerd", CONTAINERD, arch));
    let res = node.run(&checks);
    assert!(res.success, "merge failed:\nstdout: {}\nstderr: {}", res.stdout, res.stderr);
    let second = sync();
    assert_eq!(second["downloaded"], serde_json::json!([]), "{second:#}");
    assert_eq!(second["changes"], serde_json::json!([]), "{second:#}");
}

/// The bakery side from the command line: verify-release and mirror against the registry,
/// with credentials from the auth file and the test CA from --ca-file.
fn bakery_verifies_and_mirrors_the_registry() {
    let p = published(true);
    let net = p.net_args();
    let net: Vec<&str> = net.iter().map(String::as_str).collect();
    assert_eq!(bakery(&[&["verify-release", &p.repo][..], &net].concat()), ExitCode::SUCCESS);
    let site = p.work.path().join("site");
    let site_s = site.display().to_string();
    assert_eq!(bakery(&[&["mirror", &p.repo, &site_s][..], &net].concat()), ExitCode::SUCCESS);
    assert_eq!(bakery(&[&["verify-release", &site_s][..], &net].concat()), ExitCode::SUCCESS);
    // Back into another repository of the same registry, then verified there.
    let copy = p.reg.repo("mirror/copy");
    assert_eq!(bakery(&[&["mirror", &site_s, &copy][..], &net].concat()), ExitCode::SUCCESS);
    assert_eq!(bakery(&[&["verify-release", &copy][..], &net].concat()), ExitCode::SUCCESS);
    // With another key, nothing is copied.
    let other = p.work.path().join("other");
    signing::keygen(&other).unwrap();
    let elsewhere = p.work.path().join("elsewhere").display().to_string();
    let mut args = vec!["mirror", &p.repo, &elsewhere];
    let other_pub = other.join("public.pem").display().to_string();
    let mut net2 = net.clone();
    net2[1] = &other_pub;
    args.extend(&net2);
    assert_eq!(bakery(&args), ExitCode::FAILURE);
    assert!(!Path::new(&elsewhere).exists());
}

fn main() -> ExitCode {
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    let auth = dir.path().join("auth.json");
    std::fs::write(&auth, "{\"auths\": {}}").unwrap();
    // Before any test thread starts; every child inherits it.
    std::env::set_var("REGISTRY_AUTH_FILE", &auth);
    AUTH_FILE.set(auth).unwrap();
    let needs = || disk_needs();
    sysext_tests::harness::run(vec![
        sysext_tests::test!(composes_from_a_registry_and_the_kubelet_runs)
            .root()
            .needs(needs())
            .tools(&MERGE_TOOLS)
            .tools(&REGISTRY_TOOLS),
        sysext_tests::test!(node_sync_from_a_registry_and_the_kubelet_runs)
            .root()
            .needs(needs())
            .tools(&MERGE_TOOLS)
            .tools(&REGISTRY_TOOLS),
        sysext_tests::test!(registry_tampering_stops_a_compose).needs(needs()).tools(&REGISTRY_TOOLS),
        sysext_tests::test!(provision_points_nodes_at_blob_urls_only_when_sound).needs(needs()).tools(&REGISTRY_TOOLS),
        sysext_tests::test!(bakery_verifies_and_mirrors_the_registry).needs(needs()).tools(&REGISTRY_TOOLS),
    ])
}
