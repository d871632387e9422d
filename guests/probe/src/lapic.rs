//! The local APIC, xAPIC mode, through its MMIO page (from ring 3).

use crate::hw::{mmio_read32, mmio_write32};
use crate::time::Deadline;

pub const ID: u64 = 0x20;
pub const TPR: u64 = 0x80;
pub const SVR: u64 = 0xf0;
pub const ICR_LOW: u64 = 0x300;
pub const ICR_HIGH: u64 = 0x310;
pub const LVT_TIMER: u64 = 0x320;
pub const TIMER_INITIAL: u64 = 0x380;
pub const TIMER_DIVIDE: u64 = 0x3e0;

pub const SPURIOUS_VECTOR: u32 = 0xff;
pub const TIMER_VECTOR: u32 = 0x40;
const ICR_BUSY: u32 = 1 << 12;

pub struct Lapic {
    pub base: u64,
}

impl Lapic {
    pub fn new(base: u64) -> Lapic {
        Lapic { base }
    }

    pub fn read(&self, reg: u64) -> u32 {
        mmio_read32(self.base + reg)
    }

    pub fn write(&self, reg: u64, value: u32) {
        mmio_write32(self.base + reg, value)
    }

    /// Software-enable the APIC (spurious vector 0xff) and accept every priority.
    pub fn enable(&self) {
        self.write(TPR, 0);
        self.write(SVR, 0x100 | SPURIOUS_VECTOR);
    }

    pub fn id(&self) -> u32 {
        self.read(ID) >> 24
    }

    /// Send an IPI; false if the ICR still shows "send pending" after 10 ms.
    pub fn send_ipi(&self, dest: u32, low: u32) -> bool {
        self.write(ICR_HIGH, dest << 24);
        self.write(ICR_LOW, low);
        let d = Deadline::after_ms(10);
        while self.read(ICR_LOW) & ICR_BUSY != 0 {
            if d.expired() {
                return false;
            }
        }
        true
    }
}
