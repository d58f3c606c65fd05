//! End-to-end tests of the `bakery` binary against fake upstream releases served locally.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;
use sysext_tests::upstream::{cni_checksum_path, cni_tarball_path, kubernetes_path, message};
use sysext_tests::{tiny_executable, Arch, EntryType, FixtureServer, Response, TarGz};

fn json(o: &std::process::Output) -> Value {
    assert!(o.status.success(), "bakery failed:\nstderr: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

/// `unsquashfs -lln` lines as (mode, owner, size-or-target, date, time, path).
fn listing(image: &std::path::Path) -> Vec<Vec<String>> {
    let out = Command::new("unsquashfs").args(["-lln", "-d", ""]).arg(image).output().unwrap();
    assert!(out.status.success(), "unsquashfs failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "unsquashfs complained: {}", String::from_utf8_lossy(&out.stderr));
    // With `-d ""` the root prints with an empty path; name it "/".
    let mut lines: Vec<Vec<String>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    for l in &mut lines {
        if l.len() == 5 {
            l.push("/".to_owned());
        }
    }
    lines
}

fn entry<'a>(list: &'a [Vec<String>], path: &str) -> &'a Vec<String> {
    list.iter()
        .find(|l| l.get(5).map(String::as_str) == Some(path))
        .unwrap_or_else(|| panic!("{path} missing from {list:#?}"))
}

const EXPECTED_FILES: &[(&str, &[(&str, &str)])] = &[
    (
        "kubernetes",
        &[
            ("/usr/bin/kubelet", "-rwxr-xr-x"),
            ("/usr/bin/kubeadm", "-rwxr-xr-x"),
            ("/usr/bin/kubectl", "-rwxr-xr-x"),
            ("/usr/lib/systemd/system/kubelet.service", "-rw-r--r--"),
            ("/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf", "-rw-r--r--"),
            ("/usr/lib/systemd/system/multi-user.target.d/10-kubernetes.conf", "-rw-r--r--"),
            ("/usr/libexec/kubernetes/kubelet-plugins", "lrwxrwxrwx"),
            ("/usr/lib/extension-release.d/extension-release.kubernetes", "-rw-r--r--"),
            ("/usr/share/sysext/kubernetes/inputs.json", "-rw-r--r--"),
        ],
    ),
    (
        "containerd",
        &[
            ("/usr/bin/containerd", "-rwxr-xr-x"),
            ("/usr/bin/containerd-shim-runc-v2", "-rwxr-xr-x"),
            ("/usr/bin/containerd-stress", "-rwxr-xr-x"),
            ("/usr/bin/ctr", "-rwxr-xr-x"),
            ("/usr/bin/runc", "-rwxr-xr-x"),
            ("/usr/lib/systemd/system/containerd.service", "-rw-r--r--"),
            ("/usr/lib/systemd/system/multi-user.target.d/10-containerd.conf", "-rw-r--r--"),
            ("/usr/share/containerd/config.toml", "-rw-r--r--"),
        ],
    ),
    (
        "cni",
        &[
            ("/usr/libexec/cni/bridge", "-rwxr-xr-x"),
            ("/usr/libexec/cni/host-local", "-rwxr-xr-x"),
            ("/usr/libexec/cni/loopback", "-rwxr-xr-x"),
            ("/usr/share/doc/cni-plugins/LICENSE", "-rw-r--r--"),
            ("/usr/lib/systemd/system/cni-plugins.service", "-rw-r--r--"),
            ("/usr/libexec/cni-sysext/populate-opt-cni-bin", "-rwxr-xr-x"),
        ],
    ),
];

fn builds_every_extension_for_both_architectures() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    for (ext, version) in [("kubernetes", K8S), ("containerd", CONTAINERD), ("cni", CNI)] {
        for arch in Arch::ALL {
            let result = json(&create(&work, &up.mirror(), ext, version, arch, &["--json"]));
            let file = format!("{ext}-{version}-{arch}.raw");
            assert_eq!(result["file"], file.as_str());
            let image = work.out().join(&file);
            assert_eq!(result["sha256"], sha256(&image).as_str());
            assert_eq!(std::fs::metadata(&image).unwrap().len(), result["size"].as_u64().unwrap());

            // Ownership, modes and timestamps as the kernel will see them.
            let list = listing(&image);
            for line in &list {
                assert_eq!(line[1], "0/0", "{line:?} not root-owned");
                assert_eq!(
                    (line[3].as_str(), line[4].as_str()),
                    ("1970-01-01", "00:00"),
                    "{line:?} has a varying mtime"
                );
            }
            let expected = EXPECTED_FILES.iter().find(|(e, _)| *e == ext).unwrap().1;
            for (path, mode) in expected {
                assert_eq!(entry(&list, path)[0], *mode, "{ext} {arch}: mode of {path}");
            }
            assert!(
                list.iter().all(|l| l[5] == "/" || l[5].starts_with("/usr")),
                "{ext} ships something outside /usr: {list:#?}"
            );

            // extension-release binds the image to its name and architecture.
            let inspected = json(&bakery().args(["inspect", "--json"]).arg(&image).output().unwrap());
            let release = &inspected["extension_release"][ext];
            assert_eq!(release["ID"], "_any");
            assert_eq!(release["ARCHITECTURE"], arch.as_str());
            assert_eq!(release["SYSEXT_ID"], ext);
            assert_eq!(release["SYSEXT_VERSION_ID"], version);
            assert_eq!(release["EXTENSION_RELOAD_MANAGER"], "1", "{ext} ships units");
            assert_eq!(release.as_object().unwrap().len(), 5, "{release}");
            assert_eq!(inspected["sha256"], result["sha256"]);

            // The inputs lock names canonical upstream URLs (never the mirror) with the digest used.
            let inputs = inspected["inputs"][ext]["inputs"].as_array().unwrap();
            assert!(!inputs.is_empty());
            for input in inputs {
                let url = input["url"].as_str().unwrap();
                assert!(
                    url.starts_with("https://dl.k8s.io/")
                        || url.starts_with("https://github.com/")
                        || url.starts_with("https://raw.githubusercontent.com/"),
                    "{url}"
                );
                let path = &url[url["https://".len()..].find('/').unwrap() + "https://".len()..];
                assert_eq!(input["sha256"], up.digest(path).to_string().as_str(), "{url}");
            }
        }
    }
    // containerd's lock records the runc version its release pins, and runc at that version.
    let inspected = json(
        &bakery().args(["inspect", "--json"]).arg(work.out().join("containerd-2.0.4-x86-64.raw")).output().unwrap(),
    );
    let inputs = inspected["inputs"]["containerd"]["inputs"].as_array().unwrap();
    assert!(inputs.iter().any(|i| i["kind"] == "variable" && i["value"] == RUNC));
    assert!(inputs
        .iter()
        .any(|i| i["url"] == "https://github.com/opencontainers/runc/releases/download/v1.2.5/runc.amd64"
            && i["verified-by"] == "https://github.com/opencontainers/runc/releases/download/v1.2.5/runc.sha256sum"));
}

