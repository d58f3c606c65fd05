//! `node`: the node agent, run on the node itself.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use cli_support::NetArgs;
use release_index::http::HttpClient;
use release_index::source::ReleaseSource;
use signing::PublicKey;
use sysext_model::{Arch, Channel, ChannelRef, ExtensionName, Version};

use crate::node::config::NodeConfig;
use crate::node::history::{self, Event};
use crate::node::root::NodeRoot;
use crate::node::status::{status, StatusReport};
use crate::node::sync::{sync, Outcome, SyncReport, SyncRequest};
use crate::node::upgrade::{
    rollback, upgrade, Hooks, Policy, RollbackRequest, UpgradeReport, UpgradeRequest, DEFAULT_KEEP, KUBEADM_UPGRADE,
};
use crate::plan::NodeOs;

/// Keep this node's system extensions installed and merged from a signed release.
///
/// `composer node sync` installs the newest release of each channel the node follows and
/// makes the running system use it; `composer node status` shows what is installed;
/// `composer node upgrade` moves an extension to a newer version in guarded steps, undone if
/// any fails, and `composer node rollback` back to the one before; `composer node history`
/// lists what they did. State is kept in /var/lib/composer/node.json, the history in
/// /var/lib/composer/history.jsonl; one run at a time holds /var/lib/composer/lock. At first
/// boot, composer-node-sync.service (written by `composer provision --agent`) runs
/// `composer node sync --config /etc/composer/node.toml --once`.
#[derive(Debug, Args)]
pub(super) struct NodeArgs {
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    Sync(Box<SyncArgs>),
    Status(StatusArgs),
    Upgrade(Box<UpgradeArgs>),
    Rollback(RollbackArgs),
    History(HistoryArgs),
}

/// Install the newest release of each channel from the signed index, and merge it.
///
/// Checks the index (signature, expiry, then its serial against the last one this node
/// accepted: a replayed older index is refused), resolves each NAME@CHANNEL for the node's
/// architecture, refuses an image this node's systemd-sysext would skip, downloads what is
/// not installed into /opt/extensions/<name>/ (verified against the index while it streams,
/// then renamed into place), and switches /etc/extensions/<name>.raw with a new link renamed
/// over the old; the rest of the node plan (Flatcar's built-in runtimes masked when
/// containerd is installed, systemd-sysext.service enabled, with --sysupdate the transfer
/// files) is written the same way. Then, on the running system: systemctl reload-or-restart
/// systemd-sysext.service, a check that each extension merged, systemctl daemon-reload
/// (systemd < 255, which does not reload after a merge), and systemctl start --no-block of the
/// targets the extensions' units hook into. A refusal or failure before the switch leaves the
/// node as it was; a second run with nothing new downloads and writes nothing.
#[derive(Debug, Args)]
#[command(
    override_usage = "composer node sync --index <URL|DIR> --pubkey <PUB> --extension <NAME@CHANNEL>... [OPTIONS]\n       \
                      composer node sync --config <FILE> [OPTIONS]"
)]
pub(super) struct SyncArgs {
    /// Read index, pubkey, extensions, arch, os, min-serial and sysupdate from this TOML file
    /// (/etc/composer/node.toml, which `composer provision --agent` writes; its pubkey is a
    /// path on the node, read under --root). Options given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Signed release index: the http(s) URL or directory a release was published to.
    #[arg(long, value_name = "URL|DIR", required_unless_present = "config")]
    index: Option<ReleaseSource>,
    /// Public key (SPKI PEM) the release index must be signed with.
    #[arg(long, value_name = "PUB", required_unless_present = "config")]
    pubkey: Option<PathBuf>,
    /// An extension and the versions to follow, e.g. kubernetes@1.31, containerd@2.0,
    /// cni@latest. Repeat for each extension; replaces the configuration's list.
    #[arg(long = "extension", short = 'e', value_name = "NAME@CHANNEL", required_unless_present = "config")]
    extensions: Vec<ChannelRef>,
    /// The node's architecture [default: this machine's].
    #[arg(long, value_name = "ARCH")]
    arch: Option<Arch>,
    /// The node's OS [default: Flatcar if its os-release says ID=flatcar, else ubuntu].
    #[arg(long, value_name = "OS", value_enum)]
    os: Option<NodeOs>,
    /// Also install systemd-sysupdate transfer files for the installed minors.
    #[arg(long)]
    sysupdate: bool,
    /// Refuse an index whose serial is lower than this (besides the last one accepted).
    #[arg(long, value_name = "N")]
    min_serial: Option<u64>,
    /// The node's root directory. Anything but / is a root that is not running: nothing is
    /// merged or started there, and the report lists the commands that would run on the
    /// node.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Install only: do not refresh systemd-sysext, reload the manager or start units.
    #[arg(long)]
    no_activate: bool,
    /// Do nothing if a sync has completed on this node before and was activated (or, under
    /// a --root that is not running, installed): what the first-boot unit runs, so later
    /// boots do not change versions.
    #[arg(long)]
    once: bool,
    /// While the release server cannot be reached, keep trying for this long (e.g. 10min),
    /// waiting 1s, 2s, 4s … up to 30s between attempts. Refusals are never retried.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    retry_for: Duration,
    /// How long to wait for another `composer node` run to finish.
    #[arg(long, value_name = "DURATION", default_value = "5min", value_parser = humantime::parse_duration)]
    lock_wait: Duration,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    net: NetArgs,
}

