//! utsuwa's virtio-pci / virtio-blk under the probe's driver: the `blk`
//! scenarios `blk_qemu.rs` runs against QEMU (the same plans, from
//! `support::blk`), in both interrupt modes (MSI-X and polling), checked
//! from the guest's report and from the image file on the host, plus what
//! only the VMM's side shows: durability across SIGKILL, deallocation,
//! image locking, O_DIRECT, and bad images.
//!
//! Each test works in its own scratch directory (removed afterwards); every
//! utsuwa run is killed after 60 s at the latest.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::blk::{
    allocated_blocks, disks, file_fnv, flushed, fnv1a64, hex, line, lines, pattern, read_range,
    run_until, Drive, Plan, Scratch, Watched, MIB, MODES, SECTOR,
};
use support::{assert_checks_pass, checks, probe, utsuwa_run, Outcome, UTSUWA};

const SUITE: &str = "blk";
const MEMORY: &str = "512M";

// ---- running utsuwa ----

fn args(cpus: u32, drives: &[Drive], cmdline: &str) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--kernel".into(),
        probe::probe_elf().to_str().unwrap().into(),
        "--cpus".into(),
        cpus.to_string(),
        "--memory".into(),
        MEMORY.into(),
        "--cmdline".into(),
        cmdline.into(),
    ];
    for d in drives {
        args.push("--disk".into());
        args.push(d.utsuwa_arg());
    }
    args
}

/// `utsuwa run` of the probe with `cpus` vCPUs (= queues per disk) and `drives`.
fn command(cpus: u32, drives: &[Drive], cmdline: &str) -> Command {
    let mut cmd = Command::new(UTSUWA);
    cmd.arg("run").args(args(cpus, drives, cmdline));
    cmd
}

/// Boots the probe with `cpus` vCPUs, `drives` and `plan` in interrupt `mode`.
fn run_on(cpus: u32, drives: &[Drive], mode: &str, plan: &Plan) -> Outcome {
    let args = args(cpus, drives, &plan.cmdline(mode));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = utsuwa_run(&args);
    eprintln!("[{mode}] {plan}: {:?}", out.elapsed);
    out
}

fn run(drives: &[Drive], mode: &str, plan: &Plan) -> Outcome {
    run_on(1, drives, mode, plan)
}

/// Every check in `expected` passed, nothing failed, the guest powered off
/// and utsuwa said so; and the device reported the used lengths right.
fn assert_passes(out: &Outcome, expected: &[&str]) {
    assert_checks_pass(out, expected);
    assert!(out.status.success(), "{}", out.dump());
    assert_eq!(
        out.stderr.lines().last(),
        Some("utsuwa: guest powered off"),
        "{}",
        out.dump()
    );
    let bad_len: Vec<_> = lines(&out.stdout, "blk")
        .into_iter()
        .filter(|m| m.contains_key("used_len_unexpected"))
        .collect();
    assert!(bad_len.is_empty(), "used.len mismatch: {bad_len:?}");
}

fn failed(out: &Outcome, check: &str) -> String {
    match checks(&out.stdout).get(check) {
        Some((false, detail)) => detail.clone(),
        other => panic!("{check} should have failed, got {other:?}\n{}", out.dump()),
    }
}

/// The open flags of utsuwa's descriptors on `image` (from /proc).
fn image_open_flags(pid: u32, image: &Path) -> Vec<i32> {
    let image = image.canonicalize().unwrap();
    let mut flags = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        if std::fs::read_link(entry.path()).ok().as_deref() != Some(image.as_path()) {
            continue;
        }
        let fd = entry.file_name().into_string().unwrap();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        let octal = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .expect("flags in fdinfo")
            .trim();
        flags.push(i32::from_str_radix(octal, 8).unwrap());
    }
    flags
}

/// Bytes each of utsuwa's block queue workers (threads `blk<N>-q<i>`)
/// has written (`wchar`), counting the io_uring helpers it started
/// (`iou-wrk-<its tid>`).
fn worker_writes(pid: u32) -> BTreeMap<String, u64> {
    let mut tasks = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = entry.unwrap().path();
        let tid = dir.file_name().unwrap().to_str().unwrap().to_string();
        let (Ok(comm), Ok(io)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("io")),
        ) else {
            continue; // gone meanwhile
        };
        let wchar: u64 = io
            .lines()
            .find_map(|l| l.strip_prefix("wchar:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("wchar in /proc/.../io");
        tasks.push((tid, comm.trim().to_string(), wchar));
    }
    tasks
        .iter()
        .filter(|(_, comm, _)| comm.starts_with("blk") && comm.contains("-q"))
        .map(|(tid, comm, wchar)| {
            let helper = format!("iou-wrk-{tid}");
            let helped: u64 = tasks
                .iter()
                .filter(|(_, c, _)| *c == helper)
                .map(|t| t.2)
                .sum();
            (comm.clone(), wchar + helped)
        })
        .collect()
}

