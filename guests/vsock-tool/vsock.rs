//! `vsock`: a minimal AF_VSOCK netcat for Linux guests, because busybox has
//! none and Debian ships no static `socat`. One file, std only (AF_VSOCK
//! through libc's socket calls), built by the tests with
//! `rustc -O -C target-feature=+crt-static` and appended to the default
//! initramfs as `/bin/vsock`.
//!
//! ```text
//! vsock connect CID PORT   connect; stdin to the stream, the stream to stdout
//! vsock listen PORT        accept one connection on any CID; the same
//! ```
//!
//! When stdin ends, the stream's write side is shut; the program ends when
//! the peer's side ends.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;

const AF_VSOCK: i32 = 40;
const SOCK_STREAM: i32 = 1;
const SHUT_WR: i32 = 1;
const VMADDR_CID_ANY: u32 = u32::MAX;

/// `struct sockaddr_vm` (linux/vm_sockets.h).
#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved1: u16,
    port: u32,
    cid: u32,
    flags: u8,
    zero: [u8; 3],
}

extern "C" {
    fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
    fn connect(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn bind(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn listen(fd: i32, backlog: i32) -> i32;
    fn accept(fd: i32, addr: *mut SockaddrVm, len: *mut u32) -> i32;
    fn shutdown(fd: i32, how: i32) -> i32;
}

fn addr(cid: u32, port: u32) -> SockaddrVm {
    SockaddrVm {
        family: AF_VSOCK as u16,
        reserved1: 0,
        port,
        cid,
        flags: 0,
        zero: [0; 3],
    }
}

fn check(r: i32, what: &str) -> io::Result<i32> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(r)
}

fn new_socket() -> io::Result<i32> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    check(unsafe { socket(AF_VSOCK, SOCK_STREAM, 0) }, "socket")
}

fn dial(cid: u32, port: u32) -> io::Result<i32> {
    let fd = new_socket()?;
    let a = addr(cid, port);
    let len = std::mem::size_of::<SockaddrVm>() as u32;
    // SAFETY: `a` is a valid sockaddr_vm of `len` bytes for the call.
    check(unsafe { connect(fd, &a, len) }, "connect")?;
    Ok(fd)
}

fn accept_one(port: u32) -> io::Result<i32> {
    let fd = new_socket()?;
    let a = addr(VMADDR_CID_ANY, port);
    let len = std::mem::size_of::<SockaddrVm>() as u32;
    // SAFETY: `a` is a valid sockaddr_vm of `len` bytes for the call.
    check(unsafe { bind(fd, &a, len) }, "bind")?;
    // SAFETY: listen(2) on the socket just bound.
    check(unsafe { listen(fd, 1) }, "listen")?;
    eprintln!("vsock: listening on port {port}");
    let mut peer = addr(0, 0);
    let mut plen = len;
    // SAFETY: `peer` has room for `plen` bytes, which accept updates.
    let conn = check(unsafe { accept(fd, &mut peer, &mut plen) }, "accept")?;
    // SAFETY: `fd` is the listening socket, owned here and no longer used.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(conn)
}

/// stdin to the stream (then shut its write side), the stream to stdout.
fn splice(fd: i32) -> io::Result<()> {
    // SAFETY: `fd` is a connected socket this program alone owns; both
    // handles below are views of it, closed once, by `stream`.
    let stream = unsafe { File::from_raw_fd(fd) };
    let mut writer = stream.try_clone()?;
    let upstream = std::thread::spawn(move || -> io::Result<()> {
        io::copy(&mut io::stdin().lock(), &mut writer)?;
        // SAFETY: shutdown(2) on the socket `writer` refers to.
        check(unsafe { shutdown(fd, SHUT_WR) }, "shutdown")?;
        Ok(())
    });
    let mut reader = stream;
    let mut out = io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
    }
    out.flush()?;
    // The peer ended: whatever stdin still has is not wanted.
    if upstream.is_finished() {
        upstream
            .join()
            .map_err(|_| io::Error::other("stdin thread"))??;
    }
    Ok(())
}

fn run(args: &[String]) -> io::Result<()> {
    let num = |s: &String| -> io::Result<u32> {
        s.parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("not a number: {s}")))
    };
    let fd = match args {
        [cmd, cid, port] if cmd == "connect" => dial(num(cid)?, num(port)?)?,
        [cmd, port] if cmd == "listen" => accept_one(num(port)?)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "usage: vsock connect CID PORT | vsock listen PORT",
            ))
        }
    };
    splice(fd)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vsock: {e}");
            ExitCode::FAILURE
        }
    }
}
