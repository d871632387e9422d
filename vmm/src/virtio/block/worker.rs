//! One worker per queue: an epoll loop over the queue's notify eventfd, the
//! device's stop eventfd and (with io_uring) the ring's completion eventfd.
//! It pops chains, parses them, runs or queues their I/O, puts them in the
//! used ring and interrupts the driver when the ring's notification rules
//! (EVENT_IDX included) ask for it.
//!
//! One thread per queue rather than one for the device: with MQ the guest
//! spreads requests over queues exactly so they are served in parallel;
//! per-queue threads need no locking (each owns its queue and its ring;
//! the image and the counters are shared read-only or atomic).

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::disk::Disk;
use super::io::{write_stream, Op, Transfer};
use super::request::{parse, Kind, Rejected, Request};
use super::uring::{InFlight, Uring};
use super::{BlockStats, Engine, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use crate::memory::GuestMemoryMmap;
use crate::virtio::VirtioInterrupt;

const TOKEN_STOP: u64 = 0;
const TOKEN_NOTIFY: u64 = 1;
const TOKEN_RING: u64 = 2;

/// Everything one queue's worker needs.
pub(super) struct QueueHandler {
    // Field order matters: the ring drops first, waiting for the kernel to
    // finish with guest memory, before `mem` may be unmapped.
    uring: Option<Uring>,
    queue: Queue,
    mem: GuestMemoryMmap,
    index: u16,
    disk: Arc<Disk>,
    serial: [u8; VIRTIO_BLK_ID_BYTES],
    stats: Arc<BlockStats>,
    interrupt: Arc<dyn VirtioInterrupt>,
    /// Writes must be durable on completion (the driver did not take
    /// VIRTIO_BLK_F_FLUSH, so it cannot ask for a flush: 5.2.6.2).
    writethrough: bool,
    /// Chains returned since the last interrupt decision.
    unsignalled: usize,
    /// Buffered images with a ring: try the page cache without blocking
    /// (RWF_NOWAIT) before handing a read or write to the ring, whose
    /// hand-off to kernel workers costs more than a page-cache hit (see
    /// tests/bench.rs). Cleared for good when the file system refuses.
    nowait_reads: bool,
    nowait_writes: bool,
    /// Buffered writes the file system cannot take without blocking are
    /// page-cache copies done here, not in a kernel worker (measured
    /// faster); writethrough writes always go to the ring.
    inline_writes: bool,
}

/// The parts of a handler that do not change per request.
pub(super) struct HandlerConfig {
    pub index: u16,
    pub disk: Arc<Disk>,
    pub serial: [u8; VIRTIO_BLK_ID_BYTES],
    pub stats: Arc<BlockStats>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub writethrough: bool,
    pub engine: Engine,
}

impl QueueHandler {
    pub(super) fn new(cfg: HandlerConfig, queue: Queue, mem: GuestMemoryMmap) -> QueueHandler {
        let uring = match cfg.engine {
            Engine::Sync => None,
            Engine::Auto | Engine::IoUring => match Uring::new(u32::from(queue.size().max(1))) {
                Ok(ring) => Some(ring),
                Err(e) => {
                    if cfg.engine == Engine::IoUring {
                        log::warn!("virtio-blk: io_uring unavailable ({e}); using synchronous I/O");
                    } else {
                        log::info!("virtio-blk: io_uring unavailable ({e}); using synchronous I/O");
                    }
                    None
                }
            },
        };
        // Page-cache hits cost more through the ring (a hand-off to the
        // kernel's workers) than done in place: see tests/bench.rs.
        let buffered_ring = uring.is_some() && !cfg.disk.direct();
        QueueHandler {
            uring,
            queue,
            mem,
            index: cfg.index,
            disk: cfg.disk,
            serial: cfg.serial,
            stats: cfg.stats,
            interrupt: cfg.interrupt,
            writethrough: cfg.writethrough,
            unsignalled: 0,
            nowait_reads: buffered_ring,
            nowait_writes: buffered_ring && !cfg.writethrough,
            inline_writes: false,
        }
    }

    /// The engine actually in use.
    pub(super) fn engine(&self) -> Engine {
        if self.uring.is_some() {
            Engine::IoUring
        } else {
            Engine::Sync
        }
    }

    /// Serves every available chain, then interrupts if needed.
    pub(super) fn process_available(&mut self) {
        let mut idle_rounds = 0;
        loop {
            if let Err(e) = self.queue.disable_notification(&self.mem) {
                log::debug!("virtio-blk: queue {}: {e}", self.index);
            }
            let mut popped = 0usize;
            while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
                popped += 1;
                match parse(chain, &self.mem, &self.disk) {
                    Ok(req) => self.start(req),
                    Err(rejected) => self.reject(rejected),
                }
            }
            // A driver whose avail index runs more than a queue ahead gets
            // nothing popped, yet "more available" forever: do not spin.
            idle_rounds = if popped == 0 { idle_rounds + 1 } else { 0 };
            if idle_rounds > 1 {
                log::debug!(
                    "virtio-blk: queue {}: available ring index is invalid",
                    self.index
                );
                break;
            }
            match self.queue.enable_notification(&self.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    log::debug!("virtio-blk: queue {}: {e}", self.index);
                    break;
                }
            }
        }
        if let Some(ring) = &mut self.uring {
            if let Err(e) = ring.submit() {
                log::error!("virtio-blk: queue {}: io_uring submit: {e}", self.index);
            }
        }
        self.signal();
    }

    /// Completes whatever the ring finished, then interrupts if needed.
    pub(super) fn reap(&mut self) {
        let done = match &mut self.uring {
            Some(ring) => ring.reap(),
            None => return,
        };
        for (work, result) in done {
            self.finish_async(*work, result);
        }
        self.signal();
    }

    /// Waits for every in-flight request and completes it.
    pub(super) fn drain(&mut self) {
        loop {
            match &mut self.uring {
                Some(ring) if ring.inflight() > 0 => {
                    if let Err(e) = ring.wait_one() {
                        log::error!("virtio-blk: queue {}: io_uring wait: {e}", self.index);
                        return;
                    }
                }
                _ => return,
            }
            self.reap();
        }
    }

    fn reject(&mut self, rejected: Rejected) {
        log::debug!(
            "virtio-blk: queue {}: request refused: {}",
            self.index,
            rejected.error
        );
        match rejected.status {
            Some(addr) => self.complete(rejected.head, Some(addr), rejected.error.status(), 1),
            None => self.complete(rejected.head, None, VIRTIO_BLK_S_IOERR, 0),
        }
    }

    fn start(&mut self, req: Request) {
        let transfer = match &req.kind {
            Kind::In { offset } => {
                Transfer::data(&self.mem, &self.disk, Op::Read, *offset, req.data.clone())
            }
            Kind::Out { offset } => {
                Transfer::data(&self.mem, &self.disk, Op::Write, *offset, req.data.clone())
            }
            Kind::Flush => Ok(Transfer::flush()),
            Kind::GetId | Kind::Discard(_) | Kind::WriteZeroes(_) => {
                let (status, used) = self.execute_other(&req);
                self.complete(req.head, Some(req.status), status, used);
                return;
            }
        };
        let transfer = match transfer {
            Ok(t) => t,
            Err(e) => {
                log::debug!(
                    "virtio-blk: queue {}: cannot map request buffers: {e}",
                    self.index
                );
                self.complete(req.head, Some(req.status), VIRTIO_BLK_S_IOERR, 1);
                return;
            }
        };
        let mut transfer = transfer;
        if self.try_page_cache(&mut transfer) {
            let result = if transfer.remaining() == 0 {
                Ok(())
            } else {
                transfer.run_sync(&self.disk, self.writethrough)
            };
            self.finish(req, transfer, result);
            return;
        }
        let mut work = Box::new(InFlight { req, transfer });
        if self.uring.is_some() && Uring::can_carry(&work.transfer) {
            self.make_room();
            if let Some(ring) = &mut self.uring {
                match ring.push(self.disk.fd(), work, self.writethrough) {
                    Ok(()) => return,
                    Err(back) => work = back,
                }
            }
        }
        let InFlight { req, mut transfer } = *work;
        let result = transfer.run_sync(&self.disk, self.writethrough);
        self.finish(req, transfer, result);
    }

    /// Buffered I/O: moves what the page cache allows without blocking.
    /// True when the rest (if any) should be done here and now: the
    /// request was a page-cache hit, or partly one (a read stopped by a
    /// readahead mark), or an inline write.
    fn try_page_cache(&mut self, transfer: &mut Transfer) -> bool {
        let (nowait, inline) = match transfer.op {
            Op::Read => (&mut self.nowait_reads, false),
            Op::Write => (&mut self.nowait_writes, self.inline_writes),
            Op::Flush => return false,
        };
        if inline {
            return true;
        }
        if !*nowait {
            return false;
        }
        if !transfer.try_nowait(&self.disk) {
            *nowait = false;
            if transfer.op == Op::Write {
                self.inline_writes = true;
                return true;
            }
        }
        transfer.done > 0
    }

    /// Completes in-flight requests until the ring takes one more.
    fn make_room(&mut self) {
        while let Some(ring) = &mut self.uring {
            if !ring.is_full() {
                return;
            }
            if let Err(e) = ring.wait_one() {
                log::error!("virtio-blk: queue {}: io_uring wait: {e}", self.index);
                return;
            }
            let done = ring.reap();
            for (work, result) in done {
                self.finish_async(*work, result);
            }
        }
    }

    fn finish_async(&mut self, work: InFlight, result: i32) {
        let InFlight { req, mut transfer } = work;
        let result = match usize::try_from(result) {
            Ok(n) => {
                transfer.advance(n);
                // Short transfers (or none): finish the rest here.
                if transfer.remaining() > 0 {
                    transfer.run_sync(&self.disk, self.writethrough)
                } else {
                    Ok(())
                }
            }
            Err(_) if result == -libc::EAGAIN || result == -libc::EINTR => {
                transfer.run_sync(&self.disk, self.writethrough)
            }
            Err(_) => Err(std::io::Error::from_raw_os_error(-result)),
        };
        self.finish(req, transfer, result);
    }

    fn finish(&mut self, req: Request, transfer: Transfer, result: std::io::Result<()>) {
        let ok = match result {
            Ok(()) => transfer.finish(&self.mem),
            Err(e) => {
                log::warn!(
                    "virtio-blk: {}: {:?} at {}: {e}",
                    self.disk.path().display(),
                    transfer.op,
                    transfer.offset
                );
                false
            }
        };
        let len = transfer.len as u64;
        if ok {
            match transfer.op {
                Op::Read => BlockStats::add(&self.stats.read_bytes, len),
                Op::Write => BlockStats::add(&self.stats.write_bytes, len),
                Op::Flush => BlockStats::add(&self.stats.flushes, 1),
            }
        }
        let (status, used) = match (ok, transfer.op) {
            (true, Op::Read) => (VIRTIO_BLK_S_OK, (transfer.len as u32).saturating_add(1)),
            (true, _) => (VIRTIO_BLK_S_OK, 1),
            (false, _) => (VIRTIO_BLK_S_IOERR, 1),
        };
        self.complete(req.head, Some(req.status), status, used);
    }

    /// GET_ID, discard and write-zeroes, run right here.
    fn execute_other(&self, req: &Request) -> (u8, u32) {
        match &req.kind {
            Kind::GetId => match write_stream(&self.mem, &req.data, &self.serial) {
                Some(n) => (VIRTIO_BLK_S_OK, n as u32 + 1),
                None => (VIRTIO_BLK_S_IOERR, 1),
            },
            Kind::Discard(segments) | Kind::WriteZeroes(segments) => {
                let zero = matches!(req.kind, Kind::WriteZeroes(_));
                for s in segments {
                    let r = if zero {
                        self.disk
                            .write_zeroes(s.offset, s.len, s.unmap, self.writethrough)
                    } else {
                        self.disk.discard(s.offset, s.len)
                    };
                    if let Err(e) = r {
                        log::warn!(
                            "virtio-blk: {}: discard/zeroes at {}: {e}",
                            self.disk.path().display(),
                            s.offset
                        );
                        return (VIRTIO_BLK_S_IOERR, 1);
                    }
                }
                BlockStats::add(&self.stats.discards, 1);
                (VIRTIO_BLK_S_OK, 1)
            }
            _ => (VIRTIO_BLK_S_IOERR, 1),
        }
    }

    /// Writes the status (if there is somewhere to) and returns the chain.
    fn complete(&mut self, head: u16, status_addr: Option<GuestAddress>, status: u8, used: u32) {
        let mut used = used;
        if let Some(addr) = status_addr {
            if self.mem.write_obj(status, addr).is_err() {
                used = 0;
            }
        }
        BlockStats::add(&self.stats.requests, 1);
        if status != VIRTIO_BLK_S_OK || status_addr.is_none() {
            BlockStats::add(&self.stats.errors, 1);
        }
        match self.queue.add_used(&self.mem, head, used) {
            Ok(()) => self.unsignalled += 1,
            Err(e) => log::debug!(
                "virtio-blk: queue {}: cannot return chain {head}: {e}",
                self.index
            ),
        }
    }

    /// Interrupts the driver if the used ring changed and it wants to know.
    fn signal(&mut self) {
        if self.unsignalled == 0 {
            return;
        }
        self.unsignalled = 0;
        match self.queue.needs_notification(&self.mem) {
            Ok(false) => {}
            Ok(true) | Err(_) => self.interrupt.trigger_queue(self.index),
        }
    }
}