/// (mtime, ctime) in nanoseconds.
fn times(path: &Path) -> (i128, i128) {
    let m = std::fs::metadata(path).unwrap();
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    (ns(m.mtime(), m.mtime_nsec()), ns(m.ctime(), m.ctime_nsec()))
}

/// Whether `[start, end)` of the file is all hole (no data extent).
fn is_hole(path: &Path, start: u64, end: u64) -> bool {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: lseek on a descriptor we own; no memory is passed.
    let data = unsafe { libc::lseek(f.as_raw_fd(), start as libc::off_t, libc::SEEK_DATA) };
    // -1 (ENXIO): no data at or after `start`.
    data < 0 || data as u64 >= end
}

// ---- the scenarios ----

#[test]
fn reads_the_pattern_the_host_wrote() {
    let dir = Scratch::new(SUITE, "verify");
    let seed = 0x5eed_0001;
    let img = dir.image("p.img", 4 * MIB, Some(seed));
    let want = hex(file_fnv(&img));
    for mode in MODES {
        let out = run(
            &[Drive::new(&img, "PATTERN")],
            mode,
            &Plan::verify(seed).with("blk_disks", 1),
        );
        assert_passes(&out, &["blk", "blk-verify"]);
        let v = line(&out, "blk-verify");
        assert_eq!(
            v["sectors"],
            (4 * MIB / SECTOR).to_string(),
            "{}",
            out.dump()
        );
        assert_eq!(v["fnv64"], want, "{}", out.dump());
        assert_eq!(v["bad_sectors"], "0");
        let d = &disks(&out)[0];
        assert_eq!(d["capacity"], (4 * MIB / SECTOR).to_string());
        assert_eq!(d["serial"], "PATTERN");
        assert_eq!((d["blk_size"].as_str(), d["ro"].as_str()), ("512", "0"));
        assert_eq!(d["irq"], mode);
        if mode == "msix" {
            assert_ne!(v["irqs"], "0", "{}", out.dump());
        } else {
            assert_eq!(v["irqs"], "0", "{}", out.dump());
        }
        assert_eq!(hex(file_fnv(&img)), want, "reading changed the image");
    }
}

#[test]
fn the_guest_notices_data_that_is_not_the_pattern() {
    let dir = Scratch::new(SUITE, "verify-wrong");
    let img = dir.image("p.img", MIB, Some(7));
    // One sector in the middle differs.
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[(100 * SECTOR + 3) as usize] ^= 0x40;
    std::fs::write(&img, &bytes).unwrap();
    for mode in MODES {
        let out = run(&[Drive::new(&img, "X")], mode, &Plan::verify(7));
        let detail = failed(&out, "blk-verify");
        assert!(detail.contains("1 sectors differ"), "{detail}");
        let v = line(&out, "blk-verify");
        assert_eq!(v["bad_sectors"], "1", "{}", out.dump());
        assert_eq!(v["first_bad"], "100");
        assert_eq!(v["fnv64"], hex(fnv1a64(&bytes)));
        // A failed check is the guest's verdict, not the VMM's failure.
        assert!(out.status.success(), "{}", out.dump());
        assert!(
            out.stdout.contains("PROBE-SUMMARY pass=1 fail=1"),
            "{}",
            out.dump()
        );
        assert_eq!(std::fs::read(&img).unwrap(), bytes, "the image changed");
    }
}

