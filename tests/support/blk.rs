//! Shared by the block tests (`blk.rs` under utsuwa, `blk_qemu.rs` under
//! QEMU): the guest's data pattern and checksum, scratch images, the `blk`
//! plans both VMMs run, reading the probe's `PROBE blk…` facts, a run that
//! is SIGKILLed at a marker, and what the host sees of an image.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Outcome;

/// The longest any one VMM run may take.
pub const LIMIT: Duration = Duration::from_secs(60);
/// The probe's two ways of waiting for completions (`probe.blk_irq`).
pub const MODES: [&str; 2] = ["msix", "poll"];
pub const SECTOR: u64 = 512;
pub const MIB: u64 = 1 << 20;

// ---- the guest's data pattern and checksum (guests/probe/README.md, "blk data") ----

pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The pattern of `seed` at disk byte `offset` (8-aligned), `len` bytes.
pub fn pattern(seed: u64, offset: u64, len: u64) -> Vec<u8> {
    assert_eq!(offset % 8, 0);
    assert_eq!(len % 8, 0);
    (offset / 8..(offset + len) / 8)
        .flat_map(|n| {
            mix64(seed.wrapping_add((n + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))).to_le_bytes()
        })
        .collect()
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv_update(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv_update(FNV_OFFSET, bytes)
}

/// FNV-1a 64 of a whole file, read in pieces.
pub fn file_fnv(path: &Path) -> u64 {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    let mut h = FNV_OFFSET;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h;
        }
        h = fnv_update(h, &buf[..n]);
    }
}

/// As the probe prints checksums: 16 lower-case hex digits.
pub fn hex(v: u64) -> String {
    format!("{v:016x}")
}

// ---- images ----

