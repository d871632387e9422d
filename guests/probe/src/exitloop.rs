//! `probe.exit_loop=KIND:N`: N guest exits of one kind in a tight loop,
//! timed with the TSC, for the exit-cost benchmark (README "Exit-cost loops").
//!
//! - `pio`: 1-byte `out` to port 0x510, which no device owns: a port-I/O
//!   exit to the VMM's userspace each. On PVM ring 3 has no IOPL, so every
//!   `out` also takes the #GP trip through the ring-0 gate stub (about 15
//!   emulated instructions more); `io=gate|native` says which path ran.
//! - `mmio`: 4-byte writes to 0xd000_0000 (in the PCI window, no BAR
//!   there): an MMIO exit to userspace each.
//! - `notify`: 2-byte writes of 0 to queue 0's notify address of the first
//!   modern virtio function on bus 0: an ioeventfd, handled inside KVM
//!   (the device is left reset, so it finds no work).

use crate::hw::{mmio_write32, outb, rdtsc};
use crate::plan::ExitLoop;
use crate::virtio::bus::Devices;

pub const PIO_PORT: u16 = 0x510;
pub const MMIO_ADDR: u64 = 0xd000_0000;

/// Does ring 3 run with IOPL=3 (port I/O native, no gate fault)?
pub fn iopl3() -> bool {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack; no other effect.
    unsafe { core::arch::asm!("pushfq", "pop {}", out(reg) flags) };
    (flags >> 12) & 3 == 3
}

fn report(kind: ExitLoop, n: u64, cycles: u64, extra: core::fmt::Arguments) {
    let khz = u128::from(crate::time::tsc_khz().max(1));
    let ns = u128::from(cycles) * 1_000_000 / khz;
    outln!(
        "PROBE exit-loop kind={} n={n} us={} ns_per_exit={} {extra}",
        kind.name(),
        ns / 1000,
        ns / u128::from(n)
    );
}

/// Runs one loop and prints its line (or `PROBE exit-loop kind=.. n=N error="..."`).
pub fn run(kind: ExitLoop, n: u64, devices: &mut Devices) {
    match kind {
        ExitLoop::Pio => {
            let t0 = rdtsc();
            for i in 0..n {
                outb(PIO_PORT, i as u8);
            }
            let t = rdtsc() - t0;
            let io = if iopl3() { "native" } else { "gate" };
            report(kind, n, t, format_args!("port={PIO_PORT:#x} io={io}"));
        }
        ExitLoop::Mmio => {
            let t0 = rdtsc();
            for i in 0..n {
                mmio_write32(MMIO_ADDR, i as u32);
            }
            let t = rdtsc() - t0;
            report(kind, n, t, format_args!("addr={MMIO_ADDR:#x}"));
        }
        ExitLoop::Notify => {
            let found = devices.bus().and_then(|bus| {
                if bus.functions().is_empty() {
                    return Err(fail!("no modern virtio function"));
                }
                let i = 0;
                let t = bus.transport(i)?;
                t.reset()?;
                let addr = t
                    .notify_addr(0)
                    .ok_or_else(|| fail!("queue 0 notify offset past the notify region"))?;
                Ok((t.devfn, addr))
            });
            match found {
                Ok((devfn, addr)) => {
                    let t0 = rdtsc();
                    for _ in 0..n {
                        crate::virtio::wr16(addr, 0);
                    }
                    let t = rdtsc() - t0;
                    report(kind, n, t, format_args!("dev={devfn} addr={addr:#x}"));
                }
                Err(e) => outln!(
                    "PROBE exit-loop kind={} n={n} error={}",
                    kind.name(),
                    crate::console::Quoted(e.as_str().trim_end_matches([' ', ';']).as_bytes())
                ),
            }
        }
    }
}
