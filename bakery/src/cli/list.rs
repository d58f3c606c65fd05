use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::create::load_recipes;

/// List the recipes and the architectures they build.
#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// Read recipes from this directory instead of the built-in ones.
    #[arg(long, value_name = "DIR", env = "BAKERY_RECIPES")]
    recipes: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct RecipeListing<'a> {
    name: &'a str,
    description: &'a str,
    example_version: &'a str,
    arches: Vec<String>,
    artifacts: Vec<&'a str>,
}

pub(super) fn run(args: ListArgs) -> Result<()> {
    let recipes = load_recipes(args.recipes.as_ref())?;
    let listing: Vec<RecipeListing<'_>> = recipes
        .iter()
        .map(|r| RecipeListing {
            name: r.name.as_str(),
            description: &r.description,
            example_version: &r.version.example,
            arches: r.arch.keys().map(ToString::to_string).collect(),
            artifacts: r.artifacts.iter().map(|a| a.name.as_str()).collect(),
        })
        .collect();
    if args.json {
        cli_support::print_json(&listing)?;
    } else {
        for r in &listing {
            println!("{:<12} {:<14} {:<14} {}", r.name, r.arches.join(","), r.example_version, r.description);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;

    #[test]
    fn parses() {
        assert!(matches!(parse(&["list", "--json"]).unwrap(), Command::List(ref a) if a.json));
    }
}
