//! `composer compose` killed with SIGKILL at 30 points of its run (a fixed seed picks the
//! delays over the time one full run takes): OUT is absent or complete (e2fsck -fn clean,
//! the extension image readable with its bytes), the input never changes, and the scratch
//! that killed runs leave (beside OUT and in `$TMPDIR`) is gone after the next run.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sysext_tests::disk::{self, DiskSpec};
use sysext_tests::sandbox::FLATCAR_OS_RELEASE;

const RUNS: usize = 30;

/// xorshift64*: the same delays on every run of the test.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Our scratch in `dir`: `.composer-*` staging and `composer-*` private copies.
fn scratch_in(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".composer-") || n.starts_with("composer-"))
        .collect();
    found.sort();
    found
}

fn killed_runs_leave_nothing_half_done() {
    let started = Instant::now();
    let arch = host_arch();
    let work = tempfile::tempdir().unwrap();
    let tmp = work.path().join("tmp");
    let outs = work.path().join("out");
    for d in [&tmp, &outs] {
        std::fs::create_dir(d).unwrap();
    }
    let ext = squashfs_extension(work.path(), "kill", "1.0", arch, 7, 4 << 20);
    let ext_sha = sha256(&ext);
    let mut spec = DiskSpec::new(FLATCAR_OS_RELEASE, arch);
    spec.root_mib = 32;
    let disk = disk::flatcar(work.path(), &spec);
    let input_sha = sha256(&disk.path);
    let out = outs.join("composed.img");
    let installed = format!("/opt/extensions/kill/{}", ext.file_name().unwrap().to_string_lossy());

    let spawn = || {
        composer()
            .env("TMPDIR", &tmp)
            .arg("compose")
            .arg("--image")
            .arg(&disk.path)
            .arg("--out")
            .arg(&out)
            .arg("-e")
            .arg(&ext)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so the kill takes its debugfs and e2fsck children too
            // and none outlives the test.
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let check_out = |what: &str| {
        let fsck = Command::new(composer::disk::e2fs::find_tool("e2fsck"))
            .arg("-fn")
            .arg(format!("{}?offset={}", out.display(), disk.root_offset))
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{what}: OUT exists but e2fsck -fn fails: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        let dumped = work.path().join("dumped.raw");
        let _ = std::fs::remove_file(&dumped);
        dump(&out, disk.root_offset, &installed, &dumped);
        assert_eq!(sha256(&dumped), ext_sha, "{what}: OUT exists but {installed} differs");
    };

    // One full run tells how long the work takes.
    let t0 = Instant::now();
    let o = spawn().wait_with_output().unwrap();
    let full = t0.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_out("the full run");
    std::fs::remove_file(&out).unwrap();

    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let (mut killed, mut left_scratch) = (0, 0);
    for run in 0..RUNS {
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64));
        let child = spawn();
        std::thread::sleep(delay);
        let st = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status().unwrap();
        assert!(st.success(), "run {run}: kill failed");
        let o = child.wait_with_output().unwrap();
        match o.status.signal() {
            Some(9) => killed += 1,
            _ => assert!(o.status.success(), "run {run} failed on its own: {}", String::from_utf8_lossy(&o.stderr)),
        }
        if out.exists() {
            check_out(&format!("run {run} (killed after {delay:?})"));
            std::fs::remove_file(&out).unwrap();
        }
        if !scratch_in(&outs).is_empty() || !scratch_in(&tmp).is_empty() {
            left_scratch += 1;
        }
    }
    assert_eq!(sha256(&disk.path), input_sha, "the input changed");
    assert!(killed >= RUNS / 2, "only {killed} of {RUNS} runs were killed before they finished");
    assert!(left_scratch > 0, "no killed run left scratch behind, so nothing tested the clean-up");

    // The next run removes what the killed ones left, and leaves nothing of its own.
    let o = spawn().wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_out("the run after the kills");
    assert_eq!(scratch_in(&outs), Vec::<String>::new(), "scratch beside OUT");
    assert_eq!(scratch_in(&tmp), Vec::<String>::new(), "scratch in TMPDIR");
    eprintln!(
        "{RUNS} runs killed at random points of a {full:?} run: {killed} killed mid-way, {left_scratch} left scratch behind; {:?} in all",
        started.elapsed()
    );
}

fn main() -> std::process::ExitCode {
    sysext_tests::harness::run(vec![sysext_tests::test!(killed_runs_leave_nothing_half_done)
        .needs(disk_needs())
        .tools(&["mksquashfs", "kill"])])
}
