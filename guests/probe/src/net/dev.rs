//! The virtio-net driver (virtio 1.x, 5.1): one receive and one transmit
//! queue (queues 0 and 1; no control queue, no multiqueue), over the modern
//! PCI transport.
//!
//! * Features: VERSION_1, MAC, STATUS, MTU when offered, MRG_RXBUF unless
//!   `probe.net_mrg=0`; with `probe.net_offload=1` also CSUM and GUEST_CSUM,
//!   and HOST_TSO4 with `probe.net_tso`.
//! * Every buffer starts with the 12-byte `virtio_net_hdr` (with VERSION_1
//!   it always has `num_buffers`).
//! * Receive: every descriptor of the receive queue is one device-writable
//!   buffer of `probe.net_rx_buf` bytes, descriptor i = buffer i, all posted
//!   at start and re-posted as soon as their contents are copied out. With
//!   MRG_RXBUF a frame may span `num_buffers` used buffers (the header is
//!   in the first). A frame flagged NEEDS_CSUM (possible with GUEST_CSUM)
//!   has its checksum completed here, so callers see whole checksums.
//! * Transmit: one descriptor per frame (header and frame contiguous, which
//!   VERSION_1 allows), descriptor i = slot i; slots are recycled as the
//!   device returns them. The last descriptor is kept for the one large
//!   GSO buffer when TSO is in use.

use crate::eth;
use crate::msg::Msg;
use crate::plan::NetPlan;
use crate::virtio::bus::{Bus, Irqs};
use crate::virtio::queue::{pick_size, SplitQueue, DESC_F_WRITE, MAX_SIZE, RING_BYTES};
use crate::virtio::{DevFn, Transport, S_NEEDS_RESET};

// Feature bits (5.1.3).
pub const F_CSUM: u64 = 1 << 0;
pub const F_GUEST_CSUM: u64 = 1 << 1;
const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_STATUS: u64 = 1 << 16;

// virtio_net_hdr (5.1.6).
pub const HDR: usize = 12;
pub const HDR_F_NEEDS_CSUM: u8 = 1;
pub const HDR_F_DATA_VALID: u8 = 2;
const GSO_TCPV4: u8 = 1;
const STATUS_LINK_UP: u16 = 1;

/// Largest frame assembled from merged buffers.
pub const MAX_FRAME: usize = 65536;
/// Bytes of the GSO transmit buffer (header + up to 64 KiB of frame).
const BIG_BYTES: u64 = 65536 + 4096;

/// What came with a received frame.
#[derive(Clone, Copy, Default)]
pub struct RxMeta {
    /// Frame bytes (the virtio header stripped).
    pub len: usize,
}

/// How the device should treat a frame to send.
#[derive(Clone, Copy, Default)]
pub struct TxMeta {
    pub len: usize,
    /// NEEDS_CSUM: (csum_start, csum_offset).
    pub csum: Option<(u16, u16)>,
    /// GSO TCPv4: (hdr_len, gso_size).
    pub tso: Option<(u16, u16)>,
}

#[derive(Default)]
pub struct Counters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_used: u64,
    pub rx_merged: u64,
    pub rx_partial_csum: u64,
    pub rx_data_valid: u64,
    pub rx_too_big: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_used: u64,
    pub tx_csum_offload: u64,
    /// `num_buffers` other than 1 without MRG_RXBUF.
    pub rx_numbuf_odd: u64,
}

pub struct Nic {
    pub t: Transport,
    pub devfn: DevFn,
    pub irqs: Irqs,
    pub offered: u64,
    pub features: u64,
    pub mac: [u8; 6],
    pub mac_from_device: bool,
    pub mtu: u16,
    rx: SplitQueue,
    tx: SplitQueue,
    rx_mem: u64,
    pub rx_buf: u32,
    tx_mem: u64,
    tx_slot: u64,
    /// Free transmit descriptors (a stack) and how many.
    tx_free: [u16; MAX_SIZE as usize],
    tx_nfree: usize,
    tx_slots: u16,
    big: u64,
    big_busy: bool,
    rx_dirty: bool,
    tx_dirty: bool,
    pub c: Counters,
    /// A protocol error the device made (bad used element...).
    pub fault: Option<Msg>,
}

impl Nic {
    pub fn has(&self, f: u64) -> bool {
        self.features & f != 0
    }

