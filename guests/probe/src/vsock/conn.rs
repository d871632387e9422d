//! Stream connections over the vsock device (virtio 1.x, 5.10.6): a small
//! table of them, the connection state machine and credit flow control
//! both ways.
//!
//! Credit: a connection advertises `buf_alloc` (its receive buffer) and
//! `fwd_cnt` (bytes it has consumed) in every packet it sends, and never
//! sends more than `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`. When that is
//! 0 and there is data to send it asks with CREDIT_REQUEST (again every
//! 100 ms while stuck); it sends CREDIT_UPDATE when asked and whenever it
//! has consumed a quarter of its buffer since it last told the peer. The
//! peer sending more than the credit it was given is counted (a violation).
//!
//! Roles: `Connect` sends a preamble and a pattern and checks that the
//! peer echoes it all; `Bench` is the benchmark stream (README, "vsock");
//! `Accept` (a connection the host opened) echoes everything it receives
//! through a ring of `buf_alloc` bytes, so its advertised buffer is real.

use super::dev::{
    Dev, Hdr, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use crate::virtio::data::{pattern_word, Fnv};

/// Connections open at once, at most.
pub const MAX_CONNS: usize = 16;
/// The preamble of guest-initiated streams (README, "vsock streams").
pub const PREAMBLE: u64 = 32;
const MAGIC: &[u8; 8] = b"UTSWVSK1";
pub const KIND_ECHO: u32 = 1;
pub const KIND_BENCH: u32 = 2;
pub const BENCH_SEED: u64 = 0x7673_6265_6e63_6800;
/// REQUEST without an answer, SHUTDOWN without RST: this long.
const HANDSHAKE_US: u64 = 5_000_000;
/// Repeat CREDIT_REQUEST while stuck this often.
const CREDIT_RETRY_US: u64 = 100_000;

/// Pattern seed of connect-role connection `i`.
pub fn echo_seed(i: usize) -> u64 {
    0x7673_6f63_6b00_0000 | i as u64
}

/// `buf` := the pattern of `seed` from byte `off` (any alignment).
fn pattern_fill(seed: u64, mut off: u64, buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        let w = pattern_word(seed, off / 8).to_le_bytes();
        let s = (off % 8) as usize;
        let n = (8 - s).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&w[s..s + n]);
        i += n;
        off += n as u64;
    }
}

/// Index of the first byte of `data` that differs from the pattern at `off`.
fn pattern_mismatch(seed: u64, mut off: u64, data: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < data.len() {
        let w = pattern_word(seed, off / 8).to_le_bytes();
        let s = (off % 8) as usize;
        let n = (8 - s).min(data.len() - i);
        if data[i..i + n] != w[s..s + n] {
            return (0..n).find(|&k| data[i + k] != w[s + k]).map(|k| i + k);
        }
        i += n;
        off += n as u64;
    }
    None
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Connect,
    Bench,
    Accept,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Connect => "connect",
            Role::Bench => "bench",
            Role::Accept => "accept",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    Free,
    /// REQUEST sent, waiting for RESPONSE.
    Connecting,
    Open,
    /// SHUTDOWN sent, waiting for RST.
    Closing,
    /// Ended cleanly.
    Closed,
    /// Ended by the peer (RST or SHUTDOWN) before its stream was complete.
    Reset,
    /// RST answered our REQUEST.
    Refused,
    /// Timed out, or the peer broke the protocol.
    Failed,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Free => "free",
            State::Connecting => "connecting",
            State::Open => "open",
            State::Closing => "closing",
            State::Closed => "closed",
            State::Reset => "reset",
            State::Refused => "refused",
            State::Failed => "failed",
        }
    }

    pub fn done(self) -> bool {
        matches!(
            self,
            State::Closed | State::Reset | State::Refused | State::Failed
        )
    }
}

