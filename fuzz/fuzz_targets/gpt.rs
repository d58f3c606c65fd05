//! GPT reader (composer::disk::gpt) on a virtual disk of any length: never panics, and every partition it accepts lies inside the disk without overlapping another.
//! The decoding and the checks are in composer::fuzz, shared with composer/tests/fuzz_corpus.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| composer::fuzz::gpt(data));
