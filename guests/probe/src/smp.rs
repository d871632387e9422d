//! The `smp` check: processors in the MADT, each AP started with
//! INIT-SIPI-SIPI to the real-mode trampoline, which checks in.

use crate::acpi::Acpi;
use crate::entry::{self, AP_COUNT_ADDR, AP_DONE_ADDR, AP_IDS_ADDR, AP_IDS_MAX, TRAMPOLINE_ADDR};
use crate::hw::{mmio_read16, mmio_read8, phys_bytes, phys_write_bytes};
use crate::lapic::Lapic;
use crate::msg::Msg;
use crate::plan::Plan;
use crate::time;
use core::fmt::{self, Write as _};

const ICR_INIT: u32 = 0x0000_4500; // INIT, level assert, physical destination
const ICR_STARTUP: u32 = 0x0000_4600; // STARTUP; the vector is the page number
const SIPI_VECTOR: u32 = (TRAMPOLINE_ADDR >> 12) as u32;

/// A comma-separated list of numbers.
pub struct List<'a>(pub &'a [u32]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

pub fn check(acpi: &Result<Acpi, Msg>, plan: &Plan) -> Result<(), Msg> {
    let acpi = acpi.as_ref().map_err(|e| fail!("no ACPI: {e}"))?;
    if !acpi.has_madt {
        return Err(fail!("no MADT"));
    }
    let lapic = Lapic::new(acpi.lapic_addr);
    lapic.enable();
    let bsp = lapic.id();

    let mut ids = [0u32; crate::acpi::MAX_CPUS];
    let mut n = 0;
    for c in acpi.cpus().iter().filter(|c| c.enabled) {
        ids[n] = c.apic_id;
        n += 1;
    }
    let ids = &ids[..n];
    outln!(
        "PROBE smp madt_cpus={} apic_ids={} bsp_apic_id={}",
        n,
        List(ids),
        bsp
    );

    let mut why = Msg::new();
    if !ids.contains(&bsp) {
        let _ = write!(why, "BSP APIC ID {bsp} not in the MADT; ");
    }
    let mut aps = [0u32; crate::acpi::MAX_CPUS];
    let mut n_aps = 0;
    for &id in ids.iter().filter(|&&id| id != bsp) {
        if id > 0xfe {
            let _ = write!(why, "APIC ID {id} unreachable in xAPIC mode; ");
            continue;
        }
        aps[n_aps] = id;
        n_aps += 1;
    }
    let aps = &aps[..n_aps.min(AP_IDS_MAX)];

    // The trampoline and its check-in area, below 1 MiB.
    let (start, end) = (
        &raw const entry::probe_ap_trampoline as u64,
        &raw const entry::probe_ap_trampoline_end as u64,
    );
    phys_write_bytes(TRAMPOLINE_ADDR, phys_bytes(start, (end - start) as usize));
    phys_write_bytes(AP_COUNT_ADDR, &[0; 16]);
    phys_write_bytes(AP_IDS_ADDR, &[0xff; AP_IDS_MAX]);

    let t0 = time::now_us();
    for &id in aps {
        if !lapic.send_ipi(id, ICR_INIT) {
            let _ = write!(why, "INIT to {id} not delivered; ");
        }
    }
    time::delay_us(10_000);
    for round in 0..2 {
        for &id in aps {
            if !lapic.send_ipi(id, ICR_STARTUP | SIPI_VECTOR) {
                let _ = write!(why, "SIPI {} to {id} not delivered; ", round + 1);
            }
        }
        time::delay_us(200);
    }
    let want = aps.len() as u16;
    time::wait_ms(1000, || mmio_read16(AP_DONE_ADDR) >= want);
    let elapsed = time::now_us() - t0;

    // Slots claimed (AP_COUNT) and filled (AP_DONE): list the filled ones.
    let claimed = usize::from(mmio_read16(AP_COUNT_ADDR))
        .min(AP_IDS_MAX)
        .min(crate::acpi::MAX_CPUS);
    let done = usize::from(mmio_read16(AP_DONE_ADDR));
    let mut seen = [0u32; crate::acpi::MAX_CPUS];
    let mut count = 0;
    // Volatile reads throughout: the APs write this memory behind the compiler's back.
    for b in (0..claimed as u64)
        .map(|i| mmio_read8(AP_IDS_ADDR + i))
        .filter(|&b| b != 0xff)
    {
        seen[count] = u32::from(b);
        count += 1;
    }
    let seen = &seen[..count];
    outln!(
        "PROBE smp online={} checked_in={} startup_us={}",
        done + 1,
        List(seen),
        elapsed
    );
    for id in aps {
        if !seen.contains(id) {
            let _ = write!(why, "AP {id} did not check in; ");
        }
    }
    for id in seen {
        if !aps.contains(id) {
            let _ = write!(why, "unexpected check-in from APIC ID {id}; ");
        }
    }
    if let Some(want) = plan.cpus {
        if n as u64 != want {
            let _ = write!(why, "MADT has {n} processors, expected {want}; ");
        }
        if (done + 1) as u64 != want {
            let _ = write!(why, "{} processors online, expected {want}; ", done + 1);
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}
