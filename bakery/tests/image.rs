//! The squashfs writer checked against the real readers: unsquashfs, rdsquashfs, sqfsdiff
//! (against a mksquashfs image of the same tree), backhand and, when running as root, the
//! kernel itself.

use std::collections::BTreeMap;
use std::fs;
use std::num::NonZeroUsize;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use sysext_tests::harness::Need;

use bakery::image::{write_image, BlockSize, Compression, ImageError, ImageOptions, ImageSummary};
use bakery::tree::{FileSource, Tree};
use signing::Sha256Digest;
use sysext_tests::noise;

// ---------------------------------------------------------------------------------------------
// The expected content of an image, materialisable as a directory and as a `Tree`.

#[derive(Clone, Debug)]
enum Entry {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(String),
}

#[derive(Clone, Debug, Default)]
struct Spec {
    /// Absolute image path -> entry; parents are always present.
    entries: BTreeMap<String, Entry>,
}

impl Spec {
    fn add(&mut self, path: &str, entry: Entry) -> &mut Self {
        let mut parent = String::new();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for p in &parts[..parts.len() - 1] {
            parent.push('/');
            parent.push_str(p);
            self.entries.entry(parent.clone()).or_insert(Entry::Dir(0o755));
        }
        self.entries.insert(path.to_owned(), entry);
        self
    }

    fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.add(path, Entry::Dir(mode))
    }

    fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> &mut Self {
        self.add(path, Entry::File(mode, data))
    }

    fn link(&mut self, path: &str, target: &str) -> &mut Self {
        self.add(path, Entry::Link(target.to_owned()))
    }

    /// The tree with in-memory sources, or with files read from `materialised` when given.
    fn tree(&self, materialised: Option<&Path>) -> Tree {
        let mut t = Tree::new();
        for (path, e) in &self.entries {
            match e {
                Entry::Dir(mode) => t.add_dir(path, *mode).unwrap(),
                Entry::File(mode, data) => {
                    let source = match materialised {
                        Some(dir) => FileSource::Path(dir.join(&path[1..])),
                        None => FileSource::Bytes(data.as_slice().into()),
                    };
                    t.add_file(path, *mode, source).unwrap()
                }
                Entry::Link(target) => t.add_symlink(path, target).unwrap(),
            }
        }
        t
    }

    fn materialise(&self, dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        for (path, e) in &self.entries {
            let p = dir.join(&path[1..]);
            match e {
                Entry::Dir(_) => fs::create_dir(&p).unwrap(),
                Entry::File(mode, data) => {
                    fs::write(&p, data).unwrap();
                    fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
                }
                Entry::Link(target) => symlink(target, &p).unwrap(),
            }
        }
        // Directory modes last: a 0500 directory would refuse its own children.
        for (path, e) in self.entries.iter().rev() {
            if let Entry::Dir(mode) = e {
                fs::set_permissions(dir.join(&path[1..]), fs::Permissions::from_mode(*mode)).unwrap();
            }
        }
    }

    /// Asserts that `root` holds exactly this spec (contents, symlink targets and, if asked,
    /// permission bits).
    fn assert_matches(&self, root: &Path, check_modes: bool) {
        let mut found = BTreeMap::new();
        collect(root, root, &mut found);
        let expected: Vec<&String> = self.entries.keys().collect();
        let actual: Vec<&String> = found.keys().collect();
        assert_eq!(actual, expected, "entries under {}", root.display());
        for (path, e) in &self.entries {
            let p = root.join(&path[1..]);
            let md = fs::symlink_metadata(&p).unwrap();
            match e {
                Entry::Dir(mode) => {
                    assert!(md.is_dir(), "{path}");
                    if check_modes {
                        assert_eq!(md.mode() & 0o7777, *mode, "{path}");
                    }
                }
                Entry::File(mode, data) => {
                    assert!(md.is_file(), "{path}");
                    assert!(fs::read(&p).unwrap() == *data, "{path}: contents differ");
                    if check_modes {
                        assert_eq!(md.mode() & 0o7777, *mode, "{path}");
                    }
                }
                Entry::Link(target) => {
                    assert!(md.file_type().is_symlink(), "{path}");
                    assert_eq!(fs::read_link(&p).unwrap(), PathBuf::from(target), "{path}");
                }
            }
        }
    }
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, ()>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.insert(format!("/{}", p.strip_prefix(root).unwrap().display()), ());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            collect(root, &p, out);
        }
    }
}

