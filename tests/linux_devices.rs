//! Debian's cloud kernel with the default busybox initramfs on utsuwa's
//! virtio-net and virtio-rng: ping and 100 MiB of TCP each way between
//! the guest and an HTTP service in a network namespace of the test's own
//! (busybox `wget` in the guest, GET and POST, MD5 compared on both ends;
//! the upload is base64 text, as busybox posts a file as a C string),
//! and `/dev/hwrng`. Like `linux_guest.rs`, these need hardware
//! virtualization and say they were skipped elsewhere.
//!
//! vsock from Linux: busybox has no AF_VSOCK client and Debian ships no
//! static `socat`, so the test builds `guests/vsock-tool/vsock.rs` (a
//! minimal vsock netcat, std only) statically with rustc and appends it to
//! the default initramfs (the kernel unpacks concatenated archives); the
//! guest then echoes 10 MiB through a host service at `PATH_5000` and
//! receives 10 MiB from a host program that `CONNECT`s to it.

mod support;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::net::{self, NetNs, NIC0};
use support::{hardware_virtualization, run_with_limit, Outcome, UTSUWA};
use utsuwa::assets::{self, encode_cmd, parse_cmd_output};

const MIB: usize = 1 << 20;
const TCP_BYTES: usize = 100 * MIB;
const HTTP_PORT: u16 = 8080;

fn skipped() -> bool {
    if hardware_virtualization() {
        return false;
    }
    eprintln!("skipped: this host's /dev/kvm has no hardware virtualization (PVM or none), so Linux cannot boot");
    true
}

/// Boots Linux with `extra` options to run `cmd`; its output and status.
fn linux(vmm: Command, cmd: &str, extra: &[&str], limit: Duration) -> (String, i32, Outcome) {
    let guest = assets::ensure(&assets::default_cache_dir()).expect("default guest assets");
    let mut vmm = vmm;
    vmm.arg("run")
        .arg("--kernel")
        .arg(&guest.kernel)
        .arg("--initrd")
        .arg(&guest.initrd)
        .args(["--cpus", "2", "--memory", "512M", "--cmdline"])
        .arg(format!(
            "console=ttyS0 reboot=k panic=1 {}",
            encode_cmd(cmd)
        ))
        .args(extra);
    let out = run_with_limit(vmm, limit);
    let (output, rc) = parse_cmd_output(out.stdout.as_bytes())
        .unwrap_or_else(|| panic!("no command output\n{}", out.dump()));
    (String::from_utf8_lossy(&output).into_owned(), rc, out)
}

/// `md5sum` of what `fill` writes, by the host's md5sum.
fn md5_of(fill: impl FnOnce(&mut dyn Write)) -> String {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    {
        let mut stdin = child.stdin.take().unwrap();
        fill(&mut stdin);
    }
    let out = child.wait_with_output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// The bytes the service sends: not all alike, so a misplaced block shows.
fn pattern(len: usize, out: &mut dyn Write) {
    let block: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        out.write_all(&block[..n]).expect("write the pattern");
        left -= n;
    }
}

/// A TCP listener bound inside `ns` (setns in a short-lived thread: the
/// socket stays in the namespace it was made in).
fn listen_in(ns: &NetNs, addr: String) -> TcpListener {
    let path = Path::new("/run/netns").join(ns.name());
    std::thread::spawn(move || {
        let f = File::open(path).expect("the namespace file");
        // SAFETY: setns(2) with an open namespace file; it moves only this
        // thread, which ends right after binding.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        TcpListener::bind(addr).expect("bind in the namespace")
    })
    .join()
    .expect("listener thread")
}

/// What the service saw of an upload: bytes and MD5.
type Upload = (usize, String);

/// An HTTP/1.0 service: `GET /data` answers TCP_BYTES of the pattern;
/// `POST /upload` reads the body and answers `<bytes> <md5>`. Ends after
/// one upload or the deadline.
fn serve(listener: TcpListener, deadline: Instant) -> JoinHandle<Option<Upload>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        while Instant::now() < deadline {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            if let Some(upload) = answer(stream) {
                return Some(upload);
            }
        }
        None
    })
}

