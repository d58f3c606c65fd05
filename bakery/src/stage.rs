//! Laying out an image: verified artifacts, archive members, recipe files, symlinks and the
//! generated metadata become a [`Tree`].
//!
//! Archives are treated as hostile: a member with an absolute path, a `..` component, a link
//! that leaves the archive, or a device node rejects the whole archive, even if no install rule
//! selects that member, because such an archive is not what upstream publishes.

use std::io;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use sysext_model::ExtensionRelease;

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

/// Builds the image tree except for the extension-release file, which depends on the tree
/// (see [`ships_units`]) and is added by [`finish`].
pub fn stage(recipe: &Recipe, fetched: &[Fetched], scratch: &Path) -> Result<Tree> {
    let mut tree = Tree::new();
    for f in fetched {
        match f.artifact.unpack {
            None => {
                let rule = &f.artifact.install[0];
                tree.add_file(&rule.to, rule.mode.0, FileSource::Path(f.path.clone()))
                    .with_context(|| format!("installing {}", f.url))?;
            }
            Some(Unpack::TarGz) => unpack_tar_gz(&mut tree, f, &scratch.join(&f.artifact.name))?,
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

/// Checks a member name and returns it without a leading `./`; `None` for the archive root.
fn member_name(raw: &str, url: &str) -> Result<Option<String>> {
    if raw.starts_with('/') {
        bail!("archive {url}: member '{raw}' has an absolute path");
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => bail!("archive {url}: member '{raw}' contains '..'"),
            p => parts.push(p),
        }
    }
    Ok(if parts.is_empty() { None } else { Some(parts.join("/")) })
}

/// Checks that a link target stays inside the archive.
fn check_link(member: &str, target: &str, hard: bool, url: &str) -> Result<()> {
    let kind = if hard { "hard link" } else { "symlink" };
    if target.starts_with('/') {
        bail!("archive {url}: {kind} '{member}' points outside the archive (absolute target '{target}')");
    }
    // Hard link targets are archive paths; symlink targets are relative to the link's directory.
    let mut depth: i64 = if hard { 0 } else { member.matches('/').count() as i64 };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            bail!("archive {url}: {kind} '{member}' points outside the archive (target '{target}')");
        }
    }
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

fn unpack_tar_gz(tree: &mut Tree, f: &Fetched, scratch: &Path) -> Result<()> {
    let url = &f.url;
    fs_err::create_dir_all(scratch)?;
    let file = fs_err::File::open(&f.path)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    let rules = &f.artifact.install;
    let mut used = vec![false; rules.len()];
    let mut seen = Vec::new();
    let entries = archive.entries().with_context(|| format!("reading archive {url}"))?;
    for (index, entry) in entries.enumerate() {
        let mut entry = entry.with_context(|| format!("reading archive {url}"))?;
        let raw_bytes = entry.path_bytes().into_owned();
        let raw =
            String::from_utf8(raw_bytes).map_err(|_| anyhow::anyhow!("archive {url}: a member name is not UTF-8"))?;
        let Some(name) = member_name(&raw, url)? else { continue };
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        match kind {
            T::Directory => continue,
            T::Symlink | T::Link => {
                let target =
                    entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                check_link(&name, &target, kind == T::Link, url)?;
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
        io::copy(&mut entry, &mut out).with_context(|| format!("extracting '{name}' from {url}"))?;
        let base = name.rsplit('/').next().unwrap_or(&name);
        for i in chosen {
            let rule = &rules[i];
            used[i] = true;
            let to = if rule.to.ends_with('/') { format!("{}{base}", rule.to) } else { rule.to.clone() };
            tree.add_file(&to, rule.mode.0, FileSource::Path(dest_file.clone()))
                .with_context(|| format!("installing '{name}' from {url}"))?;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_normalised_or_refused() {
        assert_eq!(member_name("./bridge", "u").unwrap().as_deref(), Some("bridge"));
        assert_eq!(member_name("./", "u").unwrap(), None);
        assert_eq!(member_name("bin/ctr", "u").unwrap().as_deref(), Some("bin/ctr"));
        assert!(member_name("/etc/passwd", "u").unwrap_err().to_string().contains("absolute path"));
        assert!(member_name("bin/../../etc", "u").unwrap_err().to_string().contains("'..'"));
    }

    #[test]
    fn links_must_stay_inside() {
        check_link("bin/a", "b", false, "u").unwrap();
        check_link("bin/a", "../lib/b", false, "u").unwrap();
        assert!(check_link("bin/a", "../../etc/shadow", false, "u").is_err());
        assert!(check_link("a", "/etc/shadow", false, "u").is_err());
        check_link("bin/a", "bin/b", true, "u").unwrap();
        assert!(check_link("bin/a", "../x", true, "u").is_err());
    }
}
