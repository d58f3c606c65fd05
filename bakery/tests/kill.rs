//! `kill -9` at random points of `bakery create` and `bakery publish`: whatever instant a
//! run dies in, the outputs are a complete, correctly signed image or none, the cache holds
//! only verified entries, the release verifies, and one more successful run leaves no
//! temporary file of ours anywhere. The delays come from a fixed seed, so a failure repeats.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use release_index::source::DirBackend;
use release_index::timestamp::Timestamp;
use release_index::verify::{verify_release, VerifyOptions};
use signing::{PublicKey, Sha256Digest};
use sysext_tests::upstream::kubernetes_path;
use sysext_tests::{Arch, FakeUpstream, FixtureServer, Response};

const KILLS: u64 = 30;

/// Seeded xorshift: the same delays on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Spawns `cmd`, kills it with SIGKILL after `after` (if it is still running), and reaps it.
/// Returns whether it finished by itself.
fn run_and_kill(cmd: &mut Command, after: Duration) -> bool {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let until = Instant::now() + after;
    loop {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        if Instant::now() >= until {
            // SIGKILL: no destructor, no cleanup handler runs.
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Every name below `dir` that marks a temporary file or directory of ours.
fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".bakery-tmp-")
            || name.starts_with(".tmp")
            || name.ends_with(".tmp")
            || name.contains(".swap-")
        {
            out.push(e.path().display().to_string());
        }
        if e.file_type().unwrap().is_dir() {
            out.extend(leftovers(&e.path()));
        }
    }
    out
}

/// The output directory holds a complete image with its own signature, or nothing: never an
/// image beside a missing or wrong signature.
fn check_outputs(out: &Path, image: &str, key: &PublicKey) {
    let path = out.join(image);
    let sig = signing::signature_path(&path);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let sig = std::fs::read(&sig).unwrap_or_else(|e| panic!("{image} present without its signature: {e}"));
            assert!(key.verify(&bytes, &sig), "{image} present with a signature that is not its own");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}"),
    }
    let names: Vec<String> = std::fs::read_dir(out)
        .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    for name in names.iter().filter(|n| !n.starts_with('.')) {
        assert!(name == image || *name == format!("{image}.sig"), "unexpected output {name}");
    }
}

/// Every entry of the digest cache is exactly the bytes its name promises.
fn check_cache(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache.join("sha256")) else { return };
    for e in entries {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        assert_eq!(Sha256Digest::of(&std::fs::read(e.path()).unwrap()).to_hex(), name, "a partial cache entry");
    }
}

fn keys(work: &Work) -> PathBuf {
    let keys = work.dir.path().join("keys");
    let o = bakery().args(["keygen", "--out"]).arg(&keys).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    keys
}

/// A slow-ish upstream: every artifact answers after a delay and streams its bytes, so kills
/// land in downloads as well as in compression and the final renames.
fn slow_upstream(server: &FixtureServer) -> FakeUpstream<'_> {
    let up = upstream(server);
    for bin in ["kubelet", "kubeadm", "kubectl"] {
        let path = kubernetes_path(K8S, Arch::X86_64, bin);
        server.set(&path, Response::ok(up.bytes(&path)).delay(Duration::from_millis(60)));
    }
    up
}

