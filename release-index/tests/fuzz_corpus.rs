//! Replays the committed fuzz corpora (fuzz/corpus) through the same properties the fuzz
//! targets check, so every seed and every fixed crash stays covered in ordinary test runs.

use std::fmt::Debug;

use release_index::index::Index;
use release_index::sha256sums::Sha256Sums;
use sysext_model::ExtensionRelease;
use sysext_tests::corpus::seeds;

/// Every UTF-8 seed of `target` that `parse` accepts renders to text that parses back to the
/// same value; returns how many were accepted.
fn round_trips<T: PartialEq + Debug, E>(
    target: &str,
    parse: impl Fn(&str) -> Result<T, E>,
    render: impl Fn(&T) -> String,
) -> usize {
    let mut accepted = 0;
    for (path, bytes) in seeds(target) {
        let Ok(text) = std::str::from_utf8(&bytes) else { continue };
        if let Ok(value) = parse(text) {
            let again =
                parse(&render(&value)).unwrap_or_else(|_| panic!("{}: the rendered form parses", path.display()));
            assert_eq!(again, value, "{}", path.display());
            accepted += 1;
        }
    }
    accepted
}

#[test]
fn sha256sums_seeds() {
    round_trips("sha256sums", Sha256Sums::parse, ToString::to_string);
}

#[test]
fn extension_release_seeds() {
    round_trips("extension_release", ExtensionRelease::parse, ExtensionRelease::render);
}

#[test]
fn index_seeds() {
    let parsed = round_trips("index", |t| Index::parse(t.as_bytes()), Index::to_json);
    assert!(parsed >= 1, "the published index seed must parse");
}

/// The OpenPGP seeds go through the fuzz target's property, and the seed made from the
/// snake-oil key is a keyring and a signature that verify (`UPDATE_SEEDS=1` rewrites it).
#[test]
fn openpgp_seeds() {
    let key = signing::PrivateKey::read_pem(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/keys/snakeoil-private.pem"
    )))
    .unwrap();
    let pgp = signing::openpgp::OpenPgpKey::derive(&key);
    let signed = b"e6d6f1c5cde2e56c005ec2ef3232439456bfd9ac963ffe4921fd9f15e98aa9cf  kubernetes-v1.31.3-x86-64.raw\n";
    let keyring = pgp.cert().to_keyring();
    let signature = pgp.sign_detached(signed, 0);
    let certs = signing::openpgp::Cert::parse_keyring(&keyring).unwrap();
    assert_eq!(signing::openpgp::Cert::verify_detached(&certs, signed, &signature).unwrap(), pgp.fingerprint());
    let seed = signing::openpgp::fuzz_input(&keyring, &signature, signed);
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/openpgp/snakeoil"));
    if std::env::var_os("UPDATE_SEEDS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &seed).unwrap();
    }
    let seeds = seeds("openpgp");
    assert!(seeds.iter().any(|(_, bytes)| *bytes == seed), "fuzz/corpus/openpgp/snakeoil is stale: UPDATE_SEEDS=1");
    for (_, bytes) in &seeds {
        signing::openpgp::fuzz_property(bytes);
    }
}
