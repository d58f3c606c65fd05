//! Checks a staged tree against what systemd-sysext merges and what the target
//! architecture can run, before a single image byte is written.
//!
//! Every rule here prevents a failure that would otherwise only show at a node's boot: files
//! outside `/usr` and `/opt` are silently ignored by systemd-sysext, `/usr/lib/os-release`
//! makes it refuse the image, `/usr/sbin` shadows a symlink on Flatcar and Fedora, and a
//! binary for the wrong architecture fails with "exec format error" in a crash loop.

use std::fmt;
use std::io::Read;

use sysext_model::{elf, Arch};

use crate::tree::{FileSource, Node, Tree};

/// One problem found in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Path in the image.
    pub path: String,
    /// What is wrong and why it matters.
    pub problem: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)
    }
}

/// All violations, reported together.
#[derive(Debug, thiserror::Error)]
#[error("the image would not work as a system extension ({} problem{}):\n  {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
pub struct LintError(pub Vec<Violation>);

fn head_of(source: &FileSource) -> std::io::Result<Vec<u8>> {
    match source {
        FileSource::Bytes(b) => Ok(b[..b.len().min(elf::HEADER_LEN)].to_vec()),
        FileSource::Path(p) => {
            let mut head = Vec::with_capacity(elf::HEADER_LEN);
            fs_err::File::open(p)?.take(elf::HEADER_LEN as u64).read_to_end(&mut head)?;
            Ok(head)
        }
    }
}

/// Checks the tree; an empty list means it is fine.
pub fn lint(tree: &Tree, arch: Arch) -> std::io::Result<Vec<Violation>> {
    let mut out = Vec::new();
    let mut push =
        |path: &str, problem: &str| out.push(Violation { path: path.to_owned(), problem: problem.to_owned() });
    for (name, node) in &tree.root().entries {
        let path = format!("/{name}");
        match (name.as_str(), node) {
            ("usr" | "opt", Node::Dir(_)) => {}
            ("usr" | "opt", _) => push(&path, "must be a real directory: systemd-sysext cannot merge a symlinked hierarchy"),
            ("etc", _) => push(&path, "systemd-sysext merges only /usr and /opt, so /etc would be ignored; ship defaults under /usr/share and let units or the admin write /etc"),
            ("var" | "run", _) => push(&path, "systemd-sysext merges only /usr and /opt, so this would be ignored; create state at runtime (tmpfiles.d, StateDirectory=, or a symlink into /var)"),
            _ => push(&path, "outside /usr and /opt: systemd-sysext would ignore it"),
        }
    }
    if tree.get("/usr/sbin").is_some() {
        push("/usr/sbin", "do not ship /usr/sbin: it is a symlink to bin on Flatcar and Fedora and would shadow it; install into /usr/bin");
    }
    if tree.get("/usr/lib/os-release").is_some() {
        push("/usr/lib/os-release", "an extension must not ship os-release: systemd-sysext refuses such images");
    }
    for (path, node) in tree.walk() {
        if let Node::File(file) = node {
            if let Some(machine) = elf::machine(&head_of(&file.source)?) {
                if machine != arch.elf_machine() {
                    push(
                        &path,
                        &format!(
                            "ELF binary for {}, but the image is for {arch}: it would fail with 'exec format error' on the node",
                            elf::machine_name(machine)
                        ),
                    );
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(machine: u16) -> FileSource {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        FileSource::Bytes(h.into())
    }

    #[test]
    fn clean_tree_passes() {
        let mut t = Tree::new();
        t.add_file("/usr/bin/kubelet", 0o755, elf(62)).unwrap();
        t.add_file("/opt/x/readme", 0o644, FileSource::Bytes(b"hi".to_vec().into())).unwrap();
        assert_eq!(lint(&t, Arch::X86_64).unwrap(), vec![]);
    }

    #[test]
    fn reports_every_violation() {
        let mut t = Tree::new();
        let txt = || FileSource::Bytes(b"x".to_vec().into());
        t.add_file("/etc/kubernetes/x", 0o644, txt()).unwrap();
        t.add_file("/var/lib/x", 0o644, txt()).unwrap();
        t.add_file("/run/x", 0o644, txt()).unwrap();
        t.add_file("/boot/x", 0o644, txt()).unwrap();
        t.add_file("/usr/sbin/x", 0o755, txt()).unwrap();
        t.add_file("/usr/lib/os-release", 0o644, txt()).unwrap();
        t.add_file("/usr/bin/kubelet", 0o755, elf(183)).unwrap();
        let v = lint(&t, Arch::X86_64).unwrap();
        let paths: Vec<&str> = v.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(paths, ["/boot", "/etc", "/run", "/var", "/usr/sbin", "/usr/lib/os-release", "/usr/bin/kubelet"]);
        assert!(v[6].problem.contains("ELF binary for arm64, but the image is for x86-64"), "{}", v[6].problem);
        let msg = LintError(v).to_string();
        assert!(msg.starts_with("the image would not work as a system extension (7 problems):"), "{msg}");
    }

    #[test]
    fn symlinked_usr_is_refused() {
        let mut t = Tree::new();
        t.add_symlink("/usr", "/opt").unwrap();
        let v = lint(&t, Arch::Arm64).unwrap();
        assert_eq!(v.len(), 1);
        assert!(v[0].problem.contains("real directory"));
    }
}
