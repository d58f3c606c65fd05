//! `bakery`: build reproducible system extension images for Kubernetes nodes.
#![warn(missing_docs)]

pub mod archive;
pub mod checksums;
pub mod cli;
pub mod create;
pub mod fetch;
pub mod fuzz;
pub mod image;
pub mod inspect;
pub mod lint;
pub mod progress;
pub mod recipe;
pub mod release;
pub mod resolve;
pub mod stage;
pub mod tempfiles;
pub mod tree;
