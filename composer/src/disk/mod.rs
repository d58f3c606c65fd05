//! Disk images: reading their layout and editing their root filesystem without mounting.

pub mod e2fs;
pub mod fsprobe;
pub mod gpt;
pub mod input;
pub mod inspect;
pub mod target;
