use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Mutex, OnceLock};

use sysext_model::ImageName;

use super::{Backend, SourceError};
use crate::layout;
use crate::oci::manifest::{
    self, Descriptor, Manifest, AT_IMAGE, AT_RELEASE, AT_SIGNATURE, MT_IMAGE_LAYER, RELEASE_TAG,
};
use crate::oci::{OciError, OciOptions, OciRepo, Registry};

/// A release in an OCI registry (see [`crate::oci::manifest`] for the layout).
///
/// Paths map onto the registry: `index.json` and the other small files are layers of the
/// release manifest tagged `index`; `index.json.sig` is that manifest's signature referrer;
/// an image (at the top or under `<ext>/`) is the layer of the manifest tagged with its name,
/// and `<image>.sig` that manifest's signature referrer. Reading `index.json` resolves the
/// `index` tag afresh and pins the manifest it finds, so the signature and checksum lists read
/// after it come from the same publish even if another one moves the tag meanwhile.
#[derive(Debug)]
pub struct OciBackend {
    repo: OciRepo,
    opts: OciOptions,
    registry: OnceLock<Result<Registry, OciError>>,
    pinned: Mutex<Option<Pinned>>,
}

/// The release manifest a read of `index.json` found.
#[derive(Clone, Debug)]
struct Pinned {
    digest: String,
    files: BTreeMap<String, Descriptor>,
}

impl OciBackend {
    /// Reads the release in `repo`. Nothing is contacted until the first read.
    pub fn new(repo: OciRepo, opts: OciOptions) -> Self {
        Self { repo, opts, registry: OnceLock::new(), pinned: Mutex::new(None) }
    }

    /// The repository.
    pub fn repo(&self) -> &OciRepo {
        &self.repo
    }

    fn registry(&self) -> Result<&Registry, SourceError> {
        self.registry
            .get_or_init(|| Registry::new(&self.repo, &self.opts))
            .as_ref()
            .map_err(|e| SourceError { location: e.location.clone(), cause: e.cause.clone() })
    }

    fn err(e: OciError) -> SourceError {
        SourceError { location: e.location, cause: e.cause }
    }

    /// The manifest at `reference`, parsed, with its digest.
    fn manifest(&self, reference: &str) -> Result<Option<(Manifest, String)>, SourceError> {
        let Some((bytes, digest)) = self.registry()?.manifest(reference).map_err(Self::err)? else {
            return Ok(None);
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| SourceError {
            location: self.repo.at(reference),
            cause: format!("not an OCI image manifest: {e}"),
        })?;
        Ok(Some((m, digest)))
    }

    fn pin(&self) -> Result<Option<Pinned>, SourceError> {
        let Some((m, digest)) = self.manifest(RELEASE_TAG)? else {
            *self.pinned.lock().expect("pin lock") = None;
            return Ok(None);
        };
        if m.artifact_type.as_deref() != Some(AT_RELEASE) {
            return Err(SourceError {
                location: self.repo.at(RELEASE_TAG),
                cause: format!(
                    "artifactType {:?}, expected {AT_RELEASE}: not a release published by bakery",
                    m.artifact_type.unwrap_or_default()
                ),
            });
        }
        let mut files = BTreeMap::new();
        for layer in m.layers {
            if let Some(title) = layer.annotations.get(manifest::ANN_TITLE).cloned() {
                files.insert(title, layer);
            }
        }
        let p = Pinned { digest, files };
        *self.pinned.lock().expect("pin lock") = Some(p.clone());
        Ok(Some(p))
    }

    fn pinned(&self) -> Result<Option<Pinned>, SourceError> {
        let current = self.pinned.lock().expect("pin lock").clone();
        match current {
            Some(p) => Ok(Some(p)),
            None => self.pin(),
        }
    }

    fn open_blob(&self, d: &Descriptor) -> Result<Option<Box<dyn Read + Send>>, SourceError> {
        self.registry()?.blob(&d.digest, d.size).map_err(Self::err)
    }

    /// The signature referrer of the manifest `subject`, read whole.
    fn signature_of(&self, subject: &str, title: &str) -> Result<Option<Box<dyn Read + Send>>, SourceError> {
        let registry = self.registry()?;
        let referrers = registry.referrers(subject, AT_SIGNATURE).map_err(Self::err)?;
        // Several signatures of one manifest would be a registry someone else writes to too;
        // the one titled for this file is taken, and it still has to verify.
        let Some(sig) = referrers
            .iter()
            .find(|d| d.annotations.get(manifest::ANN_TITLE).is_none_or(|t| t == title))
            .or(referrers.first())
        else {
            return Ok(None);
        };
        let Some((m, _)) = self.manifest(&sig.digest)? else { return Ok(None) };
        let layer = match (m.subject.as_ref(), m.layers.as_slice()) {
            (Some(s), [layer]) if s.digest == subject && layer.media_type == AT_SIGNATURE => layer.clone(),
            _ => {
                return Err(SourceError {
                    location: self.repo.at(&sig.digest),
                    cause: format!("listed as a signature of {subject}, but is not one signature layer about it"),
                })
            }
        };
        self.open_blob(&layer)
    }

