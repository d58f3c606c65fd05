//! `composer compose` and `composer check`: resolve extensions, recognise the target, decide
//! whether systemd would merge them, then write them into the root filesystem of a copy.
//!
//! Order matters for "never half-written": every check that can fail runs before the first
//! byte is written; the edit happens on a scratch copy next to OUT; `e2fsck -fn` must pass on
//! the result; only then is the copy renamed to OUT. Any error drops the scratch directory.

mod edit;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use signing::PublicKey;
use sysext_model::compat::{self, Accepted, Host};
use sysext_model::{Arch, BaseUrl, ExtensionRelease};

pub use self::edit::Written;
use crate::disk::e2fs::Ext;
use crate::disk::gpt::Gpt;
use crate::disk::input::{self, InputFormat, OutputFormat, Staging};
use crate::disk::target::{self, Distro, Overrides, Target, TargetChoice};
use crate::plan::{ImageSource, NodeOs, NodePlan, PlanRequest, PlannedImage};
use crate::scratch::ScratchDir;
use crate::source::{self, ExtensionSource, ReleaseIndex, ResolveOptions, ResolvedExtension};

/// Everything `check` needs.
#[derive(Debug)]
pub struct CheckRequest {
    /// Input disk image.
    pub image: PathBuf,
    /// `--extension` arguments.
    pub extensions: Vec<ExtensionSource>,
    /// `--index`, opened and verified.
    pub index: Option<ReleaseIndex>,
    /// `--pubkey`.
    pub pubkey: Option<PublicKey>,
    /// `--target`.
    pub target: TargetChoice,
    /// `--os-release`, `--arch`.
    pub overrides: Overrides,
}

/// Everything `compose` needs.
#[derive(Debug)]
pub struct ComposeRequest {
    /// What to install where (shared with `check`).
    pub check: CheckRequest,
    /// Output file.
    pub out: PathBuf,
    /// Output format.
    pub output_format: OutputFormat,
    /// Install sysupdate transfer files pointing at this base URL (`<base>/<ext>/`).
    pub sysupdate: Option<BaseUrl>,
}

/// One extension's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The extension.
    pub extension: ResolvedExtension,
    /// Why systemd will merge it.
    pub accepted: Accepted,
}

/// What `check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Input image.
    pub image: PathBuf,
    /// Input format.
    pub format: InputFormat,
    /// The recognised target.
    pub target: Target,
    /// Every extension, accepted.
    pub extensions: Vec<Verdict>,
    /// What could not be checked (printed on stderr too).
    pub warnings: Vec<String>,
}

/// What `compose` did.
#[derive(Debug, Clone, Serialize)]
pub struct ComposeReport {
    /// The compatibility report it acted on.
    #[serde(flatten)]
    pub check: CheckReport,
    /// Output file.
    pub out: PathBuf,
    /// Output format.
    pub output_format: OutputFormat,
    /// Entries written into the root filesystem.
    pub written: Vec<Written>,
    /// Bytes free in the root filesystem before and after.
    pub free_before: u64,
    /// See `free_before`.
    pub free_after: u64,
}

/// Cheap checks of the `--extension` arguments, so a typo fails before a long decompression.
fn precheck_sources(req: &CheckRequest) -> Result<()> {
    if req.extensions.is_empty() {
        bail!("no --extension given; name at least one image file or NAME@CHANNEL");
    }
    for s in &req.extensions {
        if let ExtensionSource::File(p) = s {
            fs_err::metadata(p).with_context(|| format!("extension '{s}'"))?;
        }
    }
    Ok(())
}

/// Resolves every source for a target of architecture `arch` (a channel names one artifact
/// per architecture).
fn resolve_all(req: &CheckRequest, arch: Arch) -> Result<Vec<ResolvedExtension>> {
    precheck_sources(req)?;
    let opts = ResolveOptions { pubkey: req.pubkey.as_ref(), index: req.index.as_ref(), arch: Some(arch) };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for s in &req.extensions {
        let r = source::resolve(s, opts).with_context(|| format!("extension '{s}'"))?;
        if !seen.insert(r.image.name.clone()) {
            bail!("extension '{s}': {} is given twice; an image holds one version of each extension", r.image.name);
        }
        out.push(r);
    }
    Ok(out)
}

