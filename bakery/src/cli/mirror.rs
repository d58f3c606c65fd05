use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use cli_support::RemoteArgs;
use release_index::publish::mirror::{mirror, MirrorOptions};
use release_index::publish::{Destination, DirTarget, OciTarget, StaticDirTarget, Target};
use release_index::source::ReleaseSource;
use release_index::timestamp::Timestamp;
use signing::PublicKey;

/// Copy a published release between directories, http(s) URLs and OCI registries.
///
/// Verifies the source against the publisher's key first (index signature, expiry and key,
/// every image's size, SHA-256, SHA-512 and signature, the checksum lists and transfer files
/// against the signed index) and copies only what the destination lacks, keeping the
/// publisher's signatures: nodes go on verifying against the publisher's key, not the
/// mirror's. A release that does not verify is not copied. A directory destination is a
/// release directory swapped in atomically, as `publish` makes one; a registry destination
/// has its index tag moved last. An interrupted mirror resumes: verified downloads wait in
/// <DST>.generations/.incoming, and a registry keeps the blobs already pushed.
#[derive(Debug, Args)]
pub(super) struct MirrorArgs {
    /// The release to copy: a release directory, an http(s):// URL or oci://REGISTRY/REPO.
    #[arg(value_name = "SRC")]
    pub(super) source: ReleaseSource,
    /// Where to copy it: a release directory or oci://REGISTRY/REPO.
    #[arg(value_name = "DST")]
    pub(super) dest: Destination,
    /// The publisher's public key (SPKI PEM).
    #[arg(long, value_name = "PUB")]
    pubkey: PathBuf,
    /// DST is a plain directory updated in place (a web root or a mounted bucket), written in
    /// the order that never shows readers an index naming missing files: images and
    /// signatures, checksum lists, transfer files, index.json.sig, index.json.
    #[arg(long)]
    in_place: bool,
    /// Refuse a source index whose serial is lower than this.
    #[arg(long, value_name = "N")]
    min_serial: Option<u64>,
    /// Generations to keep in <DST>.generations, the new one included.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..))]
    keep: u16,
    #[command(flatten)]
    remote: RemoteArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: MirrorArgs) -> Result<()> {
    let key =
        PublicKey::read_pem(&args.pubkey).with_context(|| format!("reading --pubkey {}", args.pubkey.display()))?;
    let remote = args.remote.connect()?;
    let source = remote.backend(&args.source);
    let target: Box<dyn Target> = match (&args.dest, args.in_place) {
        (Destination::Dir(d), false) => Box::new(DirTarget::new(d)?),
        (Destination::Dir(d), true) => Box::new(StaticDirTarget::new(d)),
        (Destination::Oci(_), true) => anyhow::bail!("--in-place is for directories, not {}", args.dest),
        (Destination::Oci(repo), false) => Box::new(OciTarget::new(repo, &remote.oci_options())?),
    };
    let opts = MirrorOptions {
        pubkey: &key,
        now: Timestamp::now(),
        min_serial: args.min_serial,
        keep_generations: usize::from(args.keep),
        fail_after_images: None,
    };
    let done = mirror(source, target.as_ref(), &opts)
        .with_context(|| format!("mirroring {} to {}", args.source, args.dest))?;
    if args.json {
        return cli_support::print_json(&done);
    }
    if done.up_to_date {
        eprintln!("{} already has serial {}; nothing to copy", args.dest, done.serial);
    }
    for name in &done.copied {
        let how = if done.resumed.contains(name) { " (downloaded by an interrupted run)" } else { "" };
        eprintln!("copied    {name}{how}");
    }
    if !done.up_to_date {
        for name in &done.kept {
            eprintln!("kept      {name} (already there)");
        }
        eprintln!("mirrored serial {} with key {}", done.serial, key.key_id());
    }
    println!("{}", args.dest);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;
    use super::*;

    #[test]
    fn parses() {
        let cmd = parse(&["mirror", "https://x.example/r", "oci://reg.example/rel", "--pubkey", "p"]).unwrap();
        assert!(matches!(cmd, Command::Mirror(ref a)
            if matches!(a.source, ReleaseSource::Url(_)) && matches!(a.dest, Destination::Oci(_))));
        let cmd = parse(&["mirror", "oci+http://127.0.0.1:5000/rel", "site", "--pubkey", "p", "--in-place"]).unwrap();
        assert!(matches!(cmd, Command::Mirror(ref a) if a.in_place && matches!(a.source, ReleaseSource::Oci(_))));
        assert!(parse(&["mirror", "a", "b"]).is_err(), "--pubkey is required");
        assert!(parse(&["mirror", "a", "https://x.example/r", "--pubkey", "p"]).is_err());
    }
}
