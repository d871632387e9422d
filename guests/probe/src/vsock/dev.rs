//! The virtio-vsock device (virtio 1.x, 5.10) over the modern PCI transport:
//! feature negotiation (VERSION_1 only), `guest_cid` from the configuration,
//! and the three queues (0 rx, 1 tx, 2 event).
//!
//! * Receive: device-writable buffers, each a 44-byte packet header and
//!   `probe.vsock_rx_buf` payload bytes, all posted before DRIVER_OK and
//!   re-posted as soon as their packet is handled. Unified layout: one
//!   descriptor per buffer (header and payload contiguous); split layout
//!   (`probe.vsock_split=1`): two chained descriptors, the header and (64
//!   bytes further) the payload.
//! * Transmit: one slot per packet, header and payload device-readable;
//!   unified one descriptor, split two (the header alone when there is no
//!   payload). Slots are recycled as the device returns them.
//! * Event queue: a few 8-byte device-writable buffers; every event is
//!   counted (TRANSPORT_RESET is the only one the spec defines).

use crate::msg::Msg;
use crate::plan::VsockPlan;
use crate::virtio::bus::{Bus, Irqs};
use crate::virtio::queue::{pick_size, SplitQueue, DESC_F_NEXT, DESC_F_WRITE, RING_BYTES};
use crate::virtio::{DevFn, Transport, S_NEEDS_RESET};

/// The virtio PCI device ID of a socket device (0x1040 + type 19).
pub const VSOCK_DEVICE_ID: u16 = 0x1053;
/// `struct virtio_vsock_hdr` (5.10.6).
pub const HDR: usize = 44;
/// Where the payload starts in a split-layout buffer.
const SPLIT_DATA: u64 = 64;
/// Transmit slots at most (each holds a packet of up to `probe.vsock_pkt` bytes).
const MAX_TX_SLOTS: usize = 64;
/// Event buffers posted.
const EVENT_BUFS: u16 = 4;
/// The host's CID (5.10.4).
pub const HOST_CID: u64 = 2;
/// VIRTIO_VSOCK_TYPE_STREAM.
pub const TYPE_STREAM: u16 = 1;

// Operations (5.10.6).
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
/// SHUTDOWN flags: no more receive, no more send.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet header, host byte order.
#[derive(Clone, Copy, Default, Debug)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Hdr {
    pub fn parse(b: &[u8]) -> Hdr {
        let le64 = |at| u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32;
        Hdr {
            src_cid: le64(0),
            dst_cid: le64(8),
            src_port: le32(b, 16),
            dst_port: le32(b, 20),
            len: le32(b, 24),
            kind: u16::from_le_bytes([b[28], b[29]]),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: le32(b, 32),
            buf_alloc: le32(b, 36),
            fwd_cnt: le32(b, 40),
        }
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
    }
}

#[derive(Default)]
pub struct Counters {
    pub rx_pkts: u64,
    pub rx_bytes: u64,
    pub tx_pkts: u64,
    pub tx_bytes: u64,
    /// Used elements whose `len` is not header + payload (longer: odd but harmless).
    pub rx_len_odd: u64,
    pub events: u64,
    pub transport_resets: u64,
}

pub struct Dev {
    pub t: Transport,
    pub devfn: DevFn,
    pub irqs: Irqs,
    pub offered: u64,
    pub features: u64,
    pub guest_cid: u64,
    pub split: bool,
    rx: SplitQueue,
    tx: SplitQueue,
    ev: SplitQueue,
    rx_mem: u64,
    rx_stride: u64,
    /// Payload bytes per receive buffer.
    pub rx_buf: u32,
    pub rx_bufs: u16,
    tx_mem: u64,
    tx_stride: u64,
    /// Largest payload per transmitted packet.
    pub pkt: u32,
    tx_free: [u16; MAX_TX_SLOTS],
    tx_nfree: usize,
    pub tx_slots: usize,
    ev_mem: u64,
    rx_dirty: bool,
    tx_dirty: bool,
    pub c: Counters,
    /// The first protocol error the device made (bad used element...).
    pub fault: Option<Msg>,
}

