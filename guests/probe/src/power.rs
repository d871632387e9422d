//! Leaving the machine: ACPI power-off (hardware-reduced sleep control
//! register or PM1a_CNT), ACPI reset register, i8042 reset, triple fault,
//! or halting for good.

use crate::acpi::{Acpi, Gas, GAS_IO, GAS_MEMORY};
use crate::hw::{
    inb, inl, inw, mmio_read16, mmio_read32, mmio_read8, mmio_write16, mmio_write32, mmio_write8,
    outb, outl, outw,
};
use crate::msg::Msg;
use crate::plan::Exit;
use crate::{entry, time};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// How the ring-0 exception stub leaves the machine after a fatal
/// exception: 0 halt, 1 8-bit port write, 2 16-bit port write, 3 8-bit MMIO write.
#[no_mangle]
pub static PROBE_FATAL_KIND: AtomicU32 = AtomicU32::new(0);
#[no_mangle]
pub static PROBE_FATAL_VALUE: AtomicU32 = AtomicU32::new(0);
#[no_mangle]
pub static PROBE_FATAL_ADDR: AtomicU64 = AtomicU64::new(0);

pub fn gas_write(g: &Gas, value: u64) -> bool {
    match (g.space, g.width()) {
        (GAS_IO, 8) => outb(g.addr as u16, value as u8),
        (GAS_IO, 16) => outw(g.addr as u16, value as u16),
        (GAS_IO, 32) => outl(g.addr as u16, value as u32),
        (GAS_MEMORY, 8) => mmio_write8(g.addr, value as u8),
        (GAS_MEMORY, 16) => mmio_write16(g.addr, value as u16),
        (GAS_MEMORY, 32) => mmio_write32(g.addr, value as u32),
        _ => return false,
    }
    true
}

pub fn gas_read(g: &Gas) -> Option<u64> {
    Some(match (g.space, g.width()) {
        (GAS_IO, 8) => u64::from(inb(g.addr as u16)),
        (GAS_IO, 16) => u64::from(inw(g.addr as u16)),
        (GAS_IO, 32) => u64::from(inl(g.addr as u16)),
        (GAS_MEMORY, 8) => u64::from(mmio_read8(g.addr)),
        (GAS_MEMORY, 16) => u64::from(mmio_read16(g.addr)),
        (GAS_MEMORY, 32) => u64::from(mmio_read32(g.addr)),
        _ => return None,
    })
}

const SLP_EN_HW_REDUCED: u64 = 0x20;
const PM1_SLP_EN: u64 = 1 << 13;
const PM1_SLP_TYP_MASK: u64 = 7 << 10;
const PM1_SCI_EN: u64 = 1;

/// The register write that enters S5, without side effects.
pub fn poweroff_write(acpi: &Acpi) -> Result<(Gas, u64), Msg> {
    let fadt = acpi.fadt.as_ref().ok_or_else(|| fail!("no FADT"))?;
    let s5 = u64::from(acpi.s5.ok_or_else(|| fail!("no \\_S5 in the DSDT"))?);
    if fadt.hw_reduced {
        if !fadt.sleep_control.present() {
            return Err(fail!(
                "hardware-reduced FADT without sleep control register"
            ));
        }
        Ok((fadt.sleep_control, ((s5 & 7) << 2) | SLP_EN_HW_REDUCED))
    } else {
        if !fadt.pm1a_cnt.present() {
            return Err(fail!("no PM1a control block"));
        }
        let cur = gas_read(&fadt.pm1a_cnt).unwrap_or(0);
        Ok((
            fadt.pm1a_cnt,
            (cur & !(PM1_SLP_TYP_MASK | PM1_SLP_EN)) | ((s5 & 7) << 10) | PM1_SLP_EN,
        ))
    }
}