/// The worker's loop; returns when `stop` becomes readable, after every
/// in-flight request completed.
pub(super) fn run(mut handler: QueueHandler, notify: Arc<EventFd>, stop: Arc<EventFd>) {
    crate::seccomp::install(crate::seccomp::ThreadKind::Block);
    log::debug!(
        "virtio-blk: queue {} served with {:?} I/O",
        handler.index,
        handler.engine()
    );
    if let Err(e) = event_loop(&mut handler, &notify, &stop) {
        log::error!("virtio-blk: queue {} worker stopped: {e}", handler.index);
    }
    handler.drain();
}

fn event_loop(h: &mut QueueHandler, notify: &EventFd, stop: &EventFd) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let epoll = Epoll::new()?;
    let add = |fd, token| {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    };
    add(stop.as_raw_fd(), TOKEN_STOP)?;
    add(notify.as_raw_fd(), TOKEN_NOTIFY)?;
    if let Some(ring) = &h.uring {
        add(ring.eventfd().as_raw_fd(), TOKEN_RING)?;
    }
    // The driver may have queued requests before the worker existed.
    h.process_available();
    let mut events = [EpollEvent::default(); 4];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let ready = events.get(..n).unwrap_or(&[]);
        if ready.iter().any(|e| e.data() == TOKEN_STOP) {
            return Ok(());
        }
        for ev in ready {
            match ev.data() {
                TOKEN_RING => {
                    if let Some(ring) = &h.uring {
                        let _ = ring.eventfd().read();
                    }
                    h.reap();
                }
                TOKEN_NOTIFY => {
                    let _ = notify.read();
                    h.process_available();
                }
                _ => {}
            }
        }
    }
}