/// Compressible, binary-ish data: text with some noise in it.
fn texty(seed: u64, len: usize) -> Vec<u8> {
    let n = noise(seed, len);
    let words: &[&[u8]] = &[b"squashfs ", b"kubelet ", b"containerd ", b"\x00\x00\x00\x48\x8b", b"runtime.", b"\n"];
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        if n[i] < 40 {
            out.push(n[(i + 1) % len]);
        } else {
            out.extend_from_slice(words[usize::from(n[i]) % words.len()]);
        }
        i = (i + 1) % len;
    }
    out.truncate(len);
    out
}

/// Every edge case in one tree; sizes are relative to the block size `bs`.
fn edge_spec(bs: usize) -> Spec {
    let mut s = Spec::default();
    s.dir("/usr", 0o755).dir("/usr/bin", 0o755);
    s.file("/usr/bin/exact-block", 0o755, noise(1, bs));
    s.file("/usr/bin/block-plus-one", 0o755, texty(2, bs + 1));
    s.file("/usr/bin/multi", 0o755, texty(3, 5 * (1 << 20) + 77));
    s.file("/usr/bin/incompressible", 0o755, noise(4, 3 * bs + 5));
    s.file("/usr/bin/setuid", 0o4755, texty(5, 3000));
    let mut sparse = noise(6, bs);
    sparse.extend(vec![0; 2 * bs]);
    sparse.extend(texty(7, bs));
    sparse.extend(noise(8, 1000));
    s.file("/usr/bin/sparse-middle", 0o755, sparse);
    s.file("/usr/bin/all-zero", 0o644, vec![0; 2 * bs]);
    s.file("/usr/lib/empty", 0o644, Vec::new());
    s.file("/usr/lib/conf", 0o644, b"key = value\n".to_vec());
    s.dir("/usr/lib/private", 0o700).file("/usr/lib/private/key", 0o600, texty(9, 100));
    s.dir("/usr/share/empty-dir", 0o755);
    let deep: String = (0..40).map(|i| format!("/level{i}")).collect();
    s.file(&format!("/deep{deep}/leaf"), 0o644, b"bottom\n".to_vec());
    s.link("/usr/links/short", "x");
    let long_target = format!("{}{}", "../".repeat(20), "t".repeat(140));
    assert_eq!(long_target.len(), 200);
    s.link("/usr/links/long", &long_target);
    s.link("/usr/links/absolute", "/usr/bin/multi");
    // Several directory headers (256 entries each) and a listing well over 8 KiB.
    for i in 0..320u64 {
        let name = format!("/usr/share/big/entry-{i:04}-{}", "n".repeat(100));
        match i % 10 {
            0 => s.dir(&name, 0o755),
            7 => s.link(&name, "../target"),
            _ => s.file(&name, 0o644, texty(100 + i, (i as usize * 37) % 700)),
        };
    }
    // A listing over 64 KiB forces an extended directory inode with a lookup index.
    for i in 0..600u64 {
        s.file(
            &format!("/usr/share/huge/{i:05}-{}", "h".repeat(110)),
            0o644,
            vec![b'a' + (i % 26) as u8; (i % 5) as usize],
        );
    }
    // Many small files: tails packed across several fragment blocks.
    for i in 0..1500u64 {
        s.file(&format!("/usr/share/small/f{i:04}"), 0o644, texty(1000 + i, 100 + (i as usize * 13) % 300));
    }
    s
}

