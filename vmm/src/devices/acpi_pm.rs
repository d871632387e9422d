//! The ACPI registers of a hardware-reduced machine, in I/O space: the
//! sleep control register (writing SLP_TYP = S5 with SLP_EN powers off),
//! the sleep status register, and the reset register. The FADT points the
//! guest here (see `layout`).

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::layout;
use crate::lifecycle::{ExitReason, ExitSignal, ResetSource};

/// SLP_EN in the sleep control register (ACPI 6.x, 4.8.3.7).
const SLP_EN: u8 = 1 << 5;
/// SLP_TYP field: bits 4:2.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// WAK_STS in the sleep status register.
const WAK_STS: u8 = 1 << 7;

const CONTROL: u64 = 0;
const STATUS: u64 = (layout::ACPI_SLEEP_STATUS_PORT - layout::ACPI_SLEEP_CONTROL_PORT) as u64;
const RESET: u64 = (layout::ACPI_RESET_PORT - layout::ACPI_SLEEP_CONTROL_PORT) as u64;
/// Number of ports the device covers from ACPI_SLEEP_CONTROL_PORT.
pub const ACPI_PM_PORTS: u64 = RESET + 1;

pub struct AcpiPm {
    exit: Arc<ExitSignal>,
}

impl AcpiPm {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        AcpiPm { exit }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Nothing is ever asleep: control reads 0, status has no WAK_STS.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value = match data {
            [v] => *v,
            _ => return,
        };
        match offset {
            CONTROL if value & SLP_EN != 0 => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if sleep_type == layout::ACPI_S5_SLEEP_TYPE {
                    self.exit.request(ExitReason::PowerOff);
                } else {
                    log::debug!("acpi: sleep type {sleep_type} is not supported; ignored");
                }
            }
            STATUS if value & WAK_STS != 0 => {}
            RESET if value == layout::ACPI_RESET_VALUE => {
                self.exit.request(ExitReason::Reset(ResetSource::Acpi))
            }
            _ => log::debug!("acpi: ignored write {value:#x} at offset {offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPm::new(exit.clone());
        pm.write(CONTROL, &[5 << 2]);
        assert!(!exit.is_set(), "no SLP_EN, no sleep");
        pm.write(CONTROL, &[(3 << 2) | SLP_EN]);
        assert!(!exit.is_set(), "S3 is not offered");
        pm.write(CONTROL, &[(5 << 2) | SLP_EN]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn reset_register_resets() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPm::new(exit.clone());
        pm.write(RESET, &[0x2]);
        assert!(!exit.is_set());
        pm.write(RESET, &[layout::ACPI_RESET_VALUE, 0]);
        assert!(!exit.is_set(), "wide writes are ignored");
        pm.write(RESET, &[layout::ACPI_RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset(ResetSource::Acpi)));
    }
}
