//! The host end of the probe's `net` check, shared by the network tests
//! (through `net.rs`) and the `net` benchmark (`bench/src/net.rs`
//! includes this file): a network namespace (deleted on drop), TAP
//! devices inside it, AF_PACKET sockets opened inside it, the probe's own
//! frame format (guests/probe/README.md, "net frames") with its pattern and
//! FNV, and the peer that talks to the probe over one TAP.
//!
//! Nothing here touches the host's own interfaces: every device, address,
//! socket and process lives in the namespace. Self-contained (no `super`),
//! so that another crate can compile it in.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---- the data pattern and the checksum (as on disks) ----

fn pattern_word(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `len` bytes of the splitmix64 pattern of `seed` from offset 0.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len.div_ceil(8) as u64)
        .flat_map(|n| pattern_word(seed, n).to_le_bytes())
        .collect();
    v.truncate(len);
    v
}

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// FNV-1a 64 fed piecewise.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The Internet checksum of `data` (0 when `data` includes a correct one).
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = data
        .chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

// ---- what the tests need from the host ----

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Why network tests cannot run here (None: they can): they need root,
/// `ip` (iproute2) and /dev/net/tun.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and TAP devices need it)".into());
    }
    if which("ip").is_none() {
        return Some("`ip` (iproute2) not installed".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun missing".into());
    }
    None
}

// ---- the namespace ----

const NS_PREFIX: &str = "utsuwa-net-";
static NEXT_NS: AtomicU32 = AtomicU32::new(0);

fn run_ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Namespaces an earlier test process left behind (killed before its
/// guards ran): `utsuwa-net-<pid>-<n>` whose process is gone.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run_ip(&["netns", "del", name]);
        }
    }
}

