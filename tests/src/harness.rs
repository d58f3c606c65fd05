//! The test runner for tests that need something a machine may lack (root, a tool, a
//! supported host architecture), with one rule everywhere: a test that cannot run here is
//! reported as **ignored** in the runner's summary (`test x ... ignored, needs root`), never
//! as a pass that silently returned early; under [`NO_SKIP_ENV`] (set by CI, which has
//! everything) it fails instead.
//!
//! libtest cannot decide at run time that a test is ignored, so test binaries with such
//! tests use `harness = false` and list their tests in `main`, where each declares what it
//! needs:
//!
//! ```no_run
//! use sysext_tests::harness::{self, Test};
//!
//! fn merges() { /* needs root */ }
//! fn plain() {}
//!
//! fn main() -> std::process::ExitCode {
//!     harness::run(vec![
//!         sysext_tests::test!(merges).root().tools(&["systemd-sysext", "unshare"]),
//!         sysext_tests::test!(plain),
//!     ])
//! }
//! ```
//!
//! A test function left out of the list is dead code, which the workspace's lints turn into
//! an error, so no test can be forgotten.

use std::process::ExitCode;

use crate::NO_SKIP_ENV;

/// Something a test needs from the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// Effective UID 0.
    Root,
    /// An executable on `PATH` (or in `/usr/sbin`, `/sbin`).
    Tool(&'static str),
    /// A host architecture this project builds for (x86-64 or arm64).
    SupportedHost,
    /// An x86-64 host (tests that execute x86-64 binaries).
    X86Host,
    /// Root and loop devices (`/dev/loop-control`), for kernel mounts of image files.
    LoopDevices,
}

impl Need {
    /// Why the need is unmet here, if it is.
    pub fn unmet(&self) -> Option<String> {
        match self {
            Need::Root if !crate::is_root() => Some("needs root".into()),
            Need::Tool(t) if !tool_available(t) => Some(format!("needs {t}, which is not installed")),
            Need::SupportedHost if sysext_model::Arch::host().is_none() => Some("needs an x86-64 or arm64 host".into()),
            Need::X86Host if sysext_model::Arch::host() != Some(sysext_model::Arch::X86_64) => {
                Some("needs an x86-64 host".into())
            }
            Need::LoopDevices if !crate::is_root() || !std::path::Path::new("/dev/loop-control").exists() => {
                Some("needs root and /dev/loop-control".into())
            }
            _ => None,
        }
    }
}

/// Whether an executable is installed (on `PATH`, or in the sbin directories a non-root
/// `PATH` often lacks).
pub fn tool_available(tool: &str) -> bool {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/lib/systemd".into()])
        .any(|d| d.join(tool).is_file())
}

/// One test and what it needs.
#[derive(Debug)]
pub struct Test {
    name: &'static str,
    run: fn(),
    needs: Vec<Need>,
}

impl Test {
    /// A test that needs nothing (see [`crate::test!`] for naming it after its function).
    pub fn new(name: &'static str, run: fn()) -> Self {
        Self { name, run, needs: Vec::new() }
    }

    /// Needs root.
    pub fn root(self) -> Self {
        self.needs([Need::Root])
    }

    /// Needs these executables.
    pub fn tools(self, tools: &[&'static str]) -> Self {
        self.needs(tools.iter().map(|t| Need::Tool(t)))
    }

    /// Needs these.
    pub fn needs(mut self, needs: impl IntoIterator<Item = Need>) -> Self {
        self.needs.extend(needs);
        self
    }

    fn unmet(&self) -> Vec<String> {
        self.needs.iter().filter_map(Need::unmet).collect()
    }
}

/// `Test::new("name", name)`.
#[macro_export]
macro_rules! test {
    ($f:path) => {
        $crate::harness::Test::new(stringify!($f), $f)
    };
}

/// Whether skips are forbidden ([`NO_SKIP_ENV`] set to anything but empty or `0`).
pub fn skips_forbidden() -> bool {
    std::env::var_os(NO_SKIP_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Runs the tests with libtest's command line and output format; returns the exit code.
pub fn run(tests: Vec<Test>) -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let forbid = skips_forbidden();
    let trials = tests
        .into_iter()
        .map(|t| {
            let unmet = t.unmet();
            let run = t.run;
            let name = t.name;
            let why = unmet.join(", ");
            if unmet.is_empty() {
                libtest_mimic::Trial::test(name, move || {
                    run();
                    Ok(())
                })
            } else if forbid {
                libtest_mimic::Trial::test(name, move || {
                    Err(format!("{why}, and {NO_SKIP_ENV} forbids skipping it").into())
                })
            } else {
                // libtest-mimic prints no reason for ignored tests; say it once, up front.
                eprintln!("SKIPPED: {name}: {why}");
                libtest_mimic::Trial::test(name, move || Err(format!("cannot run here: {why}").into()))
                    .with_ignored_flag(true)
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_report_what_is_missing() {
        assert_eq!(
            Need::Tool("surely-not-a-real-tool-0f3a").unmet().as_deref(),
            Some("needs surely-not-a-real-tool-0f3a, which is not installed")
        );
        assert_eq!(Need::Tool("sh").unmet(), None);
        assert_eq!(Need::Root.unmet().is_none(), crate::is_root());
        let t = Test::new("x", || {}).root().tools(&["sh", "surely-not-a-real-tool-0f3a"]);
        assert_eq!(t.unmet().len(), usize::from(!crate::is_root()) + 1);
    }
}
