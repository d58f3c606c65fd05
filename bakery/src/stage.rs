//! Laying out an image: verified artifacts, archive members, recipe files, symlinks and the
//! generated metadata become a [`Tree`].
//!
//! Archives are treated as hostile (see [`crate::archive`]): a member with an absolute path, a
//! `..` component or a control character, a link that leaves the archive, a device node, or an
//! archive that unpacks to more than its limit rejects the whole archive, even if no install
//! rule selects that member, because such an archive is not what upstream publishes. A file
//! installed from a download as an executable must be an ELF file; that it is one for the
//! image's architecture is checked by [`crate::lint`], with the rest of the tree.

use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use sysext_model::{elf, Arch, ExtensionRelease};

use crate::archive::{check_link, member_name, unpack_error, Unpacked};
use crate::recipe::{wildcard_match, InstallRule, Recipe, Unpack};
use crate::resolve::{Fetched, InputsLock};
use crate::tree::{FileSource, Tree};

/// Where the generated files go inside the image.
pub fn release_path(recipe: &Recipe) -> String {
    format!("/usr/lib/extension-release.d/extension-release.{}", recipe.name)
}

/// Where the inputs lock goes inside the image.
pub fn inputs_path(recipe: &Recipe) -> String {
    format!("/usr/share/sysext/{}/inputs.json", recipe.name)
}

/// Whether the tree ships systemd units, in which case systemd must reload after a merge.
pub fn ships_units(tree: &Tree) -> bool {
    tree.walk().iter().any(|(p, _)| {
        p.strip_prefix("/usr/lib/systemd/system/").is_some_and(|rest| !rest.contains('/'))
            && [".service", ".socket", ".timer", ".path", ".mount", ".target"].iter().any(|s| p.ends_with(s))
    })
}

/// What staging may accept.
#[derive(Clone, Copy, Debug)]
pub struct StageLimits {
    /// The image's architecture.
    pub arch: Arch,
    /// Most bytes one archive may unpack to.
    pub max_unpacked: u64,
}

/// Builds the image tree except for the extension-release file, which depends on the tree
/// (see [`ships_units`]) and is added by [`finish`].
pub fn stage(recipe: &Recipe, fetched: &[Fetched], scratch: &Path, limits: StageLimits) -> Result<Tree> {
    let mut tree = Tree::new();
    for f in fetched {
        match f.artifact.unpack {
            None => {
                let rule = &f.artifact.install[0];
                check_executable(&f.path, rule, &rule.to, limits.arch)
                    .with_context(|| format!("installing {}", f.url))?;
                tree.add_file(&rule.to, rule.mode.0, FileSource::Path(f.path.clone()))
                    .with_context(|| format!("installing {}", f.url))?;
            }
            Some(Unpack::TarGz) => unpack_tar_gz(&mut tree, f, &scratch.join(&f.artifact.name), limits)?,
        }
    }
    for file in &recipe.files {
        tree.add_file(&file.path, file.mode, FileSource::Bytes(Arc::from(file.contents.as_slice())))
            .with_context(|| format!("adding {}/files{}", recipe.origin, file.path))?;
    }
    for link in &recipe.symlinks {
        tree.add_symlink(&link.path, &link.target).with_context(|| format!("adding symlink {}", link.path))?;
    }
    Ok(tree)
}

/// Adds the extension-release file and the inputs lock.
pub fn finish(tree: &mut Tree, recipe: &Recipe, release: &ExtensionRelease, lock: &InputsLock) -> Result<()> {
    tree.add_file(&release_path(recipe), 0o644, FileSource::Bytes(release.render().into_bytes().into()))?;
    let mut json = serde_json::to_vec_pretty(lock).context("serialising the inputs lock")?;
    json.push(b'\n');
    tree.add_file(&inputs_path(recipe), 0o644, FileSource::Bytes(json.into()))?;
    Ok(())
}

/// Indices of the install rules that select `member`.
fn selected(rules: &[InstallRule], member: &str) -> Vec<usize> {
    (0..rules.len())
        .filter(|&i| {
            let r = &rules[i];
            wildcard_match(r.member.as_deref().unwrap_or_default(), member)
                && !r.exclude.iter().any(|x| wildcard_match(x, member))
        })
        .collect()
}

/// What a file that should be an executable is instead, for messages; `None` if it is ELF.
fn not_elf(head: &[u8], size: u64) -> Option<String> {
    if elf::machine(head).is_some() {
        return None;
    }
    let text = head.trim_ascii_start();
    Some(if size == 0 {
        "an empty file".to_owned()
    } else if text.starts_with(b"<") {
        format!("an HTML or XML document ({size} bytes)")
    } else if head.starts_with(b"#!") {
        format!("a script ({size} bytes)")
    } else if head.starts_with(b"\x1f\x8b") {
        format!("gzip data ({size} bytes)")
    } else if head.starts_with(b"PK\x03\x04") {
        format!("a zip archive ({size} bytes)")
    } else {
        let shown: String = head.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("not an ELF file ({size} bytes, starting {shown})")
    })
}

