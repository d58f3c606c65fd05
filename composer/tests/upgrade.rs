//! `composer node upgrade|rollback|history` against releases published with `bakery publish`
//! (bakery-built kubernetes images v1.31.3, v1.31.4, v1.32.0, v1.33.0) served by the real
//! `composer serve` on 127.0.0.1.
//!
//! On scratch roots: the policy (patch-only by default, one minor with --allow-minor, no
//! skipping, downgrades only with --to and --allow-downgrade), the skew check against a
//! stand-in API server (a fixture HTTP server answering `/version` as kube-apiserver does),
//! a failing pre-hook, --reboot-flag, rollback and the history.
//!
//! As root, on the running system's paths in a private mount namespace, where the merge is
//! the real systemd-sysext: an upgrade after which the merged kubelet reports the new version,
//! a rollback after which it reports the old one, a failing health check that rolls back on its
//! own, and a real `composer node upgrade` process SIGKILLed at every step in turn and at
//! random byte offsets of its download, after each of which the link points at a complete,
//! verified image that merges. PID 1 is not systemd here: a recording `systemctl` stand-in
//! plays the service manager (it runs the real `systemd-sysext refresh` for the refresh,
//! records restarts, answers `is-active` with "active"), and a recording `kubeadm` stand-in
//! plays `kubeadm upgrade node`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::namespace::{namespace_prelude, run_in_namespace};
use common::server::Server;
use common::*;
use serde_json::Value;
use sysext_tests::harness::Need;
use sysext_tests::sandbox::{MERGE_TOOLS, UBUNTU_OS_RELEASE};
use sysext_tests::{FixtureServer, Response};

const BASE: &str = "https://sysext.example.org/ext/";
const V3: &str = "v1.31.3";
const V4: &str = "v1.31.4";
const V32: &str = "v1.32.0";
const V33: &str = "v1.33.0";

/// A node synced to kubernetes v1.31.3 from a release that then gained v1.31.4, v1.32.0 and
/// v1.33.0 (serial 2), served by `composer serve`.
struct Node {
    work: tempfile::TempDir,
    root: PathBuf,
    server: Server,
}

fn release_dir(work: &Path) -> PathBuf {
    work.join("release")
}

impl Node {
    fn new() -> Self {
        let work = tempfile::tempdir().unwrap();
        signing::keygen(&work.path().join("keys")).unwrap();
        let key = work.path().join("keys/private.pem");
        bakery_publish(&release_dir(work.path()), &key, &[&kubernetes_image(V3)], &["--base-url", BASE]);
        let server = Server::start(&release_dir(work.path()), &[]);
        let root = work.path().join("root");
        for (path, text) in [
            ("etc/os-release", UBUNTU_OS_RELEASE),
            ("usr/lib/systemd/system/systemd-sysext.service", "[Unit]\n"),
            ("usr/lib/systemd/libsystemd-shared-252.so", ""),
        ] {
            std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
            std::fs::write(root.join(path), text).unwrap();
        }
        let node = Self { work, root, server };
        let o = node.composer(&["node", "sync", "-e", "kubernetes@1.31", "--retries", "0"], true);
        assert_ok(&o);
        let images = [kubernetes_image(V4), kubernetes_image(V32), kubernetes_image(V33)];
        let images: Vec<&Path> = images.iter().map(PathBuf::as_path).collect();
        bakery_publish(&release_dir(node.work.path()), &key, &images, &[]);
        node
    }

    fn pubkey(&self) -> PathBuf {
        self.work.path().join("keys/public.pem")
    }

    /// `composer ARGS --root ROOT`, plus `--index URL --pubkey PUB` when `release`.
    fn composer(&self, args: &[&str], release: bool) -> Output {
        let mut cmd = composer();
        cmd.args(args).arg("--root").arg(&self.root);
        if release {
            cmd.args(["--index", &self.server.url, "--pubkey"]).arg(self.pubkey());
        }
        cmd.output().unwrap()
    }

    fn upgrade(&self, extra: &[&str]) -> Output {
        let mut args = vec!["node", "upgrade", "--json"];
        args.extend(extra);
        self.composer(&args, true)
    }

    fn link(&self) -> String {
        std::fs::read_link(self.root.join("etc/extensions/kubernetes.raw")).unwrap().to_string_lossy().into_owned()
    }

