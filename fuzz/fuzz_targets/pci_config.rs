//! PCI configuration space and MSI-X: a function laid out like a virtio
//! transport's (a 64-bit and a 32-bit BAR, vendor capabilities, MSI-X),
//! then a sequence of guest accesses from the fuzzer: configuration reads
//! and writes of any size and alignment (BAR sizing and moves included,
//! MSI-X message control passed on as the transport does), MSI-X table
//! and PBA reads and writes, triggers and resets. MSI-X routes go to a
//! router that builds KVM's routing table without a VM.
//!
//! Bytes: vector count, then operations until the input ends.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use utsuwa_fuzz::Input;
use vmm::fuzzing::MsiRouter;
use vmm::pci::config::{CONFIG_SPACE_SIZE, NUM_BARS};
use vmm::pci::msix::{msix_capability, pba_len, table_len};
use vmm::pci::{BarKind, Msix, PciConfig};

const BAR0: (u64, u64) = (0xe000_0000, 0x1_0000);
const BAR2: (u64, u64) = (0xc000_0000, 0x1000);
const VENDOR_DEVICE: u32 = 0x1041_1af4;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let vectors = u16::from(input.u8() % 80) + 1;

    let mut cfg = PciConfig::new(0x1af4, 0x1041, 0x02_0000, 1, 0x1af4, 0x40);
    cfg.add_bar(0, BAR0.0, BAR0.1, BarKind::Mmio64).unwrap();
    cfg.add_bar(2, BAR2.0, BAR2.1, BarKind::Mmio32).unwrap();
    let vendor = [0x09, 0, 16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0];
    cfg.add_capability(&vendor, &[0; 16]).unwrap();
    let (cap, writable) = msix_capability(vectors, 0, 0x8000, 0, 0x9000);
    let msix_cap = cfg.add_capability(&cap, &writable).unwrap();
    let router = Arc::new(MsiRouter::without_kvm());
    let msix = Msix::new(vectors, router.clone()).expect("vectors");

    while !input.is_empty() {
        match input.u8() % 8 {
            0 => {
                let reg = usize::from(input.u16() % 1100);
                let offset = usize::from(input.u8() % 5);
                let len = [1, 2, 4, 3, 8][usize::from(input.u8() % 5)];
                let bytes = input.bytes(len).to_vec();
                if let Some(mv) = cfg.write(reg, offset, &bytes) {
                    assert!(mv.index < NUM_BARS && mv.new != mv.old);
                    assert_eq!(Some(mv.size), cfg.bar_size(mv.index));
                    assert_eq!(mv.new % mv.size, 0, "BAR moved to an unaligned address");
                    assert_eq!(Some(mv.new), cfg.bar_address(mv.index));
                    if mv.index == 2 {
                        assert!(mv.new + mv.size <= 1 << 32, "32-bit BAR above 4 GiB");
                    }
                }
                let control_at = msix_cap + 2;
                let start = reg * 4 + offset;
                if start < control_at + 2 && control_at < start + bytes.len() {
                    let b = cfg.capability_bytes(control_at, 2);
                    msix.set_message_control(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            1 => {
                let reg = input.u16() as usize;
                let value = cfg.read(reg);
                if reg * 4 >= CONFIG_SPACE_SIZE {
                    assert_eq!(value, 0xffff_ffff);
                }
            }
            2 => {
                // BAR sizing, as a driver does it: all ones, read, restore.
                let slot = if input.bool() { 4 } else { 6 };
                let regs: &[usize] = if slot == 4 { &[4, 5] } else { &[6] };
                let saved: Vec<u32> = regs.iter().map(|&r| cfg.read(r)).collect();
                for &r in regs {
                    assert_eq!(cfg.write(r, 0, &[0xff; 4]), None, "sizing moved a BAR");
                }
                let size = if slot == 4 { BAR0.1 } else { BAR2.1 };
                let low = cfg.read(regs[0]);
                assert_eq!(u64::from(low & !0xf), !(size - 1) & 0xffff_fff0);
                // Restoring may complete a pair the guest half-wrote before.
                for (&r, v) in regs.iter().zip(&saved) {
                    if let Some(mv) = cfg.write(r, 0, &v.to_le_bytes()) {
                        assert_eq!(mv.new % mv.size, 0, "BAR moved to an unaligned address");
                    }
                }
                let now: Vec<u32> = regs.iter().map(|&r| cfg.read(r)).collect();
                assert_eq!(now, saved);
            }
            3 => {
                let offset = u64::from(input.u16()) % (table_len(vectors) + 32);
                let len = [4, 8, 2, 1][usize::from(input.u8() % 4)];
                let bytes = input.bytes(len).to_vec();
                msix.write_table(offset, &bytes);
            }
            4 => {
                let offset = u64::from(input.u16()) % (table_len(vectors) + 32);
                let mut buf = vec![0u8; [4, 8, 2, 1][usize::from(input.u8() % 4)]];
                msix.read_table(offset, &mut buf);
                if buf.len() == 4 && offset % 16 == 12 {
                    let control = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    assert_eq!(control & !1, 0, "reserved vector control bits set");
                }
                if buf.len() == 4 && offset % 16 == 0 {
                    assert_eq!(buf[0] & 3, 0, "message address bits 1:0 set");
                }
            }
            5 => {
                let offset = u64::from(input.u16()) % (pba_len(vectors) + 16);
                let mut buf = vec![0u8; [4, 8, 2][usize::from(input.u8() % 3)]];
                msix.read_pba(offset, &mut buf);
                msix.write_pba(offset, &buf);
            }
            6 => msix.trigger(input.u16() % (vectors + 4)),
            _ => msix.reset(),
        }
    }

    // What must hold whatever the guest did.
    assert_eq!(cfg.read(0), VENDOR_DEVICE, "read-only IDs changed");
    for index in [0, 2] {
        let (addr, size) = (
            cfg.bar_address(index).unwrap(),
            cfg.bar_size(index).unwrap(),
        );
        assert_eq!(addr % size, 0);
    }
    // Pending bits exist only for real vectors.
    let qwords = pba_len(vectors) / 8;
    let mut last = [0u8; 8];
    msix.read_pba((qwords - 1) * 8, &mut last);
    let bits = u64::from_le_bytes(last);
    let used = u32::from(vectors) - 64 * (qwords as u32 - 1);
    if used < 64 {
        assert_eq!(bits >> used, 0, "pending bit past the last vector");
    }
    // Routes only for this function's vectors.
    let gsis: Vec<u32> = (0..vectors).filter_map(|v| msix.gsi(v)).collect();
    for gsi in router.msi_routes().keys() {
        assert!(gsis.contains(gsi), "route for foreign GSI {gsi}");
    }
    drop(msix);
    assert!(
        router.msi_routes().is_empty(),
        "routes left after the function went away"
    );
});
