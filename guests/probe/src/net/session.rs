//! One NIC's part of the `net` check: a small event-driven endpoint that
//! answers ARP and ICMP echo for its address, sends and verifies the
//! probe's data frames, runs the benchmark and pings its peer, phase by
//! phase (`Phase`), all while serving whatever arrives.

mod traffic;

use super::dev::{Nic, TxMeta};
use super::frame::{self, Hdr, PAYLOAD};
use crate::eth::{
    self, ARP_REPLY, ARP_REQUEST, ETH_HDR, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_START,
};
use crate::msg::Msg;
use crate::plan::NetPlan;
use crate::time;
use crate::virtio::data::{matches_pattern, Fnv};
use core::fmt::Write as _;

/// Acknowledge incoming data/bench frames at least this often.
const ACK_EVERY: u64 = 32;
const HELLO_EVERY_US: u64 = 1_000_000;
const HELLO_MAX: u32 = 10;
const GO_EVERY_US: u64 = 1_000_000;
const ARP_EVERY_US: u64 = 200_000;
const ARP_TRIES: u32 = 25;
const PING_TIMEOUT_US: u64 = 1_000_000;
/// A benchmark direction with no progress for this long has failed.
const STALL_US: u64 = 5_000_000;
/// ICMP identifier of the probe's own echo requests.
const PING_ID: u16 = 0x7072;
const PING_DATA: usize = 56;
/// Frames handled per NIC per round.
const RX_BATCH: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// Sending the data frames (and waiting for the host's).
    Data,
    Tso,
    G2h,
    H2g,
    Arp,
    Ping,
    /// Waiting for the pings goal and the last transmissions.
    Finish,
    /// Goals met, DONE sent; still answering ARP and pings.
    Done,
}

/// An incoming stream (host → guest data or benchmark frames).
#[derive(Default)]
struct Stream {
    count: u64,
    next: u64,
    acked: u64,
}

pub struct Session {
    pub nic: Nic,
    pub index: usize,
    scratch: &'static mut [u8],
    template: &'static mut [u8],
    pub ip: Option<[u8; 4]>,
    pub peer: Option<[u8; 4]>,
    peer_mac: Option<[u8; 6]>,
    pub phase: Phase,
    started: bool,
    hello_at: u64,
    hellos: u32,
    heard_host: bool,
    ip_id: u16,
    pub irq0: u32,
    pub t0: u64,
    pub t_done: Option<u64>,
    // Serving.
    pub arp_requests: u64,
    pub arp_replies: u64,
    pub pings: u64,
    pub icmp_bad_csum: u64,
    pub ip_bad_csum: u64,
    pub malformed: u64,
    pub rx_other: u64,
    pub reply_drops: u64,
    // Guest → host data frames.
    pub tx_sent: u64,
    pub tx_fnv: Fnv,
    pub tx_payload: u64,
    // Host → guest data frames.
    pub rx_ok: u64,
    pub rx_bad: u64,
    pub rx_fnv: Fnv,
    pub rx_payload: u64,
    pub rx_first_bad: Option<(u32, &'static str)>,
    pub rx_out_of_order: u64,
    data_in: Stream,
    bench_in: Stream,
    // Benchmark.
    pub bench_len: usize,
    pub g2h_sent: u64,
    pub g2h_acked: u64,
    pub g2h_host_count: u64,
    g2h_t0: u64,
    pub g2h_us: Option<u64>,
    go_at: u64,
    gos: u32,
    h2g_last: u64,
    pub h2g_us: Option<u64>,
    pub h2g_bad: u64,
    progress_at: u64,
    // Pinging the peer.
    arp_tries: u32,
    arp_at: u64,
    ping_seq: u16,
    ping_at: Option<u64>,
    pub rtt_n: u64,
    pub rtt_sum: u64,
    pub rtt_min: u64,
    pub rtt_max: u64,
    pub rtt_lost: u64,
    // TSO.
    pub tso_sent: bool,
    pub tso_mss: u16,
    /// Phases that failed, and why.
    pub errors: Msg,
}

impl Session {
    pub fn new(
        nic: Nic,
        index: usize,
        np: &NetPlan,
        scratch: &'static mut [u8],
        template: &'static mut [u8],
    ) -> Session {
        let max = ETH_HDR + usize::from(nic.mtu);
        Session {
            bench_len: (np.bench as usize).clamp(60, max),
            nic,
            index,
            scratch,
            template,
            ip: np.ip[index],
            peer: np.peer[index],
            peer_mac: None,
            phase: Phase::Data,
            started: false,
            hello_at: 0,
            hellos: 0,
            heard_host: false,
            ip_id: 1,
            irq0: 0,
            t0: 0,
            t_done: None,
            arp_requests: 0,
            arp_replies: 0,
            pings: 0,
            icmp_bad_csum: 0,
            ip_bad_csum: 0,
            malformed: 0,
            rx_other: 0,
            reply_drops: 0,
            tx_sent: 0,
            tx_fnv: Fnv::new(),
            tx_payload: 0,
            rx_ok: 0,
            rx_bad: 0,
            rx_fnv: Fnv::new(),
            rx_payload: 0,
            rx_first_bad: None,
            rx_out_of_order: 0,
            data_in: Stream::default(),
            bench_in: Stream::default(),
            g2h_sent: 0,
            g2h_acked: 0,
            g2h_host_count: 0,
            g2h_t0: 0,
            g2h_us: None,
            go_at: 0,
            gos: 0,
            h2g_last: 0,
            h2g_us: None,
            h2g_bad: 0,
            progress_at: 0,
            arp_tries: 0,
            arp_at: 0,
            ping_seq: 0,
            ping_at: None,
            rtt_n: 0,
            rtt_sum: 0,
            rtt_min: u64::MAX,
            rtt_max: 0,
            rtt_lost: 0,
            tso_sent: false,
            tso_mss: 0,
            errors: Msg::new(),
        }
    }

