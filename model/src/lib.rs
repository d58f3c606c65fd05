//! The vocabulary shared by everything that produces, publishes or installs system extension
//! images, with no I/O at all: no files, no network, no TLS.
//!
//! An image is identified by its [`ExtensionName`], [`Version`] and [`Arch`] and published
//! under its [`ImageName`]; what it declares about itself is an [`ExtensionRelease`]; nodes
//! follow a [`Channel`] of versions; [`compat`] decides, by systemd-sysext's own rules,
//! whether a host would merge it; [`node`] says where it lives on a node. Each type parses
//! strictly, because a name or field that systemd would silently skip at boot must be
//! rejected long before a node boots.
#![warn(missing_docs)]

/// Serialises a type as its `Display` string and deserialises it through `FromStr`, so JSON,
/// TOML and the command line all carry the same validated spelling.
#[macro_export]
macro_rules! serde_via_str {
    ($t:ty) => {
        impl $crate::__serde::Serialize for $t {
            fn serialize<S: $crate::__serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> $crate::__serde::Deserialize<'de> for $t {
            fn deserialize<D: $crate::__serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as $crate::__serde::Deserialize>::deserialize(d)?;
                s.parse().map_err($crate::__serde::de::Error::custom)
            }
        }
    };
}

/// Implements `schemars::JsonSchema` for a type serialised as a validated string: the
/// pattern is a coarse filter for schema consumers, the type's `FromStr` remains the authority.
#[macro_export]
macro_rules! string_schema {
    ($t:ty, $name:literal, $description:literal, $pattern:literal) => {
        impl $crate::__schemars::JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }

            fn json_schema(_: &mut $crate::__schemars::SchemaGenerator) -> $crate::__schemars::Schema {
                $crate::__schemars::json_schema!({ "type": "string", "description": $description, "pattern": $pattern })
            }
        }
    };
}

#[doc(hidden)]
pub use schemars as __schemars;
#[doc(hidden)]
pub use serde as __serde;

mod arch;
mod base_url;
pub mod channel;
pub mod compat;
pub mod elf;
pub mod extension_release;
mod image_name;
mod name;
pub mod node;
pub mod uapi_version;
mod version;

pub use arch::{Arch, ArchParseError};
pub use base_url::{BaseUrl, BaseUrlParseError};
pub use channel::{Channel, ChannelParseError, ChannelRef, ChannelRefParseError};
pub use extension_release::{ExtensionRelease, OsTarget, OsTargetParseError, ReleaseParseError};
pub use image_name::{ImageName, ImageNameParseError};
pub use name::{ExtensionName, NameParseError};
pub use version::{Version, VersionParseError};
