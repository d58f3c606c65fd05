//! `provision`: a provisioning config that installs extensions from a signed release.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use cli_support::NetArgs;
use release_index::http::HttpClient;
use release_index::source::ReleaseSource;
use signing::PublicKey;
use sysext_model::{Arch, BaseUrl, ChannelRef};

use crate::provision::{provision, Format, ProvisionRequest};
use crate::source::ReleaseIndex;

/// Write an Ignition, Butane or cloud-init config that installs extensions at first boot.
///
/// Resolves each NAME@CHANNEL in the signed release index now (the newest matching version
/// for --arch) and writes a config that makes a stock node download those images while it
/// provisions and check each against the SHA-512 (Ignition, Butane) or size, SHA-256 and
/// SHA-512 (cloud-init) from the signed index before using it. The node ends up with the same
/// files, links and units `composer compose` writes into a disk: /opt/extensions/<name>/<file>,
/// the link /etc/extensions/<name>.raw, systemd-sysext.service enabled, on Flatcar the built-in
/// containerd and docker extensions masked when containerd is installed, and with --sysupdate
/// the transfer files. ignition and butane are for Flatcar; cloud-init is for Ubuntu, where the
/// config runs a small verified-download script as composer-provision.service that also merges
/// the extensions and starts their services.
#[derive(Debug, Args)]
#[command(override_usage = "composer provision <FORMAT> --index <URL|DIR> --pubkey <PUB> --arch <ARCH>\n       \
                      --extension <NAME@CHANNEL>... [OPTIONS]")]
pub(super) struct ProvisionArgs {
    /// The config to write.
    #[arg(value_name = "FORMAT", value_enum)]
    pub(super) format: Format,
    /// Signed release index: the http(s) URL or directory a release was published to
    /// (`bakery publish`).
    #[arg(long, value_name = "URL|DIR")]
    index: ReleaseSource,
    /// Public key (SPKI PEM) the release index must be signed with.
    #[arg(long, value_name = "PUB")]
    pubkey: PathBuf,
    /// An extension and the versions to choose from, e.g. kubernetes@1.31 (the newest patch
    /// of 1.31), containerd@2.0, cni@latest. Repeat for each extension.
    #[arg(long = "extension", short = 'e', value_name = "NAME@CHANNEL", required = true)]
    pub(super) extensions: Vec<ChannelRef>,
    /// The nodes' architecture.
    #[arg(long, value_name = "ARCH")]
    arch: Arch,
    /// Where nodes download the images (<URL>/<file>) and, with --sysupdate, updates from;
    /// defaults to the base URL the signed index names.
    #[arg(long, value_name = "URL")]
    base_url: Option<BaseUrl>,
    /// Your own config to add to (Ignition JSON, Butane YAML or cloud-config, as FORMAT):
    /// everything in it is kept; a file, link or unit it defines that composer writes too is
    /// an error.
    #[arg(long, value_name = "FILE")]
    base: Option<PathBuf>,
    /// Also install systemd-sysupdate transfer files (/etc/sysupdate.<name>.d/) and
    /// noop.conf, so nodes can follow patch releases of the installed minor.
    #[arg(long)]
    sysupdate: bool,
    /// Write the config to FILE (replaced atomically, mode 0600: it may hold your join
    /// tokens) instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Refuse a release index whose serial is lower than this (the newest one you have
    /// seen), so a replayed older release cannot be passed off as current.
    #[arg(long, value_name = "N")]
    min_serial: Option<u64>,
    #[command(flatten)]
    net: NetArgs,
}

impl ProvisionArgs {
    fn request(&self) -> Result<ProvisionRequest> {
        let key =
            PublicKey::read_pem(&self.pubkey).with_context(|| format!("reading --pubkey {}", self.pubkey.display()))?;
        let backend = self.index.backend_with(&HttpClient::new(self.net.http_options())?);
        let index = ReleaseIndex::open(backend, key, self.min_serial)
            .with_context(|| format!("opening the release index at {}", self.index))?;
        Ok(ProvisionRequest {
            format: self.format,
            index,
            extensions: self.extensions.clone(),
            arch: self.arch,
            base_url: self.base_url.clone(),
            base: self.base.clone(),
            sysupdate: self.sysupdate,
        })
    }
}

/// Writes `text` to `path` through a temporary file beside it, synced, then renamed.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".composer-provision-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path).with_context(|| format!("renaming the config to {}", path.display()))?;
    Ok(())
}

pub(super) fn run(args: ProvisionArgs) -> Result<()> {
    let req = args.request()?;
    let done = provision(&req).with_context(|| format!("writing a {:?} config", args.format))?;
    for r in &done.resolved {
        eprintln!("{}: {} ({})", r.channel, r.image, r.url);
    }
    match &args.out {
        Some(path) => {
            write_atomically(path, &done.text)?;
            println!("{}", path.display());
        }
        None => std::io::stdout().write_all(done.text.as_bytes()).context("writing the config to stdout")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;
    use super::*;

    #[test]
    fn parses_every_format() {
        for (word, format) in
            [("ignition", Format::Ignition), ("butane", Format::Butane), ("cloud-init", Format::CloudInit)]
        {
            let cmd = parse(&[
                "provision",
                word,
                "--index",
                "https://x/r/",
                "--pubkey",
                "k.pem",
                "-e",
                "kubernetes@1.31",
                "--extension",
                "cni@latest",
                "--arch",
                "x86-64",
                "--sysupdate",
                "--base-url",
                "https://cdn/r",
                "--min-serial",
                "7",
            ])
            .unwrap();
            let Command::Provision(a) = cmd else { panic!("provision") };
            assert_eq!(a.format, format);
            assert_eq!(a.extensions[1].to_string(), "cni@latest");
        }
    }

    #[test]
    fn bad_values_are_refused_at_parse_time() {
        let base = ["provision", "ignition", "--index", "d", "--pubkey", "k", "--arch", "arm64"];
        assert!(parse(&base).is_err(), "-e required");
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        assert!(with(&["-e", "out/kubernetes-v1.31.3-x86-64.raw"]).is_err(), "files are not channels");
        assert!(with(&["-e", "k@1", "--base-url", "ftp://x/"]).is_err());
        assert!(parse(&["provision", "yaml", "--index", "d", "--pubkey", "k", "--arch", "arm64", "-e", "k@1"]).is_err());
        let err = parse(&["provision", "ignition", "--index", "d", "--pubkey", "k", "-e", "k@1", "--arch", "amd64"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean x86-64?"), "{err}");
    }
}
