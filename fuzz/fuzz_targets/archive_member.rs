//! bakery's archive member checks; the properties are in `bakery::fuzz::archive_member`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bakery::fuzz::archive_member(data);
});
