//! The i8042 keyboard controller at ports 0x60/0x64, for the one thing a
//! guest without a keyboard uses it for: the 0xFE "pulse reset line"
//! command, which Linux's `reboot=k` sends. vm-superio implements it.

use std::sync::Arc;

use vm_superio::I8042Device;

use crate::bus::BusDevice;
use crate::layout;
use crate::lifecycle::{ExitReason, ExitSignal, ResetSource};

/// Turns the controller's reset line into a VM exit.
pub struct ResetLine(pub Arc<ExitSignal>);

impl vm_superio::Trigger for ResetLine {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reset(ResetSource::Keyboard));
        Ok(())
    }
}

/// The controller on the port bus, inserted at 0x60 with length 5 (0x60..=0x64).
pub struct I8042 {
    dev: I8042Device<ResetLine>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 {
            dev: I8042Device::new(ResetLine(exit)),
        }
    }
}

/// Offset of the command/status port from the data port.
const COMMAND_OFFSET: u64 = (layout::I8042_COMMAND_PORT - layout::I8042_DATA_PORT) as u64;

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = match offset {
                0 | COMMAND_OFFSET => self.dev.read(offset as u8),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0 | COMMAND_OFFSET, [value]) = (offset, data) {
            // The trigger is infallible.
            let _ = self.dev.write(offset as u8, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_a_reset() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut kbd = I8042::new(exit.clone());
        kbd.write(0, &[0xfe]);
        assert!(!exit.is_set(), "0xFE on the data port is just data");
        kbd.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(
            exit.reason(),
            Some(ExitReason::Reset(ResetSource::Keyboard))
        );
    }
}
