//! The `blk` benchmark: the probe's `bench` operation (sequential write
//! and read in 64 KiB requests, then 4 KiB random reads, 16 in flight) on
//! one virtio-blk disk backed by the same raw image, under utsuwa and QEMU
//! microvm alternately, in both interrupt modes and both cache modes. The
//! guest reports what it saw (MB/s, IOPS); the harness reads the VMM's
//! CPU time from `/proc` around the benchmark (`cpu`), and counts the
//! VMM's own instructions per request under callgrind (`callgrind`).

pub mod callgrind;
pub mod cpu;
pub mod report;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::alternate;
use crate::boot::{self, Vmm};
use crate::guest;
use crate::proc::{self, ThreadCpu, Timed};

/// Size of the disk image, and of the region the benchmark covers (all of it).
pub const IMAGE_MIB: u64 = 256;
pub const BENCH_MIB: u64 = 256;
/// Requests in flight, and the size of a sequential request.
pub const QD: u64 = 16;
pub const REQ_KIB: u64 = 64;
/// Random 4 KiB reads per run.
pub const IOS: u64 = 10_000;
/// Pattern seed the harness fills the image with (the probe's pattern,
/// `guests/probe/README.md`, so `probe.blk_ops=verify probe.blk_seed=1`
/// could check a fresh image).
pub const IMAGE_SEED: u64 = 1;
/// The probe's interrupt modes (`probe.blk_irq`).
pub const MODES: [&str; 2] = ["msix", "poll"];

/// How the VMM opens the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Through the host page cache (utsuwa's default; QEMU `cache=writeback`).
    Writeback,
    /// O_DIRECT (utsuwa `cache=none`; QEMU `cache=none`).
    None,
}

impl Cache {
    pub fn name(self) -> &'static str {
        match self {
            Cache::Writeback => "writeback",
            Cache::None => "none",
        }
    }
}

/// One configuration both VMMs run.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub cache: Cache,
    pub irq: &'static str,
}

/// Sequential requests of each direction, the FLUSH after the write,
/// and the random reads: the requests one `bench` issues.
pub fn requests(mib: u64, ios: u64) -> u64 {
    2 * (mib * 1024 / REQ_KIB) + 1 + ios
}

/// The guest plan of a `bench` over `mib` MiB with `ios` random reads.
pub fn bench_plan(mib: u64, ios: u64, irq: &str, exit: &str) -> String {
    format!(
        "probe.checks=blk probe.blk_ops=bench probe.blk_bench={mib} probe.blk_bench_ios={ios} \
         probe.blk_qd={QD} probe.blk_req_kib={REQ_KIB} probe.blk_irq={irq} probe.exit={exit}"
    )
}

/// The command that boots the probe with `plan` and the image as its
/// one virtio-blk disk.
pub fn command(vmm: &Vmm, kernel: &Path, image: &Path, cache: Cache, plan: &str) -> Command {
    let case = boot::Case {
        name: "blk",
        image: boot::Image::PvhElf,
        cpus: 1,
    };
    let mut cmd = vmm.command(&case, kernel, plan);
    let img = image.to_string_lossy();
    match vmm {
        Vmm::Utsuwa(_) => {
            let mut disk = format!("path={img}");
            if cache == Cache::None {
                disk.push_str(",cache=none");
            }
            cmd.arg("--disk").arg(disk);
        }
        Vmm::Qemu(_) => {
            // Thread names (`CPU 0/KVM`, `worker`, ...) for the per-thread
            // CPU table; nothing else changes.
            cmd.args(["-name", "utsuwa-bench,debug-threads=on"]);
            let drive = format!("file={img},if=none,id=d0,format=raw,cache={}", cache.name());
            cmd.args(["-drive", &drive]);
            cmd.args(["-device", "virtio-blk-pci,drive=d0,disable-legacy=on"]);
        }
    }
    cmd
}

/// What the benchmark runs on.
pub struct Setup {
    pub runs: usize,
    pub timeout: Duration,
    pub vmms: Vec<Vmm>,
    pub elf: PathBuf,
    pub image: PathBuf,
    pub cases: Vec<Case>,
    /// The host block device under the image, if it has one.
    pub disk: Option<HostDisk>,
}

/// The guest's `PROBE blk-bench` line.
#[derive(Debug, Clone, Default)]
pub struct Bench {
    pub seq_read_mbps: f64,
    pub seq_write_mbps: f64,
    pub randread_iops: f64,
    pub seq_read_us: f64,
    pub seq_write_us: f64,
    pub flush_us: f64,
    pub randread_us: f64,
    pub irqs: f64,
    pub queues: f64,
    pub line: String,
}

