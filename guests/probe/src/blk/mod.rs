//! The `blk` check: a virtio-blk driver (virtio 1.x, 5.2) over the modern
//! PCI transport (`virtio`), and the operations of `probe.blk_ops` run with
//! it. Everything here is ring 3; completions are waited for by polling the
//! used rings (`probe.blk_irq=poll`) or by watching the counters the ring-0
//! MSI-X stubs bump (`msix`, the default).
//!
//! Requests: a 16-byte header (type, reserved, sector) the device reads, an
//! optional data buffer, a status byte the device writes; three chained
//! descriptors per request slot (slot s uses descriptors 3s..3s+2). Several
//! requests are in flight (`probe.blk_qd`), spread round-robin over the
//! queues when VIRTIO_BLK_F_MQ gives more than one, and retired in the order
//! they were issued, so checksums run over the disk in order.
//!
//! The data pattern and the checksum are specified in the README.
//!
//! The driver is `device.rs` (its state, initialisation and reset) and
//! `io.rs` (submitting requests and retiring their completions); the
//! operations are in `ops.rs`, the benchmark in `bench.rs`. This file holds
//! the protocol constants, and runs the check and its operations.

mod bench;
mod device;
mod io;
mod ops;

use crate::dma::Arena;
use crate::msg::Msg;
use crate::plan::{BlkOp, BlkOps, BlkPlan, Plan, BLK_OPS};
use crate::virtio::bus::Devices;
use crate::virtio::{DevFn, S_NEEDS_RESET};
use bench::op_bench;
use core::fmt::Write as _;
use device::{Disk, Setup};
use ops::{op_discard, op_durable, op_edge, op_reset, op_ro, op_verify, op_write};

// Feature bits (5.2.3).
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_MQ: u64 = 1 << 12;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;
/// What the driver accepts (with VERSION_1).
const WANTED: u64 = F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH | F_MQ | F_DISCARD | F_WRITE_ZEROES;

// Request types and status values (5.2.6).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
/// Not a request type the specification defines: must be answered UNSUPP.
const T_BOGUS: u32 = 0x7f;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Written into the status byte before submission: "the device did not write it".
const S_PENDING: u8 = 0xff;
const WRITE_ZEROES_UNMAP: u32 = 1;
const ID_BYTES: u32 = 20;

const SECTOR: u64 = 512;
const MAX_DISKS: usize = 8;
const MAX_QUEUES: usize = 8;
const MAX_SLOTS: usize = 64;
/// No progress for this long: the device is stuck.
const TIMEOUT_MS: u64 = 10_000;
/// `write` flushes after every this many sectors (8 MiB) and at the end.
const FLUSH_EVERY: u64 = 16384;

/// The virtio PCI device ID of a block device (0x1040 + type 2).
pub const BLK_DEVICE_ID: u16 = 0x1042;

fn op_name(op: BlkOp) -> &'static str {
    match op {
        BlkOp::Verify => "blk-verify",
        BlkOp::Write => "blk-write",
        BlkOp::Ro => "blk-ro",
        BlkOp::Discard => "blk-discard",
        BlkOp::Reset => "blk-reset",
        BlkOp::Edge => "blk-edge",
        BlkOp::Bench => "blk-bench",
        BlkOp::Durable => "blk-durable",
    }
}

fn run_op(d: &mut Disk, op: BlkOp, bp: &BlkPlan, arena: &mut Arena) -> Result<(), Msg> {
    if d.broken {
        d.reinit(arena)
            .map_err(|e| fail!("re-initialising after an earlier error: {e}"))?;
    }
    d.op_start();
    let mut result = match op {
        BlkOp::Verify => op_verify(d, bp),
        BlkOp::Write => op_write(d, bp),
        BlkOp::Ro => op_ro(d, bp),
        BlkOp::Discard => op_discard(d, bp),
        BlkOp::Reset => op_reset(d, bp, arena),
        BlkOp::Edge => op_edge(d),
        BlkOp::Bench => op_bench(d, bp),
        BlkOp::Durable => op_durable(d, bp),
    };
    let completions = d.completed - d.op_completed0;
    let irqs = d.op_irqs();
    let mut why = Msg::new();
    if let Err(e) = &result {
        let _ = write!(why, "{e}; ");
    }
    if d.setup.msix && completions > 0 && irqs == 0 {
        let _ = write!(
            why,
            "{completions} completions but no MSI-X interrupt counted; "
        );
    }
    if !d.setup.msix && irqs != 0 {
        let _ = write!(
            why,
            "{irqs} interrupts while polling (MSI-X off, NO_VECTOR); "
        );
    }
    let status = d.t.status();
    if status & S_NEEDS_RESET != 0 {
        let _ = write!(why, "device status {status:#x} (DEVICE_NEEDS_RESET); ");
        d.broken = true;
    }
    if !why.is_empty() {
        result = Err(why);
    }
    if d.broken {
        // Honour DEVICE_NEEDS_RESET / recover from a timeout for the next operation.
        if let Err(e) = d.reinit(arena) {
            outln!("PROBE blk disk={} reinit_failed=\"{e}\"", d.name());
        }
    }
    result
}