    /// Initialise (3.1.1 and 5.1.5): features, configuration, interrupts,
    /// both queues, receive buffers posted, DRIVER_OK.
    pub fn init(
        t: Transport,
        devfn: DevFn,
        index: usize,
        np: &NetPlan,
        bus: &mut Bus,
    ) -> Result<Nic, Msg> {
        let mut wanted = F_MAC | F_STATUS | F_MTU;
        if np.mrg {
            wanted |= F_MRG_RXBUF;
        }
        if np.offload {
            wanted |= F_CSUM | F_GUEST_CSUM;
            if np.tso != 0 {
                wanted |= F_HOST_TSO4;
            }
        }
        let (offered, mut features) = t.begin_init(wanted)?;
        if features & F_HOST_TSO4 != 0 && features & F_CSUM == 0 {
            // HOST_TSO4 requires CSUM (5.1.3.1): cannot happen with a sane device.
            features &= !F_HOST_TSO4;
        }
        let mut mac = [0x02, 0x50, 0x52, 0x4f, 0x42, index as u8]; // locally administered
        let mut mtu = 1500u16;
        for _ in 0..100 {
            let g = t.config_generation();
            if features & F_MAC != 0 {
                for (i, b) in mac.iter_mut().enumerate() {
                    *b = t.dev_read8(i as u64);
                }
            }
            if features & F_MTU != 0 {
                mtu = t.dev_read16(10);
            }
            if t.config_generation() == g {
                break;
            }
        }
        if features & F_MTU != 0 && !(68..=9000).contains(&mtu) {
            return Err(fail!("device MTU {mtu} outside 68..=9000"));
        }
        let max_frame = eth::ETH_HDR as u64 + u64::from(mtu);
        let mrg = features & F_MRG_RXBUF != 0;
        let rx_buf = np.rx_buf as u32;
        if !mrg && u64::from(rx_buf) < HDR as u64 + max_frame {
            return Err(fail!("probe.net_rx_buf={rx_buf} cannot hold a {max_frame}-byte frame and the header without MRG_RXBUF"));
        }
        if t.num_queues() < 2 {
            return Err(fail!(
                "{} queues, need 2 (receiveq1, transmitq1)",
                t.num_queues()
            ));
        }
        if np.msix && !t.has_msix() {
            return Err(fail!("no MSI-X capability (probe.net_irq=msix)"));
        }
        let apic_id = if np.msix { bus.apic_id() } else { 0 };
        let irqs = Irqs::new(&t, np.msix, 2, apic_id);
        irqs.program(&t)?;
        let mut sizes = [0u16; 2];
        for (q, s) in sizes.iter_mut().enumerate() {
            t.select_queue(q as u16);
            let max = t.queue_max_size();
            if max < 2 {
                return Err(fail!("queue {q}: maximum size {max}"));
            }
            *s = pick_size(max);
        }
        let tx_slot = (HDR as u64 + max_frame).next_multiple_of(64).max(2048);
        let tso = features & F_HOST_TSO4 != 0;
        let bytes = 2 * RING_BYTES
            + u64::from(sizes[0]) * u64::from(rx_buf).next_multiple_of(64)
            + u64::from(sizes[1]) * tx_slot
            + if tso { BIG_BYTES } else { 0 };
        let Some(mem) = bus.arena.alloc(bytes, 4096) else {
            return Err(fail!(
                "out of DMA memory ({} KiB needed, {} KiB left)",
                bytes >> 10,
                bus.arena.free_bytes() >> 10
            ));
        };
        let rx_mem = mem + 2 * RING_BYTES;
        let tx_mem = rx_mem + u64::from(sizes[0]) * u64::from(rx_buf).next_multiple_of(64);
        let big = if tso {
            tx_mem + u64::from(sizes[1]) * tx_slot
        } else {
            0
        };
        let mut nic = Nic {
            t,
            devfn,
            irqs,
            offered,
            features,
            mac,
            mac_from_device: features & F_MAC != 0,
            mtu,
            rx: SplitQueue::new(0, mem),
            tx: SplitQueue::new(1, mem + RING_BYTES),
            rx_mem,
            rx_buf,
            tx_mem,
            tx_slot,
            tx_free: [0; MAX_SIZE as usize],
            tx_nfree: 0,
            tx_slots: 0,
            big,
            big_busy: false,
            rx_dirty: false,
            tx_dirty: false,
            c: Counters::default(),
            fault: None,
        };
        nic.rx.activate(&nic.t, sizes[0], irqs.queue_vector(0))?;
        nic.tx.activate(&nic.t, sizes[1], irqs.queue_vector(1))?;
        for i in 0..sizes[0] {
            nic.rx.set_desc(i, nic.rx_addr(i), rx_buf, DESC_F_WRITE, 0);
            nic.rx.push(i);
        }
        nic.rx.publish();
        nic.tx_slots = if tso { sizes[1] - 1 } else { sizes[1] };
        for i in 0..nic.tx_slots {
            nic.tx_free[usize::from(i)] = nic.tx_slots - 1 - i;
        }
        nic.tx_nfree = usize::from(nic.tx_slots);
        nic.t.driver_ok()?;
        nic.rx.kick();
        Ok(nic)
    }

