//! `#cloud-config` for Ubuntu: cloud-init writes a oneshot unit and a POSIX shell script
//! that install the node plan, and starts the unit from `runcmd`.
//!
//! cloud-init cannot check a download: `write_files[].source` exists only since 24.3 (Debian
//! 12 has 22.4), has no digest, and falls back to inline content when the fetch fails. So
//! the config carries a script ([`SCRIPT_PATH`], `provision.sh` beside this file plus the plan
//! as shell function calls) that downloads with curl or wget, checks size, SHA-256 and
//! SHA-512 against the values written into it, and only then changes the node; see the
//! script's header for the order. It runs as [`UNIT`] so its output is in the journal, and
//! the `runcmd` entry stops the rest of `runcmd` (a `kubeadm join`, say) when it fails.

use std::fmt::Write as _;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::plan::{Entry, ImageSource, NodePlan};

/// The first line cloud-init requires of a cloud-config.
pub const HEADER: &str = "#cloud-config\n";
/// Where the script is written.
pub const SCRIPT_PATH: &str = "/usr/local/libexec/composer-provision";
/// The unit that runs it.
pub const UNIT: &str = "composer-provision.service";
/// Where the unit is written.
pub const UNIT_PATH: &str = "/etc/systemd/system/composer-provision.service";

/// The script without its plan.
const SCRIPT: &str = include_str!("provision.sh");

/// The cloud-config keys composer writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudConfig {
    /// Files written in the init stage.
    pub write_files: Vec<WriteFile>,
    /// Commands run once per instance in the final stage.
    pub runcmd: Vec<RunCmd>,
}

/// `write_files[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFile {
    /// Absolute path.
    pub path: String,
    /// `user:group`.
    pub owner: String,
    /// Octal permissions as a string (`'0755'`), as cloud-init expects.
    pub permissions: String,
    /// Contents.
    pub content: String,
}

/// `runcmd[]`: a line of shell, or an argument vector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunCmd {
    /// Written into cloud-init's runcmd script as it is.
    Shell(String),
    /// Quoted by cloud-init.
    Argv(Vec<String>),
}

/// Single-quotes `s` for a POSIX shell.
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The script for `plan`: `provision.sh`, then the plan as a `plan` function whose lines the
/// script runs once per phase, then the call to `main`.
pub fn script(plan: &NodePlan) -> Result<String> {
    let mut s = String::from(SCRIPT);
    // Every argument below is single-quoted data (file contents may hold `$` or backquotes
    // on purpose); shellcheck's hint that they do not expand is the point.
    s.push_str("# shellcheck disable=SC2016\nplan() {\n");
    if plan.images().next().is_some() {
        let _ = writeln!(s, "    stage {}", sh(sysext_model::node::IMAGES_ROOT));
    }
    for entry in &plan.entries {
        match entry {
            Entry::Dir { path } => {
                let _ = writeln!(s, "    dir {}", sh(path));
            }
            Entry::Image { path, image } => {
                let ImageSource::Url(url) = &image.source else {
                    bail!(
                        "{path}: a provisioning config names where nodes download an image; this one is a local file"
                    );
                };
                let _ = writeln!(
                    s,
                    "    image {} {} {} {} {} {}",
                    sh(path),
                    sh(image.image.name.as_str()),
                    image.size,
                    sh(&image.sha256.to_hex()),
                    sh(&image.sha512.to_hex()),
                    sh(url)
                );
            }
            Entry::File { path, mode, contents } => match std::str::from_utf8(contents) {
                Ok(text) => {
                    let _ = writeln!(s, "    file {} {} {}", sh(path), sh(&format!("{mode:o}")), sh(text));
                }
                // A binary file (an OpenPGP keyring) cannot be a shell argument: base64.
                Err(_) => {
                    use base64::Engine as _;
                    let b64 = base64::engine::general_purpose::STANDARD.encode(contents);
                    let _ = writeln!(s, "    file_base64 {} {} {}", sh(path), sh(&format!("{mode:o}")), sh(&b64));
                }
            },
            Entry::Link { path, target, .. } => {
                let _ = writeln!(s, "    link {} {}", sh(path), sh(target));
            }
        }
    }
    for unit in plan.enable.iter().filter(|u| !u.by_os) {
        let if_present = if unit.if_present { " if-present" } else { "" };
        let _ = writeln!(s, "    enable_unit {} {}{if_present}", sh(&unit.name), sh(&unit.wanted_by));
    }
    s.push_str("}\n\nmain \"$@\"\n");
    Ok(s)
}

/// The oneshot unit that runs the script. Not enabled: `runcmd` starts it once, after the
/// network is up; the merged extensions and their services come back at every boot through
/// systemd-sysext.service, which the plan enables.
pub fn unit() -> String {
    format!(
        "[Unit]\nDescription=Install, verify and merge the system extensions planned by composer\n\
         Documentation=file:{SCRIPT_PATH}\nWants=network-online.target\nAfter=network-online.target\n\n\
         [Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart={SCRIPT_PATH}\n"
    )
}

/// The cloud-config for `plan`.
pub fn config(plan: &NodePlan) -> Result<CloudConfig> {
    let file = |path: &str, permissions: &str, content: String| WriteFile {
        path: path.to_owned(),
        owner: "root:root".to_owned(),
        permissions: permissions.to_owned(),
        content,
    };
    Ok(CloudConfig {
        write_files: vec![file(SCRIPT_PATH, "0755", script(plan)?), file(UNIT_PATH, "0644", unit())],
        runcmd: vec![
            RunCmd::Argv(vec!["systemctl".into(), "daemon-reload".into()]),
            // A line of shell, so that a failure ends cloud-init's runcmd script here.
            RunCmd::Shell(format!("systemctl start {UNIT} || exit 1")),
        ],
    })
}

/// The text of a cloud-config document.
pub fn render(doc: &serde_yaml_ng::Value) -> Result<String> {
    Ok(format!("{HEADER}{}", serde_yaml_ng::to_string(doc)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_files_travel_as_base64_and_decode_to_their_bytes() {
        use crate::plan::{NodeOs, NodePlan, PlanRequest};
        let mut plan =
            NodePlan::build(&PlanRequest { os: NodeOs::Ubuntu, images: &[], sysupdate: None, keyring: None });
        let bytes = vec![0x99, 0x00, b'\'', 0xff, b'\n'];
        plan.entries.push(Entry::File {
            path: "/etc/systemd/import-pubring.gpg".into(),
            mode: 0o644,
            contents: bytes.clone(),
        });
        let text = script(&plan).unwrap();
        let line = text.lines().find(|l| l.contains("import-pubring.gpg")).unwrap();
        let b64 = line.rsplit(' ').next().unwrap().trim_matches('\'');
        assert!(line.trim_start().starts_with("file_base64 '/etc/systemd/import-pubring.gpg' '644' "), "{line}");
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("printf '%s' '{b64}' | base64 -d")])
            .output()
            .unwrap();
        assert_eq!(out.stdout, bytes, "what the node's base64 -d writes");
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(sh("it's"), "'it'\\''s'");
        assert_eq!(sh("a\nb"), "'a\nb'");
    }
}