/// A scratch directory for one test, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    /// `<tmp>/utsuwa-<suite>-<pid>-<test>`, empty.
    pub fn new(suite: &str, test: &str) -> Scratch {
        Scratch::new_in(&std::env::temp_dir(), suite, test)
    }

    /// The same under `base` instead of the temporary directory.
    pub fn new_in(base: &Path, suite: &str, test: &str) -> Scratch {
        let dir = base.join(format!("utsuwa-{suite}-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// An image of `size` bytes holding the pattern of `seed` (None: zeros, sparse).
    pub fn image(&self, name: &str, size: u64, seed: Option<u64>) -> PathBuf {
        let path = self.0.join(name);
        match seed {
            Some(seed) => std::fs::write(&path, pattern(seed, 0, size)).unwrap(),
            None => {
                let f = File::create(&path).unwrap();
                f.set_len(size).unwrap();
            }
        }
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `len` bytes of the file at `offset`.
pub fn read_range(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset)
        .unwrap_or_else(|e| panic!("read {len} bytes at {offset} of {}: {e}", path.display()));
    buf
}

/// 512-byte blocks the file system has allocated to the file (`st_blocks`).
pub fn allocated_blocks(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks()
}

// ---- disks and plans, the same for both VMMs ----

/// One virtio-blk disk, as either VMM is given it.
#[derive(Clone, Debug)]
pub struct Drive<'a> {
    pub path: &'a Path,
    /// What GET_ID answers (empty: none given).
    pub serial: &'a str,
    pub readonly: bool,
    /// Bypass the host page cache (O_DIRECT).
    pub cache_none: bool,
    /// QEMU only: `discard=unmap` (utsuwa always deallocates).
    pub discard_unmap: bool,
    /// QEMU only: `num-queues` (utsuwa gives one queue per vCPU).
    pub queues: Option<u32>,
}

impl<'a> Drive<'a> {
    pub fn new(path: &'a Path, serial: &'a str) -> Drive<'a> {
        Drive {
            path,
            serial,
            readonly: false,
            discard_unmap: false,
            cache_none: false,
            queues: None,
        }
    }

    /// utsuwa's `--disk` value.
    pub fn utsuwa_arg(&self) -> String {
        let path = self.path.to_str().expect("UTF-8 image path");
        assert!(
            !path.contains(','),
            "--disk cannot take a path with a comma"
        );
        let mut arg = format!("path={path}");
        if !self.serial.is_empty() {
            arg.push_str(&format!(",serial={}", self.serial));
        }
        if self.readonly {
            arg.push_str(",readonly=on");
        }
        if self.cache_none {
            arg.push_str(",cache=none");
        }
        arg
    }
}

/// A `blk` test plan: `probe.KEY=VALUE` tokens after `probe.checks=blk` and
/// the interrupt mode. The scenarios both VMMs run are built here, so
/// that the two suites drive the same operations.
#[derive(Clone, Debug, Default)]
pub struct Plan(Vec<(String, String)>);

impl Plan {
    /// `probe.blk_ops=OPS` and nothing else.
    pub fn ops(ops: &str) -> Plan {
        Plan::default().with("blk_ops", ops)
    }

    /// Adds `probe.KEY=VALUE`.
    pub fn with(mut self, key: &str, value: impl fmt::Display) -> Plan {
        self.0.push((key.to_string(), value.to_string()));
        self
    }

    /// The guest command line in interrupt mode `mode`.
    pub fn cmdline(&self, mode: &str) -> String {
        format!("probe.checks=blk probe.blk_irq={mode} {self}")
    }

    /// `verify`: the whole disk holds the pattern of `seed`.
    pub fn verify(seed: u64) -> Plan {
        Plan::ops("verify").with("blk_seed", format!("{seed:#x}"))
    }

    /// `write`: `mib` MiB of the pattern of `seed` at `lba`.
    pub fn write(lba: u64, mib: u64, seed: u64) -> Plan {
        Plan::ops("write")
            .with("blk_write_lba", lba)
            .with("blk_write_mib", mib)
            .with("blk_write_seed", format!("{seed:#x}"))
    }

    /// `write` of 8 MiB (default seed 2 at sector 0) with 32 requests of
    /// 16 KiB in flight, spread over the device's queues.
    pub fn multi_queue() -> Plan {
        Plan::ops("write")
            .with("blk_write_mib", 8)
            .with("blk_qd", 32)
            .with("blk_req_kib", 16)
    }

    /// `verify,ro` on a read-only disk holding the pattern of `seed`.
    pub fn read_only(seed: u64) -> Plan {
        Plan::ops("verify,ro").with("blk_seed", seed)
    }

    /// `durable`: `mib` MiB of the pattern of `seed` at `lba`, FLUSH, then
    /// `PROBE blk flushed` and a halt.
    pub fn durable(lba: u64, mib: u64, seed: u64) -> Plan {
        Plan::ops("durable")
            .with("blk_write_lba", lba)
            .with("blk_write_mib", mib)
            .with("blk_write_seed", format!("{seed:#x}"))
    }

    /// `discard` over `sectors` at `lba` of a disk holding the pattern of
    /// `seed`; both halves must read back zeros.
    pub fn discard(lba: u64, sectors: u64, seed: u64) -> Plan {
        Plan::ops("discard")
            .with("blk_discard_lba", lba)
            .with("blk_discard_sectors", sectors)
            .with("blk_discard_zeroes", 1)
            .with("blk_write_seed", seed)
    }

    /// `ops` (with `reset` among them) on a disk holding the pattern of
    /// `seed`; the writes go to `write_lba` with `write_seed`.
    pub fn reset(ops: &str, seed: u64, write_lba: u64, write_seed: u64) -> Plan {
        Plan::ops(ops)
            .with("blk_seed", seed)
            .with("blk_write_lba", write_lba)
            .with("blk_write_seed", write_seed)
    }

    /// `bench` over `mib` MiB, 16 in flight, `ios` random reads.
    pub fn bench(mib: u64, ios: u64) -> Plan {
        Plan::default()
            .with("blk_bench", mib)
            .with("blk_qd", 16)
            .with("blk_bench_ios", ios)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "probe.{k}={v}")?;
        }
        Ok(())
    }
}

// ---- the probe's report ----

