//! COM1: vm-superio's 16550A UART at 0x3f8 on IRQ 4. Output goes to the
//! console writer (the terminal or a pipe); input is pushed in by the
//! console thread as the guest's receive FIFO has room.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::IrqLine;
use crate::bus::BusDevice;

/// The UART as a bus device.
pub struct SerialDevice {
    uart: Serial<IrqLine, NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    pub fn new(irq: IrqLine, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            uart: Serial::new(irq, out),
        }
    }

    /// Queues as much of `input` as the receive FIFO takes; returns how much.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        if self.uart.fifo_capacity() == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(input).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are bytes; wider accesses read the register then zeros.
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = if offset < 8 {
                self.uart.read(offset as u8)
            } else {
                0xff
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 8 || data.len() != 1 {
            log::debug!(
                "serial: ignored {}-byte write at offset {offset}",
                data.len()
            );
            return;
        }
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            // A failed output write (a closed pipe) must not stop the guest.
            log::debug!("serial: write failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_and_receives() {
        let sink = Sink::default();
        let irq = IrqLine(EventFd::new(EFD_NONBLOCK).unwrap());
        let mut dev = SerialDevice::new(irq, Box::new(sink.clone()));
        dev.write(0, b"h");
        dev.write(0, b"i");
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        assert_eq!(dev.enqueue_input(b"ok"), 2);
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut byte = [0u8];
        dev.read(0, &mut byte);
        assert_eq!(byte[0], b'o');
    }

    #[test]
    fn nonsense_accesses_are_harmless() {
        let irq = IrqLine(EventFd::new(EFD_NONBLOCK).unwrap());
        let mut dev = SerialDevice::new(irq, Box::new(Sink::default()));
        dev.write(9, &[1]);
        dev.write(0, &[1, 2, 3, 4]);
        let mut wide = [0u8; 4];
        dev.read(200, &mut wide);
        assert_eq!(wide, [0xff, 0, 0, 0]);
    }
}
