//! virtio over PCI, modern devices only (virtio 1.x, section 4.1), from ring 3.
//!
//! * Discovery: functions on bus 0 with vendor 0x1af4 and device
//!   0x1040 + type (transitional IDs 0x1000..=0x103f are ignored).
//! * BARs: sized the standard way (all-ones, read back) with decoding off;
//!   a BAR left at 0 (QEMU's microvm has no firmware to do it) is placed in
//!   the host bridge's memory window (`_CRS` of the DSDT, else the fixed
//!   `FALLBACK_WINDOW`), one the VMM set is kept. Then memory space, bus
//!   master and INTx-disable are switched on. BARs outside the 3-4 GiB hole
//!   (which the entry code maps uncached) are mapped uncached here (at an
//!   alias from 127 TiB when not identity-mappable, from 2^47 up).
//! * Capabilities: the first virtio capability of each of the types common,
//!   notify (with its multiplier), ISR and device, and MSI-X.
//! * The common configuration (feature negotiation, status, queues) and
//!   MSI-X table programming. Split virtqueues live in `queue.rs`.
//!
//! Interrupts: each MSI-X table entry the drivers use gets its own IDT vector
//! `VIRTIO_VECTOR_BASE + slot`, whose ring-0 stub only bumps
//! `PROBE_VIRTIO_IRQS[slot]` and sends the EOI; the drivers wait on those
//! counters from ring 3.

pub mod bus;
pub mod data;
pub mod queue;

use crate::memory;
use crate::msg::Msg;
use crate::pci::ConfigSpace;
use crate::time::Deadline;
use core::fmt::{self, Write as _};
use core::sync::atomic::{AtomicU32, Ordering};

pub use crate::entry::{VIRTIO_VECTORS, VIRTIO_VECTOR_BASE};

/// Bumped by the ring-0 stubs of vectors `VIRTIO_VECTOR_BASE + i`.
#[no_mangle]
pub static PROBE_VIRTIO_IRQS: [AtomicU32; VIRTIO_VECTORS] =
    [const { AtomicU32::new(0) }; VIRTIO_VECTORS];

pub fn irq_count(slot: usize) -> u32 {
    PROBE_VIRTIO_IRQS[slot % VIRTIO_VECTORS].load(Ordering::SeqCst)
}

pub const VENDOR: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + the virtio device type.
pub const MODERN_BASE: u16 = 0x1040;

/// Device status bits (2.1).
pub const S_ACKNOWLEDGE: u8 = 1;
pub const S_DRIVER: u8 = 2;
pub const S_DRIVER_OK: u8 = 4;
pub const S_FEATURES_OK: u8 = 8;
pub const S_NEEDS_RESET: u8 = 0x40;
pub const S_FAILED: u8 = 0x80;

/// Reserved feature bits (6).
pub const F_VERSION_1: u64 = 1 << 32;
/// MSI-X "no vector" (4.1.4.3 / 4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xffff;

/// Where BARs go when the DSDT names no host-bridge memory window: the
/// 32-bit window of QEMU's microvm and of utsuwa (0xc000_0000..0xe000_0000).
pub const FALLBACK_WINDOW: (u64, u64) = (0xc000_0000, 0x2000_0000);

/// Common configuration registers (4.1.4.3).
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// Size of the structure up to and including `queue_device`.
    pub const LEN: u32 = 0x38;
}

/// virtio PCI capability types (4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const PCI_CAP_VENDOR: u8 = 0x09;
const PCI_CAP_MSIX: u8 = 0x11;

const PCI_COMMAND: u16 = 0x04;
const PCI_STATUS: u16 = 0x06;
const CMD_IO: u16 = 1 << 0;
const CMD_MEMORY: u16 = 1 << 1;
const CMD_BUS_MASTER: u16 = 1 << 2;
const CMD_INTX_DISABLE: u16 = 1 << 10;
const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_FUNCTION_MASK: u16 = 1 << 14;

// ---- MMIO in BARs (the 3-4 GiB hole, or ranges `memory::map_mmio` mapped) ----

