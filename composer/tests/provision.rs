//! `composer provision`: configs rendered from a real release (bakery-built images published
//! with a signed index), checked with the stock tools that read them (ignition-validate,
//! cloud-init schema, sh, shellcheck), compared entry by entry with the node plan, and the
//! cloud-init script run for real against a scratch root and a local fixture server.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::namespace::{namespace_prelude, run_in_namespace};
use common::*;
use composer::node::config::NodeConfig;
use composer::plan::{AgentFiles, Entry, ImageSource, NodeOs, NodePlan, PlanRequest, PlannedImage};
use composer::provision::ignition::{data_url, decode_data_url};
use serde_json::Value;
use sysext_tests::harness::Need;
use sysext_tests::{FixtureServer, Response};

/// The base URL `common::release` signs into the index.
const INDEX_BASE: &str = "https://sysext.example.org/ext/";
const CHANNELS: [&str; 3] = ["kubernetes@1.31", "containerd@2.0", "cni@latest"];

/// A published release of the test extensions.
struct Release {
    exts: &'static Extensions,
    work: tempfile::TempDir,
    dir: PathBuf,
    pubkey: PathBuf,
    /// The composer extension, when published too.
    composer: Option<&'static Path>,
}

fn published() -> Release {
    let Case { exts, work } = case();
    let (dir, pubkey) = release(work.path(), exts);
    Release { exts, work, dir, pubkey, composer: None }
}

impl Release {
    /// `composer provision FORMAT --index DIR --pubkey PUB -e … --arch ARCH` plus `extra`.
    fn provision(&self, format: &str, channels: &[&str], extra: &[&str]) -> Output {
        let mut cmd = composer();
        cmd.args(["provision", format, "--index"]).arg(&self.dir).arg("--pubkey").arg(&self.pubkey);
        for c in channels {
            cmd.args(["-e", c]);
        }
        cmd.args(["--arch", self.exts.arch.as_str()]).args(extra).output().unwrap()
    }

    /// Renders `format` into a file in the scratch directory; returns its path.
    fn render(&self, format: &str, channels: &[&str], extra: &[&str]) -> PathBuf {
        let out = self.work.path().join(format!("config.{format}"));
        let _ = std::fs::remove_file(&out);
        let o = self.provision(format, channels, &[extra, &["--out", out.to_str().unwrap()]].concat());
        assert_ok(&o);
        assert_eq!(stdout(&o).trim(), out.display().to_string());
        out
    }

    fn images(&self, channels: &[&str]) -> Vec<&'static Path> {
        let all = self.exts.all();
        channels
            .iter()
            .map(|c| {
                *all.iter()
                    .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(c.split('@').next().unwrap()))
                    .unwrap()
            })
            .collect()
    }

    /// The plan the config must render, built here from the image files themselves.
    fn plan(&self, os: NodeOs, channels: &[&str], base: &str, sysupdate: bool) -> NodePlan {
        let base: sysext_model::BaseUrl = base.parse().unwrap();
        let images: Vec<PlannedImage> = self.images(channels).iter().map(|p| planned_image(p, base.as_str())).collect();
        NodePlan::build(&PlanRequest { os, images: &images, sysupdate: sysupdate.then_some(&base), keyring: None })
    }

    /// Replaces what differs between architectures and runs: digests, sizes, the arch.
    fn redact(&self, text: &str) -> String {
        let mut s = text.to_owned();
        // The key pair is new every run; its base64 line is the part that differs (in a data
        // URL, `+` is percent-encoded).
        let pem = std::fs::read_to_string(&self.pubkey).unwrap();
        let b64 = pem.lines().find(|l| !l.starts_with("-----")).unwrap();
        s = s.replace(b64, "[PUBKEY]").replace(&b64.replace('+', "%2B"), "[PUBKEY]");
        for p in self.exts.all().into_iter().chain(self.composer) {
            let d = signing::Digests::of(&std::fs::read(p).unwrap());
            s = s.replace(&d.sha512.to_hex(), "[SHA512]").replace(&d.sha256.to_hex(), "[SHA256]");
            s = s.replace(&format!(" {} ", d.size), " [SIZE] ");
        }
        s.replace(&format!("composer-{COMPOSER_VERSION}-"), "composer-[VERSION]-")
            .replace(self.exts.arch.as_str(), "[ARCH]")
    }
}