/// A smaller tree for the compressor x block size matrix.
fn core_spec(bs: usize) -> Spec {
    let mut s = Spec::default();
    s.file("/bin/exact", 0o755, texty(11, bs));
    s.file("/bin/plus-one", 0o755, noise(12, bs + 1));
    s.file("/bin/multi", 0o755, texty(13, 1 << 21));
    let mut sparse = texty(14, bs);
    sparse.extend(vec![0; bs]);
    sparse.extend(texty(15, 10));
    s.file("/bin/sparse", 0o755, sparse);
    s.file("/etc/empty", 0o644, Vec::new());
    s.link("/etc/link", "../bin/multi");
    s.dir("/var/empty", 0o700);
    for i in 0..60u64 {
        s.file(&format!("/share/f{i:02}"), 0o644, texty(20 + i, 50 + i as usize * 200));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Running the tools.

/// Runs a command that must succeed without printing any warning.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.env("TZ", "UTC").output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    let lower = text.to_lowercase();
    for bad in ["warn", "error", "fail", "corrupt", "invalid"] {
        assert!(!lower.contains(bad), "{cmd:?} printed '{bad}':\n{text}");
    }
    out
}

fn options(compression: Compression, block_size: &str) -> ImageOptions {
    ImageOptions {
        compression,
        block_size: block_size.parse().unwrap(),
        threads: NonZeroUsize::new(2).unwrap(),
        ..ImageOptions::default()
    }
}

fn write(tree: &Tree, opts: &ImageOptions, path: &Path) -> ImageSummary {
    let mut f = fs::File::create(path).unwrap();
    let summary = write_image(tree, opts, &mut f).unwrap();
    assert_eq!(fs::metadata(path).unwrap().len(), summary.image_size);
    summary
}

fn sha256(path: &Path) -> Sha256Digest {
    Sha256Digest::of_reader(fs::File::open(path).unwrap()).unwrap()
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

// ---------------------------------------------------------------------------------------------
// Tests.

fn superblock_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    let bs = 131072;
    let spec = edge_spec(bs);
    let img = dir.path().join("edge.raw");
    let opts = ImageOptions { mtime: 1_700_000_000, ..options(Compression::Zstd, "128K") };
    let summary = write(&spec.tree(None), &opts, &img);
    let b = fs::read(&img).unwrap();

    assert_eq!(&b[0..4], b"hsqs");
    assert_eq!(le32(&b, 4), summary.inodes);
    assert_eq!(summary.inodes as usize, spec.entries.len() + 1, "one inode per entry plus the root");
    assert_eq!(le32(&b, 8), 1_700_000_000);
    assert_eq!(le32(&b, 12), bs as u32);
    assert_eq!(le32(&b, 16), summary.fragments);
    assert!(summary.fragments >= 3, "small files fill several fragment blocks: {summary:?}");
    assert_eq!(le16(&b, 20), 6, "zstd");
    assert_eq!(le16(&b, 22), 17, "block log");
    let flags = le16(&b, 24);
    assert_eq!(flags & 0x200, 0x200, "NO_XATTRS");
    // bakery's default zstd level (10) is not squashfs-tools' (15), so it is recorded.
    assert_eq!(flags & 0x400, 0x400, "compressor options");
    assert_eq!(&b[96..102], &[4, 0x80, 10, 0, 0, 0], "stored options block: level 10");
    assert_eq!(le16(&b, 26), 1, "one id");
    assert_eq!((le16(&b, 28), le16(&b, 30)), (4, 0));
    let bytes_used = le64(&b, 40);
    assert_eq!(bytes_used, summary.bytes_used);
    assert_eq!(summary.image_size % 4096, 0);
    assert!(summary.image_size - bytes_used < 4096);
    assert!(b[bytes_used as usize..].iter().all(|&x| x == 0), "zero padding");
    let (id, xattr, inode, dir_t, frag, export) =
        (le64(&b, 48), le64(&b, 56), le64(&b, 64), le64(&b, 72), le64(&b, 80), le64(&b, 88));
    assert_eq!((xattr, export), (u64::MAX, u64::MAX));
    assert!(inode < dir_t && dir_t < frag && frag < id && id < bytes_used, "table order");
    assert_eq!(id + 8, bytes_used, "the id index ends the filesystem");
    // The single id is 0 (root): one stored metadata block right before its index.
    let id_block = le64(&b, id as usize) as usize;
    assert_eq!(&b[id_block..id_block + 6], &[0x04, 0x80, 0, 0, 0, 0]);
    // The fragment index points at blocks right after the directory table's end.
    assert!(le64(&b, frag as usize) > dir_t);
    // Root inode: the last inode written (post-order), in the last inode block.
    assert!(le64(&b, 32) >> 16 < dir_t - inode);

    {
        let out = run(Command::new("unsquashfs").arg("-s").arg(&img));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Compression zstd") && text.contains("Block size 131072"), "{text}");
    }
}

fn unsquashfs_listing_shows_root_owner_modes_sizes_and_fixed_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let spec = edge_spec(131072);
    for (mtime, stamp) in [(0u32, "1970-01-01 00:00"), (1_700_000_000, "2023-11-14 22:13")] {
        let img = dir.path().join(format!("list-{mtime}.raw"));
        write(&spec.tree(None), &ImageOptions { mtime, ..options(Compression::Zstd, "128K") }, &img);
        let out = run(Command::new("unsquashfs").arg("-lln").arg(&img));
        let mut seen = 0;
        for line in String::from_utf8(out.stdout).unwrap().lines().filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() >= 6, "{line}");
            assert!(f[1] == "0/0" || f[1] == "root/root", "{line}");
            assert_eq!(format!("{} {}", f[3], f[4]), stamp, "{line}");
            let path = f[5].strip_prefix("squashfs-root").unwrap_or_else(|| panic!("{line}"));
            if path.is_empty() {
                assert_eq!(f[0], "drwxr-xr-x", "{line}");
                continue;
            }
            seen += 1;
            let (perms, size) = match &spec.entries[path] {
                Entry::Dir(mode) => (format!("d{}", rwx(*mode)), None),
                Entry::File(mode, data) => (format!("-{}", rwx(*mode)), Some(data.len())),
                Entry::Link(target) => {
                    assert_eq!(f[7], target, "{line}");
                    ("lrwxrwxrwx".to_owned(), Some(target.len()))
                }
            };
            assert_eq!(f[0], perms, "{line}");
            if let Some(size) = size {
                assert_eq!(f[2], size.to_string(), "{line}");
            }
        }
        assert_eq!(seen, spec.entries.len());
    }
}