    fn state(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.root.join("var/lib/composer/node.json")).unwrap()).unwrap()
    }

    fn history(&self) -> Value {
        let o = self.composer(&["node", "history", "--json"], false);
        assert_ok(&o);
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

fn image_path(version: &str) -> String {
    format!("/opt/extensions/kubernetes/kubernetes-{version}-{}.raw", host_arch())
}

fn one(o: &Output) -> Value {
    assert_ok(o);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)));
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v:#}");
    v[0].clone()
}

fn refused(o: &Output, says: &[&str]) {
    assert!(!o.status.success(), "accepted:\n{}", stdout(o));
    let err = stderr(o);
    for s in says {
        assert!(err.contains(s), "{s:?} not in: {err}");
    }
}

/// Patch-only by default; --to a minor needs --allow-minor; skipping a minor is refused; a
/// downgrade needs --to and --allow-downgrade. On a root that is not running, an upgrade
/// switches the link only and says so; the state follows, and so does the channel on a minor
/// step.
fn the_policy_allows_patches_then_one_minor_at_a_time() {
    let n = Node::new();
    assert_eq!(n.link(), image_path(V3));
    let dry = one(&n.upgrade(&["--dry-run"]));
    assert_eq!((dry["outcome"].as_str(), dry["to"].as_str()), (Some("would-upgrade"), Some(&*img(V4))), "{dry:#}");
    assert_eq!(n.link(), image_path(V3), "--dry-run changed the link");
    assert!(!n.root.join(&image_path(V4)[1..]).exists(), "--dry-run downloaded");

    refused(&n.upgrade(&["kubernetes", "--to", V32]), &["is a minor upgrade; pass --allow-minor"]);
    refused(&n.upgrade(&["kubernetes", "--to", V33, "--allow-minor"]), &["skips 1 minor version(s)"]);

    let done = one(&n.upgrade(&[]));
    assert_eq!(done["outcome"], "installed", "{done:#}");
    assert_eq!(done["downloaded"], serde_json::json!([img(V4)]));
    assert_eq!(n.link(), image_path(V4));
    assert_eq!(n.state()["extensions"]["kubernetes"]["previous"], image_path(V3));
    let again = one(&n.upgrade(&[]));
    assert_eq!(again["outcome"], "up-to-date", "patches only: v1.32.0 is not taken without --allow-minor");

    let minor = one(&n.upgrade(&["--allow-minor"]));
    assert_eq!(minor["to"], img(V32), "{minor:#}");
    assert_eq!(n.state()["extensions"]["kubernetes"]["channel"], "kubernetes@1.32", "the channel moved");
    refused(&n.upgrade(&["kubernetes", "--to", V3]), &["older than the installed v1.32.0", "--allow-downgrade"]);
    let down = one(&n.upgrade(&["kubernetes", "--to", V4, "--allow-downgrade"]));
    assert_eq!(n.link(), image_path(V4), "{down:#}");
    assert_eq!(n.state()["extensions"]["kubernetes"]["channel"], "kubernetes@1.31");

    // --channel: its newest version, by the same policy.
    refused(&n.upgrade(&["kubernetes", "--channel", "1.32"]), &["is a minor upgrade; pass --allow-minor"]);
    refused(&n.upgrade(&["kubernetes", "--channel", "1.34", "--allow-minor"]), &["--channel 1.34: no version"]);
    let followed = one(&n.upgrade(&["kubernetes", "--channel", "1.32", "--allow-minor"]));
    assert_eq!(followed["to"], img(V32), "{followed:#}");
    assert_eq!(n.state()["extensions"]["kubernetes"]["channel"], "kubernetes@1.32");

    let history = n.history();
    let outcomes: Vec<(&str, &str)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["to"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        [(&*img(V4), "staged"), (&*img(V32), "staged"), (&*img(V4), "staged"), (&*img(V32), "staged")]
    );
}

fn img(version: &str) -> String {
    format!("kubernetes-{version}-{}.raw", host_arch())
}