fn rd8(addr: u64) -> u8 {
    // SAFETY: a device register inside a BAR the probe mapped uncached.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}
fn rd16(addr: u64) -> u16 {
    // SAFETY: as in `rd8`; 2-aligned (register offsets are).
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}
fn rd32(addr: u64) -> u32 {
    // SAFETY: as in `rd8`; 4-aligned.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}
fn wr8(addr: u64, v: u8) {
    // SAFETY: as in `rd8`.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}
pub(crate) fn wr16(addr: u64, v: u16) {
    // SAFETY: as in `rd16`.
    unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
}
fn wr32(addr: u64, v: u32) {
    // SAFETY: as in `rd32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// Bus 0 device/function, printed `00:DD.F`.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct DevFn(pub u8);

impl fmt::Display for DevFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00:{:02x}.{}", self.0 >> 3, self.0 & 7)
    }
}

#[derive(Clone, Copy, Default)]
pub struct Bar {
    /// Bus (physical) address.
    pub addr: u64,
    /// Where the probe reaches it (the same, unless it is above 2^47).
    pub va: u64,
    pub size: u64,
    pub is64: bool,
    /// The probe placed it (it was 0); else the VMM/firmware had.
    pub by_probe: bool,
}

/// The modern virtio functions on bus 0: (devfn, device ID).
pub fn scan(cfg: &ConfigSpace, out: &mut [(DevFn, u16)]) -> usize {
    let mut n = 0;
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let devfn = dev << 3 | func;
            let id = cfg.read32(devfn, 0);
            if id & 0xffff == 0xffff || id & 0xffff == 0 {
                if func == 0 {
                    break;
                }
                continue;
            }
            let (vendor, device) = (id as u16, (id >> 16) as u16);
            if vendor == VENDOR
                && (MODERN_BASE..=MODERN_BASE + 0x3f).contains(&device)
                && n < out.len()
            {
                out[n] = (DevFn(devfn), device);
                n += 1;
            }
            if func == 0 && cfg.read8(devfn, 0x0e) & 0x80 == 0 {
                break;
            }
        }
    }
    n
}

/// Places BARs in the host bridge's memory windows.
pub struct BarAllocator {
    /// (next free, end) in the window below 4 GiB and in the one above.
    low: (u64, u64),
    high: Option<(u64, u64)>,
    /// Ranges already taken (BARs the VMM or an earlier pass placed).
    taken: [(u64, u64); 32],
    ntaken: usize,
    pub source: &'static str,
}

impl BarAllocator {
    pub fn new(mem32: Option<(u64, u64)>, mem64: Option<(u64, u64)>) -> BarAllocator {
        let (low, source) = match mem32 {
            Some(w) => (w, "crs"),
            None => (FALLBACK_WINDOW, "fixed"),
        };
        BarAllocator {
            low: (low.0, low.0 + low.1),
            high: mem64.map(|w| (w.0, w.0 + w.1)),
            taken: [(0, 0); 32],
            ntaken: 0,
            source,
        }
    }

    pub fn window(&self) -> (u64, u64) {
        self.low
    }

    fn reserve(&mut self, start: u64, size: u64) {
        if self.ntaken < self.taken.len() {
            self.taken[self.ntaken] = (start, start + size);
            self.ntaken += 1;
        }
    }

    fn place(&self, (mut next, end): (u64, u64), size: u64) -> Option<u64> {
        'retry: loop {
            let start = next.checked_add(size - 1)? & !(size - 1);
            if start.checked_add(size)? > end {
                return None;
            }
            for &(a, b) in &self.taken[..self.ntaken] {
                if start < b && a < start + size {
                    next = b;
                    continue 'retry;
                }
            }
            return Some(start);
        }
    }

    /// A naturally aligned range of `size` bytes; above 4 GiB only if
    /// `is64` and the low window is full.
    fn alloc(&mut self, size: u64, is64: bool) -> Option<u64> {
        let addr = self.place(self.low, size).or_else(|| {
            if is64 {
                self.high.and_then(|w| self.place(w, size))
            } else {
                None
            }
        })?;
        self.reserve(addr, size);
        Some(addr)
    }
}

