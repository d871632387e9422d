//! The disk image: opening it (read-only, O_DIRECT), locking it against a
//! second VM, its size, and the synchronous operations every engine shares
//! (vectored read/write, flush, discard, write-zeroes).
//!
//! Locking: an OFD lock (`fcntl(F_OFD_SETLK)`) on the whole file, write
//! lock for a writable disk, read lock for a read-only one. Unlike classic
//! POSIX locks it belongs to the open file description, so it is not lost
//! when some other fd of this process on the same file is closed, and it
//! conflicts between two opens inside one process (so tests can see it);
//! unlike `flock` it works over NFS the same way as locally, and it
//! conflicts with QEMU's image locks, which are OFD byte-range locks too.
//! It goes away with the file when the device is dropped (or the process
//! dies), never earlier.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use super::io::AlignedBuf;
use super::{BlockError, DiskConfig};

/// The unit of `sector` and `capacity` in the protocol, whatever the
/// block size.
pub const SECTOR_SIZE: u64 = 512;

/// Alignment of bounce buffers, and the largest O_DIRECT alignment we
/// accept.
pub(super) const MAX_DIRECT_ALIGN: u32 = 4096;

/// Largest piece written at once when write-zeroes has to write zeros.
const ZERO_CHUNK: usize = 1 << 20;

/// An open, locked disk image.
#[derive(Debug)]
pub(super) struct Disk {
    file: File,
    path: PathBuf,
    sectors: u64,
    read_only: bool,
    direct: bool,
    /// With O_DIRECT: what buffer addresses and lengths must be aligned to.
    mem_align: u32,
    /// The logical block size: 512, or the O_DIRECT offset alignment when
    /// that is larger (offsets and lengths of data requests must be
    /// multiples of it).
    block_size: u32,
}

fn errno_is(err: &io::Error, codes: &[i32]) -> bool {
    err.raw_os_error().is_some_and(|c| codes.contains(&c))
}

/// Whether `err` says the file system does not implement an operation.
fn unsupported(err: &io::Error) -> bool {
    errno_is(
        err,
        &[libc::EOPNOTSUPP, libc::ENOTSUP, libc::ENOSYS, libc::EINVAL],
    )
}

fn retry_eintr<F: FnMut() -> isize>(mut f: F) -> io::Result<usize> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Drops the first `n` bytes from `iov`.
pub(super) fn advance_iovecs(iov: &mut Vec<libc::iovec>, mut n: usize) {
    let mut skip = 0;
    for v in iov.iter_mut() {
        if n == 0 {
            break;
        }
        if n >= v.iov_len {
            n -= v.iov_len;
            skip += 1;
        } else {
            v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
            v.iov_len -= n;
            n = 0;
        }
    }
    iov.drain(..skip);
}

