//! The registry backend: a release in an OCI repository, made current by moving one tag.
//!
//! Everything a new release needs is pushed first, each manifest by digest and only then
//! tagged: image blobs and manifests, each signature as a referrer of what it signs, the
//! version indexes, the release manifest with its signature. The last write moves the `index`
//! tag to the new release manifest; a reader resolving `index` before that sees the previous
//! release, complete, and after it the new one. Nothing is deleted: older release manifests
//! and images stay reachable by digest (a registry's garbage collection is its operator's
//! business).
//!
//! Registries have no locks. The target remembers which release manifest it started from and
//! refuses to move the tag if another publish moved it meanwhile; run one publisher per
//! repository at a time all the same (a CI concurrency group).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use signing::{Digests, PublicKey};
use sysext_model::{Arch, ImageName};

use super::{PublishError, Stage, Step, Target};
use crate::index::{Artifact, Index};
use crate::layout::{self, Entry};
use crate::oci::manifest::{
    self, Descriptor, Encoded, ImageIndex, Manifest, AT_RELEASE, AT_SIGNATURE, EMPTY_CONFIG, MT_RELEASE_FILE,
    MT_RELEASE_INDEX, RELEASE_TAG,
};
use crate::oci::{OciError, OciOptions, OciRepo, Registry};

/// How a registry lists a manifest's referrers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReferrersMode {
    /// The registry's referrers API (`GET /v2/<name>/referrers/<digest>`) lists them.
    Api,
    /// The registry has no referrers API; the `sha256-<hex>` tag scheme lists them.
    TagScheme,
}

/// A release in an OCI repository.
#[derive(Debug)]
pub struct OciTarget {
    registry: Registry,
    /// The release manifest `current` found, which the tag must still name at commit.
    started_from: Mutex<Option<String>>,
    mode: Mutex<Option<ReferrersMode>>,
}

fn reg_err(e: OciError) -> PublishError {
    PublishError::Registry(e)
}

impl OciTarget {
    /// The release in `repo` (credentials from `opts` or the auth files).
    pub fn new(repo: &OciRepo, opts: &OciOptions) -> Result<Self, PublishError> {
        Ok(Self {
            registry: Registry::new(repo, opts).map_err(reg_err)?,
            started_from: Mutex::new(None),
            mode: Mutex::new(None),
        })
    }

    /// How this registry turned out to list referrers (known once a signature was pushed).
    pub fn referrers_mode(&self) -> Option<ReferrersMode> {
        *self.mode.lock().expect("mode lock")
    }

