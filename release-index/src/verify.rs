//! `verify-release`: checks a whole release, from a directory or a URL, and reports every
//! problem rather than the first.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::MetadataExt;

use signing::openpgp::Cert;
use signing::{Digests, DigestsHasher, KeyId, PublicKey};

use crate::index::{Index, MAX_INDEX_BYTES};
use crate::layout::{self, Entry};
use crate::sha256sums::Sha256Sums;
use crate::source::Backend;
use crate::timestamp::Timestamp;
use sysext_model::ImageName;

/// Largest metadata file (SHA256SUMS, transfer file, signature) read whole.
const MAX_SMALL_FILE: u64 = 4 << 20;

/// What to check against.
pub struct VerifyOptions<'a> {
    /// The release's public key.
    pub pubkey: &'a PublicKey,
    /// The time to judge expiry by.
    pub now: Timestamp,
    /// Refuse an index with a lower serial (e.g. the last one a client accepted).
    pub min_serial: Option<u64>,
    /// Read the extension-release inside each image (when the release is on this machine)
    /// and compare it with the index.
    pub inspect_images: bool,
}

impl std::fmt::Debug for VerifyOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("now", &self.now)
            .field("min_serial", &self.min_serial)
            .field("inspect_images", &self.inspect_images)
            .finish()
    }
}

/// One thing wrong with a release.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Path relative to the release (or the release itself, as `.`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The outcome of a verification.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    /// What was verified.
    pub source: String,
    /// The index's serial, if it could be read.
    pub serial: Option<u64>,
    /// The index's expiry, if it could be read.
    pub expires: Option<Timestamp>,
    /// The key that was checked against.
    pub key_id: KeyId,
    /// The key that signs the index, when it was reached from `key-id` through key rotations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_to: Option<KeyId>,
    /// The OpenPGP key whose `SHA256SUMS.gpg` signatures were checked, if the release has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openpgp_fingerprint: Option<signing::openpgp::Fingerprint>,
    /// Files checked.
    pub files_checked: usize,
    /// Whether unlisted files were looked for (only possible for directories).
    pub unlisted_checked: bool,
    /// Everything wrong; empty when the release verifies.
    pub problems: Vec<Problem>,
}

impl Report {
    /// Whether the release verifies.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Checker<'a> {
    source: &'a dyn Backend,
    opts: &'a VerifyOptions<'a>,
    /// The key that signs the index and the checksum lists.
    signer: PublicKey,
    /// Keys that may have signed an image: the signer, then the keys it was rotated from
    /// (an image keeps the signature it was published with).
    image_keys: Vec<PublicKey>,
    /// The release's OpenPGP keyring, once read and checked against the index.
    keyring: Option<Vec<Cert>>,
    problems: Vec<Problem>,
    checked: usize,
}

