//! `keygen`, `sign` and `verify`: the Ed25519 keys and detached signatures.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
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
    }
}
