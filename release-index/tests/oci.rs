//! Releases in a real registry: Debian's docker-registry (Docker distribution 2.8) on
//! loopback, plain HTTP in one tier and TLS from a test CA with htpasswd authentication in
//! the other. Publish, pull back by tag and by channel, tamper through the registry's own
//! API, mirror between directories, URLs and registries, resume an interrupted mirror, and
//! watch a static in-place directory never show an index that names missing files.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{Scratch, DAY};
use release_index::client::{Client, ClientError};
use release_index::http::HttpOptions;
use release_index::index::Index;
use release_index::layout;
use release_index::oci::auth::Credentials;
use release_index::oci::manifest::{self, ImageIndex, Manifest};
use release_index::oci::{OciOptions, OciRepo, Registry};
use release_index::publish::mirror::{mirror, MirrorOptions, Mirrored};
use release_index::publish::oci::ReferrersMode;
use release_index::publish::{publish_to, DirTarget, NewImage, OciTarget, StaticDirTarget};
use release_index::source::{walk, Backend, DirBackend, HttpBackend, OciBackend, SourceError};
use release_index::timestamp::Timestamp;
use release_index::verify::{verify_release, VerifyOptions};
use signing::{PrivateKey, Sha256Digest};
use sysext_model::ImageName;
use sysext_tests::registry::{PASSWORD, USER};
use sysext_tests::{FixtureServer, Response, TestRegistry, REGISTRY_TOOLS};

fn opts_for(reg: &TestRegistry) -> OciOptions {
    let http = HttpOptions { ca_file: reg.ca_file(), retries: 1, ..HttpOptions::default() };
    let credentials = reg.ca_file().map(|_| Credentials { username: USER.into(), password: PASSWORD.into() });
    OciOptions { http, credentials }
}

fn repo(reg: &TestRegistry, name: &str) -> OciRepo {
    reg.repo(name).parse().unwrap()
}

fn publish_oci(s: &Scratch, reg: &TestRegistry, name: &str, images: &[NewImage]) -> OciTarget {
    let target = OciTarget::new(&repo(reg, name), &opts_for(reg)).unwrap();
    let mut opts = s.options(Timestamp::now());
    opts.valid_for = 30 * DAY;
    publish_to(&target, images, &opts).unwrap_or_else(|e| panic!("publish to {name}: {e}\n{}", reg.log()));
    target
}

fn backend(reg: &TestRegistry, name: &str) -> Arc<dyn Backend> {
    Arc::new(OciBackend::new(repo(reg, name), opts_for(reg)))
}

fn two_by_two(s: &Scratch) -> Vec<NewImage> {
    [
        "kubernetes-v1.31.3-x86-64.raw",
        "kubernetes-v1.31.3-arm64.raw",
        "kubernetes-v1.31.4-x86-64.raw",
        "kubernetes-v1.31.4-arm64.raw",
    ]
    .iter()
    .map(|f| s.image(f, "1"))
    .collect()
}

fn api_manifest(reg: &TestRegistry, name: &str, reference: &str) -> (Vec<u8>, String) {
    let resp = reg
        .get(&format!("/v2/{name}/manifests/{reference}"))
        .header("Accept", format!("{},{}", manifest::MT_MANIFEST, manifest::MT_INDEX))
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "GET manifest {reference}: {}", resp.status());
    let digest = resp.headers()["docker-content-digest"].to_str().unwrap().to_owned();
    (resp.bytes().unwrap().to_vec(), digest)
}

fn api_blob(reg: &TestRegistry, name: &str, digest: &str) -> Vec<u8> {
    let resp = reg.get(&format!("/v2/{name}/blobs/{digest}")).send().unwrap();
    assert!(resp.status().is_success(), "GET blob {digest}: {}", resp.status());
    resp.bytes().unwrap().to_vec()
}

fn fetch_everything(client: &Client, dest: &Path) -> Index {
    let trusted = client.fetch_index().unwrap();
    for (_, _, _, art) in trusted.index.artifacts() {
        let path = client.fetch_artifact(art, dest).unwrap();
        assert_eq!(Sha256Digest::of(&std::fs::read(path).unwrap()), art.sha256);
    }
    trusted.index
}