#[test]
fn writes_64_mib_with_flushes_and_reads_it_back() {
    let dir = Scratch::new(SUITE, "write64");
    let (lba, mib, seed) = (2048u64, 64u64, 0xabcdu64);
    let (offset, len) = (lba * SECTOR, mib * MIB);
    let want = pattern(seed, offset, len);
    for mode in MODES {
        let img = dir.image(&format!("w-{mode}.img"), 72 * MIB, None);
        let out = run(
            &[Drive::new(&img, "WRITE")],
            mode,
            &Plan::write(lba, mib, seed),
        );
        assert_passes(&out, &["blk", "blk-write"]);
        let w = line(&out, "blk-write");
        assert_eq!(w["sectors"], (len / SECTOR).to_string());
        assert_eq!(w["flushes"], "8", "a flush after every 8 MiB");
        assert_eq!(w["fnv64"], hex(fnv1a64(&want)), "{}", out.dump());
        let file = std::fs::read(&img).unwrap();
        assert_eq!(file.len() as u64, 72 * MIB, "the image changed size");
        assert!(
            file[offset as usize..(offset + len) as usize] == want[..],
            "image differs from the pattern"
        );
        assert!(
            file[..offset as usize].iter().all(|&b| b == 0),
            "wrote before the region"
        );
        assert!(
            file[(offset + len) as usize..].iter().all(|&b| b == 0),
            "wrote after the region"
        );
        eprintln!(
            "[{mode}] 64 MiB: write {} us, read back {} us, {} interrupts",
            w["write_us"], w["read_us"], w["irqs"]
        );
    }
}

#[test]
fn spreads_requests_over_several_queues() {
    let dir = Scratch::new(SUITE, "mq");
    for mode in MODES {
        let img = dir.image(&format!("mq-{mode}.img"), 16 * MIB, None);
        // One queue per vCPU.
        let out = run_on(4, &[Drive::new(&img, "MQ")], mode, &Plan::multi_queue());
        assert_passes(&out, &["blk", "blk-write"]);
        let d = &disks(&out)[0];
        assert_eq!(d["device_queues"], "4", "{}", out.dump());
        let used: u32 = d["queues"].parse().unwrap();
        assert!(used > 1, "the probe used {used} queue(s)\n{}", out.dump());
        assert_eq!(used, 4);
        assert_eq!(d["slots"], "8", "32 in flight over 4 queues");
        if mode == "msix" {
            // Configuration + one per queue.
            assert_eq!(d["vectors"], "5", "{}", out.dump());
        }
        let file = std::fs::read(&img).unwrap();
        assert!(
            file[..(8 * MIB) as usize] == pattern(2, 0, 8 * MIB)[..],
            "default write seed is 2"
        );
        assert!(file[(8 * MIB) as usize..].iter().all(|&b| b == 0));
    }
    // Host side: each of utsuwa's four queue workers wrote its share.
    let img = dir.image("mq-threads.img", 16 * MIB, None);
    let plan = Plan::multi_queue().with("exit", "halt");
    let mut vm = Watched::spawn(command(4, &[Drive::new(&img, "MQ")], &plan.cmdline("poll")));
    assert!(vm.wait_for("PROBE-SUMMARY"), "{}", vm.stdout());
    assert!(
        vm.stdout().contains("PROBE-CHECK blk-write pass"),
        "{}",
        vm.stdout()
    );
    let written = worker_writes(vm.pid());
    drop(vm);
    eprintln!("bytes written per queue worker: {written:?}");
    assert_eq!(written.len(), 4, "one worker per queue: {written:?}");
    assert!(
        written.values().all(|&w| w >= MIB),
        "8 MiB round-robin over 4 queues: {written:?}"
    );
    assert!(read_range(&img, 0, 8 * MIB) == pattern(2, 0, 8 * MIB));

    // And the count follows --cpus.
    let img = dir.image("mq2.img", MIB, None);
    let out = run_on(2, &[Drive::new(&img, "MQ")], "poll", &Plan::ops("none"));
    assert_passes(&out, &["blk"]);
    assert_eq!(disks(&out)[0]["device_queues"], "2", "{}", out.dump());
}

