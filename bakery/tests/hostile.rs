//! Hostile input on the build side: poisoned mirrors, servers that stall or trickle, a full
//! disk, lying checksum lists and version pins, archive bombs. Each test serves the attack
//! from a local fixture server and checks that `bakery create` fails (or recovers) the way
//! it should: quickly, naming the URL or file and the limit, leaving nothing behind.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use signing::Sha256Digest;
use sysext_tests::harness;
use sysext_tests::tarball::gzip;
use sysext_tests::upstream::{
    cni_tarball_path, containerd_checksum_path, kubernetes_path, message, runc_path, runc_version_path, CNI_PLUGINS,
};
use sysext_tests::{tiny_executable, Arch, EntryType, FixtureServer, Response, TarGz};

/// `bakery create` without the `--retries` that `common::create` adds, so a test sets its own.
fn build(work: &Work, mirror: &str, ext: &str, version: &str, arch: Arch, extra: &[&str]) -> Output {
    bakery()
        .args(["create", ext, version, "--arch", arch.as_str(), "--mirror", mirror])
        .arg("--cache")
        .arg(work.cache())
        .arg("--output")
        .arg(work.out())
        .args(extra)
        .output()
        .unwrap()
}

fn fails(o: &Output, wanted: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected exit code 1; stderr: {err}");
    for w in wanted {
        assert!(err.contains(w), "expected {w:?} in stderr:\n{err}");
    }
    err
}

fn files_in(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

const HTML: &str =
    "<!DOCTYPE html>\n<html><head><title>Rate limited</title></head>\n<body>Try again later</body></html>\n";

/// An HTML page answering a `.sha256` request with 200 fails the build and is not cached: the
/// next build asks again, and succeeds once the server answers properly.
fn html_checksum_page_is_never_cached() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let sum = format!("{}.sha256", kubernetes_path(K8S, Arch::X86_64, "kubelet"));
    server.set(&sum, Response::ok(HTML).header("Content-Type", "text/html"));
    let work = Work::new();
    let o = build(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &["--retries", "0"]);
    fails(&o, &["checksum file", &up.url(&sum), "line 1: expected 64 hex characters"]);
    assert_eq!(work.outputs(), Vec::<String>::new());
    for cached in files_in(&work.cache().join("url")) {
        let bytes = std::fs::read(work.cache().join("url").join(&cached)).unwrap();
        assert!(!bytes.starts_with(b"<!DOCTYPE"), "the error page was cached as {cached}");
    }

    up.put(&sum, up.digest(&kubernetes_path(K8S, Arch::X86_64, "kubelet")).to_string());
    server.clear_log();
    created(&build(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &[]));
    assert_eq!(server.hits(&sum), 1, "the checksum is fetched again, not read from the cache");
}

/// A hostile mirror serves a bad kubelet with a checksum that matches it. A later build from
/// a good mirror into the same cache ships the good binary: what one mirror said is never
/// believed for another.
fn a_poisoned_mirror_does_not_poison_the_cache() {
    let good_server = FixtureServer::start();
    let good = upstream(&good_server);
    let clean = Work::new();
    let clean_image = created(&build(&clean, &good.mirror(), "kubernetes", K8S, Arch::X86_64, &[]));
    let clean_inputs = inputs_json(&clean_image);

    let evil_server = FixtureServer::start();
    let evil = upstream(&evil_server);
    let kubelet = kubernetes_path(K8S, Arch::X86_64, "kubelet");
    let bad = tiny_executable(Arch::X86_64, "pwned\n");
    evil.put(&format!("{kubelet}.sha256"), Sha256Digest::of(&bad).to_string());
    evil.put(&kubelet, bad.clone());

    let work = Work::new();
    let poisoned = created(&build(&work, &evil.mirror(), "kubernetes", K8S, Arch::X86_64, &[]));
    assert_ne!(sha256(&poisoned), sha256(&clean_image), "the hostile mirror's binary went in");

    let rebuilt = created(&build(&work, &good.mirror(), "kubernetes", K8S, Arch::X86_64, &["--force"]));
    assert_eq!(sha256(&rebuilt), sha256(&clean_image), "the good mirror's build differs from a clean one");
    assert_eq!(inputs_json(&rebuilt), clean_inputs);
    assert!(good_server.hits(&format!("{kubelet}.sha256")) >= 2, "the good mirror's checksum was asked for");
}

