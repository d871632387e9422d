//! seccomp-bpf: one allow-list per kind of thread, applied to each thread
//! (no TSYNC) at the top of its body by [`install`]. A forbidden system
//! call traps (SIGSYS); the handler writes one line naming the thread and
//! the call, puts the terminal back and ends the process with status 31.
//!
//! [`configure`] is called once by the front end before any VM thread
//! starts: it decides whether filters are on (`--no-seccomp`, a kernel
//! without seccomp) and installs the SIGSYS handler. Without it (unit
//! tests of this crate) `install` does nothing. Every kind's filter is
//! compiled there, once (about 0.1 ms for all seven).

mod lists;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use lists::rules;

/// The kinds of threads utsuwa runs, each with its own allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread of `utsuwa run` once the VM is running: it waits,
    /// kicks and joins the other threads, and prints how the VM ended.
    Main,
    /// A vCPU thread (`vcpu{N}`): KVM_RUN and the device emulation it
    /// calls into, device activation included.
    Vcpu,
    /// A virtio-blk queue worker (`blk{N}-q{i}`).
    Block,
    /// The virtio-net worker.
    Net,
    /// The virtio-rng worker.
    Rng,
    /// The virtio-vsock worker (started with the device, not by a vCPU).
    Vsock,
    /// The console input thread.
    Console,
    /// The API server thread (the main thread in API mode) once the VM is
    /// running, and what it does after the VM ends.
    Api,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 8] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Block,
        ThreadKind::Net,
        ThreadKind::Rng,
        ThreadKind::Vsock,
        ThreadKind::Console,
        ThreadKind::Api,
    ];

    /// The name used by `UTSUWA_SECCOMP_TEST_FORBIDDEN`.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Block => "blk",
            ThreadKind::Net => "net",
            ThreadKind::Rng => "rng",
            ThreadKind::Vsock => "vsock",
            ThreadKind::Console => "console",
            ThreadKind::Api => "api",
        }
    }

    fn from_name(name: &str) -> Option<ThreadKind> {
        ThreadKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The exit status after a forbidden system call.
pub const EXIT_STATUS: i32 = 31;

/// The test hook: a thread of this kind makes a forbidden call right
/// after installing its filter.
pub const TEST_FORBIDDEN_ENV: &str = "UTSUWA_SECCOMP_TEST_FORBIDDEN";

struct Config {
    enabled: bool,
    forbidden: Option<ThreadKind>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();
static FILTERS: [OnceLock<Result<BpfProgram, String>>; ThreadKind::ALL.len()] =
    [const { OnceLock::new() }; ThreadKind::ALL.len()];
static NO_CLONE3: OnceLock<Result<BpfProgram, String>> = OnceLock::new();

/// Whether filters are in force for this process.
pub fn enabled() -> bool {
    CONFIG.get().is_some_and(|c| c.enabled)
}

/// Decides once, before any VM thread starts, whether filters apply, and
/// installs the SIGSYS handler. Returns a warning when they were wanted
/// but the kernel has no seccomp.
pub fn configure(want: bool) -> Option<String> {
    let forbidden = std::env::var(TEST_FORBIDDEN_ENV)
        .ok()
        .and_then(|v| ThreadKind::from_name(&v));
    let mut warning = None;
    let mut enabled = want;
    if want {
        // SAFETY: PR_GET_SECCOMP takes no pointer; EINVAL means the kernel
        // was built without seccomp.
        if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } < 0 {
            warning = Some(format!(
                "seccomp is not available ({}): running without system call filters",
                std::io::Error::last_os_error()
            ));
            enabled = false;
        } else if let Err(e) = seccomp_syscall_works() {
            // Seen under valgrind, which does not implement seccomp(2).
            warning = Some(format!(
                "the seccomp system call is not available ({e}): running without system call filters"
            ));
            enabled = false;
        } else if let Err(e) = install_sigsys_handler() {
            warning = Some(format!(
                "cannot install the SIGSYS handler ({e}): running without system call filters"
            ));
            enabled = false;
        }
    }
    if enabled {
        // glibc's malloc reads /sys/devices/system/cpu/online (openat) the
        // first time a thread needs a ninth arena, in whatever thread that
        // is: fix the limit now, at glibc's own default (8 per CPU).
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: mallopt only sets a malloc parameter.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, (8 * cpus) as libc::c_int) };
        // All of them compile in about 0.1 ms: do it before any thread starts.
        for kind in ThreadKind::ALL {
            if let Err(e) = program(kind) {
                warning = Some(format!("{e}: running without system call filters"));
                enabled = false;
            }
        }
        let _ = no_clone3();
    }
    let _ = CONFIG.set(Config { enabled, forbidden });
    warning
}

