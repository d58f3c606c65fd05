//! Tiny synthetic ELF executables.
//!
//! The product packages upstream binaries (kubelet, containerd, runc, CNI plugins) into system
//! extensions and sometimes inspects or runs them. Real binaries are tens of megabytes and would
//! need the internet, so tests use these stand-ins instead: a few hundred bytes, a valid static
//! ELF64 executable for the requested architecture, that prints a fixed message and exits 0.
//! Different messages give different bytes, so every fake artifact has its own digest.
//!
//! Layout: ELF header (64 bytes), one program header (56 bytes), code, message. A single
//! `PT_LOAD` maps the whole file read+execute at [`LOAD_ADDRESS`]; the code addresses the
//! message PC-relatively, so no relocation or absolute address is needed.

use sysext_model::Arch;

/// Virtual address the file is mapped at. 4 MiB is the traditional non-PIE base and is aligned
/// to 64 KiB, so it also works on arm64 kernels built with 64 KiB pages.
pub const LOAD_ADDRESS: u64 = 0x40_0000;

const EHDR_SIZE: u16 = 64;
const PHDR_SIZE: u16 = 56;
/// File offset of the first instruction: right after the headers.
const CODE_OFFSET: u64 = EHDR_SIZE as u64 + PHDR_SIZE as u64;

/// `e_machine` value for x86-64 (`EM_X86_64`).
pub const EM_X86_64: u16 = 62;
/// `e_machine` value for arm64 (`EM_AARCH64`).
pub const EM_AARCH64: u16 = 183;

/// A minimal static ELF64 little-endian executable for `arch` that writes `message` to stdout
/// (`write(1, message, len)`) and then calls `exit(0)`, using raw syscalls.
///
/// The output depends only on the arguments, so artifacts built from it are reproducible.
///
/// # Panics
/// If `message` is 4 GiB or longer (the length is encoded as a 32-bit immediate).
pub fn tiny_executable(arch: Arch, message: &str) -> Vec<u8> {
    let len = u32::try_from(message.len()).expect("message shorter than 4 GiB");
    let (machine, align, code) = match arch {
        Arch::X86_64 => (EM_X86_64, 0x1000, x86_64_code(len)),
        Arch::Arm64 => (EM_AARCH64, 0x1_0000, aarch64_code(len)),
    };
    executable(machine, align, &code, message.as_bytes())
}

