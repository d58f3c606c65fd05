//! The vocabulary shared by everything that produces or consumes system extension images.
//!
//! These types are the contract between `bakery` (which writes images) and `composer` (which
//! installs them): an image is identified by its [`ExtensionName`], [`Version`] and [`Arch`],
//! and published under its [`ImageName`]. Each parses strictly, because a name that systemd
//! would silently skip at boot must be rejected when the image is built.
#![warn(missing_docs)]

mod arch;
pub mod extension_release;
mod image_name;
mod name;
mod version;

pub use arch::{Arch, ArchParseError};
pub use image_name::{ImageName, ImageNameParseError};
pub use name::{ExtensionName, NameParseError};
pub use version::{Version, VersionParseError};
