//! `composer inspect`: what is in a disk image, read without mounting it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use sysext_model::Arch;
use sysext_model::ExtensionRelease;

use crate::disk::e2fs::Ext;
use crate::disk::gpt::{Gpt, TableCopy};
use crate::disk::input::{self, InputFormat};
use crate::disk::target::{self, Distro, Overrides, ProbedPartition, TargetChoice};

/// An installed extension, as systemd-sysext would find it.
#[derive(Debug, Clone, Serialize)]
pub struct Installed {
    /// Extension name (the link or file name minus `.raw`).
    pub name: String,
    /// Where it is: `/etc/extensions/<name>.raw` or `/var/lib/extensions/<name>.raw`.
    pub path: String,
    /// Link target, if it is a symlink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The file it finally resolves to, if it exists (a dangling link is skipped at boot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolves_to: Option<String>,
}

/// What `inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// Input image.
    pub image: PathBuf,
    /// Input format.
    pub format: InputFormat,
    /// Which copy of the GPT was read.
    pub table: TableCopy,
    /// Why the primary table was not used, if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_problem: Option<String>,
    /// Partitions and their filesystems.
    pub partitions: Vec<ProbedPartition>,
    /// Detected distribution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distro: Option<Distro>,
    /// The root partition number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_partition: Option<u32>,
    /// The target's os-release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_release: Option<ExtensionRelease>,
    /// Architecture.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// systemd major version, `null` when it could not be determined.
    pub systemd: Option<u32>,
    /// Why the target could not be fully recognised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Extensions systemd-sysext would consider.
    pub extensions: Vec<Installed>,
    /// Names masked with a link to `/dev/null` (Flatcar's built-in runtimes, when composer
    /// installed containerd).
    pub masked: Vec<String>,
    /// Image files under `/opt/extensions/*/`.
    pub images: Vec<String>,
    /// sysupdate transfer files.
    pub sysupdate: Vec<String>,
    /// Whether `sysinit.target.wants/systemd-sysext.service` exists in /etc.
    pub sysext_enabled_in_etc: bool,
}

/// Reads an image.
pub fn inspect(image: &Path, overrides: &Overrides) -> Result<Inspection> {
    let format = input::detect(image)?;
    let scratch;
    let raw = if format == InputFormat::Raw {
        image.to_owned()
    } else {
        crate::scratch::sweep_temp();
        scratch = crate::scratch::ScratchDir::new_temp(crate::scratch::INPUT_PREFIX)
            .context("creating a scratch directory")?;
        let raw = scratch.path().join("disk.raw");
        input::materialize(image, format, &raw)?;
        raw
    };
    let gpt = Gpt::read(&raw)?;
    let partitions =
        target::probe_partitions(&raw, &gpt).with_context(|| format!("reading partitions of {}", image.display()))?;
    let mut out = Inspection {
        image: image.to_owned(),
        format,
        table: gpt.table,
        table_problem: gpt.primary_problem.clone(),
        partitions: partitions.clone(),
        distro: None,
        root_partition: None,
        os_release: None,
        arch: None,
        systemd: None,
        problem: None,
        extensions: Vec::new(),
        masked: Vec::new(),
        images: Vec::new(),
        sysupdate: Vec::new(),
        sysext_enabled_in_etc: false,
    };
    // The installed extensions are listed even when the identity cannot be read (btrfs
    // USR-A without --os-release): the root alone decides where they are.
    let root = match target::find_root(&raw, &partitions, TargetChoice::Auto) {
        Ok((distro, root)) if root.filesystem.kind.is_ext() => {
            out.distro = Some(distro);
            out.root_partition = Some(root.partition.number);
            root.partition.offset
        }
        Ok(_) | Err(_) => {
            if let Err(e) = target::detect(&raw, &gpt, &partitions, TargetChoice::Auto, overrides) {
                out.problem = Some(e.to_string());
            }
            return Ok(out);
        }
    };
    match target::detect(&raw, &gpt, &partitions, TargetChoice::Auto, overrides) {
        Ok(t) => {
            out.os_release = Some(t.os_release.value);
            out.arch = Some(t.arch.value);
            out.systemd = t.systemd.map(|s| s.value);
        }
        Err(e) => out.problem = Some(e.to_string()),
    }
    let fs = Ext::new(&raw, root);
    for dir in ["/etc/extensions", "/run/extensions", "/var/lib/extensions"] {
        let mut entries = fs.list(dir)?.unwrap_or_default();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for e in entries {
            let Some(name) = e.name.strip_suffix(".raw") else { continue };
            let path = format!("{dir}/{}", e.name);
            let link = if e.is_symlink() { fs.read_link(&path)? } else { None };
            if link.as_deref() == Some(sysext_model::node::MASKED) {
                out.masked.push(path);
                continue;
            }
            let resolves_to = fs.resolve(&path)?;
            out.extensions.push(Installed { name: name.to_owned(), path, link, resolves_to });
        }
    }
    for d in fs.list("/opt/extensions")?.unwrap_or_default().into_iter().filter(|d| d.is_dir()) {
        let dir = format!("/opt/extensions/{}", d.name);
        for f in fs.list(&dir)?.unwrap_or_default() {
            out.images.push(format!("{dir}/{}", f.name));
        }
    }
    for d in fs.list("/etc")?.unwrap_or_default() {
        if d.is_dir() && d.name.starts_with("sysupdate.") && d.name.ends_with(".d") {
            let dir = format!("/etc/{}", d.name);
            for f in fs.list(&dir)?.unwrap_or_default() {
                out.sysupdate.push(format!("{dir}/{}", f.name));
            }
        }
    }
    out.images.sort();
    out.sysupdate.sort();
    out.sysext_enabled_in_etc = fs.stat("/etc/systemd/system/sysinit.target.wants/systemd-sysext.service")?.is_some();
    Ok(out)
}

