//! A scratch release: a key, fake images and helpers to publish and verify.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::time::Duration;

use release_index::inputs::{Input, InputKind};
use release_index::publish::{publish, NewImage, PublishError, PublishOptions, Published, Step};
use release_index::source::ReleaseSource;
use release_index::timestamp::Timestamp;
use release_index::verify::{verify_release, Report, VerifyOptions};
use signing::{PrivateKey, Sha256Digest};
use sysext_model::ExtensionRelease;

/// 2026-11-22T10:00:00Z.
pub const NOW: Timestamp = Timestamp::from_unix(1_795_341_600);
pub const DAY: Duration = Duration::from_secs(86_400);
pub const BASE_URL: &str = "https://sysext.example.org/extensions/";

pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub key: PrivateKey,
}

impl Scratch {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap(), key: PrivateKey::generate().unwrap() }
    }

    /// A scratch release signed with the committed snake-oil key, so that what it publishes
    /// at a fixed time has fixed bytes.
    pub fn pinned() -> Self {
        let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/keys/snakeoil-private.pem");
        Self { dir: tempfile::tempdir().unwrap(), key: PrivateKey::read_pem(&key).unwrap() }
    }

    pub fn release(&self) -> PathBuf {
        self.dir.path().join("release")
    }

    pub fn source(&self) -> ReleaseSource {
        ReleaseSource::Dir(self.release())
    }

    /// A fake image file (its content is derived from its name and `salt`).
    pub fn image(&self, file: &str, salt: &str) -> NewImage {
        let (name, rest) = file.split_once('-').unwrap();
        let arch = if file.ends_with("-arm64.raw") { "arm64" } else { "x86-64" };
        let version = rest.strip_suffix(&format!("-{arch}.raw")).unwrap();
        let dir = self.dir.path().join("build");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(file);
        let body: Vec<u8> = format!("{file}{salt}").bytes().cycle().take(50_000).collect();
        std::fs::write(&path, body).unwrap();
        let mut rel = ExtensionRelease::default();
        rel.set("ID", "_any");
        rel.set("ARCHITECTURE", arch);
        rel.set("SYSEXT_ID", name);
        rel.set("SYSEXT_VERSION_ID", version);
        let inputs = vec![Input {
            kind: InputKind::Artifact,
            name: name.to_owned(),
            url: format!("https://upstream.example.org/{name}/{version}/{arch}"),
            sha256: Sha256Digest::of(name.as_bytes()),
            verified_by: Some("pinned in recipe".into()),
            value: None,
        }];
        NewImage { path, extension_release: rel, inputs }
    }

    pub fn options(&self, now: Timestamp) -> PublishOptions<'_> {
        PublishOptions {
            release_dir: Box::leak(self.release().into_boxed_path()),
            key: &self.key,
            rotation: None,
            openpgp: false,
            base_url: Some(BASE_URL.parse().unwrap()),
            valid_for: 30 * DAY,
            now,
            keep_generations: 3,
            fail_after: None,
        }
    }

    /// Publishes with another key (e.g. after a rotation), optionally applying a rotation.
    pub fn publish_with(
        &self,
        key: &PrivateKey,
        rotation: Option<&release_index::rotation::KeyRotation>,
        images: &[NewImage],
    ) -> Result<Published, PublishError> {
        let mut opts = self.options(NOW);
        opts.key = key;
        opts.rotation = rotation;
        publish(images, &opts)
    }

    pub fn publish(&self, images: &[NewImage]) -> Published {
        publish(images, &self.options(NOW)).unwrap()
    }

    pub fn publish_failing(&self, images: &[NewImage], step: Step) -> PublishError {
        let mut opts = self.options(NOW);
        opts.fail_after = Some(step);
        publish(images, &opts).unwrap_err()
    }

    pub fn verify_at(&self, source: &ReleaseSource, now: Timestamp) -> Report {
        let public = self.key.public();
        verify_release(
            source.backend().unwrap().as_ref(),
            &VerifyOptions { pubkey: &public, now, min_serial: None, inspect_images: false },
        )
    }

    pub fn verify(&self) -> Report {
        self.verify_at(&self.source(), NOW)
    }

    pub fn assert_verifies(&self) -> Report {
        let report = self.verify();
        assert!(report.ok(), "release does not verify: {:#?}", report.problems);
        report
    }
}

/// Flips one bit in the middle of a file (through its own inode, so hard links see it too).
pub fn flip_bit(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}
