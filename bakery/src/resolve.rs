//! Turning a recipe, version and architecture into verified local files, and recording what
//! was used in the inputs lock shipped inside the image.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
pub use release_index::inputs::{Input, InputKind, InputsLock};
use release_index::{Arch, Version};

use crate::fetch::{parse_checksum_file, parse_variable, Fetcher};
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

/// Fetches and verifies everything a build needs.
pub fn resolve(
    recipe: &Recipe,
    version: &Version,
    arch: Arch,
    fetcher: &Fetcher,
) -> Result<(Vec<Fetched>, InputsLock)> {
    let mut vars = BTreeMap::new();
    vars.insert("version".to_owned(), version.to_string());
    vars.insert("upstream_arch".to_owned(), recipe.upstream_arch(arch)?.to_owned());
    vars.insert("arch".to_owned(), arch.to_string());
    let mut inputs = Vec::new();

    // Variables feed later URLs, so they are resolved first and in order.
    for var in &recipe.variables {
        let url = render(&var.url, &vars);
        let small = fetcher
            .fetch_small(&url, &var.name)
            .with_context(|| format!("fetching {} for {}", var.name, recipe.name))?;
        let value = parse_variable(&small.bytes).map_err(|e| anyhow!("{url}: {e}"))?;
        inputs.push(Input {
            kind: InputKind::Variable,
            name: var.name.clone(),
            url,
            sha256: small.sha256,
            verified_by: None,
            value: Some(value.clone()),
        });
        vars.insert(var.name.clone(), value);
    }

    // Artifacts download in parallel; results are collected in recipe order so the lock and
    // the image do not depend on which download finished first.
    let results: Vec<Result<(Fetched, Vec<Input>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = recipe
            .artifacts
            .iter()
            .map(|artifact| {
                let vars = &vars;
                scope.spawn(move || fetch_artifact(artifact, arch, vars, fetcher))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("download thread panicked")))).collect()
    });
    let mut fetched = Vec::new();
    for r in results {
        let (f, mut ins) = r?;
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
        let small = fetcher
            .fetch_small(&sum_url, &format!("{}.sha256", artifact.name))
            .with_context(|| format!("fetching the published checksum of {}", artifact.name))?;
        let entry = match &artifact.sha256_entry {
            Some(e) => render(e, vars),
            None => url.rsplit('/').next().unwrap_or_default().to_owned(),
        };
        let text = String::from_utf8_lossy(&small.bytes);
        let digest = parse_checksum_file(&text, &entry).map_err(|e| anyhow!("checksum file {sum_url}: {e}"))?;
        inputs.push(Input {
            kind: InputKind::Checksum,
            name: artifact.name.clone(),
            url: sum_url.clone(),
            sha256: small.sha256,
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
