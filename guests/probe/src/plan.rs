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
    Blk,
    Rng,
    Net,
    Vsock,
    Hostile,
}

/// Every check, in the order they run.
pub const ALL_CHECKS: [Check; 12] = [
    Check::Cmdline,
    Check::Memory,
    Check::Acpi,
    Check::Smp,
    Check::Rtc,
    Check::Pci,
    Check::Irq,
    Check::Blk,
    Check::Rng,
    Check::Net,
    Check::Vsock,
    Check::Hostile,
];

/// What runs by default and for `all`: the machine checks. `blk`, `rng`,
/// `net` and `vsock` drive devices (assign BARs, write disks, send frames),
/// so they only run when named.
fn default_checks() -> u32 {
    ALL_CHECKS
        .iter()
        .filter(|c| {
            !matches!(
                c,
                Check::Blk | Check::Rng | Check::Net | Check::Vsock | Check::Hostile
            )
        })
        .fold(0, |m, c| m | c.bit())
}

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
            Check::Blk => "blk",
            Check::Rng => "rng",
            Check::Net => "net",
            Check::Vsock => "vsock",
            Check::Hostile => "hostile",
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

/// The `blk` check's operations (`probe.blk_ops`), in the order they run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BlkOp {
    Verify,
    Write,
    Ro,
    Discard,
    Reset,
    Edge,
    Bench,
    Durable,
}

pub const BLK_OPS: [BlkOp; 8] = [
    BlkOp::Verify,
    BlkOp::Write,
    BlkOp::Ro,
    BlkOp::Discard,
    BlkOp::Reset,
    BlkOp::Edge,
    BlkOp::Bench,
    BlkOp::Durable,
];

impl BlkOp {
    pub fn name(self) -> &'static str {
        match self {
            BlkOp::Verify => "verify",
            BlkOp::Write => "write",
            BlkOp::Ro => "ro",
            BlkOp::Discard => "discard",
            BlkOp::Reset => "reset",
            BlkOp::Edge => "edge",
            BlkOp::Bench => "bench",
            BlkOp::Durable => "durable",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// The `blk` check's parameters (`probe.blk_*`).
pub struct BlkPlan {
    ops: u32,
    /// Interrupts (MSI-X) rather than polling the used rings.
    pub msix: bool,
    /// Expected number of virtio-blk functions.
    pub disks: Option<u64>,
    /// Run the operations on this disk (index in bus order) only.
    pub disk: Option<u64>,
    pub seed: u64,
    pub verify_sectors: Option<u64>,
    pub write_seed: u64,
    pub write_lba: u64,
    pub write_mib: u64,
    pub discard_lba: u64,
    pub discard_sectors: u64,
    pub discard_zeroes: bool,
    pub qd: u64,
    pub req_kib: u64,
    pub queues: Option<u64>,
    pub bench_mib: u64,
    pub bench_ios: u64,
}

impl BlkPlan {
    pub fn runs(&self, op: BlkOp) -> bool {
        self.ops & op.bit() != 0
    }
}

/// `BlkPlan` operations, comma-separated ("none" if none).
pub struct BlkOps<'a>(pub &'a BlkPlan);

impl core::fmt::Display for BlkOps<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut first = true;
        for op in BLK_OPS.iter().filter(|o| self.0.runs(**o)) {
            f.write_str(if first { "" } else { "," })?;
            f.write_str(op.name())?;
            first = false;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// The `rng` check's parameters (`probe.rng_*`).
pub struct RngPlan {
    pub msix: bool,
    pub bytes: u64,
    /// Bytes per request (buffer size).
    pub req: u64,
    /// Expected number of virtio-rng functions.
    pub devs: Option<u64>,
}

/// At most this many NICs are driven (and addressed by `probe.net_ip`).
pub const MAX_NICS: usize = 4;

/// The `net` check's parameters (`probe.net_*`; README).
pub struct NetPlan {
    pub msix: bool,
    pub nics: Option<u64>,
    pub nic: Option<u64>,
    pub offload: bool,
    pub mrg: bool,
    pub rx_buf: u64,
    pub ip: [Option<[u8; 4]>; MAX_NICS],
    pub peer: [Option<[u8; 4]>; MAX_NICS],
    pub serve_ms: Option<u64>,
    pub pings: u64,
    pub tx_frames: u64,
    pub rx_frames: u64,
    pub bench: u64,
    pub bench_frames: u64,
    pub bench_pings: u64,
    pub window: u64,
    pub tso: u64,
}

/// The `vsock` check's parameters (`probe.vsock_*`; README).
pub struct VsockPlan {
    pub msix: bool,
    /// The configuration's `guest_cid` must be this.
    pub cid: Option<u64>,
    /// Connect phase: host port, connections, pattern bytes each.
    pub connect: Option<u64>,
    pub conns: u64,
    pub bytes: u64,
    /// Listen phase: port, connections to accept.
    pub listen: Option<u64>,
    pub accept: u64,
    /// Benchmark bytes each way (0: no benchmark).
    pub bench: u64,
    pub buf_alloc: u64,
    pub rx_buf: u64,
    pub pkt: u64,
    pub split: bool,
    /// Connect-phase connections (bit i: connection i) the host resets.
    pub expect_reset: u32,
    /// Each phase ends after this long at most.
    pub ms: u64,
}

/// `probe.exit_loop=KIND:N`: N exits of one kind, timed (README).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ExitLoop {
    Pio,
    Mmio,
    Notify,
}

impl ExitLoop {
    pub fn name(self) -> &'static str {
        match self {
            ExitLoop::Pio => "pio",
            ExitLoop::Mmio => "mmio",
            ExitLoop::Notify => "notify",
        }
    }
}

