//! What each path of a release is, for the headers: media type and how long caches may keep it.

use sysext_model::ImageName;

use super::files::RelPath;

/// `Cache-Control` for versioned images and their signatures: publish never changes the bytes
/// behind an image name (different bytes need a new version), so caches may keep them for a
/// year and skip revalidation.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `Cache-Control` for everything else (`index.json`, its signature, the `SHA256SUMS` files,
/// transfer files). Each publish replaces them together, and a signature only verifies
/// against the file of the same generation: with a max-age, a cache could hand out a fresh
/// `index.json` next to a stale `index.json.sig` for that long. `no-cache` lets caches store
/// them but makes them revalidate on every use, which the strong ETag answers with a 304 of a
/// few hundred bytes.
pub const REVALIDATE: &str = "public, no-cache";

/// The image a path names, when it is laid out where publish puts images: at the top level,
/// or in the directory of its own extension (`kubernetes/kubernetes-v1.31.3-x86-64.raw`).
pub fn image(rel: &RelPath) -> Option<ImageName> {
    image_in_place(rel, rel.file_name())
}

fn image_in_place(rel: &RelPath, file: &str) -> Option<ImageName> {
    let name: ImageName = file.parse().ok()?;
    match rel.as_str().split_once('/') {
        None => Some(name),
        Some((dir, rest)) if !rest.contains('/') && dir == name.name.as_str() => Some(name),
        Some(_) => None,
    }
}

/// The `Cache-Control` value for a path.
pub fn cache_control(rel: &RelPath) -> &'static str {
    let file = rel.file_name();
    let stem = file.strip_suffix(".sig").unwrap_or(file);
    if image_in_place(rel, stem).is_some() {
        IMMUTABLE
    } else {
        REVALIDATE
    }
}

/// The `Content-Type` value for a path.
pub fn content_type(rel: &RelPath) -> &'static str {
    let file = rel.file_name();
    // Not application/vnd.efi.img: that names UAPI DDIs (GPT with verity), and these are bare
    // squashfs images.
    if file.ends_with(".json") {
        "application/json"
    } else if file == "SHA256SUMS" || file.ends_with(".conf") || file.ends_with(".transfer") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::from_request(s).unwrap()
    }

    #[test]
    fn images_and_their_signatures_are_immutable() {
        for path in [
            "/kubernetes-v1.31.3-x86-64.raw",
            "/kubernetes-v1.31.3-x86-64.raw.sig",
            "/kubernetes/kubernetes-v1.31.3-x86-64.raw",
            "/kubernetes/kubernetes-v1.31.3-x86-64.raw.sig",
            "/containerd-2.0.4-arm64.raw",
            "/docker-compose/docker-compose-2.30.1-arm64.raw",
        ] {
            assert_eq!(cache_control(&rel(path)), IMMUTABLE, "{path}");
        }
    }

    #[test]
    fn everything_else_revalidates() {
        for path in [
            "/index.json",
            "/index.json.sig",
            "/SHA256SUMS",
            "/SHA256SUMS.sig",
            "/kubernetes/SHA256SUMS",
            "/kubernetes/SHA256SUMS.sig",
            "/noop.conf",
            "/noop.transfer",
            "/kubernetes/kubernetes.conf",
            "/kubernetes/kubernetes-v1.31.transfer",
            // Not where publish puts images, so nothing promises they never change.
            "/cni/kubernetes-v1.31.3-x86-64.raw",
            "/a/kubernetes/kubernetes-v1.31.3-x86-64.raw",
            "/kubernetes-v1.31.3-amd64.raw",
            "/kubernetes-v1.31.3-x86-64.raw.sig.sig",
            "/kubernetes.raw",
            "/README",
        ] {
            assert_eq!(cache_control(&rel(path)), REVALIDATE, "{path}");
        }
        assert!(image(&rel("/kubernetes-v1.31.3-x86-64.raw.sig")).is_none(), "a signature is not the image");
        assert_eq!(image(&rel("/cni/cni-v1.6.2-arm64.raw")).unwrap().to_string(), "cni-v1.6.2-arm64.raw");
    }

    #[test]
    fn media_types() {
        for (path, want) in [
            ("/index.json", "application/json"),
            ("/index.json.sig", "application/octet-stream"),
            ("/kubernetes-v1.31.3-x86-64.raw", "application/octet-stream"),
            ("/kubernetes-v1.31.3-x86-64.raw.sig", "application/octet-stream"),
            ("/SHA256SUMS", "text/plain; charset=utf-8"),
            ("/kubernetes/SHA256SUMS", "text/plain; charset=utf-8"),
            ("/SHA256SUMS.sig", "application/octet-stream"),
            ("/noop.conf", "text/plain; charset=utf-8"),
            ("/kubernetes/kubernetes-v1.31.transfer", "text/plain; charset=utf-8"),
            ("/other", "application/octet-stream"),
        ] {
            assert_eq!(content_type(&rel(path)), want, "{path}");
        }
    }
}