    /// The registry handle.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn repo(&self) -> &OciRepo {
        self.registry.repo()
    }

    fn invalid(&self, reference: &str, reason: String) -> PublishError {
        PublishError::CurrentInvalid { path: PathBuf::from(self.repo().at(reference)), reason }
    }

    fn read_blob(&self, d: &Descriptor, limit: u64) -> Result<Vec<u8>, PublishError> {
        use std::io::Read;
        let what = self.repo().at(&d.digest);
        let reader = self.registry.blob(&d.digest, d.size).map_err(reg_err)?.ok_or_else(|| {
            PublishError::Registry(OciError { location: what.clone(), cause: "blob not found".into() })
        })?;
        let mut buf = Vec::new();
        reader
            .take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| PublishError::Registry(OciError { location: what.clone(), cause: e.to_string() }))?;
        if buf.len() as u64 > limit {
            return Err(PublishError::Registry(OciError {
                location: what,
                cause: format!("larger than {limit} bytes"),
            }));
        }
        Ok(buf)
    }

    fn parse_manifest(&self, reference: &str, bytes: &[u8]) -> Result<Manifest, PublishError> {
        serde_json::from_slice(bytes).map_err(|e| self.invalid(reference, format!("not an OCI image manifest: {e}")))
    }

    /// The signature bytes attached to `subject`, if any.
    fn signature(&self, subject: &str) -> Result<Option<Vec<u8>>, PublishError> {
        let referrers = self.registry.referrers(subject, AT_SIGNATURE).map_err(reg_err)?;
        for r in referrers {
            let Some((bytes, _)) = self.registry.manifest(&r.digest).map_err(reg_err)? else { continue };
            let m = self.parse_manifest(&r.digest, &bytes)?;
            if let ([layer], Some(s)) = (m.layers.as_slice(), &m.subject) {
                if s.digest == subject && layer.media_type == AT_SIGNATURE {
                    return Ok(Some(self.read_blob(layer, 1024)?));
                }
            }
        }
        Ok(None)
    }

    /// Pushes `sig` as the signature referrer of `subject`, registering it in the tag scheme
    /// unless the registry's referrers API already lists it.
    fn attach_signature(&self, subject: &Encoded, title: &str, signature: &[u8]) -> Result<(), PublishError> {
        self.registry.push_blob(&manifest::digest_of(signature), signature).map_err(reg_err)?;
        let sig = manifest::signature_manifest(subject, title, signature);
        self.registry.push_manifest(&sig.digest, &sig.bytes, sig.media_type).map_err(reg_err)?;
        let mode = *self.mode.lock().expect("mode lock");
        let listed = match mode {
            Some(ReferrersMode::TagScheme) => false,
            _ => {
                // Without the tag below, a registry lacking the API lists nothing, so a
                // listing that names the signature can only come from the API.
                let found = self.registry.referrers(&subject.digest, AT_SIGNATURE).map_err(reg_err)?;
                found.iter().any(|d| d.digest == sig.digest)
            }
        };
        if mode.is_none() {
            *self.mode.lock().expect("mode lock") =
                Some(if listed { ReferrersMode::Api } else { ReferrersMode::TagScheme });
        }
        if listed {
            return Ok(());
        }
        let tag = manifest::referrers_tag(&subject.digest);
        let mut entries = match self.registry.manifest(&tag).map_err(reg_err)? {
            Some((bytes, _)) => {
                serde_json::from_slice::<ImageIndex>(&bytes)
                    .map_err(|e| self.invalid(&tag, format!("not a referrers index: {e}")))?
                    .manifests
            }
            None => Vec::new(),
        };
        entries.push(manifest::referrer_descriptor(&sig, title));
        let index = manifest::referrers_index(entries);
        self.registry.push_manifest(&tag, &index.bytes, index.media_type).map_err(reg_err)
    }
}

impl Target for OciTarget {
    fn name(&self) -> PathBuf {
        PathBuf::from(self.repo().to_string())
    }

    fn lock(&self) -> Result<Box<dyn std::any::Any>, PublishError> {
        // Nothing to take; see the module docs and the check in commit.
        Ok(Box::new(()))
    }

    fn current(&self, key: &PublicKey) -> Result<Option<Index>, PublishError> {
        let Some((bytes, digest)) = self.registry.manifest(RELEASE_TAG).map_err(reg_err)? else {
            *self.started_from.lock().expect("lock") = None;
            return Ok(None);
        };
        let m = self.parse_manifest(RELEASE_TAG, &bytes)?;
        if m.artifact_type.as_deref() != Some(AT_RELEASE) {
            return Err(PublishError::NotARelease {
                path: self.name(),
                reason: format!(
                    "its tag '{RELEASE_TAG}' is a {:?} artifact, not a release published by bakery: publish to a new repository",
                    m.artifact_type.unwrap_or_default()
                ),
            });
        }
        let Some(layer) =
            m.layers.iter().find(|l| l.annotations.get(manifest::ANN_TITLE).map(String::as_str) == Some(layout::INDEX))
        else {
            return Err(self.invalid(&digest, "the release manifest has no index.json".into()));
        };
        let index_bytes = self.read_blob(layer, crate::index::MAX_INDEX_BYTES)?;
        let index = Index::parse(&index_bytes).map_err(|e| self.invalid(&digest, e.to_string()))?;
        super::check_signer(&index, key, &self.name())?;
        let sig = self
            .signature(&digest)?
            .ok_or_else(|| self.invalid(&digest, "index.json has no signature referrer".into()))?;
        if !key.verify(&index_bytes, &sig) {
            return Err(self.invalid(&digest, format!("index.json.sig does not verify with key {}", key.key_id())));
        }
        *self.started_from.lock().expect("lock") = Some(digest);
        Ok(Some(index))
    }

    fn stage(&self, serial: u64, _previous: Option<&Index>) -> Result<Box<dyn Stage + '_>, PublishError> {
        let empty = manifest::digest_of(EMPTY_CONFIG);
        self.registry.push_blob(&empty, EMPTY_CONFIG).map_err(reg_err)?;
        Ok(Box::new(OciStage {
            target: self,
            serial,
            images: BTreeMap::new(),
            aliases: BTreeSet::new(),
            files: BTreeMap::new(),
            tags: BTreeMap::new(),
        }))
    }
}

