//! `composer provision`: provisioning configs that let a stock Flatcar (Ignition, Butane) or
//! Ubuntu (cloud-init) node install the extensions while it provisions, from a release
//! published by `bakery publish` (served by `composer serve` or any static host).
//!
//! Each `NAME@CHANNEL` is resolved now, in the signed index (signature, expiry, serial), to
//! one artifact for the architecture; nothing is downloaded. A release in an OCI registry is
//! resolved the same way, and nodes then download each image from the registry's blob URL
//! (`/v2/<repo>/blobs/sha256:<digest>`, content-addressed and checked against the signed
//! digests on the node), which is sound only where the registry serves blobs without
//! credentials: that is checked with one GET per image, and refused otherwise with the way
//! out (a mirror on an HTTP server, `--base-url`). sysupdate cannot follow a registry at all. The result is the same
//! [`NodePlan`] `compose` writes into disks, with [`ImageSource::Url`] sources
//! (`<base>/<file>`, the release's top level), and each format renders that plan: a node
//! provisioned by Ignition, one provisioned by cloud-init and one composed into a disk get
//! the same files, links and units. Every image is checked on the node against the digests
//! from the signed index before it is used.

pub mod butane;
pub mod cloud_init;
pub mod ignition;
pub mod merge;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use release_index::source::ReleaseSource;
use serde::Serialize;
use serde_yaml_ng::Value;
use sysext_model::{Arch, BaseUrl, ChannelRef, ImageName};

use crate::node::config::NodeConfig;
use crate::plan::{AgentFiles, ImageSource, NodeOs, NodePlan, PlanRequest, PlannedImage};
use crate::source::ReleaseIndex;

/// Which provisioning config to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Ignition config spec 3.3.0 (JSON), for Flatcar.
    Ignition,
    /// Butane `variant: flatcar`, `version: 1.0.0` (YAML; translates to Ignition 3.3.0).
    Butane,
    /// `#cloud-config` (YAML), for Ubuntu.
    CloudInit,
}

impl Format {
    /// The distribution the format provisions.
    pub fn os(self) -> NodeOs {
        match self {
            Format::Ignition | Format::Butane => NodeOs::Flatcar,
            Format::CloudInit => NodeOs::Ubuntu,
        }
    }
}

/// Everything `provision` needs, validated.
#[derive(Debug)]
pub struct ProvisionRequest {
    /// What to write.
    pub format: Format,
    /// The signed release index, opened and verified.
    pub index: ReleaseIndex,
    /// The channels to install, one per extension.
    pub extensions: Vec<ChannelRef>,
    /// The nodes' architecture.
    pub arch: Arch,
    /// Where nodes download from, if not the index's `base-url`.
    pub base_url: Option<BaseUrl>,
    /// The user's own config to add the plan to.
    pub base: Option<PathBuf>,
    /// Also install sysupdate transfer files following the same base URL.
    pub sysupdate: bool,
    /// Provision the node agent instead of pinning the extensions.
    pub agent: Option<AgentRequest>,
    /// The client that checks, for a release in a registry, that nodes can fetch its blob URLs
    /// without credentials.
    pub http: Option<release_index::http::HttpClient>,
}

/// `--agent`: the node gets the agent (the composer extension, pinned by hash like any image,
/// its configuration, the release's public key and `composer-node-sync.service`) and the
/// agent resolves the channels itself at first boot.
#[derive(Clone, Debug)]
pub struct AgentRequest {
    /// The channel of the extension that ships composer (`composer@latest`).
    pub channel: ChannelRef,
    /// The release's public key (SPKI PEM), installed for the agent.
    pub pubkey_pem: String,
    /// Enable the daily upgrade timer.
    pub auto_upgrade: bool,
}

/// One channel as resolved.
#[derive(Clone, Debug, Serialize)]
pub struct Resolved {
    /// What was asked for.
    #[serde(serialize_with = "as_display")]
    pub channel: ChannelRef,
    /// The image it resolved to.
    #[serde(serialize_with = "as_display")]
    pub image: ImageName,
    /// Where nodes download it.
    pub url: String,
    /// Written into the config by hash; false for a channel the agent resolves again when
    /// the node boots (`--agent`).
    pub pinned: bool,
}

