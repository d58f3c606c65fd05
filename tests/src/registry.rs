//! A real OCI registry for tests: Debian's `docker-registry` (Docker distribution 2.8) on a
//! free loopback port, with its storage in a temporary directory, stopped on drop.
//!
//! Two tiers: [`TestRegistry::plain`] speaks plain HTTP without authentication;
//! [`TestRegistry::secure`] speaks TLS with a certificate from a throwaway CA (made with
//! `openssl`) and wants HTTP basic authentication from an htpasswd file (made with
//! `htpasswd -B`, bcrypt being the only scheme distribution accepts). Tests that use it need
//! the tools in [`REGISTRY_TOOLS`].

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What [`TestRegistry`] runs.
pub const REGISTRY_TOOLS: [&str; 3] = ["docker-registry", "openssl", "htpasswd"];

/// The user the secure tier accepts.
pub const USER: &str = "publisher";
/// Their password.
pub const PASSWORD: &str = "correct horse battery staple";

/// A running registry.
#[derive(Debug)]
pub struct TestRegistry {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    tls: bool,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it.
fn make_certs(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run(Command::new("openssl")
        .args(["req", "-x509", "-days", "2", "-subj", "/CN=bakery test CA"])
        .args(ec)
        .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.crt")));
    run(Command::new("openssl")
        .args(["req", "-subj", "/CN=127.0.0.1"])
        .args(ec)
        .arg("-keyout")
        .arg(dir.join("server.key"))
        .arg("-out")
        .arg(dir.join("server.csr")));
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(dir.join("server.csr"))
        .arg("-CA")
        .arg(dir.join("ca.crt"))
        .arg("-CAkey")
        .arg(dir.join("ca.key"))
        .arg("-extfile")
        .arg(dir.join("server.ext"))
        .arg("-out")
        .arg(dir.join("server.crt")));
}

fn wait_ready(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl TestRegistry {
    /// Plain HTTP, anonymous pushes and pulls.
    pub fn plain() -> Self {
        Self::start(false)
    }

    /// TLS from a test CA ([`Self::ca_file`]) and basic authentication as [`USER`].
    pub fn secure() -> Self {
        Self::start(true)
    }

    fn start(tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let d = dir.path();
        std::fs::create_dir(d.join("data")).unwrap();
        let mut extra = String::new();
        if tls {
            make_certs(d);
            run(Command::new("htpasswd").args(["-Bbc"]).arg(d.join("htpasswd")).args([USER, PASSWORD]));
            extra = format!(
                "  tls:\n    certificate: {0}/server.crt\n    key: {0}/server.key\n\
                 auth:\n  htpasswd:\n    realm: bakery-test\n    path: {0}/htpasswd\n",
                d.display()
            );
        }
        for _ in 0..5 {
            let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}/data\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n  secret: bakery-test-secret\n{extra}",
                d.display()
            );
            std::fs::write(d.join("config.yml"), config).unwrap();
            let log = std::fs::File::create(d.join("registry.log")).unwrap();
            let mut cmd = Command::new("docker-registry");
            // distribution reads REGISTRY_<SECTION>_<KEY> variables as configuration, and
            // podman's REGISTRY_AUTH_FILE would become `auth: file:`.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(k);
                }
            }
            let mut child = cmd
                .arg("serve")
                .arg(d.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting docker-registry");
            if wait_ready(&mut child, addr) {
                return TestRegistry { child, dir, addr, tls };
            }
            // Someone else took the port between our probe and the registry's bind: retry.
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(d.join("registry.log")).unwrap_or_default();
        panic!("docker-registry did not start:\n{log}");
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `oci://127.0.0.1:PORT/<repository>` (or `oci+http://` for the plain tier).
    pub fn repo(&self, repository: &str) -> String {
        let scheme = if self.tls { "oci" } else { "oci+http" };
        format!("{scheme}://{}/{repository}", self.addr)
    }

    /// `https://127.0.0.1:PORT` or `http://…`, the registry API's base.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// The test CA's certificate (secure tier).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.path().join("ca.crt"))
    }

    /// A docker-style `config.json` with the credentials of the secure tier (for
    /// `REGISTRY_AUTH_FILE` or `DOCKER_CONFIG`), written into `dir`.
    pub fn auth_file(&self, dir: &Path) -> PathBuf {
        let token = base64_encode(format!("{USER}:{PASSWORD}").as_bytes());
        let path = dir.join("config.json");
        std::fs::write(&path, format!("{{\"auths\": {{\"https://{}\": {{\"auth\": \"{token}\"}}}}}}\n", self.addr))
            .unwrap();
        path
    }

    /// An HTTP client for the registry's own API, trusting the test CA.
    pub fn api(&self) -> reqwest::blocking::Client {
        let mut b = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(30));
        if let Some(ca) = self.ca_file() {
            let pem = std::fs::read(ca).unwrap();
            b = b.tls_built_in_root_certs(false).add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    }

    /// A request to the registry API at `path` (e.g. `/v2/rel/manifests/index`), with the
    /// test credentials on the secure tier.
    pub fn get(&self, path: &str) -> reqwest::blocking::RequestBuilder {
        let mut r = self.api().get(format!("{}{path}", self.url()));
        if self.tls {
            r = r.basic_auth(USER, Some(PASSWORD));
        }
        r
    }

    /// Like [`Self::get`] for any method.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let mut r = self.api().request(method, format!("{}{path}", self.url()));
        if self.tls {
            r = r.basic_auth(USER, Some(PASSWORD));
        }
        r
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("registry.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64, for the auth file (no dependency for 20 lines).
fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(super::base64_encode(b"publisher:pw"), "cHVibGlzaGVyOnB3");
        assert_eq!(super::base64_encode(b"a"), "YQ==");
        assert_eq!(super::base64_encode(b"ab"), "YWI=");
    }
}
