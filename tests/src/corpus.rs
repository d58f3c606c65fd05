//! The committed fuzz corpora (`fuzz/corpus/<target>/`), for the tests that replay them
//! through the same properties the fuzz targets check: every seed and every fixed crash stays
//! covered in ordinary test runs.

use std::path::{Path, PathBuf};

/// `fuzz/corpus/<target>` of this workspace.
pub fn dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

/// Every seed of `target` with its bytes, sorted by path; a target without seeds is an error.
pub fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = dir(target);
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

/// One seed of `target` by file name.
pub fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = dir(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