fn binaries_keep_their_bytes() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let image = created(&create(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &[]));
    let extract = work.dir.path().join("x");
    let out = Command::new("unsquashfs").arg("-d").arg(&extract).arg(&image).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for bin in ["kubelet", "kubeadm", "kubectl"] {
        let got = std::fs::read(extract.join("usr/bin").join(bin)).unwrap();
        assert_eq!(got, up.bytes(&kubernetes_path(K8S, Arch::X86_64, bin)), "{bin}");
    }
    if Arch::host() == Some(Arch::X86_64) {
        let run = Command::new(extract.join("usr/bin/kubelet")).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&run.stdout), message("kubelet", K8S, Arch::X86_64));
    }
}

/// The golden digest of `bakery create kubernetes v1.31.3 --arch x86-64` from the fixtures with
/// default options. If a deliberate change to the recipe, the writer or its defaults moves it,
/// update it here and say why in the commit; an unexplained change means builds are no longer
/// reproducible across versions.
const PINNED_KUBERNETES_X86_64: &str = "e6d6f1c5cde2e56c005ec2ef3232439456bfd9ac963ffe4921fd9f15e98aa9cf";

fn builds_are_reproducible_and_pinned() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let (a, b) = (Work::new(), Work::new());
    let first = created(&create(&a, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &[]));
    let second = created(&create(&b, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &["--jobs", "1"]));
    assert_eq!(sha256(&first), sha256(&second), "two builds of the same inputs differ");
    assert_eq!(sha256(&first), PINNED_KUBERNETES_X86_64);
}

