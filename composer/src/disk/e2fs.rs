//! Reading and editing an ext2/3/4 filesystem inside a disk image with e2fsprogs, unmounted.
//!
//! e2fsprogs' unix I/O manager accepts `FILE?offset=BYTES` as the device name, so `debugfs`
//! and `e2fsck` work on a partition in place without extracting it. debugfs has two traps
//! this module hides: it exits 0 even when a command fails (so any line on stderr other than
//! its version banner is treated as a failure), and `mkdir`/`write`/`symlink` resolve the
//! *parent* of an absolute path relative to the current directory (so every edit is issued as
//! `cd <absolute parent>` followed by the base name).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A debugfs or e2fsck failure, with the command and what the tool said.
#[derive(Debug, thiserror::Error)]
pub enum E2fsError {
    /// The tool could not be started.
    #[error("running {tool}: {cause} (is e2fsprogs installed?)")]
    Spawn {
        /// Program name.
        tool: &'static str,
        /// Cause.
        cause: std::io::Error,
    },
    /// debugfs reported errors.
    #[error("debugfs on {device} failed: {}", errors.join("; "))]
    Debugfs {
        /// Device string used.
        device: String,
        /// The error lines.
        errors: Vec<String>,
    },
    /// e2fsck found problems.
    #[error("e2fsck -fn on {device} reports problems (exit {code}): {tail}")]
    Fsck {
        /// Device string used.
        device: String,
        /// e2fsck exit code.
        code: i32,
        /// The last lines of its report.
        tail: String,
    },
    /// debugfs printed something composer does not understand: it is never read as "no
    /// such file" or as zeros, so a check cannot pass on output it did not parse.
    #[error("debugfs on {device}: cannot understand the output of '{command}': {reason}; output began: {snippet:?}")]
    Unparsed {
        /// Device string used.
        device: String,
        /// The request.
        command: String,
        /// What was expected and not found.
        reason: String,
        /// The start of the output.
        snippet: String,
    },
    /// Writing the command file failed.
    #[error("writing the debugfs command file {}: {cause}", path.display())]
    Script {
        /// Command file.
        path: PathBuf,
        /// Cause.
        cause: std::io::Error,
    },
}

/// What kind of inode a path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Regular file of this many bytes.
    File(u64),
    /// Directory.
    Dir,
    /// Symbolic link (target read separately for slow links).
    Symlink,
    /// Anything else (device, fifo, socket).
    Other(String),
}

/// `stat` of one path, as far as composer cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Inode kind.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Target of a fast symlink (stored in the inode); slow ones need [`Ext::cat`].
    pub fast_link: Option<String>,
}

/// A directory entry from `ls -p`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Name.
    pub name: String,
    /// Full mode (type and permission bits).
    pub mode: u32,
}

impl DirEntry {
    /// Whether the entry is a symlink.
    pub fn is_symlink(&self) -> bool {
        self.mode & 0o170000 == 0o120000
    }
    /// Whether the entry is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }
}

/// An ext filesystem at a byte offset inside an image file.
#[derive(Clone, Debug)]
pub struct Ext {
    dir: PathBuf,
    file: String,
    offset: u64,
}

const BANNER_PREFIXES: [&str; 2] = ["debugfs ", "e2fsck "];

fn is_banner(line: &str) -> bool {
    BANNER_PREFIXES.iter().any(|p| line.starts_with(p) && line.trim_end().ends_with(')'))
}

/// debugfs's ss parser splits on blanks and honours double quotes.
fn quote(arg: &str) -> String {
    if !arg.is_empty() && !arg.bytes().any(|c| c.is_ascii_whitespace() || c == b'"' || c == b'#') {
        arg.to_owned()
    } else {
        format!("\"{arg}\"")
    }
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", base)) => ("/", base),
        Some((parent, base)) => (parent, base),
        None => ("/", path),
    }
}

impl Ext {
    /// The filesystem starting `offset` bytes into `image`.
    ///
    /// The device string is passed relative to the image's directory, because the I/O manager
    /// splits the name at the first `?`, which may appear in a directory name.
    pub fn new(image: &Path, offset: u64) -> Self {
        let dir = image.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
        let file = image.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        Self { dir, file, offset }
    }

    /// `FILE?offset=N`, as handed to the tools.
    pub fn device(&self) -> String {
        format!("./{}?offset={}", self.file, self.offset)
    }