fn publish_pull_and_inspect(secure: bool) {
    let reg = if secure { TestRegistry::secure() } else { TestRegistry::plain() };
    let s = Scratch::new();
    let images = two_by_two(&s);
    let target = publish_oci(&s, &reg, "team/release", &images);
    // Distribution 2.8 has no referrers API: the tag scheme must have been detected and used.
    assert_eq!(target.referrers_mode(), Some(ReferrersMode::TagScheme));

    // By channel, through the client, everything verified while it streams.
    let client = Client::new(backend(&reg, "team/release"), s.key.public(), None);
    let idx = client.fetch_index().unwrap().index;
    let k = "kubernetes".parse().unwrap();
    let (v, art) = idx.resolve(&k, &"1.31".parse().unwrap(), sysext_model::Arch::Arm64).unwrap();
    assert_eq!(v.as_str(), "v1.31.4");
    let out = tempfile::tempdir().unwrap();
    let got = client.fetch_artifact(art, out.path()).unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&images[3].path).unwrap());

    // The whole release verifies from the registry alone, signatures and checksum lists too.
    let public = s.key.public();
    let report = verify_release(
        backend(&reg, "team/release").as_ref(),
        &VerifyOptions { pubkey: &public, now: Timestamp::now(), min_serial: None, inspect_images: false },
    );
    assert!(report.ok(), "{:#?}", report.problems);
    assert_eq!(report.files_checked, layout::expected(&idx).len());

    // The registry's own API: by tag, the image manifest's one layer is the image itself.
    for img in &images {
        let file = img.path.file_name().unwrap().to_str().unwrap();
        let bytes = std::fs::read(&img.path).unwrap();
        let tag = file.strip_suffix(".raw").unwrap();
        let (m, _) = api_manifest(&reg, "team/release", tag);
        let m: Manifest = serde_json::from_slice(&m).unwrap();
        assert_eq!(m.artifact_type.as_deref(), Some(manifest::AT_IMAGE));
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.layers[0].digest, format!("sha256:{}", Sha256Digest::of(&bytes).to_hex()));
        assert_eq!(m.layers[0].size, bytes.len() as u64);
        assert_eq!(m.annotations[manifest::ANN_TITLE], file);
        assert_eq!(m.annotations["org.sysext-bakery.extension-release.ID"], "_any");
        assert!(m.annotations["org.sysext-bakery.inputs"].contains("upstream.example.org"));
        assert_eq!(api_blob(&reg, "team/release", &m.layers[0].digest), bytes);
    }
    // A multi-architecture index per version, with Go's architecture names.
    let (v, _) = api_manifest(&reg, "team/release", "kubernetes-v1.31.3");
    let v: ImageIndex = serde_json::from_slice(&v).unwrap();
    let mut arches: Vec<&str> =
        v.manifests.iter().map(|d| d.platform.as_ref().unwrap().architecture.as_str()).collect();
    arches.sort_unstable();
    assert_eq!(arches, ["amd64", "arm64"]);
    // The release manifest carries index.json byte for byte, and its signature is listed
    // under the tag scheme's sha256-<hex> tag.
    let (rm, rdigest) = api_manifest(&reg, "team/release", "index");
    let rm: Manifest = serde_json::from_slice(&rm).unwrap();
    assert_eq!(rm.layers[0].annotations[manifest::ANN_TITLE], "index.json");
    let index_json = api_blob(&reg, "team/release", &rm.layers[0].digest);
    assert_eq!(Index::parse(&index_json).unwrap(), idx);
    let (refs, _) = api_manifest(&reg, "team/release", &manifest::referrers_tag(&rdigest));
    let refs: ImageIndex = serde_json::from_slice(&refs).unwrap();
    assert_eq!(refs.manifests.len(), 1);
    assert_eq!(refs.manifests[0].artifact_type.as_deref(), Some(manifest::AT_SIGNATURE));
    let tags: serde_json::Value =
        serde_json::from_slice(&reg.get("/v2/team/release/tags/list").send().unwrap().bytes().unwrap()).unwrap();
    let tags: Vec<&str> = tags["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    for want in ["index", "kubernetes-v1.31.3", "kubernetes-v1.31.4-arm64"] {
        assert!(tags.contains(&want), "{want} missing from {tags:?}");
    }

    // Publishing again with nothing new re-signs, and pushes no second image blob.
    let again = publish_oci(&s, &reg, "team/release", &[]);
    let _ = again;
    let idx2 = Client::new(backend(&reg, "team/release"), s.key.public(), None).fetch_index().unwrap().index;
    assert_eq!(idx2.serial, idx.serial + 1);
    assert_eq!(idx2.extensions, idx.extensions);
}