/// The inputs lock inside an image, via `bakery inspect --json`.
fn inputs_json(image: &Path) -> serde_json::Value {
    let o = bakery().args(["inspect", "--json"]).arg(image).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["inputs"].clone()
}

/// `--locked inputs.json --offline` rebuilds bit-identically without a single request, and
/// `--offline` with an empty cache fails naming the URL it would have fetched.
fn locked_offline_rebuilds_without_network() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let o = build(&work, &up.mirror(), "containerd", CONTAINERD, Arch::Arm64, &["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let result: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let first = result["sha256"].as_str().unwrap().to_owned();
    let lock = work.dir.path().join("inputs.json");
    std::fs::write(&lock, serde_json::to_vec_pretty(&result["inputs"]).unwrap()).unwrap();

    server.clear_log();
    let o = build(
        &work,
        &up.mirror(),
        "containerd",
        CONTAINERD,
        Arch::Arm64,
        &["--locked", lock.to_str().unwrap(), "--offline", "--force"],
    );
    assert_eq!(sha256(&created(&o)), first, "the locked rebuild differs");
    assert_eq!(server.requests(), Vec::<String>::new(), "a --locked --offline rebuild made requests");

    let fresh = Work::new();
    let o = build(&fresh, &up.mirror(), "containerd", CONTAINERD, Arch::Arm64, &["--offline"]);
    fails(&o, &[&up.url(&runc_version_path(CONTAINERD)), "not in the cache", "--offline forbids downloading it"]);
    assert_eq!(server.requests(), Vec::<String>::new(), "--offline made requests");
    assert_eq!(fresh.outputs(), Vec::<String>::new());
}

/// Runs a build that must fail within `within`, returning its stderr.
fn fails_within(within: Duration, run: impl FnOnce() -> Output, wanted: &[&str]) -> String {
    let started = Instant::now();
    let o = run();
    let took = started.elapsed();
    let err = fails(&o, wanted);
    assert!(took < within, "took {took:?} (limit {within:?}): {err}");
    err
}

const QUICK: &[&str] = &["--timeout", "1s", "--retries", "0"];

/// A server sending one byte every 200 ms never trips a read timeout, but the low-speed limit
/// ends the transfer after one window, naming the URL and the limit.
fn a_trickling_server_is_abandoned() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let kubelet = kubernetes_path(K8S, Arch::X86_64, "kubelet");
    server.set(&kubelet, Response::ok(up.bytes(&kubelet)).trickle(Duration::from_millis(200)));
    let work = Work::new();
    fails_within(
        Duration::from_secs(5),
        || build(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, QUICK),
        &[&up.url(&kubelet), "below the low-speed limit of 1024 bytes/s over 1s"],
    );
    assert_eq!(server.hits(&kubelet), 1, "--retries 0");
    assert_eq!(work.outputs(), Vec::<String>::new());
}

/// A server that accepts and never answers fails the build after about the read timeout.
fn a_silent_server_times_out() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let sum = format!("{}.sha256", kubernetes_path(K8S, Arch::X86_64, "kubectl"));
    server.set(&sum, Response::ok("x").never_answer());
    let work = Work::new();
    fails_within(
        Duration::from_secs(5),
        || build(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, QUICK),
        &[&up.url(&sum), "no data for 1s (read timeout 1s)"],
    );
}