/// `ls -l` style permissions.
fn rwx(mode: u32) -> String {
    let mut s: Vec<char> =
        "rwxrwxrwx".chars().enumerate().map(|(i, c)| if mode & (0o400 >> i) != 0 { c } else { '-' }).collect();
    if mode & 0o4000 != 0 {
        s[2] = if s[2] == 'x' { 's' } else { 'S' };
    }
    s.into_iter().collect()
}

fn unsquashfs_and_rdsquashfs_extract_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = edge_spec(131072);
    let src = dir.path().join("src");
    spec.materialise(&src);
    let img = dir.path().join("edge.raw");
    // Sources read from disk this time, block by block.
    write(&spec.tree(Some(&src)), &options(Compression::Zstd, "128K"), &img);
    {
        let out = dir.path().join("unsquashfs");
        run(Command::new("unsquashfs").arg("-no-progress").arg("-d").arg(&out).arg(&img));
        spec.assert_matches(&out, true);
    }
    {
        let out = dir.path().join("rdsquashfs");
        fs::create_dir(&out).unwrap();
        run(Command::new("rdsquashfs").args(["-q", "-C", "-u", "/", "-p"]).arg(&out).arg(&img));
        spec.assert_matches(&out, true);
    }
}

fn sqfsdiff_finds_no_difference_to_mksquashfs() {
    let dir = tempfile::tempdir().unwrap();
    let spec = edge_spec(131072);
    let src = dir.path().join("src");
    spec.materialise(&src);
    let reference = dir.path().join("ref.sqfs");
    run(Command::new("mksquashfs").arg(&src).arg(&reference).args([
        "-all-root",
        "-noappend",
        "-mkfs-time",
        "0",
        "-all-time",
        "0",
        "-quiet",
        "-no-progress",
    ]));
    for (compression, bs) in [(Compression::Zstd, "128K"), (Compression::Gzip, "1M")] {
        let ours = dir.path().join(format!("ours-{compression}.raw"));
        write(&spec.tree(Some(&src)), &options(compression, bs), &ours);
        // Contents, owners, permissions, timestamps and inode numbers (same numbering scheme).
        let out = Command::new("sqfsdiff")
            .args(["-T", "-I", "--old"])
            .arg(&reference)
            .arg("--new")
            .arg(&ours)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "sqfsdiff reports differences ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn backhand_reads_identical_contents() {
    let dir = tempfile::tempdir().unwrap();
    for compression in Compression::ALL {
        let spec = core_spec(131072);
        let img = dir.path().join(format!("{compression}.raw"));
        write(&spec.tree(None), &options(compression, "128K"), &img);
        let reader = std::io::BufReader::new(fs::File::open(&img).unwrap());
        let fs_reader = backhand::FilesystemReader::from_reader(reader).unwrap();
        let mut seen = 0;
        for node in fs_reader.files() {
            let path = node.fullpath.to_str().unwrap();
            if path == "/" {
                continue;
            }
            seen += 1;
            assert_eq!((node.header.uid, node.header.gid, node.header.mtime), (0, 0, 0), "{path}");
            match (&node.inner, &spec.entries[path]) {
                (backhand::InnerNode::File(file), Entry::File(mode, data)) => {
                    let mut got = Vec::new();
                    std::io::Read::read_to_end(&mut fs_reader.file(file).reader(), &mut got).unwrap();
                    assert!(got == *data, "{compression} {path}: contents differ");
                    assert_eq!(u32::from(node.header.permissions), *mode, "{path}");
                }
                (backhand::InnerNode::Symlink(l), Entry::Link(target)) => assert_eq!(l.link, PathBuf::from(target)),
                (backhand::InnerNode::Dir(_), Entry::Dir(mode)) => {
                    assert_eq!(u32::from(node.header.permissions), *mode)
                }
                (got, want) => panic!("{path}: {got:?} vs {want:?}"),
            }
        }
        assert_eq!(seen, spec.entries.len(), "{compression}");
    }
}

fn every_compressor_and_block_size_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    for bs in ["4K", "128K", "1M"] {
        let spec = core_spec(bs.parse::<BlockSize>().unwrap().get() as usize);
        for compression in Compression::ALL {
            let img = dir.path().join(format!("{compression}-{bs}.raw"));
            let summary = write(&spec.tree(None), &options(compression, bs), &img);
            let text = String::from_utf8(run(Command::new("unsquashfs").arg("-s").arg(&img)).stdout).unwrap();
            assert!(text.contains(&format!("Compression {compression}")), "{text}");
            let out = dir.path().join(format!("out-{compression}-{bs}"));
            run(Command::new("unsquashfs").arg("-no-progress").arg("-d").arg(&out).arg(&img));
            spec.assert_matches(&out, true);
            assert!(summary.data_blocks > 0 && summary.fragments > 0, "{summary:?}");
        }
    }
}

