//! composer: put systemd system extensions onto nodes: into stock Flatcar and Ubuntu disk
//! images without root, loop devices or a VM (`compose`), through provisioning configs
//! (`provision`), and by a node agent on the node itself (`node`).
//!
//! - [`source`] turns each `--extension` into a verified local image;
//! - [`plan`] describes what goes onto a node (images, links, units, transfer files), once,
//!   for every way of getting it there;
//! - [`disk`] reads and edits disk images: the sparse working copy ([`disk::input`]), the
//!   partition table ([`disk::gpt`]), filesystems ([`disk::fsprobe`]), the distribution and
//!   its os-release ([`disk::target`]), ext4 edits and checks through e2fsprogs
//!   ([`disk::e2fs`]);
//! - [`compose`] orders all of it so nothing is published unless every step succeeded;
//! - [`provision`] renders the same plan as Ignition, Butane and cloud-init configs;
//! - [`node`] is the node agent (`composer node sync`, `status`), which installs the same plan
//!   on the node itself from the signed index;
//! - [`serve`] serves a published release over HTTP(S) (the only async code, kept inside it);
//! - [`cli`] is the command line.
#![warn(missing_docs)]

pub mod cli;
pub mod compose;
pub mod disk;
#[doc(hidden)]
pub mod fuzz;
pub mod node;
pub mod plan;
pub mod provision;
pub mod scratch;
pub mod serve;
pub mod source;
