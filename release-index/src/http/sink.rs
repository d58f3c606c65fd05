//! Where a download goes, and how it starts over when a retry begins.

use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};

use signing::{Digests, DigestsHasher};

/// A destination for a download that can start over, so that after a retry it holds exactly
/// the bytes of the last attempt.
pub trait Sink {
    /// Discards everything written so far.
    fn restart(&mut self) -> io::Result<()>;
    /// Appends bytes.
    fn write(&mut self, data: &[u8]) -> io::Result<()>;
    /// Where the bytes go, for messages.
    fn path(&self) -> PathBuf {
        PathBuf::from("(memory)")
    }
}

impl Sink for Vec<u8> {
    fn restart(&mut self) -> io::Result<()> {
        self.clear();
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.extend_from_slice(data);
        Ok(())
    }
}

/// A file that hashes (size, SHA-256, SHA-512) exactly what was written to it since the last
/// restart.
#[derive(Debug)]
pub struct FileSink {
    file: std::fs::File,
    path: PathBuf,
    hasher: DigestsHasher,
}

impl FileSink {
    /// Writes into `file` (at `path`, for messages), from its start.
    pub fn new(file: std::fs::File, path: &Path) -> Self {
        Self { file, path: path.to_owned(), hasher: DigestsHasher::default() }
    }

    /// Bytes written since the last restart.
    pub fn size(&self) -> u64 {
        self.hasher.size()
    }

    /// The digests of what was written, and the file.
    pub fn finish(self) -> (Digests, std::fs::File) {
        (self.hasher.finish(), self.file)
    }
}

impl Sink for FileSink {
    fn restart(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.hasher = DigestsHasher::default();
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.hasher.update(data);
        Ok(())
    }

    fn path(&self) -> PathBuf {
        self.path.clone()
    }
}
