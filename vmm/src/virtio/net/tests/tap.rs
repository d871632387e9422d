//! A real TAP, inside a network namespace private to the test's thread
//! (`unshare(CLONE_NEWNET)`): no frame can leave it, and the kernel tears
//! it down, interfaces included, when the thread and its sockets are gone,
//! whether the test passed, failed or the process died. Skipped (with a
//! note) where the host does not allow namespaces or has no /dev/net/tun.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use vm_memory::Address;

use super::*;

/// Runs `f` on a thread in a network namespace of its own.
fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("note: no /dev/net/tun here; real-TAP test skipped");
        return None;
    }
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; it moves only this thread
        // into a new network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(f())
    });
    match thread.join() {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            eprintln!("note: cannot create a network namespace ({e}); real-TAP test skipped");
            None
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn ifindex(name: &str) -> u32 {
    let c = CString::new(name).unwrap();
    // SAFETY: `c` is a NUL-terminated string alive for the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// `struct ifreq` with the flags member (as in tap.rs).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: libc::c_int) -> IfReq {
    let mut r = IfReq {
        name: [0; 16],
        flags: flags as libc::c_short,
        _pad: [0; 22],
    };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    r
}

fn owned(fd: libc::c_int) -> OwnedFd {
    assert!(fd >= 0, "{}", io::Error::last_os_error());
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Makes a persistent TAP, as `ip tuntap add NAME mode tap` does.
fn make_user_tap(name: &str) {
    // SAFETY: the path is a NUL-terminated literal.
    let fd = owned(unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) });
    let mut req = ifreq(name, libc::IFF_TAP | libc::IFF_NO_PI);
    // SAFETY: `req` is a 40-byte ifreq, alive for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert_eq!(r, 0);
    // SAFETY: TUNSETPERSIST takes its argument by value.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    assert_eq!(r, 0);
}

/// Brings `name` up (the host side's job, done here by the test).
fn set_up(name: &str) {
    // SAFETY: plain socket creation.
    let s = owned(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) });
    let mut req = ifreq(name, 0);
    // SAFETY: `req` is a 40-byte ifreq, alive for both calls.
    unsafe {
        assert_eq!(libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req), 0);
        req.flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req), 0);
    }
}

/// A packet socket on `name`: the host network, as far as the test goes.
fn packet_socket(name: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation.
    let s = owned(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    });
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex(name) as i32;
    // SAFETY: `addr` is a sockaddr_ll of the size given, alive for the call.
    let r = unsafe {
        libc::bind(
            s.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "bind: {}", io::Error::last_os_error());
    s
}

fn poll_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn taps_are_created_attached_and_never_deleted() {
    in_private_netns(|| {
        assert_eq!(ifindex("utsw0"), 0);
        let tap = Tap::open("utsw0").unwrap();
        assert!(tap.created());
        assert_ne!(ifindex("utsw0"), 0);
        let mut hdr_len: libc::c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes one int into `hdr_len`.
        let r = unsafe { libc::ioctl(tap.fd(), libc::TUNGETVNETHDRSZ, &mut hdr_len) };
        assert_eq!(r, 0);
        assert_eq!(hdr_len as usize, VNET_HDR_LEN);
        for acked in [
            0,
            VIRTIO_NET_F_GUEST_CSUM,
            FEATURES,
            FEATURES & !VIRTIO_NET_F_GUEST_TSO6,
        ] {
            let flags = Offloads::from_features(acked).tun_flags();
            tap.set_offload(flags).unwrap();
            assert_eq!(tap.offload(), flags);
        }
        assert!(matches!(Tap::open("utsw0"), Err(NetError::TapBusy(_))));
        drop(tap);
        assert_eq!(ifindex("utsw0"), 0, "a TAP utsuwa created goes with it");

        make_user_tap("utsw1");
        let tap = Tap::open("utsw1").unwrap();
        assert!(!tap.created());
        drop(tap);
        assert_ne!(ifindex("utsw1"), 0, "the user's TAP is still there");
        // And can be attached again.
        assert!(!Tap::open("utsw1").unwrap().created());

        for bad in ["", "a/b", "sixteen-chars-xx", "tap%d", "a b", ".", "x:y"] {
            assert!(
                matches!(Tap::open(bad), Err(NetError::TapName(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(Tap::open("lo"), Err(NetError::NotATap(_))));
    });
}

#[test]
fn frames_cross_a_real_tap() {
    in_private_netns(|| {
        let tap = Tap::open("utsw2").unwrap();
        tap.set_offload(Offloads::from_features(ALL).tun_flags())
            .unwrap();
        set_up("utsw2");
        let host = packet_socket("utsw2");
        let mut r = Rig::build(tap, None, ALL, 256);

        // Guest to host, header split from the frame.
        let mut out = vnet_hdr(0, 0, 0, 0);
        out.extend(ether_frame(200, 0x31));
        r.transmit(&out, &[VNET_HDR_LEN]);
        r.run_tx();
        assert_eq!(r.stats().tx_frames, 1);
        poll_for("the guest's frame on the host", || {
            recv_on(&host).filter(|f| f[..] == out[VNET_HDR_LEN..])
        });

        // A header the kernel refuses: checksum start past the frame.
        let mut bogus = vnet_hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0);
        bogus[6..8].copy_from_slice(&60000u16.to_le_bytes());
        bogus.extend(ether_frame(200, 0x32));
        r.transmit(&bogus, &[]);
        r.run_tx();
        assert_eq!(r.stats().tx_dropped, 1);
        assert_eq!(r.tx.used_idx(), 2);

        // Host to guest (the kernel may add frames of its own: look for ours).
        let bufs: Vec<_> = (0..32).map(|_| r.rx_buffer(4096)).collect();
        let inbound = ether_frame(300, 0x33);
        assert!(send_on(&host, &inbound));
        let slot = poll_for("the host's frame in the guest", || {
            r.run_rx();
            (0..r.rx.used_idx()).find(|&n| {
                let (id, len) = r.rx.used_elem(n);
                let addr = bufs.iter().find(|b| u32::from(b.0) == id).unwrap().1;
                len as usize == VNET_HDR_LEN + inbound.len()
                    && r.rx.read_bytes(addr.unchecked_add(12), inbound.len()) == inbound
            })
        });
        let (id, _) = r.rx.used_elem(slot);
        let addr = bufs.iter().find(|b| u32::from(b.0) == id).unwrap().1;
        let hdr = r.rx.read_bytes(addr, VNET_HDR_LEN);
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_NONE);
        assert_eq!(&hdr[10..12], &[1, 0], "num_buffers");
    });
}
