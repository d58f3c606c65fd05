//! Recipes: the data that says how to build an extension (`extensions/<name>/recipe.toml`
//! plus the files under `files/`).
//!
//! A recipe is checked completely when it is loaded (placeholders, verification, install
//! rules), so a mistake in a recipe is reported before anything is downloaded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use signing::Sha256Digest;
use sysext_model::{Arch, ExtensionName, Version};

include!(concat!(env!("OUT_DIR"), "/embedded_recipes.rs"));

/// A recipe problem, naming the recipe file or the offending value.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The recipe file is not valid TOML or does not match the schema.
    #[error("{path}: {message}")]
    Parse {
        /// Recipe file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The recipe parses but is inconsistent.
    #[error("{path}: {message}")]
    Invalid {
        /// Recipe file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Reading the recipe directory failed.
    #[error("reading recipes: {cause}")]
    Io {
        /// Directory or file.
        path: PathBuf,
        /// Cause (from fs-err, so it names the path).
        cause: std::io::Error,
    },
    /// No recipe with that name.
    #[error("unknown extension '{given}': available recipes are {available}")]
    Unknown {
        /// Requested name.
        given: String,
        /// Comma-separated list.
        available: String,
    },
    /// A version the recipe does not accept.
    #[error("invalid {extension} version '{given}': {reason} (example: {example})")]
    BadVersion {
        /// Extension name.
        extension: String,
        /// Requested version.
        given: String,
        /// Why.
        reason: String,
        /// The recipe's example version.
        example: String,
    },
    /// An architecture the recipe does not build.
    #[error("the {extension} recipe does not support architecture {arch}")]
    UnsupportedArch {
        /// Extension name.
        extension: String,
        /// Requested architecture.
        arch: Arch,
    },
}

/// How the version argument must look.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VersionSpec {
    /// Literal prefix of upstream tags (`v` for Kubernetes, empty for containerd).
    pub prefix: String,
    /// An example shown in errors and `bakery list`.
    pub example: String,
    /// Optional semver requirement the version (without prefix) must meet.
    pub supported: Option<String>,
}

/// A value fetched from upstream and substituted into later URLs (e.g. the runc version a
/// containerd release pins).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Variable {
    /// Placeholder name.
    pub name: String,
    /// URL template of a small text file holding the value.
    pub url: String,
}

/// How a downloaded artifact is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Unpack {
    /// A gzip-compressed tar archive.
    #[serde(rename = "tar.gz", alias = "tgz")]
    TarGz,
}

/// A file mode written as an octal string (`"0755"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match u32::from_str_radix(&s, 8) {
            Ok(m) if m <= 0o7777 && !s.is_empty() => Ok(Mode(m)),
            _ => Err(serde::de::Error::custom(format!("mode '{s}': expected an octal string like \"0755\""))),
        }
    }
}

/// Where (part of) an artifact lands in the image.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InstallRule {
    /// Archive member (or pattern with `*`/`?` within one path segment); absent for plain files.
    pub member: Option<String>,
    /// Member patterns to leave out of a wildcard `member`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Absolute destination; ends in `/` to install into a directory under the member's name.
    pub to: String,
    /// File mode.
    pub mode: Mode,
}

/// An upstream download.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Artifact {
    /// Short name, used in progress output and the inputs lock.
    pub name: String,
    /// URL template.
    pub url: String,
    /// URL template of a published checksum: a bare digest or a `sha256sum`-style list.
    pub sha256_url: Option<String>,
    /// File name to look up in a checksum list (default: the artifact URL's last segment).
    pub sha256_entry: Option<String>,
    /// Digests pinned in the recipe, per architecture (only for URLs that do not vary by version).
    pub sha256: Option<BTreeMap<Arch, Sha256Digest>>,
    /// How to unpack it (absent: the download is the file).
    pub unpack: Option<Unpack>,
    /// Where its files go.
    pub install: Vec<InstallRule>,
}

/// A symbolic link the image ships.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SymlinkSpec {
    /// Absolute path of the link.
    pub path: String,
    /// Its target, verbatim.
    pub target: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RecipeToml {
    name: ExtensionName,
    description: String,
    version: VersionSpec,
    arch: BTreeMap<Arch, String>,
    #[serde(default, rename = "variable")]
    variables: Vec<Variable>,
    #[serde(rename = "artifact")]
    artifacts: Vec<Artifact>,
    #[serde(default, rename = "symlink")]
    symlinks: Vec<SymlinkSpec>,
}

