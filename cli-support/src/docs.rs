//! Shell completions and man pages, generated from the clap definitions so they cannot drift
//! from the real command line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Command};
use clap_complete::Shell;

/// The documentation commands every binary has: `completions SHELL` and the hidden `man`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DocCommand {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(CompletionsArgs),
    /// Write man pages for every command into a directory.
    #[command(hide = true)]
    Man(ManArgs),
}

impl DocCommand {
    /// Runs the command for the program `cmd` describes.
    pub fn run(self, cmd: Command) -> Result<()> {
        match self {
            DocCommand::Completions(args) => write_completions(cmd, args.shell, &mut std::io::stdout()),
            DocCommand::Man(args) => {
                for path in write_man_pages(cmd, &args.out)? {
                    println!("{}", path.display());
                }
            }
        }
        Ok(())
    }
}

/// `completions SHELL`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_name = "SHELL")]
    pub shell: Shell,
}

/// `man --out DIR`.
#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Directory to write the man pages into (one per command and subcommand).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Writes the completion script for `shell` to `out`.
pub fn write_completions(mut cmd: Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Every man page of `cmd` and its subcommands as (file name, roff text): `bakery.1`,
/// `bakery-create.1`, ….
pub fn man_pages(cmd: Command) -> Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: &Command, prefix: &str, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
        let name = if prefix.is_empty() { cmd.get_name().to_owned() } else { format!("{prefix}-{}", cmd.get_name()) };
        let page = cmd.clone().name(name.clone());
        let mut roff = Vec::new();
        clap_mangen::Man::new(page).render(&mut roff).with_context(|| format!("rendering the man page of {name}"))?;
        out.push((format!("{name}.1"), roff));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            walk(sub, &name, out)?;
        }
        Ok(())
    }
    let mut cmd = cmd;
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, "", &mut out)?;
    Ok(out)
}

/// Writes the man pages of `cmd` into `dir`.
pub fn write_man_pages(cmd: Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (file, roff) in man_pages(cmd)? {
        let path = dir.join(file);
        std::fs::write(&path, roff).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Every command path of `cmd` (`["bakery"]`, `["bakery", "create"]`, …) with its long help as
/// a terminal of `width` columns would show it, hidden commands left out: what the help
/// snapshot tests pin.
pub fn long_helps(cmd: Command, width: usize) -> Vec<(String, String)> {
    fn walk(cmd: &Command, prefix: &str, out: &mut Vec<(String, String)>) {
        let name = if prefix.is_empty() { cmd.get_name().to_owned() } else { format!("{prefix} {}", cmd.get_name()) };
        out.push((name.clone(), cmd.clone().render_long_help().to_string()));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            walk(sub, &name, out);
        }
    }
    let mut cmd = cmd.term_width(width).max_term_width(width);
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, "", &mut out);
    out
}