/// A minimal static x86-64 executable that stands in for a `Type=notify` daemon: it writes
/// `message` to stdout, sends `READY=1` to the datagram socket `notify_socket` (what systemd
/// passes as `NOTIFY_SOCKET`; the system manager's is `/run/systemd/notify`), then waits in
/// `pause()` until a signal ends it. Reproducible like [`tiny_executable`].
///
/// # Panics
/// If `notify_socket` does not fit a `sockaddr_un` (107 bytes) or `message` is 4 GiB or longer.
pub fn notify_daemon_executable(notify_socket: &str, message: &str) -> Vec<u8> {
    assert!(notify_socket.len() < 108, "a socket path of at most 107 bytes");
    let len = u32::try_from(message.len()).expect("message shorter than 4 GiB");
    // Data after the code: the message, "READY=1", then sockaddr_un { AF_UNIX, path, NUL }.
    let mut data = message.as_bytes().to_vec();
    let ready_at = data.len();
    data.extend_from_slice(b"READY=1");
    let addr_at = data.len();
    data.extend_from_slice(&1u16.to_le_bytes());
    data.extend_from_slice(notify_socket.as_bytes());
    data.push(0);
    let addr_len = u32::try_from(data.len() - addr_at).expect("small");

    let mut c = Vec::new();
    // lea REG, [rip + disp32] to data offset `at`: patched once the code length is known.
    let mut fixups: Vec<(usize, usize)> = Vec::new();
    let mut lea = |c: &mut Vec<u8>, opcode: [u8; 3], at: usize| {
        c.extend_from_slice(&opcode);
        fixups.push((c.len(), at));
        c.extend_from_slice(&[0; 4]);
    };
    c.extend_from_slice(&[0xb8, 1, 0, 0, 0]); // mov eax, 1        (SYS_write)
    c.extend_from_slice(&[0xbf, 1, 0, 0, 0]); // mov edi, 1        (stdout)
    lea(&mut c, [0x48, 0x8d, 0x35], 0); // lea rsi, [message]
    c.push(0xba); // mov edx, len
    c.extend_from_slice(&len.to_le_bytes());
    c.extend_from_slice(&[0x0f, 0x05]); // syscall
    c.extend_from_slice(&[0xb8, 41, 0, 0, 0]); // mov eax, 41       (SYS_socket)
    c.extend_from_slice(&[0xbf, 1, 0, 0, 0]); // mov edi, 1        (AF_UNIX)
    c.extend_from_slice(&[0xbe, 2, 0, 0, 0]); // mov esi, 2        (SOCK_DGRAM)
    c.extend_from_slice(&[0x31, 0xd2]); // xor edx, edx
    c.extend_from_slice(&[0x0f, 0x05]); // syscall
    c.extend_from_slice(&[0x89, 0xc7]); // mov edi, eax       (the socket)
    c.extend_from_slice(&[0xb8, 44, 0, 0, 0]); // mov eax, 44       (SYS_sendto)
    lea(&mut c, [0x48, 0x8d, 0x35], ready_at); // lea rsi, ["READY=1"]
    c.extend_from_slice(&[0xba, 7, 0, 0, 0]); // mov edx, 7
    c.extend_from_slice(&[0x45, 0x31, 0xd2]); // xor r10d, r10d    (flags)
    lea(&mut c, [0x4c, 0x8d, 0x05], addr_at); // lea r8, [sockaddr_un]
    c.extend_from_slice(&[0x41, 0xb9]); // mov r9d, addr_len
    c.extend_from_slice(&addr_len.to_le_bytes());
    c.extend_from_slice(&[0x0f, 0x05]); // syscall
    c.extend_from_slice(&[0xb8, 34, 0, 0, 0]); // wait: mov eax, 34 (SYS_pause)
    c.extend_from_slice(&[0x0f, 0x05]); // syscall
    c.extend_from_slice(&[0xeb, 0xf7]); // jmp wait           (-9)
    for (disp_at, at) in fixups {
        // RIP-relative: from the end of the displacement (the end of the lea) to the data.
        let disp = u32::try_from(c.len() - (disp_at + 4) + at).expect("small");
        c[disp_at..disp_at + 4].copy_from_slice(&disp.to_le_bytes());
    }
    executable(EM_X86_64, 0x1000, &c, &data)
}

/// The ELF file: headers, `code` at the entry point, then `data`, all in one `PT_LOAD`.
fn executable(machine: u16, align: u64, code: &[u8], data: &[u8]) -> Vec<u8> {
    let file_size = CODE_OFFSET + code.len() as u64 + data.len() as u64;
    let mut out = Vec::with_capacity(usize::try_from(file_size).expect("fits in memory"));
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_SYSV, ABI version 0, padding.
    out.extend_from_slice(b"\x7fELF");
    out.extend_from_slice(&[2, 1, 1, 0, 0]);
    out.extend_from_slice(&[0; 7]);
    out.extend_from_slice(&2u16.to_le_bytes()); // e_type = ET_EXEC
    out.extend_from_slice(&machine.to_le_bytes()); // e_machine
    out.extend_from_slice(&1u32.to_le_bytes()); // e_version
    out.extend_from_slice(&(LOAD_ADDRESS + CODE_OFFSET).to_le_bytes()); // e_entry
    out.extend_from_slice(&u64::from(EHDR_SIZE).to_le_bytes()); // e_phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no section headers
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    out.extend_from_slice(&EHDR_SIZE.to_le_bytes()); // e_ehsize
    out.extend_from_slice(&PHDR_SIZE.to_le_bytes()); // e_phentsize
    out.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    out.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize (conventional even with none)
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    debug_assert_eq!(out.len(), usize::from(EHDR_SIZE));

    // The single PT_LOAD: the whole file, read + execute.
    out.extend_from_slice(&1u32.to_le_bytes()); // p_type = PT_LOAD
    out.extend_from_slice(&5u32.to_le_bytes()); // p_flags = PF_R | PF_X
    out.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    out.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // p_vaddr
    out.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // p_paddr
    out.extend_from_slice(&file_size.to_le_bytes()); // p_filesz
    out.extend_from_slice(&file_size.to_le_bytes()); // p_memsz
    out.extend_from_slice(&align.to_le_bytes()); // p_align
    debug_assert_eq!(out.len() as u64, CODE_OFFSET);

    out.extend_from_slice(code);
    out.extend_from_slice(data);
    debug_assert_eq!(out.len() as u64, file_size);
    out
}

