//! The peer: the host end of one NIC's session with the probe, a thread
//! that answers the guest's frames on an AF_PACKET socket, sends it data
//! and benchmark frames, pings it, and reports what it saw.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::frame::{
    echo_request, fnv1a64, g2h_seed, h2g_seed, host_data_len, inet_checksum, parse_hello, pattern,
    Fnv, Hdr, Hello, ACK, BENCH_G2H, BENCH_H2G, BENCH_SEED, DATA_G2H, DATA_H2G, DONE, GO, HELLO,
    PAYLOAD, RAW_PING_ID,
};
use super::netns::{RawSocket, Received};
use super::which;

/// How the peer pings the guest once it said HELLO.
#[derive(Clone, Debug)]
pub struct PingJob {
    pub ns: String,
    pub ip: String,
    pub count: u32,
}

#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Give up after this long.
    pub timeout: Duration,
    /// Frames in flight beyond the guest's last acknowledgement.
    pub window: u64,
    /// Data frames to send (default: what the HELLO asks for).
    pub data_frames: Option<u64>,
    /// Damage this data frame after its FNV was computed (the guest must
    /// reject it; it is left out of `h2g_fnv`).
    pub corrupt: Option<u64>,
    pub ping: Option<PingJob>,
}

impl Default for PeerConfig {
    fn default() -> PeerConfig {
        PeerConfig {
            timeout: Duration::from_secs(60),
            window: 128,
            data_frames: None,
            corrupt: None,
            ping: None,
        }
    }
}

#[derive(Debug, Default)]
pub struct PeerReport {
    pub guest_mac: Option<[u8; 6]>,
    pub hello: Option<Hello>,
    pub hellos: u64,
    /// Guest data frames: intact, damaged (what was wrong), FNV over the
    /// intact payloads in arrival order, payload bytes, frame lengths seen.
    pub g2h_ok: u64,
    pub g2h_bad: Vec<String>,
    pub g2h_fnv: Fnv,
    pub g2h_payload: u64,
    pub g2h_out_of_order: u64,
    pub g2h_lens: BTreeMap<usize, u64>,
    /// Host data frames sent; FNV over their payloads; the guest's last ACK.
    pub h2g_sent: u64,
    pub h2g_fnv: Fnv,
    pub h2g_payload: u64,
    pub h2g_acked: u64,
    pub bench_g2h: u64,
    pub bench_g2h_bad: u64,
    pub bench_g2h_secs: f64,
    pub bench_h2g_sent: u64,
    pub bench_h2g_secs: f64,
    pub gos: u64,
    /// DONE's counters: data frames sent, data frames received intact, pings answered.
    pub done: Option<[u64; 3]>,
    /// ICMP echo replies from the guest: total, with the checksum left to
    /// offload (CHECKSUM_PARTIAL), with a correct checksum as captured.
    pub icmp_replies: u64,
    pub icmp_csum_partial: u64,
    pub icmp_csum_ok: u64,
    /// TCP segments from the guest (its GSO frame): frames, largest frame,
    /// payload reassembled by sequence number.
    pub tcp_frames: u64,
    pub tcp_max_frame: usize,
    pub tcp_payload: BTreeMap<u32, Vec<u8>>,
    pub other_frames: u64,
    /// The `ping` run (None: not run, or `ping` is not installed and the
    /// peer pinged from its socket: see `raw_ping_replies`).
    pub ping: Option<Output>,
    pub raw_ping_replies: u64,
    pub errors: Vec<String>,
}

impl PeerReport {
    /// The TCP payload the guest's GSO frame carried, in sequence order.
    pub fn tcp_stream(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for (seq, p) in &self.tcp_payload {
            if *seq as usize == v.len() {
                v.extend_from_slice(p);
            }
        }
        v
    }
}

/// The host end of one NIC: call before the VMM starts (the socket must
/// exist before the guest's HELLO); ends at the guest's DONE, at `stop`, or
/// after the timeout.
pub fn spawn_peer(
    sock: RawSocket,
    cfg: PeerConfig,
    stop: Arc<AtomicBool>,
) -> JoinHandle<PeerReport> {
    std::thread::spawn(move || Peer::new(sock, cfg).run(&stop))
}

