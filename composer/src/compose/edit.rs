//! Rendering a [`NodePlan`] into an ext4 root filesystem with debugfs, without mounting.
//!
//! Every path is looked up first (one debugfs session), so what exists decides what is
//! created, replaced or refused before a byte is written; the space the edit needs is
//! counted on the way. Image bytes do not go through debugfs's `write` (one 4 KiB block
//! mapped and written at a time): debugfs allocates the file's extents, [`fill`] copies the
//! image into exactly those blocks and debugfs marks them initialised.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::disk::e2fs::{self, Ext, Kind, Script};
use crate::disk::input;
use crate::plan::{Entry, ImageSource, NodeOs, NodePlan};

/// Where an image's unit may live on a merged-/usr Debian or Ubuntu (both resolve on 24.04).
const UNIT_DIRS: [&str; 2] = ["/usr/lib/systemd/system", "/lib/systemd/system"];

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

/// A planned edit: debugfs commands and the space they need.
pub(super) struct Edit {
    pub(super) script: Script,
    pub(super) written: Vec<Written>,
    pub(super) bytes: u64,
    pub(super) inodes: u64,
    known: HashMap<String, Option<e2fs::Stat>>,
    /// Images whose blocks the script allocates and composer then fills in place.
    pub(super) payloads: Vec<Payload>,
}

/// An extension image to copy into blocks allocated by debugfs.
pub(super) struct Payload {
    source: PathBuf,
    path: String,
    size: u64,
}

impl Edit {
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

    /// Data blocks plus one block of extent index per 128 MiB, a generous bound.
    fn account(&mut self, size: u64, block: u64) {
        self.bytes += size.div_ceil(block) * block + (size / (128 << 20) + 1) * block;
        self.inodes += 1;
    }

    fn file(&mut self, fs: &Ext, source: &Path, size: u64, path: &str, block: u64) -> Result<()> {
        self.clear(fs, path)?;
        self.script.write(source, path);
        self.written.push(Written { path: path.to_owned(), kind: "file", target: None });
        self.account(size, block);
        Ok(())
    }

