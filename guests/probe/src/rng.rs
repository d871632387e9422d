//! The `rng` check: a virtio-rng (entropy device, virtio 1.x section 5.4)
//! driver over the modern PCI transport. The device has one queue
//! (requestq); the driver offers device-writable buffers and the device
//! fills them, possibly only partly, with random bytes (the used `len`).
//!
//! The check reads `probe.rng_bytes` bytes, `probe.rng_req` bytes per
//! buffer and up to `IN_FLIGHT` buffers at a time, waiting on MSI-X
//! interrupts or polling (`probe.rng_irq`), and judges the bytes: all
//! arrived, every byte value appears (from 64 KiB on), the byte counts are
//! plausible (chi-square), and no buffer repeats the one before it.

use crate::msg::Msg;
use crate::plan::{Plan, RngPlan};
use crate::time::{self, Deadline};
use crate::virtio::bus::{Bus, Devices, Irqs};
use crate::virtio::data::Fnv;
use crate::virtio::queue::{pick_size, SplitQueue, DESC_F_WRITE, RING_BYTES};
use crate::virtio::{DevFn, Transport, S_NEEDS_RESET};
use core::fmt::Write as _;

/// The virtio PCI device ID of an entropy device (0x1040 + type 4).
pub const RNG_DEVICE_ID: u16 = 0x1044;
const MAX_DEVS: usize = 4;
/// Buffers offered at a time.
const IN_FLIGHT: usize = 16;
/// No buffer returned for this long: the device is stuck.
const TIMEOUT_MS: u64 = 10_000;
/// Chi-square bound over the 256 byte values (255 degrees of freedom: mean
/// 255, sd 22.6; a fair source exceeds 400 with probability ~1e-8).
const CHI2_MAX: u64 = 400;

struct Rng {
    t: Transport,
    vq: SplitQueue,
    irqs: Irqs,
    buf: u64,
    buf_bytes: u64,
    features: u64,
    offered: u64,
}

/// What one read produced.
struct Stats {
    bytes: u64,
    counts: [u64; 256],
    fnv: Fnv,
    requests: u64,
    short: u64,
    empty: u64,
    repeats: u64,
    us: u64,
    irqs: u32,
}

impl Rng {
    fn init(t: Transport, rp: &RngPlan, bus: &mut Bus) -> Result<Rng, Msg> {
        let (offered, features) = t.begin_init(0)?;
        if rp.msix && !t.has_msix() {
            return Err(fail!("no MSI-X capability (probe.rng_irq=msix)"));
        }
        let apic_id = if rp.msix { bus.apic_id() } else { 0 };
        let irqs = Irqs::new(&t, rp.msix, 1, apic_id);
        irqs.program(&t)?;
        t.select_queue(0);
        let max = t.queue_max_size();
        if max == 0 {
            return Err(fail!("no request queue (queue 0 size 0)"));
        }
        let size = pick_size(max);
        let buf_bytes = rp.req.next_multiple_of(64);
        let bytes = RING_BYTES + IN_FLIGHT as u64 * buf_bytes;
        let Some(mem) = bus.arena.alloc(bytes, 4096) else {
            return Err(fail!(
                "out of DMA memory ({} KiB needed, {} KiB left)",
                bytes >> 10,
                bus.arena.free_bytes() >> 10
            ));
        };
        let mut vq = SplitQueue::new(0, mem);
        vq.activate(&t, size, irqs.queue_vector(0))?;
        t.driver_ok()?;
        Ok(Rng {
            t,
            vq,
            irqs,
            buf: mem + RING_BYTES,
            buf_bytes,
            features,
            offered,
        })
    }

    fn slot(&self, s: usize) -> u64 {
        self.buf + s as u64 * self.buf_bytes
    }

