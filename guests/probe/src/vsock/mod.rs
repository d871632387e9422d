//! The `vsock` check: a virtio-vsock driver (`dev.rs`, device 0x1053,
//! virtio 1.x section 5.10) and stream connections over it (`conn.rs`).
//! Three phases, each only when planned, in this order:
//!
//! * connect (`probe.vsock_connect=PORT`): `vsock_conns` connections to
//!   the host (CID 2) PORT at once, each sending a preamble and
//!   `vsock_bytes` of its own pattern, interleaved, and checking that the
//!   host echoes every byte; then a clean close (SHUTDOWN, RST).
//! * bench (`probe.vsock_bench=BYTES`): one connection to the same port;
//!   BYTES to the host as fast as credit allows, then BYTES back.
//! * listen (`probe.vsock_listen=PORT`): accept `vsock_accept` connections
//!   from the host and echo them until the host closes.
//!
//! Everything runs in ring 3; every wait is bounded (`vsock_ms` per
//! phase, 5 s per handshake). Plan keys, streams and output: README, "vsock".

mod conn;
mod dev;
mod table;

use crate::msg::Msg;
use crate::plan::{Plan, VsockPlan};
use crate::time::{self, Deadline};
use crate::virtio::bus::Devices;
use conn::{Role, State, MAX_CONNS};
use core::fmt::Write as _;
use dev::{Dev, VSOCK_DEVICE_ID};
use table::Table;

/// First local port of guest-initiated connections (connection i: + i).
const LOCAL_PORT: u32 = 49152;
/// The benchmark connection's local port.
const BENCH_PORT: u32 = LOCAL_PORT + MAX_CONNS as u32;

struct Session {
    dev: Dev,
    table: Table,
}

impl Session {
    /// Serve the device until `done` or `ms` pass; true if done.
    fn run(&mut self, ms: u64, done: impl Fn(&Table) -> bool) -> bool {
        let deadline = Deadline::after_ms(ms);
        loop {
            let irqs = self.dev.irqs.sum();
            let mut busy = false;
            let table = &mut self.table;
            while self.dev.recv(|h, d| table.handle(h, d)) {
                busy = true;
            }
            if self.dev.poll_events() {
                let cid = self.dev.t.dev_read64(0);
                self.table.transport_reset(cid);
            }
            self.dev.reap_tx();
            self.table.timers();
            busy |= self.table.pump(&mut self.dev);
            self.dev.flush();
            if done(&self.table) {
                return true;
            }
            if deadline.expired() {
                return false;
            }
            if !busy && self.dev.irqs.msix {
                // Wait for an interrupt; a millisecond at most, for the timers.
                let d = Deadline::after_us(1000);
                while self.dev.irqs.sum() == irqs && !self.dev.pending() && !d.expired() {
                    crate::hw::pause();
                }
            } else if !busy {
                crate::hw::pause();
            }
        }
    }
}

/// MB/s (10^6 bytes) of `bytes` in `us`.
fn mbps(bytes: u64, us: u64) -> u64 {
    bytes.checked_div(us).unwrap_or(0)
}

