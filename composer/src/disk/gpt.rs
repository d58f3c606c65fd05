//! A small GUID partition table reader: just enough to find a partition by label or type.
//!
//! Both CRCs (header and entry array) are checked, because composing into a partition found
//! through a corrupt table would write into the wrong bytes of a customer's disk. When the
//! primary header or its entries are damaged, the backup at the end of the disk is used, as
//! firmware does; when both are damaged the disk is refused.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// A GPT partition type or partition GUID, in its canonical text form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid([u8; 16]);

impl Guid {
    /// Decodes the on-disk (mixed-endian) form: the first three fields are little-endian.
    pub fn from_disk(b: &[u8; 16]) -> Self {
        let mut g = [0u8; 16];
        g[0..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
        g[4..6].copy_from_slice(&[b[5], b[4]]);
        g[6..8].copy_from_slice(&[b[7], b[6]]);
        g[8..16].copy_from_slice(&b[8..16]);
        Self(g)
    }

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case).
    pub const fn parse_const(s: &str) -> Self {
        let s = s.as_bytes();
        let mut out = [0u8; 16];
        let mut i = 0;
        let mut n = 0;
        while i < s.len() {
            if s[i] != b'-' {
                let v = match s[i] {
                    b'0'..=b'9' => s[i] - b'0',
                    b'a'..=b'f' => s[i] - b'a' + 10,
                    b'A'..=b'F' => s[i] - b'A' + 10,
                    _ => panic!("not a GUID"),
                };
                out[n / 2] |= if n % 2 == 0 { v << 4 } else { v };
                n += 1;
            }
            i += 1;
        }
        assert!(n == 32, "not a GUID");
        Self(out)
    }

    /// Whether this is the all-zero GUID that marks an unused entry.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(f, "{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Partition type GUIDs this tool knows by name (spec-digest §4.1, §4.5, §4.6).
pub mod types {
    use super::Guid;

    /// EFI system partition.
    pub const ESP: Guid = Guid::parse_const("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    /// BIOS boot partition (GRUB core).
    pub const BIOS_BOOT: Guid = Guid::parse_const("21686148-6449-6e6f-744e-656564454649");
    /// Generic Linux data.
    pub const LINUX_DATA: Guid = Guid::parse_const("0fc63daf-8483-4772-8e79-3d69d8477de4");
    /// Extended boot loader partition (Ubuntu's /boot).
    pub const XBOOTLDR: Guid = Guid::parse_const("bc13c2ff-59e6-4262-a352-b275fd6f7172");
    /// Flatcar/CoreOS /usr (USR-A, USR-B).
    pub const FLATCAR_USR: Guid = Guid::parse_const("5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6");
    /// Flatcar's ROOT, grown on first boot.
    pub const FLATCAR_RESIZE: Guid = Guid::parse_const("3884dd41-8582-4404-b9a8-e9b84f2df50e");
    /// Flatcar's reserved partitions (OEM-CONFIG).
    pub const FLATCAR_RESERVED: Guid = Guid::parse_const("c95dc21a-df0e-4340-8d7b-26cbfa9a03e0");
    /// DPS root, x86-64.
    pub const ROOT_X86_64: Guid = Guid::parse_const("4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
    /// DPS root, arm64.
    pub const ROOT_ARM64: Guid = Guid::parse_const("b921b045-1df0-41c3-af44-4c6f280d3fae");
    /// DPS usr, x86-64.
    pub const USR_X86_64: Guid = Guid::parse_const("8484680c-9521-48c6-9c11-b0720656f69e");
    /// DPS usr, arm64.
    pub const USR_ARM64: Guid = Guid::parse_const("b0e01050-ee5f-4390-949a-9101b17104e9");
    /// Linux swap.
    pub const SWAP: Guid = Guid::parse_const("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f");

    /// A short name for a known type.
    pub fn name(g: &Guid) -> Option<&'static str> {
        [
            (ESP, "efi-system"),
            (BIOS_BOOT, "bios-boot"),
            (LINUX_DATA, "linux-data"),
            (XBOOTLDR, "xbootldr"),
            (FLATCAR_USR, "flatcar-usr"),
            (FLATCAR_RESIZE, "flatcar-resize"),
            (FLATCAR_RESERVED, "flatcar-reserved"),
            (ROOT_X86_64, "root-x86-64"),
            (ROOT_ARM64, "root-arm64"),
            (USR_X86_64, "usr-x86-64"),
            (USR_ARM64, "usr-arm64"),
            (SWAP, "swap"),
        ]
        .into_iter()
        .find_map(|(t, n)| (t == *g).then_some(n))
    }
}

/// One used entry of the partition table.
#[derive(Clone, Debug, Serialize)]
pub struct Partition {
    /// 1-based partition number (the entry's index), as in `/dev/sda9`.
    pub number: u32,
    /// PARTLABEL.
    pub label: String,
    /// Partition type.
    pub type_guid: Guid,
    /// Well-known name of the type, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub type_name: Option<&'static str>,
    /// PARTUUID.
    pub uuid: Guid,
    /// First byte on the disk.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// Attribute bits.
    pub attributes: u64,
}

/// Which copy of the table was used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableCopy {
    /// The header at LBA 1.
    Primary,
    /// The header in the last LBA, because the primary was damaged.
    Backup,
}

impl TableCopy {
    /// `primary` or `backup`.
    pub fn as_str(self) -> &'static str {
        match self {
            TableCopy::Primary => "primary",
            TableCopy::Backup => "backup",
        }
    }
}

