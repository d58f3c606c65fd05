//! GnuPG as the independent OpenPGP consumer: `gpgv` checks `SHA256SUMS.gpg` the way
//! systemd-pull's gpg does, and `gpg --show-keys` reads the exported keyring.
//!
//! Each call gets its own empty home directory, so nothing on the machine (a user's
//! `~/.gnupg/trustedkeys.kbx`) can make a signature pass.

use std::path::Path;
use std::process::{Command, Output};

/// What `gpgv` said.
#[derive(Debug)]
pub struct GpgvOutcome {
    /// Whether it exited 0 (a good signature by a key in the keyring).
    pub good: bool,
    /// Its status lines (`--status-fd`), e.g. `[GNUPG:] GOODSIG …`, `[GNUPG:] BADSIG …`.
    pub status: String,
    /// Its human-readable messages.
    pub stderr: String,
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// `gpgv --keyring KEYRING SIG DATA` (absolute paths; gpgv reads a bare name from its home).
pub fn gpgv(keyring: &Path, sig: &Path, data: &Path) -> GpgvOutcome {
    let home = tempfile::tempdir().unwrap();
    let keyring = std::fs::canonicalize(keyring).unwrap();
    let out = run(Command::new("gpgv")
        .arg("--homedir")
        .arg(home.path())
        .args(["--status-fd", "1", "--keyring"])
        .arg(&keyring)
        .arg(sig)
        .arg(data));
    GpgvOutcome {
        good: out.status.success(),
        status: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The primary-key fingerprints and user IDs of a keyring, as `gpg --show-keys` reads them.
pub fn show_keys(keyring: &Path) -> (Vec<String>, Vec<String>) {
    let home = tempfile::tempdir().unwrap();
    let out = run(Command::new("gpg")
        .arg("--homedir")
        .arg(home.path())
        .args(["--batch", "--with-colons", "--show-keys"])
        .arg(keyring));
    assert!(out.status.success(), "gpg --show-keys {}: {}", keyring.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut fprs = Vec::new();
    let mut uids = Vec::new();
    let mut after_pub = false;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        match fields[0] {
            "pub" => after_pub = true,
            "sub" => after_pub = false,
            // The first fpr after a pub line is the primary key's.
            "fpr" if after_pub => {
                fprs.push(fields[9].to_owned());
                after_pub = false;
            }
            "uid" => uids.push(fields[9].to_owned()),
            _ => {}
        }
    }
    (fprs, uids)
}
