//! The i8042 PS/2 controller at ports 0x60/0x64 with an AT keyboard behind
//! it: enough of both for Linux's `i8042` and `atkbd` drivers to find a
//! keyboard without waiting on a timeout (status register, command byte,
//! controller self-test 0xAA → 0x55, keyboard port test, keyboard reset,
//! ID, LEDs, scan-code set, enable), an output buffer that raises IRQ 1 for
//! each byte the guest is to read, and the host typing Ctrl-Alt-Del into
//! it. There is no AUX (mouse) port: its loop-back and test commands answer
//! a failure at once, so the driver gives up on a mouse without a timeout.
//! The 0xFE command (and any pulse of output line 0) resets the machine:
//! that is what Linux's `reboot=k` sends.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::bus::BusDevice;
use crate::devices::IrqLine;
use crate::layout;
use crate::lifecycle::{ExitReason, ExitSignal, ResetSource};

/// The ISA interrupt of the keyboard.
pub const I8042_IRQ: u32 = 1;

/// Offset of the command/status port from the data port.
const COMMAND_OFFSET: u64 = (layout::I8042_COMMAND_PORT - layout::I8042_DATA_PORT) as u64;

/// Bytes the output buffer holds before it refuses more (a real 8042 has
/// one byte and a keyboard a small FIFO behind it).
const OUTPUT_CAPACITY: usize = 16;

// Status register.
const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
const STATUS_COMMAND: u8 = 0x08;
const STATUS_UNLOCKED: u8 = 0x10;
const STATUS_AUX_DATA: u8 = 0x20;

// Controller command byte (CTR).
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;
/// What firmware leaves: translation on, self-test passed, keyboard
/// interrupt on, no mouse.
const CTR_INITIAL: u8 = CTR_XLATE | CTR_AUX_DISABLED | CTR_SYS | CTR_KBD_INT;

// Controller commands (port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;

// Keyboard commands (port 0x60) and answers.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCAN_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_TYPEMATIC: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_DISABLE: u8 = 0xf5;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;
const SELF_TEST_OK: u8 = 0x55;
/// The AUX test's answer: "clock line stuck low", i.e. no mouse port.
const AUX_TEST_FAILED: u8 = 0x01;

/// Ctrl, Alt and Del pressed, then released in reverse, in scan-code set 1
/// (what the guest reads with translation on) and set 2 (without).
const CTRL_ALT_DEL_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
const CTRL_ALT_DEL_SET2: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

/// A controller command waiting for its data byte on port 0x60.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    None,
    WriteCtr,
    WriteOutputPort,
    WriteKbdBuffer,
    WriteAuxBuffer,
    WriteAux,
}

/// The controller and its keyboard, on the port bus at 0x60 (length 5).
pub struct I8042 {
    reset: Arc<ExitSignal>,
    irq: IrqLine,
    ctr: u8,
    /// The last write went to the command port (status bit 3).
    last_was_command: bool,
    pending: Pending,
    /// A keyboard command waiting for its parameter byte.
    kbd_pending: Option<u8>,
    /// Bytes for the guest, each with whether it came from the AUX port.
    output: VecDeque<(u8, bool)>,
}

impl I8042 {
    pub fn new(reset: Arc<ExitSignal>, irq: IrqLine) -> Self {
        I8042 {
            reset,
            irq,
            ctr: CTR_INITIAL,
            last_was_command: false,
            pending: Pending::None,
            kbd_pending: None,
            output: VecDeque::with_capacity(OUTPUT_CAPACITY),
        }
    }

    /// Types Ctrl-Alt-Del. False (and nothing typed) if the guest has not
    /// read enough of what was typed before.
    pub fn ctrl_alt_del(&mut self) -> bool {
        let keys: &[u8] = if self.ctr & CTR_XLATE != 0 {
            &CTRL_ALT_DEL_SET1
        } else {
            &CTRL_ALT_DEL_SET2
        };
        if self.output.len() + keys.len() > OUTPUT_CAPACITY {
            return false;
        }
        for &k in keys {
            self.push(k, false);
        }
        true
    }

    /// Puts a byte in the output buffer; raises IRQ 1 when it is the one
    /// the guest will read next.
    fn push(&mut self, byte: u8, aux: bool) {
        if self.output.len() >= OUTPUT_CAPACITY {
            log::debug!("i8042: output buffer full, dropping {byte:#04x}");
            return;
        }
        self.output.push_back((byte, aux));
        if self.output.len() == 1 {
            self.interrupt();
        }
    }

