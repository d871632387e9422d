//! The device's one thread: started with the device (so it never inherits
//! a vCPU thread's seccomp filter: it needs socket calls a vCPU must not
//! make), it accepts host connections at once and serves the queues once
//! the driver activates the device. The device talks to it over a
//! channel (activate, reset, stop) and an eventfd that wakes its epoll.
//!
//! Each round: events (doorbells, listener, streams), then the transmit
//! queue (guest packets to the muxer), then the receive queue (the
//! muxer's packets into guest buffers), each to a budget so that neither
//! a busy guest nor a busy host starves the other or `stop`.

use std::os::unix::io::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{Muxer, STREAM_TOKEN, TOKEN_LISTENER};
use super::packet::Header;
use super::{VsockStats, HEADER_LEN, MAX_PAYLOAD};
use crate::memory::GuestMemoryMmap;
use crate::virtio::chain::{self, Dir};
use crate::virtio::ring::Ring;
use crate::virtio::VirtioInterrupt;

/// Chains served per queue and round.
const BUDGET: usize = 256;
const TOKEN_WAKE: u64 = 0;
const TOKEN_RX: u64 = 1;
const TOKEN_TX: u64 = 2;
/// How often deadlines are checked while any are pending.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// What the device asks of its worker.
pub(super) enum Control {
    Activate(Box<Active>),
    /// Forget the queues and every connection; answered on the ack channel.
    Reset,
    Stop,
}

