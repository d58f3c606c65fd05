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

use super::compose::{one_release, ExtensionArg};
use crate::provision::{provision, AgentRequest, Format, ProvisionRequest};
use crate::source::{ExtensionSource, ReleaseIndex};

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
///
/// A release in an OCI registry (--index oci://REGISTRY/REPO, or -e oci://REGISTRY/REPO:NAME@CHANNEL)
/// is resolved from its signed index in the registry, and nodes download each image from its
/// blob URL there, checked against the signed digests like any other download; that needs a
/// registry that serves blobs without credentials, which is checked now. Otherwise, or for
/// --sysupdate, mirror the release to an HTTP server and pass --base-url.
#[derive(Debug, Args)]
#[command(override_usage = "composer provision <FORMAT> --index <URL|DIR|OCI> --pubkey <PUB> --arch <ARCH>\n       \
                      --extension <NAME@CHANNEL>... [OPTIONS]")]
pub(super) struct ProvisionArgs {
    /// The config to write.
    #[arg(value_name = "FORMAT", value_enum)]
    pub(super) format: Format,
    /// Signed release index: the http(s) URL, directory or oci://REGISTRY/REPO a release was
    /// published to (`bakery publish`).
    #[arg(long, value_name = "URL|DIR|OCI")]
    index: Option<ReleaseSource>,
    /// Public key (SPKI PEM) the release index must be signed with.
    #[arg(long, value_name = "PUB")]
    pubkey: PathBuf,
    /// An extension and the versions to choose from, e.g. kubernetes@1.31 (the newest patch
    /// of 1.31), containerd@2.0, cni@latest, or oci://REGISTRY/REPO:NAME@CHANNEL. Repeat for
    /// each extension.
    #[arg(long = "extension", short = 'e', value_name = "NAME@CHANNEL", required = true)]
    pub(super) extensions: Vec<ExtensionArg>,
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
    /// Instead of pinning the extensions, install the node agent: the composer extension
    /// (--agent-channel, from the same release, pinned by hash like any image),
    /// /etc/composer/node.toml naming the index (--base-url or the index's base-url), the
    /// channels, the architecture and the serial seen now, the release's public key as
    /// /etc/composer/release.pub, and composer-node-sync.service, enabled, which runs
    /// `composer node sync` from the merged /usr/bin/composer at first boot, after the
    /// network is online and before the kubelet. The channels must resolve now too.
    #[arg(long, conflicts_with = "sysupdate")]
    agent: bool,
    /// With --agent, also enable composer-node-upgrade.timer: `composer node upgrade` daily
    /// at a random time within 4 hours (patch releases of the installed minors, guarded and
    /// rolled back on failure). The service and timer are installed either way.
    #[arg(long, requires = "agent")]
    auto_upgrade: bool,
    /// The channel of the extension that ships composer, for --agent.
    #[arg(long, value_name = "NAME@CHANNEL", default_value = "composer@latest", requires = "agent")]
    agent_channel: ChannelRef,
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
        let release = one_release(
            self.index.as_ref(),
            self.extensions.iter().filter_map(|e| e.index.as_ref().map(|i| (i, format!("--extension {}", e.source)))),
        )?
        .ok_or_else(|| anyhow::anyhow!("the release to provision from: pass --index URL|DIR|oci://REGISTRY/REPO"))?;
        let mut extensions = Vec::new();
        for e in &self.extensions {
            match &e.source {
                ExtensionSource::Channel(c) => extensions.push(c.clone()),
                ExtensionSource::File(p) => anyhow::bail!(
                    "--extension {}: provision installs from a release, so each extension is NAME@CHANNEL",
                    p.display()
                ),
            }
        }
        let key =
            PublicKey::read_pem(&self.pubkey).with_context(|| format!("reading --pubkey {}", self.pubkey.display()))?;
        let http = HttpClient::new(self.net.http_options())?;
        let backend = release.backend_with(&http);
        let index = ReleaseIndex::open(backend, key, self.min_serial)
            .with_context(|| format!("opening the release index at {release}"))?;
        let agent = match self.agent {
            false => None,
            true => Some(AgentRequest {
                channel: self.agent_channel.clone(),
                auto_upgrade: self.auto_upgrade,
                pubkey_pem: std::fs::read_to_string(&self.pubkey)
                    .with_context(|| format!("reading --pubkey {}", self.pubkey.display()))?,
            }),
        };
        Ok(ProvisionRequest {
            format: self.format,
            index,
            extensions,
            arch: self.arch,
            base_url: self.base_url.clone(),
            base: self.base.clone(),
            sysupdate: self.sysupdate,
            agent,
            http: Some(http),
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
        if r.pinned {
            eprintln!("{}: {} ({})", r.channel, r.image, r.url);
        } else {
            eprintln!("{}: {} now; the agent resolves it again when the node boots", r.channel, r.image);
        }
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
            assert_eq!(a.extensions[1].source.to_string(), "cni@latest");
        }
    }

    #[test]
    fn bad_values_are_refused_at_parse_time() {
        let base = ["provision", "ignition", "--index", "d", "--pubkey", "k", "--arch", "arm64"];
        assert!(parse(&base).is_err(), "-e required");
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        let Command::Provision(a) = with(&["-e", "out/kubernetes-v1.31.3-x86-64.raw"]).unwrap() else { panic!() };
        assert!(
            a.request().unwrap_err().to_string().contains("each extension is NAME@CHANNEL"),
            "files are not channels"
        );
        let Command::Provision(a) =
            parse(&["provision", "ignition", "--pubkey", "k", "--arch", "arm64", "-e", "k@1"]).unwrap()
        else {
            panic!()
        };
        assert!(a.request().unwrap_err().to_string().contains("pass --index"));
        assert!(with(&["-e", "k@1", "--base-url", "ftp://x/"]).is_err());
        assert!(parse(&["provision", "yaml", "--index", "d", "--pubkey", "k", "--arch", "arm64", "-e", "k@1"]).is_err());
        let err = parse(&["provision", "ignition", "--index", "d", "--pubkey", "k", "-e", "k@1", "--arch", "amd64"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean x86-64?"), "{err}");
    }
}