pub struct Conn {
    pub role: Role,
    pub index: usize,
    pub state: State,
    pub local_port: u32,
    pub peer_port: u32,
    // Our receive side.
    pub buf_alloc: u32,
    rx_cnt: u32,
    fwd_cnt: u32,
    /// `fwd_cnt` as last sent to the peer.
    adv_fwd: u32,
    // The peer's receive side.
    pub peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    pub(super) need_request: bool,
    need_response: bool,
    need_update: bool,
    pub(super) need_rst: bool,
    need_shutdown: bool,
    credit_req_us: Option<u64>,
    /// Connect/Bench: bytes of the outgoing and the expected incoming stream.
    pub out_total: u64,
    pub in_total: u64,
    /// Connect: the pattern seed; Bench: bytes each way (g2h, h2g).
    seed: u64,
    bench: (u64, u64),
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_fnv: Fnv,
    pub rx_fnv: Fnv,
    pub bad: u64,
    pub first_bad: Option<u64>,
    ring: u64,
    ring_len: u64,
    ring_r: u64,
    ring_w: u64,
    /// SHUTDOWN flags the peer sent.
    pub peer_shut: u32,
    /// How it ended: "rst", "shutdown" (by the peer), "" (by us or not yet).
    pub ended_by: &'static str,
    pub note: &'static str,
    /// The packet the state did not allow: (op, state it came in).
    pub odd_packet: Option<(u16, State)>,
    pub t_start: u64,
    pub t_open: Option<u64>,
    pub t_end: Option<u64>,
    /// Bench: when the host's count of g2h bytes arrived.
    pub t_ack: Option<u64>,
    /// Connect/Bench: when the last expected byte arrived.
    pub t_in_done: Option<u64>,
    pub(super) deadline: u64,
    pub credit_requests_tx: u64,
    pub credit_requests_rx: u64,
    pub credit_updates_tx: u64,
    pub credit_updates_rx: u64,
    pub credit_violations: u64,
}

impl Conn {
    pub(super) fn new() -> Conn {
        Conn {
            role: Role::Connect,
            index: 0,
            state: State::Free,
            local_port: 0,
            peer_port: 0,
            buf_alloc: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            adv_fwd: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            need_request: false,
            need_response: false,
            need_update: false,
            need_rst: false,
            need_shutdown: false,
            credit_req_us: None,
            out_total: 0,
            in_total: 0,
            seed: 0,
            bench: (0, 0),
            tx_bytes: 0,
            rx_bytes: 0,
            tx_fnv: Fnv::new(),
            rx_fnv: Fnv::new(),
            bad: 0,
            first_bad: None,
            ring: 0,
            ring_len: 0,
            ring_r: 0,
            ring_w: 0,
            peer_shut: 0,
            ended_by: "",
            note: "",
            odd_packet: None,
            t_start: 0,
            t_open: None,
            t_end: None,
            t_ack: None,
            t_in_done: None,
            deadline: 0,
            credit_requests_tx: 0,
            credit_requests_rx: 0,
            credit_updates_tx: 0,
            credit_updates_rx: 0,
            credit_violations: 0,
        }
    }

    /// Connection `index` to the host's `port` from our `local` port:
    /// Connect (`bytes` of pattern) or Bench (`bytes` each way).
    pub(super) fn connecting(
        index: usize,
        role: Role,
        local: u32,
        port: u32,
        bytes: u64,
        buf_alloc: u32,
    ) -> Conn {
        let now = crate::time::now_us();
        let mut c = Conn::new();
        c.role = role;
        c.index = index;
        c.state = State::Connecting;
        c.local_port = local;
        c.peer_port = port;
        c.buf_alloc = buf_alloc;
        c.need_request = true;
        c.t_start = now;
        c.deadline = now + HANDSHAKE_US;
        c.out_total = PREAMBLE + bytes;
        match role {
            Role::Bench => {
                c.bench = (bytes, bytes);
                c.in_total = 8 + bytes;
            }
            _ => {
                c.seed = echo_seed(index);
                c.in_total = c.out_total;
            }
        }
        c
    }