/// A node that has joined a cluster (kubelet.conf): a minor step is refused while the API
/// server (a stand-in answering /version) is older than the target, and allowed once it is
/// not. A failing pre-hook stops before the switch. --reboot-flag links for the next boot and
/// touches /run/reboot-required. A rollback goes back to the previous image without the server.
fn skew_hooks_reboot_flag_and_rollback() {
    let n = Node::new();
    assert_ok(&n.upgrade(&[]));
    let api = FixtureServer::start();
    let version = |v: &str| Response::ok(format!("{{\"major\":\"1\",\"minor\":\"31\",\"gitVersion\":\"{v}\"}}"));
    api.set("/version", version("v1.31.9"));
    let kubeconfig = n.root.join("etc/kubernetes/kubelet.conf");
    std::fs::create_dir_all(kubeconfig.parent().unwrap()).unwrap();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: {}\ncontexts:\n- name: c\n  context:\n    cluster: k\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n",
            api.url_for("").trim_end_matches('/')
        ),
    )
    .unwrap();
    refused(&n.upgrade(&["--allow-minor"]), &["version skew", "the API server runs v1.31.9", "control plane first"]);
    assert_eq!(n.link(), image_path(V4));

    api.set("/version", version("v1.32.3"));
    refused(
        &n.upgrade(&["--allow-minor", "--pre-hook", "echo cannot drain >&2; exit 3"]),
        &["step pre-hook failed", "cannot drain", "nothing was switched", &img(V4)],
    );
    assert_eq!(n.link(), image_path(V4));

    let staged = one(&n.upgrade(&["--allow-minor", "--reboot-flag"]));
    assert_eq!(staged["outcome"], "staged", "{staged:#}");
    assert!(n.root.join("run/reboot-required").exists());
    assert_eq!(n.link(), image_path(V32));

    let o = n.composer(&["node", "rollback", "kubernetes", "--json"], false);
    assert_ok(&o);
    assert_eq!(n.link(), image_path(V4));
    assert_eq!(n.state()["extensions"]["kubernetes"]["channel"], "kubernetes@1.31");
    let h = n.history();
    let last = h.as_array().unwrap().iter().rev().take(3).map(|e| e["outcome"].as_str().unwrap()).collect::<Vec<_>>();
    assert_eq!(last, ["rolled-back", "staged", "stopped"], "{h:#}");
    // A tampered previous image is refused.
    let prev = n.root.join(&image_path(V32)[1..]);
    let mut bytes = std::fs::read(&prev).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&prev, bytes).unwrap();
    let o = n.composer(&["node", "rollback", "kubernetes"], false);
    refused(&o, &["not the", "recorded when it was installed"]);
    assert_eq!(n.link(), image_path(V4));
}

