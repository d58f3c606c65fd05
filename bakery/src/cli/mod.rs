//! Command-line interface: one module per subcommand, each validating its arguments into a
//! request type before any I/O happens. Exit codes, error printing and JSON output are the
//! shared plumbing of `cli_support`.

mod create;
mod inspect;
mod keys;
mod list;
mod mirror;
mod publish;
mod verify_release;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use cli_support::DocCommand;

/// Build reproducible systemd-sysext images for Kubernetes nodes.
///
/// bakery downloads upstream release binaries, verifies them against their published
/// checksums while downloading, lays them out with their systemd units, and writes a
/// squashfs system extension that systemd-sysext merges on Flatcar, Ubuntu and other
/// systemd distributions.
#[derive(Debug, Parser)]
#[command(name = "bakery", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Create(Box<create::CreateArgs>),
    List(list::ListArgs),
    Inspect(inspect::InspectArgs),
    Keygen(keys::KeygenArgs),
    Sign(keys::SignArgs),
    Verify(keys::VerifyArgs),
    Vouch(keys::VouchArgs),
    PgpKeyring(keys::PgpKeyringArgs),
    Publish(publish::PublishArgs),
    Mirror(mirror::MirrorArgs),
    VerifyRelease(verify_release::VerifyReleaseArgs),
    #[command(flatten)]
    Doc(DocCommand),
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Create(args) => create::run(*args),
        Command::List(args) => list::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Keygen(args) => keys::keygen(args),
        Command::Sign(args) => keys::sign(args),
        Command::Verify(args) => keys::verify(args),
        Command::Vouch(args) => keys::vouch(args),
        Command::PgpKeyring(args) => keys::pgp_keyring(args),
        Command::Publish(args) => publish::run(args),
        Command::Mirror(args) => mirror::run(args),
        Command::VerifyRelease(args) => verify_release::run(args),
        Command::Doc(doc) => doc.run(Cli::command()),
    }
}

cli_support::entry_points!(Cli, run);

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("bakery").chain(args.iter().copied())).map(|c| c.command)
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_and_man_pages_generate() {
        assert!(matches!(parse(&["completions", "bash"]).unwrap(), Command::Doc(DocCommand::Completions(_))));
        let mut out = Vec::new();
        cli_support::write_completions(Cli::command(), clap_complete::Shell::Bash, &mut out);
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains("verify-release"), "{script}");
        let pages = cli_support::man_pages(Cli::command()).unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"bakery.1") && names.contains(&"bakery-create.1"), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("-man")), "the hidden man command has no page: {names:?}");
    }
}
