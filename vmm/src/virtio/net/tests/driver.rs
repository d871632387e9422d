//! The driver side of one split queue, played by hand in guest memory: the
//! rings laid out by virtio-queue's `MockSplitQueue`, descriptors and
//! available entries written directly, used entries read back. Shared by
//! the net and rng tests.

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::memory::GuestMemoryMmap;

/// Descriptor flags.
pub(crate) const F_NEXT: u16 = 1;
pub(crate) const F_WRITE: u16 = 2;
pub(crate) const F_INDIRECT: u16 = 4;

pub(crate) fn guest_memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("guest memory")
}

pub(crate) struct Driver {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    pub desc_table: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    next_desc: u16,
    next_buf: u64,
    buf_start: u64,
    buf_end: u64,
    avail_idx: u16,
}

impl Driver {
    /// A queue of `size` with its rings at `base` (16 KiB of room) and
    /// buffers allocated from `data_start` up to `data_end`; returns the
    /// driver and the device-side `Queue`.
    pub fn new(
        mem: &GuestMemoryMmap,
        base: GuestAddress,
        size: u16,
        data_start: u64,
        data_end: u64,
    ) -> (Driver, Queue) {
        let vq = MockSplitQueue::create(mem, base, size);
        let mut queue: Queue = vq.create_queue().expect("queue");
        // MockSplitQueue (0.18) lets the used ring overlap the end of the
        // avail ring (used_event included): move it a page further.
        let used = vq.avail_addr().unchecked_add(0x1000);
        queue.set_used_ring_address(Some(used.0 as u32), Some((used.0 >> 32) as u32));
        assert!(used.unchecked_add(6 + 8 * u64::from(size)).0 <= base.0 + 0x4000);
        assert!(queue.is_valid(mem));
        let driver = Driver {
            mem: mem.clone(),
            size,
            desc_table: vq.desc_table_addr(),
            avail: vq.avail_addr(),
            used,
            next_desc: 0,
            next_buf: data_start,
            buf_start: data_start,
            buf_end: data_end,
            avail_idx: 0,
        };
        (driver, queue)
    }

    /// Allocates `len` bytes of guest memory (4 KiB-aligned).
    pub fn alloc(&mut self, len: u64) -> GuestAddress {
        let addr = self.next_buf;
        self.next_buf = (addr + len.max(1)).next_multiple_of(4096);
        assert!(
            self.next_buf <= self.buf_end,
            "test ran out of buffer space"
        );
        GuestAddress(addr)
    }

    /// Forgets every buffer allocated so far.
    pub fn free_all(&mut self) {
        self.next_buf = self.buf_start;
    }

    /// Writes descriptor `index`.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc_table.unchecked_add(16 * u64::from(index));
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).expect("descriptor");
    }

    /// Writes a chain of (address, length, device-writable) buffers into
    /// free descriptors (not yet made available); returns its head.
    pub fn chain(&mut self, bufs: &[(GuestAddress, u32, bool)]) -> u16 {
        assert!(!bufs.is_empty() && bufs.len() <= usize::from(self.size));
        if usize::from(self.next_desc) + bufs.len() > usize::from(self.size) {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        for (i, (addr, len, write)) in bufs.iter().enumerate() {
            let index = head + i as u16;
            let last = i + 1 == bufs.len();
            let flags = if *write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.write_desc(index, addr.0, *len, flags, if last { 0 } else { index + 1 });
        }
        self.next_desc += bufs.len() as u16;
        head
    }

    /// Offers the chain at `head` to the device.
    pub fn make_available(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, self.avail.unchecked_add(4 + 2 * slot))
            .expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Writes the available index as is (hostile tests).
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, self.avail.unchecked_add(2))
            .expect("avail idx");
    }

    /// `chain` + `make_available`.
    pub fn submit(&mut self, bufs: &[(GuestAddress, u32, bool)]) -> u16 {
        let head = self.chain(bufs);
        self.make_available(head);
        head
    }

    /// Sets the avail ring's flags (VRING_AVAIL_F_NO_INTERRUPT = 1).
    pub fn set_avail_flags(&self, flags: u16) {
        self.mem.write_obj(flags, self.avail).expect("avail flags");
    }

    /// Sets `used_event` (for EVENT_IDX).
    pub fn set_used_event(&self, value: u16) {
        let at = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
        self.mem.write_obj(value, at).expect("used_event");
    }

    /// The device's `avail_event` (for EVENT_IDX).
    pub fn avail_event(&self) -> u16 {
        let at = self.used.unchecked_add(4 + 8 * u64::from(self.size));
        self.mem.read_obj(at).expect("avail_event")
    }

    /// The used ring's flags (VRING_USED_F_NO_NOTIFY = 1).
    pub fn used_flags(&self) -> u16 {
        self.mem.read_obj(self.used).expect("used flags")
    }

    /// How many chains were made available so far (mod 2^16).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(self.used.unchecked_add(2))
            .expect("used idx")
    }

    /// The used element at position `n` (id, len).
    pub fn used_elem(&self, n: u16) -> (u32, u32) {
        let at = self.used.unchecked_add(4 + 8 * u64::from(n % self.size));
        (
            self.mem.read_obj(at).expect("id"),
            self.mem.read_obj(at.unchecked_add(4)).expect("len"),
        )
    }

    /// Every used element so far, in order.
    pub fn used_all(&self) -> Vec<(u32, u32)> {
        (0..self.used_idx()).map(|n| self.used_elem(n)).collect()
    }

    pub fn read_bytes(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, addr).expect("read back");
        v
    }

    pub fn write_bytes(&self, addr: GuestAddress, data: &[u8]) {
        self.mem.write_slice(data, addr).expect("write");
    }
}