fn publishes_over_tls_with_authentication() {
    publish_pull_and_inspect(true);
}

fn publishes_over_plain_http() {
    publish_pull_and_inspect(false);
}

fn credentials_are_required_and_checked() {
    let reg = TestRegistry::secure();
    let s = Scratch::new();
    let r = repo(&reg, "rel");
    let anonymous = OciOptions { credentials: None, ..opts_for(&reg) };
    // No credentials anywhere (the auth files are not looked up from an empty environment).
    let err = match OciTarget::new(&r, &anonymous) {
        Ok(t) => publish_to(&t, &[s.image("cni-v1.6.2-x86-64.raw", "")], &s.options(Timestamp::now())).unwrap_err(),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.contains("credentials"), "{msg}");
    let wrong = OciOptions {
        credentials: Some(Credentials { username: USER.into(), password: "wrong".into() }),
        ..opts_for(&reg)
    };
    let t = OciTarget::new(&r, &wrong).unwrap();
    let msg =
        publish_to(&t, &[s.image("cni-v1.6.2-x86-64.raw", "")], &s.options(Timestamp::now())).unwrap_err().to_string();
    assert!(msg.contains("refused the credentials from --username"), "{msg}");
    // And without the test CA, TLS fails with the reason.
    let no_ca = OciOptions { http: HttpOptions { retries: 0, ..HttpOptions::default() }, ..opts_for(&reg) };
    let b = OciBackend::new(r, no_ca);
    let msg = b.read("index.json", 1 << 20).unwrap_err().to_string();
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
}

