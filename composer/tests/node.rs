//! `composer node sync|status`, the node agent, against releases published with `bakery
//! publish` (bakery-built images) and served by the real `composer serve` on 127.0.0.1,
//! installing into scratch roots; as root, the real systemd-sysext merge in a private mount
//! namespace, where the kubelet the agent installed runs. Where no service manager can run
//! (PID 1 here is not systemd), a recording `systemctl` stand-in plays it, and the tests say
//! what it does.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::namespace::{namespace_prelude, run_in_namespace};
use common::server::Server;
use common::*;
use composer::plan::{NodeOs, NodePlan, PlanRequest, PlannedImage};
use serde_json::Value;
use sysext_tests::harness::Need;
use sysext_tests::sandbox::{MERGE_TOOLS, UBUNTU_OS_RELEASE};
use sysext_tests::{FixtureServer, Response};

/// The base URL the releases are published with (the agent reads from its `--index`).
const BASE: &str = "https://sysext.example.org/ext/";
const CHANNELS: [&str; 3] = ["kubernetes@1.31", "containerd@2.0", "cni@latest"];
const K8S_NEXT: &str = "v1.31.4";

/// A release published with `bakery publish`, its key pair and a scratch directory.
struct Release {
    exts: &'static Extensions,
    work: tempfile::TempDir,
}

impl Release {
    /// kubernetes v1.31.3, containerd and cni, published as serial 1.
    fn new() -> Self {
        let exts = extensions();
        let r = Self { exts, work: tempfile::tempdir().unwrap() };
        signing::keygen(&r.work.path().join("keys")).unwrap();
        r.publish(&exts.all(), &["--base-url", BASE]);
        r
    }

    fn dir(&self) -> PathBuf {
        self.work.path().join("release")
    }

    fn pubkey(&self) -> PathBuf {
        self.work.path().join("keys/public.pem")
    }

    fn publish(&self, images: &[&Path], extra: &[&str]) {
        bakery_publish(&self.dir(), &self.work.path().join("keys/private.pem"), images, extra);
    }

    fn generation(&self, serial: u64) -> PathBuf {
        self.work.path().join(format!("release.generations/{serial:010}"))
    }

    /// Makes `dest` a plain copy of generation `serial` (regular files only), which
    /// `composer serve` opens per request, so a test can tamper with what it serves.
    fn mirror(&self, serial: u64, dest: &Path) {
        let _ = std::fs::remove_dir_all(dest);
        let from = self.generation(serial);
        for rel in release_index::source::walk(&from).unwrap() {
            let to = dest.join(&rel);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(from.join(&rel), to).unwrap();
        }
    }

    /// The file name of the image `channel` (by extension name) of the test images.
    fn image_of(&self, ext: &str) -> &'static Path {
        self.exts.all().into_iter().find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(ext)).unwrap()
    }

    /// The plan the agent must install for these images on Ubuntu.
    fn plan(&self, images: &[&Path]) -> NodePlan {
        self.plan_for(NodeOs::Ubuntu, images)
    }

    /// The plan the agent must install for these images on `os`.
    fn plan_for(&self, os: NodeOs, images: &[&Path]) -> NodePlan {
        let images: Vec<PlannedImage> = images.iter().map(|p| planned_image(p, BASE)).collect();
        NodePlan::build(&PlanRequest { os, images: &images, sysupdate: None, keyring: None })
    }
}

/// A scratch Ubuntu-like root: os-release, systemd-sysext.service (which the plan enables)
/// and systemd 252's private library (which tells the agent the version).
fn ubuntu_root(dir: &Path) -> PathBuf {
    for (path, text) in [
        ("etc/os-release", UBUNTU_OS_RELEASE),
        ("usr/lib/systemd/system/systemd-sysext.service", "[Unit]\n"),
        ("usr/lib/systemd/libsystemd-shared-252.so", ""),
    ] {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir.to_owned()
}

/// `composer node sync --index URL --pubkey PUB -e … --root ROOT --retries 0 --json` plus
/// `extra`.
fn sync(index: &str, pubkey: &Path, root: &Path, channels: &[&str], extra: &[&str]) -> Output {
    let mut cmd = composer();
    cmd.args(["node", "sync", "--index", index, "--pubkey"]).arg(pubkey).arg("--root").arg(root);
    for c in channels {
        cmd.args(["-e", c]);
    }
    cmd.args(["--retries", "0", "--json"]).args(extra).output().unwrap()
}

fn report(o: &Output) -> Value {
    assert_ok(o);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

fn state(root: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(root.join("var/lib/composer/node.json")).unwrap()).unwrap()
}

fn words(commands: &Value) -> Vec<String> {
    commands
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect::<Vec<_>>().join(" "))
        .collect()
}

