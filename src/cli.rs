//! Command-line parsing for `utsuwa`. Hand-written (a few dozen lines) so
//! that every mistake produces exactly one clear error line.

use std::path::PathBuf;

use vmm::config::{
    parse_disk, parse_net, parse_size, parse_vsock, VmConfig, DEFAULT_CMDLINE, DEFAULT_MEM_SIZE,
};
use vmm::cpu::cpuid::CpuTemplate;
use vmm::virtio::block::DiskConfig;
use vmm::virtio::net::NetConfig;
use vmm::virtio::vsock::VsockConfig;

pub const USAGE: &str = "\
utsuwa: a small, fast virtual machine monitor for Linux KVM

Usage:
  utsuwa run [OPTIONS]      boot a VM (with no --kernel: the default Debian guest, to a shell)
  utsuwa run --config-file FILE [--api-sock PATH | --no-api]
                            boot the VM a Firecracker-style JSON file describes
  utsuwa assets [--cache DIR]
                            fetch and build the default guest's kernel and initramfs
  utsuwa [api] --api-sock PATH [--id ID] [--config-file FILE] [--log-level LEVEL]
                            serve the management API (Firecracker's, HTTP on a Unix
                            socket); the VM starts on PUT /actions InstanceStart
  utsuwa ctl --api-sock PATH info|pause|resume|ctrl-alt-del|config|metrics
                            ask a running utsuwa through its API
  utsuwa --version | --help

