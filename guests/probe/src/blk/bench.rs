//! The `bench` operation: sequential write and read throughput and 4 KiB
//! random-read IOPS on a virtio-blk disk.

use super::device::{Disk, Req};
use super::{F_FLUSH, SECTOR, S_OK, T_IN};
use crate::msg::Msg;
use crate::plan::BlkPlan;
use crate::time;

/// Sequential write and read (MB/s = 10^6 bytes/s) and 4 KiB random reads (IOPS).
pub fn op_bench(d: &mut Disk, bp: &BlkPlan) -> Result<(), Msg> {
    let (lba, sectors) = (bp.write_lba, bp.bench_mib * 2048);
    d.check_range(lba, sectors)?;
    let bytes = sectors * SECTOR;
    let mbps = |us: u64| bytes.checked_div(us).unwrap_or(0);
    let (mut write_us, mut flush_us) = (0, 0);
    if !d.ro() {
        let t0 = time::now_us();
        d.write_region(lba, sectors, |_, _| {})?;
        write_us = time::now_us() - t0;
        if d.has(F_FLUSH) {
            let t1 = time::now_us();
            d.flush()?;
            flush_us = time::now_us() - t1;
        }
    }
    let t0 = time::now_us();
    d.read_region(lba, sectors, |_, _| {})?;
    let read_us = time::now_us() - t0;
    let ios = bp.bench_ios;
    let blocks = (sectors / 8).max(1);
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let t0 = time::now_us();
    d.pipeline(
        ios,
        |_, _| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Req {
                kind: T_IN,
                lba: lba + 8 * (x % blocks),
                len: 4096,
            }
        },
        |i, st, _| {
            if st == S_OK {
                Ok(())
            } else {
                Err(fail!("random read {i}: status {st}"))
            }
        },
    )?;
    let rand_us = time::now_us() - t0;
    outln!(
        "PROBE blk-bench disk={} seq_read_mbps={} seq_write_mbps={} randread_iops={} qd={} mib={} req_kib={} ios={ios} queues={} irq={} seq_read_us={read_us} seq_write_us={write_us} flush_us={flush_us} randread_us={rand_us} irqs={}",
        d.name(),
        mbps(read_us),
        if d.ro() { 0 } else { mbps(write_us) },
        (ios * 1_000_000).checked_div(rand_us).unwrap_or(0),
        d.setup.qd.min(d.nq * d.spq),
        bp.bench_mib,
        bp.req_kib,
        d.nq,
        if d.setup.msix { "msix" } else { "poll" },
        d.op_irqs()
    );
    Ok(())
}
