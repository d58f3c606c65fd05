//! What a release directory contains, derived from its index alone.
//!
//! `publish` writes exactly these files and `verify-release` expects exactly these, so the two
//! cannot drift apart. The layout is Flatcar's sysext-bakery layout (interop-formats.md B2, B3):
//!
//! ```text
//! kubernetes-v1.31.3-x86-64.raw        image (+ .sig)
//! SHA256SUMS                           every image (+ .sig)
//! index.json                           signed index (+ .sig)
//! noop.conf, noop.transfer             keeps a bare `systemd-sysupdate update` from failing
//! kubernetes/SHA256SUMS                the extension's images (+ .sig)
//! kubernetes/kubernetes-v1.31.3-x86-64.raw   the same image (hard link), where sysupdate looks
//! kubernetes/kubernetes.conf           any version (+ .transfer)
//! kubernetes/kubernetes-v1.31.conf     patch releases of one minor (+ .transfer)
//! ```
//!
//! A release with OpenPGP signatures (the index names an `openpgp-fingerprint`) also has a
//! detached `SHA256SUMS.gpg` next to every `SHA256SUMS`, and the keyring that checks them,
//! `import-pubring.gpg` (the name systemd-pull up to 257 reads from `/etc/systemd/`) and the
//! same bytes as `import-pubring.pgp` (the name newer man pages give).

use std::collections::BTreeMap;

use crate::index::Index;
use crate::sha256sums::Sha256Sums;
use crate::transfer;
use sysext_model::{ExtensionName, ImageName};

/// The signed index.
pub const INDEX: &str = "index.json";
/// The checksum list sysupdate reads.
pub const SUMS: &str = "SHA256SUMS";
/// The OpenPGP keyring for `/etc/systemd/`, under both names nodes look for.
pub const KEYRINGS: [&str; 2] = ["import-pubring.gpg", "import-pubring.pgp"];

/// `<path>.sig`.
pub fn sig(path: &str) -> String {
    format!("{path}.sig")
}

/// `<path>.gpg`: the detached OpenPGP signature systemd-pull fetches.
pub fn gpg(path: &str) -> String {
    format!("{path}.gpg")
}

/// `<ext>/<file>`.
pub fn in_extension_dir(name: &ExtensionName, file: &str) -> String {
    format!("{name}/{file}")
}

/// What one path of a release directory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// An image, at the top level or (hard-linked) in its extension's directory.
    Image(ImageName),
    /// The detached signature of an image.
    ImageSig(ImageName),
    /// A `SHA256SUMS` with exactly this content.
    Sums(String),
    /// A sysupdate transfer file with exactly this content.
    Transfer(String),
    /// `index.json`.
    Index,
    /// The detached signature of the file at this path (a `SHA256SUMS` or the index).
    Sig(String),
    /// The detached OpenPGP signature of the `SHA256SUMS` at this path.
    OpenPgpSig(String),
    /// The OpenPGP keyring with the key the index names.
    Keyring,
}

/// The global checksum list: every image of every extension.
pub fn global_sums(index: &Index) -> Sha256Sums {
    let mut sums = Sha256Sums::new();
    for (_, _, _, art) in index.artifacts() {
        sums.insert(&art.file.to_string(), art.sha256).expect("image names are plain file names");
    }
    sums
}

/// One extension's checksum list: all its versions and architectures.
pub fn extension_sums(index: &Index, name: &ExtensionName) -> Sha256Sums {
    let mut sums = Sha256Sums::new();
    for (_, _, _, art) in index.artifacts().filter(|(n, ..)| *n == name) {
        sums.insert(&art.file.to_string(), art.sha256).expect("image names are plain file names");
    }
    sums
}

/// Every transfer file with its content: both suffixes, because systemd < 257 (Flatcar Stable)
/// reads only `.conf` and newer systemd prefers `.transfer`.
pub fn transfer_files(index: &Index) -> BTreeMap<String, String> {
    let verify = if index.openpgp_fingerprint.is_some() { transfer::Verify::Yes } else { transfer::Verify::No };
    let mut files = BTreeMap::new();
    let mut add = |stem: String, text: String| {
        files.insert(format!("{stem}.conf"), text.clone());
        files.insert(format!("{stem}.transfer"), text);
    };
    add("noop".into(), transfer::noop().to_owned());
    for (name, versions) in &index.extensions {
        let source = index.base_url.dir(name.as_str());
        add(in_extension_dir(name, name.as_str()), transfer::any_version(name, &source, verify));
        for version in versions.keys() {
            if let Some((stem, text)) = transfer::patch_channel(name, version, &source, verify) {
                add(in_extension_dir(name, &stem), text);
            }
        }
    }
    files
}

