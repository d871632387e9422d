//! Requests on a virtio-blk disk: submitting them into request slots,
//! retiring their completions from the used rings (waiting on MSI-X
//! interrupts or polling), keeping several in flight, and the requests the
//! operations are built from (read, write, flush, DISCARD/WRITE_ZEROES).

use super::device::{Disk, Req, Slot};
use super::{MAX_QUEUES, MAX_SLOTS, SECTOR, S_OK, S_PENDING, TIMEOUT_MS, T_FLUSH, T_IN, T_OUT};
use crate::msg::Msg;
use crate::time::Deadline;
use crate::virtio::queue::{DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::S_NEEDS_RESET;
use core::fmt::Write as _;

impl Disk {
    fn slot_buf(&mut self, qi: usize, s: usize) -> &mut [u8] {
        let addr = self.q[qi].data + s as u64 * self.setup.slot_bytes;
        // SAFETY: the slot's data buffer in the DMA arena; the slot is not in
        // flight (callers only ask for idle or completed slots), so the
        // device is not accessing it, and nothing else refers to it.
        unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, self.setup.slot_bytes as usize) }
    }

    fn submit(&mut self, qi: usize, s: usize, req: Req) {
        let slot_bytes = self.setup.slot_bytes;
        let q = &mut self.q[qi];
        let hdr = q.hdrs + 16 * s as u64;
        let status = q.hdrs + 2048 + s as u64;
        let data = q.data + s as u64 * slot_bytes;
        // SAFETY: the slot's header and status byte, in the DMA arena; idle.
        unsafe {
            core::ptr::write_volatile(hdr as *mut u32, req.kind);
            core::ptr::write_volatile((hdr + 4) as *mut u32, 0);
            core::ptr::write_volatile((hdr + 8) as *mut u64, req.lba);
            core::ptr::write_volatile(status as *mut u8, S_PENDING);
        }
        let d0 = 3 * s as u16;
        if req.len > 0 {
            q.vq.set_desc(d0, hdr, 16, DESC_F_NEXT, d0 + 1);
            let w = if req.device_writes() { DESC_F_WRITE } else { 0 };
            q.vq.set_desc(d0 + 1, data, req.len, DESC_F_NEXT | w, d0 + 2);
        } else {
            q.vq.set_desc(d0, hdr, 16, DESC_F_NEXT, d0 + 2);
        }
        q.vq.set_desc(d0 + 2, status, 1, DESC_F_WRITE, 0);
        q.vq.push(d0);
        q.slots[s] = Slot {
            kind: req.kind,
            busy: true,
            done: false,
            status: S_PENDING,
            used_len: 0,
            expect_len: if req.device_writes() { req.len + 1 } else { 1 },
        };
    }

    /// Take the used elements of queue `qi`; how many.
    fn reap(&mut self, qi: usize) -> Result<u32, Msg> {
        let spq = self.spq;
        let q = &mut self.q[qi];
        let mut n = 0;
        while let Some((id, len)) = q.vq.pop_used() {
            let s = (id / 3) as usize;
            if id % 3 != 0 || s >= spq || !q.slots[s].busy || q.slots[s].done {
                self.broken = true;
                return Err(fail!(
                    "queue {qi}: used element id {id} len {len} is not a request in flight"
                ));
            }
            // SAFETY: the slot's status byte (DMA arena), written by the device before the used idx.
            let status =
                unsafe { core::ptr::read_volatile((q.hdrs + 2048 + s as u64) as *const u8) };
            let slot = &mut q.slots[s];
            slot.done = true;
            slot.status = status;
            slot.used_len = len;
            // After an error the device may have written the status only.
            if status == S_OK && len != slot.expect_len {
                self.used_len_off += 1;
                self.used_len_first
                    .get_or_insert((slot.kind, len, slot.expect_len));
            }
            n += 1;
        }
        self.completed += u64::from(n);
        Ok(n)
    }

    /// What the queues look like, for a timeout report.
    fn stuck(&mut self, what: &str) -> Msg {
        self.broken = true;
        let mut m = fail!(
            "{what}: no completion within {} s (status {:#x}",
            TIMEOUT_MS / 1000,
            self.t.status()
        );
        for qi in 0..self.nq {
            let q = &self.q[qi].vq;
            let _ = write!(
                m,
                ", q{qi} avail {} used {} seen {}",
                q.avail_idx(),
                q.used_idx(),
                q.outstanding()
            );
        }
        let _ = write!(m, ", irqs {})", self.irq_sum());
        m
    }

    /// Wait until some request completes: on interrupts (the counters the
    /// MSI-X stubs bump) or by polling the used rings.
    fn wait(&mut self) -> Result<(), Msg> {
        let deadline = Deadline::after_ms(TIMEOUT_MS);
        loop {
            let irqs = self.irq_sum();
            let mut got = 0;
            for qi in 0..self.nq {
                got += self.reap(qi)?;
            }
            if got > 0 {
                return Ok(());
            }
            if self.setup.msix {
                while self.irq_sum() == irqs {
                    if deadline.expired() {
                        let used = (0..self.nq).any(|qi| self.q[qi].vq.has_used());
                        return Err(self.stuck(if used {
                            "used ring moved but no MSI-X interrupt"
                        } else {
                            "waiting for an interrupt"
                        }));
                    }
                    crate::hw::pause();
                }
                // A config interrupt may say DEVICE_NEEDS_RESET.
                if self.irqs.config_count() != 0 && self.t.status() & S_NEEDS_RESET != 0 {
                    self.broken = true;
                    return Err(fail!(
                        "device set DEVICE_NEEDS_RESET (status {:#x})",
                        self.t.status()
                    ));
                }
            } else {
                if deadline.expired() {
                    return Err(self.stuck("polling"));
                }
                crate::hw::pause();
            }
        }
    }

    /// Wait for everything in flight (after an error), forgetting the results.
    fn drain(&mut self) {
        while (0..self.nq).any(|qi| {
            self.q[qi].slots[..self.spq]
                .iter()
                .any(|s| s.busy && !s.done)
        }) {
            if self.wait().is_err() {
                self.broken = true;
                return;
            }
        }
        for qi in 0..self.nq {
            self.q[qi].slots = [Slot::default(); MAX_SLOTS];
        }
    }

    /// Issue `n` requests, up to `qd` in flight: `prep(i, buf)` fills request
    /// i's data buffer and describes it; `retire(i, status, buf)` sees it
    /// complete, in order of i.
    pub fn pipeline(
        &mut self,
        n: u64,
        mut prep: impl FnMut(u64, &mut [u8]) -> Req,
        mut retire: impl FnMut(u64, u8, &[u8]) -> Result<(), Msg>,
    ) -> Result<(), Msg> {
        if self.broken {
            return Err(fail!("device unusable after an earlier error"));
        }
        let nq = self.nq as u64;
        let spq = self.spq as u64;
        let qd = (self.setup.qd as u64).min(nq * spq).max(1);
        let at = |i: u64| ((i % nq) as usize, ((i / nq) % spq) as usize);
        let (mut next, mut retired) = (0u64, 0u64);
        while retired < n {
            let mut kick = [false; MAX_QUEUES];
            while next < n && next - retired < qd {
                let (qi, s) = at(next);
                let req = prep(next, self.slot_buf(qi, s));
                self.submit(qi, s, req);
                kick[qi] = true;
                next += 1;
            }
            for (qi, _) in kick.iter().enumerate().filter(|(_, k)| **k) {
                self.q[qi].vq.publish();
                self.q[qi].vq.kick();
            }
            loop {
                let (qi, s) = at(retired);
                if !self.q[qi].slots[s].done {
                    if let Err(e) = self.reap(qi) {
                        self.drain();
                        return Err(e);
                    }
                    if !self.q[qi].slots[s].done {
                        break;
                    }
                }
                let status = self.q[qi].slots[s].status;
                self.q[qi].slots[s] = Slot::default();
                if let Err(e) = retire(retired, status, self.slot_buf(qi, s)) {
                    self.drain();
                    return Err(e);
                }
                retired += 1;
                if retired == n {
                    break;
                }
            }
            if retired < n && next - retired >= qd.min(n - retired) {
                if let Err(e) = self.wait() {
                    self.drain();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// One request; its status.
    pub fn single(
        &mut self,
        req: Req,
        fill: impl FnOnce(&mut [u8]),
        out: impl FnOnce(&[u8]),
    ) -> Result<u8, Msg> {
        let mut fill = Some(fill);
        let mut out = Some(out);
        let mut status = S_PENDING;
        self.pipeline(
            1,
            |_, buf| {
                if let Some(f) = fill.take() {
                    f(buf);
                }
                req
            },
            |_, st, buf| {
                status = st;
                if let Some(o) = out.take() {
                    o(buf);
                }
                Ok(())
            },
        )?;
        Ok(status)
    }

    pub fn flush(&mut self) -> Result<(), Msg> {
        match self.single(
            Req {
                kind: T_FLUSH,
                lba: 0,
                len: 0,
            },
            |_| {},
            |_| {},
        )? {
            S_OK => Ok(()),
            st => Err(fail!("FLUSH status {st}")),
        }
    }

    pub fn check_range(&self, lba: u64, sectors: u64) -> Result<(), Msg> {
        if lba
            .checked_add(sectors)
            .is_none_or(|end| end > self.capacity)
        {
            return Err(fail!(
                "sectors {lba}+{sectors} beyond the capacity {}",
                self.capacity
            ));
        }
        Ok(())
    }

    /// Read `[lba, lba+sectors)`; `see(lba, data)` per request, in order.
    pub fn read_region(
        &mut self,
        lba: u64,
        sectors: u64,
        mut see: impl FnMut(u64, &[u8]),
    ) -> Result<(), Msg> {
        self.check_range(lba, sectors)?;
        let rs = self.req_sectors();
        let chunk = |i: u64| (lba + i * rs, rs.min(sectors - i * rs));
        self.pipeline(
            sectors.div_ceil(rs),
            |i, _| {
                let (l, n) = chunk(i);
                Req {
                    kind: T_IN,
                    lba: l,
                    len: (n * SECTOR) as u32,
                }
            },
            |i, st, buf| {
                let (l, n) = chunk(i);
                if st != S_OK {
                    return Err(fail!("read of sectors {l}+{n}: status {st}"));
                }
                see(l, &buf[..(n * SECTOR) as usize]);
                Ok(())
            },
        )
    }

    /// Write `[lba, lba+sectors)`: `fill(lba, buf)` per request, in order.
    pub fn write_region(
        &mut self,
        lba: u64,
        sectors: u64,
        mut fill: impl FnMut(u64, &mut [u8]),
    ) -> Result<(), Msg> {
        self.check_range(lba, sectors)?;
        let rs = self.req_sectors();
        let chunk = |i: u64| (lba + i * rs, rs.min(sectors - i * rs));
        self.pipeline(
            sectors.div_ceil(rs),
            |i, buf| {
                let (l, n) = chunk(i);
                fill(l, &mut buf[..(n * SECTOR) as usize]);
                Req {
                    kind: T_OUT,
                    lba: l,
                    len: (n * SECTOR) as u32,
                }
            },
            |i, st, _| {
                let (l, n) = chunk(i);
                if st != S_OK {
                    return Err(fail!("write of sectors {l}+{n}: status {st}"));
                }
                Ok(())
            },
        )
    }

    /// DISCARD or WRITE_ZEROES over a range, one segment per request, each
    /// at most `max` sectors (0: no limit). The statuses, worst first.
    pub fn ranged(
        &mut self,
        kind: u32,
        lba: u64,
        sectors: u64,
        max: u32,
        flags: u32,
    ) -> Result<u8, Msg> {
        self.check_range(lba, sectors)?;
        let per = if max == 0 {
            sectors
        } else {
            u64::from(max).min(sectors)
        };
        let chunk = |i: u64| (lba + i * per, per.min(sectors - i * per));
        let mut worst = S_OK;
        self.pipeline(
            sectors.div_ceil(per),
            |i, buf| {
                let (l, n) = chunk(i);
                buf[..8].copy_from_slice(&l.to_le_bytes());
                buf[8..12].copy_from_slice(&(n as u32).to_le_bytes());
                buf[12..16].copy_from_slice(&flags.to_le_bytes());
                Req {
                    kind,
                    lba: 0,
                    len: 16,
                }
            },
            |_, st, _| {
                if st != S_OK && (worst == S_OK || st < worst) {
                    worst = st;
                }
                Ok(())
            },
        )?;
        Ok(worst)
    }
}
