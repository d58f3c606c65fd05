//! `composer provision`: provisioning configs that let a stock Flatcar (Ignition, Butane) or
//! Ubuntu (cloud-init) node install the extensions while it provisions, from a release
//! published by `bakery publish` (served by `composer serve` or any static host).
//!
//! Each `NAME@CHANNEL` is resolved now, in the signed index (signature, expiry, serial), to
//! one artifact for the architecture; nothing is downloaded. The result is the same
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
use serde::Serialize;
use serde_yaml_ng::Value;
use sysext_model::{Arch, BaseUrl, ChannelRef, ImageName};

use crate::plan::{ImageSource, NodeOs, NodePlan, PlanRequest, PlannedImage};
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
    let os = req.format.os();
    let os_id = match os {
        NodeOs::Flatcar => "flatcar",
        NodeOs::Ubuntu => "ubuntu",
    };
    let mut images = Vec::new();
    let mut resolved: Vec<Resolved> = Vec::new();
    for channel in &req.extensions {
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
        let url = req.base_url().join(&artifact.file.to_string());
        images.push(PlannedImage {
            image: artifact.file.clone(),
            size: artifact.size,
            sha256: artifact.sha256,
            sha512: artifact.sha512,
            source: ImageSource::Url(url.clone()),
        });
        resolved.push(Resolved { channel: channel.clone(), image: artifact.file.clone(), url });
    }
    Ok((images, resolved))
}

/// Resolves the channels, builds the node plan and renders it in the requested format,
/// merged into `--base` if given. Nothing is written: the caller prints or saves the text.
pub fn provision(req: &ProvisionRequest) -> Result<Provisioned> {
    // A broken base file fails before anything else is looked at.
    let base = match &req.base {
        Some(path) => Some(merge::read(path, req.format)?),
        None => None,
    };
    let (images, resolved) = resolve(req)?;
    let sysupdate = req.sysupdate.then(|| req.base_url().clone());
    let plan = NodePlan::build(&PlanRequest { os: req.format.os(), images: &images, sysupdate: sysupdate.as_ref() });
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
