//! Test data shared by the drivers: the splitmix64 pattern (README, "blk
//! data") and FNV-1a 64, fed piecewise.

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The pattern's little-endian u64 at byte offset 8n.
pub fn pattern_word(seed: u64, n: u64) -> u64 {
    mix64(seed.wrapping_add(n.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// Fill `buf` with the pattern as it lies at byte `offset` (8-aligned); a
/// tail shorter than 8 bytes gets the first bytes of its word.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let n0 = offset / 8;
    let mut chunks = buf.chunks_exact_mut(8);
    let mut j = 0;
    for w in &mut chunks {
        w.copy_from_slice(&pattern_word(seed, n0 + j).to_le_bytes());
        j += 1;
    }
    let tail = chunks.into_remainder();
    let n = tail.len();
    tail.copy_from_slice(&pattern_word(seed, n0 + j).to_le_bytes()[..n]);
}

/// `data` is the pattern at byte `offset` (8-aligned), tail included.
pub fn matches_pattern(seed: u64, offset: u64, data: &[u8]) -> bool {
    let n0 = offset / 8;
    let mut chunks = data.chunks_exact(8);
    let mut j = 0;
    for w in &mut chunks {
        if u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
            != pattern_word(seed, n0 + j)
        {
            return false;
        }
        j += 1;
    }
    let tail = chunks.remainder();
    tail == &pattern_word(seed, n0 + j).to_le_bytes()[..tail.len()]
}

/// FNV-1a, 64-bit, fed piecewise.
pub struct Fnv(pub u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }

    pub fn of(bytes: &[u8]) -> u64 {
        let mut f = Fnv::new();
        f.update(bytes);
        f.0
    }
}
