//! The bridge between images and release directories: reads what `publish` and
//! `verify-release` need from inside squashfs images, which the release-index crate does not
//! know how to open.

use std::path::Path;

use anyhow::{bail, Context, Result};
use release_index::extension_release::ExtensionRelease;
use release_index::inputs::InputsLock;
use release_index::publish::NewImage;
use release_index::{ExtensionName, ImageName};

use crate::inspect::inspect;

/// Reads an image for publishing: its `extension-release.NAME` (which must exist under the
/// name the file name gives, or systemd-sysext would refuse it) and its inputs lock.
pub fn new_image(path: &Path) -> Result<NewImage> {
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name: ImageName = file.parse().with_context(|| format!("{}: not a publishable image name", path.display()))?;
    let report = inspect(path).with_context(|| format!("reading {}", path.display()))?;
    let Some(extension_release) = report.extension_release.get(name.name.as_str()).cloned() else {
        bail!(
            "{}: has no /usr/lib/extension-release.d/extension-release.{} (found: {}); systemd-sysext would not merge it as '{}'",
            path.display(),
            name.name,
            report.extension_release.keys().cloned().collect::<Vec<_>>().join(", "),
            name.name
        );
    };
    let inputs = match report.inputs.get(name.name.as_str()) {
        None => Vec::new(),
        Some(value) => {
            let lock: InputsLock = serde_json::from_value(value.clone())
                .with_context(|| format!("{}: reading its inputs lock", path.display()))?;
            if (lock.extension != name.name) || (lock.version != name.version) || (lock.arch != name.arch) {
                bail!(
                    "{}: its inputs lock describes {} {} {}, not the image its name says",
                    path.display(),
                    lock.extension,
                    lock.version,
                    lock.arch
                );
            }
            lock.inputs
        }
    };
    Ok(NewImage { path: path.to_owned(), extension_release, inputs })
}

/// `extension-release.NAME` of an image, for `verify-release`.
pub fn extension_release(path: &Path, name: &ExtensionName) -> std::result::Result<ExtensionRelease, String> {
    let report = inspect(path).map_err(|e| format!("{e:#}"))?;
    report.extension_release.get(name.as_str()).cloned().ok_or_else(|| format!("has no extension-release.{name}"))
}
