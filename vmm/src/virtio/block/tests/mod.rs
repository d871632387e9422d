//! Tests of the virtio-blk device: a driver played by hand over guest
//! memory (queue laid out by virtio-queue's `MockSplitQueue`), a temporary
//! file as the disk, and an interrupt that counts.
//!
//! `requests` and `hostile` run every test with both engines;
//! `device` covers config space, locking and the threaded path through
//! `activate`; `bench` holds the `#[ignore]`d measurements.

mod bench;
mod device;
mod hostile;
mod requests;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::disk::Disk;
use super::worker::{HandlerConfig, QueueHandler};
use super::*;
use crate::memory::GuestMemoryMmap;
use crate::virtio::VirtioInterrupt;

/// Descriptor flags.
pub(super) const F_NEXT: u16 = 1;
pub(super) const F_WRITE: u16 = 2;
pub(super) const F_INDIRECT: u16 = 4;

/// Where request buffers start in guest memory (the rings sit below).
const DATA_START: u64 = 0x10_0000;

/// Counts interrupts.
#[derive(Default)]
pub(super) struct CountingInterrupt {
    pub queue: AtomicUsize,
    pub config: AtomicUsize,
}

impl VirtioInterrupt for CountingInterrupt {
    fn trigger_queue(&self, _queue: u16) {
        self.queue.fetch_add(1, Ordering::SeqCst);
    }
    fn trigger_config(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
}

impl CountingInterrupt {
    pub fn queue_count(&self) -> usize {
        self.queue.load(Ordering::SeqCst)
    }
}

/// The byte pattern test images start with.
pub(super) fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(31) ^ (offset >> 9)) as u8
}

/// A temporary image of `size` bytes in `dir`, filled with `pattern`.
pub(super) fn image_in(dir: &Path, size: usize) -> TempFile {
    let file = TempFile::new_in(dir).expect("temp file");
    let data: Vec<u8> = (0..size as u64).map(pattern).collect();
    std::fs::write(file.as_path(), data).expect("write image");
    file
}

pub(super) fn image(size: usize) -> TempFile {
    image_in(&std::env::temp_dir(), size)
}

pub(super) fn disk_config(path: &Path, read_only: bool) -> DiskConfig {
    DiskConfig {
        path: path.to_path_buf(),
        read_only,
        serial: None,
        direct: false,
    }
}

pub(super) fn guest_memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("guest memory")
}

/// The driver side of one split queue, written straight into guest memory.
pub(super) struct Driver {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    pub desc_table: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    next_desc: u16,
    next_buf: u64,
    data_start: u64,
    avail_idx: u16,
}

impl Driver {
    /// Lays out a queue of `size` at guest address 0; returns the driver
    /// and the device-side `Queue`.
    pub fn new(mem: &GuestMemoryMmap, size: u16) -> (Driver, Queue) {
        Driver::new_at(mem, GuestAddress(0), size, DATA_START)
    }

    /// Like `new`, with the rings at `base` and buffers from `data_start`.
    pub fn new_at(
        mem: &GuestMemoryMmap,
        base: GuestAddress,
        size: u16,
        data_start: u64,
    ) -> (Driver, Queue) {
        let vq = MockSplitQueue::create(mem, base, size);
        let mut queue: Queue = vq.create_queue().expect("queue");
        // MockSplitQueue (0.18) puts the used ring `size` bytes after the
        // start of the avail ring's entries, not `2 * size + 2`: the used
        // ring overlaps the second half of the avail ring (and used_event).
        // Move the used ring to the next page.
        let used = vq.avail_addr().unchecked_add(0x1000);
        queue.set_used_ring_address(Some(used.0 as u32), Some((used.0 >> 32) as u32));
        let driver = Driver {
            mem: mem.clone(),
            size,
            desc_table: vq.desc_table_addr(),
            avail: vq.avail_addr(),
            used,
            next_desc: 0,
            next_buf: data_start,
            data_start,
            avail_idx: 0,
        };
        let end = used.unchecked_add(6 + 8 * u64::from(size));
        assert!(end.0 <= data_start || base.0 >= data_start + (1 << 20));
        assert!(queue.is_valid(mem));
        (driver, queue)
    }

