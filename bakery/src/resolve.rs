//! Turning a recipe, version and architecture into verified local files, and recording what
//! was used in the inputs lock shipped inside the image.
//!
//! Two ways: from upstream, where published checksums vouch for every artifact, or from an
//! inputs lock (`--locked`), where the lock's digests do and no checksum or variable is
//! fetched at all; with the artifacts in the cache that rebuild needs no network.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
pub use release_index::inputs::{Input, InputKind, InputsLock};
use sysext_model::{Arch, Version};

use crate::checksums;
use crate::fetch::Fetcher;
use crate::recipe::{render, Artifact, Recipe};

/// A verified artifact in the cache.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The recipe entry.
    pub artifact: Artifact,
    /// Canonical upstream URL.
    pub url: String,
    /// Verified cache file.
    pub path: PathBuf,
}

/// The value of a fetched variable (e.g. a pinned runc version). It is substituted into
/// URLs, so it must look like a version: one token of version characters starting with a
/// digit or `v` and a digit, and never `..`.
pub fn parse_variable(bytes: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
    let value = text.trim();
    let b = value.as_bytes();
    let starts_like_version = match b.first() {
        Some(c) if c.is_ascii_digit() => true,
        Some(b'v') => b.get(1).is_some_and(u8::is_ascii_digit),
        _ => false,
    };
    let ok = starts_like_version
        && value.len() <= 64
        && !value.contains("..")
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'+' | b'-'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!("expected a version (e.g. v1.2.5), got {:?}", text.chars().take(80).collect::<String>()))
    }
}

fn base_vars(recipe: &Recipe, version: &Version, arch: Arch) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    vars.insert("version".to_owned(), version.to_string());
    vars.insert("upstream_arch".to_owned(), recipe.upstream_arch(arch)?.to_owned());
    vars.insert("arch".to_owned(), arch.to_string());
    Ok(vars)
}

/// Runs one job per artifact in parallel, collecting results in recipe order so the lock and
/// the image do not depend on which download finished first.
fn in_parallel<T: Send>(recipe: &Recipe, job: impl Fn(&Artifact) -> Result<T> + Sync) -> Result<Vec<T>> {
    let results: Vec<Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = recipe.artifacts.iter().map(|a| scope.spawn(|| job(a))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("download thread panicked")))).collect()
    });
    results.into_iter().collect()
}

/// Fetches and verifies everything a build needs from upstream (or its mirror).
pub fn resolve(
    recipe: &Recipe,
    version: &Version,
    arch: Arch,
    fetcher: &Fetcher,
) -> Result<(Vec<Fetched>, InputsLock)> {
    let mut vars = base_vars(recipe, version, arch)?;
    let mut inputs = Vec::new();

    // Variables feed later URLs, so they are resolved first and in order.
    for var in &recipe.variables {
        let url = render(&var.url, &vars);
        let (value, sha256) = fetcher
            .fetch_small(&url, &var.name, parse_variable)
            .with_context(|| format!("fetching {} for {}", var.name, recipe.name))?;
        inputs.push(Input {
            kind: InputKind::Variable,
            name: var.name.clone(),
            url,
            sha256,
            verified_by: None,
            value: Some(value.clone()),
        });
        vars.insert(var.name.clone(), value);
    }

    let results = in_parallel(recipe, |artifact| fetch_artifact(artifact, arch, &vars, fetcher))?;
    let mut fetched = Vec::new();
    for (f, mut ins) in results {
        fetched.push(f);
        inputs.append(&mut ins);
    }
    Ok((fetched, InputsLock { extension: recipe.name.clone(), version: version.clone(), arch, inputs }))
}

