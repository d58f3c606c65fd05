//! The vocabulary shared by everything that produces or consumes system extension images.
//!
//! These types are the contract between `bakery` (which writes images) and `composer` (which
//! installs them): an image is identified by its [`ExtensionName`], [`Version`] and [`Arch`],
//! and published under its [`ImageName`]. Each parses strictly, because a name that systemd
//! would silently skip at boot must be rejected when the image is built.
#![warn(missing_docs)]

/// Serialises a type as its `Display` string and deserialises it through `FromStr`, so JSON,
/// TOML and the command line all carry the same validated spelling.
macro_rules! serde_via_str {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_via_str;

pub(crate) use signing::string_schema;

mod arch;
pub mod client;
pub mod extension_release;
mod image_name;
pub mod index;
pub mod inputs;
pub mod layout;
mod name;
pub mod publish;
pub mod sha256sums;
pub mod source;
pub mod timestamp;
pub mod transfer;
pub mod uapi_version;
pub mod verify;
mod version;

pub use arch::{Arch, ArchParseError};
pub use image_name::{ImageName, ImageNameParseError};
pub use name::{ExtensionName, NameParseError};
pub use version::{Version, VersionParseError};
