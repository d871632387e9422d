//! Ethernet II, ARP (IPv4 over Ethernet), IPv4 and ICMP echo: just what the
//! `net` check needs to answer ARP requests and pings and to ping a peer.
//! Multi-byte fields are big-endian (network order); frames carry no FCS.

use core::fmt;

pub const ETH_HDR: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const BROADCAST: [u8; 6] = [0xff; 6];
const IP_HDR: usize = 20;
const ICMP_HDR: usize = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
/// Where the ICMP header starts in a frame the probe builds (no IP options).
pub const ICMP_START: usize = ETH_HDR + IP_HDR;

/// `aa:bb:cc:dd:ee:ff`
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// `a.b.c.d`, or `none`.
pub struct Ip(pub Option<[u8; 4]>);

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{}.{}.{}.{}", a[0], a[1], a[2], a[3]),
            None => f.write_str("none"),
        }
    }
}

pub fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

pub fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

/// One's-complement sum of 16-bit big-endian words (RFC 1071), unfolded;
/// an odd last byte is padded with zero.
pub fn csum_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// The sum folded to 16 bits (not complemented).
pub fn csum_fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data` (the value to store in the field).
pub fn checksum(data: &[u8]) -> u16 {
    !csum_fold(csum_add(0, data))
}

pub fn ethertype(frame: &[u8]) -> u16 {
    if frame.len() < ETH_HDR {
        0
    } else {
        be16(frame, 12)
    }
}

pub fn write_eth(buf: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    buf[..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    put16(buf, 12, ethertype);
}

pub struct Arp {
    pub oper: u16,
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tpa: [u8; 4],
}

/// An ARP packet for IPv4 over Ethernet, if `frame` is one.
pub fn parse_arp(frame: &[u8]) -> Option<Arp> {
    let a = frame.get(ETH_HDR..ETH_HDR + 28)?;
    if ethertype(frame) != ETHERTYPE_ARP
        || be16(a, 0) != 1
        || be16(a, 2) != ETHERTYPE_IPV4
        || a[4] != 6
        || a[5] != 4
    {
        return None;
    }
    Some(Arp {
        oper: be16(a, 6),
        sha: arr(a, 8),
        spa: arr(a, 14),
        tpa: arr(a, 24),
    })
}

/// ARP request (who has `tpa`, to broadcast) or reply (to `tha`); 60 bytes (padded).
pub fn build_arp(
    buf: &mut [u8],
    oper: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
) -> usize {
    let dst = if oper == ARP_REQUEST { BROADCAST } else { tha };
    write_eth(buf, dst, sha, ETHERTYPE_ARP);
    let a = &mut buf[ETH_HDR..60];
    a.fill(0);
    put16(a, 0, 1);
    put16(a, 2, ETHERTYPE_IPV4);
    a[4] = 6;
    a[5] = 4;
    put16(a, 6, oper);
    a[8..14].copy_from_slice(&sha);
    a[14..18].copy_from_slice(&spa);
    if oper == ARP_REPLY {
        a[18..24].copy_from_slice(&tha);
    }
    a[24..28].copy_from_slice(&tpa);
    60
}

/// An ICMP message in an IPv4 packet, checksums verified.
pub struct Icmp {
    pub src_mac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub kind: u8,
    pub code: u8,
    pub id: u16,
    pub seq: u16,
    /// The ICMP data (after the 8-byte header): `frame[data.0..data.1]`.
    pub data: (usize, usize),
}

pub enum IpError {
    /// Not IPv4, or not ICMP: not for this parser.
    NotIcmp,
    Malformed,
    BadIpChecksum,
    BadIcmpChecksum,
}

/// The ICMP message in `frame` (IPv4, unfragmented).
pub fn parse_icmp(frame: &[u8]) -> Result<Icmp, IpError> {
    if ethertype(frame) != ETHERTYPE_IPV4 {
        return Err(IpError::NotIcmp);
    }
    let ip = &frame[ETH_HDR..];
    if ip.len() < IP_HDR || ip[0] >> 4 != 4 {
        return Err(IpError::Malformed);
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(be16(ip, 2));
    if ihl < IP_HDR || total < ihl || total > ip.len() {
        return Err(IpError::Malformed);
    }
    if ip[9] != PROTO_ICMP {
        return Err(IpError::NotIcmp);
    }
    if checksum(&ip[..ihl]) != 0 {
        return Err(IpError::BadIpChecksum);
    }
    if be16(ip, 6) & 0x3fff != 0 {
        return Err(IpError::Malformed); // a fragment
    }
    let icmp = &ip[ihl..total];
    if icmp.len() < ICMP_HDR {
        return Err(IpError::Malformed);
    }
    if checksum(icmp) != 0 {
        return Err(IpError::BadIcmpChecksum);
    }
    let start = ETH_HDR + ihl;
    Ok(Icmp {
        src_mac: arr(frame, 6),
        src: arr(ip, 12),
        dst: arr(ip, 16),
        kind: icmp[0],
        code: icmp[1],
        id: be16(icmp, 4),
        seq: be16(icmp, 6),
        data: (start + ICMP_HDR, ETH_HDR + total),
    })
}

/// IPv4 header (no options, DF, TTL 64) for `payload_len` bytes of `proto`
/// after it, at `buf[ETH_HDR..]`, its checksum computed (the device cannot
/// offload it: virtio-net has one checksum offset per frame).
pub fn write_ipv4(
    buf: &mut [u8],
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    id: u16,
    payload_len: usize,
) {
    let ip = &mut buf[ETH_HDR..ETH_HDR + IP_HDR];
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip, 2, (IP_HDR + payload_len) as u16);
    put16(ip, 4, id);
    put16(ip, 6, 0x4000);
    ip[8] = 64;
    ip[9] = proto;
    put16(ip, 10, 0);
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = checksum(ip);
    put16(ip, 10, c);
}

/// An ICMP echo request or reply from (`src_mac`, `src`) to (`dst_mac`,
/// `dst`) with `data`, built into `buf`. With `offload` the ICMP checksum
/// is left to the device (field 0, which is also the partial sum: ICMP has
/// no pseudo-header); returns the frame length.
#[allow(clippy::too_many_arguments)]
pub fn build_echo(
    buf: &mut [u8],
    (dst_mac, src_mac): ([u8; 6], [u8; 6]),
    (src, dst): ([u8; 4], [u8; 4]),
    kind: u8,
    id: u16,
    seq: u16,
    data: &[u8],
    ip_id: u16,
    offload: bool,
) -> usize {
    let len = ICMP_START + ICMP_HDR + data.len();
    write_eth(buf, dst_mac, src_mac, ETHERTYPE_IPV4);
    write_ipv4(buf, src, dst, PROTO_ICMP, ip_id, ICMP_HDR + data.len());
    let icmp = &mut buf[ICMP_START..len];
    icmp[0] = kind;
    icmp[1] = 0;
    put16(icmp, 2, 0);
    put16(icmp, 4, id);
    put16(icmp, 6, seq);
    icmp[ICMP_HDR..].copy_from_slice(data);
    if !offload {
        let c = checksum(icmp);
        put16(icmp, 2, c);
    }
    len
}

/// The partial checksum of a TCP segment for the device to complete (and
/// for segmentation): the pseudo-header sum, folded, not complemented.
pub fn tcp_pseudo(src: [u8; 4], dst: [u8; 4], tcp_len: usize) -> u16 {
    let mut s = csum_add(0, &src);
    s = csum_add(s, &dst);
    s += u64::from(PROTO_TCP) + tcp_len as u64;
    csum_fold(s)
}
