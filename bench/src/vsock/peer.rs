//! The host end of the probe's vsock benchmark stream (guests/probe/README.md,
//! "vsock streams"): a listener that takes one guest connection, reads the
//! 32-byte `UTSWVSK1` preamble, reads and checks the guest→host bytes,
//! answers with their le64 count and the host→guest bytes, then reads to
//! EOF. For utsuwa the listener is the Unix socket `PATH_PORT` its
//! `--vsock cid=N,socket=PATH` device connects to; for QEMU's
//! vhost-vsock it is an AF_VSOCK socket on the host. Also the folder the
//! sockets live in, and the stream's pattern, made once per benchmark.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::blk::pattern_word;

pub const PREAMBLE: usize = 32;
pub const MAGIC: &[u8; 8] = b"UTSWVSK1";
pub const KIND_BENCH: u32 = 2;
pub const BENCH_SEED: u64 = 0x7673_6265_6e63_6800;

/// `len` bytes of the benchmark pattern from offset 0.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len.div_ceil(8) as u64)
        .flat_map(|n| pattern_word(BENCH_SEED, n).to_le_bytes())
        .collect();
    v.truncate(len);
    v
}

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// `/tmp/utsuwa-bench-vsock-<pid>-<n>`, removed with its contents on drop.
pub struct SockDir {
    pub path: PathBuf,
}

impl SockDir {
    pub fn new() -> Result<SockDir, String> {
        let path = std::env::temp_dir().join(format!(
            "utsuwa-bench-vsock-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(SockDir { path })
    }

    /// The device's socket (`--vsock ...,socket=` this).
    pub fn socket(&self) -> PathBuf {
        self.path.join("v.sock")
    }

    /// Where guest connections to host port `port` arrive.
    pub fn port_path(&self, port: u32) -> PathBuf {
        self.path.join(format!("v.sock_{port}"))
    }
}

impl Drop for SockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What the host end saw of the benchmark connection.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub connected: bool,
    /// Guest→host pattern bytes received (preamble not counted).
    pub g2h_bytes: u64,
    /// From the first pattern byte to the last.
    pub g2h_secs: f64,
    /// Host→guest pattern bytes written (the count not included).
    pub h2g_bytes: u64,
    /// From the count to the last pattern byte written.
    pub h2g_secs: f64,
    /// First guest→host stream offset (preamble included) that was wrong.
    pub bad_at: Option<u64>,
    pub error: Option<String>,
}

/// A listening socket of either kind.
enum Listener {
    Unix(UnixListener),
    Vsock(OwnedFd),
}

/// The peer thread; `finish` stops it and returns what it saw.
pub struct Peer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Report>>,
}

impl Peer {
    /// Listens on the Unix socket `path` (utsuwa's `PATH_PORT`).
    pub fn unix(path: &Path, pattern: Arc<Vec<u8>>, idle: Duration) -> Result<Peer, String> {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        l.set_nonblocking(true)
            .map_err(|e| format!("nonblocking listener: {e}"))?;
        Ok(Peer::spawn(Listener::Unix(l), pattern, idle))
    }

    /// Listens on AF_VSOCK port `port`, any CID (QEMU's vhost-vsock).
    pub fn vsock(port: u32, pattern: Arc<Vec<u8>>, idle: Duration) -> Result<Peer, String> {
        let fd = vsock_listen(port).map_err(|e| format!("AF_VSOCK listener on {port}: {e}"))?;
        Ok(Peer::spawn(Listener::Vsock(fd), pattern, idle))
    }

