//! `--base FILE`: the user's own Ignition JSON, Butane YAML or cloud-config (SSH keys, a
//! kubeadm join, …) with the node plan added to it.
//!
//! The user's document is read as a generic value whose maps keep their key order, and
//! composer's entries are appended to its lists; nothing of theirs is changed or dropped
//! (YAML comments are not carried over: they are not part of the document). A path or unit
//! both define is an error naming it, unless the two entries are identical (or both are
//! the same directory), because Ignition refuses duplicates and a silently shadowed
//! link or file would leave a node other than the plan says.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_yaml_ng::{Mapping, Value};

use super::{butane, Format};

/// Reads and checks the `--base` document for `format`.
pub fn read(path: &Path, format: Format) -> Result<Mapping> {
    let text = fs_err::read_to_string(path).with_context(|| format!("reading --base {}", path.display()))?;
    parse(&text, format).with_context(|| format!("--base {}", path.display()))
}

fn top(doc: Value, what: &str) -> Result<Mapping> {
    match doc {
        Value::Mapping(m) => Ok(m),
        Value::Null => Ok(Mapping::new()),
        other => bail!("expected {what} (a mapping at the top), found {}", kind(&other)),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn get_str<'a>(m: &'a Mapping, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

/// Parses a `--base` document's text.
pub fn parse(text: &str, format: Format) -> Result<Mapping> {
    match format {
        Format::Ignition => {
            // serde_json parses (strict JSON, its error positions); the value type keeps the
            // user's key order.
            let doc: Value = serde_json::from_str(text).context("not valid JSON")?;
            let doc = top(doc, "an Ignition config")?;
            let version = doc.get("ignition").and_then(Value::as_mapping).and_then(|i| get_str(i, "version"));
            match version {
                Some(v) if v.starts_with("3.") => Ok(doc),
                Some(v) => bail!(
                    "ignition.version is {v}; composer merges into Ignition spec 3 configs (translate older ones with ign-converter)"
                ),
                None => bail!("no ignition.version: not an Ignition config"),
            }
        }
        Format::Butane => {
            let doc: Value = serde_yaml_ng::from_str(text).context("not valid YAML")?;
            let doc = top(doc, "a Butane config")?;
            match get_str(&doc, "variant") {
                Some(butane::VARIANT) => {}
                Some(other) => {
                    bail!("variant is {other}; composer writes Butane configs for variant {}", butane::VARIANT)
                }
                None => bail!("no variant: not a Butane config (expected variant: {})", butane::VARIANT),
            }
            match get_str(&doc, "version") {
                Some(v) if butane::ignition_version(v).is_some() => Ok(doc),
                Some(v) => bail!("version {v} is not a Butane version of variant flatcar (1.0.0, 1.1.0)"),
                None => bail!("no version: not a Butane config"),
            }
        }
        Format::CloudInit => {
            if text.lines().next().map(str::trim_end) != Some("#cloud-config") {
                bail!("does not start with #cloud-config; composer merges into cloud-config user data only");
            }
            let doc: Value = serde_yaml_ng::from_str(text).context("not valid YAML")?;
            top(doc, "a cloud-config")
        }
    }
}

/// The list at `path` (e.g. `["storage", "files"]`), created empty if missing.
fn list_mut<'a>(doc: &'a mut Mapping, path: &[&str]) -> Result<&'a mut Vec<Value>> {
    let (last, parents) = path.split_last().expect("a non-empty key path");
    let mut m = doc;
    for (depth, key) in parents.iter().enumerate() {
        let entry = m.entry(Value::from(*key)).or_insert_with(|| Value::Mapping(Mapping::new()));
        if entry.is_null() {
            *entry = Value::Mapping(Mapping::new());
        }
        m = match entry {
            Value::Mapping(m) => m,
            other => bail!("{} is {}; expected a mapping", path[..=depth].join("."), kind(other)),
        };
    }
    let entry = m.entry(Value::from(*last)).or_insert_with(|| Value::Sequence(Vec::new()));
    if entry.is_null() {
        *entry = Value::Sequence(Vec::new());
    }
    match entry {
        Value::Sequence(s) => Ok(s),
        other => bail!("{} is {}; expected a list", path.join("."), kind(other)),
    }
}