/// A static file from the recipe's `files/` directory.
#[derive(Debug, Clone)]
pub struct StaticFile {
    /// Absolute path in the image.
    pub path: String,
    /// Contents.
    pub contents: Vec<u8>,
    /// 0755 if executable in the recipe, else 0644.
    pub mode: u32,
}

/// A loaded, validated recipe.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// Extension name.
    pub name: ExtensionName,
    /// One-line description.
    pub description: String,
    /// Version rules.
    pub version: VersionSpec,
    /// systemd architecture → upstream name.
    pub arch: BTreeMap<Arch, String>,
    /// Values fetched before the artifacts.
    pub variables: Vec<Variable>,
    /// Downloads.
    pub artifacts: Vec<Artifact>,
    /// Symlinks.
    pub symlinks: Vec<SymlinkSpec>,
    /// Files shipped verbatim.
    pub files: Vec<StaticFile>,
    /// Where it was loaded from (for messages).
    pub origin: String,
}

/// The recipes bakery knows.
#[derive(Debug, Clone)]
pub struct Recipes {
    recipes: BTreeMap<String, Recipe>,
}

/// `*` and `?` wildcards within one path segment.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (n.first().is_some_and(|&c| c != b'/') && go(p, &n[1..])),
            (Some(b'?'), Some(&c)) if c != b'/' => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// The placeholders in a template, e.g. `version` in `https://x/{version}/y`.
fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').ok_or_else(|| format!("unclosed '{{' in '{template}'"))?;
        out.push(&rest[start + 1..start + end]);
        rest = &rest[start + end + 1..];
    }
    if rest.contains('}') {
        return Err(format!("unmatched '}}' in '{template}'"));
    }
    Ok(out)
}

/// Substitutes `{name}` placeholders; every placeholder was checked at load time.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

const BUILTIN_PLACEHOLDERS: [&str; 3] = ["version", "upstream_arch", "arch"];

