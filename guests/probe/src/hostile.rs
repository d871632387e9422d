//! `probe.checks=hostile`: a deterministic stream of hostile accesses that
//! a VMM must survive (README "Hostile mode"). The guest is the attacker;
//! the pass is reaching the end (`PROBE hostile ops=N`) with the VMM alive.
//!
//! The stream comes from one xorshift64* generator seeded by
//! `probe.hostile_seed`; the same seed replays the same operations (only
//! how many fit in `probe.hostile_ms` depends on the host's speed).
//!
//! What is left alone, so the probe can still print and power off at the
//! end (and does not shoot itself), is listed in the README; in short: the
//! FADT's sleep/reset/PM1/SMI ports, 0x64, 0xcf9, 0x92, the plan's
//! `hostile_skip_ports`; the LAPIC page; the MSI-X tables and virtio common
//! configuration at the places they had at the start (those get structured,
//! sanitised garbage instead); DMA addresses the device could write are
//! only ever in the probe's own scratch area or outside RAM.

use crate::acpi::{Acpi, Gas};
use crate::hw::{inb, inl, inw, mmio_read16, mmio_read32, mmio_read8, outb, outl, outw, rdtsc};
use crate::msg::Msg;
use crate::pci::ConfigSpace;
use crate::plan::Plan;
use crate::time::Deadline;
use crate::virtio::bus::Devices;
use crate::virtio::{Transport, NO_VECTOR, S_ACKNOWLEDGE, S_DRIVER, S_DRIVER_OK, S_FEATURES_OK};

/// xorshift64* (Vigna): small, deterministic, good enough to pick garbage.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // A zero state would stay zero.
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

const MAX_SKIP: usize = 24;
const MAX_PCI: usize = 64;
const MAX_VIRTIO: usize = 8;
/// Scratch RAM per virtio function: rings (3 pages) + buffers.
const SCRATCH: u64 = 64 * 1024;
const HOLE: (u64, u64) = (0xc000_0000, 0x1_0000_0000);

struct VDev {
    t: Transport,
    device: u16,
    /// Scratch RAM: desc +0, avail +4K, used +8K, buffers +12K..+64K.
    mem: u64,
    queue: u16,
    size: u16,
    avail_idx: u16,
    num_queues: u16,
}

struct State<'a> {
    rng: Rng,
    skip_ports: [(u16, u16); MAX_SKIP],
    nskip: usize,
    /// MMIO ranges random accesses avoid: [start, end).
    skip_mmio: [(u64, u64); 2 + 2 * MAX_VIRTIO],
    nskip_mmio: usize,
    ioapics: &'a [crate::acpi::IoApic],
    cfg: Option<ConfigSpace>,
    ecam: bool,
    pci: [u8; MAX_PCI],
    npci: usize,
    virtio: [Option<VDev>; MAX_VIRTIO],
    nvirtio: usize,
    apic_id: u32,
    counts: [u64; 8],
}

