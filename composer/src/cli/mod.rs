//! Command-line interface: one module per subcommand, each validating its arguments into a
//! request type before any I/O happens. Exit codes, error printing and JSON output are the
//! shared plumbing of `cli_support`.

mod compose;
mod inspect;
mod node;
mod provision;
mod serve;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use cli_support::DocCommand;

/// Put systemd system extensions onto stock Flatcar and Ubuntu nodes.
///
/// composer writes extension images into the root filesystem of a copy of a disk image
/// with e2fsprogs (no mounting, no loop devices), after checking that systemd-sysext on that
/// image would actually merge them, or writes Ignition, Butane and cloud-init configs that
/// make a node install them from a signed release while it provisions, or, on the node
/// itself, installs and merges the newest release of each channel (`composer node sync`).
#[derive(Debug, Parser)]
#[command(name = "composer", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Compose(Box<compose::ComposeArgs>),
    Check(compose::CheckArgs),
    Inspect(inspect::InspectArgs),
    Node(node::NodeArgs),
    Provision(Box<provision::ProvisionArgs>),
    Serve(serve::ServeArgs),
    #[command(flatten)]
    Doc(DocCommand),
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Compose(args) => compose::run_compose(*args),
        Command::Check(args) => compose::run_check(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Node(args) => node::run(args),
        Command::Provision(args) => provision::run(*args),
        Command::Serve(args) => serve::run(args),
        Command::Doc(doc) => doc.run(Cli::command()),
    }
}

cli_support::entry_points!(Cli, run);

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("composer").chain(args.iter().copied())).map(|c| c.command)
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_generate() {
        let mut out = Vec::new();
        cli_support::write_completions(Cli::command(), clap_complete::Shell::Zsh, &mut out);
        assert!(String::from_utf8(out).unwrap().contains("compose"));
    }
}
