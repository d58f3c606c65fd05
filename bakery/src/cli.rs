//! Command-line interface: argument parsing and dispatch. Every command validates its
//! arguments into a request type before any I/O happens.

use std::ffi::OsString;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand};
use release_index::extension_release::OsTarget;
use release_index::index::BaseUrl;
use release_index::publish::{publish, PublishOptions};
use release_index::source::ReleaseSource;
use release_index::timestamp::Timestamp;
use release_index::verify::{verify_release, VerifyOptions};
use release_index::Arch;
use serde::Serialize;

use crate::create::{create, CreateRequest};
use crate::fetch::{FetchOptions, Mirror};
use crate::image::{BlockSize, Compression, ImageOptions};
use crate::inspect::inspect;
use crate::recipe::Recipes;
use signing::{PrivateKey, PublicKey};

/// Build reproducible systemd-sysext images for Kubernetes nodes.
///
/// bakery downloads upstream release binaries, verifies them against their published
/// checksums while downloading, lays them out with their systemd units, and writes a
/// squashfs system extension that systemd-sysext merges on Flatcar, Ubuntu and other
/// systemd distributions.
#[derive(Debug, Parser)]
#[command(name = "bakery", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Create(Box<CreateArgs>),
    List(ListArgs),
    Inspect(InspectArgs),
    Keygen(KeygenArgs),
    Sign(SignArgs),
    Verify(VerifyArgs),
    Publish(PublishArgs),
    VerifyRelease(VerifyReleaseArgs),
}

