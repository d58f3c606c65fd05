//! `/etc/composer/node.toml`: what a node follows, written by `composer provision --agent`
//! and read by `composer node sync --config`.
//!
//! ```toml
//! index = "https://sysext.example.org/ext/"
//! pubkey = "/etc/composer/release.pub"
//! extensions = ["kubernetes@1.31", "containerd@2.0", "cni@latest", "composer@latest"]
//! arch = "x86-64"
//! min-serial = 12
//! ```
//!
//! Paths in it are node paths: with `--root DIR` they are read under DIR.

use std::path::Path;

use release_index::source::ReleaseSource;
use serde::{Deserialize, Serialize};
use sysext_model::{Arch, ChannelRef};

use super::NodeError;
use crate::plan::NodeOs;

/// Where provisioning writes the configuration.
pub const CONFIG_PATH: &str = "/etc/composer/node.toml";
/// Where provisioning writes the release's public key.
pub const PUBKEY_PATH: &str = "/etc/composer/release.pub";
/// Their directory.
pub const CONFIG_DIR: &str = "/etc/composer";

/// A node's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeConfig {
    /// The signed release: its http(s) URL (or a directory on the node).
    pub index: ReleaseSource,
    /// The public key (SPKI PEM) the index must be signed with: a node path.
    pub pubkey: String,
    /// The channels the node follows, one per extension.
    pub extensions: Vec<ChannelRef>,
    /// The node's architecture; default: this machine's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// The node's OS; default: from its os-release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<NodeOs>,
    /// Refuse an index with a lower serial (provisioning writes the one it resolved against).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_serial: Option<u64>,
    /// Also install sysupdate transfer files for the installed minors.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sysupdate: bool,
}

impl NodeConfig {
    /// Parses the text of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, NodeError> {
        let config: NodeConfig =
            toml::from_str(text).map_err(|e| NodeError::Config { path: path.to_owned(), reason: e.to_string() })?;
        if config.extensions.is_empty() {
            return Err(NodeError::Config {
                path: path.to_owned(),
                reason: "extensions is empty; list at least one NAME@CHANNEL".into(),
            });
        }
        if !config.pubkey.starts_with('/') {
            return Err(NodeError::Config {
                path: path.to_owned(),
                reason: format!("pubkey '{}' is not an absolute path on the node", config.pubkey),
            });
        }
        Ok(config)
    }

    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self, NodeError> {
        let text = std::fs::read_to_string(path).map_err(|cause| NodeError::Io { path: path.to_owned(), cause })?;
        Self::parse(path, &text)
    }

    /// The file's text, with a header saying who wrote it and what reads it.
    pub fn render(&self) -> String {
        let body = toml::to_string(self).expect("the node configuration serialises");
        format!(
            "# What this node follows: read by `composer node sync --config {CONFIG_PATH}`\n\
             # (composer-node-sync.service). Written by `composer provision --agent`.\n{body}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_what_is_wrong() {
        let config = NodeConfig {
            index: "https://sysext.example.org/ext/".parse().unwrap(),
            pubkey: PUBKEY_PATH.into(),
            extensions: vec!["kubernetes@1.31".parse().unwrap(), "cni@latest".parse().unwrap()],
            arch: Some(Arch::X86_64),
            os: None,
            min_serial: Some(3),
            sysupdate: false,
        };
        let text = config.render();
        assert!(text.contains("index = \"https://sysext.example.org/ext/\"\n"), "{text}");
        assert!(text.contains("extensions = [\"kubernetes@1.31\", \"cni@latest\"]\n"), "{text}");
        assert!(text.contains("min-serial = 3\n") && !text.contains("sysupdate"), "{text}");
        assert_eq!(NodeConfig::parse(Path::new("n.toml"), &text).unwrap(), config);

        let bad = |text: &str, needle: &str| {
            let err = NodeConfig::parse(Path::new("/etc/composer/node.toml"), text).unwrap_err().to_string();
            assert!(err.contains("/etc/composer/node.toml") && err.contains(needle), "{needle}: {err}");
        };
        bad("index = \"https://x/\"\npubkey = \"/k\"\nextensions = []\n", "extensions is empty");
        bad("index = \"https://x/\"\npubkey = \"k.pem\"\nextensions = [\"cni@latest\"]\n", "not an absolute path");
        bad("index = \"https://x/\"\npubkey = \"/k\"\nextensions = [\"Cni@latest\"]\n", "Cni");
        bad("index = \"ftp://x/\"\npubkey = \"/k\"\nextensions = [\"cni@latest\"]\n", "ftp://x/");
        bad("index = \"https://x/\"\npubkey = \"/k\"\nextensions = [\"cni@1\"]\nsurprise = 1\n", "surprise");
    }
}
