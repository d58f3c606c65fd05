//! index.json parser: never panics on hostile bytes (a node parses it after the signature
//! check, but a bug here would still be a crash at boot), and accepted indexes round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use release_index::index::Index;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = Index::parse(data) {
        let json = index.to_json();
        assert_eq!(Index::parse(json.as_bytes()).expect("rendered indexes parse"), index);
        let _ = release_index::layout::expected(&index);
    }
});