/// One `PROBE vsock conn=...` line per connection used; appends what went wrong.
fn report_conns(table: &Table, vp: &VsockPlan, why: &mut Msg) {
    for c in table.conns.iter().filter(|c| c.state != State::Free) {
        let us = match (c.t_end, c.t_start) {
            (Some(e), s) => e - s,
            (None, s) => time::now_us() - s,
        };
        let first_bad = c.first_bad.unwrap_or(u64::MAX);
        outln!(
            "PROBE vsock conn={} role={} local_port={} peer_port={} state={} ended_by={} tx_bytes={} rx_bytes={} tx_fnv64={:016x} rx_fnv64={:016x} bad={} first_bad={} peer_buf_alloc={} credit_requests_tx={} credit_requests_rx={} credit_updates_tx={} credit_updates_rx={} credit_violations={} us={us}",
            c.index,
            c.role.name(),
            c.local_port,
            c.peer_port,
            c.state.name(),
            if c.ended_by.is_empty() { "-" } else { c.ended_by },
            c.tx_bytes,
            c.rx_bytes,
            c.tx_fnv.0,
            c.rx_fnv.0,
            c.bad,
            if c.first_bad.is_some() { first_bad as i64 } else { -1 },
            c.peer_buf_alloc,
            c.credit_requests_tx,
            c.credit_requests_rx,
            c.credit_updates_tx,
            c.credit_updates_rx,
            c.credit_violations
        );
        let mut w = Msg::new();
        let expect_reset = c.role == Role::Connect && vp.expect_reset & (1 << c.index) != 0;
        match (c.role, c.state) {
            (_, State::Reset) if expect_reset => {}
            (_, _) if expect_reset => {
                let _ = write!(
                    w,
                    "state {} but a reset by the peer was expected; ",
                    c.state.name()
                );
            }
            (Role::Accept, State::Closed) => {
                if c.tx_bytes != c.rx_bytes {
                    let _ = write!(w, "echoed {} of {} bytes; ", c.tx_bytes, c.rx_bytes);
                }
            }
            (_, State::Closed) => {
                if !c.complete() {
                    let _ = write!(
                        w,
                        "closed after {} of {} bytes out, {} of {} in; ",
                        c.tx_bytes, c.out_total, c.rx_bytes, c.in_total
                    );
                }
            }
            (_, s) => {
                let _ = write!(
                    w,
                    "state {} ({}) after {} of {} bytes out, {} of {} in; ",
                    s.name(),
                    if c.note.is_empty() {
                        "phase time limit"
                    } else {
                        c.note
                    },
                    c.tx_bytes,
                    c.out_total,
                    c.rx_bytes,
                    c.in_total
                );
            }
        }
        if let Some((op, st)) = c.odd_packet {
            let _ = write!(w, "op {op} came in state {}; ", st.name());
        }
        if c.bad != 0 {
            let _ = write!(w, "{} bad packets, first bad byte at {first_bad}; ", c.bad);
        }
        if c.credit_violations != 0 {
            let _ = write!(
                w,
                "peer exceeded our credit {} times; ",
                c.credit_violations
            );
        }
        if !w.is_empty() {
            let _ = write!(why, "{} conn {}: {w}", c.role.name(), c.index);
        }
    }
}

fn connect_phase(s: &mut Session, vp: &VsockPlan, port: u32, why: &mut Msg) {
    s.table.clear();
    for i in 0..vp.conns as usize {
        s.table
            .connect(i, Role::Connect, LOCAL_PORT + i as u32, port, vp.bytes);
    }
    let t0 = time::now_us();
    s.run(vp.ms, |t| !t.busy());
    let us = time::now_us() - t0;
    report_conns(&s.table, vp, why);
    let used = s.table.conns.iter().filter(|c| c.state != State::Free);
    let (mut tx, mut rx, mut ok, mut reset) = (0, 0, 0, 0);
    for c in used {
        tx += c.tx_bytes;
        rx += c.rx_bytes;
        ok += u64::from(c.state == State::Closed && c.complete());
        reset += u64::from(c.state == State::Reset);
    }
    outln!(
        "PROBE vsock connect port={port} conns={} bytes={} completed={ok} reset={reset} tx_bytes={tx} rx_bytes={rx} us={us} mbps={}",
        vp.conns,
        vp.bytes,
        mbps(vp.bytes * ok, us)
    );
}