#[test]
fn a_read_only_disk_refuses_writes() {
    let dir = Scratch::new(SUITE, "ro");
    let img = dir.image("ro.img", MIB, Some(3));
    let hash = file_fnv(&img);
    let before = times(&img);
    // Past the clock's granularity, so that a write would show in mtime.
    std::thread::sleep(std::time::Duration::from_millis(20));
    for mode in MODES {
        let mut drive = Drive::new(&img, "RO");
        drive.readonly = true;
        let out = run(&[drive], mode, &Plan::read_only(3));
        assert_passes(&out, &["blk", "blk-verify", "blk-ro"]);
        assert_eq!(disks(&out)[0]["ro"], "1", "{}", out.dump());
        let ro = line(&out, "blk-ro");
        assert_eq!(ro["ro_feature"], "1");
        assert_eq!(ro["write_status"], "1", "VIRTIO_BLK_S_IOERR");
        assert_eq!(ro["unchanged"], "1");
    }
    // The operations that write refuse to run on it; discard and
    // write-zeroes are not offered.
    let mut drive = Drive::new(&img, "RO");
    drive.readonly = true;
    let out = run(&[drive.clone()], "poll", &Plan::ops("write"));
    assert!(
        failed(&out, "blk-write").contains("read-only"),
        "{}",
        out.dump()
    );
    let out = run(&[drive.clone()], "msix", &Plan::discard(0, 16, 3));
    failed(&out, "blk-discard");
    // utsuwa holds it open read-only.
    let halt = Plan::read_only(3).with("exit", "halt");
    let mut vm = Watched::spawn(command(1, &[drive], &halt.cmdline("poll")));
    assert!(vm.wait_for("PROBE-SUMMARY"), "{}", vm.stdout());
    assert!(
        vm.stdout().contains("PROBE-CHECK blk-ro pass"),
        "{}",
        vm.stdout()
    );
    let flags = image_open_flags(vm.pid(), &img);
    drop(vm);
    assert_eq!(flags.len(), 1, "{flags:?}");
    assert_eq!(flags[0] & libc::O_ACCMODE, libc::O_RDONLY, "{flags:?}");
    assert_eq!(file_fnv(&img), hash, "the image changed");
    assert_eq!(times(&img), before, "mtime/ctime of the image changed");
}

#[test]
fn flushed_data_is_in_the_image_when_the_vmm_is_killed() {
    let dir = Scratch::new(SUITE, "durable");
    let (lba, mib, seed) = (4096u64, 16u64, 0xd00du64);
    let want = pattern(seed, lba * SECTOR, mib * MIB);
    // One queue, and four (the writes spread over them, the FLUSH on one).
    for (mode, cpus) in [("msix", 1), ("poll", 1), ("msix", 4), ("poll", 4)] {
        let img = dir.image(&format!("d-{mode}-{cpus}.img"), 24 * MIB, None);
        let cmdline = Plan::durable(lba, mib, seed).cmdline(mode);
        let killed = run_until(
            command(cpus, &[Drive::new(&img, "DUR")], &cmdline),
            "PROBE blk flushed",
        );
        assert!(killed.found, "no flushed marker:\n{}", killed.dump());
        assert_eq!(
            killed.status.signal(),
            Some(libc::SIGKILL),
            "utsuwa must have been running until killed\n{}",
            killed.dump()
        );
        eprintln!(
            "[{mode}] {cpus} queue(s): flushed and killed after {:?}",
            killed.elapsed
        );
        let d = lines(&killed.stdout, "blk")
            .into_iter()
            .find(|m| m.contains_key("serial"))
            .expect("disk line");
        assert_eq!(d["queues"], cpus.to_string(), "{}", killed.dump());
        let f = flushed(&killed.stdout).expect("flushed line");
        assert_eq!(f["fnv64"], hex(fnv1a64(&want)), "{}", killed.dump());
        assert_eq!(f["sectors"], (mib * MIB / SECTOR).to_string());
        let file = std::fs::read(&img).unwrap();
        let (start, end) = ((lba * SECTOR) as usize, (lba * SECTOR + mib * MIB) as usize);
        assert!(
            file[start..end] == want[..],
            "[{mode}, {cpus} queues] flushed data missing from the image after SIGKILL"
        );
        assert!(file[..start].iter().all(|&b| b == 0) && file[end..].iter().all(|&b| b == 0));
    }
}

