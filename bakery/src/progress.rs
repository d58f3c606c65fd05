//! Progress bars: stderr only, and drawn only when stderr is a terminal (indicatif hides
//! them otherwise), so pipes and CI logs stay clean.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The style of every byte-counting bar.
pub fn byte_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>14} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec}")
        .expect("valid template")
        .progress_chars("=> ")
}

/// A standalone byte-counting bar on stderr.
pub fn bytes_bar(prefix: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(byte_style());
    bar.set_prefix(prefix.to_owned());
    bar
}
