//! The probe's virtio-rng driver against QEMU's virtio-rng-pci (modern
//! only) on the microvm machine, in both interrupt modes (MSI-X and
//! polling): the scenarios of `support::scenarios` (all bytes arrive, they
//! look random, several devices are each read, a missing device fails the
//! check). Every test says it was skipped (and passes) when QEMU or
//! /dev/kvm is missing.

mod support;

use support::scenarios::{self as s, Vmm};

fn vmm() -> Option<Vmm> {
    Vmm::qemu()
}

#[test]
fn reads_a_mib_of_entropy_in_both_interrupt_modes() {
    let Some(vmm) = vmm() else { return };
    s::reads_a_mib_of_entropy_in_both_interrupt_modes(&vmm);
}

#[test]
fn odd_sizes_and_small_buffers() {
    let Some(vmm) = vmm() else { return };
    s::odd_sizes_and_small_buffers(&vmm);
}

#[test]
fn two_devices_are_each_read() {
    let Some(vmm) = vmm() else { return };
    s::two_devices_are_each_read(&vmm);
}

#[test]
fn a_missing_device_fails_the_check() {
    let Some(vmm) = vmm() else { return };
    s::a_missing_device_fails_the_check(&vmm);
}
