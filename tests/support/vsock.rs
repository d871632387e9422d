//! Host side of the vsock tests: the peers the probe's `vsock` check talks
//! to through utsuwa's `--vsock cid=N,socket=PATH` (Firecracker's hybrid
//! vsock: Unix sockets on the host), and a VM whose console is read while
//! it runs.
//!
//! * [`EchoPeer`]: a Unix listener at `PATH_PORT` for guest-initiated
//!   connections. It reads the probe's 32-byte preamble (README, "vsock
//!   streams"): an echo stream is echoed byte for byte (preamble included)
//!   and its pattern checked; a benchmark stream is read and checked, then
//!   answered with the le64 count and as many pattern bytes back.
//! * [`connect_and_echo`]: a host-initiated connection (`CONNECT <port>\n`,
//!   `OK <hostport>\n`) that pushes a pattern and checks the echo.
//!
//! Sockets live in a temporary folder ([`SockDir`]) removed on drop.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::net::{pattern, Fnv};
use super::Outcome;

pub const PREAMBLE: usize = 32;
pub const MAGIC: &[u8; 8] = b"UTSWVSK1";
pub const KIND_ECHO: u32 = 1;
pub const KIND_BENCH: u32 = 2;
pub const BENCH_SEED: u64 = 0x7673_6265_6e63_6800;

/// Pattern seed of the guest's connect-phase connection `i`.
pub fn echo_seed(i: u32) -> u64 {
    0x7673_6f63_6b00_0000 | u64::from(i)
}

/// Pattern seed of the host's connection `i` to the guest's listener.
pub fn host_seed(i: u32) -> u64 {
    0x6876_736f_636b_0000 | u64::from(i)
}

// ---- a folder for the sockets ----

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// `/tmp/utsuwa-vsock-<pid>-<n>`, removed (with what is in it) on drop.
pub struct SockDir {
    pub path: PathBuf,
}

impl SockDir {
    pub fn new() -> SockDir {
        let path = std::env::temp_dir().join(format!(
            "utsuwa-vsock-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the socket folder");
        SockDir { path }
    }

    /// The device's socket (`--vsock ...,socket=` this).
    pub fn socket(&self) -> PathBuf {
        self.path.join("v.sock")
    }

    /// Where guest connections to host port `port` go.
    pub fn port_path(&self, port: u32) -> PathBuf {
        self.path.join(format!("v.sock_{port}"))
    }
}

impl Drop for SockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---- the peer of guest-initiated connections ----

/// What the peer saw of one connection from the guest.
#[derive(Clone, Debug, Default)]
pub struct GuestConn {
    pub kind: u32,
    pub index: u32,
    /// Pattern bytes the preamble announced (echo), or g2h bytes (bench).
    pub announced: u64,
    /// Bytes received, preamble included, and their FNV.
    pub received: u64,
    pub fnv: Fnv,
    /// Bytes written back (echo, or the bench count and pattern).
    pub sent: u64,
    /// First received byte (preamble included) that was not what the
    /// preamble announced, or a preamble that was not the probe's.
    pub bad_at: Option<u64>,
    /// The guest closed its side (read returned 0).
    pub eof: bool,
    /// This peer dropped the connection on purpose (`vanish`).
    pub vanished: bool,
    /// Bench: seconds from the first data byte to the last g2h byte.
    pub g2h_secs: f64,
    pub error: Option<String>,
}

/// How the peer behaves.
#[derive(Clone, Copy, Default)]
pub struct PeerBehaviour {
    /// Drop connection `index` once this many bytes (preamble included) arrived.
    pub vanish: Option<(u32, u64)>,
}

/// A Unix listener at `PATH_PORT` serving every connection in a thread.
pub struct EchoPeer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<GuestConn>>>,
    thread: Option<JoinHandle<()>>,
}

