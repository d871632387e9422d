//! The `pci` check: bus 0 through configuration mechanism #1 (0xcf8/0xcfc)
//! and through ECAM (MCFG), which must agree when both exist. Also the
//! configuration-space accessor the drivers (`virtio`) use.

use crate::acpi::Acpi;
use crate::hw::{inl, mmio_read32, mmio_write16, mmio_write32, outl, outw, phys_readable};
use crate::msg::Msg;
use crate::plan::Plan;
use core::fmt::Write as _;

#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Function {
    devfn: u8,
    vendor: u16,
    device: u16,
    class: u32,
}

struct Bus0 {
    funcs: [Function; 256],
    count: usize,
}

impl Bus0 {
    fn list(&self) -> &[Function] {
        &self.funcs[..self.count]
    }
}

fn enumerate(read: impl Fn(u8, u8, u16) -> u32) -> Bus0 {
    let mut bus = Bus0 {
        funcs: [Function::default(); 256],
        count: 0,
    };
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let id = read(dev, func, 0);
            if id & 0xffff == 0xffff || id & 0xffff == 0 {
                if func == 0 {
                    break;
                }
                continue;
            }
            let class = read(dev, func, 8) >> 8;
            bus.funcs[bus.count] = Function {
                devfn: dev << 3 | func,
                vendor: id as u16,
                device: (id >> 16) as u16,
                class,
            };
            bus.count += 1;
            let header_type = (read(dev, func, 0x0c) >> 16) as u8;
            if func == 0 && header_type & 0x80 == 0 {
                break; // not multi-function
            }
        }
    }
    bus
}

fn cf8_read(dev: u8, func: u8, reg: u16) -> u32 {
    outl(
        0xcf8,
        0x8000_0000 | u32::from(dev) << 11 | u32::from(func) << 8 | u32::from(reg & 0xfc),
    );
    inl(0xcfc)
}

/// Mechanism #1 is there if CONFIG_ADDRESS holds what was written to it.
fn cf8_present() -> bool {
    let saved = inl(0xcf8);
    outl(0xcf8, 0x8000_0000);
    let present = inl(0xcf8) == 0x8000_0000;
    outl(0xcf8, saved);
    present
}

/// Read/write access to bus 0's configuration space, for drivers: ECAM when
/// the firmware names one (MCFG, else `_CBA`), else mechanism #1.
#[derive(Clone, Copy)]
pub enum ConfigSpace {
    Ecam(u64),
    Cf8,
}

impl ConfigSpace {
    pub fn find(acpi: Option<&Acpi>) -> Option<ConfigSpace> {
        let mcfg = acpi.and_then(|a| {
            a.mcfg()
                .iter()
                .find(|m| m.segment == 0 && m.bus_start == 0)
                .map(|m| m.base)
        });
        match mcfg.or_else(|| acpi.and_then(|a| a.cba)) {
            Some(base) if phys_readable(base, 1 << 20) => Some(ConfigSpace::Ecam(base)),
            _ => cf8_present().then_some(ConfigSpace::Cf8),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ConfigSpace::Ecam(_) => "ecam",
            ConfigSpace::Cf8 => "cf8",
        }
    }

    fn ecam(base: u64, devfn: u8, reg: u16) -> u64 {
        base + (u64::from(devfn) << 12 | u64::from(reg & 0xfff))
    }

    fn cf8_select(devfn: u8, reg: u16) {
        outl(
            0xcf8,
            0x8000_0000 | u32::from(devfn) << 8 | u32::from(reg & 0xfc),
        );
    }

    pub fn read32(&self, devfn: u8, reg: u16) -> u32 {
        match *self {
            ConfigSpace::Ecam(b) => mmio_read32(Self::ecam(b, devfn, reg & !3)),
            ConfigSpace::Cf8 => {
                Self::cf8_select(devfn, reg);
                inl(0xcfc)
            }
        }
    }

    pub fn read16(&self, devfn: u8, reg: u16) -> u16 {
        (self.read32(devfn, reg) >> (8 * (reg & 2))) as u16
    }

    pub fn read8(&self, devfn: u8, reg: u16) -> u8 {
        (self.read32(devfn, reg) >> (8 * (reg & 3))) as u8
    }