impl Recipe {
    fn from_parts(
        dir_name: &str,
        toml_text: &str,
        files: Vec<StaticFile>,
        origin: String,
    ) -> Result<Self, RecipeError> {
        let path = format!("{origin}/recipe.toml");
        let raw: RecipeToml = toml::from_str(toml_text)
            .map_err(|e| RecipeError::Parse { path: path.clone(), message: e.to_string().trim_end().to_owned() })?;
        let invalid = |message: String| RecipeError::Invalid { path: path.clone(), message };
        if raw.name.as_str() != dir_name {
            return Err(invalid(format!("name '{}' must match its directory '{dir_name}'", raw.name)));
        }
        if raw.arch.is_empty() {
            return Err(invalid("[arch] must map at least one architecture to its upstream name".into()));
        }
        if let Some(req) = &raw.version.supported {
            semver::VersionReq::parse(req).map_err(|e| invalid(format!("version.supported '{req}': {e}")))?;
        }
        let mut known: BTreeSet<String> = BUILTIN_PLACEHOLDERS.iter().map(|s| s.to_string()).collect();
        let check_template = |known: &BTreeSet<String>, what: &str, t: &str| -> Result<Vec<String>, RecipeError> {
            if !(t.starts_with("https://") || t.starts_with("http://")) {
                return Err(invalid(format!("{what} '{t}' must be an http(s) URL")));
            }
            let ph = placeholders(t).map_err(|e| invalid(format!("{what}: {e}")))?;
            for p in &ph {
                if !known.contains(*p) {
                    return Err(invalid(format!(
                        "{what} '{t}' uses unknown placeholder {{{p}}}; known: {}",
                        known.iter().map(|k| format!("{{{k}}}")).collect::<Vec<_>>().join(", ")
                    )));
                }
            }
            Ok(ph.into_iter().map(str::to_owned).collect())
        };
        for v in &raw.variables {
            if v.name.is_empty() || !v.name.bytes().all(|c| c.is_ascii_lowercase() || c == b'_' || c.is_ascii_digit()) {
                return Err(invalid(format!("variable name '{}' must be lowercase letters, digits and '_'", v.name)));
            }
            check_template(&known, &format!("variable {}", v.name), &v.url)?;
            if !known.insert(v.name.clone()) {
                return Err(invalid(format!("variable '{}' is declared twice or shadows a built-in", v.name)));
            }
        }
        if raw.artifacts.is_empty() {
            return Err(invalid("a recipe needs at least one [[artifact]]".into()));
        }
        let mut names = BTreeSet::new();
        for a in &raw.artifacts {
            let what = format!("artifact {}", a.name);
            if !names.insert(a.name.clone()) {
                return Err(invalid(format!("{what} is declared twice")));
            }
            let used = check_template(&known, &format!("{what} url"), &a.url)?;
            match (&a.sha256_url, &a.sha256) {
                (Some(u), None) => {
                    check_template(&known, &format!("{what} sha256-url"), u)?;
                }
                (None, Some(pins)) => {
                    if used.iter().any(|p| p != "upstream_arch" && p != "arch") {
                        return Err(invalid(format!(
                            "{what}: a pinned sha256 cannot hold for every version; its url may only vary by architecture (use sha256-url instead)"
                        )));
                    }
                    for arch in raw.arch.keys() {
                        if !pins.contains_key(arch) {
                            return Err(invalid(format!("{what}: sha256 has no digest for {arch}")));
                        }
                    }
                }
                (Some(_), Some(_)) => return Err(invalid(format!("{what}: give either sha256-url or sha256, not both"))),
                (None, None) => {
                    return Err(invalid(format!(
                        "{what}: unverified downloads are not allowed; give sha256-url (published checksum) or sha256 (pinned digests)"
                    )))
                }
            }
            if a.sha256_entry.is_some() && a.sha256_url.is_none() {
                return Err(invalid(format!("{what}: sha256-entry needs sha256-url")));
            }
            if a.install.is_empty() {
                return Err(invalid(format!("{what}: install is empty")));
            }
            for rule in &a.install {
                crate::tree::components(rule.to.trim_end_matches('/')).map_err(|_| {
                    invalid(format!("{what}: install destination '{}' must be an absolute path", rule.to))
                })?;
                match (a.unpack, &rule.member) {
                    (None, Some(_)) => return Err(invalid(format!("{what}: 'member' needs 'unpack'"))),
                    (None, None) if a.install.len() > 1 => {
                        return Err(invalid(format!("{what}: a plain download installs to exactly one place")))
                    }
                    (None, None) if rule.to.ends_with('/') => {
                        return Err(invalid(format!("{what}: destination '{}' must name the file", rule.to)))
                    }
                    (Some(_), None) => {
                        return Err(invalid(format!("{what}: every install rule of an archive needs 'member'")))
                    }
                    (Some(_), Some(m)) if (m.contains('*') || m.contains('?')) && !rule.to.ends_with('/') => {
                        return Err(invalid(format!(
                            "{what}: wildcard member '{m}' needs a destination directory ending in '/'"
                        )))
                    }
                    _ => {}
                }
                if !rule.exclude.is_empty() && rule.member.is_none() {
                    return Err(invalid(format!("{what}: 'exclude' needs 'member'")));
                }
            }
        }
        for s in &raw.symlinks {
            crate::tree::components(&s.path)
                .map_err(|_| invalid(format!("symlink path '{}' must be absolute", s.path)))?;
            if s.target.is_empty() {
                return Err(invalid(format!("symlink '{}' has an empty target", s.path)));
            }
        }
        let recipe = Recipe {
            name: raw.name,
            description: raw.description,
            version: raw.version,
            arch: raw.arch,
            variables: raw.variables,
            artifacts: raw.artifacts,
            symlinks: raw.symlinks,
            files,
            origin,
        };
        recipe
            .parse_version(&recipe.version.example.clone())
            .map_err(|e| invalid(format!("version.example does not satisfy the recipe: {e}")))?;
        Ok(recipe)
    }

    /// Checks a version argument against the recipe's rules.
    pub fn parse_version(&self, given: &str) -> Result<Version, RecipeError> {
        let bad = |reason: String| RecipeError::BadVersion {
            extension: self.name.to_string(),
            given: given.to_owned(),
            reason,
            example: self.version.example.clone(),
        };
        let version: Version = given.parse().map_err(|e: sysext_model::VersionParseError| bad(e.to_string()))?;
        let prefix = &self.version.prefix;
        let core =
            given.strip_prefix(prefix.as_str()).ok_or_else(|| bad(format!("upstream tags start with '{prefix}'")))?;
        if core.starts_with('v') {
            return Err(bad("upstream release assets carry no 'v' prefix".into()));
        }
        let sv = semver::Version::parse(core).map_err(|e| bad(format!("expected {prefix}MAJOR.MINOR.PATCH: {e}")))?;
        if let Some(req) = &self.version.supported {
            let req = semver::VersionReq::parse(req).expect("validated at load");
            if !req.matches(&sv) {
                return Err(bad(format!("this recipe supports versions {req}")));
            }
        }
        Ok(version)
    }