/// The value of `key` in each item of a list, with where it is.
fn keyed(doc: &mut Mapping, path: &[&str], key: &str) -> Result<BTreeMap<String, (String, Value)>> {
    let name = path.join(".");
    let mut out = BTreeMap::new();
    for (i, item) in list_mut(doc, path)?.iter().enumerate() {
        let Some(k) = item.as_mapping().and_then(|m| get_str(m, key)) else {
            bail!("{name}[{i}] has no {key}");
        };
        out.insert(k.to_owned(), (format!("{name}[{i}]"), item.clone()));
    }
    Ok(out)
}

/// Adds composer's Ignition or Butane `ours` (a whole config as a value) to the user's
/// `base`, which keeps its own version.
pub fn storage_and_units(mut base: Mapping, ours: &Value) -> Result<Mapping> {
    const LISTS: [&str; 3] = ["directories", "files", "links"];
    let mut theirs = BTreeMap::new();
    for list in LISTS {
        for (path, (at, item)) in keyed(&mut base, &["storage", list], "path")? {
            theirs.insert(path, (list, at, item));
        }
    }
    for list in LISTS {
        let items = ours.get("storage").and_then(|s| s.get(list)).and_then(Value::as_sequence);
        let mut add = Vec::new();
        for item in items.into_iter().flatten() {
            let path = item.get("path").and_then(Value::as_str).expect("composer's entries have paths");
            match theirs.get(path) {
                None => add.push(item.clone()),
                Some((their_list, _, their)) if *their_list == list && (their == item || list == "directories") => {}
                Some((_, at, _)) => {
                    bail!("{at} is {path}, which composer writes too (storage.{list}); remove it from the base config")
                }
            }
        }
        list_mut(&mut base, &["storage", list])?.extend(add);
    }
    let their_units = keyed(&mut base, &["systemd", "units"], "name")?;
    let mut add = Vec::new();
    for unit in ours.get("systemd").and_then(|s| s.get("units")).and_then(Value::as_sequence).into_iter().flatten() {
        let name = unit.get("name").and_then(Value::as_str).expect("composer's units have names");
        match their_units.get(name) {
            None => add.push(unit.clone()),
            Some((_, their)) if their == unit => {}
            Some((at, _)) => {
                bail!("{at} is unit {name}, which composer configures too; remove it from the base config")
            }
        }
    }
    list_mut(&mut base, &["systemd", "units"])?.extend(add);
    drop_empty(&mut base, &["storage", "systemd"]);
    Ok(base)
}

/// Removes sections this merge created but left empty, so the output has no `storage: {}`.
fn drop_empty(doc: &mut Mapping, sections: &[&str]) {
    for section in sections {
        if let Some(Value::Mapping(m)) = doc.get_mut(*section) {
            m.retain(|_, v| !matches!(v, Value::Sequence(s) if s.is_empty()));
            if m.is_empty() {
                doc.remove(*section);
            }
        }
    }
}

