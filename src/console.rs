//! The terminal side of COM1: guest output to stdout; stdin in raw mode
//! when it is a terminal (restored on every exit path, panics and signals
//! included) and forwarded to the UART; the `Ctrl-a x` escape; and
//! SIGINT/SIGTERM/SIGHUP turned into a clean stop of the VM.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm::devices::serial::SerialDevice;
use vmm::lifecycle::{ExitReason, ExitSignal};

/// Ctrl-a, the escape prefix (as in QEMU).
const ESCAPE: u8 = 0x01;

/// The terminal settings to put back, saved once when raw mode is entered.
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);
static RAW_MODE: AtomicBool = AtomicBool::new(false);

/// Guest output: straight to stdout, flushed per write so the terminal
/// shows what the guest printed even without a newline.
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// Puts stdin in raw mode if it is a terminal. Safe to call once.
pub fn enter_raw_mode() {
    let fd = libc::STDIN_FILENO;
    // SAFETY: isatty only inspects the fd.
    if unsafe { libc::isatty(fd) } != 1 {
        return;
    }
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `saved` is a valid termios to write into.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return;
    }
    let mut raw = saved;
    // SAFETY: cfmakeraw only modifies the struct it is given.
    unsafe { libc::cfmakeraw(&mut raw) };
    // Keep output processing: a guest that prints a bare \n (as many
    // minimal guests do) still gets a carriage return; \r\n is unharmed.
    raw.c_oflag |= libc::OPOST | libc::ONLCR;
    *SAVED_TERMIOS.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
    vmm::seccomp::save_termios(&saved);
    // SAFETY: `raw` is a valid termios derived from the current settings.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } == 0 {
        RAW_MODE.store(true, Ordering::SeqCst);
    }
}

/// Restores the terminal if raw mode was entered. Idempotent.
pub fn restore_terminal() {
    if !RAW_MODE.swap(false, Ordering::SeqCst) {
        return;
    }
    // try_lock: never block here, this also runs from the panic hook.
    if let Ok(guard) = SAVED_TERMIOS.try_lock() {
        if let Some(saved) = guard.as_ref() {
            // SAFETY: `saved` holds the settings tcgetattr returned earlier.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
        }
    }
}

/// Restores the terminal before the default panic message, so a panic
/// (which aborts) never leaves the user's shell in raw mode.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        default(info);
    }));
}

/// Blocks the stop signals in this thread (and so in every thread it
/// spawns afterwards) and returns a signalfd that reports them.
pub fn stop_signals() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for these calls.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
    }
    // SAFETY: `set` is initialised; the old mask is not wanted.
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `set` is initialised; -1 asks for a new fd.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Tracks the `Ctrl-a` escape across reads.
#[derive(Default)]
pub struct EscapeState {
    pending: bool,
}

impl EscapeState {
    /// Filters `input`: returns the bytes for the guest, and whether the
    /// user asked to quit.
    pub fn filter(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    b'x' | b'X' => return (out, true),
                    ESCAPE => out.push(ESCAPE),
                    other => {
                        out.push(ESCAPE);
                        out.push(other);
                    }
                }
            } else if b == ESCAPE {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

/// Starts the console thread: it forwards stdin to the UART and stops the
/// VM on the escape or a stop signal; it ends when the VM stops.
pub fn spawn_input(
    serial: Arc<Mutex<SerialDevice>>,
    exit: Arc<ExitSignal>,
    signals: OwnedFd,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || input_loop(serial, exit, signals))
}

fn input_loop(serial: Arc<Mutex<SerialDevice>>, exit: Arc<ExitSignal>, signals: OwnedFd) {
    vmm::seccomp::install(vmm::seccomp::ThreadKind::Console);
    let interactive = RAW_MODE.load(Ordering::SeqCst);
    let mut escape = EscapeState::default();
    let mut stdin_open = true;
    let mut buf = [0u8; 256];
    let exit_fd = exit.eventfd().as_raw_fd();
    while !exit.is_set() {
        let mut fds = [
            libc::pollfd {
                fd: exit_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { libc::STDIN_FILENO } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of pollfd of the length given.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue;
        }
        if fds[1].revents & libc::POLLIN != 0 {
            exit.request(ExitReason::UserStop);
            break;
        }
        if fds[2].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            // SAFETY: reading into a buffer we own, of the length given.
            let got = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
            if got <= 0 {
                // End of input (a pipe closed): the guest keeps running.
                stdin_open = false;
                continue;
            }
            let input = &buf[..got as usize];
            let (bytes, quit) = if interactive {
                escape.filter(input)
            } else {
                (input.to_vec(), false)
            };
            feed(&serial, &exit, &bytes);
            if quit {
                exit.request(ExitReason::UserStop);
            }
        }
    }
}

/// Pushes `bytes` into the UART as its FIFO drains.
fn feed(serial: &Mutex<SerialDevice>, exit: &ExitSignal, mut bytes: &[u8]) {
    while !bytes.is_empty() && !exit.is_set() {
        let taken = serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enqueue_input(bytes);
        bytes = &bytes[taken..];
        if taken == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_x_quits() {
        let mut e = EscapeState::default();
        assert_eq!(e.filter(b"ab\x01x"), (b"ab".to_vec(), true));
    }

    #[test]
    fn escape_spans_reads_and_doubles() {
        let mut e = EscapeState::default();
        assert_eq!(e.filter(b"a\x01"), (b"a".to_vec(), false));
        assert_eq!(e.filter(b"\x01b"), (b"\x01b".to_vec(), false));
        assert_eq!(e.filter(b"\x01c"), (b"\x01c".to_vec(), false));
    }
}
