//! The `blk` check: a virtio-blk driver (virtio 1.x, 5.2) over the modern
//! PCI transport (`virtio`), and the operations of `probe.blk_ops` run with
//! it. Everything here is ring 3; completions are waited for by polling the
//! used rings (`probe.blk_irq=poll`) or by watching the counters the ring-0
//! MSI-X stubs bump (`msix`, the default).
//!
//! Requests: a 16-byte header (type, reserved, sector) the device reads, an
//! optional data buffer, a status byte the device writes; three chained
//! descriptors per request slot (slot s uses descriptors 3s..3s+2). Several
//! requests are in flight (`probe.blk_qd`), spread round-robin over the
//! queues when VIRTIO_BLK_F_MQ gives more than one, and retired in the order
//! they were issued, so checksums run over the disk in order.
//!
//! The data pattern and the checksum are specified in the README.

use crate::dma::Arena;
use crate::msg::Msg;
use crate::plan::{BlkOp, BlkOps, BlkPlan, Plan, BLK_OPS};
use crate::time::{self, Deadline};
use crate::virtio::bus::{Devices, Irqs};
use crate::virtio::data::{fill_pattern, matches_pattern, Fnv};
use crate::virtio::queue::{pick_size, SplitQueue, DESC_F_NEXT, DESC_F_WRITE, RING_BYTES};
use crate::virtio::{DevFn, Transport, S_NEEDS_RESET};
use core::fmt::{self, Write as _};

// Feature bits (5.2.3).
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_MQ: u64 = 1 << 12;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;
/// What the driver accepts (with VERSION_1).
const WANTED: u64 = F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH | F_MQ | F_DISCARD | F_WRITE_ZEROES;

// Request types and status values (5.2.6).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
/// Not a request type the specification defines: must be answered UNSUPP.
const T_BOGUS: u32 = 0x7f;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Written into the status byte before submission: "the device did not write it".
const S_PENDING: u8 = 0xff;
const WRITE_ZEROES_UNMAP: u32 = 1;
const ID_BYTES: u32 = 20;

const SECTOR: u64 = 512;
const MAX_DISKS: usize = 8;
const MAX_QUEUES: usize = 8;
const MAX_SLOTS: usize = 64;
/// No progress for this long: the device is stuck.
const TIMEOUT_MS: u64 = 10_000;
/// `write` flushes after every this many sectors (8 MiB) and at the end.
const FLUSH_EVERY: u64 = 16384;

/// The virtio PCI device ID of a block device (0x1040 + type 2).
pub const BLK_DEVICE_ID: u16 = 0x1042;

/// Sector checks over a region: how many differ from the expectation, and the first.
#[derive(Default)]
struct Bad {
    count: u64,
    first: Option<u64>,
}

impl Bad {
    fn note(&mut self, lba: u64) {
        self.count += 1;
        self.first.get_or_insert(lba);
    }
}

impl fmt::Display for Bad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.first {
            Some(l) => write!(f, "bad_sectors={} first_bad={l}", self.count),
            None => f.write_str("bad_sectors=0 first_bad=none"),
        }
    }
}

/// The serial as printed: printable ASCII but space, else `\xNN`.
struct Serial<'a>(&'a [u8]);

impl fmt::Display for Serial<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            match b {
                0x21..=0x7e if b != b'\\' => fmt::Write::write_char(f, b as char)?,
                _ => write!(f, "\\x{b:02x}")?,
            }
        }
        Ok(())
    }
}

// ---- the driver ----

#[derive(Clone, Copy)]
struct Req {
    kind: u32,
    lba: u64,
    /// Data bytes (0: no data descriptor).
    len: u32,
}

impl Req {
    fn device_writes(&self) -> bool {
        self.kind == T_IN || self.kind == T_GET_ID
    }
}

#[derive(Clone, Copy, Default)]
struct Slot {
    kind: u32,
    busy: bool,
    done: bool,
    status: u8,
    used_len: u32,
    expect_len: u32,
}

struct Queue {
    vq: SplitQueue,
    /// Request headers (16 bytes per slot), then at +2048 the status bytes.
    hdrs: u64,
    data: u64,
    slots: [Slot; MAX_SLOTS],
}

/// `probe.blk_*` values the driver itself needs.
struct Setup {
    msix: bool,
    qd: usize,
    slot_bytes: u64,
    queues: usize,
}

struct Disk {
    t: Transport,
    setup: Setup,
    apic_id: u32,
    /// Memory is allocated at the first initialisation and reused after resets.
    allocated: bool,
    offered: u64,
    features: u64,
    capacity: u64,
    blk_size: u32,
    seg_max: u32,
    dev_queues: u16,
    max_discard_sectors: u32,
    max_discard_seg: u32,
    discard_align: u32,
    max_wz_sectors: u32,
    max_wz_seg: u32,
    wz_may_unmap: bool,
    nq: usize,
    qsize: u16,
    /// Request slots per queue.
    spq: usize,
    q: [Queue; MAX_QUEUES],
    /// MSI-X entries: config change, then the queue vectors (or none: polling).
    irqs: Irqs,
    serial: [u8; ID_BYTES as usize],
    serial_len: usize,
    id_status: u8,
    /// Requests completed since start; used elements whose len is not what
    /// the driver expected (bytes written: data for IN/GET_ID, + 1 status).
    completed: u64,
    used_len_off: u64,
    /// The first such: (request type, len, expected).
    used_len_first: Option<(u32, u32, u32)>,
    /// A timeout or protocol error: reset and re-initialise before more I/O.
    broken: bool,
    op_irq0: u32,
    op_completed0: u64,
}

