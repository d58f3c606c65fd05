//! Butane (`variant: flatcar`, `version: 1.0.0`, which Butane translates to Ignition 3.3.0):
//! the same storage and units as [`super::ignition`], as YAML for people who keep their
//! Flatcar configs in Butane and translate them with `butane`.
//!
//! For the keys composer writes, Butane and Ignition spell them the same; the one
//! difference is that small files are `contents.inline` text instead of `data:` URLs, which
//! Butane turns back into `data:` URLs (possibly gzip-compressed) when it translates.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::ignition::{self, SmallFiles, Storage, Systemd};
use crate::plan::NodePlan;

/// Butane's variant for Flatcar.
pub const VARIANT: &str = "flatcar";
/// The Butane version that translates to [`ignition::SPEC_VERSION`].
pub const VERSION: &str = "1.0.0";

/// A Butane config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// `flatcar`.
    pub variant: String,
    /// `1.0.0`.
    pub version: String,
    /// Files, directories and links.
    #[serde(default)]
    pub storage: Storage,
    /// Units.
    #[serde(default)]
    pub systemd: Systemd,
}

/// The Butane config for `plan`.
pub fn config(plan: &NodePlan) -> Result<Config> {
    let (storage, systemd) = ignition::storage_and_units(plan, SmallFiles::Inline)?;
    Ok(Config { variant: VARIANT.to_owned(), version: VERSION.to_owned(), storage, systemd })
}

/// The Ignition spec version a Butane `variant: flatcar` version translates to.
pub fn ignition_version(butane_version: &str) -> Option<&'static str> {
    match butane_version {
        "1.0.0" => Some("3.3.0"),
        "1.1.0" => Some("3.4.0"),
        "1.2.0-experimental" => Some("3.6.0-experimental"),
        _ => None,
    }
}