impl Dev {
    /// Initialise (3.1.1): features, `guest_cid`, interrupts, the three
    /// queues, receive and event buffers posted, DRIVER_OK.
    pub fn init(t: Transport, devfn: DevFn, vp: &VsockPlan, bus: &mut Bus) -> Result<Dev, Msg> {
        let (offered, features) = t.begin_init(0)?;
        let mut guest_cid = 0;
        for _ in 0..100 {
            let g = t.config_generation();
            guest_cid = t.dev_read64(0);
            if t.config_generation() == g {
                break;
            }
        }
        if t.num_queues() < 3 {
            return Err(fail!("{} queues, need 3 (rx, tx, event)", t.num_queues()));
        }
        if vp.msix && !t.has_msix() {
            return Err(fail!("no MSI-X capability (probe.vsock_irq=msix)"));
        }
        let apic_id = if vp.msix { bus.apic_id() } else { 0 };
        let irqs = Irqs::new(&t, vp.msix, 3, apic_id);
        irqs.program(&t)?;
        let mut sizes = [0u16; 3];
        for (q, s) in sizes.iter_mut().enumerate() {
            t.select_queue(q as u16);
            let max = t.queue_max_size();
            if max < 2 {
                return Err(fail!("queue {q}: maximum size {max}"));
            }
            *s = pick_size(max);
        }
        let split = vp.split;
        let per = if split { 2 } else { 1 };
        let rx_buf = vp.rx_buf as u32;
        let rx_stride = (SPLIT_DATA + u64::from(rx_buf)).next_multiple_of(64);
        let rx_bufs = sizes[0] / per;
        let pkt = vp.pkt as u32;
        let tx_stride = (SPLIT_DATA + u64::from(pkt)).next_multiple_of(64);
        let tx_slots = usize::from(sizes[1] / per).min(MAX_TX_SLOTS);
        let bytes = 3 * RING_BYTES
            + u64::from(rx_bufs) * rx_stride
            + tx_slots as u64 * tx_stride
            + 64 * u64::from(EVENT_BUFS);
        let Some(mem) = bus.arena.alloc(bytes, 4096) else {
            return Err(fail!(
                "out of DMA memory ({} KiB needed, {} KiB left)",
                bytes >> 10,
                bus.arena.free_bytes() >> 10
            ));
        };
        let rx_mem = mem + 3 * RING_BYTES;
        let tx_mem = rx_mem + u64::from(rx_bufs) * rx_stride;
        let ev_mem = tx_mem + tx_slots as u64 * tx_stride;
        let mut d = Dev {
            t,
            devfn,
            irqs,
            offered,
            features,
            guest_cid,
            split,
            rx: SplitQueue::new(0, mem),
            tx: SplitQueue::new(1, mem + RING_BYTES),
            ev: SplitQueue::new(2, mem + 2 * RING_BYTES),
            rx_mem,
            rx_stride,
            rx_buf,
            rx_bufs,
            tx_mem,
            tx_stride,
            pkt,
            tx_free: [0; MAX_TX_SLOTS],
            tx_nfree: tx_slots,
            tx_slots,
            ev_mem,
            rx_dirty: false,
            tx_dirty: false,
            c: Counters::default(),
            fault: None,
        };
        for (i, f) in d.tx_free.iter_mut().take(tx_slots).enumerate() {
            *f = (tx_slots - 1 - i) as u16;
        }
        d.rx.activate(&d.t, sizes[0], irqs.queue_vector(0))?;
        d.tx.activate(&d.t, sizes[1], irqs.queue_vector(1))?;
        d.ev.activate(&d.t, sizes[2], irqs.queue_vector(2))?;
        for b in 0..rx_bufs {
            d.post_rx(b);
        }
        d.rx.publish();
        for i in 0..EVENT_BUFS.min(sizes[2]) {
            d.ev.set_desc(i, ev_mem + 64 * u64::from(i), 8, DESC_F_WRITE, 0);
            d.ev.push(i);
        }
        d.ev.publish();
        d.t.driver_ok()?;
        d.rx.kick();
        d.ev.kick();
        Ok(d)
    }

    pub fn qsizes(&self) -> (u16, u16, u16) {
        (self.rx.size, self.tx.size, self.ev.size)
    }

    fn fail(&mut self, m: Msg) {
        self.fault.get_or_insert(m);
    }

    pub fn needs_reset(&self) -> bool {
        self.t.status() & S_NEEDS_RESET != 0
    }

    /// Descriptors of receive buffer `b` made available again.
    fn post_rx(&mut self, b: u16) {
        let addr = self.rx_mem + u64::from(b) * self.rx_stride;
        // A stale header must never pass for a new packet (a device that
        // returns a buffer it did not write then shows as all zeros).
        // SAFETY: receive buffer `b` in the DMA arena, not available to the device.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, HDR) };
        if self.split {
            let (h, p) = (2 * b, 2 * b + 1);
            self.rx
                .set_desc(h, addr, HDR as u32, DESC_F_WRITE | DESC_F_NEXT, p);
            self.rx
                .set_desc(p, addr + SPLIT_DATA, self.rx_buf, DESC_F_WRITE, 0);
            self.rx.push(h);
        } else {
            self.rx
                .set_desc(b, addr, HDR as u32 + self.rx_buf, DESC_F_WRITE, 0);
            self.rx.push(b);
        }
        self.rx_dirty = true;
    }

    /// Used elements waiting in any queue.
    pub fn pending(&self) -> bool {
        self.rx.has_used() || self.tx.has_used() || self.ev.has_used()
    }