/// The queues as the driver set them up.
pub(super) struct Active {
    pub mem: GuestMemoryMmap,
    pub rx: Ring,
    pub tx: Ring,
    /// Held, never used: the device sends no events (they only matter
    /// for migration, which it does not do).
    pub _event: Option<Queue>,
    pub rx_notify: Arc<EventFd>,
    pub tx_notify: Arc<EventFd>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

pub(super) struct Worker {
    pub muxer: Muxer,
    pub control: Receiver<Control>,
    pub wake: Arc<EventFd>,
    pub ack: Sender<()>,
    /// The listening socket's file, removed when the worker stops.
    pub socket: PathBuf,
    pub stats: Arc<VsockStats>,
}

/// The thread's body.
pub(super) fn run(mut w: Worker) {
    crate::seccomp::install(crate::seccomp::ThreadKind::Vsock);
    if let Err(e) = event_loop(&mut w) {
        log::error!("virtio-vsock: worker stopped: {e}");
    }
    if let Err(e) = std::fs::remove_file(&w.socket) {
        log::debug!("virtio-vsock: removing {}: {e}", w.socket.display());
    }
}

fn event_loop(w: &mut Worker) -> std::io::Result<()> {
    w.muxer.epoll.ctl(
        ControlOperation::Add,
        w.wake.as_raw_fd(),
        EpollEvent::new(EventSet::IN, TOKEN_WAKE),
    )?;
    let mut active: Option<Box<Active>> = None;
    let (mut rx_more, mut tx_more) = (false, false);
    let mut last_sweep = Instant::now();
    let mut events = [EpollEvent::default(); 32];
    loop {
        let timeout = if rx_more || tx_more {
            0
        } else if w.muxer.has_deadlines() {
            SWEEP_EVERY.as_millis() as i32
        } else {
            -1
        };
        let n = match w.muxer.epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let (mut rx_kick, mut tx_kick) = (rx_more, tx_more);
        for ev in events.get(..n).unwrap_or(&[]) {
            match ev.data() {
                TOKEN_WAKE => {
                    let _ = w.wake.read();
                    if !control(w, &mut active)? {
                        return Ok(());
                    }
                    (rx_kick, tx_kick) = (true, true);
                }
                TOKEN_RX => {
                    if let Some(a) = &active {
                        let _ = a.rx_notify.read();
                    }
                    rx_kick = true;
                }
                TOKEN_TX => {
                    if let Some(a) = &active {
                        let _ = a.tx_notify.read();
                    }
                    tx_kick = true;
                }
                _ => host_event(&mut w.muxer, ev),
            }
        }
        let now = Instant::now();
        if now.duration_since(last_sweep) >= SWEEP_EVERY {
            w.muxer.sweep(now);
            last_sweep = now;
        }
        let Some(a) = active.as_mut() else {
            (rx_more, tx_more) = (false, false);
            continue;
        };
        if tx_kick {
            tx_more = process_tx(a, &mut w.muxer, &w.stats);
        }
        if rx_kick || w.muxer.has_rx_work() {
            rx_more = process_rx(a, &mut w.muxer, &w.stats);
        }
    }
}

/// An event of the listening socket or of a connection's stream.
pub(super) fn host_event(muxer: &mut Muxer, ev: &EpollEvent) {
    match ev.data() {
        TOKEN_LISTENER => muxer.on_listener(),
        t if t >= STREAM_TOKEN => {
            // Tokens are built from fds, which fit an i32.
            let fd = (t - STREAM_TOKEN) as RawFd;
            muxer.on_stream(fd, ev.event_set());
        }
        _ => {}
    }
}

/// Applies what the device asked; false on stop.
fn control(w: &mut Worker, active: &mut Option<Box<Active>>) -> std::io::Result<bool> {
    loop {
        match w.control.try_recv() {
            Ok(Control::Activate(a)) => {
                let epoll = &w.muxer.epoll;
                for (fd, token) in [
                    (a.rx_notify.as_raw_fd(), TOKEN_RX),
                    (a.tx_notify.as_raw_fd(), TOKEN_TX),
                ] {
                    epoll.ctl(
                        ControlOperation::Add,
                        fd,
                        EpollEvent::new(EventSet::IN, token),
                    )?;
                }
                *active = Some(a);
            }
            Ok(Control::Reset) => {
                if let Some(a) = active.take() {
                    for fd in [a.rx_notify.as_raw_fd(), a.tx_notify.as_raw_fd()] {
                        let _ =
                            w.muxer
                                .epoll
                                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                    }
                }
                w.muxer.reset();
                let _ = w.ack.send(());
            }
            Ok(Control::Stop) | Err(TryRecvError::Disconnected) => return Ok(false),
            Err(TryRecvError::Empty) => return Ok(true),
        }
    }
}

/// Guest packets to the muxer; true when the budget ran out first.
pub(super) fn process_tx(a: &mut Active, muxer: &mut Muxer, stats: &VsockStats) -> bool {
    let mut served = 0;
    let mut idle_rounds = 0;
    let more = loop {
        let before = served;
        while served < BUDGET {
            let Some(chain) = a.tx.pop(&a.mem) else {
                break;
            };
            served += 1;
            let max = (HEADER_LEN as u64) + u64::from(MAX_PAYLOAD);
            match chain::collect(chain, &a.mem, Dir::Readable, max) {
                Ok(bufs) => {
                    tx_packet(a, muxer, stats, &bufs);
                    a.tx.add_used(bufs.head, 0);
                }
                Err((head, e)) => {
                    log::debug!("virtio-vsock: transmit chain {head} refused: {e}");
                    VsockStats::add(&stats.errors, 1);
                    a.tx.add_used(head, 0);
                }
            }
        }
        if served >= BUDGET {
            break true;
        }
        // An available index more than a queue ahead pops nothing yet
        // always looks like more: do not spin on it.
        idle_rounds = if served == before { idle_rounds + 1 } else { 0 };
        if idle_rounds > 1 || !a.tx.enable_notification(&a.mem) {
            break false;
        }
    };
    a.tx.complete(&a.mem, a.interrupt.as_ref());
    more
}

fn tx_packet(a: &Active, muxer: &mut Muxer, stats: &VsockStats, bufs: &chain::Buffers) {
    let mut raw = [0u8; HEADER_LEN];
    if bufs.len < HEADER_LEN as u64 || !chain::read_stream(&a.mem, &bufs.regions, 0, &mut raw) {
        log::debug!("virtio-vsock: transmit chain {} has no header", bufs.head);
        VsockStats::add(&stats.errors, 1);
        return;
    }
    let h = Header::decode(&raw);
    let carried = bufs.len - HEADER_LEN as u64;
    if u64::from(h.len) > carried {
        // A header that claims more than the chain holds: the packet is
        // broken; its connection cannot go on consistently.
        log::debug!(
            "virtio-vsock: packet claims {} bytes, chain carries {carried}",
            h.len
        );
        VsockStats::add(&stats.errors, 1);
        muxer.on_broken(&h);
        return;
    }
    let payload = chain::sub_regions(&bufs.regions, HEADER_LEN as u64, u64::from(h.len));
    muxer.on_packet(&a.mem, &h, &payload);
}

/// The muxer's packets into receive buffers; true when the budget ran out
/// with more to send.
pub(super) fn process_rx(a: &mut Active, muxer: &mut Muxer, stats: &VsockStats) -> bool {
    let mut served = 0;
    let mut idle_rounds = 0;
    while muxer.has_rx_work() && served < BUDGET {
        let Some(chain) = a.rx.pop(&a.mem) else {
            // No buffers: be told when the driver adds some.
            idle_rounds += 1;
            if idle_rounds > 1 || !a.rx.enable_notification(&a.mem) {
                break;
            }
            continue;
        };
        idle_rounds = 0;
        served += 1;
        let bufs = match chain::collect(chain, &a.mem, Dir::Writable, u64::from(u32::MAX)) {
            Ok(b) if b.len >= HEADER_LEN as u64 => b,
            Ok(b) => {
                log::debug!("virtio-vsock: receive buffer {} too short", b.head);
                VsockStats::add(&stats.errors, 1);
                a.rx.add_used(b.head, 0);
                continue;
            }
            Err((head, e)) => {
                log::debug!("virtio-vsock: receive chain {head} refused: {e}");
                VsockStats::add(&stats.errors, 1);
                a.rx.add_used(head, 0);
                continue;
            }
        };
        match muxer.fill(&a.mem, &bufs.regions, bufs.len) {
            Some(used) => a.rx.add_used(bufs.head, used),
            None => {
                // Nothing to send after all: the buffer goes back.
                let back = a.rx.queue.next_avail().wrapping_sub(1);
                a.rx.queue.set_next_avail(back);
                served -= 1;
                break;
            }
        }
    }
    a.rx.complete(&a.mem, a.interrupt.as_ref());
    served >= BUDGET && muxer.has_rx_work()
}
