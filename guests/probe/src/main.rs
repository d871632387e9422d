//! `probe`: a freestanding x86-64 test guest for utsuwa, in the spirit of
//! kvm-unit-tests. It boots through PVH or the Linux boot protocol, reads a
//! test plan from its command line (`probe.KEY=VALUE`), checks the machine
//! it finds (memory map, ACPI, SMP bring-up, RTC, PCI, interrupts) and, on
//! request, drives virtio devices (disks `blk`, entropy `rng`, network
//! `net`, sockets `vsock`), prints
//! one machine-readable line per fact on COM1 and powers off.
//!
//! Ring 0 is assembly only (`entry.rs`); everything here runs in ring 3
//! (port I/O through the gates in `hw.rs`, MMIO directly). The plan keys and
//! the output format are specified in `guests/probe/README.md`.

#![no_std]
#![no_main]
// Failure reasons are fixed-size text buffers (there is no allocator).
#![allow(clippy::result_large_err)]

#[macro_use]
mod msg;
#[macro_use]
mod console;
mod acpi;
mod blk;
mod boot;
mod dma;
mod entry;
mod eth;
mod exitloop;
mod hostile;
mod hw;
mod irq;
mod lapic;
mod memory;
mod net;
mod pci;
mod plan;
mod power;
mod rng;
mod rtc;
mod smp;
mod time;
mod virtio;
mod vsock;

use console::Quoted;
use msg::Msg;
use plan::{Check, Plan};

struct Tally {
    pass: u32,
    fail: u32,
}

impl Tally {
    fn report(&mut self, name: &str, result: Result<(), Msg>) {
        match result {
            Ok(()) => {
                self.pass += 1;
                outln!("PROBE-CHECK {name} pass");
            }
            Err(why) => {
                self.fail += 1;
                let text = why.as_str().trim_end_matches([' ', ';']);
                outln!(
                    "PROBE-CHECK {name} fail {}",
                    if text.is_empty() { "(no reason)" } else { text }
                );
            }
        }
    }
}

fn check_cmdline(boot: &boot::Boot, plan: &Plan) -> Result<(), Msg> {
    let line = boot.cmdline();
    outln!(
        "PROBE cmdline len={} fnv64={:016x} addr={:#x} terminated={}",
        line.len(),
        plan::fnv1a64(line),
        boot.cmdline_addr,
        u8::from(boot.cmdline_terminated)
    );
    let mut why = Msg::new();
    use core::fmt::Write as _;
    if let Some(p) = boot.problem {
        let _ = write!(why, "boot handover: {p}; ");
    }
    if !boot.cmdline_terminated {
        let _ = write!(why, "no NUL within {} bytes; ", boot::CMDLINE_MAX);
    }
    if let Some(want) = plan.cmdline_len {
        if line.len() as u64 != want {
            let _ = write!(why, "length {} expected {want}; ", line.len());
        }
    }
    if let Some((want, offset)) = plan.cmdline_fnv {
        let got = plan::fnv1a64(&line[..offset]);
        if got != want {
            let _ = write!(
                why,
                "fnv64 of the first {offset} bytes {got:016x} expected {want:016x}; "
            );
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

/// Ring 3 starts here (`iretq` from the entry code), on its own stack.
#[no_mangle]
pub extern "C" fn probe_main() -> ! {
    console::init();
    let boot = boot::read();
    // A newline first: firmware may have left a partial line on the console.
    outln!();
    outln!("PROBE boot entry={}", boot.entry.name());
    outln!("PROBE cmdline {}", Quoted(boot.cmdline()));
    let plan = plan::parse(boot.cmdline());
    let high = memory::map_high_ram(&boot);
    outln!(
        "PROBE plan checks={} exit={}",
        plan::Selected(&plan),
        plan.exit.name()
    );
    let cal = time::calibrate();
    outln!("PROBE clock tsc_khz={} source={}", cal.tsc_khz, cal.source);
    let acpi = acpi::discover(&boot);
    if let Ok(a) = &acpi {
        power::arm_fatal_exit(a);
    }

    let t0 = time::now_us();
    let mut devices = virtio::bus::Devices::new(&boot, acpi.as_ref().ok());
    let mut tally = Tally { pass: 0, fail: 0 };
    for &(kind, n) in plan.exit_loops.iter().flatten() {
        exitloop::run(kind, n, &mut devices);
    }
    if !plan.errors.is_empty() {
        tally.report("plan", Err(fail!("{}", plan.errors)));
    }
    for check in plan::ALL_CHECKS {
        if !plan.runs(check) {
            continue;
        }
        let result = match check {
            Check::Cmdline => check_cmdline(&boot, &plan),
            Check::Memory => memory::check(&boot, &plan, &high),
            Check::Acpi => acpi::check(&acpi),
            Check::Smp => smp::check(&acpi, &plan),
            Check::Rtc => {
                let century = acpi
                    .as_ref()
                    .ok()
                    .and_then(|a| a.fadt.as_ref())
                    .map_or(0, |f| f.century);
                rtc::check(&plan, century)
            }
            Check::Pci => pci::check(&acpi, &plan),
            Check::Irq => irq::check(&acpi),
            Check::Blk => {
                blk::check(&mut devices, &plan, &mut |name, result| {
                    tally.report(name, result)
                });
                continue;
            }
            Check::Rng => rng::check(&mut devices, &plan),
            Check::Vsock => vsock::check(&mut devices, &plan),
            Check::Hostile => hostile::check(&mut devices, &acpi, &plan),
            Check::Net => {
                net::check(&mut devices, &plan, &mut |name, result| {
                    tally.report(name, result)
                });
                continue;
            }
        };
        tally.report(check.name(), result);
    }
    outln!("PROBE time checks_us={}", time::now_us() - t0);
    outln!("PROBE-SUMMARY pass={} fail={}", tally.pass, tally.fail);
    power::exit(plan.exit, &acpi)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    outln!("\nPROBE-FATAL panic: {info}");
    power::fatal_exit()
}
