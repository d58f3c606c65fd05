//! Releases in OCI registries (`oci://REGISTRY/REPOSITORY`).
//!
//! A repository holds one release. [`manifest`] describes the layout: one artifact per image
//! whose single layer is the image file (so the layer digest is the image's sha256 from the
//! signed index), an image index per version across architectures, and a release manifest
//! tagged `index` carrying `index.json`, the checksum lists and the transfer files. Every
//! Ed25519 signature is an artifact of its own that refers to what it signs, found through
//! the registry's referrers API or, on registries without one (Docker distribution 2.8), the
//! `sha256-<hex>` tag scheme of the distribution spec. A client therefore verifies a release
//! from the registry alone, with nothing but the publisher's public key.
//!
//! [`crate::source::OciBackend`] reads a release from a registry,
//! [`crate::publish::OciTarget`] publishes to one; [`registry`] is the client both use,
//! [`auth`] finds credentials the way docker and podman store them.

pub mod auth;
pub mod manifest;
mod reference;
pub mod registry;

pub use reference::{is_oci, OciRepo, OciRepoParseError};
pub use registry::{OciError, OciOptions, Registry};