/// The `blk` check and its operations. Reports `blk` (discovery and
/// initialisation of every virtio-blk function) and `blk-<op>` per operation.
pub fn check(devices: &mut Devices, plan: &Plan, report: &mut dyn FnMut(&str, Result<(), Msg>)) {
    let bp = &plan.blk;
    outln!(
        "PROBE blk plan ops={} irq={} qd={} req_kib={}",
        BlkOps(bp),
        if bp.msix { "msix" } else { "poll" },
        bp.qd,
        bp.req_kib
    );
    let bus = match devices.bus() {
        Ok(b) => b,
        Err(e) => {
            report("blk", Err(e));
            return;
        }
    };
    let mut why = Msg::new();
    let apic_id = if bp.msix { bus.apic_id() } else { 0 };
    let setup = || Setup {
        msix: bp.msix,
        qd: bp.qd as usize,
        slot_bytes: (bp.req_kib * 1024).max(4096).next_multiple_of(4096),
        queues: bp.queues.unwrap_or(MAX_QUEUES as u64) as usize,
    };
    let mut disks: [Option<Disk>; MAX_DISKS] = core::array::from_fn(|_| None);
    let mut ndisks = 0;
    let mut found = 0;
    let mut fns = [(0usize, DevFn(0)); MAX_DISKS + 1];
    for (i, f) in bus.find(BLK_DEVICE_ID) {
        if found < fns.len() {
            fns[found] = (i, f);
        }
        found += 1;
    }
    for &(i, devfn) in &fns[..found.min(fns.len())] {
        if let Some(e) = bus.bar_error(i) {
            let _ = write!(why, "{devfn}: {e}");
        }
        let t = match bus.transport(i) {
            Ok(t) => t,
            Err(e) => {
                let _ = write!(why, "{devfn}: {e}");
                continue;
            }
        };
        if ndisks == MAX_DISKS {
            let _ = write!(why, "{devfn}: more than {MAX_DISKS} disks; ");
            continue;
        }
        let mut d = Disk::new(t, setup(), apic_id);
        match d.init(&mut bus.arena) {
            Ok(()) => d.print_info(),
            Err(e) => {
                let _ = write!(why, "{devfn}: {e}; ");
                continue;
            }
        }
        disks[ndisks] = Some(d);
        ndisks += 1;
    }
    let arena = &mut bus.arena;
    outln!("PROBE blk disks={found} ready={ndisks}");
    match bp.disks {
        Some(want) if want != found as u64 => {
            let _ = write!(why, "{found} virtio-blk functions, expected {want}; ");
        }
        None if found == 0 => {
            let _ = write!(
                why,
                "no virtio-blk function (vendor 1af4 device 1042) on bus 0; "
            );
        }
        _ => {}
    }
    report("blk", if why.is_empty() { Ok(()) } else { Err(why) });

    let mut halt = false;
    for op in BLK_OPS.into_iter().filter(|op| bp.runs(*op)) {
        let mut why = Msg::new();
        let mut ran = 0;
        for (i, d) in disks[..ndisks].iter_mut().enumerate() {
            let Some(d) = d else { continue };
            if bp.disk.is_some_and(|sel| sel != i as u64) {
                continue;
            }
            ran += 1;
            if let Err(e) = run_op(d, op, bp, arena) {
                let _ = write!(why, "{}: {e}; ", d.name());
            }
        }
        if ran == 0 {
            let _ = write!(why, "no disk to run on; ");
        }
        halt |= op == BlkOp::Durable && why.is_empty();
        report(op_name(op), if why.is_empty() { Ok(()) } else { Err(why) });
    }
    for d in disks[..ndisks].iter().flatten() {
        if let Some((kind, len, want)) = d.used_len_first {
            outln!(
                "PROBE blk disk={} used_len_unexpected={} completed={} first_type={kind} first_len={len} first_expected={want}",
                d.name(),
                d.used_len_off,
                d.completed
            );
        }
    }
    if halt {
        outln!("PROBE blk halting");
        crate::power::halt();
    }
}