/// Recognises the target in a raw image, resolves the extensions for it, and applies the
/// compatibility rules.
fn analyse(raw: &Path, format: InputFormat, req: &CheckRequest) -> Result<CheckReport> {
    let gpt = Gpt::read(raw)?;
    let parts =
        target::probe_partitions(raw, &gpt).with_context(|| format!("reading partitions of {}", raw.display()))?;
    let target = target::detect(raw, &gpt, &parts, req.target, &req.overrides)?;
    let exts = resolve_all(req, target.arch.value)?;
    let host = Host {
        os_release: target.os_release.value.clone(),
        arch: target.arch.value,
        systemd: target.systemd.as_ref().map(|s| s.value),
    };
    let mut refusals = Vec::new();
    let mut verdicts = Vec::new();
    for e in exts {
        match compat::check(&e.extension_release, &host) {
            Ok(accepted) => verdicts.push(Verdict { extension: e, accepted }),
            Err(why) => refusals.push(format!(
                "{}: systemd-sysext would skip it at boot: {why}",
                e.path.file_name().unwrap_or_default().to_string_lossy()
            )),
        }
    }
    if !refusals.is_empty() {
        let systemd = match &target.systemd {
            Some(s) => format!(", systemd {} from {}", s.value, s.from),
            None => String::new(),
        };
        bail!(
            "{} ({} from {}, architecture {} from {}{systemd}) would not merge:\n  {}",
            req.image.display(),
            describe_os(&host.os_release),
            target.os_release.from,
            host.arch,
            target.arch.from,
            refusals.join("\n  ")
        );
    }
    let mut warnings = Vec::new();
    if target.systemd.is_none() {
        let any: Vec<String> =
            verdicts.iter().filter(|v| v.accepted == Accepted::AnyId).map(|v| v.extension.image.to_string()).collect();
        let needs = if any.is_empty() {
            String::new()
        } else {
            format!(
                "; {} use ID=_any, which needs systemd {} or later on the node",
                any.join(", "),
                compat::ANY_ID_SYSTEMD
            )
        };
        warnings.push(format!(
            "{}: cannot tell the image's systemd version (no libsystemd-shared-*.so found where systemd installs it){needs}; pass --systemd-version N to check against it",
            req.image.display()
        ));
    }
    Ok(CheckReport { image: req.image.clone(), format, target, extensions: verdicts, warnings })
}

fn describe_os(os: &ExtensionRelease) -> String {
    let mut s = format!("ID={}", os.get("ID").unwrap_or("(none)"));
    for k in ["VERSION_ID", "SYSEXT_LEVEL"] {
        if let Some(v) = os.get(k) {
            let _ = write!(s, " {k}={v}");
        }
    }
    s
}

/// `composer check`: everything up to, not including, writing.
pub fn check(req: &CheckRequest) -> Result<CheckReport> {
    precheck_sources(req)?;
    crate::scratch::sweep_temp();
    let format = input::detect(&req.image)?;
    if format == InputFormat::Raw {
        return analyse(&req.image, format, req);
    }
    let scratch = ScratchDir::new_temp(crate::scratch::INPUT_PREFIX).context("creating a scratch directory")?;
    let raw = scratch.path().join("disk.raw");
    input::materialize(&req.image, format, &raw)?;
    analyse(&raw, format, req)
}

/// The node plan for the accepted extensions on this target.
pub fn node_plan(target: &Target, exts: &[Verdict], sysupdate: Option<&BaseUrl>, keyring: Option<&[u8]>) -> NodePlan {
    let images: Vec<PlannedImage> = exts
        .iter()
        .map(|v| PlannedImage {
            image: v.extension.image.clone(),
            size: v.extension.size,
            sha256: v.extension.sha256,
            sha512: v.extension.sha512,
            source: ImageSource::Local(v.extension.verified_copy.clone()),
        })
        .collect();
    let os = match target.distro {
        Distro::Flatcar => NodeOs::Flatcar,
        Distro::Ubuntu => NodeOs::Ubuntu,
    };
    NodePlan::build(&PlanRequest { os, images: &images, sysupdate, keyring })
}