/// Adds composer's cloud-config `ours` to the user's `base`: `write_files` appended (a path
/// of theirs that composer writes, or that the plan's script creates, is an error),
/// composer's `runcmd` entries first so the user's commands (a `kubeadm join`) run with the
/// extensions merged; every other key kept.
pub fn cloud_config(mut base: Mapping, ours: &Value, plan_paths: &[String]) -> Result<Mapping> {
    let our_files = ours.get("write_files").and_then(Value::as_sequence).cloned().unwrap_or_default();
    let ours_by_path: BTreeMap<&str, &Value> = our_files
        .iter()
        .map(|f| (f.get("path").and_then(Value::as_str).expect("composer's files have paths"), f))
        .collect();
    let mut add: Vec<Value> = our_files.clone();
    for (path, (at, theirs)) in keyed(&mut base, &["write_files"], "path")? {
        match ours_by_path.get(path.as_str()) {
            // Merged before: keep theirs, add nothing twice.
            Some(mine) if **mine == theirs => add.retain(|f| f != *mine),
            Some(_) => bail!("{at} is {path}, which composer writes too; remove it from the base config"),
            None if plan_paths.contains(&path) => {
                bail!("{at} is {path}, which composer's script creates; remove it from the base config")
            }
            None => {}
        }
    }
    list_mut(&mut base, &["write_files"])?.extend(add);
    let our_cmds = ours.get("runcmd").and_then(Value::as_sequence).cloned().unwrap_or_default();
    let runcmd = list_mut(&mut base, &["runcmd"])?;
    let theirs: Vec<Value> = std::mem::take(runcmd).into_iter().filter(|c| !our_cmds.contains(c)).collect();
    runcmd.extend(our_cmds);
    runcmd.extend(theirs);
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bases_say_what_is_wrong() {
        let err = |text: &str, f: Format| format!("{:#}", parse(text, f).unwrap_err());
        assert!(err("{", Format::Ignition).contains("not valid JSON"));
        assert!(err("[]", Format::Ignition).contains("found a list"));
        assert!(err(r#"{"ignition":{"version":"2.3.0"}}"#, Format::Ignition).contains("ignition.version is 2.3.0"));
        assert!(err("{}", Format::Ignition).contains("no ignition.version"));
        assert!(err("variant: fcos\nversion: 1.5.0\n", Format::Butane).contains("variant is fcos"));
        assert!(err("variant: flatcar\nversion: 9.9.9\n", Format::Butane).contains("version 9.9.9"));
        assert!(err("runcmd: []\n", Format::CloudInit).contains("#cloud-config"));
        assert!(err("#cloud-config\n- a\n", Format::CloudInit).contains("found a list"));
        assert!(parse("#cloud-config\n", Format::CloudInit).unwrap().is_empty());
    }

    #[test]
    fn storage_merge_keeps_theirs_and_refuses_conflicts() {
        let base = parse(
            r#"{"ignition":{"version":"3.4.0"},"passwd":{"users":[{"name":"core"}]},
               "storage":{"directories":[{"path":"/etc/extensions","mode":448}],
                          "files":[{"path":"/etc/hostname","contents":{"source":"data:,n1"}}]}}"#,
            Format::Ignition,
        )
        .unwrap();
        let ours: Value = serde_json::from_str(
            r#"{"ignition":{"version":"3.3.0"},
               "storage":{"directories":[{"path":"/etc/extensions","mode":493}],
                          "links":[{"path":"/etc/extensions/cni.raw","target":"/opt/x","hard":false}]},
               "systemd":{"units":[{"name":"systemd-sysext.service","enabled":true}]}}"#,
        )
        .unwrap();
        let merged = storage_and_units(base.clone(), &ours).unwrap();
        let keys: Vec<&str> = merged.keys().filter_map(Value::as_str).collect();
        assert_eq!(keys, ["ignition", "passwd", "storage", "systemd"], "their order, ours after");
        assert_eq!(merged["ignition"]["version"], "3.4.0");
        assert_eq!(merged["storage"]["directories"].as_sequence().unwrap().len(), 1, "their directory wins");
        assert_eq!(merged["storage"]["links"][0]["path"], "/etc/extensions/cni.raw");
        // The same merge again is a conflict-free no-op: identical entries are not added twice.
        let again = storage_and_units(merged.clone(), &ours).unwrap();
        assert_eq!(again, merged);

        let mut clash = base;
        list_mut(&mut clash, &["storage", "files"])
            .unwrap()
            .push(serde_json::from_str(r#"{"path":"/etc/extensions/cni.raw"}"#).unwrap());
        let err = storage_and_units(clash, &ours).unwrap_err().to_string();
        assert!(err.contains("storage.files[1] is /etc/extensions/cni.raw, which composer writes too"), "{err}");
    }

    #[test]
    fn cloud_config_merge_runs_ours_first() {
        let base = parse(
            "#cloud-config\nssh_authorized_keys: [ssh-ed25519 AAAA]\nruncmd:\n  - kubeadm join x\nwrite_files:\n  - path: /etc/a\n    content: a\n",
            Format::CloudInit,
        )
        .unwrap();
        let ours: Value =
            serde_yaml_ng::from_str("write_files:\n  - path: /usr/local/x\nruncmd:\n  - systemctl start x\n").unwrap();
        let merged = cloud_config(base.clone(), &ours, &[]).unwrap();
        assert_eq!(merged["runcmd"][0], "systemctl start x");
        assert_eq!(merged["runcmd"][1], "kubeadm join x");
        assert_eq!(merged["write_files"].as_sequence().unwrap().len(), 2);
        assert_eq!(merged["ssh_authorized_keys"][0], "ssh-ed25519 AAAA");
        // Merging the result again changes nothing.
        assert_eq!(cloud_config(merged.clone(), &ours, &[]).unwrap(), merged);
        let err = cloud_config(base, &ours, &["/etc/a".into()]).unwrap_err().to_string();
        assert!(err.contains("write_files[0] is /etc/a, which composer's script creates"), "{err}");
    }
}
