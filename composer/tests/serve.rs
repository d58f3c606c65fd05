//! `composer serve` against real releases (bakery-built images published with the workspace's
//! publish code), with real clients: reqwest, bakery verify-release and the release-index
//! client over HTTP, and raw TCP where a client would normalise the request. Every server is a
//! subprocess of the composer binary on 127.0.0.1:0, killed when its handle drops.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::server::Server;

use release_index::client::Client;
use release_index::publish::{publish, PublishOptions};
use release_index::source::{walk, ReleaseSource};
use release_index::timestamp::Timestamp;
use reqwest::blocking::Response;
use reqwest::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_MATCH, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE,
};
use reqwest::StatusCode;
use signing::{PrivateKey, Sha256Digest};
use sysext_tests::{noise, Arch, FakeUpstream, FixtureServer};

use common::{bake, CNI, K8S};

const K8S_NEXT: &str = "v1.31.4";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "public, no-cache";
/// Marks bytes that must never leave the server.
const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-RELEASE";

// ---------------------------------------------------------------------------------------------
// Releases

/// Real extension images, built once per test binary by bakery against the fake upstream.
fn images() -> &'static [PathBuf] {
    static BUILT: OnceLock<Vec<PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let arch = Arch::host().unwrap_or(Arch::X86_64);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-images");
        let server = FixtureServer::start();
        let up = FakeUpstream::new(&server);
        up.kubernetes(K8S).kubernetes(K8S_NEXT).cni(CNI);
        [("kubernetes", K8S), ("cni", CNI), ("kubernetes", K8S_NEXT)]
            .iter()
            .map(|(ext, version)| bake(&dir, &up.mirror(), ext, version, arch, "_any"))
            .collect()
    })
}

/// A scratch directory with a key pair and a release published into `release`.
struct Release {
    work: tempfile::TempDir,
    key: PrivateKey,
}

impl Release {
    /// Publishes the first two images (kubernetes, cni).
    fn new() -> Self {
        let work = tempfile::tempdir().unwrap();
        let keys = work.path().join("keys");
        signing::keygen(&keys).unwrap();
        let key = PrivateKey::read_pem(&keys.join("private.pem")).unwrap();
        let r = Self { work, key };
        r.publish(&images()[..2], "https://sysext.example.org/ext/");
        r
    }

    fn link(&self) -> PathBuf {
        self.work.path().join("release")
    }

    fn pubkey(&self) -> PathBuf {
        self.work.path().join("keys/public.pem")
    }

    fn publish(&self, images: &[PathBuf], base_url: &str) {
        let new: Vec<_> = images.iter().map(|p| bakery::release::new_image(p).unwrap()).collect();
        let link = self.link();
        let opts = PublishOptions {
            release_dir: &link,
            key: &self.key,
            rotation: None,
            openpgp: false,
            base_url: Some(base_url.parse().unwrap()),
            valid_for: Duration::from_secs(86_400),
            now: Timestamp::now(),
            keep_generations: 3,
            fail_after: None,
        };
        publish(&new, &opts).unwrap();
    }

    /// The directory the release link points to now.
    fn generation(&self) -> PathBuf {
        std::fs::canonicalize(self.link()).unwrap()
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.link().join(rel)).unwrap()
    }

    fn image_file(&self) -> String {
        images()[0].file_name().unwrap().to_string_lossy().into_owned()
    }
}

/// A managed layout made by hand (publish never changes a file under the same name, so this
/// is how one path gets different big content in two generations): `release ->
/// release.generations/<serial>`, swapped with a rename as publish does it.
struct HandRelease {
    work: tempfile::TempDir,
}

impl HandRelease {
    fn new() -> Self {
        Self { work: tempfile::tempdir().unwrap() }
    }

    fn link(&self) -> PathBuf {
        self.work.path().join("release")
    }

    fn generation(&self, serial: u64) -> PathBuf {
        self.work.path().join(format!("release.generations/{serial:010}"))
    }

    fn add(&self, serial: u64, files: &[(&str, &[u8])]) {
        let dir = self.generation(serial);
        for (rel, bytes) in files {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }

    fn swap(&self, serial: u64) {
        let staged = self.work.path().join(".release.swap-test");
        let _ = std::fs::remove_file(&staged);
        std::os::unix::fs::symlink(format!("release.generations/{serial:010}"), &staged).unwrap();
        std::fs::rename(&staged, self.link()).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test

/// Lifts the soft descriptor limit for the load test (the server inherits it, and raises its
/// own anyway).
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let l = getrlimit(Resource::Nofile);
    let _ = setrlimit(Resource::Nofile, Rlimit { current: l.maximum, maximum: l.maximum });
}

/// Runs composer with `args` expecting it to exit on its own (within 20 s).
fn composer_exits(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_composer"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("composer {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code(), err)
}

// ---------------------------------------------------------------------------------------------
// Clients

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap()
}

fn get(url: &str, headers: &[(reqwest::header::HeaderName, &str)]) -> Response {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(k, *v);
    }
    req.send().unwrap()
}