/// Refuses a download installed with an executable mode that is not an ELF executable: an
/// error page or a checksum list saved under a binary's name would otherwise ship.
fn check_executable(path: &Path, rule: &InstallRule, to: &str, arch: Arch) -> Result<()> {
    if rule.mode.0 & 0o111 == 0 {
        return Ok(());
    }
    let mut head = Vec::with_capacity(elf::HEADER_LEN);
    let file = fs_err::File::open(path)?;
    let size = file.metadata()?.len();
    file.take(elf::HEADER_LEN as u64).read_to_end(&mut head)?;
    match not_elf(&head, size) {
        None => Ok(()),
        Some(what) => {
            bail!("{to}: {what}, but it is installed as an executable: expected an ELF executable for {arch}")
        }
    }
}

fn unpack_tar_gz(tree: &mut Tree, f: &Fetched, scratch: &Path, limits: StageLimits) -> Result<()> {
    let url = &f.url;
    let limit = limits.max_unpacked;
    fs_err::create_dir_all(scratch)?;
    let file = fs_err::File::open(&f.path)?;
    let unpacked = Unpacked::new(io::BufReader::new(file), limit);
    let counter = unpacked.counter();
    let mut archive = tar::Archive::new(unpacked);
    // The limit in the message, whatever layer (gzip, tar, our copy) noticed it first.
    let read_err = |e: io::Error, what: &str| match unpack_error(&e) {
        Some(u) => anyhow!("archive {url} {u}"),
        None => anyhow!(e).context(format!("{what} archive {url}")),
    };
    let rules = &f.artifact.install;
    let mut used = vec![false; rules.len()];
    let mut seen = Vec::new();
    let entries = archive.entries().map_err(|e| read_err(e, "reading"))?;
    for (index, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| read_err(e, "reading"))?;
        let bad = |reason: String| anyhow!("archive {url}: {reason}");
        let Some(name) = member_name(&entry.path_bytes()).map_err(bad)? else { continue };
        // `size()` includes a PAX size override, which the raw header field would miss.
        let size = entry.size();
        if size > limit.saturating_sub(counter.get()) {
            bail!("archive {url}: member '{name}' is {size} bytes, more than the {limit} bytes one archive may unpack to (see --max-unpacked)");
        }
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        match kind {
            T::Directory => continue,
            T::Symlink | T::Link => {
                let target = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
                check_link(&name, &target, kind == T::Link).map_err(bad)?;
                if !selected(rules, &name).is_empty() {
                    bail!("archive {url}: member '{name}' is a link; install rules select regular files");
                }
                seen.push(name);
                continue;
            }
            T::Char | T::Block | T::Fifo => {
                bail!("archive {url}: member '{name}' is a device node or FIFO; images may not contain those")
            }
            T::Regular | T::Continuous => {}
            other => bail!("archive {url}: member '{name}' has unsupported type {other:?}"),
        }
        let chosen = selected(rules, &name);
        seen.push(name.clone());
        if chosen.is_empty() {
            continue;
        }
        let dest_file = scratch.join(format!("{index}"));
        let mut out = fs_err::File::create(&dest_file)?;
        io::copy(&mut entry, &mut out).map_err(|e| read_err(e, &format!("extracting '{name}' from")))?;
        let base = name.rsplit('/').next().unwrap_or(&name);
        for i in chosen {
            let rule = &rules[i];
            used[i] = true;
            let to = if rule.to.ends_with('/') { format!("{}{base}", rule.to) } else { rule.to.clone() };
            check_executable(&dest_file, rule, &to, limits.arch)
                .with_context(|| format!("installing '{name}' from {url}"))?;
            tree.add_file(&to, rule.mode.0, FileSource::Path(dest_file.clone()))
                .with_context(|| format!("installing '{name}' from {url}"))?;
        }
    }
    // Whatever follows the tar end marker, up to the end of the last gzip member.
    archive.into_inner().finish().map_err(|e| match unpack_error(&e) {
        Some(u) => anyhow!("archive {url} {u}"),
        None => anyhow!(
            "archive {url}: bytes after the tar archive that gzip cannot read ({e}); refusing a file that is not what upstream publishes"
        ),
    })?;
    for (rule, used) in rules.iter().zip(used) {
        if !used {
            let listing = if seen.len() > 30 { format!("{}, …", seen[..30].join(", ")) } else { seen.join(", ") };
            bail!(
                "archive {url}: install rule member '{}' matched nothing; the archive has: {listing}",
                rule.member.as_deref().unwrap_or_default()
            );
        }
    }
    Ok(())
}