/// x86-64 machine code; the message must follow it immediately.
fn x86_64_code(len: u32) -> Vec<u8> {
    let mut c = Vec::with_capacity(33);
    c.extend_from_slice(&[0xb8, 1, 0, 0, 0]); // mov eax, 1        (SYS_write)
    c.extend_from_slice(&[0xbf, 1, 0, 0, 0]); // mov edi, 1        (stdout)
    c.extend_from_slice(&[0x48, 0x8d, 0x35]); // lea rsi, [rip + disp32]
    let disp_at = c.len();
    c.extend_from_slice(&[0; 4]);
    let after_lea = c.len();
    c.push(0xba); // mov edx, len
    c.extend_from_slice(&len.to_le_bytes());
    c.extend_from_slice(&[0x0f, 0x05]); // syscall
    c.extend_from_slice(&[0xb8, 60, 0, 0, 0]); // mov eax, 60       (SYS_exit)
    c.extend_from_slice(&[0x31, 0xff]); // xor edi, edi      (status 0)
    c.extend_from_slice(&[0x0f, 0x05]); // syscall
                                        // RIP-relative: the displacement counts from the end of the lea to the message.
    let disp = u32::try_from(c.len() - after_lea).expect("small");
    c[disp_at..disp_at + 4].copy_from_slice(&disp.to_le_bytes());
    c
}