/// A body that stops half-way (connection open, nothing more sent) fails after about the read
/// timeout: reqwest's blocking timeout bounds every single body read, not just the headers.
fn a_stall_mid_body_times_out() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let cni = cni_tarball_path(CNI, Arch::X86_64);
    server.set(&cni, Response::ok(up.bytes(&cni)).hang_after(100));
    let work = Work::new();
    fails_within(
        Duration::from_secs(5),
        || build(&work, &up.mirror(), "cni", CNI, Arch::X86_64, QUICK),
        &[&up.url(&cni), "no data for 1s (read timeout 1s)"],
    );
    // With the low-speed check off, only the per-read timeout can end it; it still does.
    let work = Work::new();
    let mut args = QUICK.to_vec();
    args.extend(["--low-speed-limit", "0"]);
    fails_within(
        Duration::from_secs(5),
        || build(&work, &up.mirror(), "cni", CNI, Arch::X86_64, &args),
        &[&up.url(&cni), "read timeout 1s"],
    );
}

/// `verify-release URL` is bounded the same way: a trickling and a silent `index.json` are both
/// reported within seconds, naming the URL and the limit.
fn verify_release_over_a_hostile_server_is_bounded() {
    let server = FixtureServer::start();
    let work = Work::new();
    let keys = work.dir.path().join("keys");
    assert!(bakery().args(["keygen", "--out"]).arg(&keys).output().unwrap().status.success());
    let verify = |prefix: &str| {
        bakery()
            .args(["verify-release", &server.url_for(&format!("/{prefix}/")), "--pubkey"])
            .arg(keys.join("public.pem"))
            .args(QUICK)
            .output()
            .unwrap()
    };
    server.set("/trickle/index.json", Response::ok(vec![b' '; 4096]).trickle(Duration::from_millis(200)));
    let started = Instant::now();
    let o = verify("trickle");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("FAIL index.json:") && out.contains("below the low-speed limit of 1024 bytes/s over 1s"),
        "{out}"
    );
    assert!(stderr(&o).contains(&server.url_for("/trickle/")), "{}", stderr(&o));

    server.set("/silent/index.json", Response::ok("{}").never_answer());
    let started = Instant::now();
    let o = verify("silent");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stdout(&o).contains("FAIL index.json: no data for 1s (read timeout 1s)"), "{}", stdout(&o));
}

/// A write that fails locally (a full disk) is reported as such and not retried: exactly one
/// request, the message says "No space left on device" and names the file.
fn a_full_disk_is_not_retried() {
    use release_index::http::{HttpClient, HttpOptions, Sink};
    struct Full;
    impl Sink for Full {
        fn restart(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn write(&mut self, _: &[u8]) -> std::io::Result<()> {
            Err(std::io::Error::from_raw_os_error(28))
        }
        fn path(&self) -> std::path::PathBuf {
            "/cache/sha256/partial".into()
        }
    }
    let server = FixtureServer::start();
    server.set("/big", Response::ok(vec![1u8; 100_000]));
    let client =
        HttpClient::new(HttpOptions { retries: 4, backoff: Duration::ZERO, ..HttpOptions::default() }).unwrap();
    let err = client.fetch_into(&server.url_for("/big"), None, false, &mut Full, &mut |_| {}).unwrap_err();
    assert_eq!(server.hits("/big"), 1, "a local write error was retried");
    assert!(!err.is_retryable());
    assert_eq!(err.to_string(), "/cache/sha256/partial: No space left on device (os error 28)");
}

/// The same end to end, as root: the cache on a 256 KiB tmpfs in a private mount namespace.
fn a_full_cache_disk_fails_once_naming_the_path() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    std::fs::create_dir_all(work.cache()).unwrap();
    let kubelet = kubernetes_path(K8S, Arch::X86_64, "kubelet");
    // Big enough that the kubelet cannot fit once the checksums are in.
    let big = tiny_executable(Arch::X86_64, &"x".repeat(400_000));
    up.put(&format!("{kubelet}.sha256"), Sha256Digest::of(&big).to_string());
    up.put(&kubelet, big);
    let script = format!(
        "mount -t tmpfs -o size=256k tmpfs {cache} && exec {bakery} create kubernetes {K8S} --arch x86-64 --mirror {mirror} --cache {cache} --output {out} --retries 3 --jobs 1",
        cache = work.cache().display(),
        bakery = env!("CARGO_BIN_EXE_bakery"),
        mirror = up.mirror(),
        out = work.out().display(),
    );
    let o = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = fails(&o, &["No space left on device", &work.cache().join("sha256").display().to_string()]);
    assert!(!err.contains("retrying"), "{err}");
    assert_eq!(server.hits(&kubelet), 1, "{err}");
    assert_eq!(work.outputs(), Vec::<String>::new());
}

