//! Polled 16550 output on COM1 (0x3f8), from ring 3.

use crate::hw::{inb, outb, outsb};
use core::fmt;

pub const COM1: u16 = 0x3f8;
const THR: u16 = COM1;
const IER: u16 = COM1 + 1;
const FCR: u16 = COM1 + 2;
const LCR: u16 = COM1 + 3;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;
const LSR_THRE: u8 = 0x20;

/// 115200 8N1, FIFOs on, interrupts off, DTR/RTS/OUT2 set (OUT2 gates the
/// IRQ line on PC-compatible UARTs; the `irq` check needs it).
pub fn init() {
    outb(IER, 0);
    outb(LCR, 0x80);
    outb(THR, 1); // divisor latch low: 115200 baud
    outb(IER, 0); // divisor latch high
    outb(LCR, 0x03);
    outb(FCR, 0x07);
    outb(MCR, 0x0b);
}

/// Send bytes: whenever the transmitter is empty (THRE), a FIFO's worth
/// (16 bytes) goes out in one `rep outsb` (each port access is a trip to
/// ring 0 on PVM, so they are batched).
pub fn write_bytes(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // A real UART drains within microseconds; an emulated one is always
        // ready or stuck. Never wait forever.
        for _ in 0..10_000 {
            if inb(LSR) & LSR_THRE != 0 {
                break;
            }
        }
        let n = bytes.len().min(16);
        outsb(THR, &bytes[..n]);
        bytes = &bytes[n..];
    }
}

/// Formats into a line buffer and sends it when dropped (or full).
pub struct Console {
    buf: [u8; 256],
    len: usize,
}

impl Console {
    pub const fn new() -> Console {
        Console {
            buf: [0; 256],
            len: 0,
        }
    }

    fn flush(&mut self) {
        write_bytes(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.flush();
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// `outln!("fmt", args..)`: one line on COM1 (the newline is added).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::console::Console::new(), $($arg)*);
    }};
}

/// A string as the probe prints it: between double quotes, with `\`, `"`
/// and bytes outside printable ASCII escaped (`\\`, `\"`, `\xNN`).
pub struct Quoted<'a>(pub &'a [u8]);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in self.0 {
            match b {
                b'\\' => f.write_str("\\\\")?,
                b'"' => f.write_str("\\\"")?,
                0x20..=0x7e => fmt::Write::write_char(f, b as char)?,
                _ => write!(f, "\\x{b:02x}")?,
            }
        }
        f.write_str("\"")
    }
}

/// Four signature bytes, shown as text where printable.
pub struct Sig<'a>(pub &'a [u8]);

impl fmt::Display for Sig<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            let c = if (0x21..=0x7e).contains(&b) {
                b as char
            } else {
                '?'
            };
            fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }
}
