//! The `memory` check: the e820 / PVH memory map, usable RAM, and a
//! write-read-restore at both ends of every usable region. Also maps RAM
//! above 4 GiB at startup (the static identity map covers 0-4 GiB).

use crate::boot::{Boot, E820_RAM};
use crate::entry::{self, PD_POOL_SIZE};
use crate::hw::image_range;
use crate::msg::Msg;
use crate::plan::Plan;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const GIB: u64 = 1 << 30;
const PAGE_FLAGS: u64 = 0x87; // present, writable, user, 2 MiB

/// Map `[start, end)` (above 4 GiB) with page directories from the pool.
/// Returns the first address that could not be mapped, if any.
fn map_high(start: u64, end: u64, next_pd: &mut usize) -> Option<u64> {
    let mut gib = start.max(4 * GIB) / GIB;
    while gib * GIB < end {
        if gib >= 512 {
            return Some(gib * GIB);
        }
        // The PDPT is the probe's own (in its image); a not-present -> present
        // change needs no TLB flush. Only this code writes it.
        let pdpt = (&raw mut entry::probe_pdpt).cast::<u64>();
        // SAFETY: in bounds (gib < 512).
        let slot = unsafe { pdpt.add(gib as usize) };
        // SAFETY: as above.
        if unsafe { slot.read_volatile() } == 0 {
            if *next_pd >= PD_POOL_SIZE {
                return Some(gib * GIB);
            }
            // SAFETY: pool page `next_pd` is unused until now; only written here.
            let pd = unsafe {
                (&raw mut entry::probe_pd_pool)
                    .cast::<[u64; 512]>()
                    .add(*next_pd)
            };
            *next_pd += 1;
            for i in 0..512u64 {
                // SAFETY: index within the 512-entry page directory.
                unsafe {
                    pd.cast::<u64>()
                        .add(i as usize)
                        .write_volatile((gib * GIB + i * (2 << 20)) | PAGE_FLAGS)
                };
            }
            // SAFETY: see above.
            unsafe { slot.write_volatile(pd as u64 | 0x07) };
        }
        gib += 1;
    }
    None
}

/// Write a pattern, read it back, restore. Returns false on a mismatch.
fn touch(addr: u64) -> bool {
    let p = addr as *mut u64;
    // SAFETY: `addr` is 8-aligned usable RAM outside the probe's image,
    // identity-mapped; nothing else runs, and the old value is restored.
    unsafe {
        let old = p.read_volatile();
        p.write_volatile(0x5a5a_1234_a5a5_8765 ^ addr);
        let back = p.read_volatile();
        p.write_volatile(old);
        back == 0x5a5a_1234_a5a5_8765 ^ addr
    }
}

/// Identity-map the usable RAM above 4 GiB (2 MiB pages), from ring 3:
/// the page tables live in the probe's image, which is user-accessible.
pub struct HighMap {
    pub gib_mapped: usize,
    /// First address that could not be mapped (page-directory pool empty).
    pub unmapped: Option<u64>,
}

pub fn map_high_ram(boot: &Boot) -> HighMap {
    let mut next_pd = 0;
    let mut unmapped = None;
    for r in boot.regions().iter().filter(|r| r.kind == E820_RAM) {
        let end = r.start.saturating_add(r.size);
        if end > 4 * GIB && unmapped.is_none() {
            unmapped = map_high(r.start, end, &mut next_pd);
        }
    }
    POOL_USED.store(next_pd, Ordering::Relaxed);
    HighMap {
        gib_mapped: next_pd,
        unmapped,
    }
}

/// Pages of `probe_pd_pool` handed out so far (RAM above 4 GiB, then MMIO).
static POOL_USED: AtomicUsize = AtomicUsize::new(0);

/// Take a zeroed page from the pool (a PDPT or a page directory).
fn pool_page() -> Option<*mut u64> {
    let n = POOL_USED.load(Ordering::Relaxed);
    if n >= PD_POOL_SIZE {
        return None;
    }
    POOL_USED.store(n + 1, Ordering::Relaxed);
    // SAFETY: pool page `n` was never handed out; only this code writes the pool.
    let page = unsafe {
        (&raw mut entry::probe_pd_pool)
            .cast::<[u64; 512]>()
            .add(n)
            .cast::<u64>()
    };
    for i in 0..512 {
        // SAFETY: within the 4 KiB page.
        unsafe { page.add(i).write_volatile(0) };
    }
    Some(page)
}

/// Virtual addresses for device memory that cannot be identity-mapped
/// (physical addresses from 2^47 up are not canonical): 127 TiB onwards.
const MMIO_ALIAS_BASE: u64 = 0x7f00_0000_0000;
static MMIO_ALIAS_NEXT: AtomicU64 = AtomicU64::new(MMIO_ALIAS_BASE);

