//! One thread per vCPU: run it in KVM, dispatch its port and MMIO exits to
//! the buses, and turn the exits that end a VM (shutdown, reset, KVM
//! failures) into an `ExitReason`. Another thread stops a vCPU by setting
//! the exit signal (or the pause gate) and kicking it out of KVM_RUN with
//! `VCPU_KICK_SIGNAL`; the kick handler sets the thread's own
//! `kvm_run.immediate_exit`, so a kick that lands just before KVM_RUN is
//! not lost. A paused vCPU parks on the [`PauseGate`]'s condition variable;
//! the last one to park saves the guest clock (KVM_GET_CLOCK) and resuming
//! puts it back (KVM_SET_CLOCK), so the guest does not see the paused time.
//! Each exit is counted by reason in [`VcpuStats`].

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use kvm_bindings::{
    kvm_clock_data, kvm_run, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::bus::Bus;
use crate::lifecycle::{ExitReason, ExitSignal, ResetSource};

/// The signal that interrupts KVM_RUN.
pub fn vcpu_kick_signal() -> i32 {
    SIGRTMIN()
}

thread_local! {
    /// This vCPU thread's `kvm_run` mapping, for the kick handler; null on
    /// every other thread and once the vCPU is being dropped.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A const-initialised thread-local without a destructor is a plain TLS
    // read: async-signal-safe.
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // `run` is set by `run` below before the first KVM_RUN and cleared
        // before the VcpuFd owning the mapping is dropped.
        // SAFETY: this thread's own live kvm_run mapping (the handler runs
        // on that thread); a volatile byte store is all it does.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the handler for the kick signal, so it interrupts KVM_RUN with
/// EINTR (or makes the next KVM_RUN return at once) instead of killing the
/// process.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(vcpu_kick_signal(), kick_handler)
}

/// Why a vCPU left KVM_RUN, as counted in [`VcpuStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Hlt,
    Interrupted,
    Shutdown,
    SystemEvent,
    FailEntry,
    InternalError,
    Other,
}

impl ExitKind {
    /// Every kind, in the order of [`VcpuStats::snapshot`].
    pub const ALL: [ExitKind; 11] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Hlt,
        ExitKind::Interrupted,
        ExitKind::Shutdown,
        ExitKind::SystemEvent,
        ExitKind::FailEntry,
        ExitKind::InternalError,
        ExitKind::Other,
    ];

    /// A metric label: `io_in`, `mmio_write`, ...
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io_in",
            ExitKind::IoOut => "io_out",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::Hlt => "hlt",
            ExitKind::Interrupted => "interrupted",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system_event",
            ExitKind::FailEntry => "fail_entry",
            ExitKind::InternalError => "internal_error",
            ExitKind::Other => "other",
        }
    }
}

/// One vCPU's exit counters: one relaxed atomic add per exit.
#[derive(Debug, Default)]
pub struct VcpuStats {
    exits: [AtomicU64; ExitKind::ALL.len()],
}