/// A first sync installs exactly the node plan (images verified, links, systemd-sysext
/// enabled), records the serial, the images and their digests in the state file, and, the
/// root not being the running system, runs nothing and lists what systemd 252 needs. A
/// second sync asks the server for no image, and changes nothing: not a byte, not an mtime,
/// not the state file.
fn a_second_sync_downloads_and_changes_nothing() {
    let r = Release::new();
    let server = Server::start(&r.dir(), &[]);
    let root = ubuntu_root(&r.work.path().join("root"));
    let first = report(&sync(&server.url, &r.pubkey(), &root, &CHANNELS, &[]));
    assert_root_holds(&root, &r.plan(&r.exts.all()));
    assert_eq!(first["serial"], 1);
    assert_eq!(first["os"], "ubuntu");
    assert_eq!(first["downloaded"].as_array().unwrap().len(), 3, "{first:#}");
    assert!(first["extensions"].as_array().unwrap().iter().all(|e| e["outcome"] == "installed"), "{first:#}");
    let activation = &first["activation"];
    assert_eq!(activation["ran"], false);
    assert!(activation["skipped"].as_str().unwrap().contains("is not the running system"), "{activation:#}");
    assert_eq!(
        words(&activation["commands"]),
        [
            "systemctl reload-or-restart systemd-sysext.service",
            "systemctl daemon-reload",
            "systemctl start --no-block multi-user.target"
        ]
    );
    assert_eq!(activation["systemd"], 252);
    for unit in ["kubelet.service", "containerd.service", "cni-plugins.service"] {
        assert!(activation["units"].as_array().unwrap().iter().any(|u| u == unit), "{unit}: {activation:#}");
    }

    let s = state(&root);
    assert_eq!(s["indexes"][&server.url]["serial"], 1);
    let k8s = &s["extensions"]["kubernetes"];
    let image = r.image_of("kubernetes");
    assert_eq!(k8s["image"], image.file_name().unwrap().to_str().unwrap());
    assert_eq!(k8s["sha256"], sha256(image));
    assert_eq!((k8s["channel"].as_str(), k8s["index"].as_str()), (Some("kubernetes@1.31"), Some(server.url.as_str())));
    assert_eq!(s["synced"]["activated"], false);
    assert!(s.get("operation").is_none(), "{s:#}");
    assert_eq!(server.image_requests().len(), 3, "{:?}", server.image_requests());

    let before = tree_with_times(&root);
    let requests = server.log().len();
    let second = report(&sync(&server.url, &r.pubkey(), &root, &CHANNELS, &[]));
    let asked: Vec<String> = server.log()[requests..].to_vec();
    assert!(asked.iter().all(|l| !l.contains(".raw")), "images requested again: {asked:?}");
    assert_eq!(asked.len(), 2, "index.json and its signature: {asked:?}");
    assert_eq!(tree_with_times(&root), before, "the second sync changed the node");
    assert_eq!(second["downloaded"], serde_json::json!([]));
    assert_eq!(second["changes"], serde_json::json!([]));
    assert!(second["activation"].is_null(), "{second:#}");
    assert!(second["extensions"].as_array().unwrap().iter().all(|e| e["outcome"] == "unchanged"), "{second:#}");
}

