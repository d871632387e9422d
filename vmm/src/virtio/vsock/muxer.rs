//! The connection table: packets from the guest are checked and applied
//! to their connection, host events (new Unix connections, readable or
//! writable streams, timeouts) change connections, and [`Muxer::fill`]
//! turns what the guest is owed into one packet per receive buffer.
//!
//! What the guest is owed is found without scanning the table: RSTs wait
//! in a bounded queue of their own (a guest that provokes more than
//! [`MAX_RESETS`] loses the extra ones, and learns by timeout), and each
//! connection with a control packet or data for the guest sits once in
//! the `ready` list, served round-robin, one packet per turn.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::conn::{Conn, State, NEED_CREDIT_UPDATE, NEED_REQUEST, NEED_RESPONSE, NEED_SHUTDOWN};
use super::packet::*;
use super::unix::{self, Line};
use super::{
    VsockStats, HANDSHAKE_TIMEOUT, HEADER_LEN, HOST_CID, MAX_CONNS, MAX_HANDSHAKES, MAX_PAYLOAD,
};
use crate::memory::GuestMemoryMmap;
use crate::virtio::chain::{self, Region};

/// Most RSTs waiting for a receive buffer.
pub(super) const MAX_RESETS: usize = 1024;
/// epoll token of the listening socket; streams use `STREAM_TOKEN + fd`.
pub(super) const TOKEN_LISTENER: u64 = 8;
pub(super) const STREAM_TOKEN: u64 = 1 << 32;
/// First host-side port given to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// A connection's key: (host-side port, guest port).
type Key = (u32, u32);

pub(super) struct Muxer {
    guest_cid: u64,
    base: PathBuf,
    listener: UnixListener,
    pub epoll: Epoll,
    conns: HashMap<Key, Conn>,
    by_fd: HashMap<RawFd, Key>,
    /// Accepted host connections still sending `CONNECT`, with deadlines.
    handshakes: HashMap<RawFd, (UnixStream, Instant)>,
    resets: VecDeque<Header>,
    ready: VecDeque<Key>,
    next_port: u32,
    stats: Arc<VsockStats>,
}

