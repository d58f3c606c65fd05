//! TLS with rustls (ring provider): a PEM certificate chain and its private key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct TlsError {
    /// The certificate or key file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Loads `cert` (PEM, leaf first, then intermediates) and `key` (PEM: PKCS#8, PKCS#1 or SEC1)
/// into an acceptor that speaks HTTP/1.1 over TLS 1.2 and 1.3.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_err = |reason: String| TlsError { path: cert.to_owned(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(pem_reason(&e, "certificate")))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(pem_reason(&e, "certificate")))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM certificate in the file".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError { path: key.to_owned(), reason: pem_reason(&e, "private key") })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| TlsError {
            path: key.to_owned(),
            reason: format!("cannot be used with the certificate {}: {e}", cert.display()),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn pem_reason(e: &rustls::pki_types::pem::Error, what: &str) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => format!("no PEM {what} in the file"),
        other => format!("not a PEM {what}: {other}"),
    }
}
