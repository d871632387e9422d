//! Tests of the vsock device through its real worker: a guest driver
//! played by hand on mock queues (the net tests' `Driver`), real Unix
//! sockets on the host side, and hostile packets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempdir::TempDir;

use super::packet::*;
use super::*;
use crate::virtio::net::tests::driver::{guest_memory, Driver};
use crate::virtio::net::tests::CountingInterrupt;
use crate::virtio::{ActiveQueue, VirtioDevice, VIRTIO_F_VERSION_1};

const MEM_SIZE: usize = 16 << 20;
const CID: u64 = 7;
const RX_BUF: u32 = 4096 + HEADER_LEN as u32;
const WAIT: Duration = Duration::from_secs(3);

struct Guest {
    dev: Vsock,
    rx: Driver,
    tx: Driver,
    rx_notify: Arc<EventFd>,
    tx_notify: Arc<EventFd>,
    /// Receive buffers offered, by head, and how many used ones were read.
    rx_bufs: Vec<Option<GuestAddress>>,
    rx_seen: u16,
    /// The guest's own credit, as it advertises it.
    buf_alloc: u32,
    fwd_cnt: u32,
    dir: TempDir,
}

impl Guest {
    fn new() -> Guest {
        let dir = TempDir::new_with_prefix("/tmp/utsuwa-vsock-test").unwrap();
        let cfg = VsockConfig {
            cid: CID as u32,
            socket: dir.as_path().join("v.sock"),
        };
        let mut dev = Vsock::new(&cfg).unwrap();
        let mem = guest_memory(MEM_SIZE);
        let (rx, rxq) = Driver::new(&mem, GuestAddress(0), QUEUE_SIZE, 1 << 20, 4 << 20);
        let (tx, txq) = Driver::new(&mem, GuestAddress(0x4000), QUEUE_SIZE, 4 << 20, 16 << 20);
        let rx_notify = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let tx_notify = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let queues = vec![
            ActiveQueue {
                index: 0,
                queue: rxq,
                notify: rx_notify.clone(),
            },
            ActiveQueue {
                index: 1,
                queue: txq,
                notify: tx_notify.clone(),
            },
        ];
        let irq = Arc::new(CountingInterrupt::default());
        dev.activate(mem, VIRTIO_F_VERSION_1, queues, irq).unwrap();
        let mut g = Guest {
            dev,
            rx,
            tx,
            rx_notify,
            tx_notify,
            rx_bufs: vec![None; usize::from(QUEUE_SIZE)],
            rx_seen: 0,
            buf_alloc: 1 << 20,
            fwd_cnt: 0,
            dir,
        };
        g.post_rx(64);
        g
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.as_path().join("v.sock")
    }

    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let addr = self.rx.alloc(u64::from(RX_BUF));
            let head = self.rx.submit(&[(addr, RX_BUF, true)]);
            self.rx_bufs[usize::from(head)] = Some(addr);
        }
        self.rx_notify.write(1).unwrap();
    }

    fn header(&self, src_port: u32, dst_port: u32, op: u16, len: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Sends a packet as one buffer (header + payload).
    fn send_raw(&mut self, h: &Header, payload: &[u8]) {
        // One packet at a time: wait until the device took the last one,
        // then reuse the buffer space.
        let deadline = Instant::now() + WAIT;
        while self.tx.used_idx() != self.tx.avail_idx() {
            assert!(
                Instant::now() < deadline,
                "the device does not take packets"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        self.tx.free_all();
        let len = HEADER_LEN + payload.len();
        let addr = self.tx.alloc(len as u64);
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(payload);
        self.tx.write_bytes(addr, &bytes);
        self.tx.submit(&[(addr, len as u32, false)]);
        self.tx_notify.write(1).unwrap();
    }

    fn send(&mut self, src_port: u32, dst_port: u32, op: u16, payload: &[u8]) {
        let h = self.header(src_port, dst_port, op, payload.len() as u32);
        self.send_raw(&h, payload);
    }

    /// The next packet from the device, if one comes within `wait`.
    fn recv_within(&mut self, wait: Duration) -> Option<(Header, Vec<u8>)> {
        let deadline = Instant::now() + wait;
        while self.rx.used_idx() == self.rx_seen {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let (head, len) = self.rx.used_elem(self.rx_seen);
        self.rx_seen = self.rx_seen.wrapping_add(1);
        let addr = self.rx_bufs[head as usize].take().expect("a posted buffer");
        let bytes = self.rx.read_bytes(addr, len as usize);
        assert!(len as usize >= HEADER_LEN, "used length {len}");
        let raw: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
        let h = Header::decode(&raw);
        assert_eq!(h.len as usize, bytes.len() - HEADER_LEN, "{h:?}");
        if h.op == OP_RW {
            self.fwd_cnt = self.fwd_cnt.wrapping_add(h.len);
        }
        // Recycle: the buffer goes back at once.
        let head = self.rx.submit(&[(addr, RX_BUF, true)]);
        self.rx_bufs[usize::from(head)] = Some(addr);
        self.rx_notify.write(1).unwrap();
        Some((h, bytes[HEADER_LEN..].to_vec()))
    }

    fn recv(&mut self) -> (Header, Vec<u8>) {
        self.recv_within(WAIT).expect("a packet from the device")
    }

    /// The next packet that is not a credit update.
    fn recv_op(&mut self) -> (Header, Vec<u8>) {
        loop {
            let p = self.recv();
            if p.0.op != OP_CREDIT_UPDATE {
                return p;
            }
        }
    }

    /// Reads RW packets of port pair until `n` bytes came.
    fn recv_data(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n {
            let (h, data) = self.recv_op();
            assert_eq!(h.op, OP_RW, "{h:?}");
            out.extend(data);
        }
        out
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read_exact_within(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// Guest REQUEST to host port 5000, answered; the accepted host stream.
fn guest_connection(g: &mut Guest, port: u32) -> (UnixListener, UnixStream) {
    let listener = UnixListener::bind(unix::port_path(&g.socket(), 5000)).unwrap();
    g.send(port, 5000, OP_REQUEST, &[]);
    let (h, _) = g.recv_op();
    assert_eq!(
        (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (OP_RESPONSE, HOST_CID, CID, 5000, port)
    );
    assert_eq!(h.buf_alloc, BUF_ALLOC);
    let (stream, _) = listener.accept().unwrap();
    (listener, stream)
}

#[test]
fn guest_connects_to_a_host_listener_and_data_flows_both_ways() {
    let mut g = Guest::new();
    let (_l, mut host) = guest_connection(&mut g, 1000);
    let up = pattern(10_000, 1);
    g.send(1000, 5000, OP_RW, &up[..4000]);
    g.send(1000, 5000, OP_RW, &up[4000..]);
    assert_eq!(read_exact_within(&mut host, up.len()), up);
    let down = pattern(100_000, 2);
    host.write_all(&down).unwrap();
    assert_eq!(g.recv_data(down.len()), down);
    // The guest closes: SHUTDOWN both ways, the device answers RST and
    // the host sees the end of the stream.
    let mut h = g.header(1000, 5000, OP_SHUTDOWN, 0);
    h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send_raw(&h, &[]);
    assert_eq!(g.recv_op().0.op, OP_RST);
    let mut rest = Vec::new();
    host.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(host.read_to_end(&mut rest).unwrap(), 0);
    let s = g.dev.stats().snapshot();
    assert_eq!((s.tx_bytes, s.rx_bytes), (10_000, 100_000));
}

#[test]
fn host_connects_with_a_connect_line_and_gets_ok() {
    let mut g = Guest::new();
    let mut host = UnixStream::connect(g.socket()).unwrap();
    host.write_all(b"CONNECT 52\nearly").unwrap();
    let (req, _) = g.recv_op();
    assert_eq!((req.op, req.dst_port, req.dst_cid), (OP_REQUEST, 52, CID));
    assert!(req.src_port >= 1 << 30, "{req:?}");
    g.send(52, req.src_port, OP_RESPONSE, &[]);
    let ok = format!("OK {}\n", req.src_port);
    assert_eq!(read_exact_within(&mut host, ok.len()), ok.as_bytes());
    // Bytes written right after the line were not eaten by the handshake.
    assert_eq!(g.recv_data(5), b"early");
    g.send(52, req.src_port, OP_RW, b"pong");
    assert_eq!(read_exact_within(&mut host, 4), b"pong");
    // The host closes entirely: SHUTDOWN with both flags.
    drop(host);
    let (h, _) = g.recv_op();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND));
}

#[test]
fn refusals_end_the_host_connection_or_answer_rst() {
    let mut g = Guest::new();
    // The guest refuses a host connection: no OK, the stream ends.
    let mut host = UnixStream::connect(g.socket()).unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    let (req, _) = g.recv_op();
    g.send(9, req.src_port, OP_RST, &[]);
    let mut got = Vec::new();
    host.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(host.read_to_end(&mut got).unwrap(), 0);
    // A malformed line: closed without a REQUEST reaching the guest.
    let mut bad = UnixStream::connect(g.socket()).unwrap();
    bad.write_all(b"HELLO 9\n").unwrap();
    bad.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(bad.read_to_end(&mut got).unwrap(), 0);
    // A guest REQUEST to a port nobody listens on.
    g.send(2000, 6000, OP_REQUEST, &[]);
    let (h, _) = g.recv_op();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 6000, 2000));
    assert!(g.recv_within(Duration::from_millis(100)).is_none());
}

#[test]
fn host_data_respects_the_guest_credit() {
    let mut g = Guest::new();
    g.buf_alloc = 1000;
    let (_l, mut host) = guest_connection(&mut g, 1001);
    host.write_all(&pattern(5000, 3)).unwrap();
    assert_eq!(g.recv_data(1000), pattern(1000, 3));
    assert!(g.recv_within(Duration::from_millis(200)).is_none());
    // The guest consumed it: one credit update opens the next 1000.
    g.send(1001, 5000, OP_CREDIT_UPDATE, &[]);
    assert_eq!(g.recv_data(1000), pattern(5000, 3)[1000..2000]);
    assert!(g.recv_within(Duration::from_millis(200)).is_none());
}

#[test]
fn guest_beyond_its_credit_is_reset_and_memory_stays_bounded() {
    let mut g = Guest::new();
    let (_l, host) = guest_connection(&mut g, 1002);
    // The host never reads. The guest ignores its credit.
    let chunk = pattern(MAX_PAYLOAD as usize, 4);
    let mut sent = 0usize;
    let limit = 64 << 20;
    let rst = loop {
        g.send(1002, 5000, OP_RW, &chunk);
        sent += chunk.len();
        if let Some((h, _)) = g.recv_within(Duration::from_millis(20)) {
            if h.op == OP_RST {
                break true;
            }
        }
        if sent > limit {
            break false;
        }
    };
    assert!(rst, "no RST after {sent} bytes");
    // Only the socket buffer and BUF_ALLOC could be taken.
    assert!(sent < (8 << 20), "{sent}");
    drop(host);
}

#[test]
fn credit_updates_reach_a_guest_that_only_sends() {
    let mut g = Guest::new();
    let (_l, mut host) = guest_connection(&mut g, 1003);
    let data = pattern(BUF_ALLOC as usize / 2, 5);
    for part in data.chunks(MAX_PAYLOAD as usize) {
        g.send(1003, 5000, OP_RW, part);
    }
    assert_eq!(read_exact_within(&mut host, data.len()), data);
    let (h, _) = g.recv();
    assert_eq!(h.op, OP_CREDIT_UPDATE);
    assert!(h.fwd_cnt >= BUF_ALLOC / 4, "{h:?}");
    // A CREDIT_REQUEST is answered.
    g.send(1003, 5000, OP_CREDIT_REQUEST, &[]);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.fwd_cnt), (OP_CREDIT_UPDATE, data.len() as u32));
}

#[test]
fn a_vanishing_host_peer_resets_only_its_own_connection() {
    let mut g = Guest::new();
    let listener = UnixListener::bind(unix::port_path(&g.socket(), 5000)).unwrap();
    g.send(1, 5000, OP_REQUEST, &[]);
    g.send(2, 5000, OP_REQUEST, &[]);
    assert_eq!(g.recv_op().0.op, OP_RESPONSE);
    assert_eq!(g.recv_op().0.op, OP_RESPONSE);
    let (first, _) = listener.accept().unwrap();
    let (mut second, _) = listener.accept().unwrap();
    drop(first);
    let (h, _) = g.recv_op();
    assert_eq!((h.op, h.dst_port), (OP_SHUTDOWN, 1));
    g.send(2, 5000, OP_RW, b"still here");
    assert_eq!(read_exact_within(&mut second, 10), b"still here");
    second.write_all(b"yes").unwrap();
    assert_eq!(g.recv_data(3), b"yes");
}

#[test]
fn hostile_packets_are_answered_or_dropped_never_obeyed() {
    let mut g = Guest::new();
    // From another CID: dropped silently.
    let mut h = g.header(1, 5000, OP_REQUEST, 0);
    h.src_cid = 99;
    g.send_raw(&h, &[]);
    // To a CID other than the host, or not a stream: RST.
    let mut h = g.header(2, 5000, OP_REQUEST, 0);
    h.dst_cid = 3;
    g.send_raw(&h, &[]);
    assert_eq!(g.recv_op().0.op, OP_RST);
    let mut h = g.header(3, 5000, OP_REQUEST, 0);
    h.type_ = 2;
    g.send_raw(&h, &[]);
    assert_eq!(g.recv_op().0.op, OP_RST);
    // Data for a connection that does not exist: RST.
    g.send(4, 5000, OP_RW, b"who?");
    assert_eq!(g.recv_op().0.op, OP_RST);
    // A header claiming more than the chain carries, on a live connection.
    let (_l, mut host) = guest_connection(&mut g, 5);
    let h = g.header(5, 5000, OP_RW, 60_000);
    g.send_raw(&h, b"short");
    assert_eq!(g.recv_op().0.op, OP_RST);
    let mut got = Vec::new();
    host.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(host.read_to_end(&mut got).unwrap(), 0);
    // A chain shorter than a header, and an unknown op.
    let a = g.tx.alloc(8);
    g.tx.submit(&[(a, 8, false)]);
    g.tx_notify.write(1).unwrap();
    g.send(6, 5000, 42, &[]);
    assert_eq!(g.recv_op().0.op, OP_RST);
    assert!(g.dev.stats().snapshot().errors >= 2);
    assert!(g.recv_within(Duration::from_millis(100)).is_none());
}

#[test]
fn reset_closes_every_host_stream_and_the_device_starts_again() {
    let mut g = Guest::new();
    let (_l, mut host) = guest_connection(&mut g, 7);
    g.dev.reset();
    let mut got = Vec::new();
    host.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(host.read_to_end(&mut got).unwrap(), 0);
    // Dropping the device removes its socket file.
    let socket = g.socket();
    assert!(socket.exists());
    drop(g.dev);
    assert!(!socket.exists());
}

#[test]
fn rst_queue_is_bounded_when_the_guest_never_reads() {
    let dir = TempDir::new_with_prefix("/tmp/utsuwa-vsock-test").unwrap();
    let path = dir.as_path().join("v.sock");
    let listener = unix::listen(&path).unwrap();
    let stats = Arc::new(VsockStats::default());
    let mut m = muxer::Muxer::new(CID, path, listener, stats).unwrap();
    let mem = guest_memory(1 << 20);
    for port in 0..5000 {
        let h = Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: port,
            dst_port: 1,
            type_: TYPE_STREAM,
            op: OP_RW,
            ..Header::default()
        };
        m.on_packet(&mem, &h, &[]);
    }
    assert_eq!(m.pending_resets(), muxer::MAX_RESETS);
    assert_eq!(m.connections(), 0);
}