impl Muxer {
    pub(super) fn new(
        guest_cid: u64,
        base: PathBuf,
        listener: UnixListener,
        stats: Arc<VsockStats>,
    ) -> io::Result<Muxer> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )?;
        Ok(Muxer {
            guest_cid,
            base,
            listener,
            epoll,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            resets: VecDeque::new(),
            ready: VecDeque::new(),
            next_port: FIRST_LOCAL_PORT,
            stats,
        })
    }

    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn connections(&self) -> usize {
        self.conns.len()
    }

    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn pending_resets(&self) -> usize {
        self.resets.len()
    }

    /// True when the guest is owed a packet (or might be: a ready
    /// connection's stream may turn out empty).
    pub(super) fn has_rx_work(&self) -> bool {
        !self.resets.is_empty() || !self.ready.is_empty()
    }

    /// The driver reset the device: every connection ends (their host
    /// peers see the stream close). Host connections still handshaking
    /// stay; they will reach the next driver.
    pub(super) fn reset(&mut self) {
        self.conns.clear();
        self.by_fd.clear();
        self.ready.clear();
        self.resets.clear();
    }

    // ---- host side -------------------------------------------------

    /// The listening socket is readable: accept what waits.
    pub(super) fn on_listener(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::debug!("virtio-vsock: accept: {e}");
                    }
                    return;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES || stream.set_nonblocking(true).is_err() {
                log::debug!("virtio-vsock: too many host connections handshaking; closed one");
                continue;
            }
            let fd = stream.as_raw_fd();
            let events = EventSet::IN | EventSet::READ_HANG_UP;
            if self.register(ControlOperation::Add, fd, events).is_ok() {
                self.handshakes
                    .insert(fd, (stream, Instant::now() + HANDSHAKE_TIMEOUT));
            }
        }
    }

    fn register(&self, op: ControlOperation, fd: RawFd, events: EventSet) -> io::Result<()> {
        self.epoll
            .ctl(op, fd, EpollEvent::new(events, STREAM_TOKEN + fd as u64))
            .inspect_err(|e| log::debug!("virtio-vsock: epoll: {e}"))
    }

    /// A stream's epoll event.
    pub(super) fn on_stream(&mut self, fd: RawFd, events: EventSet) {
        if self.handshakes.contains_key(&fd) {
            self.on_handshake(fd);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            conn.readable = true;
        }
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            // The peer is gone entirely: nothing written will be read.
            conn.hung_up();
        }
        if events.contains(EventSet::OUT) && conn.pending_len() > 0 {
            if let Err(e) = conn.flush() {
                log::debug!("virtio-vsock: port {}: {e}", conn.local_port);
                self.kill(key);
                return;
            }
        }
        self.after_change(key);
    }

    fn on_handshake(&mut self, fd: RawFd) {
        let line = match self.handshakes.get(&fd).map(|(s, _)| unix::read_line(s)) {
            Some(Ok(Line::Partial)) => return,
            Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
            Some(Ok(Line::Complete(line))) => Some(line),
            _ => None,
        };
        let Some((stream, _)) = self.handshakes.remove(&fd) else {
            return;
        };
        let Some(port) = line.as_deref().and_then(unix::parse_connect) else {
            log::debug!("virtio-vsock: host connection sent no valid CONNECT line");
            return;
        };
        if self.conns.len() >= MAX_CONNS {
            log::debug!("virtio-vsock: {MAX_CONNS} connections open; refused one");
            return;
        }
        let local = self.allocate_port(port);
        let mut conn = Conn::new(stream, local, port, State::Connecting);
        conn.deadline = Some(Instant::now() + HANDSHAKE_TIMEOUT);
        conn.need = NEED_REQUEST;
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        if self.register(ControlOperation::Modify, fd, events).is_ok() {
            self.insert((local, port), conn);
        }
    }

    fn allocate_port(&mut self, peer: u32) -> u32 {
        loop {
            let port = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer)) {
                return port;
            }
        }
    }

    fn insert(&mut self, key: Key, conn: Conn) {
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.after_change(key);
    }

    /// Ends connections whose handshake or close took too long.
    pub(super) fn sweep(&mut self, now: Instant) {
        self.handshakes.retain(|_, (_, deadline)| *deadline > now);
        let expired: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            log::debug!("virtio-vsock: connection {key:?} timed out");
            self.kill(key);
        }
    }

    /// True when something waits on a deadline.
    pub(super) fn has_deadlines(&self) -> bool {
        !self.handshakes.is_empty() || self.conns.values().any(|c| c.deadline.is_some())
    }

    // ---- guest side ------------------------------------------------

    /// A packet from the guest, `payload` being its `h.len` bytes.
    pub(super) fn on_packet(&mut self, mem: &GuestMemoryMmap, h: &Header, payload: &[Region]) {
        if h.src_cid != self.guest_cid {
            log::debug!("virtio-vsock: packet from CID {} dropped", h.src_cid);
            VsockStats::add(&self.stats.errors, 1);
            return;
        }
        if h.dst_cid != HOST_CID || h.type_ != TYPE_STREAM {
            self.refuse(h);
            return;
        }
        let key = (h.dst_port, h.src_port);
        let Some(conn) = self.conns.get_mut(&key) else {
            match h.op {
                OP_REQUEST => self.guest_connect(h),
                OP_RST => {}
                _ => self.refuse(h),
            }
            return;
        };
        conn.update_peer_credit(h);
        match (h.op, conn.state) {
            (OP_RESPONSE, State::Connecting) => {
                let ok = format!("OK {}\n", conn.local_port);
                if (&conn.stream).write_all(ok.as_bytes()).is_err() {
                    self.kill(key);
                    return;
                }
                conn.state = State::Established;
                conn.deadline = None;
                VsockStats::add(&self.stats.connections, 1);
            }
            (OP_RW, State::Established | State::Closing) if !conn.peer_shut_send => {
                VsockStats::add(&self.stats.tx_packets, 1);
                VsockStats::add(&self.stats.tx_bytes, u64::from(h.len));
                if let Err(e) = conn.deliver(mem, payload, h.len as usize) {
                    log::debug!("virtio-vsock: port {}: {e}", conn.local_port);
                    self.kill(key);
                    return;
                }
            }
            (OP_SHUTDOWN, State::Established | State::Closing) => {
                conn.peer_shut_send |= h.flags & SHUTDOWN_SEND != 0;
                conn.peer_shut_rcv |= h.flags & SHUTDOWN_RCV != 0;
                if let Err(e) = conn.flush() {
                    log::debug!("virtio-vsock: port {}: {e}", conn.local_port);
                    self.kill(key);
                    return;
                }
            }
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => conn.need |= NEED_CREDIT_UPDATE,
            (OP_RST, _) => {
                self.remove(key);
                return;
            }
            _ => {
                log::debug!(
                    "virtio-vsock: {} in state {:?} resets the connection",
                    h.op_name(),
                    conn.state
                );
                VsockStats::add(&self.stats.errors, 1);
                self.kill(key);
                return;
            }
        }
        self.after_change(key);
    }

    /// A packet whose header does not match its chain: its connection (if
    /// any) is reset.
    pub(super) fn on_broken(&mut self, h: &Header) {
        if h.src_cid != self.guest_cid {
            return;
        }
        let key = (h.dst_port, h.src_port);
        if self.conns.contains_key(&key) {
            self.kill(key);
        } else {
            self.refuse(h);
        }
    }

    /// A guest REQUEST to host port `dst_port`: connect to `PATH_<port>`.
    fn guest_connect(&mut self, h: &Header) {
        if self.conns.len() >= MAX_CONNS {
            self.refuse(h);
            return;
        }
        let path = unix::port_path(&self.base, h.dst_port);
        let stream = match unix::connect(&path) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("virtio-vsock: {}: {e}", path.display());
                self.refuse(h);
                return;
            }
        };
        let mut conn = Conn::new(stream, h.dst_port, h.src_port, State::Established);
        conn.update_peer_credit(h);
        conn.need = NEED_RESPONSE;
        let fd = conn.stream.as_raw_fd();
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        if self.register(ControlOperation::Add, fd, events).is_err() {
            self.refuse(h);
            return;
        }
        VsockStats::add(&self.stats.connections, 1);
        self.insert((h.dst_port, h.src_port), conn);
    }

    /// Answers a packet that has no connection with RST.
    fn refuse(&mut self, h: &Header) {
        if h.op == OP_RST {
            return;
        }
        VsockStats::add(&self.stats.resets, 1);
        self.queue_reset(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        });
    }

    fn queue_reset(&mut self, h: Header) {
        if self.resets.len() >= MAX_RESETS {
            log::debug!("virtio-vsock: RST queue full; one dropped");
            return;
        }
        self.resets.push_back(h);
    }

    /// Ends a connection and tells the guest with RST.
    fn kill(&mut self, key: Key) {
        if let Some(mut conn) = self.remove(key) {
            VsockStats::add(&self.stats.resets, 1);
            let h = conn.header(self.guest_cid, OP_RST, 0, 0);
            self.queue_reset(h);
        }
    }

    /// Forgets a connection; dropping it closes the stream, which also
    /// takes it out of the epoll set.
    fn remove(&mut self, key: Key) -> Option<Conn> {
        let conn = self.conns.remove(&key)?;
        self.by_fd.remove(&conn.stream.as_raw_fd());
        Some(conn)
    }

    /// After anything changed a connection: close it if both sides are
    /// done, else make sure it is in `ready` if it owes the guest.
    fn after_change(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.peer_shut_send && conn.peer_shut_rcv && conn.pending_len() == 0 {
            // The guest closed and everything it sent is out: the spec's
            // RST that completes its close.
            self.kill(key);
            return;
        }
        if !conn.queued && conn.has_rx_work() {
            conn.queued = true;
            self.ready.push_back(key);
        }
    }

    /// Writes the next packet the guest is owed into the receive buffer
    /// `regions` (`len` bytes, at least a header). The used length, or
    /// None when nothing is owed after all.
    pub(super) fn fill(
        &mut self,
        mem: &GuestMemoryMmap,
        regions: &[Region],
        len: u64,
    ) -> Option<u32> {
        if let Some(h) = self.resets.pop_front() {
            return write_header(mem, regions, &h).then_some(HEADER_LEN as u32);
        }
        let room = (len.saturating_sub(HEADER_LEN as u64)).min(u64::from(MAX_PAYLOAD));
        let mut skipped = Vec::new();
        let mut out = None;
        while let Some(key) = self.ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let packet = self.packet_for(key, mem, regions, room);
            match packet {
                Packet::Written(n) => {
                    out = Some(n);
                    self.after_change(key);
                    break;
                }
                Packet::Nothing => self.after_change(key),
                // Only data is owed and this buffer has no room for any.
                Packet::NoRoom => skipped.push(key),
            }
        }
        for key in skipped {
            if let Some(conn) = self.conns.get_mut(&key) {
                if !conn.queued {
                    conn.queued = true;
                    self.ready.push_back(key);
                }
            }
        }
        out
    }

    fn packet_for(
        &mut self,
        key: Key,
        mem: &GuestMemoryMmap,
        regions: &[Region],
        room: u64,
    ) -> Packet {
        let cid = self.guest_cid;
        let Some(conn) = self.conns.get_mut(&key) else {
            return Packet::Nothing;
        };
        let control = |conn: &mut Conn, op, flags| {
            let h = conn.header(cid, op, 0, flags);
            if write_header(mem, regions, &h) {
                Packet::Written(HEADER_LEN as u32)
            } else {
                Packet::Nothing
            }
        };
        if conn.need & NEED_REQUEST != 0 {
            conn.need &= !NEED_REQUEST;
            return control(conn, OP_REQUEST, 0);
        }
        if conn.need & NEED_RESPONSE != 0 {
            conn.need &= !NEED_RESPONSE;
            return control(conn, OP_RESPONSE, 0);
        }
        if conn.can_send_data() {
            if room == 0 {
                return Packet::NoRoom;
            }
            let payload = chain::sub_regions(regions, HEADER_LEN as u64, room);
            match conn.read_into(mem, &payload) {
                Ok(0) => conn.host_eof = true,
                Ok(n) => {
                    // At most MAX_PAYLOAD: fits a u32.
                    let h = conn.header(cid, OP_RW, n as u32, 0);
                    if !write_header(mem, regions, &h) {
                        return Packet::Nothing;
                    }
                    VsockStats::add(&self.stats.rx_packets, 1);
                    VsockStats::add(&self.stats.rx_bytes, n as u64);
                    return Packet::Written((HEADER_LEN + n) as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.readable = false,
                Err(e) => {
                    log::debug!("virtio-vsock: port {}: read: {e}", conn.local_port);
                    conn.host_eof = true;
                }
            }
            if conn.host_eof {
                conn.need |= NEED_SHUTDOWN;
            }
        }
        if conn.need & NEED_SHUTDOWN != 0 {
            conn.need &= !NEED_SHUTDOWN;
            // A peer that closed its end entirely reads nothing more
            // either: say both, and wait for the guest's RST. One that
            // only shut its write side may still read the guest's reply.
            let flags = if conn.host_eof_hup {
                conn.state = State::Closing;
                conn.deadline = Some(Instant::now() + HANDSHAKE_TIMEOUT);
                SHUTDOWN_SEND | SHUTDOWN_RCV
            } else {
                SHUTDOWN_SEND
            };
            return control(conn, OP_SHUTDOWN, flags);
        }
        if conn.need & NEED_CREDIT_UPDATE != 0 {
            return control(conn, OP_CREDIT_UPDATE, 0);
        }
        Packet::Nothing
    }
}

/// What [`Muxer::packet_for`] did with a buffer.
enum Packet {
    Written(u32),
    Nothing,
    NoRoom,
}

fn write_header(mem: &GuestMemoryMmap, regions: &[Region], h: &Header) -> bool {
    let bytes = h.encode();
    if chain::write_stream(mem, regions, 0, &bytes) == Some(HEADER_LEN) {
        return true;
    }
    log::debug!("virtio-vsock: receive buffer is not writable");
    false
}