impl VcpuStats {
    fn count(&self, kind: ExitKind) {
        if let Some(c) = self.exits.get(kind as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters, indexed like [`ExitKind::ALL`].
    pub fn snapshot(&self) -> [u64; ExitKind::ALL.len()] {
        std::array::from_fn(|i| self.exits[i].load(Ordering::Relaxed))
    }
}

/// Where paused vCPUs wait. Pausing sets the flag and kicks every vCPU;
/// each parks at the top of its loop. Nothing here waits for a vCPU.
pub struct PauseGate {
    requested: AtomicBool,
    state: Mutex<GateState>,
    wake: Condvar,
    vcpus: usize,
    vm: Arc<VmFd>,
}

#[derive(Default)]
struct GateState {
    paused: bool,
    stopping: bool,
    parked: usize,
    /// The guest clock when the last vCPU parked.
    clock: Option<kvm_clock_data>,
}

impl PauseGate {
    pub fn new(vm: Arc<VmFd>, vcpus: usize) -> Self {
        PauseGate {
            requested: AtomicBool::new(false),
            state: Mutex::new(GateState::default()),
            wake: Condvar::new(),
            vcpus,
            vm,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks every vCPU to park (the caller kicks them). False if the VM
    /// is stopping.
    pub fn request_pause(&self) -> bool {
        let mut st = self.lock();
        if st.stopping {
            return false;
        }
        st.paused = true;
        self.requested.store(true, Ordering::SeqCst);
        true
    }

    /// Lets every vCPU run again, first putting back the guest clock saved
    /// when they had all parked.
    pub fn resume(&self) {
        let mut st = self.lock();
        if let Some(clock) = st.clock.take() {
            if let Err(e) = restore_clock(&self.vm, clock) {
                log::warn!("cannot restore the guest clock after a pause: {e}");
            }
        }
        st.paused = false;
        self.requested.store(false, Ordering::SeqCst);
        self.wake.notify_all();
    }

    /// The VM is ending: release every parked vCPU for good.
    pub fn stop(&self) {
        let mut st = self.lock();
        st.stopping = true;
        st.paused = false;
        self.requested.store(false, Ordering::SeqCst);
        self.wake.notify_all();
    }

    /// Whether a pause is in force (requested and not resumed).
    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// How many vCPUs are parked right now.
    pub fn parked(&self) -> usize {
        self.lock().parked
    }

    /// Parks the calling vCPU thread while a pause is in force.
    fn park(&self) {
        let mut st = self.lock();
        if !st.paused || st.stopping {
            return;
        }
        st.parked += 1;
        if st.parked == self.vcpus && st.clock.is_none() {
            match self.vm.get_clock() {
                Ok(clock) => st.clock = Some(clock),
                Err(e) => log::warn!("cannot read the guest clock at pause: {e}"),
            }
        }
        while st.paused && !st.stopping {
            st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.parked -= 1;
    }
}

/// KVM_SET_CLOCK with the value KVM_GET_CLOCK gave, without the flags:
/// KVM_CLOCK_REALTIME there would advance the clock by the wall time that
/// passed, which is exactly what a pause must hide.
pub fn restore_clock(vm: &VmFd, mut clock: kvm_clock_data) -> Result<(), kvm_ioctls::Error> {
    clock.flags = 0;
    clock.realtime = 0;
    clock.host_tsc = 0;
    vm.set_clock(&clock)
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

/// Runs `vcpu` until the VM stops, parking on `gate` while paused and
/// counting exits in `stats`.
pub fn run(
    mut vcpu: VcpuFd,
    id: u8,
    ctx: VcpuContext,
    gate: Arc<PauseGate>,
    stats: Arc<VcpuStats>,
) {
    crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu);
    let run_ptr: *mut kvm_run = vcpu.get_kvm_run();
    KVM_RUN.with(|p| p.set(run_ptr));
    while !ctx.exit.is_set() {
        if gate.requested.load(Ordering::SeqCst) {
            gate.park();
            continue;
        }
        let (kind, next) = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                ctx.pio.read(port as u64, data);
                (ExitKind::IoIn, Next::Continue)
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                ctx.pio.write(port as u64, data);
                (ExitKind::IoOut, Next::Continue)
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                ctx.mmio.read(addr, data);
                (ExitKind::MmioRead, Next::Continue)
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                ctx.mmio.write(addr, data);
                (ExitKind::MmioWrite, Next::Continue)
            }
            // With the in-kernel LAPIC KVM handles HLT; an exit here only
            // means the vCPU woke up.
            Ok(VcpuExit::Hlt) => (ExitKind::Hlt, Next::Continue),
            Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => (ExitKind::Interrupted, Next::Continue),
            Ok(VcpuExit::Shutdown) => (ExitKind::Shutdown, Next::Stop(ExitReason::Reset(ResetSource::TripleFault))),
            Ok(VcpuExit::SystemEvent(kind, _)) => (ExitKind::SystemEvent, Next::Stop(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                KVM_SYSTEM_EVENT_RESET => ExitReason::Reset(ResetSource::Kvm),
                KVM_SYSTEM_EVENT_CRASH => ExitReason::Error(format!("vCPU {id}: guest crashed (KVM system event)")),
                other => ExitReason::Error(format!("vCPU {id}: unexpected KVM system event {other}")),
            })),
            Ok(VcpuExit::FailEntry(reason, cpu)) => (ExitKind::FailEntry, Next::Stop(ExitReason::Error(format!(
                "vCPU {id}: KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host CPU {cpu}"
            )))),
            Ok(VcpuExit::InternalError) => (ExitKind::InternalError, Next::InternalError),
            Ok(other) => (ExitKind::Other, Next::Stop(ExitReason::Error(format!("vCPU {id}: unhandled exit {other:?}")))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                (ExitKind::Interrupted, Next::Continue)
            }
            Err(e) => (ExitKind::Other, Next::Stop(ExitReason::Error(format!("vCPU {id}: KVM_RUN failed: {e}")))),
        };
        stats.count(kind);
        if kind == ExitKind::Interrupted {
            // Maybe a kick: clear the flag it set so the next KVM_RUN runs.
            vcpu.set_kvm_immediate_exit(0);
        }
        match next {
            Next::Continue => {}
            Next::Stop(reason) => ctx.exit.request(reason),
            Next::InternalError => {
                let msg = describe_internal_error(&mut vcpu, id);
                ctx.exit.request(ExitReason::Error(msg));
            }
        }
    }
    // Before the VcpuFd (and the mapping) goes: a late kick finds null.
    KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    fn vm() -> Arc<VmFd> {
        let vm = Kvm::new()
            .expect("/dev/kvm")
            .create_vm()
            .expect("create_vm");
        vm.create_irq_chip().expect("irqchip");
        Arc::new(vm)
    }

    #[test]
    fn restored_clock_hides_the_paused_time() {
        let vm = vm();
        let saved = vm.get_clock().expect("KVM_GET_CLOCK");
        std::thread::sleep(std::time::Duration::from_millis(300));
        restore_clock(&vm, saved).expect("KVM_SET_CLOCK");
        let now = vm.get_clock().expect("KVM_GET_CLOCK");
        let advanced = now.clock.saturating_sub(saved.clock);
        assert!(
            advanced < 100_000_000,
            "the clock advanced {advanced} ns over a 300 ms pause"
        );
    }

    #[test]
    fn gate_pauses_resumes_and_stops() {
        let gate = PauseGate::new(vm(), 1);
        assert!(!gate.is_paused());
        assert!(gate.request_pause());
        assert!(gate.is_paused() && gate.requested.load(Ordering::SeqCst));
        gate.resume();
        assert!(!gate.is_paused() && !gate.requested.load(Ordering::SeqCst));
        gate.stop();
        assert!(!gate.request_pause(), "no pause once stopping");
    }

    #[test]
    fn a_parked_thread_waits_for_resume_and_saves_the_clock() {
        let gate = Arc::new(PauseGate::new(vm(), 1));
        assert!(gate.request_pause());
        let g = gate.clone();
        let parked = std::thread::spawn(move || g.park());
        while gate.parked() < 1 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(
            gate.lock().clock.is_some(),
            "the last vCPU to park saves the clock"
        );
        assert!(!parked.is_finished());
        gate.resume();
        parked.join().unwrap();
        assert_eq!(gate.parked(), 0);
        assert!(gate.lock().clock.is_none());
    }

    #[test]
    fn exit_counters_count_by_kind() {
        let stats = VcpuStats::default();
        stats.count(ExitKind::IoOut);
        stats.count(ExitKind::IoOut);
        stats.count(ExitKind::Other);
        let snap = stats.snapshot();
        assert_eq!(snap[ExitKind::IoOut as usize], 2);
        assert_eq!(snap[ExitKind::Other as usize], 1);
        assert_eq!(snap.iter().sum::<u64>(), 3);
        assert_eq!(
            ExitKind::ALL.map(|k| k as usize),
            std::array::from_fn(|i| i)
        );
    }
}
