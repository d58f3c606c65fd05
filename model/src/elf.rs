//! The one fact about ELF files this project needs: which machine a binary is for.
//!
//! bakery refuses to package a binary for the wrong architecture (it would crash-loop with
//! "exec format error" on the node), and composer reads a disk image's architecture from the
//! ELF header of its systemd. Both read the same 20 bytes the same way.

use crate::Arch;

/// Bytes of a file needed to read its machine.
pub const HEADER_LEN: usize = 20;

/// The `e_machine` of an ELF file from its first [`HEADER_LEN`] bytes; `None` if it is not ELF.
/// Byte order follows `EI_DATA`, so big-endian binaries read right too.
pub fn machine(head: &[u8]) -> Option<u16> {
    if head.len() < HEADER_LEN || &head[..4] != b"\x7fELF" {
        return None;
    }
    let bytes = [head[18], head[19]];
    Some(match head[5] {
        2 => u16::from_be_bytes(bytes),
        _ => u16::from_le_bytes(bytes),
    })
}

/// The architecture of an ELF file from its first bytes, if it is ELF for a supported one.
pub fn arch(head: &[u8]) -> Option<Arch> {
    machine(head).and_then(Arch::from_elf_machine)
}

/// A readable name for an `e_machine` value, for messages.
pub fn machine_name(machine: u16) -> String {
    match machine {
        3 => "x86 (i386)".into(),
        40 => "arm".into(),
        62 => "x86-64".into(),
        183 => "arm64".into(),
        243 => "riscv".into(),
        21 => "ppc64".into(),
        22 => "s390".into(),
        other => format!("e_machine {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(class_data: u8, machine: [u8; 2]) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = class_data;
        h[18..20].copy_from_slice(&machine);
        h
    }

    #[test]
    fn reads_both_byte_orders() {
        assert_eq!(machine(&header(1, 62u16.to_le_bytes())), Some(62));
        assert_eq!(machine(&header(2, 22u16.to_be_bytes())), Some(22));
        assert_eq!(arch(&header(1, 183u16.to_le_bytes())), Some(Arch::Arm64));
        assert_eq!(arch(&header(2, 22u16.to_be_bytes())), None);
    }

    #[test]
    fn refuses_what_is_not_elf() {
        assert_eq!(machine(b"#!/bin/sh\n"), None);
        assert_eq!(machine(b"\x7fELF"), None, "too short to hold e_machine");
        assert_eq!(machine(b"<html><body>404 Not Found</body></html>"), None);
        assert_eq!(machine_name(183), "arm64");
        assert_eq!(machine_name(9999), "e_machine 9999");
    }
}
