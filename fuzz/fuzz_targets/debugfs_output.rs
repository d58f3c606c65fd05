//! debugfs output parsers (composer::disk::e2fs): never panic, and what they accept is consistent.
//! The decoding and the checks are in composer::fuzz, shared with composer/tests/fuzz_corpus.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| composer::fuzz::debugfs_output(data));