/// Tampering through the registry's API, each refused with its reason.
fn tampering_is_refused() {
    let reg = TestRegistry::plain();
    let s = Scratch::new();
    let img = s.image("kubernetes-v1.31.3-x86-64.raw", "1");
    publish_oci(&s, &reg, "rel", std::slice::from_ref(&img));
    let (old_release, old_digest) = api_manifest(&reg, "rel", "index");
    publish_oci(&s, &reg, "rel", &[s.image("kubernetes-v1.31.4-x86-64.raw", "1")]);
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("state.json");
    let client = || Client::new(backend(&reg, "rel"), s.key.public(), Some(state_file.clone()));
    let trusted = client().fetch_index().unwrap();
    assert_eq!(trusted.index.serial, 2);
    let art = trusted.index.artifact(&"kubernetes-v1.31.3-x86-64.raw".parse().unwrap()).unwrap().clone();
    let raw = Registry::new(&repo(&reg, "rel"), &opts_for(&reg)).unwrap();

    // 1. Another blob under the same tag: a manifest with other bytes, tagged over the original.
    let evil: Vec<u8> = b"evil".repeat(1000);
    let evil_digest = manifest::digest_of(&evil);
    raw.push_blob(&evil_digest, &evil).unwrap();
    let mut forged: Manifest =
        serde_json::from_slice(&api_manifest(&reg, "rel", "kubernetes-v1.31.3-x86-64").0).unwrap();
    forged.layers[0].digest = evil_digest.clone();
    forged.layers[0].size = evil.len() as u64;
    let forged = serde_json::to_vec(&forged).unwrap();
    raw.push_manifest("kubernetes-v1.31.3-x86-64", &forged, manifest::MT_MANIFEST).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = client().fetch_artifact(&art, out.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ClientError::Artifact { .. }), "{msg}");
    assert!(msg.contains("4000 bytes, the signed index says 50000"), "{msg}");
    assert!(msg.contains("rel:kubernetes-v1.31.3-x86-64"), "names the tag: {msg}");
    assert!(std::fs::read_dir(out.path()).unwrap().next().is_none(), "nothing left behind");

    // 2. An older release manifest re-tagged as the current one: a rollback.
    raw.push_manifest("index", &old_release, manifest::MT_MANIFEST).unwrap();
    let msg = client().fetch_index().unwrap_err().to_string();
    assert!(msg.contains("serial 1 is lower than 2"), "{msg}");
    let fresh = Client::new(backend(&reg, "rel"), s.key.public(), None).with_min_serial(Some(2));
    assert!(fresh.fetch_index().unwrap_err().to_string().contains("refusing a rollback"));

    // 3. The signature removed: the tag-scheme index that lists it deleted.
    let (_, refs_digest) = api_manifest(&reg, "rel", &manifest::referrers_tag(&old_digest));
    let del = reg.request(reqwest::Method::DELETE, &format!("/v2/rel/manifests/{refs_digest}")).send().unwrap();
    assert!(del.status().is_success(), "{}", del.status());
    let fresh = Client::new(backend(&reg, "rel"), s.key.public(), None);
    let err = fresh.fetch_index().unwrap_err();
    assert!(matches!(err, ClientError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("rel:index (signature referrer): not found"), "{err}");

    // 4. A release signed by another key, put under `index`.
    let other = Scratch::new();
    publish_oci(&other, &reg, "other", &[other.image("kubernetes-v1.31.3-x86-64.raw", "2")]);
    copy_release(&reg, "other", "rel");
    let err = Client::new(backend(&reg, "rel"), s.key.public(), None).fetch_index().unwrap_err();
    assert!(matches!(err, ClientError::Untrusted { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("which this client does not trust: it trusts {}", s.key.key_id())),
        "{err}"
    );
    // Publishing over it is refused too, naming both keys.
    let t = OciTarget::new(&repo(&reg, "rel"), &opts_for(&reg)).unwrap();
    let msg = publish_to(&t, &[], &s.options(Timestamp::now())).unwrap_err().to_string();
    assert!(msg.contains(&format!("signed by key {}", other.key.key_id())), "{msg}");
}

/// Copies `from`'s current release manifest, its blobs and its signature into `to`, tagged
/// `index` there (what someone with push access to both repositories could do).
fn copy_release(reg: &TestRegistry, from: &str, to: &str) {
    let dst = Registry::new(&repo(reg, to), &opts_for(reg)).unwrap();
    let (bytes, digest) = api_manifest(reg, from, "index");
    let m: Manifest = serde_json::from_slice(&bytes).unwrap();
    for d in m.layers.iter().chain([&m.config]) {
        dst.push_blob(&d.digest, &api_blob(reg, from, &d.digest)).unwrap();
    }
    dst.push_manifest(&digest, &bytes, manifest::MT_MANIFEST).unwrap();
    let tag = manifest::referrers_tag(&digest);
    let (refs, _) = api_manifest(reg, from, &tag);
    for r in serde_json::from_slice::<ImageIndex>(&refs).unwrap().manifests {
        let (sig, _) = api_manifest(reg, from, &r.digest);
        let sm: Manifest = serde_json::from_slice(&sig).unwrap();
        dst.push_blob(&sm.layers[0].digest, &api_blob(reg, from, &sm.layers[0].digest)).unwrap();
        dst.push_manifest(&r.digest, &sig, manifest::MT_MANIFEST).unwrap();
    }
    dst.push_manifest(&tag, &refs, manifest::MT_INDEX).unwrap();
    dst.push_manifest("index", &bytes, manifest::MT_MANIFEST).unwrap();
}

fn mirror_opts(key: &signing::PublicKey) -> MirrorOptions<'_> {
    MirrorOptions { pubkey: key, now: Timestamp::now(), min_serial: None, keep_generations: 3, fail_after_images: None }
}