    /// Allocates `len` bytes of guest memory (4 KiB-aligned).
    pub fn alloc(&mut self, len: u64) -> GuestAddress {
        let addr = self.next_buf;
        self.next_buf = (addr + len.max(1)).next_multiple_of(4096);
        GuestAddress(addr)
    }

    /// Forgets every buffer allocated so far.
    pub fn free_all(&mut self) {
        self.next_buf = self.data_start;
    }

    /// Writes descriptor `index`.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc_table.unchecked_add(16 * u64::from(index));
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).expect("descriptor");
    }

    /// Writes a chain of (address, length, device-writable) buffers into
    /// free descriptors (not yet made available); returns its head.
    pub fn chain(&mut self, bufs: &[(GuestAddress, u32, bool)]) -> u16 {
        assert!(bufs.len() <= usize::from(self.size));
        if usize::from(self.next_desc) + bufs.len() > usize::from(self.size) {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        for (i, (addr, len, write)) in bufs.iter().enumerate() {
            let index = head + i as u16;
            let last = i + 1 == bufs.len();
            let flags = if *write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.write_desc(index, addr.0, *len, flags, if last { 0 } else { index + 1 });
        }
        self.next_desc += bufs.len() as u16;
        head
    }

    /// Offers the chain at `head` to the device.
    pub fn make_available(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, self.avail.unchecked_add(4 + 2 * slot))
            .expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, self.avail.unchecked_add(2))
            .expect("avail idx");
    }

    /// `chain` + `make_available`.
    pub fn submit(&mut self, bufs: &[(GuestAddress, u32, bool)]) -> u16 {
        let head = self.chain(bufs);
        self.make_available(head);
        head
    }

    /// Sets `used_event` (for EVENT_IDX).
    pub fn set_used_event(&self, value: u16) {
        let at = self.avail.unchecked_add(4 + 2 * u64::from(self.size));
        self.mem.write_obj(value, at).expect("used_event");
    }

    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(self.used.unchecked_add(2))
            .expect("used idx")
    }

    /// The used element at position `n` (id, len).
    pub fn used_elem(&self, n: u16) -> (u32, u32) {
        let at = self.used.unchecked_add(4 + 8 * u64::from(n % self.size));
        (
            self.mem.read_obj(at).expect("id"),
            self.mem.read_obj(at.unchecked_add(4)).expect("len"),
        )
    }

    /// Builds a standard request: header, `data` buffers, status byte.
    /// The status byte is preset to 0xff so that "not written" shows.
    pub fn request(
        &mut self,
        req_type: u32,
        sector: u64,
        data: &[(GuestAddress, u32, bool)],
    ) -> Req {
        let header = self.alloc(16);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&req_type.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, header).expect("header");
        let status = self.alloc(1);
        self.mem.write_obj(0xffu8, status).expect("status");
        let mut bufs = vec![(header, 16, false)];
        bufs.extend_from_slice(data);
        bufs.push((status, 1, true));
        let head = self.submit(&bufs);
        Req { head, status }
    }

    /// A read of `len` bytes at `sector` into one fresh buffer.
    pub fn read(&mut self, sector: u64, len: u32) -> (Req, GuestAddress) {
        let buf = self.alloc(u64::from(len));
        (
            self.request(VIRTIO_BLK_T_IN, sector, &[(buf, len, true)]),
            buf,
        )
    }

    /// A write of `data` at `sector` from one fresh buffer.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Req {
        let buf = self.alloc(data.len() as u64);
        self.mem.write_slice(data, buf).expect("data");
        self.request(VIRTIO_BLK_T_OUT, sector, &[(buf, data.len() as u32, false)])
    }

    /// A discard or write-zeroes with the given (sector, sectors, flags).
    pub fn segments(&mut self, req_type: u32, segs: &[(u64, u32, u32)]) -> Req {
        let len = 16 * segs.len() as u64;
        let buf = self.alloc(len);
        for (i, (sector, n, flags)) in segs.iter().enumerate() {
            let at = buf.unchecked_add(16 * i as u64);
            self.mem.write_obj(*sector, at).expect("segment");
            self.mem
                .write_obj(*n, at.unchecked_add(8))
                .expect("segment");
            self.mem
                .write_obj(*flags, at.unchecked_add(12))
                .expect("segment");
        }
        self.request(req_type, 0, &[(buf, len as u32, false)])
    }

    pub fn read_bytes(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, addr).expect("read back");
        v
    }

    pub fn status(&self, req: &Req) -> u8 {
        self.mem.read_obj(req.status).expect("status")
    }

    /// The used length the device gave `req`'s chain (it must be there).
    pub fn used_len(&self, req: &Req) -> u32 {
        (0..self.used_idx())
            .map(|n| self.used_elem(n))
            .find(|(id, _)| *id == u32::from(req.head))
            .map(|(_, len)| len)
            .unwrap_or_else(|| panic!("chain {} not in the used ring", req.head))
    }
}

