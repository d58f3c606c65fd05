//! SHA256SUMS parser: never panics, and whatever it accepts renders to a list it reads back
//! identically (so publish can never write a list verify-release refuses).
#![no_main]

use libfuzzer_sys::fuzz_target;
use release_index::sha256sums::Sha256Sums;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(sums) = Sha256Sums::parse(text) {
        let rendered = sums.to_string();
        assert_eq!(Sha256Sums::parse(&rendered).expect("rendered lists parse"), sums);
        for line in rendered.lines() {
            assert!(line.len() >= 67, "sysupdate rejects lines shorter than 67 bytes: {line:?}");
        }
    }
});
