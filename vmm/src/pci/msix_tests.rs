//! Tests of MSI-X (a child of msix.rs) on a real KVM VM: a vector counts as
//! delivered when its message sets the vector's bit in vCPU 0's local APIC
//! IRR. (The irqfd itself cannot tell: KVM drains its counter on every
//! write, routed or not, so it always reads empty.)

use super::*;
use crate::interrupts::test_vm::{msi_data, TestVm, MSI_ADDRESS};
use crate::pci::config::PciConfig;

struct Fixture {
    t: TestVm,
    router: Arc<MsiRouter>,
    msix: Msix,
}

fn fixture(vectors: u16) -> Fixture {
    let t = TestVm::new();
    let router = Arc::new(MsiRouter::new(t.vm.clone()).unwrap());
    let msix = Msix::new(vectors, router.clone()).unwrap();
    Fixture { t, router, msix }
}

fn write32(msix: &Msix, offset: u64, value: u32) {
    msix.write_table(offset, &value.to_le_bytes());
}

/// Programs entry `i` with a fixed-mode message for `apic_vector` to APIC 0.
fn program(msix: &Msix, i: u64, apic_vector: u8, masked: bool) {
    write32(msix, i * 16, MSI_ADDRESS as u32);
    write32(msix, i * 16 + 4, 0);
    write32(msix, i * 16 + 8, msi_data(apic_vector));
    write32(msix, i * 16 + 12, u32::from(masked));
}

fn entry(msix: &Msix, i: u64) -> [u32; 4] {
    let mut words = [0; 4];
    for (w, word) in words.iter_mut().enumerate() {
        let mut b = [0; 4];
        msix.read_table(i * 16 + w as u64 * 4, &mut b);
        *word = u32::from_le_bytes(b);
    }
    words
}

fn pba(msix: &Msix) -> u64 {
    let mut b = [0; 8];
    msix.read_pba(0, &mut b);
    u64::from_le_bytes(b)
}

