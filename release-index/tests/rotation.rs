//! Key rotation, end to end: a node that trusts only the old key follows a release across
//! planned rotations, never accepts a key nobody it trusts vouched for, refuses the retired
//! key afterwards, and starts over from a key replaced out of band.

mod common;

use std::path::Path;

use common::*;
use release_index::client::{Client, ClientError};
use release_index::index::Index;
use release_index::publish::PublishError;
use release_index::rotation::{KeyRotation, TrustError};
use release_index::source::ReleaseSource;
use release_index::verify::{verify_release, VerifyOptions};
use signing::{PrivateKey, PublicKey};

fn client(release: &Path, key: &PublicKey, state: Option<&Path>) -> Client {
    Client::new(ReleaseSource::Dir(release.to_owned()).backend().unwrap(), key.clone(), state.map(Path::to_owned))
}

fn verify_with(s: &Scratch, key: &PublicKey) -> release_index::verify::Report {
    verify_release(
        s.source().backend().unwrap().as_ref(),
        &VerifyOptions { pubkey: key, now: NOW, min_serial: None, inspect_images: false },
    )
}

/// Rewrites the current generation's index as `edit` says and signs it with `key`: what an
/// attacker who controls the mirror and holds `key` can serve.
fn forge_index(release: &Path, key: &PrivateKey, edit: impl FnOnce(&mut Index)) {
    let gen = std::fs::canonicalize(release).unwrap();
    let path = gen.join("index.json");
    // Not `Index::parse`: an earlier forgery may have left a chain it refuses.
    let mut index: Index = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut index);
    index.key_id = key.key_id();
    let json = index.to_json();
    std::fs::write(&path, &json).unwrap();
    std::fs::write(gen.join("index.json.sig"), key.sign(json.as_bytes())).unwrap();
}

#[test]
fn a_node_trusting_the_old_key_follows_planned_rotations_and_retires_it() {
    let s = Scratch::new();
    let k1 = &s.key;
    let (k2, k3) = (PrivateKey::generate().unwrap(), PrivateKey::generate().unwrap());
    let state = s.dir.path().join("node/state.json");
    let node = client(&s.release(), &k1.public(), Some(&state));
    s.publish(&[s.image("kubernetes-v1.31.3-x86-64.raw", "")]);
    assert_eq!(node.fetch_index_at(NOW).unwrap().index.serial, 1);

    // Planned rotation k1 -> k2: k1 vouches, the release is published with k2.
    let r12 = KeyRotation::sign(k1, &k2.public(), NOW);
    let published = s.publish_with(&k2, Some(&r12), &[s.image("kubernetes-v1.31.4-x86-64.raw", "")]).unwrap();
    assert_eq!(published.index.key_id, k2.key_id());
    assert_eq!(published.index.key_rotations, std::slice::from_ref(&r12));
    let got = node.fetch_index_at(NOW).unwrap();
    assert_eq!((got.index.serial, got.index.key_id), (2, k2.key_id()), "the node follows the rotation");

    // The release goes on with k2; the record stays in every later index.
    let later = s.publish_with(&k2, None, &[]).unwrap();
    assert_eq!(later.index.key_rotations, std::slice::from_ref(&r12));
    assert_eq!(node.fetch_index_at(NOW).unwrap().index.serial, 3);
    // Publishing with the retired key is refused, and so is applying the rotation twice.
    let err = s.publish_with(k1, None, &[]).unwrap_err();
    assert!(matches!(err, PublishError::RetiredKey { .. }), "{err}");
    assert!(err.to_string().contains("was retired by the rotation to"), "{err}");
    let err = s.publish_with(&k2, Some(&r12), &[]).unwrap_err().to_string();
    assert!(err.contains("already signed by"), "{err}");

    // A second rotation k2 -> k3; a node that was offline since k1 walks both records.
    let r23 = KeyRotation::sign(&k2, &k3.public(), NOW);
    s.publish_with(&k3, Some(&r23), &[s.image("kubernetes-v1.31.5-x86-64.raw", "")]).unwrap();
    let offline = client(&s.release(), &k1.public(), Some(&s.dir.path().join("offline.json")));
    let got = offline.fetch_index_at(NOW).unwrap();
    assert_eq!((got.index.serial, got.index.key_id), (4, k3.key_id()));
    assert_eq!(got.index.key_rotations, [r12, r23]);
    assert_eq!(node.fetch_index_at(NOW).unwrap().index.key_id, k3.key_id());
    // The state names the key the node trusts now and the keys it retired.
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["trusted-key"], k3.public().to_string());
    assert_eq!(saved["configured-key-id"], k1.key_id().to_string());
    assert_eq!(saved["retired-keys"].as_array().unwrap().len(), 2);

    // verify-release from the first key: chain followed, images signed by k1 and k2 accepted.
    let report = verify_with(&s, &k1.public());
    assert!(report.ok(), "{:#?}", report.problems);
    assert_eq!(report.rotated_to, Some(k3.key_id()));
    assert!(verify_with(&s, &k3.public()).ok());

    // Whoever still holds k2 (or k1) signs a newer index: the node retired them, so it is
    // refused, however high the serial.
    for retired in [&k2, k1] {
        forge_index(&s.release(), retired, |i| {
            i.serial = 99;
            i.key_rotations.clear();
        });
        let err = node.fetch_index_at(NOW).unwrap_err();
        assert!(matches!(err, ClientError::Untrusted { reason: TrustError::Retired { .. }, .. }), "{err}");
        assert!(err.to_string().contains("retired when it followed a key rotation"), "{err}");
    }
    // The k2-signed index with the record k1 -> k2 still in it is refused just the same.
    let r12 = KeyRotation::sign(k1, &k2.public(), NOW);
    forge_index(&s.release(), &k2, |i| i.key_rotations = vec![r12.clone()]);
    let err = node.fetch_index_at(NOW).unwrap_err();
    assert!(matches!(err, ClientError::Untrusted { reason: TrustError::Retired { .. }, .. }), "{err}");
}

