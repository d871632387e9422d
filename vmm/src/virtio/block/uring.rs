//! The io_uring engine: one ring per queue worker. Reads, writes and
//! flushes of a notification's worth of requests are queued as
//! readv/writev/fsync(DATASYNC) SQEs and submitted with one system call;
//! completions wake the worker through an eventfd registered with the
//! ring. Discard, write-zeroes and GET_ID stay synchronous (rare, and
//! simpler so); so do page-cache hits on buffered images (see worker.rs).
//!
//! Every in-flight request keeps its iovecs and bounce buffer in a slot
//! until its completion is reaped, and dropping the ring first waits for
//! all of them, so the kernel never writes into memory we gave back.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::io::{Op, Transfer};
use super::request::Request;

/// A request whose I/O the kernel owns until its completion.
pub(super) struct InFlight {
    pub req: Request,
    pub transfer: Transfer,
}

pub(super) struct Uring {
    ring: IoUring,
    eventfd: EventFd,
    slots: Vec<Option<Box<InFlight>>>,
    free: Vec<usize>,
    inflight: usize,
    /// Most requests in flight: the SQ size, so the CQ (twice as large)
    /// can never overflow.
    cap: usize,
}

impl Uring {
    /// A ring of at least `entries` entries, or the kernel's refusal (no
    /// io_uring, disabled by sysctl or seccomp, out of memory).
    pub(super) fn new(entries: u32) -> io::Result<Uring> {
        let ring = IoUring::new(entries.clamp(1, 4096))?;
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let cap = ring.params().sq_entries() as usize;
        Ok(Uring {
            ring,
            eventfd,
            slots: Vec::new(),
            free: Vec::new(),
            inflight: 0,
            cap,
        })
    }

    /// Readable when completions arrived.
    pub(super) fn eventfd(&self) -> &EventFd {
        &self.eventfd
    }

    pub(super) fn inflight(&self) -> usize {
        self.inflight
    }

    /// Whether `push` must wait for a completion first.
    pub(super) fn is_full(&self) -> bool {
        self.inflight >= self.cap
    }

    /// Whether the ring can carry this transfer (else run it synchronously).
    pub(super) fn can_carry(transfer: &Transfer) -> bool {
        transfer.iovecs.len() <= libc::UIO_MAXIOV as usize
    }

    /// Queues `work`'s I/O on `fd`; the caller makes sure the ring is not
    /// full and `can_carry` holds. Gives `work` back if the SQ refuses.
    pub(super) fn push(
        &mut self,
        fd: RawFd,
        work: Box<InFlight>,
        dsync: bool,
    ) -> Result<(), Box<InFlight>> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let t = &work.transfer;
        let fd = types::Fd(fd);
        let entry: squeue::Entry = match t.op {
            Op::Read => opcode::Readv::new(fd, t.iovecs.as_ptr(), t.iovecs.len() as u32)
                .offset(t.pos())
                .build(),
            Op::Write => opcode::Writev::new(fd, t.iovecs.as_ptr(), t.iovecs.len() as u32)
                .offset(t.pos())
                .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                .build(),
            Op::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(slot as u64);
        let Some(place) = self.slots.get_mut(slot) else {
            return Err(work);
        };
        *place = Some(work);
        let mut sq = self.ring.submission();
        // The iovecs and their buffers (guest memory or the bounce buffer)
        // live in `self.slots[slot]` until its completion is reaped.
        // SAFETY: they outlive the operation: `Drop` waits for every
        // completion before any of it is freed.
        let pushed = unsafe { sq.push(&entry) };
        drop(sq);
        if pushed.is_err() {
            self.free.push(slot);
            return self
                .slots
                .get_mut(slot)
                .and_then(Option::take)
                .map_or(Ok(()), Err);
        }
        self.inflight += 1;
        Ok(())
    }

    /// Hands the queued SQEs to the kernel.
    pub(super) fn submit(&mut self) -> io::Result<()> {
        self.ring.submit().map(drop)
    }

    /// Submits, and blocks until at least one completion is there.
    pub(super) fn wait_one(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other.map(drop),
            }
        }
    }

    /// Takes every completion there is: the request and the CQE result
    /// (bytes moved, or minus errno).
    pub(super) fn reap(&mut self) -> Vec<(Box<InFlight>, i32)> {
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let mut out = Vec::with_capacity(done.len());
        for (slot, result) in done {
            let slot = slot as usize;
            if let Some(work) = self.slots.get_mut(slot).and_then(Option::take) {
                self.free.push(slot);
                self.inflight -= 1;
                out.push((work, result));
            }
        }
        out
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        while self.inflight > 0 {
            if let Err(e) = self.wait_one() {
                // Cannot happen with a live ring; leak the buffers rather
                // than free memory the kernel may still write.
                log::error!("virtio-blk: io_uring wait failed at teardown: {e}");
                std::mem::forget(std::mem::take(&mut self.slots));
                return;
            }
            drop(self.reap());
        }
    }
}