/// Show what is installed, from which index and serial, and whether the node matches.
///
/// Reads /var/lib/composer/node.json and checks each extension's link, image and (on the
/// running system) merged version against it. Exits 1 when something does not match.
#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    /// The node's root directory.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Upgrade installed extensions in place, in guarded steps, undone if any fails.
///
/// For each extension (default: every installed one): resolve the target version in the
/// signed index, download and verify it beside the installed image, run --pre-hook (e.g. a
/// drain), switch /etc/extensions/<name>.raw atomically, refresh systemd-sysext, reload the
/// manager, run `kubeadm upgrade node` from the new image (kubernetes on a node with
/// /etc/kubernetes/kubelet.conf), restart the extension's units (kubelet.service for
/// kubernetes; containerd.service only when named with --restart), check health (the
/// restarted units active and, for kubernetes, the merged kubelet reporting the new version,
/// within --timeout; or --health-check), run --post-hook (e.g. an uncordon), and remove old
/// images beyond --keep. A failure after the switch switches back to the previous image,
/// merges it, restarts and checks it, and exits 1 naming the step. Each step is recorded in
/// /var/lib/composer/node.json before it starts: a run killed at any point is completed (if
/// its health check had passed) or undone by the next composer node command.
///
/// Policy: patch upgrades within the installed minor by default; --allow-minor moves one
/// minor up (never two, never a major); a downgrade needs --to and --allow-downgrade. A minor
/// step of kubernetes is refused when the API server (from the node's kubelet.conf) is older
/// than the target. A version that failed its health check here is skipped unless named with
/// --to.
#[derive(Debug, Args)]
pub(super) struct UpgradeArgs {
    /// The extensions to upgrade [default: every installed one].
    #[arg(value_name = "EXT")]
    extensions: Vec<ExtensionName>,
    /// Upgrade to exactly this version (one extension).
    #[arg(long, value_name = "VERSION")]
    to: Option<Version>,
    /// Follow this channel from now on (e.g. 1.32): upgrade to its newest version, by the same
    /// policy as --to (a minor step needs --allow-minor).
    #[arg(long, value_name = "SPEC", conflicts_with = "to")]
    channel: Option<Channel>,
    /// Allow moving one minor version up (the channel followed moves with it).
    #[arg(long)]
    allow_minor: bool,
    /// Allow --to (or --channel) to name an older version.
    #[arg(long)]
    allow_downgrade: bool,
    /// Resolve and check; download, switch and run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run this (sh -c) before the switch, e.g. `kubectl drain "$(hostname)"`; failing stops
    /// the upgrade with nothing switched. COMPOSER_EXTENSION, COMPOSER_FROM_VERSION and
    /// COMPOSER_TO_VERSION are set for every hook.
    #[arg(long, value_name = "CMD")]
    pre_hook: Option<String>,
    /// Run this after the health check passed (and after a rollback whose check passed),
    /// e.g. `kubectl uncordon "$(hostname)"`.
    #[arg(long, value_name = "CMD")]
    post_hook: Option<String>,
    /// Replace the default health check with this command, run until it exits 0 or
    /// --timeout ends.
    #[arg(long, value_name = "CMD")]
    health_check: Option<String>,
    /// How long the health check may take.
    #[arg(long, value_name = "DURATION", default_value = "2min", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Restart these units instead of the extension's own (repeat; containerd.service is
    /// restarted only when named).
    #[arg(long, value_name = "UNIT")]
    restart: Vec<String>,
    /// The kubeadm step run from the new image on a node that has joined a cluster; "" skips
    /// it.
    #[arg(long, value_name = "CMD", default_value = KUBEADM_UPGRADE)]
    kubeadm: String,
    /// Stage the switch for the next boot and touch /run/reboot-required (kured's
    /// convention) instead of refreshing the running node.
    #[arg(long)]
    reboot_flag: bool,
    /// Images to keep per extension, the running and the previous one included.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_KEEP, value_parser = keep_count)]
    keep: usize,
    #[command(flatten)]
    release: ReleaseArgs,
    #[command(flatten)]
    node: NodeRunArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// The node an upgrade or rollback changes, and how long it waits for another run.
#[derive(Debug, Args)]
pub(super) struct NodeRunArgs {
    /// The node's root directory.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// How long to wait for another `composer node` run to finish.
    #[arg(long, value_name = "DURATION", default_value = "5min", value_parser = humantime::parse_duration)]
    lock_wait: Duration,
}

impl NodeRunArgs {
    fn open(&self) -> Result<NodeRoot> {
        NodeRoot::open(&self.root).with_context(|| format!("opening --root {}", self.root.display()))
    }
}

/// Where `upgrade` reads the release from: the agent's configuration, or flags.
#[derive(Debug, Args)]
pub(super) struct ReleaseArgs {
    /// Read index, pubkey, arch and min-serial from this TOML file [default:
    /// /etc/composer/node.toml under --root, when it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Signed release index: the http(s) URL, directory or oci:// repository.
    #[arg(long, value_name = "URL|DIR")]
    index: Option<ReleaseSource>,
    /// Public key (SPKI PEM) the release index must be signed with.
    #[arg(long, value_name = "PUB")]
    pubkey: Option<PathBuf>,
    /// The node's architecture [default: this machine's].
    #[arg(long, value_name = "ARCH")]
    arch: Option<Arch>,
    /// Refuse an index whose serial is lower than this (besides the last one accepted).
    #[arg(long, value_name = "N")]
    min_serial: Option<u64>,
    /// Retries after a connection error, a timeout or an HTTP 408, 429 or 5xx answer (the
    /// network timeouts are the defaults of `composer node sync`; --timeout here is the
    /// health check's).
    #[arg(long, value_name = "N", default_value_t = 4)]
    retries: u32,
    /// Also trust the CA certificates in this PEM file, for an HTTPS server or registry with
    /// a private CA.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
}

impl ReleaseArgs {
    fn http_options(&self) -> release_index::http::HttpOptions {
        release_index::http::HttpOptions {
            retries: self.retries,
            ca_file: self.ca_file.clone(),
            ..release_index::http::HttpOptions::default()
        }
    }
}

/// Switch an extension back to the image it ran before, and check it.
///
/// The previous image is kept on the node by every upgrade and sync; it is checked against
/// the SHA-256 recorded when it was installed, linked, merged, its units restarted and
/// health-checked as an upgrade does. Needs no release server.
#[derive(Debug, Args)]
pub(super) struct RollbackArgs {
    /// The extension.
    #[arg(value_name = "EXT")]
    extension: ExtensionName,
    /// Restart these units instead of the extension's own (repeat).
    #[arg(long, value_name = "UNIT")]
    restart: Vec<String>,
    /// How long the health check may take.
    #[arg(long, value_name = "DURATION", default_value = "2min", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    node: NodeRunArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// List the upgrades and rollbacks of this node, oldest first.
#[derive(Debug, Args)]
pub(super) struct HistoryArgs {
    /// Only this extension.
    #[arg(value_name = "EXT")]
    extension: Option<ExtensionName>,
    /// The node's root directory.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Print the events as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn keep_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 2 => Ok(n),
        _ => Err(format!("'{s}': keep at least 2 (the running image and the previous one)")),
    }
}

impl UpgradeArgs {
    fn request(&self) -> Result<UpgradeRequest> {
        let root = self.node.open()?;
        let r = &self.release;
        let config_path = r.config.clone().or_else(|| {
            let default = root.path(crate::node::config::CONFIG_PATH);
            default.exists().then_some(default)
        });
        let config = match &config_path {
            Some(path) => Some(NodeConfig::read(path).context("reading --config")?),
            None => None,
        };
        let (backend, pubkey, arch) =
            open_release(&root, config.as_ref(), r.index.as_ref(), r.pubkey.as_ref(), r.arch, r.http_options())?;
        Ok(UpgradeRequest {
            root,
            backend,
            pubkey,
            arch,
            min_serial: r.min_serial.max(config.as_ref().and_then(|c| c.min_serial)),
            extensions: self.extensions.clone(),
            to: self.to.clone(),
            channel: self.channel.clone(),
            policy: Policy { allow_minor: self.allow_minor, allow_downgrade: self.allow_downgrade },
            dry_run: self.dry_run,
            hooks: Hooks {
                pre: self.pre_hook.clone(),
                post: self.post_hook.clone(),
                health: self.health_check.clone(),
                kubeadm: Some(self.kubeadm.clone()).filter(|k| !k.trim().is_empty()),
            },
            timeout: self.timeout,
            restart: (!self.restart.is_empty()).then(|| self.restart.clone()),
            reboot_flag: self.reboot_flag,
            keep: self.keep,
            lock_wait: self.node.lock_wait,
        })
    }
}

/// The release's backend, key and the node's architecture, from flags over the
/// configuration (whose pubkey is a node path, read under the root).
fn open_release(
    root: &NodeRoot,
    config: Option<&NodeConfig>,
    index: Option<&ReleaseSource>,
    pubkey: Option<&PathBuf>,
    arch: Option<Arch>,
    http: release_index::http::HttpOptions,
) -> Result<(std::sync::Arc<dyn release_index::source::Backend>, PublicKey, Arch)> {
    let index = match (index, config) {
        (Some(i), _) => i.clone(),
        (None, Some(c)) => c.index.clone(),
        (None, None) => bail!("--index is required without --config"),
    };
    let pubkey_path = match (pubkey, config) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => root.path(&c.pubkey),
        (None, None) => bail!("--pubkey is required without --config"),
    };
    let arch = match arch.or(config.and_then(|c| c.arch)) {
        Some(a) => a,
        None => Arch::host().context("this machine's architecture is not one extensions are built for; pass --arch")?,
    };
    let pubkey = PublicKey::read_pem(&pubkey_path)
        .with_context(|| format!("reading the public key {}", pubkey_path.display()))?;
    Ok((index.backend_with(&HttpClient::new(http)?), pubkey, arch))
}