Options for run:
  --kernel PATH             bzImage or ELF vmlinux (PVH entry when present)
  --initrd PATH             initial ramdisk
  --cmdline STR             kernel command line (default: \"console=ttyS0 reboot=k panic=1\")
  --cpus N                  vCPUs (default 1)
  --memory SIZE             guest RAM, e.g. 512M, 2G (default 512M)
  --cpu-template NAME       host (default) or baseline
  --disk path=FILE[,readonly=on][,serial=ID][,cache=none]
                            a virtio-blk disk (raw image); repeat for more
  --net tap=NAME[,mac=MAC]  a virtio-net interface on host TAP NAME (created, and
                            removed on exit, if it does not exist); repeat for more
  --rng                     a virtio-rng device fed by the host's getrandom
  --vsock cid=N,socket=PATH a virtio-vsock device: host programs connect to the Unix
                            socket PATH and send \"CONNECT <port>\\n\"; guest connections
                            to CID 2 port P reach a listener on PATH_P
  --log-level LEVEL         error, warn (default), info, debug, trace
  --no-seccomp              no seccomp-bpf system call filters (on by default, also
                            for the API)

The console is COM1 on the terminal; type Ctrl-a x to leave, Ctrl-a Ctrl-a for a literal Ctrl-a.";

/// What the user asked for.
#[derive(Debug)]
pub enum Command {
    Run(RunArgs),
    Api(utsuwa::api::args::ApiArgs),
    Ctl(utsuwa::api::args::CtlArgs),
    Assets { cache: Option<PathBuf> },
    Help,
    Version,
}

/// `utsuwa run`'s options; `kernel` None means the default guest.
#[derive(Debug)]
pub struct RunArgs {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub vcpus: u8,
    pub mem_size: u64,
    pub cpu_template: CpuTemplate,
    pub log_level: log::LevelFilter,
    pub disks: Vec<DiskConfig>,
    pub nets: Vec<NetConfig>,
    pub rng: bool,
    pub vsock: Option<VsockConfig>,
    /// `--no-seccomp`: no system call filters.
    pub no_seccomp: bool,
}

impl RunArgs {
    /// The VM configuration, given the kernel and initrd to use.
    pub fn vm_config(&self, kernel: PathBuf, initrd: Option<PathBuf>) -> VmConfig {
        VmConfig {
            kernel,
            initrd,
            cmdline: self
                .cmdline
                .clone()
                .unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            vcpus: self.vcpus,
            mem_size: self.mem_size,
            cpu_template: self.cpu_template,
            disks: self.disks.clone(),
            nets: self.nets.clone(),
            rng: self.rng,
            vsock: self.vsock.clone(),
        }
    }
}

fn value(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, String> {
    args.next().ok_or_else(|| format!("{flag} needs a value"))
}

fn parse_run(mut args: impl Iterator<Item = String>) -> Result<RunArgs, String> {
    let mut run = RunArgs {
        kernel: None,
        initrd: None,
        cmdline: None,
        vcpus: 1,
        mem_size: DEFAULT_MEM_SIZE,
        cpu_template: CpuTemplate::default(),
        log_level: log::LevelFilter::Warn,
        disks: Vec::new(),
        nets: Vec::new(),
        rng: false,
        vsock: None,
        no_seccomp: false,
    };
    while let Some(arg) = args.next() {
        // Accept both "--flag value" and "--flag=value".
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut val = || match &inline {
            Some(v) => Ok(v.clone()),
            None => value(&mut args, &flag),
        };
        match flag.as_str() {
            "--kernel" => run.kernel = Some(PathBuf::from(val()?)),
            "--initrd" => run.initrd = Some(PathBuf::from(val()?)),
            "--cmdline" => run.cmdline = Some(val()?),
            "--cpus" => {
                let v = val()?;
                run.vcpus = v.parse::<u8>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!(
                        "--cpus must be a number from 1 to {}, got '{v}'",
                        vmm::builder::MAX_VCPUS
                    )
                })?;
            }
            "--memory" => {
                let v = val()?;
                run.mem_size = parse_size(&v).map_err(|e| format!("--memory: {e}"))?;
                if run.mem_size == 0 {
                    return Err("--memory must be more than 0".into());
                }
            }
            "--disk" => run.disks.push(parse_disk(&val()?)?),
            "--net" => run.nets.push(parse_net(&val()?)?),
            "--vsock" if run.vsock.is_some() => return Err("--vsock can be given once".into()),
            "--vsock" => run.vsock = Some(parse_vsock(&val()?)?),
            "--rng" if inline.is_none() => run.rng = true,
            "--rng" => return Err("--rng takes no value".into()),
            "--no-seccomp" if inline.is_none() => run.no_seccomp = true,
            "--cpu-template" => {
                run.cpu_template = val()?.parse().map_err(|e| format!("--cpu-template: {e}"))?
            }
            "--log-level" => {
                let v = val()?;
                run.log_level = v
                    .parse()
                    .map_err(|_| format!("--log-level: unknown level '{v}'"))?;
            }
            other => {
                return Err(format!(
                    "unknown option '{other}' for run (see utsuwa --help)"
                ))
            }
        }
    }
    Ok(run)
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter();
    match args.next().as_deref() {
        None | Some("--help") | Some("-h") | Some("help") => Ok(Command::Help),
        Some("--version") | Some("-V") => Ok(Command::Version),
        Some("run") => {
            let rest: Vec<String> = args.collect();
            if utsuwa::api::args::is_config_run(&rest) {
                utsuwa::api::args::parse_run_config(rest).map(Command::Api)
            } else {
                parse_run(rest.into_iter()).map(Command::Run)
            }
        }
        Some("api") => utsuwa::api::args::parse_api(args).map(Command::Api),
        Some(first) if first == "--api-sock" || first.starts_with("--api-sock=") => {
            let all = std::iter::once(first.to_string()).chain(args);
            utsuwa::api::args::parse_api(all).map(Command::Api)
        }
        Some("ctl") => utsuwa::api::args::parse_ctl(args).map(Command::Ctl),
        Some("assets") => {
            let mut cache = None;
            while let Some(arg) = args.next() {
                match arg.as_str() {
                    "--cache" => cache = Some(PathBuf::from(value(&mut args, "--cache")?)),
                    other => return Err(format!("unknown option '{other}' for assets")),
                }
            }
            Ok(Command::Assets { cache })
        }
        Some(other) => Err(format!(
            "unknown command '{other}' (expected run, api, ctl or assets; see utsuwa --help)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<RunArgs, String> {
        match parse(
            std::iter::once("run")
                .chain(args.iter().copied())
                .map(String::from),
        )? {
            Command::Run(r) => Ok(r),
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn run_flags_parse() {
        let r = run(&[
            "--kernel",
            "k",
            "--cpus=4",
            "--memory",
            "2G",
            "--cmdline",
            "a b=c",
        ])
        .unwrap();
        assert_eq!(r.kernel, Some(PathBuf::from("k")));
        assert_eq!((r.vcpus, r.mem_size), (4, 2 << 30));
        assert_eq!(r.cmdline.as_deref(), Some("a b=c"));
        let r = run(&[
            "--net",
            "tap=a",
            "--net=tap=b,mac=52:54:00:00:00:02",
            "--rng",
        ])
        .unwrap();
        assert_eq!(r.nets.len(), 2);
        assert_eq!((r.nets[0].tap.as_str(), r.nets[1].tap.as_str()), ("a", "b"));
        assert!(r.rng);
        let defaults = run(&[]).unwrap();
        assert_eq!(
            (defaults.vcpus, defaults.mem_size, defaults.kernel),
            (1, 512 << 20, None)
        );
    }

    #[test]
    fn bad_input_is_one_clear_error() {
        for (args, needle) in [
            (&["--cpus", "0"][..], "--cpus"),
            (&["--cpus", "many"][..], "--cpus"),
            (&["--cpus", "300"][..], "--cpus"),
            (&["--memory", "0"][..], "--memory"),
            (&["--memory", "lots"][..], "--memory"),
            (&["--kernel"][..], "needs a value"),
            (&["--frobnicate"][..], "unknown option"),
            (&["--cpu-template", "fast"][..], "--cpu-template"),
            (&["--net", "mac=52:54:00:00:00:01"][..], "--net"),
            (&["--net"][..], "needs a value"),
            (&["--rng=on"][..], "--rng"),
        ] {
            let err = run(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
            assert!(!err.contains('\n'));
        }
        assert!(parse(["fly".to_string()])
            .unwrap_err()
            .contains("unknown command"));
    }
}