/// Every file of a release directory's current generation, by relative path.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    walk(dir).unwrap().into_iter().map(|p| (p.clone(), std::fs::read(dir.join(&p)).unwrap())).collect()
}

fn publish_dir(s: &Scratch, images: &[NewImage]) {
    let mut opts = s.options(Timestamp::now());
    opts.valid_for = 30 * DAY;
    release_index::publish::publish(images, &opts).unwrap();
}

fn mirror_dir_to_oci_to_dir_is_byte_identical() {
    let reg = TestRegistry::secure();
    let s = Scratch::new();
    let public = s.key.public();
    publish_dir(&s, &two_by_two(&s));
    publish_dir(&s, &[s.image("containerd-2.0.4-x86-64.raw", "1")]);

    let to_oci = OciTarget::new(&repo(&reg, "mirror"), &opts_for(&reg)).unwrap();
    let src: Arc<dyn Backend> = Arc::new(DirBackend::new(s.release()));
    let m = mirror(src.clone(), &to_oci, &mirror_opts(&public)).unwrap();
    assert_eq!((m.serial, m.copied.len(), m.up_to_date), (2, 5, false));
    // Again: nothing to do.
    let m = mirror(src, &to_oci, &mirror_opts(&public)).unwrap();
    assert!(m.up_to_date && m.copied.is_empty(), "{m:?}");

    let back = s.dir.path().join("back");
    let m = mirror(backend(&reg, "mirror"), &DirTarget::new(&back).unwrap(), &mirror_opts(&public)).unwrap();
    assert_eq!(m.copied.len(), 5);
    assert_eq!(tree(&s.release()), tree(&back), "the round trip changes no byte");
    let report = verify_release(
        &DirBackend::new(back.clone()),
        &VerifyOptions { pubkey: &public, now: Timestamp::now(), min_serial: None, inspect_images: false },
    );
    assert!(report.ok() && report.unlisted_checked, "{:#?}", report.problems);

    // A third version published at the origin travels incrementally: one image moves.
    publish_dir(&s, &[s.image("kubernetes-v1.32.0-x86-64.raw", "1")]);
    let src: Arc<dyn Backend> = Arc::new(DirBackend::new(s.release()));
    let m = mirror(src, &to_oci, &mirror_opts(&public)).unwrap();
    assert_eq!((m.copied.len(), m.kept.len()), (1, 5), "{m:?}");
    let m = mirror(backend(&reg, "mirror"), &DirTarget::new(&back).unwrap(), &mirror_opts(&public)).unwrap();
    assert_eq!((m.copied.len(), m.kept.len()), (1, 5), "{m:?}");
    assert_eq!(tree(&s.release()), tree(&back));

    // A release signed by another key is not copied.
    let other = PrivateKey::generate().unwrap().public();
    let err = mirror(backend(&reg, "mirror"), &DirTarget::new(&s.dir.path().join("x")).unwrap(), &mirror_opts(&other))
        .unwrap_err();
    assert!(err.to_string().contains("which this client does not trust"), "{err}");
    assert!(!s.dir.path().join("x").exists() && !s.dir.path().join("x.generations").exists());
}

/// A backend that counts what is read through it.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn Backend>,
    opened: Mutex<Vec<String>>,
}

impl Backend for Counting {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn location(&self, relative: &str) -> String {
        self.inner.location(relative)
    }
    fn open(&self, relative: &str) -> Result<Option<Box<dyn Read + Send>>, SourceError> {
        self.opened.lock().unwrap().push(relative.to_owned());
        self.inner.open(relative)
    }
}

