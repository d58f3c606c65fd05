use std::num::NonZeroUsize;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use cli_support::NetArgs;
use release_index::http::Mirror;
use release_index::inputs::InputsLock;
use signing::PrivateKey;
use sysext_model::{Arch, OsTarget};

use crate::create::{create, CreateRequest};
use crate::fetch::FetchOptions;
use crate::image::{BlockSize, Compression, ImageOptions};
use crate::recipe::Recipes;

/// Build an extension image from upstream release binaries.
///
/// Writes <EXTENSION>-<VERSION>-<ARCH>.raw into the output directory, e.g.
/// `bakery create kubernetes v1.31.3 --arch x86-64` writes kubernetes-v1.31.3-x86-64.raw.
/// Two builds of the same inputs are bit-identical; timestamps come from SOURCE_DATE_EPOCH
/// (default 0).
#[derive(Debug, Args)]
pub(super) struct CreateArgs {
    /// Extension to build (see `bakery list`).
    pub(super) extension: String,
    /// Upstream version in upstream's tag form, e.g. v1.31.3 (kubernetes), 2.0.4 (containerd).
    pub(super) version: String,
    /// Target architecture, as systemd names it: x86-64 or arm64.
    #[arg(long, value_name = "ARCH")]
    pub(super) arch: Arch,
    /// Directory to write the image into (created if missing).
    #[arg(long, short, value_name = "DIR", default_value = ".")]
    output: PathBuf,
    /// Compression of data and metadata blocks: zstd, xz, gzip or lz4.
    #[arg(long, value_name = "ALGORITHM", default_value_t = Compression::default())]
    pub(super) compression: Compression,
    /// Compression level: zstd 1-22 (default 10; 10 and 16 are tuned for executables, and
    /// `--level 16` makes images ~4% smaller in ~3.5x the time), xz 0-9 (6), gzip 1-9 (9); lz4
    /// has none. See bench/README.md for the size/time trade-off.
    #[arg(long, value_name = "N")]
    level: Option<i32>,
    /// squashfs block size: a power of two from 4K to 1M.
    #[arg(long, value_name = "SIZE", default_value_t = BlockSize::default())]
    block_size: BlockSize,
    /// Host OS the image declares itself for: _any, flatcar, ID:VERSION_ID (e.g.
    /// ubuntu:24.04) or ID@SYSEXT_LEVEL. systemd skips images that do not match, silently.
    #[arg(long, value_name = "OS", default_value = "_any")]
    pub(super) os: OsTarget,
    /// Fetch every upstream file from this base URL instead (http(s):// or file:///): the
    /// upstream host is replaced and the path kept, for air-gapped sites.
    #[arg(long, value_name = "URL", env = "BAKERY_MIRROR")]
    mirror: Option<Mirror>,
    /// Download cache [default: $XDG_CACHE_HOME/bakery or ~/.cache/bakery].
    #[arg(long, value_name = "DIR", env = "BAKERY_CACHE")]
    cache: Option<PathBuf>,
    /// Read recipes from this directory instead of the built-in ones.
    #[arg(long, value_name = "DIR", env = "BAKERY_RECIPES")]
    recipes: Option<PathBuf>,
    /// Rebuild from an inputs lock (an image's /usr/share/sysext/<ext>/inputs.json, or the
    /// `inputs` of `create --json`): the lock's digests vouch for every artifact and no
    /// checksum file or variable is fetched.
    #[arg(long, value_name = "FILE")]
    locked: Option<PathBuf>,
    /// Never use the network: everything must already be in the cache (with --locked, a
    /// rebuild of an image built before on this machine).
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    net: NetArgs,
    /// Refuse an upstream archive that unpacks to more than this (e.g. 4G, 512M): a small
    /// download must not fill the cache and the image with gigabytes.
    #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = crate::archive::parse_size)]
    max_unpacked: u64,
    /// Compression threads [default: all CPUs].
    #[arg(long, short, value_name = "N")]
    jobs: Option<NonZeroUsize>,
    /// Sign the image with this private key (PKCS#8 PEM), writing <IMAGE>.sig beside it.
    #[arg(long, value_name = "KEY")]
    key: Option<PathBuf>,
    /// Replace an existing image of the same name.
    #[arg(long)]
    force: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) fn load_recipes(dir: Option<&PathBuf>) -> Result<Recipes> {
    Ok(match dir {
        Some(d) => Recipes::from_dir(d)?,
        None => Recipes::embedded()?,
    })
}

fn default_cache() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("bakery"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| anyhow!("neither XDG_CACHE_HOME nor HOME is set; pass --cache DIR"))?;
    Ok(PathBuf::from(home).join(".cache/bakery"))
}