/// At most this many `probe.exit_loop` tokens (run in command-line order).
pub const MAX_EXIT_LOOPS: usize = 4;
/// At most this many `probe.hostile_skip_ports` ranges.
pub const MAX_SKIP_RANGES: usize = 8;

/// The `hostile` check's parameters (`probe.hostile_*`).
pub struct HostilePlan {
    pub seed: u64,
    pub ms: u64,
    /// Extra port ranges (inclusive) hostile mode must not touch.
    pub skip_ports: [(u16, u16); MAX_SKIP_RANGES],
    pub skip_count: usize,
}

pub struct Plan {
    checks: u32,
    pub exit_loops: [Option<(ExitLoop, u64)>; MAX_EXIT_LOOPS],
    pub hostile: HostilePlan,
    pub cpus: Option<u64>,
    pub mem_mib: Option<u64>,
    pub rtc: Option<u64>,
    pub pci_devices: Option<u64>,
    pub exit: Exit,
    pub cmdline_len: Option<u64>,
    /// Expected FNV-1a-64 of the command line bytes before the token, and
    /// the token's byte offset.
    pub cmdline_fnv: Option<(u64, usize)>,
    pub blk: BlkPlan,
    pub rng: RngPlan,
    pub net: NetPlan,
    pub vsock: VsockPlan,
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
        checks: default_checks(),
        exit_loops: [None; MAX_EXIT_LOOPS],
        hostile: HostilePlan {
            seed: 1,
            ms: 3000,
            skip_ports: [(0, 0); MAX_SKIP_RANGES],
            skip_count: 0,
        },
        cpus: None,
        mem_mib: None,
        rtc: None,
        pci_devices: None,
        exit: Exit::Poweroff,
        cmdline_len: None,
        cmdline_fnv: None,
        blk: BlkPlan {
            ops: 0,
            msix: true,
            disks: None,
            disk: None,
            seed: 1,
            verify_sectors: None,
            write_seed: 2,
            write_lba: 0,
            write_mib: 1,
            discard_lba: 2048,
            discard_sectors: 2048,
            discard_zeroes: false,
            qd: 16,
            req_kib: 64,
            queues: None,
            bench_mib: 0,
            bench_ios: 10_000,
        },
        rng: RngPlan {
            msix: true,
            bytes: 1 << 20,
            req: 4096,
            devs: None,
        },
        net: NetPlan {
            msix: true,
            nics: None,
            nic: None,
            offload: false,
            mrg: true,
            rx_buf: 2048,
            ip: [None; MAX_NICS],
            peer: [None; MAX_NICS],
            serve_ms: None,
            pings: 0,
            tx_frames: 0,
            rx_frames: 0,
            bench: 0,
            bench_frames: 100_000,
            bench_pings: 1000,
            window: 256,
            tso: 0,
        },
        vsock: VsockPlan {
            msix: true,
            cid: None,
            connect: None,
            conns: 1,
            bytes: 65536,
            listen: None,
            accept: 1,
            bench: 0,
            buf_alloc: 65536,
            rx_buf: 4096,
            pkt: 4096,
            split: false,
            expect_reset: 0,
            ms: 30_000,
        },
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
        let Some(rest) = token.strip_prefix(b"probe.") else {
            continue;
        };
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
                        (b"all", _) => mask |= default_checks(),
                        (_, Some(c)) => mask |= c.bit(),
                        (_, None) => return false,
                    }
                }
            }
            plan.checks = mask;
        }
        b"exit_loop" => {
            let Some(colon) = value.iter().position(|&b| b == b':') else {
                return false;
            };
            let kind = match &value[..colon] {
                b"pio" => ExitLoop::Pio,
                b"mmio" => ExitLoop::Mmio,
                b"notify" => ExitLoop::Notify,
                _ => return false,
            };
            let Some(n) = parse_num(&value[colon + 1..]).filter(|n| (1..=1 << 32).contains(n))
            else {
                return false;
            };
            match plan.exit_loops.iter_mut().find(|l| l.is_none()) {
                Some(slot) => *slot = Some((kind, n)),
                None => return false,
            }
        }
        b"hostile_seed" => return set_num(&mut plan.hostile.seed, value, 0, u64::MAX),
        b"hostile_ms" => return set_num(&mut plan.hostile.ms, value, 1, 600_000),
        b"hostile_skip_ports" => {
            let mut n = 0;
            for part in value.split(|&b| b == b',') {
                let (lo, hi) = match part.iter().position(|&b| b == b'-') {
                    Some(d) => (parse_num(&part[..d]), parse_num(&part[d + 1..])),
                    None => (parse_num(part), parse_num(part)),
                };
                match (lo, hi) {
                    (Some(lo), Some(hi)) if lo <= hi && hi <= 0xffff && n < MAX_SKIP_RANGES => {
                        plan.hostile.skip_ports[n] = (lo as u16, hi as u16);
                        n += 1;
                    }
                    _ => return false,
                }
            }
            plan.hostile.skip_count = n;
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
        b"blk_ops" => {
            let mut mask = 0;
            if value != b"none" && !value.is_empty() {
                for name in value.split(|&b| b == b',') {
                    match BLK_OPS.iter().find(|o| o.name().as_bytes() == name) {
                        Some(op) => mask |= op.bit(),
                        None => return false,
                    }
                }
            }
            plan.blk.ops = mask | (plan.blk.ops & BlkOp::Bench.bit());
        }
        b"blk_irq" => {
            plan.blk.msix = match value {
                b"msix" => true,
                b"poll" => false,
                _ => return false,
            }
        }
        b"blk_disks" => return set(&mut plan.blk.disks, parse_num(value)),
        b"blk_disk" if value == b"all" => plan.blk.disk = None,
        b"blk_disk" => return set(&mut plan.blk.disk, parse_num(value)),
        b"blk_seed" => return set_num(&mut plan.blk.seed, value, 0, u64::MAX),
        b"blk_verify_sectors" => return set(&mut plan.blk.verify_sectors, parse_num(value)),
        b"blk_write_seed" => return set_num(&mut plan.blk.write_seed, value, 0, u64::MAX),
        b"blk_write_lba" => return set_num(&mut plan.blk.write_lba, value, 0, u64::MAX >> 10),
        b"blk_write_mib" => return set_num(&mut plan.blk.write_mib, value, 1, 1 << 20),
        b"blk_discard_lba" => return set_num(&mut plan.blk.discard_lba, value, 0, u64::MAX >> 10),
        b"blk_discard_sectors" => return set_num(&mut plan.blk.discard_sectors, value, 2, 1 << 31),
        b"blk_discard_zeroes" => {
            plan.blk.discard_zeroes = match value {
                b"1" => true,
                b"0" => false,
                _ => return false,
            }
        }
        b"blk_qd" => return set_num(&mut plan.blk.qd, value, 1, 128),
        b"blk_req_kib" => return set_num(&mut plan.blk.req_kib, value, 1, 1024),
        b"blk_queues" => match parse_num(value) {
            Some(n @ 1..=8) => plan.blk.queues = Some(n),
            _ => return false,
        },
        b"blk_bench" => {
            if !set_num(&mut plan.blk.bench_mib, value, 0, 1 << 20) {
                return false;
            }
            plan.blk.ops &= !BlkOp::Bench.bit();
            if plan.blk.bench_mib != 0 {
                plan.blk.ops |= BlkOp::Bench.bit();
            }
        }
        b"blk_bench_ios" => return set_num(&mut plan.blk.bench_ios, value, 1, 1 << 32),
        b"rng_irq" => return set_irq(&mut plan.rng.msix, value),
        b"rng_bytes" => return set_num(&mut plan.rng.bytes, value, 1, 1 << 34),
        b"rng_req" => return set_num(&mut plan.rng.req, value, 1, 65536),
        b"rng_devs" => return set(&mut plan.rng.devs, parse_num(value)),
        b"net_irq" => return set_irq(&mut plan.net.msix, value),
        b"net_nics" => return set(&mut plan.net.nics, parse_num(value)),
        b"net_nic" if value == b"all" => plan.net.nic = None,
        b"net_nic" => return set(&mut plan.net.nic, parse_num(value)),
        b"net_offload" => return set_bool(&mut plan.net.offload, value),
        b"net_mrg" => return set_bool(&mut plan.net.mrg, value),
        b"net_rx_buf" => return set_num(&mut plan.net.rx_buf, value, 64, 4096),
        b"net_ip" => return set_ips(&mut plan.net.ip, value),
        b"net_peer" => return set_ips(&mut plan.net.peer, value),
        b"net_serve_ms" => {
            return set(
                &mut plan.net.serve_ms,
                parse_num(value).filter(|&v| v <= 3_600_000),
            )
        }
        b"net_pings" => return set_num(&mut plan.net.pings, value, 0, 1 << 32),
        b"net_tx_frames" => return set_num(&mut plan.net.tx_frames, value, 0, 1 << 32),
        b"net_rx_frames" => return set_num(&mut plan.net.rx_frames, value, 0, 1 << 32),
        b"net_bench" => match parse_num(value) {
            Some(v @ (0 | 60..=65535)) => plan.net.bench = v,
            _ => return false,
        },
        b"net_bench_frames" => return set_num(&mut plan.net.bench_frames, value, 1, 1 << 32),
        b"net_bench_pings" => return set_num(&mut plan.net.bench_pings, value, 0, 1 << 20),
        b"net_window" => return set_num(&mut plan.net.window, value, 1, 4096),
        b"net_tso" => return set_num(&mut plan.net.tso, value, 0, 65000),
        b"vsock_irq" => return set_irq(&mut plan.vsock.msix, value),
        b"vsock_cid" => return set(&mut plan.vsock.cid, parse_num(value)),
        b"vsock_connect" => return set(&mut plan.vsock.connect, parse_port(value)),
        b"vsock_conns" => return set_num(&mut plan.vsock.conns, value, 1, 16),
        b"vsock_bytes" => return set_num(&mut plan.vsock.bytes, value, 0, 1 << 36),
        b"vsock_listen" => return set(&mut plan.vsock.listen, parse_port(value)),
        b"vsock_accept" => return set_num(&mut plan.vsock.accept, value, 1, 16),
        b"vsock_bench" => return set_num(&mut plan.vsock.bench, value, 0, 1 << 40),
        b"vsock_buf_alloc" => return set_num(&mut plan.vsock.buf_alloc, value, 4096, 1 << 20),
        b"vsock_rx_buf" => return set_num(&mut plan.vsock.rx_buf, value, 64, 65536),
        b"vsock_pkt" => return set_num(&mut plan.vsock.pkt, value, 1, 65536),
        b"vsock_split" => return set_bool(&mut plan.vsock.split, value),
        b"vsock_ms" => return set_num(&mut plan.vsock.ms, value, 1, 3_600_000),
        b"vsock_expect_reset" => {
            let mut mask = 0u32;
            for part in value.split(|&b| b == b',') {
                match parse_num(part) {
                    Some(i @ 0..=15) => mask |= 1 << i,
                    _ => return false,
                }
            }
            plan.vsock.expect_reset = mask;
        }
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

fn set_irq(msix: &mut bool, value: &[u8]) -> bool {
    *msix = match value {
        b"msix" => true,
        b"poll" => false,
        _ => return false,
    };
    true
}

/// A vsock port: 0..=0xffff_fffe (0xffff_ffff is VMADDR_PORT_ANY).
fn parse_port(value: &[u8]) -> Option<u64> {
    parse_num(value).filter(|&p| p < 0xffff_ffff)
}

fn set_bool(slot: &mut bool, value: &[u8]) -> bool {
    *slot = match value {
        b"1" => true,
        b"0" => false,
        _ => return false,
    };
    true
}

/// `A.B.C.D[,A.B.C.D...]`: the i-th address for the i-th NIC.
fn set_ips(slots: &mut [Option<[u8; 4]>; MAX_NICS], value: &[u8]) -> bool {
    let mut out = [None; MAX_NICS];
    for (i, part) in value.split(|&b| b == b',').enumerate() {
        match (out.get_mut(i), parse_ipv4(part)) {
            (Some(slot), Some(ip)) => *slot = Some(ip),
            _ => return false,
        }
    }
    *slots = out;
    true
}

pub fn parse_ipv4(s: &[u8]) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut n = 0;
    for part in s.split(|&b| b == b'.') {
        if n == 4 || part.len() > 3 {
            return None;
        }
        ip[n] = u8::try_from(parse_dec(part)?).ok()?;
        n += 1;
    }
    (n == 4).then_some(ip)
}

fn set(slot: &mut Option<u64>, value: Option<u64>) -> bool {
    *slot = value;
    value.is_some()
}

/// `*slot = value` if it parses (decimal or 0x-hex) within `min..=max`.
fn set_num(slot: &mut u64, value: &[u8], min: u64, max: u64) -> bool {
    match parse_num(value) {
        Some(v) if (min..=max).contains(&v) => {
            *slot = v;
            true
        }
        _ => false,
    }
}

/// Decimal, or hexadecimal with a `0x` prefix.
pub fn parse_num(s: &[u8]) -> Option<u64> {
    match s.strip_prefix(b"0x") {
        Some(hex) => parse_hex(hex),
        None => parse_dec(s),
    }
}

pub fn parse_dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
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
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
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
