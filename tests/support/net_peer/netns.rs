//! The network namespace of a test or benchmark run (deleted on drop, and
//! ones a killed process left behind swept), TAP devices in it, and the
//! AF_PACKET sockets opened inside it that the peer sends and receives on.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

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