fn a_rebuild_downloads_nothing() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let first = sha256(&created(&create(&work, &up.mirror(), "containerd", CONTAINERD, Arch::Arm64, &[])));
    assert!(server.total_hits() > 0);
    server.clear_log();
    let second = sha256(&created(&create(&work, &up.mirror(), "containerd", CONTAINERD, Arch::Arm64, &["--force"])));
    assert_eq!(server.total_hits(), 0, "rebuild made requests: {:?}", server.requests());
    assert_eq!(first, second);
}

fn a_corrupted_cache_entry_is_noticed_and_replaced() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let first = sha256(&created(&create(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &[])));
    for entry in std::fs::read_dir(work.cache().join("sha256")).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&path, bytes).unwrap();
    }
    server.clear_log();
    let o = create(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &["--force"]);
    assert_eq!(sha256(&created(&o)), first);
    assert!(stderr(&o).contains("is corrupt; downloading it again"), "{}", stderr(&o));
    assert_eq!(server.hits(&kubernetes_path(K8S, Arch::X86_64, "kubelet")), 1);
}

fn file_mirrors_work_for_air_gapped_sites() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let mirror = work.dir.path().join("mirror");
    for path in up.paths() {
        let dest = mirror.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(dest, up.bytes(&path)).unwrap();
    }
    let via_http = sha256(&created(&create(&Work::new(), &up.mirror(), "cni", CNI, Arch::X86_64, &[])));
    drop(up);
    drop(server);
    let via_file = created(&create(&work, &format!("file://{}", mirror.display()), "cni", CNI, Arch::X86_64, &[]));
    assert_eq!(sha256(&via_file), via_http, "the mirror must not change the image");
}

fn options_reach_the_image() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    for (compression, id) in [("xz", "xz"), ("gzip", "gzip"), ("lz4", "lz4"), ("zstd", "zstd")] {
        let work = Work::new();
        let image = created(&create(
            &work,
            &up.mirror(),
            "cni",
            CNI,
            Arch::X86_64,
            &["--compression", compression, "--block-size", "128K"],
        ));
        let out = Command::new("unsquashfs").arg("-s").arg(&image).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("Compression {id}")), "{compression}: {text}");
        assert!(text.contains("Block size 131072"), "{text}");
        let x = work.dir.path().join("x");
        assert!(Command::new("unsquashfs").arg("-d").arg(&x).arg(&image).output().unwrap().status.success());
    }
    // SOURCE_DATE_EPOCH fixes every timestamp; --os writes the matching fields.
    let work = Work::new();
    let mut cmd = bakery();
    cmd.env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["create", "kubernetes", K8S, "--arch", "arm64", "--os", "ubuntu:24.04", "--mirror", &up.mirror()])
        .arg("--cache")
        .arg(work.cache())
        .arg("--output")
        .arg(work.out());
    let image = created(&cmd.output().unwrap());
    let out = Command::new("unsquashfs").args(["-lln", "-d", ""]).arg(&image).env("TZ", "UTC").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().all(|l| l.contains("2023-11-14 22:13")), "{text}");
    let inspected = json(&bakery().args(["inspect", "--json"]).arg(&image).output().unwrap());
    let release = &inspected["extension_release"]["kubernetes"];
    assert_eq!((release["ID"].as_str(), release["VERSION_ID"].as_str()), (Some("ubuntu"), Some("24.04")));
    assert_eq!(release["ARCHITECTURE"], "arm64");
    assert_eq!(inspected["mtime"], 1700000000);
}

fn transient_failures_are_retried() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let kubelet = kubernetes_path(K8S, Arch::X86_64, "kubelet");
    let kubeadm = kubernetes_path(K8S, Arch::X86_64, "kubeadm");
    server.set(&kubelet, Response::ok(up.bytes(&kubelet)).fail_first(1, 503));
    server.set(&kubeadm, Response::ok(up.bytes(&kubeadm)).drop_first(1));
    let work = Work::new();
    let o = create(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &[]);
    created(&o);
    assert_eq!(server.hits(&kubelet), 2);
    assert_eq!(server.hits(&kubeadm), 2);
    assert!(stderr(&o).contains("HTTP 503"), "{}", stderr(&o));
}

/// Runs a failing build and checks the message, the exit code and that nothing was left behind.
fn assert_fails(work: &Work, o: &std::process::Output, wanted: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected exit code 1; stderr: {err}");
    for w in wanted {
        assert!(err.contains(w), "expected {w:?} in stderr:\n{err}");
    }
    assert!(err.lines().any(|l| l.starts_with("error: ")), "{err}");
    assert_eq!(work.outputs(), Vec::<String>::new(), "output left behind after: {err}");
}

