//! A type-0 PCI configuration space: 4 KiB, PCIe-sized, of which the first
//! 256 bytes are what mechanism #1 reaches. The header holds the IDs and
//! class, a command register with the I/O, memory, bus-master and
//! INTx-disable bits, a read-only status, up to six memory BARs and no
//! interrupt pin (these functions signal with MSI-X only). Capabilities
//! are appended as a list from 0x40, each with per-byte write masks.
//!
//! Every byte the guest can reach is either emulated or reads as zero and
//! ignores writes; no value written anywhere can make this code panic.
//!
//! BAR moves. A BAR write reports a [`BarMove`] when it leaves the BAR at
//! a new, complete address, and never for the sizing pattern (all address
//! bits set) or a write that restores the current address:
//! - a 32-bit BAR: on the write that changes it;
//! - a 64-bit BAR: on the write of its high dword, the second half in the
//!   order Linux uses (low, then high; it writes both even when the high
//!   dword does not change). A low-dword write alone only changes what the
//!   BAR reads back, so a half-written pair never moves the device.
//!
//! The move is reported whatever the command register's memory bit says;
//! the owner decides when to decode (see [`PciConfig::memory_space_enabled`]).

/// Size of the configuration space (PCIe extended).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Size of the conventional part, where the standard capabilities live.
pub const LEGACY_CONFIG_SIZE: usize = 256;
/// Number of BAR slots in a type-0 header.
pub const NUM_BARS: usize = 6;

/// Command register bits the guest may write.
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status: the function has a capability list.
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;

const VENDOR_ID: usize = 0x00;
const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const REVISION_ID: usize = 0x08;
const CACHE_LINE_SIZE: usize = 0x0c;
const BAR0: usize = 0x10;
const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
const FIRST_CAPABILITY: usize = 0x40;
/// Dword index of BAR 0.
const BAR0_REG: usize = BAR0 / 4;
/// BAR low bits: memory space, 64-bit type (0b10 in bits 2:1).
const BAR_TYPE_64: u32 = 0b100;

/// Errors from building a configuration space (device setup, not guest).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("BAR index {0} does not exist (a 64-bit BAR needs two slots of 0-5)")]
    BarIndex(usize),
    #[error("BAR slot {0} is already in use")]
    BarInUse(usize),
    #[error("BAR size {0:#x} is not a power of two of at least 16 bytes")]
    BarSize(u64),
    #[error("BAR address {addr:#x} is not aligned to its size {size:#x}")]
    BarAlignment { addr: u64, size: u64 },
    #[error("32-bit BAR at {addr:#x} of size {size:#x} does not fit below 4 GiB")]
    BarRange { addr: u64, size: u64 },
    #[error("a capability needs at least its 2-byte header, got {0} bytes")]
    CapabilityLength(usize),
    #[error("capability of {len} bytes has a write mask of {mask} bytes")]
    CapabilityMask { len: usize, mask: usize },
    #[error("no room for a {0}-byte capability below offset 0x100")]
    CapabilitySpace(usize),
}

/// The kind of memory a BAR decodes. 64-bit BARs take two slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Mmio32,
    Mmio64,
}

/// A BAR the guest moved: the owner should remap `size` bytes from `old`
/// to `new`. `index` is the BAR's (low) slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMove {
    pub index: usize,
    pub old: u64,
    pub new: u64,
    pub size: u64,
}

#[derive(Clone, Copy, Debug)]
struct Bar {
    kind: BarKind,
    size: u64,
    /// What the register holds (address bits only): the sizing pattern,
    /// a half-written pair or the current address.
    register: u64,
    /// Where the BAR is, as last reported.
    address: u64,
}

impl Bar {
    /// The address bits the guest can write.
    fn mask(&self) -> u64 {
        let mask = !(self.size - 1);
        match self.kind {
            BarKind::Mmio32 => mask & 0xffff_ffff,
            BarKind::Mmio64 => mask,
        }
    }

    /// Whether the register holds the sizing pattern in either dword.
    fn sizing(&self) -> bool {
        let mask = self.mask();
        let (lo_mask, hi_mask) = (mask as u32, (mask >> 32) as u32);
        let (lo, hi) = (self.register as u32, (self.register >> 32) as u32);
        (lo_mask != 0 && lo == lo_mask) || (hi_mask != 0 && hi == hi_mask)
    }

