//! The vsock packet header (virtio spec 5.10.6): 44 little-endian bytes
//! in front of every packet in both directions, then `len` payload bytes.
//! Decoding takes any 44 bytes (the guest wrote them; nothing is trusted
//! until the muxer checked it); encoding is what the device sends.

/// Size of `struct virtio_vsock_hdr`.
pub const HEADER_LEN: usize = 44;

/// `type`: a stream socket, the only kind this device offers.
pub const TYPE_STREAM: u16 = 1;

/// Operations (`op`).
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive no more / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// A decoded header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn u16_at(b: &[u8; HEADER_LEN], at: usize) -> u16 {
    let mut v = [0u8; 2];
    v.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(v)
}

fn u32_at(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl Header {
    /// Field offsets: cids at 0 and 8, ports at 16 and 20, len 24, type
    /// 28, op 30, flags 32, buf_alloc 36, fwd_cnt 40.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// A name for log lines.
    pub fn op_name(&self) -> &'static str {
        match self.op {
            OP_REQUEST => "REQUEST",
            OP_RESPONSE => "RESPONSE",
            OP_RST => "RST",
            OP_SHUTDOWN => "SHUTDOWN",
            OP_RW => "RW",
            OP_CREDIT_UPDATE => "CREDIT_UPDATE",
            OP_CREDIT_REQUEST => "CREDIT_REQUEST",
            _ => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sit_where_the_spec_puts_them() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 5000,
            len: 4096,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: SHUTDOWN_SEND,
            buf_alloc: 256 << 10,
            fwd_cnt: 0xdead_beef,
        };
        let b = h.encode();
        assert_eq!(b[0], 0x08);
        assert_eq!(b[7], 0x01);
        assert_eq!(b[8], 2);
        assert_eq!(&b[16..20], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[20..24], &5000u32.to_le_bytes());
        assert_eq!(&b[24..28], &4096u32.to_le_bytes());
        assert_eq!(&b[28..30], &[1, 0]);
        assert_eq!(&b[30..32], &[5, 0]);
        assert_eq!(&b[32..36], &[2, 0, 0, 0]);
        assert_eq!(&b[40..44], &[0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(Header::decode(&b), h);
    }

    #[test]
    fn any_bytes_decode() {
        let b = [0xffu8; HEADER_LEN];
        let h = Header::decode(&b);
        assert_eq!(h.len, u32::MAX);
        assert_eq!(h.op_name(), "unknown");
        assert_eq!(h.encode(), b);
    }
}