fn bad_arguments_are_refused_before_any_download() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let o = create(&work, &up.mirror(), "docker", "1.0.0", Arch::X86_64, &[]);
    assert_fails(&work, &o, &["unknown extension 'docker'", "available recipes are cni, containerd, kubernetes"]);
    let o = create(&work, &up.mirror(), "kubernetes", "1.31.3", Arch::X86_64, &[]);
    assert_fails(
        &work,
        &o,
        &["invalid kubernetes version '1.31.3'", "upstream tags start with 'v'", "example: v1.31.3"],
    );
    let o = create(&work, &up.mirror(), "kubernetes", "v1.31", Arch::X86_64, &[]);
    assert_fails(&work, &o, &["invalid kubernetes version 'v1.31'"]);
    let o = create(&work, &up.mirror(), "containerd", "1.7.24", Arch::X86_64, &[]);
    assert_fails(&work, &o, &["supports versions >=2.0.0, <3.0.0"]);
    assert_eq!(server.total_hits(), 0);

    // Clap rejects an unknown architecture with its usage exit code.
    let o = bakery().args(["create", "kubernetes", K8S, "--arch", "amd64"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown architecture 'amd64'") && stderr(&o).contains("did you mean x86-64?"),
        "{}",
        stderr(&o)
    );
}

fn download_failures_name_the_url_and_leave_nothing() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let kubelet = kubernetes_path(K8S, Arch::X86_64, "kubelet");

    server.remove(&kubelet);
    let work = Work::new();
    let o = create(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &[]);
    assert_fails(&work, &o, &[&format!("GET {}{kubelet}: HTTP 404 Not Found", up.mirror()), "downloading kubelet"]);
    assert_eq!(server.hits(&kubelet), 1, "a 404 is not retried");

    let bytes = up.bytes(&kubelet);
    server.set(&kubelet, Response::ok(bytes.clone()).truncate_after(100));
    let work = Work::new();
    let o = create(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &[]);
    assert_fails(&work, &o, &[&format!("body truncated after 100 of {} bytes", bytes.len())]);

    up.put(&kubelet, bytes);
    up.corrupt_checksum(&format!("{kubelet}.sha256"));
    let work = Work::new();
    let o = create(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &[]);
    assert_fails(
        &work,
        &o,
        &["sha256 mismatch for", &format!("({}", "https://dl.k8s.io/v1.31.3/bin/linux/amd64/kubelet.sha256")],
    );
    // The rejected bytes never reach the cache.
    assert!(std::fs::read_dir(work.cache().join("sha256")).unwrap().all(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .len()
        == 64));
}

/// Serves a replacement CNI tarball (with a matching checksum) for x86-64.
fn serve_cni_tarball(up: &sysext_tests::FakeUpstream<'_>, tgz: Vec<u8>) {
    let digest = signing::Sha256Digest::of(&tgz);
    up.put(&cni_tarball_path(CNI, Arch::X86_64), tgz);
    up.put(&cni_checksum_path(CNI, Arch::X86_64), format!("{digest}  cni-plugins-linux-amd64-{CNI}.tgz\n"));
}

fn hostile_archives_are_refused() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let plugin = tiny_executable(Arch::X86_64, "bridge\n");
    let cases: Vec<(TarGz, &str)> = vec![
        (
            TarGz::new().file("./bridge", 0o755, &plugin).raw_entry(
                b"./../../etc/cron.d/x",
                EntryType::Regular,
                0o644,
                b"x",
            ),
            "contains '..'",
        ),
        (
            TarGz::new().file("./bridge", 0o755, &plugin).raw_entry(b"/etc/passwd", EntryType::Regular, 0o644, b"x"),
            "has an absolute path",
        ),
        (
            TarGz::new().file("./bridge", 0o755, &plugin).symlink("./loopback", "../../../usr/bin/sh"),
            "points outside the archive",
        ),
        (
            TarGz::new().file("./bridge", 0o755, &plugin).symlink("./loopback", "/usr/bin/sh"),
            "points outside the archive (absolute target",
        ),
        (
            TarGz::new().file("./bridge", 0o755, &plugin).raw_entry(b"./tap", EntryType::Char, 0o644, b""),
            "is a device node",
        ),
        (TarGz::new().file("./bridge", 0o755, &plugin), "install rule member 'LICENSE' matched nothing"),
    ];
    for (tgz, wanted) in cases {
        serve_cni_tarball(&up, tgz.build());
        let work = Work::new();
        let o = create(&work, &up.mirror(), "cni", CNI, Arch::X86_64, &[]);
        assert_fails(&work, &o, &[wanted, "archive https://github.com/containernetworking/plugins/releases/download/v1.6.2/cni-plugins-linux-amd64-v1.6.2.tgz"]);
    }
}

