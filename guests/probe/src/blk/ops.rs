//! The `probe.blk_ops` operations but the benchmark: verify the pattern,
//! write it and read it back, the read-only, discard, reset, edge-case and
//! durability checks. Each prints its `PROBE blk-<op>` line.

use super::device::{Disk, Req};
use super::{
    FLUSH_EVERY, F_DISCARD, F_FLUSH, F_WRITE_ZEROES, SECTOR, S_IOERR, S_OK, S_UNSUPP, T_BOGUS,
    T_DISCARD, T_IN, T_OUT, T_WRITE_ZEROES, WRITE_ZEROES_UNMAP,
};
use crate::dma::Arena;
use crate::msg::Msg;
use crate::plan::BlkPlan;
use crate::time;
use crate::virtio::data::{fill_pattern, matches_pattern, Fnv};
use core::fmt::{self, Write as _};

/// Sector checks over a region: how many differ from the expectation, and the first.
#[derive(Default)]
struct Bad {
    count: u64,
    first: Option<u64>,
}

impl Bad {
    fn note(&mut self, lba: u64) {
        self.count += 1;
        self.first.get_or_insert(lba);
    }
}

impl fmt::Display for Bad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.first {
            Some(l) => write!(f, "bad_sectors={} first_bad={l}", self.count),
            None => f.write_str("bad_sectors=0 first_bad=none"),
        }
    }
}
pub fn op_verify(d: &mut Disk, bp: &BlkPlan) -> Result<(), Msg> {
    let sectors = bp.verify_sectors.unwrap_or(d.capacity);
    let (seed, mut fnv, mut bad) = (bp.seed, Fnv::new(), Bad::default());
    let t0 = time::now_us();
    d.read_region(0, sectors, |lba, data| {
        fnv.update(data);
        for (k, sector) in data.chunks(SECTOR as usize).enumerate() {
            let l = lba + k as u64;
            if !matches_pattern(seed, l * SECTOR, sector) {
                bad.note(l);
            }
        }
    })?;
    let us = time::now_us() - t0;
    outln!(
        "PROBE blk-verify disk={} lba=0 sectors={sectors} seed={seed:#x} fnv64={:016x} {bad} us={us} irqs={}",
        d.name(),
        fnv.0,
        d.op_irqs()
    );
    if bad.count != 0 {
        return Err(fail!(
            "{} sectors differ from the pattern (seed {seed:#x}), first {}",
            bad.count,
            bad.first.unwrap_or(0)
        ));
    }
    Ok(())
}

/// Write the pattern over the region (flushing every 8 MiB and at the end), read it back.
pub fn op_write(d: &mut Disk, bp: &BlkPlan) -> Result<(), Msg> {
    if d.ro() {
        return Err(fail!("the disk is read-only (VIRTIO_BLK_F_RO)"));
    }
    let (lba, sectors, seed) = (bp.write_lba, bp.write_mib * 2048, bp.write_seed);
    d.check_range(lba, sectors)?;
    let t0 = time::now_us();
    let mut flushes = 0;
    let mut done = 0;
    while done < sectors {
        let n = FLUSH_EVERY.min(sectors - done);
        d.write_region(lba + done, n, |l, buf| fill_pattern(seed, l * SECTOR, buf))?;
        if d.has(F_FLUSH) {
            d.flush()?;
            flushes += 1;
        }
        done += n;
    }
    let write_us = time::now_us() - t0;
    let (mut fnv, mut bad) = (Fnv::new(), Bad::default());
    let t1 = time::now_us();
    d.read_region(lba, sectors, |l0, data| {
        fnv.update(data);
        for (k, sector) in data.chunks(SECTOR as usize).enumerate() {
            if !matches_pattern(seed, (l0 + k as u64) * SECTOR, sector) {
                bad.note(l0 + k as u64);
            }
        }
    })?;
    let read_us = time::now_us() - t1;
    outln!(
        "PROBE blk-write disk={} lba={lba} sectors={sectors} seed={seed:#x} flushes={flushes} fnv64={:016x} {bad} write_us={write_us} read_us={read_us} irqs={}",
        d.name(),
        fnv.0,
        d.op_irqs()
    );
    if bad.count != 0 {
        return Err(fail!(
            "{} sectors read back differ from what was written, first {}",
            bad.count,
            bad.first.unwrap_or(0)
        ));
    }
    Ok(())
}

