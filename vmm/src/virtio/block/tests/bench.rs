//! Throughput of the device code (parsing, engines, completion) on a
//! 256 MiB image, io_uring against sync, buffered and O_DIRECT. Run by
//! hand, in release mode:
//!
//! ```text
//! cargo test -p vmm --lib --release virtio::block::tests::bench -- --ignored --nocapture
//! ```
//!
//! `UTSUWA_BENCH_DIR` picks the directory of the image (default: the temp
//! directory). Requests are posted `depth` at a time, as a guest with that
//! queue depth would, and each batch is served to completion.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_memory::Bytes;

use super::*;

const IMAGE: u64 = 256 << 20;

struct Bench {
    rig: Rig,
    heads: Vec<u16>,
    headers: Vec<GuestAddress>,
    statuses: Vec<GuestAddress>,
}

impl Bench {
    fn new(path: &Path, direct: bool, engine: Engine, depth: usize, len: u32) -> Bench {
        let mut cfg = disk_config(path, false);
        cfg.direct = direct;
        let mut opts = RigOptions::new(engine);
        opts.mem_size = (8 << 20) + depth * (len as usize + 8192);
        let mut rig = Rig::with(&cfg, opts);
        assert!(opts_engine_ok(&rig, engine));
        let (mut heads, mut headers, mut statuses) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..depth {
            let h = rig.drv.alloc(16);
            let data = rig.drv.alloc(u64::from(len));
            let s = rig.drv.alloc(1);
            heads.push(
                rig.drv
                    .chain(&[(h, 16, false), (data, len, true), (s, 1, true)]),
            );
            headers.push(h);
            statuses.push(s);
        }
        Bench {
            rig,
            heads,
            headers,
            statuses,
        }
    }

    /// Posts one request per sector (at most `depth`), serves them all.
    fn batch(&mut self, req_type: u32, sectors: &[u64]) {
        for (i, sector) in sectors.iter().enumerate() {
            self.rig
                .drv
                .mem
                .write_obj(req_type, self.headers[i])
                .unwrap();
            self.rig
                .drv
                .mem
                .write_obj(*sector, self.headers[i].unchecked_add(8))
                .unwrap();
            self.rig
                .drv
                .mem
                .write_obj(0xffu8, self.statuses[i])
                .unwrap();
            self.rig.drv.make_available(self.heads[i]);
        }
        self.rig.run();
        for s in &self.statuses[..sectors.len()] {
            assert_eq!(
                self.rig.drv.mem.read_obj::<u8>(*s).unwrap(),
                VIRTIO_BLK_S_OK
            );
        }
    }
}

fn opts_engine_ok(rig: &Rig, engine: Engine) -> bool {
    engine != Engine::IoUring || rig.handler.engine() == Engine::IoUring
}

/// Flips the data descriptor (index 1 of each chain) to device-readable.
fn make_writes(b: &mut Bench, len: u32) {
    for i in 0..b.heads.len() {
        let data = b.headers[i].unchecked_add(4096);
        let head = b.heads[i];
        b.rig
            .drv
            .write_desc(head + 1, data.0, len, F_NEXT, head + 2);
        b.rig
            .drv
            .mem
            .write_slice(&vec![0x5a; len as usize], data)
            .unwrap();
    }
}

/// A 256 MiB image in `dir`, written and synced.
fn fresh_image(dir: &Path) -> TempFile {
    let img = TempFile::new_in(dir).unwrap();
    {
        let mut f = std::fs::File::create(img.as_path()).unwrap();
        let chunk: Vec<u8> = (0..1u64 << 20).map(pattern).collect();
        for _ in 0..IMAGE >> 20 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    img
}

/// Reads the image once, so that buffered tests start from a hot cache.
fn warm(path: &Path) {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf).unwrap() > 0 {}
}

/// 1 MiB requests at queue depth 8 over the whole image, `passes` times.
fn sequential(path: &Path, direct: bool, engine: Engine, write: bool, passes: u32) -> f64 {
    const LEN: u32 = 1 << 20;
    let depth = 8;
    let mut b = Bench::new(path, direct, engine, depth, LEN);
    if write {
        make_writes(&mut b, LEN);
    }
    let req_type = if write {
        VIRTIO_BLK_T_OUT
    } else {
        VIRTIO_BLK_T_IN
    };
    let per_pass = IMAGE / u64::from(LEN);
    let start = Instant::now();
    let mut bytes = 0u64;
    for _ in 0..passes {
        let mut n = 0;
        while n < per_pass {
            let sectors: Vec<u64> = (n..(n + depth as u64).min(per_pass))
                .map(|i| i * u64::from(LEN) / 512)
                .collect();
            b.batch(req_type, &sectors);
            n += sectors.len() as u64;
            bytes += sectors.len() as u64 * u64::from(LEN);
        }
    }
    bytes as f64 / start.elapsed().as_secs_f64() / f64::from(1 << 20)
}

/// Drops the image from the page cache.
fn evict(path: &Path) {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap(); // dirty pages cannot be dropped
                           // SAFETY: fadvise on our own fd, no memory involved.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
}

/// 4 KiB random reads at queue depth 32 for 2 s; `cold`: from an evicted
/// page cache, 4096 reads only (so that most of them miss).
fn random_reads(path: &Path, direct: bool, engine: Engine, cold: bool) -> f64 {
    let depth = 32;
    let mut b = Bench::new(path, direct, engine, depth, 4096);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let blocks = IMAGE / 4096;
    if cold {
        evict(path);
    }
    let start = Instant::now();
    let mut done = 0u64;
    while if cold {
        done < 4096
    } else {
        start.elapsed() < Duration::from_secs(2)
    } {
        let sectors: Vec<u64> = (0..depth)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % blocks) * 8
            })
            .collect();
        b.batch(VIRTIO_BLK_T_IN, &sectors);
        done += depth as u64;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

#[test]
#[ignore = "measurement, run by hand"]
fn throughput() {
    let dir = std::env::var_os("UTSUWA_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!("images: 256 MiB in {}", dir.display());
    println!("rd/wr: 1 MiB sequential, depth 8, hot cache; 4k: random reads, depth 32;");
    println!("cold: after evicting the image from the page cache");
    println!(
        "{:<8} {:<8} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "engine", "cache", "rd MiB/s", "wr MiB/s", "4k IOPS", "cold rd", "cold 4k"
    );
    for direct in [false, true] {
        for engine in [Engine::Sync, Engine::IoUring] {
            // A fresh image each time: page-cache state left by a previous
            // run skews the next one by 2x.
            let img = fresh_image(&dir);
            warm(img.as_path());
            let r = sequential(img.as_path(), direct, engine, false, 3);
            let w = sequential(img.as_path(), direct, engine, true, 3);
            let iops = random_reads(img.as_path(), direct, engine, false);
            evict(img.as_path());
            let cold_r = sequential(img.as_path(), direct, engine, false, 1);
            let cold = random_reads(img.as_path(), direct, engine, true);
            println!(
                "{:<8} {:<8} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
                if engine == Engine::Sync {
                    "sync"
                } else {
                    "io_uring"
                },
                if direct { "O_DIRECT" } else { "buffered" },
                r,
                w,
                iops,
                cold_r,
                cold
            );
        }
    }
}
