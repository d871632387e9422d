//! utsuwa's virtio-rng (`--rng`, fed by the host's getrandom) with the
//! probe's driver: the scenarios of `support::scenarios` that `rng_qemu.rs`
//! runs against QEMU, in both interrupt modes (MSI-X and polling). `--rng`
//! is one device, so instead of two devices being read this checks there is
//! exactly one. Every test says it was skipped (and passes) without
//! /dev/kvm.

mod support;

use support::assert_checks_pass;
use support::scenarios::{self as s, Vmm};

fn vmm() -> Option<Vmm> {
    Vmm::utsuwa()
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
fn a_missing_device_fails_the_check() {
    let Some(vmm) = vmm() else { return };
    s::a_missing_device_fails_the_check(&vmm);
}

#[test]
fn rng_gives_exactly_one_device() {
    let Some(vmm) = vmm() else { return };
    let out = s::run_rng(
        &vmm,
        1,
        "probe.checks=rng probe.rng_devs=1 probe.rng_bytes=4096",
    );
    assert_checks_pass(&out, &["rng"]);
    let r = s::rng_results(&out);
    assert_eq!(r.len(), 1, "{}", out.dump());
    assert_eq!(r[0]["dev"], "00:01.0");
}
