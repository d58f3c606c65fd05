//! The command line as users see it: every command's long help, pinned. A change to a flag,
//! its help text or its default shows up here for review (`cargo insta review`, or
//! `INSTA_UPDATE=always cargo test -p bakery --test help`).

/// Terminal width the help is rendered for; no line may be wider.
const WIDTH: usize = 100;

#[test]
fn every_command_help_is_pinned_and_fits_the_terminal() {
    for (path, help) in cli_support::long_helps(bakery::cli::command(), WIDTH) {
        for line in help.lines() {
            assert!(line.chars().count() <= WIDTH, "'{path} --help' has a line over {WIDTH} columns: {line:?}");
        }
        insta::assert_snapshot!(path.replace(' ', "-"), help, &format!("{path} --help"));
    }
}

/// The man pages in docs/man are generated from the same definitions and kept in the tree so
/// they can be read without building; this fails when they drift (regenerate with
/// `UPDATE_DOCS=1 cargo test -p bakery --test help`).
#[test]
fn man_pages_in_docs_are_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/man");
    for (file, roff) in cli_support::man_pages(bakery::cli::command()).unwrap() {
        let path = dir.join(&file);
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &roff).unwrap();
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == roff,
            "{} is out of date; run UPDATE_DOCS=1 cargo test -p bakery --test help",
            path.display()
        );
    }
}
