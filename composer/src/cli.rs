//! Command-line interface: argument parsing and dispatch. Every command validates its
//! arguments into a request type before any I/O happens.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use release_index::Arch;
use serde::Serialize;
use signing::PublicKey;

use crate::compose::{check, compose, CheckReport, CheckRequest, ComposeReport, ComposeRequest};
use crate::input::OutputFormat;
use crate::inspect::inspect;
use crate::source::{ExtensionSource, ReleaseIndex};
use crate::target::{Overrides, TargetChoice};
use release_index::index::BaseUrl;
use release_index::source::ReleaseSource;

/// Put systemd system extensions into stock Flatcar and Ubuntu disk images, without root.
///
/// composer writes extension images into the root filesystem of a copy of a disk image
/// with e2fsprogs (no mounting, no loop devices), after checking that systemd-sysext on that
/// image would actually merge them.
#[derive(Debug, Parser)]
#[command(name = "composer", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Compose(Box<ComposeArgs>),
    Check(CheckArgs),
    Inspect(InspectArgs),
    Serve(ServeArgs),
}

/// Which image, which extensions, and what the image cannot tell about itself.
#[derive(Debug, Args)]
struct TargetArgs {
    /// Input disk image: raw, qcow2, or raw compressed with xz, zstd or bzip2. Never modified.
    #[arg(long, value_name = "IN")]
    image: PathBuf,
    /// An extension image file (<name>-<version>-<arch>.raw) or NAME@CHANNEL from the
    /// release index. Repeat for each extension.
    #[arg(long = "extension", short = 'e', value_name = "FILE|NAME@CHANNEL", required = true)]
    extensions: Vec<ExtensionSource>,
    /// Signed release index for NAME@CHANNEL extensions: the http(s) URL or directory a
    /// release was published to (`bakery publish`). Needs --pubkey.
    #[arg(long, value_name = "URL|DIR")]
    index: Option<ReleaseSource>,
    /// Public key (SPKI PEM): every image file must have a valid <file>.sig, and the release
    /// index must be signed by it.
    #[arg(long, value_name = "PUB")]
    pubkey: Option<PathBuf>,
    /// Which layout to expect: auto detects Flatcar (PARTLABEL ROOT) or Ubuntu (filesystem
    /// label cloudimg-rootfs).
    #[arg(long, value_name = "DISTRO", value_enum, default_value = "auto")]
    target: TargetChoice,
    #[command(flatten)]
    facts: FactArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// What an image cannot always tell about itself.
#[derive(Debug, Args)]
struct FactArgs {
    /// The image's os-release, when it cannot be read from the image (Flatcar's USR-A is
    /// btrfs since 3794).
    #[arg(long, value_name = "FILE")]
    os_release: Option<PathBuf>,
    /// The image's architecture, when it cannot be read from the image.
    #[arg(long, value_name = "ARCH")]
    arch: Option<Arch>,
}

impl FactArgs {
    fn overrides(&self) -> Overrides {
        Overrides { os_release: self.os_release.clone(), arch: self.arch }
    }
}

/// Write extensions into a copy of a disk image.
///
/// Installs each image as /opt/extensions/<name>/<file> with the link
/// /etc/extensions/<name>.raw, enables systemd-sysext.service on Ubuntu, optionally adds
/// systemd-sysupdate transfer files, checks the filesystem with e2fsck and only then renames
/// the result to OUT. Refuses extensions systemd would skip at boot.
#[derive(Debug, Args)]
struct ComposeArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Output image (must not exist); written through a temporary file beside it.
    #[arg(long, value_name = "OUT")]
    out: PathBuf,
    /// Output format.
    #[arg(long, value_name = "FORMAT", value_enum, default_value = "raw")]
    output_format: OutputFormat,
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
struct CheckArgs {
    #[command(flatten)]
    target: TargetArgs,
}

/// Show partitions, the detected distribution, os-release and installed extensions.
#[derive(Debug, Args)]
struct InspectArgs {
    /// Disk image: raw, qcow2, or compressed raw.
    #[arg(long, value_name = "IN")]
    image: PathBuf,
    #[command(flatten)]
    facts: FactArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Serve a release directory over HTTP(S), in the layout bakery publish writes.
///
/// GET and HEAD with single byte ranges, strong ETags and conditional requests. A release
/// managed by bakery publish (DIR -> DIR.generations/<serial>) is followed per request: a
/// publish takes effect at once, and a download that started before it is completed from the
/// generation it started in. Nothing outside the directory is served: no symlinks, hidden
/// files or listings. The first line on stdout is "listening on URL"; the access log goes to
/// stderr. SIGTERM or SIGINT stops accepting and lets in-flight downloads finish.
#[derive(Debug, Args)]
struct ServeArgs {
    /// The release directory (or a plain copy of one, e.g. made with rsync).
    #[arg(value_name = "RELEASE_DIR")]
    release_dir: PathBuf,
    /// Address to listen on, IP:PORT; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: std::net::SocketAddr,
    /// Serve HTTPS with this PEM certificate chain (leaf first). Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Access log format on stderr: one line of text, or one JSON object, per request.
    #[arg(long, value_name = "FORMAT", value_enum, default_value = "text")]
    log_format: crate::serve::LogFormat,
    /// After SIGTERM or SIGINT, how long in-flight requests may take (e.g. 30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: std::time::Duration,
}

impl ServeArgs {
    fn options(&self) -> crate::serve::ServeOptions {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::serve::TlsFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        };
        crate::serve::ServeOptions {
            release_dir: self.release_dir.clone(),
            listen: self.listen,
            tls,
            log_format: self.log_format,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

impl TargetArgs {
    fn request(&self) -> Result<CheckRequest> {
        let pubkey = match &self.pubkey {
            Some(p) => Some(PublicKey::read_pem(p).with_context(|| format!("reading --pubkey {}", p.display()))?),
            None => None,
        };
        let index = match (&self.index, &pubkey) {
            (Some(source), Some(key)) => Some(
                ReleaseIndex::open(source.clone(), key.clone())
                    .with_context(|| format!("opening the release index at {source}"))?,
            ),
            (Some(source), None) => {
                bail!("--index {source} needs --pubkey: a release index is trusted only once its signature verifies")
            }
            (None, _) => None,
        };
        Ok(CheckRequest {
            image: self.image.clone(),
            extensions: self.extensions.clone(),
            index,
            pubkey,
            target: self.target,
            overrides: self.facts.overrides(),
        })
    }
}

impl ComposeArgs {
    fn request(&self) -> Result<ComposeRequest> {
        let check = self.target.request()?;
        let sysupdate = if self.sysupdate {
            match (&self.sysupdate_url, &check.index) {
                (Some(u), _) => Some(u.to_string()),
                // The URL the signed index says the release is served from.
                (None, Some(index)) => Some(index.base_url().to_string()),
                _ => bail!("--sysupdate needs the URL nodes update from: pass --sysupdate-url URL (or --index)"),
            }
        } else {
            None
        };
        Ok(ComposeRequest { check, out: self.out.clone(), output_format: self.output_format, sysupdate })
    }
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn render_check(r: &CheckReport) -> String {
    let mut s = format!(
        "{}: {:?}, root in partition {} '{}', {} ({}), {}\n",
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

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Compose(args) => {
            let req = args.request()?;
            let report = compose(&req).with_context(|| format!("composing {}", req.out.display()))?;
            if args.target.json {
                print_json(&report)?;
            } else {
                eprint!("{}", render_compose(&report));
                println!("{}", report.out.display());
            }
        }
        Command::Check(args) => {
            let req = args.target.request()?;
            let report = check(&req).with_context(|| format!("checking {}", req.image.display()))?;
            if args.target.json {
                print_json(&report)?;
            } else {
                print!("{}", render_check(&report));
            }
        }
        Command::Inspect(args) => {
            let overrides = args.facts.overrides();
            let report =
                inspect(&args.image, &overrides).with_context(|| format!("inspecting {}", args.image.display()))?;
            if args.json {
                print_json(&report)?;
            } else {
                print!("{}", report.render());
            }
        }
        Command::Serve(args) => {
            crate::serve::run(&args.options()).with_context(|| format!("serving {}", args.release_dir.display()))?
        }
    }
    Ok(())
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
        let cli = Cli::try_parse_from([
            "composer",
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
        let Command::Compose(a) = cli.command else { panic!("compose") };
        assert_eq!(a.output_format, OutputFormat::Qcow2);
        assert_eq!(a.target.target, TargetChoice::Flatcar);
        assert!(matches!(a.target.extensions[1], ExtensionSource::Channel(_)));
        assert_eq!(a.request().unwrap().sysupdate.as_deref(), Some("https://x/"));

        let cli = Cli::try_parse_from(["composer", "check", "--image", "i", "-e", "x-1.0-arm64.raw"]).unwrap();
        assert!(matches!(cli.command, Command::Check(_)));
        let cli = Cli::try_parse_from(["composer", "inspect", "--image", "i", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Inspect(ref a) if a.json));
        let cli = Cli::try_parse_from(["composer", "serve", "release", "--listen", "127.0.0.1:0"]).unwrap();
        let Command::Serve(a) = cli.command else { panic!("serve") };
        let o = a.options();
        assert!(o.tls.is_none() && o.log_format == crate::serve::LogFormat::Text);
        assert_eq!(o.shutdown_grace, std::time::Duration::from_secs(30));
        let cli = Cli::try_parse_from([
            "composer",
            "serve",
            "r",
            "--listen",
            "[::1]:8443",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--log-format",
            "json",
            "--shutdown-grace",
            "2m",
        ])
        .unwrap();
        let Command::Serve(a) = cli.command else { panic!("serve") };
        let o = a.options();
        assert_eq!(o.tls.unwrap().key, PathBuf::from("k.pem"));
        assert_eq!((o.listen.port(), o.log_format), (8443, crate::serve::LogFormat::Json));
        assert_eq!(o.shutdown_grace, std::time::Duration::from_secs(120));
    }

    #[test]
    fn bad_values_are_refused_at_parse_time() {
        assert!(Cli::try_parse_from(["composer", "compose", "--image", "i", "--out", "o"]).is_err(), "-e required");
        assert!(Cli::try_parse_from(["composer", "check", "--image", "i", "-e", "Kube@1"]).is_err());
        let err = Cli::try_parse_from(["composer", "check", "--image", "i", "-e", "x", "--arch", "amd64"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean x86-64?"), "{err}");
        let cli = Cli::try_parse_from(["composer", "compose", "--image", "i", "--out", "o", "-e", "x", "--sysupdate"])
            .unwrap();
        let Command::Compose(a) = cli.command else { panic!("compose") };
        assert!(a.request().unwrap_err().to_string().contains("--sysupdate-url"));

        for bad in [
            &["composer", "serve", "r"][..],
            &["composer", "serve", "r", "--listen", "localhost"],
            &["composer", "serve", "r", "--listen", "127.0.0.1:99999"],
            &["composer", "serve", "r", "--listen", "127.0.0.1:0", "--tls-cert", "c.pem"],
            &["composer", "serve", "r", "--listen", "127.0.0.1:0", "--log-format", "xml"],
            &["composer", "serve", "r", "--listen", "127.0.0.1:0", "--shutdown-grace", "soon"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let err = Cli::try_parse_from(["composer", "serve", "r", "--listen", "nonsense"]).unwrap_err().to_string();
        assert!(err.contains("'nonsense'") && err.contains("--listen <ADDR>"), "{err}");
    }
}