    /// Like [`Edit::file`], for an extension image: allocated by debugfs, filled by composer.
    fn image(&mut self, fs: &Ext, source: &Path, size: u64, path: &str, block: u64, empty: &Path) -> Result<()> {
        self.clear(fs, path)?;
        self.script.allocate(empty, path, size, block);
        self.payloads.push(Payload { source: source.to_owned(), path: path.to_owned(), size });
        self.written.push(Written { path: path.to_owned(), kind: "file", target: None });
        self.account(size, block);
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

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("/", |(d, _)| if d.is_empty() { "/" } else { d })
}

/// Turns the plan into debugfs commands against the filesystem as it is, staging small files
/// in `scratch`.
pub(super) fn render(fs: &Ext, plan: &NodePlan, partition: u32, scratch: &Path, block: u64) -> Result<Edit> {
    let mut e = Edit::new();
    let mut lookups: Vec<String> = plan.entries.iter().map(|en| en.path().to_owned()).collect();
    // A unit the OS enables itself lives in its /usr, which on Flatcar is not the partition
    // composed here.
    let enable: Vec<_> = plan.enable.iter().filter(|u| !u.by_os).collect();
    for unit in &enable {
        lookups.extend(UNIT_DIRS.iter().map(|d| format!("{d}/{}", unit.name)));
        lookups.push(unit.link());
    }
    e.prefetch(fs, &lookups)?;
    let empty = scratch.join("empty");
    fs_err::write(&empty, b"")?;
    let mut dirs = BTreeSet::new();
    for (i, entry) in plan.entries.iter().enumerate() {
        match entry {
            Entry::Dir { path } => e.ensure_dir(fs, path, &mut dirs)?,
            Entry::Image { path, image } => {
                let ImageSource::Local(source) = &image.source else {
                    bail!("{path}: a disk can only be composed from local images");
                };
                e.ensure_dir(fs, parent(path), &mut dirs)?;
                e.image(fs, source, image.size, path, block, &empty)?;
            }
            Entry::File { path, contents, .. } => {
                e.ensure_dir(fs, parent(path), &mut dirs)?;
                let staged = scratch.join(format!("file-{i}"));
                fs_err::write(&staged, contents)?;
                e.file(fs, &staged, contents.len() as u64, path, block)?;
            }
            Entry::Link { path, target, .. } => {
                e.ensure_dir(fs, parent(path), &mut dirs)?;
                e.symlink(fs, path, target, block)?;
            }
        }
    }
    for unit in &enable {
        // Enable as `systemctl enable` would: a link to wherever the image keeps the unit.
        let mut found = None;
        for candidate in UNIT_DIRS.iter().map(|d| format!("{d}/{}", unit.name)) {
            let present = match e.kind_at(fs, &candidate)? {
                Some(Kind::File(_)) => true,
                Some(Kind::Symlink) => fs.resolve(&candidate)?.is_some(),
                _ => false,
            };
            if present {
                found = Some(candidate);
                break;
            }
        }
        let unit_path = match found {
            Some(p) => p,
            // Flatcar keeps its units in the separate /usr partition, which is not the one
            // composed here: systemd-sysupdate.timer is there (Flatcar ships sysupdate), so
            // link to it as `systemctl enable` on the node would.
            None if plan.os == NodeOs::Flatcar && unit.if_present => format!("{}/{}", UNIT_DIRS[0], unit.name),
            None if unit.if_present => continue,
            None => bail!(
                "partition {partition} has no /usr/lib/systemd/system/{}; this image's systemd cannot merge system extensions",
                unit.name
            ),
        };
        let link = unit.link();
        e.ensure_dir(fs, parent(&link), &mut dirs)?;
        e.symlink(fs, &link, &unit_path, block)?;
    }
    // Directories: one block each, plus slack for directory blocks that split.
    e.bytes += (dirs.len() as u64 + 16) * block;
    Ok(e)
}

/// Copies each image into the blocks debugfs allocated for it, then marks them initialised.
///
/// The extent map debugfs printed is checked to cover the file exactly before a byte is
/// written, and re-read afterwards: a block written outside the file's own extents would
/// corrupt the filesystem in a way e2fsck cannot see.
pub(super) fn fill(
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
        let section = e2fs::extents_section(output, &p.path).with_context(|| {
            format!("{}: debugfs printed no extent map for it; output began: {:?}", p.path, e2fs::snippet(output))
        })?;
        let extents = e2fs::parse_extents(section)
            .map_err(|reason| anyhow::anyhow!("{}: cannot understand debugfs's extent map: {reason}", p.path))?;
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
        let expected: Vec<_> = before.iter().map(|e| e2fs::Extent { uninit: false, ..*e }).collect();
        if after != expected {
            bail!("{}: extent map after initialising is {after:?}, expected {expected:?}", p.path);
        }
    }
    Ok(())
}

/// Reads back every link and image of the plan, as the booted system will see them.
pub(super) fn verify(fs: &Ext, plan: &NodePlan) -> Result<()> {
    let mut paths: Vec<String> = plan.links().map(|(l, _)| l.to_owned()).collect();
    paths.extend(plan.images().map(|(p, _)| p.to_owned()));
    let found = fs.stat_many(&paths)?;
    for (link, want) in plan.links() {
        let got = match found.get(link).cloned().flatten() {
            // Targets of 60 bytes or more live in a data block, which stat does not show.
            Some(st) if st.kind == Kind::Symlink && st.fast_link.is_none() => fs.read_link(link)?,
            st => st.and_then(|s| s.fast_link),
        };
        if got.as_deref() != Some(want) {
            bail!("{link} points to {got:?}; expected {want}");
        }
    }
    for (path, image) in plan.images() {
        match found.get(path).cloned().flatten() {
            Some(st) if st.kind == Kind::File(image.size) && st.uid == 0 && st.gid == 0 && st.mode == 0o644 => {}
            other => bail!("{path}: expected a root-owned 0644 file of {} bytes, found {other:?}", image.size),
        }
    }
    Ok(())
}
