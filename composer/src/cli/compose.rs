//! `compose` and `check`, which share how the image and the extensions are named.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use cli_support::NetArgs;
use release_index::http::HttpClient;
use release_index::source::ReleaseSource;
use signing::PublicKey;
use sysext_model::{Arch, BaseUrl};

use crate::compose::{check, compose, CheckReport, CheckRequest, ComposeReport, ComposeRequest};
use crate::disk::input::OutputFormat;
use crate::disk::target::{Overrides, TargetChoice};
use crate::source::{ExtensionSource, ReleaseIndex};

/// One `--extension`: a file, `NAME@CHANNEL` from `--index`, or `oci://REGISTRY/REPO:NAME@CHANNEL`,
/// which names the release too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ExtensionArg {
    /// The release it names, if it names one.
    pub(super) index: Option<ReleaseSource>,
    /// The extension.
    pub(super) source: ExtensionSource,
}

impl std::str::FromStr for ExtensionArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !release_index::oci::is_oci(s) {
            return s
                .parse()
                .map(|source| Self { index: None, source })
                .map_err(|e: crate::source::SourceParseError| e.to_string());
        }
        let Some((repo, channel)) = s.rsplit_once(':').filter(|(_, c)| c.contains('@')) else {
            return Err(format!("{s}: an extension from a registry is oci://REGISTRY/REPOSITORY:NAME@CHANNEL"));
        };
        let index: ReleaseSource = repo.parse().map_err(|e: release_index::source::SourceError| e.to_string())?;
        let channel: sysext_model::ChannelRef =
            channel.parse().map_err(|e: sysext_model::ChannelRefParseError| format!("{s}: {e}"))?;
        Ok(Self { index: Some(index), source: ExtensionSource::Channel(channel) })
    }
}

/// The one release the arguments name: `--index`, or the release every `oci://…:NAME@CHANNEL`
/// names; two different ones are an error (one signed index per run).
pub(super) fn one_release<'a>(
    index: Option<&'a ReleaseSource>,
    named: impl IntoIterator<Item = (&'a ReleaseSource, String)>,
) -> Result<Option<ReleaseSource>> {
    let mut chosen: Option<(&ReleaseSource, String)> = index.map(|i| (i, "--index".to_owned()));
    for (release, by) in named {
        match &chosen {
            Some((c, _)) if *c == release => {}
            Some((c, first)) => bail!(
                "{by} names the release {release}, but {first} names {c}: extensions come from one signed release index per run"
            ),
            None => chosen = Some((release, by)),
        }
    }
    Ok(chosen.map(|(r, _)| r.clone()))
}

/// Which image, which extensions, and what the image cannot tell about itself.
#[derive(Debug, Args)]
pub(super) struct TargetArgs {
    /// Input disk image: raw, qcow2, or raw compressed with xz, zstd or bzip2. Never modified.
    #[arg(long, value_name = "IN")]
    image: PathBuf,
    /// An extension image file (<name>-<version>-<arch>.raw), NAME@CHANNEL from the release
    /// index, or oci://REGISTRY/REPO:NAME@CHANNEL from the release in that registry. Repeat for
    /// each extension.
    #[arg(long = "extension", short = 'e', value_name = "FILE|NAME@CHANNEL", required = true)]
    pub(super) extensions: Vec<ExtensionArg>,
    /// Signed release index for NAME@CHANNEL extensions: the http(s) URL, directory or
    /// oci://REGISTRY/REPO a release was published to (`bakery publish`). Needs --pubkey.
    #[arg(long, value_name = "URL|DIR|OCI")]
    index: Option<ReleaseSource>,
    /// Refuse a release index whose serial is lower than this (the newest one you have
    /// seen), so a replayed older release cannot be passed off as current.
    #[arg(long, value_name = "N", requires = "index")]
    min_serial: Option<u64>,
    /// Public key (SPKI PEM): every image file must have a valid <file>.sig, and the release
    /// index must be signed by it.
    #[arg(long, value_name = "PUB")]
    pubkey: Option<PathBuf>,
    /// Which layout to expect: auto detects Flatcar (PARTLABEL ROOT) or Ubuntu (filesystem
    /// label cloudimg-rootfs).
    #[arg(long, value_name = "DISTRO", value_enum, default_value = "auto")]
    pub(super) target: TargetChoice,
    #[command(flatten)]
    facts: FactArgs,
    #[command(flatten)]
    net: NetArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub(super) json: bool,
}