    pub fn bench_in_count(&self) -> u64 {
        self.bench_in.count
    }

    fn max_frame(&self) -> usize {
        ETH_HDR + usize::from(self.nic.mtu)
    }

    pub fn pings_wanted(&self, np: &NetPlan) -> bool {
        self.peer.is_some() && np.bench_pings > 0
    }

    /// One round: take back transmit buffers, handle up to `RX_BATCH`
    /// frames, move the phase on, notify. True if anything happened.
    pub fn poll(&mut self, np: &NetPlan) -> bool {
        let now = time::now_us();
        if !self.started {
            self.started = true;
            self.t0 = now;
            self.progress_at = now;
            self.irq0 = self.nic.irqs.sum();
            self.send_hello(np, now);
        }
        let mut busy = self.nic.pending();
        self.nic.reap_tx();
        let mut drained = false;
        for _ in 0..RX_BATCH {
            let scratch = &mut *self.scratch;
            match self.nic.recv(scratch) {
                Some(meta) => self.handle(meta.len, time::now_us()),
                None => {
                    drained = true;
                    break;
                }
            }
        }
        self.ack(drained);
        busy |= self.advance(np, time::now_us());
        self.nic.flush();
        busy
    }

    fn send_control(&mut self, kind: u8, flags: u8, seq: u32, aux: u64, payload: &[u8]) -> bool {
        let (mac, nic) = (self.nic.mac, self.index);
        self.nic.send(|b| TxMeta {
            len: frame::control(b, mac, kind, flags, nic, seq, aux, payload),
            ..TxMeta::default()
        })
    }

