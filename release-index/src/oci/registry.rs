//! A blocking handle on one repository, over `oci-client` (async) on a private runtime.
//!
//! Everything else in this crate is blocking I/O; the registry client is the one async
//! dependency, so it runs on its own small Tokio runtime and every call here blocks on it.
//! Reads and idempotent writes (a blob or manifest PUT of the same bytes) are retried on
//! connection failures and on 408, 429 and 5xx answers, like every other download.

use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::auth::{self, Credentials};
use super::manifest::{Descriptor, ImageIndex, MT_INDEX, MT_MANIFEST};
use super::OciRepo;
use crate::http::HttpOptions;

/// Largest manifest or index read.
pub const MAX_MANIFEST: usize = 4 << 20;

/// How to reach a registry.
#[derive(Clone, Debug, Default)]
pub struct OciOptions {
    /// Timeouts, retries and the CA file.
    pub http: HttpOptions,
    /// Explicit credentials (`--username`/`--password-stdin`); otherwise the auth files.
    pub credentials: Option<Credentials>,
}

/// A registry operation that failed, naming what was asked for.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{location}: {cause}")]
pub struct OciError {
    /// `oci://REGISTRY/REPO:TAG`, `…@DIGEST` or the registry.
    pub location: String,
    /// What went wrong.
    pub cause: String,
}

/// A repository, ready to read and write.
#[derive(Clone)]
pub struct Registry {
    repo: OciRepo,
    client: Client,
    auth: RegistryAuth,
    auth_from: Option<String>,
    rt: Arc<tokio::runtime::Runtime>,
    retries: u32,
    backoff: Duration,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("repo", &self.repo).field("auth_from", &self.auth_from).finish()
    }
}

fn runtime() -> Result<Arc<tokio::runtime::Runtime>, String> {
    static RT: OnceLock<Result<Arc<tokio::runtime::Runtime>, String>> = OnceLock::new();
    RT.get_or_init(|| {
        // rustls needs a process-wide crypto provider; ring is the one this workspace builds.
        let _ = rustls::crypto::ring::default_provider().install_default();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("oci-client")
            .enable_all()
            .build()
            .map(Arc::new)
            .map_err(|e| format!("starting the registry client: {e}"))
    })
    .clone()
}

fn env_proxy(names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// Whether an answer means "not there".
fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(e.code, OciErrorCode::ManifestUnknown | OciErrorCode::BlobUnknown | OciErrorCode::NameUnknown)
        }),
        _ => false,
    }
}

