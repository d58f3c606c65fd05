//! The node agent: `composer node sync` and `composer node status`, run on the node itself
//! (first by `composer-node-sync.service` at first boot).
//!
//! A sync resolves each channel (`kubernetes@1.31`) to the newest version for the node's
//! architecture in the signed release index, through the same client as `compose` and
//! `provision` ([`crate::source::ReleaseIndex`]: signature, then expiry, then the serial
//! against the one this node accepted before, [`state`]); builds the same
//! [`crate::plan::NodePlan`] those render; and installs it onto the node's root
//! ([`install`]): images downloaded beside their destination with size and digests checked
//! while they stream, then renamed into place, then every file and link of the plan switched
//! atomically. Then it makes the running system use them ([`activate`]). Its steps are
//! recorded in the state file before each starts, so a run that dies is reported and
//! finished by the next one; a run with nothing to do writes nothing.
//!
//! - [`root`], the node's filesystem (`/`, or `--root DIR`), atomic writes;
//! - [`state`], `/var/lib/composer/node.json`; [`lock`], one run at a time;
//! - [`config`], `/etc/composer/node.toml`, which `provision --agent` writes;
//! - [`unit`](mod@unit), `composer-node-sync.service`;
//! - [`sync`] and [`status`]; [`upgrade`] (`upgrade` and `rollback`, guarded and undone on
//!   failure) and [`history`], what they did.

pub mod activate;
pub mod config;
pub mod history;
pub mod install;
pub mod lock;
pub mod root;
pub mod state;
pub mod status;
pub mod sync;
pub mod unit;
pub mod upgrade;

use std::path::PathBuf;

use sysext_model::{ExtensionName, ImageName};

use crate::source::SourceError;

/// Why a `composer node` command failed or refused.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file on the node could not be read or written.
    #[error("{}: {cause}", path.display())]
    Io {
        /// Path on this machine.
        path: PathBuf,
        /// Cause.
        cause: std::io::Error,
    },
    /// The release refused (signature, expiry, serial), a channel without a match, or an
    /// image that did not verify.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The state file is unreadable or unwritable.
    #[error("{}: {reason}", path.display())]
    State {
        /// State file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The configuration file is unusable.
    #[error("{}: {reason}", path.display())]
    Config {
        /// Configuration file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Two channels name the same extension.
    #[error("--extension {channel}: {name} is already given as {other}; a node runs one version of each extension")]
    Duplicate {
        /// The extension.
        name: ExtensionName,
        /// The second channel.
        channel: String,
        /// The first.
        other: String,
    },
    /// systemd-sysext on this node would skip the image.
    #[error("{channel}: {image} would not be merged on this node (systemd-sysext skips it silently): {reason}")]
    Incompatible {
        /// The channel.
        channel: String,
        /// The image it resolved to.
        image: ImageName,
        /// systemd's reason.
        reason: Box<sysext_model::compat::Incompatible>,
    },
    /// A path the plan writes is in the way.
    #[error("{path}: {reason}")]
    Conflict {
        /// Node path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A command of the activation failed.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// What it printed on stderr (or stdout).
        output: String,
    },
    /// After the refresh an extension is not merged as installed.
    #[error("systemd-sysext did not merge {name} ({image}){}; see 'SYSTEMD_LOG_LEVEL=debug systemd-sysext refresh'", if *found { ": a different version is merged" } else { "" })]
    NotMerged {
        /// The extension.
        name: ExtensionName,
        /// Its installed image.
        image: String,
        /// Whether some other version of it is merged.
        found: bool,
    },
    /// The upgrade policy refuses, or nothing can be done as asked.
    #[error("{0}")]
    Policy(String),
    /// The version-skew check refused or could not run.
    #[error("version skew: {0}")]
    Skew(String),
    /// A step of an upgrade or rollback failed; `after` says what state the node was left in.
    #[error("{extension}: step {} failed: {reason}; {after}", serde_json::to_value(step).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default())]
    UpgradeFailed {
        /// The extension.
        extension: ExtensionName,
        /// The step.
        step: state::StepKind,
        /// Why it failed.
        reason: String,
        /// What was done about it.
        after: String,
    },
    /// Another run holds the lock.
    #[error("{} is held by {holder}; try again when it has finished", path.display())]
    Locked {
        /// Lock file.
        path: PathBuf,
        /// Who holds it, as it says.
        holder: String,
    },
}

fn as_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}