fn binaries_for_the_wrong_architecture_are_refused() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let kubelet = kubernetes_path(K8S, Arch::X86_64, "kubelet");
    let arm = up.bytes(&kubernetes_path(K8S, Arch::Arm64, "kubelet"));
    let digest = signing::Sha256Digest::of(&arm);
    up.put(&kubelet, arm);
    up.put(&format!("{kubelet}.sha256"), digest.to_string());
    let work = Work::new();
    let o = create(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &[]);
    assert_fails(
        &work,
        &o,
        &["/usr/bin/kubelet: ELF binary for arm64, but the image is for x86-64", "exec format error"],
    );
}

fn lint_violations_in_a_recipe_are_all_reported() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let recipes = work.dir.path().join("recipes/cni");
    let files = recipes.join("files");
    std::fs::create_dir_all(files.join("etc/cni/net.d")).unwrap();
    std::fs::create_dir_all(files.join("usr/sbin")).unwrap();
    std::fs::create_dir_all(files.join("usr/lib")).unwrap();
    std::fs::write(files.join("etc/cni/net.d/10-bridge.conflist"), "{}").unwrap();
    std::fs::write(files.join("usr/sbin/helper"), "#!/bin/sh\n").unwrap();
    std::fs::write(files.join("usr/lib/os-release"), "ID=evil\n").unwrap();
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../extensions/cni/recipe.toml"), recipes.join("recipe.toml"))
        .unwrap();
    let o = create(
        &work,
        &up.mirror(),
        "cni",
        CNI,
        Arch::X86_64,
        &["--recipes", work.dir.path().join("recipes").to_str().unwrap()],
    );
    assert_fails(
        &work,
        &o,
        &[
            "(3 problems)",
            "/etc: systemd-sysext merges only /usr and /opt",
            "/usr/sbin: do not ship /usr/sbin",
            "/usr/lib/os-release: an extension must not ship os-release",
        ],
    );
}

fn existing_images_are_not_overwritten_without_force() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let image = created(&create(&work, &up.mirror(), "cni", CNI, Arch::Arm64, &[]));
    let before = sha256(&image);
    server.clear_log();
    let o = create(&work, &up.mirror(), "cni", CNI, Arch::Arm64, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists; pass --force to replace it"), "{}", stderr(&o));
    assert_eq!(server.total_hits(), 0);
    assert_eq!(sha256(&image), before);
    assert_eq!(work.outputs(), vec!["cni-v1.6.2-arm64.raw".to_owned()]);
}

fn list_shows_recipes_and_arches() {
    let o = bakery().arg("list").output().unwrap();
    assert!(o.status.success());
    let text = stdout(&o);
    for name in ["kubernetes", "containerd", "cni"] {
        assert!(text.lines().any(|l| l.starts_with(name) && l.contains("x86-64,arm64")), "{text}");
    }
    let listing = json(&bakery().args(["list", "--json"]).output().unwrap());
    let names: Vec<&str> = listing.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cni", "containerd", "kubernetes"]);
    assert_eq!(listing[1]["artifacts"], serde_json::json!(["containerd", "runc"]));
}

fn inspect_reports_release_files_and_refuses_non_images() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let image = created(&create(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &[]));
    let o = bakery().arg("inspect").arg(&image).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("extension-release.kubernetes:\n  ID=_any\n  ARCHITECTURE=x86-64\n"), "{text}");
    assert!(text.contains(&format!("sha256:      {}", sha256(&image))), "{text}");
    assert!(
        text.contains("symlink 0777 0:0")
            && text.contains("/usr/libexec/kubernetes/kubelet-plugins -> /var/kubernetes/kubelet-plugins"),
        "{text}"
    );
    let junk = work.dir.path().join("junk.raw");
    std::fs::write(&junk, b"not a squashfs image").unwrap();
    let o = bakery().arg("inspect").arg(&junk).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a readable squashfs image"), "{}", stderr(&o));
}