/// Size every BAR of `devfn` (decoding off meanwhile); the assigned ones
/// are reserved in `alloc`. Returns the BARs with their current addresses.
pub fn size_bars(cfg: &ConfigSpace, devfn: DevFn, alloc: &mut BarAllocator) -> [Bar; 6] {
    let d = devfn.0;
    let cmd = cfg.read16(d, PCI_COMMAND);
    cfg.write16(d, PCI_COMMAND, cmd & !(CMD_IO | CMD_MEMORY));
    let mut bars = [Bar::default(); 6];
    let mut i = 0;
    while i < 6 {
        let reg = 0x10 + 4 * i as u16;
        let lo = cfg.read32(d, reg);
        if lo & 1 != 0 {
            i += 1; // I/O BAR: modern virtio needs none
            continue;
        }
        let is64 = (lo >> 1) & 3 == 2 && i < 5;
        let hi = if is64 { cfg.read32(d, reg + 4) } else { 0 };
        cfg.write32(d, reg, 0xffff_ffff);
        let lo_mask = cfg.read32(d, reg);
        cfg.write32(d, reg, lo);
        let hi_mask = if is64 {
            cfg.write32(d, reg + 4, 0xffff_ffff);
            let m = cfg.read32(d, reg + 4);
            cfg.write32(d, reg + 4, hi);
            m
        } else {
            0xffff_ffff
        };
        let mask = u64::from(hi_mask) << 32 | u64::from(lo_mask & !0xf);
        let size = if lo_mask & !0xf == 0 && (!is64 || hi_mask == 0) {
            0
        } else {
            (!mask).wrapping_add(1)
        };
        let addr = u64::from(hi) << 32 | u64::from(lo & !0xf);
        if size != 0 && size.is_power_of_two() {
            bars[i] = Bar {
                addr,
                va: addr,
                size,
                is64,
                by_probe: false,
            };
            if addr != 0 {
                alloc.reserve(addr, size);
            }
        }
        i += if is64 { 2 } else { 1 };
    }
    cfg.write16(d, PCI_COMMAND, cmd);
    bars
}

