//! OpenPGP signatures for stock systemd-sysupdate, checked by GnuPG's real `gpgv` with the
//! keyring the release exports: both checksum tiers verify, a tampered list or a signature by
//! another key is refused, and `verify-release` catches the same.

mod common;

use std::path::Path;

use common::*;
use release_index::index::Index;
use release_index::layout;
use release_index::publish::publish;
use signing::openpgp::OpenPgpKey;
use signing::PrivateKey;
use sysext_tests::gpg::{gpgv, show_keys};

fn publish_signed(s: &Scratch, images: &[release_index::publish::NewImage]) -> Index {
    let mut opts = s.options(NOW);
    opts.openpgp = true;
    publish(images, &opts).unwrap().index
}

fn sums_paths(release: &Path) -> Vec<std::path::PathBuf> {
    vec![release.join("SHA256SUMS"), release.join("kubernetes/SHA256SUMS"), release.join("containerd/SHA256SUMS")]
}

fn gpgv_verifies_both_tiers_with_the_exported_keyring() {
    let s = Scratch::new();
    let index = publish_signed(
        &s,
        &[
            s.image("kubernetes-v1.31.3-x86-64.raw", ""),
            s.image("kubernetes-v1.31.3-arm64.raw", ""),
            s.image("containerd-2.0.4-x86-64.raw", ""),
        ],
    );
    let rel = s.release();
    let fpr = index.openpgp_fingerprint.expect("the index names the OpenPGP key");
    assert_eq!(fpr, OpenPgpKey::derive(&s.key).fingerprint(), "derived from the release key");

    // The keyring as GnuPG reads it: one key, the index's fingerprint, the Ed25519 key id in
    // its user ID; both names, same bytes.
    let keyring = rel.join("import-pubring.gpg");
    let (fprs, uids) = show_keys(&keyring);
    assert_eq!(fprs, [fpr.to_string()]);
    assert_eq!(uids, [format!("bakery release key {}", s.key.key_id())]);
    assert_eq!(std::fs::read(&keyring).unwrap(), std::fs::read(rel.join("import-pubring.pgp")).unwrap());

    for sums in sums_paths(&rel) {
        let sig = std::path::PathBuf::from(layout::gpg(sums.to_str().unwrap()));
        let out = gpgv(&keyring, &sig, &sums);
        assert!(out.good, "gpgv refuses {}: {}{}", sig.display(), out.status, out.stderr);
        assert!(out.status.contains(&format!("VALIDSIG {fpr}")), "{}", out.status);
    }
    // Every transfer file asks sysupdate to check them.
    for conf in ["kubernetes/kubernetes-v1.31.conf", "kubernetes/kubernetes.transfer", "containerd/containerd-2.0.conf"]
    {
        let text = std::fs::read_to_string(rel.join(conf)).unwrap();
        assert!(text.starts_with("[Transfer]\nVerify=yes\n"), "{conf}: {text}");
    }
    s.assert_verifies();

    // A tampered list: gpgv refuses it.
    let work = tempfile::tempdir().unwrap();
    let tampered = work.path().join("SHA256SUMS");
    let text = std::fs::read_to_string(rel.join("SHA256SUMS")).unwrap();
    std::fs::write(&tampered, text.replacen('a', "b", 1)).unwrap();
    let out = gpgv(&keyring, &rel.join("SHA256SUMS.gpg"), &tampered);
    assert!(!out.good && out.status.contains("BADSIG"), "gpgv accepted a tampered list: {}", out.status);

    // A signature by another key (derived from another release key): unknown to the keyring.
    let other = OpenPgpKey::derive(&PrivateKey::generate().unwrap());
    let foreign = work.path().join("SHA256SUMS.gpg");
    std::fs::write(&foreign, other.sign_detached(text.as_bytes(), NOW.unix() as u32)).unwrap();
    let out = gpgv(&keyring, &foreign, &rel.join("SHA256SUMS"));
    assert!(!out.good && out.status.contains("NO_PUBKEY"), "gpgv accepted another key: {}", out.status);
    // ... which the other key's own keyring does accept: the signature itself is sound.
    let other_ring = work.path().join("other.gpg");
    std::fs::write(&other_ring, other.cert().to_keyring()).unwrap();
    assert!(gpgv(&other_ring, &foreign, &rel.join("SHA256SUMS")).good);

    // A later publish keeps the signatures without being asked again, with the same key.
    let next = s.publish(&[s.image("kubernetes-v1.31.4-x86-64.raw", "")]);
    assert_eq!(next.index.openpgp_fingerprint, Some(fpr));
    let out = gpgv(&keyring, &rel.join("kubernetes/SHA256SUMS.gpg"), &rel.join("kubernetes/SHA256SUMS"));
    assert!(out.good, "{}", out.stderr);
    assert!(std::fs::read_to_string(rel.join("kubernetes/SHA256SUMS")).unwrap().contains("v1.31.4"));
    s.assert_verifies();
}