/// A network namespace of its own (`utsuwa-net-<pid>-<n>`), deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new() -> io::Result<NetNs> {
        sweep_stale();
        let name = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS ARGS...`
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// A TAP device `tap` in the namespace with address `cidr` (e.g.
    /// 10.0.2.2/24), up; a VMM opens it by name from inside the namespace.
    pub fn add_tap(&self, tap: &str, cidr: &str) -> io::Result<()> {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        self.ip(&["addr", "add", cidr, "dev", tap])?;
        self.ip(&["link", "set", tap, "up"])
    }

    /// `ip netns exec NS program`: the program runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// An AF_PACKET socket on `ifname` inside the namespace.
    pub fn packet_socket(&self, ifname: &str) -> io::Result<RawSocket> {
        RawSocket::open_in(Path::new("/run/netns").join(&self.name), ifname)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("warning: deleting namespace {}: {e}", self.name);
        }
    }
}

// ---- raw frames ----

/// One frame as an AF_PACKET socket saw it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Received {
    pub len: usize,
    /// TP_STATUS_CSUMNOTREADY: the sender left the checksum to offload
    /// (the packet is CHECKSUM_PARTIAL in the host kernel).
    pub csum_partial: bool,
    /// TP_STATUS_CSUM_VALID.
    pub csum_valid: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct AuxData {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}

const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;
const TP_STATUS_CSUM_VALID: u32 = 1 << 7;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// An AF_PACKET socket bound to one interface of a namespace (it stays in
/// that namespace whichever thread uses it).
pub struct RawSocket {
    fd: OwnedFd,
}

fn check(r: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if r < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(r)
    }
}

fn setsockopt_int(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> libc::c_int {
    // SAFETY: a valid socket and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    }
}

impl RawSocket {
    fn open_in(ns: PathBuf, ifname: &str) -> io::Result<RawSocket> {
        let ifname = CString::new(ifname).map_err(io::Error::other)?;
        // setns affects the calling thread only: a short-lived one.
        std::thread::spawn(move || -> io::Result<RawSocket> {
            let nsf = File::open(&ns)?;
            // SAFETY: an open namespace file; only this thread moves.
            let r = unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) };
            check(r, "setns")?;
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let flags = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
            // SAFETY: plain socket(2).
            let r = unsafe { libc::socket(libc::AF_PACKET, flags, i32::from(proto)) };
            let raw = check(r, "socket(AF_PACKET)")?;
            // SAFETY: `raw` is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
            if ifindex == 0 {
                return Err(io::Error::other(format!(
                    "no interface {ifname:?} in {}",
                    ns.display()
                )));
            }
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: a valid sockaddr_ll of the size given.
            let r = unsafe { libc::bind(raw, (&raw const sll).cast(), len) };
            check(r, "bind")?;
            // A deep receive buffer (root may exceed rmem_max), checksum
            // status with every frame, and not our own transmissions.
            if setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20) < 0 {
                setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, 64 << 20);
            }
            setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 16 << 20);
            check(
                setsockopt_int(raw, libc::SOL_PACKET, libc::PACKET_AUXDATA, 1),
                "PACKET_AUXDATA",
            )?;
            setsockopt_int(raw, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
            Ok(RawSocket { fd })
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
    }

    /// Send one frame (retrying for up to a second while the queue is full).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let start = Instant::now();
        loop {
            // SAFETY: a valid buffer of the given length.
            let n =
                unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            let full = matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN));
            if !full || start.elapsed() > Duration::from_secs(1) {
                return Err(e);
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// The next frame the interface received (from the VMM's side), within
    /// `timeout`; our own transmissions are skipped.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<Received>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r =
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Ok(None);
            }
            // SAFETY: plain data, all-zero is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut control = [0u64; 16];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: plain data, all-zero is valid.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&raw mut sll).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control);
            // SAFETY: every pointer in `msg` refers to live buffers of the sizes given.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                    continue;
                }
                return Err(e);
            }
            if sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let mut aux = AuxData::default();
            // SAFETY: walking the control messages recvmsg filled in.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA
                    {
                        aux = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<AuxData>());
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            return Ok(Some(Received {
                len: n as usize,
                csum_partial: aux.tp_status & TP_STATUS_CSUMNOTREADY != 0,
                csum_valid: aux.tp_status & TP_STATUS_CSUM_VALID != 0,
            }));
        }
    }
}

// ---- the probe's frames (README "net frames") ----

pub const ETHERTYPE: u16 = 0x88b5;
pub const MAGIC: &[u8; 4] = b"UTSW";
pub const PAYLOAD: usize = 14 + 32;
pub const HELLO: u8 = 1;
pub const DATA_G2H: u8 = 2;
pub const DATA_H2G: u8 = 3;
pub const BENCH_G2H: u8 = 4;
pub const BENCH_H2G: u8 = 5;
pub const ACK: u8 = 6;
pub const GO: u8 = 7;
pub const DONE: u8 = 8;
pub const BENCH_SEED: u64 = 0x6265_6e63_6800_0000;
pub const TSO_SEED: u64 = 0x7473_6f00_0000_0000;
/// The host's own MAC on the frames it sends.
pub const HOST_MAC: [u8; 6] = [0x02, 0x48, 0x4f, 0x53, 0x54, 0x01];

pub fn g2h_seed(nic: u16, seq: u64) -> u64 {
    0x6732_6800_0000_0000 | u64::from(nic) << 32 | seq
}

pub fn h2g_seed(nic: u16, seq: u64) -> u64 {
    0x6832_6700_0000_0000 | u64::from(nic) << 32 | seq
}

/// Frame length of the guest's data frame `i` (frames of at most `max`).
pub fn guest_data_len(i: u64, max: usize) -> usize {
    [60, max, 64, 127, 256, 577, 1024, max - 1][(i % 8) as usize].clamp(60, max)
}

/// Frame length of the host's data frame `i`.
pub fn host_data_len(i: u64, max: usize) -> usize {
    [60, max, 1000, 64, 333, max - 1, 128, 777][(i % 8) as usize].clamp(60, max)
}

pub fn mac_str(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hdr {
    pub kind: u8,
    pub flags: u8,
    pub nic: u16,
    pub seq: u32,
    pub len: u32,
    pub fnv: u64,
    pub aux: u64,
}

impl Hdr {
    pub fn parse(f: &[u8]) -> Option<Hdr> {
        if f.len() < PAYLOAD || f[12..14] != ETHERTYPE.to_be_bytes() || &f[14..18] != MAGIC {
            return None;
        }
        let h = &f[14..PAYLOAD];
        Some(Hdr {
            kind: h[4],
            flags: h[5],
            nic: u16::from_le_bytes([h[6], h[7]]),
            seq: u32::from_le_bytes(h[8..12].try_into().unwrap()),
            len: u32::from_le_bytes(h[12..16].try_into().unwrap()),
            fnv: u64::from_le_bytes(h[16..24].try_into().unwrap()),
            aux: u64::from_le_bytes(h[24..32].try_into().unwrap()),
        })
    }

    /// The whole frame: Ethernet header (dst, HOST_MAC), this header (len
    /// and fnv from `payload`), the payload, padded to 60 bytes.
    pub fn frame(mut self, dst: [u8; 6], payload: &[u8]) -> Vec<u8> {
        self.len = payload.len() as u32;
        self.fnv = fnv1a64(payload);
        let mut f = Vec::with_capacity(PAYLOAD + payload.len());
        f.extend_from_slice(&dst);
        f.extend_from_slice(&HOST_MAC);
        f.extend_from_slice(&ETHERTYPE.to_be_bytes());
        f.extend_from_slice(MAGIC);
        f.extend_from_slice(&[self.kind, self.flags]);
        f.extend_from_slice(&self.nic.to_le_bytes());
        f.extend_from_slice(&self.seq.to_le_bytes());
        f.extend_from_slice(&self.len.to_le_bytes());
        f.extend_from_slice(&self.fnv.to_le_bytes());
        f.extend_from_slice(&self.aux.to_le_bytes());
        f.extend_from_slice(payload);
        f.resize(f.len().max(60), 0);
        f
    }
}

/// The guest's HELLO: what it will do.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hello {
    pub nic: u32,
    pub tx_frames: u32,
    pub rx_frames: u32,
    pub bench_bytes: u32,
    pub bench_frames: u32,
    pub window: u32,
    pub mtu: u32,
    pub flags: u32,
}

fn parse_hello(p: &[u8]) -> Option<Hello> {
    let v: Vec<u32> = p
        .chunks_exact(4)
        .take(8)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (v.len() == 8).then(|| Hello {
        nic: v[0],
        tx_frames: v[1],
        rx_frames: v[2],
        bench_bytes: v[3],
        bench_frames: v[4],
        window: v[5],
        mtu: v[6],
        flags: v[7],
    })
}

// ---- the peer: the host end of one NIC's session ----

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

const RAW_PING_ID: u16 = 0x6873;

/// An ICMP echo request from HOST_MAC/`src` to `dst_mac`/`dst`.
pub fn echo_request(dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], seq: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 84, 0, 1, 0x40, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&RAW_PING_ID.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend((0..56).map(|i| i as u8));
    let c = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}
