use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::inspect::{inspect, render};

/// Show an image's extension-release, inputs, files with modes and sizes, and digest.
#[derive(Debug, Args)]
pub(super) struct InspectArgs {
    /// Image file.
    image: PathBuf,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: InspectArgs) -> Result<()> {
    let report = inspect(&args.image).with_context(|| format!("inspecting {}", args.image.display()))?;
    if args.json {
        cli_support::print_json(&report)?;
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;

    #[test]
    fn parses() {
        assert!(matches!(parse(&["inspect", "x.raw"]).unwrap(), Command::Inspect(_)));
        assert!(parse(&["inspect"]).is_err());
    }
}
