//! What the fuzz targets share: a cursor over the fuzzer's bytes, a mock
//! guest memory (three regions: two adjacent, one after a hole), and split
//! virtqueues laid out in it from fuzzer bytes, descriptors, available ring
//! and all, as a hostile driver could write them.
//!
//! Guest memory layout (every run starts from zeroed memory):
//!
//! ```text
//! 0x0_0000  queue 0: descriptor table (+0x0), avail ring (+0x1000), used ring (+0x2000)
//! 0x0_4000  queue 1: the same
//! 0x0_8000  DATA: the rest of the fuzzer's bytes are copied here
//! 0x4_0000  second region starts (adjacent: buffers may straddle it)
//! 0x8_0000  hole
//! 0x10_0000 third region, 32 KiB
//! ```

use std::sync::OnceLock;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

pub use vmm::memory::GuestMemoryMmap;

/// Where the fuzzer's payload bytes land in guest memory.
pub const DATA: u64 = 0x8000;
/// Start of the region after the hole.
pub const HIGH: u64 = 0x10_0000;
/// The boundary between the two adjacent regions.
pub const SEAM: u64 = 0x4_0000;
/// Where queue `i`'s rings start.
pub fn queue_base(i: u64) -> u64 {
    i * 0x4000
}

/// Reads the fuzzer's bytes front to back; past the end, zeros.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// A length-prefixed (u8) string, lossily UTF-8.
    pub fn string(&mut self) -> String {
        let n = usize::from(self.u8());
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }
}

/// The mock guest memory, created once per process and zeroed by
/// [`guest_memory`] before each run.
pub fn guest_memory() -> GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    let mem = MEM
        .get_or_init(|| {
            GuestMemoryMmap::from_ranges(&[
                (GuestAddress(0), SEAM as usize),
                (GuestAddress(SEAM), SEAM as usize),
                (GuestAddress(HIGH), 0x8000),
            ])
            .expect("guest memory")
        })
        .clone();
    for region in mem.iter() {
        let zeros = vec![0u8; region.len() as usize];
        mem.write_slice(&zeros, region.start_addr())
            .expect("zero guest memory");
    }
    mem
}

/// Whether `[addr, addr + len)` lies in guest memory.
pub fn in_memory(mem: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
    len == 0 || GuestMemoryBackend::check_range(mem, GuestAddress(addr), len as usize)
}

/// Descriptor flags.
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// Most descriptors a queue can have here.
pub const MAX_QUEUE: u16 = 256;

/// A split queue written into guest memory at `queue_base(index)` from
/// the fuzzer's bytes. Per descriptor 6 bytes (flags, next, address word,
/// length word) whose flag byte's high bits ask for a raw 64-bit address
/// or raw 32-bit length instead; then the available ring.
pub struct FuzzQueue {
    pub size: u16,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub event_idx: bool,
    pub used: GuestAddress,
    /// The available index the driver published.
    pub avail_idx: u16,
}

impl FuzzQueue {
    pub fn build(
        mem: &GuestMemoryMmap,
        input: &mut Input,
        index: u64,
        event_idx: bool,
    ) -> Option<FuzzQueue> {
        let base = queue_base(index);
        let size = 1u16 << (input.u8() % 9);
        let (desc, avail, used) = (base, base + 0x1000, base + 0x2000);
        let count = u16::from(input.u8()).min(size);
        for i in 0..count {
            let f = input.u8();
            let next = if f & 0x80 != 0 {
                input.u16()
            } else {
                u16::from(input.u8())
            };
            let word = u64::from(input.u16());
            let addr = match (f >> 3) & 3 {
                0 => DATA + word * 4,
                1 => HIGH + word,
                2 => SEAM - 0x800 + word % 0x1000,
                _ => input.u64(),
            };
            let len_word = u32::from(input.u16());
            let len = if f & 0x20 != 0 { input.u32() } else { len_word };
            let flags = u16::from(f & 7) | if f & 0x40 != 0 { input.u16() & !7 } else { 0 };
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..].copy_from_slice(&next.to_le_bytes());
            mem.write_slice(&raw, GuestAddress(desc + 16 * u64::from(i)))
                .ok()?;
        }
        // The available ring: flags, idx, ring, used_event.
        let avail_flags = u16::from(input.u8() & 1);
        let n = input.u8();
        let idx = if n == 0xff { input.u16() } else { u16::from(n) };
        mem.write_obj(avail_flags, GuestAddress(avail)).ok()?;
        mem.write_obj(idx, GuestAddress(avail + 2)).ok()?;
        for slot in 0..u64::from(idx.min(size)) {
            let head = u16::from(input.u8());
            mem.write_obj(head, GuestAddress(avail + 4 + 2 * slot))
                .ok()?;
        }
        let used_event = u16::from(input.u8());
        mem.write_obj(used_event, GuestAddress(avail + 4 + 2 * u64::from(size)))
            .ok()?;