/// Asks seccomp(2) whether the Trap action is available: no side effect,
/// and it fails where the call itself is missing.
fn seccomp_syscall_works() -> std::io::Result<()> {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_ulong = 2;
    const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
    let action: u32 = SECCOMP_RET_TRAP;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 through the pointer,
    // which points at a live local.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The compiled filter of `kind` (compiled on first use).
pub fn program(kind: ThreadKind) -> Result<&'static BpfProgram, String> {
    FILTERS[kind as usize]
        .get_or_init(|| compile(kind))
        .as_ref()
        .map_err(Clone::clone)
}

fn compile(kind: ThreadKind) -> Result<BpfProgram, String> {
    let filter = SeccompFilter::new(
        rules(kind)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| format!("seccomp filter for {} threads: {e}", kind.name()))?;
    BpfProgram::try_from(filter)
        .map_err(|e| format!("seccomp filter for {} threads: {e}", kind.name()))
}

/// clone3 answers ENOSYS, so glibc's pthread_create falls back to clone,
/// whose flags a filter can read (clone3's are behind a pointer).
fn no_clone3() -> Result<&'static BpfProgram, String> {
    NO_CLONE3
        .get_or_init(|| {
            let filter = SeccompFilter::new(
                [(libc::SYS_clone3, vec![])].into_iter().collect(),
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
                TargetArch::x86_64,
            )
            .map_err(|e| e.to_string())?;
            BpfProgram::try_from(filter).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Applies `kind`'s filter to the calling thread, if filters are on.
/// Nothing after this may need a call outside the list: a failure to
/// apply ends the process (a VMM must not run half-filtered).
pub fn install(kind: ThreadKind) {
    let Some(config) = CONFIG.get() else {
        return;
    };
    if !config.enabled {
        return;
    }
    remember_thread_name(kind);
    let result = program(kind).and_then(|prog| {
        if kind == ThreadKind::Vcpu {
            seccompiler::apply_filter(no_clone3()?).map_err(|e| e.to_string())?;
        }
        seccompiler::apply_filter(prog).map_err(|e| e.to_string())
    });
    if let Err(e) = result {
        eprintln!(
            "utsuwa: error: cannot apply the seccomp filter of a {} thread: {e}",
            kind.name()
        );
        abort_now();
    }
    if config.forbidden == Some(kind) {
        // SAFETY: a plain system call with integer arguments; the filter
        // traps it before it does anything.
        unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
    }
}

thread_local! {
    /// This thread's name, for the SIGSYS handler (a const-initialised
    /// Copy cell: a plain TLS read, async-signal-safe).
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

fn remember_thread_name(kind: ThreadKind) {
    let mut buf = [0u8; 16];
    let current = std::thread::current();
    // The API server is the main thread: call it by its job.
    let name = match kind {
        ThreadKind::Api => "api",
        _ => current.name().unwrap_or("main"),
    };
    let n = name.len().min(buf.len());
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    THREAD_NAME.with(|c| c.set(buf));
}

/// The terminal settings to put back from the SIGSYS handler: written
/// once (before raw mode is entered), read only after `TERMIOS_SET`.
struct SavedTermios(std::cell::UnsafeCell<std::mem::MaybeUninit<libc::termios>>);
// SAFETY: written once before TERMIOS_SET is published, read-only after.
unsafe impl Sync for SavedTermios {}
static TERMIOS: SavedTermios =
    SavedTermios(std::cell::UnsafeCell::new(std::mem::MaybeUninit::uninit()));
static TERMIOS_SET: AtomicBool = AtomicBool::new(false);

/// Records the terminal settings the SIGSYS handler restores. Only the
/// first call counts.
pub fn save_termios(saved: &libc::termios) {
    static CLAIMED: AtomicBool = AtomicBool::new(false);
    if CLAIMED.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: the CLAIMED swap makes this the only writer, and no reader
    // looks before TERMIOS_SET is stored below.
    unsafe { (*TERMIOS.0.get()).write(*saved) };
    TERMIOS_SET.store(true, Ordering::SeqCst);
}

fn install_sigsys_handler() -> std::io::Result<()> {
    // SAFETY: sigaction is plain data; every field the kernel reads is set.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = sigsys_handler as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `act.sa_mask` is a valid sigset_t to fill.
    unsafe { libc::sigfillset(&mut act.sa_mask) };
    // SAFETY: `act` is initialised; the old action is not wanted.
    if unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A small line builder over a stack buffer (no allocation).
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_num(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, uctx: *mut libc::c_void) {
    // siginfo's _sigsys member: _call_addr (8 bytes at offset 16), then
    // _syscall (int at offset 24).
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers,
    // and for SIGSYS from seccomp it fills the _sigsys member.
    let nr = unsafe { (info.cast::<u8>().add(24).cast::<libc::c_int>()).read_unaligned() };
    let name = THREAD_NAME.with(Cell::get);
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let mut line = Line {
        buf: [0; 160],
        len: 0,
    };
    line.push(b"\r\nutsuwa: error: seccomp: thread '");
    line.push(&name[..name_len]);
    line.push(b"' made forbidden system call ");
    line.push_num(nr as u64);
    if let Some(sys) = lists::syscall_name(nr as i64) {
        line.push(b" (");
        line.push(sys.as_bytes());
        line.push(b")");
    }
    if nr as i64 == libc::SYS_ioctl || nr as i64 == libc::SYS_prctl {
        // The request: the second argument (rsi) in the trapped context.
        // SAFETY: SA_SIGINFO handlers get the interrupted ucontext.
        let arg = unsafe {
            let ctx = uctx.cast::<libc::ucontext_t>();
            (*ctx).uc_mcontext.gregs[if nr as i64 == libc::SYS_ioctl {
                libc::REG_RSI
            } else {
                libc::REG_RDI
            } as usize]
        };
        line.push(b" with argument ");
        line.push_num(arg as u64);
    }
    line.push(b"; stopping\n");
    if TERMIOS_SET.load(Ordering::SeqCst) {
        // SAFETY: TERMIOS_SET is true; ioctl is async-signal-safe and
        // every filter allows TCSETS on stdin.
        unsafe { restore_termios() };
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is ours.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        libc::_exit(EXIT_STATUS);
    }
}

/// TCSETS straight from the saved settings: glibc's termios starts with
/// the kernel's (flags, line discipline, the first 19 control characters),
/// so the kernel reads exactly what tcsetattr would give it, without
/// tcsetattr's extra TCGETS.
///
/// # Safety
///
/// TERMIOS_SET must be true (TERMIOS written).
unsafe fn restore_termios() {
    // SAFETY: the caller guarantees TERMIOS holds a termios; TCSETS reads
    // a prefix of it.
    unsafe {
        libc::ioctl(
            libc::STDIN_FILENO,
            libc::TCSETS,
            (*TERMIOS.0.get()).as_ptr(),
        )
    };
}

fn abort_now() -> ! {
    if TERMIOS_SET.load(Ordering::SeqCst) {
        // SAFETY: TERMIOS_SET is true.
        unsafe { restore_termios() };
    }
    // SAFETY: ends the process at once.
    unsafe { libc::_exit(EXIT_STATUS) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles() {
        for kind in ThreadKind::ALL {
            let start = std::time::Instant::now();
            let prog = compile(kind).unwrap();
            let took = start.elapsed();
            let rules = rules(kind).unwrap();
            let ioctls = rules.get(&libc::SYS_ioctl).map_or(0, Vec::len);
            eprintln!(
                "{}: {} system calls ({} ioctl requests), {} BPF instructions, compiled in {took:?}",
                kind.name(),
                rules.len(),
                ioctls,
                prog.len()
            );
            assert!(!prog.is_empty());
        }
        no_clone3().unwrap();
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in ThreadKind::ALL {
            assert_eq!(ThreadKind::from_name(kind.name()), Some(kind));
        }
    }
}