impl SyncArgs {
    fn request(&self) -> Result<SyncRequest> {
        let root = NodeRoot::open(&self.root).with_context(|| format!("opening --root {}", self.root.display()))?;
        let config = match &self.config {
            Some(path) => Some(NodeConfig::read(path).context("reading --config")?),
            None => None,
        };
        let extensions = match (self.extensions.is_empty(), &config) {
            (false, _) => self.extensions.clone(),
            (true, Some(c)) => c.extensions.clone(),
            (true, None) => bail!("--extension is required without --config"),
        };
        let (backend, pubkey, arch) = open_release(
            &root,
            config.as_ref(),
            self.index.as_ref(),
            self.pubkey.as_ref(),
            self.arch,
            self.net.http_options(),
        )?;
        let min_serial = self.min_serial.max(config.as_ref().and_then(|c| c.min_serial));
        Ok(SyncRequest {
            root,
            backend,
            pubkey,
            extensions,
            arch,
            os: self.os.or(config.as_ref().and_then(|c| c.os)),
            sysupdate: self.sysupdate || config.as_ref().is_some_and(|c| c.sysupdate),
            min_serial,
            activate: !self.no_activate,
            once: self.once,
            retry_for: self.retry_for,
            lock_wait: self.lock_wait,
        })
    }
}