/// What an image cannot always tell about itself.
#[derive(Debug, Args)]
pub(super) struct FactArgs {
    /// The image's os-release, when it cannot be read from the image (Flatcar's USR-A is
    /// btrfs since 3794).
    #[arg(long, value_name = "FILE")]
    os_release: Option<PathBuf>,
    /// The image's architecture, when it cannot be read from the image.
    #[arg(long, value_name = "ARCH")]
    arch: Option<Arch>,
    /// The image's systemd major version (e.g. 255), when it cannot be read from the image
    /// (from the name of libsystemd-shared-<version>.so).
    #[arg(long, value_name = "N")]
    systemd_version: Option<u32>,
}

impl FactArgs {
    pub(super) fn overrides(&self) -> Overrides {
        Overrides { os_release: self.os_release.clone(), arch: self.arch, systemd: self.systemd_version }
    }
}

/// Write extensions into a copy of a disk image.
///
/// Installs each image as /opt/extensions/<name>/<file> with the link
/// /etc/extensions/<name>.raw, enables systemd-sysext.service on Ubuntu, optionally adds
/// systemd-sysupdate transfer files, checks the filesystem with e2fsck and only then renames
/// the result to OUT. Refuses extensions systemd would skip at boot.
#[derive(Debug, Args)]
pub(super) struct ComposeArgs {
    #[command(flatten)]
    pub(super) target: TargetArgs,
    /// Output image (must not exist); written through a temporary file beside it.
    #[arg(long, value_name = "OUT")]
    out: PathBuf,
    /// Output format.
    #[arg(long, value_name = "FORMAT", value_enum, default_value = "raw")]
    pub(super) output_format: OutputFormat,
    /// Also install systemd-sysupdate transfer files (/etc/sysupdate.<name>.d/) and noop.conf,
    /// so nodes follow patch releases of the installed minor.
    #[arg(long)]
    sysupdate: bool,
    /// Base URL the transfer files download from (<URL>/<name>/); defaults to the base URL
    /// the signed --index names.
    #[arg(long, value_name = "URL", requires = "sysupdate")]
    sysupdate_url: Option<BaseUrl>,
}

/// Check that systemd-sysext on the image would merge the extensions; writes nothing.
#[derive(Debug, Args)]
pub(super) struct CheckArgs {
    #[command(flatten)]
    target: TargetArgs,
}

impl TargetArgs {
    fn request(&self) -> Result<CheckRequest> {
        let pubkey = match &self.pubkey {
            Some(p) => Some(PublicKey::read_pem(p).with_context(|| format!("reading --pubkey {}", p.display()))?),
            None => None,
        };
        let release = one_release(
            self.index.as_ref(),
            self.extensions.iter().filter_map(|e| e.index.as_ref().map(|i| (i, format!("--extension {}", e.source)))),
        )?;
        let index = match (&release, &pubkey) {
            (Some(source), Some(key)) => {
                let backend = source.backend_with(&HttpClient::new(self.net.http_options())?);
                Some(
                    ReleaseIndex::open(backend, key.clone(), self.min_serial)
                        .with_context(|| format!("opening the release index at {source}"))?,
                )
            }
            (Some(source), None) => {
                bail!("--index {source} needs --pubkey: a release index is trusted only once its signature verifies")
            }
            (None, _) => None,
        };
        Ok(CheckRequest {
            image: self.image.clone(),
            extensions: self.extensions.iter().map(|e| e.source.clone()).collect(),
            index,
            pubkey,
            target: self.target,
            overrides: self.facts.overrides(),
        })
    }
}

impl ComposeArgs {
    pub(super) fn request(&self) -> Result<ComposeRequest> {
        let check = self.target.request()?;
        let sysupdate = if self.sysupdate {
            match (&self.sysupdate_url, &check.index) {
                (Some(u), _) => Some(u.clone()),
                // The URL the signed index says the release is served from.
                (None, Some(index)) => Some(index.base_url().clone()),
                _ => bail!("--sysupdate needs the URL nodes update from: pass --sysupdate-url URL (or --index)"),
            }
        } else {
            None
        };
        Ok(ComposeRequest { check, out: self.out.clone(), output_format: self.output_format, sysupdate })
    }
}

fn render_check(r: &CheckReport) -> String {
    let systemd = match &r.target.systemd {
        Some(s) => format!("systemd {} ({})", s.value, s.from),
        None => "systemd version unknown".to_owned(),
    };
    let mut s = format!(
        "{}: {:?}, root in partition {} '{}', {} ({}), {}, {systemd}\n",
        r.image.display(),
        r.target.distro,
        r.target.root.partition.number,
        r.target.root.partition.label,
        r.target.os_release.value.get("PRETTY_NAME").or(r.target.os_release.value.get("ID")).unwrap_or("?"),
        r.target.os_release.from,
        r.target.arch.value
    );
    for v in &r.extensions {
        let _ = writeln!(
            s,
            "  {}: will merge ({})",
            v.extension.image,
            serde_json::to_string(&v.accepted).unwrap_or_default()
        );
    }
    s
}

