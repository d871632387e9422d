//! How a VM ends. Devices and vCPU threads report the reason once through
//! an `ExitSignal`; the first report wins, and the thread that waits for the
//! VM wakes on its eventfd.

use std::fmt;
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// What reset the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetSource {
    /// 0xFE written to the i8042 command port.
    Keyboard,
    /// The FADT reset register.
    Acpi,
    /// The reset control register at port 0xcf9.
    ResetControl,
    /// A triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM reported a system reset event.
    Kvm,
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5 or a KVM shutdown event).
    PowerOff,
    /// The guest reset; utsuwa does not restart it.
    Reset(ResetSource),
    /// The user asked (console escape, API, signal).
    UserStop,
    /// The VM cannot go on; the message says why.
    Error(String),
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Reset(ResetSource::Keyboard) => {
                write!(f, "guest reset (i8042 keyboard controller)")
            }
            ExitReason::Reset(ResetSource::Acpi) => write!(f, "guest reset (ACPI reset register)"),
            ExitReason::Reset(ResetSource::ResetControl) => {
                write!(f, "guest reset (reset control register 0xcf9)")
            }
            ExitReason::Reset(ResetSource::TripleFault) => write!(f, "guest reset (triple fault)"),
            ExitReason::Reset(ResetSource::Kvm) => write!(f, "guest reset (KVM system event)"),
            ExitReason::UserStop => write!(f, "stopped by the user"),
            ExitReason::Error(msg) => write!(f, "VM error: {msg}"),
        }
    }
}

/// The one place a VM's end is reported.
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless another was recorded first, and wakes the waiter.
    pub fn request(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            log::debug!("exit requested: {reason}");
            *slot = Some(reason);
        }
        // An eventfd write fails only if the counter would overflow, which
        // means the waiter has been woken already.
        let _ = self.evt.write(1);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the VM is stopping.
    pub fn is_set(&self) -> bool {
        self.reason().is_some()
    }

    /// The eventfd that becomes readable on the first request.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let sig = ExitSignal::new().unwrap();
        assert!(!sig.is_set());
        sig.request(ExitReason::Reset(ResetSource::Keyboard));
        sig.request(ExitReason::PowerOff);
        assert_eq!(sig.reason(), Some(ExitReason::Reset(ResetSource::Keyboard)));
        assert!(sig.eventfd().read().unwrap() >= 1);
    }
}
