//! How a release is laid out in a registry: media types, tags, annotations, and the
//! manifests themselves, built deterministically so that publishing the same release twice
//! pushes the same bytes.
//!
//! ```text
//! REPO:kubernetes-v1.31.3-x86-64   image manifest, artifactType …sysext-bakery.image.v1;
//!                                  its one layer is the image, so the layer digest is the
//!                                  image's sha256 (and `oras pull` writes the .raw file)
//! REPO:kubernetes-v1.31.3          image index of that version's architectures
//! REPO:index                       release manifest: index.json first, then SHA256SUMS,
//!                                  their .sig files and the transfer files, one layer each
//! referrers of each manifest       the Ed25519 signature (.sig) as its own artifact whose
//!                                  subject is the image or release manifest: through the
//!                                  referrers API, or the sha256-<hex> tag scheme where the
//!                                  registry has no such API (Docker distribution 2.8)
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use signing::Sha256Digest;
use sysext_model::{Arch, ImageName};

use crate::index::Artifact;

/// An OCI image manifest.
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An OCI image index.
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The empty config of an artifact (`{}`).
pub const MT_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The bytes of the empty config.
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// artifactType of an image manifest.
pub const AT_IMAGE: &str = "application/vnd.sysext-bakery.image.v1";
/// mediaType of the layer that is the image file itself.
pub const MT_IMAGE_LAYER: &str = "application/vnd.sysext-bakery.image.layer.v1.raw";
/// artifactType (and layer mediaType) of a detached Ed25519 signature.
pub const AT_SIGNATURE: &str = "application/vnd.sysext-bakery.signature.ed25519.v1";
/// artifactType of the release manifest.
pub const AT_RELEASE: &str = "application/vnd.sysext-bakery.release.v1";
/// mediaType of `index.json` in the release manifest.
pub const MT_RELEASE_INDEX: &str = "application/vnd.sysext-bakery.release.index.v1+json";
/// mediaType of the other files of the release manifest.
pub const MT_RELEASE_FILE: &str = "application/vnd.sysext-bakery.release.file.v1";

/// The tag of the release manifest; moving it is what makes a publish current.
pub const RELEASE_TAG: &str = "index";

/// The file name a layer stands for (ORAS and `oras pull` use it too).
pub const ANN_TITLE: &str = "org.opencontainers.image.title";
/// Upstream version.
pub const ANN_VERSION: &str = "org.opencontainers.image.version";
/// Prefix of this project's annotations.
pub const ANN_PREFIX: &str = "org.sysext-bakery.";

/// Longest tag the distribution spec allows.
const MAX_TAG: usize = 128;

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the content is.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// For manifests listed in an index: their artifactType.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// For manifests in a multi-architecture index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Where a manifest in an index runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// Go's GOARCH.
    pub architecture: String,
    /// Always `linux`.
    pub os: String,
}

/// An image manifest (used for every artifact here).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`MT_MANIFEST`].
    #[serde(default)]
    pub media_type: Option<String>,
    /// What kind of artifact this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The (empty) config.
    pub config: Descriptor,
    /// The files.
    pub layers: Vec<Descriptor>,
    /// The manifest this one is about (signatures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// [`MT_INDEX`].
    #[serde(default)]
    pub media_type: Option<String>,
    /// What kind of artifact this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The manifests.
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A manifest as pushed: its exact bytes, digest and media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// The JSON bytes.
    pub bytes: Vec<u8>,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// [`MT_MANIFEST`] or [`MT_INDEX`].
    pub media_type: &'static str,
}

impl Encoded {
    fn of(value: &impl Serialize, media_type: &'static str) -> Self {
        // Struct fields serialise in declaration order and annotations are a BTreeMap: the same
        // input always gives the same bytes, so a re-publish pushes nothing new.
        let bytes = serde_json::to_vec(value).expect("manifests serialise");
        let digest = digest_of(&bytes);
        Self { bytes, digest, media_type }
    }

    /// The descriptor pointing at this manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.to_owned(),
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            artifact_type: None,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    oci_digest(&Sha256Digest::of(bytes))
}

/// `sha256:<hex>` of a digest.
pub fn oci_digest(d: &Sha256Digest) -> String {
    format!("sha256:{}", d.to_hex())
}