/// Every path a release directory with this index holds, and what it must be.
pub fn expected(index: &Index) -> BTreeMap<String, Entry> {
    let mut files = BTreeMap::new();
    files.insert(INDEX.to_owned(), Entry::Index);
    files.insert(sig(INDEX), Entry::Sig(INDEX.to_owned()));
    files.insert(SUMS.to_owned(), Entry::Sums(global_sums(index).to_string()));
    files.insert(sig(SUMS), Entry::Sig(SUMS.to_owned()));
    for (name, _, _, art) in index.artifacts() {
        let file = art.file.to_string();
        files.insert(file.clone(), Entry::Image(art.file.clone()));
        files.insert(sig(&file), Entry::ImageSig(art.file.clone()));
        files.insert(in_extension_dir(name, &file), Entry::Image(art.file.clone()));
    }
    for name in index.extensions.keys() {
        let sums = in_extension_dir(name, SUMS);
        files.insert(sums.clone(), Entry::Sums(extension_sums(index, name).to_string()));
        files.insert(sig(&sums), Entry::Sig(sums));
    }
    for (path, text) in transfer_files(index) {
        files.insert(path, Entry::Transfer(text));
    }
    if index.openpgp_fingerprint.is_some() {
        let sums: Vec<String> =
            files.iter().filter(|(_, e)| matches!(e, Entry::Sums(_))).map(|(p, _)| p.clone()).collect();
        for path in sums {
            files.insert(gpg(&path), Entry::OpenPgpSig(path));
        }
        for keyring in KEYRINGS {
            files.insert(keyring.to_owned(), Entry::Keyring);
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_flatcar_layout() {
        let index = crate::index::tests::sample(&["v1.30.2", "v1.31.3", "v1.31.4"]);
        let files = expected(&index);
        let paths: Vec<&str> = files.keys().map(String::as_str).collect();
        for want in [
            "SHA256SUMS",
            "SHA256SUMS.sig",
            "index.json",
            "index.json.sig",
            "noop.conf",
            "noop.transfer",
            "kubernetes-v1.31.3-x86-64.raw",
            "kubernetes-v1.31.3-x86-64.raw.sig",
            "kubernetes/kubernetes-v1.31.3-x86-64.raw",
            "kubernetes/SHA256SUMS",
            "kubernetes/SHA256SUMS.sig",
            "kubernetes/kubernetes.conf",
            "kubernetes/kubernetes.transfer",
            "kubernetes/kubernetes-v1.30.conf",
            "kubernetes/kubernetes-v1.31.conf",
            "kubernetes/kubernetes-v1.31.transfer",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:#?}");
        }
        // 3 images × (top, sig, link) + 2×2 sums + 2 index + noop×2 + (any + 2 minors)×2.
        assert_eq!(files.len(), 9 + 4 + 2 + 2 + 6, "{paths:#?}");
        let Entry::Transfer(text) = &files["kubernetes/kubernetes-v1.31.conf"] else { panic!() };
        assert!(text.contains("Path=https://example.org/ext/kubernetes/\nMatchPattern=kubernetes-v1.31.@v-%a.raw\n"));
        assert_eq!(files["kubernetes/kubernetes.conf"], files["kubernetes/kubernetes.transfer"]);
    }

    #[test]
    fn openpgp_adds_signatures_keyrings_and_verify_yes() {
        let mut index = crate::index::tests::sample(&["v1.31.3"]);
        let plain = expected(&index);
        index.openpgp_fingerprint = Some("0123456789ABCDEF0123456789ABCDEF01234567".parse().unwrap());
        let files = expected(&index);
        let added: Vec<&str> = files.keys().filter(|p| !plain.contains_key(*p)).map(String::as_str).collect();
        assert_eq!(added, ["SHA256SUMS.gpg", "import-pubring.gpg", "import-pubring.pgp", "kubernetes/SHA256SUMS.gpg"]);
        assert_eq!(files["kubernetes/SHA256SUMS.gpg"], Entry::OpenPgpSig("kubernetes/SHA256SUMS".into()));
        let Entry::Transfer(text) = &files["kubernetes/kubernetes-v1.31.conf"] else { panic!() };
        assert!(text.starts_with("[Transfer]\nVerify=yes\n"), "{text}");
        let Entry::Transfer(noop) = &files["noop.conf"] else { panic!() };
        assert!(!noop.contains("Verify"), "the no-op transfer downloads nothing");
    }
}