fn output_is_deterministic_across_threads_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let spec = edge_spec(65536);
    let tree = spec.tree(None);
    let mut digests = Vec::new();
    for (i, threads) in [1usize, 2, 2, 3].into_iter().enumerate() {
        let img = dir.path().join(format!("det-{i}.raw"));
        let opts = ImageOptions {
            threads: NonZeroUsize::new(threads).unwrap(),
            mtime: 42,
            ..options(Compression::Zstd, "64K")
        };
        write(&tree, &opts, &img);
        digests.push(sha256(&img));
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    // Writing over a longer existing file must not leave stale bytes behind.
    let img = dir.path().join("det-0.raw");
    fs::write(&img, vec![0xAA; 64 << 20]).unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    write_image(&tree, &ImageOptions { mtime: 42, ..options(Compression::Zstd, "64K") }, &mut f).unwrap();
    drop(f);
    assert_eq!(sha256(&img), digests[0]);
}

fn lz4_and_non_default_levels_write_compressor_options() {
    let dir = tempfile::tempdir().unwrap();
    let tree = core_spec(131072).tree(None);
    for (compression, level, expected) in [
        (Compression::Lz4, None, Some(vec![8u8, 0x80, 1, 0, 0, 0, 0, 0, 0, 0])),
        (Compression::Zstd, Some(3), Some(vec![4, 0x80, 3, 0, 0, 0])),
        (Compression::Zstd, Some(15), None),
        (Compression::Gzip, None, None),
        (Compression::Xz, Some(9), None),
    ] {
        let img = dir.path().join("opts.raw");
        write(&tree, &ImageOptions { level, ..options(compression, "128K") }, &img);
        let b = fs::read(&img).unwrap();
        let flags = le16(&b, 24);
        match expected {
            Some(block) => {
                assert_eq!(flags & 0x400, 0x400, "{compression}");
                assert_eq!(&b[96..96 + block.len()], block.as_slice(), "{compression}");
            }
            None => assert_eq!(flags & 0x400, 0, "{compression}"),
        }
        {
            let out = dir.path().join("opts-out");
            let _ = fs::remove_dir_all(&out);
            run(Command::new("unsquashfs").arg("-no-progress").arg("-d").arg(&out).arg(&img));
        }
    }
}