    /// The upstream name of `arch`, or an error if the recipe does not build it.
    pub fn upstream_arch(&self, arch: Arch) -> Result<&str, RecipeError> {
        self.arch
            .get(&arch)
            .map(String::as_str)
            .ok_or_else(|| RecipeError::UnsupportedArch { extension: self.name.to_string(), arch })
    }
}

fn group_by_recipe(
    files: impl IntoIterator<Item = (String, Vec<u8>, u32)>,
    origin: &str,
) -> Result<Recipes, RecipeError> {
    let mut dirs: BTreeMap<String, (Option<String>, Vec<StaticFile>)> = BTreeMap::new();
    for (rel, contents, mode) in files {
        let Some((dir, inner)) = rel.split_once('/') else { continue }; // top-level README etc.
        let entry = dirs.entry(dir.to_owned()).or_default();
        if inner == "recipe.toml" {
            let text = String::from_utf8(contents)
                .map_err(|_| RecipeError::Parse { path: format!("{origin}/{rel}"), message: "not UTF-8".into() })?;
            entry.0 = Some(text);
        } else if let Some(path) = inner.strip_prefix("files/") {
            entry.1.push(StaticFile {
                path: format!("/{path}"),
                contents,
                mode: if mode & 0o111 != 0 { 0o755 } else { 0o644 },
            });
        } else if !inner.ends_with(".md") {
            return Err(RecipeError::Invalid {
                path: format!("{origin}/{rel}"),
                message: "unexpected file: a recipe directory holds recipe.toml, files/ and documentation (*.md)"
                    .into(),
            });
        }
    }
    let mut recipes = BTreeMap::new();
    for (dir, (toml_text, files)) in dirs {
        let toml_text = toml_text.ok_or_else(|| RecipeError::Invalid {
            path: format!("{origin}/{dir}"),
            message: "no recipe.toml in this recipe directory".into(),
        })?;
        let recipe = Recipe::from_parts(&dir, &toml_text, files, format!("{origin}/{dir}"))?;
        recipes.insert(dir, recipe);
    }
    Ok(Recipes { recipes })
}

fn read_tree(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>, u32)>) -> Result<(), RecipeError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |path: &Path, cause| RecipeError::Io { path: path.to_owned(), cause };
    let mut entries: Vec<PathBuf> = fs_err::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| io(dir, e))?;
    entries.sort();
    for path in entries {
        let meta = fs_err::symlink_metadata(&path).map_err(|e| io(&path, e))?;
        if meta.is_dir() {
            read_tree(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).expect("below root").to_string_lossy().into_owned();
            let contents = fs_err::read(&path).map_err(|e| io(&path, e))?;
            out.push((rel, contents, meta.permissions().mode()));
        } else {
            return Err(RecipeError::Invalid {
                path: path.display().to_string(),
                message: "recipes may contain only regular files and directories (declare symlinks in recipe.toml)"
                    .into(),
            });
        }
    }
    Ok(())
}

impl Recipes {
    /// The recipes compiled into this binary.
    pub fn embedded() -> Result<Self, RecipeError> {
        group_by_recipe(EMBEDDED.iter().map(|(p, c, m)| (p.to_string(), c.to_vec(), *m)), "extensions")
    }

    /// Recipes read from a directory laid out like `extensions/`.
    pub fn from_dir(dir: &Path) -> Result<Self, RecipeError> {
        let mut files = Vec::new();
        read_tree(dir, dir, &mut files)?;
        group_by_recipe(files, &dir.display().to_string())
    }