fn an_interrupted_mirror_resumes() {
    let reg = TestRegistry::plain();
    let s = Scratch::new();
    let public = s.key.public();
    publish_oci(&s, &reg, "rel", &two_by_two(&s));
    let counting = Arc::new(Counting { inner: backend(&reg, "rel"), opened: Mutex::new(Vec::new()) });
    let dst = s.dir.path().join("site");
    let mut opts = mirror_opts(&public);
    opts.fail_after_images = Some(2);
    let err = mirror(counting.clone(), &DirTarget::new(&dst).unwrap(), &opts).unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert!(!dst.exists(), "nothing visible after the interruption");
    let first: Vec<String> = counting.opened.lock().unwrap().drain(..).filter(|p| p.ends_with(".raw")).collect();
    assert_eq!(first.len(), 2, "{first:?}");

    let m = mirror(counting.clone(), &DirTarget::new(&dst).unwrap(), &mirror_opts(&public)).unwrap();
    let names = |v: &[ImageName]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(names(&m.resumed), first, "the two verified downloads are reused");
    let second: Vec<String> = counting.opened.lock().unwrap().iter().filter(|p| p.ends_with(".raw")).cloned().collect();
    assert_eq!(second.len(), 2, "only the other two images are downloaded: {second:?}");
    assert!(second.iter().all(|p| !first.contains(p)));
    assert!(!dst.with_file_name("site.generations").join(".incoming").exists());
    let report = verify_release(
        &DirBackend::new(dst.clone()),
        &VerifyOptions { pubkey: &public, now: Timestamp::now(), min_serial: None, inspect_images: false },
    );
    assert!(report.ok(), "{:#?}", report.problems);

    // Into a registry: interrupted, then resumed without pushing the first blobs again.
    let to = OciTarget::new(&repo(&reg, "copy"), &opts_for(&reg)).unwrap();
    let src: Arc<dyn Backend> = Arc::new(DirBackend::new(dst.clone()));
    let mut opts = mirror_opts(&public);
    opts.fail_after_images = Some(1);
    assert!(mirror(src.clone(), &to, &opts).is_err());
    assert!(Client::new(backend(&reg, "copy"), public.clone(), None).fetch_index().is_err(), "not published yet");
    mirror(src, &to, &mirror_opts(&public)).unwrap();
    fetch_everything(&Client::new(backend(&reg, "copy"), public, None), tempfile::tempdir().unwrap().path());
}

/// What a reader of a static directory sees at one moment.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// No index yet.
    Nothing,
    /// The index and signature do not match (between the last two writes): retry.
    Mismatch,
    /// A verified index with this serial, every file it names present and intact.
    Complete(u64),
    /// A verified index naming a file that is not (yet) there.
    Dangling(u64, String),
}

fn look(dir: &Path, key: &signing::PublicKey) -> Seen {
    let b: Arc<dyn Backend> = Arc::new(DirBackend::new(dir.to_owned()));
    let client = Client::new(b.clone(), key.clone(), None);
    let index = match client.fetch_index() {
        Ok(t) => t.index,
        Err(ClientError::Missing { .. }) => return Seen::Nothing,
        Err(ClientError::BadSignature { .. }) => return Seen::Mismatch,
        Err(e) => panic!("unexpected: {e}"),
    };
    for (path, _) in layout::expected(&index) {
        if !dir.join(&path).is_file() {
            return Seen::Dangling(index.serial, path);
        }
    }
    let out = tempfile::tempdir().unwrap();
    for (_, _, _, art) in index.artifacts() {
        client.fetch_artifact(art, out.path()).unwrap();
    }
    Seen::Complete(index.serial)
}

