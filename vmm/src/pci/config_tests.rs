//! Tests of the configuration space (a child of config.rs): the header
//! read back register by register, BAR sizing and moves in the order Linux
//! uses, the capability list walked as a guest walks it, and hostile writes.

use super::*;

const VENDOR: u16 = 0x1af4;
const DEVICE: u16 = 0x1042;
/// Mass storage (01), other (80), prog-if 00.
const CLASS: u32 = 0x01_80_00;

fn config() -> PciConfig {
    PciConfig::new(VENDOR, DEVICE, CLASS, 0x01, 0x1af4, 0x0002)
}

fn w32(cfg: &mut PciConfig, reg: usize, value: u32) -> Option<BarMove> {
    cfg.write(reg, 0, &value.to_le_bytes())
}

#[test]
fn ids_class_and_fixed_fields_read_back() {
    let cfg = config();
    assert_eq!(cfg.read(0), 0x1042_1af4);
    assert_eq!(
        cfg.read(2),
        0x0180_0001,
        "class, subclass, prog-if, revision"
    );
    assert_eq!(cfg.read(3), 0, "header type 0, single function");
    assert_eq!(cfg.read(11), 0x0002_1af4, "subsystem ID, subsystem vendor");
    assert_eq!(cfg.read(1), 0, "command clear; status without capabilities");
    assert_eq!(cfg.read(13), 0, "no capabilities pointer");
    assert_eq!(cfg.read(15), 0, "no interrupt pin");
    assert_eq!(cfg.read(1023), 0);
    assert_eq!(cfg.read(1024), 0xffff_ffff);
    assert_eq!(cfg.read(usize::MAX), 0xffff_ffff);
}

#[test]
fn command_status_and_interrupt_registers() {
    let mut cfg = config();
    cfg.add_capability(&[0x09, 0, 0, 0], &[0; 4]).unwrap();
    assert!(!cfg.memory_space_enabled());
    assert_eq!(w32(&mut cfg, 1, 0xffff_ffff), None);
    // Writable command bits only; status is read-only (RW1C ignored).
    assert_eq!(cfg.read(1), 0x0010_0407);
    assert!(cfg.memory_space_enabled() && cfg.bus_master_enabled());
    cfg.write(1, 0, &[0x04]);
    assert!(!cfg.memory_space_enabled() && cfg.bus_master_enabled());
    assert_eq!(cfg.read(1), 0x0010_0404, "byte write leaves the high byte");
    // Interrupt line is a scratch register; the pin stays 0.
    w32(&mut cfg, 15, 0xffff_ffff);
    assert_eq!(cfg.read(15), 0x0000_00ff);
    // Cache line size is writable, the rest of that dword is not.
    w32(&mut cfg, 3, 0xffff_ffff);
    assert_eq!(cfg.read(3), 0x0000_00ff);
    // IDs, class, capabilities pointer and expansion ROM are read-only.
    for reg in [0, 2, 11, 12, 13] {
        let before = cfg.read(reg);
        w32(&mut cfg, reg, 0x5a5a_5a5a);
        assert_eq!(cfg.read(reg), before, "register {reg}");
    }
}

#[test]
fn bar32_sizing_restore_and_move() {
    let mut cfg = config();
    cfg.add_bar(0, 0xc000_0000, 0x4000, BarKind::Mmio32)
        .unwrap();
    assert_eq!(cfg.read(4), 0xc000_0000, "memory, 32-bit, not prefetchable");
    // Linux's sizing: save, write all-ones, read the mask, restore.
    assert_eq!(w32(&mut cfg, 4, 0xffff_ffff), None);
    assert_eq!(cfg.read(4), 0xffff_c000);
    assert_eq!(cfg.bar_address(0), Some(0xc000_0000), "sizing is no move");
    assert_eq!(w32(&mut cfg, 4, 0xc000_0000), None, "restore is no move");
    assert_eq!(w32(&mut cfg, 4, 0xc000_0000), None);
    // A real move, with the type bits the guest echoes back.
    let moved = w32(&mut cfg, 4, 0xc001_0000 | 0xf).unwrap();
    assert_eq!(
        moved,
        BarMove {
            index: 0,
            old: 0xc000_0000,
            new: 0xc001_0000,
            size: 0x4000
        }
    );
    assert_eq!(cfg.read(4), 0xc001_0000);
    assert_eq!(cfg.bar_address(0), Some(0xc001_0000));
    assert_eq!(cfg.bar_size(0), Some(0x4000));
    // Unaligned address bits are not writable.
    let moved = w32(&mut cfg, 4, 0xc002_3456).unwrap();
    assert_eq!(moved.new, 0xc002_0000);
}