/// A checksum list naming the tarball twice with different digests is refused, whichever
/// line is right.
fn duplicate_checksum_entries_are_refused() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let sums = containerd_checksum_path(CONTAINERD, Arch::X86_64);
    let good = String::from_utf8(up.bytes(&sums)).unwrap();
    let name = good.split_whitespace().nth(1).unwrap().to_owned();
    up.put(&sums, format!("{good}{}  {name}\n", "0".repeat(64)));
    let work = Work::new();
    let o = build(&work, &up.mirror(), "containerd", CONTAINERD, Arch::X86_64, &[]);
    fails(&o, &[&up.url(&sums), &format!("lists '{name}' twice with different digests")]);
    assert_eq!(work.outputs(), Vec::<String>::new());
}

/// A version pin that is not a version (`..`, a path, an HTML page) is refused before it is
/// put into any URL.
fn version_pins_must_look_like_versions() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let pin = runc_version_path(CONTAINERD);
    for bad in ["..\n", "v1.2.5/../../../evil\n", HTML] {
        up.put(&pin, bad);
        server.clear_log();
        let work = Work::new();
        let o = build(&work, &up.mirror(), "containerd", CONTAINERD, Arch::X86_64, &[]);
        fails(&o, &[&up.url(&pin), "expected a version (e.g. v1.2.5)", "runc-version"]);
        assert_eq!(server.requests(), vec![pin.clone()], "{bad:?} led to further requests");
        assert!(files_in(&work.cache().join("url")).is_empty(), "{bad:?} was cached");
    }
    // The real pin still works after the refusals.
    up.put(&pin, format!("{RUNC}\n"));
    created(&build(&Work::new(), &up.mirror(), "containerd", CONTAINERD, Arch::X86_64, &[]));
    assert!(server.hits(&runc_path(RUNC, Arch::X86_64)) >= 1);
}

/// The fake CNI release's tar stream for x86-64 with `extra` entries added after the plugins
/// and before LICENSE and README.md.
fn cni_tar(extra: impl FnOnce(TarGz) -> TarGz) -> Vec<u8> {
    let mut tar = TarGz::new().dir("./", 0o755);
    for plugin in CNI_PLUGINS {
        tar =
            tar.file(&format!("./{plugin}"), 0o755, tiny_executable(Arch::X86_64, &message(plugin, CNI, Arch::X86_64)));
    }
    extra(tar)
        .file("./LICENSE", 0o644, "Apache License\nVersion 2.0, January 2004\n")
        .file("./README.md", 0o644, "Fake CNI plugins for tests.\n")
        .build_tar()
}

/// Serves `tgz` as the x86-64 CNI tarball, with a checksum that vouches for it.
fn serve_cni(up: &sysext_tests::FakeUpstream<'_>, tgz: Vec<u8>) {
    let path = cni_tarball_path(CNI, Arch::X86_64);
    let name = path.rsplit('/').next().unwrap().to_owned();
    up.put(&format!("{path}.sha256"), format!("{}  {name}\n", Sha256Digest::of(&tgz)));
    up.put(&path, tgz);
}

const CNI_URL: &str =
    "archive https://github.com/containernetworking/plugins/releases/download/v1.6.2/cni-plugins-linux-amd64-v1.6.2.tgz";

