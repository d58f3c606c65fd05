//! `bakery inspect`: an image's digest, extension-release, inputs and files, read back with
//! the shared reader ([`release_index::image`]).

pub use release_index::image::{inspect, Entry, Inspection};

/// Human-readable report.
pub fn render(report: &Inspection) -> String {
    let mut out = format!(
        "image:       {}\nsha256:      {}\nsize:        {} bytes\ncompression: {}, {} KiB blocks\n",
        report.path.display(),
        report.sha256,
        report.size,
        report.contents.compression,
        report.contents.block_size / 1024
    );
    for (name, release) in &report.contents.extension_release {
        out.push_str(&format!("\nextension-release.{name}:\n"));
        for line in release.render().lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    for (name, lock) in &report.contents.inputs {
        out.push_str(&format!("\ninputs ({name}):\n"));
        for input in lock.get("inputs").and_then(|v| v.as_array()).into_iter().flatten() {
            let field = |k: &str| input.get(k).and_then(|v| v.as_str()).unwrap_or("");
            out.push_str(&format!("  {:<9} {}  {}\n", field("kind"), field("sha256"), field("url")));
        }
    }
    out.push_str("\nfiles:\n");
    for e in &report.contents.entries {
        let size = e.size.map_or_else(String::new, |s| s.to_string());
        let target = e.target.as_ref().map_or_else(String::new, |t| format!(" -> {t}"));
        out.push_str(&format!("  {:<7} {} {}:{} {:>10}  {}{}\n", e.kind, e.mode, e.uid, e.gid, size, e.path, target));
    }
    out
}
