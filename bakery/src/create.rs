//! `bakery create`: fetch, stage, lint, write, verify, sign, rename.
//!
//! Nothing appears in the output directory until the image has been written completely,
//! read back by an independent reader, found to carry the expected extension-release and
//! signed; any failure before that leaves the directory exactly as it was. The image and its
//! signature are written as anonymous temporary files (see [`crate::tempfiles`]), so a killed
//! build leaves nothing behind, and put in place in the order described at `install`.

use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use signing::{PrivateKey, Sha256Digest};
use sysext_model::{Arch, ImageName, Version};
use sysext_model::{ExtensionRelease, OsTarget};

use crate::fetch::{FetchOptions, Fetcher};
use crate::image::{write_image_with_progress, ImageOptions, ImageSummary};
use crate::inspect::inspect;
use crate::lint::{lint, LintError};
use crate::progress::bytes_bar;
use crate::recipe::Recipe;
use crate::resolve::resolve_locked;
use crate::resolve::{resolve, InputsLock};
use crate::stage::{finish, ships_units, stage, StageLimits};
use crate::tempfiles::{self, ScratchDir, TempFile};

/// A validated build request.
#[derive(Debug)]
pub struct CreateRequest {
    /// The recipe.
    pub recipe: Recipe,
    /// Upstream version.
    pub version: Version,
    /// Target architecture.
    pub arch: Arch,
    /// Which host OS the image declares compatibility with.
    pub os: OsTarget,
    /// Image format options.
    pub image: ImageOptions,
    /// Output directory.
    pub output_dir: PathBuf,
    /// Replace an existing image of the same name.
    pub force: bool,
    /// Download settings.
    pub fetch: FetchOptions,
    /// Rebuild from this inputs lock instead of upstream's checksums.
    pub locked: Option<InputsLock>,
    /// Sign the image with this key.
    pub key: Option<PrivateKey>,
    /// Most bytes one upstream archive may unpack to.
    pub max_unpacked: u64,
}

/// The result of a build.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    /// Image path.
    pub path: PathBuf,
    /// Image file name.
    pub file: String,
    /// sha256 of the image.
    pub sha256: Sha256Digest,
    /// Size in bytes.
    pub size: u64,
    /// Extension name.
    pub extension: String,
    /// Version.
    pub version: Version,
    /// Architecture.
    pub arch: Arch,
    /// The extension-release fields written.
    pub extension_release: ExtensionRelease,
    /// Upstream inputs.
    pub inputs: InputsLock,
    /// The key id that signed `<file>.sig`, if signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// Writer statistics.
    #[serde(skip)]
    pub summary: ImageSummary,
}

impl CreateRequest {
    /// The image file name this request produces.
    pub fn image_name(&self) -> ImageName {
        ImageName::new(self.recipe.name.clone(), self.version.clone(), self.arch)
    }

    fn output_path(&self) -> PathBuf {
        self.output_dir.join(self.image_name().to_string())
    }
}

/// Checks, before anything is downloaded, that the image could be stored: the directory
/// exists (or is created) and takes new files, and the image is not there already unless
/// `--force`. Removes what killed builds left in it.
fn check_output(dir: &Path, dest: &Path, force: bool) -> Result<()> {
    fs_err::create_dir_all(dir).with_context(|| format!("creating the output directory {}", dir.display()))?;
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => bail!("{} is a directory; expected an image file or nothing", dest.display()),
        Ok(_) if !force => bail!("{} already exists; pass --force to replace it", dest.display()),
        _ => {}
    }
    let sig = signing::signature_path(dest);
    if std::fs::symlink_metadata(&sig).is_ok_and(|m| m.is_dir()) {
        bail!("{} is a directory; expected a signature file or nothing", sig.display());
    }
    for stale in tempfiles::remove_stale_with(dir, tempfiles::legacy_image_temp)
        .with_context(|| format!("cleaning up {}", dir.display()))?
    {
        eprintln!("removed {}, left by an interrupted run", stale.display());
    }
    drop(TempFile::new_in(dir).with_context(|| format!("{} does not take new files", dir.display()))?);
    Ok(())
}

/// Puts a complete, verified image and its signature (or, unsigned, no signature) in place.
///
/// Two files cannot appear in one step, so the order is chosen for readers: whenever the
/// image is present, the signature beside it is its own (or, for an unsigned build, absent).
/// The old image leaves first (kept under a temporary name until the end, to be put back if
/// a later step fails), then the signature is replaced, then the new image appears. A reader
/// in that instant finds no image, never an image with a wrong signature; a build killed in
/// it leaves no image (and the next run removes the old one's temporary name). Every step is
/// a rename within one directory, prepared so that it cannot fail for want of space.
fn install(dest: &Path, image: TempFile, sig: Option<TempFile>, force: bool) -> Result<()> {
    let sig_dest = signing::signature_path(dest);
    let named =
        |t: TempFile| t.into_named().with_context(|| format!("linking a temporary file beside {}", dest.display()));
    let image = named(image)?;
    let sig = sig.map(named).transpose()?;
    let old = match std::fs::symlink_metadata(dest) {
        Ok(_) if !force => bail!("{} appeared during the build; pass --force to replace it", dest.display()),
        Ok(_) => Some(tempfiles::move_aside(dest).with_context(|| format!("moving the old {} aside", dest.display()))?),
        Err(_) => None,
    };
    let restore = |old: Option<tempfiles::NamedTemp>| {
        if let Some(old) = old {
            let _ = old.rename(dest);
        }
    };
    let signed = match sig {
        Some(s) => s.rename(&sig_dest),
        None => match std::fs::remove_file(&sig_dest) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    };
    if let Err(e) = signed {
        restore(old);
        return Err(e).with_context(|| format!("writing {}", sig_dest.display()));
    }
    if let Err(e) = image.rename(dest) {
        // The old image would now sit beside the new signature: put it back unsigned.
        let _ = std::fs::remove_file(&sig_dest);
        restore(old);
        return Err(e).with_context(|| format!("renaming into {}", dest.display()));
    }
    drop(old);
    Ok(())
}