#[test]
fn create_survives_kill_9_anywhere() {
    let server = FixtureServer::start();
    let up = slow_upstream(&server);
    let work = Work::new();
    let keys = keys(&work);
    let public = PublicKey::read_pem(&keys.join("public.pem")).unwrap();
    let image = format!("kubernetes-{K8S}-x86-64.raw");
    // A new cache every other run: the first run of a pair downloads, the second finds what
    // the first left (a complete cache, or a killed run's leftovers).
    let cache_for = |i: u64| work.dir.path().join(format!("cache-{}", i / 2));
    let create = |i: u64| {
        let mut cmd = bakery();
        cmd.env("SOURCE_DATE_EPOCH", (1_700_000_000 + i).to_string())
            .args(["create", "kubernetes", K8S, "--arch", "x86-64", "--mirror", &up.mirror(), "--force", "--key"])
            .arg(keys.join("private.pem"))
            .arg("--cache")
            .arg(cache_for(i))
            .arg("--output")
            .arg(work.out());
        cmd
    };

    // How long a build takes here, with an empty cache and with a warm one (the faster of
    // two tries each, the first being slowed by cold page caches): kills are spread over
    // that, a little beyond, so that some land in the last steps and a few runs finish.
    let time = |i: u64| {
        let started = Instant::now();
        let o = create(i).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        started.elapsed().as_millis() as u64
    };
    let (mut fresh, mut warm) = (u64::MAX, u64::MAX);
    for _ in 0..2 {
        fresh = fresh.min(time(1000));
        warm = warm.min(time(1000));
        std::fs::remove_dir_all(cache_for(1000)).unwrap();
    }
    eprintln!("a build takes {fresh} ms with an empty cache, {warm} ms with a warm one");
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let (mut killed, mut runs) = (0, 0);
    while killed < KILLS && runs < 3 * KILLS {
        let i = runs;
        runs += 1;
        let span = if i % 2 == 0 { fresh } else { warm };
        let delay = Duration::from_millis(rng.below(span * 11 / 10));
        let done = run_and_kill(&mut create(i), delay);
        eprintln!("create {i}: kill after {delay:?}: {}", if done { "finished first" } else { "killed" });
        killed += u64::from(!done);
        check_outputs(&work.out(), &image, &public);
        check_cache(&cache_for(i));
    }
    assert_eq!(killed, KILLS, "only {killed} of {runs} builds were still running when their kill came");

    // Leftovers of the killed runs are removed by the next run of each cache; the grace
    // period for unlocked leftovers is 2 s.
    std::thread::sleep(Duration::from_millis(2100));
    for pair in 0..runs.div_ceil(2) {
        let o = create(pair * 2).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    check_outputs(&work.out(), &image, &public);
    assert_eq!(leftovers(work.dir.path()), Vec::<String>::new());
}

#[test]
fn publish_survives_kill_9_anywhere() {
    let server = FixtureServer::start();
    let up = upstream(&server);
    up.kubernetes("v1.31.4").kubernetes("v1.31.5");
    let work = Work::new();
    let keys = keys(&work);
    let public = PublicKey::read_pem(&keys.join("public.pem")).unwrap();
    let mut images = Vec::new();
    for (version, arch) in [(K8S, Arch::X86_64), ("v1.31.4", Arch::X86_64), ("v1.31.5", Arch::Arm64)] {
        images.push(created(&create(&work, &up.mirror(), "kubernetes", version, arch, &[])));
    }
    let release = work.dir.path().join("release");
    let publish = |i: u64| {
        let mut cmd = bakery();
        cmd.arg("publish");
        // Every third run only re-signs; the others add an image (or find it unchanged).
        if i % 3 != 2 {
            cmd.arg(&images[(i % 3) as usize + (i as usize / 3) % 2]);
        }
        cmd.arg("--to").arg(&release).arg("--key").arg(keys.join("private.pem"));
        cmd.args(["--base-url", "https://sysext.example.org/ext/", "--keep", "2"]);
        cmd
    };
    let verifies = || {
        let opts = VerifyOptions { pubkey: &public, now: Timestamp::now(), min_serial: None, inspect_images: true };
        let report = verify_release(&DirBackend::new(release.clone()), &opts);
        assert!(report.ok(), "the release does not verify after a kill: {:#?}", report.problems);
        report.serial.unwrap()
    };

    let o = publish(0).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // The faster of two re-signing publishes (the first one ran with cold caches).
    let mut span = u64::MAX;
    for _ in 0..2 {
        let started = Instant::now();
        let o = publish(2).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        span = span.min(started.elapsed().as_millis() as u64 * 11 / 10);
    }
    eprintln!("a publish takes {span} ms");
    let mut serial = verifies();

    let mut rng = Rng(0x5eed_cafe_f00d_0002);
    let (mut killed, mut runs) = (0, 0);
    while killed < KILLS && runs < 3 * KILLS {
        let i = runs;
        runs += 1;
        let delay = Duration::from_millis(rng.below(span));
        let done = run_and_kill(&mut publish(i), delay);
        killed += u64::from(!done);
        let now = verifies();
        eprintln!(
            "publish {i}: kill after {delay:?}: {}, serial {now}",
            if done { "finished first" } else { "killed" }
        );
        assert!(now == serial || now == serial + 1, "serial went from {serial} to {now}");
        serial = now;
    }
    assert_eq!(killed, KILLS, "only {killed} of {runs} publishes were still running when their kill came");

    let o = publish(runs).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(verifies(), serial + 1);
    assert_eq!(leftovers(work.dir.path()), Vec::<String>::new());
    let generations: Vec<_> = std::fs::read_dir(work.dir.path().join("release.generations"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(generations.len(), 2, "{generations:?}");
}