    fn rx_addr(&self, i: u16) -> u64 {
        self.rx_mem + u64::from(i) * u64::from(self.rx_buf).next_multiple_of(64)
    }

    pub fn qsizes(&self) -> (u16, u16) {
        (self.rx.size, self.tx.size)
    }

    /// The link, from the configuration (None: STATUS not negotiated, so
    /// the link is to be assumed up).
    pub fn link_up(&self) -> Option<bool> {
        self.has(F_STATUS)
            .then(|| self.t.dev_read16(6) & STATUS_LINK_UP != 0)
    }

    pub fn needs_reset(&self) -> bool {
        self.t.status() & S_NEEDS_RESET != 0
    }

    fn fail(&mut self, m: Msg) {
        self.fault.get_or_insert(m);
    }

    /// Used elements waiting in either queue.
    pub fn pending(&self) -> bool {
        self.rx.has_used() || self.tx.has_used()
    }

    /// Take back transmit buffers the device is done with.
    pub fn reap_tx(&mut self) {
        while let Some((id, _)) = self.tx.pop_used() {
            self.c.tx_used += 1;
            if self.big != 0 && id == u32::from(self.tx_slots) {
                self.big_busy = false;
            } else if id < u32::from(self.tx_slots) && self.tx_nfree < usize::from(self.tx_slots) {
                self.tx_free[self.tx_nfree] = id as u16;
                self.tx_nfree += 1;
            } else {
                self.fail(fail!(
                    "transmit used element id {id} is not a frame in flight"
                ));
            }
        }
    }

    pub fn tx_free(&self) -> usize {
        self.tx_nfree
    }

    /// The next received frame, copied into `out` (its receive buffers are
    /// re-posted); None when the device has returned nothing more.
    pub fn recv(&mut self, out: &mut [u8]) -> Option<RxMeta> {
        let (id, len) = self.rx.pop_used()?;
        self.c.rx_used += 1;
        let mrg = self.has(F_MRG_RXBUF);
        if id >= u32::from(self.rx.size) || (len as usize) < HDR || len > self.rx_buf {
            self.fail(fail!(
                "receive used element id {id} len {len}: not a posted buffer, or too long"
            ));
            return None;
        }
        let id = id as u16;
        // SAFETY: receive buffer `id` in the DMA arena, returned by the device.
        let first =
            unsafe { core::slice::from_raw_parts(self.rx_addr(id) as *const u8, len as usize) };
        let flags = first[0];
        let csum_start = usize::from(u16::from_le_bytes([first[6], first[7]]));
        let csum_offset = usize::from(u16::from_le_bytes([first[8], first[9]]));
        let nbuf = u16::from_le_bytes([first[10], first[11]]);
        let mut n = 0usize;
        let mut too_big = false;
        let mut copy = |data: &[u8], n: &mut usize| {
            let room = out.len() - *n;
            let k = data.len().min(room);
            out[*n..*n + k].copy_from_slice(&data[..k]);
            *n += k;
            too_big |= k < data.len();
        };
        copy(&first[HDR..], &mut n);
        self.rx.push(id);
        let buffers = if mrg { nbuf.max(1) } else { 1 };
        if !mrg && nbuf != 1 {
            self.c.rx_numbuf_odd += 1;
        }
        for k in 1..buffers {
            // The device makes all buffers of a frame used at once; allow it a moment anyway.
            let mut next = self.rx.pop_used();
            let d = crate::time::Deadline::after_ms(10);
            while next.is_none() && !d.expired() {
                crate::hw::pause();
                next = self.rx.pop_used();
            }
            let Some((id, len)) = next else {
                self.fail(fail!(
                    "frame of {buffers} merged buffers: buffer {k} never came"
                ));
                break;
            };
            self.c.rx_used += 1;
            if id >= u32::from(self.rx.size) || len > self.rx_buf {
                self.fail(fail!(
                    "receive used element id {id} len {len}: not a posted buffer, or too long"
                ));
                break;
            }
            // SAFETY: as for the first buffer.
            let more = unsafe {
                core::slice::from_raw_parts(self.rx_addr(id as u16) as *const u8, len as usize)
            };
            copy(more, &mut n);
            self.rx.push(id as u16);
        }
        self.rx_dirty = true;
        if buffers > 1 {
            self.c.rx_merged += 1;
        }
        if too_big {
            self.c.rx_too_big += 1;
        }
        if flags & HDR_F_NEEDS_CSUM != 0 {
            // The field holds a partial sum; complete it as the device would have (5.1.6.4).
            self.c.rx_partial_csum += 1;
            if csum_start + csum_offset + 2 <= n {
                let s = eth::csum_add(0, &out[csum_start..n]);
                let c = !eth::csum_fold(s);
                out[csum_start + csum_offset..csum_start + csum_offset + 2]
                    .copy_from_slice(&c.to_be_bytes());
            }
        } else if flags & HDR_F_DATA_VALID != 0 {
            self.c.rx_data_valid += 1;
        }
        self.c.rx_frames += 1;
        self.c.rx_bytes += n as u64;
        Some(RxMeta { len: n })
    }