#[test]
fn bar64_sizing_restore_and_move_low_then_high() {
    let mut cfg = config();
    cfg.add_bar(2, 0x8_0000_0000, 0x1_0000, BarKind::Mmio64)
        .unwrap();
    assert_eq!((cfg.read(6), cfg.read(7)), (0x4, 0x8), "64-bit type 0b10");
    // Low dword sized and restored, then the high one.
    assert_eq!(w32(&mut cfg, 6, 0xffff_ffff), None);
    assert_eq!(cfg.read(6), 0xffff_0004);
    assert_eq!(w32(&mut cfg, 6, 0x4), None);
    assert_eq!(w32(&mut cfg, 7, 0xffff_ffff), None);
    assert_eq!(cfg.read(7), 0xffff_ffff);
    assert_eq!(w32(&mut cfg, 7, 0x8), None);
    assert_eq!(cfg.bar_address(2), Some(0x8_0000_0000));
    // A move: the low write alone does not report a half-written pair.
    assert_eq!(w32(&mut cfg, 6, 0x0020_0004), None);
    assert_eq!(cfg.read(6), 0x0020_0004, "but reads back");
    assert_eq!(cfg.bar_address(2), Some(0x8_0000_0000));
    let moved = w32(&mut cfg, 7, 0x9).unwrap();
    assert_eq!(
        moved,
        BarMove {
            index: 2,
            old: 0x8_0000_0000,
            new: 0x9_0020_0000,
            size: 0x1_0000
        }
    );
    // Only the low dword changes: Linux still writes the high one.
    assert_eq!(w32(&mut cfg, 6, 0x0030_0000), None);
    let moved = w32(&mut cfg, 7, 0x9).unwrap();
    assert_eq!((moved.old, moved.new), (0x9_0020_0000, 0x9_0030_0000));
    // Below 4 GiB.
    assert_eq!(w32(&mut cfg, 6, 0xc000_0000), None);
    assert_eq!(w32(&mut cfg, 7, 0).map(|m| m.new), Some(0xc000_0000));
    assert_eq!(w32(&mut cfg, 7, 0), None, "a high write of the same value");
    assert_eq!(
        cfg.bar_address(3),
        None,
        "the high half is no BAR of its own"
    );
}

#[test]
fn bar64_larger_than_4g_sizes_in_the_high_dword() {
    let mut cfg = config();
    cfg.add_bar(4, 0x10_0000_0000, 8 << 30, BarKind::Mmio64)
        .unwrap();
    assert_eq!(w32(&mut cfg, 8, 0xffff_ffff), None);
    assert_eq!(cfg.read(8), 0x4, "no address bits in the low dword");
    assert_eq!(w32(&mut cfg, 9, 0xffff_ffff), None);
    assert_eq!(cfg.read(9), 0xffff_fffe);
    assert_eq!(w32(&mut cfg, 8, 0x4), None);
    assert_eq!(w32(&mut cfg, 9, 0x10), None);
    let moved = w32(&mut cfg, 9, 0x20).unwrap();
    assert_eq!((moved.old, moved.new), (0x10_0000_0000, 0x20_0000_0000));
}

