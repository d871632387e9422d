//! One connection: a guest stream socket paired with a host Unix stream.
//!
//! Credit, both ways (5.10.6.3): the guest may have at most [`BUF_ALLOC`]
//! bytes in flight towards the device, counted against what the device
//! has passed on to the host stream (`fwd_cnt`); whatever the stream does
//! not take at once waits in `pending`, which therefore never grows past
//! `BUF_ALLOC`. Towards the guest the device sends no more than the
//! guest's `buf_alloc - (tx_cnt - fwd_cnt)`.
//!
//! Guest data goes from guest memory to the stream with one `writev`
//! (no copy unless the stream is full); host data comes from the stream
//! straight into the guest's receive buffer with one `readv`.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::num::Wrapping;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::{Header, TYPE_STREAM};
use super::{BUF_ALLOC, HOST_CID};
use crate::memory::GuestMemoryMmap;
use crate::virtio::chain::{self, Region};

/// Control packets a connection owes the guest (bits of `Conn::need`).
pub(super) const NEED_REQUEST: u8 = 1;
pub(super) const NEED_RESPONSE: u8 = 2;
pub(super) const NEED_CREDIT_UPDATE: u8 = 4;
pub(super) const NEED_SHUTDOWN: u8 = 8;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Host-initiated: the REQUEST is (or is about to be) with the guest;
    /// waiting for RESPONSE until the deadline.
    Connecting,
    Established,
    /// The device sent SHUTDOWN; waiting for the guest's RST until the
    /// deadline.
    Closing,
}

/// Why a connection must be reset.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("the guest sent {0} bytes beyond its credit")]
    CreditExceeded(usize),
    #[error("guest memory refused the payload")]
    Memory,
    #[error("host stream: {0}")]
    Stream(#[source] io::Error),
}

pub(super) struct Conn {
    pub stream: UnixStream,
    /// The host-side port (the destination of host-initiated ones is the
    /// guest's port; `local_port` is then one the device picked).
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    pub state: State,
    /// When `Connecting` or `Closing` gives up.
    pub deadline: Option<Instant>,
    /// `NEED_*` bits.
    pub need: u8,
    /// The stream may have data (edge-triggered: set by epoll, cleared
    /// when a read comes back empty-handed).
    pub readable: bool,
    /// The guest will send no more: shut the stream's write side once
    /// `pending` is written.
    pub peer_shut_send: bool,
    /// The guest will receive no more: stop reading the stream.
    pub peer_shut_rcv: bool,
    /// The stream ended (or failed): no more data towards the guest.
    pub host_eof: bool,
    /// The host peer closed its end entirely (not just its write side).
    pub host_eof_hup: bool,
    /// In the muxer's list of connections with something for the guest.
    pub queued: bool,
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as the guest last heard it.
    told_fwd_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Payload bytes sent to the guest.
    tx_cnt: Wrapping<u32>,
    /// Guest data the stream has not taken yet.
    pending: VecDeque<u8>,
}

impl Conn {
    pub(super) fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Conn {
        Conn {
            stream,
            local_port,
            peer_port,
            state,
            deadline: None,
            need: 0,
            readable: true,
            peer_shut_send: false,
            peer_shut_rcv: false,
            host_eof: false,
            host_eof_hup: false,
            queued: false,
            fwd_cnt: Wrapping(0),
            told_fwd_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            pending: VecDeque::new(),
        }
    }