/// A parsed partition table.
#[derive(Clone, Debug, Serialize)]
pub struct Gpt {
    /// Logical block size the table was found at (512 or 4096).
    pub sector_size: u64,
    /// Disk GUID.
    pub disk_guid: Guid,
    /// Which copy was read.
    pub table: TableCopy,
    /// Why the primary copy was not used, when the backup was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_problem: Option<String>,
    /// Used entries, by partition number.
    pub partitions: Vec<Partition>,
}

/// Why a disk has no usable GPT.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// Reading failed.
    #[error("{}: {cause}", path.display())]
    Io {
        /// Disk image.
        path: PathBuf,
        /// Cause.
        cause: std::io::Error,
    },
    /// There is an MBR but no GPT.
    #[error("{}: has an MBR (DOS) partition table but no GPT; expected a GPT disk image (Flatcar or Ubuntu cloud image)", path.display())]
    MbrOnly {
        /// Disk image.
        path: PathBuf,
    },
    /// Neither partition table kind.
    #[error("{}: not a disk image: no GPT header ('EFI PART' at LBA 1) and no MBR boot signature", path.display())]
    NoTable {
        /// Disk image.
        path: PathBuf,
    },
    /// A copy whose CRCs match describes an impossible layout.
    #[error("{}: the {} GPT is intact but invalid: {problem}", path.display(), table.as_str())]
    Invalid {
        /// Disk image.
        path: PathBuf,
        /// Which copy.
        table: TableCopy,
        /// What is impossible, naming the partition.
        problem: String,
    },
    /// Both copies are damaged.
    #[error("{}: GPT is damaged: primary: {primary}; backup: {backup}", path.display())]
    Corrupt {
        /// Disk image.
        path: PathBuf,
        /// Problem with the primary copy.
        primary: String,
        /// Problem with the backup copy.
        backup: String,
    },
}

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The largest entry array accepted: 8 times the usual 128 entries of 128 bytes. The
/// header's counts come from the image, and a bigger array is no real disk's.
const MAX_ENTRY_ARRAY: u64 = 1 << 17;