    /// Looks up a recipe by extension name.
    pub fn get(&self, name: &str) -> Result<&Recipe, RecipeError> {
        self.recipes.get(name).ok_or_else(|| RecipeError::Unknown {
            given: name.to_owned(),
            available: self.recipes.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// All recipes, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Recipe> {
        self.recipes.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_recipes_load() {
        let r = Recipes::embedded().unwrap();
        let names: Vec<_> = r.iter().map(|r| r.name.to_string()).collect();
        assert_eq!(names, ["cni", "containerd", "kubernetes"]);
        let k = r.get("kubernetes").unwrap();
        assert!(k.files.iter().any(|f| f.path == "/usr/lib/systemd/system/kubelet.service" && f.mode == 0o644));
        let cni = r.get("cni").unwrap();
        assert!(cni.files.iter().any(|f| f.path == "/usr/libexec/cni-sysext/populate-opt-cni-bin" && f.mode == 0o755));
    }

    #[test]
    fn versions_follow_the_recipe() {
        let r = Recipes::embedded().unwrap();
        let k = r.get("kubernetes").unwrap();
        assert_eq!(k.parse_version("v1.31.3").unwrap().as_str(), "v1.31.3");
        let err = k.parse_version("1.31.3").unwrap_err().to_string();
        assert!(err.contains("upstream tags start with 'v'") && err.contains("example: v1.31.3"), "{err}");
        assert!(k.parse_version("v1.31").is_err());
        assert!(k.parse_version("v1.31.3-rc.1").is_err());
        let c = r.get("containerd").unwrap();
        assert!(c.parse_version("2.0.4").is_ok());
        let err = c.parse_version("1.7.24").unwrap_err().to_string();
        assert!(err.contains("supports versions >=2.0.0, <3.0.0"), "{err}");
        assert!(c.parse_version("v2.0.4").unwrap_err().to_string().contains("no 'v' prefix"));
    }

    #[test]
    fn unknown_extension_lists_available() {
        let err = Recipes::embedded().unwrap().get("docker").unwrap_err().to_string();
        assert_eq!(err, "unknown extension 'docker': available recipes are cni, containerd, kubernetes");
    }

    #[test]
    fn wildcards_stay_within_a_segment() {
        assert!(wildcard_match("bin/*", "bin/containerd"));
        assert!(!wildcard_match("bin/*", "bin/x/y"));
        assert!(wildcard_match("*", "bridge"));
        assert!(!wildcard_match("*", "sub/bridge"));
        assert!(wildcard_match("runc.?md64", "runc.amd64"));
        assert!(!wildcard_match("LICENSE", "LICENSE.txt"));
    }

    fn load(toml_text: &str) -> Result<Recipe, RecipeError> {
        Recipe::from_parts("x", toml_text, vec![], "test/x".into())
    }

    const HEAD: &str = "name = \"x\"\ndescription = \"d\"\n[version]\nprefix = \"v\"\nexample = \"v1.0.0\"\n[arch]\nx86-64 = \"amd64\"\n";

    #[test]
    fn rejects_inconsistent_recipes() {
        let cases = [
            ("[[artifact]]\nname = \"a\"\nurl = \"https://h/{version}/a\"\ninstall = [{ to = \"/usr/bin/a\", mode = \"0755\" }]\n", "unverified downloads are not allowed"),
            ("[[artifact]]\nname = \"a\"\nurl = \"https://h/{nope}/a\"\nsha256-url = \"https://h/a.sha256\"\ninstall = [{ to = \"/usr/bin/a\", mode = \"0755\" }]\n", "unknown placeholder {nope}"),
            ("[[artifact]]\nname = \"a\"\nurl = \"https://h/{version}/a\"\nsha256 = { x86-64 = \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\" }\ninstall = [{ to = \"/usr/bin/a\", mode = \"0755\" }]\n", "pinned sha256 cannot hold"),
            ("[[artifact]]\nname = \"a\"\nurl = \"https://h/a.tgz\"\nsha256-url = \"https://h/a.sha256\"\nunpack = \"tar.gz\"\ninstall = [{ member = \"bin/*\", to = \"/usr/bin\", mode = \"0755\" }]\n", "needs a destination directory"),
            ("[[artifact]]\nname = \"a\"\nurl = \"ftp://h/a\"\nsha256-url = \"https://h/a.sha256\"\ninstall = [{ to = \"/usr/bin/a\", mode = \"0755\" }]\n", "must be an http(s) URL"),
            ("[[artifact]]\nname = \"a\"\nurl = \"https://h/a\"\nsha256-url = \"https://h/a.sha256\"\ninstall = [{ to = \"/usr/bin/a\", mode = \"999\" }]\n", "expected an octal string"),
            ("[[artifact]]\nname = \"a\"\nurl = \"https://h/a\"\nsha256-url = \"https://h/a.sha256\"\ninstall = [{ to = \"/usr/bin/a\", mode = \"0755\" }]\nsurprise = 1\n", "unknown field"),
        ];
        for (body, want) in cases {
            let err = load(&format!("{HEAD}{body}")).unwrap_err().to_string();
            assert!(err.contains(want), "expected '{want}' in: {err}");
            assert!(err.starts_with("test/x/recipe.toml"), "{err}");
        }
    }
}