/// A release being pushed. Nothing it pushes is reachable from the `index` tag until commit.
struct OciStage<'a> {
    target: &'a OciTarget,
    serial: u64,
    /// Image manifests of the new release, by image.
    images: BTreeMap<ImageName, Encoded>,
    aliases: BTreeSet<String>,
    /// Small files (path → bytes).
    files: BTreeMap<String, Vec<u8>>,
    /// Tags this publish points, to catch two names mapping to one tag.
    tags: BTreeMap<String, String>,
}

impl OciStage<'_> {
    fn claim_tag(&mut self, tag: &str, what: &str) -> Result<(), PublishError> {
        match self.tags.insert(tag.to_owned(), what.to_owned()) {
            Some(other) if other != what => Err(PublishError::Image {
                path: PathBuf::from(what),
                reason: format!("its OCI tag '{tag}' is also the tag of {other}"),
            }),
            _ => Ok(()),
        }
    }

    fn push_image_manifest(&mut self, art: &Artifact, signature: &[u8]) -> Result<(), PublishError> {
        let tag = manifest::image_tag(&art.file)
            .map_err(|e| PublishError::Image { path: PathBuf::from(art.file.to_string()), reason: e.to_string() })?;
        self.claim_tag(&tag, &art.file.to_string())?;
        let m = manifest::image_manifest(art);
        let reg = &self.target.registry;
        reg.push_manifest(&m.digest, &m.bytes, m.media_type).map_err(reg_err)?;
        self.target.attach_signature(&m, &layout::sig(&art.file.to_string()), signature)?;
        // Tagged last: a tag never names an image without its signature.
        reg.push_manifest(&tag, &m.bytes, m.media_type).map_err(reg_err)?;
        self.images.insert(art.file.clone(), m);
        Ok(())
    }
}