fn answer(stream: TcpStream) -> Option<Upload> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request = String::new();
    reader.read_line(&mut request).ok()?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut out = stream;
    if request.starts_with("GET /data ") {
        let _ = write!(
            out,
            "HTTP/1.0 200 OK\r\nContent-Length: {TCP_BYTES}\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        pattern(TCP_BYTES, &mut out);
        return None;
    }
    if request.starts_with("POST /upload ") {
        let mut body = Vec::with_capacity(length);
        reader.take(length as u64).read_to_end(&mut body).ok()?;
        let md5 = md5_of(|w| w.write_all(&body).unwrap());
        let _ = write!(
            out,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{} {md5}\n",
            format!("{} {md5}\n", body.len()).len(),
            body.len()
        );
        return Some((body.len(), md5));
    }
    let _ = write!(out, "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    None
}

#[test]
fn linux_pings_and_moves_100_mib_of_tcp_each_way() {
    if skipped() {
        return;
    }
    if let Some(why) = net::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let ns = NetNs::new().expect("a network namespace");
    ns.add_tap(NIC0.tap, NIC0.host).expect("a TAP");
    let listener = listen_in(&ns, format!("{}:{HTTP_PORT}", NIC0.host_ip));
    let server = serve(listener, Instant::now() + Duration::from_secs(170));
    let cmd = format!(
        "set -e; ip link set eth0 up; ip addr add {}/24 dev eth0; \
         ping -c 3 -W 5 {} >/dev/null && echo ping-ok; {}",
        NIC0.guest_ip,
        NIC0.host_ip,
        transfer_cmd()
    );
    let net = format!("tap={},mac={}", NIC0.tap, NIC0.mac);
    let (output, rc, out) = linux(
        ns.command(UTSUWA),
        &cmd,
        &["--net", &net],
        Duration::from_secs(180),
    );
    assert_eq!(rc, 0, "{output}\n{}", out.dump());
    assert!(output.contains("ping-ok"), "{output}");
    check_transfers(&output, server);
}

/// The guest's part of the transfers, in busybox applets: GET, then POST.
fn transfer_cmd() -> String {
    let url = format!("http://{}:{HTTP_PORT}", NIC0.host_ip);
    format!(
        "echo get $(wget -q -O - {url}/data | md5sum); \
         head -c {TCP_BYTES} /dev/urandom | base64 | head -c {TCP_BYTES} > /tmp/up; \
         echo sent $(md5sum /tmp/up); \
         echo post $(wget -q -O - --post-file=/tmp/up {url}/upload); rm /tmp/up"
    )
}

/// Both directions arrived whole, by the MD5s each end computed.
fn check_transfers(output: &str, server: JoinHandle<Option<Upload>>) {
    let word = |key: &str, n: usize| -> String {
        output
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().nth(n))
            .unwrap_or("")
            .to_string()
    };
    let expected = md5_of(|w| pattern(TCP_BYTES, w));
    assert_eq!(word("get ", 0), expected, "host to guest\n{output}");
    let upload = server.join().expect("server thread").expect("an upload");
    assert_eq!(upload.0, TCP_BYTES, "guest to host\n{output}");
    assert_eq!(
        word("sent ", 0),
        upload.1,
        "what the guest sent arrived\n{output}"
    );
    assert_eq!(word("post ", 1), upload.1, "{output}");
}

/// This file's service and the guest's commands, checked on any host
/// (with or without hardware virtualization): the default guest's own
/// busybox runs the guest's part inside the namespace, over loopback.
#[test]
fn the_transfer_service_works_with_the_guests_busybox() {
    if let Some(why) = net::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let guest = assets::ensure(&assets::default_cache_dir()).expect("default guest assets");
    let busybox = guest.initrd.with_file_name("busybox");
    let ns = NetNs::new().expect("a network namespace");
    ns.add_tap(NIC0.tap, NIC0.host).expect("a TAP");
    let listener = listen_in(&ns, format!("{}:{HTTP_PORT}", NIC0.host_ip));
    let server = serve(listener, Instant::now() + Duration::from_secs(60));
    // A folder of applet links, and a /tmp of its own for the upload.
    let dir = std::env::temp_dir().join(format!("utsuwa-linux-devices-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    for applet in ["sh", "wget", "md5sum", "head", "base64", "rm"] {
        std::os::unix::fs::symlink(&busybox, dir.join("bin").join(applet)).unwrap();
    }
    let cmd = transfer_cmd().replace("/tmp/up", &dir.join("up").display().to_string());
    let out = ns
        .command(dir.join("bin/sh"))
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/usr/bin:/sbin:/bin",
                dir.join("bin").display()
            ),
        )
        .args(["-c", &cmd])
        .output()
        .expect("busybox sh");
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{output}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_transfers(&output, server);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn linux_reads_dev_hwrng() {
    if skipped() {
        return;
    }
    let cmd = "cat /sys/class/misc/hw_random/rng_current; \
               head -c 1048576 /dev/hwrng | wc -c; \
               head -c 4096 /dev/hwrng | md5sum; head -c 4096 /dev/hwrng | md5sum";
    let (output, rc, out) = linux(
        Command::new(UTSUWA),
        cmd,
        &["--rng"],
        Duration::from_secs(60),
    );
    assert_eq!(rc, 0, "{output}\n{}", out.dump());
    let lines: Vec<&str> = output.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("virtio_rng")),
        "{output}"
    );
    assert_eq!(lines.get(1).map(|l| l.trim()), Some("1048576"), "{output}");
    assert_ne!(lines.get(2), lines.get(3), "two reads were alike\n{output}");
}