    /// Takes the guest's view of its receive buffer from any packet.
    pub(super) fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
    }

    /// Bytes the guest can take now.
    pub(super) fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// A header for a packet of this connection, device to guest; the
    /// guest learns the current `fwd_cnt` from it.
    pub(super) fn header(&mut self, guest_cid: u64, op: u16, len: u32, flags: u32) -> Header {
        self.told_fwd_cnt = self.fwd_cnt;
        self.need &= !NEED_CREDIT_UPDATE;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// True when data may flow from the stream to the guest now.
    pub(super) fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.host_eof
            && !self.peer_shut_rcv
            && self.peer_credit() > 0
    }

    /// True when the guest is owed a packet.
    pub(super) fn has_rx_work(&self) -> bool {
        self.need != 0 || self.can_send_data()
    }

    /// Guest payload (`len` bytes in `regions`) for the host stream.
    pub(super) fn deliver(
        &mut self,
        mem: &GuestMemoryMmap,
        regions: &[Region],
        len: usize,
    ) -> Result<(), ConnError> {
        let room = (BUF_ALLOC as usize).saturating_sub(self.pending.len());
        if len > room {
            return Err(ConnError::CreditExceeded(len - room));
        }
        let mut written = 0;
        if self.pending.is_empty() && !self.peer_shut_send {
            written = write_guest(&self.stream, mem, regions)?;
            self.forwarded(written);
        }
        if written < len {
            let mut rest = vec![0u8; len - written];
            if !chain::read_stream(mem, regions, written as u64, &mut rest) {
                return Err(ConnError::Memory);
            }
            self.pending.extend(rest);
        }
        Ok(())
    }

    /// Writes what waits in `pending`; shuts the stream's write side when
    /// the guest said it sends no more and everything is out.
    pub(super) fn flush(&mut self) -> Result<(), ConnError> {
        while !self.pending.is_empty() {
            let (a, b) = self.pending.as_slices();
            let bufs = [io::IoSlice::new(a), io::IoSlice::new(b)];
            match (&self.stream).write_vectored(&bufs) {
                Ok(0) => return Err(ConnError::Stream(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.pending.drain(..n);
                    self.forwarded(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Stream(e)),
            }
        }
        if self.pending.is_empty() && self.peer_shut_send {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    pub(super) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn forwarded(&mut self, n: usize) {
        // Wraps as the spec's counters do.
        self.fwd_cnt += Wrapping(n as u32);
        // Tell the guest once a quarter of its credit came free: a guest
        // that only sends would otherwise wait forever.
        if (self.fwd_cnt - self.told_fwd_cnt).0 >= BUF_ALLOC / 4 {
            self.need |= NEED_CREDIT_UPDATE;
        }
    }

    /// Reads host data straight into the guest's buffers `regions`, at
    /// most the guest's credit; Ok(0) means the stream ended, WouldBlock
    /// that it is empty for now.
    pub(super) fn read_into(
        &mut self,
        mem: &GuestMemoryMmap,
        regions: &[Region],
    ) -> io::Result<usize> {
        let want = regions
            .iter()
            .map(|r| u64::from(r.len))
            .sum::<u64>()
            .min(u64::from(self.peer_credit()));
        let regions = chain::prefix(regions, want);
        let iov = chain::iovecs(mem, &regions)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad guest buffer"))?;
        let n = loop {
            // SAFETY: every iovec points into guest memory that `mem`
            // keeps mapped for the duration of the call (chain::iovecs),
            // and readv writes only within them.
            let n = unsafe {
                libc::readv(
                    self.stream.as_raw_fd(),
                    iov.as_ptr(),
                    iov.len() as libc::c_int,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        self.tx_cnt += Wrapping(n as u32);
        Ok(n)
    }
}

/// One non-blocking `writev` of guest memory to `stream`; bytes written.
fn write_guest(
    stream: &UnixStream,
    mem: &GuestMemoryMmap,
    regions: &[Region],
) -> Result<usize, ConnError> {
    if regions.is_empty() {
        return Ok(0);
    }
    let iov = chain::iovecs(mem, regions).ok_or(ConnError::Memory)?;
    loop {
        // SAFETY: every iovec points into guest memory that `mem` keeps
        // mapped for the duration of the call (chain::iovecs); writev only
        // reads them.
        let n = unsafe { libc::writev(stream.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(ConnError::Stream(e)),
        }
    }
}