fn as_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A rendered config.
#[derive(Debug)]
pub struct Provisioned {
    /// The config's text.
    pub text: String,
    /// The plan it renders.
    pub plan: NodePlan,
    /// What each channel resolved to.
    pub resolved: Vec<Resolved>,
}

impl ProvisionRequest {
    /// Where nodes download from.
    pub fn base_url(&self) -> &BaseUrl {
        self.base_url.as_ref().unwrap_or_else(|| self.index.base_url())
    }
}

/// Resolves every channel in the signed index: the newest matching version for the
/// architecture, refused when its extension-release names another OS than the format
/// provisions (systemd-sysext would skip it at boot without a word).
pub fn resolve(req: &ProvisionRequest) -> Result<(Vec<PlannedImage>, Vec<Resolved>)> {
    if req.extensions.is_empty() {
        bail!("no --extension given; name at least one NAME@CHANNEL");
    }
    resolve_channels(req, &req.extensions)
}

/// [`resolve`] for `channels`.
fn resolve_channels(req: &ProvisionRequest, channels: &[ChannelRef]) -> Result<(Vec<PlannedImage>, Vec<Resolved>)> {
    let os = req.format.os();
    let os_id = match os {
        NodeOs::Flatcar => "flatcar",
        NodeOs::Ubuntu => "ubuntu",
    };
    let mut images = Vec::new();
    let mut resolved: Vec<Resolved> = Vec::new();
    for channel in channels {
        if let Some(r) = resolved.iter().find(|r| r.channel.name == channel.name) {
            bail!(
                "--extension {channel}: {} is already given as {}; a node runs one version of each extension",
                channel.name,
                r.channel
            );
        }
        let artifact = req.index.lookup(channel, req.arch).with_context(|| format!("--extension {channel}"))?;
        let id = artifact.extension_release.get("ID").unwrap_or("");
        if id != "_any" && id != os_id {
            bail!(
                "--extension {channel}: {} is built for ID={id}, which {os:?} nodes do not merge (systemd-sysext skips it silently); publish one built with --os _any or --os {os_id}",
                artifact.file
            );
        }
        let url = match (&req.base_url, req.index.blob_url(&artifact.sha256)) {
            (Some(base), _) => base.join(&artifact.file.to_string()),
            (None, Some(blob)) => {
                anonymous_fetch(req, &blob, artifact.size).with_context(|| format!("--extension {channel}"))?;
                blob
            }
            (None, None) => req.index.base_url().join(&artifact.file.to_string()),
        };
        images.push(PlannedImage {
            image: artifact.file.clone(),
            size: artifact.size,
            sha256: artifact.sha256,
            sha512: artifact.sha512,
            source: ImageSource::Url(url.clone()),
        });
        resolved.push(Resolved { channel: channel.clone(), image: artifact.file.clone(), url, pinned: true });
    }
    Ok((images, resolved))
}

/// The plan for `--agent`: the composer image resolved and pinned now, the agent's files,
/// and a configuration naming the channels, which must resolve now too (as a check; the node
/// resolves them again when it boots, against an index at least as new as this one).
fn agent_plan(req: &ProvisionRequest, agent: &AgentRequest) -> Result<(NodePlan, Vec<Resolved>)> {
    if req.sysupdate {
        bail!("--agent and --sysupdate: the agent keeps the extensions current; choose one");
    }
    if let Some(c) = req.extensions.iter().find(|c| c.name == agent.channel.name) {
        bail!(
            "--extension {c}: with --agent, the {} image is the agent's own (--agent-channel {})",
            c.name,
            agent.channel
        );
    }
    let (_, mut resolved) = resolve(req)?;
    for r in &mut resolved {
        r.pinned = false;
    }
    let (images, ours) = resolve_channels(req, std::slice::from_ref(&agent.channel))?;
    resolved.extend(ours);
    let mut extensions = req.extensions.clone();
    extensions.push(agent.channel.clone());
    let config = NodeConfig {
        index: match (&req.base_url, req.index.in_registry()) {
            (None, true) => {
                req.index.location().parse().with_context(|| format!("the agent's index {}", req.index.location()))?
            }
            _ => ReleaseSource::Url(req.base_url().clone()),
        },
        pubkey: crate::node::config::PUBKEY_PATH.to_owned(),
        extensions,
        arch: Some(req.arch),
        os: Some(req.format.os()),
        min_serial: Some(req.index.serial()),
        sysupdate: false,
    };
    let files = AgentFiles {
        config: config.render(),
        pubkey: agent.pubkey_pem.clone(),
        unit: crate::node::unit::unit(),
        auto_upgrade: agent.auto_upgrade,
    };
    let plan = NodePlan::build(&PlanRequest { os: req.format.os(), images: &images, sysupdate: None, keyring: None })
        .with_agent(&files);
    Ok((plan, resolved))
}

