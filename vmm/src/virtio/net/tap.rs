//! A Linux TAP interface through `/dev/net/tun` (see the kernel's
//! Documentation/networking/tuntap.rst): `TUNSETIFF` with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` attaches to the named TAP, or
//! creates it if no interface has that name. Frames are read and written
//! whole, one per call, each behind a 12-byte virtio-net header
//! (`TUNSETVNETHDRSZ`). `TUNSETOFFLOAD` says what the kernel may hand us:
//! partial checksums and TSO frames only when the guest takes them.
//!
//! Who removes the interface: one TUNSETIFF created is not persistent, so
//! the kernel deletes it when the last fd closes; one the user made (with
//! `ip tuntap add`, persistent) stays. `TUNGETIFF` reports IFF_PERSIST,
//! which is how [`Tap::created`] knows. utsuwa never deletes or changes
//! the persistence of an interface; it does not bring it up or give it
//! addresses either: the host side is the user's to configure.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{
    NetError, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VNET_HDR_LEN,
};

/// `struct ifreq` as TUNSETIFF and TUNGETIFF use it: the name, then the
/// flags at the start of the 24-byte union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

impl IfReq {
    fn new(name: [u8; libc::IFNAMSIZ], flags: libc::c_int) -> IfReq {
        IfReq {
            name,
            flags: flags as libc::c_short,
            _pad: [0; 22],
        }
    }
}

/// What the guest accepted on receive, and so what the kernel may send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Offloads {
    /// Partial checksums (VIRTIO_NET_HDR_F_NEEDS_CSUM): GUEST_CSUM.
    pub csum: bool,
    /// TCP segmentation: GUEST_TSO4 / GUEST_TSO6 (each needs csum).
    pub tso4: bool,
    pub tso6: bool,
    /// TSO frames with ECN set: GUEST_ECN (needs tso4 or tso6).
    pub ecn: bool,
}

impl Offloads {
    /// From the driver's accepted features, dropping any whose
    /// prerequisite it did not accept (5.1.3.1), as the kernel would refuse
    /// them anyway.
    pub(super) fn from_features(acked: u64) -> Offloads {
        let csum = acked & VIRTIO_NET_F_GUEST_CSUM != 0;
        let tso4 = csum && acked & VIRTIO_NET_F_GUEST_TSO4 != 0;
        let tso6 = csum && acked & VIRTIO_NET_F_GUEST_TSO6 != 0;
        let ecn = (tso4 || tso6) && acked & VIRTIO_NET_F_GUEST_ECN != 0;
        Offloads {
            csum,
            tso4,
            tso6,
            ecn,
        }
    }

    /// The TUNSETOFFLOAD argument.
    pub(super) fn tun_flags(&self) -> u32 {
        let mut f = 0;
        if self.csum {
            f |= libc::TUN_F_CSUM;
        }
        if self.tso4 {
            f |= libc::TUN_F_TSO4;
        }
        if self.tso6 {
            f |= libc::TUN_F_TSO6;
        }
        if self.ecn {
            f |= libc::TUN_F_TSO_ECN;
        }
        f
    }
}

/// Checks `name` as the kernel would (dev_valid_name), refusing '%' too
/// (TUNSETIFF would take it as a pattern and pick another name).
fn interface_name(name: &str) -> Result<[u8; libc::IFNAMSIZ], NetError> {
    let bad = name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == b'%' || b == 0 || b.is_ascii_whitespace());
    let mut out = [0u8; libc::IFNAMSIZ];
    match out.get_mut(..name.len()) {
        Some(dst) if !bad => {
            dst.copy_from_slice(name.as_bytes());
            Ok(out)
        }
        _ => Err(NetError::TapName(name.to_string())),
    }
}

/// An open TAP interface (or, in tests, a stand-in that passes frames).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    created: bool,
    /// A real TAP (ioctls apply), not a test stand-in.
    is_tap: bool,
    /// The last TUNSETOFFLOAD flags set.
    offload: AtomicU32,
}

impl Tap {
    /// Attaches to TAP interface `name`, creating it if it does not
    /// exist; the fd is non-blocking.
    pub fn open(name: &str) -> Result<Tap, NetError> {
        let ifname = interface_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(NetError::OpenTun)?;
        let mut req = IfReq::new(ifname, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` has
        // its size and layout (name, then flags) and outlives the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if r < 0 {
            let source = io::Error::last_os_error();
            return Err(match source.raw_os_error() {
                Some(libc::EBUSY) => NetError::TapBusy(name.to_string()),
                Some(libc::EINVAL) => NetError::NotATap(name.to_string()),
                Some(libc::EPERM) => NetError::TapPermission(name.to_string()),
                _ => NetError::TapAttach {
                    name: name.to_string(),
                    source,
                },
            });
        }
        let setup = |op, source| NetError::TapSetup {
            name: name.to_string(),
            op,
            source,
        };
        let mut got = IfReq::new([0; libc::IFNAMSIZ], 0);
        // SAFETY: TUNGETIFF writes a `struct ifreq` into `got`, which has
        // its size and outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut got) } < 0 {
            return Err(setup("TUNGETIFF", io::Error::last_os_error()));
        }
        let tap = Tap {
            file,
            name: name.to_string(),
            created: i32::from(got.flags) & libc::IFF_PERSIST == 0,
            is_tap: true,
            offload: AtomicU32::new(0),
        };
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points at `hdr_len`, alive for the call.
        if unsafe { libc::ioctl(tap.fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(setup("TUNSETVNETHDRSZ", io::Error::last_os_error()));
        }
        tap.set_offload(0).map_err(|e| setup("TUNSETOFFLOAD", e))?;
        log::debug!(
            "virtio-net: TAP {name} {}",
            if tap.created { "created" } else { "attached" }
        );
        Ok(tap)
    }

    /// A stand-in for tests: frames go through `fd` (a datagram or
    /// seqpacket socket keeps their boundaries, as a TAP does); offload
    /// settings are only recorded. (Also used by the fuzz targets.)
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn stand_in(fd: std::os::fd::OwnedFd) -> Tap {
        Tap {
            file: File::from(fd),
            name: "stand-in".into(),
            created: false,
            is_tap: false,
            offload: AtomicU32::new(0),
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if opening it created the interface, which then disappears
    /// when this closes; false for an interface the user made.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The TUNSETOFFLOAD flags last set.
    pub fn offload(&self) -> u32 {
        self.offload.load(Ordering::Relaxed)
    }

    pub(super) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Tells the kernel which offloaded frames it may hand us (TUN_F_*).
    pub(super) fn set_offload(&self, flags: u32) -> io::Result<()> {
        if self.is_tap {
            // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory
            // is passed.
            let r = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    libc::TUNSETOFFLOAD,
                    libc::c_ulong::from(flags),
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        self.offload.store(flags, Ordering::Relaxed);
        Ok(())
    }

    /// Reads one frame (header included); a frame longer than `buf` is
    /// cut, so callers pass one byte more than the longest they accept.
    /// `WouldBlock` when there is none.
    pub(super) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame gathered from `iov`.
    ///
    /// # Safety
    /// Every iovec must describe memory valid for reads for the whole call.
    pub(super) unsafe fn writev(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let count = libc::c_int::try_from(iov.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the caller guarantees the buffers; `iov` itself is a
        // live slice of `count` iovecs.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), count) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // Leave a user's interface as we found it as far as offloads go;
        // one we created goes away with the fd.
        if self.is_tap && !self.created {
            if let Err(e) = self.set_offload(0) {
                log::debug!("virtio-net: TAP {}: resetting offloads: {e}", self.name);
            }
        }
    }
}
