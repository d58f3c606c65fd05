//! Upstream tarballs read as hostile input: what a member may be called, where its links may
//! point, and how much a `.tar.gz` may unpack to.
//!
//! The gzip layer is read in full: every member of a multi-member file (what `cat a.gz b.gz`
//! and parallel compressors produce; reading only the first would silently drop files), and
//! nothing after the last member, since bytes gzip cannot read mean the file is not what
//! upstream published. The unpacked size is bounded so that a small download cannot fill the
//! cache (and then the image) with gigabytes of zeros.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use flate2::bufread::MultiGzDecoder;

/// Default bound on what one archive may unpack to (tar headers and padding included).
/// Real releases are tens of MiB; this is generous and still stops a bomb.
pub const DEFAULT_MAX_UNPACKED: u64 = 4 << 30;

/// Checks a member name and returns it normalised (no `./`, no empty components); `None` for
/// the archive root. Refuses absolute paths, `..` components, and control characters
/// (a newline in a name would forge lines in listings and logs).
pub fn member_name(raw: &[u8]) -> Result<Option<String>, String> {
    let text = std::str::from_utf8(raw).map_err(|_| format!("member name {} is not UTF-8", escaped(raw)))?;
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(format!("member {} contains the control character {:?}", escaped(raw), c));
    }
    if text.starts_with('/') {
        return Err(format!("member '{text}' has an absolute path"));
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("member '{text}' contains '..'")),
            p => parts.push(p),
        }
    }
    Ok(if parts.is_empty() { None } else { Some(parts.join("/")) })
}

/// Checks that the target of link `member` (a normalised name) stays inside the archive.
/// Hard link targets are archive paths; symlink targets are relative to the link's directory.
pub fn check_link(member: &str, target: &[u8], hard: bool) -> Result<(), String> {
    let kind = if hard { "hard link" } else { "symlink" };
    let Ok(target) = std::str::from_utf8(target) else {
        return Err(format!("{kind} '{member}' has a target that is not UTF-8: {}", escaped(target)));
    };
    if let Some(c) = target.chars().find(|c| c.is_control()) {
        return Err(format!("{kind} '{member}' has a target containing the control character {c:?}"));
    }
    if target.is_empty() {
        return Err(format!("{kind} '{member}' has an empty target"));
    }
    if target.starts_with('/') {
        return Err(format!("{kind} '{member}' points outside the archive (absolute target '{target}')"));
    }
    let mut depth: i64 = if hard { 0 } else { member.matches('/').count() as i64 };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            return Err(format!("{kind} '{member}' points outside the archive (target '{target}')"));
        }
    }
    Ok(())
}

/// A byte string for messages: printable ASCII as is, everything else as `\xNN`.
fn escaped(raw: &[u8]) -> String {
    let mut s = String::from("'");
    for &b in raw.iter().take(200) {
        if (0x20..0x7f).contains(&b) && b != b'\'' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s.push('\'');
    s
}

/// Why an archive's unpacked stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// More bytes than the limit.
    #[error("unpacks to more than {limit} bytes (the limit for one archive; see --max-unpacked)")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Bytes after the end of the tar archive that are not the zero padding tar writes.
    #[error("has data after the end of the tar archive")]
    TrailingData,
}

/// The decompressed bytes of a `.tar.gz`: every gzip member, at most `limit` bytes.
/// Clones share the byte count, so the reader can be handed to `tar` and still be asked how
/// far it got.
pub struct Unpacked<R: io::BufRead> {
    inner: MultiGzDecoder<R>,
    read: Rc<Cell<u64>>,
    limit: u64,
}

impl<R: io::BufRead> std::fmt::Debug for Unpacked<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unpacked").field("read", &self.read.get()).field("limit", &self.limit).finish()
    }
}

impl<R: io::BufRead> Unpacked<R> {
    /// Decompresses `compressed`, refusing more than `limit` bytes.
    pub fn new(compressed: R, limit: u64) -> Self {
        Self { inner: MultiGzDecoder::new(compressed), read: Rc::new(Cell::new(0)), limit }
    }

    /// A handle on the number of bytes decompressed so far.
    pub fn counter(&self) -> Rc<Cell<u64>> {
        Rc::clone(&self.read)
    }