/// A gzip file of two members (as `cat a.gz b.gz` or pigz make) is read to its end: the files
/// in the second member reach the image.
fn every_gzip_member_is_unpacked() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let tar = cni_tar(|t| t);
    // LICENSE is at the end, so it is in the second member.
    let split = tar.len() / 2;
    let mut tgz = gzip(&tar[..split]);
    tgz.extend(gzip(&tar[split..]));
    serve_cni(&up, tgz);
    let work = Work::new();
    let image = created(&build(&work, &up.mirror(), "cni", CNI, Arch::X86_64, &[]));
    let o = bakery().arg("inspect").arg(&image).output().unwrap();
    let listing = stdout(&o);
    for path in ["/usr/libexec/cni/vrf", "/usr/share/doc/cni-plugins/LICENSE"] {
        assert!(listing.contains(path), "{path} missing:\n{listing}");
    }
}

/// Bytes after the gzip data, non-zero data after the tar end marker, a member claiming
/// 10 GiB, an archive unpacking past a configured limit, and names with control characters
/// are all refused, naming the archive and what is wrong.
fn hostile_archives_are_refused() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let plain = cni_tar(|t| t);

    let mut garbage = gzip(&plain);
    garbage.extend_from_slice(b"<html>appended</html>");
    let mut after_end = plain.clone();
    after_end.extend_from_slice(&[0u8; 1024]);
    after_end.extend_from_slice(b"smuggled");
    let mut padded = plain.clone();
    padded.extend(vec![0u8; 2 << 20]);
    // A header claiming 10 GiB and no data: cheap to make, and refused before a byte of it
    // is unpacked.
    let mut bomb_header = tar::Header::new_gnu();
    bomb_header.set_path("./bridge").unwrap();
    bomb_header.set_size(10 << 30);
    bomb_header.set_mode(0o755);
    bomb_header.set_cksum();
    let bomb = gzip(bomb_header.as_bytes());

    let cases: Vec<(Vec<u8>, &[&str], &str)> = vec![
        (garbage, &[], "bytes after the tar archive that gzip cannot read"),
        (gzip(&after_end), &[], "has data after the end of the tar archive"),
        (gzip(&padded), &["--max-unpacked", "1M"], "unpacks to more than 1048576 bytes"),
        (bomb, &[], "member 'bridge' is 10737418240 bytes, more than the 4294967296 bytes one archive may unpack to"),
        (
            gzip(&cni_tar(|t| t.raw_entry(b"./evil\nname", EntryType::Regular, 0o644, b"x"))),
            &[],
            "member './evil\\x0aname' contains the control character '\\n'",
        ),
        (
            gzip(&cni_tar(|t| t.symlink("./evil", "bridge\u{1b}[2J"))),
            &[],
            "symlink 'evil' has a target containing the control character",
        ),
    ];
    for (tgz, extra, wanted) in cases {
        serve_cni(&up, tgz);
        let work = Work::new();
        let started = Instant::now();
        let o = build(&work, &up.mirror(), "cni", CNI, Arch::X86_64, extra);
        fails(&o, &[CNI_URL, wanted]);
        assert!(started.elapsed() < Duration::from_secs(10), "{wanted}: took {:?}", started.elapsed());
        assert_eq!(work.outputs(), Vec::<String>::new());
    }
    // The padded archive is fine under the default limit: tar pads with zeros.
    serve_cni(&up, gzip(&padded));
    created(&build(&Work::new(), &up.mirror(), "cni", CNI, Arch::X86_64, &[]));
}

/// An executable that is not ELF (an error page saved under the binary's name, with a
/// checksum that matches it) is refused, naming the file, what it is and what was expected.
fn executables_must_be_elf() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let kubelet = kubernetes_path(K8S, Arch::X86_64, "kubelet");
    let page = b"<html><body>404 Not Found</body></html>\n";
    up.put(&format!("{kubelet}.sha256"), Sha256Digest::of(page).to_string());
    up.put(&kubelet, page.to_vec());
    let work = Work::new();
    let o = build(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &[]);
    fails(&o, &[
        "/usr/bin/kubelet: an HTML or XML document (40 bytes), but it is installed as an executable: expected an ELF executable for x86-64",
    ]);
    assert_eq!(work.outputs(), Vec::<String>::new());

    serve_cni(&up, gzip(&cni_tar(|t| t.file("./extra", 0o755, "#!/bin/sh\necho hi\n"))));
    let o = build(&work, &up.mirror(), "cni", CNI, Arch::X86_64, &[]);
    fails(
        &o,
        &[
            CNI_URL.trim_start_matches("archive "),
            "/usr/libexec/cni/extra: a script (18 bytes)",
            "expected an ELF executable for x86-64",
        ],
    );
}