impl Checker<'_> {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem { path: path.to_owned(), message: message.into() });
    }

    /// Reads a small file, recording a problem if it is missing or unreadable.
    fn read(&mut self, path: &str, limit: u64) -> Option<Vec<u8>> {
        match self.source.read(path, limit) {
            Ok(Some(b)) => {
                self.checked += 1;
                Some(b)
            }
            Ok(None) => {
                self.problem(path, "listed but missing");
                None
            }
            Err(e) => {
                self.problem(path, e.cause);
                None
            }
        }
    }

    fn check_sig(&mut self, path: &str, data: &[u8]) {
        let keys = [self.signer.clone()];
        self.check_sig_by(path, data, &keys);
    }

    fn check_sig_by(&mut self, path: &str, data: &[u8], keys: &[PublicKey]) {
        let sig_path = layout::sig(path);
        let Some(sig) = self.read(&sig_path, MAX_SMALL_FILE) else { return };
        if sig.len() != 64 {
            self.problem(&sig_path, format!("expected a raw 64-byte Ed25519 signature, found {} bytes", sig.len()));
        } else if !keys.iter().any(|k| k.verify(data, &sig)) {
            let earlier = if keys.len() > 1 { " or any key it was rotated from" } else { "" };
            self.problem(&sig_path, format!("signature does not match {path} under key {}{earlier}", keys[0].key_id()));
        }
    }

    /// Reads both keyrings and checks they hold exactly the key the index names.
    fn load_keyring(&mut self, want: signing::openpgp::Fingerprint) {
        let mut first: Option<Vec<u8>> = None;
        for name in layout::KEYRINGS {
            let Some(bytes) = self.read(name, MAX_SMALL_FILE) else { continue };
            match &first {
                Some(other) if *other != bytes => {
                    self.problem(
                        name,
                        format!("differs from {}; both names must carry the same keyring", layout::KEYRINGS[0]),
                    );
                    continue;
                }
                Some(_) => continue,
                None => {}
            }
            match Cert::parse_keyring(&bytes) {
                Ok(certs) if certs.len() == 1 && certs[0].fingerprint() == want => self.keyring = Some(certs),
                Ok(certs) => self.problem(
                    name,
                    format!(
                        "holds {}, but the index names OpenPGP key {want}",
                        certs.iter().map(|c| c.fingerprint().to_string()).collect::<Vec<_>>().join(", ")
                    ),
                ),
                Err(e) => self.problem(name, e.to_string()),
            }
            first = Some(bytes);
        }
    }

    fn check_gpg(&mut self, path: &str, data: &[u8]) {
        let gpg_path = layout::gpg(path);
        let Some(sig) = self.read(&gpg_path, MAX_SMALL_FILE) else { return };
        // Without a usable keyring there is nothing to check against; that is reported there.
        let Some(keyring) = &self.keyring else { return };
        if let Err(e) = Cert::verify_detached(keyring, data, &sig) {
            self.problem(&gpg_path, format!("{e} (over {path})"));
        }
    }

    fn check_sums(&mut self, path: &str, want: &str, openpgp: bool) {
        let Some(bytes) = self.read(path, MAX_SMALL_FILE) else { return };
        self.check_sig(path, &bytes);
        if openpgp {
            self.check_gpg(path, &bytes);
        }
        if bytes == want.as_bytes() {
            return;
        }
        let want = Sha256Sums::parse(want).expect("rendered lists parse");
        let got = match std::str::from_utf8(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|t| Sha256Sums::parse(t).map_err(|e| e.to_string()))
        {
            Ok(got) => got,
            Err(e) => return self.problem(path, e),
        };
        let mut reasons = Vec::new();
        for (name, digest) in want.iter() {
            match got.get(name) {
                None => reasons.push(format!("does not list {name}")),
                Some(d) if d != digest => reasons.push(format!("lists {name} with {d}, the index says {digest}")),
                Some(_) => {}
            }
        }
        for (name, _) in got.iter().filter(|(n, _)| want.get(n).is_none()) {
            reasons.push(format!("lists {name}, which the index does not"));
        }
        if reasons.is_empty() {
            reasons.push("same entries as the index, but not in sha256sum's canonical form".into());
        }
        self.problem(path, reasons.join("; "));
    }

    fn check_image(&mut self, path: &str, name: &ImageName, index: &Index) {
        let art = index.artifact(name).expect("layout lists indexed images only");
        // The copy in the extension directory is normally a hard link to the top-level file:
        // same inode, nothing more to read.
        if let (Some(a), Some(b)) = (self.source.local_path(path), self.source.local_path(&name.to_string())) {
            if path != name.to_string() {
                // Not following links: a symlink is its own inode, and is refused when opened.
                if let (Ok(ma), Ok(mb)) = (std::fs::symlink_metadata(&a), std::fs::symlink_metadata(&b)) {
                    if (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()) {
                        self.checked += 1;
                        return;
                    }
                }
            }
        }
        let reader = match self.source.open(path) {
            Ok(Some(r)) => r,
            Ok(None) => return self.problem(path, "listed in the index but missing"),
            Err(e) => return self.problem(path, e.cause),
        };
        self.checked += 1;
        let top_level = !path.contains('/');
        // Ed25519 signs the whole message, so the image is held in memory for the signature
        // check (images are tens of MiB); the copy in the extension directory is only hashed.
        let mut data = Vec::new();
        let mut hasher = DigestsHasher::default();
        let mut limited = reader.take(art.size + 1);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match limited.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    if top_level {
                        data.extend_from_slice(&buf[..n]);
                    }
                }
                Err(e) => return self.problem(path, format!("reading: {e}")),
            }
        }
        let got: Digests = hasher.finish();
        if got.size != art.size {
            let size = if got.size > art.size { format!("more than {}", art.size) } else { got.size.to_string() };
            self.problem(path, format!("{size} bytes, the index says {}", art.size));
        } else if got.sha256 != art.sha256 {
            self.problem(path, format!("sha256 {} does not match the index ({})", got.sha256, art.sha256));
        } else if got.sha512 != art.sha512 {
            self.problem(path, format!("sha512 {} does not match the index ({})", got.sha512, art.sha512));
        }
        if !top_level {
            return;
        }
        let keys = self.image_keys.clone();
        self.check_sig_by(path, &data, &keys);
        if let (true, Some(local)) = (self.opts.inspect_images, self.source.local_path(path)) {
            match crate::image::identity(&local, name).map(|i| i.extension_release) {
                Ok(rel) if rel != art.extension_release => self.problem(
                    path,
                    format!(
                        "its extension-release.{} ({:?}) differs from the index ({:?})",
                        name.name,
                        rel.fields(),
                        art.extension_release.fields()
                    ),
                ),
                Ok(_) => {}
                Err(e) => self.problem(path, e.to_string()),
            }
        }
    }
}