/// Let a fatal exception power the machine off instead of just halting.
pub fn arm_fatal_exit(acpi: &Acpi) {
    let Ok((g, value)) = poweroff_write(acpi) else {
        return;
    };
    let kind = match (g.space, g.width()) {
        (GAS_IO, 8) => 1,
        (GAS_IO, 16) => 2,
        (GAS_MEMORY, 8) => 3,
        _ => return,
    };
    PROBE_FATAL_ADDR.store(g.addr, Ordering::SeqCst);
    PROBE_FATAL_VALUE.store(value as u32, Ordering::SeqCst);
    PROBE_FATAL_KIND.store(kind, Ordering::SeqCst);
}

/// What the exception stub would do, from ring 3 (after a panic).
pub fn fatal_exit() -> ! {
    let value = PROBE_FATAL_VALUE.load(Ordering::SeqCst);
    let addr = PROBE_FATAL_ADDR.load(Ordering::SeqCst);
    match PROBE_FATAL_KIND.load(Ordering::SeqCst) {
        1 => outb(addr as u16, value as u8),
        2 => outw(addr as u16, value as u16),
        3 => mmio_write8(addr, value as u8),
        _ => {}
    }
    halt()
}

pub fn halt() -> ! {
    // SAFETY: `hlt` in ring 3 raises #GP; the stub recognises the address and halts.
    unsafe { entry::probe_svc_halt() }
}

/// Put the machine into ACPI mode (SCI_EN) if firmware left it in legacy mode.
fn enable_acpi_mode(acpi: &Acpi) {
    let Some(f) = acpi.fadt.as_ref() else { return };
    if f.hw_reduced || f.smi_cmd == 0 || f.acpi_enable == 0 {
        return;
    }
    if gas_read(&f.pm1a_cnt).is_some_and(|v| v & PM1_SCI_EN == 0) {
        outb(f.smi_cmd as u16, f.acpi_enable);
        time::wait_ms(300, || {
            gas_read(&f.pm1a_cnt).is_some_and(|v| v & PM1_SCI_EN != 0)
        });
    }
}

pub fn exit(how: Exit, acpi: &Result<Acpi, Msg>) -> ! {
    match how {
        Exit::Halt => halt(),
        Exit::TripleFault => {
            // SAFETY: `hlt` in ring 3 raises #GP; the stub loads an empty IDT and faults.
            unsafe { entry::probe_svc_triple_fault() }
        }
        Exit::ResetKbd => {
            outb(0x64, 0xfe);
            time::delay_us(1_000_000);
            outln!("PROBE reset failed");
        }
        Exit::ResetAcpi => {
            match acpi.as_ref().ok().and_then(|a| a.fadt.as_ref()) {
                Some(f) if f.reset_reg.present() => {
                    gas_write(&f.reset_reg, u64::from(f.reset_value));
                    time::delay_us(1_000_000);
                    outln!("PROBE reset failed");
                }
                _ => outln!("PROBE reset failed reason=no-reset-register"),
            };
        }
        Exit::Poweroff => match acpi {
            Ok(a) => {
                enable_acpi_mode(a);
                match poweroff_write(a) {
                    Ok((g, value)) => {
                        gas_write(&g, value);
                        if let Some(b) = a.fadt.as_ref().map(|f| f.pm1b_cnt).filter(|g| {
                            g.present() && !a.fadt.as_ref().is_some_and(|f| f.hw_reduced)
                        }) {
                            let cur = gas_read(&b).unwrap_or(0);
                            let s5 = u64::from(a.s5.unwrap_or(0));
                            gas_write(
                                &b,
                                (cur & !(PM1_SLP_TYP_MASK | PM1_SLP_EN))
                                    | ((s5 & 7) << 10)
                                    | PM1_SLP_EN,
                            );
                        }
                        time::delay_us(1_000_000);
                        outln!("PROBE poweroff failed");
                    }
                    Err(e) => outln!(
                        "PROBE poweroff failed reason={}",
                        crate::console::Quoted(e.as_str().as_bytes())
                    ),
                }
            }
            Err(_) => outln!("PROBE poweroff failed reason=no-acpi"),
        },
    }
    halt()
}