impl Bench {
    pub fn parse(line: &str) -> Result<Bench, String> {
        let get = |key: &str| guest::number(line, key);
        Ok(Bench {
            seq_read_mbps: get("seq_read_mbps")?,
            seq_write_mbps: get("seq_write_mbps")?,
            randread_iops: get("randread_iops")?,
            seq_read_us: get("seq_read_us")?,
            seq_write_us: get("seq_write_us")?,
            flush_us: get("flush_us")?,
            randread_us: get("randread_us")?,
            irqs: get("irqs")?,
            queues: get("queues")?,
            line: line.to_string(),
        })
    }
}

/// One run of one VMM.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub run: usize,
    pub bench: Option<Bench>,
    /// Every thread's CPU time when the guest finished initialising the
    /// disk, and when its `PROBE blk-bench` line arrived.
    pub cpu_start: Vec<ThreadCpu>,
    pub cpu_end: Vec<ThreadCpu>,
    /// Wall time between the two readings, ms.
    pub between_ms: f64,
    /// `/proc/PID/stat` of the whole process at the end: (utime, stime,
    /// gtime) in ticks since it started.
    pub process_end: Option<(u64, u64, u64)>,
    /// `tsc_khz=` the guest calibrated (its clock for MB/s and IOPS).
    pub tsc_khz: Option<f64>,
    /// What the host block device under the image did between the two
    /// CPU readings.
    pub disk_io: Option<DiskIo>,
    pub error: Option<String>,
}

alternate::sample!(Sample);

/// Everything one VMM produced for one case.
pub type Series = alternate::Series<Case, Sample>;

const INIT_VERDICT: &str = "PROBE-CHECK blk ";
const BENCH_LINE: &str = "PROBE blk-bench ";
const BENCH_VERDICT: &str = "PROBE-CHECK blk-bench ";
const FATAL: &str = "PROBE-FATAL";

/// One run with a halting guest: CPU readings around the benchmark, the
/// guest's figures, then the VMM is killed.
fn timed_run(setup: &Setup, vmm: &Vmm, case: &Case, run: usize) -> Sample {
    let mut sample = Sample {
        run,
        ..Default::default()
    };
    if let Err(e) = timed_run_into(setup, vmm, case, &mut sample) {
        sample.error = Some(e);
    }
    sample
}

fn timed_run_into(setup: &Setup, vmm: &Vmm, case: &Case, s: &mut Sample) -> Result<(), String> {
    set_page_cache(&setup.image, case.cache)?;
    let plan = bench_plan(BENCH_MIB, IOS, case.irq, "halt");
    let mut cmd = command(vmm, &setup.elf, &setup.image, case.cache, &plan);
    let mut child = Timed::spawn(&mut cmd)?;
    let pid = child.pid();
    let deadline = child.start + setup.timeout;
    let wait = |child: &mut Timed, prefix: &str| -> Result<String, String> {
        match child.wait_line(|l| l.starts_with(prefix) || l.starts_with(FATAL), deadline) {
            Ok((_, line)) if line.starts_with(FATAL) => {
                Err(format!("guest: {line} ({})", child.finish_and_tail(4)))
            }
            Ok((_, line)) => Ok(line),
            Err(why) => Err(format!(
                "no '{}': {} ({})",
                prefix.trim(),
                match why {
                    proc::LineWait::Closed => "output ended",
                    proc::LineWait::Timeout => "time limit: killed",
                },
                child.finish_and_tail(4)
            )),
        }
    };
    let init = wait(&mut child, INIT_VERDICT)?;
    let t0 = Instant::now();
    s.cpu_start = proc::thread_cpu(pid)?;
    let disk0 = setup.disk.as_ref().and_then(HostDisk::read);
    if !init.starts_with("PROBE-CHECK blk pass") {
        return Err(format!("disk initialisation: {init}"));
    }
    let line = wait(&mut child, BENCH_LINE)?;
    s.cpu_end = proc::thread_cpu(pid)?;
    let disk1 = setup.disk.as_ref().and_then(HostDisk::read);
    s.process_end = proc::process_cpu(pid).ok();
    if let (Some(a), Some(b)) = (disk0, disk1) {
        s.disk_io = Some(DiskIo::between(&a, &b));
    }
    s.between_ms = t0.elapsed().as_secs_f64() * 1000.0;
    s.tsc_khz = child.seen().iter().find_map(|l| {
        l.strip_prefix("PROBE clock ")?
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("tsc_khz="))?
            .parse()
            .ok()
    });
    s.bench = Some(Bench::parse(&line)?);
    let verdict = wait(&mut child, BENCH_VERDICT)?;
    child.kill();
    if !verdict.starts_with("PROBE-CHECK blk-bench pass") {
        return Err(verdict);
    }
    Ok(())
}

