//! The API server: one thread, one `poll(2)` loop over the listening Unix
//! socket, the stop signals, the running VM's exit eventfd and every client
//! connection, each a small state machine (bytes in, parsed requests,
//! bytes out) with non-blocking I/O. A client gets 5 s to send a whole
//! request (a slow or stalled client is dropped), 5 s to take its answer,
//! and 5 minutes idle between requests; at most 32 connections are open,
//! the longest-idle one making way for a new one. Memory per connection is
//! what it has sent and not yet been answered (at most 8 KiB + 64 KiB).
//! Handlers never wait for a vCPU: the server stays responsive while the
//! guest runs, pauses or hangs.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::http::{self, Head, Response};
use super::Api;

/// Limits of the server; the defaults are what `utsuwa` uses.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From a request's first byte to its last.
    pub request_timeout: Duration,
    /// Between requests on a kept-alive connection.
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            max_connections: 32,
        }
    }
}

/// Unanswered output beyond which a connection's further requests wait.
const MAX_BACKLOG: usize = 64 * 1024;

/// Errors from setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("API socket {0}: another process is serving it")]
    InUse(PathBuf),
    #[error("API socket {0}: exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    #[error("API socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The socket file; removed when dropped, unless another file took its place.
pub struct SocketFile {
    path: PathBuf,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the API socket at `path`. A live socket there (something accepts
/// a connection) is refused; a stale one, left by a process that died, is
/// replaced; any other file is left alone.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), SocketError> {
    let io = |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                log::info!("replacing the stale API socket {}", path.display());
                std::fs::remove_file(path).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        },
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    let ino = std::fs::symlink_metadata(path).map_err(io)?.ino();
    Ok((
        listener,
        SocketFile {
            path: path.to_path_buf(),
            ino,
        },
    ))
}

/// Why the server stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The VM ended: wait for it and exit.
    VmEnded,
    /// A stop signal before any VM ran.
    Signal,
}

struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    head: Option<Head>,
    output: Vec<u8>,
    written: usize,
    /// Close once the output is written; read nothing more.
    closing: bool,
    /// The client has finished sending.
    eof: bool,
    /// When the request being received began (its first byte).
    started: Option<Instant>,
    last_io: Instant,
    continue_sent: bool,
}

impl Conn {
    fn new(stream: UnixStream, now: Instant) -> Self {
        Conn {
            stream,
            input: Vec::new(),
            head: None,
            output: Vec::new(),
            written: 0,
            closing: false,
            eof: false,
            started: None,
            last_io: now,
            continue_sent: false,
        }
    }

    fn pending_output(&self) -> bool {
        self.written < self.output.len()
    }

    fn wants_read(&self) -> bool {
        !self.closing
            && !self.eof
            && self.input.len() < http::MAX_HEAD + http::MAX_BODY
            && self.output.len() - self.written < MAX_BACKLOG
    }

    fn idle(&self) -> bool {
        self.input.is_empty() && !self.pending_output()
    }

