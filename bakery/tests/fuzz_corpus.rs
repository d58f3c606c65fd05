//! Replays the committed fuzz corpora of bakery's targets (fuzz/corpus/checksums and
//! fuzz/corpus/archive_member) through the properties the targets check
//! (`bakery::fuzz`), so every seed and every fixed crash stays covered in ordinary test runs.

use bakery::fuzz::{self, Member};
use sysext_tests::corpus::seeds;

#[test]
fn checksums_seeds() {
    let accepted = seeds("checksums").iter().filter(|(_, bytes)| fuzz::checksums(bytes)).count();
    assert!(accepted >= 2, "the bare digest and the list seeds must be accepted");
}

#[test]
fn archive_member_seeds() {
    let outcomes: Vec<Member> = seeds("archive_member").iter().map(|(_, bytes)| fuzz::archive_member(bytes)).collect();
    let links = outcomes.iter().filter(|m| **m == Member::Link).count();
    let names = links + outcomes.iter().filter(|m| **m == Member::Name).count();
    assert!(names >= 3 && links >= 2, "the well-formed seeds must be accepted ({names} names, {links} links)");
}
