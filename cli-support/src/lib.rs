//! What bakery's and composer's command lines share, written once: how a run ends (exit
//! codes, the error chain on stderr), how results are printed for scripts, the network
//! options every downloading command takes, and the shell completions and man pages
//! generated from the clap definitions.
#![warn(missing_docs)]

mod docs;
mod net;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use serde::Serialize;

pub use docs::{long_helps, man_pages, write_completions, write_man_pages, CompletionsArgs, DocCommand, ManArgs};
pub use net::{NetArgs, RegistryArgs, Remote, RemoteArgs};

/// Parses `args` (including the program name), runs the command, prints any error with its
/// full context chain, and returns the exit code: 0 on success, 1 when the command failed,
/// 2 for a usage error (clap's convention).
pub fn main_from_iter<C, I, T>(args: I, run: impl FnOnce(C) -> anyhow::Result<()>) -> ExitCode
where
    C: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match C::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Defines a binary's two public entry points from its clap type and its `run` function:
/// `main_from_iter` (what `main.rs` and in-process CLI tests call) and `command` (the clap
/// definition, for generated documentation and help snapshots).
#[macro_export]
macro_rules! entry_points {
    ($cli:ty, $run:path) => {
        /// Parses `args` (including the program name), runs the command, prints any error with
        /// its full context chain, and returns the process exit code.
        pub fn main_from_iter<I, T>(args: I) -> ::std::process::ExitCode
        where
            I: IntoIterator<Item = T>,
            T: Into<::std::ffi::OsString> + Clone,
        {
            $crate::main_from_iter(args, $run)
        }

        /// The clap definition, for generated documentation and tests.
        pub fn command() -> ::clap::Command {
            <$cli as ::clap::CommandFactory>::command()
        }
    };
}

/// Prints `value` as pretty JSON on stdout, the form `--json` promises scripts.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
