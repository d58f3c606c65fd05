//! `keygen`, `sign`, `verify`, `vouch` and `pgp-keyring`: the Ed25519 keys, detached
//! signatures, key rotation records and the OpenPGP keyring derived for stock sysupdate.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use release_index::rotation::KeyRotation;
use release_index::timestamp::Timestamp;
use signing::openpgp::OpenPgpKey;
use signing::{PrivateKey, PublicKey};

/// Generate an Ed25519 signing key pair.
///
/// Writes DIR/private.pem (PKCS#8, mode 0600) and DIR/public.pem (SPKI); refuses to overwrite
/// either. Prints the key id: the first 16 hex characters of sha256 of the raw public key.
#[derive(Debug, Args)]
pub(super) struct KeygenArgs {
    /// Directory for the key pair (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Sign a file, writing the raw 64-byte Ed25519 signature to FILE.sig.
///
/// Anyone can check it with OpenSSL 3: `openssl pkeyutl -verify -pubin -inkey public.pem
/// -rawin -in FILE -sigfile FILE.sig`.
#[derive(Debug, Args)]
pub(super) struct SignArgs {
    /// File to sign.
    file: PathBuf,
    /// Private key (PKCS#8 PEM).
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
}

/// Check FILE.sig against FILE; exits non-zero and says why when it does not verify.
#[derive(Debug, Args)]
pub(super) struct VerifyArgs {
    /// Signed file.
    file: PathBuf,
    /// Public key (SPKI PEM).
    #[arg(long, value_name = "PUB")]
    pubkey: PathBuf,
}

/// Vouch for a new release key with the current one: write a key rotation record.
///
/// The record is the old key's signature over "old key → new key" (see the README, "Key
/// rotation"). Publish with the new key and `--rotation RECORD`: the index carries the
/// record, so nodes that trust the old key accept the new one, and retire the old one.
#[derive(Debug, Args)]
pub(super) struct VouchArgs {
    /// The key that signs the release now (PKCS#8 PEM), which vouches.
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// The new key's public half (SPKI PEM).
    #[arg(long, value_name = "PUB")]
    new_pubkey: PathBuf,
    /// Where to write the record (must not exist).
    #[arg(long, value_name = "RECORD")]
    out: PathBuf,
}

/// Write the OpenPGP keyring that checks a release's SHA256SUMS.gpg.
///
/// The OpenPGP key is derived from the Ed25519 release key (the same key always gives the
/// same keyring and fingerprint), so this can be run ahead of a publish, e.g. to give
/// stock systemd-sysupdate nodes a new key's keyring before a rotation. Install it as
/// /etc/systemd/import-pubring.gpg (systemd ≤ 257) and import-pubring.pgp. Prints the
/// fingerprint.
#[derive(Debug, Args)]
pub(super) struct PgpKeyringArgs {
    /// The release key (PKCS#8 PEM).
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// Where to write the binary keyring (must not exist).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

fn write_new(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = fs_err::File::create_new(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

pub(super) fn vouch(args: VouchArgs) -> Result<()> {
    let old = PrivateKey::read_pem(&args.key)?;
    let new = PublicKey::read_pem(&args.new_pubkey)?;
    anyhow::ensure!(
        old.public() != new,
        "{}: is the public half of --key; a key cannot succeed itself",
        args.new_pubkey.display()
    );
    let record = KeyRotation::sign(&old, &new, Timestamp::now());
    write_new(&args.out, record.to_json().as_bytes())?;
    eprintln!("key {} vouches for key {}", old.key_id(), new.key_id());
    println!("{}", args.out.display());
    Ok(())
}

pub(super) fn pgp_keyring(args: PgpKeyringArgs) -> Result<()> {
    let key = OpenPgpKey::derive(&PrivateKey::read_pem(&args.key)?);
    write_new(&args.out, &key.cert().to_keyring())?;
    eprintln!("wrote {}", args.out.display());
    println!("{}", key.fingerprint());
    Ok(())
}

pub(super) fn keygen(args: KeygenArgs) -> Result<()> {
    let id = signing::keygen(&args.out)?;
    eprintln!("wrote {} and {}", args.out.join("private.pem").display(), args.out.join("public.pem").display());
    println!("{id}");
    Ok(())
}

pub(super) fn sign(args: SignArgs) -> Result<()> {
    let key = PrivateKey::read_pem(&args.key)?;
    let sig = key.sign_file(&args.file).with_context(|| format!("signing {}", args.file.display()))?;
    eprintln!("signed with key {}", key.key_id());
    println!("{}", sig.display());
    Ok(())
}

pub(super) fn verify(args: VerifyArgs) -> Result<()> {
    let key = PublicKey::read_pem(&args.pubkey)?;
    key.verify_file(&args.file)?;
    println!("{}: good signature from key {}", args.file.display(), key.key_id());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;

    #[test]
    fn parses() {
        assert!(matches!(parse(&["keygen", "--out", "k"]).unwrap(), Command::Keygen(_)));
        assert!(matches!(parse(&["sign", "f", "--key", "k"]).unwrap(), Command::Sign(_)));
        assert!(matches!(parse(&["verify", "f", "--pubkey", "p"]).unwrap(), Command::Verify(_)));
        assert!(parse(&["sign", "f"]).is_err(), "--key is required");
        assert!(matches!(
            parse(&["vouch", "--key", "old.pem", "--new-pubkey", "new.pem", "--out", "r.json"]).unwrap(),
            Command::Vouch(_)
        ));
        assert!(matches!(parse(&["pgp-keyring", "--key", "k", "--out", "f"]).unwrap(), Command::PgpKeyring(_)));
    }
}