impl EchoPeer {
    pub fn start(path: PathBuf, behaviour: PeerBehaviour) -> EchoPeer {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .unwrap_or_else(|e| panic!("listen on {}: {e}", path.display()));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (s, c) = (stop.clone(), conns.clone());
        let thread = std::thread::spawn(move || {
            let mut workers = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                        let c = c.clone();
                        workers.push(std::thread::spawn(move || {
                            let report = serve(stream, behaviour);
                            c.lock().unwrap().push(report);
                        }));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        EchoPeer {
            path,
            stop,
            conns,
            thread: Some(thread),
        }
    }

    /// Stop accepting, wait for the connections' threads (each ends at
    /// EOF, on an error, or after 10 s without data), and return what they
    /// saw, sorted by connection index.
    pub fn finish(mut self) -> Vec<GuestConn> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut v = self.conns.lock().unwrap().clone();
        v.sort_by_key(|c| (c.kind, c.index));
        v
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Compare `data`, received at stream offset `pos` (past the preamble),
/// with the pattern of `seed`; the first bad stream offset.
fn first_mismatch(seed: u64, pos: u64, data: &[u8]) -> Option<u64> {
    let off = pos - PREAMBLE as u64;
    let skip = (off % 8) as usize;
    let want = pattern_at(seed, off - skip as u64, skip + data.len());
    data.iter()
        .zip(&want[skip..])
        .position(|(a, b)| a != b)
        .map(|k| pos + k as u64)
}

/// A connection the peer serves: Unix (utsuwa) or AF_VSOCK (QEMU vhost-vsock).
pub trait PeerStream: Read + Write {
    /// Shut both directions down (the peer vanishes).
    fn close(&self);
}

impl PeerStream for UnixStream {
    fn close(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

/// One guest connection, until EOF (or an error, or 10 s of silence: the
/// caller sets the read timeout).
fn serve<S: PeerStream>(mut s: S, behaviour: PeerBehaviour) -> GuestConn {
    let mut c = GuestConn::default();
    let mut pre = Vec::with_capacity(PREAMBLE);
    let mut buf = vec![0u8; 65536];
    let mut bench_start: Option<Instant> = None;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => {
                c.eof = true;
                return c;
            }
            Ok(n) => n,
            Err(e) => {
                c.error = Some(format!("read after {} bytes: {e}", c.received));
                return c;
            }
        };
        let data = &buf[..n];
        let pos = c.received;
        c.received += n as u64;
        c.fnv.update(data);
        // The preamble.
        let mut rest = data;
        if pre.len() < PREAMBLE {
            let k = (PREAMBLE - pre.len()).min(rest.len());
            pre.extend_from_slice(&rest[..k]);
            rest = &rest[k..];
            if pre.len() == PREAMBLE {
                c.kind = u32_at(&pre, 8);
                c.index = u32_at(&pre, 12);
                c.announced = u64_at(&pre, 16);
                let ok = &pre[..8] == MAGIC
                    && match c.kind {
                        KIND_ECHO => u64_at(&pre, 24) == echo_seed(c.index),
                        KIND_BENCH => true,
                        _ => false,
                    };
                if !ok {
                    c.bad_at.get_or_insert(0);
                }
            }
        }
        let data_pos = c.received - rest.len() as u64;
        if !rest.is_empty() && c.bad_at.is_none() {
            let seed = if c.kind == KIND_BENCH {
                BENCH_SEED
            } else {
                echo_seed(c.index)
            };
            if data_pos + rest.len() as u64 > PREAMBLE as u64 + c.announced {
                c.bad_at.get_or_insert(PREAMBLE as u64 + c.announced);
            } else if let Some(at) = first_mismatch(seed, data_pos, rest) {
                c.bad_at = Some(at);
            }
        }
        if c.kind == KIND_BENCH && pre.len() == PREAMBLE {
            if !rest.is_empty() {
                bench_start.get_or_insert_with(Instant::now);
            }
            let total = PREAMBLE as u64 + c.announced;
            if pos < total && c.received >= total {
                c.g2h_secs = bench_start.map_or(0.0, |t| t.elapsed().as_secs_f64());
                let h2g = u64_at(&pre, 24);
                if let Err(e) = bench_reply(&mut s, c.announced, h2g, &mut c.sent) {
                    c.error = Some(format!("bench reply after {} bytes: {e}", c.sent));
                    return c;
                }
            }
        } else if c.kind != KIND_BENCH {
            if let Err(e) = s.write_all(data) {
                c.error = Some(format!("echo after {} bytes: {e}", c.sent));
                return c;
            }
            c.sent += n as u64;
        }
        if let Some((index, after)) = behaviour.vanish {
            if pre.len() == PREAMBLE && c.index == index && c.received >= after {
                c.vanished = true;
                s.close();
                return c;
            }
        }
    }
}

/// The benchmark's answer: the g2h count, then `h2g` pattern bytes.
fn bench_reply(s: &mut impl Write, g2h: u64, h2g: u64, sent: &mut u64) -> io::Result<()> {
    s.write_all(&g2h.to_le_bytes())?;
    *sent += 8;
    let chunk = 1u64 << 20;
    let mut off = 0u64;
    while off < h2g {
        let n = (h2g - off).min(chunk) as usize;
        s.write_all(&pattern_at(BENCH_SEED, off, n))?;
        off += n as u64;
        *sent += n as u64;
    }
    Ok(())
}

fn pattern_word(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `len` bytes of the pattern of `seed` from byte `off` (a multiple of 8).
pub fn pattern_at(seed: u64, off: u64, len: usize) -> Vec<u8> {
    assert_eq!(off % 8, 0);
    let mut v: Vec<u8> = (0..len.div_ceil(8) as u64)
        .flat_map(|n| pattern_word(seed, off / 8 + n).to_le_bytes())
        .collect();
    v.truncate(len);
    v
}

// ---- AF_VSOCK (QEMU's vhost-vsock, where /dev/vhost-vsock exists) ----

/// A host AF_VSOCK stream socket.
pub struct VsockStream(std::fs::File);

impl Read for VsockStream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.read(b)
    }
}

impl Write for VsockStream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl PeerStream for VsockStream {
    fn close(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: shutdown(2) on a socket this value owns.
        unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// An AF_VSOCK listener on host port `port` (any CID).
pub struct VsockListener(std::os::fd::OwnedFd);

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl VsockListener {
    pub fn bind(port: u32) -> io::Result<VsockListener> {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2) with constant arguments.
        let fd = cvt(unsafe {
            libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
        })?;
        // SAFETY: a fresh descriptor nothing else owns.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        // SAFETY: `addr` is a sockaddr_vm of the size passed.
        cvt(unsafe {
            libc::bind(
                fd,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        })?;
        // SAFETY: listen(2) on the socket above.
        cvt(unsafe { libc::listen(fd, 16) })?;
        Ok(VsockListener(owned))
    }

    /// Accept `n` connections (60 s at most for each) and serve them as
    /// [`EchoPeer`] does; what each saw, by connection index.
    pub fn serve_echo(self, n: usize) -> Vec<GuestConn> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let tv = libc::timeval {
            tv_sec: 60,
            tv_usec: 0,
        };
        let set_timeout = |fd: libc::c_int, secs: i64| {
            let tv = libc::timeval {
                tv_sec: secs,
                tv_usec: 0,
            };
            // SAFETY: setsockopt(2) with a timeval of the size passed.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    std::ptr::addr_of!(tv).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
        };
        set_timeout(self.0.as_raw_fd(), tv.tv_sec);
        let mut workers = Vec::new();
        for _ in 0..n {
            // SAFETY: accept(2) on our listener, no address wanted.
            let fd = unsafe {
                libc::accept(
                    self.0.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            if fd < 0 {
                break;
            }
            set_timeout(fd, 10);
            // SAFETY: a fresh descriptor from accept, owned from here on.
            let file = unsafe { std::fs::File::from_raw_fd(fd) };
            workers.push(std::thread::spawn(move || {
                serve(VsockStream(file), PeerBehaviour::default())
            }));
        }
        let mut v: Vec<_> = workers.into_iter().filter_map(|w| w.join().ok()).collect();
        v.sort_by_key(|c| (c.kind, c.index));
        v
    }
}

// ---- host-initiated connections ----

/// What a host connection to the guest's listener saw.
#[derive(Clone, Debug, Default)]
pub struct HostConn {
    pub index: u32,
    /// The line the device answered `CONNECT` with (without `\n`), if any.
    pub answer: Option<String>,
    pub sent: u64,
    pub received: u64,
    pub sent_fnv: Fnv,
    pub received_fnv: Fnv,
    pub bad_at: Option<u64>,
    pub error: Option<String>,
}

/// Read one `\n`-terminated line (at most 64 bytes); None at EOF first.
fn read_line(s: &mut UnixStream) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if s.read(&mut b)? == 0 {
            return Ok(None);
        }
        if b[0] == b'\n' {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
        line.push(b[0]);
        if line.len() > 64 {
            return Err(io::Error::other("answer line longer than 64 bytes"));
        }
    }
}

/// Connect to the device's socket and send `request` (e.g. `CONNECT 5000\n`);
/// the answer line, or None when the device closed the connection first.
pub fn request(sock: &Path, request: &[u8]) -> (UnixStream, io::Result<Option<String>>) {
    let mut s =
        UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect to {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = s.write_all(request).and_then(|()| read_line(&mut s));
    (s, r)
}

/// Connection `index` to the guest's `port`: `bytes` of the host pattern
/// out in writes of varying size, the echo read and checked at the same
/// time, then the host closes.
pub fn connect_and_echo(sock: &Path, port: u32, index: u32, bytes: usize) -> HostConn {
    let mut c = HostConn {
        index,
        ..HostConn::default()
    };
    let (mut s, answer) = request(sock, format!("CONNECT {port}\n").as_bytes());
    match answer {
        Ok(Some(line)) if line.starts_with("OK ") => c.answer = Some(line),
        Ok(line) => {
            c.answer = line;
            c.error = Some("no OK".into());
            return c;
        }
        Err(e) => {
            c.error = Some(format!("reading the answer: {e}"));
            return c;
        }
    }
    let data = pattern(host_seed(index), bytes);
    c.sent_fnv.update(&data);
    let mut w = s.try_clone().expect("clone the stream");
    let writer = std::thread::spawn(move || -> io::Result<u64> {
        let sizes = [1, 7, 4096, 65536, 100, 30000, 8192];
        let (mut off, mut i) = (0, 0);
        while off < data.len() {
            let n = sizes[i % sizes.len()].min(data.len() - off);
            w.write_all(&data[off..off + n])?;
            off += n;
            i += 1;
        }
        Ok(off as u64)
    });
    let want = pattern(host_seed(index), bytes);
    let mut buf = vec![0u8; 65536];
    while (c.received as usize) < bytes {
        match s.read(&mut buf) {
            Ok(0) => {
                c.error = Some(format!("EOF after {} of {bytes} bytes", c.received));
                break;
            }
            Ok(n) => {
                let at = c.received as usize;
                let end = (at + n).min(bytes);
                if let Some(k) = buf[..end - at]
                    .iter()
                    .zip(&want[at..end])
                    .position(|(a, b)| a != b)
                {
                    c.bad_at.get_or_insert((at + k) as u64);
                }
                if at + n > bytes {
                    c.bad_at.get_or_insert(bytes as u64);
                }
                c.received_fnv.update(&buf[..n]);
                c.received += n as u64;
            }
            Err(e) => {
                c.error = Some(format!("read after {} bytes: {e}", c.received));
                break;
            }
        }
    }
    match writer.join().expect("writer thread") {
        Ok(n) => c.sent = n,
        Err(e) => {
            c.error.get_or_insert(format!("write: {e}"));
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    c
}

// ---- a VM whose console is read while it runs ----

pub struct LiveVm {
    child: Child,
    lines: Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: JoinHandle<Vec<u8>>,
    out_thread: JoinHandle<()>,
    start: Instant,
}

impl LiveVm {
    pub fn spawn(mut cmd: Command) -> LiveVm {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the VMM");
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let acc = stdout.clone();
        let out_thread = std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&buf[..n]);
                while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let line = String::from_utf8_lossy(&line).into_owned();
                    acc.lock().unwrap().push_str(&line);
                    let _ = tx.send(line.trim_end().to_string());
                }
            }
            acc.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&pending));
        });
        let stderr = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        LiveVm {
            child,
            lines,
            stdout,
            stderr,
            out_thread,
            start: Instant::now(),
        }
    }

    /// Wait for a console line starting with `prefix`.
    pub fn wait_for(&self, prefix: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Wait for the VMM to exit (killed after `limit` from its start).
    pub fn finish(mut self, limit: Duration) -> Outcome {
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if self.start.elapsed() > limit {
                let _ = self.child.kill();
                break self.child.wait().expect("wait after kill");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = self.start.elapsed();
        let _ = self.out_thread.join();
        let stderr = String::from_utf8_lossy(&self.stderr.join().unwrap()).into_owned();
        let stdout = self.stdout.lock().unwrap().clone();
        Outcome {
            status,
            stdout,
            stderr,
            elapsed,
        }
    }
}
