//! composer: put systemd system extensions into stock Flatcar and Ubuntu disk images, without
//! root, loop devices or a VM.
//!
//! The pipeline is: [`source`] turns each `--extension` into a verified local image;
//! [`input`] makes a sparse raw working copy of the disk; [`gpt`] and [`fsprobe`] find the
//! partitions; [`target`] recognises the distribution and reads its os-release; [`compat`]
//! applies systemd-sysext's matching rules; [`e2fs`] writes into the ext4 root with debugfs
//! and checks it with e2fsck; [`compose`] orders all of it so nothing is published unless
//! every step succeeded. [`serve`] serves a published release over HTTP(S).
#![warn(missing_docs)]

pub mod cli;
pub mod compat;
pub mod compose;
pub mod e2fs;
pub mod fsprobe;
pub mod gpt;
pub mod input;
pub mod inspect;
pub mod serve;
pub mod source;
pub mod target;
