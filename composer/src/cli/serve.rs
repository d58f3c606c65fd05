use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::serve::{LogFormat, ServeOptions, TlsFiles};

/// Serve a release directory over HTTP(S), in the layout bakery publish writes.
///
/// GET and HEAD with single byte ranges, strong ETags and conditional requests. A release
/// managed by bakery publish (DIR -> DIR.generations/<serial>) is followed per request: a
/// publish takes effect at once, and a download that started before it is completed from the
/// generation it started in. Nothing outside the directory is served: no symlinks, hidden
/// files or listings. The first line on stdout is "listening on URL"; the access log goes to
/// stderr. SIGTERM or SIGINT stops accepting and lets in-flight downloads finish.
#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// The release directory (or a plain copy of one, e.g. made with rsync).
    #[arg(value_name = "RELEASE_DIR")]
    release_dir: PathBuf,
    /// Address to listen on, IP:PORT; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: std::net::SocketAddr,
    /// Serve HTTPS with this PEM certificate chain (leaf first). Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Access log format on stderr: one line of text, or one JSON object, per request.
    #[arg(long, value_name = "FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// After SIGTERM or SIGINT, how long in-flight requests may take (e.g. 30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: std::time::Duration,
}

impl ServeArgs {
    fn options(&self) -> ServeOptions {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        };
        ServeOptions {
            release_dir: self.release_dir.clone(),
            listen: self.listen,
            tls,
            log_format: self.log_format,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

pub(super) fn run(args: ServeArgs) -> Result<()> {
    crate::serve::run(&args.options()).with_context(|| format!("serving {}", args.release_dir.display()))
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;
    use super::*;

    #[test]
    fn parses() {
        let Command::Serve(a) = parse(&["serve", "release", "--listen", "127.0.0.1:0"]).unwrap() else {
            panic!("serve")
        };
        let o = a.options();
        assert!(o.tls.is_none() && o.log_format == LogFormat::Text);
        assert_eq!(o.shutdown_grace, std::time::Duration::from_secs(30));
        let Command::Serve(a) = parse(&[
            "serve",
            "r",
            "--listen",
            "[::1]:8443",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--log-format",
            "json",
            "--shutdown-grace",
            "2m",
        ])
        .unwrap() else {
            panic!("serve")
        };
        let o = a.options();
        assert_eq!(o.tls.unwrap().key, PathBuf::from("k.pem"));
        assert_eq!((o.listen.port(), o.log_format), (8443, LogFormat::Json));
        assert_eq!(o.shutdown_grace, std::time::Duration::from_secs(120));
    }

    #[test]
    fn bad_values_are_refused_at_parse_time() {
        for bad in [
            &["serve", "r"][..],
            &["serve", "r", "--listen", "localhost"],
            &["serve", "r", "--listen", "127.0.0.1:99999"],
            &["serve", "r", "--listen", "127.0.0.1:0", "--tls-cert", "c.pem"],
            &["serve", "r", "--listen", "127.0.0.1:0", "--log-format", "xml"],
            &["serve", "r", "--listen", "127.0.0.1:0", "--shutdown-grace", "soon"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let err = parse(&["serve", "r", "--listen", "nonsense"]).unwrap_err().to_string();
        assert!(err.contains("'nonsense'") && err.contains("--listen <ADDR>"), "{err}");
    }
}