/// Add images to a signed release directory that systemd-sysupdate and composer consume.
///
/// Writes Flatcar's sysext-bakery layout (images and .sig, SHA256SUMS and <ext>/SHA256SUMS
/// with signatures, <ext>/<ext>.conf and per-minor transfer files in .conf and .transfer
/// form, noop.conf) plus index.json and index.json.sig. The directory is a symlink to a
/// complete generation, swapped in one rename: if anything fails, the previous release stays
/// in place, valid. Without IMAGEs, re-signs the current release with a new expiry.
#[derive(Debug, Args)]
struct PublishArgs {
    /// Images to add, named <EXTENSION>-<VERSION>-<ARCH>.raw.
    images: Vec<PathBuf>,
    /// Release directory (created on the first publish).
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// Release signing key (PKCS#8 PEM); must be the key that signed the current release.
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// http(s) URL the release directory is served from; required on the first publish,
    /// remembered in index.json after. Transfer files point into it.
    #[arg(long, value_name = "URL")]
    base_url: Option<BaseUrl>,
    /// How long the index stays valid; nodes refuse it afterwards. E.g. 30d, 12h, 2w.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = release_index::timestamp::parse_duration)]
    expires: Duration,
    /// Generations to keep in <DIR>.generations, the new one included.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..))]
    keep: u16,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Check a release directory or URL: signatures, digests, serial and expiry, SHA256SUMS and
/// transfer files against the index, missing and unlisted files. Reports every problem and
/// exits non-zero if there is any.
#[derive(Debug, Args)]
struct VerifyReleaseArgs {
    /// Release directory, file:// URL or http(s):// URL.
    source: ReleaseSource,
    /// The release's public key (SPKI PEM).
    #[arg(long, value_name = "PUB")]
    pubkey: PathBuf,
    /// Also refuse an index whose serial is lower than this (the last one you accepted).
    #[arg(long, value_name = "N")]
    min_serial: Option<u64>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Generate an Ed25519 signing key pair.
///
/// Writes DIR/private.pem (PKCS#8, mode 0600) and DIR/public.pem (SPKI); refuses to overwrite
/// either. Prints the key id: the first 16 hex characters of sha256 of the raw public key.
#[derive(Debug, Args)]
struct KeygenArgs {
    /// Directory for the key pair (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Sign a file, writing the raw 64-byte Ed25519 signature to FILE.sig.
///
/// Anyone can check it with OpenSSL 3: `openssl pkeyutl -verify -pubin -inkey public.pem
/// -rawin -in FILE -sigfile FILE.sig`.
#[derive(Debug, Args)]
struct SignArgs {
    /// File to sign.
    file: PathBuf,
    /// Private key (PKCS#8 PEM).
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
}

/// Check FILE.sig against FILE; exits non-zero and says why when it does not verify.
#[derive(Debug, Args)]
struct VerifyArgs {
    /// Signed file.
    file: PathBuf,
    /// Public key (SPKI PEM).
    #[arg(long, value_name = "PUB")]
    pubkey: PathBuf,
}

/// Build an extension image from upstream release binaries.
///
/// Writes <EXTENSION>-<VERSION>-<ARCH>.raw into the output directory, e.g.
/// `bakery create kubernetes v1.31.3 --arch x86-64` writes kubernetes-v1.31.3-x86-64.raw.
/// Two builds of the same inputs are bit-identical; timestamps come from SOURCE_DATE_EPOCH
/// (default 0).
#[derive(Debug, Args)]
struct CreateArgs {
    /// Extension to build (see `bakery list`).
    extension: String,
    /// Upstream version in upstream's tag form, e.g. v1.31.3 (kubernetes), 2.0.4 (containerd).
    version: String,
    /// Target architecture, as systemd names it: x86-64 or arm64.
    #[arg(long, value_name = "ARCH")]
    arch: Arch,
    /// Directory to write the image into (created if missing).
    #[arg(long, short, value_name = "DIR", default_value = ".")]
    output: PathBuf,
    /// Compression of data and metadata blocks: zstd, xz, gzip or lz4.
    #[arg(long, value_name = "ALGORITHM", default_value_t = Compression::default())]
    compression: Compression,
    /// Compression level: zstd 1-22 (default 16, tuned for executables), xz 0-9 (6),
    /// gzip 1-9 (9); lz4 has none. See bench/README.md for the size/time trade-off.
    #[arg(long, value_name = "N")]
    level: Option<i32>,
    /// squashfs block size: a power of two from 4K to 1M.
    #[arg(long, value_name = "SIZE", default_value_t = BlockSize::default())]
    block_size: BlockSize,
    /// Host OS the image declares itself for: _any, flatcar, ID:VERSION_ID (e.g.
    /// ubuntu:24.04) or ID@SYSEXT_LEVEL. systemd skips images that do not match, silently.
    #[arg(long, value_name = "OS", default_value = "_any")]
    os: OsTarget,
    /// Fetch every upstream file from this base URL instead (http(s):// or file:///): the
    /// upstream host is replaced and the path kept, for air-gapped sites.
    #[arg(long, value_name = "URL", env = "BAKERY_MIRROR")]
    mirror: Option<String>,
    /// Download cache [default: $XDG_CACHE_HOME/bakery or ~/.cache/bakery].
    #[arg(long, value_name = "DIR", env = "BAKERY_CACHE")]
    cache: Option<PathBuf>,
    /// Read recipes from this directory instead of the built-in ones.
    #[arg(long, value_name = "DIR", env = "BAKERY_RECIPES")]
    recipes: Option<PathBuf>,
    /// Retries after a connection error or an HTTP 408, 429 or 5xx answer.
    #[arg(long, value_name = "N", default_value_t = 4)]
    retries: u32,
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
    json: bool,
}

/// List the recipes and the architectures they build.
#[derive(Debug, Args)]
struct ListArgs {
    /// Read recipes from this directory instead of the built-in ones.
    #[arg(long, value_name = "DIR", env = "BAKERY_RECIPES")]
    recipes: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Show an image's extension-release, inputs, files with modes and sizes, and digest.
#[derive(Debug, Args)]
struct InspectArgs {
    /// Image file.
    image: PathBuf,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn load_recipes(dir: Option<&PathBuf>) -> Result<Recipes> {
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

impl CreateArgs {
    fn into_request(self) -> Result<(CreateRequest, bool)> {
        let recipes = load_recipes(self.recipes.as_ref())?;
        let recipe = recipes.get(&self.extension)?.clone();
        let version = recipe.parse_version(&self.version)?;
        recipe.upstream_arch(self.arch)?;
        let mirror = match &self.mirror {
            Some(m) => Mirror::parse(m)?,
            None => Mirror::Upstream,
        };
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
        // Read the key before any download, so a typo fails in milliseconds.
        let key = match &self.key {
            Some(path) => Some(PrivateKey::read_pem(path)?),
            None => None,
        };
        let req = CreateRequest {
            key,
            recipe,
            version,
            arch: self.arch,
            os: self.os,
            image,
            output_dir: self.output,
            force: self.force,
            fetch: FetchOptions { mirror, cache_dir, retries: self.retries, backoff: Duration::from_millis(500) },
        };
        Ok((req, self.json))
    }
}

#[derive(Serialize)]
struct RecipeListing<'a> {
    name: &'a str,
    description: &'a str,
    example_version: &'a str,
    arches: Vec<String>,
    artifacts: Vec<&'a str>,
}

fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Create(args) => {
            let (req, json) = args.into_request()?;
            let created = create(&req).with_context(|| format!("building {}", req.image_name()))?;
            if json {
                print_json(&created)?;
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
        }
        Command::List(args) => {
            let recipes = load_recipes(args.recipes.as_ref())?;
            let listing: Vec<RecipeListing<'_>> = recipes
                .iter()
                .map(|r| RecipeListing {
                    name: r.name.as_str(),
                    description: &r.description,
                    example_version: &r.version.example,
                    arches: r.arch.keys().map(ToString::to_string).collect(),
                    artifacts: r.artifacts.iter().map(|a| a.name.as_str()).collect(),
                })
                .collect();
            if args.json {
                print_json(&listing)?;
            } else {
                for r in &listing {
                    println!("{:<12} {:<14} {:<14} {}", r.name, r.arches.join(","), r.example_version, r.description);
                }
            }
        }
        Command::Keygen(args) => {
            let id = signing::keygen(&args.out)?;
            eprintln!("wrote {} and {}", args.out.join("private.pem").display(), args.out.join("public.pem").display());
            println!("{id}");
        }
        Command::Sign(args) => {
            let key = PrivateKey::read_pem(&args.key)?;
            let sig = key.sign_file(&args.file).with_context(|| format!("signing {}", args.file.display()))?;
            eprintln!("signed with key {}", key.key_id());
            println!("{}", sig.display());
        }
        Command::Verify(args) => {
            let key = PublicKey::read_pem(&args.pubkey)?;
            key.verify_file(&args.file)?;
            println!("{}: good signature from key {}", args.file.display(), key.key_id());
        }
        Command::Publish(args) => run_publish(args)?,
        Command::VerifyRelease(args) => run_verify_release(args)?,
        Command::Inspect(args) => {
            let report = inspect(&args.image).with_context(|| format!("inspecting {}", args.image.display()))?;
            if args.json {
                print_json(&report)?;
            } else {
                print!("{}", report.render());
            }
        }
    }
    Ok(())
}

fn run_publish(args: PublishArgs) -> Result<()> {
    let key = PrivateKey::read_pem(&args.key)?;
    let images = args.images.iter().map(|p| crate::release::new_image(p)).collect::<Result<Vec<_>>>()?;
    let opts = PublishOptions {
        release_dir: &args.to,
        key: &key,
        base_url: args.base_url,
        valid_for: args.expires,
        now: Timestamp::now(),
        keep_generations: usize::from(args.keep),
        fail_after: None,
    };
    let published = publish(&images, &opts).with_context(|| format!("publishing to {}", args.to.display()))?;
    let index = &published.index;
    if args.json {
        #[derive(Serialize)]
        #[serde(rename_all = "kebab-case")]
        struct Out<'a> {
            release: &'a std::path::Path,
            generation: &'a std::path::Path,
            serial: u64,
            expires: Timestamp,
            key_id: String,
            added: Vec<String>,
            unchanged: Vec<String>,
        }
        print_json(&Out {
            release: &args.to,
            generation: &published.generation,
            serial: index.serial,
            expires: index.expires,
            key_id: index.key_id.to_string(),
            added: published.added.iter().map(ToString::to_string).collect(),
            unchanged: published.unchanged.iter().map(ToString::to_string).collect(),
        })?;
    } else {
        for name in &published.added {
            eprintln!("added     {name}");
        }
        for name in &published.unchanged {
            eprintln!("unchanged {name} (already published, identical)");
        }
        eprintln!("published serial {} with key {}, valid until {}", index.serial, index.key_id, index.expires);
        println!("{}", args.to.display());
    }
    Ok(())
}

fn run_verify_release(args: VerifyReleaseArgs) -> Result<()> {
    let key = PublicKey::read_pem(&args.pubkey)?;
    let inspect =
        |path: &std::path::Path, name: &release_index::ExtensionName| crate::release::extension_release(path, name);
    let opts =
        VerifyOptions { pubkey: &key, now: Timestamp::now(), min_serial: args.min_serial, inspect: Some(&inspect) };
    let report = verify_release(&args.source, &opts);
    if args.json {
        print_json(&report)?;
    } else {
        for p in &report.problems {
            println!("FAIL {}: {}", p.path, p.message);
        }
        if !report.unlisted_checked {
            eprintln!("note: {} is not a directory; files the index does not list cannot be looked for", report.source);
        }
    }
    let serial = report.serial.map_or_else(|| "unknown".to_owned(), |s| s.to_string());
    match report.problems.len() {
        0 => {
            if !args.json {
                println!(
                    "{}: OK, serial {serial}, {} files checked, key {}, valid until {}",
                    report.source,
                    report.files_checked,
                    report.key_id,
                    report.expires.map(|e| e.to_string()).unwrap_or_default()
                );
            }
            Ok(())
        }
        n => Err(anyhow!("{}: {n} problem{} found (serial {serial})", report.source, if n == 1 { "" } else { "s" })),
    }
}

/// Parses `args` (including the program name), runs the command, prints any error with its
/// full context chain, and returns the process exit code.
pub fn main_from_iter<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_every_command() {
        let cli = Cli::try_parse_from(["bakery", "create", "kubernetes", "v1.31.3", "--arch", "x86-64"]).unwrap();
        assert!(matches!(cli.command, Command::Create(ref a) if a.arch == Arch::X86_64 && a.os == OsTarget::Any));
        let cli = Cli::try_parse_from([
            "bakery",
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
            "--json",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Create(ref a) if a.compression == Compression::Xz && a.json));
        assert!(matches!(Cli::try_parse_from(["bakery", "list", "--json"]).unwrap().command, Command::List(_)));
        assert!(matches!(Cli::try_parse_from(["bakery", "inspect", "x.raw"]).unwrap().command, Command::Inspect(_)));
        assert!(matches!(Cli::try_parse_from(["bakery", "keygen", "--out", "k"]).unwrap().command, Command::Keygen(_)));
        assert!(matches!(
            Cli::try_parse_from(["bakery", "sign", "f", "--key", "k"]).unwrap().command,
            Command::Sign(_)
        ));
        assert!(matches!(
            Cli::try_parse_from(["bakery", "verify", "f", "--pubkey", "p"]).unwrap().command,
            Command::Verify(_)
        ));
        assert!(Cli::try_parse_from(["bakery", "sign", "f"]).is_err(), "--key is required");
        let publish = Cli::try_parse_from(["bakery", "publish", "a.raw", "b.raw", "--to", "r", "--key", "k"]).unwrap();
        assert!(matches!(publish.command,
            Command::Publish(ref a) if a.images.len() == 2 && a.expires == Duration::from_secs(30 * 86_400) && a.keep == 3));
        assert!(Cli::try_parse_from(["bakery", "publish", "--to", "r", "--key", "k", "--keep", "1"]).is_err());
        let verify = Cli::try_parse_from(["bakery", "verify-release", "https://x.example/r", "--pubkey", "p"]).unwrap();
        assert!(matches!(verify.command,
            Command::VerifyRelease(ref a) if a.source == ReleaseSource::Url("https://x.example/r/".into())));
    }

    #[test]
    fn bad_values_are_refused_at_parse_time() {
        let err = Cli::try_parse_from(["bakery", "create", "kubernetes", "v1.31.3", "--arch", "amd64"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean x86-64?"), "{err}");
        assert!(Cli::try_parse_from(["bakery", "create", "kubernetes", "v1.31.3"]).is_err(), "--arch is required");
        assert!(Cli::try_parse_from(["bakery", "create", "k", "v1", "--arch", "arm64", "--os", "ubuntu"]).is_err());
        assert!(
            Cli::try_parse_from(["bakery", "create", "k", "v1", "--arch", "arm64", "--block-size", "3000"]).is_err()
        );
    }
}
