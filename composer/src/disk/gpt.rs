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

struct Header {
    my_lba: u64,
    disk_guid: Guid,
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
    entries_crc: u32,
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
fn parse_header(block: &[u8], expected_lba: u64) -> Result<Header, String> {
    if &block[..8] != SIGNATURE {
        return Err(format!("no 'EFI PART' signature at LBA {expected_lba}"));
    }
    let size = le32(block, 12) as usize;
    if !(92..=block.len()).contains(&size) {
        return Err(format!("header size {size} is out of range"));
    }
    let stored = le32(block, 16);
    let mut copy = block[..size].to_vec();
    copy[16..20].fill(0);
    let actual = crc32fast::hash(&copy);
    if stored != actual {
        return Err(format!("header CRC32 is {stored:#010x}, computed {actual:#010x}"));
    }
    let h = Header {
        my_lba: le64(block, 24),
        disk_guid: guid_at(block, 56),
        entries_lba: le64(block, 72),
        num_entries: le32(block, 80),
        entry_size: le32(block, 84),
        entries_crc: le32(block, 88),
    };
    if h.my_lba != expected_lba {
        return Err(format!("header says it is at LBA {}, found at LBA {expected_lba}", h.my_lba));
    }
    if h.entry_size < 128 || !h.entry_size.is_multiple_of(8) || h.num_entries > 4096 {
        return Err(format!("implausible entry array: {} entries of {} bytes", h.num_entries, h.entry_size));
    }
    Ok(h)
}

fn read_at(f: &mut (impl Read + Seek), offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn read_entries(f: &mut (impl Read + Seek), h: &Header, sector: u64, disk_len: u64) -> Result<Vec<Partition>, String> {
    let len = u64::from(h.num_entries) * u64::from(h.entry_size);
    let start = h.entries_lba.checked_mul(sector).filter(|s| s + len <= disk_len);
    let start = start.ok_or_else(|| format!("entry array at LBA {} lies beyond the end of the disk", h.entries_lba))?;
    let bytes = read_at(f, start, len as usize).map_err(|e| format!("reading the entry array: {e}"))?;
    let actual = crc32fast::hash(&bytes);
    if actual != h.entries_crc {
        return Err(format!("entry array CRC32 is {:#010x}, computed {actual:#010x}", h.entries_crc));
    }
    let mut parts = Vec::new();
    for (i, e) in bytes.chunks_exact(h.entry_size as usize).enumerate() {
        let type_guid = guid_at(e, 0);
        if type_guid.is_zero() {
            continue;
        }
        let (first, last) = (le64(e, 32), le64(e, 40));
        if last < first || (last + 1).saturating_mul(sector) > disk_len {
            return Err(format!("partition {} spans LBA {first}..={last}, outside the disk", i + 1));
        }
        let name: Vec<u16> = e[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        parts.push(Partition {
            number: i as u32 + 1,
            label: String::from_utf16_lossy(&name[..end]),
            type_guid,
            type_name: types::name(&type_guid),
            uuid: guid_at(e, 16),
            offset: first * sector,
            size: (last - first + 1) * sector,
            attributes: le64(e, 48),
        });
    }
    Ok(parts)
}

impl Gpt {
    /// Reads the partition table of a disk image.
    pub fn read(path: &Path) -> Result<Self, GptError> {
        let io = |cause| GptError::Io { path: path.to_owned(), cause };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let disk_len = f.metadata().map_err(io)?.len();
        Self::read_from(&mut f, disk_len, path)
    }

    /// Reads the partition table from any seekable reader of `disk_len` bytes.
    pub fn read_from(f: &mut (impl Read + Seek), disk_len: u64, path: &Path) -> Result<Self, GptError> {
        let io = |cause| GptError::Io { path: path.to_owned(), cause };
        if disk_len < 2 * 512 {
            return Err(GptError::NoTable { path: path.to_owned() });
        }
        let mbr = read_at(f, 0, 512).map_err(io)?;
        let mut primary_problem = None;
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
            match primary {
                Ok((disk_guid, partitions)) => {
                    return Ok(Gpt {
                        sector_size: sector,
                        disk_guid,
                        table: TableCopy::Primary,
                        primary_problem,
                        partitions,
                    })
                }
                Err(problem) => {
                    let backup = Self::backup(f, sector, disk_len).map_err(io)?;
                    return match backup {
                        Ok((disk_guid, partitions)) => Ok(Gpt {
                            sector_size: sector,
                            disk_guid,
                            table: TableCopy::Backup,
                            primary_problem: Some(problem),
                            partitions,
                        }),
                        Err(backup) => Err(GptError::Corrupt { path: path.to_owned(), primary: problem, backup }),
                    };
                }
            }
        }
        // No primary signature at all: the primary header may have been wiped, so the backup
        // still decides, but only when the MBR says this is a GPT disk.
        let protective = mbr[510..512] == [0x55, 0xAA] && (0..4).any(|i| mbr[446 + i * 16 + 4] == 0xEE);
        if protective {
            for sector in [512u64, 4096] {
                if let Ok(Ok((disk_guid, partitions))) = Self::backup(f, sector, disk_len) {
                    primary_problem = Some("no 'EFI PART' signature at LBA 1".into());
                    return Ok(Gpt {
                        sector_size: sector,
                        disk_guid,
                        table: TableCopy::Backup,
                        primary_problem,
                        partitions,
                    });
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

    fn backup(
        f: &mut (impl Read + Seek),
        sector: u64,
        disk_len: u64,
    ) -> std::io::Result<Result<(Guid, Vec<Partition>), String>> {
        let last = disk_len / sector - 1;
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
        let ecrc = crc32fast::hash(&entries);
        let header = |my: u64, alt: u64, elba: u64| {
            let mut h = vec![0u8; sector];
            h[..8].copy_from_slice(SIGNATURE);
            h[8..12].copy_from_slice(&0x10000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&my.to_le_bytes());
            h[32..40].copy_from_slice(&alt.to_le_bytes());
            h[72..80].copy_from_slice(&elba.to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            h[88..92].copy_from_slice(&ecrc.to_le_bytes());
            let crc = crc32fast::hash(&h[..92]);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            h
        };
        d[sector..2 * sector].copy_from_slice(&header(1, last_lba, 2));
        d[2 * sector..2 * sector + entries.len()].copy_from_slice(&entries);
        let backup_entries = (last_lba - 32) as usize * sector;
        d[backup_entries..backup_entries + entries.len()].copy_from_slice(&entries);
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

    #[test]
    fn guid_text_round_trip() {
        assert_eq!(types::FLATCAR_RESIZE.to_string(), "3884dd41-8582-4404-b9a8-e9b84f2df50e");
        assert_eq!(types::name(&types::ESP), Some("efi-system"));
    }
}
