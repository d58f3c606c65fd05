//! Strong entity tags: each must change whenever the bytes behind a URL change.
//!
//! * An image in a publish-managed generation: `"sha256-<hex>"`, the digest that generation's
//!   `index.json` lists for it, used only when the size on disk matches the listed size.
//!   publish computed that digest while it copied the bytes and never changes an image's bytes
//!   afterwards, and the same image hard-linked into later generations keeps the same tag,
//!   so a cache revalidates it across publishes without a download.
//! * Any other file in a generation: `"<serial>-<dev>-<inode>-<size>-<mtime ns>"`. Committed
//!   generations are never written again, and the serial keeps a file in a new generation
//!   apart from one in an old generation even if a pruned inode number was reused within the
//!   same timestamp tick.
//! * A file in a plain directory: `"<dev>-<inode>-<size>-<mtime ns>-<ctime ns>"`. Replacing a
//!   file (rsync's temp file + rename) changes the inode; rewriting it in place changes the
//!   ctime, which no tool can set back (unlike the mtime, which `cp -p` and `touch -d` can).

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;

use release_index::index::{Index, MAX_INDEX_BYTES};
use rustix::fs::Stat;
use signing::Sha256Digest;
use sysext_model::ImageName;

use super::conditional::ETag;
use super::files::{self, RelPath};
use super::generation::Generation;

/// `(size, sha256)` of every image one index lists, by file name.
pub type Digests = HashMap<String, (u64, Sha256Digest)>;

/// Reads the digests from the `index.json` in `dir`. An index that cannot be read or parsed
/// gives none: the metadata tags still apply, and verify-release is the tool that reports a
/// broken index.
pub fn load_digests(dir: &OwnedFd) -> Option<Digests> {
    let rel = RelPath::from_request(&format!("/{}", release_index::layout::INDEX)).ok()?;
    let file = files::open_regular(dir, &rel).ok()?;
    let mut bytes = Vec::new();
    file.file.take(MAX_INDEX_BYTES + 1).read_to_end(&mut bytes).ok()?;
    let index = Index::parse(&bytes).ok()?;
    Some(index.artifacts().map(|(_, _, _, a)| (a.file.to_string(), (a.size, a.sha256))).collect())
}

fn ns(secs: i64, nsecs: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsecs)
}

/// The entity tag of a file opened from `generation`; `image` is what the path names, if an
/// image.
pub fn etag(generation: &Generation, image: Option<&ImageName>, stat: &Stat) -> ETag {
    let mtime = ns(stat.st_mtime, stat.st_mtime_nsec as i64);
    let (dev, ino, size) = (stat.st_dev, stat.st_ino, stat.st_size);
    match generation.serial {
        Some(serial) => {
            let listed = image.and_then(|image| generation.digests().get(&image.to_string()).copied());
            if let Some((listed_size, sha256)) = listed {
                if i64::try_from(listed_size).is_ok_and(|s| s == size) {
                    return ETag::new(&format!("sha256-{}", sha256.to_hex()));
                }
            }
            ETag::new(&format!("{serial}-{dev:x}-{ino:x}-{size:x}-{mtime:x}"))
        }
        None => {
            let ctime = ns(stat.st_ctime, stat.st_ctime_nsec as i64);
            ETag::new(&format!("{dev:x}-{ino:x}-{size:x}-{mtime:x}-{ctime:x}"))
        }
    }
}