/// arm64 machine code; the message must follow it immediately.
fn aarch64_code(len: u32) -> Vec<u8> {
    // Encoders for the few A64 instructions needed (64-bit forms).
    let movz = |rd: u32, imm16: u32, hw: u32| 0xd280_0000 | (hw << 21) | ((imm16 & 0xffff) << 5) | rd;
    let movk = |rd: u32, imm16: u32, hw: u32| 0xf280_0000 | (hw << 21) | ((imm16 & 0xffff) << 5) | rd;
    let adr = |rd: u32, offset: u32| 0x1000_0000 | ((offset & 3) << 29) | (((offset >> 2) & 0x7_ffff) << 5) | rd;
    const SVC0: u32 = 0xd400_0001;
    const INSNS: u32 = 9;

    let words = [
        movz(0, 1, 0), // mov x0, #1           (stdout)
        // adr x1, message: it sits right after the last instruction; adr is instruction 1.
        adr(1, (INSNS - 1) * 4),
        movz(2, len, 0),       // mov  x2, #len[15:0]
        movk(2, len >> 16, 1), // movk x2, #len[31:16], lsl #16
        movz(8, 64, 0),        // mov x8, #64          (SYS_write)
        SVC0,                  // svc #0
        movz(0, 0, 0),         // mov x0, #0           (status 0)
        movz(8, 93, 0),        // mov x8, #93          (SYS_exit)
        SVC0,                  // svc #0
    ];
    debug_assert_eq!(words.len() as u32, INSNS);
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn long_message_uses_high_length_bits() {
        // > 64 KiB exercises the upper half of the length immediate on arm64 (movk) too.
        let message = "x".repeat(70_000);
        let arm = tiny_executable(Arch::Arm64, &message);
        assert!(arm.ends_with(message.as_bytes()));
        assert!(tiny_executable(Arch::X86_64, &message).ends_with(message.as_bytes()));
    }

    #[test]
    fn headers_are_consistent_for_both_arches() {
        for (arch, machine, code_len) in [(Arch::X86_64, 62, 33), (Arch::Arm64, 183, 36)] {
            let msg = "hello\n";
            let b = tiny_executable(arch, msg);
            assert_eq!(&b[..4], b"\x7fELF");
            assert_eq!(&b[4..7], &[2, 1, 1], "64-bit, little-endian, version 1");
            assert_eq!(u16_at(&b, 16), 2, "ET_EXEC");
            assert_eq!(u16_at(&b, 18), machine);
            assert_eq!(u64_at(&b, 24), LOAD_ADDRESS + 120, "entry right after the headers");
            assert_eq!(u64_at(&b, 32), 64, "phoff");
            assert_eq!(u16_at(&b, 56), 1, "one program header");
            assert_eq!(u32_at(&b, 64), 1, "PT_LOAD");
            assert_eq!(u32_at(&b, 68), 5, "R+X");
            assert_eq!(u64_at(&b, 72), 0, "maps from offset 0");
            assert_eq!(u64_at(&b, 80), LOAD_ADDRESS);
            assert_eq!(u64_at(&b, 96), b.len() as u64, "filesz is the whole file");
            assert_eq!(b.len(), 120 + code_len + msg.len());
            assert!(b.ends_with(msg.as_bytes()));
        }
    }

    #[test]
    fn arm64_code_is_the_expected_instruction_sequence() {
        // Expected encodings, cross-checked once with `aarch64-linux-gnu-objdump -D -b binary`
        // (the message starts at 0x9c = 120 + 36, where the adr points).
        let b = tiny_executable(Arch::Arm64, "hi\n");
        let words: Vec<u32> = b[120..156].chunks(4).map(|w| u32::from_le_bytes(w.try_into().unwrap())).collect();
        assert_eq!(
            words,
            [
                0xd280_0020, // mov  x0, #1
                0x1000_0101, // adr  x1, .+32
                0xd280_0062, // mov  x2, #3
                0xf2a0_0002, // movk x2, #0, lsl #16
                0xd280_0808, // mov  x8, #64
                0xd400_0001, // svc  #0
                0xd280_0000, // mov  x0, #0
                0xd280_0ba8, // mov  x8, #93
                0xd400_0001, // svc  #0
            ]
        );
    }

    #[test]
    fn the_notify_daemon_says_ready_and_keeps_running() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::net::UnixDatagram;
        let b = notify_daemon_executable("/run/systemd/notify", "stand-in\n");
        assert_eq!(u16_at(&b, 18), 62);
        assert!(b.ends_with(b"READY=1\x01\x00/run/systemd/notify\0"));
        if sysext_model::Arch::host() != Some(Arch::X86_64) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("notify");
        let listener = UnixDatagram::bind(&socket).unwrap();
        listener.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        let exe = dir.path().join("daemon");
        std::fs::write(&exe, notify_daemon_executable(socket.to_str().unwrap(), "stand-in ready\n")).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = std::process::Command::new(&exe).stdout(std::process::Stdio::piped()).spawn().unwrap();
        let mut got = [0u8; 64];
        let n = listener.recv(&mut got).expect("READY=1 within 20 s");
        assert_eq!(&got[..n], b"READY=1");
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(child.try_wait().unwrap().is_none(), "it keeps running");
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.stdout, b"stand-in ready\n");
    }

    #[test]
    fn deterministic_and_message_dependent() {
        let a = tiny_executable(Arch::X86_64, "a");
        assert_eq!(a, tiny_executable(Arch::X86_64, "a"));
        assert_ne!(a, tiny_executable(Arch::X86_64, "b"));
        assert_ne!(tiny_executable(Arch::Arm64, "a"), tiny_executable(Arch::Arm64, "b"));
    }
}