fn keygen(work: &Work) -> std::path::PathBuf {
    let keys = work.dir.path().join("keys");
    let o = bakery().args(["keygen", "--out"]).arg(&keys).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    keys.join("private.pem")
}

/// Every file below `dir` whose name marks it as a temporary file (ours or an older version's).
fn temp_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".bakery-tmp-") || name.starts_with(".tmp") || name.ends_with(".tmp") {
            out.push(e.path().display().to_string());
        }
        if e.file_type().unwrap().is_dir() {
            out.extend(temp_files(&e.path()));
        }
    }
    out
}

/// A `.sig` that cannot be written (here a directory in its place) fails the build before
/// any download, and the previous image stays as it was.
fn an_unwritable_signature_keeps_the_previous_image() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let key = keygen(&work);
    let image = created(&build(&work, &up.mirror(), "cni", CNI, Arch::X86_64, &["--key", key.to_str().unwrap()]));
    let before = std::fs::read(&image).unwrap();
    let sig = work.out().join("cni-v1.6.2-x86-64.raw.sig");
    std::fs::remove_file(&sig).unwrap();
    std::fs::create_dir(&sig).unwrap();
    server.clear_log();
    let o = build(&work, &up.mirror(), "cni", CNI, Arch::X86_64, &["--key", key.to_str().unwrap(), "--force"]);
    fails(&o, &[&format!("{} is a directory", sig.display())]);
    assert_eq!(server.requests(), Vec::<String>::new(), "refused only after downloading");
    assert_eq!(std::fs::read(&image).unwrap(), before, "the previous image was touched");
}

/// The same when the signature's place becomes unwritable during the build: the new image
/// is not put in place, the previous one is back, and no temporary file is left.
fn a_signature_failing_at_the_end_keeps_the_previous_image() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let key = keygen(&work);
    let args = ["--key", key.to_str().unwrap(), "--force"];
    let image = created(&build(&work, &up.mirror(), "kubernetes", K8S, Arch::X86_64, &args));
    let before = std::fs::read(&image).unwrap();
    // A new kubelet, served slowly, so that the test acts while the build downloads.
    let kubelet = kubernetes_path(K8S, Arch::X86_64, "kubelet");
    let new = tiny_executable(Arch::X86_64, "kubelet v1.31.3 rebuilt\n");
    up.put(&format!("{kubelet}.sha256"), Sha256Digest::of(&new).to_string());
    server.set(&kubelet, Response::ok(new).delay(Duration::from_millis(700)));
    // The cached checksum would vouch for the old kubelet.
    std::fs::remove_dir_all(work.cache()).unwrap();
    server.clear_log();
    let child = bakery()
        .args(["create", "kubernetes", K8S, "--arch", "x86-64", "--mirror", &up.mirror()])
        .arg("--cache")
        .arg(work.cache())
        .arg("--output")
        .arg(work.out())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while server.hits(&kubelet) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the build never asked for the kubelet");
        std::thread::sleep(Duration::from_millis(10));
    }
    let sig = signing::signature_path(&image);
    std::fs::remove_file(&sig).unwrap();
    std::fs::create_dir(&sig).unwrap();
    let o = child.wait_with_output().unwrap();
    fails(&o, &[&format!("writing {}", sig.display())]);
    assert_eq!(std::fs::read(&image).unwrap(), before, "the previous image is not back in place");
    assert_eq!(temp_files(&work.out()), Vec::<String>::new());
}