/// A release that also carries the composer extension built from this build's binary
/// (serial 2), for `--agent`.
fn published_with_agent() -> Release {
    let mut r = published();
    let image = composer_extension();
    bakery_publish(&r.dir, &r.work.path().join("keys/private.pem"), &[image], &[]);
    r.composer = Some(image);
    r
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Runs a stock tool; returns whether it succeeded and what it printed.
fn tool(cmd: &mut Command) -> (bool, String) {
    let o = cmd.output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn ignition_validate(path: &Path) -> (bool, String) {
    tool(Command::new("ignition-validate").arg(path))
}

fn cloud_init_schema(path: &Path) -> (bool, String) {
    tool(Command::new("cloud-init").args(["schema", "--config-file"]).arg(path))
}

/// Every entry of an Ignition config's storage and units, keyed by path (or unit name),
/// with `data:` URLs decoded so configs that encode the same bytes differently compare equal.
fn ignition_entries(config: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for list in ["directories", "files", "links"] {
        for item in config["storage"][list].as_array().into_iter().flatten() {
            let mut item = item.clone();
            if let Some(src) = item["contents"]["source"].as_str().filter(|s| s.starts_with("data:")) {
                let text = String::from_utf8(decode_data_url(src).expect("a data URL composer can decode")).unwrap();
                item["contents"]["source"] = Value::String(format!("decoded:{text}"));
            }
            let path = item["path"].as_str().unwrap().to_owned();
            assert!(out.insert(path.clone(), serde_json::json!({ list: item })).is_none(), "{path} twice");
        }
    }
    for unit in config["systemd"]["units"].as_array().into_iter().flatten() {
        out.insert(format!("unit:{}", unit["name"].as_str().unwrap()), unit.clone());
    }
    out
}

/// What an Ignition config must hold for `plan`, in the same keyed form.
fn expected_ignition_entries(plan: &NodePlan) -> BTreeMap<String, Value> {
    let mut config =
        serde_json::json!({"storage": {"directories": [], "files": [], "links": []}, "systemd": {"units": []}});
    for e in &plan.entries {
        let (list, item) = match e {
            Entry::Dir { path } => ("directories", serde_json::json!({"path": path, "mode": 0o755})),
            Entry::Image { path, image } => {
                let ImageSource::Url(url) = &image.source else { unreachable!() };
                (
                    "files",
                    serde_json::json!({"path": path, "mode": 0o644, "contents": {"source": url,
                        "verification": {"hash": format!("sha512-{}", image.sha512.to_hex())}}}),
                )
            }
            Entry::File { path, mode, contents } => {
                ("files", serde_json::json!({"path": path, "mode": mode, "contents": {"source": data_url(contents)}}))
            }
            Entry::Link { path, target, replace } => {
                let mut link = serde_json::json!({"path": path, "target": target, "hard": false});
                if *replace {
                    link["overwrite"] = Value::Bool(true);
                }
                ("links", link)
            }
        };
        config["storage"][list].as_array_mut().unwrap().push(item);
    }
    for u in &plan.enable {
        config["systemd"]["units"].as_array_mut().unwrap().push(serde_json::json!({"name": u.name, "enabled": true}));
    }
    ignition_entries(&config)
}

/// The Ignition config renders exactly the node plan (every directory, image with its
/// SHA-512, transfer file, link, mask and unit, nothing else), Debian's ignition-validate
/// 2.14 accepts it (and would refuse spec 3.4.0, which is why composer writes 3.3.0).
fn ignition_config_renders_the_plan_and_validates() {
    let r = published();
    let out = r.render("ignition", &CHANNELS, &["--sysupdate"]);
    let (ok, msg) = ignition_validate(&out);
    assert!(ok, "ignition-validate refused it:\n{msg}");
    let config = json(&out);
    assert_eq!(config["ignition"]["version"], "3.3.0");
    let plan = r.plan(NodeOs::Flatcar, &CHANNELS, INDEX_BASE, true);
    assert_eq!(ignition_entries(&config), expected_ignition_entries(&plan));
    let masks: Vec<&str> = plan.links().filter(|(_, t)| *t == "/dev/null").map(|(l, _)| l).collect();
    assert_eq!(masks, ["/etc/extensions/containerd-flatcar.raw", "/etc/extensions/docker-flatcar.raw"]);
    insta::assert_snapshot!("ignition", r.redact(&std::fs::read_to_string(&out).unwrap()));

    let mut newer = config.clone();
    newer["ignition"]["version"] = Value::from("3.4.0");
    let newer_path = r.work.path().join("newer.ign");
    std::fs::write(&newer_path, newer.to_string()).unwrap();
    assert!(!ignition_validate(&newer_path).0, "Debian's ignition-validate accepts 3.4.0 now; the premise changed");

    // --base-url moves every download and the transfer files' Path= to that server.
    let mirror = "https://mirror.example.net/sysext/";
    let out = r.render("ignition", &CHANNELS, &["--sysupdate", "--base-url", mirror]);
    assert!(ignition_validate(&out).0);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("sysext.example.org"), "{text}");
    assert_eq!(
        ignition_entries(&json(&out)),
        expected_ignition_entries(&r.plan(NodeOs::Flatcar, &CHANNELS, mirror, true))
    );
}

/// Butane's YAML translates (by Butane's rules for variant flatcar 1.0.0: version 3.3.0,
/// `inline` becomes a `data:` URL, every other key unchanged) to the same files, links and
/// units as the Ignition output, read with an independent YAML parser (Python's), and the
/// translation passes ignition-validate. The butane binary itself is not packaged in Debian.
fn butane_translates_to_the_same_ignition() {
    let r = published();
    let butane = r.render("butane", &CHANNELS, &["--sysupdate"]);
    let ignition = r.render("ignition", &CHANNELS, &["--sysupdate"]);
    let text = std::fs::read_to_string(&butane).unwrap();
    assert!(text.starts_with("variant: flatcar\nversion: 1.0.0\n"), "{text}");
    insta::assert_snapshot!("butane", r.redact(&text));

    let doc = butane_to_ignition(&butane, &r.work.path().join("translated.ign"));
    assert_eq!(ignition_entries(&doc), ignition_entries(&json(&ignition)));
}

/// Butane → Ignition by Butane's rules for variant flatcar 1.0.0 (for the keys composer
/// writes), read with Python's YAML parser; the result is written to `out` and must pass
/// ignition-validate.
fn butane_to_ignition(butane: &Path, out: &Path) -> Value {
    let o = Command::new("python3")
        .args(["-c", "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"])
        .arg(butane)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let mut doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((doc["variant"].as_str(), doc["version"].as_str()), (Some("flatcar"), Some("1.0.0")));
    let obj = doc.as_object_mut().unwrap();
    obj.remove("variant");
    obj.remove("version");
    obj.insert("ignition".into(), serde_json::json!({"version": "3.3.0"}));
    for f in doc["storage"]["files"].as_array_mut().unwrap() {
        if let Some(inline) = f["contents"].as_object_mut().and_then(|c| c.remove("inline")) {
            f["contents"]["source"] = Value::String(data_url(inline.as_str().unwrap().as_bytes()));
        }
    }
    std::fs::write(out, doc.to_string()).unwrap();
    let (ok, msg) = ignition_validate(out);
    assert!(ok, "the translated Butane does not validate:\n{msg}");
    doc
}

/// The cloud-config passes `cloud-init schema`, and the script it writes passes `sh -n` and
/// shellcheck; the unit runs it and runcmd starts the unit, stopping runcmd if it fails.
fn cloud_config_validates_and_its_script_is_clean() {
    let r = published();
    let out = r.render("cloud-init", &CHANNELS, &["--sysupdate"]);
    let (ok, msg) = cloud_init_schema(&out);
    assert!(ok, "cloud-init schema refused it:\n{msg}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("#cloud-config\n"));
    insta::assert_snapshot!("cloud-config", r.redact(&text));

    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(doc["runcmd"][1], "systemctl start composer-provision.service || exit 1");
    let script = r.work.path().join("provision.sh");
    std::fs::write(&script, doc["write_files"][0]["content"].as_str().unwrap()).unwrap();
    assert_eq!(doc["write_files"][0]["path"], "/usr/local/libexec/composer-provision");
    let unit = doc["write_files"][1]["content"].as_str().unwrap();
    assert!(unit.contains("\nType=oneshot\n") && unit.contains("\nExecStart=/usr/local/libexec/composer-provision\n"));
    let (ok, msg) = tool(Command::new("sh").arg("-n").arg(&script));
    assert!(ok, "sh -n: {msg}");
    let (ok, msg) = tool(Command::new("shellcheck").args(["-s", "sh"]).arg(&script));
    assert!(ok, "shellcheck:\n{msg}");
}

// ---- the cloud-init script, run for real ----

/// The tools the script needs, linked into a directory used as its whole PATH.
const SCRIPT_TOOLS: [&str; 12] =
    ["wc", "mkdir", "mv", "rm", "rmdir", "ln", "chmod", "mktemp", "sleep", "sync", "sha256sum", "sha512sum"];

fn which(tool: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is not installed"))
}

/// A PATH directory holding exactly `extra` plus [`SCRIPT_TOOLS`].
fn bin_dir(dir: &Path, extra: &[&str]) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for t in SCRIPT_TOOLS.iter().chain(extra) {
        std::os::unix::fs::symlink(which(t), dir.join(t)).unwrap();
    }
    dir.to_owned()
}

/// Serves every file of the release under `/ext/`.
fn serve(release: &Path) -> FixtureServer {
    let server = FixtureServer::start();
    for path in release_index::source::walk(release).unwrap() {
        server.set(&format!("/ext/{path}"), Response::ok(std::fs::read(release.join(&path)).unwrap()));
    }
    server
}

/// Renders the cloud-config for `channels` downloading from `base` and returns its script.
fn script_for(r: &Release, channels: &[&str], base: &str, name: &str) -> PathBuf {
    let out = r.render("cloud-init", channels, &["--sysupdate", "--base-url", base]);
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    let script = r.work.path().join(name);
    std::fs::write(&script, doc["write_files"][0]["content"].as_str().unwrap()).unwrap();
    script
}

/// A scratch root with what an Ubuntu root has that the script looks for.
fn scratch_root(dir: &Path) -> PathBuf {
    let unit = dir.join("usr/lib/systemd/system/systemd-sysext.service");
    std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
    std::fs::write(&unit, "[Unit]\n").unwrap();
    dir.to_owned()
}

fn run_script(script: &Path, root: &Path, path: &Path) -> Output {
    Command::new("/bin/sh")
        .arg(script)
        .env_clear()
        .env("PATH", path)
        .env("ROOT", root)
        .env("COMPOSER_PROVISION_ATTEMPTS", "3")
        .env("COMPOSER_PROVISION_BACKOFF", "0")
        .output()
        .unwrap()
}

/// The script installs exactly the plan (images verified, transfer files, links, the
/// systemd-sysext enablement) with curl and, on a node without curl, with wget; a
/// re-run downloads nothing. A tampered image is refused with a message naming it, exit
/// non-zero, and the node keeps its previous extensions and links byte for byte, with no
/// scratch files left; once the server is fixed, the same script succeeds.
fn cloud_init_script_installs_the_plan_and_refuses_tampering() {
    let r = published();
    let server = serve(&r.dir);
    let base = server.url_for("/ext/");
    let two = ["kubernetes@1.31", "cni@latest"];
    let first = script_for(&r, &two, &base, "first.sh");
    let bins = r.work.path().join("bin-curl");
    let root = scratch_root(&r.work.path().join("root"));
    let o = run_script(&first, &root, &bin_dir(&bins, &["curl"]));
    assert!(o.status.success(), "the script failed:\n{}", stderr(&o));
    assert!(stderr(&o).contains("not merging (ROOT is set)"), "{}", stderr(&o));
    assert_root_holds(&root, &r.plan(NodeOs::Ubuntu, &two, &base, true));

    // Again: everything is in place, nothing is downloaded.
    server.clear_log();
    let o = run_script(&first, &root, &bins);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("already installed"), "{}", stderr(&o));
    assert!(server.requests().is_empty(), "downloaded again: {:?}", server.requests());

    // Adding containerd, whose bytes the server tampered with.
    let before = tree(&root);
    let containerd = r.images(&["containerd@2.0"])[0].file_name().unwrap().to_str().unwrap().to_owned();
    let mut bytes = std::fs::read(r.dir.join(&containerd)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    server.set(&format!("/ext/{containerd}"), Response::ok(bytes));
    let three = ["kubernetes@1.31", "containerd@2.0", "cni@latest"];
    let second = script_for(&r, &three, &base, "second.sh");
    let o = run_script(&second, &root, &bins);
    assert!(!o.status.success(), "a tampered image was accepted");
    let err = stderr(&o);
    assert!(err.contains(&containerd) && err.contains("the plan says") && err.contains("refusing it"), "{err}");
    assert_eq!(tree(&root), before, "a refused run changed the node");

    // Fixed: the same script now installs containerd too.
    server.set(&format!("/ext/{containerd}"), Response::ok(std::fs::read(r.dir.join(&containerd)).unwrap()));
    let o = run_script(&second, &root, &bins);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_root_holds(&root, &r.plan(NodeOs::Ubuntu, &three, &base, true));

    // A node with wget and no curl.
    let wget_root = scratch_root(&r.work.path().join("root-wget"));
    let o = run_script(&second, &wget_root, &bin_dir(&r.work.path().join("bin-wget"), &["wget"]));
    assert!(o.status.success(), "with wget:\n{}", stderr(&o));
    assert_root_holds(&wget_root, &r.plan(NodeOs::Ubuntu, &three, &base, true));

    // Neither: refused before anything is touched.
    let bare = scratch_root(&r.work.path().join("root-bare"));
    let before = tree(&bare);
    let o = run_script(&second, &bare, &bin_dir(&r.work.path().join("bin-none"), &[]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("neither curl nor wget is installed"), "{}", stderr(&o));
    assert_eq!(tree(&bare), before);
}

/// A release signed with `--openpgp`: the script installs the release's keyring where
/// systemd-pull looks, byte for byte, beside transfer files that say `Verify=yes`; on a node
/// without `base64` it refuses before touching anything.
fn cloud_init_script_installs_the_keyring_of_a_signed_release() {
    let Case { exts, work } = case();
    let (dir, pubkey) = release(work.path(), exts);
    bakery_publish(&dir, &work.path().join("keys/private.pem"), &[], &["--openpgp"]);
    let r = Release { exts, work, dir, pubkey, composer: None };
    let server = serve(&r.dir);
    let base = server.url_for("/ext/");
    let script = script_for(&r, &["kubernetes@1.31"], &base, "keyring.sh");
    let w = r.work.path();

    let bare = scratch_root(&w.join("root-no-base64"));
    let before = tree(&bare);
    let o = run_script(&script, &bare, &bin_dir(&w.join("bin-no-base64"), &["curl"]));
    assert!(!o.status.success(), "ran without base64");
    assert!(
        stderr(&o).contains("base64 is not installed: cannot write /etc/systemd/import-pubring.gpg"),
        "{}",
        stderr(&o)
    );
    assert_eq!(tree(&bare), before);

    let root = scratch_root(&w.join("root"));
    let o = run_script(&script, &root, &bin_dir(&w.join("bin"), &["curl", "base64"]));
    assert!(o.status.success(), "the script failed:\n{}", stderr(&o));
    let installed = std::fs::read(root.join("etc/systemd/import-pubring.gpg")).unwrap();
    assert_eq!(installed, std::fs::read(r.dir.join("import-pubring.gpg")).unwrap(), "not the release's keyring");
    let transfer = std::fs::read_to_string(root.join("etc/sysupdate.kubernetes.d/kubernetes-v1.31.transfer")).unwrap();
    assert!(transfer.starts_with("[Transfer]\nVerify=yes\n"), "{transfer}");
    let leftovers: Vec<_> = std::fs::read_dir(root.join("etc/systemd"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".composer-new"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// An unreachable or overloaded server (dropped connections, 503) is retried with backoff
/// until it answers, with curl and with wget; a 404 is final at once; a server that never
/// recovers fails after the attempts allowed. No failure leaves anything behind.
fn cloud_init_script_retries_only_what_may_recover() {
    let r = published();
    let server = serve(&r.dir);
    let base = server.url_for("/ext/");
    let one = ["cni@latest"];
    let script = script_for(&r, &one, &base, "cni.sh");
    let cni = r.images(&one)[0].file_name().unwrap().to_str().unwrap().to_owned();
    let path = format!("/ext/{cni}");
    let body = std::fs::read(r.dir.join(&cni)).unwrap();
    for downloader in ["curl", "wget"] {
        let bins = bin_dir(&r.work.path().join(format!("bin-{downloader}")), &[downloader]);
        let root = scratch_root(&r.work.path().join(format!("root-{downloader}")));
        let before = tree(&root);
        server.set(&path, Response::ok(body.clone()).drop_first(1).fail_first(1, 503));
        server.clear_log();
        let o = run_script(&script, &root, &bins);
        assert!(o.status.success(), "{downloader}: {}", stderr(&o));
        assert_eq!(server.hits(&path), 3, "{downloader}: dropped, 503, then the image");
        assert!(stderr(&o).contains("attempt 2 of 3 failed"), "{}", stderr(&o));
        assert_root_holds(&root, &r.plan(NodeOs::Ubuntu, &one, &base, true));

        let root = scratch_root(&r.work.path().join(format!("root-{downloader}-404")));
        server.set(&path, Response::status(404));
        server.clear_log();
        let o = run_script(&script, &root, &bins);
        assert!(!o.status.success());
        assert_eq!(server.hits(&path), 1, "{downloader}: a 404 is not retried");
        assert!(stderr(&o).contains("HTTP 404") && stderr(&o).contains("download failed"), "{}", stderr(&o));
        assert_eq!(tree(&root), before);

        server.set(&path, Response::ok(body.clone()).fail_first(10, 503));
        server.clear_log();
        let o = run_script(&script, &root, &bins);
        assert!(!o.status.success());
        assert_eq!(server.hits(&path), 3);
        assert!(stderr(&o).contains("still unreachable after 3 attempts"), "{}", stderr(&o));
        assert_eq!(tree(&root), before);
    }
}

/// As root, in a private mount namespace (tmpfs /run and /opt, an overlay over /etc, an
/// Ubuntu os-release), the script runs as on a node: ROOT unset, real systemd-sysext, and a
/// systemctl stand-in that records its calls (restarting systemd-sysext.service runs
/// `systemd-sysext refresh`, as the unit does). The extensions really merge, and the
/// manager is asked to reload and start multi-user.target, which pulls in the units their
/// drop-ins name.
fn cloud_init_script_merges_for_real() {
    let r = published();
    let server = serve(&r.dir);
    let base = server.url_for("/ext/");
    let script = script_for(&r, &CHANNELS, &base, "node.sh");
    let d = r.work.path();
    let bins = bin_dir(&d.join("bin"), &["curl"]);
    let log = d.join("systemctl.log");
    let stub = bins.join("systemctl");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\necho \"$*\" >>'{}'\nif [ \"$*\" = 'restart systemd-sysext.service' ]; then exec '{}' refresh; fi\n",
            log.display(),
            which("systemd-sysext").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let q = |p: &Path| format!("'{}'", p.display());
    let sh = format!(
        "{prelude}env -i PATH={bins} COMPOSER_PROVISION_BACKOFF=0 /bin/sh {script}
for f in kubelet kubeadm containerd; do test -x /usr/bin/$f || {{ echo \"$f not merged\" >&2; exit 1; }}; done
ls -l /etc/extensions /etc/systemd/system/sysinit.target.wants
",
        prelude = namespace_prelude(d),
        bins = q(&bins),
        script = q(&script)
    );
    let o = run_in_namespace(&sh);
    assert!(o.status.success(), "stdout:\n{}\nstderr:\n{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("extensions installed, merged and started"), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("systemd-sysext.service -> /usr/lib/systemd/system/systemd-sysext.service"),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "restart systemd-sysext.service\ndaemon-reload\nstart multi-user.target\n"
    );
}

// ---- --base and refusals ----

/// `--base` keeps the user's config (users, their files, their runcmd) and adds the plan:
/// the results still validate; a path or unit both define is refused naming it, with no
/// output written.
fn base_configs_are_merged_and_conflicts_named() {
    let r = published();
    let w = r.work.path();
    let base = w.join("base.ign");
    std::fs::write(
        &base,
        r#"{"ignition":{"version":"3.3.0"},"passwd":{"users":[{"name":"core","sshAuthorizedKeys":["ssh-ed25519 AAAA"]}]},
            "storage":{"files":[{"path":"/etc/hostname","mode":420,"contents":{"source":"data:,node-1"}}]}}"#,
    )
    .unwrap();
    let out = r.render("ignition", &CHANNELS, &["--base", base.to_str().unwrap()]);
    assert!(ignition_validate(&out).0, "{}", ignition_validate(&out).1);
    let merged = json(&out);
    assert_eq!(merged["passwd"]["users"][0]["sshAuthorizedKeys"][0], "ssh-ed25519 AAAA");
    assert_eq!(merged["storage"]["files"][0]["path"], "/etc/hostname");
    let mut want = expected_ignition_entries(&r.plan(NodeOs::Flatcar, &CHANNELS, INDEX_BASE, false));
    want.extend(ignition_entries(&serde_json::json!({"storage": {"files": [merged["storage"]["files"][0]]}})));
    assert_eq!(ignition_entries(&merged), want);

    let clash = w.join("clash.ign");
    std::fs::write(
        &clash,
        r#"{"ignition":{"version":"3.3.0"},"storage":{"links":[{"path":"/etc/extensions/kubernetes.raw","target":"/x"}]}}"#,
    )
    .unwrap();
    let refused = w.join("refused.ign");
    let o =
        r.provision("ignition", &CHANNELS, &["--base", clash.to_str().unwrap(), "--out", refused.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("clash.ign"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("storage.links[0] is /etc/extensions/kubernetes.raw, which composer writes too"),
        "{}",
        stderr(&o)
    );
    assert!(!refused.exists() && stdout(&o).is_empty());

    let butane = w.join("base.bu");
    std::fs::write(&butane, "variant: flatcar\nversion: 1.0.0\npasswd:\n  users:\n    - name: core\n").unwrap();
    let out = r.render("butane", &CHANNELS, &["--base", butane.to_str().unwrap()]);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("variant: flatcar\nversion: 1.0.0\npasswd:\n"), "{text}");

    let cc = w.join("user-data");
    std::fs::write(
        &cc,
        "#cloud-config\nhostname: node-1\nssh_authorized_keys:\n  - ssh-ed25519 AAAA\nruncmd:\n  - [kubeadm, join, --config, /etc/kubeadm.yaml]\nwrite_files:\n  - path: /etc/kubeadm.yaml\n    content: |\n      kind: JoinConfiguration\n",
    )
    .unwrap();
    let out = r.render("cloud-init", &CHANNELS, &["--base", cc.to_str().unwrap()]);
    let (ok, msg) = cloud_init_schema(&out);
    assert!(ok, "{msg}");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(doc["hostname"], "node-1");
    assert_eq!(doc["write_files"][0]["path"], "/etc/kubeadm.yaml");
    assert_eq!(doc["write_files"][1]["path"], "/usr/local/libexec/composer-provision");
    assert_eq!(doc["runcmd"][1], "systemctl start composer-provision.service || exit 1");
    assert_eq!(doc["runcmd"][2][0], "kubeadm", "the user's commands run after the extensions are merged");

    let clash = w.join("clash-data");
    std::fs::write(&clash, "#cloud-config\nwrite_files:\n  - path: /etc/extensions/cni.raw\n    content: x\n").unwrap();
    let o = r.provision("cloud-init", &CHANNELS, &["--base", clash.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("write_files[0] is /etc/extensions/cni.raw, which composer's script creates"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty(), "partial output on stdout");
}

/// Unknown extensions and unmatched channels list what the index has; a bad --base names the
/// file and the problem; a stranger's key refuses the index; none of them write output, and
/// an existing --out is left as it was.
fn refusals_say_what_is_available() {
    let r = published();
    let w = r.work.path();
    let out = w.join("keep.ign");
    std::fs::write(&out, "old").unwrap();
    let out_arg = ["--out", out.to_str().unwrap()];
    let refused = |channels: &[&str], extra: &[&str], needles: &[&str]| {
        let o = r.provision("ignition", channels, &[extra, &out_arg].concat());
        assert!(!o.status.success(), "accepted {channels:?} {extra:?}");
        for n in needles {
            assert!(stderr(&o).contains(n), "no '{n}' in:\n{}", stderr(&o));
        }
        assert!(stdout(&o).is_empty());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "old");
    };
    refused(&["kubernetes@1.40"], &[], &["kubernetes@1.40: no", "available: v1.31.3"]);
    refused(&["nope@1"], &[], &["has no extension 'nope'; available: cni, containerd, kubernetes"]);
    refused(&["cni@latest", "cni@1.6"], &[], &["cni is already given as cni@latest"]);
    let bad = w.join("broken.ign");
    std::fs::write(&bad, "{ not json").unwrap();
    refused(&["cni@latest"], &["--base", bad.to_str().unwrap()], &["--base", "broken.ign", "not valid JSON"]);
    refused(&["cni@latest"], &["--base", w.join("missing.ign").to_str().unwrap()], &["reading --base", "missing.ign"]);
    refused(&["cni@latest"], &["--min-serial", "5"], &["serial 1 is lower than 5"]);
    let stranger = w.join("stranger");
    signing::keygen(&stranger).unwrap();
    let o = composer()
        .args(["provision", "ignition", "--index"])
        .arg(&r.dir)
        .arg("--pubkey")
        .arg(stranger.join("public.pem"))
        .args(["-e", "cni@latest", "--arch", r.exts.arch.as_str()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("index.json.sig: signed by key"), "{}", stderr(&o));
    assert!(stderr(&o).contains("which this client does not trust"), "{}", stderr(&o));
    let leftovers: Vec<_> = std::fs::read_dir(w)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".composer-provision"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// An image built for Ubuntu only is refused for Flatcar (systemd-sysext would skip it
/// silently) and accepted for Ubuntu.
fn refuses_an_image_the_os_would_not_merge() {
    let Case { exts, work } = case();
    let keys = work.path().join("keys");
    signing::keygen(&keys).unwrap();
    let key = signing::PrivateKey::read_pem(&keys.join("private.pem")).unwrap();
    let release = work.path().join("release");
    let opts = release_index::publish::PublishOptions {
        release_dir: &release,
        key: &key,
        rotation: None,
        openpgp: false,
        base_url: Some(INDEX_BASE.parse().unwrap()),
        valid_for: std::time::Duration::from_secs(86_400),
        now: release_index::timestamp::Timestamp::now(),
        keep_generations: 3,
        fail_after: None,
    };
    release_index::publish::publish(&[bakery::release::new_image(&exts.ubuntu_kubernetes).unwrap()], &opts).unwrap();
    let run = |format: &str| {
        composer()
            .args(["provision", format, "--index"])
            .arg(&release)
            .arg("--pubkey")
            .arg(keys.join("public.pem"))
            .args(["-e", "kubernetes@1.31", "--arch", exts.arch.as_str()])
            .output()
            .unwrap()
    };
    let o = run("butane");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is built for ID=ubuntu, which Flatcar nodes do not merge"), "{}", stderr(&o));
    assert_ok(&run("cloud-init"));
}

// ---- --agent ----

/// The plan an `--agent` config renders: the composer image (pinned by digest, from `base`),
/// its link, systemd-sysext enabled, and the agent's files (`config` as the config carries
/// it, the release key, the unit) with composer-node-sync.service enabled.
fn agent_plan(r: &Release, os: NodeOs, base: &str, config: &str) -> NodePlan {
    let image = r.composer.expect("a release with the composer extension");
    let planned = planned_image(image, base.parse::<sysext_model::BaseUrl>().unwrap().as_str());
    let files = AgentFiles {
        config: config.to_owned(),
        pubkey: std::fs::read_to_string(&r.pubkey).unwrap(),
        unit: composer::node::unit::unit(),
        auto_upgrade: false,
    };
    NodePlan::build(&PlanRequest { os, images: &[planned], sysupdate: None, keyring: None }).with_agent(&files)
}

/// The node.toml a config carries: the index nodes read (`base`), the channels and the
/// agent's own, the architecture, the OS and the serial seen when provisioning.
fn assert_node_config(r: &Release, text: &str, base: &str, os: NodeOs) {
    let config = NodeConfig::parse(Path::new("node.toml"), text).unwrap();
    let mut extensions: Vec<sysext_model::ChannelRef> = CHANNELS.iter().map(|c| c.parse().unwrap()).collect();
    extensions.push("composer@latest".parse().unwrap());
    assert_eq!(
        config,
        NodeConfig {
            index: base.parse().unwrap(),
            pubkey: "/etc/composer/release.pub".into(),
            extensions,
            arch: Some(r.exts.arch),
            os: Some(os),
            min_serial: Some(2),
            sysupdate: false,
        }
    );
    assert!(text.starts_with("# What this node follows"), "{text}");
}

/// The contents of the file at `path` in an Ignition config (a `data:` URL).
fn ignition_file(config: &Value, path: &str) -> String {
    let file = config["storage"]["files"].as_array().unwrap().iter().find(|f| f["path"] == path).unwrap();
    String::from_utf8(decode_data_url(file["contents"]["source"].as_str().unwrap()).unwrap()).unwrap()
}

/// `systemd-analyze verify` accepts `unit` without a word, with ExecStart pointing at this
/// build's composer (on the node it is the merged /usr/bin/composer).
fn assert_unit_verifies(unit: &str, dir: &Path) {
    let path = dir.join("composer-node-sync.service");
    std::fs::write(&path, unit.replace("/usr/bin/composer", env!("CARGO_BIN_EXE_composer"))).unwrap();
    let o = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    assert!(o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(), "{}{}", stdout(&o), stderr(&o));
}

/// With `--agent`, every format installs the agent instead of pinning the extensions: the
/// composer extension from the same release pinned by SHA-512 like any image, node.toml with
/// the channels, the release key and composer-node-sync.service enabled, and no other image.
/// ignition-validate, cloud-init schema, shellcheck and systemd-analyze verify accept what
/// they read of it; Butane translates to the same Ignition.
fn agent_configs_validate_and_install_the_agent() {
    let r = published_with_agent();
    let ign = r.render("ignition", &CHANNELS, &["--agent"]);
    let (ok, msg) = ignition_validate(&ign);
    assert!(ok, "ignition-validate refused it:\n{msg}");
    let config = json(&ign);
    let toml = ignition_file(&config, "/etc/composer/node.toml");
    assert_node_config(&r, &toml, INDEX_BASE, NodeOs::Flatcar);
    assert_eq!(
        ignition_entries(&config),
        expected_ignition_entries(&agent_plan(&r, NodeOs::Flatcar, INDEX_BASE, &toml))
    );
    let text = std::fs::read_to_string(&ign).unwrap();
    for ext in ["kubernetes-v", "containerd-2", "cni-v"] {
        assert!(!text.contains(ext), "{ext} is pinned in an --agent config");
    }
    insta::assert_snapshot!("ignition-agent", r.redact(&text));
    let unit = ignition_file(&config, "/etc/systemd/system/composer-node-sync.service");
    assert_eq!(unit, composer::node::unit::unit());
    assert_unit_verifies(&unit, r.work.path());
    // The upgrade service and timer are installed; the timer is enabled with --auto-upgrade.
    assert_eq!(ignition_file(&config, composer::node::unit::UPGRADE_TIMER_PATH), composer::node::unit::upgrade_timer());
    assert_eq!(ignition_file(&config, composer::node::unit::UPGRADE_UNIT_PATH), composer::node::unit::upgrade_unit());
    let auto = json(&r.render("ignition", &CHANNELS, &["--agent", "--auto-upgrade"]));
    let units = auto["systemd"]["units"].as_array().unwrap();
    assert!(
        units.iter().any(|u| u["name"] == composer::node::unit::UPGRADE_TIMER && u["enabled"] == true),
        "{units:#?}"
    );
    let before = config["systemd"]["units"].as_array().unwrap();
    assert!(!before.iter().any(|u| u["name"] == composer::node::unit::UPGRADE_TIMER), "enabled only on request");

    let bu = r.render("butane", &CHANNELS, &["--agent"]);
    insta::assert_snapshot!("butane-agent", r.redact(&std::fs::read_to_string(&bu).unwrap()));
    let doc = butane_to_ignition(&bu, &r.work.path().join("translated.ign"));
    assert_eq!(ignition_entries(&doc), ignition_entries(&config));

    let cc = r.render("cloud-init", &CHANNELS, &["--agent"]);
    let (ok, msg) = cloud_init_schema(&cc);
    assert!(ok, "cloud-init schema refused it:\n{msg}");
    let text = std::fs::read_to_string(&cc).unwrap();
    insta::assert_snapshot!("cloud-config-agent", r.redact(&text));
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let script = r.work.path().join("agent.sh");
    std::fs::write(&script, doc["write_files"][0]["content"].as_str().unwrap()).unwrap();
    let (ok, msg) = tool(Command::new("sh").arg("-n").arg(&script));
    assert!(ok, "sh -n: {msg}");
    let (ok, msg) = tool(Command::new("shellcheck").args(["-s", "sh"]).arg(&script));
    assert!(ok, "shellcheck:\n{msg}");
}

/// `--agent` refuses what cannot work: with --sysupdate, the agent's own extension as an
/// --extension, a release without a composer extension, a channel that matches nothing.
fn agent_refusals_name_the_problem() {
    let plain = published();
    let r = published_with_agent();
    let refused = |r: &Release, channels: &[&str], extra: &[&str], needle: &str| {
        let o = r.provision("ignition", channels, extra);
        assert!(!o.status.success(), "accepted {channels:?} {extra:?}");
        assert!(stderr(&o).contains(needle), "no '{needle}' in:\n{}", stderr(&o));
        assert!(stdout(&o).is_empty());
    };
    refused(&r, &CHANNELS, &["--agent", "--sysupdate"], "cannot be used with");
    refused(
        &r,
        &["cni@latest", "composer@latest"],
        &["--agent"],
        "--extension composer@latest: with --agent, the composer image is the agent's own",
    );
    refused(&plain, &CHANNELS, &["--agent"], "has no extension 'composer'; available: cni, containerd, kubernetes");
    refused(&r, &CHANNELS, &["--agent", "--agent-channel", "composer@9"], "composer@9: no");
    refused(&r, &["kubernetes@1.40"], &["--agent"], "kubernetes@1.40: no");
}

/// The cloud-init script of an `--agent` config installs the agent on a scratch root: the
/// verified composer image and its link, node.toml naming the server, the key, the unit and
/// its enablement link (to the unit the plan wrote into /etc/systemd/system).
fn cloud_init_agent_script_installs_the_agent() {
    let r = published_with_agent();
    let server = serve(&r.dir);
    let base = server.url_for("/ext/");
    let cc = r.render("cloud-init", &CHANNELS, &["--agent", "--base-url", &base]);
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(cc).unwrap()).unwrap();
    let script = r.work.path().join("agent.sh");
    std::fs::write(&script, doc["write_files"][0]["content"].as_str().unwrap()).unwrap();
    let root = scratch_root(&r.work.path().join("root"));
    let o = run_script(&script, &root, &bin_dir(&r.work.path().join("bin"), &["curl"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let toml = std::fs::read_to_string(root.join("etc/composer/node.toml")).unwrap();
    assert_node_config(&r, &toml, &base, NodeOs::Ubuntu);
    assert_root_holds(&root, &agent_plan(&r, NodeOs::Ubuntu, &base, &toml));
    assert_eq!(
        std::fs::read_link(root.join("etc/systemd/system/multi-user.target.wants/composer-node-sync.service")).unwrap(),
        Path::new("/etc/systemd/system/composer-node-sync.service")
    );
    let images: Vec<String> = server.requests().into_iter().filter(|l| l.contains(".raw")).collect();
    assert_eq!(images.len(), 1, "only the composer image: {images:?}");
}

fn main() -> std::process::ExitCode {
    let host = || vec![Need::SupportedHost];
    sysext_tests::harness::run(vec![
        sysext_tests::test!(ignition_config_renders_the_plan_and_validates).needs(host()).tools(&["ignition-validate"]),
        sysext_tests::test!(butane_translates_to_the_same_ignition)
            .needs(host())
            .tools(&["ignition-validate", "python3"]),
        sysext_tests::test!(cloud_config_validates_and_its_script_is_clean).needs(host()).tools(&[
            "cloud-init",
            "sh",
            "shellcheck",
        ]),
        sysext_tests::test!(cloud_init_script_installs_the_plan_and_refuses_tampering)
            .needs(host())
            .tools(&["sh", "curl", "wget"]),
        sysext_tests::test!(cloud_init_script_installs_the_keyring_of_a_signed_release)
            .needs(host())
            .tools(&["sh", "curl", "base64"]),
        sysext_tests::test!(cloud_init_script_retries_only_what_may_recover)
            .needs(host())
            .tools(&["sh", "curl", "wget"]),
        sysext_tests::test!(cloud_init_script_merges_for_real)
            .root()
            .needs(host())
            .tools(&["sh", "curl"])
            .tools(&sysext_tests::sandbox::MERGE_TOOLS),
        sysext_tests::test!(base_configs_are_merged_and_conflicts_named)
            .needs(host())
            .tools(&["ignition-validate", "cloud-init"]),
        sysext_tests::test!(refusals_say_what_is_available).needs(host()),
        sysext_tests::test!(refuses_an_image_the_os_would_not_merge).needs(host()),
        sysext_tests::test!(agent_configs_validate_and_install_the_agent).needs(host()).tools(&[
            "ignition-validate",
            "python3",
            "cloud-init",
            "sh",
            "shellcheck",
            "systemd-analyze",
        ]),
        sysext_tests::test!(agent_refusals_name_the_problem).needs(host()),
        sysext_tests::test!(cloud_init_agent_script_installs_the_agent).needs(host()).tools(&["sh", "curl"]),
    ])
}
