use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use release_index::publish::{publish, PublishOptions};
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
#[derive(Debug, Args)]
pub(super) struct PublishArgs {
    /// Images to add, named <EXTENSION>-<VERSION>-<ARCH>.raw.
    pub(super) images: Vec<PathBuf>,
    /// Release directory (created on the first publish).
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// Release signing key (PKCS#8 PEM); must be the key that signed the current release.
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
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
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Out<'a> {
    release: &'a Path,
    generation: &'a Path,
    serial: u64,
    expires: Timestamp,
    key_id: String,
    added: Vec<String>,
    unchanged: Vec<String>,
}

pub(super) fn run(args: PublishArgs) -> Result<()> {
    let key = PrivateKey::read_pem(&args.key)?;
    let images = args.images.iter().map(|p| crate::release::new_image(p)).collect::<Result<Vec<_>>>()?;
    let opts = PublishOptions {
        release_dir: &args.to,
        key: &key,
        base_url: args.base_url,
        valid_for: args.expires,
        now: Timestamp::now(),
        keep_generations: usize::from(args.keep),
        fail_after: None,
    };
    let published = publish(&images, &opts).with_context(|| format!("publishing to {}", args.to.display()))?;
    let index = &published.index;
    if args.json {
        cli_support::print_json(&Out {
            release: &args.to,
            generation: &published.generation,
            serial: index.serial,
            expires: index.expires,
            key_id: index.key_id.to_string(),
            added: published.added.iter().map(ToString::to_string).collect(),
            unchanged: published.unchanged.iter().map(ToString::to_string).collect(),
        })?;
    } else {
        for name in &published.added {
            eprintln!("added     {name}");
        }
        for name in &published.unchanged {
            eprintln!("unchanged {name} (already published, identical)");
        }
        eprintln!("published serial {} with key {}, valid until {}", index.serial, index.key_id, index.expires);
        println!("{}", args.to.display());
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
        // A huge validity is a usage error, not an overflow panic when the index is stamped.
        for huge in ["99999y", "9999999999d", "3654d"] {
            let err = parse(&["publish", "--to", "r", "--key", "k", "--expires", huge]).unwrap_err().to_string();
            assert!(err.contains("at most 10 years") || err.contains("invalid duration"), "{huge}: {err}");
        }
        assert!(parse(&["publish", "--to", "r", "--key", "k", "--expires", "3653d"]).is_ok());
    }
}
