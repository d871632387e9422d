//! Split virtqueues (virtio 1.x, 2.7) in RAM the driver owns.
//!
//! ```text
//! descriptor table  16 bytes each: le64 addr, le32 len, le16 flags, le16 next
//! available ring    le16 flags, le16 idx, le16 ring[size], le16 used_event
//! used ring         le16 flags, le16 idx, {le32 id, le32 len} ring[size], le16 avail_event
//! ```
//!
//! Each part gets its own page here (size <= 256 fits). No EVENT_IDX: the
//! driver notifies unless the device set VIRTQ_USED_F_NO_NOTIFY, and asks
//! for no interrupts (VIRTQ_AVAIL_F_NO_INTERRUPT) when it polls.

use super::{Transport, NO_VECTOR};
use crate::msg::Msg;
use core::sync::atomic::{compiler_fence, fence, Ordering};

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

/// Largest queue size the probe sets up (one page per ring part).
pub const MAX_SIZE: u16 = 256;
/// Bytes of RAM a queue needs: descriptor table, available and used rings, a page each.
pub const RING_BYTES: u64 = 3 * 4096;

pub struct SplitQueue {
    pub index: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub notify: u64,
    next_avail: u16,
    last_used: u16,
}

fn w16(addr: u64, v: u16) {
    // SAFETY: ring memory from the DMA arena (identity-mapped RAM the
    // driver owns; the device reads it, nothing in Rust aliases it).
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
fn r32(addr: u64) -> u32 {
    // SAFETY: as in `w16`.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// The size the probe gives a queue whose maximum is `max`: the largest
/// power of two up to `min(max, MAX_SIZE)`.
pub fn pick_size(max: u16) -> u16 {
    let mut size = MAX_SIZE.min(max);
    while !size.is_power_of_two() {
        size &= size - 1;
    }
    size
}

impl SplitQueue {
    /// After a device reset: empty rings of `size` entries, set up in the
    /// device as queue `index` on MSI-X entry `vector` (NO_VECTOR: polled,
    /// VIRTQ_AVAIL_F_NO_INTERRUPT set), which must read back; enabled.
    pub fn activate(&mut self, t: &Transport, size: u16, vector: u16) -> Result<(), Msg> {
        self.clear(size, vector == NO_VECTOR);
        let (notify, kept) =
            t.setup_queue(self.index, size, self.desc, self.avail, self.used, vector)?;
        if kept != vector {
            return Err(fail!(
                "queue {}: queue_msix_vector {vector:#x} reads back {kept:#x}",
                self.index
            ));
        }
        self.notify = notify;
        Ok(())
    }

    /// A queue over `RING_BYTES` of zeroed, page-aligned memory at `mem`.
    pub fn new(index: u16, mem: u64) -> SplitQueue {
        SplitQueue {
            index,
            size: 0,
            desc: mem,
            avail: mem + 4096,
            used: mem + 8192,
            notify: 0,
            next_avail: 0,
            last_used: 0,
        }
    }

    /// Empty rings of `size` entries (after a device reset, before setup).
    pub fn clear(&mut self, size: u16, no_interrupt: bool) {
        // SAFETY: the queue's own three pages; the device is reset (not using them).
        unsafe { core::ptr::write_bytes(self.desc as *mut u8, 0, RING_BYTES as usize) };
        self.size = size;
        self.next_avail = 0;
        self.last_used = 0;
        w16(
            self.avail,
            if no_interrupt {
                AVAIL_F_NO_INTERRUPT
            } else {
                0
            },
        );
    }

    pub fn set_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + 16 * u64::from(i);
        w64(d, addr);
        w32(d + 8, len);
        w16(d + 12, flags);
        w16(d + 14, next);
    }

    /// Put a chain head in the available ring (not yet visible to the device).
    pub fn push(&mut self, head: u16) {
        w16(
            self.avail + 4 + 2 * u64::from(self.next_avail % self.size),
            head,
        );
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Make the pushed heads visible: descriptors and ring entries first, then idx.
    pub fn publish(&self) {
        compiler_fence(Ordering::SeqCst);
        w16(self.avail + 2, self.next_avail);
    }

    /// Notify the device unless it asked not to be (checked after the idx
    /// store is globally visible).
    pub fn kick(&self) {
        fence(Ordering::SeqCst);
        if r16(self.used) & USED_F_NO_NOTIFY == 0 {
            super::wr16(self.notify, self.index);
        }
    }

    /// The next used element (id, len), if the device returned one.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        let idx = r16(self.used + 2);
        if idx == self.last_used {
            return None;
        }
        // Read the element (and later the buffers) only after idx.
        compiler_fence(Ordering::SeqCst);
        let e = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        let (id, len) = (r32(e), r32(e + 4));
        self.last_used = self.last_used.wrapping_add(1);
        Some((id, len))
    }

    pub fn avail_idx(&self) -> u16 {
        self.next_avail
    }

    /// The device returned something not yet consumed.
    pub fn has_used(&self) -> bool {
        r16(self.used + 2) != self.last_used
    }

    pub fn used_idx(&self) -> u16 {
        r16(self.used + 2)
    }

    /// In flight: made available, not yet consumed from the used ring.
    pub fn outstanding(&self) -> u16 {
        self.next_avail.wrapping_sub(self.last_used)
    }
}