    fn tool(&self, tool: &'static str) -> Command {
        let mut c = Command::new(find_tool(tool));
        c.current_dir(&self.dir).env("DEBUGFS_PAGER", "__none__").env("PAGER", "cat").env("LC_ALL", "C");
        c
    }

    fn output(&self, mut cmd: Command, tool: &'static str) -> Result<Output, E2fsError> {
        cmd.output().map_err(|cause| E2fsError::Spawn { tool, cause })
    }

    fn errors(&self, out: &Output) -> Vec<String> {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !is_banner(l))
            .map(str::to_owned)
            .collect()
    }

    fn unparsed(&self, command: &str, reason: String, output: &str) -> E2fsError {
        E2fsError::Unparsed { device: self.device(), command: command.to_owned(), reason, snippet: snippet(output) }
    }

    /// Runs one read-only request; `Ok(None)` when the path does not exist.
    fn request(&self, request: &str) -> Result<Option<Vec<u8>>, E2fsError> {
        let mut cmd = self.tool("debugfs");
        cmd.arg("-R").arg(request).arg(self.device());
        let out = self.output(cmd, "debugfs")?;
        let errors = self.errors(&out);
        if errors.iter().any(|e| e.contains("File not found by ext2_lookup")) {
            return Ok(None);
        }
        if !errors.is_empty() || !out.status.success() {
            return Err(E2fsError::Debugfs { device: self.device(), errors });
        }
        Ok(Some(out.stdout))
    }

    /// Metadata of `path`, not following a final symlink.
    pub fn stat(&self, path: &str) -> Result<Option<Stat>, E2fsError> {
        let command = format!("stat {}", quote(path));
        let Some(out) = self.request(&command)? else { return Ok(None) };
        let text = String::from_utf8_lossy(&out);
        parse_stat(&text).map(Some).map_err(|reason| self.unparsed(&command, reason, &text))
    }

    /// [`Ext::stat`] of many paths in one debugfs session: every run opens the filesystem
    /// and fsyncs the image on close, which dominates a lookup.
    pub fn stat_many(&self, paths: &[String]) -> Result<HashMap<String, Option<Stat>>, E2fsError> {
        let mut result: HashMap<String, Option<Stat>> = paths.iter().map(|p| (p.clone(), None)).collect();
        if paths.is_empty() {
            return Ok(result);
        }
        let mut script = String::new();
        for p in paths {
            let _ = writeln!(script, "stat {}", quote(p));
        }
        let mut cmd = self.tool("debugfs");
        cmd.arg("-f").arg("-").arg(self.device());
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|cause| E2fsError::Spawn { tool: "debugfs", cause })?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        // Written from another thread: debugfs reads commands as it runs them, so a long script
        // and a full output pipe would otherwise wait for each other.
        let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
        let out = child.wait_with_output().map_err(|cause| E2fsError::Spawn { tool: "debugfs", cause })?;
        let written = writer.join().unwrap_or_else(|_| Err(std::io::Error::other("stdin writer panicked")));
        written.map_err(|cause| E2fsError::Spawn { tool: "debugfs", cause })?;
        let (missing, errors): (Vec<String>, Vec<String>) =
            self.errors(&out).into_iter().partition(|e| e.contains("File not found by ext2_lookup"));
        if !errors.is_empty() || !out.status.success() {
            return Err(E2fsError::Debugfs { device: self.device(), errors });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let stats = parse_stat_session(&text, paths, missing.len())
            .map_err(|reason| self.unparsed(&format!("stat of {} paths", paths.len()), reason, &text))?;
        for (p, st) in paths.iter().zip(stats) {
            result.insert(p.clone(), st);
        }
        Ok(result)
    }

    /// Contents of a file (or of a slow symlink's target block).
    pub fn cat(&self, path: &str) -> Result<Option<Vec<u8>>, E2fsError> {
        self.request(&format!("cat {}", quote(path)))
    }

    /// The target of the symlink at `path`.
    pub fn read_link(&self, path: &str) -> Result<Option<String>, E2fsError> {
        let Some(st) = self.stat(path)? else { return Ok(None) };
        if st.kind != Kind::Symlink {
            return Ok(None);
        }
        if let Some(t) = st.fast_link {
            return Ok(Some(t));
        }
        Ok(self.cat(path)?.map(|b| String::from_utf8_lossy(&b).trim_end_matches('\0').to_owned()))
    }

    /// Follows symlinks (absolute ones from the filesystem's root, relative ones from the
    /// link's directory) until a non-link, as the booted system would see `path`.
    pub fn resolve(&self, path: &str) -> Result<Option<String>, E2fsError> {
        self.resolve_mounted_at(path, "/")
    }

    /// Like [`Ext::resolve`], for a filesystem the booted system mounts at `mount` (Flatcar's
    /// USR-A at `/usr`): absolute targets below `mount` are rebased onto this filesystem's
    /// root; ones outside it lead to another filesystem and resolve to `None`.
    pub fn resolve_mounted_at(&self, path: &str, mount: &str) -> Result<Option<String>, E2fsError> {
        let mount = mount.trim_end_matches('/');
        let mut current = path.to_owned();
        for _ in 0..16 {
            let Some(st) = self.stat(&current)? else { return Ok(None) };
            if st.kind != Kind::Symlink {
                return Ok(Some(current));
            }
            let target = match st.fast_link {
                Some(t) => t,
                None => match self.cat(&current)? {
                    Some(b) => String::from_utf8_lossy(&b).trim_end_matches('\0').to_owned(),
                    None => return Ok(None),
                },
            };
            let joined = if !target.starts_with('/') {
                format!("{}/{target}", split(&current).0.trim_end_matches('/'))
            } else if mount.is_empty() {
                target
            } else {
                match target.strip_prefix(mount) {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/{rest}"),
                    _ => return Ok(None),
                }
            };
            current = normalize(&joined);
        }
        Ok(None)
    }

    /// Entries of a directory (without `.` and `..`); `None` if it does not exist.
    pub fn list(&self, dir: &str) -> Result<Option<Vec<DirEntry>>, E2fsError> {
        let command = format!("ls -p {}", quote(dir));
        let Some(out) = self.request(&command)? else { return Ok(None) };
        let text = String::from_utf8_lossy(&out);
        parse_ls(&text).map(Some).map_err(|reason| self.unparsed(&command, reason, &text))
    }

    /// Runs a write script in one debugfs session; any error line fails it. Returns what the
    /// session printed, sectioned by [`Script::extents`] requests.
    pub fn apply(&self, script: &Script, scratch: &Path) -> Result<String, E2fsError> {
        let path = scratch.join("debugfs.cmds");
        std::fs::write(&path, &script.text).map_err(|cause| E2fsError::Script { path: path.clone(), cause })?;
        let mut cmd = self.tool("debugfs");
        cmd.arg("-w").arg("-f").arg(&path).arg(self.device());
        let out = self.output(cmd, "debugfs")?;
        let errors = self.errors(&out);
        if !errors.is_empty() || !out.status.success() {
            return Err(E2fsError::Debugfs { device: self.device(), errors });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The leaf extents of `path`.
    pub fn extents(&self, path: &str) -> Result<Vec<Extent>, E2fsError> {
        let command = format!("ex -l {}", quote(path));
        let Some(out) = self.request(&command)? else {
            return Err(self.unparsed(&command, format!("{path} does not exist"), ""));
        };
        let text = String::from_utf8_lossy(&out);
        parse_extents(&text).map_err(|reason| self.unparsed(&command, reason, &text))
    }

    /// `e2fsck -fn`: a full read-only check; any complaint is an error.
    pub fn fsck(&self) -> Result<(), E2fsError> {
        let mut cmd = self.tool("e2fsck");
        cmd.arg("-fn").arg(self.device());
        let out = self.output(cmd, "e2fsck")?;
        if out.status.success() {
            return Ok(());
        }
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !is_banner(l)).collect();
        let tail = lines[lines.len().saturating_sub(8)..].join(" | ");
        Err(E2fsError::Fsck { device: self.device(), code: out.status.code().unwrap_or(-1), tail })
    }
}