    /// Read `want` bytes, `req` per buffer.
    fn read(&mut self, want: u64, req: u64) -> Result<Stats, Msg> {
        let slots = IN_FLIGHT.min(usize::from(self.vq.size));
        let mut st = Stats {
            bytes: 0,
            counts: [0; 256],
            fnv: Fnv::new(),
            requests: 0,
            short: 0,
            empty: 0,
            repeats: 0,
            us: 0,
            irqs: 0,
        };
        let irq0 = self.irqs.sum();
        let t0 = time::now_us();
        // Bytes asked for by buffers in flight, per slot.
        let mut asked = [0u64; IN_FLIGHT];
        let mut outstanding = 0u64;
        let mut prev_fnv: Option<u64> = None;
        let mut deadline = Deadline::after_ms(TIMEOUT_MS);
        loop {
            // Offer buffers for what is still missing.
            let mut posted = false;
            for (s, a) in asked.iter_mut().enumerate().take(slots) {
                let missing = want - st.bytes - outstanding;
                if *a != 0 || missing == 0 {
                    continue;
                }
                let n = missing.min(req);
                self.vq
                    .set_desc(s as u16, self.slot(s), n as u32, DESC_F_WRITE, 0);
                self.vq.push(s as u16);
                *a = n;
                outstanding += n;
                posted = true;
            }
            if posted {
                self.vq.publish();
                self.vq.kick();
            }
            if st.bytes == want {
                break;
            }
            let irqs = self.irqs.sum();
            let mut got = false;
            while let Some((id, len)) = self.vq.pop_used() {
                let s = id as usize;
                if s >= slots || asked[s] == 0 || u64::from(len) > asked[s] {
                    return Err(fail!("used element id {id} len {len}: not a buffer in flight (or longer than it)"));
                }
                // SAFETY: the slot's buffer in the DMA arena; the device returned it.
                let data =
                    unsafe { core::slice::from_raw_parts(self.slot(s) as *const u8, len as usize) };
                for &b in data {
                    st.counts[usize::from(b)] += 1;
                }
                st.fnv.update(data);
                let f = Fnv::of(data);
                if len >= 16 && prev_fnv == Some(f) {
                    st.repeats += 1;
                }
                if len >= 16 {
                    prev_fnv = Some(f);
                }
                st.requests += 1;
                st.bytes += u64::from(len);
                if len == 0 {
                    st.empty += 1;
                } else if u64::from(len) < asked[s] {
                    st.short += 1;
                }
                outstanding -= asked[s];
                asked[s] = 0;
                got = true;
            }
            if got {
                deadline = Deadline::after_ms(TIMEOUT_MS);
                continue;
            }
            if deadline.expired() {
                return Err(fail!(
                    "no buffer returned within {} s ({} of {want} bytes; status {:#x}, avail {} used {}, irqs {})",
                    TIMEOUT_MS / 1000,
                    st.bytes,
                    self.t.status(),
                    self.vq.avail_idx(),
                    self.vq.used_idx(),
                    self.irqs.sum().wrapping_sub(irq0)
                ));
            }
            if self.irqs.msix {
                // Sleep on the interrupt counter (bounded by the deadline).
                while self.irqs.sum() == irqs && !deadline.expired() {
                    crate::hw::pause();
                }
            } else {
                crate::hw::pause();
            }
        }
        st.us = time::now_us() - t0;
        st.irqs = self.irqs.sum().wrapping_sub(irq0);
        Ok(st)
    }
}

/// Σ (count − e)² / e with e = bytes / 256, rounded down.
fn chi2(st: &Stats) -> u64 {
    let n = u128::from(st.bytes);
    if n == 0 {
        return 0;
    }
    // 256 · Σ (c − n/256)² / n  =  Σ (256c − n)² / (256 n)
    let sum: u128 = st
        .counts
        .iter()
        .map(|&c| (i128::from(c) * 256 - n as i128).unsigned_abs().pow(2))
        .sum();
    (sum / (256 * n)) as u64
}

