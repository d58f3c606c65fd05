use std::time::Duration;

use clap::Args;
use release_index::http::HttpOptions;

/// How commands that download behave on a slow or broken network.
#[derive(Debug, Clone, Args)]
pub struct NetArgs {
    /// Give up on a server that sends no response or no data for this long, or less than
    /// --low-speed-limit bytes per second over this long (e.g. 30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Slowest transfer accepted, in bytes per second averaged over --timeout; 0 disables.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub low_speed_limit: u64,
    /// Retries after a connection error, a timeout or an HTTP 408, 429 or 5xx answer.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub retries: u32,
    /// Also trust the CA certificates in this PEM file, for HTTPS servers and registries with
    /// a private CA (SSL_CERT_FILE replaces the system's CA store instead).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<std::path::PathBuf>,
}

impl NetArgs {
    /// The HTTP client options these arguments describe.
    pub fn http_options(&self) -> HttpOptions {
        HttpOptions {
            connect_timeout: self.timeout.min(HttpOptions::default().connect_timeout),
            timeout: self.timeout,
            low_speed_limit: self.low_speed_limit,
            retries: self.retries,
            ca_file: self.ca_file.clone(),
            ..HttpOptions::default()
        }
    }
}

/// Credentials for OCI registries, where the docker and podman auth files do not have them.
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryArgs {
    /// User name for oci:// registries, with --password-stdin. Without it, credentials come
    /// from $REGISTRY_AUTH_FILE, ${XDG_RUNTIME_DIR}/containers/auth.json,
    /// ~/.config/containers/auth.json or ~/.docker/config.json (and their credential
    /// helpers), as `podman login` and `docker login` leave them.
    #[arg(long, value_name = "USER", requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the registry password or token for --username from standard input (one line).
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
}

impl RegistryArgs {
    /// The credentials given, reading the password from stdin.
    pub fn credentials(&self) -> anyhow::Result<Option<release_index::oci::auth::Credentials>> {
        let Some(username) = &self.username else { return Ok(None) };
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| anyhow::anyhow!("reading the password from stdin: {e}"))?;
        let password = line.trim_end_matches(['\n', '\r']).to_owned();
        if password.is_empty() {
            anyhow::bail!("--password-stdin: standard input held no password");
        }
        Ok(Some(release_index::oci::auth::Credentials { username: username.clone(), password }))
    }
}

/// How bakery reaches a release that may be in a registry: the HTTP options and, for
/// `oci://` repositories, the credentials.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// Registry credentials.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// HTTP options.
    #[command(flatten)]
    pub net: NetArgs,
}

/// What [`RemoteArgs::connect`] gives: one HTTP client and the credentials, read once
/// (`--password-stdin` consumes standard input).
#[derive(Debug)]
pub struct Remote {
    /// The client, with the `--timeout`, `--retries` and `--ca-file` options.
    pub http: release_index::http::HttpClient,
    /// `--username` and the password from stdin, if given.
    pub credentials: Option<release_index::oci::auth::Credentials>,
}

impl RemoteArgs {
    /// Builds the HTTP client and reads the credentials.
    pub fn connect(&self) -> anyhow::Result<Remote> {
        Ok(Remote {
            http: release_index::http::HttpClient::new(self.net.http_options())?,
            credentials: self.registry.credentials()?,
        })
    }
}

impl Remote {
    /// The backend that reads `source` with this client and these credentials.
    pub fn backend(
        &self,
        source: &release_index::source::ReleaseSource,
    ) -> std::sync::Arc<dyn release_index::source::Backend> {
        source.backend_with_credentials(&self.http, self.credentials.as_ref())
    }

    /// The options for writing to a registry with this client and these credentials.
    pub fn oci_options(&self) -> release_index::oci::OciOptions {
        release_index::oci::OciOptions { http: self.http.options().clone(), credentials: self.credentials.clone() }
    }
}
