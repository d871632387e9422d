//! The virtio 1.x PCI transport (virtio spec 4.1, "modern" only): a PCI
//! function whose 64-bit BAR 0 holds the common configuration, the ISR
//! byte, the device configuration, the queue notification doorbells and the
//! MSI-X table and PBA; vendor capabilities tell the driver where each is.
//! Queue doorbells are ioeventfds, so a notification never leaves KVM;
//! interrupts are MSI-X vectors through irqfds.
//!
//! BAR 0 layout:
//! ```text
//! 0x0000 common configuration     0x3000 notify: queue i at 0x3000 + 4*i
//! 0x1000 ISR status               0x8000 MSI-X table
//! 0x2000 device configuration     0xe000 MSI-X PBA
//! ```

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{ActiveQueue, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::bus::{Bus, BusDevice};
use crate::devices::pci_host::PciFunction;
use crate::devices::{le_read, le_write};
use crate::interrupts::MsiRouter;
use crate::memory::GuestMemoryMmap;
use crate::pci::config::{BarKind, BarMove, PciConfig};
use crate::pci::msix::{msix_capability, Msix};

/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x1_0000;
const COMMON_CFG: u64 = 0x0000;
const COMMON_CFG_LEN: u64 = 0x40;
const ISR_CFG: u64 = 0x1000;
const DEVICE_CFG: u64 = 0x2000;
const DEVICE_CFG_LEN: u64 = 0x1000;
const NOTIFY_CFG: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x8000;
const MSIX_PBA: u64 = 0xe000;
/// Most queues the notify region has room for.
pub const MAX_QUEUES: usize = 1024;

/// virtio PCI capability types (4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
/// PCI capability ID for vendor-specific capabilities.
const PCI_CAP_VENDOR: u8 = 0x09;

/// Device status bits the transport acts on (2.1).
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_NEEDS_RESET: u8 = 0x40;
/// "No vector" for config_msix_vector and queue_msix_vector.
const NO_VECTOR: u16 = 0xffff;

/// The virtio vendor ID and the modern device ID base (4.1.2).
const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;

/// What the driver programmed for one queue, before DRIVER_OK.
#[derive(Clone)]
struct QueueSetup {
    max_size: u16,
    size: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

/// The MSI-X vector each queue and the configuration change use, shared
/// with the device's workers through the interrupt object.
struct Vectors {
    config: AtomicU16,
    queues: Vec<AtomicU16>,
}

/// How a device behind this transport interrupts: the vector the driver
/// chose, through MSI-X (which honours masking); the ISR byte records the
/// cause for a driver that polls.
struct MsixInterrupt {
    msix: Arc<Msix>,
    vectors: Arc<Vectors>,
    isr: Arc<AtomicU8>,
}

impl VirtioInterrupt for MsixInterrupt {
    fn trigger_queue(&self, queue: u16) {
        self.isr.fetch_or(1, Ordering::SeqCst);
        if let Some(v) = self.vectors.queues.get(queue as usize) {
            let vector = v.load(Ordering::SeqCst);
            if vector != NO_VECTOR {
                self.msix.trigger(vector);
            }
        }
    }

    fn trigger_config(&self) {
        self.isr.fetch_or(2, Ordering::SeqCst);
        let vector = self.vectors.config.load(Ordering::SeqCst);
        if vector != NO_VECTOR {
            self.msix.trigger(vector);
        }
    }
}

/// Errors from creating the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("device has {0} queues; the transport supports 1 to {MAX_QUEUES}")]
    QueueCount(usize),
    #[error("PCI configuration: {0}")]
    Pci(String),
    #[error("MSI-X: {0}")]
    Msix(String),
    #[error("cannot create or register a queue doorbell: {0}")]
    Notify(String),
}

/// A virtio device on the PCI bus.
pub struct VirtioPci {
    device: Box<dyn VirtioDevice>,
    config: PciConfig,
    msix: Arc<Msix>,
    msix_cap: usize,
    vectors: Arc<Vectors>,
    isr: Arc<AtomicU8>,
    queues: Vec<QueueSetup>,
    notify: Vec<Arc<EventFd>>,
    status: u8,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    config_generation: u8,
    activated: bool,
    mem: GuestMemoryMmap,
    vm: Arc<VmFd>,
    mmio: Arc<Bus>,
    bar: u64,
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    let len: u8 = if extra.is_some() { 20 } else { 16 };
    let mut cap = vec![PCI_CAP_VENDOR, 0, len, cfg_type, 0, 0, 0, 0];
    cap.extend_from_slice(&(offset as u32).to_le_bytes());
    cap.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(x) = extra {
        cap.extend_from_slice(&x.to_le_bytes());
    }
    cap
}

impl VirtioPci {
    /// Puts `device` behind a transport whose BAR 0 is at `bar` (64 KiB
    /// aligned, inside a PCI MMIO window), with one MSI-X vector per queue
    /// plus one for configuration changes.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        bar: u64,
        mem: GuestMemoryMmap,
        vm: Arc<VmFd>,
        mmio: Arc<Bus>,
        router: Arc<MsiRouter>,
    ) -> Result<Self, TransportError> {
        let sizes = device.queue_max_sizes();
        if sizes.is_empty() || sizes.len() > MAX_QUEUES {
            return Err(TransportError::QueueCount(sizes.len()));
        }
        let pci_err = |e: crate::pci::PciError| TransportError::Pci(e.to_string());
        let device_id = VIRTIO_PCI_DEVICE_BASE + device.device_type() as u16;
        let class = match device.device_type() {
            super::VIRTIO_ID_BLOCK => 0x01_8000,
            super::VIRTIO_ID_NET => 0x02_0000,
            _ => 0xff_0000,
        };
        let mut config = PciConfig::new(
            VIRTIO_PCI_VENDOR,
            device_id,
            class,
            1,
            VIRTIO_PCI_VENDOR,
            0x40,
        );
        config
            .add_bar(0, bar, BAR_SIZE, BarKind::Mmio64)
            .map_err(pci_err)?;
        let caps = [
            vendor_cap(CAP_COMMON, COMMON_CFG, COMMON_CFG_LEN, None),
            vendor_cap(CAP_ISR, ISR_CFG, 1, None),
            vendor_cap(CAP_DEVICE, DEVICE_CFG, DEVICE_CFG_LEN, None),
            vendor_cap(
                CAP_NOTIFY,
                NOTIFY_CFG,
                (sizes.len() as u64) * NOTIFY_MULTIPLIER as u64,
                Some(NOTIFY_MULTIPLIER),
            ),
        ];
        for cap in caps {
            config
                .add_capability(&cap, &vec![0; cap.len()])
                .map_err(pci_err)?;
        }
        let vectors = sizes.len() as u16 + 1;
        let (cap, writable) = msix_capability(vectors, 0, MSIX_TABLE as u32, 0, MSIX_PBA as u32);
        let msix_cap = config.add_capability(&cap, &writable).map_err(pci_err)?;
        let msix =
            Arc::new(Msix::new(vectors, router).map_err(|e| TransportError::Msix(e.to_string()))?);

        let mut notify = Vec::with_capacity(sizes.len());
        for i in 0..sizes.len() {
            let evt =
                EventFd::new(EFD_NONBLOCK).map_err(|e| TransportError::Notify(e.to_string()))?;
            vm.register_ioevent(
                &evt,
                &IoEventAddress::Mmio(bar + NOTIFY_CFG + 4 * i as u64),
                NoDatamatch,
            )
            .map_err(|e| TransportError::Notify(e.to_string()))?;
            notify.push(Arc::new(evt));
        }
        Ok(VirtioPci {
            queues: sizes
                .iter()
                .map(|&max| QueueSetup {
                    max_size: max,
                    size: max,
                    enabled: false,
                    desc: 0,
                    driver: 0,
                    device: 0,
                })
                .collect(),
            vectors: Arc::new(Vectors {
                config: AtomicU16::new(NO_VECTOR),
                queues: sizes.iter().map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            }),
            device,
            config,
            msix,
            msix_cap,
            isr: Arc::new(AtomicU8::new(0)),
            notify,
            status: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            config_generation: 0,
            activated: false,
            mem,
            vm,
            mmio,
            bar,
        })
    }

    /// Stops the device's workers: the VM is going away.
    pub fn shutdown(&mut self) {
        self.activated = false;
        self.device.shutdown();
    }

    /// Where BAR 0 is now.
    pub fn bar_address(&self) -> u64 {
        self.bar
    }

    fn device_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected(&mut self) -> Option<&mut QueueSetup> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Back to the state after power-on, as a write of 0 to device_status asks.
    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.isr.store(0, Ordering::SeqCst);
        self.vectors.config.store(NO_VECTOR, Ordering::SeqCst);
        for (q, v) in self.queues.iter_mut().zip(&self.vectors.queues) {
            *q = QueueSetup {
                max_size: q.max_size,
                size: q.max_size,
                enabled: false,
                desc: 0,
                driver: 0,
                device: 0,
            };
            v.store(NO_VECTOR, Ordering::SeqCst);
        }
    }

    fn set_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        // FEATURES_OK only sticks if the driver accepted nothing we did not offer.
        if value & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let ok = self.driver_features & !self.device_features() == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                log::debug!(
                    "virtio: driver features {:#x} refused",
                    self.driver_features
                );
                value &= !STATUS_FEATURES_OK;
            }
        }
        self.status = value;
        if value & STATUS_DRIVER_OK != 0 && value & STATUS_FEATURES_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mut active = Vec::new();
        for (i, setup) in self.queues.iter().enumerate() {
            if !setup.enabled {
                continue;
            }
            match self.build_queue(setup) {
                Ok(queue) => active.push(ActiveQueue {
                    index: i as u16,
                    queue,
                    notify: self.notify[i].clone(),
                }),
                Err(msg) => {
                    log::debug!("virtio: queue {i} is invalid: {msg}");
                    return self.needs_reset();
                }
            }
        }
        let interrupt = Arc::new(MsixInterrupt {
            msix: self.msix.clone(),
            vectors: self.vectors.clone(),
            isr: self.isr.clone(),
        });
        match self
            .device
            .activate(self.mem.clone(), self.driver_features, active, interrupt)
        {
            Ok(()) => self.activated = true,
            Err(e) => {
                log::debug!("virtio: activation failed: {e}");
                self.needs_reset();
            }
        }
    }

    fn build_queue(&self, setup: &QueueSetup) -> Result<Queue, String> {
        let mut queue = Queue::new(setup.max_size).map_err(|e| format!("{e:?}"))?;
        queue
            .try_set_size(setup.size)
            .map_err(|e| format!("size {}: {e:?}", setup.size))?;
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(setup.desc);
        queue.set_desc_table_address(lo, hi);
        let (lo, hi) = split(setup.driver);
        queue.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(setup.device);
        queue.set_used_ring_address(lo, hi);
        queue.set_event_idx(self.driver_features & super::VIRTIO_RING_F_EVENT_IDX != 0);
        queue.set_ready(true);
        if !queue.is_valid(&self.mem) {
            return Err("rings are misaligned or outside guest memory".into());
        }
        Ok(queue)
    }

    /// The device cannot go on until the driver resets it (2.1.1).
    fn needs_reset(&mut self) {
        self.status |= STATUS_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        let interrupt = MsixInterrupt {
            msix: self.msix.clone(),
            vectors: self.vectors.clone(),
            isr: self.isr.clone(),
        };
        interrupt.trigger_config();
    }

    fn read_common(&mut self, offset: u64, data: &mut [u8]) {
        let q = self.queues.get(self.queue_select as usize).cloned();
        let qv = self
            .vectors
            .queues
            .get(self.queue_select as usize)
            .map(|v| v.load(Ordering::SeqCst));
        let features = self.device_features();
        let value: u64 = match offset {
            0x00 => self.device_feature_select as u64,
            0x04 => match self.device_feature_select {
                0 => features & 0xffff_ffff,
                1 => features >> 32,
                _ => 0,
            },
            0x08 => self.driver_feature_select as u64,
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => self.vectors.config.load(Ordering::SeqCst) as u64,
            0x12 => self.queues.len() as u64,
            0x14 => self.status as u64,
            0x15 => self.config_generation as u64,
            0x16 => self.queue_select as u64,
            0x18 => q.as_ref().map_or(0, |q| q.size as u64),
            0x1a => qv.unwrap_or(NO_VECTOR) as u64,
            0x1c => q.as_ref().map_or(0, |q| q.enabled as u64),
            // queue_notify_off: queue i's doorbell is at i * multiplier.
            0x1e => self.queue_select as u64,
            0x20 => q.as_ref().map_or(0, |q| q.desc),
            0x24 => q.as_ref().map_or(0, |q| q.desc >> 32),
            0x28 => q.as_ref().map_or(0, |q| q.driver),
            0x2c => q.as_ref().map_or(0, |q| q.driver >> 32),
            0x30 => q.as_ref().map_or(0, |q| q.device),
            0x34 => q.as_ref().map_or(0, |q| q.device >> 32),
            _ => 0,
        };
        le_write(data, value);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let value = le_read(data);
        // Queue registers may only change before DRIVER_OK (4.1.4.3.2).
        let queue_writable = self.status & STATUS_DRIVER_OK == 0;
        let set_lo = |field: &mut u64, v: u64| *field = (*field & !0xffff_ffff) | (v & 0xffff_ffff);
        let set_hi = |field: &mut u64, v: u64| *field = (*field & 0xffff_ffff) | (v << 32);
        match offset {
            0x00 => self.device_feature_select = value as u32,
            0x08 => self.driver_feature_select = value as u32,
            0x0c if self.status & STATUS_FEATURES_OK == 0 => match self.driver_feature_select {
                0 => set_lo(&mut self.driver_features, value),
                1 => set_hi(&mut self.driver_features, value),
                _ => {}
            },
            0x10 => self
                .vectors
                .config
                .store(self.checked_vector(value as u16), Ordering::SeqCst),
            0x14 => self.set_status(value as u8),
            0x16 => self.queue_select = value as u16,
            0x1a => {
                let vector = self.checked_vector(value as u16);
                if let Some(v) = self.vectors.queues.get(self.queue_select as usize) {
                    v.store(vector, Ordering::SeqCst);
                }
            }
            _ if !queue_writable => {
                log::debug!("virtio: queue register {offset:#x} written after DRIVER_OK")
            }
            0x18 => {
                if let Some(q) = self.selected() {
                    // A size that is not a power of two or exceeds the
                    // maximum fails at activation, as the spec allows.
                    q.size = value as u16;
                }
            }
            0x1c => {
                if let Some(q) = self.selected() {
                    q.enabled = value & 1 == 1;
                }
            }
            0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34 => {
                if let Some(q) = self.selected() {
                    let field = match offset & !0x7 {
                        0x20 => &mut q.desc,
                        0x28 => &mut q.driver,
                        _ => &mut q.device,
                    };
                    if offset & 0x4 == 0 {
                        if data.len() == 8 {
                            *field = value;
                        } else {
                            set_lo(field, value);
                        }
                    } else {
                        set_hi(field, value);
                    }
                }
            }
            _ => log::debug!("virtio: ignored write {value:#x} at common config {offset:#x}"),
        }
    }

    /// A vector number the table has, or NO_VECTOR (the driver reads the
    /// register back to learn it was refused).
    fn checked_vector(&self, vector: u16) -> u16 {
        if (vector as usize) < self.queues.len() + 1 {
            vector
        } else {
            NO_VECTOR
        }
    }

    /// The guest moved BAR 0: move the MMIO range and the doorbells.
    fn move_bar(&mut self, mv: BarMove) {
        if mv.index != 0 || mv.new == self.bar {
            return;
        }
        for (i, evt) in self.notify.iter().enumerate() {
            let old = IoEventAddress::Mmio(self.bar + NOTIFY_CFG + 4 * i as u64);
            let new = IoEventAddress::Mmio(mv.new + NOTIFY_CFG + 4 * i as u64);
            if let Err(e) = self.vm.unregister_ioevent(evt, &old, NoDatamatch) {
                log::debug!("virtio: unregistering doorbell {i}: {e}");
            }
            if let Err(e) = self.vm.register_ioevent(evt, &new, NoDatamatch) {
                log::debug!("virtio: registering doorbell {i} at {:#x}: {e}", mv.new);
            }
        }
        match self.mmio.remove(self.bar) {
            Some(dev) => {
                if let Err(e) = self.mmio.insert(dev, mv.new, BAR_SIZE) {
                    // Overlaps another device: the BAR stays unmapped until
                    // the guest moves it somewhere sane.
                    log::debug!("virtio: BAR 0 cannot move to {:#x}: {e}", mv.new);
                }
            }
            None => log::debug!("virtio: BAR 0 was not mapped at {:#x}", self.bar),
        }
        self.bar = mv.new;
    }
}

