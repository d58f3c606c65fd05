use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use cli_support::RemoteArgs;
use release_index::publish::oci::ReferrersMode;
use release_index::publish::{publish, publish_to, Destination, OciTarget, PublishOptions};
use release_index::rotation::KeyRotation;
use release_index::timestamp::Timestamp;
use serde::Serialize;
use signing::PrivateKey;
use sysext_model::BaseUrl;

/// Add images to a signed release directory that systemd-sysupdate and composer consume.
///
/// Writes Flatcar's sysext-bakery layout (images and .sig, SHA256SUMS and <ext>/SHA256SUMS
/// with signatures, <ext>/<ext>.conf and per-minor transfer files in .conf and .transfer
/// form, noop.conf) plus index.json and index.json.sig. The directory is a symlink to a
/// complete generation, swapped in one rename: if anything fails, the previous release stays
/// in place, valid. Without IMAGEs, re-signs the current release with a new expiry.
///
/// With --to oci://REGISTRY/REPOSITORY the release goes to an OCI registry instead: each image
/// an artifact whose one layer is the image (tag <EXTENSION>-<VERSION>-<ARCH>), an image index
/// per version across architectures (tag <EXTENSION>-<VERSION>), and the signed index with the
/// checksum lists and transfer files (tag index), every signature attached as a referrer
/// (the registry's referrers API, or the sha256-<digest> tag scheme where it has none). The
/// index tag moves last, so pullers see the previous release until the new one is complete.
///
/// With --openpgp (remembered from then on), every SHA256SUMS also gets a detached OpenPGP
/// signature SHA256SUMS.gpg made with a key derived from --key, the keyring
/// import-pubring.gpg (and .pgp) for nodes' /etc/systemd/, and the transfer files say
/// Verify=yes, so stock systemd-sysupdate checks them. --rotation moves the release to a new
/// key: publish with the new key and the record the old key signed (bakery vouch).
#[derive(Debug, Args)]
pub(super) struct PublishArgs {
    /// Images to add, named <EXTENSION>-<VERSION>-<ARCH>.raw.
    pub(super) images: Vec<PathBuf>,
    /// Release directory (created on the first publish), or oci://REGISTRY/REPOSITORY
    /// (oci+http:// for a registry without TLS).
    #[arg(long, value_name = "DIR|oci://REGISTRY/REPO")]
    to: Destination,
    /// Release signing key (PKCS#8 PEM); must be the key that signed the current release, or
    /// the key --rotation vouches for.
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// Also sign for stock systemd-sysupdate: SHA256SUMS.gpg next to every SHA256SUMS (OpenPGP,
    /// with a key derived from --key), import-pubring.gpg/.pgp, transfer files with Verify=yes.
    /// Once given, later publishes keep doing it.
    #[arg(long)]
    openpgp: bool,
    /// A key rotation record (from `bakery vouch`) in which the key that signs the current
    /// release vouches for --key; the index carries it, so nodes that trust the old key follow.
    #[arg(long, value_name = "RECORD")]
    rotation: Option<PathBuf>,
    /// http(s) URL the release directory is served from; required on the first publish,
    /// remembered in index.json after. Transfer files point into it.
    #[arg(long, value_name = "URL")]
    base_url: Option<BaseUrl>,
    /// How long the index stays valid; nodes refuse it afterwards. E.g. 30d, 12h, 2w.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = release_index::timestamp::parse_duration)]
    pub(super) expires: Duration,
    /// Generations to keep in <DIR>.generations, the new one included.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..))]
    pub(super) keep: u16,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Out<'a> {
    release: String,
    generation: &'a Path,
    serial: u64,
    expires: Timestamp,
    key_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotated_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    openpgp_fingerprint: Option<String>,
    added: Vec<String>,
    unchanged: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    referrers: Option<ReferrersMode>,
}

