//! Both command lines as users see them: every command's long help, pinned, and the man pages
//! in docs/man generated from the same definitions. A change to a flag, its help text or its
//! default shows up here for review (`cargo insta review`, or
//! `INSTA_UPDATE=always cargo test -p composer --test help`); the man pages are regenerated
//! with `UPDATE_DOCS=1 cargo test -p composer --test help`.

/// Terminal width the help is rendered for; no line may be wider.
const WIDTH: usize = 100;

fn programs() -> [clap::Command; 2] {
    [bakery::cli::command(), composer::cli::command()]
}

#[test]
fn every_command_help_is_pinned_and_fits_the_terminal() {
    for program in programs() {
        for (path, help) in cli_support::long_helps(program, WIDTH) {
            for line in help.lines() {
                assert!(line.chars().count() <= WIDTH, "'{path} --help' has a line over {WIDTH} columns: {line:?}");
            }
            insta::assert_snapshot!(path.replace(' ', "-"), help, &format!("{path} --help"));
        }
    }
}

/// The man pages are kept in the tree so they can be read without building.
#[test]
fn man_pages_in_docs_are_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/man");
    for program in programs() {
        for (file, roff) in cli_support::man_pages(program).unwrap() {
            let path = dir.join(&file);
            if std::env::var_os("UPDATE_DOCS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &roff).unwrap();
                continue;
            }
            let committed = std::fs::read(&path).unwrap_or_default();
            assert!(
                committed == roff,
                "{} is out of date; run UPDATE_DOCS=1 cargo test -p composer --test help",
                path.display()
            );
        }
    }
}