fn w16(addr: u64, v: u16) {
    // SAFETY: scratch RAM from the DMA arena (checked by the caller's layout).
    unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
}
fn w32(addr: u64, v: u32) {
    // SAFETY: as in `w16`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}
fn w64(addr: u64, v: u64) {
    // SAFETY: as in `w16`.
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) }
}
fn r16(addr: u64) -> u16 {
    // SAFETY: as in `w16`.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}
fn mw8(addr: u64, v: u8) {
    // SAFETY: an address in the 3-4 GiB hole (mapped uncached) or a BAR
    // register: device memory, never RAM the probe uses.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}
fn mw16(addr: u64, v: u16) {
    // SAFETY: as in `mw8`.
    unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
}
fn mw32(addr: u64, v: u32) {
    // SAFETY: as in `mw8`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

fn skip_gas(s: &mut State, g: &Gas) {
    if g.space == 1 && g.addr != 0 && g.addr <= 0xffff {
        let bytes = (u64::from(g.width()) / 8).max(1);
        s.add_skip(g.addr as u16, (g.addr + bytes - 1).min(0xffff) as u16);
    }
}

impl State<'_> {
    fn add_skip(&mut self, lo: u16, hi: u16) {
        if self.nskip < MAX_SKIP {
            self.skip_ports[self.nskip] = (lo, hi);
            self.nskip += 1;
        }
    }

    fn add_skip_mmio(&mut self, start: u64, len: u64) {
        if self.nskip_mmio < self.skip_mmio.len() && len != 0 {
            self.skip_mmio[self.nskip_mmio] = (start, start + len);
            self.nskip_mmio += 1;
        }
    }

    fn port_ok(&self, port: u16, width: u16) -> bool {
        let end = u32::from(port) + u32::from(width); // exclusive
        end <= 0x10000
            && !self.skip_ports[..self.nskip]
                .iter()
                .any(|&(lo, hi)| u32::from(port) <= u32::from(hi) && end > u32::from(lo))
    }

    fn mmio_ok(&self, addr: u64, width: u64) -> bool {
        !self.skip_mmio[..self.nskip_mmio]
            .iter()
            .any(|&(lo, hi)| addr < hi && addr + width > lo)
    }

    // ---- random port I/O ----

    fn port_op(&mut self, write: bool) {
        let width = self.rng.pick(&[1u16, 1, 2, 4]);
        let port = loop {
            let p = (self.rng.next() & 0xffff) as u16 & !(width - 1);
            if self.port_ok(p, width) {
                break p;
            }
        };
        let v = self.rng.next();
        match (write, width) {
            (true, 1) => outb(port, v as u8),
            (true, 2) => outw(port, v as u16),
            (true, _) => outl(port, v as u32),
            (false, 1) => {
                inb(port);
            }
            (false, 2) => {
                inw(port);
            }
            (false, _) => {
                inl(port);
            }
        }
        self.counts[if write { 0 } else { 1 }] += 1;
    }

    // ---- random MMIO in the 3-4 GiB hole ----

    fn mmio_op(&mut self) {
        let width = self.rng.pick(&[1u64, 2, 4, 4]);
        let addr = loop {
            // Half the time near the interesting places (BARs, ECAM, IOAPIC).
            let a = if self.rng.below(2) == 0 {
                HOLE.0 + self.rng.below(HOLE.1 - HOLE.0)
            } else {
                let base = self.rng.pick(&[0xc000_0000u64, 0xe000_0000, 0xfec0_0000]);
                base + self.rng.below(0x10_0000)
            };
            let a = a & !(width - 1);
            if self.mmio_ok(a, width) {
                break a;
            }
        };
        let write = self.rng.below(2) == 0;
        // Values never name low RAM as a DMA address: the top bit of every
        // written unit is set (RAM ends below 2 GiB in the tests).
        let v = self.rng.next();
        if let Some(ioapic) = self
            .ioapics
            .iter()
            .find(|i| addr >= i.addr && addr < i.addr + 0x1000)
        {
            self.ioapic_op(ioapic.addr, addr - ioapic.addr, write, v);
            return;
        }
        match (write, width) {
            (true, 1) => mw8(addr, v as u8 | 0x80),
            (true, 2) => mw16(addr, v as u16 | 0x8000),
            (true, _) => mw32(addr, v as u32 | 0x8000_0000),
            (false, 1) => {
                mmio_read8(addr);
            }
            (false, 2) => {
                mmio_read16(addr);
            }
            (false, _) => {
                mmio_read32(addr);
            }
        }
        self.counts[2] += 1;
    }

    /// IOAPIC: any register index, reads anywhere; redirection entries
    /// written through IOWIN always keep their mask bit set (an unmasked
    /// garbage entry could deliver exception vectors, NMI, INIT or SMI).
    fn ioapic_op(&mut self, base: u64, off: u64, write: bool, v: u64) {
        if !write {
            mmio_read32(base + (off & 0xffc));
        } else if off < 0x10 {
            mw32(base, v as u32 & 0xff);
        } else {
            let sel = mmio_read32(base) & 0xff;
            let mut value = v as u32;
            if sel >= 0x10 && sel % 2 == 0 {
                value |= 1 << 16;
            }
            mw32(base + 0x10, value);
        }
        self.counts[2] += 1;
    }

    // ---- PCI configuration space ----

    fn pci_op(&mut self) {
        let Some(cfg) = self.cfg else { return };
        if self.npci == 0 {
            return;
        }
        let devfn = self.pci[self.rng.below(self.npci as u64) as usize];
        let v = self.rng.next() as u32;
        match self.rng.below(6) {
            0 | 1 => {
                // BAR relocation to garbage.
                let reg = 0x10 + 4 * self.rng.below(6) as u16;
                let value = self.rng.pick(&[
                    v,
                    0,
                    0xffff_ffff,
                    0x0010_0000, // over RAM (the probe's image)
                    0xe000_0000, // over ECAM
                    0xfec0_0000, // over the IOAPIC
                    0xfee0_0000, // over the LAPIC
                    0xc000_0000, // over another function's BAR
                    0xd000_0000, // empty window space
                    0xffff_f000, // across 4 GiB
                ]);
                cfg.write32(devfn, reg, value);
            }
            2 => {
                // Command register toggles: I/O, memory, bus master, INTx disable.
                let bits = v as u16 & (1 | 2 | 4 | 1 << 10);
                cfg.write16(devfn, 0x04, bits);
            }
            3 => {
                // MSI-X control: enable / function mask at random.
                if let Some(cap) = find_cap(&cfg, devfn, 0x11) {
                    cfg.write16(devfn, cap + 2, v as u16 & 0xc000);
                } else {
                    cfg.write16(devfn, 0x04, v as u16);
                }
            }
            _ => {
                // Any dword of the function's space (extended space through ECAM).
                let limit = if self.ecam { 0x1000 } else { 0x100 };
                let reg = (self.rng.below(limit) as u16) & !3;
                cfg.write32(devfn, reg, v);
            }
        }
        self.counts[3] += 1;
    }

    // ---- virtio ----

    /// A DMA address: scratch RAM, the device's own BAR, beyond guest
    /// memory, the MMIO hole, the top of the address space.
    fn dma_addr(&mut self, d: &VDev) -> u64 {
        match self.rng.below(10) {
            0..=4 => d.mem + 0x3000 + (self.rng.below(SCRATCH - 0x3000) & !7),
            5 => d.t.common,
            6 => 0x10_0000_0000 + self.rng.below(1 << 30),
            7 => 0xd000_0000 + self.rng.below(0x1000_0000),
            8 => 0xffff_ffff_ffff_f000 | self.rng.below(0x1000),
            _ => d.mem + self.rng.below(0x3000), // the rings themselves
        }
    }

    fn dma_len(&mut self) -> u32 {
        match self.rng.below(8) {
            0 => 0,
            1 => u32::MAX,
            2 => 0x8000_0000,
            3 => 0x10_0000,
            4 => 1,
            5 => 16,
            _ => 1 + self.rng.below(8192) as u32,
        }
    }

    fn virtio_op(&mut self) {
        if self.nvirtio == 0 {
            return;
        }
        let i = self.rng.below(self.nvirtio as u64) as usize;
        let Some(mut d) = self.virtio[i].take() else {
            return;
        };
        match self.rng.below(16) {
            0..=2 => self.v_setup(&mut d),
            3..=6 => self.v_chain(&mut d),
            7 => self.v_requeue(&mut d),
            8 | 9 => self.v_status(&mut d),
            10 => self.v_storm(&mut d),
            11 | 12 => self.v_common(&mut d),
            13 => self.v_device_cfg(&mut d),
            _ => self.v_msix(&mut d),
        }
        self.virtio[i] = Some(d);
        self.counts[4] += 1;
    }

    /// Reset, negotiate random features, set up a queue in scratch, DRIVER_OK.
    fn v_setup(&mut self, d: &mut VDev) {
        let t = &d.t;
        t.set_status(0);
        let deadline = Deadline::after_ms(5);
        while t.status() != 0 && !deadline.expired() {
            crate::hw::pause();
        }
        t.set_status(S_ACKNOWLEDGE);
        t.set_status(S_ACKNOWLEDGE | S_DRIVER);
        let offered = t.device_features();
        let features = match self.rng.below(3) {
            0 => offered,
            1 => self.rng.next(),
            _ => offered & self.rng.next() | crate::virtio::F_VERSION_1,
        };
        t.set_driver_features(features);
        t.add_status(S_FEATURES_OK);
        d.num_queues = t.num_queues();
        d.queue = self.rng.below(u64::from(d.num_queues).max(1)) as u16;
        t.select_queue(d.queue);
        let max = t.queue_max_size();
        d.size = match self.rng.below(4) {
            0 => self.rng.pick(&[0u16, 3, 0xffff, 1024]),
            _ => crate::virtio::queue::pick_size(max.max(1)),
        };
        // SAFETY: the scratch rings are the probe's (the device was reset).
        unsafe { core::ptr::write_bytes(d.mem as *mut u8, 0, 0x3000) };
        d.avail_idx = 0;
        let r = self.rng.next() as u16;
        let vector = self.rng.pick(&[NO_VECTOR, 0, 1, 2, r]);
        let _ = t.setup_queue(
            d.queue,
            d.size,
            d.mem,
            d.mem + 0x1000,
            d.mem + 0x2000,
            vector,
        );
        if self.rng.below(4) != 0 {
            t.add_status(S_DRIVER_OK);
        }
    }

    /// Malformed descriptor chains on the current queue, then a notify.
    fn v_chain(&mut self, d: &mut VDev) {
        let size = if d.size.is_power_of_two() && d.size <= 256 {
            d.size
        } else {
            256
        };
        let n = 1 + self.rng.below(6) as u16;
        let head = self.rng.below(u64::from(size)) as u16;
        let kind = self.rng.below(6);
        for k in 0..n {
            let idx = (head + k) % size;
            let addr = self.dma_addr(d);
            let len = self.dma_len();
            let mut flags = self.rng.pick(&[0u16, 1, 2, 3, 4, 5, 6, 7]) & 7;
            let mut next = (idx + 1) % size;
            match kind {
                0 => {
                    // A loop: the last points back at the head.
                    flags |= 1;
                    if k == n - 1 {
                        next = head;
                    }
                }
                1 => next = self.rng.next() as u16, // out of range
                2 => {
                    // Indirect table of garbage in scratch.
                    flags = 4 | (flags & 2);
                    let table = d.mem + 0x3000 + (self.rng.below(0x8000) & !15);
                    for j in 0..8u64 {
                        w64(table + 16 * j, self.rng.next());
                        w64(table + 16 * j + 8, self.rng.next());
                    }
                    w64(d.mem + 16 * u64::from(idx), table);
                    w32(
                        d.mem + 16 * u64::from(idx) + 8,
                        self.rng.pick(&[0u32, 7, 16, 128, 0x10000, len]),
                    );
                    w16(d.mem + 16 * u64::from(idx) + 12, flags);
                    w16(d.mem + 16 * u64::from(idx) + 14, next);
                    continue;
                }
                3 => {
                    // A plausible request header first (blk), then wrong-direction buffers.
                    if k == 0 {
                        let hdr = d.mem + 0x3000 + (self.rng.below(0x1000) & !15);
                        let r = self.rng.next() as u32;
                        let ty = self.rng.pick(&[0u32, 1, 4, 8, 11, 13, 0x7f, r]);
                        w32(hdr, ty);
                        w32(hdr + 4, 0);
                        let r = self.rng.below(1 << 20);
                        let sector = self.rng.pick(&[0u64, u64::MAX, 1 << 40, r]);
                        w64(hdr + 8, sector);
                        w64(d.mem + 16 * u64::from(idx), hdr);
                        w32(d.mem + 16 * u64::from(idx) + 8, 16);
                        w16(d.mem + 16 * u64::from(idx) + 12, self.rng.pick(&[1u16, 3]));
                        w16(d.mem + 16 * u64::from(idx) + 14, next);
                        continue;
                    }
                    flags ^= 2;
                    if k + 1 < n {
                        flags |= 1;
                    }
                }
                _ => {
                    if k + 1 < n {
                        flags |= 1;
                    } else {
                        flags &= !1;
                    }
                }
            }
            w64(d.mem + 16 * u64::from(idx), addr);
            w32(d.mem + 16 * u64::from(idx) + 8, len);
            w16(d.mem + 16 * u64::from(idx) + 12, flags);
            w16(d.mem + 16 * u64::from(idx) + 14, next);
        }
        let avail = d.mem + 0x1000;
        let heads = if self.rng.below(8) == 0 {
            1 + self.rng.below(size as u64) as u16
        } else {
            1
        };
        for _ in 0..heads {
            let h = if self.rng.below(8) == 0 {
                self.rng.next() as u16
            } else {
                head
            };
            w16(avail + 4 + 2 * u64::from(d.avail_idx % size), h);
            d.avail_idx = d.avail_idx.wrapping_add(1);
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        // Sometimes an avail idx far ahead of what was published.
        let idx = if self.rng.below(10) == 0 {
            self.rng.next() as u16
        } else {
            d.avail_idx
        };
        w16(avail + 2, idx);
        w16(avail, self.rng.below(2) as u16);
        self.notify(d, d.queue);
        let _ = r16(d.mem + 0x2002);
    }

    fn notify(&mut self, d: &VDev, q: u16) {
        if let Some(a) = d.t.notify_addr(q) {
            crate::virtio::wr16(
                a,
                if self.rng.below(4) == 0 {
                    self.rng.next() as u16
                } else {
                    q
                },
            );
        }
    }

    /// Rewrite a live queue's addresses: own BAR, beyond memory, overlapping rings.
    fn v_requeue(&mut self, d: &mut VDev) {
        let c = d.t.common;
        d.t.select_queue(d.queue);
        let (desc, drv, dev) = match self.rng.below(5) {
            0 => (d.t.common, d.t.common + 0x100, d.t.common + 0x200),
            1 => (0x100_0000_0000, 0x100_0000_1000, 0x100_0000_2000),
            2 => (d.mem, d.mem, d.mem),
            3 => (d.mem + 0x1000, d.mem + 0x1000, d.mem + 0x1002),
            _ => (self.dma_addr(d), self.dma_addr(d), self.dma_addr(d)),
        };
        for (reg, a) in [(0x20u64, desc), (0x28, drv), (0x30, dev)] {
            mw32(c + reg, a as u32);
            mw32(c + reg + 4, (a >> 32) as u32);
        }
        if self.rng.below(2) == 0 {
            mw16(c + 0x1c, 1);
        }
        self.notify(d, d.queue);
    }

    /// Random status transitions and feature bits.
    fn v_status(&mut self, d: &mut VDev) {
        let t = &d.t;
        for _ in 0..1 + self.rng.below(4) {
            match self.rng.below(4) {
                0 => t.set_status(self.rng.next() as u8),
                1 => t.set_status(self.rng.pick(&[0u8, 1, 3, 7, 11, 15, 0x40, 0x80, 0xff, 4])),
                2 => t.set_driver_features(self.rng.next()),
                _ => {
                    t.device_features();
                }
            }
        }
        self.notify(d, d.queue);
    }

    /// A notify storm: many doorbells, valid and invalid queues.
    fn v_storm(&mut self, d: &mut VDev) {
        let n = 100 + self.rng.below(900);
        let q = d.queue;
        let addr = d.t.notify_addr(q);
        for _ in 0..n {
            match addr {
                Some(a) if self.rng.below(8) != 0 => crate::virtio::wr16(a, q),
                _ => {
                    let bad = self.rng.below(u64::from(d.num_queues) + 4) as u16;
                    self.notify(d, bad);
                }
            }
        }
    }

    /// Random writes to the common configuration (address registers get DMA addresses).
    fn v_common(&mut self, d: &mut VDev) {
        let c = d.t.common;
        let off = self.rng.below(0x38);
        let v = self.rng.next();
        if (0x20..0x38).contains(&off) {
            let a = self.dma_addr(d);
            let reg = off & !7;
            mw32(c + reg, a as u32);
            mw32(c + reg + 4, (a >> 32) as u32);
        } else {
            match self.rng.below(3) {
                0 => mw8(c + off, v as u8),
                1 => mw16(c + (off & !1), v as u16),
                _ => mw32(c + (off & !3), v as u32),
            }
        }
    }

    fn v_device_cfg(&mut self, d: &mut VDev) {
        let t = &d.t;
        let len = u64::from(t.device_len).max(4);
        let off = self.rng.below(len + 16) & !3;
        // Reads beyond the structure stay inside the BAR page the driver was given.
        if self.rng.below(2) == 0 {
            mw32(t.device + off.min(0xffc), self.rng.next() as u32);
        } else {
            mmio_read32(t.device + off.min(0xffc));
        }
        mmio_read8(t.isr);
    }

    /// MSI-X table garbage. Garbage stays masked; an unmasked entry gets a
    /// sane message (fixed delivery to the BSP, a vector the probe counts)
    /// so no exception vector, NMI, SMI or INIT reaches the probe.
    fn v_msix(&mut self, d: &mut VDev) {
        let t = &d.t;
        if t.msix_cap == 0 {
            return;
        }
        let i = self.rng.below(u64::from(t.msix_entries));
        let e = t.msix_table + 16 * i;
        mw32(e + 12, 1);
        mw32(e, self.rng.next() as u32);
        mw32(e + 4, self.rng.next() as u32);
        mw32(e + 8, self.rng.next() as u32);
        if self.rng.below(4) == 0 {
            mw32(e, 0xfee0_0000 | (self.apic_id & 0xff) << 12);
            mw32(e + 4, 0);
            mw32(e + 8, 0x70 + self.rng.below(0x80) as u32);
            mw32(e + 12, 0);
        }
        t.cfg.write16(
            t.devfn.0,
            t.msix_cap + 2,
            self.rng.pick(&[0x8000u16, 0xc000, 0, 0x8000]),
        );
        if self.rng.below(2) == 0 {
            self.notify(d, d.queue);
        }
    }
}

fn find_cap(cfg: &ConfigSpace, devfn: u8, id: u8) -> Option<u16> {
    if cfg.read16(devfn, 0x06) & (1 << 4) == 0 {
        return None;
    }
    let mut ptr = u16::from(cfg.read8(devfn, 0x34) & 0xfc);
    for _ in 0..48 {
        if ptr < 0x40 {
            return None;
        }
        if cfg.read8(devfn, ptr) == id {
            return Some(ptr);
        }
        ptr = u16::from(cfg.read8(devfn, ptr + 1) & 0xfc);
    }
    None
}

pub fn check(devices: &mut Devices, acpi: &Result<Acpi, Msg>, plan: &Plan) -> Result<(), Msg> {
    let hp = &plan.hostile;
    outln!("PROBE hostile seed={} ms={}", hp.seed, hp.ms);
    let acpi = acpi.as_ref().ok();
    let mut s = State {
        rng: Rng::new(hp.seed),
        skip_ports: [(0, 0); MAX_SKIP],
        nskip: 0,
        skip_mmio: [(0, 0); 2 + 2 * MAX_VIRTIO],
        nskip_mmio: 0,
        ioapics: acpi.map_or(&[][..], |a| a.ioapics()),
        cfg: ConfigSpace::find(acpi),
        ecam: false,
        pci: [0; MAX_PCI],
        npci: 0,
        virtio: core::array::from_fn(|_| None),
        nvirtio: 0,
        apic_id: 0,
        counts: [0; 8],
    };
    s.ecam = matches!(s.cfg, Some(ConfigSpace::Ecam(_)));
    // Ports that end the run: i8042 reset, 0xcf9 reset control, port 92
    // fast reset; the FADT's sleep, PM1, reset and SMI command registers.
    s.add_skip(0x64, 0x64);
    s.add_skip(0x92, 0x92);
    s.add_skip(0xcf9, 0xcf9);
    // The 8259 PICs (and their ELCR): KVM's in-kernel PIC reaches the BSP
    // through LINT0 (ExtINT), so a garbage vector base would deliver
    // exception vectors to the probe: that kills the guest, not the VMM.
    s.add_skip(0x20, 0x21);
    s.add_skip(0xa0, 0xa1);
    s.add_skip(0x4d0, 0x4d1);
    if let Some(f) = acpi.and_then(|a| a.fadt.as_ref()) {
        for g in [
            &f.pm1a_cnt,
            &f.pm1b_cnt,
            &f.sleep_control,
            &f.sleep_status,
            &f.reset_reg,
        ] {
            skip_gas(&mut s, g);
        }
        if f.smi_cmd != 0 && f.smi_cmd <= 0xffff {
            s.add_skip(f.smi_cmd as u16, f.smi_cmd as u16);
        }
    }
    for &(lo, hi) in &hp.skip_ports[..hp.skip_count] {
        s.add_skip(lo, hi);
    }
    let lapic = acpi.map_or(0xfee0_0000, |a| a.lapic_addr);
    s.add_skip_mmio(lapic & !0xfff, 0x1000);

    if let Some(cfg) = s.cfg {
        for devfn in 0..=255u8 {
            let id = cfg.read32(devfn, 0);
            if id & 0xffff != 0xffff && id & 0xffff != 0 && s.npci < MAX_PCI {
                s.pci[s.npci] = devfn;
                s.npci += 1;
            }
        }
    }
    // Virtio functions: the transport, a scratch area each.
    if let Ok(bus) = devices.bus() {
        s.apic_id = bus.apic_id();
        let fns = bus.functions().len().min(MAX_VIRTIO);
        for i in 0..fns {
            let device = bus.functions()[i].1;
            let Ok(t) = bus.transport(i) else { continue };
            let Some(mem) = bus.arena.alloc(SCRATCH, 4096) else {
                break;
            };
            s.skip_mmio_for(&t);
            s.virtio[s.nvirtio] = Some(VDev {
                t,
                device,
                mem,
                queue: 0,
                size: 0,
                avail_idx: 0,
                num_queues: 1,
            });
            s.nvirtio += 1;
        }
    }
    let mut line = crate::console::Console::new();
    {
        use core::fmt::Write as _;
        let _ = write!(
            line,
            "PROBE hostile pci_functions={} virtio={}",
            s.npci, s.nvirtio
        );
        for d in s.virtio.iter().flatten() {
            let _ = write!(line, " {}:{:04x}", d.t.devfn, d.device);
        }
        let _ = write!(line, " skip_ports=");
        for (k, (lo, hi)) in s.skip_ports[..s.nskip].iter().enumerate() {
            let _ = write!(line, "{}{lo:#x}-{hi:#x}", if k == 0 { "" } else { "," });
        }
        let _ = writeln!(line);
    }
    drop(line);

    let deadline = Deadline::after_ms(hp.ms);
    let t0 = rdtsc();
    let mut ops = 0u64;
    while !deadline.expired() {
        match s.rng.below(100) {
            0..=24 => s.port_op(true),
            25..=39 => s.port_op(false),
            40..=59 => s.mmio_op(),
            60..=69 => s.pci_op(),
            _ => s.virtio_op(),
        }
        ops += 1;
    }
    let us = (u128::from(rdtsc() - t0) * 1000 / u128::from(crate::time::tsc_khz().max(1))) as u64;
    // Leave the devices quiet (no more DMA or interrupts) and the UART sane.
    for d in s.virtio.iter().flatten() {
        d.t.set_status(0);
    }
    crate::console::init();
    outln!();
    outln!(
        "PROBE hostile ops={ops} us={us} port_writes={} port_reads={} mmio={} pci={} virtio={}",
        s.counts[0],
        s.counts[1],
        s.counts[2],
        s.counts[3],
        s.counts[4]
    );
    Ok(())
}

impl State<'_> {
    fn skip_mmio_for(&mut self, t: &Transport) {
        self.add_skip_mmio(t.common, 0x40);
        if t.msix_cap != 0 {
            self.add_skip_mmio(t.msix_table, 16 * u64::from(t.msix_entries));
        }
    }
}