    /// Handle the next received packet with `f(header, payload)` (its
    /// buffer is re-posted afterwards); false when there is none. A used
    /// element that is not a posted buffer, or a header claiming more
    /// payload than the buffer holds or the device wrote, is a fault (the
    /// packet is dropped).
    pub fn recv(&mut self, f: impl FnOnce(&Hdr, &[u8])) -> bool {
        let Some((id, len)) = self.rx.pop_used() else {
            return false;
        };
        let per = if self.split { 2 } else { 1 };
        if id >= u32::from(self.rx_bufs) * per || id % per != 0 {
            self.fail(fail!("rx used element id {id}: not a posted buffer"));
            return true;
        }
        let b = (id / per) as u16;
        let addr = self.rx_mem + u64::from(b) * self.rx_stride;
        // SAFETY: receive buffer `b` in the DMA arena, returned by the device.
        let head = unsafe { core::slice::from_raw_parts(addr as *const u8, HDR) };
        let h = Hdr::parse(head);
        let data_at = addr + if self.split { SPLIT_DATA } else { HDR as u64 };
        if (len as usize) < HDR || h.len > self.rx_buf || (len as usize) < HDR + h.len as usize {
            self.fail(fail!(
                "rx packet op {} len {} in a used element of {len} bytes (buffer {} + {HDR})",
                h.op,
                h.len,
                self.rx_buf
            ));
        } else {
            if len as usize != HDR + h.len as usize {
                self.c.rx_len_odd += 1;
            }
            // SAFETY: the payload part of the same buffer, within its length.
            let data = unsafe { core::slice::from_raw_parts(data_at as *const u8, h.len as usize) };
            self.c.rx_pkts += 1;
            self.c.rx_bytes += u64::from(h.len);
            f(&h, data);
        }
        self.post_rx(b);
        true
    }

    /// Take back transmit slots the device is done with.
    pub fn reap_tx(&mut self) {
        let per = if self.split { 2 } else { 1 };
        while let Some((id, _)) = self.tx.pop_used() {
            let slot = (id / per) as usize;
            if id % per == 0 && slot < self.tx_slots && self.tx_nfree < self.tx_slots {
                self.tx_free[self.tx_nfree] = slot as u16;
                self.tx_nfree += 1;
            } else {
                self.fail(fail!("tx used element id {id}: not a packet in flight"));
            }
        }
    }

    pub fn tx_free(&self) -> usize {
        self.tx_nfree
    }

    pub fn tx_in_flight(&self) -> usize {
        self.tx_slots - self.tx_nfree
    }

    /// Send `h` with `h.len` payload bytes that `fill` writes (at most
    /// `self.pkt`). False if no slot is free (nothing is sent).
    pub fn send(&mut self, h: &Hdr, fill: impl FnOnce(&mut [u8])) -> bool {
        if self.tx_nfree == 0 {
            self.reap_tx();
            if self.tx_nfree == 0 {
                return false;
            }
        }
        let len = h.len.min(self.pkt);
        self.tx_nfree -= 1;
        let slot = self.tx_free[self.tx_nfree];
        let addr = self.tx_mem + u64::from(slot) * self.tx_stride;
        // SAFETY: transmit slot `slot` in the DMA arena, free (not in flight).
        let buf =
            unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, self.tx_stride as usize) };
        Hdr { len, ..*h }.write(&mut buf[..HDR]);
        if self.split {
            let d = SPLIT_DATA as usize;
            fill(&mut buf[d..d + len as usize]);
            let (hd, pd) = (2 * slot, 2 * slot + 1);
            if len == 0 {
                self.tx.set_desc(hd, addr, HDR as u32, 0, 0);
            } else {
                self.tx.set_desc(hd, addr, HDR as u32, DESC_F_NEXT, pd);
                self.tx.set_desc(pd, addr + SPLIT_DATA, len, 0, 0);
            }
            self.tx.push(hd);
        } else {
            fill(&mut buf[HDR..HDR + len as usize]);
            self.tx.set_desc(slot, addr, HDR as u32 + len, 0, 0);
            self.tx.push(slot);
        }
        self.tx_dirty = true;
        self.c.tx_pkts += 1;
        self.c.tx_bytes += u64::from(len);
        true
    }

    /// Count events the device posted and re-post their buffers; true if
    /// one was TRANSPORT_RESET (id 0).
    pub fn poll_events(&mut self) -> bool {
        let mut reset = false;
        let mut any = false;
        while let Some((id, len)) = self.ev.pop_used() {
            if id >= u32::from(EVENT_BUFS.min(self.ev.size)) {
                self.fail(fail!("event used element id {id}: not a posted buffer"));
                continue;
            }
            let addr = self.ev_mem + 64 * u64::from(id);
            // SAFETY: event buffer `id` in the DMA arena, returned by the device.
            let ev = unsafe { core::ptr::read_volatile(addr as *const u32) };
            self.c.events += 1;
            if len >= 4 && ev == 0 {
                self.c.transport_resets += 1;
                reset = true;
            }
            self.ev.push(id as u16);
            any = true;
        }
        if any {
            self.ev.publish();
            self.ev.kick();
        }
        reset
    }

    /// Make new receive buffers and transmitted packets visible and notify.
    pub fn flush(&mut self) {
        if self.rx_dirty {
            self.rx.publish();
            self.rx.kick();
            self.rx_dirty = false;
        }
        if self.tx_dirty {
            self.tx.publish();
            self.tx.kick();
            self.tx_dirty = false;
        }
    }
}
