//! Cross-checks with the real tools: what our code writes, a stock consumer reads the same way
//! (and the other way round). Each test declares the tool it needs; where one is missing the
//! test is reported as ignored, and in CI (which installs them all) that is a failure.

use std::cmp::Ordering;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use release_index::sha256sums::Sha256Sums;
use signing::{keygen, PrivateKey, PublicKey, Sha256Digest};
use sysext_model::uapi_version::compare;
use sysext_tests::harness::Need;
use sysext_tests::{tiny_executable, upstream, Arch, FakeUpstream, FixtureServer, TarGz};

/// Pairs whose order matters for sysext channels.
const CASES: &[(&str, &str)] = &[
    ("1.30.2", "1.30.10"),
    ("1.31.0~rc1", "1.31.0"),
    ("1.31.0", "1.31.0-rc.1"),
    ("v1.31.0", "1.31.0"),
    ("1.0", "1.0.0"),
    ("v1.31.3", "v1.31.10"),
    ("v1.31.9", "v1.32.0"),
    ("2.0.4", "2.0.4+build1"),
    ("2.0.4", "2.0.40"),
    ("1.2.3", "1.2.3"),
    ("001", "1"),
    ("1.0a", "1.0b"),
    ("1.0abc", "1.0abcd"),
    ("1_1", "1.1"),
    ("1^git1", "1.1"),
    ("1.9", "1a"),
    ("122.1", "123~rc1"),
    ("123~rc1", "123~rc2"),
    ("2", "10"),
    ("a", "1"),
];

/// The real consumer decides: systemd-analyze compare-versions must agree on every case.
fn version_order_agrees_with_systemd_analyze() {
    for (a, b) in CASES {
        assert_eq!(compare(a, b), compare(b, a).reverse(), "{a} vs {b} is not antisymmetric");
    }
    for (a, b) in CASES.iter().flat_map(|&(a, b)| [(a, b), (b, a)]) {
        let out = Command::new("systemd-analyze").args(["compare-versions", a, b]).output().unwrap();
        // Exit codes encode the result and differ between releases; the printed form does not.
        let text = String::from_utf8_lossy(&out.stdout);
        let theirs = if text.contains(" < ") {
            Ordering::Less
        } else if text.contains(" > ") {
            Ordering::Greater
        } else if text.contains(" == ") {
            Ordering::Equal
        } else {
            panic!("unexpected output for {a} {b}: {text}")
        };
        assert_eq!(compare(a, b), theirs, "{a} vs {b}: systemd says {text}");
    }
}

fn openssl_verifies_our_signatures_and_we_verify_openssls() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path()).unwrap();
    let (private, public) = (dir.path().join("private.pem"), dir.path().join("public.pem"));
    let file = dir.path().join("SHA256SUMS");
    std::fs::write(&file, "abc  x\n").unwrap();
    let sig = PrivateKey::read_pem(&private).unwrap().sign_file(&file).unwrap();
    let out = Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
        .arg(&public)
        .arg("-rawin")
        .arg("-in")
        .arg(&file)
        .arg("-sigfile")
        .arg(&sig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl refused: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The other direction: OpenSSL signs with our key file, we verify.
    std::fs::remove_file(&sig).unwrap();
    let out = Command::new("openssl")
        .args(["pkeyutl", "-sign", "-inkey"])
        .arg(&private)
        .arg("-rawin")
        .arg("-in")
        .arg(&file)
        .arg("-out")
        .arg(&sig)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl could not use our private key: {}", String::from_utf8_lossy(&out.stderr));
    PublicKey::read_pem(&public).unwrap().verify_file(&file).unwrap();

    // And OpenSSL derives the same public key from our private key.
    let out = Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&private).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), std::fs::read_to_string(&public).unwrap());
}

fn gnu_sha256sum_checks_what_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Sha256Sums::new();
    for (name, body) in [("a-1-x86-64.raw", &b"one"[..]), ("b-2-arm64.raw", b"two"), ("noop.conf", b"")] {
        std::fs::write(dir.path().join(name), body).unwrap();
        s.insert(name, Sha256Digest::of(body)).unwrap();
    }
    std::fs::write(dir.path().join("SHA256SUMS"), s.to_string()).unwrap();
    let out =
        Command::new("sha256sum").args(["-c", "--strict", "SHA256SUMS"]).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // And we read back exactly what sha256sum writes.
    let out = Command::new("sha256sum")
        .args(["a-1-x86-64.raw", "b-2-arm64.raw", "noop.conf"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(Sha256Sums::parse(&String::from_utf8(out.stdout).unwrap()).unwrap(), s);
}

/// Writes `bytes` to an executable temp file and returns the directory guard and path.
fn write_executable(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, path)
}

/// Runs `path`, retrying on ETXTBSY: another test thread forking while our write fd was open
/// leaks that fd into its child until exec, which makes our exec fail transiently.
fn run(path: &std::path::Path) -> std::process::Output {
    for _ in 0..50 {
        match Command::new(path).output() {
            Err(e) if e.raw_os_error() == Some(26) => std::thread::sleep(std::time::Duration::from_millis(20)),
            other => return other.unwrap(),
        }
    }
    panic!("{} stayed busy (ETXTBSY)", path.display());
}

