//! One thread per vCPU: run it in KVM, dispatch its port and MMIO exits to
//! the buses, and turn the exits that end a VM (shutdown, reset, KVM
//! failures) into an `ExitReason`. Another thread stops a vCPU by setting
//! the exit signal and kicking it out of KVM_RUN with `VCPU_KICK_SIGNAL`.

use std::sync::Arc;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::bus::Bus;
use crate::lifecycle::{ExitReason, ExitSignal, ResetSource};

/// The signal that interrupts KVM_RUN.
pub fn vcpu_kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for the kick signal, so it interrupts
/// KVM_RUN with EINTR instead of killing the process.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(vcpu_kick_signal(), kick_handler)
}

/// What a vCPU thread shares with the rest of the VM.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
}

/// What to do after an exit, decided while the exit borrows the vCPU.
enum Next {
    Continue,
    Stop(ExitReason),
    InternalError,
}

/// Runs `vcpu` until the VM stops.
pub fn run(mut vcpu: VcpuFd, id: u8, ctx: VcpuContext) {
    while !ctx.exit.is_set() {
        let next = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                ctx.pio.read(port as u64, data);
                Next::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                ctx.pio.write(port as u64, data);
                Next::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                ctx.mmio.read(addr, data);
                Next::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                ctx.mmio.write(addr, data);
                Next::Continue
            }
            // With the in-kernel LAPIC KVM handles HLT; an exit here only
            // means the vCPU woke up.
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => Next::Continue,
            Ok(VcpuExit::Shutdown) => Next::Stop(ExitReason::Reset(ResetSource::TripleFault)),
            Ok(VcpuExit::SystemEvent(kind, _)) => Next::Stop(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                KVM_SYSTEM_EVENT_RESET => ExitReason::Reset(ResetSource::Kvm),
                KVM_SYSTEM_EVENT_CRASH => ExitReason::Error(format!("vCPU {id}: guest crashed (KVM system event)")),
                other => ExitReason::Error(format!("vCPU {id}: unexpected KVM system event {other}")),
            }),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Next::Stop(ExitReason::Error(format!(
                "vCPU {id}: KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host CPU {cpu}"
            ))),
            Ok(VcpuExit::InternalError) => Next::InternalError,
            Ok(other) => Next::Stop(ExitReason::Error(format!("vCPU {id}: unhandled exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Continue,
            Err(e) => Next::Stop(ExitReason::Error(format!("vCPU {id}: KVM_RUN failed: {e}"))),
        };
        match next {
            Next::Continue => {}
            Next::Stop(reason) => ctx.exit.request(reason),
            Next::InternalError => {
                let msg = describe_internal_error(&mut vcpu, id);
                ctx.exit.request(ExitReason::Error(msg));
            }
        }
    }
}

/// KVM_EXIT_INTERNAL_ERROR with its sub-error, the guest RIP and, for an
/// emulation failure, the instruction bytes KVM could not emulate.
fn describe_internal_error(vcpu: &mut VcpuFd, id: u8) -> String {
    let rip = vcpu.get_regs().map(|r| r.rip).ok();
    let run = vcpu.get_kvm_run();
    // SAFETY: KVM filled the `internal` member of the exit union for this
    // exit reason; `emulation_failure` shares its first fields and its
    // instruction bytes are read only when KVM's flag says they are valid.
    let (suberror, ndata, flags, insn) = unsafe {
        let internal = run.__bindgen_anon_1.internal;
        let emu = run.__bindgen_anon_1.emulation_failure;
        (
            internal.suberror,
            internal.ndata,
            emu.flags,
            emu.__bindgen_anon_1.__bindgen_anon_1,
        )
    };
    let what = match suberror {
        1 => "instruction emulation failed",
        2 => "simultaneous exceptions",
        3 => "delivery event failed",
        4 => "unexpected exit reason",
        _ => "unknown",
    };
    let mut msg = format!("vCPU {id}: KVM_EXIT_INTERNAL_ERROR: {what} (suberror {suberror})");
    if let Some(rip) = rip {
        msg += &format!(" at guest RIP {rip:#x}");
    }
    // KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
    if suberror == 1 && ndata >= 2 && flags & 1 != 0 {
        let len = (insn.insn_size as usize).min(insn.insn_bytes.len());
        let bytes: Vec<String> = insn.insn_bytes[..len]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        msg += &format!(", instruction bytes: {}", bytes.join(" "));
    }
    msg
}