    fn spawn(l: Listener, pattern: Arc<Vec<u8>>, idle: Duration) -> Peer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut r = Report::default();
            match accept(&l, &s) {
                Ok(Some(mut conn)) => {
                    r.connected = true;
                    if let Err(e) = serve(&mut *conn, &pattern, idle, &mut r) {
                        r.error = Some(e);
                    }
                }
                Ok(None) => r.error = Some("the guest never connected".into()),
                Err(e) => r.error = Some(format!("accept: {e}")),
            }
            r
        });
        Peer {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops waiting for a connection (a connection being served runs to
    /// its end, an error, or `idle` without data) and returns the report.
    pub fn finish(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_else(|| Report {
                error: Some("peer thread panicked".into()),
                ..Report::default()
            })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

trait Stream: Read + Write + Send {
    fn set_timeout(&self, d: Duration) -> io::Result<()>;
}

impl Stream for std::os::unix::net::UnixStream {
    fn set_timeout(&self, d: Duration) -> io::Result<()> {
        self.set_nonblocking(false)?;
        self.set_read_timeout(Some(d))?;
        self.set_write_timeout(Some(d))
    }
}

/// An accepted AF_VSOCK connection.
struct VsockStream(std::fs::File);

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

impl Stream for VsockStream {
    fn set_timeout(&self, d: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: d.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            // SAFETY: setsockopt(2) on a descriptor this value owns, with
            // a timeval of exactly the size passed.
            cvt(unsafe {
                libc::setsockopt(
                    self.0.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    std::ptr::addr_of!(tv).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            })?;
        }
        Ok(())
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; no memory is passed.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain old data, for which all zeroes is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: `addr` is a live sockaddr_vm and the length passed is its size.
    cvt(unsafe {
        libc::bind(
            fd,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    // SAFETY: listen(2) on the socket owned above; no memory is passed.
    cvt(unsafe { libc::listen(fd, 4) })?;
    Ok(owned)
}

/// The first connection, polling `stop` every 2 ms; None if stopped first.
fn accept(l: &Listener, stop: &AtomicBool) -> io::Result<Option<Box<dyn Stream>>> {
    while !stop.load(Ordering::Relaxed) {
        let r: io::Result<Box<dyn Stream>> = match l {
            Listener::Unix(u) => u.accept().map(|(s, _)| Box::new(s) as Box<dyn Stream>),
            Listener::Vsock(fd) => {
                // SAFETY: accept4(2) on the listener owned by `fd`; no
                // address is asked for, so null pointers are allowed.
                let r = unsafe {
                    libc::accept4(
                        fd.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                cvt(r).map(|c| {
                    // SAFETY: `c` is a fresh descriptor from accept4, owned
                    // by the File from here on.
                    let f = unsafe { std::fs::File::from_raw_fd(c) };
                    Box::new(VsockStream(f)) as Box<dyn Stream>
                })
            }
        };
        match r {
            Ok(s) => return Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The benchmark protocol on one connection.
fn serve(s: &mut dyn Stream, pattern: &[u8], idle: Duration, r: &mut Report) -> Result<(), String> {
    s.set_timeout(idle).map_err(|e| format!("timeouts: {e}"))?;
    let mut pre = [0u8; PREAMBLE];
    s.read_exact(&mut pre)
        .map_err(|e| format!("reading the preamble: {e}"))?;
    let kind = u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]);
    if &pre[..8] != MAGIC || kind != KIND_BENCH {
        r.bad_at = Some(0);
        return Err(format!("not a benchmark preamble: {pre:02x?}"));
    }
    let (g2h, h2g) = (u64_at(&pre, 16), u64_at(&pre, 24));
    if g2h > pattern.len() as u64 || h2g > pattern.len() as u64 {
        return Err(format!(
            "the guest asks for {g2h}/{h2g} bytes, the host made {} of pattern",
            pattern.len()
        ));
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut start = None;
    while r.g2h_bytes < g2h {
        let want = buf.len().min((g2h - r.g2h_bytes) as usize);
        let n = match s.read(&mut buf[..want]) {
            Ok(0) => return Err(format!("EOF after {} guest→host bytes", r.g2h_bytes)),
            Ok(n) => n,
            Err(e) => return Err(format!("read after {} bytes: {e}", r.g2h_bytes)),
        };
        start.get_or_insert_with(Instant::now);
        let at = r.g2h_bytes as usize;
        if r.bad_at.is_none() {
            if let Some(k) = buf[..n]
                .iter()
                .zip(&pattern[at..])
                .position(|(a, b)| a != b)
            {
                r.bad_at = Some((PREAMBLE + at + k) as u64);
            }
        }
        r.g2h_bytes += n as u64;
    }
    r.g2h_secs = start.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let t = Instant::now();
    s.write_all(&r.g2h_bytes.to_le_bytes())
        .map_err(|e| format!("writing the count: {e}"))?;
    for chunk in pattern[..h2g as usize].chunks(1 << 20) {
        s.write_all(chunk)
            .map_err(|e| format!("write after {} bytes: {e}", r.h2g_bytes))?;
        r.h2g_bytes += chunk.len() as u64;
    }
    r.h2g_secs = t.elapsed().as_secs_f64();
    // The guest checks it all, then shuts down: EOF.
    match s.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("{n} unexpected bytes after the benchmark")),
        Err(e) => Err(format!("waiting for EOF: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn pattern_is_the_probes() {
        // Word 0 of seed S is mix64(S + golden ratio): same as blk's.
        let p = pattern(12);
        assert_eq!(&p[..8], &pattern_word(BENCH_SEED, 0).to_le_bytes());
        assert_eq!(&p[8..], &pattern_word(BENCH_SEED, 1).to_le_bytes()[..4]);
    }

    #[test]
    fn serves_one_benchmark_stream() {
        let dir = SockDir::new().unwrap();
        let path = dir.port_path(5000);
        let pat = Arc::new(pattern(100_000));
        let peer = Peer::unix(&path, pat.clone(), Duration::from_secs(5)).unwrap();
        let mut c = UnixStream::connect(&path).unwrap();
        let mut pre = [0u8; PREAMBLE];
        pre[..8].copy_from_slice(MAGIC);
        pre[8..12].copy_from_slice(&KIND_BENCH.to_le_bytes());
        pre[16..24].copy_from_slice(&70_000u64.to_le_bytes());
        pre[24..32].copy_from_slice(&50_000u64.to_le_bytes());
        c.write_all(&pre).unwrap();
        c.write_all(&pat[..70_000]).unwrap();
        let mut count = [0u8; 8];
        c.read_exact(&mut count).unwrap();
        assert_eq!(u64::from_le_bytes(count), 70_000);
        let mut back = vec![0u8; 50_000];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back[..], pat[..50_000]);
        c.shutdown(std::net::Shutdown::Both).unwrap();
        let r = peer.finish();
        assert!(r.connected && r.error.is_none(), "{r:?}");
        assert_eq!((r.g2h_bytes, r.h2g_bytes, r.bad_at), (70_000, 50_000, None));
    }
}
