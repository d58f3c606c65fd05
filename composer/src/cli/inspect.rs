use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::compose::FactArgs;
use crate::disk::inspect::inspect;

/// Show partitions, the detected distribution, os-release and installed extensions.
#[derive(Debug, Args)]
pub(super) struct InspectArgs {
    /// Disk image: raw, qcow2, or compressed raw.
    #[arg(long, value_name = "IN")]
    image: PathBuf,
    #[command(flatten)]
    facts: FactArgs,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) fn run(args: InspectArgs) -> Result<()> {
    let overrides = args.facts.overrides();
    let report = inspect(&args.image, &overrides).with_context(|| format!("inspecting {}", args.image.display()))?;
    if args.json {
        cli_support::print_json(&report)?;
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;

    #[test]
    fn parses() {
        assert!(matches!(parse(&["inspect", "--image", "i", "--json"]).unwrap(), Command::Inspect(ref a) if a.json));
    }
}