impl Inspection {
    /// Human-readable report.
    pub fn render(&self) -> String {
        let mut s = format!("image:      {} ({:?})\n", self.image.display(), self.format);
        if let Some(p) = &self.table_problem {
            let _ = writeln!(s, "warning:    primary GPT unusable ({p}); read the backup copy");
        }
        let _ = writeln!(s, "partitions:");
        for p in &self.partitions {
            let part = &p.partition;
            let _ = writeln!(
                s,
                "  {:>2} {:<18} {:<17} {:>12} bytes  {}{}",
                part.number,
                part.label,
                part.type_name.unwrap_or("other"),
                part.size,
                p.filesystem.kind.as_str(),
                p.filesystem.label.as_deref().map(|l| format!(" ({l})")).unwrap_or_default()
            );
        }
        if let Some(problem) = &self.problem {
            let _ = writeln!(s, "problem:    {problem}");
        }
        let Some(distro) = self.distro else { return s };
        let _ = writeln!(
            s,
            "target:     {:?}, root in partition {}, architecture {}, systemd {}",
            distro,
            self.root_partition.unwrap_or_default(),
            self.arch.map(Arch::as_str).unwrap_or("?"),
            self.systemd.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
        );
        if let Some(os) = &self.os_release {
            let fields: Vec<String> = ["ID", "VERSION_ID", "SYSEXT_LEVEL"]
                .iter()
                .filter_map(|k| os.get(k).map(|v| format!("{k}={v}")))
                .collect();
            let _ = writeln!(s, "os-release: {}", fields.join(" "));
        }
        let _ = writeln!(s, "extensions:{}", if self.extensions.is_empty() { " none" } else { "" });
        for e in &self.extensions {
            let target = match (&e.link, &e.resolves_to) {
                (Some(l), Some(_)) => format!(" -> {l}"),
                (Some(l), None) => format!(" -> {l} (dangling: skipped at boot)"),
                (None, _) => String::new(),
            };
            let _ = writeln!(s, "  {:<12} {}{target}", e.name, e.path);
        }
        for m in &self.masked {
            let _ = writeln!(s, "masked:     {m} -> {}", sysext_model::node::MASKED);
        }
        for i in &self.images {
            let _ = writeln!(s, "image file: {i}");
        }
        for f in &self.sysupdate {
            let _ = writeln!(s, "sysupdate:  {f}");
        }
        if self.distro == Some(Distro::Ubuntu) {
            let _ = writeln!(
                s,
                "systemd-sysext.service: {}",
                if self.sysext_enabled_in_etc { "enabled (sysinit.target.wants)" } else { "not enabled in /etc" }
            );
        }
        s
    }
}