fn fetch_artifact(
    artifact: &Artifact,
    arch: Arch,
    vars: &BTreeMap<String, String>,
    fetcher: &Fetcher,
) -> Result<(Fetched, Vec<Input>)> {
    let url = render(&artifact.url, vars);
    let mut inputs = Vec::new();
    let (expected, expected_from) = if let Some(sum_template) = &artifact.sha256_url {
        let sum_url = render(sum_template, vars);
        let entry = match &artifact.sha256_entry {
            Some(e) => render(e, vars),
            None => url.rsplit('/').next().unwrap_or_default().to_owned(),
        };
        let parse = |bytes: &[u8]| {
            let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
            checksums::digest_for(text, &entry)
        };
        let (digest, sha256) = fetcher
            .fetch_small(&sum_url, &format!("{}.sha256", artifact.name), parse)
            .map_err(|e| match e {
                crate::fetch::FetchError::Invalid { .. } => anyhow!("checksum file {e}"),
                other => other.into(),
            })
            .with_context(|| format!("fetching the published checksum of {}", artifact.name))?;
        inputs.push(Input {
            kind: InputKind::Checksum,
            name: artifact.name.clone(),
            url: sum_url.clone(),
            sha256,
            verified_by: None,
            value: None,
        });
        (digest, sum_url)
    } else {
        let pins = artifact.sha256.as_ref().expect("recipe validation requires sha256-url or sha256");
        let digest =
            *pins.get(&arch).ok_or_else(|| anyhow!("artifact {} has no pinned sha256 for {arch}", artifact.name))?;
        (digest, "pinned in recipe".to_owned())
    };
    let path = fetcher
        .fetch_verified(&url, &expected, &expected_from, &artifact.name)
        .with_context(|| format!("downloading {}", artifact.name))?;
    inputs.insert(
        0,
        Input {
            kind: InputKind::Artifact,
            name: artifact.name.clone(),
            url: url.clone(),
            sha256: expected,
            verified_by: Some(expected_from),
            value: None,
        },
    );
    Ok((Fetched { artifact: artifact.clone(), url, path }, inputs))
}

/// Rebuilds from an inputs lock: every artifact is fetched (from the cache when it is there)
/// and checked against the digest the lock records; variables take the lock's values and no
/// checksum file is fetched. The lock must describe this recipe, version and architecture,
/// and its URLs must be the ones the recipe renders with its values.
pub fn resolve_locked(
    recipe: &Recipe,
    version: &Version,
    arch: Arch,
    fetcher: &Fetcher,
    lock: &InputsLock,
) -> Result<(Vec<Fetched>, InputsLock)> {
    if lock.extension != recipe.name || lock.version != *version || lock.arch != arch {
        bail!(
            "the inputs lock describes {} {} {}, not {} {version} {arch}",
            lock.extension,
            lock.version,
            lock.arch,
            recipe.name
        );
    }
    let mut vars = base_vars(recipe, version, arch)?;
    for var in &recipe.variables {
        let input = lock
            .inputs
            .iter()
            .find(|i| i.kind == InputKind::Variable && i.name == var.name)
            .ok_or_else(|| anyhow!("the inputs lock has no value for variable {}", var.name))?;
        let value = input.value.as_deref().ok_or_else(|| anyhow!("variable {} has no value in the lock", var.name))?;
        let value = parse_variable(value.as_bytes()).map_err(|e| anyhow!("variable {} in the lock: {e}", var.name))?;
        vars.insert(var.name.clone(), value);
    }
    let fetched = in_parallel(recipe, |artifact| {
        let url = render(&artifact.url, &vars);
        let input = lock
            .inputs
            .iter()
            .find(|i| i.kind == InputKind::Artifact && i.name == artifact.name)
            .ok_or_else(|| anyhow!("the inputs lock has no entry for artifact {}", artifact.name))?;
        if input.url != url {
            bail!("artifact {}: the lock records {} but the recipe renders {url}", artifact.name, input.url);
        }
        let from = format!("inputs lock, verified by {}", input.verified_by.as_deref().unwrap_or("the lock"));
        let path = fetcher
            .fetch_verified(&url, &input.sha256, &from, &artifact.name)
            .with_context(|| format!("downloading {}", artifact.name))?;
        Ok(Fetched { artifact: artifact.clone(), url, path })
    })?;
    let known: Vec<&str> = recipe.artifacts.iter().map(|a| a.name.as_str()).collect();
    if let Some(extra) = lock.inputs.iter().find(|i| i.kind == InputKind::Artifact && !known.contains(&i.name.as_str()))
    {
        bail!("the inputs lock lists artifact {}, which the recipe does not have", extra.name);
    }
    Ok((fetched, lock.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_must_look_like_versions() {
        assert_eq!(parse_variable(b"v1.2.5\n").unwrap(), "v1.2.5");
        assert_eq!(parse_variable(b"1.7.24").unwrap(), "1.7.24");
        for bad in [&b"v1.2.5/../../x"[..], b"..", b"v1..2", b"<html>", b"", b"latest", b"-1", b"v"] {
            assert!(parse_variable(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
