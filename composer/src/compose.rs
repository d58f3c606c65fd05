//! `composer compose` and `composer check`: resolve extensions, recognise the target, decide
//! whether systemd would merge them, then write them into the root filesystem of a copy.
//!
//! Order matters for "never half-written": every check that can fail runs before the first
//! byte is written; the edit happens on a scratch copy next to OUT; `e2fsck -fn` must pass on
//! the result; only then is the copy renamed to OUT. Any error drops the scratch directory.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use release_index::transfer;
use release_index::{Arch, ExtensionName};
use serde::Serialize;
use signing::PublicKey;

use crate::compat::{self, Accepted, Host};
use crate::e2fs::{Ext, Kind, Script};
use crate::gpt::Gpt;
use crate::input::{self, InputFormat, OutputFormat, Staging};
use crate::source::{self, ExtensionSource, ReleaseIndex, ResolveOptions, ResolvedExtension};
use crate::target::{self, Distro, Overrides, Target, TargetChoice};

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
    pub sysupdate: Option<String>,
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
}

/// One entry created in the image.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    /// Absolute path inside the root filesystem.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: &'static str,
    /// Symlink target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
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
    let host = Host { os_release: target.os_release.value.clone(), arch: target.arch.value };
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
        bail!(
            "{} ({} from {}, architecture {} from {}) would not merge:\n  {}",
            req.image.display(),
            describe_os(&host.os_release),
            target.os_release.from,
            host.arch,
            target.arch.from,
            refusals.join("\n  ")
        );
    }
    Ok(CheckReport { image: req.image.clone(), format, target, extensions: verdicts })
}

fn describe_os(os: &release_index::extension_release::ExtensionRelease) -> String {
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
    let format = input::detect(&req.image)?;
    if format == InputFormat::Raw {
        return analyse(&req.image, format, req);
    }
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let raw = scratch.path().join("disk.raw");
    input::materialize(&req.image, format, &raw)?;
    analyse(&raw, format, req)
}

/// A planned edit: debugfs commands and the space they need.
struct Plan {
    script: Script,
    written: Vec<Written>,
    bytes: u64,
    inodes: u64,
    known: HashMap<String, Option<crate::e2fs::Stat>>,
    /// Images whose blocks the script allocates and composer then fills in place.
    payloads: Vec<Payload>,
}

/// An extension image to copy into blocks allocated by debugfs.
struct Payload {
    source: PathBuf,
    path: String,
    size: u64,
}

impl Plan {
    fn new() -> Self {
        Self {
            script: Script::new(),
            written: Vec::new(),
            bytes: 0,
            inodes: 0,
            known: HashMap::new(),
            payloads: Vec::new(),
        }
    }

    /// Looks every path up in one debugfs session, ahead of the per-path decisions.
    fn prefetch(&mut self, fs: &Ext, paths: &[String]) -> Result<()> {
        let mut all = BTreeSet::new();
        for p in paths {
            let mut current = String::new();
            for part in p.split('/').filter(|c| !c.is_empty()) {
                current.push('/');
                current.push_str(part);
                all.insert(current.clone());
            }
        }
        let all: Vec<String> = all.into_iter().collect();
        self.known = fs.stat_many(&all).context("looking up the paths to write")?;
        Ok(())
    }

    fn kind_at(&self, fs: &Ext, path: &str) -> Result<Option<Kind>> {
        if let Some(known) = self.known.get(path) {
            return Ok(known.as_ref().map(|s| s.kind.clone()));
        }
        Ok(fs.stat(path).with_context(|| format!("looking up {path}"))?.map(|s| s.kind))
    }