/// Builds the image described by `req`.
pub fn create(req: &CreateRequest) -> Result<Created> {
    let name = req.image_name();
    let dest = req.output_path();
    // Fail before downloading anything if the result could not be stored anyway.
    check_output(&req.output_dir, &dest, req.force)?;

    let fetcher = Fetcher::new(req.fetch.clone())?;
    let (fetched, lock) = match &req.locked {
        Some(lock) => resolve_locked(&req.recipe, &req.version, req.arch, &fetcher, lock)?,
        None => resolve(&req.recipe, &req.version, req.arch, &fetcher)?,
    };

    let scratch_parent = req.fetch.cache_dir.join("tmp");
    fs_err::create_dir_all(&scratch_parent)?;
    let scratch = ScratchDir::new_in(&scratch_parent)
        .with_context(|| format!("creating a scratch directory in {}", scratch_parent.display()))?;
    let limits = StageLimits { arch: req.arch, max_unpacked: req.max_unpacked };
    let mut tree = stage(&req.recipe, &fetched, scratch.path(), limits)?;
    let release = ExtensionRelease::for_image(&req.recipe.name, &req.version, req.arch, &req.os, ships_units(&tree));
    finish(&mut tree, &req.recipe, &release, &lock)?;

    let violations = lint(&tree, req.arch).context("checking the staged files")?;
    if !violations.is_empty() {
        return Err(LintError(violations).into());
    }

    let mut tmp = TempFile::new_in(&req.output_dir)
        .with_context(|| format!("creating a temporary file in {}", req.output_dir.display()))?;
    let bar = bytes_bar("compressing", tree.data_bytes()?);
    let written = write_image_with_progress(&tree, &req.image, tmp.file_mut(), &|n| bar.inc(n));
    bar.finish_and_clear();
    let summary = written.with_context(|| format!("writing {name}"))?;
    tmp.file_mut().flush()?;
    tmp.file().sync_all().with_context(|| format!("syncing {}", tmp.path().display()))?;

    // Read the image back the way a consumer would before it gets its real name.
    let check = inspect(&tmp.path()).with_context(|| format!("verifying the written image {name}"))?;
    let found = check.contents.extension_release.get(req.recipe.name.as_str());
    ensure!(
        found == Some(&release),
        "verifying the written image {name}: extension-release.{} reads back as {found:?}",
        req.recipe.name
    );
    let expected_entries = tree.walk().len();
    ensure!(
        check.contents.entries.len() == expected_entries,
        "verifying the written image {name}: {} entries read back, {expected_entries} staged",
        check.contents.entries.len()
    );

    tmp.file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    // Signed before it gets its name: the bytes signed are the bytes just verified, and a
    // signing failure leaves the previous image untouched.
    let (sig, signed_by) = match &req.key {
        Some(key) => {
            let mut bytes = Vec::new();
            let file = tmp.file_mut();
            file.rewind()?;
            file.read_to_end(&mut bytes).with_context(|| format!("reading back {name}"))?;
            let mut sig = TempFile::new_in(&req.output_dir)
                .with_context(|| format!("creating a temporary file in {}", req.output_dir.display()))?;
            sig.file_mut().write_all(&key.sign(&bytes)).with_context(|| format!("writing the signature of {name}"))?;
            sig.file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
            sig.file().sync_all().with_context(|| format!("writing the signature of {name}"))?;
            (Some(sig), Some(key.key_id().to_string()))
        }
        None => (None, None),
    };
    install(&dest, tmp, sig, req.force)?;
    // The rename is only durable once the directory entry is. The image is in place and
    // complete either way, so a failure here is worth a warning, not a failed build.
    if let Err(e) = std::fs::File::open(&req.output_dir).and_then(|d| d.sync_all()) {
        eprintln!("warning: syncing {}: {e}", req.output_dir.display());
    }

    Ok(Created {
        path: dest,
        file: name.to_string(),
        sha256: check.sha256,
        size: check.size,
        extension: req.recipe.name.to_string(),
        version: req.version.clone(),
        arch: req.arch,
        extension_release: release,
        inputs: lock,
        signed_by,
        summary,
    })
}