struct Peer {
    sock: RawSocket,
    cfg: PeerConfig,
    r: PeerReport,
    nic: u16,
    max_frame: usize,
    data_target: u64,
    bench_target: u64,
    bench_len: usize,
    bench_template: Vec<u8>,
    g2h_next: u64,
    bench_next: u64,
    bench_acked_sent: u64,
    bench_first: Option<Instant>,
    bench_last: Option<Instant>,
    h2g_bench_acked: u64,
    h2g_bench_start: Option<Instant>,
    ping_thread: Option<JoinHandle<Option<Output>>>,
    raw_ping_next: u32,
    raw_ping_at: Option<Instant>,
    done_at: Option<Instant>,
}

impl Peer {
    fn new(sock: RawSocket, cfg: PeerConfig) -> Peer {
        Peer {
            sock,
            cfg,
            r: PeerReport::default(),
            nic: 0,
            max_frame: 1514,
            data_target: 0,
            bench_target: 0,
            bench_len: 0,
            bench_template: Vec::new(),
            g2h_next: 0,
            bench_next: 0,
            bench_acked_sent: 0,
            bench_first: None,
            bench_last: None,
            h2g_bench_acked: 0,
            h2g_bench_start: None,
            ping_thread: None,
            raw_ping_next: 0,
            raw_ping_at: None,
            done_at: None,
        }
    }

    fn send(&mut self, frame: &[u8]) {
        if let Err(e) = self.sock.send(frame) {
            if self.r.errors.len() < 8 {
                self.r.errors.push(format!("send: {e}"));
            }
        }
    }

    fn ack_bench(&mut self) {
        let mac = self.r.guest_mac.unwrap_or([0xff; 6]);
        let f = Hdr {
            kind: ACK,
            flags: BENCH_G2H,
            nic: self.nic,
            seq: self.r.bench_g2h as u32,
            aux: self.bench_next,
            ..Hdr::default()
        }
        .frame(mac, &[]);
        self.send(&f);
        self.bench_acked_sent = self.r.bench_g2h;
    }