/// The stand-ins for the running node (see the module comment). `systemctl` records each
/// call in $STANDIN_LOG; `reload-or-restart systemd-sysext.service` runs the real refresh.
/// Each stand-in, and the hook commands, call `point NAME` first: when $KILL_AT is NAME it
/// writes its pid to $KILL_MARK and sleeps, so the test can kill composer right there.
fn stand_ins(bins: &Path) {
    std::fs::create_dir_all(bins).unwrap();
    let write = |name: &str, text: &str| {
        let p = bins.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write(
        "point",
        "#!/bin/sh\n[ \"${KILL_AT:-}\" = \"$1\" ] || exit 0\necho $$ > \"$KILL_MARK.tmp\" && mv \"$KILL_MARK.tmp\" \"$KILL_MARK\"\nexec sleep 60\n",
    );
    write(
        "systemctl",
        "#!/bin/sh\necho \"$*\" >>\"$STANDIN_LOG\"\ncase \"$1\" in\n\
             reload-or-restart) systemd-sysext refresh >/dev/null; point refresh ;;\n\
             daemon-reload) point reload ;;\n\
             restart) point restart ;;\n\
             is-active) point is-active; echo active ;;\n\
             esac\nexit 0\n",
    );
    write("kubeadm", "#!/bin/sh\necho \"kubeadm $*\" >>\"$STANDIN_LOG\"\npoint kubeadm\nexit 0\n");
}

/// As root on the running system's paths: the upgrade runs its steps in order (the
/// stand-ins' log shows refresh, reload, kubeadm from the new image, kubelet restart, health
/// check) and the merged kubelet reports v1.31.4; a rollback brings v1.31.3 back; an upgrade
/// whose health check fails rolls back on its own and exits non-zero naming the step, and the
/// next upgrade skips that version unless named.
fn upgrade_rollback_and_a_failed_health_check_on_the_running_node() {
    let n = Node::new();
    let d = n.work.path();
    let bins = d.join("bin");
    stand_ins(&bins);
    let q = |p: &Path| format!("'{}'", p.display());
    // The node synced into the scratch root; the same state and images go onto the
    // namespace's / (tmpfs /opt and /var/lib, an overlay over /etc).
    let up = |extra: &str| {
        format!(
            "{composer} node upgrade --index {url} --pubkey {key} --timeout 5s {extra}",
            composer = q(Path::new(env!("CARGO_BIN_EXE_composer"))),
            url = n.server.url,
            key = q(&n.pubkey()),
        )
    };
    let script = format!(
        "{prelude}export PATH={bins}:$PATH STANDIN_LOG={d}/standin.log KILL_MARK={d}/mark
cp -a {root}/opt/. /opt/ && mkdir -p /var/lib/composer && cp {root}/var/lib/composer/node.json /var/lib/composer/
mkdir -p /etc/extensions /etc/kubernetes && cp -P {root}/etc/extensions/kubernetes.raw /etc/extensions/
printf 'apiVersion: v1\\nkind: Config\\n' >/etc/kubernetes/kubelet.conf
systemd-sysext refresh >/dev/null
kubelet --version
echo '== upgrade'
{upgrade} --post-hook 'echo post >>{d}/standin.log' >{d}/up.json
kubelet --version
echo '== rollback'
{composer} node rollback kubernetes --timeout 5s >/dev/null
kubelet --version
echo '== unhealthy'
if {upgrade} --health-check 'kubelet --version | grep -q v1.31.3' 2>{d}/unhealthy.err; then echo 'passed' >&2; exit 1; fi
kubelet --version
echo '== skip'
{upgrade} --json >{d}/skip.json 2>{d}/skip.err || true
{composer} node history --json >{d}/history.json
",
        prelude = namespace_prelude(d),
        bins = q(&bins),
        d = q(d),
        root = q(&n.root),
        upgrade = up(""),
        composer = q(Path::new(env!("CARGO_BIN_EXE_composer"))),
    );
    let o = run_in_namespace(&script);
    assert!(o.status.success(), "stdout:\n{}\nstderr:\n{}", stdout(&o), stderr(&o));
    let go = host_arch().go_arch();
    let k = |v: &str| format!("kubelet {v} linux/{go}\n");
    assert_eq!(
        stdout(&o),
        format!("{}== upgrade\n{}== rollback\n{}== unhealthy\n{}== skip\n", k(V3), k(V4), k(V3), k(V3))
    );
    let log = std::fs::read_to_string(d.join("standin.log")).unwrap();
    let first: Vec<&str> = log.lines().take(6).collect();
    assert_eq!(
        first,
        [
            "reload-or-restart systemd-sysext.service",
            "daemon-reload",
            "kubeadm upgrade node",
            "restart kubelet.service",
            "is-active kubelet.service",
            "post"
        ],
        "{log}"
    );
    let err = std::fs::read_to_string(d.join("unhealthy.err")).unwrap();
    assert!(err.contains("step health-check failed") && err.contains("switched back to"), "{err}");
    let skip = std::fs::read_to_string(d.join("skip.err")).unwrap();
    assert!(skip.contains("failed their health check on this node before") && skip.contains(V4), "{skip}");
    let h: Value = serde_json::from_slice(&std::fs::read(d.join("history.json")).unwrap()).unwrap();
    let outcomes: Vec<&str> = h.as_array().unwrap().iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["upgraded", "rolled-back", "rolled-back"], "{h:#}");
    assert_eq!(h[2]["step"], "health-check");
}

/// The steps an upgrade can be killed in through the stand-ins (each pauses there).
const KILL_POINTS: [&str; 7] = ["pre-hook", "refresh", "reload", "kubeadm", "restart", "health", "post-hook"];