use vm_memory::Address;

/// A request the test submitted.
#[derive(Clone, Copy, Debug)]
pub(super) struct Req {
    pub head: u16,
    pub status: GuestAddress,
}

/// A device queue driven in the test's own thread.
pub(super) struct Rig {
    pub drv: Driver,
    pub handler: QueueHandler,
    pub irq: Arc<CountingInterrupt>,
    pub stats: Arc<BlockStats>,
    pub disk: Arc<Disk>,
}

pub(super) struct RigOptions {
    pub engine: Engine,
    pub queue_size: u16,
    pub mem_size: usize,
    pub serial: Option<&'static str>,
    pub writethrough: bool,
    pub event_idx: bool,
    /// Where the rings go (buffers start at 1 MiB regardless).
    pub ring_base: GuestAddress,
}

impl RigOptions {
    pub fn new(engine: Engine) -> RigOptions {
        RigOptions {
            engine,
            queue_size: 256,
            mem_size: 16 << 20,
            serial: None,
            writethrough: false,
            event_idx: false,
            ring_base: GuestAddress(0),
        }
    }
}

impl Rig {
    pub fn new(cfg: &DiskConfig, engine: Engine) -> Rig {
        Rig::with(cfg, RigOptions::new(engine))
    }

    pub fn with(cfg: &DiskConfig, opts: RigOptions) -> Rig {
        let mem = guest_memory(opts.mem_size);
        let (drv, mut queue) = Driver::new_at(&mem, opts.ring_base, opts.queue_size, DATA_START);
        queue.set_event_idx(opts.event_idx);
        let disk = Arc::new(Disk::open(cfg).expect("open disk"));
        let mut serial = [0u8; VIRTIO_BLK_ID_BYTES];
        if let Some(s) = opts.serial {
            serial[..s.len()].copy_from_slice(s.as_bytes());
        }
        let irq = Arc::new(CountingInterrupt::default());
        let stats = Arc::new(BlockStats::default());
        let handler = QueueHandler::new(
            HandlerConfig {
                index: 0,
                disk: disk.clone(),
                serial,
                stats: stats.clone(),
                interrupt: irq.clone(),
                writethrough: opts.writethrough,
                engine: opts.engine,
            },
            queue,
            mem,
        );
        if opts.engine == Engine::IoUring && handler.engine() != Engine::IoUring {
            eprintln!("note: io_uring is not available here; this test ran on the sync engine");
        }
        Rig {
            drv,
            handler,
            irq,
            stats,
            disk,
        }
    }

    /// Lets the device serve everything available and finish all I/O.
    pub fn run(&mut self) {
        self.handler.process_available();
        self.handler.drain();
    }
}

/// Runs each named `fn(Engine)` once per engine, as separate tests.
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {
        mod sync_engine {
            $( #[test] fn $name() { super::$name(super::Engine::Sync) } )*
        }
        mod io_uring_engine {
            $( #[test] fn $name() { super::$name(super::Engine::IoUring) } )*
        }
    };
}
pub(super) use both_engines;
