//! The device's one worker thread: an epoll loop over the stop eventfd,
//! both queues' doorbells and the TAP, moving frames both ways.
//!
//! The TAP is watched edge-triggered for input: the receive side reads it
//! until it is empty, or stops early when the guest has no buffers (and
//! then waits for the receive doorbell, not the TAP, so a full TAP cannot
//! make the loop spin). Each side works to a budget per wake-up; while one
//! has work left the loop polls instead of sleeping, so neither side, nor
//! the stop request, waits behind a guest that keeps a queue full.

use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::rx::{Rx, RxState};
use super::tx::Tx;
use super::{NetStats, Tap};
use crate::memory::GuestMemoryMmap;
use crate::virtio::VirtioInterrupt;

const TOKEN_STOP: u64 = 0;
const TOKEN_RX: u64 = 1;
const TOKEN_TX: u64 = 2;
const TOKEN_TAP: u64 = 3;

/// What both directions use.
pub(super) struct Io {
    pub mem: GuestMemoryMmap,
    pub tap: Arc<Tap>,
    pub stats: Arc<NetStats>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

/// Everything the worker owns.
pub(super) struct Worker {
    pub io: Io,
    pub rx: Rx,
    pub tx: Tx,
}

/// The doorbells and the stop request.
pub(super) struct Wakers {
    pub rx: Arc<EventFd>,
    pub tx: Arc<EventFd>,
    pub stop: Arc<EventFd>,
}

/// The worker's loop; returns when `stop` becomes readable.
pub(super) fn run(mut worker: Worker, wakers: Wakers) {
    crate::seccomp::install(crate::seccomp::ThreadKind::Net);
    // Each round publishes what it served before the loop looks at `stop`,
    // so nothing touches the rings once the driver reset the device.
    if let Err(e) = event_loop(&mut worker, &wakers) {
        log::error!(
            "virtio-net: worker for TAP {} stopped: {e}",
            worker.io.tap.name()
        );
    }
}

fn event_loop(w: &mut Worker, wakers: &Wakers) -> std::io::Result<()> {
    let epoll = Epoll::new()?;
    let add =
        |fd, events, token| epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token));
    add(wakers.stop.as_raw_fd(), EventSet::IN, TOKEN_STOP)?;
    add(wakers.rx.as_raw_fd(), EventSet::IN, TOKEN_RX)?;
    add(wakers.tx.as_raw_fd(), EventSet::IN, TOKEN_TX)?;
    add(
        w.io.tap.as_raw_fd(),
        EventSet::IN | EventSet::EDGE_TRIGGERED,
        TOKEN_TAP,
    )?;
    // The driver may have queued buffers, and the TAP frames, before the
    // worker existed: look at both once.
    let (mut rx_more, mut tx_more) = (true, true);
    let mut events = [EpollEvent::default(); 8];
    loop {
        let timeout = if rx_more || tx_more { 0 } else { -1 };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let ready = events.get(..n).unwrap_or(&[]);
        if ready.iter().any(|e| e.data() == TOKEN_STOP) {
            return Ok(());
        }
        let (mut rx_kick, mut tx_kick) = (rx_more, tx_more);
        for ev in ready {
            match ev.data() {
                TOKEN_RX => {
                    let _ = wakers.rx.read();
                    rx_kick = true;
                }
                TOKEN_TX => {
                    let _ = wakers.tx.read();
                    tx_kick = true;
                }
                TOKEN_TAP => rx_kick = true,
                _ => {}
            }
        }
        if tx_kick {
            tx_more = w.tx.process(&w.io);
        }
        if rx_kick {
            rx_more = w.rx.process(&w.io) == RxState::More;
        }
    }
}
