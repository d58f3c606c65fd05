//! Embeds the recipes in `../extensions` into the binary, so an installed `bakery` works
//! without a checkout; `--recipes DIR` still reads recipes from disk.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf, u32)>) {
    let mut entries: Vec<_> = fs::read_dir(dir).expect("read extensions dir").map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        let meta = fs::symlink_metadata(&path).expect("stat recipe file");
        if meta.is_dir() {
            collect(root, &path, out);
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).unwrap().to_str().expect("utf-8 recipe path").to_owned();
            out.push((rel, path.canonicalize().unwrap(), meta.permissions().mode() & 0o7777));
        } else {
            panic!("{}: recipes may only contain regular files and directories", path.display());
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../extensions");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    if root.is_dir() {
        collect(&root, &root, &mut files);
    }
    let mut code = String::from("/// Recipe files embedded at build time: (path relative to extensions/, contents, mode).\npub static EMBEDDED: &[(&str, &[u8], u32)] = &[\n");
    for (rel, abs, mode) in &files {
        println!("cargo:rerun-if-changed={}", abs.display());
        writeln!(code, "    ({rel:?}, include_bytes!({:?}), 0o{mode:o}),", abs.display().to_string()).unwrap();
    }
    code.push_str("];\n");
    fs::write(PathBuf::from(env::var("OUT_DIR").unwrap()).join("embedded_recipes.rs"), code).unwrap();
}
