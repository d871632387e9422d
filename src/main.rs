//! `utsuwa`: the command-line front end. It parses the arguments, opens
//! KVM, builds the VM (see `vmm::builder`), connects COM1 to the terminal
//! and reports how the guest ended, as an exit code and one stderr line.
//! With `--api-sock` it serves the management API (`utsuwa::api`) and
//! builds the VM when the client starts it; `ctl` is that API's client.

mod cli;
mod console;
mod jail;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use cli::{Command, RunArgs};
use utsuwa::api::args::{ApiArgs, CtlArgs};
use utsuwa::api::instance::{Instance, Launcher};
use utsuwa::api::server::{self, Limits, Stop};
use utsuwa::api::Api;
use utsuwa::{assets, logger};
use vmm::config::VmConfig;
use vmm::host::{Host, KvmFlavour};
use vmm::lifecycle::ExitReason;
use vmm::vm::RunningVm;

fn main() -> ExitCode {
    console::install_panic_hook();
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(msg) => return fail(&msg),
    };
    match command {
        Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("utsuwa {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Assets { cache } => {
            logger::init(log::LevelFilter::Info);
            let dir = cache.unwrap_or_else(assets::default_cache_dir);
            match assets::ensure(&dir) {
                Ok(a) => {
                    println!(
                        "kernel  {}\ninitrd  {}\nversion {}",
                        a.kernel.display(),
                        a.initrd.display(),
                        a.kernel_version
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Run(args) => run(args),
        Command::Api(args) => api(args),
        Command::Ctl(args) => ctl(args),
        Command::Jail(args) => jail::main(args),
    }
}

/// One error line on stderr and exit status 1.
fn fail(msg: &str) -> ExitCode {
    console::restore_terminal();
    eprintln!("utsuwa: error: {msg}");
    ExitCode::FAILURE
}

fn run(args: RunArgs) -> ExitCode {
    logger::init(args.log_level);
    seccomp_configure(!args.no_seccomp);
    // Check the host before fetching or loading anything.
    let host = match Host::open() {
        Ok(h) => h,
        Err(e) => return fail(&e.to_string()),
    };
    let (kernel, initrd) = match default_guest(&args) {
        Ok(paths) => paths,
        Err(msg) => return fail(&msg),
    };
    let cfg = args.vm_config(kernel, initrd);
    let signals = match console::stop_signals() {
        Ok(fd) => fd,
        Err(e) => return fail(&format!("cannot set up signal handling: {e}")),
    };
    let vm = match vmm::builder::build(&host, &cfg, Box::new(console::Stdout)) {
        Ok(vm) => vm,
        Err(e) => return fail(&e.to_string()),
    };
    if let Some(warning) = host.flavour.warning().filter(|_| vm.guest_is_linux()) {
        eprintln!("{warning}");
    }
    let running = match vm.start() {
        Ok(r) => r,
        Err(e) => return fail(&e.to_string()),
    };
    console::enter_raw_mode();
    let input = match console::spawn_input(running.serial(), running.exit_signal(), signals) {
        Ok(handle) => Some(handle),
        Err(e) => {
            log::warn!("no console input: {e}");
            None
        }
    };
    // From here the main thread only waits, kicks, joins and prints.
    vmm::seccomp::install(vmm::seccomp::ThreadKind::Main);
    finish(running, input, host.flavour)
}

/// Turns the seccomp filters on (or not) before any VM thread starts.
fn seccomp_configure(want: bool) {
    if let Some(warning) = vmm::seccomp::configure(want) {
        log::warn!("{warning}");
    }
}

/// Waits for the VM to end and reports how, as `utsuwa run` does: exit
/// code 0 and the reason on stderr, or 1 and the error.
fn finish(running: RunningVm, input: Option<JoinHandle<()>>, flavour: KvmFlavour) -> ExitCode {
    let host_flavour = flavour;
    let reason = running.wait();
    if let Some(handle) = input {
        let _ = handle.join();
    }
    console::restore_terminal();
    match reason {
        ExitReason::Error(msg) => {
            let hint = if host_flavour == KvmFlavour::Pvm && msg.contains("INTERNAL_ERROR") {
                " (this host's KVM is PVM: see the warning above)"
            } else {
                ""
            };
            fail(&format!("{msg}{hint}"))
        }
        other => {
            eprintln!("utsuwa: {other}");
            ExitCode::SUCCESS
        }
    }
}

/// The kernel and initrd to boot: the user's, or the default guest's
/// (fetched and built on first use).
fn default_guest(args: &RunArgs) -> Result<(PathBuf, Option<PathBuf>), String> {
    if let Some(kernel) = &args.kernel {
        return Ok((kernel.clone(), args.initrd.clone()));
    }
    let dir = assets::default_cache_dir();
    let a = assets::ensure(&dir).map_err(|e| format!("cannot prepare the default guest: {e}"))?;
    Ok((a.kernel, Some(args.initrd.clone().unwrap_or(a.initrd))))
}

/// Starts VMs for the API: built here, console on stdout, stdin forwarded
/// (when it is a terminal, or always for `run --config-file`).
struct ConsoleLauncher {
    host: Host,
    signals: OwnedFd,
    forward_stdin: bool,
    input: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Launcher for ConsoleLauncher {
    fn max_vcpus(&self) -> usize {
        self.host.max_vcpus
    }

    fn launch(&mut self, cfg: &VmConfig) -> Result<RunningVm, String> {
        let vm = vmm::builder::build(&self.host, cfg, Box::new(console::Stdout))
            .map_err(|e| e.to_string())?;
        if let Some(warning) = self.host.flavour.warning().filter(|_| vm.guest_is_linux()) {
            log::warn!("{warning}");
        }
        let running = vm.start().map_err(|e| e.to_string())?;
        // SAFETY: isatty only inspects the fd.
        let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
        if self.forward_stdin || tty {
            console::enter_raw_mode();
            let signals = self
                .signals
                .try_clone()
                .map_err(|e| format!("signal fd: {e}"))?;
            match console::spawn_input(running.serial(), running.exit_signal(), signals) {
                Ok(handle) => *self.input.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle),
                Err(e) => log::warn!("no console input: {e}"),
            }
        }
        // The VM is built and running: from here this thread serves the
        // API, controls the VM and waits for its end.
        vmm::seccomp::install(vmm::seccomp::ThreadKind::Api);
        Ok(running)
    }
}

/// `utsuwa --api-sock PATH` and `utsuwa run --config-file FILE`: serve
/// the API (if a socket is given), boot the file's VM (if one is given),
/// and exit as `run` does when the guest ends.
fn api(args: ApiArgs) -> ExitCode {
    logger::init(args.log_level);
    seccomp_configure(!args.no_seccomp);
    let host = match Host::open() {
        Ok(h) => h,
        Err(e) => return fail(&e.to_string()),
    };
    let flavour = host.flavour;
    let config = match &args.config_file {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) => return fail(&format!("--config-file {}: {e}", path.display())),
        },
        None => None,
    };
    let signals = match console::stop_signals() {
        Ok(fd) => fd,
        Err(e) => return fail(&format!("cannot set up signal handling: {e}")),
    };
    let bound = match &args.socket {
        Some(path) => match server::bind(path) {
            Ok(b) => Some(b),
            Err(e) => return fail(&e.to_string()),
        },
        None => None,
    };
    let input = Arc::new(Mutex::new(None));
    let launcher = ConsoleLauncher {
        host,
        signals: match signals.try_clone() {
            Ok(fd) => fd,
            Err(e) => return fail(&format!("cannot set up signal handling: {e}")),
        },
        forward_stdin: args.forward_stdin,
        input: input.clone(),
    };
    let mut api = Api::new(Instance::new(args.id.clone(), Box::new(launcher)));
    if let Some(bytes) = config {
        let path = args
            .config_file
            .as_deref()
            .unwrap_or(std::path::Path::new(""));
        if let Err(e) = api.apply_config_file(&bytes) {
            return fail(&format!("--config-file {}: {e}", path.display()));
        }
        if let Err(e) = api.instance.start() {
            return fail(&e.to_string());
        }
    }
    let stop = match &bound {
        Some((listener, _)) => {
            server::serve(listener, signals.as_raw_fd(), &mut api, Limits::default())
        }
        None => Stop::VmEnded,
    };
    let running = api.instance.take_running();
    let handle = input.lock().unwrap_or_else(|p| p.into_inner()).take();
    let code = match (stop, running) {
        (_, Some(running)) => finish(running, handle, flavour),
        (_, None) => {
            console::restore_terminal();
            eprintln!("utsuwa: {}", ExitReason::UserStop);
            ExitCode::SUCCESS
        }
    };
    // The socket file goes before the process does.
    drop(bound);
    code
}

/// `utsuwa ctl`: one request, its answer on stdout.
fn ctl(args: CtlArgs) -> ExitCode {
    match utsuwa::api::client::ctl(&args.socket, args.command) {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
