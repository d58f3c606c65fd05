//! OpenPGP keyrings and detached signatures from releases (`import-pubring.gpg`,
//! `SHA256SUMS.gpg`): never panic, keyrings round-trip, an accepted signature is one of the
//! keyring's keys' (`signing::openpgp::fuzz_property`, which the corpus replay runs too).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| signing::openpgp::fuzz_property(data));