impl Disk {
    fn new(t: Transport, setup: Setup, apic_id: u32) -> Disk {
        Disk {
            t,
            setup,
            apic_id,
            allocated: false,
            offered: 0,
            features: 0,
            capacity: 0,
            blk_size: 512,
            seg_max: 0,
            dev_queues: 1,
            max_discard_sectors: 0,
            max_discard_seg: 0,
            discard_align: 0,
            max_wz_sectors: 0,
            max_wz_seg: 0,
            wz_may_unmap: false,
            nq: 0,
            qsize: 0,
            spq: 0,
            q: core::array::from_fn(|i| Queue {
                vq: SplitQueue::new(i as u16, 0),
                hdrs: 0,
                data: 0,
                slots: [Slot::default(); MAX_SLOTS],
            }),
            irqs: Irqs::default(),
            serial: [0; ID_BYTES as usize],
            serial_len: 0,
            id_status: S_PENDING,
            completed: 0,
            used_len_off: 0,
            used_len_first: None,
            broken: false,
            op_irq0: 0,
            op_completed0: 0,
        }
    }

    fn name(&self) -> DevFn {
        self.t.devfn
    }

    fn has(&self, f: u64) -> bool {
        self.features & f != 0
    }

    fn ro(&self) -> bool {
        self.has(F_RO)
    }

    /// Sectors per data buffer.
    fn req_sectors(&self) -> u64 {
        self.setup.slot_bytes / SECTOR
    }

    /// Full initialisation (3.1.1), from reset to DRIVER_OK, then GET_ID.
    fn init(&mut self, arena: &mut Arena) -> Result<(), Msg> {
        self.broken = true;
        let t = &self.t;
        let (offered, features) = t.begin_init(WANTED)?;
        self.offered = offered;
        self.features = features;
        // Device configuration, consistent under config_generation (4.1.4.3.1).
        for _ in 0..100 {
            let g = t.config_generation();
            self.capacity = t.dev_read64(0);
            self.seg_max = if features & F_SEG_MAX != 0 {
                t.dev_read32(12)
            } else {
                0
            };
            self.blk_size = if features & F_BLK_SIZE != 0 {
                t.dev_read32(20)
            } else {
                512
            };
            self.dev_queues = if features & F_MQ != 0 {
                t.dev_read16(34)
            } else {
                1
            };
            if features & F_DISCARD != 0 {
                self.max_discard_sectors = t.dev_read32(36);
                self.max_discard_seg = t.dev_read32(40);
                self.discard_align = t.dev_read32(44);
            }
            if features & F_WRITE_ZEROES != 0 {
                self.max_wz_sectors = t.dev_read32(48);
                self.max_wz_seg = t.dev_read32(52);
                self.wz_may_unmap = t.dev_read8(56) != 0;
            }
            if t.config_generation() == g {
                break;
            }
        }
        let nq = usize::from(self.dev_queues.max(1))
            .min(usize::from(t.num_queues().max(1)))
            .min(self.setup.queues)
            .min(MAX_QUEUES);
        if self.allocated && nq != self.nq {
            return Err(fail!(
                "the device now has {nq} queues, {} before the reset",
                self.nq
            ));
        }
        self.nq = nq;

        // Interrupts: MSI-X entries 0 (config) and 1.. (queues), or none.
        if self.setup.msix && !t.has_msix() {
            return Err(fail!("no MSI-X capability (probe.blk_irq=msix)"));
        }
        if !self.allocated {
            self.irqs = Irqs::new(t, self.setup.msix, nq, self.apic_id);
        }
        self.irqs.program(t)?;

        for qi in 0..nq {
            let t = &self.t;
            t.select_queue(qi as u16);
            let max = t.queue_max_size();
            if max < 4 {
                return Err(fail!("queue {qi}: maximum size {max}"));
            }
            let size = pick_size(max);
            if !self.allocated {
                let spq = self
                    .setup
                    .qd
                    .div_ceil(nq)
                    .min(usize::from(size) / 3)
                    .clamp(1, MAX_SLOTS);
                if qi == 0 {
                    self.spq = spq;
                }
                let bytes = RING_BYTES + 4096 + self.spq as u64 * self.setup.slot_bytes;
                let Some(mem) = arena.alloc(bytes, 4096) else {
                    return Err(fail!(
                        "out of DMA memory ({} KiB more for queue {qi}, {} KiB left)",
                        bytes >> 10,
                        arena.free_bytes() >> 10
                    ));
                };
                self.q[qi].vq = SplitQueue::new(qi as u16, mem);
                self.q[qi].hdrs = mem + RING_BYTES;
                self.q[qi].data = mem + RING_BYTES + 4096;
            } else if usize::from(size) < 3 * self.spq {
                return Err(fail!("queue {qi}: maximum size now {max}"));
            }
            self.qsize = size;
            let vector = self.irqs.queue_vector(qi);
            let q = &mut self.q[qi];
            q.slots = [Slot::default(); MAX_SLOTS];
            q.vq.activate(&self.t, size, vector)?;
        }
        self.allocated = true;
        self.t.driver_ok()?;
        self.broken = false;

        // GET_ID: the serial, up to 20 bytes, NUL-terminated if shorter.
        let mut id = [0u8; ID_BYTES as usize];
        let st = self.single(
            Req {
                kind: T_GET_ID,
                lba: 0,
                len: ID_BYTES,
            },
            |_| {},
            |d| id.copy_from_slice(&d[..20]),
        )?;
        self.id_status = st;
        self.serial_len = if st == S_OK {
            id.iter().position(|&b| b == 0).unwrap_or(id.len())
        } else {
            0
        };
        self.serial = id;
        Ok(())
    }