impl Stage for OciStage<'_> {
    fn carry(&mut self, art: &Artifact) -> Result<(), PublishError> {
        let tag = manifest::image_tag(&art.file)
            .map_err(|e| PublishError::Image { path: PathBuf::from(art.file.to_string()), reason: e.to_string() })?;
        self.claim_tag(&tag, &art.file.to_string())?;
        let want = manifest::image_manifest(art);
        let reg = &self.target.registry;
        let got = reg.manifest(&tag).map_err(reg_err)?;
        match got {
            Some((_, digest)) if digest == want.digest => {}
            Some((bytes, digest)) => {
                let layer = serde_json::from_slice::<Manifest>(&bytes)
                    .ok()
                    .and_then(|m| m.layers.first().map(|l| l.digest.clone()))
                    .unwrap_or_default();
                return Err(self.target.invalid(
                    &tag,
                    format!(
                        "the tag names {digest} (layer {layer}), not the manifest of the published image (layer sha256:{}); the registry was changed behind the release",
                        art.sha256.to_hex()
                    ),
                ));
            }
            None => return Err(self.target.invalid(&tag, "a published image's tag is gone".into())),
        }
        if !reg.has_blob(&manifest::oci_digest(&art.sha256)).map_err(reg_err)? {
            return Err(self.target.invalid(&tag, format!("the image blob sha256:{} is gone", art.sha256.to_hex())));
        }
        self.images.insert(art.file.clone(), want);
        Ok(())
    }

    fn add_image(&mut self, art: &Artifact, bytes: &[u8], signature: &[u8]) -> Result<(), PublishError> {
        let got = Digests::of(bytes);
        assert_eq!(got.sha256, art.sha256, "add_image is given the bytes its artifact describes");
        self.target.registry.push_blob(&manifest::oci_digest(&art.sha256), bytes).map_err(reg_err)?;
        self.push_image_manifest(art, signature)
    }

    fn add_image_file(&mut self, art: &Artifact, path: &Path, signature: &[u8]) -> Result<(), PublishError> {
        self.target.registry.push_blob_file(&manifest::oci_digest(&art.sha256), path, art.size).map_err(reg_err)?;
        self.push_image_manifest(art, signature)
    }

    fn alias(&mut self, path: &str, image: &ImageName) -> Result<(), PublishError> {
        // `<ext>/<image>` reads the same manifest as `<image>`.
        debug_assert!(self.images.contains_key(image), "aliases follow their image");
        self.aliases.insert(path.to_owned());
        Ok(())
    }

    fn write(&mut self, path: &str, bytes: &[u8]) -> Result<(), PublishError> {
        if path != layout::INDEX && path != layout::sig(layout::INDEX) {
            self.target.registry.push_blob(&manifest::digest_of(bytes), bytes).map_err(reg_err)?;
        }
        self.files.insert(path.to_owned(), bytes.to_vec());
        Ok(())
    }

    fn commit(
        self: Box<Self>,
        expected: &BTreeMap<String, Entry>,
        _keep: usize,
        fail: &dyn Fn(Step) -> Result<(), PublishError>,
    ) -> Result<PathBuf, PublishError> {
        let target = self.target;
        let reg = &target.registry;
        let mut written: BTreeSet<String> = self.files.keys().cloned().chain(self.aliases.iter().cloned()).collect();
        for name in self.images.keys() {
            written.insert(name.to_string());
            written.insert(layout::sig(&name.to_string()));
        }
        let promised: BTreeSet<String> = expected.keys().cloned().collect();
        assert_eq!(written, promised, "publish wrote a different set of files than the layout lists");

        // One image index per version, across its architectures.
        let mut versions: BTreeMap<String, Vec<(Arch, &Encoded, &ImageName)>> = BTreeMap::new();
        for (name, m) in &self.images {
            let tag = manifest::version_tag(name)
                .map_err(|e| PublishError::Image { path: PathBuf::from(name.to_string()), reason: e.to_string() })?;
            versions.entry(tag).or_default().push((name.arch, m, name));
        }
        let mut tags = self.tags.clone();
        for (tag, images) in &versions {
            if let Some(other) = tags.insert(tag.clone(), format!("the {tag} index")) {
                return Err(PublishError::Image {
                    path: PathBuf::from(other.clone()),
                    reason: format!("its OCI tag '{tag}' is also the tag of a version index"),
                });
            }
            let pairs: Vec<(Arch, &Encoded)> = images.iter().map(|(a, m, _)| (*a, *m)).collect();
            let v = manifest::version_index(&pairs, images[0].2.version.as_str());
            reg.push_manifest(tag, &v.bytes, v.media_type).map_err(reg_err)?;
        }

        let index_bytes = self.files.get(layout::INDEX).expect("the index is written before commit");
        let index_sig = self.files.get(&layout::sig(layout::INDEX)).expect("and its signature");
        let index_layer = manifest::blob(
            MT_RELEASE_INDEX,
            manifest::digest_of(index_bytes),
            index_bytes.len() as u64,
            Some(layout::INDEX),
        );
        reg.push_blob(&index_layer.digest, index_bytes).map_err(reg_err)?;
        let mut layers = vec![index_layer];
        for (path, bytes) in &self.files {
            if path == layout::INDEX || *path == layout::sig(layout::INDEX) {
                continue;
            }
            let media_type = if path.ends_with(".sig") { AT_SIGNATURE } else { MT_RELEASE_FILE };
            layers.push(manifest::blob(media_type, manifest::digest_of(bytes), bytes.len() as u64, Some(path)));
        }
        let release = manifest::release_manifest(&layers, self.serial);
        reg.push_manifest(&release.digest, &release.bytes, release.media_type).map_err(reg_err)?;
        target.attach_signature(&release, &layout::sig(layout::INDEX), index_sig)?;
        fail(Step::Commit)?;

        // The one step that makes the new release current; first make sure no other publish
        // moved the tag since this one read it.
        let now = reg.manifest(RELEASE_TAG).map_err(reg_err)?.map(|(_, d)| d);
        let started = target.started_from.lock().expect("lock").clone();
        if now != started {
            return Err(PublishError::NotARelease {
                path: target.name(),
                reason: format!(
                    "another publish moved '{RELEASE_TAG}' (from {} to {}) while this one ran; nothing was changed, publish again",
                    started.as_deref().unwrap_or("nothing"),
                    now.as_deref().unwrap_or("nothing")
                ),
            });
        }
        reg.push_manifest(RELEASE_TAG, &release.bytes, release.media_type).map_err(reg_err)?;
        *target.started_from.lock().expect("lock") = Some(release.digest.clone());
        fail(Step::Swap)?;
        fail(Step::Prune)?;
        Ok(PathBuf::from(target.repo().at(&release.digest)))
    }
}