fn verify_release_checks_the_keyring_and_every_signature() {
    let s = Scratch::new();
    publish_signed(&s, &[s.image("kubernetes-v1.31.3-x86-64.raw", ""), s.image("containerd-2.0.4-x86-64.raw", "")]);
    let gen = std::fs::canonicalize(s.release()).unwrap();
    let report = s.assert_verifies();
    assert!(report.openpgp_fingerprint.is_some());
    let backup = s.dir.path().join("pristine");
    assert!(std::process::Command::new("cp").arg("-a").arg(&gen).arg(&backup).status().unwrap().success());
    let restore = || {
        std::fs::remove_dir_all(&gen).unwrap();
        assert!(std::process::Command::new("cp").arg("-a").arg(&backup).arg(&gen).status().unwrap().success());
    };
    let other = OpenPgpKey::derive(&PrivateKey::generate().unwrap());
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(Damage, &str, &str)> = vec![
        (Box::new(|g| flip_bit(&g.join("kubernetes/SHA256SUMS.gpg"))), "kubernetes/SHA256SUMS.gpg", "signature"),
        (Box::new(|g| std::fs::remove_file(g.join("SHA256SUMS.gpg")).unwrap()), "SHA256SUMS.gpg", "missing"),
        (
            Box::new(move |g| std::fs::write(g.join("import-pubring.gpg"), other.cert().to_keyring()).unwrap()),
            "import-pubring.pgp",
            "differs from import-pubring.gpg",
        ),
        (
            Box::new(|g| {
                let o = OpenPgpKey::derive(&PrivateKey::generate().unwrap()).cert().to_keyring();
                std::fs::write(g.join("import-pubring.gpg"), &o).unwrap();
                std::fs::write(g.join("import-pubring.pgp"), &o).unwrap();
            }),
            "import-pubring.gpg",
            "but the index names OpenPGP key",
        ),
    ];
    for (damage, path, want) in cases {
        damage(&gen);
        let report = s.verify();
        assert!(
            report.problems.iter().any(|p| p.path == path && p.message.contains(want)),
            "expected '{want}' at {path} in {:#?}",
            report.problems
        );
        restore();
        s.assert_verifies();
    }
}

/// The signed release format, pinned like the unsigned one in `publish.rs`: the derived
/// OpenPGP key, its keyring and every signature are deterministic.
fn signed_bytes_are_pinned() {
    let s = Scratch::pinned();
    publish_signed(
        &s,
        &[
            s.image("kubernetes-v1.31.3-x86-64.raw", ""),
            s.image("kubernetes-v1.30.10-x86-64.raw", ""),
            s.image("containerd-2.0.4-x86-64.raw", ""),
        ],
    );
    let listing: Vec<String> = release_index::source::walk(&s.release())
        .unwrap()
        .into_iter()
        .map(|f| format!("{}  {f}", signing::Sha256Digest::of(&std::fs::read(s.release().join(&f)).unwrap())))
        .collect();
    insta::assert_snapshot!("published-release-openpgp", listing.join("\n"));
}

fn main() -> std::process::ExitCode {
    sysext_tests::harness::run(vec![
        sysext_tests::test!(gpgv_verifies_both_tiers_with_the_exported_keyring).tools(&["gpgv", "gpg"]),
        sysext_tests::test!(verify_release_checks_the_keyring_and_every_signature),
        sysext_tests::test!(signed_bytes_are_pinned),
    ])
}
