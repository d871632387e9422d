//! The probe's own frames (README, "net frames"): Ethernet II with the
//! local experimental EtherType 0x88b5, then a 32-byte header
//! (little-endian) and `len` payload bytes.
//!
//! ```text
//! 0  magic "UTSW"   4  kind   5  flags   6  nic (le16)
//! 8  seq (le32)     12 len (le32, payload bytes after the header)
//! 16 fnv64 (le64, FNV-1a 64 of the payload)   24 aux (le64)
//! ```
//!
//! Data payloads are the splitmix64 pattern (as on disks) of seed `aux`
//! from offset 0, so the receiver checks both the FNV and the pattern.

use crate::eth::{self, ETH_HDR};
use crate::virtio::data::{fill_pattern, Fnv};

pub const ETHERTYPE: u16 = 0x88b5;
pub const MAGIC: [u8; 4] = *b"UTSW";
pub const HDR: usize = 32;
/// Where the payload starts in the frame.
pub const PAYLOAD: usize = ETH_HDR + HDR;

/// Guest → host: start of a session; payload eight le32: nic, tx_frames,
/// rx_frames, bench frame bytes, bench frames, window, mtu, flags
/// (bit 0 offload, bit 1 MRG_RXBUF).
pub const HELLO: u8 = 1;
/// Data frames (pattern payload), guest → host and host → guest.
pub const DATA_G2H: u8 = 2;
pub const DATA_H2G: u8 = 3;
/// Benchmark frames (a fixed pattern payload, seed `BENCH_SEED`).
pub const BENCH_G2H: u8 = 4;
pub const BENCH_H2G: u8 = 5;
/// Acknowledgement of the stream `flags` (a kind): `seq` = frames of it
/// received, `aux` = highest sequence number seen + 1.
pub const ACK: u8 = 6;
/// Guest → host: send `BENCH_H2G` frames; payload le32 frames, le32 frame bytes.
pub const GO: u8 = 7;
/// Guest → host: the session on this NIC is over; payload le64 counters:
/// data frames sent, data frames received intact, pings answered.
pub const DONE: u8 = 8;

pub const BENCH_SEED: u64 = 0x6265_6e63_6800_0000;
pub const TSO_SEED: u64 = 0x7473_6f00_0000_0000;

/// The pattern seed of guest data frame `seq` of NIC `nic`.
pub fn g2h_seed(nic: usize, seq: u64) -> u64 {
    0x6732_6800_0000_0000 | (nic as u64) << 32 | seq
}

/// Frame length (Ethernet header included, no FCS) of guest data frame
/// `i`, for frames of at most `max` bytes (14 + MTU): these eight, cycling.
pub fn data_len(i: u64, max: usize) -> usize {
    let sizes = [60, max, 64, 127, 256, 577, 1024, max - 1];
    sizes[(i % 8) as usize].clamp(60, max)
}

#[derive(Clone, Copy, Default)]
pub struct Hdr {
    pub kind: u8,
    pub flags: u8,
    pub nic: u16,
    pub seq: u32,
    pub len: u32,
    pub fnv: u64,
    pub aux: u64,
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from(le32(b, o)) | u64::from(le32(b, o + 4)) << 32
}

/// The header, if `frame` is one of these (payload not checked).
pub fn parse(frame: &[u8]) -> Option<Hdr> {
    if frame.len() < PAYLOAD
        || eth::ethertype(frame) != ETHERTYPE
        || frame[ETH_HDR..ETH_HDR + 4] != MAGIC
    {
        return None;
    }
    let h = &frame[ETH_HDR..PAYLOAD];
    Some(Hdr {
        kind: h[4],
        flags: h[5],
        nic: u16::from_le_bytes([h[6], h[7]]),
        seq: le32(h, 8),
        len: le32(h, 12),
        fnv: le64(h, 16),
        aux: le64(h, 24),
    })
}

/// Ethernet header (to broadcast) and probe header.
pub fn write(frame: &mut [u8], src: [u8; 6], h: &Hdr) {
    eth::write_eth(frame, eth::BROADCAST, src, ETHERTYPE);
    let b = &mut frame[ETH_HDR..PAYLOAD];
    b[..4].copy_from_slice(&MAGIC);
    b[4] = h.kind;
    b[5] = h.flags;
    b[6..8].copy_from_slice(&h.nic.to_le_bytes());
    b[8..12].copy_from_slice(&h.seq.to_le_bytes());
    b[12..16].copy_from_slice(&h.len.to_le_bytes());
    b[16..24].copy_from_slice(&h.fnv.to_le_bytes());
    b[24..32].copy_from_slice(&h.aux.to_le_bytes());
}

/// A frame with a small payload of le32/le64 values; returns its length
/// (at least 60).
#[allow(clippy::too_many_arguments)]
pub fn control(
    frame: &mut [u8],
    src: [u8; 6],
    kind: u8,
    flags: u8,
    nic: usize,
    seq: u32,
    aux: u64,
    payload: &[u8],
) -> usize {
    let end = PAYLOAD + payload.len();
    frame[PAYLOAD..end].copy_from_slice(payload);
    let h = Hdr {
        kind,
        flags,
        nic: nic as u16,
        seq,
        len: payload.len() as u32,
        fnv: Fnv::of(payload),
        aux,
    };
    write(frame, src, &h);
    if end < 60 {
        frame[end..60].fill(0);
    }
    end.max(60)
}

/// A data frame of `frame_len` bytes (≥ 46) whose payload is the pattern of
/// `seed`; returns the payload's FNV.
pub fn data(
    frame: &mut [u8],
    src: [u8; 6],
    kind: u8,
    nic: usize,
    seq: u32,
    frame_len: usize,
    seed: u64,
) -> u64 {
    let payload = &mut frame[PAYLOAD..frame_len];
    fill_pattern(seed, 0, payload);
    let fnv = Fnv::of(payload);
    let h = Hdr {
        kind,
        flags: 0,
        nic: nic as u16,
        seq,
        len: (frame_len - PAYLOAD) as u32,
        fnv,
        aux: seed,
    };
    write(frame, src, &h);
    fnv
}