    fn send_hello(&mut self, np: &NetPlan, now: u64) {
        let flags = u32::from(np.offload) | u32::from(self.nic.has(super::dev::F_MRG_RXBUF)) << 1;
        let vals = [
            self.index as u32,
            np.tx_frames as u32,
            np.rx_frames as u32,
            if np.bench != 0 {
                self.bench_len as u32
            } else {
                0
            },
            np.bench_frames as u32,
            np.window as u32,
            u32::from(self.nic.mtu),
            flags,
        ];
        let mut p = [0u8; 32];
        for (i, v) in vals.iter().enumerate() {
            p[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        if self.send_control(frame::HELLO, 0, self.hellos, 0, &p) {
            self.hellos += 1;
            self.hello_at = now;
        }
    }

    /// Acknowledge incoming streams: every `ACK_EVERY` frames, and when the
    /// receive queue ran dry.
    fn ack(&mut self, drained: bool) {
        for kind in [frame::DATA_H2G, frame::BENCH_H2G] {
            let s = if kind == frame::DATA_H2G {
                &self.data_in
            } else {
                &self.bench_in
            };
            let (count, next, acked) = (s.count, s.next, s.acked);
            if count > acked
                && (count - acked >= ACK_EVERY || drained)
                && self.send_control(frame::ACK, kind, count as u32, next, &[])
            {
                if kind == frame::DATA_H2G {
                    self.data_in.acked = count;
                } else {
                    self.bench_in.acked = count;
                }
            }
        }
    }

    /// A received frame (in `scratch[..len]`).
    fn handle(&mut self, len: usize, now: u64) {
        let f = &self.scratch[..len];
        match eth::ethertype(f) {
            eth::ETHERTYPE_ARP => self.handle_arp(len),
            eth::ETHERTYPE_IPV4 => self.handle_ip(len, now),
            frame::ETHERTYPE => match frame::parse(f) {
                Some(h) => self.handle_probe(&h, len, now),
                None => self.malformed += 1,
            },
            _ => self.rx_other += 1,
        }
    }

    fn handle_arp(&mut self, len: usize) {
        let Some(a) = eth::parse_arp(&self.scratch[..len]) else {
            self.malformed += 1;
            return;
        };
        if Some(a.spa) == self.peer {
            self.peer_mac = Some(a.sha);
        }
        match (a.oper, self.ip) {
            (ARP_REQUEST, Some(ip)) if a.tpa == ip => {
                self.arp_requests += 1;
                let mac = self.nic.mac;
                if self.nic.send(|b| TxMeta {
                    len: eth::build_arp(b, ARP_REPLY, mac, ip, a.sha, a.spa),
                    ..TxMeta::default()
                }) {
                    self.arp_replies += 1;
                } else {
                    self.reply_drops += 1;
                }
            }
            (ARP_REPLY, _) => {}
            _ => self.rx_other += 1,
        }
    }

    fn handle_ip(&mut self, len: usize, now: u64) {
        let f = &self.scratch[..len];
        let icmp = match eth::parse_icmp(f) {
            Ok(i) => i,
            Err(eth::IpError::NotIcmp) => return self.rx_other += 1,
            Err(eth::IpError::Malformed) => return self.malformed += 1,
            Err(eth::IpError::BadIpChecksum) => return self.ip_bad_csum += 1,
            Err(eth::IpError::BadIcmpChecksum) => return self.icmp_bad_csum += 1,
        };
        let Some(ip) = self.ip.filter(|&ip| ip == icmp.dst) else {
            self.rx_other += 1;
            return;
        };
        match (icmp.kind, icmp.code) {
            (ICMP_ECHO_REQUEST, 0) => {
                let (mac, offload, id) =
                    (self.nic.mac, self.nic.has(super::dev::F_CSUM), self.ip_id);
                let data = &self.scratch[icmp.data.0..icmp.data.1];
                let sent = data.len() <= self.max_frame() - ICMP_START - 8
                    && self.nic.send(|b| {
                        let len = eth::build_echo(
                            b,
                            (icmp.src_mac, mac),
                            (ip, icmp.src),
                            ICMP_ECHO_REPLY,
                            icmp.id,
                            icmp.seq,
                            data,
                            id,
                            offload,
                        );
                        TxMeta {
                            len,
                            csum: offload.then_some((ICMP_START as u16, 2)),
                            tso: None,
                        }
                    });
                self.ip_id = self.ip_id.wrapping_add(1);
                if sent {
                    self.pings += 1;
                } else {
                    self.reply_drops += 1;
                }
            }
            (ICMP_ECHO_REPLY, 0)
                if icmp.id == PING_ID
                    && icmp.seq == self.ping_seq
                    && Some(icmp.src) == self.peer =>
            {
                if let Some(at) = self.ping_at.take() {
                    let rtt = now.saturating_sub(at);
                    self.rtt_n += 1;
                    self.rtt_sum += rtt;
                    self.rtt_min = self.rtt_min.min(rtt);
                    self.rtt_max = self.rtt_max.max(rtt);
                    self.ping_seq = self.ping_seq.wrapping_add(1);
                }
            }
            _ => self.rx_other += 1,
        }
    }

    fn handle_probe(&mut self, h: &Hdr, len: usize, now: u64) {
        let f = &self.scratch[..len];
        match h.kind {
            frame::DATA_H2G => {
                self.heard_host = true;
                let end = PAYLOAD + h.len as usize;
                let bad = if end > len || (len > end && len > 60) {
                    Some("length")
                } else if Fnv::of(&f[PAYLOAD..end]) != h.fnv {
                    Some("fnv")
                } else if !matches_pattern(h.aux, 0, &f[PAYLOAD..end]) {
                    Some("pattern")
                } else {
                    None
                };
                match bad {
                    None => {
                        self.rx_ok += 1;
                        self.rx_fnv.update(&f[PAYLOAD..end]);
                        self.rx_payload += u64::from(h.len);
                    }
                    Some(why) => {
                        self.rx_bad += 1;
                        self.rx_first_bad.get_or_insert((h.seq, why));
                    }
                }
                if u64::from(h.seq) != self.data_in.next {
                    self.rx_out_of_order += 1;
                }
                self.data_in.count += 1;
                self.data_in.next = self.data_in.next.max(u64::from(h.seq) + 1);
            }
            frame::BENCH_H2G => {
                self.heard_host = true;
                let end = PAYLOAD + h.len as usize;
                // The payload is checked on every 64th frame (the rate is what is measured).
                if end > len || (h.seq % 64 == 0 && Fnv::of(&f[PAYLOAD..end]) != h.fnv) {
                    self.h2g_bad += 1;
                }
                self.bench_in.count += 1;
                self.bench_in.next = self.bench_in.next.max(u64::from(h.seq) + 1);
                self.h2g_last = now;
                self.progress_at = now;
            }
            frame::ACK => {
                self.heard_host = true;
                if h.flags == frame::BENCH_G2H && h.aux > self.g2h_acked {
                    self.g2h_acked = h.aux.min(self.g2h_sent);
                    self.g2h_host_count = u64::from(h.seq);
                    self.progress_at = now;
                }
            }
            _ => self.rx_other += 1,
        }
    }

    /// Move the current phase on; true if something was sent.
    fn advance(&mut self, np: &NetPlan, now: u64) -> bool {
        if !self.heard_host
            && (np.rx_frames > 0 || np.bench > 0)
            && self.hellos < HELLO_MAX
            && now - self.hello_at >= HELLO_EVERY_US
        {
            self.send_hello(np, now);
        }
        match self.phase {
            Phase::Data => {
                let mut sent = false;
                let max = self.max_frame();
                while self.tx_sent < np.tx_frames && self.nic.tx_free() > 0 {
                    let (seq, mac, nic) = (self.tx_sent, self.nic.mac, self.index);
                    let len = frame::data_len(seq, max);
                    // The running FNV covers the payloads in order.
                    let fnv = &mut self.tx_fnv;
                    self.nic.send(|b| {
                        frame::data(
                            b,
                            mac,
                            frame::DATA_G2H,
                            nic,
                            seq as u32,
                            len,
                            frame::g2h_seed(nic, seq),
                        );
                        fnv.update(&b[PAYLOAD..len]);
                        TxMeta {
                            len,
                            ..TxMeta::default()
                        }
                    });
                    self.tx_payload += (len - PAYLOAD) as u64;
                    self.tx_sent += 1;
                    sent = true;
                }
                if self.tx_sent == np.tx_frames && self.data_in.count >= np.rx_frames {
                    self.next_phase(np, now);
                }
                sent
            }
            Phase::Tso => {
                if !self.tso_sent {
                    self.send_tso(np);
                } else if self.nic.tx_in_flight() == 0 {
                    self.next_phase(np, now);
                }
                false
            }
            Phase::G2h => self.bench_g2h(np, now),
            Phase::H2g => {
                if self.bench_in.count >= np.bench_frames {
                    self.h2g_us = Some(self.h2g_last.saturating_sub(self.go_at).max(1));
                    self.next_phase(np, now);
                } else if self.bench_in.count == 0
                    && (self.gos == 0 || now - self.go_at >= GO_EVERY_US)
                {
                    if self.gos == 5 {
                        let _ = write!(
                            self.errors,
                            "no benchmark frame from the host after {} GO frames; ",
                            self.gos
                        );
                        self.next_phase(np, now);
                        return false;
                    }
                    let mut p = [0u8; 8];
                    p[..4].copy_from_slice(&(np.bench_frames as u32).to_le_bytes());
                    p[4..].copy_from_slice(&(self.bench_len as u32).to_le_bytes());
                    if self.send_control(frame::GO, 0, self.gos, 0, &p) {
                        self.gos += 1;
                        self.go_at = now;
                        self.progress_at = now;
                        self.nic.flush_tx();
                    }
                } else if self.bench_in.count > 0 && now - self.progress_at > STALL_US {
                    let _ = write!(
                        self.errors,
                        "host-to-guest benchmark stalled at {} of {} frames; ",
                        self.bench_in.count, np.bench_frames
                    );
                    self.next_phase(np, now);
                }
                false
            }
            Phase::Arp => {
                if self.ip.is_none() {
                    let _ = write!(
                        self.errors,
                        "probe.net_peer needs probe.net_ip (a source address); "
                    );
                    self.phase = Phase::Finish;
                } else if self.peer_mac.is_some() {
                    self.next_phase(np, now);
                } else if self.arp_tries == 0 || now - self.arp_at >= ARP_EVERY_US {
                    if self.arp_tries == ARP_TRIES {
                        let _ = write!(
                            self.errors,
                            "no ARP reply from the peer {} after {ARP_TRIES} requests; ",
                            eth::Ip(self.peer)
                        );
                        self.phase = Phase::Finish;
                        return false;
                    }
                    let (mac, ip, peer) = (
                        self.nic.mac,
                        self.ip.unwrap_or([0; 4]),
                        self.peer.unwrap_or([0; 4]),
                    );
                    if self.nic.send(|b| TxMeta {
                        len: eth::build_arp(b, ARP_REQUEST, mac, ip, [0; 6], peer),
                        ..TxMeta::default()
                    }) {
                        self.arp_tries += 1;
                        self.arp_at = now;
                    }
                }
                false
            }
            Phase::Ping => self.ping(np, now),
            Phase::Finish => {
                let pings_ok = self.ip.is_none() || self.pings >= np.pings;
                if pings_ok && self.nic.tx_in_flight() == 0 {
                    let mut p = [0u8; 24];
                    p[..8].copy_from_slice(&self.tx_sent.to_le_bytes());
                    p[8..16].copy_from_slice(&self.rx_ok.to_le_bytes());
                    p[16..].copy_from_slice(&self.pings.to_le_bytes());
                    if self.send_control(frame::DONE, 0, 0, 0, &p) {
                        self.phase = Phase::Done;
                        self.t_done = Some(now);
                    }
                }
                false
            }
            Phase::Done => false,
        }
    }

    fn next_phase(&mut self, np: &NetPlan, now: u64) {
        let order = [
            Phase::Data,
            Phase::Tso,
            Phase::G2h,
            Phase::H2g,
            Phase::Arp,
            Phase::Ping,
            Phase::Finish,
        ];
        let mut i = order
            .iter()
            .position(|&p| p == self.phase)
            .map_or(order.len() - 1, |i| i + 1);
        while i < order.len() - 1 {
            let wanted = match order[i] {
                Phase::Tso => np.tso > 0,
                Phase::G2h | Phase::H2g => np.bench > 0,
                Phase::Arp | Phase::Ping => self.pings_wanted(np),
                _ => true,
            };
            if wanted {
                break;
            }
            i += 1;
        }
        self.phase = order[i];
        self.progress_at = now;
    }
}
