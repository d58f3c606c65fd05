//! Hostile states of a release on disk: a published image changed in place, a FIFO or a
//! symlink where a file should be, leftovers of a killed publish, absurd validity periods.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use release_index::publish::{publish, PublishError};
use release_index::source::{walk, Backend, DirBackend};
use release_index::verify::Report;

fn files(s: &Scratch) -> Vec<String> {
    let mut all = walk(&s.dir.path().join("release.generations")).unwrap();
    all.retain(|p| !p.ends_with(".lock"));
    all
}

/// Runs `verify` on another thread and fails the test if it does not finish in 5 s (a
/// FIFO would block an ordinary open forever).
fn verify_promptly(s: &Scratch) -> Report {
    let (tx, rx) = mpsc::channel();
    let source = s.source();
    let key = s.key.public();
    std::thread::spawn(move || {
        let backend = source.backend().unwrap();
        let opts =
            release_index::verify::VerifyOptions { pubkey: &key, now: NOW, min_serial: None, inspect_images: false };
        let _ = tx.send(release_index::verify::verify_release(backend.as_ref(), &opts));
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("verify-release hangs")
}

fn problem<'a>(report: &'a Report, path: &str) -> &'a str {
    report
        .problems
        .iter()
        .find(|p| p.path == path)
        .map(|p| p.message.as_str())
        .unwrap_or_else(|| panic!("no problem reported for {path}: {:#?}", report.problems))
}

