//! The connection table: finds the connection each received packet is
//! for, accepts REQUESTs to the listening port (up to the planned number),
//! answers packets for no connection with RST, enforces the handshake
//! deadlines, and sends what the connections owe, one packet per
//! connection per round so that streams interleave.

use super::conn::{Conn, Role, State, MAX_CONNS};
use super::dev::{Dev, Hdr, HOST_CID, OP_REQUEST, OP_RST, TYPE_STREAM};

/// Every connection, and what arrived for none of them.
pub struct Table {
    pub conns: [Conn; MAX_CONNS],
    pub cid: u64,
    buf_alloc: u32,
    /// Echo rings of accepted connections (slot i: `rings + i * buf_alloc`).
    rings: u64,
    ring_slots: usize,
    /// Accept REQUESTs to this port, this many more.
    pub listen: Option<u32>,
    pub accept_left: u64,
    pub accepted: u64,
    pub refused: u64,
    /// RSTs owed to packets of no connection: (our port, their port).
    rst_queue: [(u32, u32); 8],
    nrst: usize,
    pub stray: u64,
    pub bad_addr: u64,
    pub bad_type: u64,
    /// The first packet with wrong addresses or type.
    pub first_odd: Option<Hdr>,
    pub transport_resets: u64,
}

impl Table {
    pub fn new(cid: u64, buf_alloc: u32, rings: u64, ring_slots: usize) -> Table {
        Table {
            conns: core::array::from_fn(|_| Conn::new()),
            cid,
            buf_alloc,
            rings,
            ring_slots,
            listen: None,
            accept_left: 0,
            accepted: 0,
            refused: 0,
            rst_queue: [(0, 0); 8],
            nrst: 0,
            stray: 0,
            bad_addr: 0,
            bad_type: 0,
            first_odd: None,
            transport_resets: 0,
        }
    }

    /// Forget every connection (between phases).
    pub fn clear(&mut self) {
        for c in &mut self.conns {
            *c = Conn::new();
        }
    }

    /// Open connection `index` to the host's `port` from our `local` port:
    /// Connect (`bytes` of pattern) or Bench (`bytes` each way).
    pub fn connect(&mut self, index: usize, role: Role, local: u32, port: u32, bytes: u64) {
        self.conns[index] = Conn::connecting(index, role, local, port, bytes, self.buf_alloc);
    }

    fn queue_rst(&mut self, h: &Hdr) {
        if self.nrst < self.rst_queue.len() {
            self.rst_queue[self.nrst] = (h.dst_port, h.src_port);
            self.nrst += 1;
        }
    }

    /// A received packet.
    pub fn handle(&mut self, h: &Hdr, data: &[u8]) {
        let now = crate::time::now_us();
        if h.src_cid != HOST_CID || h.dst_cid != self.cid {
            self.bad_addr += 1;
            self.first_odd.get_or_insert(*h);
            return;
        }
        if h.kind != TYPE_STREAM {
            self.bad_type += 1;
            self.first_odd.get_or_insert(*h);
            if h.op != OP_RST {
                self.queue_rst(h);
            }
            return;
        }
        if let Some(c) = self.conns.iter_mut().find(|c| {
            c.state != State::Free
                && !c.state.done()
                && c.local_port == h.dst_port
                && c.peer_port == h.src_port
        }) {
            c.handle(h, data, now);
            return;
        }
        match h.op {
            OP_REQUEST => {
                let slot = self
                    .conns
                    .iter()
                    .take(self.ring_slots)
                    .position(|c| c.state == State::Free);
                match (self.listen, slot) {
                    (Some(p), Some(i)) if p == h.dst_port && self.accept_left > 0 => {
                        self.accept_left -= 1;
                        self.accepted += 1;
                        let ring = self.rings + i as u64 * u64::from(self.buf_alloc);
                        self.conns[i] = Conn::accepted(i, h, self.buf_alloc, ring, now);
                    }
                    _ => {
                        self.refused += 1;
                        self.queue_rst(h);
                    }
                }
            }
            OP_RST => self.stray += 1,
            _ => {
                self.stray += 1;
                self.queue_rst(h);
            }
        }
    }

    /// The device reset its transport (event): every live connection is gone.
    pub fn transport_reset(&mut self, cid: u64) {
        let now = crate::time::now_us();
        self.transport_resets += 1;
        self.cid = cid;
        for c in self.conns.iter_mut().filter(|c| c.state != State::Free) {
            if !c.state.done() {
                c.note = "transport reset event";
                c.end(State::Reset, now);
            }
            c.need_rst = false;
        }
        self.nrst = 0;
    }

    /// Handshake deadlines.
    pub fn timers(&mut self) {
        let now = crate::time::now_us();
        for c in &mut self.conns {
            match c.state {
                State::Connecting if now > c.deadline && !c.need_request => {
                    c.note = "no RESPONSE within 5 s of the REQUEST";
                    c.need_rst = true;
                    c.end(State::Failed, now);
                }
                State::Closing if now > c.deadline => {
                    c.note = "no RST within 5 s of our SHUTDOWN";
                    c.end(State::Failed, now);
                }
                _ => {}
            }
        }
    }

    /// Send what is owed, round-robin (one packet per connection per
    /// round, so streams interleave) until nothing is left or no slot is
    /// free; true if anything was sent.
    pub fn pump(&mut self, dev: &mut Dev) -> bool {
        let now = crate::time::now_us();
        let mut any = false;
        while self.nrst > 0 {
            let (src, dst) = self.rst_queue[self.nrst - 1];
            let h = Hdr {
                src_cid: self.cid,
                dst_cid: HOST_CID,
                src_port: src,
                dst_port: dst,
                kind: TYPE_STREAM,
                op: OP_RST,
                ..Hdr::default()
            };
            if !dev.send(&h, |_| {}) {
                return any;
            }
            self.nrst -= 1;
            any = true;
        }
        loop {
            let mut sent = false;
            for c in self.conns.iter_mut().filter(|c| c.state != State::Free) {
                if dev.tx_free() == 0 {
                    dev.reap_tx();
                    if dev.tx_free() == 0 {
                        return any || sent;
                    }
                }
                sent |= c.pump(self.cid, dev, now);
            }
            any |= sent;
            if !sent {
                return any;
            }
        }
    }

    /// Connections in use that are not finished (an RST still owed counts).
    pub fn busy(&self) -> bool {
        self.nrst > 0
            || self
                .conns
                .iter()
                .any(|c| c.state != State::Free && (!c.state.done() || c.need_rst))
    }
}