pub(super) fn run(args: PublishArgs) -> Result<()> {
    let key = PrivateKey::read_pem(&args.key)?;
    let rotation = match &args.rotation {
        Some(p) => Some(KeyRotation::read(p)?),
        None => None,
    };
    let images = args.images.iter().map(|p| crate::release::new_image(p)).collect::<Result<Vec<_>>>()?;
    let dir = match &args.to {
        Destination::Dir(d) => d.clone(),
        Destination::Oci(_) => PathBuf::new(),
    };
    let opts = PublishOptions {
        release_dir: &dir,
        key: &key,
        rotation: rotation.as_ref(),
        openpgp: args.openpgp,
        base_url: args.base_url,
        valid_for: args.expires,
        now: Timestamp::now(),
        keep_generations: usize::from(args.keep),
        fail_after: None,
    };
    let mut referrers = None;
    let published = match &args.to {
        Destination::Dir(_) => publish(&images, &opts),
        Destination::Oci(repo) => {
            let oci = args.remote.connect()?.oci_options();
            let target = OciTarget::new(repo, &oci).with_context(|| format!("publishing to {repo}"))?;
            let r = publish_to(&target, &images, &opts);
            referrers = target.referrers_mode();
            r
        }
    }
    .with_context(|| format!("publishing to {}", args.to))?;
    let index = &published.index;
    if args.json {
        cli_support::print_json(&Out {
            release: args.to.to_string(),
            generation: &published.generation,
            serial: index.serial,
            expires: index.expires,
            key_id: index.key_id.to_string(),
            rotated_from: rotation.as_ref().map(|r| r.old_key.key_id().to_string()),
            openpgp_fingerprint: index.openpgp_fingerprint.map(|f| f.to_string()),
            added: published.added.iter().map(ToString::to_string).collect(),
            unchanged: published.unchanged.iter().map(ToString::to_string).collect(),
            referrers,
        })?;
    } else {
        for name in &published.added {
            eprintln!("added     {name}");
        }
        for name in &published.unchanged {
            eprintln!("unchanged {name} (already published, identical)");
        }
        if let Some(r) = &rotation {
            eprintln!("rotated   from key {} to {} (the index carries the record)", r.old_key.key_id(), index.key_id);
        }
        if let Some(fp) = index.openpgp_fingerprint {
            eprintln!("openpgp   SHA256SUMS.gpg signed by {fp} (keyring: import-pubring.gpg)");
        }
        match referrers {
            Some(ReferrersMode::Api) => eprintln!("signatures attached through the registry's referrers API"),
            Some(ReferrersMode::TagScheme) => {
                eprintln!("signatures attached through sha256-<digest> tags (the registry has no referrers API)")
            }
            None => {}
        }
        eprintln!("published serial {} with key {}, valid until {}", index.serial, index.key_id, index.expires);
        println!("{}", args.to);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;
    use super::*;

    #[test]
    fn parses() {
        let cmd = parse(&["publish", "a.raw", "b.raw", "--to", "r", "--key", "k"]).unwrap();
        assert!(matches!(cmd,
            Command::Publish(ref a) if a.images.len() == 2 && a.expires == Duration::from_secs(30 * 86_400) && a.keep == 3));
        assert!(parse(&["publish", "--to", "r", "--key", "k", "--keep", "1"]).is_err());
        let cmd = parse(&["publish", "--to", "oci://reg.example/team/rel", "--key", "k"]).unwrap();
        assert!(
            matches!(cmd, Command::Publish(ref a) if matches!(a.to, Destination::Oci(ref r) if r.repository == "team/rel"))
        );
        let err = parse(&["publish", "--to", "https://x.example/r", "--key", "k"]).unwrap_err().to_string();
        assert!(err.contains("cannot be written to"), "{err}");
        assert!(parse(&["publish", "--to", "oci://r/x", "--key", "k", "--username", "u"]).is_err());
        // A huge validity is a usage error, not an overflow panic when the index is stamped.
        for huge in ["99999y", "9999999999d", "3654d"] {
            let err = parse(&["publish", "--to", "r", "--key", "k", "--expires", huge]).unwrap_err().to_string();
            assert!(err.contains("at most 10 years") || err.contains("invalid duration"), "{huge}: {err}");
        }
        assert!(parse(&["publish", "--to", "r", "--key", "k", "--expires", "3653d"]).is_ok());
        let cmd = parse(&["publish", "--to", "r", "--key", "k", "--openpgp", "--rotation", "rot.json"]).unwrap();
        assert!(matches!(cmd, Command::Publish(ref a) if a.openpgp && a.rotation.is_some()));
    }
}