/// One leaf extent: `len` blocks from logical block `lblk` stored at physical block `pblk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First logical block.
    pub lblk: u64,
    /// First physical block (relative to the filesystem).
    pub pblk: u64,
    /// Number of blocks.
    pub len: u64,
    /// Allocated but not yet initialised (reads as zeros).
    pub uninit: bool,
}

/// The first 200 characters of a tool's output, for error messages.
pub fn snippet(output: &str) -> String {
    output.chars().take(200).collect()
}

/// Parses `ex -l`: the header `Level Entries Logical Physical Length Flags`, then leaf rows
/// `LEVEL/MAX ENTRY/COUNT L0 - L1 P0 - P1 LEN [Uninit]`. Any other line, a row whose ranges
/// disagree with its length, or a missing header is an error: a map not understood must not
/// be taken for an empty one.
pub fn parse_extents(text: &str) -> Result<Vec<Extent>, String> {
    let mut out = Vec::new();
    let mut header = false;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t == ["Level", "Entries", "Logical", "Physical", "Length", "Flags"] {
            if header {
                return Err("a second extent header".into());
            }
            header = true;
            continue;
        }
        let row = || format!("unrecognised extent row {line:?}");
        if !header {
            return Err(format!("{} before the extent header", row()));
        }
        let i = t.iter().position(|w| *w == "-").ok_or_else(row)?;
        if i < 2 || t.len() < i + 6 || t[i + 3] != "-" {
            return Err(row());
        }
        // LEVEL/MAX ENTRY/COUNT, printed as `0/ 0   1/  1` or `12/345`.
        if !t[..i - 1].iter().all(|w| w.bytes().all(|c| c.is_ascii_digit() || c == b'/')) {
            return Err(row());
        }
        let uninit = match &t[i + 6..] {
            [] => false,
            ["Uninit"] => true,
            _ => return Err(row()),
        };
        let num = |k: usize| t[k].parse::<u64>().map_err(|_| row());
        let (l0, l1, p0, p1, len) = (num(i - 1)?, num(i + 1)?, num(i + 2)?, num(i + 4)?, num(i + 5)?);
        if len == 0 || l1.checked_sub(l0) != Some(len - 1) || p1.checked_sub(p0) != Some(len - 1) {
            return Err(format!("extent row {line:?}: ranges {l0}-{l1} and {p0}-{p1} do not hold {len} blocks"));
        }
        out.push(Extent { lblk: l0, pblk: p0, len, uninit });
    }
    if !header {
        return Err("no extent header (Level Entries Logical Physical Length Flags)".into());
    }
    Ok(out)
}