#[test]
fn capability_layout() {
    let (bytes, mask) = msix_capability(5, 2, 0x2000, 3, 0x3000);
    assert_eq!(bytes, [0x11, 0, 4, 0, 0x02, 0x20, 0, 0, 0x03, 0x30, 0, 0]);
    assert_eq!(mask, [0, 0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let (bytes, _) = msix_capability(2048, 0, 0, 5, 0xfff8);
    assert_eq!(&bytes[2..4], &[0xff, 0x07], "table size N - 1 in bits 10:0");
    assert_eq!(&bytes[8..12], &[0xfd, 0xff, 0, 0]);
    assert_eq!(
        (table_len(5), pba_len(5), pba_len(64), pba_len(65)),
        (80, 8, 8, 16)
    );
    // In a configuration space, the guest can set enable and mask only.
    let mut cfg = PciConfig::new(0x1af4, 0x1041, 0x02_0000, 1, 0x1af4, 1);
    let (bytes, mask) = msix_capability(5, 2, 0x2000, 3, 0x3000);
    let off = cfg.add_capability(&bytes, &mask).unwrap();
    cfg.write(off / 4, 2, &0xffffu16.to_le_bytes());
    assert_eq!(cfg.read(off / 4) >> 16, 0xc004);
    cfg.write(off / 4 + 1, 0, &[0xff; 4]);
    assert_eq!(cfg.read(off / 4 + 1), 0x2002);
}

#[test]
fn table_entries_read_back_and_start_masked() {
    let f = fixture(3);
    assert_eq!(f.msix.vectors(), 3);
    for i in 0..3 {
        assert_eq!(entry(&f.msix, i), [0, 0, 0, 1], "entry {i} at reset");
    }
    // Dword writes; address bits 1:0 and reserved control bits read 0.
    write32(&f.msix, 16, 0xfee0_1003);
    write32(&f.msix, 20, 0x1234);
    write32(&f.msix, 24, 0xdead_beef);
    write32(&f.msix, 28, 0xffff_fffe);
    assert_eq!(entry(&f.msix, 1), [0xfee0_1000, 0x1234, 0xdead_beef, 0]);
    // Qword writes and reads.
    f.msix
        .write_table(32, &0x0000_0001_fee0_2000u64.to_le_bytes());
    f.msix
        .write_table(40, &0x0000_0001_0000_0031u64.to_le_bytes());
    let mut q = [0; 8];
    f.msix.read_table(32, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x0000_0001_fee0_2000);
    f.msix.read_table(40, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x0000_0001_0000_0031);
    assert_eq!(entry(&f.msix, 0), [0, 0, 0, 1], "neighbours untouched");
}

#[test]
fn masked_vector_pends_until_unmasked() {
    let f = fixture(2);
    f.msix.set_control(true, false);
    program(&f.msix, 1, 0x61, true);
    f.msix.trigger(1);
    assert_eq!(pba(&f.msix), 0b10);
    assert!(!f.t.irr(0x61), "a masked vector must not fire");
    f.msix.trigger(1);
    assert_eq!(pba(&f.msix), 0b10);
    write32(&f.msix, 16 + 12, 0);
    assert!(f.t.irr(0x61), "unmasking delivers the pending message");
    assert_eq!(pba(&f.msix), 0);
    // Live now: a trigger goes straight through.
    write32(&f.msix, 16 + 8, msi_data(0x62));
    f.msix.trigger(1);
    assert!(f.t.irr(0x62), "the route follows a data change while live");
    assert_eq!(pba(&f.msix), 0);
}

#[test]
fn function_mask_holds_every_vector() {
    let f = fixture(2);
    program(&f.msix, 0, 0x71, false);
    program(&f.msix, 1, 0x72, false);
    f.msix.set_control(true, true);
    f.msix.trigger(0);
    f.msix.trigger(1);
    assert_eq!(pba(&f.msix), 0b11);
    assert!(!f.t.irr(0x71) && !f.t.irr(0x72));
    f.msix.set_message_control(MSG_CTRL_ENABLE);
    assert!(f.t.irr(0x71) && f.t.irr(0x72));
    assert_eq!(pba(&f.msix), 0);
}

#[test]
fn disabled_msix_pends_and_enabling_delivers() {
    let f = fixture(1);
    program(&f.msix, 0, 0x81, false);
    assert!(!f.msix.enabled());
    f.msix.trigger(0);
    assert_eq!(pba(&f.msix), 1);
    assert!(!f.t.irr(0x81));
    f.msix.set_control(true, false);
    assert!(f.msix.enabled());
    assert!(f.t.irr(0x81));
    assert_eq!(pba(&f.msix), 0);
    // Disabling drops the route; a new message while disabled is used
    // when MSI-X comes back.
    f.msix.set_control(false, false);
    write32(&f.msix, 8, msi_data(0x82));
    f.msix.trigger(0);
    assert!(!f.t.irr(0x82));
    assert_eq!(pba(&f.msix), 1);
    f.msix.set_control(true, false);
    assert!(f.t.irr(0x82));
}

#[test]
fn pba_spans_qwords() {
    let f = fixture(70);
    f.msix.trigger(65);
    f.msix.trigger(3);
    f.msix.trigger(70);
    assert_eq!(pba(&f.msix), 1 << 3);
    let mut d = [0; 4];
    f.msix.read_pba(8, &mut d);
    assert_eq!(u32::from_le_bytes(d), 1 << 1);
    f.msix.read_pba(4, &mut d);
    assert_eq!(d, [0; 4]);
    f.msix.write_pba(0, &[0; 8]);
    assert_eq!(pba(&f.msix), 1 << 3, "the PBA is read-only");
    f.msix.read_pba(16, &mut d);
    assert_eq!(d, [0; 4], "past the PBA");
}

#[test]
fn reset_masks_zeroes_and_disables() {
    let f = fixture(2);
    program(&f.msix, 0, 0x91, false);
    f.msix.set_control(true, true);
    f.msix.trigger(0);
    f.msix.reset();
    assert!(!f.msix.enabled());
    assert_eq!(entry(&f.msix, 0), [0, 0, 0, 1]);
    assert_eq!(pba(&f.msix), 0);
    f.msix.set_control(true, false);
    assert!(!f.t.irr(0x91), "nothing was left pending");
}

#[test]
fn vector_counts_and_gsis_are_checked_and_released() {
    let t = TestVm::new();
    let router = Arc::new(MsiRouter::new(t.vm.clone()).unwrap());
    for n in [0, MAX_VECTORS + 1, u16::MAX] {
        assert!(matches!(
            Msix::new(n, router.clone()),
            Err(InterruptError::VectorCount(m)) if m == n
        ));
    }
    let a = Msix::new(2, router.clone()).unwrap();
    let b = Msix::new(1, router.clone()).unwrap();
    assert_eq!(
        (a.gsi(0), a.gsi(1), b.gsi(0), b.gsi(1)),
        (Some(24), Some(25), Some(26), None)
    );
    drop(a);
    let c = Msix::new(2, router.clone()).unwrap();
    assert_eq!(
        (c.gsi(0), c.gsi(1)),
        (Some(24), Some(25)),
        "dropped GSIs are reused"
    );
}

#[test]
fn garbage_messages_and_out_of_range_accesses_are_harmless() {
    let f = fixture(4);
    f.msix.set_control(true, false);
    // A live vector with a garbage message, then a proper one.
    f.msix.write_table(0, &u64::MAX.to_le_bytes());
    f.msix
        .write_table(8, &0xffff_ffff_0000_0000u64.to_le_bytes());
    f.msix.trigger(0);
    program(&f.msix, 0, 0xa1, false);
    f.msix.trigger(0);
    assert!(f.t.irr(0xa1));
    // Out-of-range vectors.
    f.msix.trigger(4);
    f.msix.trigger(u16::MAX);
    // Every offset around and far past the table and PBA, every width.
    let mut buf = [0u8; 16];
    let offsets = (0..96).chain([u64::MAX, u64::MAX - 7, 1 << 63, 0xfff0]);
    for offset in offsets {
        for len in 0..=9 {
            let data: Vec<u8> = (0..len)
                .map(|i| (offset as u8).wrapping_mul(31) ^ i)
                .collect();
            f.msix.write_table(offset, &data);
            f.msix.read_table(offset, &mut buf[..len as usize]);
            f.msix.read_pba(offset, &mut buf[..len as usize]);
            f.msix.write_pba(offset, &data);
        }
    }
    let mut b = [0xee; 4];
    f.msix.read_table(64, &mut b);
    assert_eq!(b, [0; 4], "past the table reads zero");
    f.msix.read_table(2, &mut b);
    assert_eq!(b, [0; 4], "unaligned reads zero");
    for v in 0..8 {
        f.msix.trigger(v);
    }
    // Still in working order.
    f.msix.reset();
    f.msix.set_control(true, false);
    program(&f.msix, 3, 0xa2, false);
    f.msix.trigger(3);
    assert!(f.t.irr(0xa2));
    assert!(Arc::strong_count(&f.router) >= 2);
}

#[test]
fn triggers_from_worker_threads_race_masking_safely() {
    let f = fixture(4);
    let msix = Arc::new(f.msix);
    for (i, vector) in [0xb1u8, 0xb2, 0xb3, 0xb4].into_iter().enumerate() {
        program(&msix, i as u64, vector, false);
    }
    msix.set_control(true, true);
    let workers: Vec<_> = (0..4u16)
        .map(|v| {
            let msix = Arc::clone(&msix);
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    msix.trigger(v);
                }
            })
        })
        .collect();
    for i in 0..200 {
        msix.set_control(true, i % 2 == 0);
    }
    for w in workers {
        w.join().unwrap();
    }
    msix.set_control(true, false);
    assert_eq!(pba(&msix), 0, "nothing is left pending once unmasked");
    for vector in [0xb1, 0xb2, 0xb3, 0xb4] {
        assert!(f.t.irr(vector), "vector {vector:#x}");
    }
}