/// A descriptor of a blob.
pub fn blob(media_type: &str, bytes_digest: String, size: u64, title: Option<&str>) -> Descriptor {
    let mut annotations = BTreeMap::new();
    if let Some(t) = title {
        annotations.insert(ANN_TITLE.to_owned(), t.to_owned());
    }
    Descriptor {
        media_type: media_type.to_owned(),
        digest: bytes_digest,
        size,
        artifact_type: None,
        platform: None,
        annotations,
    }
}

/// The empty config descriptor.
pub fn empty_config() -> Descriptor {
    blob(MT_EMPTY, digest_of(EMPTY_CONFIG), EMPTY_CONFIG.len() as u64, None)
}

/// Why a name cannot be a tag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{given}' cannot be an OCI tag: {reason}")]
pub struct TagError {
    given: String,
    reason: &'static str,
}

/// A tag for `name`: the characters the distribution spec allows in a tag are kept, and `+`
/// and `,` (valid in versions, not in tags) become `_`, as Helm does for `+`.
pub fn tag_for(name: &str) -> Result<String, TagError> {
    let tag: String = name.chars().map(|c| if c == '+' || c == ',' { '_' } else { c }).collect();
    let err = |reason| TagError { given: name.to_owned(), reason };
    if tag.len() > MAX_TAG {
        return Err(err("longer than 128 characters"));
    }
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(err("tags are [A-Za-z0-9_][A-Za-z0-9._-]*"));
    }
    Ok(tag)
}

/// The tag of an image manifest: the file name without `.raw` (`kubernetes-v1.31.3-x86-64`).
pub fn image_tag(name: &ImageName) -> Result<String, TagError> {
    let file = name.to_string();
    tag_for(file.strip_suffix(".raw").unwrap_or(&file))
}

/// The tag of a version's multi-architecture index (`kubernetes-v1.31.3`).
pub fn version_tag(name: &ImageName) -> Result<String, TagError> {
    tag_for(&format!("{}-{}", name.name, name.version))
}

/// The referrers tag scheme's tag for a subject digest (`sha256-<hex>`).
pub fn referrers_tag(digest: &str) -> String {
    digest.replace(':', "-")
}

/// The annotations of an image manifest: what `index.json` says about the image, so that
/// registry UIs and `oras manifest fetch` show it without downloading anything.
pub fn image_annotations(art: &Artifact) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(ANN_TITLE.to_owned(), art.file.to_string());
    a.insert(ANN_VERSION.to_owned(), art.file.version.to_string());
    a.insert(format!("{ANN_PREFIX}extension"), art.file.name.to_string());
    a.insert(format!("{ANN_PREFIX}arch"), art.file.arch.as_str().to_owned());
    a.insert(format!("{ANN_PREFIX}sha512"), art.sha512.to_string());
    for (k, v) in art.extension_release.fields() {
        a.insert(format!("{ANN_PREFIX}extension-release.{k}"), v.clone());
    }
    a.insert(format!("{ANN_PREFIX}inputs"), serde_json::to_string(&art.inputs).expect("inputs serialise"));
    a
}

/// The manifest whose one layer is the image.
pub fn image_manifest(art: &Artifact) -> Encoded {
    let file = art.file.to_string();
    let layer = blob(MT_IMAGE_LAYER, oci_digest(&art.sha256), art.size, Some(&file));
    Encoded::of(
        &Manifest {
            schema_version: 2,
            media_type: Some(MT_MANIFEST.to_owned()),
            artifact_type: Some(AT_IMAGE.to_owned()),
            config: empty_config(),
            layers: vec![layer],
            subject: None,
            annotations: image_annotations(art),
        },
        MT_MANIFEST,
    )
}

/// The manifest of a detached signature (`title`, e.g. `index.json.sig`) of `subject`.
pub fn signature_manifest(subject: &Encoded, title: &str, signature: &[u8]) -> Encoded {
    let layer = blob(AT_SIGNATURE, digest_of(signature), signature.len() as u64, Some(title));
    let mut annotations = BTreeMap::new();
    annotations.insert(ANN_TITLE.to_owned(), title.to_owned());
    Encoded::of(
        &Manifest {
            schema_version: 2,
            media_type: Some(MT_MANIFEST.to_owned()),
            artifact_type: Some(AT_SIGNATURE.to_owned()),
            config: empty_config(),
            layers: vec![layer],
            subject: Some(subject.descriptor()),
            annotations,
        },
        MT_MANIFEST,
    )
}