#[test]
fn several_disks_each_answer_get_id() {
    let dir = Scratch::new(SUITE, "multi");
    let a = dir.image("a.img", 4 * MIB, Some(11));
    let b = dir.image("b.img", 2 * MIB, Some(11));
    let (hash_a, hash_b) = (file_fnv(&a), file_fnv(&b));
    for mode in MODES {
        let mut second = Drive::new(&b, "SECOND-0123456789abc");
        second.readonly = true;
        let out = run(
            &[Drive::new(&a, "FIRST"), second],
            mode,
            &Plan::verify(11).with("blk_disks", 2),
        );
        assert_passes(&out, &["blk", "blk-verify"]);
        let d = disks(&out);
        assert_eq!(d.len(), 2, "{}", out.dump());
        assert_ne!(d[0]["disk"], d[1]["disk"]);
        assert_eq!(d[0]["serial"], "FIRST");
        assert_eq!(d[0]["id_status"], "0");
        assert_eq!(d[0]["capacity"], "8192");
        assert_eq!(d[0]["ro"], "0");
        assert_eq!(d[1]["serial"], "SECOND-0123456789abc", "20 bytes, no NUL");
        assert_eq!(d[1]["id_status"], "0");
        assert_eq!(d[1]["capacity"], "4096");
        assert_eq!(d[1]["ro"], "1");
        let v = lines(&out.stdout, "blk-verify");
        assert_eq!(v.len(), 2, "verify ran on both");
        assert_eq!(v[0]["fnv64"], hex(hash_a));
        assert_eq!(v[1]["fnv64"], hex(hash_b));
        // Each function has its own BARs, placed by utsuwa.
        let bars: Vec<_> = lines(&out.stdout, "virtio")
            .into_iter()
            .filter(|m| m.contains_key("device"))
            .collect();
        assert_eq!(bars.len(), 2, "{}", out.dump());
        assert_ne!(bars[0]["bar0"], bars[1]["bar0"]);
        assert!(
            bars.iter().all(|m| m["bar0"].ends_with(":preset")),
            "{bars:?}"
        );
        assert_eq!((file_fnv(&a), file_fnv(&b)), (hash_a, hash_b));
    }
    // Writes to the second disk land in the second image only.
    for mode in MODES {
        let c = dir.image(&format!("c-{mode}.img"), 2 * MIB, None);
        let out = run(
            &[Drive::new(&a, "FIRST"), Drive::new(&c, "THIRD")],
            mode,
            &Plan::write(0, 1, 0x77).with("blk_disk", 1),
        );
        assert_passes(&out, &["blk", "blk-write"]);
        assert_eq!(line(&out, "blk-write")["disk"], disks(&out)[1]["disk"]);
        assert_eq!(read_range(&c, 0, MIB), pattern(0x77, 0, MIB));
        assert_eq!(file_fnv(&a), hash_a, "the first disk was written");
    }
    // Expecting a different number of disks fails the check.
    let out = run(
        &[Drive::new(&a, "FIRST")],
        "poll",
        &Plan::default().with("blk_disks", 2),
    );
    failed(&out, "blk");
}

#[test]
fn discard_and_write_zeroes_free_the_blocks_and_read_back_zeros() {
    let dir = Scratch::new(SUITE, "discard");
    let (lba, sectors, size) = (4096u64, 8192u64, 8 * MIB);
    for mode in MODES {
        let img = dir.image(&format!("z-{mode}.img"), size, Some(5));
        let blocks_before = allocated_blocks(&img);
        assert!(
            blocks_before >= size / SECTOR,
            "the image is not fully allocated"
        );
        assert!(!is_hole(&img, lba * SECTOR, (lba + sectors) * SECTOR));
        let out = run(
            &[Drive::new(&img, "DISCARD")],
            mode,
            &Plan::discard(lba, sectors, 5),
        );
        assert_passes(&out, &["blk", "blk-discard"]);
        let dl = line(&out, "blk-discard");
        assert_eq!((dl["status"].as_str(), dl["zeroed"].as_str()), ("0", "1"));
        let wz = line(&out, "blk-write-zeroes");
        assert_eq!((wz["status"].as_str(), wz["zeroed"].as_str()), ("0", "1"));
        assert_eq!(wz["unmap"], "1", "utsuwa offers write_zeroes_may_unmap");
        let file = std::fs::read(&img).unwrap();
        assert_eq!(file.len() as u64, size, "the image changed size");
        let (start, end) = ((lba * SECTOR) as usize, ((lba + sectors) * SECTOR) as usize);
        assert!(file[start..end].iter().all(|&b| b == 0), "range not zero");
        assert!(
            file[..start] == pattern(5, 0, start as u64)[..],
            "before the range changed"
        );
        assert!(
            file[end..] == pattern(5, end as u64, size - end as u64)[..],
            "after the range changed"
        );
        let blocks_after = allocated_blocks(&img);
        eprintln!("[{mode}] allocated 512-byte blocks {blocks_before} -> {blocks_after}");
        assert!(
            blocks_after + sectors * 15 / 16 <= blocks_before,
            "the range should have been deallocated: {blocks_before} -> {blocks_after}"
        );
        let mid = (lba + sectors / 2) * SECTOR;
        assert!(
            is_hole(&img, start as u64, mid),
            "DISCARD half still allocated"
        );
        assert!(
            is_hole(&img, mid, end as u64),
            "WRITE_ZEROES half still allocated"
        );
    }
}