fn render_compose(r: &ComposeReport) -> String {
    let mut s = render_check(&r.check);
    for w in &r.written {
        match &w.target {
            Some(t) => {
                let _ = writeln!(s, "  wrote {} -> {t}", w.path);
            }
            None => {
                let _ = writeln!(s, "  wrote {} ({})", w.path, w.kind);
            }
        }
    }
    let _ = writeln!(s, "  free space: {} -> {} bytes", r.free_before, r.free_after);
    s
}

fn warn(r: &CheckReport) {
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
}

pub(super) fn run_compose(args: ComposeArgs) -> Result<()> {
    let req = args.request()?;
    let report = compose(&req).with_context(|| format!("composing {}", req.out.display()))?;
    warn(&report.check);
    if args.target.json {
        cli_support::print_json(&report)?;
    } else {
        eprint!("{}", render_compose(&report));
        println!("{}", report.out.display());
    }
    Ok(())
}

pub(super) fn run_check(args: CheckArgs) -> Result<()> {
    let req = args.target.request()?;
    let report = check(&req).with_context(|| format!("checking {}", req.image.display()))?;
    warn(&report);
    if args.target.json {
        cli_support::print_json(&report)?;
    } else {
        print!("{}", render_check(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;
    use super::*;

    #[test]
    fn parses_compose_and_check() {
        let cmd = parse(&[
            "compose",
            "--image",
            "in.img",
            "--out",
            "out.qcow2",
            "-e",
            "k/kubernetes-v1.31.3-x86-64.raw",
            "--extension",
            "containerd@2.0",
            "--output-format",
            "qcow2",
            "--target",
            "flatcar",
            "--sysupdate",
            "--sysupdate-url",
            "https://x/",
            "--arch",
            "x86-64",
            "--json",
        ])
        .unwrap();
        let Command::Compose(a) = cmd else { panic!("compose") };
        assert_eq!(a.output_format, OutputFormat::Qcow2);
        assert_eq!(a.target.target, TargetChoice::Flatcar);
        assert!(matches!(a.target.extensions[1].source, ExtensionSource::Channel(_)));
        assert_eq!(a.request().unwrap().sysupdate.map(|u| u.to_string()).as_deref(), Some("https://x/"));
        assert!(matches!(parse(&["check", "--image", "i", "-e", "x-1.0-arm64.raw"]).unwrap(), Command::Check(_)));
    }

    #[test]
    fn extensions_can_name_their_registry() {
        let e: ExtensionArg = "oci://127.0.0.1:5000/team/rel:kubernetes@1.31".parse().unwrap();
        assert_eq!(e.index, Some("oci://127.0.0.1:5000/team/rel".parse().unwrap()));
        assert_eq!(e.source, ExtensionSource::Channel("kubernetes@1.31".parse().unwrap()));
        assert!("oci://reg.example/rel".parse::<ExtensionArg>().unwrap_err().contains("REPOSITORY:NAME@CHANNEL"));
        let a: ReleaseSource = "oci://a.example/r".parse().unwrap();
        let b: ReleaseSource = "oci://b.example/r".parse().unwrap();
        assert_eq!(one_release(None, [(&a, "-e x".into()), (&a, "-e y".into())]).unwrap(), Some(a.clone()));
        let err = one_release(Some(&b), [(&a, "-e x".into())]).unwrap_err().to_string();
        assert!(err.contains("one signed release index per run"), "{err}");
        let Command::Check(c) =
            parse(&["check", "--image", "i", "-e", "oci://a.example/r:cni@1", "-e", "oci://b.example/r:k@1"]).unwrap()
        else {
            panic!("check")
        };
        let err = c.target.request().unwrap_err().to_string();
        assert!(
            err.contains(
                "--extension k@1 names the release oci://b.example/r, but --extension cni@1 names oci://a.example/r"
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_refused_at_parse_time() {
        assert!(parse(&["compose", "--image", "i", "--out", "o"]).is_err(), "-e required");
        assert!(parse(&["check", "--image", "i", "-e", "Kube@1"]).is_err());
        assert!(
            parse(&["check", "--image", "i", "-e", "x", "--min-serial", "3"]).is_err(),
            "--min-serial needs --index"
        );
        let err = parse(&["check", "--image", "i", "-e", "x", "--arch", "amd64"]).unwrap_err().to_string();
        assert!(err.contains("did you mean x86-64?"), "{err}");
        let Command::Compose(a) = parse(&["compose", "--image", "i", "--out", "o", "-e", "x", "--sysupdate"]).unwrap()
        else {
            panic!("compose")
        };
        assert!(a.request().unwrap_err().to_string().contains("--sysupdate-url"));
    }
}
