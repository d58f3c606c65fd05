//! `bakery publish` and `bakery verify-release` on real images, from a directory and over
//! HTTP, and the release-index client fetching from the published release.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use release_index::client::Client;
use release_index::source::{walk, ReleaseSource};
use serde_json::Value;
use signing::PublicKey;
use sysext_tests::{Arch, FixtureServer, Response};

struct Release {
    work: Work,
    keys: PathBuf,
}

impl Release {
    /// Builds kubernetes (x86-64) and cni (arm64) images and a key pair.
    fn new(server: &FixtureServer) -> (Self, Vec<PathBuf>) {
        let up = upstream(server);
        let work = Work::new();
        let images = vec![
            created(&create(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &[])),
            created(&create(&work, &up.mirror(), "cni", CNI, Arch::Arm64, &[])),
        ];
        let keys = work.dir.path().join("keys");
        let o = bakery().args(["keygen", "--out"]).arg(&keys).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        (Self { work, keys }, images)
    }

    fn dir(&self) -> PathBuf {
        self.work.dir.path().join("release")
    }

    fn publish(&self, images: &[PathBuf], extra: &[&str]) -> std::process::Output {
        bakery()
            .arg("publish")
            .args(images)
            .arg("--to")
            .arg(self.dir())
            .arg("--key")
            .arg(self.keys.join("private.pem"))
            .args(extra)
            .output()
            .unwrap()
    }

    fn verify(&self, source: &str, extra: &[&str]) -> std::process::Output {
        bakery()
            .args(["verify-release", source, "--pubkey"])
            .arg(self.keys.join("public.pem"))
            .args(extra)
            .output()
            .unwrap()
    }
}

/// Serves every file of a release directory at `/<prefix>/<path>`.
fn serve(server: &FixtureServer, dir: &Path, prefix: &str) -> String {
    for path in walk(dir).unwrap() {
        server.set(&format!("/{prefix}/{path}"), Response::ok(std::fs::read(dir.join(&path)).unwrap()));
    }
    server.url_for(&format!("/{prefix}/"))
}

fn publish_then_verify_from_a_directory_and_over_http() {
    let server = FixtureServer::start();
    let (r, images) = Release::new(&server);
    let o = r.publish(&images, &["--base-url", "https://sysext.example.org/ext", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["serial"], 1);
    assert_eq!(out["added"].as_array().unwrap().len(), 2);

    let dir = r.dir();
    let o = r.verify(dir.to_str().unwrap(), &[]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("OK, serial 1"), "{}", stdout(&o));

    // The index carries the image's own extension-release and its inputs lock.
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let art = &index["extensions"]["kubernetes"][K8S]["x86-64"];
    assert_eq!(art["extension-release"]["SYSEXT_ID"], "kubernetes");
    assert_eq!(art["extension-release"]["ARCHITECTURE"], "x86-64");
    let inputs = art["inputs"].as_array().unwrap();
    assert!(
        inputs.iter().any(|i| i["url"].as_str().unwrap().starts_with("https://dl.k8s.io/v1.31.3/bin/linux/amd64/")),
        "{inputs:#?}"
    );
    assert_eq!(art["sha256"].as_str().unwrap(), sha256(&dir.join(format!("kubernetes-{K8S}-x86-64.raw"))));

    // Over HTTP: the same checks, and the client fetches an artifact with verification.
    let url = serve(&server, &dir, "ext");
    let o = r.verify(&url, &["--json"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["unlisted-checked"], false);
    assert_eq!(report["problems"].as_array().unwrap().len(), 0);

    let public = PublicKey::read_pem(&r.keys.join("public.pem")).unwrap();
    let state = r.work.dir.path().join("state.json");
    let client = Client::new(url.parse::<ReleaseSource>().unwrap().backend().unwrap(), public, Some(state.clone()));
    let trusted = client.fetch_index().unwrap();
    let (version, art) = trusted
        .index
        .resolve(&"kubernetes".parse().unwrap(), &"1.31".parse().unwrap(), sysext_model::Arch::X86_64)
        .unwrap();
    assert_eq!(version.as_str(), K8S);
    let dest = r.work.dir.path().join("node");
    std::fs::create_dir(&dest).unwrap();
    let got = client.fetch_artifact(art, &dest).unwrap();
    assert_eq!(sha256(&got), art.sha256.to_string());
    assert!(std::fs::read_to_string(&state).unwrap().contains("\"serial\": 1"));

    // A tampered image and a missing SHA256SUMS behind the URL: both reported, non-zero exit.
    let image_path = format!("/ext/kubernetes-{K8S}-x86-64.raw");
    let mut bytes = server.get(&image_path).unwrap().body_bytes().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    server.set(&image_path, Response::ok(bytes));
    server.remove("/ext/cni/SHA256SUMS");
    let o = r.verify(&url, &[]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(text.contains(&format!("FAIL kubernetes-{K8S}-x86-64.raw: sha256")), "{text}");
    assert!(text.contains("FAIL cni/SHA256SUMS: listed but missing"), "{text}");
    assert!(stderr(&o).contains("problems found"), "{}", stderr(&o));
    // And the client refuses to install it, leaving nothing behind.
    std::fs::remove_file(&got).unwrap();
    let err = client.fetch_artifact(art, &dest).unwrap_err().to_string();
    assert!(err.contains("does not match the signed index"), "{err}");
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
}

fn publish_refuses_images_systemd_would_not_merge_under_their_name() {
    let server = FixtureServer::start();
    let (r, images) = Release::new(&server);
    // The cni image renamed as a containerd image: its extension-release is for cni.
    let renamed = r.work.dir.path().join("containerd-2.0.4-arm64.raw");
    std::fs::copy(&images[1], &renamed).unwrap();
    let o = r.publish(&[renamed], &["--base-url", "https://x.example/"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("containerd-2.0.4-arm64.raw") && err.contains("extension-release.containerd"), "{err}");
    assert!(!r.dir().exists(), "nothing is published");

    let o = r.publish(&images[..1], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("needs --base-url"), "{}", stderr(&o));

    let o = r.publish(&images[..1], &["--base-url", "ftp://x/"]);
    assert_eq!(o.status.code(), Some(2), "refused while parsing arguments");
    let o = r.publish(&images[..1], &["--base-url", "https://x/", "--expires", "soon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("expected e.g. 30d"), "{}", stderr(&o));
}

fn main() -> std::process::ExitCode {
    sysext_tests::harness::run(vec![
        sysext_tests::test!(publish_then_verify_from_a_directory_and_over_http).tools(&["unsquashfs"]),
        sysext_tests::test!(publish_refuses_images_systemd_would_not_merge_under_their_name).tools(&["unsquashfs"]),
    ])
}