fn bench_phase(s: &mut Session, vp: &VsockPlan, port: u32, why: &mut Msg) {
    s.table.clear();
    s.table.connect(0, Role::Bench, BENCH_PORT, port, vp.bench);
    s.run(vp.ms, |t| !t.busy());
    report_conns(&s.table, vp, why);
    let c = &s.table.conns[0];
    let open = c.t_open.unwrap_or(0);
    let tx_us = c.t_ack.map_or(0, |t| t - open);
    let rx_us = match (c.t_ack, c.t_in_done) {
        (Some(a), Some(e)) => e - a,
        _ => 0,
    };
    let rx = c.rx_bytes.saturating_sub(8);
    outln!(
        "PROBE vsock bench tx_bytes={} us={tx_us} mbps={} done={}",
        c.tx_bytes.saturating_sub(conn::PREAMBLE),
        mbps(vp.bench, tx_us),
        u8::from(c.t_ack.is_some())
    );
    outln!(
        "PROBE vsock bench rx_bytes={rx} us={rx_us} mbps={} done={} bad={}",
        mbps(vp.bench, rx_us),
        u8::from(c.t_in_done.is_some()),
        c.bad
    );
}

fn listen_phase(s: &mut Session, vp: &VsockPlan, port: u32, why: &mut Msg) {
    s.table.clear();
    s.table.listen = Some(port);
    s.table.accept_left = vp.accept;
    s.table.accepted = 0;
    s.table.refused = 0;
    outln!("PROBE vsock listening port={port}");
    let t0 = time::now_us();
    s.run(vp.ms, |t| t.accept_left == 0 && !t.busy());
    let us = time::now_us() - t0;
    s.table.listen = None;
    report_conns(&s.table, vp, why);
    let used = s.table.conns.iter().filter(|c| c.state != State::Free);
    let (tx, rx) = used.fold((0, 0), |(t, r), c| (t + c.tx_bytes, r + c.rx_bytes));
    outln!(
        "PROBE vsock listen port={port} accepted={} refused={} rx_bytes={rx} tx_bytes={tx} us={us}",
        s.table.accepted,
        s.table.refused
    );
    if s.table.accepted != vp.accept {
        let _ = write!(
            why,
            "listen: accepted {} of {} connections within {} ms; ",
            s.table.accepted, vp.accept, vp.ms
        );
    }
}

