//! Registry credentials, found where `docker login` and `podman login` leave them.
//!
//! In order: credentials given explicitly (`--username`, `--password-stdin`); then the auth
//! files, the first that has an entry for the registry winning:
//! `$REGISTRY_AUTH_FILE` if set (and then only that file, as podman does), otherwise
//! `${XDG_RUNTIME_DIR}/containers/auth.json`, `${XDG_CONFIG_HOME:-~/.config}/containers/auth.json`
//! and `${DOCKER_CONFIG:-~/.docker}/config.json`. In a file, an `auths` entry may be keyed by
//! `registry/namespace` (the most specific wins, as in podman) or by the registry with or
//! without a scheme (`https://host:port`, docker's `https://index.docker.io/v1/`); without one,
//! `credHelpers.<registry>` and then `credsStore` name a `docker-credential-<helper>` program,
//! run with the registry on stdin as docker runs it. No entry anywhere: anonymous access.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

/// Credentials and where they came from (for messages; never the secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The credentials.
    pub credentials: Credentials,
    /// `--username`, a file path, or `docker-credential-<helper>`.
    pub from: String,
}

/// An auth file or helper that is there but unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{location}: {reason}")]
pub struct AuthError {
    /// The file or helper.
    pub location: String,
    /// Why.
    pub reason: String,
}

/// The auth files to search, in order, from this environment.
pub fn auth_files() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        return vec![f];
    }
    let home = env("HOME");
    let mut files = Vec::new();
    if let Some(run) = env("XDG_RUNTIME_DIR") {
        files.push(run.join("containers/auth.json"));
    }
    if let Some(cfg) = env("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config"))) {
        files.push(cfg.join("containers/auth.json"));
    }
    if let Some(docker) = env("DOCKER_CONFIG").or_else(|| home.as_ref().map(|h| h.join(".docker"))) {
        files.push(docker.join("config.json"));
    }
    files
}

/// The key an `auths` entry is filed under, without scheme or API suffix.
fn normalize_key(key: &str) -> &str {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let k = k.trim_end_matches('/');
    k.strip_suffix("/v1").or_else(|| k.strip_suffix("/v2")).unwrap_or(k)
}

/// Keys to try for `registry/repository`, most specific first.
fn candidates(registry: &str, repository: &str) -> Vec<String> {
    let mut out = Vec::new();
    let parts: Vec<&str> = repository.split('/').collect();
    for n in (1..=parts.len()).rev() {
        out.push(format!("{registry}/{}", parts[..n].join("/")));
    }
    out.push(registry.to_owned());
    if registry == "docker.io" {
        out.push("index.docker.io".to_owned());
    }
    out
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, Entry>,
    #[serde(default)]
    cred_helpers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

fn decode_entry(entry: &Entry, location: &str) -> Result<Option<Credentials>, AuthError> {
    let err = |reason: String| AuthError { location: location.to_owned(), reason };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| err(format!("'auth' is not base64: {e}")))?;
        let text = String::from_utf8(raw).map_err(|_| err("'auth' does not decode to UTF-8".into()))?;
        let (u, p) = text.split_once(':').ok_or_else(|| err("'auth' does not decode to USER:PASSWORD".into()))?;
        return Ok(Some(Credentials { username: u.to_owned(), password: p.to_owned() }));
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some(Credentials { username: u.clone(), password: p.clone() }));
    }
    if entry.identitytoken.is_some() {
        return Err(err(
            "only an identity token is stored, and refresh tokens are not supported: log in with a password or pass --username"
                .into(),
        ));
    }
    Ok(None)
}

/// Credentials for `registry/repository` from one auth file; `Ok(None)` if it has none (or
/// does not exist).
pub fn from_file(path: &Path, registry: &str, repository: &str) -> Result<Option<Found>, AuthError> {
    let location = path.display().to_string();
    let err = |reason: String| AuthError { location: location.clone(), reason };
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let file: AuthFile = serde_json::from_slice(&text).map_err(|e| err(format!("not a registry auth file: {e}")))?;
    for want in candidates(registry, repository) {
        for (key, entry) in &file.auths {
            if normalize_key(key) == want {
                if let Some(c) = decode_entry(entry, &format!("{location} (auths.\"{key}\")"))? {
                    return Ok(Some(Found { credentials: c, from: location.clone() }));
                }
            }
        }
    }
    let helper = file
        .cred_helpers
        .iter()
        .find(|(k, _)| normalize_key(k) == registry)
        .map(|(_, h)| h.clone())
        .or_else(|| file.creds_store.clone().filter(|s| !s.is_empty()));
    match helper {
        Some(h) => from_helper(&h, registry),
        None => Ok(None),
    }
}

