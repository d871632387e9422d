//! Command-line parsing for `utsuwa`. Hand-written (a few dozen lines) so
//! that every mistake produces exactly one clear error line.

use std::path::PathBuf;

use vmm::config::{parse_disk, parse_size, VmConfig, DEFAULT_CMDLINE, DEFAULT_MEM_SIZE};
use vmm::virtio::block::DiskConfig;
use vmm::cpu::cpuid::CpuTemplate;

pub const USAGE: &str = "\
utsuwa: a small, fast virtual machine monitor for Linux KVM

Usage:
  utsuwa run [OPTIONS]      boot a VM (with no --kernel: the default Debian guest, to a shell)
  utsuwa assets [--cache DIR]
                            fetch and build the default guest's kernel and initramfs
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
  --log-level LEVEL         error, warn (default), info, debug, trace

The console is COM1 on the terminal; type Ctrl-a x to leave, Ctrl-a Ctrl-a for a literal Ctrl-a.";

/// What the user asked for.
#[derive(Debug)]
pub enum Command {
    Run(RunArgs),
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
        Some("run") => parse_run(args).map(Command::Run),
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
            "unknown command '{other}' (expected run or assets; see utsuwa --help)"
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
