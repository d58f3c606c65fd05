//! The bridge between images and releases: what `publish` needs from inside an image.

use std::path::Path;

use anyhow::{Context, Result};
use release_index::publish::NewImage;
use sysext_model::ImageName;

/// Reads an image for publishing: its `extension-release.NAME` (which must exist under the
/// name the file name gives, or systemd-sysext would refuse it) and its inputs lock, which
/// must describe the same image.
pub fn new_image(path: &Path) -> Result<NewImage> {
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name: ImageName = file.parse().with_context(|| format!("{}: not a publishable image name", path.display()))?;
    let identity =
        release_index::image::identity(path, &name).with_context(|| format!("reading {}", path.display()))?;
    Ok(NewImage {
        path: path.to_owned(),
        extension_release: identity.extension_release,
        inputs: identity.inputs.map(|l| l.inputs).unwrap_or_default(),
    })
}