#[test]
fn keys_nobody_trusted_vouched_for_are_refused() {
    let s = Scratch::new();
    let k1 = &s.key;
    s.publish(&[s.image("kubernetes-v1.31.3-x86-64.raw", "")]);
    let evil = PrivateKey::generate().unwrap();
    let accomplice = PrivateKey::generate().unwrap();

    // Simply signed by another key.
    forge_index(&s.release(), &evil, |_| {});
    let err = client(&s.release(), &k1.public(), None).fetch_index_at(NOW).unwrap_err();
    assert!(matches!(err, ClientError::Untrusted { reason: TrustError::Untrusted { .. }, .. }), "{err}");
    assert!(err.to_string().contains("which this client does not trust"), "{err}");

    // A record naming k1 as the old key, but signed by the attacker.
    let mut forged = KeyRotation::sign(&evil, &evil.public(), NOW);
    forged.old_key = k1.public();
    forge_index(&s.release(), &evil, |i| i.key_rotations = vec![forged.clone()]);
    let err = client(&s.release(), &k1.public(), None).fetch_index_at(NOW).unwrap_err();
    assert!(matches!(err, ClientError::Untrusted { reason: TrustError::BadRotation(_), .. }), "{err}");
    assert!(err.to_string().contains("is not signed by"), "{err}");

    // A genuine record, but made by a key the node never trusted.
    let vouched = KeyRotation::sign(&accomplice, &evil.public(), NOW);
    forge_index(&s.release(), &evil, |i| i.key_rotations = vec![vouched.clone()]);
    let err = client(&s.release(), &k1.public(), None).fetch_index_at(NOW).unwrap_err();
    assert!(matches!(err, ClientError::Untrusted { reason: TrustError::Untrusted { .. }, .. }), "{err}");
    let report = verify_with(&s, &k1.public());
    assert!(report.problems.iter().any(|p| p.message.contains("no key rotation in the index leads from it")));

    // A valid k1 record for k2, in an index signed by the attacker instead of k2.
    let k2 = PrivateKey::generate().unwrap();
    let r12 = KeyRotation::sign(k1, &k2.public(), NOW);
    forge_index(&s.release(), &evil, |i| i.key_rotations = vec![r12.clone()]);
    let err = client(&s.release(), &k1.public(), None).fetch_index_at(NOW).unwrap_err();
    assert!(matches!(err, ClientError::Untrusted { reason: TrustError::BadRotation(_), .. }), "{err}");
    // ... or signed with the wrong key for the key-id it names.
    forge_index(&s.release(), &evil, |i| i.key_rotations = vec![r12.clone()]);
    let gen = std::fs::canonicalize(s.release()).unwrap();
    let mut index: Index = serde_json::from_slice(&std::fs::read(gen.join("index.json")).unwrap()).unwrap();
    index.key_id = k2.key_id();
    let json = index.to_json();
    std::fs::write(gen.join("index.json"), &json).unwrap();
    std::fs::write(gen.join("index.json.sig"), evil.sign(json.as_bytes())).unwrap();
    let err = client(&s.release(), &k1.public(), None).fetch_index_at(NOW).unwrap_err();
    assert!(matches!(err, ClientError::BadSignature { ref key_id, .. } if *key_id == k2.key_id()), "{err}");
}