/// The image index of one version: one manifest per architecture.
pub fn version_index(images: &[(Arch, &Encoded)], version: &str) -> Encoded {
    let manifests = images
        .iter()
        .map(|(arch, m)| {
            let mut d = m.descriptor();
            d.artifact_type = Some(AT_IMAGE.to_owned());
            d.platform = Some(Platform { architecture: arch.go_arch().to_owned(), os: "linux".to_owned() });
            d.annotations.insert(format!("{ANN_PREFIX}arch"), arch.as_str().to_owned());
            d
        })
        .collect();
    let mut annotations = BTreeMap::new();
    annotations.insert(ANN_VERSION.to_owned(), version.to_owned());
    Encoded::of(
        &ImageIndex {
            schema_version: 2,
            media_type: Some(MT_INDEX.to_owned()),
            artifact_type: Some(AT_IMAGE.to_owned()),
            manifests,
            annotations,
        },
        MT_INDEX,
    )
}

/// The release manifest: `index.json` first, then every other file by path.
pub fn release_manifest(files: &[Descriptor], serial: u64) -> Encoded {
    let mut annotations = BTreeMap::new();
    annotations.insert(format!("{ANN_PREFIX}serial"), serial.to_string());
    Encoded::of(
        &Manifest {
            schema_version: 2,
            media_type: Some(MT_MANIFEST.to_owned()),
            artifact_type: Some(AT_RELEASE.to_owned()),
            config: empty_config(),
            layers: files.to_vec(),
            subject: None,
            annotations,
        },
        MT_MANIFEST,
    )
}

/// The referrers-tag-scheme index listing `referrers` (sorted, without duplicates).
pub fn referrers_index(mut referrers: Vec<Descriptor>) -> Encoded {
    referrers.sort_by(|a, b| a.digest.cmp(&b.digest));
    referrers.dedup_by(|a, b| a.digest == b.digest);
    Encoded::of(
        &ImageIndex {
            schema_version: 2,
            media_type: Some(MT_INDEX.to_owned()),
            artifact_type: None,
            manifests: referrers,
            annotations: BTreeMap::new(),
        },
        MT_INDEX,
    )
}

/// The descriptor by which a signature is listed among its subject's referrers.
pub fn referrer_descriptor(sig: &Encoded, title: &str) -> Descriptor {
    let mut d = sig.descriptor();
    d.artifact_type = Some(AT_SIGNATURE.to_owned());
    d.annotations.insert(ANN_TITLE.to_owned(), title.to_owned());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_the_distribution_grammar() {
        assert_eq!(tag_for("kubernetes-v1.31.3-x86-64").unwrap(), "kubernetes-v1.31.3-x86-64");
        assert_eq!(tag_for("k3s-v1.32.2+k3s1-x86-64").unwrap(), "k3s-v1.32.2_k3s1-x86-64");
        assert!(tag_for(".hidden").is_err());
        assert!(tag_for(&"a".repeat(129)).is_err());
        assert_eq!(referrers_tag("sha256:abcd"), "sha256-abcd");
        assert_eq!(digest_of(EMPTY_CONFIG), "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
    }

    #[test]
    fn manifests_are_deterministic_and_name_the_image_digest() {
        let index = crate::index::tests::sample(&["v1.31.3"]);
        let (_, _, _, art) = index.artifacts().next().unwrap();
        let a = image_manifest(art);
        assert_eq!(a, image_manifest(art));
        let m: Manifest = serde_json::from_slice(&a.bytes).unwrap();
        assert_eq!(m.layers[0].digest, format!("sha256:{}", art.sha256.to_hex()));
        assert_eq!(m.layers[0].size, art.size);
        assert_eq!(m.annotations[ANN_TITLE], "kubernetes-v1.31.3-x86-64.raw");
        assert_eq!(m.annotations["org.sysext-bakery.extension-release.ARCHITECTURE"], "x86-64");
        let sig = signature_manifest(&a, "kubernetes-v1.31.3-x86-64.raw.sig", &[7; 64]);
        let s: Manifest = serde_json::from_slice(&sig.bytes).unwrap();
        assert_eq!(s.subject.unwrap().digest, a.digest);
        let v = version_index(&[(Arch::X86_64, &a)], "v1.31.3");
        let i: ImageIndex = serde_json::from_slice(&v.bytes).unwrap();
        assert_eq!(i.manifests[0].platform.as_ref().unwrap().architecture, "amd64");
    }
}