/// The part of a script's output that answers `debugfs: ex -l PATH`, if it is there.
pub fn extents_section<'a>(output: &'a str, path: &str) -> Option<&'a str> {
    let marker = format!("debugfs: ex -l {}\n", quote(path));
    let start = output.find(&marker)? + marker.len();
    let rest = &output[start..];
    Some(&rest[..rest.find("debugfs: ").unwrap_or(rest.len())])
}

/// Parses debugfs's `stat`. Every field composer decides on must be there and be a number,
/// so an owner that is not printed is never read as root.
pub fn parse_stat(text: &str) -> Result<Stat, String> {
    let field =
        |key: &str| text.split_whitespace().skip_while(|w| *w != key).nth(1).ok_or_else(|| format!("no '{key}' field"));
    let number = |key: &str, radix: u32| {
        let v = field(key)?;
        u64::from_str_radix(v, radix).map_err(|_| format!("'{key}' is {v:?}, not a number"))
    };
    let id =
        |key: &str| number(key, 10).and_then(|v| u32::try_from(v).map_err(|_| format!("'{key}' {v} is too large")));
    field("Inode:")?;
    let (uid, gid) = (id("User:")?, id("Group:")?);
    let mode = number("Mode:", 8)?;
    if mode > 0o7777 {
        return Err(format!("'Mode:' {mode:o} has more than permission bits"));
    }
    let size = number("Size:", 10)?;
    let kind = match field("Type:")? {
        "regular" => Kind::File(size),
        "directory" => Kind::Dir,
        "symlink" => Kind::Symlink,
        other => Kind::Other(other.to_owned()),
    };
    let fast_link = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Fast link dest: "))
        .map(|s| s.trim().trim_matches('"').to_owned());
    Ok(Stat { kind, mode: mode as u32, uid, gid, fast_link })
}

