//! PCI bus 0 and its configuration space, reachable two ways: mechanism #1
//! (address at 0xcf8, data at 0xcfc) and PCIe ECAM (MMIO, described by the
//! MCFG table). Device 0 is the host bridge; later devices plug into the
//! same `PciBus`.

use std::sync::{Arc, Mutex};

use super::{le_read, le_write};
use crate::bus::BusDevice;
use crate::lifecycle::{ExitReason, ExitSignal, ResetSource};

/// A function on the bus, as its configuration space sees it.
pub trait PciFunction: Send {
    /// Reads the 32-bit register at `reg` (dword index, 0..1024).
    fn read_config(&mut self, reg: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` of register `reg`.
    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]);
}

/// Devices per bus.
pub const PCI_SLOTS: usize = 32;

/// Bus 0 with function 0 of each slot.
pub struct PciBus {
    slots: Vec<Option<Arc<Mutex<dyn PciFunction>>>>,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// A bus with the host bridge at 00:00.0.
    pub fn new() -> Self {
        let mut slots: Vec<Option<Arc<Mutex<dyn PciFunction>>>> = vec![None; PCI_SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(HostBridge)));
        PciBus { slots }
    }

    /// Plugs `function` into the first free slot; returns the slot.
    pub fn add(&mut self, function: Arc<Mutex<dyn PciFunction>>) -> Option<usize> {
        let slot = self.slots.iter().position(Option::is_none)?;
        self.slots[slot] = Some(function);
        Some(slot)
    }

    fn function(&self, bus: u8, dev: u8, func: u8) -> Option<&Arc<Mutex<dyn PciFunction>>> {
        if bus != 0 || func != 0 {
            return None;
        }
        self.slots.get(dev as usize)?.as_ref()
    }

    /// Reads `data.len()` bytes at byte `offset` of the function's config space.
    fn read(&self, bus: u8, dev: u8, func: u8, offset: usize, data: &mut [u8]) {
        let Some(f) = self.function(bus, dev, func) else {
            data.fill(0xff);
            return;
        };
        let value = f
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read_config(offset / 4);
        le_write(data, (value >> ((offset % 4) * 8)) as u64);
    }

    fn write(&self, bus: u8, dev: u8, func: u8, offset: usize, data: &[u8]) {
        if let Some(f) = self.function(bus, dev, func) {
            f.lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_config(offset / 4, offset % 4, data);
        }
    }
}

/// An access is valid if naturally aligned and within one register.
fn valid_access(offset: usize, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset % len == 0
}

/// Configuration mechanism #1 on ports 0xcf8..=0xcff, and the PC's reset
/// control register, which shares the range at 0xcf9.
pub struct PciConfigIo {
    bus: Arc<Mutex<PciBus>>,
    address: u32,
    exit: Arc<ExitSignal>,
}

/// Offset of the reset control register (port 0xcf9) in the range.
const RESET_CONTROL: u64 = 1;
/// Reset control: "reset CPU" (bit 2).
const RESET_CPU: u8 = 0x04;

impl PciConfigIo {
    pub fn new(bus: Arc<Mutex<PciBus>>, exit: Arc<ExitSignal>) -> Self {
        PciConfigIo {
            bus,
            address: 0,
            exit,
        }
    }

    /// Splits CONFIG_ADDRESS into (bus, device, function, register offset),
    /// or None when the enable bit is clear.
    fn target(&self, data_offset: usize) -> Option<(u8, u8, u8, usize)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let a = self.address;
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            (a & 0xfc) as usize + data_offset,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => le_write(data, self.address as u64),
            4..=7 => {
                let off = offset as usize - 4;
                match self.target(off) {
                    Some((b, d, f, reg)) if valid_access(off, data.len()) => self
                        .bus
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .read(b, d, f, reg, data),
                    _ => data.fill(0xff),
                }
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => self.address = le_read(data) as u32,
            // Linux's reboot=pci writes 0x02 then 0x06 here.
            RESET_CONTROL if data.len() == 1 && data[0] & RESET_CPU != 0 => self
                .exit
                .request(ExitReason::Reset(ResetSource::ResetControl)),
            4..=7 => {
                let off = offset as usize - 4;
                if let Some((b, d, f, reg)) = self.target(off) {
                    if valid_access(off, data.len()) {
                        self.bus
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .write(b, d, f, reg, data);
                    }
                }
            }
            _ => log::debug!("pci: ignored {}-byte write at 0xcf8+{offset}", data.len()),
        }
    }
}

/// PCIe ECAM: offset = bus << 20 | device << 15 | function << 12 | register.
pub struct PciConfigMmio {
    bus: Arc<Mutex<PciBus>>,
}

impl PciConfigMmio {
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        PciConfigMmio { bus }
    }

    fn decode(offset: u64) -> (u8, u8, u8, usize) {
        (
            (offset >> 20) as u8,
            ((offset >> 15) & 0x1f) as u8,
            ((offset >> 12) & 0x7) as u8,
            (offset & 0xfff) as usize,
        )
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (b, d, f, reg) = Self::decode(offset);
        if valid_access(reg, data.len()) {
            self.bus
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read(b, d, f, reg, data);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (b, d, f, reg) = Self::decode(offset);
        if valid_access(reg, data.len()) {
            self.bus
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write(b, d, f, reg, data);
        }
    }
}

/// The host bridge at 00:00.0: identity only, no BARs, writes ignored.
struct HostBridge;

/// Intel's ID for a virtual host bridge, the one other VMMs also present.
const HOST_BRIDGE_VENDOR: u32 = 0x8086;
const HOST_BRIDGE_DEVICE: u32 = 0x0d57;
/// Class 06 (bridge), subclass 00 (host bridge).
const HOST_BRIDGE_CLASS: u32 = 0x0600_0000;

impl PciFunction for HostBridge {
    fn read_config(&mut self, reg: usize) -> u32 {
        match reg {
            0 => (HOST_BRIDGE_DEVICE << 16) | HOST_BRIDGE_VENDOR,
            2 => HOST_BRIDGE_CLASS,
            // Header type 0, single function.
            3 => 0,
            _ => 0,
        }
    }

    fn write_config(&mut self, _reg: usize, _offset: usize, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> PciConfigIo {
        PciConfigIo::new(
            Arc::new(Mutex::new(PciBus::new())),
            Arc::new(ExitSignal::new().unwrap()),
        )
    }

    #[test]
    fn port_cf9_resets() {
        let mut io = io();
        io.write(RESET_CONTROL, &[0x02]);
        assert!(!io.exit.is_set(), "0x02 only selects a hard reset");
        io.write(RESET_CONTROL, &[0x06]);
        assert_eq!(
            io.exit.reason(),
            Some(ExitReason::Reset(ResetSource::ResetControl))
        );
    }

    fn select(io: &mut PciConfigIo, dev: u32, reg: u32) {
        io.write(0, &(0x8000_0000 | (dev << 11) | reg).to_le_bytes());
    }

    #[test]
    fn host_bridge_through_cf8() {
        let mut io = io();
        select(&mut io, 0, 0);
        let mut id = [0u8; 4];
        io.read(4, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0d57_8086);
        let mut vendor_hi = [0u8; 2];
        io.read(6, &mut vendor_hi);
        assert_eq!(u16::from_le_bytes(vendor_hi), 0x0d57);
        select(&mut io, 0, 8);
        io.read(4, &mut id);
        assert_eq!(u32::from_le_bytes(id) >> 8, 0x06_0000);
        let mut addr = [0u8; 4];
        io.read(0, &mut addr);
        assert_eq!(u32::from_le_bytes(addr), 0x8000_0008);
    }

    #[test]
    fn empty_slots_and_disabled_address_read_all_ones() {
        let mut io = io();
        select(&mut io, 5, 0);
        let mut id = [0u8; 4];
        io.read(4, &mut id);
        assert_eq!(id, [0xff; 4]);
        io.write(0, &0x0000_0000u32.to_le_bytes());
        io.read(4, &mut id);
        assert_eq!(id, [0xff; 4]);
        // Misaligned data access.
        select(&mut io, 0, 0);
        let mut word = [0u8; 2];
        io.read(5, &mut word);
        assert_eq!(word, [0xff; 2]);
    }

    #[test]
    fn ecam_agrees_with_cf8() {
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let mut ecam = PciConfigMmio::new(bus);
        let mut id = [0u8; 4];
        ecam.read(0, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0d57_8086);
        ecam.read(1 << 15, &mut id);
        assert_eq!(id, [0xff; 4], "slot 1 is empty");
        ecam.read(1 << 12, &mut id);
        assert_eq!(id, [0xff; 4], "function 1 does not exist");
        ecam.read(2, &mut id);
        assert_eq!(id, [0xff; 4], "misaligned");
        ecam.write(0, &[1, 2, 3, 4]);
    }
}