/// Checks that a node, which has no registry credentials, can download `url` (a registry
/// blob URL) as Ignition or the cloud-init script will: one plain GET.
fn anonymous_fetch(req: &ProvisionRequest, url: &str, size: u64) -> Result<()> {
    let Some(http) = &req.http else { return Ok(()) };
    let refuse = |why: String| {
        anyhow::anyhow!(
            "nodes would download {url} from the registry without credentials, and {why}; \
             copy the release to an HTTP server (`bakery mirror {} DIR`) and pass --base-url, \
             or allow anonymous pulls",
            req.index.location()
        )
    };
    match http.open(url) {
        Ok(Some(resp)) if resp.len.is_none_or(|l| l == size) => Ok(()),
        Ok(Some(resp)) => Err(refuse(format!("the registry announces {:?} bytes instead of {size}", resp.len))),
        Ok(None) => Err(refuse("the registry answers 404".into())),
        Err(e) if matches!(e.status(), Some(401 | 403)) => Err(refuse(format!(
            "the registry refuses that ({e}): pulls need credentials, which Ignition and cloud-init do not have"
        ))),
        Err(e) => Err(refuse(format!("that failed: {e}"))),
    }
}

/// Resolves the channels, builds the node plan and renders it in the requested format,
/// merged into `--base` if given. Nothing is written: the caller prints or saves the text.
pub fn provision(req: &ProvisionRequest) -> Result<Provisioned> {
    // A broken base file fails before anything else is looked at.
    let base = match &req.base {
        Some(path) => Some(merge::read(path, req.format)?),
        None => None,
    };
    if req.sysupdate && req.base_url.is_none() && req.index.in_registry() {
        bail!(
            "--sysupdate: systemd-sysupdate reads SHA256SUMS and the images from one HTTP directory, which a registry \
             does not serve; copy the release to an HTTP server (`bakery mirror {} DIR`) and pass its URL as --base-url",
            req.index.location()
        );
    }
    let (plan, resolved) = match &req.agent {
        None => {
            let (images, resolved) = resolve(req)?;
            let sysupdate = req.sysupdate.then(|| req.base_url().clone());
            let keyring = if req.sysupdate { req.index.openpgp_keyring()? } else { None };
            let request = PlanRequest {
                os: req.format.os(),
                images: &images,
                sysupdate: sysupdate.as_ref(),
                keyring: keyring.as_deref(),
            };
            (NodePlan::build(&request), resolved)
        }
        Some(agent) => agent_plan(req, agent)?,
    };
    let context = || match &req.base {
        Some(path) => format!("merging into --base {}", path.display()),
        None => "rendering".to_owned(),
    };
    let text = match req.format {
        Format::Ignition => {
            let ours = ignition::config(&plan)?;
            let doc = match base {
                Some(base) => Value::Mapping(
                    merge::storage_and_units(base, &serde_yaml_ng::to_value(&ours)?).with_context(context)?,
                ),
                None => serde_yaml_ng::to_value(&ours)?,
            };
            let mut s = serde_json::to_string_pretty(&doc)?;
            s.push('\n');
            s
        }
        Format::Butane => {
            let ours = butane::config(&plan)?;
            let doc = match base {
                Some(base) => Value::Mapping(
                    merge::storage_and_units(base, &serde_yaml_ng::to_value(&ours)?).with_context(context)?,
                ),
                None => serde_yaml_ng::to_value(&ours)?,
            };
            serde_yaml_ng::to_string(&doc)?
        }
        Format::CloudInit => {
            let ours = serde_yaml_ng::to_value(cloud_init::config(&plan)?)?;
            let doc = match base {
                Some(base) => Value::Mapping(merge::cloud_config(base, &ours, &plan.paths()).with_context(context)?),
                None => ours,
            };
            cloud_init::render(&doc)?
        }
    };
    Ok(Provisioned { text, plan, resolved })
}
