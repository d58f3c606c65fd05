//! `bakery create`: fetch, stage, lint, write, verify, rename.
//!
//! Nothing appears in the output directory until the image has been written completely,
//! read back by an independent reader and found to carry the expected extension-release;
//! any failure before that leaves the directory exactly as it was.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

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

/// Builds the image described by `req`.
pub fn create(req: &CreateRequest) -> Result<Created> {
    let name = req.image_name();
    let dest = req.output_path();
    // Fail before downloading anything if the result could not be stored anyway.
    if dest.exists() && !req.force {
        bail!("{} already exists; pass --force to replace it", dest.display());
    }

    let fetcher = Fetcher::new(req.fetch.clone())?;
    let (fetched, lock) = match &req.locked {
        Some(lock) => resolve_locked(&req.recipe, &req.version, req.arch, &fetcher, lock)?,
        None => resolve(&req.recipe, &req.version, req.arch, &fetcher)?,
    };

    let scratch_parent = req.fetch.cache_dir.join("tmp");
    fs_err::create_dir_all(&scratch_parent)?;
    let scratch = tempfile::tempdir_in(&scratch_parent)
        .with_context(|| format!("creating a scratch directory in {}", scratch_parent.display()))?;
    let limits = StageLimits { arch: req.arch, max_unpacked: req.max_unpacked };
    let mut tree = stage(&req.recipe, &fetched, scratch.path(), limits)?;
    let release = ExtensionRelease::for_image(&req.recipe.name, &req.version, req.arch, &req.os, ships_units(&tree));
    finish(&mut tree, &req.recipe, &release, &lock)?;

    let violations = lint(&tree, req.arch).context("checking the staged files")?;
    if !violations.is_empty() {
        return Err(LintError(violations).into());
    }

    fs_err::create_dir_all(&req.output_dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(&req.output_dir)
        .with_context(|| format!("creating a temporary file in {}", req.output_dir.display()))?;
    let bar = bytes_bar("compressing", tree.data_bytes()?);
    let written = write_image_with_progress(&tree, &req.image, tmp.as_file_mut(), &|n| bar.inc(n));
    bar.finish_and_clear();
    let summary = written.with_context(|| format!("writing {name}"))?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all().with_context(|| format!("syncing {}", tmp.path().display()))?;

    // Read the image back the way a consumer would before it gets its real name.
    let check = inspect(tmp.path()).with_context(|| format!("verifying the written image {name}"))?;
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

    fs_err::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))?;
    let renamed = if req.force { tmp.persist(&dest) } else { tmp.persist_noclobber(&dest) };
    renamed.map_err(|e| e.error).with_context(|| format!("renaming into {}", dest.display()))?;
    let signed_by = match &req.key {
        Some(key) => {
            if let Err(e) = key.sign_file(&dest) {
                // Never leave a new image next to a missing or stale signature.
                let _ = fs_err::remove_file(&dest);
                return Err(e).with_context(|| format!("signing {}", dest.display()));
            }
            Some(key.key_id().to_string())
        }
        None => {
            // A signature of the image this build replaced would not match it.
            match fs_err::remove_file(signing::signature_path(&dest)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => None,
            }
        }
    };
    // The rename is only durable once the directory entry is.
    fs_err::File::open(&req.output_dir)?.sync_all()?;

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
