//! Ring-3 access to the machine: I/O ports (through ring-0 gates), physical memory through
//! the identity map, MMIO (uncached in the 3–4 GiB hole), CPUID and the TSC.
//!
//! These wrappers are safe functions: the whole guest-physical space below
//! 4 GiB is identity-mapped and nothing else runs, so touching it cannot
//! break a Rust invariant the probe relies on, except writes into the
//! probe's own image, which callers avoid (the image bounds are exported).

use core::arch::asm;

/// Ring 3 cannot do port I/O itself on PVM (IOPL is not honoured): it calls
/// a gate whose IN/OUT faults, and the #GP stub repeats it in ring 0.
/// The gates are 8 bytes apart, in this order.
const GATE_OUTB: usize = 0;
const GATE_OUTW: usize = 8;
const GATE_OUTL: usize = 16;
const GATE_INB: usize = 24;
const GATE_INW: usize = 32;
const GATE_INL: usize = 40;
const GATE_OUTSB: usize = 48;

fn gate(offset: usize) -> usize {
    (&raw const crate::entry::probe_io_gates as usize) + offset
}

// The gate is reached with `call`, below the red zone (skipped by 128 bytes).
macro_rules! io_call {
    ($gate:expr, $($operands:tt)*) => {
        // SAFETY: the gate performs exactly the one port access named by its
        // registers (and returns); ports have no memory-safety effects.
        unsafe {
            core::arch::asm!(
                "sub rsp, 128",
                "call {g}",
                "add rsp, 128",
                g = in(reg) gate($gate),
                $($operands)*
            )
        }
    };
}

pub fn outb(port: u16, value: u8) {
    io_call!(GATE_OUTB, in("dx") port, in("al") value);
}

pub fn outw(port: u16, value: u16) {
    io_call!(GATE_OUTW, in("dx") port, in("ax") value);
}

pub fn outl(port: u16, value: u32) {
    io_call!(GATE_OUTL, in("dx") port, in("eax") value);
}

pub fn inb(port: u16) -> u8 {
    let value: u8;
    io_call!(GATE_INB, in("dx") port, out("al") value);
    value
}

pub fn inw(port: u16) -> u16 {
    let value: u16;
    io_call!(GATE_INW, in("dx") port, out("ax") value);
    value
}

pub fn inl(port: u16) -> u32 {
    let value: u32;
    io_call!(GATE_INL, in("dx") port, out("eax") value);
    value
}

/// `rep outsb`: the whole buffer to one port, in one trip to ring 0.
pub fn outsb(port: u16, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    io_call!(GATE_OUTSB, in("dx") port, inout("rsi") bytes.as_ptr() => _, inout("rcx") bytes.len() => _);
}

pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: CR4.TSD is clear, so RDTSC works in ring 3; no memory is touched.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn pause() {
    core::hint::spin_loop();
}

/// Is `[addr, addr + len)` inside the identity map the probe can always
/// read (below 4 GiB), and not at address 0 (a null pointer to Rust)?
pub fn phys_readable(addr: u64, len: u64) -> bool {
    addr != 0
        && addr
            .checked_add(len)
            .is_some_and(|end| end <= 0x1_0000_0000)
}

/// A view of guest-physical memory (RAM, or ROM such as the BIOS area).
/// Panics (a probe bug, reported on COM1) if the range is not mapped.
pub fn phys_bytes(addr: u64, len: usize) -> &'static [u8] {
    assert!(
        phys_readable(addr, len as u64),
        "physical range {addr:#x}+{len:#x} not mapped"
    );
    // SAFETY: the range is identity-mapped and readable (checked above); the
    // probe never writes the firmware tables and boot data it views.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

pub fn phys_read_u8(addr: u64) -> u8 {
    phys_bytes(addr, 1)[0]
}

pub fn phys_read_u16(addr: u64) -> u16 {
    let b = phys_bytes(addr, 2);
    u16::from_le_bytes([b[0], b[1]])
}

pub fn phys_read_u32(addr: u64) -> u32 {
    let b = phys_bytes(addr, 4);
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

pub fn phys_read_u64(addr: u64) -> u64 {
    u64::from(phys_read_u32(addr)) | (u64::from(phys_read_u32(addr + 4)) << 32)
}

pub fn mmio_read32(addr: u64) -> u32 {
    assert!(addr % 4 == 0 && phys_readable(addr, 4));
    // SAFETY: aligned, identity-mapped (uncached in the MMIO hole).
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

pub fn mmio_write32(addr: u64, value: u32) {
    assert!(addr % 4 == 0 && phys_readable(addr, 4));
    // SAFETY: aligned, identity-mapped device register or RAM outside the image.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

pub fn mmio_read8(addr: u64) -> u8 {
    assert!(phys_readable(addr, 1));
    // SAFETY: identity-mapped.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

pub fn mmio_write8(addr: u64, value: u8) {
    assert!(phys_readable(addr, 1));
    // SAFETY: identity-mapped device register or RAM outside the image.
    unsafe { core::ptr::write_volatile(addr as *mut u8, value) }
}

pub fn mmio_read16(addr: u64) -> u16 {
    assert!(addr % 2 == 0 && phys_readable(addr, 2));
    // SAFETY: aligned, identity-mapped.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}

pub fn mmio_write16(addr: u64, value: u16) {
    assert!(addr % 2 == 0 && phys_readable(addr, 2));
    // SAFETY: aligned, identity-mapped device register.
    unsafe { core::ptr::write_volatile(addr as *mut u16, value) }
}

/// The probe's own memory: `[start, end)`.
pub fn image_range() -> (u64, u64) {
    (
        &raw const crate::entry::__image_start as u64,
        &raw const crate::entry::__image_end as u64,
    )
}

/// Write a byte range of low RAM (below 4 GiB, outside the probe's image).
pub fn phys_write_bytes(addr: u64, data: &[u8]) {
    let (start, end) = image_range();
    let len = data.len() as u64;
    assert!(phys_readable(addr, len) && (addr + len <= start || addr >= end));
    // SAFETY: RAM outside the probe's image, identity-mapped (checked above).
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) }
    // Others (APs, devices) read it after later MMIO/port writes: keep the order.
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}