fn header(resp: &Response, name: reqwest::header::HeaderName) -> String {
    resp.headers().get(&name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256Digest::of(bytes).to_string()
}

/// A response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Sends `request` (a full request head) as bytes and reads until the server closes.
fn raw(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(request)));
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    Raw { status, head, body: buf[split + 4..].to_vec() }
}

fn raw_get(addr: SocketAddr, target: &str) -> Raw {
    raw(addr, format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes())
}

/// Starts a GET on a raw socket and reads its head; the caller reads the body at its pace.
fn start_download(addr: SocketAddr, path: &str) -> (TcpStream, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..split]).into_owned();
            return (s, head, buf[split + 4..].to_vec());
        }
    }
}

fn read_exactly(s: &mut TcpStream, got: &mut Vec<u8>, upto: usize) {
    let mut chunk = vec![0; 64 * 1024];
    while got.len() < upto {
        let want = (upto - got.len()).min(chunk.len());
        let n = s.read(&mut chunk[..want]).unwrap();
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

fn verify_release_and_the_client_accept_the_served_release() {
    let r = Release::new();
    let server = Server::start(&r.link(), &[]);
    // Republish while serving, with the server's own URL as base URL: the new generation is
    // live at once, and its transfer files point at this server.
    r.publish(&[], &server.url);

    let pubkey = r.pubkey();
    let code = bakery::cli::main_from_iter([
        "bakery",
        "verify-release",
        &server.url,
        "--pubkey",
        pubkey.to_str().unwrap(),
        "--min-serial",
        "2",
    ]);
    assert_eq!(code, std::process::ExitCode::SUCCESS, "verify-release over HTTP:\n{}", server.log().join("\n"));

    let public = signing::PublicKey::read_pem(&pubkey).unwrap();
    let client = Client::new(server.url.parse::<ReleaseSource>().unwrap().backend().unwrap(), public, None);
    let trusted = client.fetch_index().unwrap();
    assert_eq!(trusted.index.serial, 2);
    let dest = r.work.path().join("node");
    std::fs::create_dir(&dest).unwrap();
    for (_, _, _, art) in trusted.index.artifacts() {
        let got = client.fetch_artifact(art, &dest).unwrap();
        assert_eq!(Sha256Digest::of(&std::fs::read(got).unwrap()), art.sha256);
    }

    // What systemd-sysupdate does with a transfer file, unchanged: SHA256SUMS from Path=, then
    // every file matching MatchPattern, checked against it.
    let conf = String::from_utf8(r.read("kubernetes/kubernetes.conf")).unwrap();
    let path = conf.lines().find_map(|l| l.strip_prefix("Path=")).unwrap();
    assert_eq!(path, format!("{}kubernetes/", server.url));
    let sums = get(&format!("{path}SHA256SUMS"), &[]).text().unwrap();
    assert!(!sums.is_empty());
    for line in sums.lines() {
        let (digest, file) = line.split_once("  ").unwrap();
        assert!(file.starts_with("kubernetes-") && file.ends_with(".raw"), "{file}");
        assert_eq!(sha256(&get(&format!("{path}{file}"), &[]).bytes().unwrap()), digest);
    }

    // Every file of the generation, byte for byte, with its media type and cache policy.
    for rel in walk(&r.generation()).unwrap() {
        let resp = get(&format!("{}{rel}", server.url), &[]);
        assert_eq!(resp.status(), StatusCode::OK, "{rel}");
        let (ctype, cache) = (header(&resp, CONTENT_TYPE), header(&resp, CACHE_CONTROL));
        assert_eq!(resp.bytes().unwrap().as_ref(), r.read(&rel).as_slice(), "{rel}");
        let file = rel.rsplit('/').next().unwrap();
        let want_type = if file.ends_with(".json") {
            "application/json"
        } else if file == "SHA256SUMS" || file.ends_with(".conf") || file.ends_with(".transfer") {
            "text/plain; charset=utf-8"
        } else {
            "application/octet-stream"
        };
        assert_eq!(ctype, want_type, "{rel}");
        let versioned = file.ends_with(".raw") || file.ends_with(".raw.sig");
        assert_eq!(cache, if versioned { IMMUTABLE } else { REVALIDATE }, "{rel}");
    }
}

fn get_and_head_carry_validators_and_lengths() {
    let r = Release::new();
    let server = Server::start(&r.link(), &[]);
    let index = r.read("index.json");
    let resp = get(&format!("{}index.json", server.url), &[]);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, CONTENT_LENGTH), index.len().to_string());
    assert_eq!(header(&resp, ACCEPT_RANGES), "bytes");
    let etag = header(&resp, ETAG);
    assert!(etag.starts_with("\"1-"), "strong, with the serial: {etag}");
    let last_modified = header(&resp, LAST_MODIFIED);
    httpdate::parse_http_date(&last_modified).unwrap();
    assert_eq!(resp.bytes().unwrap().as_ref(), index.as_slice());

    let head = client().head(format!("{}index.json", server.url)).send().unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, CONTENT_LENGTH), index.len().to_string(), "HEAD has GET's length");
    assert_eq!(header(&head, ETAG), etag);
    assert_eq!(header(&head, LAST_MODIFIED), last_modified);
    assert_eq!(header(&head, CONTENT_TYPE), "application/json");
    assert!(head.bytes().unwrap().is_empty());
    let raw_head = raw(server.addr, b"HEAD /index.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(raw_head.body.is_empty(), "no body on the wire after HEAD");

    // An image's tag is the sha256 the signed index lists, at the top level and in <ext>/.
    let file = r.image_file();
    let digest = sha256(&r.read(&file));
    let top = get(&format!("{}{file}", server.url), &[]);
    let ext = get(&format!("{}kubernetes/{file}", server.url), &[]);
    assert_eq!(header(&top, ETAG), format!("\"sha256-{digest}\""));
    assert_eq!(header(&ext, ETAG), header(&top, ETAG));
    assert_eq!(header(&top, CACHE_CONTROL), IMMUTABLE);

    // A publish changes index.json's tag but keeps the image's: caches revalidate it for free.
    r.publish(&images()[2..], "https://sysext.example.org/ext/");
    let after = get(&format!("{}index.json", server.url), &[(IF_NONE_MATCH, &etag)]);
    assert_eq!(after.status(), StatusCode::OK, "the new index is a new representation");
    assert_ne!(header(&after, ETAG), etag);
    let img = get(&format!("{}{file}", server.url), &[(IF_NONE_MATCH, &header(&top, ETAG))]);
    assert_eq!(img.status(), StatusCode::NOT_MODIFIED);

    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        let resp = raw(
            server.addr,
            format!("{method} /index.json HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(resp.status, 405, "{method}");
        assert!(resp.head.to_ascii_lowercase().contains("\r\nallow: get, head"), "{}", resp.head);
    }
}

fn conditional_requests() {
    let r = Release::new();
    let server = Server::start(&r.link(), &[]);
    let url = format!("{}SHA256SUMS", server.url);
    let first = get(&url, &[]);
    let (etag, lm) = (header(&first, ETAG), header(&first, LAST_MODIFIED));

    let not_modified = get(&url, &[(IF_NONE_MATCH, &etag)]);
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&not_modified, ETAG), etag);
    assert_eq!(header(&not_modified, CACHE_CONTROL), REVALIDATE);
    assert!(not_modified.bytes().unwrap().is_empty());
    assert_eq!(get(&url, &[(IF_NONE_MATCH, &format!("\"x\", W/{etag}"))]).status(), StatusCode::NOT_MODIFIED);
    assert_eq!(get(&url, &[(IF_NONE_MATCH, "*")]).status(), StatusCode::NOT_MODIFIED);
    assert_eq!(get(&url, &[(IF_NONE_MATCH, "\"other\"")]).status(), StatusCode::OK);
    let head = client().head(&url).header(IF_NONE_MATCH, &etag).send().unwrap();
    assert_eq!(head.status(), StatusCode::NOT_MODIFIED);

    assert_eq!(get(&url, &[(IF_MODIFIED_SINCE, &lm)]).status(), StatusCode::NOT_MODIFIED);
    assert_eq!(get(&url, &[(IF_MODIFIED_SINCE, "Thu, 01 Jan 1970 00:00:01 GMT")]).status(), StatusCode::OK);
    // If-None-Match decides when both are sent.
    assert_eq!(get(&url, &[(IF_NONE_MATCH, "\"other\""), (IF_MODIFIED_SINCE, &lm)]).status(), StatusCode::OK);

    assert_eq!(get(&url, &[(IF_MATCH, &etag)]).status(), StatusCode::OK);
    assert_eq!(get(&url, &[(IF_MATCH, "\"other\"")]).status(), StatusCode::PRECONDITION_FAILED);
}