#[test]
fn the_device_is_reset_and_reinitialised_mid_stream() {
    let dir = Scratch::new(SUITE, "reset");
    let (seed, wlba, wseed) = (9u64, 4096u64, 10u64);
    for mode in MODES {
        let img = dir.image(&format!("r-{mode}.img"), 4 * MIB, Some(seed));
        // write (1 MiB at wlba), reset (and a 128-sector write at wlba after
        // re-initialising), then the edge cases on the new queues.
        let out = run(
            &[Drive::new(&img, "RESET")],
            mode,
            &Plan::reset("verify,write,reset,edge", seed, wlba, wseed),
        );
        assert_passes(
            &out,
            &["blk", "blk-verify", "blk-write", "blk-reset", "blk-edge"],
        );
        let r = line(&out, "blk-reset");
        assert_eq!(r["status_after_reset"], "0x0");
        assert_eq!(r["queue_enable_after_reset"], "0");
        assert_eq!(r["fnv_before"], r["fnv_after"]);
        assert_eq!(
            r["fnv_after"],
            hex(fnv1a64(&pattern(seed, 0, 8 * SECTOR))),
            "{}",
            out.dump()
        );
        let e = line(&out, "blk-edge");
        assert_eq!(
            (
                e["read_across_end"].as_str(),
                e["read_past_end"].as_str(),
                e["unknown_type"].as_str()
            ),
            ("1", "1", "2"),
            "IOERR, IOERR, UNSUPP"
        );
        // Only the written MiB changed.
        let file = std::fs::read(&img).unwrap();
        let (start, end) = ((wlba * SECTOR) as usize, (wlba * SECTOR + MIB) as usize);
        assert!(file[..start] == pattern(seed, 0, start as u64)[..]);
        assert!(file[start..end] == pattern(wseed, start as u64, MIB)[..]);
        assert!(file[end..] == pattern(seed, end as u64, 4 * MIB - end as u64)[..]);
    }
}

#[test]
fn the_last_sectors_of_odd_sized_disks() {
    let dir = Scratch::new(SUITE, "odd-sizes");
    // 1 sector, and 4099 sectors (not a whole number of 4 KiB blocks): the
    // write after the reset covers the only sector of the first and the
    // last 128 sectors of the second.
    let (seed, wseed) = (17u64, 19u64);
    for mode in MODES {
        for (sectors, wlba, written) in [(1u64, 0u64, 1u64), (4099, 4099 - 128, 128)] {
            let img = dir.image(
                &format!("odd-{sectors}-{mode}.img"),
                sectors * SECTOR,
                Some(seed),
            );
            let out = run(
                &[Drive::new(&img, "ODD")],
                mode,
                &Plan::reset("verify,reset,edge", seed, wlba, wseed),
            );
            assert_passes(&out, &["blk", "blk-verify", "blk-reset", "blk-edge"]);
            assert_eq!(disks(&out)[0]["capacity"], sectors.to_string());
            assert_eq!(line(&out, "blk-verify")["sectors"], sectors.to_string());
            let e = line(&out, "blk-edge");
            assert_eq!(
                (
                    e["read_across_end"].as_str(),
                    e["read_past_end"].as_str(),
                    e["unknown_type"].as_str()
                ),
                ("1", "1", "2"),
                "{}",
                out.dump()
            );
            let file = std::fs::read(&img).unwrap();
            assert_eq!(
                file.len() as u64,
                sectors * SECTOR,
                "the image changed size"
            );
            let w = (wlba * SECTOR) as usize;
            assert!(file[..w] == pattern(seed, 0, w as u64)[..]);
            assert!(
                file[w..] == pattern(wseed, w as u64, written * SECTOR)[..],
                "[{mode}] the last {written} sectors of {sectors}"
            );
        }
    }
}

#[test]
fn benchmark_reports_throughput_and_iops() {
    let dir = Scratch::new(SUITE, "bench");
    for mode in MODES {
        let img = dir.image(&format!("b-{mode}.img"), 64 * MIB, None);
        let out = run(&[Drive::new(&img, "BENCH")], mode, &Plan::bench(64, 20000));
        assert_passes(&out, &["blk", "blk-bench"]);
        let b = line(&out, "blk-bench");
        for key in ["seq_read_mbps", "seq_write_mbps", "randread_iops"] {
            let v: u64 = b[key].parse().unwrap();
            assert!(v > 0, "{key}=0\n{}", out.dump());
        }
        assert_eq!(b["qd"], "16");
        // The sequential write filled the sparse image.
        assert!(allocated_blocks(&img) >= 64 * MIB / SECTOR);
        eprintln!(
            "[{mode}] utsuwa virtio-blk: seq_read {} MB/s, seq_write {} MB/s, randread {} IOPS (qd 16), flush {} us",
            b["seq_read_mbps"], b["seq_write_mbps"], b["randread_iops"], b["flush_us"]
        );
    }
}