    /// Send one frame: `build` writes it into the transmit buffer it is
    /// given (room for one MTU-sized frame) and says how long it is. False
    /// if no buffer is free (nothing is sent).
    pub fn send(&mut self, build: impl FnOnce(&mut [u8]) -> TxMeta) -> bool {
        if self.tx_nfree == 0 {
            self.reap_tx();
            if self.tx_nfree == 0 {
                return false;
            }
        }
        self.tx_nfree -= 1;
        let id = self.tx_free[self.tx_nfree];
        let addr = self.tx_mem + u64::from(id) * self.tx_slot;
        // SAFETY: transmit slot `id` in the DMA arena, free (not in flight).
        let buf =
            unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, self.tx_slot as usize) };
        let room = buf.len() - HDR;
        let meta = build(&mut buf[HDR..]);
        let len = meta.len.min(room);
        self.put(id, addr, buf, TxMeta { len, ..meta });
        true
    }

    /// Send one large frame from the GSO buffer (HOST_TSO4 negotiated);
    /// false if it is still in flight or there is none.
    pub fn send_big(&mut self, build: impl FnOnce(&mut [u8]) -> TxMeta) -> bool {
        if self.big == 0 || self.big_busy {
            return false;
        }
        // SAFETY: the GSO buffer in the DMA arena, not in flight.
        let buf =
            unsafe { core::slice::from_raw_parts_mut(self.big as *mut u8, BIG_BYTES as usize) };
        let meta = build(&mut buf[HDR..]);
        let len = meta.len.min(BIG_BYTES as usize - HDR);
        self.big_busy = true;
        self.put(self.tx_slots, self.big, buf, TxMeta { len, ..meta });
        true
    }

    fn put(&mut self, id: u16, addr: u64, buf: &mut [u8], meta: TxMeta) {
        let h = &mut buf[..HDR];
        h.fill(0);
        if let Some((start, offset)) = meta.csum {
            h[0] = HDR_F_NEEDS_CSUM;
            h[6..8].copy_from_slice(&start.to_le_bytes());
            h[8..10].copy_from_slice(&offset.to_le_bytes());
            self.c.tx_csum_offload += 1;
        }
        if let Some((hdr_len, gso_size)) = meta.tso {
            h[1] = GSO_TCPV4;
            h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
            h[4..6].copy_from_slice(&gso_size.to_le_bytes());
        }
        self.tx.set_desc(id, addr, (HDR + meta.len) as u32, 0, 0);
        self.tx.push(id);
        self.tx.publish();
        self.tx_dirty = true;
        self.c.tx_frames += 1;
        self.c.tx_bytes += meta.len as u64;
    }

    /// Make re-posted receive buffers visible and notify for both queues
    /// (once per batch: each notification is a trip to the VMM).
    pub fn flush(&mut self) {
        if self.rx_dirty {
            self.rx.publish();
            self.rx.kick();
            self.rx_dirty = false;
        }
        if self.tx_dirty {
            self.tx.kick();
            self.tx_dirty = false;
        }
    }

    /// Notify for transmitted frames now (latency measurements).
    pub fn flush_tx(&mut self) {
        if self.tx_dirty {
            self.tx.kick();
            self.tx_dirty = false;
        }
    }

    /// Transmit buffers still with the device.
    pub fn tx_in_flight(&self) -> usize {
        usize::from(self.tx_slots) - self.tx_nfree + usize::from(self.big_busy)
    }
}