/// Runs every case `runs` times per VMM, VMMs alternating (the first
/// one swapped every run), printing progress to stderr.
pub fn run(setup: &Setup) -> Vec<Series> {
    let progress = |vmm: &Vmm, case: &Case, s: &Sample| {
        let shown = match (&s.error, &s.bench) {
            (Some(e), _) => format!("FAILED: {e}"),
            (None, Some(b)) => {
                let c = cpu::totals(&cpu::usage(&s.cpu_start, &s.cpu_end));
                format!(
                    "read {:.0} MB/s, write {:.0} MB/s, randread {:.0} IOPS; \
                     VMM cpu {:.0} ms user + {:.0} ms sys (guest {:.0} ms) in {:.0} ms",
                    b.seq_read_mbps,
                    b.seq_write_mbps,
                    b.randread_iops,
                    c.user_ms,
                    c.sys_ms,
                    c.guest_ms,
                    s.between_ms
                )
            }
            _ => "?".into(),
        };
        format!(
            "{} cache={} irq={}: {shown}",
            vmm.name(),
            case.cache.name(),
            case.irq
        )
    };
    alternate::run(
        "blk",
        setup.runs,
        &setup.vmms,
        &setup.cases,
        |vmm, case, run| timed_run(setup, vmm, case, run),
        progress,
    )
}

// ---- the host's block device ----

/// The block device a file lives on, and its statistics file.
#[derive(Debug, Clone)]
pub struct HostDisk {
    pub name: String,
    stat: PathBuf,
}

impl HostDisk {
    /// The device of the file system holding `path`, when it is a block
    /// device with `/sys/dev/block/MAJ:MIN/stat` (not tmpfs, overlay, ...).
    pub fn of(path: &Path) -> Option<HostDisk> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(path).ok()?.dev();
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        let dir = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        let stat = dir.join("stat");
        let name = std::fs::read_to_string(dir.join("uevent"))
            .ok()
            .and_then(|u| {
                u.lines()
                    .find_map(|l| l.strip_prefix("DEVNAME="))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| format!("{major}:{minor}"));
        let disk = HostDisk { name, stat };
        disk.read().is_some().then_some(disk)
    }

    /// The fields of the `stat` file (Documentation/block/stat.rst).
    fn read(&self) -> Option<Vec<u64>> {
        let text = std::fs::read_to_string(&self.stat).ok()?;
        let v: Vec<u64> = text
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        (v.len() >= 11).then_some(v)
    }
}

/// What a block device completed between two readings: I/Os, I/Os the
/// block layer merged into others before issuing them, and 512-byte
/// sectors. Everything on the device counts, not just the VMM's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskIo {
    pub reads: u64,
    pub reads_merged: u64,
    pub read_sectors: u64,
    pub writes: u64,
    pub writes_merged: u64,
    pub write_sectors: u64,
}

impl DiskIo {
    fn between(a: &[u64], b: &[u64]) -> DiskIo {
        let d = |i: usize| b[i].saturating_sub(a[i]);
        DiskIo {
            reads: d(0),
            reads_merged: d(1),
            read_sectors: d(2),
            writes: d(4),
            writes_merged: d(5),
            write_sectors: d(6),
        }
    }
}

// ---- the image ----