/// From a node synced to serial 1, each refusal says why, exits non-zero and leaves every
/// file and link of the node as it was: a tampered image, a truncated image (both
/// with a valid index of serial 2, which is recorded as accepted), an index signed by
/// another key, an expired index, and a replay of serial 1 after serial 2 was accepted.
/// Then the genuine serial 2 switches kubernetes to v1.31.4 and keeps v1.31.3 beside it.
fn refusals_leave_the_node_as_it_was() {
    let r = Release::new();
    let next = kubernetes_image(K8S_NEXT);
    r.publish(&[&next], &[]);
    let mirror = r.work.path().join("mirror");
    r.mirror(1, &mirror);
    let server = Server::start(&mirror, &[]);
    let root = ubuntu_root(&r.work.path().join("root"));
    report(&sync(&server.url, &r.pubkey(), &root, &CHANNELS, &[]));
    // Contents, modes and link targets (a refused download's staging directory, created and
    // removed again, does change its parent directory's mtime).
    let node = tree(&root);
    let installed = state(&root)["extensions"].clone();
    let next_file = next.file_name().unwrap().to_str().unwrap().to_owned();

    let refused = |needles: &[&str], serial: u64| {
        let o = sync(&server.url, &r.pubkey(), &root, &CHANNELS, &[]);
        assert!(!o.status.success(), "accepted: {}", stdout(&o));
        for n in needles {
            assert!(stderr(&o).contains(n), "no '{n}' in:\n{}", stderr(&o));
        }
        assert!(stdout(&o).is_empty());
        let s = state(&root);
        assert_eq!(s["extensions"], installed, "the record of what is installed changed");
        assert_eq!(s["indexes"][&server.url]["serial"], serial);
        let mut now = tree(&root);
        let mut then = node.clone();
        // The state file itself is rewritten when a newer index is accepted.
        let is_state = |l: &String| l.contains("/var/lib/composer/node.json");
        now.retain(|l| !is_state(l));
        then.retain(|l| !is_state(l));
        assert_eq!(now, then, "a refused sync changed the node");
    };

    r.mirror(2, &mirror);
    let image = mirror.join(&next_file);
    let genuine = std::fs::read(&image).unwrap();
    let mut tampered = genuine.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x20;
    std::fs::write(&image, &tampered).unwrap();
    refused(&[&next_file, "does not match the signed index"], 2);

    std::fs::write(&image, &genuine[..genuine.len() / 2]).unwrap();
    refused(&[&next_file, &format!("{} bytes, the signed index says {}", genuine.len() / 2, genuine.len())], 2);
    std::fs::write(&image, &genuine).unwrap();

    let stranger = signing::PrivateKey::generate().unwrap();
    let index = std::fs::read(mirror.join("index.json")).unwrap();
    std::fs::write(mirror.join("index.json.sig"), stranger.sign(&index)).unwrap();
    refused(&["index.json.sig: signature does not verify"], 2);

    r.publish(&[], &["--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    r.mirror(3, &mirror);
    refused(&["index.json: expired at"], 2);

    r.mirror(1, &mirror);
    refused(&["serial 1 is lower than 2, which this client already accepted; refusing a rollback"], 2);

    r.mirror(2, &mirror);
    let done = report(&sync(&server.url, &r.pubkey(), &root, &CHANNELS, &[]));
    let k8s = done["extensions"].as_array().unwrap().iter().find(|e| e["name"] == "kubernetes").unwrap();
    let old = format!("/opt/extensions/kubernetes/{}", r.image_of("kubernetes").file_name().unwrap().to_str().unwrap());
    assert_eq!((k8s["outcome"].as_str(), k8s["previous"].as_str()), (Some("switched"), Some(old.as_str())));
    assert_eq!(done["downloaded"], serde_json::json!([next_file]));
    assert_eq!(
        std::fs::read_link(root.join("etc/extensions/kubernetes.raw")).unwrap(),
        Path::new(&format!("/opt/extensions/kubernetes/{next_file}"))
    );
    assert!(root.join(old.trim_start_matches('/')).is_file(), "the previous image is kept");
    assert_eq!(state(&root)["extensions"]["kubernetes"]["previous"], old);
}

/// While the server answers 503 or drops connections, the sync retries with a doubling
/// delay for --retry-for; a refusal (a 404 for the index, a bad signature) is not retried.
fn an_unreachable_server_is_retried_and_a_refusal_is_not() {
    let r = Release::new();
    let fixture = FixtureServer::start();
    for rel in release_index::source::walk(&r.generation(1)).unwrap() {
        fixture.set(&format!("/r/{rel}"), Response::ok(std::fs::read(r.generation(1).join(&rel)).unwrap()));
    }
    let index = fixture.get("/r/index.json").unwrap().body_bytes().to_vec();
    let url = fixture.url_for("/r/");
    let root = ubuntu_root(&r.work.path().join("root"));
    fixture.set("/r/index.json", Response::ok(index.clone()).drop_first(1).fail_first(1, 503));
    let o = sync(&url, &r.pubkey(), &root, &["cni@latest"], &["--retry-for", "30s"]);
    report(&o);
    assert_eq!(fixture.hits("/r/index.json"), 3, "dropped, 503, then the index");
    let err = stderr(&o);
    assert!(
        err.contains("attempt 1 failed, retrying in 1s") && err.contains("attempt 2 failed, retrying in 2s"),
        "{err}"
    );

    fixture.set("/r/index.json", Response::status(404));
    fixture.clear_log();
    let o = sync(&url, &r.pubkey(), &root, &["cni@latest"], &["--retry-for", "30s"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("index.json: not found"), "{}", stderr(&o));
    assert_eq!(fixture.hits("/r/index.json"), 1, "a 404 is final");

    let stranger = signing::PrivateKey::generate().unwrap();
    fixture.set("/r/index.json", Response::ok(index.clone()));
    fixture.set("/r/index.json.sig", Response::ok(stranger.sign(&index).to_vec()));
    fixture.clear_log();
    let started = std::time::Instant::now();
    let o = sync(&url, &r.pubkey(), &root, &["cni@latest"], &["--retry-for", "30s"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("signature does not verify"), "{}", stderr(&o));
    assert_eq!(fixture.hits("/r/index.json"), 1);
    assert!(started.elapsed() < Duration::from_secs(10), "a refusal was retried");

    // Unreachable for longer than allowed: the last error, after the attempts that fit.
    fixture.set("/r/index.json", Response::status(503));
    fixture.clear_log();
    let o = sync(&url, &r.pubkey(), &root, &["cni@latest"], &["--retry-for", "2s"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("HTTP 503"), "{}", stderr(&o));
    assert_eq!(fixture.hits("/r/index.json"), 2, "at 0 s and after 1 s; the next wait (2 s) does not fit");
}

/// One run at a time: a second one waits up to --lock-wait and then names the holder; and a
/// sync killed in the middle of a download leaves the node as it was, `status` reports the
/// unfinished run, and the next sync says so, removes its staging directory and finishes.
fn runs_are_locked_and_a_killed_run_is_finished_by_the_next() {
    let r = Release::new();
    let root = ubuntu_root(&r.work.path().join("root"));
    let node_root = composer::node::root::NodeRoot::open(&root).unwrap();
    let server = Server::start(&r.dir(), &[]);
    let held = composer::node::lock::acquire(&node_root, Duration::ZERO, &mut |_| {}).unwrap();
    let o = sync(&server.url, &r.pubkey(), &root, &["cni@latest"], &["--lock-wait", "1s"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    let me = std::env::current_exe().unwrap();
    assert!(err.contains(&format!("lock is held by pid {} ({}", std::process::id(), me.display())), "{err}");
    assert!(err.contains("waiting up to 1s"), "{err}");
    drop(held);
    assert!(server.image_requests().is_empty());

    // A server that stops sending half-way through the kubernetes image.
    let fixture = FixtureServer::start();
    for rel in release_index::source::walk(&r.generation(1)).unwrap() {
        fixture.set(&format!("/r/{rel}"), Response::ok(std::fs::read(r.generation(1).join(&rel)).unwrap()));
    }
    let k8s = r.image_of("kubernetes").file_name().unwrap().to_str().unwrap().to_owned();
    let body = std::fs::read(r.image_of("kubernetes")).unwrap();
    fixture.set(&format!("/r/{k8s}"), Response::ok(body.clone()).hang_after(body.len() / 2));
    let before = tree_with_times(&root);
    let mut child = composer()
        .args(["node", "sync", "--index", &fixture.url_for("/r/"), "--pubkey"])
        .arg(r.pubkey())
        .arg("--root")
        .arg(&root)
        .args(["-e", "kubernetes@1.31", "-e", "cni@latest", "--timeout", "60s"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stage_parent = root.join("opt/extensions/kubernetes");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let staged = loop {
        let partial = std::fs::read_dir(&stage_parent).ok().and_then(|d| {
            d.flatten().find(|e| e.file_name().to_string_lossy().starts_with(".composer-sync-")).and_then(|e| {
                std::fs::read_dir(e.path()).ok()?.flatten().find(|f| f.metadata().is_ok_and(|m| m.len() > 0))?;
                Some(e.path())
            })
        });
        if let Some(p) = partial {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "the download never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::KILL).unwrap();
    child.wait().unwrap();
    assert!(!root.join("etc/extensions/kubernetes.raw").exists(), "a link was switched before the download ended");
    let st = state(&root);
    assert_eq!(st["operation"]["steps"][0]["step"], "download", "{st:#}");
    assert_eq!(st["operation"]["steps"][0]["done"], false);
    let o = composer().args(["node", "status", "--json", "--root"]).arg(&root).output().unwrap();
    assert!(!o.status.success(), "status must fail while a run is unfinished");
    let status: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(status["problems"][0].as_str().unwrap().contains("did not finish"), "{status:#}");
    let after: Vec<String> =
        tree_with_times(&root).into_iter().filter(|l| !l.contains(" /opt") && !l.contains(" /var/lib")).collect();
    let before: Vec<String> = before.into_iter().filter(|l| !l.contains(" /opt") && !l.contains(" /var/lib")).collect();
    assert_eq!(after, before, "the killed run changed /etc");

    fixture.set(&format!("/r/{k8s}"), Response::ok(body));
    let o = sync(&fixture.url_for("/r/"), &r.pubkey(), &root, &["kubernetes@1.31", "cni@latest"], &[]);
    let done = report(&o);
    assert!(stderr(&o).contains("stopped during step \"download\"; finishing it"), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("removed {}", staged.display())), "{}", stderr(&o));
    assert_eq!(done["interrupted"]["kind"], "sync");
    assert!(!staged.exists());
    assert!(state(&root).get("operation").is_none());
    assert_root_holds(&root, &r.plan(&[r.image_of("kubernetes"), r.image_of("cni")]));
}

/// `status` shows what is installed and from where, and fails naming what drifted.
fn status_reports_and_names_drift() {
    let r = Release::new();
    let server = Server::start(&r.dir(), &[]);
    let root = ubuntu_root(&r.work.path().join("root"));
    let o = composer().args(["node", "status", "--root"]).arg(&root).output().unwrap();
    assert_ok(&o);
    assert!(stdout(&o).contains("nothing installed by composer"), "{}", stdout(&o));
    report(&sync(&server.url, &r.pubkey(), &root, &CHANNELS, &[]));
    let o = composer().args(["node", "status", "--json", "--root"]).arg(&root).output().unwrap();
    let st = report(&o);
    assert_eq!(st["problems"], serde_json::json!([]));
    let k8s = st["extensions"].as_array().unwrap().iter().find(|e| e["name"] == "kubernetes").unwrap();
    assert_eq!(k8s["link-target"], k8s["path"]);
    assert_eq!(k8s["image-present"], true);
    assert!(k8s.get("merged").is_none(), "merging is only known on the running system");
    let text = stdout(&composer().args(["node", "status", "--root"]).arg(&root).output().unwrap());
    assert!(
        text.contains(&format!(
            "kubernetes: {} from {}",
            r.image_of("kubernetes").file_name().unwrap().to_str().unwrap(),
            server.url
        )),
        "{text}"
    );

    let link = root.join("etc/extensions/cni.raw");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("/opt/extensions/cni/elsewhere.raw", &link).unwrap();
    let o = composer().args(["node", "status", "--root"]).arg(&root).output().unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/etc/extensions/cni.raw: points at /opt/extensions/cni/elsewhere.raw"),
        "{}",
        stderr(&o)
    );
}

/// On a Flatcar root (systemd 257) the agent renders Flatcar's plan: the built-in
/// `containerd-flatcar` and `docker-flatcar` masked with links to /dev/null, replacing the
/// links Flatcar's tmpfiles made, and systemd-sysext.service left to the OS, which enables
/// it. 257 reloads the manager itself for images that ask (bakery's do), so no
/// daemon-reload is listed.
fn a_flatcar_root_gets_flatcars_plan() {
    let r = Release::new();
    let server = Server::start(&r.dir(), &[]);
    let root = r.work.path().join("flatcar");
    for (path, text) in [
        ("etc/os-release", sysext_tests::sandbox::FLATCAR_OS_RELEASE),
        ("usr/lib64/systemd/libsystemd-shared-257.so", ""),
    ] {
        std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
        std::fs::write(root.join(path), text).unwrap();
    }
    // What Flatcar's tmpfiles link at boot.
    std::fs::create_dir_all(root.join("etc/extensions")).unwrap();
    std::os::unix::fs::symlink(
        "/usr/share/flatcar/etc/extensions/containerd-flatcar.raw",
        root.join("etc/extensions/containerd-flatcar.raw"),
    )
    .unwrap();
    let done = report(&sync(&server.url, &r.pubkey(), &root, &CHANNELS, &[]));
    assert_eq!(done["os"], "flatcar");
    assert_root_holds(&root, &r.plan_for(NodeOs::Flatcar, &r.exts.all()));
    for builtin in ["containerd-flatcar", "docker-flatcar"] {
        assert_eq!(
            std::fs::read_link(root.join(format!("etc/extensions/{builtin}.raw"))).unwrap(),
            Path::new("/dev/null")
        );
    }
    assert!(!root.join("etc/systemd/system/sysinit.target.wants").exists(), "Flatcar enables systemd-sysext itself");
    assert_eq!(done["activation"]["systemd"], 257);
    assert_eq!(
        words(&done["activation"]["commands"]),
        ["systemctl reload-or-restart systemd-sysext.service", "systemctl start --no-block multi-user.target"]
    );
}

/// An image this node's systemd-sysext would skip (built for another OS) is refused before
/// anything is downloaded; two channels for one extension are refused.
fn images_the_node_would_not_merge_are_refused() {
    let Case { exts, work } = case();
    signing::keygen(&work.path().join("keys")).unwrap();
    let release = work.path().join("release");
    bakery_publish(
        &release,
        &work.path().join("keys/private.pem"),
        &[&exts.ubuntu_kubernetes, &exts.cni],
        &["--base-url", BASE],
    );
    let server = Server::start(&release, &[]);
    let root = work.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/os-release"), sysext_tests::sandbox::FLATCAR_OS_RELEASE).unwrap();
    let o = sync(&server.url, &work.path().join("keys/public.pem"), &root, &["kubernetes@1.31"], &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("would not be merged on this node (systemd-sysext skips it silently): ID=ubuntu but the image's os-release has ID=flatcar"),
        "{}",
        stderr(&o)
    );
    assert!(server.image_requests().is_empty());
    assert!(!root.join("opt").exists());
    let o = sync(&server.url, &work.path().join("keys/public.pem"), &root, &["cni@latest", "cni@1.6"], &[]);
    assert!(stderr(&o).contains("cni is already given as cni@latest"), "{}", stderr(&o));
}

/// `composer-node-sync.service` passes `systemd-analyze verify` without a single warning
/// (every key known to systemd 252), with ExecStart pointing at this build's composer (the
/// unit's own /usr/bin/composer comes from the merged extension; the root tier checks that).
fn the_first_boot_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let text = composer::node::unit::unit();
    assert!(text.contains(
        "\nExecStart=/usr/bin/composer node sync --config /etc/composer/node.toml --once --retry-for 10min\n"
    ));
    for line in [
        "After=network-online.target systemd-sysext.service",
        "Wants=network-online.target",
        "Before=kubelet.service",
        "Restart=on-failure",
        "WantedBy=multi-user.target",
    ] {
        assert!(text.contains(&format!("\n{line}\n")), "{line}");
    }
    let unit = dir.path().join(composer::node::unit::UNIT);
    std::fs::write(&unit, text.replace("/usr/bin/composer", env!("CARGO_BIN_EXE_composer"))).unwrap();
    let o = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    assert!(o.status.success() && o.stderr.is_empty() && o.stdout.is_empty(), "{}{}", stdout(&o), stderr(&o));
    // The check is real: an unknown key is reported.
    std::fs::write(
        &unit,
        text.replace("/usr/bin/composer", env!("CARGO_BIN_EXE_composer")).replace("RestartSec=", "RestartSecs="),
    )
    .unwrap();
    let o = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    assert!(stderr(&o).contains("Unknown key"), "{}", stderr(&o));

    // The upgrade service and its timer, verified together (the timer names the service).
    use composer::node::unit::{upgrade_timer, upgrade_unit, UPGRADE_TIMER, UPGRADE_UNIT};
    let service = upgrade_unit();
    assert!(service.contains("\nExecStart=/usr/bin/composer node upgrade --config /etc/composer/node.toml\n"));
    let timer = upgrade_timer();
    for line in ["OnCalendar=daily", "RandomizedDelaySec=4h", "Persistent=true", "WantedBy=timers.target"] {
        assert!(timer.contains(&format!("\n{line}\n")), "{line}");
    }
    // Their own directory: verify loads the units beside the ones it is given.
    let units = dir.path().join("upgrade");
    std::fs::create_dir(&units).unwrap();
    std::fs::write(units.join(UPGRADE_UNIT), service.replace("/usr/bin/composer", env!("CARGO_BIN_EXE_composer")))
        .unwrap();
    std::fs::write(units.join(UPGRADE_TIMER), &timer).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join(UPGRADE_UNIT))
        .arg(units.join(UPGRADE_TIMER))
        .output()
        .unwrap();
    assert!(o.status.success() && o.stderr.is_empty() && o.stdout.is_empty(), "{}{}", stdout(&o), stderr(&o));
}

// ---- as root, merged for real ----

/// A `systemctl` stand-in for a node whose PID 1 this test cannot be: it records every call
/// in LOG, and plays the manager's part of `reload-or-restart systemd-sysext.service` by
/// running the real `systemd-sysext refresh` (what the unit's reload or restart does).
fn systemctl_stand_in(bins: &Path, log: &Path) {
    std::fs::create_dir_all(bins).unwrap();
    let stub = bins.join("systemctl");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\necho \"$*\" >>'{}'\nif [ \"$*\" = 'reload-or-restart systemd-sysext.service' ]; then exec systemd-sysext refresh; fi\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// On the running system (in a private mount namespace: `--root /`), the agent installs
/// kubernetes, containerd, cni and composer itself from `composer serve`, refreshes through
/// the stand-in (the real systemd-sysext merges), reloads the manager (systemd 252) and
/// starts multi-user.target without blocking; the merged kubelet runs. The merged
/// /usr/bin/composer then runs the second sync, which downloads and activates nothing, and
/// `status` sees everything merged. v1.31.4 with a tampered image is refused and v1.31.3
/// stays merged (and merges again after a refresh); the genuine v1.31.4 is switched to and
/// its kubelet runs.
fn the_agent_installs_merges_and_runs_kubelet() {
    let r = Release::new();
    let composer_image = composer_extension();
    r.publish(&[composer_image], &[]);
    let next = kubernetes_image(K8S_NEXT);
    r.publish(&[&next], &[]);
    let d = r.work.path();
    let mirror = d.join("mirror");
    r.mirror(2, &mirror);
    let tampered = d.join("tampered");
    r.mirror(3, &tampered);
    let next_file = next.file_name().unwrap().to_str().unwrap().to_owned();
    let mut bytes = std::fs::read(tampered.join(&next_file)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(tampered.join(&next_file), bytes).unwrap();
    let genuine = d.join("genuine");
    r.mirror(3, &genuine);
    let server = Server::start(&mirror, &[]);
    let bins = d.join("bin");
    let log = d.join("systemctl.log");
    systemctl_stand_in(&bins, &log);
    let arch = host_arch();
    let go = arch.go_arch();
    let q = |p: &Path| format!("'{}'", p.display());
    let sync = |composer: &str| {
        format!(
            "{composer} node sync --index {} --pubkey {} -e kubernetes@1.31 -e containerd@2.0 -e cni@latest -e composer@latest --retries 0 --json",
            server.url,
            q(&r.pubkey())
        )
    };
    let script = format!(
        "{prelude}export PATH={bins}:$PATH
echo '== first'
{first} >{d}/first.json
kubelet --version
test -x /usr/bin/containerd && test -x /usr/libexec/cni/bridge
/usr/bin/composer --version
echo '== second'
{second} >{d}/second.json
/usr/bin/composer node status --json >{d}/status.json
echo '== tampered'
rm -rf {mirror} && cp -a {tampered} {mirror}
if {second} >/dev/null 2>{d}/tampered.err; then echo 'tampered image accepted' >&2; exit 1; fi
kubelet --version
systemd-sysext refresh >/dev/null
kubelet --version
echo '== genuine'
rm -rf {mirror} && cp -a {genuine} {mirror}
{second} >{d}/third.json
kubelet --version
",
        prelude = namespace_prelude(d),
        bins = q(&bins),
        first = sync(&q(Path::new(env!("CARGO_BIN_EXE_composer")))),
        second = sync("/usr/bin/composer"),
        d = q(d),
        mirror = q(&mirror),
        tampered = q(&tampered),
        genuine = q(&genuine),
    );
    let o = run_in_namespace(&script);
    assert!(o.status.success(), "stdout:\n{}\nstderr:\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let old = format!("kubelet v1.31.3 linux/{go}\n");
    let new = format!("kubelet v1.31.4 linux/{go}\n");
    assert_eq!(
        out,
        format!("== first\n{old}composer {COMPOSER_VERSION}\n== second\n== tampered\n{old}{old}== genuine\n{new}")
    );
    let read = |f: &str| -> Value { serde_json::from_slice(&std::fs::read(d.join(f)).unwrap()).unwrap() };
    let first = read("first.json");
    assert_eq!(first["activation"]["ran"], true, "{first:#}");
    let second = read("second.json");
    assert!(second["activation"].is_null() && second["downloaded"] == serde_json::json!([]), "{second:#}");
    let status = read("status.json");
    assert_eq!(status["problems"], serde_json::json!([]));
    assert!(status["extensions"].as_array().unwrap().iter().all(|e| e["merged"] == true), "{status:#}");
    let err = std::fs::read_to_string(d.join("tampered.err")).unwrap();
    assert!(err.contains(&next_file) && err.contains("does not match the signed index"), "{err}");
    let third = read("third.json");
    assert_eq!(third["downloaded"], serde_json::json!([next_file]));
    let activation = "reload-or-restart systemd-sysext.service\ndaemon-reload\nstart --no-block multi-user.target\n";
    assert_eq!(std::fs::read_to_string(&log).unwrap(), activation.repeat(2), "activated once per change");
    let images = server.image_requests();
    assert_eq!(images.len(), 6, "four images, then only v1.31.4 (its tampered and its genuine copy): {images:?}");
}

/// First boot of an Ubuntu node provisioned with `composer provision cloud-init --agent`, as
/// root in a private mount namespace: the config's script installs the verified composer
/// extension and the agent's files and merges composer (real systemd-sysext); the manager,
/// played by the stand-in, starts what multi-user.target now wants, composer-node-sync.service,
/// by running its ExecStart line as written, so the merged /usr/bin/composer reads
/// /etc/composer/node.toml, installs kubernetes, containerd and cni from `composer serve`, and
/// merges them: the kubelet runs. A second boot's run of the unit (`--once`) does nothing.
fn a_node_provisioned_with_agent_syncs_at_first_boot() {
    let r = Release::new();
    r.publish(&[composer_extension()], &[]);
    let server = Server::start(&r.dir(), &[]);
    let d = r.work.path();
    let cc = d.join("user-data");
    let o = composer()
        .args(["provision", "cloud-init", "--index"])
        .arg(r.dir())
        .arg("--pubkey")
        .arg(r.pubkey())
        .args(["-e", "kubernetes@1.31", "-e", "containerd@2.0", "-e", "cni@latest", "--arch", host_arch().as_str()])
        .args(["--agent", "--base-url", &server.url, "--out"])
        .arg(&cc)
        .output()
        .unwrap();
    assert_ok(&o);
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&cc).unwrap()).unwrap();
    let script = d.join("composer-provision");
    std::fs::write(&script, doc["write_files"][0]["content"].as_str().unwrap()).unwrap();
    let bins = d.join("bin");
    let log = d.join("systemctl.log");
    std::fs::create_dir_all(&bins).unwrap();
    let stub = bins.join("systemctl");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh
echo \"$*\" >>'{log}'
case \"$*\" in
    'restart systemd-sysext.service' | 'reload-or-restart systemd-sysext.service') exec systemd-sysext refresh ;;
    'start multi-user.target')
        # What the manager starts now: the unit multi-user.target wants, run as its ExecStart says.
        wants=/etc/systemd/system/multi-user.target.wants/composer-node-sync.service
        if [ -L \"$wants\" ]; then
            cmd=$(sed -n 's/^ExecStart=//p' \"$wants\")
            $cmd >'{d}/first-boot.out' 2>'{d}/first-boot.err' || exit 1
        fi
        ;;
esac
",
            log = log.display(),
            d = d.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let q = |p: &Path| format!("'{}'", p.display());
    let sh = format!(
        "{prelude}env -i PATH={bins}:/usr/sbin:/usr/bin:/sbin:/bin COMPOSER_PROVISION_BACKOFF=0 /bin/sh {script}
export PATH={bins}:$PATH
kubelet --version
test -x /usr/bin/containerd && test -x /usr/libexec/cni/bridge
/usr/bin/composer node status --json >{d}/status.json
/usr/bin/composer node sync --config /etc/composer/node.toml --once
",
        prelude = namespace_prelude(d),
        bins = q(&bins),
        script = q(&script),
        d = q(d),
    );
    let o = run_in_namespace(&sh);
    let first = std::fs::read_to_string(d.join("first-boot.err")).unwrap_or_default();
    assert!(o.status.success(), "stdout:\n{}\nstderr:\n{}\nthe unit's run:\n{first}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o), format!("kubelet v1.31.3 linux/{}\n", host_arch().go_arch()));
    assert!(stderr(&o).contains("extensions installed, merged and started"), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing to do: a sync completed at"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "restart systemd-sysext.service\ndaemon-reload\nstart multi-user.target\n\
         reload-or-restart systemd-sysext.service\ndaemon-reload\nstart --no-block multi-user.target\n"
    );
    let status: Value = serde_json::from_slice(&std::fs::read(d.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["problems"], serde_json::json!([]));
    let names: Vec<&str> =
        status["extensions"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cni", "composer", "containerd", "kubernetes"]);
    assert!(status["extensions"].as_array().unwrap().iter().all(|e| e["merged"] == true), "{status:#}");
    let images = server.image_requests();
    assert_eq!(images.len(), 4, "composer by the script, the other three by the agent, nothing twice: {images:?}");
}

/// Key rotation through the agent, whose trust lives in node.json: a node configured with
/// the old key follows `bakery vouch` + `bakery publish --rotation` to the new key and
/// installs what it signs; node.json then names the new key and the retired one, and an
/// index the retired key signs afterwards (however genuine) is refused, as is one signed by
/// a key nobody the node trusts vouched for. Replacing the node's key out of band (an
/// emergency rotation) makes it start over from that key.
fn the_agent_follows_a_key_rotation_and_refuses_the_retired_key() {
    let r = Release::new();
    // A plain copy of each generation, so the test can serve forgeries where the node
    // follows the release (`composer serve` keeps a committed generation's files open).
    let served = r.work.path().join("mirror");
    r.mirror(1, &served);
    let server = Server::start(&served, &[]);
    let root = ubuntu_root(&r.work.path().join("root"));
    let old_pub = r.pubkey();
    report(&sync(&server.url, &old_pub, &root, &CHANNELS, &[]));

    let new_keys = r.work.path().join("new-keys");
    let new_id = signing::keygen(&new_keys).unwrap();
    let record = r.work.path().join("rotation.json");
    let vouch = bakery::cli::main_from_iter([
        "bakery".into(),
        "vouch".into(),
        "--key".into(),
        r.work.path().join("keys/private.pem").into_os_string(),
        "--new-pubkey".into(),
        new_keys.join("public.pem").into_os_string(),
        "--out".into(),
        record.clone().into_os_string(),
    ]);
    assert_eq!(vouch, std::process::ExitCode::SUCCESS);
    let next = kubernetes_image(K8S_NEXT);
    let new_priv = new_keys.join("private.pem");
    bakery_publish(&r.dir(), &new_priv, &[&next], &["--rotation", record.to_str().unwrap()]);
    r.mirror(2, &served);

    // Still configured with the old key: the record in the index leads to the new one.
    let got = report(&sync(&server.url, &old_pub, &root, &CHANNELS, &[]));
    assert_eq!(got["serial"], 2);
    let k8s = &state(&root)["extensions"]["kubernetes"];
    assert_eq!(k8s["image"], next.file_name().unwrap().to_str().unwrap(), "installed what the new key signed");
    let rec = &state(&root)["indexes"][&server.url];
    assert_eq!(rec["key-id"], new_id.to_string());
    let old_id = signing::PublicKey::read_pem(&old_pub).unwrap().key_id().to_string();
    assert_eq!(rec["configured-key-id"], old_id);
    assert_eq!(rec["retired-keys"], serde_json::json!([old_id]));
    assert_eq!(rec["trusted-key"].as_str().unwrap().len(), 64);

    // The old key signs a newer index without the record (stolen, or a publisher's slip):
    // refused, since the node retired it.
    let forged = r.work.path().join("forged");
    r.mirror(2, &forged);
    let index_path = forged.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["serial"] = 9.into();
    index["key-id"] = old_id.clone().into();
    index.as_object_mut().unwrap().remove("key-rotations");
    let bytes = serde_json::to_vec_pretty(&index).unwrap();
    std::fs::write(&index_path, &bytes).unwrap();
    let old_key = signing::PrivateKey::read_pem(&r.work.path().join("keys/private.pem")).unwrap();
    std::fs::write(forged.join("index.json.sig"), old_key.sign(&bytes)).unwrap();
    let forged_server = Server::start(&forged, &[]);
    // From another location (a mirror the node has no record of) as from the release's.
    let o = sync(&forged_server.url, &old_pub, &root, &CHANNELS, &[]);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(stderr(&o).contains("retired when it followed a key rotation"), "{}", stderr(&o));
    std::fs::write(served.join("index.json"), &bytes).unwrap();
    std::fs::write(served.join("index.json.sig"), old_key.sign(&bytes)).unwrap();
    let o = sync(&server.url, &old_pub, &root, &CHANNELS, &[]);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(stderr(&o).contains("retired when it followed a key rotation"), "{}", stderr(&o));
    assert_eq!(state(&root)["extensions"]["kubernetes"]["image"], next.file_name().unwrap().to_str().unwrap());

    // An index signed by a stranger: refused.
    let stranger = signing::PrivateKey::generate().unwrap();
    index["key-id"] = stranger.key_id().to_string().into();
    let bytes = serde_json::to_vec_pretty(&index).unwrap();
    std::fs::write(served.join("index.json"), &bytes).unwrap();
    std::fs::write(served.join("index.json.sig"), stranger.sign(&bytes)).unwrap();
    let o = sync(&server.url, &old_pub, &root, &CHANNELS, &[]);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(stderr(&o).contains("which this client does not trust"), "{}", stderr(&o));

    // Emergency rotation: the operator configures the stranger's key (say, the publisher's
    // replacement for a compromised one); the node starts over from it, serial included.
    let stranger_pub = r.work.path().join("stranger.pem");
    std::fs::write(&stranger_pub, stranger.public().to_pem()).unwrap();
    let got = report(&sync(&server.url, &stranger_pub, &root, &CHANNELS, &[]));
    assert_eq!(got["serial"], 9);
    let rec = &state(&root)["indexes"][&server.url];
    assert_eq!(rec["key-id"], stranger.key_id().to_string());
    let retired = rec["retired-keys"].as_array().unwrap();
    assert!(retired.iter().any(|k| *k == old_id) && retired.iter().any(|k| *k == new_id.to_string()), "{rec:#}");
}

/// `--sysupdate` installs the transfer files and enables systemd-sysupdate.timer, linked as
/// `systemctl enable` would, where the node has the unit; a node without it (Ubuntu's
/// systemd 255 ships no sysupdate) gets the transfer files and no dangling link.
fn sysupdate_enables_the_timer_where_the_node_has_it() {
    let r = Release::new();
    let server = Server::start(&r.dir(), &[]);
    let link = "etc/systemd/system/timers.target.wants/systemd-sysupdate.timer";
    let with = ubuntu_root(&r.work.path().join("with"));
    std::fs::write(with.join("usr/lib/systemd/system/systemd-sysupdate.timer"), "[Timer]\n").unwrap();
    report(&sync(&server.url, &r.pubkey(), &with, &CHANNELS, &["--sysupdate"]));
    assert_eq!(
        std::fs::read_link(with.join(link)).unwrap(),
        Path::new("/usr/lib/systemd/system/systemd-sysupdate.timer")
    );
    assert!(with.join("etc/sysupdate.kubernetes.d/kubernetes-v1.31.transfer").is_file());

    let without = ubuntu_root(&r.work.path().join("without"));
    report(&sync(&server.url, &r.pubkey(), &without, &CHANNELS, &["--sysupdate"]));
    assert!(without.join(link).symlink_metadata().is_err(), "enabled a unit the node does not have");
    assert!(without.join("etc/sysupdate.kubernetes.d/kubernetes-v1.31.transfer").is_file());
}

fn main() -> std::process::ExitCode {
    let host = || vec![Need::SupportedHost];
    sysext_tests::harness::run(vec![
        sysext_tests::test!(a_second_sync_downloads_and_changes_nothing).needs(host()),
        sysext_tests::test!(refusals_leave_the_node_as_it_was).needs(host()),
        sysext_tests::test!(an_unreachable_server_is_retried_and_a_refusal_is_not).needs(host()),
        sysext_tests::test!(runs_are_locked_and_a_killed_run_is_finished_by_the_next).needs(host()),
        sysext_tests::test!(status_reports_and_names_drift).needs(host()),
        sysext_tests::test!(a_flatcar_root_gets_flatcars_plan).needs(host()),
        sysext_tests::test!(images_the_node_would_not_merge_are_refused).needs(host()),
        sysext_tests::test!(the_agent_follows_a_key_rotation_and_refuses_the_retired_key).needs(host()),
        sysext_tests::test!(sysupdate_enables_the_timer_where_the_node_has_it).needs(host()),
        sysext_tests::test!(the_first_boot_unit_verifies).tools(&["systemd-analyze"]),
        sysext_tests::test!(a_node_provisioned_with_agent_syncs_at_first_boot)
            .root()
            .needs(host())
            .tools(&MERGE_TOOLS)
            .tools(&["curl"]),
        sysext_tests::test!(the_agent_installs_merges_and_runs_kubelet)
            .root()
            .needs(host())
            .tools(&MERGE_TOOLS)
            .tools(&["systemd-analyze"]),
    ])
}