    /// `mkdir -p`, creating only what is missing; a non-directory in the way is an error.
    fn ensure_dir(&mut self, fs: &Ext, path: &str, planned: &mut BTreeSet<String>) -> Result<()> {
        let mut current = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            current.push('/');
            current.push_str(part);
            if planned.contains(&current) {
                continue;
            }
            match self.kind_at(fs, &current)? {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => match fs.resolve(&current)? {
                    Some(real) if self.kind_at(fs, &real)? == Some(Kind::Dir) => {}
                    _ => bail!("{current} is a symlink that does not lead to a directory; expected a directory"),
                },
                Some(other) => bail!("{current} exists as {other:?}; expected a directory"),
                None => {
                    self.script.mkdir(&current);
                    self.written.push(Written { path: current.clone(), kind: "dir", target: None });
                    self.inodes += 1;
                }
            }
            planned.insert(current.clone());
        }
        Ok(())
    }

    /// Removes whatever file or link is at `path` so it can be replaced; refuses directories.
    fn clear(&mut self, fs: &Ext, path: &str) -> Result<()> {
        match self.kind_at(fs, path)? {
            None => {}
            Some(Kind::File(_) | Kind::Symlink) => self.script.rm(path),
            Some(other) => bail!("{path} exists as {other:?}; expected a file or symlink to replace"),
        }
        Ok(())
    }

    fn file(&mut self, fs: &Ext, source: &Path, size: u64, path: &str, block: u64) -> Result<()> {
        self.clear(fs, path)?;
        self.script.write(source, path);
        self.written.push(Written { path: path.to_owned(), kind: "file", target: None });
        // Data blocks plus one block of extent index per 128 MiB, a generous bound.
        self.bytes += size.div_ceil(block) * block + (size / (128 << 20) + 1) * block;
        self.inodes += 1;
        Ok(())
    }

    /// Like [`Plan::file`], for an extension image: allocated by debugfs, filled by composer.
    fn image(&mut self, fs: &Ext, source: &Path, size: u64, path: &str, block: u64, empty: &Path) -> Result<()> {
        self.clear(fs, path)?;
        self.script.allocate(empty, path, size, block);
        self.payloads.push(Payload { source: source.to_owned(), path: path.to_owned(), size });
        self.written.push(Written { path: path.to_owned(), kind: "file", target: None });
        self.bytes += size.div_ceil(block) * block + (size / (128 << 20) + 1) * block;
        self.inodes += 1;
        Ok(())
    }

    fn symlink(&mut self, fs: &Ext, path: &str, target: &str, block: u64) -> Result<()> {
        self.clear(fs, path)?;
        self.script.symlink(path, target);
        self.written.push(Written { path: path.to_owned(), kind: "symlink", target: Some(target.to_owned()) });
        if target.len() >= 60 {
            self.bytes += block;
        }
        self.inodes += 1;
        Ok(())
    }
}

/// Where Ubuntu's systemd-sysext.service may live (merged /usr: both resolve on 24.04).
const UBUNTU_SYSEXT_UNITS: [&str; 2] =
    ["/usr/lib/systemd/system/systemd-sysext.service", "/lib/systemd/system/systemd-sysext.service"];
const UBUNTU_WANTS: &str = "/etc/systemd/system/sysinit.target.wants";

fn image_path(name: &ExtensionName, file: &str) -> String {
    format!("{}/{file}", transfer::target_dir(name))
}