/// A published image modified in place (same size, one bit flipped) is caught by the next
/// publish, which names the file and publishes nothing. (Every generation shares the inode, so
/// the current release no longer verifies either: that is what the refusal reports.)
#[test]
fn a_modified_published_image_stops_the_next_publish() {
    let s = Scratch::new();
    s.publish(&[s.image("kubernetes-v1.31.3-x86-64.raw", "")]);
    let before = files(&s);
    let image = s.release().join("kubernetes-v1.31.3-x86-64.raw");
    let size = std::fs::metadata(&image).unwrap().len();
    flip_bit(&image);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), size);

    let err = publish(&[s.image("kubernetes-v1.31.4-x86-64.raw", "")], &s.options(NOW)).unwrap_err();
    assert!(matches!(err, PublishError::CurrentInvalid { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("0000000001/kubernetes-v1.31.3-x86-64.raw"), "{msg}");
    assert!(msg.contains("a published image was modified on disk"), "{msg}");
    assert_eq!(files(&s), before, "something was published");
    let report = s.verify();
    assert!(problem(&report, "kubernetes-v1.31.3-x86-64.raw").contains("does not match the index"));
}

/// Validity periods are bounded: a huge one is an error, not an overflow panic.
#[test]
fn absurd_validity_periods_are_refused() {
    let s = Scratch::new();
    for valid_for in [Duration::MAX, Duration::from_secs(u64::MAX / 2), 3654 * DAY, Duration::ZERO] {
        let mut opts = s.options(NOW);
        opts.valid_for = valid_for;
        let err = publish(&[s.image("kubernetes-v1.31.3-x86-64.raw", "")], &opts).unwrap_err();
        assert!(matches!(err, PublishError::Validity { .. }), "{err}");
        assert!(err.to_string().contains("between 1 second and 10 years"), "{err}");
    }
    assert!(!s.release().exists() && !s.dir.path().join("release.generations").exists());
    let mut opts = s.options(NOW);
    opts.valid_for = release_index::timestamp::MAX_VALIDITY;
    let published = publish(&[], &opts).unwrap();
    assert_eq!(published.index.expires.to_string(), "2036-11-22T10:00:00Z");
}

/// A FIFO named index.json (or an image) is reported, not waited on.
#[test]
fn a_fifo_in_the_release_does_not_hang_verification() {
    let s = Scratch::new();
    s.publish(&[s.image("kubernetes-v1.31.3-x86-64.raw", "")]);
    let gen = std::fs::canonicalize(s.release()).unwrap();
    for name in ["kubernetes-v1.31.3-x86-64.raw", "index.json"] {
        std::fs::remove_file(gen.join(name)).unwrap();
        let o = std::process::Command::new("mkfifo").arg(gen.join(name)).output().unwrap();
        assert!(o.status.success(), "mkfifo: {}", String::from_utf8_lossy(&o.stderr));
        let report = verify_promptly(&s);
        assert!(!report.ok());
        assert!(problem(&report, name).contains("is a FIFO, not a regular file"), "{:#?}", report.problems);
    }
}

fn replace_with_symlink(path: &Path, target: &Path) {
    std::fs::remove_file(path).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}

/// An image, a signature or a directory that is a symlink, to an identical copy outside the
/// release or to a file inside it, does not count: the release is reported incomplete.
#[test]
fn symlinks_below_the_release_root_are_refused() {
    let s = Scratch::new();
    s.publish(&[s.image("kubernetes-v1.31.3-x86-64.raw", "")]);
    s.assert_verifies();
    let gen = std::fs::canonicalize(s.release()).unwrap();
    let outside = s.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let image = "kubernetes-v1.31.3-x86-64.raw";
    let sig = "kubernetes-v1.31.3-x86-64.raw.sig";

    // Identical bytes outside: the old reader followed the link and said OK.
    std::fs::copy(gen.join(image), outside.join(image)).unwrap();
    replace_with_symlink(&gen.join(image), &outside.join(image));
    let report = verify_promptly(&s);
    assert!(problem(&report, image).contains("is a symlink"), "{:#?}", report.problems);
    assert!(problem(&report, image).contains("only regular files inside the release count"));
    std::fs::remove_file(gen.join(image)).unwrap();
    std::fs::copy(outside.join(image), gen.join(image)).unwrap();

    std::fs::copy(gen.join(sig), outside.join(sig)).unwrap();
    replace_with_symlink(&gen.join(sig), &outside.join(sig));
    let report = verify_promptly(&s);
    assert!(problem(&report, sig).contains("is a symlink"), "{:#?}", report.problems);

    // A whole directory linked from inside the release to itself elsewhere: refused, and the
    // listing does not follow it (a link to `.` would otherwise recurse forever).
    let ext = gen.join("kubernetes");
    let copy = outside.join("kubernetes");
    let o = std::process::Command::new("cp").arg("-a").arg(&ext).arg(&copy).output().unwrap();
    assert!(o.status.success());
    std::fs::remove_dir_all(&ext).unwrap();
    std::os::unix::fs::symlink(&copy, &ext).unwrap();
    std::os::unix::fs::symlink(".", gen.join("loop")).unwrap();
    let report = verify_promptly(&s);
    assert!(problem(&report, "kubernetes/SHA256SUMS").contains("is below a symlink"), "{:#?}", report.problems);
    assert_eq!(problem(&report, "loop"), "not listed in the index");

    // The same rules for every reader of a directory release, the client included.
    let backend = DirBackend::new(s.release());
    let err = backend.open(sig).err().expect("a symlinked signature opens");
    assert!(err.to_string().contains("is a symlink"), "{err}");
    assert!(backend.open("index.json").unwrap().is_some(), "the top-level symlink to the generation is fine");
    assert!(backend.open("../release.generations/.lock").is_err());
}

/// A `.release.swap-<pid>` link left by a publish killed in its last step is removed by the
/// next publish.
#[test]
fn a_killed_publish_leaves_no_swap_link_behind() {
    let s = Scratch::new();
    s.publish(&[]);
    let stale = s.dir.path().join(".release.swap-4194304");
    std::os::unix::fs::symlink("release.generations/0000000001", &stale).unwrap();
    s.publish(&[s.image("kubernetes-v1.31.3-x86-64.raw", "")]);
    assert!(std::fs::symlink_metadata(&stale).is_err(), "the stale swap link is still there");
    let left: Vec<String> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".swap-"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    s.assert_verifies();
}