#[test]
fn bad_bars_are_refused() {
    let mut cfg = config();
    cfg.add_bar(1, 0x1_0000_0000, 0x1000, BarKind::Mmio64)
        .unwrap();
    let errors = [
        (6, 0, 0x1000, BarKind::Mmio32, PciError::BarIndex(6)),
        (5, 0, 0x1000, BarKind::Mmio64, PciError::BarIndex(5)),
        (
            usize::MAX,
            0,
            0x1000,
            BarKind::Mmio64,
            PciError::BarIndex(usize::MAX),
        ),
        (2, 0, 0x1000, BarKind::Mmio32, PciError::BarInUse(2)),
        (0, 0, 0x1000, BarKind::Mmio64, PciError::BarInUse(1)),
        (0, 0, 0x3000, BarKind::Mmio32, PciError::BarSize(0x3000)),
        (0, 0, 8, BarKind::Mmio32, PciError::BarSize(8)),
        (0, 0, 0, BarKind::Mmio32, PciError::BarSize(0)),
        (
            0,
            0x800,
            0x1000,
            BarKind::Mmio32,
            PciError::BarAlignment {
                addr: 0x800,
                size: 0x1000,
            },
        ),
        (
            0,
            1 << 32,
            0x1000,
            BarKind::Mmio32,
            PciError::BarRange {
                addr: 1 << 32,
                size: 0x1000,
            },
        ),
    ];
    for (index, addr, size, kind, err) in errors {
        assert_eq!(cfg.add_bar(index, addr, size, kind), Err(err));
    }
    cfg.add_bar(0, 0xffff_f000, 0x1000, BarKind::Mmio32)
        .unwrap();
}

#[test]
fn empty_bar_slots_read_zero_and_ignore_writes() {
    let mut cfg = config();
    cfg.add_bar(2, 0xc000_0000, 0x1000, BarKind::Mmio32)
        .unwrap();
    for reg in [4, 5, 7, 8, 9, 12] {
        assert_eq!(w32(&mut cfg, reg, 0xffff_ffff), None);
        assert_eq!(cfg.read(reg), 0, "register {reg}");
    }
    assert_eq!(cfg.bar_address(0), None);
    assert_eq!(cfg.bar_address(99), None);
}

/// Walks the list as a guest does; returns (offset, ID) pairs.
fn walk(cfg: &PciConfig) -> Vec<(usize, u8)> {
    let mut found = Vec::new();
    let mut ptr = (cfg.read(13) & 0xfc) as usize;
    while ptr != 0 && found.len() < 64 {
        let header = cfg.read(ptr / 4) >> ((ptr % 4) * 8);
        found.push((ptr, header as u8));
        ptr = ((header >> 8) & 0xfc) as usize;
    }
    found
}

#[test]
fn capability_list_walks_in_order() {
    let mut cfg = config();
    assert!(walk(&cfg).is_empty());
    let vendor = [0x09, 0xee, 5, 1, 2];
    let (msix, msix_mask) = crate::pci::msix::msix_capability(4, 1, 0, 1, 0x800);
    let a = cfg.add_capability(&vendor, &[0; 5]).unwrap();
    let b = cfg.add_capability(&msix, &msix_mask).unwrap();
    let c = cfg.add_capability(&[0x05, 0x77, 0], &[0; 3]).unwrap();
    assert_eq!((a, b, c), (0x40, 0x48, 0x54));
    assert_eq!(walk(&cfg), vec![(0x40, 0x09), (0x48, 0x11), (0x54, 0x05)]);
    assert_eq!(
        cfg.read(1) >> 16 & u32::from(STATUS_CAPABILITIES_LIST),
        0x10
    );
    assert_eq!(cfg.capability_bytes(a, 5), vec![0x09, 0x48, 5, 1, 2]);
}