fn a_static_directory_never_shows_a_dangling_index() {
    let s = Scratch::new();
    let public = s.key.public();
    publish_dir(&s, &[s.image("kubernetes-v1.31.3-x86-64.raw", "1")]);
    let site = s.dir.path().join("www");
    let seen: Arc<Mutex<Vec<(String, Seen)>>> = Arc::default();
    let record = |site: std::path::PathBuf, seen: Arc<Mutex<Vec<(String, Seen)>>>, key: signing::PublicKey| {
        Box::new(move |path: &str| seen.lock().unwrap().push((path.to_owned(), look(&site, &key))))
            as release_index::publish::static_dir::WriteObserver
    };
    let target = StaticDirTarget::new(&site).observe(record(site.clone(), seen.clone(), public.clone()));
    let src: Arc<dyn Backend> = Arc::new(DirBackend::new(s.release()));
    mirror(src, &target, &mirror_opts(&public)).unwrap();
    publish_dir(&s, &two_by_two(&s)[1..]);
    seen.lock().unwrap().clear();
    let src: Arc<dyn Backend> = Arc::new(DirBackend::new(s.release()));
    mirror(src, &target, &mirror_opts(&public)).unwrap();

    let seen = seen.lock().unwrap();
    assert!(seen.len() > 10, "{seen:?}");
    for (path, state) in seen.iter() {
        assert!(!matches!(state, Seen::Dangling(..)), "after writing {path}: {state:?}");
    }
    // Readers stay on serial 1 until the last two writes, see a mismatch between them, then 2.
    let n = seen.len();
    assert!(seen[..n - 2].iter().all(|(_, s)| *s == Seen::Complete(1)), "{seen:?}");
    assert_eq!(seen[n - 2], ("index.json.sig".into(), Seen::Mismatch));
    assert_eq!(seen[n - 1], ("index.json".into(), Seen::Complete(2)));
    assert!(seen[0].0.ends_with(".raw"), "images first: {seen:?}");

    // The checker is not vacuous: an index put in place before its images is caught.
    let bad = s.dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    for f in ["index.json", "index.json.sig"] {
        std::fs::copy(s.release().join(f), bad.join(f)).unwrap();
    }
    assert!(matches!(look(&bad, &public), Seen::Dangling(2, _)), "{:?}", look(&bad, &public));
}

fn mirrors_from_an_http_url() {
    let reg = TestRegistry::plain();
    let s = Scratch::new();
    let public = s.key.public();
    publish_dir(&s, &two_by_two(&s));
    let server = FixtureServer::start();
    for (path, bytes) in tree(&s.release()) {
        server.set(&format!("/rel/{path}"), Response::ok(bytes));
    }
    let http = release_index::http::HttpClient::new(HttpOptions::default()).unwrap();
    let src: Arc<dyn Backend> = Arc::new(HttpBackend::new(format!("{}/rel/", server.url()).parse().unwrap(), http));
    let to = OciTarget::new(&repo(&reg, "from-http"), &opts_for(&reg)).unwrap();
    let m: Mirrored = mirror(src, &to, &mirror_opts(&public)).unwrap();
    assert_eq!(m.copied.len(), 4);
    // A tampered checksum list at the source stops the copy before anything is current.
    publish_dir(&s, &[s.image("cni-v1.6.2-x86-64.raw", "1")]);
    for (path, bytes) in tree(&s.release()) {
        server.set(&format!("/rel/{path}"), Response::ok(bytes));
    }
    server.set("/rel/SHA256SUMS", Response::ok(b"0000  x.raw\n".to_vec()));
    let http = release_index::http::HttpClient::new(HttpOptions::default()).unwrap();
    let src: Arc<dyn Backend> = Arc::new(HttpBackend::new(format!("{}/rel/", server.url()).parse().unwrap(), http));
    let err = mirror(src, &to, &mirror_opts(&public)).unwrap_err();
    assert!(
        err.to_string().contains("/rel/SHA256SUMS: differs from the checksum list the signed index describes"),
        "{err}"
    );
    let idx = Client::new(backend(&reg, "from-http"), public, None).fetch_index().unwrap().index;
    assert_eq!(idx.serial, 1, "the registry still shows the verified release");
}

fn main() -> std::process::ExitCode {
    sysext_tests::harness::run(vec![
        sysext_tests::test!(publishes_over_tls_with_authentication).tools(&REGISTRY_TOOLS),
        sysext_tests::test!(publishes_over_plain_http).tools(&REGISTRY_TOOLS),
        sysext_tests::test!(credentials_are_required_and_checked).tools(&REGISTRY_TOOLS),
        sysext_tests::test!(tampering_is_refused).tools(&REGISTRY_TOOLS),
        sysext_tests::test!(mirror_dir_to_oci_to_dir_is_byte_identical).tools(&REGISTRY_TOOLS),
        sysext_tests::test!(an_interrupted_mirror_resumes).tools(&REGISTRY_TOOLS),
        sysext_tests::test!(a_static_directory_never_shows_a_dangling_index),
        sysext_tests::test!(mirrors_from_an_http_url).tools(&REGISTRY_TOOLS),
    ])
}