    /// The connection the host's REQUEST `h` opens in slot `index`, echoing
    /// through the `buf_alloc` bytes at `ring`; RESPONSE owed.
    pub(super) fn accepted(index: usize, h: &Hdr, buf_alloc: u32, ring: u64, now: u64) -> Conn {
        let mut c = Conn::new();
        c.role = Role::Accept;
        c.index = index;
        c.state = State::Open;
        c.local_port = h.dst_port;
        c.peer_port = h.src_port;
        c.buf_alloc = buf_alloc;
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        c.need_response = true;
        c.t_start = now;
        c.t_open = Some(now);
        c.ring = ring;
        c.ring_len = u64::from(buf_alloc);
        c
    }

    /// Both streams complete (Connect, Bench).
    pub fn complete(&self) -> bool {
        self.role != Role::Accept
            && self.tx_bytes == self.out_total
            && self.rx_bytes == self.in_total
    }

    pub(super) fn end(&mut self, state: State, now: u64) {
        self.state = state;
        self.t_end = Some(now);
    }

    fn peer_free(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Bytes ready to go out now (before credit).
    fn out_ready(&self) -> u64 {
        match self.role {
            Role::Accept if self.peer_shut & SHUTDOWN_RCV == 0 => self.ring_w - self.ring_r,
            Role::Accept => 0,
            _ => self.out_total - self.tx_bytes,
        }
    }

    /// Byte `pos` onwards of the outgoing stream (Connect, Bench) into `buf`.
    fn fill_out(&self, pos: u64, buf: &mut [u8]) {
        let mut pre = [0u8; PREAMBLE as usize];
        pre[..8].copy_from_slice(MAGIC);
        let (kind, a, b) = match self.role {
            Role::Bench => (KIND_BENCH, self.bench.0, self.bench.1),
            _ => (KIND_ECHO, self.out_total - PREAMBLE, self.seed),
        };
        pre[8..12].copy_from_slice(&kind.to_le_bytes());
        pre[12..16].copy_from_slice(&(self.index as u32).to_le_bytes());
        pre[16..24].copy_from_slice(&a.to_le_bytes());
        pre[24..32].copy_from_slice(&b.to_le_bytes());
        let mut i = 0;
        while pos + (i as u64) < PREAMBLE && i < buf.len() {
            buf[i] = pre[(pos as usize) + i];
            i += 1;
        }
        let seed = if self.role == Role::Bench {
            BENCH_SEED
        } else {
            self.seed
        };
        pattern_fill(seed, pos + i as u64 - PREAMBLE, &mut buf[i..]);
    }

    /// Check incoming bytes (Connect: the echo of the outgoing stream;
    /// Bench: the host's le64 count, then the pattern).
    fn check_in(&mut self, pos: u64, data: &[u8], now: u64) {
        let bad_at = match self.role {
            Role::Connect => {
                let mut want = [0u8; 256];
                let mut at = None;
                for (k, chunk) in data.chunks(want.len()).enumerate() {
                    let off = pos + (k * want.len()) as u64;
                    let w = &mut want[..chunk.len()];
                    self.fill_out(off, w);
                    if let Some(j) = chunk.iter().zip(w.iter()).position(|(a, b)| a != b) {
                        at = Some(k * 256 + j);
                        break;
                    }
                }
                at
            }
            _ => {
                let ack = self.bench.0.to_le_bytes();
                let mut at = None;
                let mut i = 0;
                while pos + (i as u64) < 8 && i < data.len() {
                    if data[i] != ack[pos as usize + i] {
                        at = at.or(Some(i));
                    }
                    i += 1;
                }
                if pos + i as u64 == 8 && i > 0 && self.t_ack.is_none() {
                    self.t_ack = Some(now);
                }
                if at.is_none() && i < data.len() {
                    let off = (pos + i as u64).saturating_sub(8);
                    at = pattern_mismatch(BENCH_SEED, off, &data[i..]).map(|k| k + i);
                }
                at
            }
        };
        if let Some(k) = bad_at {
            self.bad += 1;
            self.first_bad.get_or_insert(pos + k as u64);
        }
    }

    fn hdr(&mut self, cid: u64, op: u16, len: u32, flags: u32) -> Hdr {
        self.adv_fwd = self.fwd_cnt;
        Hdr {
            src_cid: cid,
            dst_cid: HOST_CID,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Send this connection's next packet, if it has one and a slot is
    /// free; true if it sent.
    pub(super) fn pump(&mut self, cid: u64, dev: &mut Dev, now: u64) -> bool {
        let ctl = if self.need_rst {
            self.need_rst = false;
            Some((OP_RST, 0))
        } else if self.need_request {
            self.need_request = false;
            self.deadline = now + HANDSHAKE_US;
            Some((OP_REQUEST, 0))
        } else if self.need_response {
            self.need_response = false;
            Some((OP_RESPONSE, 0))
        } else if self.need_update {
            self.need_update = false;
            self.credit_updates_tx += 1;
            Some((OP_CREDIT_UPDATE, 0))
        } else if self.need_shutdown {
            self.need_shutdown = false;
            self.state = State::Closing;
            self.deadline = now + HANDSHAKE_US;
            Some((OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND))
        } else {
            None
        };
        if let Some((op, flags)) = ctl {
            let h = self.hdr(cid, op, 0, flags);
            if !dev.send(&h, |_| {}) {
                // No slot: put the flag back for the next round.
                match op {
                    OP_RST => self.need_rst = true,
                    OP_REQUEST => self.need_request = true,
                    OP_RESPONSE => self.need_response = true,
                    OP_CREDIT_UPDATE => {
                        self.need_update = true;
                        self.credit_updates_tx -= 1;
                    }
                    _ => {
                        self.need_shutdown = true;
                        self.state = State::Open;
                    }
                }
                return false;
            }
            return true;
        }
        if self.state != State::Open {
            return false;
        }
        let ready = self.out_ready();
        if ready == 0 {
            return false;
        }
        let credit = self.peer_free();
        if credit == 0 {
            if self
                .credit_req_us
                .is_none_or(|t| now.saturating_sub(t) >= CREDIT_RETRY_US)
            {
                let h = self.hdr(cid, OP_CREDIT_REQUEST, 0, 0);
                if dev.send(&h, |_| {}) {
                    self.credit_req_us = Some(now);
                    self.credit_requests_tx += 1;
                    return true;
                }
            }
            return false;
        }
        let n = ready.min(u64::from(dev.pkt)).min(u64::from(credit)) as u32;
        if self.role == Role::Accept {
            // The echo frees ring space: advertise it with the data.
            self.fwd_cnt = self.fwd_cnt.wrapping_add(n);
        }
        let h = self.hdr(cid, OP_RW, n, 0);
        let pos = self.tx_bytes;
        let (ring, len, r) = (self.ring, self.ring_len, self.ring_r);
        let mut fnv = Fnv(self.tx_fnv.0);
        let sent = dev.send(&h, |buf| {
            if self.role == Role::Accept {
                ring_copy_out(ring, len, r, buf);
            } else {
                self.fill_out(pos, buf);
            }
            fnv.update(buf);
        });
        if !sent {
            if self.role == Role::Accept {
                self.fwd_cnt = self.fwd_cnt.wrapping_sub(n);
            }
            return false;
        }
        self.tx_fnv = fnv;
        self.tx_cnt = self.tx_cnt.wrapping_add(n);
        self.tx_bytes += u64::from(n);
        if self.role == Role::Accept {
            self.ring_r += u64::from(n);
            if self.peer_shut & SHUTDOWN_SEND != 0 && self.ring_r == self.ring_w {
                // The peer sends no more and everything went back: answer its SHUTDOWN.
                self.need_rst = true;
                self.end(State::Closed, now);
            }
        } else if self.complete() {
            self.need_shutdown = true;
        }
        true
    }

    /// A packet for this connection.
    pub(super) fn handle(&mut self, h: &Hdr, data: &[u8], now: u64) {
        // An RST ends the connection: its credit fields mean nothing.
        if h.op != OP_RST && (self.peer_buf_alloc, self.peer_fwd_cnt) != (h.buf_alloc, h.fwd_cnt) {
            self.peer_buf_alloc = h.buf_alloc;
            self.peer_fwd_cnt = h.fwd_cnt;
            self.credit_req_us = None;
        }
        match h.op {
            OP_RESPONSE if self.state == State::Connecting => {
                self.state = State::Open;
                self.t_open = Some(now);
            }
            OP_RST if self.state == State::Connecting => {
                self.note = "RST answered the REQUEST";
                self.end(State::Refused, now);
            }
            OP_RST if self.state == State::Closing => {
                self.end(State::Closed, now);
            }
            OP_RST => {
                self.ended_by = "rst";
                if self.role == Role::Accept {
                    self.end(State::Closed, now);
                } else {
                    self.note = "RST from the peer before the end of the stream";
                    self.end(State::Reset, now);
                }
            }
            OP_SHUTDOWN => {
                self.peer_shut |= h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.ended_by = "shutdown";
                if self.state == State::Closing || self.complete() {
                    self.need_rst = true;
                    self.end(State::Closed, now);
                } else if self.role == Role::Accept {
                    if self.peer_shut & SHUTDOWN_RCV != 0 || self.ring_r == self.ring_w {
                        self.need_rst = true;
                        self.end(State::Closed, now);
                    }
                } else {
                    self.need_rst = true;
                    self.note = "SHUTDOWN from the peer before the end of the stream";
                    self.end(State::Reset, now);
                }
            }
            OP_RW if matches!(self.state, State::Open | State::Closing) => {
                self.receive(data, now);
            }
            OP_CREDIT_UPDATE => self.credit_updates_rx += 1,
            OP_CREDIT_REQUEST => {
                self.credit_requests_rx += 1;
                self.need_update = true;
            }
            _ => {
                self.note = "a packet the connection's state does not allow";
                self.odd_packet = Some((h.op, self.state));
                self.bad += 1;
                self.need_rst = true;
                self.end(State::Failed, now);
            }
        }
    }

    fn receive(&mut self, data: &[u8], now: u64) {
        let n = data.len() as u32;
        if self.rx_cnt.wrapping_add(n).wrapping_sub(self.adv_fwd) > self.buf_alloc {
            self.credit_violations += 1;
        }
        self.rx_fnv.update(data);
        match self.role {
            Role::Accept => {
                let room = (self.ring_len - (self.ring_w - self.ring_r)) as usize;
                let k = data.len().min(room);
                ring_copy_in(self.ring, self.ring_len, self.ring_w, &data[..k]);
                self.ring_w += k as u64;
                if k < data.len() {
                    self.bad += 1;
                    self.first_bad.get_or_insert(self.rx_bytes + k as u64);
                }
            }
            _ => {
                if self.rx_bytes + data.len() as u64 > self.in_total {
                    self.bad += 1;
                    self.first_bad.get_or_insert(self.in_total);
                }
                self.check_in(self.rx_bytes, data, now);
                // Consumed at once.
                self.fwd_cnt = self.fwd_cnt.wrapping_add(n);
            }
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(n);
        self.rx_bytes += data.len() as u64;
        if self.role != Role::Accept && self.rx_bytes >= self.in_total {
            self.t_in_done.get_or_insert(now);
        }
        if self.fwd_cnt.wrapping_sub(self.adv_fwd) >= self.buf_alloc / 4 {
            self.need_update = true;
        }
        if self.complete() && self.state == State::Open {
            self.need_shutdown = true;
        }
    }
}

fn ring_copy_in(ring: u64, len: u64, at: u64, data: &[u8]) {
    let mut done = 0;
    while done < data.len() {
        let off = (at + done as u64) % len;
        let k = (data.len() - done).min((len - off) as usize);
        // SAFETY: the connection's ring (arena memory the table owns, never
        // given to a device), `off + k <= len`.
        let dst = unsafe { core::slice::from_raw_parts_mut((ring + off) as *mut u8, k) };
        dst.copy_from_slice(&data[done..done + k]);
        done += k;
    }
}

fn ring_copy_out(ring: u64, len: u64, at: u64, out: &mut [u8]) {
    let mut done = 0;
    while done < out.len() {
        let off = (at + done as u64) % len;
        let k = (out.len() - done).min((len - off) as usize);
        // SAFETY: as in `ring_copy_in`.
        let src = unsafe { core::slice::from_raw_parts((ring + off) as *const u8, k) };
        out[done..done + k].copy_from_slice(src);
        done += k;
    }
}