/// A scratch directory for the image and callgrind's files, removed
/// when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(base: &Path) -> Result<Scratch, String> {
        let dir = base.join(format!("utsuwa-bench-blk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Word `n` (bytes `8n..8n+8`, little-endian) of the probe's pattern of
/// `seed`: the disk image here, and the vsock benchmark's streams.
pub fn pattern_word(seed: u64, n: u64) -> u64 {
    mix64(seed.wrapping_add((n + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes `mib` MiB of the probe's pattern of `seed` (every block
/// allocated, nothing sparse), fsyncs it, and reads it back once so that
/// the host page cache holds it.
pub fn make_image(path: &Path, mib: u64, seed: u64) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = File::create(path).map_err(err)?;
    let mut buf = vec![0u8; 1 << 20];
    for chunk in 0..mib {
        for (i, word) in buf.chunks_exact_mut(8).enumerate() {
            let w = pattern_word(seed, chunk * (1 << 17) + i as u64);
            word.copy_from_slice(&w.to_le_bytes());
        }
        f.write_all(&buf).map_err(err)?;
    }
    f.sync_all().map_err(err)?;
    drop(f);
    let mut f = File::open(path).map_err(err)?;
    while f.read(&mut buf).map_err(err)? > 0 {}
    Ok(())
}

/// The type of the file system `path` is on (the longest mount point of
/// `/proc/mounts` that contains it), e.g. `ext4`.
pub fn file_system(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (mnt, kind) = (*f.get(1)?, *f.get(2)?);
            path.starts_with(mnt).then(|| (mnt.len(), kind.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, kind)| kind)
}

/// Puts the image in the page-cache state a run of `cache` starts from:
/// all of it cached and clean for `writeback`, none of it for `none`.
pub fn set_page_cache(path: &Path, cache: Cache) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = File::open(path).map_err(err)?;
    f.sync_data().map_err(err)?;
    match cache {
        Cache::Writeback => {
            let mut buf = vec![0u8; 1 << 20];
            while f.read(&mut buf).map_err(err)? > 0 {}
        }
        Cache::None => {
            use std::os::fd::AsRawFd;
            // SAFETY: posix_fadvise only reads its arguments; the fd is open.
            let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            if rc != 0 {
                return Err(err(std::io::Error::from_raw_os_error(rc)));
            }
        }
    }
    Ok(())
}

/// Whether the file system under `path` takes O_DIRECT: opens it so and
/// reads its first 4 KiB into an aligned buffer.
pub fn direct_io_works(path: &Path) -> Result<(), String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("open with O_DIRECT: {e}"))?;
    let mut buf = vec![0u8; 8192];
    let off = buf.as_ptr().align_offset(4096);
    let aligned = &mut buf[off..off + 4096];
    use std::os::unix::fs::FileExt;
    f.read_exact_at(aligned, 0)
        .map_err(|e| format!("O_DIRECT read: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::MEM_MIB;

    #[test]
    fn counts_requests() {
        // 4096 writes + 4096 reads of 64 KiB, one FLUSH, 10000 random reads.
        assert_eq!(requests(256, 10_000), 18_193);
        assert_eq!(requests(16, 2000), 2513);
    }

    #[test]
    fn parses_the_bench_line() {
        let b = Bench::parse(
            "PROBE blk-bench disk=00:01.0 seq_read_mbps=880 seq_write_mbps=1850 randread_iops=33237 \
             qd=16 mib=256 req_kib=64 ios=10000 queues=1 irq=msix seq_read_us=304791 \
             seq_write_us=145022 flush_us=129011 randread_us=300866 irqs=1138",
        )
        .unwrap();
        assert_eq!(b.seq_read_mbps, 880.0);
        assert_eq!(b.randread_iops, 33237.0);
        assert_eq!(b.flush_us, 129011.0);
        assert_eq!(b.irqs, 1138.0);
        assert!(Bench::parse("PROBE blk-bench seq_read_mbps=1").is_err());
    }

    #[test]
    fn image_holds_the_pattern() {
        // First words of the pattern of seed 1, as tests/support/blk.rs computes them.
        let dir = std::env::temp_dir().join(format!("utsuwa-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("p.img");
        make_image(&img, 1, 1).unwrap();
        let bytes = std::fs::read(&img).unwrap();
        assert_eq!(bytes.len(), 1 << 20);
        let w = |n: u64| mix64(1u64.wrapping_add((n + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        assert_eq!(bytes[..8], w(0).to_le_bytes());
        assert_eq!(bytes[(1 << 20) - 8..], w((1 << 17) - 1).to_le_bytes());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn commands_name_the_disk() {
        let img = Path::new("/tmp/x.img");
        let u = command(
            &Vmm::Utsuwa("u".into()),
            Path::new("k"),
            img,
            Cache::None,
            "p",
        );
        let args: Vec<String> = u.get_args().map(|a| a.to_string_lossy().into()).collect();
        assert!(args.ends_with(&["--disk".into(), "path=/tmp/x.img,cache=none".into()]));
        let q = command(
            &Vmm::Qemu("q".into()),
            Path::new("k"),
            img,
            Cache::Writeback,
            "p",
        );
        let args: Vec<String> = q.get_args().map(|a| a.to_string_lossy().into()).collect();
        assert!(args.contains(&"file=/tmp/x.img,if=none,id=d0,format=raw,cache=writeback".into()));
        assert!(args.contains(&"virtio-blk-pci,drive=d0,disable-legacy=on".into()));
        assert!(args.contains(&format!("{MEM_MIB}M")));
    }
}