fn print_sync(report: &SyncReport) {
    if let Some(why) = &report.skipped {
        eprintln!("nothing to do: {why}");
        return;
    }
    for e in &report.extensions {
        match e.outcome {
            Outcome::Unchanged => eprintln!("{}: {} (unchanged)", e.channel, e.image),
            Outcome::Installed => eprintln!("{}: {} installed", e.channel, e.image),
            Outcome::Switched => {
                eprintln!("{}: {} installed (was {})", e.channel, e.image, e.previous.as_deref().unwrap_or("?"))
            }
        }
    }
    for c in &report.changes {
        eprintln!("  {} {}", c.action, c.path);
    }
    match &report.activation {
        None => eprintln!("node is up to date with serial {} of {}", report.serial.unwrap_or(0), report.index),
        Some(a) if a.ran => {
            for c in &a.commands {
                eprintln!("ran: {}", c.join(" "));
            }
        }
        Some(a) => {
            eprintln!("not activated: {}", a.skipped.as_deref().unwrap_or(""));
            for c in &a.commands {
                eprintln!("would run: {}", c.join(" "));
            }
        }
    }
}

fn print_upgrade(r: &UpgradeReport) {
    for c in &r.ran {
        eprintln!("ran: {c}");
    }
    for p in &r.pruned {
        eprintln!("removed {p}");
    }
    match r.outcome {
        "up-to-date" => println!("{}: {} is up to date ({})", r.extension, r.from, r.reason),
        outcome => println!("{}: {} -> {}: {outcome} ({})", r.extension, r.from, r.to, r.reason),
    }
}