fn x86_64_runs_and_prints_exactly_the_message() {
    for message in ["kubelet v1.31.3 linux/amd64\n", "", "no newline", "ünïcödé ✓\n"] {
        let (_dir, path) = write_executable(&tiny_executable(Arch::X86_64, message));
        let out = run(&path);
        assert!(out.status.success(), "{message:?}: {:?}", out.status);
        assert_eq!(String::from_utf8(out.stdout).unwrap(), message);
        assert!(out.stderr.is_empty());
    }
}

fn readelf_reports_the_machine() {
    for (arch, expected) in [(Arch::X86_64, "Advanced Micro Devices X86-64"), (Arch::Arm64, "AArch64")] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny");
        std::fs::write(&path, tiny_executable(arch, "x\n")).unwrap();
        let out = Command::new("readelf").arg("-h").arg("-l").arg(&path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty(), "readelf warned: {}", String::from_utf8_lossy(&out.stderr));
        let machine = text.lines().find(|l| l.trim_start().starts_with("Machine:")).unwrap();
        assert!(machine.trim_end().ends_with(expected), "{machine}");
        assert!(text.contains("EXEC (Executable file)"), "{text}");
        assert!(text.contains("LOAD"), "{text}");
    }
}

/// `tar -tzv` output of GNU tar for an archive.
fn gnu_tar_list(tgz: &[u8], extra: &[&str]) -> String {
    let mut child = Command::new("tar")
        .args(["-tzv", "-f", "-"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tar");
    child.stdin.take().unwrap().write_all(tgz).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn hostile_names_survive_verbatim_in_gnu_tar() {
    // -P: GNU tar strips a leading '/' from listed names unless told not to.
    let listing = gnu_tar_list(&TarGz::hostile_sample().build(), &["-P"]);
    let names: Vec<&str> = listing.lines().map(|l| l.split_whitespace().nth(5).unwrap()).collect();
    assert_eq!(
        names,
        [
            "../escape.txt",
            "/etc/absolute.txt",
            "bin/../../up",
            "bad\\377name", // GNU tar escapes unprintable bytes in listings
            "fifo",
            "evil-link",
            "evil-hard",
        ],
        "{listing}"
    );
    assert!(listing.contains("evil-link -> ../../../etc/passwd"), "{listing}");
    assert!(listing.contains("evil-hard link to /etc/shadow"), "{listing}");
    assert!(listing.lines().all(|l| l.contains(" 0/0 ")), "{listing}");
    assert!(listing.lines().all(|l| l.contains("1970-01-01")), "{listing}");
}

/// GNU tar lists the served tarballs as upstream's are: root-owned, the real modes.
fn gnu_tar_lists_the_served_tarballs() {
    let server = FixtureServer::start();
    let up = FakeUpstream::new(&server);
    up.containerd("2.0.4", "v1.2.5");
    let listing = gnu_tar_list(&up.bytes(&upstream::containerd_tarball_path("2.0.4", Arch::Arm64)), &[]);
    assert!(listing.lines().next().unwrap().starts_with("drwxr-xr-x 0/0"), "{listing}");
    assert!(listing.contains("-rwxr-xr-x 0/0") && listing.contains(" bin/ctr\n"), "{listing}");
}

/// `is_root` reads /proc/self/status; `id -u` asks the kernel another way.
fn is_root_agrees_with_id() {
    let out = Command::new("id").arg("-u").output().unwrap();
    let uid = String::from_utf8(out.stdout).unwrap();
    assert_eq!(sysext_tests::is_root(), uid.trim() == "0");
}

/// The x86-64 fixture executable prints messages longer than 64 KiB (upper length bits).
fn x86_64_prints_a_long_message() {
    let message = "x".repeat(70_000);
    let (_dir, path) = write_executable(&tiny_executable(Arch::X86_64, &message));
    let out = run(&path);
    assert!(out.status.success());
    assert_eq!(out.stdout, message.as_bytes());
}

/// GNU tar reads the GNU long-name records our fixture archives use.
fn gnu_tar_reads_long_names() {
    let long = format!("{}/file", "d".repeat(150));
    let long_target = format!("../{}", "t".repeat(120));
    let tgz = TarGz::new().file(&long, 0o600, "data").symlink("short", &long_target).build();
    let listing = gnu_tar_list(&tgz, &[]);
    assert!(listing.contains(&long), "{listing}");
    assert!(listing.contains(&format!("short -> {long_target}")), "{listing}");
}

fn main() -> std::process::ExitCode {
    sysext_tests::harness::run(vec![
        sysext_tests::test!(version_order_agrees_with_systemd_analyze).tools(&["systemd-analyze"]),
        sysext_tests::test!(openssl_verifies_our_signatures_and_we_verify_openssls).tools(&["openssl"]),
        sysext_tests::test!(gnu_sha256sum_checks_what_we_write).tools(&["sha256sum"]),
        sysext_tests::test!(x86_64_runs_and_prints_exactly_the_message).needs([Need::X86Host]),
        sysext_tests::test!(x86_64_prints_a_long_message).needs([Need::X86Host]),
        sysext_tests::test!(gnu_tar_reads_long_names).tools(&["tar"]),
        sysext_tests::test!(readelf_reports_the_machine).tools(&["readelf"]),
        sysext_tests::test!(hostile_names_survive_verbatim_in_gnu_tar).tools(&["tar"]),
        sysext_tests::test!(gnu_tar_lists_the_served_tarballs).tools(&["tar"]),
        sysext_tests::test!(is_root_agrees_with_id).tools(&["id"]),
    ])
}
