//! RAM the probe hands to devices (virtqueues, request headers, data
//! buffers): a bump allocator over one usable e820 region below 4 GiB,
//! above the probe's image and the first 4 MiB. Identity-mapped, so a
//! pointer is the bus address. Nothing is ever freed: drivers allocate once
//! per device and reuse their memory across resets.

use crate::boot::{Boot, E820_RAM};
use crate::hw::image_range;

const LOW_LIMIT: u64 = 4 << 20;
const HIGH_LIMIT: u64 = 1 << 32;

pub struct Arena {
    next: u64,
    end: u64,
}

impl Arena {
    /// The largest usable stretch of low RAM past the image and 4 MiB.
    pub fn new(boot: &Boot) -> Option<Arena> {
        let (_, image_end) = image_range();
        let floor = LOW_LIMIT.max(image_end);
        boot.regions()
            .iter()
            .filter(|r| r.kind == E820_RAM)
            .filter_map(|r| {
                let start = (r.start.max(floor) + 0xfff) & !0xfff;
                let end = r.start.saturating_add(r.size).min(HIGH_LIMIT) & !0xfff;
                (end > start).then_some(Arena { next: start, end })
            })
            .max_by_key(|a| a.end - a.next)
    }

    pub fn free_bytes(&self) -> u64 {
        self.end - self.next
    }

    /// `bytes` of zeroed memory aligned to `align` (a power of two).
    pub fn alloc(&mut self, bytes: u64, align: u64) -> Option<u64> {
        let start = (self.next + align - 1) & !(align - 1);
        let end = start.checked_add(bytes)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        // SAFETY: usable RAM below 4 GiB outside the probe's image (the
        // arena starts past it), identity-mapped, handed out only once.
        unsafe { core::ptr::write_bytes(start as *mut u8, 0, bytes as usize) };
        Some(start)
    }
}