/// Runs `docker-credential-<helper> get` for `registry`.
pub fn from_helper(helper: &str, registry: &str) -> Result<Option<Found>, AuthError> {
    let program = format!("docker-credential-{helper}");
    let err = |reason: String| AuthError { location: program.clone(), reason };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run it ({e}); the auth file names it as the credential helper")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(registry.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_owned() + String::from_utf8_lossy(&out.stderr).trim();
        if msg.to_lowercase().contains("not found") {
            return Ok(None);
        }
        return Err(err(format!("get {registry} failed ({}): {msg}", out.status)));
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Reply {
        username: String,
        secret: String,
    }
    let reply: Reply = serde_json::from_slice(&out.stdout).map_err(|e| err(format!("unexpected reply: {e}")))?;
    if reply.username == "<token>" {
        return Err(err("it returned an identity token, and refresh tokens are not supported".into()));
    }
    Ok(Some(Found { credentials: Credentials { username: reply.username, password: reply.secret }, from: program }))
}

/// Credentials for `registry/repository`: `explicit` if given, else the first auth file with
/// an entry.
pub fn lookup(explicit: Option<&Credentials>, registry: &str, repository: &str) -> Result<Option<Found>, AuthError> {
    if let Some(c) = explicit {
        return Ok(Some(Found { credentials: c.clone(), from: "--username".into() }));
    }
    for f in auth_files() {
        if let Some(found) = from_file(&f, registry, repository)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn reads_docker_and_podman_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        let text = format!(
            r#"{{"auths": {{
                "https://reg.example:5000": {{"auth": "{}"}},
                "reg.example:5000/team/special": {{"auth": "{}"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "other.example": {{"username": "u", "password": "p"}}
            }}}}"#,
            b64("alice:s3cret:with:colons"),
            b64("bob:pw"),
            b64("hub:pw")
        );
        std::fs::write(&f, text).unwrap();
        let get = |reg: &str, repo: &str| from_file(&f, reg, repo).unwrap().map(|c| c.credentials.username);
        assert_eq!(get("reg.example:5000", "rel").as_deref(), Some("alice"));
        assert_eq!(get("reg.example:5000", "team/special/x").as_deref(), Some("bob"));
        assert_eq!(get("docker.io", "library/x").as_deref(), Some("hub"));
        assert_eq!(get("other.example", "x").as_deref(), Some("u"));
        assert_eq!(get("nobody.example", "x"), None);
        let found = from_file(&f, "reg.example:5000", "rel").unwrap().unwrap();
        assert_eq!(found.credentials.password, "s3cret:with:colons");
        assert!(!format!("{found:?}").contains("s3cret"), "secrets stay out of Debug output");
        assert_eq!(from_file(&dir.path().join("absent.json"), "r", "x").unwrap(), None);
        std::fs::write(&f, r#"{"auths": {"r": {"auth": "!!"}}}"#).unwrap();
        let e = from_file(&f, "r", "x").unwrap_err();
        assert!(e.to_string().contains("auth.json (auths.\"r\"): 'auth' is not base64"), "{e}");
        std::fs::write(&f, "not json").unwrap();
        assert!(from_file(&f, "r", "x").unwrap_err().to_string().contains("not a registry auth file"));
    }

    #[test]
    fn runs_credential_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-fake");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread reg\n[ \"$reg\" = reg.example ] || { echo 'credentials not found in native keychain'; exit 1; }\n\
             echo '{\"ServerURL\":\"reg.example\",\"Username\":\"hal\",\"Secret\":\"pw\"}'\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = dir.path().join("config.json");
        std::fs::write(&f, r#"{"auths": {}, "credsStore": "fake"}"#).unwrap();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut p = std::env::split_paths(&path).collect::<Vec<_>>();
        p.insert(0, dir.path().to_owned());
        // Only this test changes PATH, and only by prepending a directory with a helper in it.
        std::env::set_var("PATH", std::env::join_paths(p).unwrap());
        let got = from_file(&f, "reg.example", "x").unwrap().unwrap();
        assert_eq!((got.credentials.username.as_str(), got.from.as_str()), ("hal", "docker-credential-fake"));
        assert_eq!(from_file(&f, "elsewhere.example", "x").unwrap(), None);
        std::fs::write(&f, r#"{"credHelpers": {"reg.example": "missing-helper"}}"#).unwrap();
        assert!(from_file(&f, "reg.example", "x").unwrap_err().to_string().contains("cannot run it"));
    }
}
