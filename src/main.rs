//! `utsuwa`: the command-line front end. It parses the arguments, opens
//! KVM, builds the VM (see `vmm::builder`), connects COM1 to the terminal
//! and reports how the guest ended, as an exit code and one stderr line.

mod cli;
mod console;
mod logger;

use std::path::PathBuf;
use std::process::ExitCode;

use cli::{Command, RunArgs};
use utsuwa::assets;
use vmm::host::{Host, KvmFlavour};
use vmm::lifecycle::ExitReason;

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
    let reason = running.wait();
    if let Some(handle) = input {
        let _ = handle.join();
    }
    console::restore_terminal();
    match reason {
        ExitReason::Error(msg) => {
            let hint = if host.flavour == KvmFlavour::Pvm && msg.contains("INTERNAL_ERROR") {
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
