//! utsuwa's virtual machine: everything between a configuration and a
//! running KVM guest. `builder` wires a VM together in boot order; `vm`
//! runs it; the other modules each own one concern.
//!
//! ```text
//! config ──► builder ──► vm ──► vcpu threads ──► bus ──► devices
//!              │  ├─ memory        (guest RAM, KVM slots)
//!              │  ├─ boot          (kernel, initrd, cmdline, zero page / PVH)
//!              │  ├─ acpi          (RSDP, XSDT, FADT, MADT, MCFG, DSDT)
//!              │  └─ cpu           (CPUID model, MSRs, entry state)
//!              └─ host             (/dev/kvm, PVM detection)
//! ```

pub mod acpi;
pub mod boot;
pub mod builder;
pub mod bus;
pub mod config;
pub mod cpu;
pub mod devices;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod host;
pub mod interrupts;
pub mod layout;
pub mod lifecycle;
pub mod memory;
pub mod pci;
pub mod seccomp;
pub mod vcpu;
pub mod virtio;
pub mod vm;
