//! The host side's Unix sockets: the listening socket (a stale file left
//! by a dead process is replaced, a live one is refused), connecting to
//! `PATH_P` without ever blocking the worker, and reading a host
//! program's `CONNECT <port>\n` line without taking a byte of the stream
//! that follows it.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::VsockError;

/// Longest `CONNECT` line accepted, newline included.
pub(super) const MAX_LINE: usize = 32;

/// Binds `path` non-blocking. An existing socket file nobody accepts on
/// is removed first; one a live process listens on is an error.
pub(super) fn listen(path: &Path) -> Result<UnixListener, VsockError> {
    if path.as_os_str().len() > 100 {
        return Err(VsockError::PathTooLong(path.to_path_buf()));
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            if UnixStream::connect(path).is_ok() {
                return Err(VsockError::InUse(path.to_path_buf()));
            }
            // Stale: its owner is gone. A failure shows up in bind below.
            let _ = std::fs::remove_file(path);
        }
    }
    let listen_err = |source| VsockError::Listen {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    Ok(listener)
}

/// The socket a guest connection to host port `port` goes to.
pub(super) fn port_path(base: &Path, port: u32) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// Connects to `path` without blocking: a listener whose backlog is full
/// (it does not accept) is refused like one that is not there.
pub(super) fn connect(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket this function alone owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes (the
    // path fits with its terminating zero) and lives across the call.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// What reading a `CONNECT` line gave so far.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line {
    /// The line, newline included, consumed from the stream.
    Complete(Vec<u8>),
    /// No newline yet.
    Partial,
    /// The peer closed, or sent more than [`MAX_LINE`] without a newline.
    Broken,
}

/// Reads the first line of `stream` if it has fully arrived; bytes after
/// the newline stay in the socket for the guest.
pub(super) fn read_line(stream: &UnixStream) -> io::Result<Line> {
    let mut buf = [0u8; MAX_LINE];
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`, which
    // lives across the call.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let peeked = buf.get(..n as usize).unwrap_or(&[]);
    if peeked.is_empty() {
        return Ok(Line::Broken);
    }
    let Some(end) = peeked.iter().position(|&b| b == b'\n') else {
        return Ok(if peeked.len() == MAX_LINE {
            Line::Broken
        } else {
            Line::Partial
        });
    };
    let mut line = vec![0u8; end + 1];
    let mut got = 0;
    while got < line.len() {
        match io::Read::read(&mut &*stream, &mut line[got..]) {
            Ok(0) => return Ok(Line::Broken),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Line::Complete(line))
}

/// The port of a `CONNECT <port>\n` line (a `\r` before the newline is
/// tolerated).
pub(super) fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let text = text.strip_suffix('\n')?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52\n"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r\n"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 52"[..],
            b"CONNECT\n",
            b"CONNECT \n",
            b"connect 52\n",
            b"CONNECT -1\n",
            b"CONNECT 4294967296\n",
            b"CONNECT 5 2\n",
            b"CONNECT +5\n",
            b"\xffCONNECT 5\n",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn line_is_taken_and_the_rest_left() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.write_all(b"CONN").unwrap();
        assert_eq!(read_line(&a).unwrap(), Line::Partial);
        b.write_all(b"ECT 7\nhello").unwrap();
        assert_eq!(
            read_line(&a).unwrap(),
            Line::Complete(b"CONNECT 7\n".to_vec())
        );
        let mut rest = [0u8; 5];
        io::Read::read_exact(&mut &a, &mut rest).unwrap();
        assert_eq!(&rest, b"hello");
        b.write_all(&[b'x'; MAX_LINE]).unwrap();
        assert_eq!(read_line(&a).unwrap(), Line::Broken);
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert_eq!(read_line(&a).unwrap(), Line::Broken);
    }

    #[test]
    fn listen_replaces_a_stale_socket_and_refuses_a_live_one() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/utsuwa-vsock").unwrap();
        let path = dir.as_path().join("v.sock");
        let live = listen(&path).unwrap();
        assert!(matches!(listen(&path), Err(VsockError::InUse(_))));
        drop(live);
        // The file is still there, nobody listens: replaced.
        assert!(path.exists());
        let again = listen(&path).unwrap();
        assert!(connect(&path).is_ok());
        drop(again);
        assert!(connect(&dir.as_path().join("none")).is_err());
        let long = dir.as_path().join("x".repeat(120));
        assert!(matches!(listen(&long), Err(VsockError::PathTooLong(_))));
        assert_eq!(
            port_path(Path::new("/tmp/v.sock"), 52),
            PathBuf::from("/tmp/v.sock_52")
        );
    }
}
