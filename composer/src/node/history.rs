//! What happened to the node's extensions, for `composer node history`:
//! `/var/lib/composer/history.jsonl`, one JSON object per line, appended (and synced) when
//! an upgrade, rollback or recovery ends. Append-only: the state file says what is; this says
//! how it got there, and which versions failed here before (an upgrade skips those unless
//! named).

use std::fs;
use std::io::{self, Write};

use release_index::timestamp::Timestamp;
use serde::{Deserialize, Serialize};
use sysext_model::{ExtensionName, ImageName};

use super::root::{sync_dir, NodeRoot};
use super::state::{StepKind, STATE_DIR};
use super::NodeError;

/// The history file.
pub const HISTORY_FILE: &str = "/var/lib/composer/history.jsonl";

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The new image runs and passed its health check.
    Upgraded,
    /// Linked for the next boot, or on a root that is not running: not activated.
    Staged,
    /// Switched back to the image before (an upgrade that failed, or `rollback`).
    RolledBack,
    /// Stopped before the switch (the pre-hook failed): nothing changed.
    Stopped,
    /// Killed before the switch; nothing to undo.
    Interrupted,
    /// Switching back failed too: the node needs a look.
    Failed,
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Event {
    /// When it ended.
    pub at: Timestamp,
    /// The extension.
    #[serde(with = "display")]
    pub extension: ExtensionName,
    /// `upgrade`, `rollback`, or either with ` (recovered)` when a later run finished it.
    pub action: String,
    /// The image before.
    #[serde(with = "display")]
    pub from: ImageName,
    /// The image it went to (or tried to).
    #[serde(with = "display")]
    pub to: ImageName,
    /// How it ended.
    pub outcome: Outcome,
    /// The step that failed or was running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepKind>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

mod display {
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<S: serde::Serializer, T: Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>, T: FromStr>(d: D) -> Result<T, D::Error>
    where
        T::Err: Display,
    {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Appends `event` and syncs the file.
pub fn append(root: &NodeRoot, event: &Event) -> Result<(), NodeError> {
    root.put_dir(STATE_DIR)?;
    let path = root.path(HISTORY_FILE);
    let io = |cause| NodeError::Io { path: path.clone(), cause };
    let mut line = serde_json::to_vec(event).expect("an event serialises");
    line.push(b'\n');
    let existed = path.exists();
    let mut f = fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io)?;
    f.write_all(&line).and_then(|()| f.sync_all()).map_err(io)?;
    if !existed {
        sync_dir(&root.path(STATE_DIR))?;
    }
    Ok(())
}

/// Every event, oldest first. A last line torn by a power cut is skipped; any other line that
/// does not parse is an error naming it.
pub fn read(root: &NodeRoot) -> Result<Vec<Event>, NodeError> {
    let path = root.path(HISTORY_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(cause) => return Err(NodeError::Io { path, cause }),
    };
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut events = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(e) => events.push(e),
            Err(_) if i + 1 == lines.len() && !complete => {}
            Err(e) => {
                return Err(NodeError::State { path: path.clone(), reason: format!("line {}: {e}", i + 1) });
            }
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_reads_back_skipping_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::open(dir.path()).unwrap();
        assert!(read(&root).unwrap().is_empty());
        let e = Event {
            at: Timestamp::now(),
            extension: "kubernetes".parse().unwrap(),
            action: "upgrade".into(),
            from: "kubernetes-v1.31.3-x86-64.raw".parse().unwrap(),
            to: "kubernetes-v1.31.4-x86-64.raw".parse().unwrap(),
            outcome: Outcome::RolledBack,
            step: Some(StepKind::HealthCheck),
            reason: Some("kubelet.service is failed".into()),
        };
        append(&root, &e).unwrap();
        append(&root, &e).unwrap();
        let path = dir.path().join("var/lib/composer/history.jsonl");
        let mut text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"outcome\":\"rolled-back\",\"step\":\"health-check\""), "{text}");
        text.push_str("{\"at\": ");
        fs::write(&path, &text).unwrap();
        assert_eq!(read(&root).unwrap(), vec![e.clone(), e]);
        fs::write(&path, "garbage\n").unwrap();
        assert!(read(&root).unwrap_err().to_string().contains("line 1"));
    }
}