    fn run(mut self, stop: &AtomicBool) -> PeerReport {
        let start = Instant::now();
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            if stop.load(Ordering::Relaxed) || start.elapsed() > self.cfg.timeout {
                break;
            }
            if self
                .done_at
                .is_some_and(|t| t.elapsed() > Duration::from_millis(200))
            {
                break;
            }
            let sent = self.send_some();
            let wait = if sent {
                Duration::ZERO
            } else {
                Duration::from_millis(1)
            };
            match self.sock.recv(&mut buf, wait) {
                Ok(Some(rx)) => {
                    let len = rx.len.min(buf.len());
                    self.handle(&buf[..len], rx);
                }
                Ok(None) => {
                    // Idle: acknowledge what is unacknowledged.
                    if self.r.bench_g2h > self.bench_acked_sent {
                        self.ack_bench();
                    }
                }
                Err(e) => {
                    self.r.errors.push(format!("recv: {e}"));
                    break;
                }
            }
        }
        if let Some(t) = self.ping_thread.take() {
            self.r.ping = t.join().ok().flatten();
        }
        self.r
    }

    /// Data and benchmark frames to the guest, as the window allows; raw pings.
    fn send_some(&mut self) -> bool {
        let Some(mac) = self.r.guest_mac else {
            return false;
        };
        let mut sent = false;
        for _ in 0..32 {
            if self.r.h2g_sent < self.data_target
                && self.r.h2g_sent - self.r.h2g_acked.min(self.r.h2g_sent) < self.cfg.window
            {
                let seq = self.r.h2g_sent;
                let len = host_data_len(seq, self.max_frame);
                let payload = pattern(h2g_seed(self.nic, seq), len - PAYLOAD);
                let mut f = Hdr {
                    kind: DATA_H2G,
                    nic: self.nic,
                    seq: seq as u32,
                    aux: h2g_seed(self.nic, seq),
                    ..Hdr::default()
                }
                .frame(mac, &payload);
                if self.cfg.corrupt == Some(seq) {
                    f[PAYLOAD + 5] ^= 0x20;
                } else {
                    self.r.h2g_fnv.update(&payload);
                    self.r.h2g_payload += payload.len() as u64;
                }
                self.send(&f);
                self.r.h2g_sent += 1;
                sent = true;
            } else if self.h2g_bench_start.is_some()
                && self.r.bench_h2g_sent < self.bench_target
                && self.r.bench_h2g_sent - self.h2g_bench_acked.min(self.r.bench_h2g_sent)
                    < self.cfg.window
            {
                let seq = self.r.bench_h2g_sent as u32;
                let mut f = std::mem::take(&mut self.bench_template);
                f[0..6].copy_from_slice(&mac);
                f[22..26].copy_from_slice(&seq.to_le_bytes());
                self.send(&f);
                self.bench_template = f;
                self.r.bench_h2g_sent += 1;
                sent = true;
            } else {
                break;
            }
        }
        // `ping` missing: echo requests from the socket, one at a time.
        if let Some(job) = self.cfg.ping.clone().filter(|_| which("ping").is_none()) {
            let due = self
                .raw_ping_at
                .is_none_or(|t| t.elapsed() > Duration::from_millis(200));
            if self.raw_ping_next < job.count && due {
                let d: Vec<u8> = job.ip.split('.').map(|o| o.parse().unwrap_or(0)).collect();
                // From .2 of the guest's /24, as the TAP's own address would be.
                let f = echo_request(
                    mac,
                    [d[0], d[1], d[2], 2],
                    [d[0], d[1], d[2], d[3]],
                    self.raw_ping_next as u16,
                );
                self.send(&f);
                self.raw_ping_next += 1;
                self.raw_ping_at = Some(Instant::now());
            }
        }
        sent
    }

    fn handle(&mut self, f: &[u8], rx: Received) {
        if f.len() < 14 {
            return;
        }
        if f[12..14] == [0x08, 0x00] {
            return self.handle_ip(f, rx);
        }
        let Some(h) = Hdr::parse(f) else {
            self.r.other_frames += 1;
            return;
        };
        let end = PAYLOAD + h.len as usize;
        let payload = f.get(PAYLOAD..end);
        match h.kind {
            HELLO => {
                self.r.hellos += 1;
                if self.r.hello.is_some() {
                    return;
                }
                let Some(hello) = payload.and_then(parse_hello) else {
                    self.r.errors.push("malformed HELLO".into());
                    return;
                };
                self.r.guest_mac = Some(f[6..12].try_into().unwrap());
                self.r.hello = Some(hello);
                self.nic = hello.nic as u16;
                self.max_frame = 14 + hello.mtu as usize;
                self.data_target = self.cfg.data_frames.unwrap_or(u64::from(hello.rx_frames));
                if let Some(job) = self.cfg.ping.clone() {
                    if which("ping").is_some() {
                        self.ping_thread = Some(std::thread::spawn(move || {
                            Command::new("ip")
                                .args([
                                    "netns",
                                    "exec",
                                    &job.ns,
                                    "ping",
                                    "-c",
                                    &job.count.to_string(),
                                    "-W",
                                    "1",
                                    &job.ip,
                                ])
                                .stdin(Stdio::null())
                                .output()
                                .ok()
                        }));
                    } else {
                        eprintln!("note: `ping` (iputils-ping) not installed: the peer sends the echo requests from its AF_PACKET socket");
                    }
                }
            }
            DATA_G2H => {
                let why = match payload {
                    None => Some(format!(
                        "seq {}: frame {} bytes, header says payload {}",
                        h.seq,
                        f.len(),
                        h.len
                    )),
                    Some(p) if fnv1a64(p) != h.fnv => Some(format!(
                        "seq {}: payload FNV differs from the header's",
                        h.seq
                    )),
                    Some(p) if p != pattern(h.aux, p.len()) => Some(format!(
                        "seq {}: payload is not the pattern of {:#x}",
                        h.seq, h.aux
                    )),
                    Some(_) if h.aux != g2h_seed(h.nic, u64::from(h.seq)) => {
                        Some(format!("seq {}: seed {:#x}", h.seq, h.aux))
                    }
                    Some(_) if f.len() != end.max(60) => Some(format!(
                        "seq {}: {} bytes after the payload",
                        h.seq,
                        f.len() - end
                    )),
                    Some(p) => {
                        self.r.g2h_ok += 1;
                        self.r.g2h_fnv.update(p);
                        self.r.g2h_payload += p.len() as u64;
                        *self.r.g2h_lens.entry(f.len()).or_default() += 1;
                        None
                    }
                };
                if let Some(w) = why {
                    self.r.g2h_bad.push(w);
                }
                if u64::from(h.seq) != self.g2h_next {
                    self.r.g2h_out_of_order += 1;
                }
                self.g2h_next = u64::from(h.seq) + 1;
            }
            BENCH_G2H => {
                let now = Instant::now();
                self.bench_first.get_or_insert(now);
                self.bench_last = Some(now);
                self.r.bench_g2h += 1;
                if h.seq % 64 == 0
                    && payload
                        .is_none_or(|p| fnv1a64(p) != h.fnv || p != pattern(BENCH_SEED, p.len()))
                {
                    self.r.bench_g2h_bad += 1;
                }
                self.bench_next = self.bench_next.max(u64::from(h.seq) + 1);
                if self.r.bench_g2h - self.bench_acked_sent >= 32 {
                    self.ack_bench();
                }
                if let (Some(a), Some(b)) = (self.bench_first, self.bench_last) {
                    self.r.bench_g2h_secs = (b - a).as_secs_f64();
                }
            }
            GO => {
                self.r.gos += 1;
                if self.h2g_bench_start.is_some() {
                    return;
                }
                let Some(p) = payload.filter(|p| p.len() >= 8) else {
                    return;
                };
                self.bench_target = u64::from(u32::from_le_bytes(p[..4].try_into().unwrap()));
                self.bench_len =
                    (u32::from_le_bytes(p[4..8].try_into().unwrap()) as usize).max(PAYLOAD);
                let payload = pattern(BENCH_SEED, self.bench_len - PAYLOAD);
                self.bench_template = Hdr {
                    kind: BENCH_H2G,
                    nic: self.nic,
                    aux: BENCH_SEED,
                    ..Hdr::default()
                }
                .frame(self.r.guest_mac.unwrap_or([0xff; 6]), &payload);
                self.h2g_bench_start = Some(Instant::now());
            }
            ACK if h.flags == DATA_H2G => self.r.h2g_acked = self.r.h2g_acked.max(h.aux),
            ACK if h.flags == BENCH_H2G => {
                self.h2g_bench_acked = self.h2g_bench_acked.max(h.aux);
                if self.h2g_bench_acked >= self.bench_target {
                    if let Some(t) = self.h2g_bench_start {
                        self.r.bench_h2g_secs = t.elapsed().as_secs_f64();
                    }
                }
            }
            DONE => {
                if let Some(p) = payload.filter(|p| p.len() >= 24) {
                    let v = |i: usize| u64::from_le_bytes(p[8 * i..8 * i + 8].try_into().unwrap());
                    self.r.done = Some([v(0), v(1), v(2)]);
                }
                self.done_at.get_or_insert(Instant::now());
            }
            _ => self.r.other_frames += 1,
        }
    }

    fn handle_ip(&mut self, f: &[u8], rx: Received) {
        let ip = &f[14..];
        if ip.len() < 20 {
            return;
        }
        let ihl = usize::from(ip[0] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        if total < ihl {
            return;
        }
        let l4 = &ip[ihl..total];
        match ip[9] {
            1 if !l4.is_empty() && l4[0] == 0 => {
                self.r.icmp_replies += 1;
                if rx.csum_partial {
                    self.r.icmp_csum_partial += 1;
                }
                if inet_checksum(l4) == 0 {
                    self.r.icmp_csum_ok += 1;
                }
                if l4.len() >= 8 && u16::from_be_bytes([l4[4], l4[5]]) == RAW_PING_ID {
                    self.r.raw_ping_replies += 1;
                }
            }
            6 if l4.len() >= 20 => {
                self.r.tcp_frames += 1;
                self.r.tcp_max_frame = self.r.tcp_max_frame.max(f.len());
                let seq = u32::from_be_bytes(l4[4..8].try_into().unwrap());
                let off = usize::from(l4[12] >> 4) * 4;
                if off <= l4.len() {
                    self.r.tcp_payload.insert(seq, l4[off..].to_vec());
                }
            }
            _ => self.r.other_frames += 1,
        }
    }
}