impl BusDevice for VirtioPci {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            o if o < COMMON_CFG + COMMON_CFG_LEN => self.read_common(o, data),
            ISR_CFG => {
                // Reading the ISR acknowledges it (4.1.4.5).
                if let Some(b) = data.first_mut() {
                    *b = self.isr.swap(0, Ordering::SeqCst);
                }
            }
            o if (DEVICE_CFG..DEVICE_CFG + DEVICE_CFG_LEN).contains(&o) => {
                self.device.read_config(o - DEVICE_CFG, data)
            }
            o if (MSIX_TABLE..MSIX_PBA).contains(&o) => self.msix.read_table(o - MSIX_TABLE, data),
            o if o >= MSIX_PBA => self.msix.read_pba(o - MSIX_PBA, data),
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_CFG + COMMON_CFG_LEN => self.write_common(o, data),
            o if (DEVICE_CFG..DEVICE_CFG + DEVICE_CFG_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE_CFG, data)
            }
            o if (NOTIFY_CFG..MSIX_TABLE).contains(&o) => {
                // Doorbells are ioeventfds; a write that reaches userspace
                // anyway (KVM without ioeventfd support) rings it by hand.
                if let Some(evt) = self
                    .notify
                    .get(((o - NOTIFY_CFG) / NOTIFY_MULTIPLIER as u64) as usize)
                {
                    let _ = evt.write(1);
                }
            }
            o if (MSIX_TABLE..MSIX_PBA).contains(&o) => self.msix.write_table(o - MSIX_TABLE, data),
            _ => log::debug!("virtio: ignored write at BAR offset {offset:#x}"),
        }
    }
}

impl PciFunction for VirtioPci {
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config.read(reg)
    }

    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) {
        if let Some(mv) = self.config.write(reg, offset, data) {
            self.move_bar(mv);
        }
        // The MSI-X message control word (enable, function mask) lives in
        // the capability; pass changes on.
        let control_at = self.msix_cap + 2;
        let start = reg * 4 + offset;
        if start < control_at + 2 && control_at < start + data.len() {
            let bytes = self.config.capability_bytes(control_at, 2);
            let control = u16::from_le_bytes([
                bytes.first().copied().unwrap_or(0),
                bytes.get(1).copied().unwrap_or(0),
            ]);
            self.msix.set_message_control(control);
        }
    }
}

/// A transport shared between the PCI bus (configuration) and the MMIO bus (BAR 0).
pub type SharedVirtioPci = Arc<Mutex<VirtioPci>>;
