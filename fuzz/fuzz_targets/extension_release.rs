//! extension-release parser: never panics, and render → parse is the identity on what it
//! accepts (quoting and escaping survive a round trip).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sysext_model::ExtensionRelease;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(release) = ExtensionRelease::parse(text) {
        let rendered = release.render();
        let again = ExtensionRelease::parse(&rendered).expect("rendered files parse");
        assert_eq!(again, release, "round trip through {rendered:?}");
    }
});