    pub fn write32(&self, devfn: u8, reg: u16, value: u32) {
        match *self {
            ConfigSpace::Ecam(b) => mmio_write32(Self::ecam(b, devfn, reg & !3), value),
            ConfigSpace::Cf8 => {
                Self::cf8_select(devfn, reg);
                outl(0xcfc, value);
            }
        }
    }

    /// A 16-bit write (command register, MSI-X message control): no
    /// read-modify-write of the neighbouring register.
    pub fn write16(&self, devfn: u8, reg: u16, value: u16) {
        match *self {
            ConfigSpace::Ecam(b) => mmio_write16(Self::ecam(b, devfn, reg & !1), value),
            ConfigSpace::Cf8 => {
                Self::cf8_select(devfn, reg);
                outw(0xcfc + (reg & 2), value);
            }
        }
    }
}

pub fn check(acpi: &Result<Acpi, Msg>, plan: &Plan) -> Result<(), Msg> {
    let mut why = Msg::new();
    let cf8 = cf8_present().then(|| enumerate(cf8_read));
    // MCFG, else a `_CBA` in the DSDT (QEMU microvm describes ECAM only there).
    let acpi = acpi.as_ref().ok();
    let mcfg = acpi.and_then(|a| {
        a.mcfg()
            .iter()
            .find(|m| m.segment == 0 && m.bus_start == 0)
            .map(|m| m.base)
    });
    let (ecam_base, ecam_source) = match (mcfg, acpi.and_then(|a| a.cba)) {
        (Some(b), _) => (Some(b), "mcfg"),
        (None, Some(b)) => (Some(b), "dsdt-cba"),
        (None, None) => (None, "none"),
    };
    let ecam = match ecam_base {
        Some(base) if phys_readable(base, 1 << 20) => Some(enumerate(|dev, func, reg| {
            mmio_read32(
                base + (u64::from(dev) << 15 | u64::from(func) << 12 | u64::from(reg & 0xffc)),
            )
        })),
        Some(base) => {
            let _ = write!(why, "ECAM at {base:#x} is outside the probe's map; ");
            None
        }
        None => None,
    };
    let shown = match (&cf8, &ecam) {
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => {
            return Err(fail!(
                "neither configuration mechanism #1 nor ECAM (MCFG or _CBA)"
            ))
        }
    };
    for f in shown.list() {
        outln!(
            "PROBE pci 00:{:02x}.{} vendor={:04x} device={:04x} class={:06x}",
            f.devfn >> 3,
            f.devfn & 7,
            f.vendor,
            f.device,
            f.class
        );
    }
    let agree = match (&cf8, &ecam) {
        (Some(a), Some(b)) => a.list() == b.list(),
        _ => true,
    };
    outln!(
        "PROBE pci functions={} cf8={} ecam={} ecam_source={} agree={}",
        shown.count,
        if cf8.is_some() { "yes" } else { "no" },
        OptHex(ecam.as_ref().and(ecam_base)),
        ecam_source,
        if agree { "yes" } else { "no" }
    );
    if let (Some(a), Some(b), false) = (&cf8, &ecam, agree) {
        let _ = write!(
            why,
            "mechanism #1 sees {} functions, ECAM {}: ",
            a.count, b.count
        );
        for f in b.list().iter().filter(|f| !a.list().contains(f)) {
            let _ = write!(
                why,
                "ecam-only 00:{:02x}.{} {:04x}:{:04x}; ",
                f.devfn >> 3,
                f.devfn & 7,
                f.vendor,
                f.device
            );
        }
        for f in a.list().iter().filter(|f| !b.list().contains(f)) {
            let _ = write!(
                why,
                "cf8-only 00:{:02x}.{} {:04x}:{:04x}; ",
                f.devfn >> 3,
                f.devfn & 7,
                f.vendor,
                f.device
            );
        }
    }
    if let Some(want) = plan.pci_devices {
        if shown.count as u64 != want {
            let _ = write!(why, "{} functions on bus 0, expected {want}; ", shown.count);
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

struct OptHex(Option<u64>);

impl core::fmt::Display for OptHex {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v:#x}"),
            None => f.write_str("no"),
        }
    }
}
