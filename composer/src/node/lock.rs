//! One `composer node` run at a time per root: an exclusive `flock` on
//! `/var/lib/composer/lock`, which the kernel releases when the process dies, however it dies.
//!
//! The file is created once and never written (a run that changes nothing changes no
//! mtime); a run that finds it locked names the holder from `/proc/locks` (pid and command
//! line).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

use super::root::NodeRoot;
use super::state::STATE_DIR;
use super::NodeError;

/// The lock file.
pub const LOCK_FILE: &str = "/var/lib/composer/lock";

/// A held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct NodeLock {
    _file: fs::File,
}

/// Who holds the `flock` on `file`, as `/proc/locks` and `/proc/<pid>/cmdline` tell.
fn holder(file: &fs::File) -> String {
    let Ok(meta) = file.metadata() else { return "another process".into() };
    let dev = meta.dev();
    let id = format!("{:02x}:{:02x}:{}", rustix::fs::major(dev), rustix::fs::minor(dev), meta.ino());
    let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
    let pid = locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&id.as_str())).then(|| f.get(4).map(|p| (*p).to_owned()))?
    });
    let Some(pid) = pid else { return "another process".into() };
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    if cmdline.is_empty() {
        format!("pid {pid}")
    } else {
        format!("pid {pid} ({})", cmdline.join(" "))
    }
}

/// Takes the lock of `root`. When another run holds it, waits up to `wait` (saying once,
/// through `notice`, whom for), then fails naming the holder.
pub fn acquire(root: &NodeRoot, wait: Duration, notice: &mut dyn FnMut(&str)) -> Result<NodeLock, NodeError> {
    root.put_dir(STATE_DIR)?;
    let path = root.path(LOCK_FILE);
    let io = |cause| NodeError::Io { path: path.clone(), cause };
    let file = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(NodeLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let who = holder(&file);
                if Instant::now() >= deadline {
                    return Err(NodeError::Locked { path: path.clone(), holder: who });
                }
                if !told {
                    notice(&format!("{} is held by {who}; waiting up to {}s", path.display(), wait.as_secs()));
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(io(e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::open(dir.path()).unwrap();
        let held = acquire(&root, Duration::ZERO, &mut |_| {}).unwrap();
        let mut notices = Vec::new();
        let err =
            acquire(&root, Duration::from_millis(300), &mut |m| notices.push(m.to_owned())).unwrap_err().to_string();
        assert!(err.contains(&format!("held by pid {} (", std::process::id())), "{err}");
        assert_eq!(notices.len(), 1, "{notices:?}");
        drop(held);
        let mtime = fs::metadata(root.path(LOCK_FILE)).unwrap().modified().unwrap();
        acquire(&root, Duration::ZERO, &mut |_| {}).unwrap();
        assert_eq!(fs::metadata(root.path(LOCK_FILE)).unwrap().modified().unwrap(), mtime, "never written");
    }
}