/// An output path that cannot take the image is refused before any download: a file where
/// the directory should be, or a directory where the image should be.
fn outputs_are_checked_before_any_download() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    std::fs::write(work.out(), b"not a directory").unwrap();
    let o = build(&work, &up.mirror(), "cni", CNI, Arch::X86_64, &[]);
    fails(&o, &[&format!("creating the output directory {}", work.out().display())]);
    std::fs::remove_file(work.out()).unwrap();
    let image = work.out().join("cni-v1.6.2-x86-64.raw");
    std::fs::create_dir_all(&image).unwrap();
    let o = build(&work, &up.mirror(), "cni", CNI, Arch::X86_64, &["--force"]);
    fails(&o, &[&format!("{} is a directory", image.display())]);
    assert_eq!(server.requests(), Vec::<String>::new());
}

/// Temporary files and scratch directories left by killed runs (ours, unlocked; an older
/// version's, over an hour old) are removed by the next run; anything else is kept.
fn stale_temporary_files_are_removed() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    let work = Work::new();
    let old = std::time::SystemTime::now() - Duration::from_secs(7200);
    let plant = |path: std::path::PathBuf, dir: bool| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if dir {
            std::fs::create_dir_all(path.join("0")).unwrap();
            std::fs::write(path.join("0/partial"), vec![0u8; 4096]).unwrap();
        } else {
            std::fs::write(&path, vec![0u8; 4096]).unwrap();
        }
        std::fs::File::open(&path).unwrap().set_modified(old).unwrap();
        path
    };
    let stale = [
        plant(work.out().join(".bakery-tmp-1234-deadbeef"), false),
        plant(work.out().join(".cni-v1.6.2-x86-64.raw.AbC123.tmp"), false),
        plant(work.cache().join("sha256/.bakery-tmp-99-0011"), false),
        plant(work.cache().join("sha256/.tmpXyZ123"), false),
        plant(work.cache().join("url/.tmpAbCdEf"), false),
        plant(work.cache().join("tmp/.bakery-tmp-99-aabb"), true),
        plant(work.cache().join("tmp/.tmpQwErTy"), true),
    ];
    let kept = [
        plant(work.out().join("notes.tmp"), false),
        plant(work.out().join("kubernetes-v1.31.3-x86-64.raw"), false),
        work.cache().join("sha256/.tmpFresh1"),
    ];
    std::fs::write(&kept[2], b"an older version's download, still running").unwrap();
    let o = build(&work, &up.mirror(), "cni", CNI, Arch::X86_64, &[]);
    created(&o);
    for p in &stale {
        assert!(!p.exists(), "{} was left", p.display());
        assert!(stderr(&o).contains(&p.display().to_string()) || !p.starts_with(work.out()), "{}", stderr(&o));
    }
    for p in &kept {
        assert!(p.exists(), "{} was removed", p.display());
    }
}

fn main() -> std::process::ExitCode {
    harness::run(vec![
        sysext_tests::test!(html_checksum_page_is_never_cached),
        sysext_tests::test!(a_poisoned_mirror_does_not_poison_the_cache),
        sysext_tests::test!(locked_offline_rebuilds_without_network),
        sysext_tests::test!(a_trickling_server_is_abandoned),
        sysext_tests::test!(a_silent_server_times_out),
        sysext_tests::test!(a_stall_mid_body_times_out),
        sysext_tests::test!(verify_release_over_a_hostile_server_is_bounded),
        sysext_tests::test!(a_full_disk_is_not_retried),
        sysext_tests::test!(a_full_cache_disk_fails_once_naming_the_path).root().tools(&["unshare", "mount"]),
        sysext_tests::test!(duplicate_checksum_entries_are_refused),
        sysext_tests::test!(version_pins_must_look_like_versions),
        sysext_tests::test!(every_gzip_member_is_unpacked),
        sysext_tests::test!(hostile_archives_are_refused),
        sysext_tests::test!(executables_must_be_elf),
        sysext_tests::test!(an_unwritable_signature_keeps_the_previous_image),
        sysext_tests::test!(a_signature_failing_at_the_end_keeps_the_previous_image),
        sysext_tests::test!(outputs_are_checked_before_any_download),
        sysext_tests::test!(stale_temporary_files_are_removed),
    ])
}
