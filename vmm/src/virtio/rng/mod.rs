//! virtio-rng, the entropy device (virtio 1.x spec, section 5.4): one
//! queue of device-writable buffers, each filled with bytes from the
//! host's `getrandom(2)`.
//!
//! ```text
//! Rng (device.rs)   features, activate/reset (no configuration space)
//!   └─ one worker thread (worker.rs): epoll on notify + stop
//!        └─ request.rs  descriptor chain → checked writable regions
//! ```
//!
//! A request is served up to [`MAX_REQUEST`] bytes (the used length says
//! how many, as 5.4.6 allows), so a guest cannot make the host allocate or
//! generate without bound; the worker's one buffer of that size is reused.

mod device;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod request;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};

pub use device::{Rng, QUEUE_SIZE};

/// Most bytes given for one request.
pub const MAX_REQUEST: usize = 64 << 10;

/// Counters of one entropy device.
#[derive(Debug, Default)]
pub struct RngStats {
    /// Requests answered with random bytes, and how many bytes.
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    /// Chains returned empty: malformed, or the host had no entropy to give.
    pub errors: AtomicU64,
}

/// A point-in-time copy of [`RngStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RngStatsSnapshot {
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
}

impl RngStats {
    /// Reads every counter (each one atomically, not all together).
    pub fn snapshot(&self) -> RngStatsSnapshot {
        RngStatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Fills `buf` from the host's `getrandom(2)` (the kernel's CSPRNG; it
/// blocks only before the kernel's pool was first seeded, early in host
/// boot).
pub(crate) fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            Ok(n) => done += n,
            Err(_) => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}
