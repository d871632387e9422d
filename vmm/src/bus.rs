//! The I/O port and MMIO buses: address ranges mapped to devices. A vCPU
//! exit for an address is dispatched to the one device that owns it, under
//! that device's own lock only; an address nobody owns reads as all-ones
//! and drops writes, as on a real PC.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device on a bus. `offset` is relative to the start of the range the
/// device was inserted at; `data` is 1, 2, 4 or 8 bytes (whatever the guest
/// used), little-endian.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors from placing devices on a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps a device already there")]
    Overlap { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
}

type Entry = (u64, Arc<Mutex<dyn BusDevice>>);

/// One address space (port I/O or MMIO).
#[derive(Default)]
pub struct Bus {
    /// Start address → (length, device). Written only when devices are
    /// added or a BAR moves; every exit takes the read side.
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at [base, base + len).
    pub fn insert(
        &self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let mut ranges = self.ranges.write().unwrap_or_else(|p| p.into_inner());
        let before = ranges.range(..end).next_back();
        if let Some((start, (l, _))) = before {
            if start + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        ranges.insert(base, (len, device));
        Ok(())
    }

    /// Removes the device at exactly `base`, if any.
    pub fn remove(&self, base: u64) -> Option<Arc<Mutex<dyn BusDevice>>> {
        let mut ranges = self.ranges.write().unwrap_or_else(|p| p.into_inner());
        ranges.remove(&base).map(|(_, d)| d)
    }

    /// The device owning `addr` and the offset into it. An access that
    /// straddles the end of a device's range is not its.
    fn resolve(&self, addr: u64, len: usize) -> Option<(Arc<Mutex<dyn BusDevice>>, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(|p| p.into_inner());
        let (start, (range_len, dev)) = ranges.range(..=addr).next_back()?;
        let offset = addr - start;
        (offset.checked_add(len as u64)? <= *range_len).then(|| (dev.clone(), offset))
    }

    /// Dispatches a read; returns false (and fills all-ones) if nobody owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                dev.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                log::debug!("read of {} bytes at unowned address {addr:#x}", data.len());
                false
            }
        }
    }

    /// Dispatches a write; returns false (and drops it) if nobody owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                dev.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write(offset, data);
                true
            }
            None => {
                log::debug!("write of {data:x?} at unowned address {addr:#x} dropped");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(dev.lock().unwrap().last_write, Some((0, vec![0x41])));
    }

    #[test]
    fn unowned_addresses_read_all_ones() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 0x10)
            .unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0xfff, &mut data));
        assert_eq!(data, [0xff; 4]);
        // Straddling the end of the device is not the device's.
        assert!(!bus.read(0x100e, &mut data));
        assert!(!bus.write(0x1010, &[1]));
        assert!(!bus.read(u64::MAX, &mut data));
    }

    #[test]
    fn overlaps_and_empty_ranges_are_refused() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x100, 0x10)
            .unwrap();
        let dev = || Arc::new(Mutex::new(Recorder::default()));
        assert!(bus.insert(dev(), 0x10f, 1).is_err());
        assert!(bus.insert(dev(), 0xf8, 0x9).is_err());
        assert!(bus.insert(dev(), 0x0, 0).is_err());
        assert!(bus.insert(dev(), u64::MAX, 2).is_err());
        bus.insert(dev(), 0x110, 1).unwrap();
        bus.insert(dev(), 0xf0, 0x10).unwrap();
        assert!(bus.remove(0x110).is_some());
    }
}
