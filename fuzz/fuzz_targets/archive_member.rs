//! bakery's archive member checks (`archive::member_name`, `archive::check_link`): never
//! panic, accept only names that stay inside the archive and carry no control characters,
//! normalise idempotently, and accept only link targets that, resolved, stay inside.
//!
//! Input: one kind byte (`s` symlink, `h` hard link, anything else a plain member), the name
//! up to the first NUL, then the link target.
#![no_main]

use bakery::archive::{check_link, member_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else { return };
    let (name, target) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(Some(normal)) = member_name(name) else { return };
    assert!(!normal.starts_with('/') && !normal.chars().any(char::is_control), "{normal:?}");
    assert!(normal.split('/').all(|p| !p.is_empty() && p != "." && p != ".."), "{normal:?}");
    assert_eq!(member_name(normal.as_bytes()).unwrap().as_deref(), Some(normal.as_str()));
    let hard = match kind {
        b's' => false,
        b'h' => true,
        _ => return,
    };
    if check_link(&normal, target, hard).is_ok() {
        let target = std::str::from_utf8(target).expect("accepted targets are UTF-8");
        assert!(!target.starts_with('/') && !target.chars().any(char::is_control), "{target:?}");
        // Resolve it: a symlink from its own directory, a hard link from the archive root.
        let mut at: Vec<&str> = if hard { Vec::new() } else { normal.split('/').collect() };
        if !hard {
            at.pop();
        }
        for part in target.split('/') {
            match part {
                "" | "." => {}
                ".." => assert!(at.pop().is_some(), "{normal} -> {target} leaves the archive"),
                p => at.push(p),
            }
        }
    }
});