/// Verifies a release: the index signature, expiry, serial and key (reached from the key
/// given through the index's key rotations, if it changed); every listed file's presence,
/// size, digests and signature; SHA256SUMS and transfer files against the index; the OpenPGP
/// keyring and every `SHA256SUMS.gpg`, when the index names an OpenPGP key; and, for
/// directories, files the index does not list.
pub fn verify_release(source: &dyn Backend, opts: &VerifyOptions<'_>) -> Report {
    let mut c = Checker {
        source,
        opts,
        signer: opts.pubkey.clone(),
        image_keys: vec![opts.pubkey.clone()],
        keyring: None,
        problems: Vec::new(),
        checked: 0,
    };
    let report = |c: Checker<'_>, index: Option<&Index>, unlisted_checked| Report {
        source: source.name(),
        serial: index.map(|i| i.serial),
        expires: index.map(|i| i.expires),
        key_id: opts.pubkey.key_id(),
        rotated_to: (c.signer != *opts.pubkey).then(|| c.signer.key_id()),
        openpgp_fingerprint: c.keyring.as_ref().map(|k| k[0].fingerprint()),
        files_checked: c.checked,
        unlisted_checked,
        problems: c.problems,
    };
    let Some(bytes) = c.read(layout::INDEX, MAX_INDEX_BYTES) else { return report(c, None, false) };
    let index = match Index::parse(&bytes) {
        Ok(i) => i,
        Err(e) => {
            c.check_sig(layout::INDEX, &bytes);
            c.problem(layout::INDEX, e.to_string());
            return report(c, None, false);
        }
    };
    // The rotation records are checked by `parse`; from the key given, they say which key
    // must have signed the index.
    match crate::rotation::resolve(opts.pubkey, &BTreeSet::new(), index.key_id, &index.key_rotations) {
        Ok((signer, _)) => {
            let earlier = index.key_rotations.iter().rev().map(|r| r.old_key.clone());
            c.image_keys = std::iter::once(signer.clone()).chain(earlier).collect();
            c.signer = signer;
        }
        Err(_) => c.problem(
            layout::INDEX,
            format!(
                "names signing key {}, but the key given is {} and no key rotation in the index leads from it",
                index.key_id,
                opts.pubkey.key_id()
            ),
        ),
    }
    c.check_sig(layout::INDEX, &bytes);
    if let Some(fp) = index.openpgp_fingerprint {
        c.load_keyring(fp);
    }
    if index.expires <= opts.now {
        c.problem(layout::INDEX, format!("expired at {} (now {}); republish to extend it", index.expires, opts.now));
    }
    if index.generated_at.unix() > opts.now.unix() + 300 {
        c.problem(
            layout::INDEX,
            format!("generated at {}, which is in the future (now {})", index.generated_at, opts.now),
        );
    }
    if let Some(min) = opts.min_serial {
        if index.serial < min {
            c.problem(
                layout::INDEX,
                format!("serial {} is lower than {min}, which was already seen: a rollback", index.serial),
            );
        }
    }
    let rendered = layout::transfer_files(&index);
    let rendered_keys: BTreeSet<&String> = rendered.keys().collect();
    let listed_keys: BTreeSet<&String> = index.transfer_files.keys().collect();
    if rendered_keys != listed_keys {
        c.problem(layout::INDEX, "transfer-files does not list exactly the transfer files of its extensions");
    }

    let expected = layout::expected(&index);
    for (path, entry) in &expected {
        match entry {
            // Checked with the files they belong to (the keyrings first of all).
            Entry::Index | Entry::Sig(_) | Entry::ImageSig(_) | Entry::OpenPgpSig(_) | Entry::Keyring => {}
            Entry::Sums(text) => c.check_sums(path, text, index.openpgp_fingerprint.is_some()),
            Entry::Transfer(text) => {
                let Some(bytes) = c.read(path, MAX_SMALL_FILE) else { continue };
                if bytes != text.as_bytes() {
                    c.problem(path, "differs from the transfer file the index describes");
                } else if index.transfer_files.get(path).is_some_and(|d| *d != signing::Sha256Digest::of(&bytes)) {
                    c.problem(path, "matches the layout, but not its sha256 in the index's transfer-files");
                }
            }
            Entry::Image(name) => c.check_image(path, name, &index),
        }
    }
    let mut unlisted_checked = false;
    if let Some(listing) = source.list() {
        match listing {
            Ok(paths) => {
                unlisted_checked = true;
                for p in paths.iter().filter(|p| !expected.contains_key(*p)) {
                    c.problem(p, "not listed in the index");
                }
            }
            Err(e) => c.problem(".", format!("listing the release: {}", e.cause)),
        }
    }
    report(c, Some(&index), unlisted_checked)
}