/// Place the BARs still at 0, then turn on memory decoding and bus
/// mastering (and INTx off: the drivers use MSI-X or poll).
pub fn assign_bars(
    cfg: &ConfigSpace,
    devfn: DevFn,
    bars: &mut [Bar; 6],
    alloc: &mut BarAllocator,
) -> Result<(), Msg> {
    let d = devfn.0;
    let cmd = cfg.read16(d, PCI_COMMAND);
    cfg.write16(d, PCI_COMMAND, cmd & !(CMD_IO | CMD_MEMORY));
    let mut why = Msg::new();
    for (i, bar) in bars.iter_mut().enumerate() {
        if bar.size == 0 {
            continue;
        }
        if bar.addr == 0 {
            match alloc.alloc(bar.size, bar.is64) {
                Some(a) => {
                    let reg = 0x10 + 4 * i as u16;
                    cfg.write32(d, reg, (a as u32) | (cfg.read32(d, reg) & 0xf));
                    if bar.is64 {
                        cfg.write32(d, reg + 4, (a >> 32) as u32);
                    }
                    bar.addr = a;
                    bar.va = a;
                    bar.by_probe = true;
                }
                None => {
                    let _ = write!(
                        why,
                        "BAR{i} ({:#x} bytes) does not fit the window; ",
                        bar.size
                    );
                    continue;
                }
            }
        }
        // The entry code maps 3-4 GiB uncached; anything else is mapped here.
        if !(bar.addr >= 0xc000_0000 && bar.addr + bar.size <= 1 << 32) {
            match memory::map_mmio(bar.addr, bar.size) {
                Ok(va) => bar.va = va,
                Err(at) => {
                    let _ = write!(why, "BAR{i} at {:#x}: cannot map {at:#x}; ", bar.addr);
                    bar.size = 0; // unusable
                }
            }
        }
    }
    cfg.write16(
        d,
        PCI_COMMAND,
        (cmd & !CMD_IO) | CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE,
    );
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

/// A modern virtio PCI function, its structures located.
pub struct Transport {
    pub devfn: DevFn,
    pub(crate) cfg: ConfigSpace,
    pub(crate) common: u64,
    pub(crate) notify: u64,
    pub(crate) notify_len: u64,
    pub notify_mult: u32,
    pub isr: u64,
    pub(crate) device: u64,
    pub device_len: u32,
    /// Config-space offset of the MSI-X capability (0: none).
    pub(crate) msix_cap: u16,
    pub(crate) msix_table: u64,
    pub msix_entries: u16,
}

impl Transport {
    /// Walk the capability list of `devfn` (BARs already placed).
    pub fn new(cfg: ConfigSpace, devfn: DevFn, bars: [Bar; 6]) -> Result<Transport, Msg> {
        let d = devfn.0;
        let mut t = Transport {
            devfn,
            cfg,
            common: 0,
            notify: 0,
            notify_len: 0,
            notify_mult: 0,
            isr: 0,
            device: 0,
            device_len: 0,
            msix_cap: 0,
            msix_table: 0,
            msix_entries: 0,
        };
        if cfg.read16(d, PCI_STATUS) & (1 << 4) == 0 {
            return Err(fail!("no capability list"));
        }
        let mut why = Msg::new();
        let mut ptr = u16::from(cfg.read8(d, 0x34) & 0xfc);
        let mut guard = 0;
        while ptr >= 0x40 && guard < 48 {
            guard += 1;
            let id = cfg.read8(d, ptr);
            let next = u16::from(cfg.read8(d, ptr + 1) & 0xfc);
            match id {
                PCI_CAP_VENDOR => {
                    let cap_len = cfg.read8(d, ptr + 2);
                    let kind = cfg.read8(d, ptr + 3);
                    let bar = usize::from(cfg.read8(d, ptr + 4));
                    let offset = u64::from(cfg.read32(d, ptr + 8));
                    let length = u64::from(cfg.read32(d, ptr + 12));
                    let slot = match kind {
                        CAP_COMMON => Some(&mut t.common),
                        CAP_NOTIFY => Some(&mut t.notify),
                        CAP_ISR => Some(&mut t.isr),
                        CAP_DEVICE => Some(&mut t.device),
                        _ => None, // PCI cfg access, shared memory...: unused
                    };
                    // The first usable one of each type wins (4.1.4.1).
                    if let Some(slot) = slot.filter(|s| **s == 0) {
                        let b = bars.get(bar).copied().unwrap_or_default();
                        if cap_len < 16 || (kind == CAP_NOTIFY && cap_len < 20) {
                            let _ = write!(
                                why,
                                "virtio cap type {kind} at {ptr:#x} too short ({cap_len}); "
                            );
                        } else if b.size == 0 || b.addr == 0 {
                            let _ = write!(why, "virtio cap type {kind} names BAR{bar}, which is not a memory BAR; ");
                        } else if offset.saturating_add(length) > b.size {
                            let _ = write!(
                                why,
                                "virtio cap type {kind}: {offset:#x}+{length:#x} exceeds BAR{bar} ({:#x}); ",
                                b.size
                            );
                        } else {
                            *slot = b.va + offset;
                            match kind {
                                CAP_NOTIFY => {
                                    t.notify_mult = cfg.read32(d, ptr + 16);
                                    t.notify_len = length;
                                }
                                CAP_DEVICE => t.device_len = length as u32,
                                CAP_COMMON if (length as u32) < common::LEN => {
                                    let _ = write!(why, "common config only {length:#x} bytes; ");
                                    *slot = 0;
                                }
                                _ => {}
                            }
                        }
                    }
                }
                PCI_CAP_MSIX if t.msix_cap == 0 => {
                    let ctrl = cfg.read16(d, ptr + 2);
                    let table = cfg.read32(d, ptr + 4);
                    let bir = (table & 7) as usize;
                    let b = bars.get(bir).copied().unwrap_or_default();
                    let entries = (ctrl & 0x7ff) + 1;
                    let off = u64::from(table & !7);
                    if b.size == 0 || off + 16 * u64::from(entries) > b.size {
                        let _ = write!(
                            why,
                            "MSI-X table BAR{bir}+{off:#x} x{entries} not inside a memory BAR; "
                        );
                    } else {
                        t.msix_cap = ptr;
                        t.msix_table = b.va + off;
                        t.msix_entries = entries;
                    }
                }
                _ => {}
            }
            ptr = next;
        }
        for (addr, name) in [
            (t.common, "common"),
            (t.notify, "notify"),
            (t.isr, "ISR"),
            (t.device, "device"),
        ] {
            if addr == 0 {
                let _ = write!(why, "no usable {name} capability; ");
            }
        }
        if why.is_empty() {
            Ok(t)
        } else {
            Err(why)
        }
    }

    pub fn has_msix(&self) -> bool {
        self.msix_cap != 0
    }

    /// Caps found, for the report: `common,notify,isr,device[,msix]`.
    pub fn caps(&self) -> &'static str {
        if self.has_msix() {
            "common,notify,isr,device,msix"
        } else {
            "common,notify,isr,device"
        }
    }

    // ---- device status and features ----

    pub fn status(&self) -> u8 {
        rd8(self.common + common::DEVICE_STATUS)
    }

    pub fn set_status(&self, s: u8) {
        wr8(self.common + common::DEVICE_STATUS, s);
    }

    pub fn add_status(&self, bits: u8) {
        self.set_status(self.status() | bits);
    }

    /// Write 0 and wait (up to 1 s) until the device reads back 0 (4.1.4.3.2).
    pub fn reset(&self) -> Result<(), Msg> {
        self.set_status(0);
        let d = Deadline::after_ms(1000);
        loop {
            let s = self.status();
            if s == 0 {
                return Ok(());
            }
            if d.expired() {
                return Err(fail!(
                    "device status {s:#x} after writing 0 (reset) for 1 s"
                ));
            }
            crate::hw::pause();
        }
    }

    pub fn device_features(&self) -> u64 {
        let mut f = 0u64;
        for sel in 0..2u32 {
            wr32(self.common + common::DEVICE_FEATURE_SELECT, sel);
            f |= u64::from(rd32(self.common + common::DEVICE_FEATURE)) << (32 * sel);
        }
        f
    }

    pub fn set_driver_features(&self, f: u64) {
        for sel in 0..2u32 {
            wr32(self.common + common::DRIVER_FEATURE_SELECT, sel);
            wr32(
                self.common + common::DRIVER_FEATURE,
                (f >> (32 * sel)) as u32,
            );
        }
    }

    /// Steps 1-6 of 3.1.1: reset, ACKNOWLEDGE, DRIVER, negotiate (the
    /// offered features within `wanted`; VERSION_1 required), FEATURES_OK
    /// and read it back. Returns (offered, negotiated).
    pub fn begin_init(&self, wanted: u64) -> Result<(u64, u64), Msg> {
        self.reset()?;
        self.set_status(S_ACKNOWLEDGE);
        self.set_status(S_ACKNOWLEDGE | S_DRIVER);
        let offered = self.device_features();
        if offered & F_VERSION_1 == 0 {
            self.add_status(S_FAILED);
            return Err(fail!(
                "device does not offer VERSION_1 (features {offered:#x})"
            ));
        }
        let accepted = offered & (wanted | F_VERSION_1);
        self.set_driver_features(accepted);
        self.add_status(S_FEATURES_OK);
        let s = self.status();
        if s & S_FEATURES_OK == 0 {
            self.add_status(S_FAILED);
            return Err(fail!(
                "FEATURES_OK did not stick (status {s:#x}, features {accepted:#x})"
            ));
        }
        Ok((offered, accepted))
    }

    pub fn driver_ok(&self) -> Result<(), Msg> {
        self.add_status(S_DRIVER_OK);
        let s = self.status();
        if s & (S_DRIVER_OK | S_NEEDS_RESET | S_FAILED) != S_DRIVER_OK {
            return Err(fail!("status {s:#x} after DRIVER_OK"));
        }
        Ok(())
    }

    pub fn num_queues(&self) -> u16 {
        rd16(self.common + common::NUM_QUEUES)
    }

    pub fn config_generation(&self) -> u8 {
        rd8(self.common + common::CONFIG_GENERATION)
    }

    // ---- device-specific configuration ----

    pub fn dev_read8(&self, off: u64) -> u8 {
        if off < u64::from(self.device_len) {
            rd8(self.device + off)
        } else {
            0
        }
    }

    pub fn dev_read16(&self, off: u64) -> u16 {
        if off + 2 <= u64::from(self.device_len) {
            rd16(self.device + off)
        } else {
            0
        }
    }

    pub fn dev_read32(&self, off: u64) -> u32 {
        if off + 4 <= u64::from(self.device_len) {
            rd32(self.device + off)
        } else {
            0
        }
    }

    pub fn dev_read64(&self, off: u64) -> u64 {
        u64::from(self.dev_read32(off)) | u64::from(self.dev_read32(off + 4)) << 32
    }

    // ---- queues ----

    pub fn select_queue(&self, q: u16) {
        wr16(self.common + common::QUEUE_SELECT, q);
    }

    /// Of the selected queue: its maximum size (0: no such queue).
    pub fn queue_max_size(&self) -> u16 {
        rd16(self.common + common::QUEUE_SIZE)
    }

    pub fn queue_enabled(&self) -> u16 {
        rd16(self.common + common::QUEUE_ENABLE)
    }

    /// Set up the selected queue (4.1.5.1.3); returns its notify address
    /// and the MSI-X vector the device kept (NO_VECTOR: refused).
    pub fn setup_queue(
        &self,
        q: u16,
        size: u16,
        desc: u64,
        driver: u64,
        device: u64,
        vector: u16,
    ) -> Result<(u64, u16), Msg> {
        let c = self.common;
        self.select_queue(q);
        wr16(c + common::QUEUE_SIZE, size);
        for (reg, addr) in [
            (common::QUEUE_DESC, desc),
            (common::QUEUE_DRIVER, driver),
            (common::QUEUE_DEVICE, device),
        ] {
            wr32(c + reg, addr as u32);
            wr32(c + reg + 4, (addr >> 32) as u32);
        }
        wr16(c + common::QUEUE_MSIX_VECTOR, vector);
        let kept = rd16(c + common::QUEUE_MSIX_VECTOR);
        let off = u64::from(rd16(c + common::QUEUE_NOTIFY_OFF));
        let at = off * u64::from(self.notify_mult);
        if at + 2 > self.notify_len {
            return Err(fail!(
                "queue {q} notify offset {off} x multiplier {} past the notify region ({:#x})",
                self.notify_mult,
                self.notify_len
            ));
        }
        wr16(c + common::QUEUE_ENABLE, 1);
        Ok((self.notify + at, kept))
    }

    /// The notify address of queue `q` (selects it), if inside the notify region.
    pub fn notify_addr(&self, q: u16) -> Option<u64> {
        self.select_queue(q);
        let off = u64::from(rd16(self.common + common::QUEUE_NOTIFY_OFF));
        let at = off * u64::from(self.notify_mult);
        (at + 2 <= self.notify_len).then_some(self.notify + at)
    }

    /// config_msix_vector: write, return what the device kept.
    pub fn set_config_vector(&self, v: u16) -> u16 {
        wr16(self.common + common::CONFIG_MSIX_VECTOR, v);
        rd16(self.common + common::CONFIG_MSIX_VECTOR)
    }

    // ---- MSI-X (PCI capability + table) ----

    pub fn msix_enable(&self, on: bool) {
        if self.msix_cap == 0 {
            return;
        }
        let reg = self.msix_cap + 2;
        let ctrl = self.cfg.read16(self.devfn.0, reg) & !(MSIX_ENABLE | MSIX_FUNCTION_MASK);
        self.cfg.write16(
            self.devfn.0,
            reg,
            if on { ctrl | MSIX_ENABLE } else { ctrl },
        );
    }

    pub fn msix_enabled(&self) -> bool {
        self.msix_cap != 0 && self.cfg.read16(self.devfn.0, self.msix_cap + 2) & MSIX_ENABLE != 0
    }

    /// Table entry `i`: fixed delivery, edge, to `apic_id`, vector `vector`, unmasked.
    pub fn msix_set_entry(&self, i: u16, apic_id: u32, vector: u32) {
        let e = self.msix_table + 16 * u64::from(i);
        wr32(e + 12, rd32(e + 12) | 1); // masked while it changes
        wr32(e, 0xfee0_0000 | (apic_id & 0xff) << 12);
        wr32(e + 4, 0);
        wr32(e + 8, vector);
        wr32(e + 12, 0);
    }
}