fn print_status(report: &StatusReport) {
    if report.extensions.is_empty() {
        println!("nothing installed by composer under {}", report.root.display());
    }
    for e in &report.extensions {
        let merged = match e.merged {
            Some(true) => ", merged",
            Some(false) => ", NOT merged",
            None => "",
        };
        println!(
            "{}: {} from {} (serial {}, channel {}, since {}){merged}",
            e.name,
            e.installed.image,
            e.installed.index,
            e.installed.serial,
            e.installed.channel,
            e.installed.installed_at
        );
    }
    for (location, record) in &report.indexes {
        println!("index {location}: serial {} accepted (key {})", record.serial, record.key_id);
    }
    if let Some(s) = &report.synced {
        println!("last change: {} (serial {}{})", s.at, s.serial, if s.activated { "" } else { ", not activated" });
    }
    for p in &report.problems {
        println!("problem: {p}");
    }
}

pub(super) fn run(args: NodeArgs) -> Result<()> {
    match args.command {
        NodeCommand::Sync(args) => {
            let req = args.request()?;
            let report = sync(&req, &mut |line| eprintln!("{line}")).context("composer node sync")?;
            if args.json {
                cli_support::print_json(&report)?;
            } else {
                print_sync(&report);
            }
            Ok(())
        }
        NodeCommand::Upgrade(args) => {
            let req = args.request()?;
            let reports = upgrade(&req, &mut |line| eprintln!("{line}")).context("composer node upgrade")?;
            if args.json {
                cli_support::print_json(&reports)?;
            } else {
                reports.iter().for_each(print_upgrade);
            }
            Ok(())
        }
        NodeCommand::Rollback(args) => {
            let req = RollbackRequest {
                root: args.node.open()?,
                extension: args.extension.clone(),
                restart: (!args.restart.is_empty()).then(|| args.restart.clone()),
                timeout: args.timeout,
                lock_wait: args.node.lock_wait,
            };
            let report = rollback(&req, &mut |line| eprintln!("{line}")).context("composer node rollback")?;
            if args.json {
                cli_support::print_json(&report)?;
            } else {
                print_upgrade(&report);
            }
            Ok(())
        }
        NodeCommand::History(args) => {
            let root = NodeRoot::open(&args.root).with_context(|| format!("opening --root {}", args.root.display()))?;
            let events: Vec<Event> = history::read(&root)
                .context("composer node history")?
                .into_iter()
                .filter(|e| args.extension.as_ref().is_none_or(|x| *x == e.extension))
                .collect();
            if args.json {
                cli_support::print_json(&events)?;
            } else {
                for e in &events {
                    let outcome = serde_json::to_value(e.outcome).ok().and_then(|v| v.as_str().map(str::to_owned));
                    println!(
                        "{} {} {}: {} -> {}: {}{}",
                        e.at,
                        e.action,
                        e.extension,
                        e.from,
                        e.to,
                        outcome.unwrap_or_default(),
                        e.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
        NodeCommand::Status(args) => {
            let root = NodeRoot::open(&args.root).with_context(|| format!("opening --root {}", args.root.display()))?;
            let report = status(&root).context("composer node status")?;
            if args.json {
                cli_support::print_json(&report)?;
            } else {
                print_status(&report);
            }
            if !report.problems.is_empty() {
                bail!("{} problem(s): {}", report.problems.len(), report.problems.join("; "));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;
    use super::*;

    #[test]
    fn parses_flags_or_a_config() {
        let cmd = parse(&[
            "node",
            "sync",
            "--index",
            "https://x/r/",
            "--pubkey",
            "k.pem",
            "-e",
            "kubernetes@1.31",
            "--root",
            "/mnt",
            "--retry-for",
            "10min",
            "--json",
        ])
        .unwrap();
        let Command::Node(NodeArgs { command: NodeCommand::Sync(a) }) = cmd else { panic!("node sync") };
        assert_eq!(a.retry_for, Duration::from_secs(600));
        assert_eq!(a.extensions[0].to_string(), "kubernetes@1.31");
        assert!(parse(&["node", "sync", "--config", "/etc/composer/node.toml", "--once"]).is_ok());
        assert!(parse(&["node", "sync", "--index", "d"]).is_err(), "--pubkey and -e are required without --config");
        assert!(parse(&["node", "status", "--root", "/mnt", "--json"]).is_ok());
    }
}
