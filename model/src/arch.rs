use std::fmt;
use std::str::FromStr;

/// A CPU architecture, named as systemd names it.
///
/// These strings are what `ARCHITECTURE=` in an extension-release file must contain and what
/// the `%a` specifier expands to in sysupdate patterns; systemd rejects `amd64` or `x86_64`
/// there, so the upstream spellings exist only as [`Arch::go_arch`] and [`Arch::uname`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// 64-bit x86 (`x86-64`; Go and Debian call it `amd64`, the kernel `x86_64`).
    X86_64,
    /// 64-bit ARM (`arm64`; the kernel calls it `aarch64`).
    Arm64,
}

/// Why a string is not a supported architecture.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown architecture '{given}': expected one of x86-64, arm64 (systemd's names){hint}")]
pub struct ArchParseError {
    given: String,
    hint: String,
}

impl Arch {
    /// Every supported architecture.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

    /// systemd's name, as in `ARCHITECTURE=` and `%a`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86-64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Go's `GOARCH`, which Kubernetes, containerd and CNI use in their release URLs.
    pub const fn go_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// What `uname -m` prints on such a machine.
    pub const fn uname(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// The ELF `e_machine` value of native executables.
    pub const fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Arm64 => 183,
        }
    }

    /// The architecture whose native executables carry this ELF `e_machine`.
    pub fn from_elf_machine(machine: u16) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.elf_machine() == machine)
    }

    /// The architecture this program was compiled for, if it is a supported one.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = ArchParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86-64" => Ok(Arch::X86_64),
            "arm64" => Ok(Arch::Arm64),
            other => {
                // Upstream spellings are a common slip; name the right one instead of guessing,
                // because the arch ends up in file names and sysupdate patterns verbatim.
                let hint = match other {
                    "amd64" | "x86_64" | "x64" | "X86-64" => "; did you mean x86-64?",
                    "aarch64" | "arm64v8" | "ARM64" => "; did you mean arm64?",
                    _ => "",
                };
                Err(ArchParseError { given: other.to_owned(), hint: hint.to_owned() })
            }
        }
    }
}

crate::serde_via_str!(Arch);
crate::string_schema!(Arch, "Arch", "Architecture as systemd names it (ARCHITECTURE=, %a).", "^(x86-64|arm64)$");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for arch in Arch::ALL {
            assert_eq!(arch.to_string().parse::<Arch>().unwrap(), arch);
        }
    }

    #[test]
    fn upstream_spellings_are_refused_with_a_hint() {
        let err = "amd64".parse::<Arch>().unwrap_err().to_string();
        assert!(err.contains("did you mean x86-64?"), "{err}");
        let err = "aarch64".parse::<Arch>().unwrap_err().to_string();
        assert!(err.contains("did you mean arm64?"), "{err}");
        let err = "sparc".parse::<Arch>().unwrap_err().to_string();
        assert_eq!(err, "unknown architecture 'sparc': expected one of x86-64, arm64 (systemd's names)");
    }

    #[test]
    fn serde_uses_systemd_names() {
        assert_eq!(serde_json::to_string(&Arch::X86_64).unwrap(), "\"x86-64\"");
        assert_eq!(serde_json::from_str::<Arch>("\"arm64\"").unwrap(), Arch::Arm64);
        assert!(serde_json::from_str::<Arch>("\"amd64\"").is_err());
    }

    #[test]
    fn upstream_names() {
        assert_eq!(Arch::X86_64.go_arch(), "amd64");
        assert_eq!(Arch::Arm64.go_arch(), "arm64");
        assert_eq!(Arch::X86_64.uname(), "x86_64");
        assert_eq!(Arch::Arm64.elf_machine(), 183);
    }
}