    /// Reset and initialise again (after DEVICE_NEEDS_RESET, a timeout...).
    fn reinit(&mut self, arena: &mut Arena) -> Result<(), Msg> {
        self.t.reset()?;
        self.init(arena)
    }

    /// Interrupts counted for this disk's MSI-X entries; when polling, every
    /// interrupt other than the timer's and COM1's (there should be none).
    fn irq_sum(&self) -> u32 {
        self.irqs.sum()
    }

    fn op_start(&mut self) {
        self.op_irq0 = self.irq_sum();
        self.op_completed0 = self.completed;
    }

    fn op_irqs(&self) -> u32 {
        self.irq_sum().wrapping_sub(self.op_irq0)
    }

    fn slot_buf(&mut self, qi: usize, s: usize) -> &mut [u8] {
        let addr = self.q[qi].data + s as u64 * self.setup.slot_bytes;
        // SAFETY: the slot's data buffer in the DMA arena; the slot is not in
        // flight (callers only ask for idle or completed slots), so the
        // device is not accessing it, and nothing else refers to it.
        unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, self.setup.slot_bytes as usize) }
    }

    fn submit(&mut self, qi: usize, s: usize, req: Req) {
        let slot_bytes = self.setup.slot_bytes;
        let q = &mut self.q[qi];
        let hdr = q.hdrs + 16 * s as u64;
        let status = q.hdrs + 2048 + s as u64;
        let data = q.data + s as u64 * slot_bytes;
        // SAFETY: the slot's header and status byte, in the DMA arena; idle.
        unsafe {
            core::ptr::write_volatile(hdr as *mut u32, req.kind);
            core::ptr::write_volatile((hdr + 4) as *mut u32, 0);
            core::ptr::write_volatile((hdr + 8) as *mut u64, req.lba);
            core::ptr::write_volatile(status as *mut u8, S_PENDING);
        }
        let d0 = 3 * s as u16;
        if req.len > 0 {
            q.vq.set_desc(d0, hdr, 16, DESC_F_NEXT, d0 + 1);
            let w = if req.device_writes() { DESC_F_WRITE } else { 0 };
            q.vq.set_desc(d0 + 1, data, req.len, DESC_F_NEXT | w, d0 + 2);
        } else {
            q.vq.set_desc(d0, hdr, 16, DESC_F_NEXT, d0 + 2);
        }
        q.vq.set_desc(d0 + 2, status, 1, DESC_F_WRITE, 0);
        q.vq.push(d0);
        q.slots[s] = Slot {
            kind: req.kind,
            busy: true,
            done: false,
            status: S_PENDING,
            used_len: 0,
            expect_len: if req.device_writes() { req.len + 1 } else { 1 },
        };
    }

    /// Take the used elements of queue `qi`; how many.
    fn reap(&mut self, qi: usize) -> Result<u32, Msg> {
        let spq = self.spq;
        let q = &mut self.q[qi];
        let mut n = 0;
        while let Some((id, len)) = q.vq.pop_used() {
            let s = (id / 3) as usize;
            if id % 3 != 0 || s >= spq || !q.slots[s].busy || q.slots[s].done {
                self.broken = true;
                return Err(fail!(
                    "queue {qi}: used element id {id} len {len} is not a request in flight"
                ));
            }
            // SAFETY: the slot's status byte (DMA arena), written by the device before the used idx.
            let status =
                unsafe { core::ptr::read_volatile((q.hdrs + 2048 + s as u64) as *const u8) };
            let slot = &mut q.slots[s];
            slot.done = true;
            slot.status = status;
            slot.used_len = len;
            // After an error the device may have written the status only.
            if status == S_OK && len != slot.expect_len {
                self.used_len_off += 1;
                self.used_len_first
                    .get_or_insert((slot.kind, len, slot.expect_len));
            }
            n += 1;
        }
        self.completed += u64::from(n);
        Ok(n)
    }

    /// What the queues look like, for a timeout report.
    fn stuck(&mut self, what: &str) -> Msg {
        self.broken = true;
        let mut m = fail!(
            "{what}: no completion within {} s (status {:#x}",
            TIMEOUT_MS / 1000,
            self.t.status()
        );
        for qi in 0..self.nq {
            let q = &self.q[qi].vq;
            let _ = write!(
                m,
                ", q{qi} avail {} used {} seen {}",
                q.avail_idx(),
                q.used_idx(),
                q.outstanding()
            );
        }
        let _ = write!(m, ", irqs {})", self.irq_sum());
        m
    }

    /// Wait until some request completes: on interrupts (the counters the
    /// MSI-X stubs bump) or by polling the used rings.
    fn wait(&mut self) -> Result<(), Msg> {
        let deadline = Deadline::after_ms(TIMEOUT_MS);
        loop {
            let irqs = self.irq_sum();
            let mut got = 0;
            for qi in 0..self.nq {
                got += self.reap(qi)?;
            }
            if got > 0 {
                return Ok(());
            }
            if self.setup.msix {
                while self.irq_sum() == irqs {
                    if deadline.expired() {
                        let used = (0..self.nq).any(|qi| self.q[qi].vq.has_used());
                        return Err(self.stuck(if used {
                            "used ring moved but no MSI-X interrupt"
                        } else {
                            "waiting for an interrupt"
                        }));
                    }
                    crate::hw::pause();
                }
                // A config interrupt may say DEVICE_NEEDS_RESET.
                if self.irqs.config_count() != 0 && self.t.status() & S_NEEDS_RESET != 0 {
                    self.broken = true;
                    return Err(fail!(
                        "device set DEVICE_NEEDS_RESET (status {:#x})",
                        self.t.status()
                    ));
                }
            } else {
                if deadline.expired() {
                    return Err(self.stuck("polling"));
                }
                crate::hw::pause();
            }
        }
    }

    /// Wait for everything in flight (after an error), forgetting the results.
    fn drain(&mut self) {
        while (0..self.nq).any(|qi| {
            self.q[qi].slots[..self.spq]
                .iter()
                .any(|s| s.busy && !s.done)
        }) {
            if self.wait().is_err() {
                self.broken = true;
                return;
            }
        }
        for qi in 0..self.nq {
            self.q[qi].slots = [Slot::default(); MAX_SLOTS];
        }
    }

    /// Issue `n` requests, up to `qd` in flight: `prep(i, buf)` fills request
    /// i's data buffer and describes it; `retire(i, status, buf)` sees it
    /// complete, in order of i.
    fn pipeline(
        &mut self,
        n: u64,
        mut prep: impl FnMut(u64, &mut [u8]) -> Req,
        mut retire: impl FnMut(u64, u8, &[u8]) -> Result<(), Msg>,
    ) -> Result<(), Msg> {
        if self.broken {
            return Err(fail!("device unusable after an earlier error"));
        }
        let nq = self.nq as u64;
        let spq = self.spq as u64;
        let qd = (self.setup.qd as u64).min(nq * spq).max(1);
        let at = |i: u64| ((i % nq) as usize, ((i / nq) % spq) as usize);
        let (mut next, mut retired) = (0u64, 0u64);
        while retired < n {
            let mut kick = [false; MAX_QUEUES];
            while next < n && next - retired < qd {
                let (qi, s) = at(next);
                let req = prep(next, self.slot_buf(qi, s));
                self.submit(qi, s, req);
                kick[qi] = true;
                next += 1;
            }
            for (qi, _) in kick.iter().enumerate().filter(|(_, k)| **k) {
                self.q[qi].vq.publish();
                self.q[qi].vq.kick();
            }
            loop {
                let (qi, s) = at(retired);
                if !self.q[qi].slots[s].done {
                    if let Err(e) = self.reap(qi) {
                        self.drain();
                        return Err(e);
                    }
                    if !self.q[qi].slots[s].done {
                        break;
                    }
                }
                let status = self.q[qi].slots[s].status;
                self.q[qi].slots[s] = Slot::default();
                if let Err(e) = retire(retired, status, self.slot_buf(qi, s)) {
                    self.drain();
                    return Err(e);
                }
                retired += 1;
                if retired == n {
                    break;
                }
            }
            if retired < n && next - retired >= qd.min(n - retired) {
                if let Err(e) = self.wait() {
                    self.drain();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// One request; its status.
    fn single(
        &mut self,
        req: Req,
        fill: impl FnOnce(&mut [u8]),
        out: impl FnOnce(&[u8]),
    ) -> Result<u8, Msg> {
        let mut fill = Some(fill);
        let mut out = Some(out);
        let mut status = S_PENDING;
        self.pipeline(
            1,
            |_, buf| {
                if let Some(f) = fill.take() {
                    f(buf);
                }
                req
            },
            |_, st, buf| {
                status = st;
                if let Some(o) = out.take() {
                    o(buf);
                }
                Ok(())
            },
        )?;
        Ok(status)
    }

    fn flush(&mut self) -> Result<(), Msg> {
        match self.single(
            Req {
                kind: T_FLUSH,
                lba: 0,
                len: 0,
            },
            |_| {},
            |_| {},
        )? {
            S_OK => Ok(()),
            st => Err(fail!("FLUSH status {st}")),
        }
    }

    fn check_range(&self, lba: u64, sectors: u64) -> Result<(), Msg> {
        if lba
            .checked_add(sectors)
            .is_none_or(|end| end > self.capacity)
        {
            return Err(fail!(
                "sectors {lba}+{sectors} beyond the capacity {}",
                self.capacity
            ));
        }
        Ok(())
    }

    /// Read `[lba, lba+sectors)`; `see(lba, data)` per request, in order.
    fn read_region(
        &mut self,
        lba: u64,
        sectors: u64,
        mut see: impl FnMut(u64, &[u8]),
    ) -> Result<(), Msg> {
        self.check_range(lba, sectors)?;
        let rs = self.req_sectors();
        let chunk = |i: u64| (lba + i * rs, rs.min(sectors - i * rs));
        self.pipeline(
            sectors.div_ceil(rs),
            |i, _| {
                let (l, n) = chunk(i);
                Req {
                    kind: T_IN,
                    lba: l,
                    len: (n * SECTOR) as u32,
                }
            },
            |i, st, buf| {
                let (l, n) = chunk(i);
                if st != S_OK {
                    return Err(fail!("read of sectors {l}+{n}: status {st}"));
                }
                see(l, &buf[..(n * SECTOR) as usize]);
                Ok(())
            },
        )
    }

    /// Write `[lba, lba+sectors)`: `fill(lba, buf)` per request, in order.
    fn write_region(
        &mut self,
        lba: u64,
        sectors: u64,
        mut fill: impl FnMut(u64, &mut [u8]),
    ) -> Result<(), Msg> {
        self.check_range(lba, sectors)?;
        let rs = self.req_sectors();
        let chunk = |i: u64| (lba + i * rs, rs.min(sectors - i * rs));
        self.pipeline(
            sectors.div_ceil(rs),
            |i, buf| {
                let (l, n) = chunk(i);
                fill(l, &mut buf[..(n * SECTOR) as usize]);
                Req {
                    kind: T_OUT,
                    lba: l,
                    len: (n * SECTOR) as u32,
                }
            },
            |i, st, _| {
                let (l, n) = chunk(i);
                if st != S_OK {
                    return Err(fail!("write of sectors {l}+{n}: status {st}"));
                }
                Ok(())
            },
        )
    }

    /// DISCARD or WRITE_ZEROES over a range, one segment per request, each
    /// at most `max` sectors (0: no limit). The statuses, worst first.
    fn ranged(
        &mut self,
        kind: u32,
        lba: u64,
        sectors: u64,
        max: u32,
        flags: u32,
    ) -> Result<u8, Msg> {
        self.check_range(lba, sectors)?;
        let per = if max == 0 {
            sectors
        } else {
            u64::from(max).min(sectors)
        };
        let chunk = |i: u64| (lba + i * per, per.min(sectors - i * per));
        let mut worst = S_OK;
        self.pipeline(
            sectors.div_ceil(per),
            |i, buf| {
                let (l, n) = chunk(i);
                buf[..8].copy_from_slice(&l.to_le_bytes());
                buf[8..12].copy_from_slice(&(n as u32).to_le_bytes());
                buf[12..16].copy_from_slice(&flags.to_le_bytes());
                Req {
                    kind,
                    lba: 0,
                    len: 16,
                }
            },
            |_, st, _| {
                if st != S_OK && (worst == S_OK || st < worst) {
                    worst = st;
                }
                Ok(())
            },
        )?;
        Ok(worst)
    }

    fn print_info(&self) {
        outln!(
            "PROBE blk disk={} serial={} id_status={} capacity={} blk_size={} ro={} queues={} device_queues={} qsize={} slots={} seg_max={} features={:#x} offered={:#x} irq={} msix_entries={} vectors={}",
            self.name(),
            Serial(&self.serial[..self.serial_len]),
            self.id_status,
            self.capacity,
            self.blk_size,
            u8::from(self.ro()),
            self.nq,
            self.dev_queues,
            self.qsize,
            self.spq,
            self.seg_max,
            self.features,
            self.offered,
            if self.setup.msix { "msix" } else { "poll" },
            self.t.msix_entries,
            self.irqs.entries
        );
    }
}

// ---- the operations ----

fn op_verify(d: &mut Disk, bp: &BlkPlan) -> Result<(), Msg> {
    let sectors = bp.verify_sectors.unwrap_or(d.capacity);
    let (seed, mut fnv, mut bad) = (bp.seed, Fnv::new(), Bad::default());
    let t0 = time::now_us();
    d.read_region(0, sectors, |lba, data| {
        fnv.update(data);
        for (k, sector) in data.chunks(SECTOR as usize).enumerate() {
            let l = lba + k as u64;
            if !matches_pattern(seed, l * SECTOR, sector) {
                bad.note(l);
            }
        }
    })?;
    let us = time::now_us() - t0;
    outln!(
        "PROBE blk-verify disk={} lba=0 sectors={sectors} seed={seed:#x} fnv64={:016x} {bad} us={us} irqs={}",
        d.name(),
        fnv.0,
        d.op_irqs()
    );
    if bad.count != 0 {
        return Err(fail!(
            "{} sectors differ from the pattern (seed {seed:#x}), first {}",
            bad.count,
            bad.first.unwrap_or(0)
        ));
    }
    Ok(())
}

/// Write the pattern over the region (flushing every 8 MiB and at the end), read it back.
fn op_write(d: &mut Disk, bp: &BlkPlan) -> Result<(), Msg> {
    if d.ro() {
        return Err(fail!("the disk is read-only (VIRTIO_BLK_F_RO)"));
    }
    let (lba, sectors, seed) = (bp.write_lba, bp.write_mib * 2048, bp.write_seed);
    d.check_range(lba, sectors)?;
    let t0 = time::now_us();
    let mut flushes = 0;
    let mut done = 0;
    while done < sectors {
        let n = FLUSH_EVERY.min(sectors - done);
        d.write_region(lba + done, n, |l, buf| fill_pattern(seed, l * SECTOR, buf))?;
        if d.has(F_FLUSH) {
            d.flush()?;
            flushes += 1;
        }
        done += n;
    }
    let write_us = time::now_us() - t0;
    let (mut fnv, mut bad) = (Fnv::new(), Bad::default());
    let t1 = time::now_us();
    d.read_region(lba, sectors, |l0, data| {
        fnv.update(data);
        for (k, sector) in data.chunks(SECTOR as usize).enumerate() {
            if !matches_pattern(seed, (l0 + k as u64) * SECTOR, sector) {
                bad.note(l0 + k as u64);
            }
        }
    })?;
    let read_us = time::now_us() - t1;
    outln!(
        "PROBE blk-write disk={} lba={lba} sectors={sectors} seed={seed:#x} flushes={flushes} fnv64={:016x} {bad} write_us={write_us} read_us={read_us} irqs={}",
        d.name(),
        fnv.0,
        d.op_irqs()
    );
    if bad.count != 0 {
        return Err(fail!(
            "{} sectors read back differ from what was written, first {}",
            bad.count,
            bad.first.unwrap_or(0)
        ));
    }
    Ok(())
}

/// A read-only disk: RO offered, a write refused with IOERR, the data unchanged.
fn op_ro(d: &mut Disk, bp: &BlkPlan) -> Result<(), Msg> {
    let lba = bp.write_lba.min(d.capacity.saturating_sub(8));
    let n = 8.min(d.capacity);
    let mut before = Fnv::new();
    d.read_region(lba, n, |_, data| before.update(data))?;
    let seed = bp.write_seed;
    let st = d.single(
        Req {
            kind: T_OUT,
            lba,
            len: (n * SECTOR) as u32,
        },
        |buf| fill_pattern(seed, lba * SECTOR, &mut buf[..(n * SECTOR) as usize]),
        |_| {},
    )?;
    let mut after = Fnv::new();
    d.read_region(lba, n, |_, data| after.update(data))?;
    let unchanged = before.0 == after.0;
    outln!(
        "PROBE blk-ro disk={} ro_feature={} lba={lba} sectors={n} write_status={st} unchanged={} fnv64={:016x} irqs={}",
        d.name(),
        u8::from(d.ro()),
        u8::from(unchanged),
        after.0,
        d.op_irqs()
    );
    let mut why = Msg::new();
    if !d.ro() {
        let _ = write!(why, "VIRTIO_BLK_F_RO not offered; ");
    }
    if st != S_IOERR {
        let _ = write!(why, "write status {st}, expected {S_IOERR} (IOERR); ");
    }
    if !unchanged {
        let _ = write!(why, "the data changed; ");
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

fn all_zero(data: &[u8]) -> bool {
    data.iter().all(|&b| b == 0)
}

/// Pattern over the range, DISCARD the first half, WRITE_ZEROES the second,
/// read both back.
fn op_discard(d: &mut Disk, bp: &BlkPlan) -> Result<(), Msg> {
    if d.ro() {
        return Err(fail!("the disk is read-only (VIRTIO_BLK_F_RO)"));
    }
    let (lba, sectors, seed) = (bp.discard_lba, bp.discard_sectors, bp.write_seed);
    let half = sectors / 2;
    d.write_region(lba, sectors, |l, buf| fill_pattern(seed, l * SECTOR, buf))?;
    if d.has(F_FLUSH) {
        d.flush()?;
    }
    let mut why = Msg::new();
    let discard = if d.has(F_DISCARD) {
        Some(d.ranged(T_DISCARD, lba, half, d.max_discard_sectors, 0)?)
    } else {
        let _ = write!(why, "DISCARD not offered; ");
        None
    };
    let unmap = if d.wz_may_unmap {
        WRITE_ZEROES_UNMAP
    } else {
        0
    };
    let wz = if d.has(F_WRITE_ZEROES) {
        Some(d.ranged(
            T_WRITE_ZEROES,
            lba + half,
            sectors - half,
            d.max_wz_sectors,
            unmap,
        )?)
    } else {
        let _ = write!(why, "WRITE_ZEROES not offered; ");
        None
    };
    if d.has(F_FLUSH) {
        d.flush()?;
    }
    let (mut dz, mut wzz) = (true, true);
    d.read_region(lba, half, |_, data| dz &= all_zero(data))?;
    d.read_region(lba + half, sectors - half, |_, data| wzz &= all_zero(data))?;
    if let Some(st) = discard {
        outln!(
            "PROBE blk-discard disk={} lba={lba} sectors={half} status={st} zeroed={} max_sectors={} max_seg={} alignment={}",
            d.name(),
            u8::from(dz),
            d.max_discard_sectors,
            d.max_discard_seg,
            d.discard_align
        );
        if st != S_OK {
            let _ = write!(why, "DISCARD status {st}; ");
        }
        if bp.discard_zeroes && !dz {
            let _ = write!(why, "discarded sectors do not read back as zeros; ");
        }
    }
    if let Some(st) = wz {
        outln!(
            "PROBE blk-write-zeroes disk={} lba={} sectors={} unmap={} status={st} zeroed={} max_sectors={} max_seg={}",
            d.name(),
            lba + half,
            sectors - half,
            unmap,
            u8::from(wzz),
            d.max_wz_sectors,
            d.max_wz_seg
        );
        if st != S_OK {
            let _ = write!(why, "WRITE_ZEROES status {st}; ");
        }
        if !wzz {
            let _ = write!(why, "zeroed sectors do not read back as zeros; ");
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

/// With nothing in flight: reset (status 0), initialise from scratch, I/O again.
fn op_reset(d: &mut Disk, bp: &BlkPlan, arena: &mut Arena) -> Result<(), Msg> {
    let n = 8.min(d.capacity);
    let mut before = Fnv::new();
    d.read_region(0, n, |_, data| before.update(data))?;
    d.t.set_status(0);
    let reset = d.t.reset();
    let status = d.t.status();
    d.t.select_queue(0);
    let enabled = d.t.queue_enabled();
    reset?;
    d.init(arena)?;
    let mut after = Fnv::new();
    d.read_region(0, n, |_, data| after.update(data))?;
    let mut bad = Bad::default();
    if !d.ro() {
        let (lba, seed) = (bp.write_lba, bp.write_seed);
        let m = 128.min(d.capacity.saturating_sub(lba));
        d.write_region(lba, m, |l, buf| fill_pattern(seed, l * SECTOR, buf))?;
        d.read_region(lba, m, |l0, data| {
            for (k, s) in data.chunks(SECTOR as usize).enumerate() {
                if !matches_pattern(seed, (l0 + k as u64) * SECTOR, s) {
                    bad.note(l0 + k as u64);
                }
            }
        })?;
    }
    outln!(
        "PROBE blk-reset disk={} status_after_reset={status:#x} queue_enable_after_reset={enabled} fnv_before={:016x} fnv_after={:016x} {bad} irqs={}",
        d.name(),
        before.0,
        after.0,
        d.op_irqs()
    );
    let mut why = Msg::new();
    if enabled != 0 {
        let _ = write!(why, "queue_enable reads {enabled} after reset; ");
    }
    if before.0 != after.0 {
        let _ = write!(why, "sectors 0+{n} read differently after the reset; ");
    }
    if bad.count != 0 {
        let _ = write!(
            why,
            "{} sectors written after the reset read back wrong; ",
            bad.count
        );
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

/// Requests the device must refuse: past the end, an unknown type.
fn op_edge(d: &mut Disk) -> Result<(), Msg> {
    let cap = d.capacity;
    let across = d.single(
        Req {
            kind: T_IN,
            lba: cap.saturating_sub(1),
            len: 2 * SECTOR as u32,
        },
        |_| {},
        |_| {},
    )?;
    let past = d.single(
        Req {
            kind: T_IN,
            lba: cap,
            len: SECTOR as u32,
        },
        |_| {},
        |_| {},
    )?;
    let bogus = d.single(
        Req {
            kind: T_BOGUS,
            lba: 0,
            len: 0,
        },
        |_| {},
        |_| {},
    )?;
    outln!(
        "PROBE blk-edge disk={} read_across_end={across} read_past_end={past} unknown_type={bogus} irqs={}",
        d.name(),
        d.op_irqs()
    );
    let mut why = Msg::new();
    for (what, st, want) in [
        ("read across the end", across, S_IOERR),
        ("read past the end", past, S_IOERR),
        ("unknown request type", bogus, S_UNSUPP),
    ] {
        if st != want {
            let _ = write!(why, "{what}: status {st}, expected {want}; ");
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

/// Sequential write and read (MB/s = 10^6 bytes/s) and 4 KiB random reads (IOPS).
fn op_bench(d: &mut Disk, bp: &BlkPlan) -> Result<(), Msg> {
    let (lba, sectors) = (bp.write_lba, bp.bench_mib * 2048);
    d.check_range(lba, sectors)?;
    let bytes = sectors * SECTOR;
    let mbps = |us: u64| bytes.checked_div(us).unwrap_or(0);
    let (mut write_us, mut flush_us) = (0, 0);
    if !d.ro() {
        let t0 = time::now_us();
        d.write_region(lba, sectors, |_, _| {})?;
        write_us = time::now_us() - t0;
        if d.has(F_FLUSH) {
            let t1 = time::now_us();
            d.flush()?;
            flush_us = time::now_us() - t1;
        }
    }
    let t0 = time::now_us();
    d.read_region(lba, sectors, |_, _| {})?;
    let read_us = time::now_us() - t0;
    let ios = bp.bench_ios;
    let blocks = (sectors / 8).max(1);
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let t0 = time::now_us();
    d.pipeline(
        ios,
        |_, _| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Req {
                kind: T_IN,
                lba: lba + 8 * (x % blocks),
                len: 4096,
            }
        },
        |i, st, _| {
            if st == S_OK {
                Ok(())
            } else {
                Err(fail!("random read {i}: status {st}"))
            }
        },
    )?;
    let rand_us = time::now_us() - t0;
    outln!(
        "PROBE blk-bench disk={} seq_read_mbps={} seq_write_mbps={} randread_iops={} qd={} mib={} req_kib={} ios={ios} queues={} irq={} seq_read_us={read_us} seq_write_us={write_us} flush_us={flush_us} randread_us={rand_us} irqs={}",
        d.name(),
        mbps(read_us),
        if d.ro() { 0 } else { mbps(write_us) },
        (ios * 1_000_000).checked_div(rand_us).unwrap_or(0),
        d.setup.qd.min(d.nq * d.spq),
        bp.bench_mib,
        bp.req_kib,
        d.nq,
        if d.setup.msix { "msix" } else { "poll" },
        d.op_irqs()
    );
    Ok(())
}

/// Write the region, FLUSH, say so; the check then halts for the host to kill the VMM.
fn op_durable(d: &mut Disk, bp: &BlkPlan) -> Result<(), Msg> {
    if d.ro() {
        return Err(fail!("the disk is read-only (VIRTIO_BLK_F_RO)"));
    }
    if !d.has(F_FLUSH) {
        return Err(fail!("VIRTIO_BLK_F_FLUSH not offered"));
    }
    let (lba, sectors, seed) = (bp.write_lba, bp.write_mib * 2048, bp.write_seed);
    let mut fnv = Fnv::new();
    d.write_region(lba, sectors, |l, buf| {
        fill_pattern(seed, l * SECTOR, buf);
        fnv.update(buf);
    })?;
    d.flush()?;
    outln!(
        "PROBE blk flushed disk={} lba={lba} sectors={sectors} seed={seed:#x} fnv64={:016x}",
        d.name(),
        fnv.0
    );
    Ok(())
}

fn op_name(op: BlkOp) -> &'static str {
    match op {
        BlkOp::Verify => "blk-verify",
        BlkOp::Write => "blk-write",
        BlkOp::Ro => "blk-ro",
        BlkOp::Discard => "blk-discard",
        BlkOp::Reset => "blk-reset",
        BlkOp::Edge => "blk-edge",
        BlkOp::Bench => "blk-bench",
        BlkOp::Durable => "blk-durable",
    }
}

fn run_op(d: &mut Disk, op: BlkOp, bp: &BlkPlan, arena: &mut Arena) -> Result<(), Msg> {
    if d.broken {
        d.reinit(arena)
            .map_err(|e| fail!("re-initialising after an earlier error: {e}"))?;
    }
    d.op_start();
    let mut result = match op {
        BlkOp::Verify => op_verify(d, bp),
        BlkOp::Write => op_write(d, bp),
        BlkOp::Ro => op_ro(d, bp),
        BlkOp::Discard => op_discard(d, bp),
        BlkOp::Reset => op_reset(d, bp, arena),
        BlkOp::Edge => op_edge(d),
        BlkOp::Bench => op_bench(d, bp),
        BlkOp::Durable => op_durable(d, bp),
    };
    let completions = d.completed - d.op_completed0;
    let irqs = d.op_irqs();
    let mut why = Msg::new();
    if let Err(e) = &result {
        let _ = write!(why, "{e}; ");
    }
    if d.setup.msix && completions > 0 && irqs == 0 {
        let _ = write!(
            why,
            "{completions} completions but no MSI-X interrupt counted; "
        );
    }
    if !d.setup.msix && irqs != 0 {
        let _ = write!(
            why,
            "{irqs} interrupts while polling (MSI-X off, NO_VECTOR); "
        );
    }
    let status = d.t.status();
    if status & S_NEEDS_RESET != 0 {
        let _ = write!(why, "device status {status:#x} (DEVICE_NEEDS_RESET); ");
        d.broken = true;
    }
    if !why.is_empty() {
        result = Err(why);
    }
    if d.broken {
        // Honour DEVICE_NEEDS_RESET / recover from a timeout for the next operation.
        if let Err(e) = d.reinit(arena) {
            outln!("PROBE blk disk={} reinit_failed=\"{e}\"", d.name());
        }
    }
    result
}

/// The `blk` check and its operations. Reports `blk` (discovery and
/// initialisation of every virtio-blk function) and `blk-<op>` per operation.
pub fn check(devices: &mut Devices, plan: &Plan, report: &mut dyn FnMut(&str, Result<(), Msg>)) {
    let bp = &plan.blk;
    outln!(
        "PROBE blk plan ops={} irq={} qd={} req_kib={}",
        BlkOps(bp),
        if bp.msix { "msix" } else { "poll" },
        bp.qd,
        bp.req_kib
    );
    let bus = match devices.bus() {
        Ok(b) => b,
        Err(e) => {
            report("blk", Err(e));
            return;
        }
    };
    let mut why = Msg::new();
    let apic_id = if bp.msix { bus.apic_id() } else { 0 };
    let setup = || Setup {
        msix: bp.msix,
        qd: bp.qd as usize,
        slot_bytes: (bp.req_kib * 1024).max(4096).next_multiple_of(4096),
        queues: bp.queues.unwrap_or(MAX_QUEUES as u64) as usize,
    };
    let mut disks: [Option<Disk>; MAX_DISKS] = core::array::from_fn(|_| None);
    let mut ndisks = 0;
    let mut found = 0;
    let mut fns = [(0usize, DevFn(0)); MAX_DISKS + 1];
    for (i, f) in bus.find(BLK_DEVICE_ID) {
        if found < fns.len() {
            fns[found] = (i, f);
        }
        found += 1;
    }
    for &(i, devfn) in &fns[..found.min(fns.len())] {
        if let Some(e) = bus.bar_error(i) {
            let _ = write!(why, "{devfn}: {e}");
        }
        let t = match bus.transport(i) {
            Ok(t) => t,
            Err(e) => {
                let _ = write!(why, "{devfn}: {e}");
                continue;
            }
        };
        if ndisks == MAX_DISKS {
            let _ = write!(why, "{devfn}: more than {MAX_DISKS} disks; ");
            continue;
        }
        let mut d = Disk::new(t, setup(), apic_id);
        match d.init(&mut bus.arena) {
            Ok(()) => d.print_info(),
            Err(e) => {
                let _ = write!(why, "{devfn}: {e}; ");
                continue;
            }
        }
        disks[ndisks] = Some(d);
        ndisks += 1;
    }
    let arena = &mut bus.arena;
    outln!("PROBE blk disks={found} ready={ndisks}");
    match bp.disks {
        Some(want) if want != found as u64 => {
            let _ = write!(why, "{found} virtio-blk functions, expected {want}; ");
        }
        None if found == 0 => {
            let _ = write!(
                why,
                "no virtio-blk function (vendor 1af4 device 1042) on bus 0; "
            );
        }
        _ => {}
    }
    report("blk", if why.is_empty() { Ok(()) } else { Err(why) });

    let mut halt = false;
    for op in BLK_OPS.into_iter().filter(|op| bp.runs(*op)) {
        let mut why = Msg::new();
        let mut ran = 0;
        for (i, d) in disks[..ndisks].iter_mut().enumerate() {
            let Some(d) = d else { continue };
            if bp.disk.is_some_and(|sel| sel != i as u64) {
                continue;
            }
            ran += 1;
            if let Err(e) = run_op(d, op, bp, arena) {
                let _ = write!(why, "{}: {e}; ", d.name());
            }
        }
        if ran == 0 {
            let _ = write!(why, "no disk to run on; ");
        }
        halt |= op == BlkOp::Durable && why.is_empty();
        report(op_name(op), if why.is_empty() { Ok(()) } else { Err(why) });
    }
    for d in disks[..ndisks].iter().flatten() {
        if let Some((kind, len, want)) = d.used_len_first {
            outln!(
                "PROBE blk disk={} used_len_unexpected={} completed={} first_type={kind} first_len={len} first_expected={want}",
                d.name(),
                d.used_len_off,
                d.completed
            );
        }
    }
    if halt {
        outln!("PROBE blk halting");
        crate::power::halt();
    }
}