/// The vsock tool, built statically, in a cpio archive of its own
/// (`bin/vsock`) appended to the default initramfs: the new initrd's path.
fn initrd_with_vsock_tool(dir: &Path) -> std::path::PathBuf {
    let guest = assets::ensure(&assets::default_cache_dir()).expect("default guest assets");
    let root = dir.join("extra");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let tool = concat!(env!("CARGO_MANIFEST_DIR"), "/guests/vsock-tool/vsock.rs");
    let built = Command::new("rustc")
        .args([
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "strip=symbols",
            tool,
            "-o",
        ])
        .arg(root.join("bin/vsock"))
        .status()
        .expect("rustc");
    assert!(built.success(), "building the vsock tool");
    let mut cpio = Command::new(guest.initrd.with_file_name("busybox"))
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("busybox cpio");
    cpio.stdin
        .take()
        .unwrap()
        .write_all(b"bin/vsock\n")
        .unwrap();
    let archive = cpio.wait_with_output().unwrap();
    assert!(archive.status.success());
    let mut initrd = std::fs::read(&guest.initrd).unwrap();
    initrd.extend_from_slice(&archive.stdout);
    let path = dir.join("initrd.cpio");
    std::fs::write(&path, initrd).unwrap();
    path
}

#[test]
fn linux_talks_to_the_host_over_vsock_both_ways() {
    if skipped() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("utsuwa-linux-vsock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let initrd = initrd_with_vsock_tool(&dir);
    let sock = dir.join("v.sock");
    const BYTES: usize = 10 * MIB;

    // Guest to host: an echo service at PATH_5000.
    let service = std::os::unix::net::UnixListener::bind(dir.join("v.sock_5000")).unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = service.accept().expect("the guest's connection");
        let mut r = s.try_clone().unwrap();
        let n = std::io::copy(&mut r, &mut s).expect("echo");
        s.shutdown(std::net::Shutdown::Write).unwrap();
        n
    });
    // Host to guest: connect until the guest listens, then send.
    let host_sock = sock.clone();
    let sender = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            let Ok(mut s) = std::os::unix::net::UnixStream::connect(&host_sock) else {
                continue;
            };
            s.write_all(b"CONNECT 6000\n").unwrap();
            let mut line = String::new();
            let _ = BufReader::new(s.try_clone().unwrap()).read_line(&mut line);
            if !line.starts_with("OK ") {
                continue;
            }
            pattern(BYTES, &mut s);
            s.shutdown(std::net::Shutdown::Write).unwrap();
            return true;
        }
        false
    });

    let cmd = format!(
        "set -e; head -c {BYTES} /dev/urandom > /tmp/a; echo sent $(md5sum < /tmp/a); \
         echo echoed $(vsock connect 2 5000 < /tmp/a | md5sum); \
         vsock listen 6000 < /dev/null > /tmp/b; echo got $(md5sum < /tmp/b)"
    );
    let sock_arg = format!("cid=3,socket={}", sock.display());
    let mut vmm = Command::new(UTSUWA);
    vmm.arg("run");
    let guest = assets::ensure(&assets::default_cache_dir()).expect("default guest assets");
    let out = {
        vmm.arg("--kernel")
            .arg(&guest.kernel)
            .arg("--initrd")
            .arg(&initrd)
            .args([
                "--cpus",
                "2",
                "--memory",
                "512M",
                "--vsock",
                &sock_arg,
                "--cmdline",
            ])
            .arg(format!(
                "console=ttyS0 reboot=k panic=1 {}",
                encode_cmd(&cmd)
            ));
        run_with_limit(vmm, Duration::from_secs(180))
    };
    let (output, rc) = parse_cmd_output(out.stdout.as_bytes())
        .unwrap_or_else(|| panic!("no command output\n{}", out.dump()));
    let output = String::from_utf8_lossy(&output).into_owned();
    assert_eq!(rc, 0, "{output}\n{}", out.dump());
    let word = |key: &str| -> String {
        output
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(word("echoed "), word("sent "), "{output}");
    assert_eq!(echo.join().unwrap(), BYTES as u64);
    assert!(sender.join().unwrap(), "the guest never listened\n{output}");
    assert_eq!(word("got "), md5_of(|w| pattern(BYTES, w)), "{output}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The part of the vsock test that runs anywhere: the tool builds
/// statically, runs, and rides at the end of the initramfs.
#[test]
fn the_vsock_tool_builds_and_rides_in_the_initramfs() {
    let dir = std::env::temp_dir().join(format!("utsuwa-vsock-tool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let initrd = initrd_with_vsock_tool(&dir);
    let tool = dir.join("extra/bin/vsock");
    let file = Command::new("file").arg(&tool).output();
    if let Ok(f) = file {
        let text = String::from_utf8_lossy(&f.stdout).into_owned();
        assert!(
            text.contains("statically linked") || text.contains("static-pie"),
            "{text}"
        );
    }
    let usage = Command::new(&tool).output().unwrap();
    assert_eq!(usage.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("usage: vsock connect"));
    let guest = assets::ensure(&assets::default_cache_dir()).unwrap();
    let base = std::fs::metadata(&guest.initrd).unwrap().len();
    let all = std::fs::read(&initrd).unwrap();
    assert!(all.len() as u64 > base + 100_000, "the tool is appended");
    // The appended archive names the file, newc format.
    let tail = &all[base as usize..];
    assert!(tail.starts_with(b"070701"), "a newc archive follows");
    assert!(tail.windows(10).any(|w| w == b"bin/vsock\0"));
    std::fs::remove_dir_all(&dir).unwrap();
}