impl Disk {
    /// Opens and locks the image `cfg` describes.
    pub(super) fn open(cfg: &DiskConfig) -> Result<Disk, BlockError> {
        let path = cfg.path.clone();
        let mut options = OpenOptions::new();
        options.read(true).write(!cfg.read_only);
        if cfg.direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let file = options.open(&path).map_err(|source| {
            if cfg.direct && errno_is(&source, &[libc::EINVAL]) {
                BlockError::DirectUnsupported(path.clone())
            } else {
                BlockError::Open {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        lock(&file, &path, cfg.read_only)?;

        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.clone(),
                source,
            })?;
        // A partial last sector could be neither read nor written whole;
        // refusing is clearer than silently hiding the tail of the image.
        if size % SECTOR_SIZE != 0 {
            return Err(BlockError::UnalignedSize { path, size });
        }

        let (mem_align, block_size) = if cfg.direct {
            let (mem, offset) = match dio_alignment(&file) {
                Some((0, _)) | Some((_, 0)) => return Err(BlockError::DirectUnsupported(path)),
                Some(align) => align,
                // The kernel cannot tell: assume the strictest common case.
                None => (MAX_DIRECT_ALIGN, MAX_DIRECT_ALIGN),
            };
            let worst = mem.max(offset);
            if worst > MAX_DIRECT_ALIGN || !worst.is_power_of_two() {
                return Err(BlockError::DirectAlignment { path, align: worst });
            }
            (mem, offset.max(SECTOR_SIZE as u32))
        } else {
            (1, SECTOR_SIZE as u32)
        };

        Ok(Disk {
            file,
            path,
            sectors: size / SECTOR_SIZE,
            read_only: cfg.read_only,
            direct: cfg.direct,
            mem_align,
            block_size,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Capacity in 512-byte sectors.
    pub(super) fn sectors(&self) -> u64 {
        self.sectors
    }

    pub(super) fn read_only(&self) -> bool {
        self.read_only
    }

    pub(super) fn direct(&self) -> bool {
        self.direct
    }

    pub(super) fn block_size(&self) -> u32 {
        self.block_size
    }

    pub(super) fn mem_align(&self) -> u32 {
        self.mem_align
    }

    /// Fills all of `iov` from the image at `offset`.
    ///
    /// # Safety
    /// Every iovec must point to memory valid for writes of its length for
    /// the whole call.
    pub(super) unsafe fn read_vectored(
        &self,
        mut iov: Vec<libc::iovec>,
        mut offset: u64,
    ) -> io::Result<()> {
        while !iov.is_empty() {
            let cnt = iov.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
            // SAFETY: the iovecs are valid for writes (the caller's
            // contract) and `cnt` does not exceed their number.
            let n = retry_eintr(|| unsafe {
                libc::preadv(self.fd(), iov.as_ptr(), cnt, offset as libc::off_t)
            })?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "disk image shrank",
                ));
            }
            advance_iovecs(&mut iov, n);
            offset += n as u64;
        }
        Ok(())
    }

    /// Writes all of `iov` to the image at `offset`; with `dsync` the data
    /// is durable when this returns.
    ///
    /// # Safety
    /// Every iovec must point to memory valid for reads of its length for
    /// the whole call.
    pub(super) unsafe fn write_vectored(
        &self,
        mut iov: Vec<libc::iovec>,
        mut offset: u64,
        dsync: bool,
    ) -> io::Result<()> {
        let flags = if dsync { libc::RWF_DSYNC } else { 0 };
        while !iov.is_empty() {
            let cnt = iov.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
            // SAFETY: the iovecs are valid for reads (the caller's
            // contract) and `cnt` does not exceed their number.
            let n = retry_eintr(|| unsafe {
                libc::pwritev2(self.fd(), iov.as_ptr(), cnt, offset as libc::off_t, flags)
            })?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "disk image refused data",
                ));
            }
            advance_iovecs(&mut iov, n);
            offset += n as u64;
        }
        Ok(())
    }

    /// One `preadv2`/`pwritev2` with RWF_NOWAIT: moves what the page cache
    /// allows without blocking (EAGAIN when nothing), or EOPNOTSUPP.
    ///
    /// # Safety
    /// As `read_vectored` (for reads) or `write_vectored` (for writes).
    pub(super) unsafe fn nowait(
        &self,
        write: bool,
        iov: &[libc::iovec],
        offset: u64,
    ) -> io::Result<usize> {
        let cnt = iov.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        let off = offset as libc::off_t;
        retry_eintr(|| {
            if write {
                // SAFETY: the iovecs are valid for reads (caller's contract).
                unsafe { libc::pwritev2(self.fd(), iov.as_ptr(), cnt, off, libc::RWF_NOWAIT) }
            } else {
                // SAFETY: the iovecs are valid for writes (caller's contract).
                unsafe { libc::preadv2(self.fd(), iov.as_ptr(), cnt, off, libc::RWF_NOWAIT) }
            }
        })
    }

    /// Makes every completed write durable.
    pub(super) fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        };
        loop {
            // SAFETY: fallocate only acts on our fd; no memory is passed.
            if unsafe { libc::fallocate(self.fd(), mode, off, len) } == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Deallocates `len` bytes at `offset` where the file system can; a
    /// discard is only a hint, so "cannot" is not an error.
    pub(super) fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.punch_hole(offset, len) {
            Err(e) if unsupported(&e) => Ok(()),
            other => other,
        }
    }

    /// Makes `len` bytes at `offset` read as zeros: a hole when `unmap`
    /// allows deallocating, else a zeroed (still allocated) range, else
    /// written zeros.
    pub(super) fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        dsync: bool,
    ) -> io::Result<()> {
        if unmap {
            match self.punch_hole(offset, len) {
                Ok(()) => return self.sync_if(dsync),
                Err(e) if !unsupported(&e) => return Err(e),
                Err(_) => {}
            }
        }
        match self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => return self.sync_if(dsync),
            Err(e) if !unsupported(&e) => return Err(e),
            Err(_) => {}
        }
        let chunk = usize::try_from(len).unwrap_or(usize::MAX).min(ZERO_CHUNK);
        let zeros = AlignedBuf::zeroed(chunk)?;
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from(len - done).unwrap_or(usize::MAX).min(chunk);
            let iov = vec![libc::iovec {
                iov_base: zeros.as_ptr() as *mut libc::c_void,
                iov_len: n,
            }];
            // SAFETY: the iovec covers `n <= chunk` bytes of `zeros`, which
            // lives until the end of this function.
            unsafe { self.write_vectored(iov, offset + done, dsync) }?;
            done += n as u64;
        }
        Ok(())
    }

    fn sync_if(&self, dsync: bool) -> io::Result<()> {
        if dsync {
            self.flush()
        } else {
            Ok(())
        }
    }
}

/// Takes the OFD lock described in the module documentation.
fn lock(file: &File, path: &Path, read_only: bool) -> Result<(), BlockError> {
    // SAFETY: `flock` is plain old data; all zeros is a valid value.
    let mut lk: libc::flock = unsafe { std::mem::zeroed() };
    lk.l_type = if read_only {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    } as libc::c_short;
    lk.l_whence = libc::SEEK_SET as libc::c_short;
    lk.l_start = 0;
    lk.l_len = 0; // the whole file, however large it grows
                  // SAFETY: F_OFD_SETLK reads the `flock` we own and touches nothing else.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lk) } == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    if errno_is(&source, &[libc::EAGAIN, libc::EACCES]) {
        Err(BlockError::InUse(path.to_path_buf()))
    } else {
        Err(BlockError::Lock {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// O_DIRECT (memory, offset) alignment, when the kernel reports it
/// (statx STATX_DIOALIGN, Linux 6.1+).
fn dio_alignment(file: &File) -> Option<(u32, u32)> {
    // SAFETY: `statx` is plain old data; all zeros is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid NUL-terminated empty string, AT_EMPTY_PATH
    // makes statx describe the fd, and `stx` is ours to fill.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}