fn judge(st: &Stats, want: u64) -> Msg {
    let mut why = Msg::new();
    let distinct = st.counts.iter().filter(|&&c| c != 0).count() as u64;
    if st.bytes != want {
        let _ = write!(why, "{} bytes, expected {want}; ", st.bytes);
    }
    if want >= 65536 && distinct != 256 {
        let _ = write!(
            why,
            "only {distinct} of 256 byte values in {} bytes; ",
            st.bytes
        );
    } else if distinct < want.min(256) / 2 {
        let _ = write!(
            why,
            "only {distinct} distinct byte values in {} bytes; ",
            st.bytes
        );
    }
    if st.bytes >= 4096 && chi2(st) > CHI2_MAX {
        let _ = write!(
            why,
            "byte counts implausible for a uniform source (chi-square {} > {CHI2_MAX}); ",
            chi2(st)
        );
    }
    if st.repeats != 0 {
        let _ = write!(why, "{} buffers repeat the one before; ", st.repeats);
    }
    if st.requests >= 2 && st.repeats == 0 && distinct <= 1 {
        let _ = write!(why, "constant output; ");
    }
    why
}

/// The `rng` check: every virtio-rng function, initialised and read.
pub fn check(devices: &mut Devices, plan: &Plan) -> Result<(), Msg> {
    let rp = &plan.rng;
    outln!(
        "PROBE rng plan bytes={} req={} irq={}",
        rp.bytes,
        rp.req,
        if rp.msix { "msix" } else { "poll" }
    );
    let bus = devices.bus()?;
    let mut why = Msg::new();
    let mut fns = [(0usize, DevFn(0)); MAX_DEVS];
    let mut found = 0;
    for (i, f) in bus.find(RNG_DEVICE_ID) {
        if found < MAX_DEVS {
            fns[found] = (i, f);
        } else {
            let _ = write!(why, "{f}: more than {MAX_DEVS} entropy devices, not read; ");
        }
        found += 1;
    }
    match rp.devs {
        Some(n) if n != found as u64 => {
            let _ = write!(why, "{found} virtio-rng functions, expected {n}; ");
        }
        None if found == 0 => {
            let _ = write!(
                why,
                "no virtio-rng function (vendor 1af4 device 1044) on bus 0; "
            );
        }
        _ => {}
    }
    for &(i, devfn) in &fns[..found.min(MAX_DEVS)] {
        if let Some(e) = bus.bar_error(i) {
            let _ = write!(why, "{devfn}: {e}");
        }
        let mut r = match bus.transport(i).and_then(|t| Rng::init(t, rp, bus)) {
            Ok(r) => r,
            Err(e) => {
                let _ = write!(why, "{devfn}: {e}; ");
                continue;
            }
        };
        outln!(
            "PROBE rng dev={devfn} features={:#x} offered={:#x} qsize={} irq={} msix_entries={} vectors={}",
            r.features,
            r.offered,
            r.vq.size,
            r.irqs.mode(),
            r.t.msix_entries,
            r.irqs.entries
        );
        let st = match r.read(rp.bytes, rp.req) {
            Ok(st) => st,
            Err(e) => {
                let _ = write!(why, "{devfn}: {e}; ");
                continue;
            }
        };
        outln!(
            "PROBE rng bytes={} distinct={} zeros={} fnv64={:016x} dev={devfn} chi2={} requests={} short={} empty={} repeats={} us={} kib_per_s={} irq={} irqs={}",
            st.bytes,
            st.counts.iter().filter(|&&c| c != 0).count(),
            st.counts[0],
            st.fnv.0,
            chi2(&st),
            st.requests,
            st.short,
            st.empty,
            st.repeats,
            st.us,
            (st.bytes * 1_000_000 / 1024).checked_div(st.us).unwrap_or(0),
            r.irqs.mode(),
            st.irqs
        );
        let mut w = judge(&st, rp.bytes);
        if r.irqs.msix && st.requests > 0 && st.irqs == 0 {
            let _ = write!(
                w,
                "{} buffers returned but no MSI-X interrupt counted; ",
                st.requests
            );
        }
        if !r.irqs.msix && st.irqs != 0 {
            let _ = write!(
                w,
                "{} interrupts while polling (MSI-X off, NO_VECTOR); ",
                st.irqs
            );
        }
        let status = r.t.status();
        if status & S_NEEDS_RESET != 0 {
            let _ = write!(w, "device status {status:#x} (DEVICE_NEEDS_RESET); ");
        }
        if !w.is_empty() {
            let _ = write!(why, "{devfn}: {w}");
        }
        // Leave the device quiet for whatever runs next.
        let _ = r.t.reset();
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}