    /// Reports and commits the register as the new address if it is one.
    fn commit(&mut self, index: usize) -> Option<BarMove> {
        if self.sizing() || self.register == self.address {
            return None;
        }
        let old = std::mem::replace(&mut self.address, self.register);
        Some(BarMove {
            index,
            old,
            new: self.address,
            size: self.size,
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum BarSlot {
    Empty,
    Bar(Bar),
    /// The high dword of the 64-bit BAR in the slot below.
    Upper,
}

/// A type-0 configuration space.
pub struct PciConfig {
    bytes: [u8; CONFIG_SPACE_SIZE],
    /// Per byte, the bits the guest may change (BARs are handled apart).
    writable: [u8; CONFIG_SPACE_SIZE],
    bars: [BarSlot; NUM_BARS],
    /// (offset, length) of each capability, in list order.
    capabilities: Vec<(usize, usize)>,
}

impl PciConfig {
    /// A header with these IDs, `class_code` = class << 16 | subclass << 8
    /// | prog-if, command register clear, no BARs and no capabilities.
    pub fn new(
        vendor: u16,
        device: u16,
        class_code: u32,
        revision: u8,
        subsystem_vendor: u16,
        subsystem_id: u16,
    ) -> Self {
        let mut cfg = PciConfig {
            bytes: [0; CONFIG_SPACE_SIZE],
            writable: [0; CONFIG_SPACE_SIZE],
            bars: [BarSlot::Empty; NUM_BARS],
            capabilities: Vec::new(),
        };
        cfg.put(VENDOR_ID, &vendor.to_le_bytes());
        cfg.put(VENDOR_ID + 2, &device.to_le_bytes());
        let class = (class_code & 0x00ff_ffff) << 8 | u32::from(revision);
        cfg.put(REVISION_ID, &class.to_le_bytes());
        cfg.put(SUBSYSTEM_VENDOR_ID, &subsystem_vendor.to_le_bytes());
        cfg.put(SUBSYSTEM_VENDOR_ID + 2, &subsystem_id.to_le_bytes());
        let command =
            COMMAND_IO_SPACE | COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        cfg.writable[COMMAND..COMMAND + 2].copy_from_slice(&command.to_le_bytes());
        // Cache line size is a plain register; the header type (0, single
        // function), latency timer, BIST, interrupt pin, MIN_GNT and
        // MAX_LAT are read-only zero.
        cfg.writable[CACHE_LINE_SIZE] = 0xff;
        cfg.writable[INTERRUPT_LINE] = 0xff;
        cfg
    }

    /// Copies `data` into the space at `offset` (setup only, in range).
    fn put(&mut self, offset: usize, data: &[u8]) {
        if let Some(dst) = self.bytes.get_mut(offset..offset + data.len()) {
            dst.copy_from_slice(data);
        }
    }

    /// Declares BAR `index` at `addr`: `size` a power of two of at least
    /// 16 bytes, `addr` aligned to it. A 64-bit BAR also takes `index + 1`.
    pub fn add_bar(
        &mut self,
        index: usize,
        addr: u64,
        size: u64,
        kind: BarKind,
    ) -> Result<(), PciError> {
        let last = match kind {
            BarKind::Mmio32 => index,
            BarKind::Mmio64 => index.checked_add(1).ok_or(PciError::BarIndex(index))?,
        };
        if last >= NUM_BARS {
            return Err(PciError::BarIndex(index));
        }
        if let Some(used) = (index..=last).find(|&i| !matches!(self.bars[i], BarSlot::Empty)) {
            return Err(PciError::BarInUse(used));
        }
        if !size.is_power_of_two() || size < 16 {
            return Err(PciError::BarSize(size));
        }
        if addr & (size - 1) != 0 {
            return Err(PciError::BarAlignment { addr, size });
        }
        let bar = Bar {
            kind,
            size,
            register: addr,
            address: addr,
        };
        if addr & !bar.mask() != 0 {
            return Err(PciError::BarRange { addr, size });
        }
        self.bars[index] = BarSlot::Bar(bar);
        if kind == BarKind::Mmio64 {
            self.bars[last] = BarSlot::Upper;
        }
        Ok(())
    }

    /// Appends a standard capability: `bytes[0]` is its ID, `bytes[1]` is
    /// filled with the next pointer. `writable` holds a write mask per byte
    /// (the 2-byte header is always read-only). Returns its offset.
    pub fn add_capability(&mut self, bytes: &[u8], writable: &[u8]) -> Result<usize, PciError> {
        if bytes.len() < 2 {
            return Err(PciError::CapabilityLength(bytes.len()));
        }
        if writable.len() != bytes.len() {
            return Err(PciError::CapabilityMask {
                len: bytes.len(),
                mask: writable.len(),
            });
        }
        let offset = match self.capabilities.last() {
            Some(&(off, len)) => (off + len).next_multiple_of(4),
            None => FIRST_CAPABILITY,
        };
        let end = offset
            .checked_add(bytes.len())
            .filter(|&end| end <= LEGACY_CONFIG_SIZE)
            .ok_or(PciError::CapabilitySpace(bytes.len()))?;
        self.bytes[offset..end].copy_from_slice(bytes);
        self.bytes[offset + 1] = 0;
        self.writable[offset..end].copy_from_slice(writable);
        self.writable[offset] = 0;
        self.writable[offset + 1] = 0;
        match self.capabilities.last() {
            Some(&(prev, _)) => self.bytes[prev + 1] = offset as u8,
            None => {
                self.bytes[CAPABILITIES_POINTER] = offset as u8;
                let status = STATUS_CAPABILITIES_LIST.to_le_bytes();
                self.bytes[STATUS] |= status[0];
                self.bytes[STATUS + 1] |= status[1];
            }
        }
        self.capabilities.push((offset, bytes.len()));
        Ok(offset)
    }

    /// The 32-bit register at dword index `reg`; all-ones past the space.
    pub fn read(&self, reg: usize) -> u32 {
        if let Some(slot) = reg.checked_sub(BAR0_REG).filter(|&i| i < NUM_BARS) {
            return self.read_bar(slot);
        }
        let base = reg.checked_mul(4).filter(|&o| o < CONFIG_SPACE_SIZE);
        match base.and_then(|o| self.bytes.get(o..o + 4)) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => 0xffff_ffff,
        }
    }

    fn read_bar(&self, slot: usize) -> u32 {
        match self.bars[slot] {
            BarSlot::Empty => 0,
            BarSlot::Bar(bar) => {
                let kind = match bar.kind {
                    BarKind::Mmio32 => 0,
                    BarKind::Mmio64 => BAR_TYPE_64,
                };
                (bar.register as u32 & !0xf) | kind
            }
            BarSlot::Upper => match slot.checked_sub(1).map(|i| self.bars[i]) {
                Some(BarSlot::Bar(bar)) => (bar.register >> 32) as u32,
                _ => 0,
            },
        }
    }

    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` of register `reg`,
    /// through the write masks. Returns the BAR move it completes, if any.
    /// Accesses past the space or the register are ignored.
    pub fn write(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarMove> {
        let in_reg = matches!(data.len(), 1 | 2 | 4)
            && offset.checked_add(data.len()).is_some_and(|end| end <= 4);
        let base = reg.checked_mul(4).filter(|&b| b < CONFIG_SPACE_SIZE);
        let (true, Some(base)) = (in_reg, base) else {
            log::debug!("pci: ignored config write of {data:x?} at register {reg} + {offset}");
            return None;
        };
        if let Some(slot) = reg.checked_sub(BAR0_REG).filter(|&i| i < NUM_BARS) {
            return self.write_bar(slot, offset, data);
        }
        for (i, &byte) in data.iter().enumerate() {
            let at = base + offset + i;
            let mask = self.writable[at];
            self.bytes[at] = (self.bytes[at] & !mask) | (byte & mask);
        }
        None
    }

    fn write_bar(&mut self, slot: usize, offset: usize, data: &[u8]) -> Option<BarMove> {
        let mut dword = self.read_bar(slot).to_le_bytes();
        for (i, &byte) in data.iter().enumerate() {
            if let Some(b) = dword.get_mut(offset + i) {
                *b = byte;
            }
        }
        let value = u64::from(u32::from_le_bytes(dword));
        match self.bars[slot] {
            BarSlot::Empty => None,
            BarSlot::Bar(mut bar) => {
                bar.register = ((bar.register & !0xffff_ffff) | value) & bar.mask();
                let moved = match bar.kind {
                    BarKind::Mmio32 => bar.commit(slot),
                    BarKind::Mmio64 => None,
                };
                self.bars[slot] = BarSlot::Bar(bar);
                moved
            }
            BarSlot::Upper => {
                let low = slot.checked_sub(1)?;
                let BarSlot::Bar(mut bar) = self.bars[low] else {
                    return None;
                };
                bar.register = ((bar.register & 0xffff_ffff) | value << 32) & bar.mask();
                let moved = bar.commit(low);
                self.bars[low] = BarSlot::Bar(bar);
                moved
            }
        }
    }

    /// Where BAR `index` is (its last reported address); None for an empty
    /// slot or the high half of a 64-bit BAR.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        match self.bars.get(index)? {
            BarSlot::Bar(bar) => Some(bar.address),
            _ => None,
        }
    }

    /// Size of BAR `index`, as declared.
    pub fn bar_size(&self, index: usize) -> Option<u64> {
        match self.bars.get(index)? {
            BarSlot::Bar(bar) => Some(bar.size),
            _ => None,
        }
    }

    fn command(&self) -> u16 {
        u16::from_le_bytes([self.bytes[COMMAND], self.bytes[COMMAND + 1]])
    }

    /// Command bit 1: the function decodes its memory BARs.
    pub fn memory_space_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY_SPACE != 0
    }

    /// Command bit 2: the function may master the bus (DMA, MSI writes).
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    /// Raw bytes [offset, offset + len), cut short at the end of the space.
    pub fn capability_bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        let start = offset.min(CONFIG_SPACE_SIZE);
        let end = offset.saturating_add(len).min(CONFIG_SPACE_SIZE);
        self.bytes[start..end].to_vec()
    }

    /// Lets the owner update its capabilities' contents. Only bytes inside
    /// a capability's body change; its header and everything else stay.
    pub fn set_capability_bytes(&mut self, offset: usize, bytes: &[u8]) {
        for (i, &byte) in bytes.iter().enumerate() {
            let Some(at) = offset.checked_add(i) else {
                break;
            };
            let in_body = self
                .capabilities
                .iter()
                .any(|&(cap, len)| at >= cap + 2 && at < cap + len);
            if in_body {
                self.bytes[at] = byte;
            }
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
