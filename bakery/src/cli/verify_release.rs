use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Args;
use cli_support::RemoteArgs;
use release_index::source::ReleaseSource;
use release_index::timestamp::Timestamp;
use release_index::verify::{verify_release, VerifyOptions};
use signing::PublicKey;

/// Check a release directory, URL or OCI repository: signatures, digests, serial and expiry,
/// SHA256SUMS and transfer files against the index, missing and unlisted files, and the
/// OpenPGP keyring and SHA256SUMS.gpg files when the release has them. Reports every problem
/// and exits non-zero if there is any.
///
/// --pubkey may be a key the release has since rotated away from: the key rotations the
/// index carries lead from it to the key that signs the release now.
#[derive(Debug, Args)]
pub(super) struct VerifyReleaseArgs {
    /// Release directory, file:// URL, http(s):// URL or oci://REGISTRY/REPO.
    pub(super) source: ReleaseSource,
    /// The release's public key (SPKI PEM), or one it was rotated from.
    #[arg(long, value_name = "PUB")]
    pubkey: PathBuf,
    /// Also refuse an index whose serial is lower than this (the last one you accepted).
    #[arg(long, value_name = "N")]
    min_serial: Option<u64>,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: VerifyReleaseArgs) -> Result<()> {
    let key = PublicKey::read_pem(&args.pubkey)?;
    let backend = args.remote.connect()?.backend(&args.source);
    let opts = VerifyOptions { pubkey: &key, now: Timestamp::now(), min_serial: args.min_serial, inspect_images: true };
    let report = verify_release(backend.as_ref(), &opts);
    if args.json {
        cli_support::print_json(&report)?;
    } else {
        for p in &report.problems {
            println!("FAIL {}: {}", p.path, p.message);
        }
        if !report.unlisted_checked {
            eprintln!("note: {} is not a directory; files the index does not list cannot be looked for", report.source);
        }
    }
    let serial = report.serial.map_or_else(|| "unknown".to_owned(), |s| s.to_string());
    match report.problems.len() {
        0 => {
            if !args.json {
                let rotated = report.rotated_to.map(|k| format!(" (rotated to {k})")).unwrap_or_default();
                let openpgp = report.openpgp_fingerprint.map(|f| format!(", OpenPGP {f}")).unwrap_or_default();
                println!(
                    "{}: OK, serial {serial}, {} files checked, key {}{rotated}{openpgp}, valid until {}",
                    report.source,
                    report.files_checked,
                    report.key_id,
                    report.expires.map(|e| e.to_string()).unwrap_or_default()
                );
            }
            Ok(())
        }
        n => Err(anyhow!("{}: {n} problem{} found (serial {serial})", report.source, if n == 1 { "" } else { "s" })),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;
    use super::*;

    #[test]
    fn parses() {
        let cmd = parse(&["verify-release", "https://x.example/r", "--pubkey", "p"]).unwrap();
        assert!(matches!(cmd,
            Command::VerifyRelease(ref a) if a.source == ReleaseSource::Url("https://x.example/r/".parse().unwrap())));
    }
}
