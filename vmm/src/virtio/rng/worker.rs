//! The entropy device's worker: an epoll loop over the queue's doorbell and
//! the stop eventfd. Each request gets fresh bytes from `getrandom(2)`,
//! at most [`MAX_REQUEST`] of them; malformed chains come back with used
//! length 0. It works to a budget per wake-up, polling while chains are
//! left, so a guest that keeps the queue full cannot delay `stop`.

use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::request::{parse, write_stream, Request};
use super::{fill_random, RngStats, MAX_REQUEST};
use crate::memory::GuestMemoryMmap;
use crate::virtio::VirtioInterrupt;

/// Most requests served per wake-up.
pub(super) const BUDGET: usize = 256;

const TOKEN_STOP: u64 = 0;
const TOKEN_NOTIFY: u64 = 1;

/// The queue and what serving it takes.
pub(super) struct Handler {
    queue: Queue,
    mem: GuestMemoryMmap,
    index: u16,
    stats: Arc<RngStats>,
    interrupt: Arc<dyn VirtioInterrupt>,
    /// Random bytes on their way to the guest; allocated on first use.
    buf: Vec<u8>,
    /// Chains returned since the last interrupt decision.
    unsignalled: usize,
}

impl Handler {
    pub(super) fn new(
        index: u16,
        queue: Queue,
        mem: GuestMemoryMmap,
        stats: Arc<RngStats>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Handler {
        Handler {
            queue,
            mem,
            index,
            stats,
            interrupt,
            buf: Vec::new(),
            unsignalled: 0,
        }
    }

    /// Serves available requests up to the budget, then interrupts if
    /// needed. True when the budget ran out with requests left.
    pub(super) fn process(&mut self) -> bool {
        let mut served = 0usize;
        let mut idle_rounds = 0;
        let more = loop {
            if let Err(e) = self.queue.disable_notification(&self.mem) {
                log::debug!("virtio-rng: {e}");
            }
            let before = served;
            while served < BUDGET {
                let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) else {
                    break;
                };
                served += 1;
                let (head, used) = match parse(chain, &self.mem) {
                    Ok(req) => (req.head, self.serve(&req)),
                    Err((head, e)) => {
                        log::debug!("virtio-rng: request {head} refused: {e}");
                        RngStats::add(&self.stats.errors, 1);
                        (head, 0)
                    }
                };
                match self.queue.add_used(&self.mem, head, used) {
                    Ok(()) => self.unsignalled += 1,
                    Err(e) => log::debug!("virtio-rng: cannot return chain {head}: {e}"),
                }
            }
            if served >= BUDGET {
                break true;
            }
            // An available index more than a queue ahead pops nothing yet
            // always looks like more: do not spin on it.
            idle_rounds = if served == before { idle_rounds + 1 } else { 0 };
            if idle_rounds > 1 {
                log::debug!("virtio-rng: available ring index is invalid");
                break false;
            }
            match self.queue.enable_notification(&self.mem) {
                Ok(true) => continue,
                Ok(false) => break false,
                Err(e) => {
                    log::debug!("virtio-rng: {e}");
                    break false;
                }
            }
        };
        self.signal();
        more
    }

    /// Fills the request; returns the used length.
    fn serve(&mut self, req: &Request) -> u32 {
        if req.len == 0 {
            RngStats::add(&self.stats.errors, 1);
            return 0;
        }
        if self.buf.len() < MAX_REQUEST {
            self.buf.resize(MAX_REQUEST, 0);
        }
        let Some(bytes) = self.buf.get_mut(..req.len) else {
            return 0;
        };
        if let Err(e) = fill_random(bytes) {
            log::warn!("virtio-rng: getrandom: {e}");
            RngStats::add(&self.stats.errors, 1);
            return 0;
        }
        match write_stream(&self.mem, &req.regions, bytes) {
            Some(n) => {
                RngStats::add(&self.stats.requests, 1);
                RngStats::add(&self.stats.bytes, n as u64);
                // At most MAX_REQUEST: fits a u32.
                n as u32
            }
            None => {
                RngStats::add(&self.stats.errors, 1);
                0
            }
        }
    }

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

/// The worker's loop; returns when `stop` becomes readable.
pub(super) fn run(mut handler: Handler, notify: Arc<EventFd>, stop: Arc<EventFd>) {
    crate::seccomp::install(crate::seccomp::ThreadKind::Rng);
    if let Err(e) = event_loop(&mut handler, &notify, &stop) {
        log::error!("virtio-rng: worker stopped: {e}");
    }
}

fn event_loop(h: &mut Handler, notify: &EventFd, stop: &EventFd) -> std::io::Result<()> {
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
    // The driver may have queued requests before the worker existed.
    let mut more = true;
    let mut events = [EpollEvent::default(); 4];
    loop {
        let n = match epoll.wait(if more { 0 } else { -1 }, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let ready = events.get(..n).unwrap_or(&[]);
        if ready.iter().any(|e| e.data() == TOKEN_STOP) {
            return Ok(());
        }
        let mut kick = more;
        if ready.iter().any(|e| e.data() == TOKEN_NOTIFY) {
            let _ = notify.read();
            kick = true;
        }
        if kick {
            more = h.process();
        }
    }
}