    /// The image manifest for `name`, checked to be one.
    fn image_manifest(&self, name: &ImageName) -> Result<Option<(Manifest, String, String)>, SourceError> {
        let tag = manifest::image_tag(name)
            .map_err(|e| SourceError { location: self.repo.to_string(), cause: e.to_string() })?;
        let Some((m, digest)) = self.manifest(&tag)? else { return Ok(None) };
        let file = name.to_string();
        match m.layers.as_slice() {
            [layer]
                if m.artifact_type.as_deref() == Some(AT_IMAGE)
                    && layer.media_type == MT_IMAGE_LAYER
                    && layer.annotations.get(manifest::ANN_TITLE) == Some(&file) => {}
            _ => {
                return Err(SourceError {
                    location: self.repo.at(&tag),
                    cause: format!("not a bakery image manifest for {file} (one {MT_IMAGE_LAYER} layer titled so)"),
                })
            }
        }
        Ok(Some((m, digest, tag)))
    }
}

/// An image file at `relative` (top level or `<ext>/<image>`), and whether it is its `.sig`.
fn image_path(relative: &str) -> Option<(ImageName, bool)> {
    let (dir, file) = match relative.split_once('/') {
        Some((d, f)) => (Some(d), f),
        None => (None, relative),
    };
    let (file, sig) = match file.strip_suffix(".sig") {
        Some(f) if dir.is_none() => (f, true),
        Some(_) => return None,
        None => (file, false),
    };
    let name: ImageName = file.parse().ok()?;
    if dir.is_some_and(|d| d != name.name.as_str()) {
        return None;
    }
    Some((name, sig))
}

impl Backend for OciBackend {
    fn name(&self) -> String {
        self.repo.to_string()
    }

    fn location(&self, relative: &str) -> String {
        if relative == layout::sig(layout::INDEX) {
            return format!("{} (signature referrer)", self.repo.at(RELEASE_TAG));
        }
        match image_path(relative) {
            Some((name, sig)) => {
                let tag = manifest::image_tag(&name).unwrap_or_else(|_| name.to_string());
                let what = if sig { " (signature referrer)" } else { "" };
                format!("{}{what}", self.repo.at(&tag))
            }
            None => format!("{} ({relative})", self.repo.at(RELEASE_TAG)),
        }
    }

    fn open(&self, relative: &str) -> Result<Option<Box<dyn Read + Send>>, SourceError> {
        if relative == layout::INDEX {
            let Some(p) = self.pin()? else { return Ok(None) };
            return match p.files.get(layout::INDEX) {
                Some(d) => self.open_blob(d),
                None => Err(SourceError {
                    location: self.repo.at(&p.digest),
                    cause: "the release manifest has no index.json layer".into(),
                }),
            };
        }
        if relative == layout::sig(layout::INDEX) {
            let Some(p) = self.pinned()? else { return Ok(None) };
            return self.signature_of(&p.digest, relative);
        }
        if let Some((name, sig)) = image_path(relative) {
            let Some((m, digest, _)) = self.image_manifest(&name)? else { return Ok(None) };
            if sig {
                return self.signature_of(&digest, relative);
            }
            return self.open_blob(&m.layers[0]);
        }
        let Some(p) = self.pinned()? else { return Ok(None) };
        match p.files.get(relative) {
            Some(d) => self.open_blob(d),
            None => Ok(None),
        }
    }

    fn blob_url(&self, sha256: &signing::Sha256Digest) -> Option<String> {
        Some(self.repo.blob_url(&manifest::oci_digest(sha256)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_paths_to_images() {
        let (n, sig) = image_path("kubernetes-v1.31.3-x86-64.raw").unwrap();
        assert_eq!((n.to_string().as_str(), sig), ("kubernetes-v1.31.3-x86-64.raw", false));
        assert!(image_path("kubernetes-v1.31.3-x86-64.raw.sig").unwrap().1);
        assert!(image_path("kubernetes/kubernetes-v1.31.3-x86-64.raw").is_some());
        assert!(image_path("containerd/kubernetes-v1.31.3-x86-64.raw").is_none());
        assert!(image_path("kubernetes/kubernetes-v1.31.3-x86-64.raw.sig").is_none());
        assert!(image_path("SHA256SUMS").is_none());
        assert!(image_path("kubernetes/kubernetes-v1.31.conf").is_none());
    }
}