fn single_byte_ranges() {
    let r = Release::new();
    let server = Server::start(&r.link(), &[]);
    let file = r.image_file();
    let bytes = r.read(&file);
    let len = bytes.len();
    assert!(len > 1000);
    let url = format!("{}{file}", server.url);
    let etag = header(&get(&url, &[]), ETAG);

    for (range, start, end) in [
        ("bytes=0-99", 0, 99),
        ("bytes=-100", len - 100, len - 1),
        ("bytes=100-", 100, len - 1),
        ("bytes=10-99999999", 10, len - 1),
    ] {
        let resp = get(&url, &[(RANGE, range)]);
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(header(&resp, CONTENT_RANGE), format!("bytes {start}-{end}/{len}"), "{range}");
        assert_eq!(header(&resp, CONTENT_LENGTH), (end - start + 1).to_string());
        assert_eq!(header(&resp, ETAG), etag);
        assert_eq!(resp.bytes().unwrap().as_ref(), &bytes[start..=end], "{range}");
    }

    let resp = get(&url, &[(RANGE, &format!("bytes={len}-"))]);
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, CONTENT_RANGE), format!("bytes */{len}"));
    assert!(resp.bytes().unwrap().is_empty());

    // Several ranges, or one that does not parse: the whole file.
    for range in ["bytes=0-1,10-20", "bytes=5-1", "pages=1-2"] {
        let resp = get(&url, &[(RANGE, range)]);
        assert_eq!(resp.status(), StatusCode::OK, "{range}");
        assert_eq!(resp.bytes().unwrap().len(), len);
    }

    // If-Range: the range only while the representation is the one the client has.
    let resp = get(&url, &[(RANGE, "bytes=0-9"), (IF_RANGE, &etag)]);
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let resp = get(&url, &[(RANGE, "bytes=0-9"), (IF_RANGE, "\"stale\"")]);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().unwrap().len(), len);
    let lm = header(&get(&url, &[]), LAST_MODIFIED);
    assert_eq!(get(&url, &[(RANGE, "bytes=0-9"), (IF_RANGE, &lm)]).status(), StatusCode::PARTIAL_CONTENT);

    // A range of a big file streams (the small-file path reads it whole).
    let big = HandRelease::new();
    let data = noise(7, 3 << 20);
    big.add(1, &[("big.raw", &data)]);
    big.swap(1);
    let server = Server::start(&big.link(), &[]);
    let resp = get(&format!("{}big.raw", server.url), &[(RANGE, "bytes=1000-2999999")]);
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().unwrap().as_ref(), &data[1000..3_000_000]);
}