/// A real `composer node upgrade` killed with SIGKILL at every step in turn (each point four
/// times, alternating the direction v1.31.3 ↔ v1.31.4; the switch and the prune, which wait
/// for nothing, between the points around them) and at 26 byte offsets of its
/// download (a server that stops sending there): after every kill the link points at one
/// of the two images, complete and with its published digest, and it merges; the next upgrade
/// finishes the job and the merged kubelet reports the version it went to.
fn sigkill_at_every_step_leaves_a_working_kubelet() {
    let n = Node::new();
    assert_ok(&n.upgrade(&[]));
    let d = n.work.path();
    let bins = d.join("bin");
    stand_ins(&bins);
    let image4 = std::fs::read(kubernetes_image(V4)).unwrap();
    // Servers that stop sending the v1.31.4 image after `offset` bytes, one prefix per kill.
    let hang = FixtureServer::start();
    let rel = release_dir(d).canonicalize().unwrap();
    let mut offsets = Vec::new();
    let mut seed = 0x9e37_79b9_u64;
    for i in 0..26 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let offset = if i == 0 { 1 } else { (seed % (image4.len() as u64 - 1)) as usize + 1 };
        offsets.push(offset);
        for f in release_index::source::walk(&rel).unwrap() {
            let body = std::fs::read(rel.join(&f)).unwrap();
            let resp = if f == img(V4) { Response::ok(body).hang_after(offset) } else { Response::ok(body) };
            hang.set(&format!("/h{i}/{f}"), resp);
        }
    }
    let q = |p: &Path| format!("'{}'", p.display());
    // `up VERSION INDEX [ARGS]`: the upgrade (or downgrade) of kubernetes to VERSION, with
    // hooks that pause at their points; `exec`, so `$!` of `up … &` is composer's pid.
    let up = bins.join("up");
    std::fs::write(
        &up,
        format!(
            "#!/bin/sh\nv=$1; idx=$2; shift 2\nexec {} node upgrade kubernetes --to \"$v\" --allow-downgrade --index \"$idx\" \
             --pubkey '{}' --retries 0 --timeout 10s --pre-hook 'point pre-hook' --post-hook 'point post-hook' \
             --health-check 'point health; kubelet --version | grep -q \"$COMPOSER_TO_VERSION\"' \"$@\"\n",
            env!("CARGO_BIN_EXE_composer"),
            n.pubkey().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&up, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sha = |v: &'static str| sha256(&kubernetes_image(v));
    let script = format!(
        r#"{prelude}export PATH={bins}:$PATH STANDIN_LOG={d}/standin.log KILL_MARK={d}/mark
cp -a {root}/opt/. /opt/ && mkdir -p /var/lib/composer && cp {root}/var/lib/composer/node.json /var/lib/composer/
mkdir -p /etc/extensions /etc/kubernetes && cp -P {root}/etc/extensions/kubernetes.raw /etc/extensions/
printf 'apiVersion: v1\nkind: Config\n' >/etc/kubernetes/kubelet.conf
systemd-sysext refresh >/dev/null
kills=0
check() {{ # the link points at a complete, verified image, and it merges
  t=$(readlink /etc/extensions/kubernetes.raw)
  case "$t" in
    {p3}) want={s3} ;;
    {p4}) want={s4} ;;
    *) echo "after kill $kills ($1): the link points at '$t'" >&2; exit 1 ;;
  esac
  got=$(sha256sum "$t" | cut -d' ' -f1)
  [ "$got" = "$want" ] || {{ echo "after kill $kills ($1): $t is not the published image" >&2; exit 1; }}
  systemd-sysext refresh >/dev/null
  kubelet --version >/dev/null || {{ echo "after kill $kills ($1): kubelet does not run" >&2; exit 1; }}
}}
kill_at() {{ # POINT VERSION INDEX
  rm -f {d}/mark
  KILL_AT=$1 up "$2" "$3" >/dev/null 2>&1 &
  pid=$!
  i=0
  while [ ! -e {d}/mark ]; do
    i=$((i + 1)); [ $i -lt 600 ] || {{ echo "point $1 never reached" >&2; exit 1; }}
    sleep 0.05
  done
  kill -9 $pid; wait $pid 2>/dev/null || true
  kill -9 "$(cat {d}/mark)" 2>/dev/null || true
  kills=$((kills + 1))
  check "$1"
  up "$2" {url} >/dev/null 2>{d}/recover.err || {{ echo "recovery after kill $kills ($1):" >&2; cat {d}/recover.err >&2; exit 1; }}
  kubelet --version | grep -q "$2" || {{ echo "after recovering from kill $kills ($1), kubelet is not $2" >&2; exit 1; }}
}}
for round in 1 2; do
  for point in {points}; do
    kill_at "$point" {v3} {url}
    kill_at "$point" {v4} {url}
  done
