//! The probe's own frame format (guests/probe/README.md, "net frames"):
//! the data pattern and checksums its payloads carry, the header, the
//! guest's HELLO, and the ICMP echo request the peer sends when `ping` is
//! not installed.

// ---- the data pattern and the checksum (as on disks) ----

fn pattern_word(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `len` bytes of the splitmix64 pattern of `seed` from offset 0.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len.div_ceil(8) as u64)
        .flat_map(|n| pattern_word(seed, n).to_le_bytes())
        .collect();
    v.truncate(len);
    v
}

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// FNV-1a 64 fed piecewise.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The Internet checksum of `data` (0 when `data` includes a correct one).
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = data
        .chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

// ---- the probe's frames (README "net frames") ----

pub const ETHERTYPE: u16 = 0x88b5;
pub const MAGIC: &[u8; 4] = b"UTSW";
pub const PAYLOAD: usize = 14 + 32;
pub const HELLO: u8 = 1;
pub const DATA_G2H: u8 = 2;
pub const DATA_H2G: u8 = 3;
pub const BENCH_G2H: u8 = 4;
pub const BENCH_H2G: u8 = 5;
pub const ACK: u8 = 6;
pub const GO: u8 = 7;
pub const DONE: u8 = 8;
pub const BENCH_SEED: u64 = 0x6265_6e63_6800_0000;
pub const TSO_SEED: u64 = 0x7473_6f00_0000_0000;
/// The host's own MAC on the frames it sends.
pub const HOST_MAC: [u8; 6] = [0x02, 0x48, 0x4f, 0x53, 0x54, 0x01];

pub fn g2h_seed(nic: u16, seq: u64) -> u64 {
    0x6732_6800_0000_0000 | u64::from(nic) << 32 | seq
}

pub fn h2g_seed(nic: u16, seq: u64) -> u64 {
    0x6832_6700_0000_0000 | u64::from(nic) << 32 | seq
}

/// Frame length of the guest's data frame `i` (frames of at most `max`).
pub fn guest_data_len(i: u64, max: usize) -> usize {
    [60, max, 64, 127, 256, 577, 1024, max - 1][(i % 8) as usize].clamp(60, max)
}

/// Frame length of the host's data frame `i`.
pub fn host_data_len(i: u64, max: usize) -> usize {
    [60, max, 1000, 64, 333, max - 1, 128, 777][(i % 8) as usize].clamp(60, max)
}

pub fn mac_str(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hdr {
    pub kind: u8,
    pub flags: u8,
    pub nic: u16,
    pub seq: u32,
    pub len: u32,
    pub fnv: u64,
    pub aux: u64,
}

impl Hdr {
    pub fn parse(f: &[u8]) -> Option<Hdr> {
        if f.len() < PAYLOAD || f[12..14] != ETHERTYPE.to_be_bytes() || &f[14..18] != MAGIC {
            return None;
        }
        let h = &f[14..PAYLOAD];
        Some(Hdr {
            kind: h[4],
            flags: h[5],
            nic: u16::from_le_bytes([h[6], h[7]]),
            seq: u32::from_le_bytes(h[8..12].try_into().unwrap()),
            len: u32::from_le_bytes(h[12..16].try_into().unwrap()),
            fnv: u64::from_le_bytes(h[16..24].try_into().unwrap()),
            aux: u64::from_le_bytes(h[24..32].try_into().unwrap()),
        })
    }

    /// The whole frame: Ethernet header (dst, HOST_MAC), this header (len
    /// and fnv from `payload`), the payload, padded to 60 bytes.
    pub fn frame(mut self, dst: [u8; 6], payload: &[u8]) -> Vec<u8> {
        self.len = payload.len() as u32;
        self.fnv = fnv1a64(payload);
        let mut f = Vec::with_capacity(PAYLOAD + payload.len());
        f.extend_from_slice(&dst);
        f.extend_from_slice(&HOST_MAC);
        f.extend_from_slice(&ETHERTYPE.to_be_bytes());
        f.extend_from_slice(MAGIC);
        f.extend_from_slice(&[self.kind, self.flags]);
        f.extend_from_slice(&self.nic.to_le_bytes());
        f.extend_from_slice(&self.seq.to_le_bytes());
        f.extend_from_slice(&self.len.to_le_bytes());
        f.extend_from_slice(&self.fnv.to_le_bytes());
        f.extend_from_slice(&self.aux.to_le_bytes());
        f.extend_from_slice(payload);
        f.resize(f.len().max(60), 0);
        f
    }
}

/// The guest's HELLO: what it will do.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hello {
    pub nic: u32,
    pub tx_frames: u32,
    pub rx_frames: u32,
    pub bench_bytes: u32,
    pub bench_frames: u32,
    pub window: u32,
    pub mtu: u32,
    pub flags: u32,
}

pub(super) fn parse_hello(p: &[u8]) -> Option<Hello> {
    let v: Vec<u32> = p
        .chunks_exact(4)
        .take(8)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (v.len() == 8).then(|| Hello {
        nic: v[0],
        tx_frames: v[1],
        rx_frames: v[2],
        bench_bytes: v[3],
        bench_frames: v[4],
        window: v[5],
        mtu: v[6],
        flags: v[7],
    })
}

pub(super) const RAW_PING_ID: u16 = 0x6873;

/// An ICMP echo request from HOST_MAC/`src` to `dst_mac`/`dst`.
pub fn echo_request(dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], seq: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 84, 0, 1, 0x40, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&RAW_PING_ID.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend((0..56).map(|i| i as u8));
    let c = inet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}
