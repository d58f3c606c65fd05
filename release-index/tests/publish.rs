//! Publishing: layout, incremental publishes, failure injection after every step, and what
//! verification catches.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;
use release_index::index::Index;
use release_index::layout;
use release_index::publish::{publish, PublishError, Step};
use release_index::source::walk;
use signing::{PrivateKey, Sha256Digest};

fn files(s: &Scratch) -> BTreeSet<String> {
    walk(&s.release()).unwrap().into_iter().collect()
}

fn index(s: &Scratch) -> Index {
    Index::parse(&std::fs::read(s.release().join("index.json")).unwrap()).unwrap()
}

/// Two versions of kubernetes, two architectures of one, and another extension.
fn four_images(s: &Scratch) -> [release_index::publish::NewImage; 4] {
    [
        s.image("kubernetes-v1.31.3-x86-64.raw", ""),
        s.image("kubernetes-v1.31.3-arm64.raw", ""),
        s.image("kubernetes-v1.30.10-x86-64.raw", ""),
        s.image("containerd-2.0.4-x86-64.raw", ""),
    ]
}

fn first_publish_writes_the_flatcar_layout() {
    let s = Scratch::new();
    let imgs = four_images(&s);
    let published = s.publish(&imgs);
    assert_eq!(published.index.serial, 1);
    assert_eq!(published.added.len(), 4);

    let link = std::fs::read_link(s.release()).unwrap();
    assert_eq!(link.to_str().unwrap(), "release.generations/0000000001");
    let want: BTreeSet<String> = [
        "SHA256SUMS",
        "SHA256SUMS.sig",
        "index.json",
        "index.json.sig",
        "noop.conf",
        "noop.transfer",
        "containerd-2.0.4-x86-64.raw",
        "containerd-2.0.4-x86-64.raw.sig",
        "containerd/SHA256SUMS",
        "containerd/SHA256SUMS.sig",
        "containerd/containerd-2.0.4-x86-64.raw",
        "containerd/containerd.conf",
        "containerd/containerd.transfer",
        "containerd/containerd-2.0.conf",
        "containerd/containerd-2.0.transfer",
        "kubernetes-v1.30.10-x86-64.raw",
        "kubernetes-v1.30.10-x86-64.raw.sig",
        "kubernetes-v1.31.3-arm64.raw",
        "kubernetes-v1.31.3-arm64.raw.sig",
        "kubernetes-v1.31.3-x86-64.raw",
        "kubernetes-v1.31.3-x86-64.raw.sig",
        "kubernetes/SHA256SUMS",
        "kubernetes/SHA256SUMS.sig",
        "kubernetes/kubernetes-v1.30.10-x86-64.raw",
        "kubernetes/kubernetes-v1.31.3-arm64.raw",
        "kubernetes/kubernetes-v1.31.3-x86-64.raw",
        "kubernetes/kubernetes.conf",
        "kubernetes/kubernetes.transfer",
        "kubernetes/kubernetes-v1.30.conf",
        "kubernetes/kubernetes-v1.30.transfer",
        "kubernetes/kubernetes-v1.31.conf",
        "kubernetes/kubernetes-v1.31.transfer",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(files(&s), want);

    // Golden transfer file: the format of spec-digest §2 / interop-formats B3, our base URL.
    let conf = std::fs::read_to_string(s.release().join("kubernetes/kubernetes-v1.31.conf")).unwrap();
    assert_eq!(
        conf,
        "[Transfer]\nVerify=false\n[Source]\nType=url-file\nPath=https://sysext.example.org/extensions/kubernetes/\nMatchPattern=kubernetes-v1.31.@v-%a.raw\n[Target]\nInstancesMax=3\nType=regular-file\nPath=/opt/extensions/kubernetes\nCurrentSymlink=/etc/extensions/kubernetes.raw\n"
    );
    assert_eq!(conf, std::fs::read_to_string(s.release().join("kubernetes/kubernetes-v1.31.transfer")).unwrap());
    let any = std::fs::read_to_string(s.release().join("containerd/containerd.conf")).unwrap();
    assert!(any.contains("\nMatchPattern=containerd-@v-%a.raw\n"), "{any}");
    let noop = std::fs::read_to_string(s.release().join("noop.conf")).unwrap();
    assert_eq!(
        noop,
        "[Source]\nType=regular-file\nPath=/\nMatchPattern=invalid@v.raw\n[Target]\nType=regular-file\nPath=/\n"
    );

    // Every SHA256SUMS line is `<64 hex><two spaces><name>\n`; global lists all, per-extension its own.
    let global = std::fs::read_to_string(s.release().join("SHA256SUMS")).unwrap();
    assert!(global.ends_with('\n'));
    assert_eq!(global.lines().count(), 4);
    for line in
        global.lines().chain(std::fs::read_to_string(s.release().join("kubernetes/SHA256SUMS")).unwrap().lines())
    {
        let (hash, name) = line.split_at(64);
        assert!(hash.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "{line}");
        assert!(name.starts_with("  ") && !name[2..].contains(' ') && name.ends_with(".raw"), "{line}");
    }
    assert_eq!(std::fs::read_to_string(s.release().join("kubernetes/SHA256SUMS")).unwrap().lines().count(), 3);

    // Images are hard links, published read-only for everyone, signed.
    use std::os::unix::fs::MetadataExt;
    let top = std::fs::metadata(s.release().join("kubernetes-v1.31.3-x86-64.raw")).unwrap();
    let sub = std::fs::metadata(s.release().join("kubernetes/kubernetes-v1.31.3-x86-64.raw")).unwrap();
    assert_eq!(top.ino(), sub.ino());
    assert_eq!(top.mode() & 0o7777, 0o644);
    let public = s.key.public();
    public.verify_file(&s.release().join("kubernetes-v1.31.3-x86-64.raw")).unwrap();

    // The index carries everything a node needs to trust an artifact.
    let idx = index(&s);
    let art = idx.artifact(&"kubernetes-v1.31.3-x86-64.raw".parse().unwrap()).unwrap();
    assert_eq!(art.size, 50_000);
    assert_eq!(art.sha256, Sha256Digest::of(&std::fs::read(&imgs[0].path).unwrap()));
    assert_eq!(art.extension_release.get("SYSEXT_ID"), Some("kubernetes"));
    assert_eq!(art.inputs, imgs[0].inputs);
    assert_eq!(idx.key_id, s.key.key_id());
    assert_eq!(idx.expires.unix() - idx.generated_at.unix(), 30 * 86_400);
    assert_eq!(idx.transfer_files.len(), 2 + 2 * 3 + 2 * 2);
    s.assert_verifies();

    {
        for dir in [s.release(), s.release().join("kubernetes"), s.release().join("containerd")] {
            let out =
                Command::new("sha256sum").args(["-c", "--strict", "SHA256SUMS"]).current_dir(&dir).output().unwrap();
            assert!(out.status.success(), "{}: {}", dir.display(), String::from_utf8_lossy(&out.stdout));
        }
    }
    {
        let pem = s.dir.path().join("public.pem");
        std::fs::write(&pem, s.key.public().to_pem()).unwrap();
        for file in ["index.json", "SHA256SUMS", "kubernetes/SHA256SUMS", "kubernetes-v1.31.3-x86-64.raw"] {
            let path = s.release().join(file);
            let out = Command::new("openssl")
                .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
                .arg(&pem)
                .arg("-rawin")
                .arg("-in")
                .arg(&path)
                .arg("-sigfile")
                .arg(layout::sig(path.to_str().unwrap()))
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl rejects {file}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

fn publishing_again_adds_exactly_the_new_image_and_bumps_the_serial() {
    let s = Scratch::new();
    let a = s.image("kubernetes-v1.31.3-x86-64.raw", "");
    s.publish(std::slice::from_ref(&a));
    let before_files = files(&s);
    let before = index(&s);

    let b = s.image("kubernetes-v1.31.4-x86-64.raw", "");
    let published = s.publish(&[a.clone(), b]);
    assert_eq!(published.added.iter().map(ToString::to_string).collect::<Vec<_>>(), ["kubernetes-v1.31.4-x86-64.raw"]);
    assert_eq!(published.unchanged.len(), 1, "republishing identical bytes is a no-op");
    let after = index(&s);
    assert_eq!(after.serial, before.serial + 1);
    assert_eq!(after.extensions["kubernetes"].len(), 2);
    let old: sysext_model::ImageName = "kubernetes-v1.31.3-x86-64.raw".parse().unwrap();
    assert_eq!(after.artifact(&old), before.artifact(&old), "the existing artifact is untouched");
    let new_files: BTreeSet<String> = files(&s).difference(&before_files).cloned().collect();
    assert_eq!(
        new_files,
        [
            "kubernetes-v1.31.4-x86-64.raw",
            "kubernetes-v1.31.4-x86-64.raw.sig",
            "kubernetes/kubernetes-v1.31.4-x86-64.raw"
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    s.assert_verifies();

    // Only the base URL given first is needed once; a bare re-sign extends expiry. A trailing
    // slash names the same release.
    let mut opts = s.options(NOW.after(10 * DAY));
    let slashed = std::path::PathBuf::from(format!("{}/", s.release().display()));
    opts.release_dir = &slashed;
    opts.base_url = None;
    let resigned = publish(&[], &opts).unwrap();
    assert_eq!(resigned.index.serial, 3);
    assert_eq!(resigned.index.expires, NOW.after(40 * DAY));

    // Generations beyond --keep are pruned; the release keeps working.
    s.publish(&[]);
    let generations: Vec<String> = std::fs::read_dir(s.dir.path().join("release.generations"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(generations, ["0000000002", "0000000003", "0000000004"]);
    s.assert_verifies();
}

fn a_failure_after_any_step_leaves_a_valid_release() {
    for step in Step::ALL {
        let s = Scratch::new();
        let first = s.image("kubernetes-v1.31.3-x86-64.raw", "");
        s.publish(std::slice::from_ref(&first));
        let second = s.image("kubernetes-v1.31.4-x86-64.raw", "");
        let err = s.publish_failing(std::slice::from_ref(&second), step);
        assert!(matches!(err, PublishError::Injected(x) if x == step), "{step:?}: {err}");

        let report = s.assert_verifies();
        let expected_serial = if step >= Step::Swap { 2 } else { 1 };
        assert_eq!(report.serial, Some(expected_serial), "after a failure after {step:?}");
        let leftovers: Vec<String> = std::fs::read_dir(s.dir.path().join("release.generations"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{step:?} left {leftovers:?}");

        // The next publish recovers (also from a generation that was committed but never made
        // current) and numbers its serial after what readers saw.
        let third = s.image("kubernetes-v1.31.5-x86-64.raw", "");
        let next = s.publish(&[second, third]);
        assert_eq!(next.index.serial, expected_serial + 1, "{step:?}");
        assert_eq!(next.index.extensions["kubernetes"].len(), 3);
        s.assert_verifies();
    }

    // And on a first publish, a failure before the swap leaves no release at all.
    for step in Step::ALL.into_iter().filter(|s| *s < Step::Swap) {
        let s = Scratch::new();
        s.publish_failing(&[s.image("cni-v1.6.2-x86-64.raw", "")], step);
        assert!(std::fs::symlink_metadata(s.release()).is_err(), "{step:?}");
        assert!(!s.dir.path().join("release.generations").exists(), "{step:?} left the store behind");
    }
}

fn bad_publishes_are_refused_and_change_nothing() {
    let s = Scratch::new();
    s.publish(&[s.image("kubernetes-v1.31.3-x86-64.raw", "")]);
    let before = files(&s);
    let serial = index(&s).serial;

    let cases: Vec<(Vec<release_index::publish::NewImage>, &str)> = vec![
        (vec![s.image("kubernetes-v1.31.3-x86-64.raw", "rebuilt")], "published images never change"),
        (vec![s.image("kubernetes-1.31.4-x86-64.raw", "")], "differ in their 'v' prefix"),
        (
            {
                let mut i = s.image("kubernetes-v1.31.5-x86-64.raw", "");
                i.extension_release.set("ARCHITECTURE", "arm64");
                vec![i]
            },
            "ARCHITECTURE=arm64, but the file name says x86-64",
        ),
        (
            {
                let mut i = s.image("kubernetes-v1.31.5-x86-64.raw", "");
                i.extension_release.set("SYSEXT_VERSION_ID", "v1.31.6");
                vec![i]
            },
            "SYSEXT_VERSION_ID=v1.31.6",
        ),
        (
            vec![s.image("kubernetes-v1.31.5-x86-64.raw", ""), s.image("kubernetes-v1.31.5-x86-64.raw", "")],
            "given twice",
        ),
    ];
    for (images, want) in cases {
        let err = publish(&images, &s.options(NOW)).unwrap_err().to_string();
        assert!(err.contains(want), "expected '{want}' in: {err}");
        assert!(err.contains(".raw"), "the error names the image: {err}");
    }
    let mut renamed = s.image("kubernetes-v1.31.5-x86-64.raw", "");
    let odd = renamed.path.with_file_name("kubernetes-v1.31.5~rc1-x86-64.raw");
    std::fs::rename(&renamed.path, &odd).unwrap();
    renamed.path = odd;
    let err = publish(&[renamed], &s.options(NOW)).unwrap_err().to_string();
    assert!(err.contains("invalid version"), "sysupdate's version characters: {err}");

    let other = PrivateKey::generate().unwrap();
    let mut opts = s.options(NOW);
    opts.key = &other;
    let err = publish(&[], &opts).unwrap_err().to_string();
    assert!(err.contains("is signed by key") && err.contains(&s.key.key_id().to_string()), "{err}");

    assert_eq!(files(&s), before);
    assert_eq!(index(&s).serial, serial);
    s.assert_verifies();

    // A directory publish did not make is never taken over, nor is a first publish without a URL.
    let foreign = s.dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("README"), "mine").unwrap();
    let mut opts = s.options(NOW);
    opts.release_dir = &foreign;
    let err = publish(&[], &opts).unwrap_err().to_string();
    assert!(err.contains("a directory that publish does not manage"), "{err}");
    let fresh = s.dir.path().join("fresh");
    let mut opts = s.options(NOW);
    opts.release_dir = &fresh;
    opts.base_url = None;
    assert!(matches!(publish(&[], &opts), Err(PublishError::NeedBaseUrl { .. })));
    assert!(!s.dir.path().join("fresh.generations").exists(), "a refused first publish leaves nothing");
}

fn verification_reports_every_tampered_file() {
    let s = Scratch::new();
    s.publish(&[s.image("kubernetes-v1.31.3-x86-64.raw", ""), s.image("cni-v1.6.2-x86-64.raw", "")]);
    s.assert_verifies();
    let gen = std::fs::canonicalize(s.release()).unwrap();
    let backup = s.dir.path().join("pristine");
    let out = Command::new("cp").arg("-a").arg(&gen).arg(&backup).output().unwrap();
    assert!(out.status.success());
    let restore = || {
        std::fs::remove_dir_all(&gen).unwrap();
        let out = Command::new("cp").arg("-a").arg(&backup).arg(&gen).output().unwrap();
        assert!(out.status.success());
    };

    let cases: &[(&str, &[&str])] = &[
        (
            "kubernetes-v1.31.3-x86-64.raw",
            &["kubernetes-v1.31.3-x86-64.raw: sha256", "kubernetes-v1.31.3-x86-64.raw.sig: signature does not match"],
        ),
        ("index.json", &["index.json"]),
        ("SHA256SUMS", &["SHA256SUMS"]),
        ("cni/SHA256SUMS", &["cni/SHA256SUMS"]),
        ("index.json.sig", &["index.json.sig: signature does not match"]),
        ("SHA256SUMS.sig", &["SHA256SUMS.sig: signature does not match"]),
        ("cni-v1.6.2-x86-64.raw.sig", &["cni-v1.6.2-x86-64.raw.sig: signature does not match"]),
        ("cni/cni.conf", &["cni/cni.conf: differs"]),
    ];
    for (file, wants) in cases {
        flip_bit(&gen.join(file));
        let report = s.verify();
        let text: Vec<String> = report.problems.iter().map(|p| format!("{}: {}", p.path, p.message)).collect();
        for want in *wants {
            assert!(
                text.iter().any(|t| t.starts_with(want)),
                "flipping a bit in {file}: expected '{want}' in {text:#?}"
            );
        }
        restore();
        s.assert_verifies();
    }

    // A separately stored copy that differs from the top-level image (no longer a hard link).
    let sub = gen.join("cni/cni-v1.6.2-x86-64.raw");
    let mut bytes = std::fs::read(&sub).unwrap();
    std::fs::remove_file(&sub).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&sub, bytes).unwrap();
    assert!(s.verify().problems.iter().any(|p| p.path == "cni/cni-v1.6.2-x86-64.raw" && p.message.contains("sha256")));
    restore();

    // Several problems at once: all are reported.
    std::fs::remove_file(gen.join("cni-v1.6.2-x86-64.raw")).unwrap();
    std::fs::write(gen.join("stray.raw"), "x").unwrap();
    flip_bit(&gen.join("kubernetes/SHA256SUMS"));
    let report = s.verify();
    let paths: BTreeSet<&str> = report.problems.iter().map(|p| p.path.as_str()).collect();
    for want in ["cni-v1.6.2-x86-64.raw", "stray.raw", "kubernetes/SHA256SUMS"] {
        assert!(paths.contains(want), "{want} not in {:#?}", report.problems);
    }
    assert!(report.problems.iter().any(|p| p.path == "stray.raw" && p.message == "not listed in the index"));
    assert!(report.problems.iter().any(|p| p.path == "cni-v1.6.2-x86-64.raw" && p.message.contains("missing")));
    restore();

    // Signed by another key; expired.
    let other = PrivateKey::generate().unwrap();
    let report = release_index::verify::verify_release(
        s.source().backend().unwrap().as_ref(),
        &release_index::verify::VerifyOptions {
            pubkey: &other.public(),
            now: NOW,
            min_serial: None,
            inspect_images: false,
        },
    );
    assert!(report.problems.iter().any(|p| p.path == "index.json.sig"), "{:#?}", report.problems);
    assert!(report.problems.iter().any(|p| p.message.contains("names signing key")));
    let report = s.verify_at(&s.source(), NOW.after(31 * DAY));
    assert_eq!(report.problems.len(), 1, "{:#?}", report.problems);
    assert!(report.problems[0].message.contains("expired at 2026-12-22T10:00:00Z"));
    let report = release_index::verify::verify_release(
        s.source().backend().unwrap().as_ref(),
        &release_index::verify::VerifyOptions {
            pubkey: &s.key.public(),
            now: NOW,
            min_serial: Some(2),
            inspect_images: false,
        },
    );
    assert!(report.problems[0].message.contains("rollback"), "{:#?}", report.problems);
}

fn concurrent_publishes_serialise() {
    let s = Scratch::new();
    s.publish(&[s.image("kubernetes-v1.31.3-x86-64.raw", "")]);
    let images: Vec<_> = (4..8).map(|p| s.image(&format!("kubernetes-v1.31.{p}-x86-64.raw"), "")).collect();
    std::thread::scope(|scope| {
        for image in &images {
            let s = &s;
            scope.spawn(move || s.publish(std::slice::from_ref(image)));
        }
    });
    let idx = index(&s);
    assert_eq!(idx.serial, 5, "every publish got its own serial");
    assert_eq!(idx.extensions["kubernetes"].len(), 5, "no publish lost another's image");
    s.assert_verifies();
}

/// The release format, pinned: the same images published with the same key at the same time
/// give the same bytes in every file, signatures included (Ed25519 is deterministic). A
/// change here is a change of what nodes and stock sysupdate read.
fn published_bytes_are_pinned() {
    let s = Scratch::pinned();
    let imgs = four_images(&s);
    s.publish(&imgs);
    let listing: Vec<String> = files(&s)
        .into_iter()
        .map(|f| format!("{}  {f}", Sha256Digest::of(&std::fs::read(s.release().join(&f)).unwrap())))
        .collect();
    insta::assert_snapshot!("published-release", listing.join("\n"));
}

fn main() -> std::process::ExitCode {
    sysext_tests::harness::run(vec![
        sysext_tests::test!(published_bytes_are_pinned),
        sysext_tests::test!(first_publish_writes_the_flatcar_layout).tools(&["sha256sum", "openssl"]),
        sysext_tests::test!(publishing_again_adds_exactly_the_new_image_and_bumps_the_serial),
        sysext_tests::test!(a_failure_after_any_step_leaves_a_valid_release),
        sysext_tests::test!(bad_publishes_are_refused_and_change_nothing),
        sysext_tests::test!(verification_reports_every_tampered_file),
        sysext_tests::test!(concurrent_publishes_serialise),
    ])
}
