//! The test plan: `probe.KEY=VALUE` tokens of the command line.

use crate::msg::Msg;
use core::fmt::Write as _;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Check {
    Cmdline,
    Memory,
    Acpi,
    Smp,
    Rtc,
    Pci,
    Irq,
}

/// Every check, in the order they run.
pub const ALL_CHECKS: [Check; 7] = [
    Check::Cmdline,
    Check::Memory,
    Check::Acpi,
    Check::Smp,
    Check::Rtc,
    Check::Pci,
    Check::Irq,
];

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::Cmdline => "cmdline",
            Check::Memory => "memory",
            Check::Acpi => "acpi",
            Check::Smp => "smp",
            Check::Rtc => "rtc",
            Check::Pci => "pci",
            Check::Irq => "irq",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }

    fn from_name(name: &[u8]) -> Option<Check> {
        ALL_CHECKS.into_iter().find(|c| c.name().as_bytes() == name)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Poweroff,
    ResetAcpi,
    ResetKbd,
    TripleFault,
    Halt,
}

impl Exit {
    pub fn name(self) -> &'static str {
        match self {
            Exit::Poweroff => "poweroff",
            Exit::ResetAcpi => "reset-acpi",
            Exit::ResetKbd => "reset-kbd",
            Exit::TripleFault => "triple-fault",
            Exit::Halt => "halt",
        }
    }
}

pub struct Plan {
    checks: u32,
    pub cpus: Option<u64>,
    pub mem_mib: Option<u64>,
    pub rtc: Option<u64>,
    pub pci_devices: Option<u64>,
    pub exit: Exit,
    pub cmdline_len: Option<u64>,
    /// Expected FNV-1a-64 of the command line bytes before the token, and
    /// the token's byte offset.
    pub cmdline_fnv: Option<(u64, usize)>,
    /// Unknown keys and bad values: they fail the `plan` pseudo-check.
    pub errors: Msg,
}

impl Plan {
    pub fn runs(&self, check: Check) -> bool {
        self.checks & check.bit() != 0
    }
}

pub fn parse(cmdline: &[u8]) -> Plan {
    let mut plan = Plan {
        checks: ALL_CHECKS.iter().fold(0, |m, c| m | c.bit()),
        cpus: None,
        mem_mib: None,
        rtc: None,
        pci_devices: None,
        exit: Exit::Poweroff,
        cmdline_len: None,
        cmdline_fnv: None,
        errors: Msg::new(),
    };
    let mut pos = 0;
    while pos < cmdline.len() {
        while pos < cmdline.len() && cmdline[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let start = pos;
        while pos < cmdline.len() && !cmdline[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let token = &cmdline[start..pos];
        let Some(rest) = token.strip_prefix(b"probe.") else { continue };
        let (key, value) = match rest.iter().position(|&b| b == b'=') {
            Some(eq) => (&rest[..eq], &rest[eq + 1..]),
            None => (rest, &b""[..]),
        };
        if !apply(&mut plan, key, value, start) {
            let _ = write!(plan.errors, "bad token {} ", crate::console::Quoted(token));
        }
    }
    plan
}

/// Apply one `probe.KEY=VALUE`; false if the key or value is not understood.
fn apply(plan: &mut Plan, key: &[u8], value: &[u8], offset: usize) -> bool {
    match key {
        b"checks" => {
            let mut mask = 0;
            if value != b"none" && !value.is_empty() {
                for name in value.split(|&b| b == b',') {
                    match (name, Check::from_name(name)) {
                        (b"all", _) => mask |= ALL_CHECKS.iter().fold(0, |m, c| m | c.bit()),
                        (_, Some(c)) => mask |= c.bit(),
                        (_, None) => return false,
                    }
                }
            }
            plan.checks = mask;
        }
        b"cpus" => return set(&mut plan.cpus, parse_dec(value)),
        b"mem_mib" => return set(&mut plan.mem_mib, parse_dec(value)),
        b"rtc" => return set(&mut plan.rtc, parse_dec(value)),
        b"pci_devices" => return set(&mut plan.pci_devices, parse_dec(value)),
        b"cmdline_len" => return set(&mut plan.cmdline_len, parse_dec(value)),
        b"cmdline_fnv" => match parse_hex(value) {
            Some(h) if value.len() == 16 => plan.cmdline_fnv = Some((h, offset)),
            _ => return false,
        },
        b"exit" => {
            plan.exit = match value {
                b"poweroff" => Exit::Poweroff,
                b"reset-acpi" => Exit::ResetAcpi,
                b"reset-kbd" => Exit::ResetKbd,
                b"triple-fault" => Exit::TripleFault,
                b"halt" => Exit::Halt,
                _ => return false,
            }
        }
        _ => return false,
    }
    true
}

fn set(slot: &mut Option<u64>, value: Option<u64>) -> bool {
    *slot = value;
    value.is_some()
}

pub fn parse_dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0')))
}

pub fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(d))
    })
}

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The selected checks, comma-separated ("none" if none).
pub struct Selected<'a>(pub &'a Plan);

impl core::fmt::Display for Selected<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut first = true;
        for c in ALL_CHECKS.iter().filter(|c| self.0.runs(**c)) {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(c.name())?;
            first = false;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}