    /// Reads what follows the tar archive's end to the end of the gzip stream: only zeros (tar
    /// pads to its record size) are allowed, and the gzip layer must end cleanly.
    pub fn finish(mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            if buf[..n].iter().any(|&b| b != 0) {
                return Err(io::Error::other(UnpackError::TrailingData));
            }
        }
    }
}

impl<R: io::BufRead> Read for Unpacked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte more than the limit may be read, so that "exactly the limit" passes and
        // anything beyond is noticed.
        let room = self.limit.saturating_sub(self.read.get()).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.read.set(self.read.get() + n as u64);
        if self.read.get() > self.limit {
            return Err(io::Error::other(UnpackError::TooLarge { limit: self.limit }));
        }
        Ok(n)
    }
}

/// Whether an error from reading a `.tar.gz` is one of ours, and which.
pub fn unpack_error(e: &io::Error) -> Option<&UnpackError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while let Some(c) = cur {
        if let Some(u) = c.downcast_ref::<UnpackError>() {
            return Some(u);
        }
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if let Some(inner) = io.get_ref() {
                cur = Some(inner);
                continue;
            }
        }
        cur = c.source();
    }
    None
}

/// Parses a size like `4G`, `512M`, `64K` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let err = || format!("'{s}': expected a size such as 4G, 512M, 64K or a number of bytes");
    let (digits, unit) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let n = digits.parse::<u64>().map_err(|_| err())?.checked_mul(unit).ok_or_else(err)?;
    if n == 0 {
        return Err(format!("'{s}': the limit must be more than 0"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn unpack(bytes: &[u8], limit: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Unpacked::new(bytes, limit).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn member_names_are_normalised_or_refused() {
        assert_eq!(member_name(b"./bridge").unwrap().as_deref(), Some("bridge"));
        assert_eq!(member_name(b"./").unwrap(), None);
        assert_eq!(member_name(b"bin//ctr").unwrap().as_deref(), Some("bin/ctr"));
        assert!(member_name(b"/etc/passwd").unwrap_err().contains("absolute path"));
        assert!(member_name(b"bin/../../etc").unwrap_err().contains("'..'"));
        let e = member_name(b"bin/ctr\nfake line").unwrap_err();
        assert_eq!(e, "member 'bin/ctr\\x0afake line' contains the control character '\\n'");
        assert!(member_name(b"a\x1b[31mred").unwrap_err().contains("control character"));
        assert!(member_name(b"a\x7f").unwrap_err().contains("control character"));
        assert!(member_name(b"\xff\xfe").unwrap_err().contains("not UTF-8"));
    }

    #[test]
    fn links_must_stay_inside() {
        check_link("bin/a", b"b", false).unwrap();
        check_link("bin/a", b"../lib/b", false).unwrap();
        assert!(check_link("bin/a", b"../../etc/shadow", false).is_err());
        assert!(check_link("a", b"/etc/shadow", false).is_err());
        check_link("bin/a", b"bin/b", true).unwrap();
        assert!(check_link("bin/a", b"../x", true).is_err());
        assert!(check_link("a", b"b\nc", false).unwrap_err().contains("control character"));
        assert!(check_link("a", b"", true).unwrap_err().contains("empty target"));
    }

    #[test]
    fn every_gzip_member_is_read() {
        let mut two = gz(b"first ");
        two.extend(gz(b"second"));
        assert_eq!(unpack(&two, 100).unwrap(), b"first second");
    }

    #[test]
    fn trailing_garbage_is_refused() {
        for tail in [&b"garbage"[..], b"\0", b"\x1f", b"<html>"] {
            let mut bytes = gz(b"payload");
            bytes.extend_from_slice(tail);
            assert!(unpack(&bytes, 100).is_err(), "{tail:?} accepted");
        }
    }

    #[test]
    fn the_limit_is_exact() {
        let bytes = gz(&[0u8; 1000]);
        assert_eq!(unpack(&bytes, 1000).unwrap().len(), 1000);
        let e = unpack(&bytes, 999).unwrap_err();
        assert!(matches!(unpack_error(&e), Some(UnpackError::TooLarge { limit: 999 })), "{e}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("100").unwrap(), 100);
        for bad in ["", "G", "1.5G", "-1", "0", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