/// Every `PROBE <topic> k=v ...` line, as maps (tokens without `=` are skipped).
pub fn lines(stdout: &str, topic: &str) -> Vec<BTreeMap<String, String>> {
    let prefix = format!("PROBE {topic} ");
    stdout
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(&prefix))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// The one `PROBE <topic> ...` line (or the first), as a map.
pub fn line(out: &Outcome, topic: &str) -> BTreeMap<String, String> {
    lines(&out.stdout, topic)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no PROBE {topic} line\n{}", out.dump()))
}

/// The `PROBE blk disk=...` description lines (those with a serial).
pub fn disks(out: &Outcome) -> Vec<BTreeMap<String, String>> {
    lines(&out.stdout, "blk")
        .into_iter()
        .filter(|m| m.contains_key("serial"))
        .collect()
}

/// The `PROBE blk flushed ...` line of a `durable` run.
pub fn flushed(stdout: &str) -> Option<BTreeMap<String, String>> {
    lines(stdout, "blk flushed").into_iter().next()
}

// ---- a run watched line by line ----

/// What a run that was killed (or ended) left behind.
#[derive(Debug)]
pub struct Killed {
    /// Its stdout up to the kill.
    pub stdout: String,
    pub stderr: String,
    /// Whether the marker came (see [`run_until`]).
    pub found: bool,
    pub status: ExitStatus,
    pub elapsed: Duration,
}

impl Killed {
    pub fn dump(&self) -> String {
        format!(
            "status: {:?} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// A VMM process whose stdout is read line by line as it comes. Dropping
/// it SIGKILLs the process, so a failed assertion never leaves one behind.
pub struct Watched {
    child: Child,
    lines: mpsc::Receiver<String>,
    readers: Vec<JoinHandle<()>>,
    stderr: mpsc::Receiver<Vec<u8>>,
    stdout: String,
    found: bool,
    start: Instant,
    done: Option<ExitStatus>,
}

impl Watched {
    /// Starts `cmd` with no stdin, stdout and stderr piped.
    pub fn spawn(mut cmd: Command) -> Watched {
        let start = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the VMM");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let out_reader = std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let (etx, erx) = mpsc::channel();
        let err_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stderr.read_to_end(&mut s);
            let _ = etx.send(s);
        });
        Watched {
            child,
            lines: rx,
            readers: vec![out_reader, err_reader],
            stderr: erx,
            stdout: String::new(),
            found: false,
            start,
            done: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout until a line contains `marker` (true), or the output
    /// ends or [`LIMIT`] since the start passes (false).
    pub fn wait_for(&mut self, marker: &str) -> bool {
        let deadline = self.start + LIMIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.stdout.push_str(&l);
                    self.stdout.push('\n');
                    if l.contains(marker) {
                        self.found = true;
                        return true;
                    }
                }
                Err(_) => break,
            }
        }
        false
    }

    /// Stdout so far.
    pub fn stdout(&self) -> &str {
        &self.stdout
    }

    /// Whether the process has not exited (yet).
    pub fn running(&mut self) -> bool {
        if self.done.is_none() {
            self.done = self.child.try_wait().expect("try_wait");
        }
        self.done.is_none()
    }

    /// SIGKILLs the process (unless it ended already) and collects the rest.
    pub fn kill(mut self) -> Killed {
        self.stop();
        while let Ok(l) = self.lines.try_recv() {
            self.stdout.push_str(&l);
            self.stdout.push('\n');
        }
        let stderr = self.stderr.recv().unwrap_or_default();
        Killed {
            stdout: std::mem::take(&mut self.stdout),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            found: self.found,
            status: self.done.expect("waited"),
            elapsed: self.start.elapsed(),
        }
    }

    fn stop(&mut self) {
        if self.running() {
            let _ = self.child.kill(); // SIGKILL
            self.done = Some(self.child.wait().expect("wait after kill"));
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `cmd` until a stdout line contains `marker`, then SIGKILLs it
/// (at the latest after [`LIMIT`]). `found` says whether the marker came.
pub fn run_until(cmd: Command, marker: &str) -> Killed {
    let mut w = Watched::spawn(cmd);
    w.wait_for(marker);
    w.kill()
}