        let fq = FuzzQueue {
            size,
            desc: GuestAddress(desc),
            avail: GuestAddress(avail),
            event_idx,
            used: GuestAddress(used),
            avail_idx: idx,
        };
        fq.queue().is_valid(mem).then_some(fq)
    }

    /// The device's side of the queue, fresh (nothing popped yet), as the
    /// transport hands it over at DRIVER_OK.
    pub fn queue(&self) -> Queue {
        let mut queue = Queue::new(MAX_QUEUE).expect("queue");
        queue.try_set_size(self.size).expect("queue size");
        queue.set_desc_table_address(Some(self.desc.0 as u32), Some(0));
        queue.set_avail_ring_address(Some(self.avail.0 as u32), Some(0));
        queue.set_used_ring_address(Some(self.used.0 as u32), Some(0));
        queue.set_event_idx(self.event_idx);
        queue.set_ready(true);
        queue
    }

    /// The used ring's index.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(self.used.unchecked_add_raw(2)).unwrap_or(0)
    }

    /// Used element `n`: (id, len).
    pub fn used_elem(&self, mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let at = self.used.0 + 4 + 8 * u64::from(n % self.size);
        (
            mem.read_obj(GuestAddress(at)).unwrap_or(0),
            mem.read_obj(GuestAddress(at + 4)).unwrap_or(0),
        )
    }

    /// Most chains the device can pop: what was made available, or none
    /// when the index runs more than a queue ahead.
    pub fn poppable(&self) -> u16 {
        if self.avail_idx <= self.size {
            self.avail_idx
        } else {
            0
        }
    }

    /// Checks what the device published: the index moved by at most one
    /// element per chain it could pop, and each names a descriptor.
    pub fn check_used(&self, mem: &GuestMemoryMmap) {
        let idx = self.used_idx(mem);
        let max = self.poppable();
        assert!(idx <= max, "used idx {idx} > {max} available chains");
        for n in 0..idx.min(self.size) {
            let (id, _len) = self.used_elem(mem, n);
            assert!(id < u32::from(self.size), "used id {id} out of range");
        }
    }
}

/// Copies the payload to `DATA` (cut at the end of the first two regions).
pub fn write_payload(mem: &GuestMemoryMmap, payload: &[u8]) {
    let room = (2 * SEAM - DATA) as usize;
    let payload = &payload[..payload.len().min(room)];
    mem.write_slice(payload, GuestAddress(DATA))
        .expect("payload fits");
}

trait AddRaw {
    fn unchecked_add_raw(self, n: u64) -> GuestAddress;
}

impl AddRaw for GuestAddress {
    fn unchecked_add_raw(self, n: u64) -> GuestAddress {
        GuestAddress(self.0 + n)
    }
}

/// A file private to this process under /dev/shm (or the temp folder),
/// rewritten with `bytes`; its path.
pub fn scratch_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("utsuwa-fuzz-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).expect("write scratch file");
    path
}

/// A launcher that never starts a VM: InstanceStart is answered with
/// its error, and nothing reaches /dev/kvm.
pub struct NoLaunch;

impl utsuwa::api::instance::Launcher for NoLaunch {
    fn max_vcpus(&self) -> usize {
        32
    }
    fn launch(&mut self, _cfg: &vmm::config::VmConfig) -> Result<vmm::vm::RunningVm, String> {
        Err("fuzzing: no VM is started".into())
    }
}

/// A fresh API with no VM behind it.
pub fn api() -> utsuwa::api::Api {
    utsuwa::api::Api::new(utsuwa::api::instance::Instance::new(
        "fuzz".into(),
        Box::new(NoLaunch),
    ))
}

/// Whether a JSON document is safe to apply in a fuzzing process: the API
/// opens the files it names (drives, kernel, initrd: read-only, to check
/// them; logger and metrics: created, appended to). A document naming a
/// device ("dev" anywhere in a string: /dev/watchdog must never be opened)
/// or any file to create is not applied.
pub fn safe_to_apply(body: &[u8]) -> bool {
    fn strings_ok(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => !s.contains("dev"),
            serde_json::Value::Array(a) => a.iter().all(strings_ok),
            serde_json::Value::Object(o) => o
                .iter()
                .all(|(k, v)| !matches!(k.as_str(), "log_path" | "metrics_path") && strings_ok(v)),
            _ => true,
        }
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => strings_ok(&v),
        // Not JSON: refused before anything is opened.
        Err(_) => true,
    }
}

/// Checks an API response: a known status; JSON bodies parse; the wire
/// form's Content-Length is the body's.
pub fn check_response(resp: &utsuwa::api::http::Response) {
    assert!(
        matches!(resp.status, 200 | 204 | 400),
        "unexpected status {}",
        resp.status
    );
    if resp.content_type == "application/json" {
        serde_json::from_slice::<serde_json::Value>(&resp.body).expect("response is JSON");
    }
    if resp.status == 400 {
        let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("fault is JSON");
        assert!(v.get("fault_message").is_some_and(|m| m.is_string()));
    }
    let wire = resp.encode(false);
    if resp.status != 204 {
        let head = format!("Content-Length: {}\r\n", resp.body.len());
        assert!(wire.windows(head.len()).any(|w| w == head.as_bytes()));
        assert!(wire.ends_with(&resp.body));
    }
}
