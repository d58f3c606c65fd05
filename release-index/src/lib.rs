//! Releases: what `bakery publish` writes and what composer and nodes read.
//!
//! The signed [`index`], the `SHA256SUMS` lists ([`sha256sums`]) and sysupdate transfer files
//! ([`transfer`]) in Flatcar's [`layout`]; [`publish`] writes a release atomically,
//! [`rotation`] moves it from one signing key to the next,
//! [`verify`] checks one whole, and the [`client`] is how consumers trust an index and fetch
//! artifacts from it. The names, versions and architectures these are made of come from
//! `sysext_model`.
#![warn(missing_docs)]

pub(crate) use sysext_model::serde_via_str;

pub mod client;
pub mod http;
pub mod image;
pub mod index;
pub mod inputs;
pub mod layout;
pub mod oci;
pub mod publish;
pub mod rotation;
pub mod sha256sums;
pub mod source;
pub mod timestamp;
pub mod transfer;
pub mod verify;