fn nothing_outside_the_release_is_served() {
    let r = Release::new();
    let generation = r.generation();
    let store = generation.parent().unwrap().to_owned();
    let work = r.work.path();
    std::fs::write(work.join("secret"), SECRET).unwrap();
    std::fs::write(store.join("secret"), SECRET).unwrap();
    std::fs::create_dir(store.join(".tmp-0000000099")).unwrap();
    std::fs::write(store.join(".tmp-0000000099/index.json"), SECRET).unwrap();
    std::fs::write(generation.join(".hidden"), SECRET).unwrap();
    std::fs::write(generation.join("kubernetes/.hidden"), SECRET).unwrap();
    let link = |target: &Path, name: &str| std::os::unix::fs::symlink(target, generation.join(name)).unwrap();
    link(Path::new("../../secret"), "up.raw");
    link(&work.join("secret"), "absolute.raw");
    link(Path::new("/etc/passwd"), "passwd");
    link(Path::new("index.json"), "inside-link.json");
    link(Path::new(".."), "parent");
    link(work, "work");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        generation.join("fifo.raw"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    std::fs::create_dir(generation.join("empty")).unwrap();
    let server = Server::start(&r.link(), &[]);

    let targets = [
        "/../secret",
        "/../../secret",
        "/kubernetes/../../secret",
        "/%2e%2e/secret",
        "/%2E%2E/%2e%2e/secret",
        "/.%2e/secret",
        "/kubernetes/%2e%2e/%2e%2e/secret",
        "/..%2fsecret",
        "/%2e%2e%2f%2e%2e%2fsecret",
        "/..%5c..%5csecret",
        "/..%5Csecret",
        "/secret%00",
        "/%00",
        "/index.json%00.raw",
        "//etc/passwd",
        "/%2fetc/passwd",
        "/%2Fetc%2Fpasswd",
        "/./index.json",
        "/kubernetes/./SHA256SUMS",
        "/kubernetes//SHA256SUMS",
        "/.hidden",
        "/kubernetes/.hidden",
        "/.lock",
        "/.tmp-0000000099/index.json",
        "/%2elock",
        "/.release.swap-1",
        "/up.raw",
        "/absolute.raw",
        "/passwd",
        "/inside-link.json",
        "/parent/secret",
        "/parent/.lock",
        "/work/secret",
        "/fifo.raw",
        "/empty",
        "/empty/",
        "/kubernetes",
        "/kubernetes/",
        "/",
        "/release.generations/secret",
        "/secret",
        "/%",
        "/%zz",
        "http://127.0.0.1/../secret",
        "http://127.0.0.1/%2e%2e/secret",
    ];
    for target in targets {
        let resp = raw_get(server.addr, target);
        assert!(matches!(resp.status, 400 | 404), "{target}: {}\n{}", resp.status, resp.head);
        let body = String::from_utf8_lossy(&resp.body);
        assert!(!body.contains(SECRET) && !body.contains("root:"), "{target} leaked: {body}");
    }
    // Bytes a client library would refuse to send: hyper refuses them before the service.
    for request in
        [&b"GET /a\\..\\secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..], b"GET /\x00 HTTP/1.1\r\n\r\n"]
    {
        let resp = raw(server.addr, request);
        assert_eq!(resp.status, 400, "{}", String::from_utf8_lossy(request));
    }
    let lines = server.log().join("\n");
    assert!(lines.contains("GET /up.raw 404") && lines.contains("(symlink refused)"), "{lines}");
    assert!(lines.contains("GET /fifo.raw 404") && lines.contains("(not a regular file (fifo))"), "{lines}");
    assert!(lines.contains("GET /%2e%2e/secret 400") && lines.contains("(malformed path: dot segment)"), "{lines}");
    // And the release itself is still served.
    assert_eq!(raw_get(server.addr, "/index.json").body, r.read("index.json"));
}

fn a_publish_mid_download_never_mixes_generations() {
    let hand = HandRelease::new();
    let (old, new) = (noise(1, 32 << 20), noise(2, 32 << 20));
    hand.add(1, &[("big.raw", &old), ("index.json", b"{\"serial\":1}")]);
    hand.swap(1);
    let server = Server::start(&hand.link(), &[]);

    let (mut s, head, mut got) = start_download(server.addr, "/big.raw");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    read_exactly(&mut s, &mut got, 1 << 20);

    // Publish generation 2 and prune generation 1 while the download is paused.
    hand.add(2, &[("big.raw", &new), ("index.json", b"{\"serial\":2}")]);
    hand.swap(2);
    std::fs::remove_dir_all(hand.generation(1)).unwrap();
    assert_eq!(raw_get(server.addr, "/index.json").body, b"{\"serial\":2}");
    let fresh = raw_get(server.addr, "/big.raw");
    assert!(fresh.body == new, "a new request gets the new generation");

    read_exactly(&mut s, &mut got, old.len());
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{} bytes past Content-Length", rest.len());
    assert!(got == old, "the paused download finished from generation 1, unmixed");
    let line = server
        .wait_for_log("for the first download", |l| l.contains("GET /big.raw 200") && l.contains("gen=0000000001"));
    assert!(line.contains(&format!(" {} ", old.len())) && !line.contains("aborted"), "{line}");
    server.wait_for_log("for the second download", |l| l.contains("GET /big.raw 200") && l.contains("gen=0000000002"));

    // A link publish would never write: 503 and a line saying why, until it is put right.
    let staged = hand.work.path().join(".swap");
    std::os::unix::fs::symlink("/tmp", &staged).unwrap();
    std::fs::rename(&staged, hand.link()).unwrap();
    let resp = raw_get(server.addr, "/index.json");
    assert_eq!(resp.status, 503);
    assert!(resp.head.to_ascii_lowercase().contains("retry-after"), "{}", resp.head);
    let line = server.request_line("/index.json 503");
    assert!(line.contains("points to '/tmp', not to 'release.generations/<10-digit serial>'"), "{line}");
    hand.swap(2);
    assert_eq!(raw_get(server.addr, "/index.json").status, 200);
}

fn a_plain_directory_is_served_with_the_same_rules() {
    let r = Release::new();
    let mirror = r.work.path().join("mirror");
    let generation = r.generation();
    for rel in walk(&generation).unwrap() {
        let dest = mirror.join(&rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(generation.join(&rel), dest).unwrap();
    }
    std::fs::write(r.work.path().join("secret"), SECRET).unwrap();
    std::os::unix::fs::symlink("../secret", mirror.join("leak.raw")).unwrap();
    let server = Server::start(&mirror, &[]);

    let pubkey = r.pubkey();
    let code =
        bakery::cli::main_from_iter(["bakery", "verify-release", &server.url, "--pubkey", pubkey.to_str().unwrap()]);
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    for target in ["/leak.raw", "/../secret", "/%2e%2e/secret"] {
        let resp = raw_get(server.addr, target);
        assert!(matches!(resp.status, 400 | 404) && !String::from_utf8_lossy(&resp.body).contains(SECRET), "{target}");
    }
    let line = server.request_line("/index.json");
    assert!(!line.contains("gen="), "no generation for a plain directory: {line}");

    // Metadata tags here: rewriting a file in place with as many bytes changes the tag.
    let url = format!("{}noop.conf", server.url);
    let before = get(&url, &[]);
    let (etag, text) = (header(&before, ETAG), before.text().unwrap());
    let mut changed = text.clone().into_bytes();
    changed[0] ^= 0x20;
    std::fs::OpenOptions::new().write(true).open(mirror.join("noop.conf")).unwrap().write_all(&changed).unwrap();
    let after = get(&url, &[(IF_NONE_MATCH, &etag)]);
    assert_eq!(after.status(), StatusCode::OK);
    assert_ne!(header(&after, ETAG), etag);
    assert_eq!(after.bytes().unwrap().as_ref(), changed.as_slice());
}

fn sigterm_lets_downloads_finish_and_exits_zero() {
    let hand = HandRelease::new();
    let data = noise(3, 24 << 20);
    hand.add(1, &[("big.raw", &data), ("index.json", b"{}")]);
    hand.swap(1);
    let mut server = Server::start(&hand.link(), &[]);

    let (mut s, head, mut got) = start_download(server.addr, "/big.raw");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    read_exactly(&mut s, &mut got, 1 << 20);
    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    idle.write_all(b"GET /index.json HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0; 4096];
    assert!(idle.read(&mut first).unwrap() > 0);

    server.signal(rustix::process::Signal::TERM);
    server.wait_for_log("about the shutdown", |l| l.contains("SIGTERM: not accepting connections"));
    assert!(TcpStream::connect(server.addr).is_err(), "no new connections after SIGTERM");
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap(), 0, "the idle connection is closed");

    read_exactly(&mut s, &mut got, data.len());
    assert!(got == data, "the in-flight download completed");
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let log = server.log().join("\n");
    assert!(log.contains("all connections closed; exiting"), "{log}");

    // SIGINT with nothing in flight: out at once.
    let mut server = Server::start(&hand.link(), &[]);
    server.signal(rustix::process::Signal::INT);
    assert!(server.wait_exit(Duration::from_secs(10)).success());

    // A client that stops reading is cut off when the grace period ends.
    let mut server = Server::start(&hand.link(), &["--shutdown-grace", "1s"]);
    let (_stalled, _, _) = start_download(server.addr, "/big.raw");
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    server.signal(rustix::process::Signal::TERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    assert!(t.elapsed() >= Duration::from_millis(900), "waited for the grace period: {:?}", t.elapsed());
    let log = server.log().join("\n");
    assert!(log.contains("waiting up to 1s for 1 open connection(s)"), "{log}");
    assert!(log.contains("grace period over"), "{log}");
}

fn access_log_one_line_per_request_as_text_or_json() {
    let r = Release::new();
    let index_len = r.read("index.json").len();
    let server = Server::start(&r.link(), &[]);
    raw_get(server.addr, "/index.json");
    raw_get(server.addr, "/missing");
    let line = server.request_line("/index.json");
    // TIME PEER METHOD PATH STATUS BYTES DURATION gen=SERIAL
    let fields: Vec<&str> = line.split(' ').collect();
    assert!(fields[0].ends_with('Z') && fields[1].starts_with("127.0.0.1:"), "{line}");
    assert_eq!(&fields[2..6], ["GET", "/index.json", "200", &index_len.to_string()], "{line}");
    assert!(fields[6].ends_with("ms") && fields[7] == "gen=0000000001", "{line}");
    assert!(server.request_line("/missing").contains("404 10 "), "{}", server.request_line("/missing"));
    let head = raw(server.addr, b"HEAD /gone HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((head.status, head.body.len()), (404, 0));
    let line = server.request_line("/gone");
    assert!(line.contains("HEAD /gone 404 0 ") && !line.contains("aborted"), "{line}");
    drop(server);

    let server = Server::start(&r.link(), &["--log-format", "json"]);
    raw_get(server.addr, "/index.json");
    raw_get(server.addr, "/missing");
    server.wait_for_log("for /missing", |l| l.contains("/missing"));
    let lines = server.log();
    let values: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    let index = values.iter().find(|v| v["path"] == "/index.json").unwrap();
    assert_eq!(index["method"], "GET");
    assert_eq!(index["status"], 200);
    assert_eq!(index["bytes"], index_len);
    assert_eq!(index["generation"], 1);
    assert_eq!(index["complete"], true);
    assert!(index["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(index["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let missing = values.iter().find(|v| v["path"] == "/missing").unwrap();
    assert_eq!((missing["status"].as_u64(), missing["note"].as_str()), (Some(404), Some("not found")));
    assert!(values.iter().any(|v| v["event"].as_str().is_some_and(|e| e.starts_with("serving "))));
}

/// Splits a byte stream into `(status line, body)` responses, by their Content-Length.
fn responses(mut buf: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no response head")?;
        let head = String::from_utf8_lossy(&buf[..split]).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
            .ok_or_else(|| format!("no Content-Length: {head}"))?
            .parse()
            .map_err(|e| format!("{e}"))?;
        let body = buf.get(split + 4..split + 4 + len).ok_or("short body")?;
        out.push((head.lines().next().unwrap_or_default().to_owned(), body.to_vec()));
        buf = &buf[split + 4 + len..];
    }
    Ok(out)
}

fn a_thousand_concurrent_connections_without_an_error() {
    const CONNECTIONS: usize = 1000;
    const READERS: usize = 16;
    raise_fd_limit();
    let r = Release::new();
    let file = r.image_file();
    let (index, image) = (Arc::new(r.read("index.json")), Arc::new(r.read(&file)));
    let server = Server::start(&r.link(), &[]);
    let started = Instant::now();

    // First every connection is open (the server holds 1000 idle ones), then each gets two
    // pipelined requests (keep-alive, then close), and only then is any response read.
    let mut streams: Vec<(usize, TcpStream)> = (0..CONNECTIONS)
        .map(|i| {
            let s = TcpStream::connect(server.addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            (i, s)
        })
        .collect();
    for (i, s) in &mut streams {
        let first = if *i % 10 == 0 {
            format!("GET /{file} HTTP/1.1\r\nHost: x\r\nRange: bytes=100-1099\r\n\r\n")
        } else {
            "GET /index.json HTTP/1.1\r\nHost: x\r\n\r\n".to_owned()
        };
        let second = "GET /SHA256SUMS HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        s.write_all(format!("{first}{second}").as_bytes()).unwrap_or_else(|e| panic!("connection {i}: {e}"));
    }
    let sums = Arc::new(r.read("SHA256SUMS"));
    let mut shares: Vec<Vec<(usize, TcpStream)>> = (0..READERS).map(|_| Vec::new()).collect();
    for (n, s) in streams.into_iter().enumerate() {
        shares[n % READERS].push(s);
    }
    let readers: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let (index, image, sums) = (index.clone(), image.clone(), sums.clone());
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                for (i, mut s) in share {
                    let mut buf = Vec::new();
                    if let Err(e) = s.read_to_end(&mut buf) {
                        errors.push(format!("{i}: {e}"));
                        continue;
                    }
                    let (status, want): (&str, &[u8]) =
                        if i % 10 == 0 { ("HTTP/1.1 206 ", &image[100..1100]) } else { ("HTTP/1.1 200 ", &index) };
                    match responses(&buf) {
                        Ok(r)
                            if r.len() == 2
                                && r[0].0.starts_with(status)
                                && r[0].1 == want
                                && r[1].0.starts_with("HTTP/1.1 200 ")
                                && r[1].1 == *sums => {}
                        Ok(r) => {
                            errors.push(format!("{i}: {:?}", r.iter().map(|(h, b)| (h, b.len())).collect::<Vec<_>>()))
                        }
                        Err(e) => errors.push(format!("{i}: {e}")),
                    }
                }
                errors
            })
        })
        .collect();
    let errors: Vec<String> = readers.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let elapsed = started.elapsed();
    assert!(errors.is_empty(), "{} errors, e.g. {:?}", errors.len(), &errors[..errors.len().min(5)]);
    eprintln!("{CONNECTIONS} concurrent connections, {} requests, served in {elapsed:?}", 2 * CONNECTIONS);
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    // The access log has a line for each, none cut short.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.log().iter().filter(|l| l.contains(" GET /")).count() < 2 * CONNECTIONS {
        assert!(Instant::now() < deadline, "missing access log lines");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!server.log().iter().any(|l| l.contains("aborted")));
}

fn tls_with_a_pem_certificate() {
    let r = Release::new();
    let dir = r.work.path();
    let make_cert = |name: &str| {
        let o = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"])
            .arg("-keyout")
            .arg(dir.join(format!("{name}.key")))
            .arg("-out")
            .arg(dir.join(format!("{name}.crt")))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    make_cert("a");
    make_cert("b");
    let (cert, key) = (dir.join("a.crt"), dir.join("a.key"));
    let server = Server::start(&r.link(), &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    assert!(server.url.starts_with("https://127.0.0.1:"), "{}", server.url);
    let pem = std::fs::read(&cert).unwrap();
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let resp = client.get(format!("{}index.json", server.url)).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().unwrap().as_ref(), r.read("index.json").as_slice());
    let file = r.image_file();
    let resp = client.get(format!("{}{file}", server.url)).header(RANGE, "bytes=0-9").send().unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().unwrap().as_ref(), &r.read(&file)[..10]);
    // Plain HTTP to the TLS port gets no file, and a log line.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /index.json HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("schema-version"));
    server.wait_for_log("about the handshake", |l| l.contains("TLS handshake failed"));

    // A key that is not the certificate's, and files that are not PEM, are refused at startup.
    let link = r.link();
    let (code, err) = composer_exits(&[
        "serve".as_ref(),
        link.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        dir.join("b.key").as_os_str(),
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("b.key") && err.contains("cannot be used with the certificate"), "{err}");
    let (code, err) = composer_exits(&[
        "serve".as_ref(),
        link.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--tls-cert".as_ref(),
        dir.join("a.key").as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("a.key: no PEM certificate"), "{err}");
}

fn startup_errors_name_the_file_or_address() {
    let r = Release::new();
    let link = r.link();
    let serve = |dir: &Path, extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec!["serve".as_ref(), dir.as_os_str()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        composer_exits(&args)
    };
    let listen = ["--listen", "127.0.0.1:0"];

    let missing = r.work.path().join("nope");
    let (code, err) = serve(&missing, &listen);
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("{}: No such file or directory", missing.display())), "{err}");

    let file = r.work.path().join("keys/public.pem");
    let (code, err) = serve(&file, &listen);
    assert_eq!(code, Some(1));
    assert!(err.contains("public.pem: not a directory"), "{err}");

    let odd = r.work.path().join("odd");
    std::os::unix::fs::symlink(r.generation(), &odd).unwrap();
    let (code, err) = serve(&odd, &listen);
    assert_eq!(code, Some(1));
    assert!(err.contains("odd.generations/<10-digit serial>"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = serve(&link, &["--listen", &addr]);
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("cannot listen on {addr}")) && err.contains("in use"), "{err}");

    let (code, err) = serve(&link, &["--listen", "localhost:80"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("'localhost:80'"), "{err}");

    let (code, err) =
        serve(&link, &["--listen", "127.0.0.1:0", "--tls-cert", "/nonexistent/cert.pem", "--tls-key", "k"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent/cert.pem: No such file or directory"), "{err}");
}

fn main() -> std::process::ExitCode {
    sysext_tests::harness::run(vec![
        sysext_tests::test!(verify_release_and_the_client_accept_the_served_release),
        sysext_tests::test!(get_and_head_carry_validators_and_lengths),
        sysext_tests::test!(conditional_requests),
        sysext_tests::test!(single_byte_ranges),
        sysext_tests::test!(nothing_outside_the_release_is_served),
        sysext_tests::test!(a_publish_mid_download_never_mixes_generations),
        sysext_tests::test!(a_plain_directory_is_served_with_the_same_rules),
        sysext_tests::test!(sigterm_lets_downloads_finish_and_exits_zero),
        sysext_tests::test!(access_log_one_line_per_request_as_text_or_json),
        sysext_tests::test!(a_thousand_concurrent_connections_without_an_error),
        sysext_tests::test!(tls_with_a_pem_certificate).tools(&["openssl"]),
        sysext_tests::test!(startup_errors_name_the_file_or_address),
    ])
}