/// `utsuwa: error: ...` as the only stderr line, exit status 1, no guest.
fn assert_one_line_error(out: &Outcome, needles: &[&str]) {
    assert_eq!(out.status.code(), Some(1), "{}", out.dump());
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one error line\n{}", out.dump());
    assert!(lines[0].starts_with("utsuwa: error: "), "{}", out.dump());
    for needle in needles {
        assert!(lines[0].contains(needle), "no {needle:?} in {:?}", lines[0]);
    }
    assert!(
        !out.stdout.contains("PROBE"),
        "the guest ran\n{}",
        out.dump()
    );
}

#[test]
fn a_writable_image_in_use_is_refused() {
    let dir = Scratch::new(SUITE, "in-use");
    let img = dir.image("shared.img", MIB, Some(13));
    let hash = file_fnv(&img);
    let halt = Plan::verify(13).with("exit", "halt");

    let mut first = Watched::spawn(command(1, &[Drive::new(&img, "")], &halt.cmdline("msix")));
    assert!(
        first.wait_for("PROBE-SUMMARY"),
        "first VM did not boot:\n{}",
        first.stdout()
    );
    assert!(
        first.stdout().contains("PROBE-CHECK blk-verify pass"),
        "{}",
        first.stdout()
    );
    // No serial given: GET_ID succeeds with an empty one.
    assert!(
        first.stdout().contains(" serial= id_status=0 "),
        "{}",
        first.stdout()
    );
    let flags = image_open_flags(first.pid(), &img);
    assert_eq!(flags.len(), 1, "{flags:?}");
    assert_eq!(flags[0] & libc::O_ACCMODE, libc::O_RDWR);
    assert_eq!(flags[0] & libc::O_DIRECT, 0, "O_DIRECT without cache=none");

    // A second VM, writable or read-only, cannot have it.
    let path = img.to_str().unwrap();
    for readonly in [false, true] {
        let mut drive = Drive::new(&img, "");
        drive.readonly = readonly;
        let out = run(&[drive], "poll", &Plan::verify(13));
        assert_one_line_error(&out, &["in use", path]);
        assert!(out.elapsed.as_secs() < 10);
        assert!(first.running(), "the first VM died");
    }
    let first = first.kill();
    assert_eq!(
        first.status.signal(),
        Some(libc::SIGKILL),
        "{}",
        first.dump()
    );
    assert!(first.stderr.is_empty(), "{}", first.dump());

    // Its lock went with the process.
    let out = run(&[Drive::new(&img, "")], "poll", &Plan::verify(13));
    assert_passes(&out, &["blk", "blk-verify"]);

    // Two VMs may share it read-only.
    let mut ro = Drive::new(&img, "");
    ro.readonly = true;
    let mut reader = Watched::spawn(command(1, &[ro.clone()], &halt.cmdline("poll")));
    assert!(reader.wait_for("PROBE-SUMMARY"), "{}", reader.stdout());
    let flags = image_open_flags(reader.pid(), &img);
    assert_eq!(flags.len(), 1, "{flags:?}");
    assert_eq!(flags[0] & libc::O_ACCMODE, libc::O_RDONLY);
    let out = run(&[ro], "poll", &Plan::verify(13));
    assert_passes(&out, &["blk", "blk-verify"]);
    // But not alongside a writer.
    let out = run(&[Drive::new(&img, "")], "poll", &Plan::verify(13));
    assert_one_line_error(&out, &["in use", path]);
    assert!(reader.running());
    drop(reader);

    assert_eq!(file_fnv(&img), hash, "the image changed");
}