struct Header {
    my_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Guid,
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

/// What is wrong with one copy of the table.
enum Problem {
    /// Not there or damaged (signature, CRC, unreadable): the other copy may be used.
    Damaged(String),
    /// Intact (its CRCs match) but impossible: whoever wrote it meant it, so the other copy
    /// is not trusted over it and the disk is refused.
    Invalid(String),
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    Guid::from_disk(b[at..at + 16].try_into().expect("16 bytes"))
}

/// Validates a header block; the error says what is wrong in words a user can act on.
fn parse_header(block: &[u8], expected_lba: u64) -> Result<Header, Problem> {
    use Problem::{Damaged, Invalid};
    if &block[..8] != SIGNATURE {
        return Err(Damaged(format!("no 'EFI PART' signature at LBA {expected_lba}")));
    }
    let size = le32(block, 12) as usize;
    if !(92..=block.len()).contains(&size) {
        return Err(Damaged(format!("header size {size} is out of range")));
    }
    let stored = le32(block, 16);
    let mut copy = block[..size].to_vec();
    copy[16..20].fill(0);
    let actual = crc32fast::hash(&copy);
    if stored != actual {
        return Err(Damaged(format!("header CRC32 is {stored:#010x}, computed {actual:#010x}")));
    }
    let h = Header {
        my_lba: le64(block, 24),
        first_usable: le64(block, 40),
        last_usable: le64(block, 48),
        disk_guid: guid_at(block, 56),
        entries_lba: le64(block, 72),
        num_entries: le32(block, 80),
        entry_size: le32(block, 84),
        entries_crc: le32(block, 88),
    };
    if h.my_lba != expected_lba {
        return Err(Damaged(format!("header says it is at LBA {}, found at LBA {expected_lba}", h.my_lba)));
    }
    let array = u64::from(h.num_entries) * u64::from(h.entry_size);
    if h.entry_size < 128 || !h.entry_size.is_multiple_of(8) || array > MAX_ENTRY_ARRAY {
        return Err(Invalid(format!(
            "implausible entry array: {} entries of {} bytes (expected entries of at least 128 bytes, at most {MAX_ENTRY_ARRAY} bytes in all)",
            h.num_entries, h.entry_size
        )));
    }
    if h.first_usable > h.last_usable {
        return Err(Invalid(format!("first usable LBA {} is after last usable LBA {}", h.first_usable, h.last_usable)));
    }
    Ok(h)
}

fn read_at(f: &mut (impl Read + Seek), offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn read_entries(f: &mut (impl Read + Seek), h: &Header, sector: u64, disk_len: u64) -> Result<Vec<Partition>, Problem> {
    use Problem::{Damaged, Invalid};
    let len = u64::from(h.num_entries) * u64::from(h.entry_size);
    let start = h.entries_lba.checked_mul(sector).filter(|s| s.checked_add(len).is_some_and(|end| end <= disk_len));
    let start = start
        .ok_or_else(|| Invalid(format!("entry array at LBA {} lies beyond the end of the disk", h.entries_lba)))?;
    let array_lbas = h.entries_lba..=h.entries_lba + len.div_ceil(sector).max(1) - 1;
    if array_lbas.contains(&h.my_lba) || (*array_lbas.start() <= h.last_usable && h.first_usable <= *array_lbas.end()) {
        return Err(Invalid(format!(
            "entry array at LBA {}..={} overlaps the header or the usable LBAs {}..={}",
            array_lbas.start(),
            array_lbas.end(),
            h.first_usable,
            h.last_usable
        )));
    }
    let bytes = read_at(f, start, len as usize).map_err(|e| Damaged(format!("reading the entry array: {e}")))?;
    let actual = crc32fast::hash(&bytes);
    if actual != h.entries_crc {
        return Err(Damaged(format!("entry array CRC32 is {:#010x}, computed {actual:#010x}", h.entries_crc)));
    }
    let mut parts = Vec::new();
    for (i, e) in bytes.chunks_exact(h.entry_size as usize).enumerate() {
        let type_guid = guid_at(e, 0);
        if type_guid.is_zero() {
            continue;
        }
        let number = i as u32 + 1;
        let name: Vec<u16> = e[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        let label = String::from_utf16_lossy(&name[..end]);
        let (first, last) = (le64(e, 32), le64(e, 40));
        let bad = |why: String| Invalid(format!("partition {number} '{label}' (LBA {first}..={last}) {why}"));
        if first > last {
            return Err(bad("starts after it ends".into()));
        }
        let offset = first.checked_mul(sector);
        let end_byte = last.checked_add(1).and_then(|l| l.checked_mul(sector));
        let (Some(offset), Some(end_byte)) = (offset, end_byte) else {
            return Err(bad(format!("lies beyond any disk of {sector}-byte sectors")));
        };
        if end_byte > disk_len {
            return Err(bad(format!(
                "ends at byte {end_byte}, past the end of the disk image ({disk_len} bytes); the image may be truncated"
            )));
        }
        if first < h.first_usable || last > h.last_usable {
            return Err(bad(format!(
                "lies outside the usable LBAs {}..={} of the table",
                h.first_usable, h.last_usable
            )));
        }
        parts.push(Partition {
            number,
            label,
            type_guid,
            type_name: types::name(&type_guid),
            uuid: guid_at(e, 16),
            offset,
            size: end_byte - offset,
            attributes: le64(e, 48),
        });
    }
    let mut by_start: Vec<&Partition> = parts.iter().collect();
    by_start.sort_by_key(|p| p.offset);
    for w in by_start.windows(2) {
        if w[0].offset + w[0].size > w[1].offset {
            return Err(Invalid(format!(
                "partitions {} '{}' (bytes {}..{}) and {} '{}' (bytes {}..{}) overlap",
                w[0].number,
                w[0].label,
                w[0].offset,
                w[0].offset + w[0].size,
                w[1].number,
                w[1].label,
                w[1].offset,
                w[1].offset + w[1].size
            )));
        }
    }
    Ok(parts)
}

type Table = (Guid, Vec<Partition>);

impl Gpt {
    /// Reads the partition table of a disk image.
    pub fn read(path: &Path) -> Result<Self, GptError> {
        let io = |cause| GptError::Io { path: path.to_owned(), cause };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let disk_len = f.metadata().map_err(io)?.len();
        Self::read_from(&mut f, disk_len, path)
    }

    /// Reads the partition table from any seekable reader of `disk_len` bytes (`path`
    /// names it in errors). This is the whole parser: [`Gpt::read`] and the fuzz target
    /// both come here.
    pub fn read_from(f: &mut (impl Read + Seek), disk_len: u64, path: &Path) -> Result<Self, GptError> {
        let io = |cause| GptError::Io { path: path.to_owned(), cause };
        let invalid = |table: TableCopy, problem: String| GptError::Invalid { path: path.to_owned(), table, problem };
        if disk_len < 2 * 512 {
            return Err(GptError::NoTable { path: path.to_owned() });
        }
        let mbr = read_at(f, 0, 512).map_err(io)?;
        let found = |sector, table, primary_problem, (disk_guid, partitions): Table| Gpt {
            sector_size: sector,
            disk_guid,
            table,
            primary_problem,
            partitions,
        };
        for sector in [512u64, 4096] {
            if disk_len < sector * 2 {
                continue;
            }
            let block = read_at(f, sector, sector as usize).map_err(io)?;
            if &block[..8] != SIGNATURE {
                continue;
            }
            let primary =
                parse_header(&block, 1).and_then(|h| read_entries(f, &h, sector, disk_len).map(|p| (h.disk_guid, p)));
            return match primary {
                Ok(t) => Ok(found(sector, TableCopy::Primary, None, t)),
                Err(Problem::Invalid(problem)) => Err(invalid(TableCopy::Primary, problem)),
                Err(Problem::Damaged(problem)) => match Self::backup(f, sector, disk_len).map_err(io)? {
                    Ok(t) => Ok(found(sector, TableCopy::Backup, Some(problem), t)),
                    Err(Problem::Invalid(backup)) => Err(invalid(TableCopy::Backup, backup)),
                    Err(Problem::Damaged(backup)) => {
                        Err(GptError::Corrupt { path: path.to_owned(), primary: problem, backup })
                    }
                },
            };
        }
        // No primary signature at all: the primary header may have been wiped, so the backup
        // still decides, but only when the MBR says this is a GPT disk.
        let protective = mbr[510..512] == [0x55, 0xAA] && (0..4).any(|i| mbr[446 + i * 16 + 4] == 0xEE);
        if protective {
            for sector in [512u64, 4096] {
                match Self::backup(f, sector, disk_len).map_err(io)? {
                    Ok(t) => {
                        return Ok(found(sector, TableCopy::Backup, Some("no 'EFI PART' signature at LBA 1".into()), t))
                    }
                    Err(Problem::Invalid(backup)) => return Err(invalid(TableCopy::Backup, backup)),
                    Err(Problem::Damaged(_)) => {}
                }
            }
            return Err(GptError::Corrupt {
                path: path.to_owned(),
                primary: "protective MBR present but no 'EFI PART' signature at LBA 1".into(),
                backup: "no valid backup header in the last LBA".into(),
            });
        }
        if mbr[510..512] == [0x55, 0xAA] {
            return Err(GptError::MbrOnly { path: path.to_owned() });
        }
        Err(GptError::NoTable { path: path.to_owned() })
    }

    fn backup(f: &mut (impl Read + Seek), sector: u64, disk_len: u64) -> std::io::Result<Result<Table, Problem>> {
        let Some(last) = (disk_len / sector).checked_sub(1).filter(|l| *l >= 2) else {
            return Ok(Err(Problem::Damaged(format!(
                "the disk is too small for a backup header of {sector}-byte sectors"
            ))));
        };
        let block = read_at(f, last * sector, sector as usize)?;
        Ok(parse_header(&block, last).and_then(|h| read_entries(f, &h, sector, disk_len).map(|p| (h.disk_guid, p))))
    }

    /// The partition with this PARTLABEL.
    pub fn by_label(&self, label: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.label == label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Builds a minimal valid GPT in memory: 2 MiB disk, 128 entries, one partition.
    fn disk() -> Vec<u8> {
        disk_with(|_| {}, |_| {})
    }

    /// Entry `n` (0-based) set to a Linux partition over `first..=last`.
    fn entry(entries: &mut [u8], n: usize, first: u64, last: u64, label: &str) {
        let e = &mut entries[n * 128..(n + 1) * 128];
        e[0..16].copy_from_slice(&[
            0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
        ]);
        e[16] = n as u8 + 1;
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        e[56..128].fill(0);
        for (i, c) in label.encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
        }
    }

    /// Like [`disk`], with the entries and then both headers edited before the CRCs are
    /// computed, so the table is intact and only its contents are hostile.
    fn disk_with(edit_entries: impl Fn(&mut Vec<u8>), edit_header: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
        let sector = 512usize;
        let len = 2 * 1024 * 1024;
        let mut d = vec![0u8; len];
        d[446 + 4] = 0xEE;
        d[510] = 0x55;
        d[511] = 0xAA;
        let last_lba = (len / sector - 1) as u64;
        let mut entries = vec![0u8; 128 * 128];
        let ty = [0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4];
        entries[0..16].copy_from_slice(&ty);
        entries[16] = 1;
        entries[32..40].copy_from_slice(&2048u64.to_le_bytes());
        entries[40..48].copy_from_slice(&3071u64.to_le_bytes());
        for (i, c) in "ROOT".encode_utf16().enumerate() {
            entries[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
        }
        edit_entries(&mut entries);
        let ecrc = crc32fast::hash(&entries);
        let header = |my: u64, alt: u64, elba: u64| {
            let mut h = vec![0u8; sector];
            h[..8].copy_from_slice(SIGNATURE);
            h[8..12].copy_from_slice(&0x10000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&my.to_le_bytes());
            h[32..40].copy_from_slice(&alt.to_le_bytes());
            h[40..48].copy_from_slice(&34u64.to_le_bytes());
            h[48..56].copy_from_slice(&(last_lba - 33).to_le_bytes());
            h[72..80].copy_from_slice(&elba.to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            h[88..92].copy_from_slice(&ecrc.to_le_bytes());
            edit_header(&mut h);
            let crc = crc32fast::hash(&h[..92]);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            h
        };
        d[sector..2 * sector].copy_from_slice(&header(1, last_lba, 2));
        let n = entries.len().min(128 * 128);
        d[2 * sector..2 * sector + n].copy_from_slice(&entries[..n]);
        let backup_entries = (last_lba - 32) as usize * sector;
        d[backup_entries..backup_entries + n].copy_from_slice(&entries[..n]);
        d[last_lba as usize * sector..].copy_from_slice(&header(last_lba, 1, last_lba - 32));
        d
    }

    fn read(d: &[u8]) -> Result<Gpt, GptError> {
        Gpt::read_from(&mut Cursor::new(d), d.len() as u64, Path::new("disk.img"))
    }

    #[test]
    fn reads_a_valid_table() {
        let g = read(&disk()).unwrap();
        assert_eq!(g.table, TableCopy::Primary);
        let p = g.by_label("ROOT").unwrap();
        assert_eq!((p.number, p.offset, p.size), (1, 2048 * 512, 1024 * 512));
        assert_eq!(p.type_guid, types::LINUX_DATA);
        assert_eq!(p.type_guid.to_string(), "0fc63daf-8483-4772-8e79-3d69d8477de4");
    }

    #[test]
    fn falls_back_to_the_backup_when_the_primary_is_damaged() {
        let mut d = disk();
        d[512 + 40] ^= 1; // inside the CRC-protected header
        let g = read(&d).unwrap();
        assert_eq!(g.table, TableCopy::Backup);
        assert!(g.primary_problem.as_deref().unwrap().contains("header CRC32"), "{:?}", g.primary_problem);
        assert_eq!(g.by_label("ROOT").unwrap().number, 1);

        let mut d = disk();
        d[1024 + 60] ^= 1; // inside the primary entry array
        let g = read(&d).unwrap();
        assert!(g.primary_problem.as_deref().unwrap().contains("entry array CRC32"));
    }

    #[test]
    fn refuses_when_both_copies_are_damaged() {
        let mut d = disk();
        d[512 + 40] ^= 1;
        let n = d.len();
        d[n - 512 + 40] ^= 1;
        let err = read(&d).unwrap_err().to_string();
        assert!(err.contains("GPT is damaged") && err.contains("backup"), "{err}");
    }

    #[test]
    fn tells_mbr_from_nothing() {
        let mut d = vec![0u8; 1 << 20];
        assert!(matches!(read(&d), Err(GptError::NoTable { .. })));
        d[510] = 0x55;
        d[511] = 0xAA;
        d[446 + 4] = 0x83;
        let err = read(&d).unwrap_err().to_string();
        assert!(err.contains("MBR (DOS) partition table but no GPT"), "{err}");
    }

    fn invalid(d: &[u8]) -> String {
        match read(d) {
            Err(e @ GptError::Invalid { .. }) => e.to_string(),
            other => panic!("expected an invalid table, got {other:?}"),
        }
    }

    #[test]
    fn impossible_partitions_are_refused_naming_them() {
        // The exabyte partition: last LBA 2^64-1 once overflowed (a panic in debug builds).
        let d = disk_with(|e| entry(e, 1, 3072, u64::MAX, "HUGE"), |_| {});
        let err = invalid(&d);
        assert!(err.contains("disk.img: the primary GPT is intact but invalid: partition 2 'HUGE' (LBA 3072..=18446744073709551615) lies beyond any disk"), "{err}");
        let d = disk_with(|e| entry(e, 1, 1 << 60, (1 << 60) + 8, "FAR"), |_| {});
        assert!(invalid(&d).contains("partition 2 'FAR'"), "{}", invalid(&d));
        let d = disk_with(|e| entry(e, 1, 3072, 8191, "PAST"), |_| {});
        assert!(invalid(&d).contains("partition 2 'PAST' (LBA 3072..=8191) ends at byte 4194304, past the end of the disk image (2097152 bytes)"), "{}", invalid(&d));
        let d = disk_with(|e| entry(e, 1, 3000, 3500, "OVER"), |_| {});
        assert!(
            invalid(&d)
                .contains("partitions 1 'ROOT' (bytes 1048576..1572864) and 2 'OVER' (bytes 1536000..1792512) overlap"),
            "{}",
            invalid(&d)
        );
        let d = disk_with(|e| entry(e, 1, 3500, 3400, "BACKWARDS"), |_| {});
        assert!(
            invalid(&d).contains("partition 2 'BACKWARDS' (LBA 3500..=3400) starts after it ends"),
            "{}",
            invalid(&d)
        );
        let d = disk_with(|e| entry(e, 1, 4000, 4094, "TAIL"), |_| {});
        assert!(invalid(&d).contains("lies outside the usable LBAs 34..=4062"), "{}", invalid(&d));
        let d = disk_with(|e| entry(e, 1, 2, 10, "ARRAY"), |_| {});
        assert!(invalid(&d).contains("partition 2 'ARRAY'"), "{}", invalid(&d));
    }

    #[test]
    fn absurd_headers_are_refused() {
        let d = disk_with(|_| {}, |h| h[84..88].copy_from_slice(&u32::MAX.to_le_bytes()));
        assert!(invalid(&d).contains("implausible entry array: 128 entries of 4294967295 bytes"), "{}", invalid(&d));
        let d = disk_with(|_| {}, |h| h[80..84].copy_from_slice(&u32::MAX.to_le_bytes()));
        assert!(invalid(&d).contains("implausible entry array: 4294967295 entries"), "{}", invalid(&d));
        let d = disk_with(|_| {}, |h| h[72..80].copy_from_slice(&u64::MAX.to_le_bytes()));
        assert!(invalid(&d).contains("entry array at LBA 18446744073709551615 lies beyond the end of the disk"));
        let d = disk_with(|_| {}, |h| h[40..48].copy_from_slice(&5000u64.to_le_bytes()));
        assert!(invalid(&d).contains("first usable LBA 5000 is after last usable LBA 4062"), "{}", invalid(&d));
        let d = disk_with(|_| {}, |h| h[40..48].copy_from_slice(&10u64.to_le_bytes()));
        assert!(invalid(&d).contains("entry array at LBA 2..=33 overlaps the header or the usable LBAs 10..=4062"));
        // A last usable LBA past the end is what a truncated image has: the partitions decide.
        let d = disk_with(|_| {}, |h| h[48..56].copy_from_slice(&u64::MAX.to_le_bytes()));
        assert_eq!(read(&d).unwrap().partitions.len(), 1);
    }

    #[test]
    fn tiny_disks_with_a_protective_mbr_do_not_underflow() {
        let mut d = vec![0u8; 1536];
        d[446 + 4] = 0xEE;
        d[510] = 0x55;
        d[511] = 0xAA;
        assert!(matches!(read(&d), Err(GptError::Corrupt { .. })));
    }

    #[test]
    fn guid_text_round_trip() {
        assert_eq!(types::FLATCAR_RESIZE.to_string(), "3884dd41-8582-4404-b9a8-e9b84f2df50e");
        assert_eq!(types::name(&types::ESP), Some("efi-system"));
    }
}
