//! The probe's virtio-net driver against QEMU's virtio-net-pci (modern only,
//! TAP backend) on the microvm machine: the scenarios of
//! `support::scenarios` (ARP and ping answered, data frames both ways with
//! their checksums verified at both ends, a damaged frame rejected, two NICs
//! at once, the benchmark, a GSO frame), each in a network namespace of its
//! own (`utsuwa-net-<pid>-<n>`, deleted afterwards even on failure): no
//! frame leaves it. Tests say why they are skipped (and pass) without QEMU,
//! /dev/kvm, root, `ip` or /dev/net/tun.

mod support;

use support::scenarios::{self as s, Vmm};

fn vmm() -> Option<Vmm> {
    Vmm::with_network(Vmm::qemu())
}

#[test]
fn answers_arp_and_ping_with_and_without_checksum_offload() {
    let Some(vmm) = vmm() else { return };
    s::answers_arp_and_ping_with_and_without_checksum_offload(&vmm);
}

#[test]
fn exchanges_verified_frames_both_ways() {
    let Some(vmm) = vmm() else { return };
    s::exchanges_verified_frames_both_ways(&vmm);
}

#[test]
fn the_guest_rejects_a_damaged_frame() {
    let Some(vmm) = vmm() else { return };
    s::the_guest_rejects_a_damaged_frame(&vmm);
}

#[test]
fn two_nics_at_once() {
    let Some(vmm) = vmm() else { return };
    s::two_nics_at_once(&vmm);
}

#[test]
fn benchmark_reports_rates_and_latency() {
    let Some(vmm) = vmm() else { return };
    s::benchmark_reports_rates_and_latency(&vmm);
}

#[test]
fn a_gso_frame_is_segmented_or_delivered_whole() {
    let Some(vmm) = vmm() else { return };
    s::a_gso_frame_is_segmented_or_delivered_whole(&vmm);
}
