//! The client: signature, then expiry, then serial against the state file; artifacts verified
//! while they stream.

mod common;

use common::*;
use release_index::client::{Client, ClientError};
use release_index::source::ReleaseSource;
use signing::PrivateKey;

fn client(s: &Scratch, state: &std::path::Path) -> Client {
    Client::new(s.source().backend().unwrap(), s.key.public(), Some(state.to_owned()))
}

#[test]
fn accepts_fresh_indexes_and_refuses_rollback_expiry_forks_and_strangers() {
    let s = Scratch::new();
    let state = s.dir.path().join("state/client.json");
    s.publish(&[s.image("kubernetes-v1.31.3-x86-64.raw", "")]);
    let c = client(&s, &state);
    assert_eq!(c.fetch_index_at(NOW).unwrap().index.serial, 1);
    assert_eq!(c.fetch_index_at(NOW).unwrap().index.serial, 1, "the same index again is fine");

    s.publish(&[s.image("kubernetes-v1.31.4-x86-64.raw", "")]);
    assert_eq!(c.fetch_index_at(NOW).unwrap().index.serial, 2);

    // A mirror replays generation 1, validly signed: refused because 2 was seen.
    let gens = s.dir.path().join("release.generations");
    let replay = s.dir.path().join("replay");
    std::os::unix::fs::symlink(gens.join("0000000001"), &replay).unwrap();
    let replayed = Client::new(ReleaseSource::Dir(replay).backend().unwrap(), s.key.public(), Some(state.clone()));
    let err = replayed.fetch_index_at(NOW).unwrap_err();
    assert!(matches!(err, ClientError::Rollback { serial: 1, accepted: 2, .. }), "{err}");
    assert!(err.to_string().contains("refusing a rollback"));

    // Expiry is checked before the serial is recorded.
    let err = c.fetch_index_at(NOW.after(31 * DAY)).unwrap_err();
    assert!(matches!(err, ClientError::Expired { .. }), "{err}");

    // Another release signed by the same key with the same serial but other content.
    let fork = Scratch { dir: tempfile::tempdir().unwrap(), key: PrivateKey::read_pem(&write_key(&s)).unwrap() };
    fork.publish(&[fork.image("kubernetes-v1.31.9-x86-64.raw", "")]);
    fork.publish(&[]);
    let forked = Client::new(fork.source().backend().unwrap(), s.key.public(), Some(state.clone()));
    let err = forked.fetch_index_at(NOW).unwrap_err();
    assert!(matches!(err, ClientError::Fork { serial: 2, .. }), "{err}");

    // A stranger's key: the index is signed by a key the client does not trust, and no key
    // rotation leads there.
    let other = Client::new(s.source().backend().unwrap(), PrivateKey::generate().unwrap().public(), None);
    let err = other.fetch_index_at(NOW).unwrap_err();
    assert!(matches!(err, ClientError::Untrusted { .. }), "{err}");
    assert!(err.to_string().contains("which this client does not trust"), "{err}");

    // An unreadable state file is an error, not a reset to "accept anything".
    let saved = std::fs::read(&state).unwrap();
    std::fs::write(&state, "garbage").unwrap();
    let err = client(&s, &state).fetch_index_at(NOW).unwrap_err();
    assert!(matches!(err, ClientError::State { .. }), "{err}");
    std::fs::write(&state, saved).unwrap();

    // A corrupt index signature is refused before the JSON is even parsed.
    let gen = std::fs::canonicalize(s.release()).unwrap();
    flip_bit(&gen.join("index.json"));
    assert!(matches!(c.fetch_index_at(NOW).unwrap_err(), ClientError::BadSignature { .. }));
}

/// A caller that keeps its own state passes what it accepted: the same checks as with the
/// state file, and nothing is written.
#[test]
fn an_accepted_index_from_the_callers_state_refuses_rollbacks_and_forks() {
    let s = Scratch::new();
    s.publish(&[s.image("kubernetes-v1.31.3-x86-64.raw", "")]);
    let first = Client::new(s.source().backend().unwrap(), s.key.public(), None).fetch_index_at(NOW).unwrap();
    s.publish(&[s.image("kubernetes-v1.31.4-x86-64.raw", "")]);
    let listing = || {
        let mut names: Vec<_> = std::fs::read_dir(s.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        names
    };
    let before = listing();
    let c = |accepted| Client::new(s.source().backend().unwrap(), s.key.public(), None).with_accepted(accepted);
    let second = c(Some(first.accepted())).fetch_index_at(NOW).unwrap();
    assert_eq!(second.accepted().serial, 2);
    assert_eq!(c(Some(second.accepted())).fetch_index_at(NOW).unwrap().sha256, second.sha256, "the same index again");

    let gens = s.dir.path().join("release.generations");
    let replayed = Client::new(ReleaseSource::Dir(gens.join("0000000001")).backend().unwrap(), s.key.public(), None)
        .with_accepted(Some(second.accepted()));
    let err = replayed.fetch_index_at(NOW).unwrap_err();
    assert!(matches!(err, ClientError::Rollback { serial: 1, accepted: 2, .. }), "{err}");

    let mut other = second.accepted();
    other.index_sha256 = first.sha256;
    let err = c(Some(other)).fetch_index_at(NOW).unwrap_err();
    assert!(matches!(err, ClientError::Fork { serial: 2, .. }), "{err}");
    assert_eq!(listing(), before, "no state file written");
}

fn write_key(s: &Scratch) -> std::path::PathBuf {
    let path = s.dir.path().join("private.pem");
    std::fs::write(&path, s.key.to_pem()).unwrap();
    path
}

#[test]
fn artifacts_appear_only_when_verified() {
    let s = Scratch::new();
    s.publish(&[s.image("cni-v1.6.2-x86-64.raw", "")]);
    let c = Client::new(s.source().backend().unwrap(), s.key.public(), None);
    let trusted = c.fetch_index_at(NOW).unwrap();
    let art = trusted.index.artifact(&"cni-v1.6.2-x86-64.raw".parse().unwrap()).unwrap().clone();
    let dest = s.dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let got = c.fetch_artifact(&art, &dest).unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(s.release().join("cni-v1.6.2-x86-64.raw")).unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&got).unwrap().permissions().mode() & 0o777, 0o644);
    std::fs::remove_file(&got).unwrap();

    let gen = std::fs::canonicalize(s.release()).unwrap();
    let image = gen.join("cni-v1.6.2-x86-64.raw");
    let pristine = std::fs::read(&image).unwrap();
    for (what, bytes) in [
        ("sha256", {
            let mut b = pristine.clone();
            b[100] ^= 1;
            b
        }),
        ("bytes", pristine[..1000].to_vec()),
        ("more than", [pristine.clone(), b"trailing".to_vec()].concat()),
    ] {
        std::fs::write(&image, &bytes).unwrap();
        let err = c.fetch_artifact(&art, &dest).unwrap_err().to_string();
        assert!(err.contains(what) && err.contains("cni-v1.6.2-x86-64.raw"), "{err}");
        let left: Vec<_> = std::fs::read_dir(&dest).unwrap().collect();
        assert!(left.is_empty(), "nothing may be left behind: {left:?}");
    }
}