/// `composer compose`.
pub fn compose(req: &ComposeRequest) -> Result<ComposeReport> {
    let input_path = &req.check.image;
    if let (Ok(a), Ok(b)) = (fs_err::canonicalize(input_path), fs_err::canonicalize(&req.out)) {
        if a == b {
            bail!("--out {} is the input image; composer never modifies its input", req.out.display());
        }
    }
    if req.out.exists() {
        bail!("{} already exists; refusing to overwrite it", req.out.display());
    }
    crate::scratch::sweep_temp();
    let format = input::detect(input_path)?;
    let staging = Staging::beside(&req.out)?;
    let work = staging.path().join("disk.raw");

    // Everything read-only (analysis, the pre-check, planning) runs on a raw input in place,
    // before copying: a refusal then costs no copy, and e2fsprogs, which fsyncs its device on
    // close even when read-only, does not flush the fresh copy early, once per lookup.
    let mut copy = None;
    let analysed = if format == InputFormat::Raw {
        // The partition that will be edited is copied first, so the edit can overlap with
        // copying the rest; an unrecognised layout is reported by the analysis below.
        let gpt = Gpt::read(input_path)?;
        let parts = target::probe_partitions(input_path, &gpt)
            .with_context(|| format!("reading partitions of {}", input_path.display()))?;
        let first = target::find_root(input_path, &parts, req.check.target)
            .map_or(0..0, |(_, r)| r.partition.offset..r.partition.offset + r.partition.size);
        copy = Some(input::BackgroundCopy::start(input_path, &work, first)?);
        input_path.clone()
    } else {
        // Decompressing takes long: refuse a mistyped extension argument before that.
        precheck_sources(&req.check)?;
        input::materialize(input_path, format, &work)?;
        work.clone()
    };
    let report = analyse(&analysed, format, &req.check)?;
    let root_part = report.target.root.partition.clone();
    let part = report.target.root.describe();
    let source_fs = Ext::new(&analysed, root_part.offset);
    source_fs.fsck().with_context(|| format!("{part} already has filesystem errors before composing"))?;
    let ext_info = report.target.root.filesystem.ext.expect("target root is ext4");
    let block = ext_info.block_size;
    // A release signed for stock sysupdate: its keyring goes onto the disk with the transfer
    // files, which then say Verify=yes.
    let keyring = match (&req.sysupdate, &req.check.index) {
        (Some(_), Some(index)) => index.openpgp_keyring()?,
        _ => None,
    };
    let node_plan = node_plan(&report.target, &report.extensions, req.sysupdate.as_ref(), keyring.as_deref());
    let plan = edit::render(&source_fs, &node_plan, root_part.number, staging.path(), block)?;
    let free = ext_info.free_bytes();
    if plan.bytes > free {
        bail!(
            "{}: {part} (ext4) has {free} bytes free but composing needs {} bytes ({} bytes of images and files plus metadata); free {} more bytes or grow the partition",
            input_path.display(),
            plan.bytes,
            report.extensions.iter().map(|v| v.extension.size).sum::<u64>(),
            plan.bytes - free
        );
    }
    if plan.inodes > u64::from(ext_info.free_inodes) {
        bail!(
            "{}: {part} has {} free inodes but composing needs {}",
            input_path.display(),
            ext_info.free_inodes,
            plan.inodes
        );
    }

    if let Some(c) = &copy {
        if c.wait_first().is_err() {
            copy.take().expect("present").finish()?;
            bail!("copying {} stopped early", input_path.display());
        }
    }
    let fs = Ext::new(&work, root_part.offset);
    let output = fs.apply(&plan.script, staging.path()).with_context(|| format!("writing into {part}"))?;
    edit::fill(&fs, &work, root_part.offset, block, &plan.payloads, &output, staging.path())
        .with_context(|| format!("writing extension images into {part}"))?;
    if let Some(c) = copy {
        c.finish()?;
    }
    // The copy must be what was analysed: re-read the table from it.
    let gpt = Gpt::read(&work)?;
    let root = gpt
        .partitions
        .iter()
        .find(|p| p.number == root_part.number && p.offset == root_part.offset && p.size == root_part.size)
        .with_context(|| format!("{}: partition table changed while copying", input_path.display()))?;
    fs.fsck().with_context(|| format!("checking {part} after composing"))?;
    edit::verify(&fs, &node_plan).with_context(|| format!("reading back {part}"))?;

    let after = {
        let mut f = fs_err::File::open(&work)?;
        crate::disk::fsprobe::probe(&mut f, root.offset, root.size)?.ext.map_or(0, |e| e.free_bytes())
    };
    let finished = match req.output_format {
        OutputFormat::Raw => work.clone(),
        OutputFormat::Qcow2 => {
            let q = staging.path().join("disk.qcow2");
            input::write_output(&work, OutputFormat::Qcow2, &q)?;
            q
        }
    };
    staging.publish(&finished)?;
    Ok(ComposeReport {
        check: report,
        out: req.out.clone(),
        output_format: req.output_format,
        written: plan.written,
        free_before: free,
        free_after: after,
    })
}