fn keygen_sign_and_verify() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let keys = work.dir.path().join("keys");
    let o = bakery().args(["keygen", "--out"]).arg(&keys).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let key_id = stdout(&o).trim().to_owned();
    assert_eq!(key_id.len(), 16, "{key_id}");
    let o = bakery().args(["keygen", "--out"]).arg(&keys).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists; refusing to overwrite a key"), "{}", stderr(&o));

    let (private, public) = (keys.join("private.pem"), keys.join("public.pem"));
    let o = create(&work, &up.mirror(), "cni", CNI, Arch::X86_64, &["--key", private.to_str().unwrap(), "--json"]);
    let result = json(&o);
    assert_eq!(result["signed_by"], key_id.as_str());
    let image = work.out().join("cni-v1.6.2-x86-64.raw");
    let mut outputs = work.outputs();
    outputs.sort();
    assert_eq!(outputs, ["cni-v1.6.2-x86-64.raw", "cni-v1.6.2-x86-64.raw.sig"]);

    let verify = |file: &std::path::Path, key: &std::path::Path| {
        bakery().arg("verify").arg(file).arg("--pubkey").arg(key).output().unwrap()
    };
    let o = verify(&image, &public);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("good signature from key {key_id}")), "{}", stdout(&o));
    {
        let o = Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
            .arg(&public)
            .arg("-rawin")
            .arg("-in")
            .arg(&image)
            .arg("-sigfile")
            .arg(work.out().join("cni-v1.6.2-x86-64.raw.sig"))
            .output()
            .unwrap();
        assert!(o.status.success(), "openssl: {}", stderr(&o));
    }

    // Another key, and a flipped bit, are both refused with the reason.
    let other = work.dir.path().join("other");
    assert!(bakery().args(["keygen", "--out"]).arg(&other).output().unwrap().status.success());
    let o = verify(&image, &other.join("public.pem"));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("signature does not verify with key"), "{}", stderr(&o));
    let mut bytes = std::fs::read(&image).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&image, bytes).unwrap();
    let o = verify(&image, &public);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("modified after signing"), "{}", stderr(&o));

    // `sign` signs any file; rebuilding with --force and no key drops the stale signature.
    let o = bakery().arg("sign").arg(&image).arg("--key").arg(&private).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(verify(&image, &public).status.success());
    created(&create(&work, &up.mirror(), "cni", CNI, Arch::X86_64, &["--force"]));
    assert_eq!(work.outputs(), ["cni-v1.6.2-x86-64.raw"]);
}

fn a_bad_key_fails_before_any_download() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let bogus = work.dir.path().join("bogus.pem");
    std::fs::write(&bogus, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    let o = create(&work, &up.mirror(), "cni", CNI, Arch::X86_64, &["--key", bogus.to_str().unwrap()]);
    assert_fails(&work, &o, &["bogus.pem: not an Ed25519 private key (PKCS#8)"]);
    assert_eq!(server.total_hits(), 0);
}

fn main() -> std::process::ExitCode {
    sysext_tests::harness::run(vec![
        sysext_tests::test!(builds_every_extension_for_both_architectures).tools(&["unsquashfs"]),
        sysext_tests::test!(binaries_keep_their_bytes).tools(&["unsquashfs"]),
        sysext_tests::test!(builds_are_reproducible_and_pinned),
        sysext_tests::test!(a_rebuild_downloads_nothing),
        sysext_tests::test!(a_corrupted_cache_entry_is_noticed_and_replaced),
        sysext_tests::test!(file_mirrors_work_for_air_gapped_sites),
        sysext_tests::test!(options_reach_the_image).tools(&["unsquashfs"]),
        sysext_tests::test!(transient_failures_are_retried),
        sysext_tests::test!(bad_arguments_are_refused_before_any_download),
        sysext_tests::test!(download_failures_name_the_url_and_leave_nothing),
        sysext_tests::test!(hostile_archives_are_refused),
        sysext_tests::test!(binaries_for_the_wrong_architecture_are_refused),
        sysext_tests::test!(lint_violations_in_a_recipe_are_all_reported),
        sysext_tests::test!(existing_images_are_not_overwritten_without_force),
        sysext_tests::test!(list_shows_recipes_and_arches),
        sysext_tests::test!(inspect_reports_release_files_and_refuses_non_images),
        sysext_tests::test!(keygen_sign_and_verify).tools(&["openssl"]),
        sysext_tests::test!(a_bad_key_fails_before_any_download),
    ])
}