done
# Byte offsets of the download: v1.31.4 removed first, so it is downloaded again.
i=0
for off in {offsets}; do
  up {v3} {url} >/dev/null 2>&1
  rm -f /opt/extensions/kubernetes/{i4}
  rm -f {d}/part
  up {v4} {hang}/h$i/ >/dev/null 2>&1 &
  pid=$!
  j=0
  while :; do
    part=$(find /opt/extensions/kubernetes -path '*/.composer-sync-*/*' -type f 2>/dev/null | head -1)
    if [ -n "$part" ] && [ "$(stat -c %s "$part")" -ge "$off" ]; then break; fi
    j=$((j + 1)); [ $j -lt 600 ] || {{ echo "the download never reached byte $off" >&2; exit 1; }}
    sleep 0.05
  done
  kill -9 $pid; wait $pid 2>/dev/null || true
  kills=$((kills + 1))
  check "download at byte $off"
  up {v4} {url} >/dev/null 2>{d}/recover.err || {{ cat {d}/recover.err >&2; exit 1; }}
  kubelet --version | grep -q {v4} || {{ echo "after the download kill at $off, kubelet is not {v4}" >&2; exit 1; }}
  i=$((i + 1))
done
echo "kills=$kills"
{composer} node history --json >{d}/history.json
"#,
        prelude = namespace_prelude(d),
        bins = q(&bins),
        d = q(d),
        root = q(&n.root),
        url = n.server.url,
        hang = hang.url_for("").trim_end_matches('/'),
        p3 = image_path(V3),
        p4 = image_path(V4),
        s3 = sha(V3),
        s4 = sha(V4),
        i4 = img(V4),
        composer = q(Path::new(env!("CARGO_BIN_EXE_composer"))),
        v3 = V3,
        v4 = V4,
        points = KILL_POINTS.join(" "),
        offsets = offsets.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
    );
    let o = run_in_namespace(&script);
    assert!(o.status.success(), "stdout:\n{}\nstderr:\n{}", stdout(&o), stderr(&o));
    let kills = 2 * 2 * KILL_POINTS.len() + offsets.len();
    assert!(kills >= 50);
    assert_eq!(stdout(&o).trim(), format!("kills={kills}"), "{}", stderr(&o));
    // How each killed run was recovered by the next: before the switch (pre-hook, download)
    // nothing to undo; after it, undone unless its health check had passed (post-hook).
    let h: Value = serde_json::from_slice(&std::fs::read(d.join("history.json")).unwrap()).unwrap();
    let recovered: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "upgrade (recovered)")
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    let count = |o: &str| recovered.iter().filter(|r| **r == o).count();
    assert_eq!(recovered.len(), kills, "{h:#}");
    assert_eq!(count("interrupted"), 4 + offsets.len(), "pre-hook and download kills");
    assert_eq!(count("rolled-back"), 4 * 5, "refresh, reload, kubeadm, restart and health kills");
    assert_eq!(count("upgraded"), 4, "post-hook kills: the health check had passed");
    eprintln!(
        "upgrade kill test: {kills} SIGKILLs ({} step points, {} download offsets), 0 failures",
        4 * KILL_POINTS.len(),
        offsets.len()
    );
}

fn main() -> std::process::ExitCode {
    let host = || vec![Need::SupportedHost];
    sysext_tests::harness::run(vec![
        sysext_tests::test!(the_policy_allows_patches_then_one_minor_at_a_time).needs(host()),
        sysext_tests::test!(skew_hooks_reboot_flag_and_rollback).needs(host()),
        sysext_tests::test!(upgrade_rollback_and_a_failed_health_check_on_the_running_node)
            .root()
            .needs(host())
            .tools(&MERGE_TOOLS),
        sysext_tests::test!(sigkill_at_every_step_leaves_a_working_kubelet).root().needs(host()).tools(&MERGE_TOOLS),
    ])
}