    /// Reads what is there; false if the connection is gone.
    fn read(&mut self, now: Instant) -> bool {
        let mut chunk = [0u8; 4096];
        while self.wants_read() {
            let room = (http::MAX_HEAD + http::MAX_BODY - self.input.len()).min(chunk.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => {
                    // The client is done sending: answer what is complete.
                    self.eof = true;
                    return true;
                }
                Ok(n) => {
                    if self.input.is_empty() {
                        self.started = Some(now);
                    }
                    self.input.extend_from_slice(&chunk[..n]);
                    self.last_io = now;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Writes what it can; false if the connection is gone.
    fn write(&mut self, now: Instant) -> bool {
        while self.pending_output() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return false,
                Ok(n) => {
                    self.written += n;
                    self.last_io = now;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.output.clear();
        self.written = 0;
        if self.output.capacity() > 16 * 1024 {
            self.output.shrink_to(4096);
        }
        true
    }

    fn respond(&mut self, response: &Response, close: bool) {
        self.output.extend_from_slice(&response.encode(close));
        if close {
            self.closing = true;
        }
    }

    /// Answers every complete request received.
    fn process(&mut self, api: &mut Api, now: Instant) {
        let eof = self.eof;
        while !self.closing
            && !self.input.is_empty()
            && self.output.len() - self.written < MAX_BACKLOG
        {
            if self.head.is_none() {
                match http::parse_head(&self.input) {
                    Ok(Some(head)) => self.head = Some(head),
                    Ok(None) => break,
                    Err(e) => {
                        api.metrics.http_errors += 1;
                        log::info!("API: bad request: {e}");
                        self.respond(&Response::fault(e.status, &e.message), true);
                        self.input.clear();
                        return;
                    }
                }
            }
            let Some(head) = self.head.as_ref() else {
                break;
            };
            let total = head.len + head.content_length;
            if self.input.len() < total {
                if head.expect_continue && !self.continue_sent && !eof {
                    self.output.extend_from_slice(http::CONTINUE);
                    self.continue_sent = true;
                }
                break;
            }
            let response = api.handle(
                head.method,
                &head.method_text,
                &head.path,
                &self.input[head.len..total],
            );
            let close = !head.keep_alive || (eof && self.input.len() == total);
            self.respond(&response, close);
            self.input.drain(..total);
            self.head = None;
            self.continue_sent = false;
            self.started = (!self.input.is_empty()).then_some(now);
            if self.input.capacity() > 16 * 1024 {
                self.input.shrink_to(4096);
            }
            if close {
                return;
            }
        }
        if eof && !self.closing && self.output.len() - self.written < MAX_BACKLOG {
            // Everything sent is answered, or the client stopped mid-request.
            self.input.clear();
            self.closing = true;
        }
    }

    /// When this connection times out.
    fn deadline(&self, limits: &Limits) -> Instant {
        match self.started {
            Some(t) => t + limits.request_timeout,
            None if self.pending_output() => self.last_io + limits.request_timeout,
            None => self.last_io + limits.idle_timeout,
        }
    }
}

/// Serves the API until the VM ends or, before one runs, a stop signal
/// arrives on `signals` (a signalfd). With a VM running, a stop signal
/// stops the VM, and the server returns when it has ended.
pub fn serve(listener: &UnixListener, signals: RawFd, api: &mut Api, limits: Limits) -> Stop {
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        let exit = api.instance.exit_signal();
        let exit_fd = exit.as_ref().map_or(-1, |e| e.eventfd().as_raw_fd());
        if exit.as_ref().is_some_and(|e| e.is_set()) {
            return Stop::VmEnded;
        }
        let mut fds = Vec::with_capacity(3 + conns.len());
        for fd in [listener.as_raw_fd(), signals, exit_fd] {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        for c in &conns {
            let mut events = 0;
            if c.wants_read() {
                events |= libc::POLLIN;
            }
            if c.pending_output() {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events,
                revents: 0,
            });
        }
        let now = Instant::now();
        let next = conns
            .iter()
            .map(|c| c.deadline(&limits))
            .chain(api.metrics.next_flush())
            .min();
        let timeout = next.map_or(-1, |t| {
            t.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1
        });
        // SAFETY: `fds` is a valid array of pollfd of the length given.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            continue;
        }
        let now = Instant::now();
        if fds[1].revents & libc::POLLIN != 0 {
            drain_signal(signals);
            match &exit {
                Some(exit) => {
                    log::info!("stop signal: stopping the microVM");
                    exit.request(vmm::lifecycle::ExitReason::UserStop);
                }
                None => return Stop::Signal,
            }
        }
        if fds[2].revents & libc::POLLIN != 0 {
            return Stop::VmEnded;
        }
        // Connections first (their indices match `fds`), then new ones.
        let mut gone = vec![false; conns.len()];
        for (i, c) in conns.iter_mut().enumerate() {
            let revents = fds[3 + i].revents;
            let mut alive = true;
            if revents & (libc::POLLIN | libc::POLLHUP) != 0 && c.wants_read() {
                alive = c.read(now);
            } else if revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                alive = false;
            }
            if alive && revents != 0 {
                // Answer, send, and answer what the backlog held back.
                c.process(api, now);
                alive = c.write(now);
                if alive && !c.input.is_empty() {
                    c.process(api, now);
                    alive = c.write(now);
                }
            }
            if alive && c.closing && !c.pending_output() {
                alive = false;
            }
            if alive && now >= c.deadline(&limits) {
                api.metrics.dropped("timeout");
                if c.started.is_some() {
                    // Best effort: the client may not be reading.
                    let _ = c
                        .stream
                        .write(&Response::fault(408, "request not received in time").encode(true));
                }
                alive = false;
            }
            gone[i] = !alive;
        }
        let mut i = 0;
        conns.retain(|_| {
            i += 1;
            !gone[i - 1]
        });
        if fds[0].revents & libc::POLLIN != 0 {
            accept_all(listener, &mut conns, api, &limits, now);
        }
        if api.metrics.next_flush().is_some_and(|t| now >= t) {
            let Api { instance, metrics } = api;
            if let Err(e) = metrics.flush(instance) {
                log::warn!("periodic metrics flush: {e}");
            }
        }
    }
}

fn accept_all(
    listener: &UnixListener,
    conns: &mut Vec<Conn>,
    api: &mut Api,
    limits: &Limits,
    now: Instant,
) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        if conns.len() >= limits.max_connections {
            // Make way: close the longest-idle connection, or refuse.
            let oldest = conns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.idle())
                .min_by_key(|(_, c)| c.last_io)
                .map(|(i, _)| i);
            match oldest {
                Some(i) => {
                    conns.swap_remove(i);
                }
                None => {
                    api.metrics.dropped("limit");
                    continue;
                }
            }
            api.metrics.dropped("limit");
        }
        api.metrics.connections += 1;
        conns.push(Conn::new(stream, now));
    }
}

/// Reads the pending signals off the signalfd.
fn drain_signal(fd: RawFd) {
    let mut info = [0u8; 128];
    // SAFETY: reading into a buffer we own, of the length given; the fd is
    // non-blocking, so this returns at once when nothing is left.
    while unsafe { libc::read(fd, info.as_mut_ptr().cast(), info.len()) } > 0 {}
}