fn is_retryable(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code == 408 || *code == 429 || *code >= 500,
        OciDistributionError::RequestError(r) => r.is_timeout() || r.is_connect() || r.is_request() || r.is_body(),
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

/// One line for an oci-client error, with its causes, and a hint where one helps.
fn describe(e: &OciDistributionError, auth_from: Option<&str>) -> String {
    let mut s = crate::http::error_chain(e);
    if let OciDistributionError::UnauthorizedError { .. } = e {
        s = match auth_from {
            Some(from) => format!("{s}: the registry refused the credentials from {from}"),
            None => format!(
                "{s}: the registry wants credentials; none were found (log in with `docker login` or `podman login`, \
                 set REGISTRY_AUTH_FILE, or pass --username and --password-stdin)"
            ),
        };
    }
    s
}

impl Registry {
    /// A handle on `repo`. Credentials are looked up now (see [`auth`]); nothing is sent yet.
    pub fn new(repo: &OciRepo, opts: &OciOptions) -> Result<Self, OciError> {
        let err = |cause: String| OciError { location: repo.to_string(), cause };
        let rt = runtime().map_err(err)?;
        let mut extra_root_certificates = Vec::new();
        if let Some(ca) = &opts.http.ca_file {
            let data = std::fs::read(ca).map_err(|e| err(format!("reading the CA file {}: {e}", ca.display())))?;
            extra_root_certificates.push(Certificate { encoding: CertificateEncoding::Pem, data });
        }
        let config = ClientConfig {
            protocol: if repo.plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
            extra_root_certificates,
            read_timeout: Some(opts.http.timeout),
            connect_timeout: Some(opts.http.connect_timeout),
            user_agent: concat!("sysext-bakery/", env!("CARGO_PKG_VERSION")),
            https_proxy: env_proxy(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]),
            http_proxy: env_proxy(&["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]),
            no_proxy: env_proxy(&["NO_PROXY", "no_proxy"]),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(|e| err(crate::http::error_chain(&e)))?;
        let found = auth::lookup(opts.credentials.as_ref(), &repo.registry, &repo.repository)
            .map_err(|e| err(e.to_string()))?;
        let (auth, auth_from) = match found {
            Some(f) => (RegistryAuth::Basic(f.credentials.username, f.credentials.password), Some(f.from)),
            None => (RegistryAuth::Anonymous, None),
        };
        Ok(Self {
            repo: repo.clone(),
            client,
            auth,
            auth_from,
            rt,
            retries: opts.http.retries,
            backoff: opts.http.backoff,
        })
    }

    /// The repository.
    pub fn repo(&self) -> &OciRepo {
        &self.repo
    }

    /// Where the credentials came from, if any were found.
    pub fn auth_from(&self) -> Option<&str> {
        self.auth_from.as_deref()
    }

    fn reference(&self, tag_or_digest: &str) -> Reference {
        let (r, p) = (self.repo.registry.clone(), self.repo.repository.clone());
        if tag_or_digest.contains(':') {
            Reference::with_digest(r, p, tag_or_digest.to_owned())
        } else {
            Reference::with_tag(r, p, tag_or_digest.to_owned())
        }
    }

    /// Runs `op` with the retry policy, mapping the final error.
    fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T, OciError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        self.retrying(what, || async { op().await.map(Some) }, false)
            .map(|v| v.expect("retrying maps not-found to None only when asked"))
    }

    /// Like [`Self::call`], but "not found" is `Ok(None)`.
    fn call_opt<T, F, Fut>(&self, what: &str, op: F) -> Result<Option<T>, OciError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        self.retrying(what, || async { op().await.map(Some) }, true)
    }

    fn retrying<T, F, Fut>(&self, what: &str, op: F, absent_is_none: bool) -> Result<Option<T>, OciError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, OciDistributionError>>,
    {
        let mut delay = self.backoff;
        let mut attempt = 0;
        loop {
            match self.rt.block_on(op()) {
                Ok(v) => return Ok(v),
                Err(e) if absent_is_none && is_not_found(&e) => return Ok(None),
                Err(e) if is_retryable(&e) && attempt < self.retries => {
                    attempt += 1;
                    std::thread::sleep(delay);
                    delay = delay.saturating_mul(2);
                }
                Err(e) => {
                    return Err(OciError {
                        location: self.repo.at(what),
                        cause: describe(&e, self.auth_from.as_deref()),
                    })
                }
            }
        }
    }

    fn store_auth(&self) {
        let registry = self.reference("x").resolve_registry().to_owned();
        self.rt.block_on(self.client.store_auth_if_needed(&registry, &self.auth));
    }

    /// The manifest or index at `tag_or_digest`: its bytes and digest; `None` if there is none.
    /// A manifest fetched by digest is checked against it.
    pub fn manifest(&self, tag_or_digest: &str) -> Result<Option<(Vec<u8>, String)>, OciError> {
        self.store_auth();
        let reference = self.reference(tag_or_digest);
        let got = self.call_opt(tag_or_digest, || {
            self.client.pull_manifest_raw(&reference, &self.auth, &[MT_MANIFEST, MT_INDEX])
        })?;
        let Some((bytes, _)) = got else { return Ok(None) };
        if bytes.len() > MAX_MANIFEST {
            return Err(OciError {
                location: self.repo.at(tag_or_digest),
                cause: format!("a manifest of {} bytes; refusing more than {MAX_MANIFEST}", bytes.len()),
            });
        }
        // Our own digest of the bytes, whatever header the registry sent.
        let digest = super::manifest::digest_of(&bytes);
        if tag_or_digest.contains(':') && digest != tag_or_digest {
            return Err(OciError {
                location: self.repo.at(tag_or_digest),
                cause: format!("the registry returned a manifest with digest {digest}"),
            });
        }
        Ok(Some((bytes.to_vec(), digest)))
    }

    /// Streams the blob `digest` (the client verifies it on the last read); `None` if absent.
    pub fn blob(&self, digest: &str, size: u64) -> Result<Option<Box<dyn Read + Send>>, OciError> {
        self.store_auth();
        let reference = self.reference(digest);
        let desc =
            oci_client::manifest::OciDescriptor { digest: digest.to_owned(), size: size as i64, ..Default::default() };
        let stream = self.call_opt(digest, || self.client.pull_blob_stream(&reference, &desc))?;
        Ok(stream.map(|s| {
            Box::new(BlobReader { rt: self.rt.clone(), stream: s.stream, buf: bytes::Bytes::new(), done: false })
                as Box<dyn Read + Send>
        }))
    }

    /// Whether the repository has the blob `digest`.
    pub fn has_blob(&self, digest: &str) -> Result<bool, OciError> {
        self.store_auth();
        let reference = self.reference(digest);
        self.call(digest, || self.client.blob_exists(&reference, digest))
    }

    fn push_auth(&self, reference: &Reference) -> Result<(), OciError> {
        self.store_auth();
        self.call("(push access)", || self.client.auth(reference, &self.auth, RegistryOperation::Push)).map(|_| ())
    }

    /// Uploads `bytes` as the blob `digest`, unless the repository has it.
    pub fn push_blob(&self, digest: &str, bytes: &[u8]) -> Result<bool, OciError> {
        if self.has_blob(digest)? {
            return Ok(false);
        }
        let reference = self.reference(digest);
        self.push_auth(&reference)?;
        let data = bytes::Bytes::copy_from_slice(bytes);
        self.call(digest, || self.client.push_blob(&reference, data.clone(), digest))?;
        Ok(true)
    }

    /// Uploads the file at `path` as the blob `digest` in 4 MiB chunks, unless the repository
    /// has it.
    pub fn push_blob_file(&self, digest: &str, path: &Path, size: u64) -> Result<bool, OciError> {
        if self.has_blob(digest)? {
            return Ok(false);
        }
        let reference = self.reference(digest);
        self.push_auth(&reference)?;
        let path = path.to_owned();
        self.call(digest, || {
            let file = std::fs::File::open(&path);
            let stream = futures_util::stream::unfold(Some(file), |state| async move {
                let mut file = match state? {
                    Ok(f) => f,
                    Err(e) => return Some((Err(OciDistributionError::IoError(e)), None)),
                };
                let mut buf = vec![0u8; 4 << 20];
                let mut n = 0;
                while n < buf.len() {
                    match file.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Some((Err(OciDistributionError::IoError(e)), None)),
                    }
                }
                if n == 0 {
                    return None;
                }
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(Ok(file))))
            });
            self.client.push_blob_stream(&reference, stream, digest, Some(size))
        })?;
        Ok(true)
    }

    /// Puts a manifest (or index) under `tag_or_digest`.
    pub fn push_manifest(&self, tag_or_digest: &str, bytes: &[u8], media_type: &str) -> Result<(), OciError> {
        let reference = self.reference(tag_or_digest);
        self.push_auth(&reference)?;
        let body = bytes::Bytes::copy_from_slice(bytes);
        let ct = http::HeaderValue::from_str(media_type)
            .map_err(|e| OciError { location: self.repo.at(tag_or_digest), cause: e.to_string() })?;
        self.call(tag_or_digest, || self.client.push_manifest_raw(&reference, body.clone(), ct.clone())).map(|_| ())
    }

    /// The referrers of `subject` with this artifactType, through the referrers API or, where
    /// the registry answers 404 there, the `sha256-<hex>` tag scheme.
    pub fn referrers(&self, subject: &str, artifact_type: &str) -> Result<Vec<Descriptor>, OciError> {
        self.store_auth();
        let reference = self.reference(subject);
        let index = self
            .call(&format!("{subject} (referrers)"), || self.client.pull_referrers(&reference, Some(artifact_type)))?;
        // Re-read through our own types: oci-client's Platform is stricter than we need.
        let json = serde_json::to_vec(&index).expect("an index serialises");
        let index: ImageIndex = serde_json::from_slice(&json).map_err(|e| OciError {
            location: self.repo.at(subject),
            cause: format!("unreadable referrers index: {e}"),
        })?;
        Ok(index.manifests.into_iter().filter(|d| d.artifact_type.as_deref() == Some(artifact_type)).collect())
    }
}

/// A blob stream as a blocking reader.
struct BlobReader {
    rt: Arc<tokio::runtime::Runtime>,
    stream: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, io::Error>>,
    buf: bytes::Bytes,
    done: bool,
}

impl Read for BlobReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rt.block_on(self.stream.next()) {
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => return Err(e),
                None => self.done = true,
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}