/// Splits the output of one session of `stat` commands into one answer per path. Each
/// command is echoed as `debugfs: stat PATH`; a path that does not exist prints nothing
/// there and one "File not found" line on stderr (`not_found` of them in all). Echoes out
/// of order, missing or extra, or a count of empty answers that differs from the not-found
/// lines are errors.
pub fn parse_stat_session(text: &str, paths: &[String], not_found: usize) -> Result<Vec<Option<Stat>>, String> {
    let mut sections: Vec<(&str, String)> = Vec::new();
    for line in text.lines() {
        if let Some(cmd) = line.strip_prefix("debugfs: ") {
            sections.push((cmd, String::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        } else if !line.trim().is_empty() {
            return Err(format!("output {line:?} before the first command"));
        }
    }
    if sections.len() != paths.len() {
        return Err(format!("{} commands echoed for {} paths", sections.len(), paths.len()));
    }
    let mut out = Vec::new();
    for ((cmd, body), path) in sections.iter().zip(paths) {
        let want = format!("stat {}", quote(path));
        if cmd.trim_end() != want {
            return Err(format!("echo {cmd:?} where {want:?} was expected"));
        }
        if body.trim().is_empty() {
            out.push(None);
        } else {
            out.push(Some(parse_stat(body).map_err(|e| format!("{path}: {e}"))?));
        }
    }
    let empty = out.iter().filter(|s| s.is_none()).count();
    if empty != not_found {
        return Err(format!("{empty} paths printed nothing but debugfs reported {not_found} as not found"));
    }
    Ok(out)
}

/// Parses `ls -p`: one `/INODE/MODE/UID/GID/NAME/SIZE/` line per entry (SIZE empty for
/// directories). A directory always lists `.`, so output without it was not understood.
pub fn parse_ls(text: &str) -> Result<Vec<DirEntry>, String> {
    let mut entries = Vec::new();
    let mut dot = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('/').collect();
        let bad = || format!("unrecognised directory entry {line:?}");
        if f.len() != 8 || !f[0].is_empty() || !f[7].is_empty() || f[5].is_empty() {
            return Err(bad());
        }
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        if !digits(f[1]) || !digits(f[3]) || !digits(f[4]) || !(f[6].is_empty() || digits(f[6])) {
            return Err(bad());
        }
        let mode = u32::from_str_radix(f[2], 8).map_err(|_| bad())?;
        match f[5] {
            "." => dot = true,
            ".." => {}
            name => entries.push(DirEntry { name: name.to_owned(), mode }),
        }
    }
    if !dot {
        return Err("no '.' entry, which every directory listing has".into());
    }
    Ok(entries)
}

/// Where a system tool is: on `PATH`, else in the sbin directories, which an unprivileged
/// user's `PATH` usually lacks although e2fsprogs installs there and needs no root here.
pub fn find_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Collapses `.`, `..` and repeated slashes in an absolute path.
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// A debugfs command file that creates entries owned by root with explicit modes.
#[derive(Clone, Debug, Default)]
pub struct Script {
    text: String,
}

impl Script {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    fn own(&mut self, path: &str, mode: u32) {
        let _ = writeln!(self.text, "sif {} mode 0{mode:o}", quote(path));
        let _ = writeln!(self.text, "sif {} uid 0", quote(path));
        let _ = writeln!(self.text, "sif {} gid 0", quote(path));
    }

    /// Creates a directory with mode 0755 (its parent must exist or be created earlier).
    pub fn mkdir(&mut self, path: &str) {
        let (parent, base) = split(path);
        let _ = writeln!(self.text, "cd {}\nmkdir {}", quote(parent), quote(base));
        self.own(path, 0o040755);
    }

    /// Removes a file or symlink.
    pub fn rm(&mut self, path: &str) {
        let (parent, base) = split(path);
        let _ = writeln!(self.text, "cd {}\nrm {}", quote(parent), quote(base));
    }

    /// Copies a host file in as a regular file with mode 0644.
    pub fn write(&mut self, source: &Path, path: &str) {
        let (parent, base) = split(path);
        let src = source.to_string_lossy();
        let _ = writeln!(self.text, "cd {}\nwrite {} {}", quote(parent), quote(&src), quote(base));
        self.own(path, 0o100644);
    }

    /// Creates a root-owned 0644 file of `size` bytes whose blocks are allocated (as
    /// uninitialised extents) but not written, and asks for its extent map; the caller fills
    /// the blocks in place and then calls [`Script::initialise`]. This is how large images
    /// go in: debugfs's own `write` maps and writes one 4 KiB block at a time.
    pub fn allocate(&mut self, empty: &Path, path: &str, size: u64, block: u64) {
        let (parent, base) = split(path);
        let src = empty.to_string_lossy();
        let _ = writeln!(self.text, "cd {}\nwrite {} {}", quote(parent), quote(&src), quote(base));
        if size > 0 {
            let _ = writeln!(self.text, "fallocate {} 0 {}", quote(path), size.div_ceil(block) - 1);
        }
        let _ = writeln!(self.text, "sif {} size {size}", quote(path));
        self.own(path, 0o100644);
        self.extents(path);
    }

    /// Prints the extent map of `path` into the session output (see [`extents_section`]).
    pub fn extents(&mut self, path: &str) {
        let _ = writeln!(self.text, "ex -l {}", quote(path));
    }

    /// Marks the extents of `path`, now holding data, as initialised.
    pub fn initialise(&mut self, path: &str, extents: &[Extent]) {
        let _ = writeln!(self.text, "extent_open {}", quote(path));
        for e in extents {
            let _ = writeln!(self.text, "goto_block {}\nreplace_node {} {} {}", e.lblk, e.lblk, e.len, e.pblk);
        }
        let _ = writeln!(self.text, "extent_close");
    }

    /// Creates a symlink `path` → `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let (parent, base) = split(path);
        let _ = writeln!(self.text, "cd {}\nsymlink {} {}", quote(parent), quote(base), quote(target));
        self.own(path, 0o120777);
    }

    /// The command text.
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize("/etc/../usr/lib/os-release"), "/usr/lib/os-release");
        assert_eq!(normalize("//a/./b/"), "/a/b");
        assert_eq!(normalize("/.."), "/");
    }

    #[test]
    fn scripts_cd_into_the_parent_first() {
        let mut s = Script::new();
        s.mkdir("/opt/extensions");
        s.symlink("/etc/extensions/k.raw", "/opt/extensions/k/k-v1-x86-64.raw");
        let t = s.text();
        assert!(t.starts_with("cd /opt\nmkdir extensions\nsif /opt/extensions mode 040755\n"), "{t}");
        assert!(t.contains("cd /etc/extensions\nsymlink k.raw /opt/extensions/k/k-v1-x86-64.raw\n"), "{t}");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(split("/etc"), ("/", "etc"));
    }

    #[test]
    fn parses_extent_maps() {
        let out = "debugfs: ex -l /a\nLevel Entries       Logical      Physical Length Flags\n 0/ 0   1/  1     0 - 12207  4852 - 17059  12208 Uninit\n 1/ 1   2/  3 12208 - 12208 20000 - 20000      1 \ndebugfs: sif /b size 1\n";
        let ex = parse_extents(extents_section(out, "/a").unwrap()).unwrap();
        assert_eq!(
            ex,
            [
                Extent { lblk: 0, pblk: 4852, len: 12208, uninit: true },
                Extent { lblk: 12208, pblk: 20000, len: 1, uninit: false }
            ]
        );
        assert!(extents_section(out, "/b").is_none());
        assert_eq!(parse_extents("Level Entries       Logical      Physical Length Flags\n"), Ok(vec![]));
    }

    const STAT: &str = "Inode: 14   Type: regular    Mode:  0644   Flags: 0x80000\nGeneration: 0    Version: 0x00000000:00000000\nUser:     0   Group:     0   Project:     0   Size: 4096\nFile ACL: 0\nLinks: 1   Blockcount: 8\nFragment:  Address: 0    Number: 0    Size: 0\n";

    #[test]
    fn garbled_extent_maps_are_errors() {
        let header = "Level Entries       Logical      Physical Length Flags\n";
        for (text, want) in [
            ("", "no extent header"),
            ("f: does not uses extent block maps\n", "before the extent header"),
            (" 0/ 0   1/  1     0 - 9  4852 - 4861  10\n", "before the extent header"),
            (&format!("{header} 0/ 0   1/  1     0 - 9  4852 - 4861\n"), "unrecognised extent row"),
            (&format!("{header} 0/ 0   1/  1     0 - 9  4852 - 4861  10 Weird\n"), "unrecognised extent row"),
            (&format!("{header} 0/ 0   1/  1     0 - 9  4852 - 4861  11\n"), "do not hold 11 blocks"),
            (&format!("{header} 0/ 0   1/  1     9 - 0  4852 - 4861  10\n"), "do not hold 10 blocks"),
            (&format!("{header} 0/ 0   1/  1     0 - 9  x - 4861  10\n"), "unrecognised extent row"),
            (&format!("{header} a/ 0   1/  1     0 - 9  4852 - 4861  10\n"), "unrecognised extent row"),
            (&format!("{header}{header}"), "a second extent header"),
            (
                &format!("{header} 0/ 0   1/  1     0 - 18446744073709551615  0 - 18446744073709551615  0\n"),
                "do not hold 0",
            ),
        ] {
            let err = parse_extents(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        // Wide counters run together; the row still parses.
        let ex = parse_extents(&format!("{header}12/345 678/910 0 - 0 7 - 7 1 Uninit\n")).unwrap();
        assert_eq!(ex, [Extent { lblk: 0, pblk: 7, len: 1, uninit: true }]);
    }

    #[test]
    fn stat_needs_every_field_it_decides_on() {
        let st = parse_stat(STAT).unwrap();
        assert_eq!((st.kind, st.mode, st.uid, st.gid), (Kind::File(4096), 0o644, 0, 0));
        // Truncated before the owner: never read as root.
        let cut = &STAT[..STAT.find("User:").unwrap()];
        assert_eq!(parse_stat(cut).unwrap_err(), "no 'User:' field");
        assert_eq!(parse_stat("").unwrap_err(), "no 'Inode:' field");
        assert!(parse_stat(&STAT.replace("User:     0", "User:     root"))
            .unwrap_err()
            .contains("'User:' is \"root\""));
        assert!(parse_stat(&STAT.replace("0644", "0x1a4")).unwrap_err().contains("'Mode:'"));
        assert!(parse_stat(&STAT.replace("0644", "170644")).unwrap_err().contains("more than permission bits"));
        assert!(parse_stat(&STAT.replace("Group:     0", "Group:     99999999999")).unwrap_err().contains("too large"));
        assert!(parse_stat(&STAT.replace("Size: 4096", "Size: -1")).unwrap_err().contains("'Size:'"));
    }

    #[test]
    fn stat_sessions_must_answer_every_path_in_order() {
        let paths = ["/a".to_owned(), "/b".to_owned()];
        let session = format!("debugfs: stat /a\n{STAT}debugfs: stat /b\n");
        let got = parse_stat_session(&session, &paths, 1).unwrap();
        assert!(got[0].is_some() && got[1].is_none());
        for (text, not_found, want) in [
            (format!("debugfs: stat /a\n{STAT}"), 0, "1 commands echoed for 2 paths"),
            (format!("debugfs: stat /b\n{STAT}debugfs: stat /a\n"), 1, "where \"stat /a\" was expected"),
            (session.clone(), 0, "1 paths printed nothing but debugfs reported 0 as not found"),
            (format!("junk\n{session}"), 1, "before the first command"),
            ("debugfs: stat /a\nInode: 12\ndebugfs: stat /b\n".to_owned(), 1, "/a: no 'User:' field"),
            // A link target with a newline cannot pose as another answer.
            (
                format!("debugfs: stat /a\n{STAT}Fast link dest: \"x\ndebugfs: stat /b\n\"\ndebugfs: stat /b\n"),
                1,
                "3 commands echoed",
            ),
        ] {
            let err = parse_stat_session(&text, &paths, not_found).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn directory_listings_must_be_understood() {
        let ls = "/13/040755/0/0/.//\n/2/040755/0/0/..//\n/14/120777/0/0/l/4/\n/15/100644/0/0/f/0/\n\n";
        let entries = parse_ls(ls).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(entries[0].is_symlink() && entries[0].name == "l");
        for (text, want) in [
            ("", "no '.' entry"),
            ("/2/040755/0/0/..//\n", "no '.' entry"),
            ("/13/040755/0/0/.//\n/14/12x777/0/0/l/4/\n", "unrecognised directory entry"),
            ("/13/040755/0/0/.//\n/14/120777/0/0/l/4\n", "unrecognised directory entry"),
            ("/13/040755/0/0/.//\nl\n", "unrecognised directory entry"),
            ("/13/040755/0/0/.//\n/14/120777/0/0//4/\n", "unrecognised directory entry"),
            ("/13/040755/0/0/.//\n/14/120777/0/0/l/-4/\n", "unrecognised directory entry"),
        ] {
            let err = parse_ls(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn banners_are_not_errors() {
        assert!(is_banner("debugfs 1.47.0 (5-Feb-2023)"));
        assert!(!is_banner("debugfs: write: Could not allocate block"));
    }
}