/// Whether files in `dir` can be opened with O_DIRECT (tmpfs: no).
fn o_direct_works(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join("o_direct");
    std::fs::write(&probe, vec![0u8; 4096]).unwrap();
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// A scratch directory where O_DIRECT works: the temporary directory, or
/// else one under `target/` (tmpfs refuses O_DIRECT).
fn direct_scratch(test: &str) -> Scratch {
    let dir = Scratch::new(SUITE, test);
    if o_direct_works(dir.path()) {
        return dir;
    }
    drop(dir);
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    eprintln!(
        "{} refuses O_DIRECT: images under {}",
        std::env::temp_dir().display(),
        base.display()
    );
    let dir = Scratch::new_in(&base, SUITE, test);
    assert!(
        o_direct_works(dir.path()),
        "no O_DIRECT under {}",
        base.display()
    );
    dir
}

#[test]
fn cache_none_opens_the_image_with_o_direct() {
    let dir = direct_scratch("cache-none");
    let (seed, wlba, wseed) = (15u64, 4096u64, 16u64);
    for mode in MODES {
        // The whole round: reads, 1 MiB of writes with a flush, discard,
        // reset, edge cases.
        let img = dir.image(&format!("c-{mode}.img"), 4 * MIB, Some(seed));
        let mut drive = Drive::new(&img, "DIRECT");
        drive.cache_none = true;
        let plan = Plan::reset("verify,write,discard,reset,edge", seed, wlba, wseed)
            .with("blk_discard_lba", 2048)
            .with("blk_discard_sectors", 2048)
            .with("blk_discard_zeroes", 1);
        let out = run(&[drive.clone()], mode, &plan);
        assert_passes(
            &out,
            &[
                "blk",
                "blk-verify",
                "blk-write",
                "blk-discard",
                "blk-reset",
                "blk-edge",
            ],
        );
        let d = &disks(&out)[0];
        let blk_size: u64 = d["blk_size"].parse().unwrap();
        assert!(
            blk_size.is_power_of_two() && (512..=4096).contains(&blk_size),
            "{}",
            out.dump()
        );
        let file = std::fs::read(&img).unwrap();
        let s = |sector: u64| (sector * SECTOR) as usize;
        assert!(file[..s(2048)] == pattern(seed, 0, 2048 * SECTOR)[..]);
        assert!(
            file[s(2048)..s(4096)].iter().all(|&b| b == 0),
            "discarded range"
        );
        assert!(file[s(4096)..s(6144)] == pattern(wseed, 4096 * SECTOR, MIB)[..]);
        assert!(file[s(6144)..] == pattern(seed, 6144 * SECTOR, 4 * MIB - 6144 * SECTOR)[..]);

        // While it runs, the image is open with O_DIRECT, and flushed
        // writes are in the file when utsuwa is killed.
        let img = dir.image(&format!("cd-{mode}.img"), 8 * MIB, None);
        drive.path = &img;
        let mut vm = Watched::spawn(command(
            1,
            &[drive.clone()],
            &Plan::durable(0, 4, 0x1d).cmdline(mode),
        ));
        assert!(vm.wait_for("PROBE blk flushed"), "{}", vm.stdout());
        let flags = image_open_flags(vm.pid(), &img);
        let killed = vm.kill();
        assert_eq!(flags.len(), 1, "{flags:?}");
        assert_ne!(flags[0] & libc::O_DIRECT, 0, "cache=none without O_DIRECT");
        assert_eq!(flags[0] & libc::O_ACCMODE, libc::O_RDWR);
        assert_eq!(
            killed.status.signal(),
            Some(libc::SIGKILL),
            "{}",
            killed.dump()
        );
        assert!(read_range(&img, 0, 4 * MIB) == pattern(0x1d, 0, 4 * MIB));
    }
}

#[test]
fn missing_and_misaligned_images_are_one_clear_error() {
    let dir = Scratch::new(SUITE, "bad-images");
    let missing = dir.path().join("missing.img");
    for readonly in [false, true] {
        let mut drive = Drive::new(&missing, "");
        drive.readonly = readonly;
        let out = run(&[drive], "poll", &Plan::verify(1));
        assert_one_line_error(
            &out,
            &[
                "cannot open disk image",
                missing.to_str().unwrap(),
                "No such file",
            ],
        );
        assert!(!missing.exists(), "utsuwa created the image");
    }
    for size in [1000u64, MIB + 1, 511] {
        let img = dir.path().join(format!("odd-{size}.img"));
        let bytes = pattern(3, 0, size.next_multiple_of(8))[..size as usize].to_vec();
        std::fs::write(&img, &bytes).unwrap();
        for readonly in [false, true] {
            let mut drive = Drive::new(&img, "");
            drive.readonly = readonly;
            let out = run(&[drive], "poll", &Plan::verify(3));
            assert_one_line_error(
                &out,
                &[
                    img.to_str().unwrap(),
                    &format!("is {size} bytes"),
                    "not a multiple of 512",
                ],
            );
            assert_eq!(std::fs::read(&img).unwrap(), bytes, "the image changed");
        }
    }
    // A bad disk among good ones still stops the VM from starting.
    let good = dir.image("good.img", MIB, Some(1));
    let out = run(
        &[Drive::new(&good, "GOOD"), Drive::new(&missing, "")],
        "poll",
        &Plan::verify(1),
    );
    assert_one_line_error(&out, &["cannot open disk image", missing.to_str().unwrap()]);
}
