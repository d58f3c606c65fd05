//! Filesystem probe (composer::disk::fsprobe): never panics, and an ext superblock it accepts has counts that multiply and compare without overflow.
//! The decoding and the checks are in composer::fuzz, shared with composer/tests/fuzz_corpus.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| composer::fuzz::ext_superblock(data));