fn empty_trees_and_empty_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut only_empty = Spec::default();
    only_empty.file("/a", 0o644, Vec::new()).dir("/d", 0o755).file("/d/b", 0o644, Vec::new());
    for (name, spec) in [("empty", Spec::default()), ("only-empty-files", only_empty)] {
        let img = dir.path().join(format!("{name}.raw"));
        let summary = write(&spec.tree(None), &options(Compression::Zstd, "128K"), &img);
        assert_eq!((summary.fragments, summary.data_blocks), (0, 0));
        let b = fs::read(&img).unwrap();
        // Without fragments the fragment table offset is where the directory table ends, as
        // mksquashfs writes it: the id table's first block.
        assert_eq!(le64(&b, 80), le64(&b, le64(&b, 48) as usize), "{name}");
        {
            let out = dir.path().join(format!("{name}-out"));
            run(Command::new("unsquashfs").arg("-no-progress").arg("-d").arg(&out).arg(&img));
            spec.assert_matches(&out, true);
        }
        with_kernel_mount(&img, |mnt| spec.assert_matches(mnt, true));
    }
}

fn errors_name_the_offending_input() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("err.raw");
    let mut f = fs::File::create(&img).unwrap();

    let mut t = Tree::new();
    t.add_file("/usr/bin/ok", 0o755, FileSource::Bytes(vec![1u8; 300_000].into())).unwrap();
    let missing = dir.path().join("does-not-exist");
    t.add_file("/usr/bin/kubelet", 0o755, FileSource::Path(missing.clone())).unwrap();
    match write_image(&t, &ImageOptions::default(), &mut f) {
        Err(e @ ImageError::ReadSource { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(missing.to_str().unwrap()) && msg.contains("/usr/bin/kubelet"), "{msg}");
        }
        other => panic!("{other:?}"),
    }

    let mut t = Tree::new();
    t.add_file("/dir-as-file", 0o644, FileSource::Path(dir.path().to_owned())).unwrap();
    assert!(matches!(write_image(&t, &ImageOptions::default(), &mut f), Err(ImageError::ReadSource { .. })));

    let mut t = Tree::new();
    t.add_symlink("/l", &"x".repeat(5000)).unwrap();
    match write_image(&t, &ImageOptions::default(), &mut f) {
        Err(e @ ImageError::InvalidEntry { .. }) => assert!(e.to_string().contains("'/l'"), "{e}"),
        other => panic!("{other:?}"),
    }

    let bad_level = ImageOptions { compression: Compression::Gzip, level: Some(12), ..ImageOptions::default() };
    match write_image(&Tree::new(), &bad_level, &mut f) {
        Err(e @ ImageError::InvalidLevel { .. }) => assert!(e.to_string().contains("1..=9"), "{e}"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The kernel.

/// Unmounts on drop, so a failed assertion inside a mounted section still cleans up.
struct Mounted {
    dir: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(&self.dir).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("failed to unmount {}: {status:?}", self.dir.display());
        }
    }
}

