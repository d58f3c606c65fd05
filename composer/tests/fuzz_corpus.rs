//! Replays the committed fuzz corpora of composer's parsers (fuzz/corpus/{gpt,
//! ext_superblock,debugfs_output}) through the same entry points the fuzz targets call, so
//! every seed and every fixed crash stays covered in ordinary test runs; and checks that the
//! seeds still mean what they were made for.

use std::path::Path;

use composer::disk::gpt::{Gpt, GptError, TableCopy};
use composer::disk::{e2fs, fsprobe};
use composer::fuzz::{self, VirtualDisk};

use sysext_tests::corpus::{seed, seeds as corpus};

fn table(name: &str) -> Result<Gpt, GptError> {
    let bytes = seed("gpt", name);
    let mut disk = VirtualDisk::decode(&bytes).unwrap();
    let len = disk.len();
    Gpt::read_from(&mut disk, len, Path::new(name))
}

#[test]
fn gpt_seeds() {
    for (_, bytes) in corpus("gpt") {
        fuzz::gpt(&bytes);
    }
    let t = table("flatcar-layout").unwrap();
    assert_eq!(t.by_label("ROOT").unwrap().number, 3);
    assert_eq!(table("sector-4096").unwrap().sector_size, 4096);
    assert_eq!(table("damaged-primary").unwrap().table, TableCopy::Backup);
    assert_eq!(table("backup-only").unwrap().table, TableCopy::Backup);
    assert!(matches!(table("mbr-only"), Err(GptError::MbrOnly { .. })));
    for (name, want) in [
        ("last-lba-max", "partition 3 'ROOT' (LBA 38912..=18446744073709551615) lies beyond any disk"),
        ("past-end", "partition 3 'ROOT' (LBA 38912..=400000) ends at byte 204800512, past the end"),
        (
            "overlap",
            "partitions 1 'EFI-SYSTEM' (bytes 1048576..17825792) and 2 'USR-A' (bytes 15360000..20480512) overlap",
        ),
        ("backwards", "partition 3 'ROOT' (LBA 50000..=40000) starts after it ends"),
        ("huge-entry-size", "implausible entry array: 128 entries of 4294967295 bytes"),
    ] {
        let err = table(name).unwrap_err();
        assert!(matches!(err, GptError::Invalid { .. }) && err.to_string().contains(want), "{name}: {err}");
    }
}

fn probe(name: &str) -> fsprobe::Probe {
    let bytes = seed("ext_superblock", name);
    fsprobe::probe(&mut std::io::Cursor::new(&bytes), 0, bytes.len() as u64).unwrap()
}

#[test]
fn ext_superblock_seeds() {
    for (_, bytes) in corpus("ext_superblock") {
        fuzz::ext_superblock(&bytes);
    }
    let p = probe("ext4");
    assert_eq!((p.kind, p.label.as_deref()), (fsprobe::FsKind::Ext4, Some("cloudimg-rootfs")));
    let e = p.ext.unwrap();
    assert!(e.unclean().is_none() && e.features.unsupported().is_empty(), "{e:?}");
    assert_eq!(probe("ext2").kind, fsprobe::FsKind::Ext2);
    assert_eq!(probe("ext3").kind, fsprobe::FsKind::Ext3);
    assert_eq!(probe("ext4-1k-64bit").ext.unwrap().block_size, 1024);
    assert_eq!(probe("ext4-inline-data").ext.unwrap().features.unsupported()[0].0, "inline_data");
    assert_eq!(probe("ext4-bigalloc").ext.unwrap().features.unsupported()[0].0, "bigalloc");
    assert_eq!(
        probe("ext4-with-errors").ext.unwrap().unclean().unwrap(),
        "is marked as having errors (state 'with errors'), has 5 filesystem errors recorded by the kernel"
    );
    assert_eq!(probe("btrfs").kind, fsprobe::FsKind::Btrfs);
    assert_eq!(probe("vfat").label.as_deref(), Some("UEFI"));
}

fn output(name: &str) -> String {
    String::from_utf8(seed("debugfs_output", name)[1..].to_vec()).unwrap()
}

#[test]
fn debugfs_output_seeds() {
    for (_, bytes) in corpus("debugfs_output") {
        fuzz::debugfs_output(&bytes);
    }
    let st = e2fs::parse_stat(&output("stat-regular")).unwrap();
    assert_eq!((st.kind, st.mode, st.uid, st.gid), (e2fs::Kind::File(3 << 20), 0o644, 0, 0));
    let link = e2fs::parse_stat(&output("stat-fast-symlink")).unwrap();
    assert_eq!(link.fast_link.as_deref(), Some("/opt/extensions/kubernetes/kubernetes-v1.31.3-x86-64.raw"));
    assert!(e2fs::parse_stat(&output("stat-slow-symlink")).unwrap().fast_link.is_none());
    assert_eq!(e2fs::parse_ls(&output("ls-etc-extensions")).unwrap()[0].name, "kubernetes.raw");
    let ex = e2fs::parse_extents(&output("ex-multi")).unwrap();
    assert_eq!(ex.iter().map(|e| e.len).sum::<u64>(), 3 << 10);
    assert_eq!(e2fs::parse_extents(&output("ex-empty")).unwrap(), []);
    let paths = ["/etc/extensions".to_owned(), "/etc/extensions/kubernetes.raw".to_owned()];
    assert!(e2fs::parse_stat_session(&output("session-both"), &paths, 0).unwrap().iter().all(Option::is_some));
    let script = output("script-ex-section");
    let section = e2fs::extents_section(&script, "/opt/extensions/k/k.raw").unwrap();
    assert!(!e2fs::parse_extents(section).unwrap().is_empty());
}