/// The `vsock` check: the first virtio-vsock function, initialised and
/// driven through the planned phases.
pub fn check(devices: &mut Devices, plan: &Plan) -> Result<(), Msg> {
    let vp = &plan.vsock;
    let opt = |p: Option<u64>| p.map_or(-1, |v| v as i64);
    outln!(
        "PROBE vsock plan irq={} cid={} connect={} conns={} bytes={} listen={} accept={} bench={} buf_alloc={} rx_buf={} pkt={} split={} ms={}",
        if vp.msix { "msix" } else { "poll" },
        opt(vp.cid),
        opt(vp.connect),
        vp.conns,
        vp.bytes,
        opt(vp.listen),
        vp.accept,
        vp.bench,
        vp.buf_alloc,
        vp.rx_buf,
        vp.pkt,
        u8::from(vp.split),
        vp.ms
    );
    let bus = devices.bus()?;
    let mut why = Msg::new();
    let (first, second) = {
        let mut found = bus.find(VSOCK_DEVICE_ID);
        (found.next(), found.next())
    };
    let Some((i, devfn)) = first else {
        return Err(fail!(
            "no virtio-vsock function (vendor 1af4 device 1053) on bus 0"
        ));
    };
    if let Some((_, other)) = second {
        let _ = write!(why, "{other}: a second virtio-vsock function, not driven; ");
    }
    if let Some(e) = bus.bar_error(i) {
        let _ = write!(why, "{devfn}: {e}");
    }
    let t = bus.transport(i).map_err(|e| fail!("{devfn}: {e}"))?;
    let dev = Dev::init(t, devfn, vp, bus).map_err(|e| fail!("{devfn}: {e}"))?;
    let ring_slots = if vp.listen.is_some() {
        vp.accept as usize
    } else {
        0
    };
    let rings = match bus.arena.alloc(ring_slots as u64 * vp.buf_alloc, 64) {
        Some(a) => a,
        None => return Err(fail!("out of DMA memory for {ring_slots} echo rings")),
    };
    let (rxq, txq, evq) = dev.qsizes();
    outln!(
        "PROBE vsock dev={} guest_cid={} features={:#x} offered={:#x} irq={} rx_qsize={rxq} tx_qsize={txq} event_qsize={evq} rx_bufs={} rx_buf={} tx_slots={} pkt={} split={} msix_entries={} vectors={}",
        dev.devfn,
        dev.guest_cid,
        dev.features,
        dev.offered,
        dev.irqs.mode(),
        dev.rx_bufs,
        dev.rx_buf,
        dev.tx_slots,
        dev.pkt,
        u8::from(dev.split),
        dev.t.msix_entries,
        dev.irqs.entries
    );
    if let Some(want) = vp.cid {
        if dev.guest_cid != want {
            let _ = write!(why, "guest_cid {} expected {want}; ", dev.guest_cid);
        }
    }
    let irq0 = dev.irqs.sum();
    let table = Table::new(dev.guest_cid, vp.buf_alloc as u32, rings, ring_slots);
    let mut s = Session { dev, table };
    if let Some(port) = vp.connect {
        if vp.bytes > 0 || vp.bench == 0 {
            connect_phase(&mut s, vp, port as u32, &mut why);
        }
        if vp.bench > 0 {
            bench_phase(&mut s, vp, port as u32, &mut why);
        }
    }
    if let Some(port) = vp.listen {
        listen_phase(&mut s, vp, port as u32, &mut why);
    }
    // Let the device take the last packets (RSTs) before reporting.
    time::wait_ms(500, || {
        s.dev.reap_tx();
        s.dev.tx_in_flight() == 0
    });
    let d = &s.dev;
    let t = &s.table;
    let irqs = d.irqs.sum().wrapping_sub(irq0);
    outln!(
        "PROBE vsock stats rx_pkts={} tx_pkts={} rx_bytes={} tx_bytes={} rx_len_odd={} events={} transport_resets={} stray={} bad_addr={} bad_type={} tx_in_flight={} irq={} irqs={irqs}",
        d.c.rx_pkts,
        d.c.tx_pkts,
        d.c.rx_bytes,
        d.c.tx_bytes,
        d.c.rx_len_odd,
        d.c.events,
        d.c.transport_resets,
        t.stray,
        t.bad_addr,
        t.bad_type,
        d.tx_in_flight(),
        d.irqs.mode()
    );
    if let Some(f) = &d.fault {
        let _ = write!(why, "{f}; ");
    }
    if d.needs_reset() {
        let _ = write!(
            why,
            "device status {:#x} (DEVICE_NEEDS_RESET); ",
            d.t.status()
        );
    }
    if let Some(h) = &t.first_odd {
        let _ = write!(
            why,
            "{} packets not from CID 2 to our CID, {} not of stream type (first: op {} type {} cid {}:{} -> {}:{}); ",
            t.bad_addr, t.bad_type, h.op, h.kind, h.src_cid, h.src_port, h.dst_cid, h.dst_port
        );
    }
    if t.transport_resets != 0 {
        let _ = write!(why, "{} transport reset events; ", t.transport_resets);
    }
    if d.tx_in_flight() != 0 {
        let _ = write!(
            why,
            "{} transmitted packets never returned; ",
            d.tx_in_flight()
        );
    }
    let used = d.c.rx_pkts + d.c.tx_pkts;
    if d.irqs.msix && used > 0 && irqs == 0 {
        let _ = write!(why, "{used} packets but no MSI-X interrupt counted; ");
    }
    if !d.irqs.msix && irqs != 0 {
        let _ = write!(
            why,
            "{irqs} interrupts while polling (MSI-X off, NO_VECTOR); "
        );
    }
    // Leave the device quiet for whatever runs next.
    let _ = s.dev.t.reset();
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}
