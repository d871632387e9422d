//! The virtio-blk device: the driver's state per disk (queues, request
//! slots, what the device offered), full initialisation from reset to
//! DRIVER_OK and GET_ID, re-initialisation after a reset, and the disk's
//! summary line.

use super::{
    F_BLK_SIZE, F_DISCARD, F_MQ, F_RO, F_SEG_MAX, F_WRITE_ZEROES, ID_BYTES, MAX_QUEUES, MAX_SLOTS,
    SECTOR, S_OK, S_PENDING, T_GET_ID, T_IN, WANTED,
};
use crate::dma::Arena;
use crate::msg::Msg;
use crate::virtio::bus::Irqs;
use crate::virtio::queue::{pick_size, SplitQueue, RING_BYTES};
use crate::virtio::{DevFn, Transport};
use core::fmt;

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
#[derive(Clone, Copy)]
pub struct Req {
    pub kind: u32,
    pub lba: u64,
    /// Data bytes (0: no data descriptor).
    pub len: u32,
}

impl Req {
    pub fn device_writes(&self) -> bool {
        self.kind == T_IN || self.kind == T_GET_ID
    }
}

#[derive(Clone, Copy, Default)]
pub struct Slot {
    pub kind: u32,
    pub busy: bool,
    pub done: bool,
    pub status: u8,
    pub used_len: u32,
    pub expect_len: u32,
}

pub struct Queue {
    pub vq: SplitQueue,
    /// Request headers (16 bytes per slot), then at +2048 the status bytes.
    pub hdrs: u64,
    pub data: u64,
    pub slots: [Slot; MAX_SLOTS],
}

/// `probe.blk_*` values the driver itself needs.
pub struct Setup {
    pub msix: bool,
    pub qd: usize,
    pub slot_bytes: u64,
    pub queues: usize,
}

pub struct Disk {
    pub t: Transport,
    pub setup: Setup,
    pub apic_id: u32,
    /// Memory is allocated at the first initialisation and reused after resets.
    pub allocated: bool,
    pub offered: u64,
    pub features: u64,
    pub capacity: u64,
    pub blk_size: u32,
    pub seg_max: u32,
    pub dev_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_align: u32,
    pub max_wz_sectors: u32,
    pub max_wz_seg: u32,
    pub wz_may_unmap: bool,
    pub nq: usize,
    pub qsize: u16,
    /// Request slots per queue.
    pub spq: usize,
    pub q: [Queue; MAX_QUEUES],
    /// MSI-X entries: config change, then the queue vectors (or none: polling).
    pub irqs: Irqs,
    pub serial: [u8; ID_BYTES as usize],
    pub serial_len: usize,
    pub id_status: u8,
    /// Requests completed since start; used elements whose len is not what
    /// the driver expected (bytes written: data for IN/GET_ID, + 1 status).
    pub completed: u64,
    pub used_len_off: u64,
    /// The first such: (request type, len, expected).
    pub used_len_first: Option<(u32, u32, u32)>,
    /// A timeout or protocol error: reset and re-initialise before more I/O.
    pub broken: bool,
    pub op_irq0: u32,
    pub op_completed0: u64,
}

impl Disk {
    pub fn new(t: Transport, setup: Setup, apic_id: u32) -> Disk {
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

    pub fn name(&self) -> DevFn {
        self.t.devfn
    }

    pub fn has(&self, f: u64) -> bool {
        self.features & f != 0
    }

    pub fn ro(&self) -> bool {
        self.has(F_RO)
    }

    /// Sectors per data buffer.
    pub fn req_sectors(&self) -> u64 {
        self.setup.slot_bytes / SECTOR
    }

    /// Full initialisation (3.1.1), from reset to DRIVER_OK, then GET_ID.
    pub fn init(&mut self, arena: &mut Arena) -> Result<(), Msg> {
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
    pub fn reinit(&mut self, arena: &mut Arena) -> Result<(), Msg> {
        self.t.reset()?;
        self.init(arena)
    }

    /// Interrupts counted for this disk's MSI-X entries; when polling, every
    /// interrupt other than the timer's and COM1's (there should be none).
    pub fn irq_sum(&self) -> u32 {
        self.irqs.sum()
    }

    pub fn op_start(&mut self) {
        self.op_irq0 = self.irq_sum();
        self.op_completed0 = self.completed;
    }

    pub fn op_irqs(&self) -> u32 {
        self.irq_sum().wrapping_sub(self.op_irq0)
    }

    pub fn print_info(&self) {
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