/// `SOURCE_DATE_EPOCH` (reproducible-builds.org), default 0.
fn source_date_epoch() -> Result<u32> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v.trim().parse::<u32>().map_err(|_| {
            anyhow!("SOURCE_DATE_EPOCH='{v}': expected seconds since 1970 that fit squashfs's 32-bit timestamps")
        }),
        _ => Ok(0),
    }
}

/// Reads an inputs lock, alone or as the `inputs` of `bakery create --json`.
fn read_lock(path: &PathBuf) -> Result<InputsLock> {
    let text = fs_err::read_to_string(path)?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let lock = value.get("inputs").filter(|v| v.is_object()).cloned().unwrap_or(value);
    serde_json::from_value(lock).with_context(|| format!("{}: not an inputs lock", path.display()))
}

impl CreateArgs {
    fn into_request(self) -> Result<(CreateRequest, bool)> {
        let recipes = load_recipes(self.recipes.as_ref())?;
        let recipe = recipes.get(&self.extension)?.clone();
        let version = recipe.parse_version(&self.version)?;
        recipe.upstream_arch(self.arch)?;
        let cache_dir = match self.cache {
            Some(c) => c,
            None => default_cache()?,
        };
        let mut image = ImageOptions {
            compression: self.compression,
            level: self.level,
            block_size: self.block_size,
            mtime: source_date_epoch()?,
            ..ImageOptions::default()
        };
        if let Some(j) = self.jobs {
            image.threads = j;
        }
        // Read the key and the lock before any download, so a typo fails in milliseconds.
        let key = match &self.key {
            Some(path) => Some(PrivateKey::read_pem(path)?),
            None => None,
        };
        let locked = self.locked.as_ref().map(read_lock).transpose()?;
        let req = CreateRequest {
            key,
            recipe,
            version,
            arch: self.arch,
            os: self.os,
            image,
            output_dir: self.output,
            force: self.force,
            max_unpacked: self.max_unpacked,
            locked,
            fetch: FetchOptions {
                mirror: self.mirror.unwrap_or_default(),
                cache_dir,
                http: self.net.http_options(),
                offline: self.offline,
            },
        };
        Ok((req, self.json))
    }
}

pub(super) fn run(args: CreateArgs) -> Result<()> {
    let (req, json) = args.into_request()?;
    let created = create(&req).with_context(|| format!("building {}", req.image_name()))?;
    if json {
        cli_support::print_json(&created)?;
    } else {
        eprintln!(
            "built {} ({:.1} MiB, {} inodes), sha256 {}",
            created.file,
            created.size as f64 / (1024.0 * 1024.0),
            created.summary.inodes,
            created.sha256
        );
        if let Some(id) = &created.signed_by {
            eprintln!("signed with key {id}");
        }
        println!("{}", created.path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;
    use super::*;

    #[test]
    fn parses() {
        let cmd = parse(&["create", "kubernetes", "v1.31.3", "--arch", "x86-64"]).unwrap();
        assert!(matches!(cmd, Command::Create(ref a) if a.arch == Arch::X86_64 && a.os == OsTarget::Any));
        let cmd = parse(&[
            "create",
            "containerd",
            "2.0.4",
            "--arch",
            "arm64",
            "--compression",
            "xz",
            "--block-size",
            "128K",
            "--os",
            "ubuntu:24.04",
            "--mirror",
            "http://m",
            "--cache",
            "/c",
            "--output",
            "/o",
            "--timeout",
            "5s",
            "--retries",
            "0",
            "--json",
        ])
        .unwrap();
        let Command::Create(a) = cmd else { panic!("create") };
        assert!(a.compression == Compression::Xz && a.json);
        assert_eq!(a.net.http_options().timeout, std::time::Duration::from_secs(5));
        assert_eq!(a.net.http_options().retries, 0);
    }

    #[test]
    fn bad_values_are_refused_at_parse_time() {
        let err = parse(&["create", "kubernetes", "v1.31.3", "--arch", "amd64"]).unwrap_err().to_string();
        assert!(err.contains("did you mean x86-64?"), "{err}");
        assert!(parse(&["create", "kubernetes", "v1.31.3"]).is_err(), "--arch is required");
        assert!(parse(&["create", "k", "v1", "--arch", "arm64", "--os", "ubuntu"]).is_err());
        assert!(parse(&["create", "k", "v1", "--arch", "arm64", "--block-size", "3000"]).is_err());
        assert!(parse(&["create", "k", "v1", "--arch", "arm64", "--mirror", "dl.k8s.io"]).is_err());
        assert!(parse(&["create", "k", "v1", "--arch", "arm64", "--timeout", "soon"]).is_err());
    }
}