/// A read-only disk: RO offered, a write refused with IOERR, the data unchanged.
pub fn op_ro(d: &mut Disk, bp: &BlkPlan) -> Result<(), Msg> {
    let lba = bp.write_lba.min(d.capacity.saturating_sub(8));
    let n = 8.min(d.capacity);
    let mut before = Fnv::new();
    d.read_region(lba, n, |_, data| before.update(data))?;
    let seed = bp.write_seed;
    let st = d.single(
        Req {
            kind: T_OUT,
            lba,
            len: (n * SECTOR) as u32,
        },
        |buf| fill_pattern(seed, lba * SECTOR, &mut buf[..(n * SECTOR) as usize]),
        |_| {},
    )?;
    let mut after = Fnv::new();
    d.read_region(lba, n, |_, data| after.update(data))?;
    let unchanged = before.0 == after.0;
    outln!(
        "PROBE blk-ro disk={} ro_feature={} lba={lba} sectors={n} write_status={st} unchanged={} fnv64={:016x} irqs={}",
        d.name(),
        u8::from(d.ro()),
        u8::from(unchanged),
        after.0,
        d.op_irqs()
    );
    let mut why = Msg::new();
    if !d.ro() {
        let _ = write!(why, "VIRTIO_BLK_F_RO not offered; ");
    }
    if st != S_IOERR {
        let _ = write!(why, "write status {st}, expected {S_IOERR} (IOERR); ");
    }
    if !unchanged {
        let _ = write!(why, "the data changed; ");
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

fn all_zero(data: &[u8]) -> bool {
    data.iter().all(|&b| b == 0)
}

/// Pattern over the range, DISCARD the first half, WRITE_ZEROES the second,
/// read both back.
pub fn op_discard(d: &mut Disk, bp: &BlkPlan) -> Result<(), Msg> {
    if d.ro() {
        return Err(fail!("the disk is read-only (VIRTIO_BLK_F_RO)"));
    }
    let (lba, sectors, seed) = (bp.discard_lba, bp.discard_sectors, bp.write_seed);
    let half = sectors / 2;
    d.write_region(lba, sectors, |l, buf| fill_pattern(seed, l * SECTOR, buf))?;
    if d.has(F_FLUSH) {
        d.flush()?;
    }
    let mut why = Msg::new();
    let discard = if d.has(F_DISCARD) {
        Some(d.ranged(T_DISCARD, lba, half, d.max_discard_sectors, 0)?)
    } else {
        let _ = write!(why, "DISCARD not offered; ");
        None
    };
    let unmap = if d.wz_may_unmap {
        WRITE_ZEROES_UNMAP
    } else {
        0
    };
    let wz = if d.has(F_WRITE_ZEROES) {
        Some(d.ranged(
            T_WRITE_ZEROES,
            lba + half,
            sectors - half,
            d.max_wz_sectors,
            unmap,
        )?)
    } else {
        let _ = write!(why, "WRITE_ZEROES not offered; ");
        None
    };
    if d.has(F_FLUSH) {
        d.flush()?;
    }
    let (mut dz, mut wzz) = (true, true);
    d.read_region(lba, half, |_, data| dz &= all_zero(data))?;
    d.read_region(lba + half, sectors - half, |_, data| wzz &= all_zero(data))?;
    if let Some(st) = discard {
        outln!(
            "PROBE blk-discard disk={} lba={lba} sectors={half} status={st} zeroed={} max_sectors={} max_seg={} alignment={}",
            d.name(),
            u8::from(dz),
            d.max_discard_sectors,
            d.max_discard_seg,
            d.discard_align
        );
        if st != S_OK {
            let _ = write!(why, "DISCARD status {st}; ");
        }
        if bp.discard_zeroes && !dz {
            let _ = write!(why, "discarded sectors do not read back as zeros; ");
        }
    }
    if let Some(st) = wz {
        outln!(
            "PROBE blk-write-zeroes disk={} lba={} sectors={} unmap={} status={st} zeroed={} max_sectors={} max_seg={}",
            d.name(),
            lba + half,
            sectors - half,
            unmap,
            u8::from(wzz),
            d.max_wz_sectors,
            d.max_wz_seg
        );
        if st != S_OK {
            let _ = write!(why, "WRITE_ZEROES status {st}; ");
        }
        if !wzz {
            let _ = write!(why, "zeroed sectors do not read back as zeros; ");
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

/// With nothing in flight: reset (status 0), initialise from scratch, I/O again.
pub fn op_reset(d: &mut Disk, bp: &BlkPlan, arena: &mut Arena) -> Result<(), Msg> {
    let n = 8.min(d.capacity);
    let mut before = Fnv::new();
    d.read_region(0, n, |_, data| before.update(data))?;
    d.t.set_status(0);
    let reset = d.t.reset();
    let status = d.t.status();
    d.t.select_queue(0);
    let enabled = d.t.queue_enabled();
    reset?;
    d.init(arena)?;
    let mut after = Fnv::new();
    d.read_region(0, n, |_, data| after.update(data))?;
    let mut bad = Bad::default();
    if !d.ro() {
        let (lba, seed) = (bp.write_lba, bp.write_seed);
        let m = 128.min(d.capacity.saturating_sub(lba));
        d.write_region(lba, m, |l, buf| fill_pattern(seed, l * SECTOR, buf))?;
        d.read_region(lba, m, |l0, data| {
            for (k, s) in data.chunks(SECTOR as usize).enumerate() {
                if !matches_pattern(seed, (l0 + k as u64) * SECTOR, s) {
                    bad.note(l0 + k as u64);
                }
            }
        })?;
    }
    outln!(
        "PROBE blk-reset disk={} status_after_reset={status:#x} queue_enable_after_reset={enabled} fnv_before={:016x} fnv_after={:016x} {bad} irqs={}",
        d.name(),
        before.0,
        after.0,
        d.op_irqs()
    );
    let mut why = Msg::new();
    if enabled != 0 {
        let _ = write!(why, "queue_enable reads {enabled} after reset; ");
    }
    if before.0 != after.0 {
        let _ = write!(why, "sectors 0+{n} read differently after the reset; ");
    }
    if bad.count != 0 {
        let _ = write!(
            why,
            "{} sectors written after the reset read back wrong; ",
            bad.count
        );
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

/// Requests the device must refuse: past the end, an unknown type.
pub fn op_edge(d: &mut Disk) -> Result<(), Msg> {
    let cap = d.capacity;
    let across = d.single(
        Req {
            kind: T_IN,
            lba: cap.saturating_sub(1),
            len: 2 * SECTOR as u32,
        },
        |_| {},
        |_| {},
    )?;
    let past = d.single(
        Req {
            kind: T_IN,
            lba: cap,
            len: SECTOR as u32,
        },
        |_| {},
        |_| {},
    )?;
    let bogus = d.single(
        Req {
            kind: T_BOGUS,
            lba: 0,
            len: 0,
        },
        |_| {},
        |_| {},
    )?;
    outln!(
        "PROBE blk-edge disk={} read_across_end={across} read_past_end={past} unknown_type={bogus} irqs={}",
        d.name(),
        d.op_irqs()
    );
    let mut why = Msg::new();
    for (what, st, want) in [
        ("read across the end", across, S_IOERR),
        ("read past the end", past, S_IOERR),
        ("unknown request type", bogus, S_UNSUPP),
    ] {
        if st != want {
            let _ = write!(why, "{what}: status {st}, expected {want}; ");
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}
/// Write the region, FLUSH, say so; the check then halts for the host to kill the VMM.
pub fn op_durable(d: &mut Disk, bp: &BlkPlan) -> Result<(), Msg> {
    if d.ro() {
        return Err(fail!("the disk is read-only (VIRTIO_BLK_F_RO)"));
    }
    if !d.has(F_FLUSH) {
        return Err(fail!("VIRTIO_BLK_F_FLUSH not offered"));
    }
    let (lba, sectors, seed) = (bp.write_lba, bp.write_mib * 2048, bp.write_seed);
    let mut fnv = Fnv::new();
    d.write_region(lba, sectors, |l, buf| {
        fill_pattern(seed, l * SECTOR, buf);
        fnv.update(buf);
    })?;
    d.flush()?;
    outln!(
        "PROBE blk flushed disk={} lba={lba} sectors={sectors} seed={seed:#x} fnv64={:016x}",
        d.name(),
        fnv.0
    );
    Ok(())
}