/// Map the device memory `[start, start + len)` (a BAR outside the 3-4 GiB
/// hole) uncached and user-accessible, in 2 MiB pages, and return the
/// virtual address of `start`: `start` itself (identity) below 2^47, else
/// an alias from 127 TiB up. Entries that already exist are made uncached
/// (they are not RAM, so nothing cached them). Err(address) if the
/// page-directory pool ran out.
pub fn map_mmio(start: u64, len: u64) -> Result<u64, u64> {
    const PAGE: u64 = 2 << 20;
    let first = start & !(PAGE - 1);
    let end = start
        .checked_add(len)
        .and_then(|e| e.checked_next_multiple_of(PAGE))
        .ok_or(start)?;
    let va = if end <= 1 << 47 {
        first
    } else {
        MMIO_ALIAS_NEXT.fetch_add(end - first, Ordering::Relaxed)
    };
    map_pages(va, first, end - first)?;
    Ok(va + (start - first))
}

/// Map `len` bytes (a 2 MiB multiple) of device memory at `phys` to `virt`.
fn map_pages(virt: u64, phys: u64, len: u64) -> Result<(), u64> {
    const MMIO_FLAGS: u64 = 0x9f; // present, writable, user, PWT, PCD, 2 MiB
    let mut off = 0;
    while off < len {
        let page = virt + off;
        if page >= 1 << 47 {
            return Err(phys + off);
        }
        let pml4 = (&raw mut entry::probe_pml4).cast::<u64>();
        // SAFETY: index < 512 (page < 2^47); the PML4 is the probe's own.
        let pml4e = unsafe { pml4.add((page >> 39) as usize & 511) };
        // SAFETY: as above.
        let mut pdpt = unsafe { pml4e.read_volatile() } & !0xfff;
        if pdpt == 0 {
            let p = pool_page().ok_or(phys + off)?;
            // SAFETY: as above; a not-present -> present change needs no flush.
            unsafe { pml4e.write_volatile(p as u64 | 0x07) };
            pdpt = p as u64;
        }
        let pdpte = (pdpt as *mut u64).wrapping_add((page >> 30) as usize & 511);
        // SAFETY: the PDPT is the probe's (image or pool), index < 512.
        let mut pd = unsafe { pdpte.read_volatile() } & !0xfff;
        if pd == 0 {
            let p = pool_page().ok_or(phys + off)?;
            // SAFETY: as above.
            unsafe { pdpte.write_volatile(p as u64 | 0x07) };
            pd = p as u64;
        }
        let pde = (pd as *mut u64).wrapping_add((page >> 21) as usize & 511);
        // SAFETY: the page directory is the probe's, index < 512.
        unsafe { pde.write_volatile((phys + off) | MMIO_FLAGS) };
        off += 2 << 20;
    }
    Ok(())
}

pub fn check(boot: &Boot, plan: &Plan, high: &HighMap) -> Result<(), Msg> {
    let mut why = Msg::new();
    let mut usable = 0u64;
    let mut usable_regions = 0;
    for r in boot.regions() {
        outln!(
            "PROBE memory map start={:#x} end={:#x} type={}",
            r.start,
            r.start.wrapping_add(r.size),
            r.kind
        );
        if r.kind == E820_RAM {
            usable += r.size;
            usable_regions += 1;
        }
    }
    outln!(
        "PROBE memory usable_kib={} regions={} usable_regions={}",
        usable >> 10,
        boot.regions().len(),
        usable_regions
    );
    if usable == 0 {
        let _ = write!(why, "no usable RAM in the memory map; ");
    }
    if let Some(a) = high.unmapped {
        let _ = write!(
            why,
            "cannot map RAM at {a:#x} (more than the probe's page-directory pool covers); "
        );
    }

    let (img_start, img_end) = image_range();
    let mapped_end = high.unmapped.unwrap_or(u64::MAX);
    let mut touched = 0;
    for r in boot
        .regions()
        .iter()
        .filter(|r| r.kind == E820_RAM && r.size >= 16)
    {
        let end = r.start.saturating_add(r.size);
        for addr in [(r.start + 7) & !7, (end - 8) & !7] {
            if addr < 0x1000 || (addr + 8 > img_start && addr < img_end) || addr + 8 > mapped_end {
                continue;
            }
            if touch(addr) {
                touched += 1;
            } else {
                let _ = write!(why, "RAM at {addr:#x} does not hold a value; ");
            }
        }
    }
    outln!(
        "PROBE memory touched={} high_gib_mapped={}",
        touched,
        high.gib_mapped
    );

    if let Some(mib) = plan.mem_mib {
        let want = mib << 20;
        if usable > want || usable < want - want / 20 {
            let _ = write!(
                why,
                "usable {} KiB, expected within 5% below {} KiB; ",
                usable >> 10,
                want >> 10
            );
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}