fn plan(
    fs: &Ext,
    target: &Target,
    exts: &[Verdict],
    sysupdate: Option<&str>,
    scratch: &Path,
    block: u64,
) -> Result<Plan> {
    let mut p = Plan::new();
    let mut lookups = vec!["/etc/extensions/x".to_owned(), "/etc/sysupdate.d/noop.conf".to_owned()];
    for v in exts {
        let name = &v.extension.image.name;
        lookups.push(image_path(name, &v.extension.image.to_string()));
        lookups.push(transfer::current_symlink(name));
        lookups.push(format!("/etc/sysupdate.{name}.d/x"));
    }
    lookups.extend(UBUNTU_SYSEXT_UNITS.iter().map(|u| u.to_string()));
    lookups.push(format!("{UBUNTU_WANTS}/systemd-sysext.service"));
    p.prefetch(fs, &lookups)?;
    let empty = scratch.join("empty");
    fs_err::write(&empty, b"")?;
    let mut dirs = BTreeSet::new();
    p.ensure_dir(fs, "/etc/extensions", &mut dirs)?;
    for v in exts {
        let e = &v.extension;
        let name = &e.image.name;
        let dir = transfer::target_dir(name);
        p.ensure_dir(fs, &dir, &mut dirs)?;
        let dest = image_path(name, &e.image.to_string());
        p.image(fs, &e.path, e.size, &dest, block, &empty)?;
        p.symlink(fs, &transfer::current_symlink(name), &dest, block)?;
        if let Some(base) = sysupdate {
            let conf_dir = format!("/etc/sysupdate.{name}.d");
            p.ensure_dir(fs, &conf_dir, &mut dirs)?;
            let base = format!("{}/{name}/", base.trim_end_matches('/'));
            // Nodes follow patch releases of the installed minor (Kubernetes does not support
            // skipping minors); versions without MAJOR.MINOR follow every release.
            let (stem, text) = transfer::patch_channel(name, &e.image.version, &base)
                .unwrap_or_else(|| (name.to_string(), transfer::any_version(name, &base)));
            for suffix in ["conf", "transfer"] {
                let staged = scratch.join(format!("{stem}.{suffix}"));
                fs_err::write(&staged, &text)?;
                p.file(fs, &staged, text.len() as u64, &format!("{conf_dir}/{stem}.{suffix}"), block)?;
            }
        }
    }
    if sysupdate.is_some() {
        p.ensure_dir(fs, "/etc/sysupdate.d", &mut dirs)?;
        let staged = scratch.join("noop.conf");
        fs_err::write(&staged, transfer::noop())?;
        p.file(fs, &staged, transfer::noop().len() as u64, "/etc/sysupdate.d/noop.conf", block)?;
    }
    if target.distro == Distro::Ubuntu {
        // Ubuntu ships systemd-sysext.service disabled: without this link nothing merges.
        let mut unit = None;
        for u in UBUNTU_SYSEXT_UNITS {
            let found = match p.kind_at(fs, u)? {
                Some(Kind::File(_)) => true,
                Some(Kind::Symlink) => fs.resolve(u)?.is_some(),
                _ => false,
            };
            if found {
                unit = Some(u);
                break;
            }
        }
        let Some(unit) = unit else {
            bail!("partition {} has no /usr/lib/systemd/system/systemd-sysext.service; this image's systemd cannot merge system extensions", target.root.partition.number);
        };
        let wants = UBUNTU_WANTS;
        p.ensure_dir(fs, wants, &mut dirs)?;
        p.symlink(fs, &format!("{wants}/systemd-sysext.service"), unit, block)?;
    }
    // Directories: one block each, plus slack for directory blocks that split.
    p.bytes += (dirs.len() as u64 + 16) * block;
    Ok(p)
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
    let plan = plan(&source_fs, &report.target, &report.extensions, req.sysupdate.as_deref(), staging.path(), block)?;
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
    fill(&fs, &work, root_part.offset, block, &plan.payloads, &output, staging.path())
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
    verify(&fs, &report.extensions).with_context(|| format!("reading back {part}"))?;

    let after = {
        let mut f = fs_err::File::open(&work)?;
        crate::fsprobe::probe(&mut f, root.offset, root.size)?.ext.map_or(0, |e| e.free_bytes())
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

/// Copies each image into the blocks debugfs allocated for it, then marks them initialised.
///
/// The extent map debugfs printed is checked to cover the file exactly before a byte is
/// written, and re-read afterwards: a block written outside the file's own extents would
/// corrupt the filesystem in a way e2fsck cannot see.
fn fill(
    fs: &Ext,
    image: &Path,
    offset: u64,
    block: u64,
    payloads: &[Payload],
    output: &str,
    scratch: &Path,
) -> Result<()> {
    if payloads.is_empty() {
        return Ok(());
    }
    let disk = fs_err::OpenOptions::new().write(true).open(image)?;
    let mut script = Script::new();
    let mut maps = Vec::new();
    for p in payloads {
        let extents = crate::e2fs::parse_extents(crate::e2fs::extents_section(output, &p.path));
        let blocks = p.size.div_ceil(block);
        let mut next = 0;
        for e in &extents {
            if e.lblk != next || !e.uninit {
                bail!("{}: unexpected extent map from debugfs: {extents:?}", p.path);
            }
            next += e.len;
        }
        if next != blocks {
            bail!("{}: debugfs allocated {next} blocks, expected {blocks}", p.path);
        }
        let src = fs_err::File::open(&p.source)?;
        for e in &extents {
            let from = e.lblk * block;
            let len = (e.len * block).min(p.size - from);
            let at = offset + e.pblk * block;
            input::copy_between(src.file(), from, disk.file(), at, len)
                .with_context(|| format!("copying {} into {}", p.source.display(), p.path))?;
            // The tail of the last block: zeros, not whatever the free block held before.
            let tail = e.len * block - len;
            if tail > 0 {
                std::os::unix::fs::FileExt::write_all_at(disk.file(), &vec![0u8; tail as usize], at + len)?;
            }
        }
        script.initialise(&p.path, &extents);
        maps.push((p, extents));
    }
    fs.apply(&script, scratch)?;
    for (p, before) in maps {
        let after = fs.extents(&p.path)?;
        let expected: Vec<_> = before.iter().map(|e| crate::e2fs::Extent { uninit: false, ..*e }).collect();
        if after != expected {
            bail!("{}: extent map after initialising is {after:?}, expected {expected:?}", p.path);
        }
    }
    Ok(())
}

/// Reads back every link and image, as the booted system will see them.
fn verify(fs: &Ext, exts: &[Verdict]) -> Result<()> {
    let mut paths = Vec::new();
    for v in exts {
        let e = &v.extension;
        paths.push(transfer::current_symlink(&e.image.name));
        paths.push(image_path(&e.image.name, &e.image.to_string()));
    }
    let found = fs.stat_many(&paths)?;
    for v in exts {
        let e = &v.extension;
        let link = transfer::current_symlink(&e.image.name);
        let want = image_path(&e.image.name, &e.image.to_string());
        let got = match found.get(&link).cloned().flatten() {
            // Targets of 60 bytes or more live in a data block, which stat does not show.
            Some(st) if st.kind == Kind::Symlink && st.fast_link.is_none() => fs.read_link(&link)?,
            st => st.and_then(|s| s.fast_link),
        };
        if got.as_deref() != Some(want.as_str()) {
            bail!("{link} points to {got:?}; expected {want}");
        }
        match found.get(&want).cloned().flatten() {
            Some(st) if st.kind == Kind::File(e.size) && st.uid == 0 && st.gid == 0 && st.mode == 0o644 => {}
            other => bail!("{want}: expected a root-owned 0644 file of {} bytes, found {other:?}", e.size),
        }
    }
    Ok(())
}
