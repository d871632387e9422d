//! The `irq` check: a LAPIC timer interrupt, and COM1's IRQ 4 routed
//! through the IOAPIC (honouring MADT interrupt source overrides).

use crate::acpi::Acpi;
use crate::console::COM1;
use crate::hw::{inb, mmio_read32, mmio_write32, outb};
use crate::lapic::{self, Lapic};
use crate::msg::Msg;
use crate::time;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

/// Bumped by the ring-0 stubs.
#[no_mangle]
pub static PROBE_TIMER_TICKS: AtomicU32 = AtomicU32::new(0);
#[no_mangle]
pub static PROBE_COM1_IRQS: AtomicU32 = AtomicU32::new(0);
#[no_mangle]
pub static PROBE_COM1_IIR: AtomicU8 = AtomicU8::new(0);
#[no_mangle]
pub static PROBE_OTHER_IRQS: AtomicU32 = AtomicU32::new(0);
#[no_mangle]
pub static PROBE_SPURIOUS_IRQS: AtomicU32 = AtomicU32::new(0);

pub const COM1_VECTOR: u32 = 0x41;
const COM1_ISA_IRQ: u8 = 4;

fn ioapic_read(base: u64, reg: u32) -> u32 {
    mmio_write32(base, reg);
    mmio_read32(base + 0x10)
}

fn ioapic_write(base: u64, reg: u32, value: u32) {
    mmio_write32(base, reg);
    mmio_write32(base + 0x10, value);
}

pub fn check(acpi: &Result<Acpi, Msg>) -> Result<(), Msg> {
    let acpi = acpi.as_ref().map_err(|e| fail!("no ACPI: {e}"))?;
    if !acpi.has_madt {
        return Err(fail!("no MADT"));
    }
    let mut why = Msg::new();
    let lapic = Lapic::new(acpi.lapic_addr);
    lapic.enable();
    let bsp = lapic.id();

    // LAPIC timer: one shot, divide by 1.
    let ticks0 = PROBE_TIMER_TICKS.load(Ordering::SeqCst);
    lapic.write(lapic::TIMER_DIVIDE, 0xb);
    lapic.write(lapic::LVT_TIMER, lapic::TIMER_VECTOR);
    lapic.write(lapic::TIMER_INITIAL, 100_000);
    let timer_ok = time::wait_ms(500, || PROBE_TIMER_TICKS.load(Ordering::SeqCst) != ticks0);
    lapic.write(lapic::LVT_TIMER, 1 << 16); // masked
    let ticks = PROBE_TIMER_TICKS.load(Ordering::SeqCst) - ticks0;
    outln!(
        "PROBE irq lapic_timer_ticks={} vector={:#x}",
        ticks,
        lapic::TIMER_VECTOR
    );
    if !timer_ok {
        let _ = write!(why, "no LAPIC timer interrupt within 500 ms; ");
    }

    // COM1: ISA IRQ 4, unless an override says otherwise.
    let (gsi, flags) = acpi
        .isos()
        .iter()
        .find(|o| o.bus == 0 && o.source == COM1_ISA_IRQ)
        .map_or((u32::from(COM1_ISA_IRQ), 0), |o| (o.gsi, o.flags));
    let active_low = flags & 3 == 3;
    let level = (flags >> 2) & 3 == 3;
    let Some((ioapic, pin)) = acpi.ioapics().iter().find_map(|io| {
        let entries = ((ioapic_read(io.addr, 1) >> 16) & 0xff) + 1;
        (gsi >= io.gsi_base && gsi < io.gsi_base + entries).then_some((io.addr, gsi - io.gsi_base))
    }) else {
        let _ = write!(why, "no IOAPIC serves GSI {gsi}; ");
        return Err(why);
    };
    let redir = 0x10 + 2 * pin;
    let low = COM1_VECTOR | (u32::from(active_low) << 13) | (u32::from(level) << 15);
    ioapic_write(ioapic, redir + 1, bsp << 24);
    ioapic_write(ioapic, redir, low);

    let irqs0 = PROBE_COM1_IRQS.load(Ordering::SeqCst);
    let _ = inb(COM1 + 2); // clear a stale THRE indication
    outb(COM1 + 4, 0x0b); // DTR | RTS | OUT2
    outb(COM1 + 1, 0x02); // IER: THR empty
                          // This line itself writes THR, which (re)raises "THR empty".
    outln!(
        "PROBE irq com1_gsi={} ioapic={:#x} pin={} polarity={} trigger={} vector={:#x}",
        gsi,
        ioapic,
        pin,
        if active_low { "low" } else { "high" },
        if level { "level" } else { "edge" },
        COM1_VECTOR
    );
    let com1_ok = time::wait_ms(500, || PROBE_COM1_IRQS.load(Ordering::SeqCst) != irqs0);
    outb(COM1 + 1, 0);
    ioapic_write(ioapic, redir, low | (1 << 16)); // mask again
    outln!(
        "PROBE irq com1_irqs={} iir={:#x} other_irqs={} spurious_irqs={}",
        PROBE_COM1_IRQS.load(Ordering::SeqCst) - irqs0,
        PROBE_COM1_IIR.load(Ordering::SeqCst),
        PROBE_OTHER_IRQS.load(Ordering::SeqCst),
        PROBE_SPURIOUS_IRQS.load(Ordering::SeqCst)
    );
    if !com1_ok {
        let _ = write!(why, "no COM1 interrupt (GSI {gsi}) within 500 ms; ");
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}