#[test]
fn publish_refuses_rotations_it_cannot_vouch_for() {
    let s = Scratch::new();
    let (k2, stranger) = (PrivateKey::generate().unwrap(), PrivateKey::generate().unwrap());
    let r12 = KeyRotation::sign(&s.key, &k2.public(), NOW);
    let err = s.publish_with(&k2, Some(&r12), &[s.image("cni-v1.6.2-x86-64.raw", "")]).unwrap_err().to_string();
    assert!(err.contains("a first publish has no key to rotate from"), "{err}");
    s.publish(&[s.image("cni-v1.6.2-x86-64.raw", "")]);
    let before = std::fs::read_link(s.release()).unwrap();

    let cases: Vec<(KeyRotation, &PrivateKey, &str)> = vec![
        // The record vouches for another key than the one given.
        (KeyRotation::sign(&s.key, &stranger.public(), NOW), &k2, "vouches for key"),
        // Made by a key that does not sign the release.
        (KeyRotation::sign(&stranger, &k2.public(), NOW), &k2, "only the key that signs a release can vouch"),
        // Tampered after signing.
        (
            {
                let mut r = r12.clone();
                r.signed_at = NOW.after(DAY);
                r
            },
            &k2,
            "not signed by",
        ),
    ];
    for (record, key, want) in cases {
        let err = s.publish_with(key, Some(&record), &[]).unwrap_err().to_string();
        assert!(err.contains(want), "expected '{want}' in: {err}");
    }
    // Without a record, another key is refused as before.
    let err = s.publish_with(&k2, None, &[]).unwrap_err().to_string();
    assert!(err.contains("is signed by key") && err.contains("--rotation"), "{err}");
    assert_eq!(std::fs::read_link(s.release()).unwrap(), before, "nothing was published");

    // The record file `bakery vouch` writes is read back and checked.
    let file = s.dir.path().join("rotation.json");
    std::fs::write(&file, r12.to_json()).unwrap();
    assert_eq!(KeyRotation::read(&file).unwrap(), r12);
}

#[test]
fn an_emergency_key_replaced_out_of_band_starts_the_node_over() {
    // The release's key k1 is compromised: the publisher publishes the images again, into a
    // new release with a new key k9, served in place of the old one, and the operator
    // replaces the node's configured key with k9.
    let old = Scratch::new();
    old.publish(&[old.image("kubernetes-v1.31.3-x86-64.raw", "")]);
    old.publish(&[]);
    old.publish(&[]);
    let state = old.dir.path().join("node/state.json");
    let k1 = old.key.public();
    assert_eq!(client(&old.release(), &k1, Some(&state)).fetch_index_at(NOW).unwrap().index.serial, 3);

    let fresh = Scratch::new();
    fresh.publish(&[fresh.image("kubernetes-v1.31.3-x86-64.raw", "")]);
    let k9 = fresh.key.public();
    // Before the operator acts, the node refuses the new key.
    let err = client(&fresh.release(), &k1, Some(&state)).fetch_index_at(NOW).unwrap_err();
    assert!(matches!(err, ClientError::Untrusted { .. }), "{err}");
    // After: the new release is accepted, although its serial is lower than what the node saw.
    let node = client(&fresh.release(), &k9, Some(&state));
    assert_eq!(node.fetch_index_at(NOW).unwrap().index.serial, 1);
    // And the compromised key is retired: its indexes are refused from now on.
    let err = client(&old.release(), &k9, Some(&state)).fetch_index_at(NOW).unwrap_err();
    assert!(matches!(err, ClientError::Untrusted { reason: TrustError::Retired { .. }, .. }), "{err}");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert!(saved["retired-keys"].as_array().unwrap().iter().any(|k| k == &k1.key_id().to_string()), "{saved}");
}