/// Mounts `img` read-only through a loop device and runs `check` on the mount point (tests
/// that call this declare [`Need::LoopDevices`]).
fn with_kernel_mount(img: &Path, check: impl FnOnce(&Path)) {
    let mnt = tempfile::tempdir().unwrap();
    let status =
        Command::new("mount").args(["-t", "squashfs", "-o", "loop,ro"]).arg(img).arg(mnt.path()).status().unwrap();
    assert!(status.success(), "the kernel refused {} (see dmesg)", img.display());
    {
        let _guard = Mounted { dir: mnt.path().to_owned() };
        check(mnt.path());
    }
    let loops = Command::new("losetup").arg("-a").output().unwrap();
    let loops = String::from_utf8_lossy(&loops.stdout);
    assert!(!loops.contains(img.to_str().unwrap()), "loop device left behind: {loops}");
}

fn kernel_mounts_every_compressor() {
    let dir = tempfile::tempdir().unwrap();
    let spec = edge_spec(131072);
    let tree = spec.tree(None);
    for (compression, bs) in [
        (Compression::Zstd, "128K"),
        (Compression::Xz, "128K"),
        (Compression::Gzip, "128K"),
        (Compression::Lz4, "128K"),
        (Compression::Zstd, "4K"),
        (Compression::Zstd, "1M"),
    ] {
        let img = dir.path().join(format!("kernel-{compression}-{bs}.raw"));
        write(&tree, &options(compression, bs), &img);
        with_kernel_mount(&img, |mnt| {
            spec.assert_matches(mnt, true);
            let md = fs::metadata(mnt.join("usr/bin/multi")).unwrap();
            assert_eq!((md.uid(), md.gid(), md.mtime()), (0, 0, 0));
            // Lookups inside the extended directory go through its index.
            let huge = fs::read_dir(mnt.join("usr/share/huge")).unwrap().count();
            assert_eq!(huge, 600);
            let name = format!("00599-{}", "h".repeat(110));
            assert_eq!(fs::read(mnt.join("usr/share/huge").join(name)).unwrap(), vec![b'a' + (599 % 26) as u8; 4]);
        });
    }
}

fn main() -> std::process::ExitCode {
    sysext_tests::harness::run(vec![
        sysext_tests::test!(superblock_and_layout).tools(&["unsquashfs"]),
        sysext_tests::test!(unsquashfs_listing_shows_root_owner_modes_sizes_and_fixed_mtime).tools(&["unsquashfs"]),
        sysext_tests::test!(unsquashfs_and_rdsquashfs_extract_identical_bytes).tools(&["unsquashfs", "rdsquashfs"]),
        sysext_tests::test!(sqfsdiff_finds_no_difference_to_mksquashfs).tools(&["mksquashfs", "sqfsdiff"]),
        sysext_tests::test!(backhand_reads_identical_contents),
        sysext_tests::test!(every_compressor_and_block_size_round_trips).tools(&["unsquashfs"]),
        sysext_tests::test!(output_is_deterministic_across_threads_and_runs),
        sysext_tests::test!(lz4_and_non_default_levels_write_compressor_options).tools(&["unsquashfs"]),
        sysext_tests::test!(empty_trees_and_empty_files_only).tools(&["unsquashfs"]),
        sysext_tests::test!(errors_name_the_offending_input),
        sysext_tests::test!(kernel_mounts_every_compressor).needs([Need::LoopDevices]).tools(&["mount", "losetup"]),
    ])
}
