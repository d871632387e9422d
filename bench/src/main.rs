//! `utsuwa-bench`: benchmarks utsuwa against QEMU microvm on the same test
//! guest and writes the results as Markdown and JSON.
//!
//! ```text
//! cargo run --release -p utsuwa-bench -- [boot | blk | net | exit | ... | suite] [--runs N] [--out DIR]
//!     [--memory-runs N] [--timeout SECS] [--utsuwa PATH] [--qemu PATH | --no-qemu]
//!     [--probe-elf PATH] [--image-dir DIR] [--callgrind-runs N | --no-callgrind]
//! ```
//!
//! This file: arguments, the binaries and guest to use, the environment
//! the report records, and printing. One module per benchmark (`boot`,
//! `blk`, `api`, `density`, `exit`, `net`, `vsock`).

mod alternate;
mod api;
mod blk;
mod boot;
mod cgdiff;
mod charts;
mod cleanup;
mod density;
mod exit;
mod guest;
mod net;
mod proc;
mod report;
mod stats;
mod summary;
mod vsock;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

const USAGE: &str = "\
usage: utsuwa-bench [boot | blk | api | density | exit | net | vsock | charts | suite] [OPTIONS]

Benchmarks:
  boot                 time to the guest's first line and to exit, and VMM memory (default)
  blk                  virtio-blk throughput, VMM CPU time and instructions per request
  api                  utsuwa only: process start to API answering, InstanceStart to marker, memory
  density              K = 1, 10, 25, 50 guests of 128 MiB at once: time to all markers, host memory
  exit                 the probe's exit loops (pio, mmio, notify): guest ns, VMM CPU and
                       VMM instructions (callgrind) per exit
  net                  virtio-net on a TAP in a network namespace: frames/s and MB/s both
                       ways, ping RTT, VMM CPU and instructions (callgrind) per frame
  vsock                virtio-vsock stream both ways: MB/s, packets, VMM CPU and
                       instructions (callgrind) per packet (QEMU only with /dev/vhost-vsock)
  charts               only redraw the charts and summary.md from the JSON files in --out
  suite                boot, blk, api, density, exit, net, vsock, then the charts and summary.md

Options:
  --runs N             timed runs per case and VMM (default: boot 20, blk 5, api 10,
                       density 3, exit 3, net 5, vsock 5)
  --exits N            exit: exits per measured loop (default 20000)
  --frames N           net: benchmark frames each way per run (default 100000)
  --vsock-mib N        vsock: MiB each way per run (default 256)
  --qemu-max-k K       density: largest K for QEMU (default 50)
  --memory-runs N      boot: memory runs per case and VMM (default 3)
  --timeout SECS       limit per run; the VMM is killed after it (default 30;
                       runs under callgrind get 10 times as long)
  --image-dir DIR      blk: where the disk image goes (default: the temporary directory)
  --callgrind-runs N   blk, exit, net, vsock: runs of each callgrind measurement (default 3)
  --no-callgrind       blk, exit, net, vsock: skip the callgrind measurements
  --out DIR            where to write BENCH.md and BENCH.json (default bench/results)
  --utsuwa PATH        utsuwa binary (default target/release/utsuwa, built if missing)
  --qemu PATH          QEMU binary (default qemu-system-x86_64 on PATH)
  --no-qemu            measure utsuwa only
  --probe-elf PATH     guest ELF to boot (default: build guests/probe)";

struct Args {
    benches: Vec<String>,
    /// None: each benchmark's own default.
    runs: Option<usize>,
    memory_runs: usize,
    timeout: u64,
    out: Option<PathBuf>,
    utsuwa: Option<PathBuf>,
    qemu: Option<PathBuf>,
    no_qemu: bool,
    probe_elf: Option<PathBuf>,
    image_dir: Option<PathBuf>,
    callgrind_runs: usize,
    no_callgrind: bool,
    qemu_max_k: usize,
    exits: u64,
    frames: u64,
    vsock_mib: u64,
}

