//! bakery's published-checksum reader; the properties are in `bakery::fuzz::checksums`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bakery::fuzz::checksums(data);
});