#[test]
fn capability_bytes_follow_their_masks() {
    let mut cfg = config();
    let off = cfg
        .add_capability(
            &[0x09, 0, 0x11, 0x22, 0x33, 0x44],
            &[0xff, 0xff, 0, 0x0f, 0xff, 0],
        )
        .unwrap();
    assert_eq!(off, 0x40);
    w32(&mut cfg, 0x10, 0xffff_ffff);
    w32(&mut cfg, 0x11, 0xffff_ffff);
    // Header read-only whatever the mask said; byte 3 low nibble and
    // byte 4 writable.
    assert_eq!(
        cfg.capability_bytes(off, 6),
        vec![0x09, 0, 0x11, 0x2f, 0xff, 0x44]
    );
    // The owner may change the body, not the header nor other bytes.
    cfg.set_capability_bytes(off, &[0xaa; 8]);
    assert_eq!(
        cfg.capability_bytes(off, 8),
        vec![0x09, 0, 0xaa, 0xaa, 0xaa, 0xaa, 0, 0]
    );
    cfg.set_capability_bytes(usize::MAX - 1, &[1; 4]);
    cfg.set_capability_bytes(0, &[0; 16]);
    assert_eq!(cfg.read(0), 0x1042_1af4);
    assert_eq!(cfg.capability_bytes(4094, 10), vec![0, 0]);
    assert!(cfg.capability_bytes(usize::MAX, usize::MAX).is_empty());
}

#[test]
fn capability_space_runs_out_below_0x100() {
    let mut cfg = config();
    assert_eq!(
        cfg.add_capability(&[9], &[0]),
        Err(PciError::CapabilityLength(1))
    );
    assert_eq!(
        cfg.add_capability(&[9, 0], &[0]),
        Err(PciError::CapabilityMask { len: 2, mask: 1 })
    );
    let big = [0x09; 0x90];
    assert_eq!(cfg.add_capability(&big, &[0; 0x90]), Ok(0x40));
    assert_eq!(
        cfg.add_capability(&big, &[0; 0x90]),
        Err(PciError::CapabilitySpace(0x90))
    );
    assert_eq!(cfg.add_capability(&[0x09; 0x30], &[0; 0x30]), Ok(0xd0));
    assert_eq!(
        cfg.add_capability(&[0x05, 0], &[0; 2]),
        Err(PciError::CapabilitySpace(2))
    );
    assert_eq!(walk(&cfg), vec![(0x40, 0x09), (0xd0, 0x09)]);
}

#[test]
fn hostile_writes_never_panic_and_leave_read_only_bytes() {
    let mut cfg = config();
    cfg.add_bar(0, 0xc000_0000, 0x1000, BarKind::Mmio32)
        .unwrap();
    cfg.add_bar(2, 0x1_0000_0000, 0x4000, BarKind::Mmio64)
        .unwrap();
    let (msix, mask) = crate::pci::msix::msix_capability(8, 0, 0x1000, 0, 0x2000);
    cfg.add_capability(&msix, &mask).unwrap();
    let snapshot: Vec<u32> = [0, 2, 11, 13].iter().map(|&r| cfg.read(r)).collect();
    let patterns = [0u8, 0xff, 0x5a, 0xa5, 0x80, 0x01];
    for reg in (0..1030).chain([usize::MAX, usize::MAX / 4, usize::MAX / 4 + 1]) {
        for offset in (0..6).chain([usize::MAX]) {
            for len in 0..9 {
                for p in patterns {
                    let data: Vec<u8> = (0..len)
                        .map(|i| p.wrapping_add((i as u8).wrapping_mul(37)))
                        .collect();
                    let _ = cfg.write(reg, offset, &data);
                    let _ = cfg.read(reg);
                }
            }
        }
    }
    let after: Vec<u32> = [0, 2, 11, 13].iter().map(|&r| cfg.read(r)).collect();
    assert_eq!(after, snapshot);
    assert_eq!(walk(&cfg), vec![(0x40, 0x11)]);
    assert_eq!(cfg.read(15) >> 8, 0, "interrupt pin stays 0");
    assert_eq!(cfg.read(5), 0, "empty slot");
}