/// The arguments, or None when the user asked for help.
fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args {
        benches: vec![],
        runs: None,
        memory_runs: 3,
        timeout: 30,
        out: None,
        utsuwa: None,
        qemu: None,
        no_qemu: false,
        probe_elf: None,
        image_dir: None,
        callgrind_runs: 3,
        no_callgrind: false,
        qemu_max_k: 50,
        exits: 20000,
        frames: 100_000,
        vsock_mib: 256,
    };
    let number = |flag: &str, v: Option<String>| -> Result<usize, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse()
            .map_err(|_| format!("{flag}: not a number: '{v}'"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "boot" | "blk" | "api" | "density" | "exit" | "net" | "vsock" | "charts" => {
                a.benches.push(arg)
            }
            "suite" => a.benches.extend(
                [
                    "boot", "blk", "api", "density", "exit", "net", "vsock", "charts",
                ]
                .map(String::from),
            ),
            "--exits" => a.exits = number("--exits", it.next())? as u64,
            "--frames" => a.frames = number("--frames", it.next())? as u64,
            "--vsock-mib" => a.vsock_mib = number("--vsock-mib", it.next())? as u64,
            "--qemu-max-k" => a.qemu_max_k = number("--qemu-max-k", it.next())?,
            "--runs" => a.runs = Some(number("--runs", it.next())?),
            "--memory-runs" => a.memory_runs = number("--memory-runs", it.next())?,
            "--timeout" => a.timeout = number("--timeout", it.next())? as u64,
            "--out" => a.out = Some(it.next().ok_or("--out needs a directory")?.into()),
            "--utsuwa" => a.utsuwa = Some(it.next().ok_or("--utsuwa needs a path")?.into()),
            "--qemu" => a.qemu = Some(it.next().ok_or("--qemu needs a path")?.into()),
            "--no-qemu" => a.no_qemu = true,
            "--probe-elf" => {
                a.probe_elf = Some(it.next().ok_or("--probe-elf needs a path")?.into())
            }
            "--image-dir" => {
                a.image_dir = Some(it.next().ok_or("--image-dir needs a directory")?.into())
            }
            "--callgrind-runs" => a.callgrind_runs = number("--callgrind-runs", it.next())?,
            "--no-callgrind" => a.no_callgrind = true,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    if a.runs == Some(0)
        || a.timeout == 0
        || a.callgrind_runs == 0
        || a.frames == 0
        || a.vsock_mib == 0
    {
        return Err(
            "--runs, --timeout, --callgrind-runs, --frames and --vsock-mib must be at least 1"
                .into(),
        );
    }
    if a.benches.is_empty() {
        a.benches.push("boot".into());
    }
    Ok(Some(a))
}

fn main() -> ExitCode {
    // Before any thread starts: Ctrl-C then kills the VMMs and deletes
    // the network namespaces instead of leaving them behind.
    cleanup::install();
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("utsuwa-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<(), String> {
    let Some(args) = parse_args(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(());
    };
    let root = workspace_root();
    if args.benches.iter().all(|b| b == "charts") {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| root.join("bench").join("results"));
        let files = charts::draw_all(&out);
        return summary::write(&out, &files);
    }
    let utsuwa = utsuwa_binary(&root, args.utsuwa.clone())?;
    let mut notes = Vec::new();
    let qemu = if args.no_qemu {
        notes.push("QEMU left out (--no-qemu): utsuwa only.".to_string());
        None
    } else {
        match args
            .qemu
            .clone()
            .or_else(|| find_on_path("qemu-system-x86_64"))
        {
            Some(q) if q.exists() => Some(q),
            _ => {
                let msg = "qemu-system-x86_64 not found: measured utsuwa only, no ratios.";
                eprintln!("utsuwa-bench: {msg}");
                notes.push(msg.to_string());
                None
            }
        }
    };
    let guest = match &args.probe_elf {
        Some(elf) => guest::from_elf(
            elf,
            &std::env::temp_dir().join("utsuwa-bench-probe.bzImage"),
        )?,
        None => {
            eprintln!("[bench] building the guest (guests/probe)");
            guest::build(&root)?
        }
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("bench").join("results"));
    for bench in &args.benches {
        match bench.as_str() {
            "boot" => run_boot(&args, &root, &utsuwa, qemu.as_deref(), &guest, &notes, &out)?,
            "blk" => run_blk(&args, &root, &utsuwa, qemu.as_deref(), &guest, &notes, &out)?,
            "api" => run_api(&args, &root, &utsuwa, qemu.as_deref(), &guest, &out)?,
            "density" => run_density(&args, &root, &utsuwa, qemu.as_deref(), &guest, &notes, &out)?,
            "exit" => run_exit(&args, &root, &utsuwa, qemu.as_deref(), &guest, &out)?,
            "net" => run_net(&args, &root, &utsuwa, qemu.as_deref(), &guest, &notes, &out)?,
            "vsock" => run_vsock(&args, &root, &utsuwa, qemu.as_deref(), &guest, &notes, &out)?,
            "charts" => {
                let files = charts::draw_all(&out);
                summary::write(&out, &files)?;
            }
            other => return Err(format!("unknown benchmark '{other}'")),
        }
    }
    Ok(())
}

fn run_boot(
    args: &Args,
    root: &Path,
    utsuwa: &Path,
    qemu: Option<&Path>,
    guest: &guest::Guest,
    notes: &[String],
    out: &Path,
) -> Result<(), String> {
    let vmms = both_vmms(utsuwa, qemu);
    let runs = args.runs.unwrap_or(20);
    let setup = boot::Setup {
        runs,
        memory_runs: args.memory_runs,
        timeout: Duration::from_secs(args.timeout),
        vmms,
        elf: guest.elf.clone(),
        bzimage: guest.bzimage.clone(),
    };
    let mut env = environment(root, utsuwa, qemu, guest);
    let date = report::utc_now();
    let series = boot::run(&setup);
    env.push(("load average after".into(), first_line("/proc/loadavg")));
    let ctx = boot::report::Context {
        date,
        runs,
        memory_runs: args.memory_runs,
        timeout_s: args.timeout,
        environment: env,
        notes: notes.to_vec(),
    };
    let (md, json) = boot::report::render(&ctx, &series);
    report::publish(out, "boot", &md, &json)
}

fn run_blk(
    args: &Args,
    root: &Path,
    utsuwa: &Path,
    qemu: Option<&Path>,
    guest: &guest::Guest,
    notes: &[String],
    out: &Path,
) -> Result<(), String> {
    let runs = args.runs.unwrap_or(5);
    let base = args.image_dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = blk::Scratch::new(&base)?;
    let image = scratch.0.join("disk.img");
    if image.to_string_lossy().contains(',') {
        return Err(format!(
            "{}: a comma in the image path cannot be passed to --disk or -drive (use --image-dir)",
            image.display()
        ));
    }
    eprintln!(
        "[blk] writing the {} MiB image {}",
        blk::IMAGE_MIB,
        image.display()
    );
    blk::make_image(&image, blk::IMAGE_MIB, blk::IMAGE_SEED)?;
    let fs = blk::file_system(&scratch.0);
    let disk = blk::HostDisk::of(&image);
    let mut notes = notes.to_vec();
    let mut cases = Vec::new();
    let direct = blk::direct_io_works(&image);
    let mut caches = vec![blk::Cache::Writeback];
    match &direct {
        Ok(()) => caches.push(blk::Cache::None),
        Err(e) => notes.push(format!(
            "cache=none left out: the image's file system ({fs}) refuses O_DIRECT ({e})."
        )),
    }
    for cache in caches {
        for irq in blk::MODES {
            cases.push(blk::Case { cache, irq });
        }
    }
    let vmms = both_vmms(utsuwa, qemu);
    let setup = blk::Setup {
        runs,
        timeout: Duration::from_secs(args.timeout),
        vmms: vmms.clone(),
        elf: guest.elf.clone(),
        image: image.clone(),
        cases,
        disk: disk.clone(),
    };
    let mut env = environment(root, utsuwa, qemu, guest);
    let date = report::utc_now();
    let series = blk::run(&setup);
    let callgrind = valgrind(args, &mut env).map(|valgrind| {
        blk::callgrind::run(&blk::callgrind::Setup {
            runs: args.callgrind_runs,
            timeout: Duration::from_secs(args.timeout * 10),
            valgrind,
            annotate: find_on_path("callgrind_annotate"),
            vmms: &vmms,
            elf: &guest.elf,
            image: &image,
            dir: &scratch.0,
        })
    });
    env.push(("load average after".into(), first_line("/proc/loadavg")));
    let ctx = blk::report::Context {
        date,
        runs,
        timeout_s: args.timeout,
        environment: env,
        notes,
        image: format!(
            "{}, file system {fs}{}",
            image.display(),
            disk.as_ref()
                .map(|d| format!(" on host block device {}", d.name))
                .unwrap_or_default()
        ),
        callgrind,
        callgrind_runs: args.callgrind_runs,
    };
    let (md, json) = blk::report::render(&ctx, &series);
    report::publish(out, "blk", &md, &json)
}

fn run_api(
    args: &Args,
    root: &Path,
    utsuwa: &Path,
    qemu: Option<&Path>,
    guest: &guest::Guest,
    out: &Path,
) -> Result<(), String> {
    let runs = args.runs.unwrap_or(10);
    let setup = api::Setup {
        runs,
        timeout: Duration::from_secs(args.timeout),
        utsuwa: utsuwa.to_path_buf(),
        elf: guest.elf.clone(),
    };
    let mut env = environment(root, utsuwa, qemu, guest);
    let date = report::utc_now();
    let samples = api::run(&setup);
    env.push(("load average after".into(), first_line("/proc/loadavg")));
    let (md, json) = api::render(&date, &env, &samples);
    report::publish(out, "api", &md, &json)
}

fn run_density(
    args: &Args,
    root: &Path,
    utsuwa: &Path,
    qemu: Option<&Path>,
    guest: &guest::Guest,
    notes: &[String],
    out: &Path,
) -> Result<(), String> {
    let runs = args.runs.unwrap_or(3);
    let vmms = both_vmms(utsuwa, qemu);
    let setup = density::Setup {
        runs,
        timeout: Duration::from_secs(args.timeout),
        vmms,
        elf: guest.elf.clone(),
        max_k: vec![("qemu", args.qemu_max_k)],
    };
    let mut env = environment(root, utsuwa, qemu, guest);
    let date = report::utc_now();
    let series = density::run(&setup);
    env.push(("load average after".into(), first_line("/proc/loadavg")));
    let (md, json) = density::render(&date, runs, &env, notes, &series);
    report::publish(out, "density", &md, &json)
}

fn run_exit(
    args: &Args,
    root: &Path,
    utsuwa: &Path,
    qemu: Option<&Path>,
    guest: &guest::Guest,
    out: &Path,
) -> Result<(), String> {
    let vmms = both_vmms(utsuwa, qemu);
    let setup = exit::Setup {
        runs: args.runs.unwrap_or(3),
        n: args.exits,
        timeout: Duration::from_secs(args.timeout),
        vmms,
        elf: guest.elf.clone(),
    };
    let mut env = environment(root, utsuwa, qemu, guest);
    let date = report::utc_now();
    let series = exit::run(&setup);
    let cg = with_callgrind(args, &mut env, |cg| exit::callgrind(&setup, cg));
    env.push(("load average after".into(), first_line("/proc/loadavg")));
    let (md, json) = exit::render(&date, &setup, &env, &series, &cg);
    report::publish(out, "exit", &md, &json)
}

/// utsuwa, and QEMU when there is one.
fn both_vmms(utsuwa: &Path, qemu: Option<&Path>) -> Vec<boot::Vmm> {
    let mut vmms = vec![boot::Vmm::Utsuwa(utsuwa.to_path_buf())];
    vmms.extend(qemu.map(|q| boot::Vmm::Qemu(q.to_path_buf())));
    vmms
}

/// valgrind (recorded in `env`), or why callgrind is left out.
fn valgrind(args: &Args, env: &mut Vec<(String, String)>) -> Result<PathBuf, String> {
    if args.no_callgrind {
        return Err("left out (--no-callgrind).".into());
    }
    let valgrind =
        find_on_path("valgrind").ok_or("valgrind not found (apt-get install valgrind).")?;
    env.push((
        "valgrind".into(),
        proc::output_of(&valgrind.to_string_lossy(), &["--version"]).unwrap_or_default(),
    ));
    Ok(valgrind)
}

/// `measure` run with valgrind (`valgrind`) and a scratch directory for
/// callgrind's files, or why callgrind is left out.
fn with_callgrind<T>(
    args: &Args,
    env: &mut Vec<(String, String)>,
    measure: impl FnOnce(&cgdiff::Setup) -> T,
) -> Result<T, String> {
    let valgrind = valgrind(args, env)?;
    let dir = blk::Scratch::new(&std::env::temp_dir())?;
    Ok(measure(&cgdiff::Setup {
        valgrind,
        runs: args.callgrind_runs,
        timeout: Duration::from_secs(args.timeout * 10),
        dir: dir.0.clone(),
    }))
}

fn run_net(
    args: &Args,
    root: &Path,
    utsuwa: &Path,
    qemu: Option<&Path>,
    guest: &guest::Guest,
    notes: &[String],
    out: &Path,
) -> Result<(), String> {
    if let Some(why) = net::peer::unavailable() {
        return Err(format!("net: cannot run here: {why}"));
    }
    let vmms = both_vmms(utsuwa, qemu);
    let runs = args.runs.unwrap_or(5);
    let cases = net::FRAMES
        .iter()
        .flat_map(|&frame| net::MODES.map(|irq| net::Case { frame, irq }))
        .collect();
    let setup = net::Setup {
        runs,
        frames: args.frames,
        timeout: Duration::from_secs(args.timeout.max(60)),
        vmms,
        elf: guest.elf.clone(),
        cases,
    };
    let mut env = environment(root, utsuwa, qemu, guest);
    let date = report::utc_now();
    let series = net::run(&setup);
    let callgrind = with_callgrind(args, &mut env, |cg| net::callgrind(&setup, cg));
    env.push(("load average after".into(), first_line("/proc/loadavg")));
    let ctx = net::report::Context {
        date,
        runs,
        frames: args.frames,
        timeout_s: setup.timeout.as_secs(),
        environment: env,
        notes: notes.to_vec(),
        callgrind,
        callgrind_runs: args.callgrind_runs,
    };
    let (md, json) = net::report::render(&ctx, &series);
    report::publish(out, "net", &md, &json)
}

fn run_vsock(
    args: &Args,
    root: &Path,
    utsuwa: &Path,
    qemu: Option<&Path>,
    guest: &guest::Guest,
    notes: &[String],
    out: &Path,
) -> Result<(), String> {
    let mut vmms = vec![boot::Vmm::Utsuwa(utsuwa.to_path_buf())];
    let mut notes = notes.to_vec();
    let qemu_missing = match (qemu, vsock::vhost_missing()) {
        (Some(q), None) => {
            vmms.push(boot::Vmm::Qemu(q.to_path_buf()));
            None
        }
        (Some(_), Some(why)) => {
            eprintln!(
                "[vsock] QEMU left out: vhost-vsock-pci needs {}",
                vsock::VHOST_VSOCK
            );
            Some(why)
        }
        (None, Some(why)) => Some(why),
        (None, None) => {
            notes.push("QEMU not measured: no QEMU binary (see above).".into());
            None
        }
    };
    let runs = args.runs.unwrap_or(5);
    let bytes = args.vsock_mib << 20;
    let longest = bytes.max(vsock::CG_LARGE_MIB << 20);
    eprintln!("[vsock] making {} MiB of pattern", longest >> 20);
    let setup = vsock::Setup {
        runs,
        bytes,
        timeout: Duration::from_secs(args.timeout.max(60)),
        vmms,
        elf: guest.elf.clone(),
        cases: vsock::PKTS.map(|pkt| vsock::Case { pkt }).to_vec(),
        pattern: std::sync::Arc::new(vsock::peer::pattern(longest as usize)),
    };
    let mut env = environment(root, utsuwa, qemu, guest);
    env.push((
        "vhost-vsock".into(),
        qemu_missing
            .clone()
            .unwrap_or_else(|| vsock::VHOST_VSOCK.into()),
    ));
    let date = report::utc_now();
    let series = vsock::run(&setup);
    let callgrind = with_callgrind(args, &mut env, |cg| vsock::callgrind(&setup, cg));
    env.push(("load average after".into(), first_line("/proc/loadavg")));
    let ctx = vsock::report::Context {
        date,
        runs,
        bytes,
        timeout_s: setup.timeout.as_secs(),
        environment: env,
        notes,
        qemu_missing,
        callgrind,
        callgrind_runs: args.callgrind_runs,
    };
    let (md, json) = vsock::report::render(&ctx, &series);
    report::publish(out, "vsock", &md, &json)
}

/// The workspace root: this package's parent directory.
fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// `--utsuwa PATH`, or the release binary, built first if it is missing.
fn utsuwa_binary(root: &Path, given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(path) = given {
        return if path.exists() {
            Ok(path)
        } else {
            Err(format!("--utsuwa {}: no such file", path.display()))
        };
    }
    let path = root.join("target").join("release").join("utsuwa");
    if !path.exists() {
        eprintln!(
            "[bench] {} missing: cargo build --release -p utsuwa",
            path.display()
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(root)
            .args(["build", "--release", "-p", "utsuwa"])
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() || !path.exists() {
            return Err(format!("building utsuwa failed ({status})"));
        }
    }
    Ok(path)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.lines().next().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// What the report records about the host, the binaries and the guest.
fn environment(
    root: &Path,
    utsuwa: &Path,
    qemu: Option<&Path>,
    guest: &guest::Guest,
) -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kvm = if Path::new("/sys/module/kvm_pvm").exists() {
        "PVM (kvm_pvm: KVM in software)"
    } else if Path::new("/sys/module/kvm_intel").exists()
        || Path::new("/sys/module/kvm_amd").exists()
    {
        "hardware (kvm_intel/kvm_amd)"
    } else {
        "unknown"
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let root_s = root.to_string_lossy();
    let rev = proc::output_of("git", &["-C", &root_s, "rev-parse", "--short", "HEAD"])
        .unwrap_or_default();
    let dirty = proc::output_of(
        "git",
        &[
            "-C",
            &root_s,
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_some_and(|s| !s.is_empty());
    let u = utsuwa.to_string_lossy();
    let mut env: Vec<(String, String)> = vec![
        (
            "host kernel".into(),
            first_line("/proc/sys/kernel/osrelease"),
        ),
        ("CPU".into(), format!("{cpu} ({cores} usable)")),
        ("KVM".into(), kvm.into()),
        ("load average before".into(), first_line("/proc/loadavg")),
        (
            "utsuwa".into(),
            format!(
                "{u} ({})",
                proc::output_of(&u, &["--version"]).unwrap_or_default()
            ),
        ),
        (
            "utsuwa source".into(),
            format!("{rev}{}", if dirty { " + uncommitted changes" } else { "" }),
        ),
    ];
    if let Some(q) = qemu {
        let q = q.to_string_lossy();
        let version = proc::output_of(&q, &["--version"]).unwrap_or_default();
        env.push((
            "QEMU".into(),
            format!("{q} ({})", version.lines().next().unwrap_or("")),
        ));
    }
    env.push(("guest ELF".into(), guest.elf.display().to_string()));
    env.push(("guest bzImage".into(), guest.bzimage.display().to_string()));
    env
}
