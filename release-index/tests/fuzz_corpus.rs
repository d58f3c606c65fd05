//! Replays the committed fuzz corpora (fuzz/corpus) through the same properties the fuzz
//! targets check, so every seed and every fixed crash stays covered in ordinary test runs.

use std::path::{Path, PathBuf};

use release_index::index::Index;
use release_index::sha256sums::Sha256Sums;
use sysext_model::ExtensionRelease;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    files
}

#[test]
fn sha256sums_seeds() {
    for (path, bytes) in corpus("sha256sums") {
        let Ok(text) = std::str::from_utf8(&bytes) else { continue };
        if let Ok(sums) = Sha256Sums::parse(text) {
            assert_eq!(Sha256Sums::parse(&sums.to_string()).unwrap(), sums, "{}", path.display());
        }
    }
}

#[test]
fn extension_release_seeds() {
    for (path, bytes) in corpus("extension_release") {
        let Ok(text) = std::str::from_utf8(&bytes) else { continue };
        if let Ok(rel) = ExtensionRelease::parse(text) {
            assert_eq!(ExtensionRelease::parse(&rel.render()).unwrap(), rel, "{}", path.display());
        }
    }
}

#[test]
fn index_seeds() {
    let mut parsed = 0;
    for (path, bytes) in corpus("index") {
        if let Ok(index) = Index::parse(&bytes) {
            assert_eq!(Index::parse(index.to_json().as_bytes()).unwrap(), index, "{}", path.display());
            parsed += 1;
        }
    }
    assert!(parsed >= 1, "the published index seed must parse");
}