    fn interrupt(&self) {
        if self.ctr & CTR_KBD_INT != 0 {
            if let Err(e) = self.irq.0.write(1) {
                log::warn!("i8042: cannot raise IRQ {I8042_IRQ}: {e}");
            }
        }
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_UNLOCKED;
        if let Some(&(_, aux)) = self.output.front() {
            s |= STATUS_OBF;
            if aux {
                s |= STATUS_AUX_DATA;
            }
        }
        if self.ctr & CTR_SYS != 0 {
            s |= STATUS_SYS;
        }
        if self.last_was_command {
            s |= STATUS_COMMAND;
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.output.pop_front().map_or(0, |(b, _)| b);
        if !self.output.is_empty() {
            self.interrupt();
        }
        byte
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_command = true;
        self.pending = Pending::None;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr, false),
            CMD_WRITE_CTR => self.pending = Pending::WriteCtr,
            // There is no AUX port: it stays disabled.
            CMD_AUX_DISABLE | CMD_AUX_ENABLE => self.ctr |= CTR_AUX_DISABLED,
            CMD_AUX_TEST => self.push(AUX_TEST_FAILED, false),
            CMD_SELF_TEST => {
                self.ctr |= CTR_SYS;
                self.push(SELF_TEST_OK, false);
            }
            CMD_KBD_TEST => self.push(0x00, false),
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBD_DISABLED,
            // Bit 0: not in reset; bit 1: A20 enabled.
            CMD_READ_OUTPUT_PORT => self.push(0x03, false),
            CMD_WRITE_OUTPUT_PORT => self.pending = Pending::WriteOutputPort,
            CMD_WRITE_KBD_BUFFER => self.pending = Pending::WriteKbdBuffer,
            CMD_WRITE_AUX_BUFFER => self.pending = Pending::WriteAuxBuffer,
            CMD_WRITE_AUX => self.pending = Pending::WriteAux,
            // Pulse output lines (low nibble: 0 = pulse); line 0 is reset.
            0xf0..=0xff if cmd & 1 == 0 => {
                self.reset.request(ExitReason::Reset(ResetSource::Keyboard))
            }
            _ => log::debug!("i8042: ignoring command {cmd:#04x}"),
        }
    }

    fn data(&mut self, value: u8) {
        self.last_was_command = false;
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::WriteCtr => {
                let was_enabled = self.ctr & CTR_KBD_INT != 0;
                // No AUX port, whatever the guest asks.
                self.ctr = value | CTR_AUX_DISABLED;
                if !was_enabled && !self.output.is_empty() {
                    self.interrupt();
                }
            }
            Pending::WriteOutputPort if value & 1 == 0 => {
                self.reset.request(ExitReason::Reset(ResetSource::Keyboard))
            }
            Pending::WriteOutputPort | Pending::WriteAux => {}
            Pending::WriteKbdBuffer => self.push(value, false),
            // A loop-back through a missing mouse port: a wrong byte comes
            // back, so the driver concludes there is no mouse at once.
            Pending::WriteAuxBuffer => self.push(!value, true),
            Pending::None => self.keyboard(value),
        }
    }

    /// A byte for the keyboard: a command or a command's parameter.
    fn keyboard(&mut self, value: u8) {
        let xlate = self.ctr & CTR_XLATE != 0;
        if let Some(cmd) = self.kbd_pending.take() {
            self.push(KBD_ACK, false);
            if cmd == KBD_SCAN_SET && value == 0 {
                // "Which set?": set 2, as the guest sees it.
                self.push(if xlate { 0x41 } else { 0x02 }, false);
            }
            return;
        }
        match value {
            KBD_SET_LEDS | KBD_TYPEMATIC | KBD_SCAN_SET => {
                self.kbd_pending = Some(value);
                self.push(KBD_ACK, false);
            }
            KBD_ECHO => self.push(KBD_ECHO, false),
            KBD_GET_ID => {
                self.push(KBD_ACK, false);
                self.push(0xab, false);
                self.push(if xlate { 0x41 } else { 0x83 }, false);
            }
            KBD_RESET => {
                self.push(KBD_ACK, false);
                self.push(KBD_BAT_OK, false);
            }
            // Enable, disable, defaults and the rest: acknowledged.
            KBD_ENABLE | KBD_DISABLE => self.push(KBD_ACK, false),
            _ => self.push(KBD_ACK, false),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = match offset {
                0 => self.read_data(),
                COMMAND_OFFSET => self.status(),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, [value]) => self.data(*value),
            (COMMAND_OFFSET, [value]) => self.command(*value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn controller() -> (I8042, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let irq = IrqLine(EventFd::new(EFD_NONBLOCK).unwrap());
        (I8042::new(exit.clone(), irq), exit)
    }

    fn status(k: &mut I8042) -> u8 {
        let mut b = [0u8];
        k.read(COMMAND_OFFSET, &mut b);
        b[0]
    }

    fn read(k: &mut I8042) -> u8 {
        let mut b = [0u8];
        k.read(0, &mut b);
        b[0]
    }

    /// Everything in the output buffer.
    fn drain(k: &mut I8042) -> Vec<u8> {
        let mut out = Vec::new();
        while status(k) & STATUS_OBF != 0 {
            out.push(read(k));
        }
        out
    }

    fn irqs(k: &I8042) -> u64 {
        k.irq.0.read().unwrap_or(0)
    }

    #[test]
    fn reset_command_requests_a_reset() {
        let (mut kbd, exit) = controller();
        kbd.write(0, &[0xfe]);
        assert!(
            !exit.is_set(),
            "0xFE on the data port is a keyboard command"
        );
        kbd.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(
            exit.reason(),
            Some(ExitReason::Reset(ResetSource::Keyboard))
        );
    }

    #[test]
    fn controller_self_test_and_command_byte() {
        let (mut k, _) = controller();
        assert_eq!(status(&mut k) & STATUS_OBF, 0);
        k.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(
            status(&mut k) & (STATUS_OBF | STATUS_SYS | STATUS_COMMAND),
            0x0d
        );
        assert_eq!(drain(&mut k), [0x55]);
        k.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(drain(&mut k), [CTR_INITIAL]);
        k.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        k.write(0, &[0x45]);
        k.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(drain(&mut k), [0x45 | CTR_AUX_DISABLED], "no AUX port");
        k.write(COMMAND_OFFSET, &[CMD_KBD_TEST]);
        assert_eq!(drain(&mut k), [0x00]);
    }

    #[test]
    fn no_mouse_port() {
        let (mut k, _) = controller();
        k.write(COMMAND_OFFSET, &[CMD_WRITE_AUX_BUFFER]);
        k.write(0, &[0x5a]);
        let st = status(&mut k);
        assert_eq!(
            st & (STATUS_OBF | STATUS_AUX_DATA),
            STATUS_OBF | STATUS_AUX_DATA
        );
        assert_ne!(read(&mut k), 0x5a, "loop-back must fail");
        k.write(COMMAND_OFFSET, &[CMD_AUX_TEST]);
        assert_eq!(drain(&mut k), [AUX_TEST_FAILED]);
        k.write(COMMAND_OFFSET, &[CMD_AUX_ENABLE]);
        k.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(drain(&mut k)[0] & CTR_AUX_DISABLED, CTR_AUX_DISABLED);
    }

    #[test]
    fn keyboard_answers_what_atkbd_asks() {
        let (mut k, _) = controller();
        k.write(0, &[KBD_GET_ID]);
        assert_eq!(drain(&mut k), [KBD_ACK, 0xab, 0x41]);
        k.write(0, &[KBD_SET_LEDS]);
        k.write(0, &[0x00]);
        assert_eq!(drain(&mut k), [KBD_ACK, KBD_ACK]);
        k.write(0, &[KBD_SCAN_SET]);
        k.write(0, &[0x00]);
        assert_eq!(drain(&mut k), [KBD_ACK, KBD_ACK, 0x41]);
        k.write(0, &[KBD_RESET]);
        assert_eq!(drain(&mut k), [KBD_ACK, KBD_BAT_OK]);
        k.write(0, &[KBD_ECHO]);
        assert_eq!(drain(&mut k), [KBD_ECHO]);
        k.write(0, &[KBD_ENABLE]);
        assert_eq!(drain(&mut k), [KBD_ACK]);
    }

    #[test]
    fn ctrl_alt_del_is_typed_with_an_interrupt_per_byte() {
        let (mut k, exit) = controller();
        assert!(k.ctrl_alt_del());
        assert_eq!(irqs(&k), 1, "the first byte raises IRQ 1");
        let mut got = Vec::new();
        while status(&mut k) & STATUS_OBF != 0 {
            got.push(read(&mut k));
            if status(&mut k) & STATUS_OBF != 0 {
                assert_eq!(irqs(&k), 1, "each next byte raises it again");
            }
        }
        assert_eq!(got, CTRL_ALT_DEL_SET1);
        assert!(!exit.is_set());
        // A guest that never reads: the buffer fills and refuses.
        assert!(k.ctrl_alt_del());
        assert!(k.ctrl_alt_del());
        assert!(!k.ctrl_alt_del());
    }

    #[test]
    fn untranslated_keyboard_gets_set_2() {
        let (mut k, _) = controller();
        k.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        k.write(0, &[CTR_KBD_INT]);
        assert!(k.ctrl_alt_del());
        let got = drain(&mut k);
        assert_eq!(&got[..4], &[0x14, 0x11, 0xe0, 0x71]);
        assert_eq!(got.len(), 11);
        assert_eq!(&got[9..], &[0xf0, 0x14]);
    }

    #[test]
    fn interrupts_only_when_enabled() {
        let (mut k, _) = controller();
        k.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        k.write(0, &[CTR_XLATE]);
        assert!(k.ctrl_alt_del());
        assert_eq!(irqs(&k), 0);
        k.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        k.write(0, &[CTR_XLATE | CTR_KBD_INT]);
        assert_eq!(irqs(&k), 1, "enabling with data waiting raises it");
    }
}
