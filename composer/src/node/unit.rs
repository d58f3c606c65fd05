//! `composer-node-sync.service`: runs `composer node sync` once, at first boot, from the
//! composer binary the node's own `composer` extension merges into `/usr/bin`; and
//! `composer-node-upgrade.service` with its timer, which runs `composer node upgrade` (patch
//! upgrades within the channels, guarded and undone on failure) daily at a randomised time,
//! installed by `provision --agent` and enabled with `--auto-upgrade`.
//!
//! - After `network-online.target` (and `systemd-sysext.service`, which merges composer
//!   itself), before `kubelet.service`: a kubelet in the same boot transaction waits.
//! - While the release server is unreachable, `--retry-for` keeps trying inside the run with
//!   a doubling delay (up to 30 s) for 10 minutes; a run that still fails (or is refused: a
//!   bad signature, a tampered image) exits non-zero, and systemd starts it again after
//!   `RestartSec=` until `StartLimitBurst=` attempts within `StartLimitIntervalSec=` have
//!   failed. Then the unit stays `failed`: `systemctl status composer-node-sync` and
//!   `systemctl --failed` show it and the journal has each attempt's reason. Never a silent
//!   half-provisioned node: nothing of a failed run is merged.
//! - `--once`: once a sync has completed on this node (the state file says so) later boots
//!   do nothing; updates are a separate decision.
//!
//! Every key is one systemd 252 (Debian 12) knows, so the unit means the same on 252, 255
//! and 257+; the tests run `systemd-analyze verify` on it.

use super::config::CONFIG_PATH;

/// The unit's name.
pub const UNIT: &str = "composer-node-sync.service";
/// Where provisioning writes it.
pub const UNIT_PATH: &str = "/etc/systemd/system/composer-node-sync.service";
/// The target that wants it (its `WantedBy=`).
pub const WANTED_BY: &str = "multi-user.target";
/// The composer binary the `composer` extension ships.
pub const BINARY: &str = "/usr/bin/composer";
/// The extension that ships composer.
pub const EXTENSION: &str = "composer";

/// The unit's text.
pub fn unit() -> String {
    format!(
        "[Unit]
Description=Install and merge this node's system extensions from the signed release
Wants=network-online.target
After=network-online.target systemd-sysext.service
Before=kubelet.service
ConditionPathExists={CONFIG_PATH}
# Up to 4 attempts (each retrying an unreachable server for 10 minutes) within 2 hours,
# then the unit stays failed, visible in systemctl status and systemctl --failed.
StartLimitIntervalSec=2h
StartLimitBurst=4

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={BINARY} node sync --config {CONFIG_PATH} --once --retry-for 10min
Restart=on-failure
RestartSec=30s
TimeoutStartSec=30min

[Install]
WantedBy={WANTED_BY}
"
    )
}

/// The upgrade service.
pub const UPGRADE_UNIT: &str = "composer-node-upgrade.service";
/// Its timer.
pub const UPGRADE_TIMER: &str = "composer-node-upgrade.timer";
/// Where provisioning writes them.
pub const UPGRADE_UNIT_PATH: &str = "/etc/systemd/system/composer-node-upgrade.service";
/// Where provisioning writes the timer.
pub const UPGRADE_TIMER_PATH: &str = "/etc/systemd/system/composer-node-upgrade.timer";
/// The target that wants the timer once enabled.
pub const TIMER_WANTED_BY: &str = "timers.target";

/// `composer-node-upgrade.service`: one `composer node upgrade` of every installed
/// extension, from the configuration the first-boot unit uses. Not before a first sync has
/// completed (the state file exists); the lock makes it wait for a sync still running.
pub fn upgrade_unit() -> String {
    format!(
        "[Unit]
Description=Upgrade this node's system extensions within their channels (patch releases)
Wants=network-online.target
After=network-online.target {UNIT}
ConditionPathExists={CONFIG_PATH}
ConditionPathExists=/var/lib/composer/node.json

[Service]
Type=oneshot
ExecStart={BINARY} node upgrade --config {CONFIG_PATH}
TimeoutStartSec=1h
"
    )
}

/// `composer-node-upgrade.timer`: daily, at a random time within four hours so a fleet does
/// not restart every kubelet at once, and at the next boot when a run was missed.
pub fn upgrade_timer() -> String {
    format!(
        "[Unit]
Description=Upgrade this node's system extensions daily

[Timer]
OnCalendar=daily
RandomizedDelaySec=4h
Persistent=true
Unit={UPGRADE_UNIT}

[Install]
WantedBy={TIMER_WANTED_BY}
"
    )
}
