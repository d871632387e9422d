//! The x86-64 CPU state a vCPU starts with: the CPU model (`cpuid`), the
//! MSRs, the local APIC's LINT pins, and for the boot vCPU the registers,
//! segments and page tables its entry protocol asks for (`entry`).

pub mod cpuid;
pub mod entry;

use kvm_bindings::{kvm_fpu, kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

/// Errors from setting up a vCPU's state.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("cannot read KVM's supported CPUID: {0}")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("cannot set CPUID: {0}")]
    SetCpuid(#[source] kvm_ioctls::Error),
    #[error("cannot set MSRs: {0}")]
    SetMsrs(#[source] kvm_ioctls::Error),
    #[error("cannot set registers: {0}")]
    SetRegs(#[source] kvm_ioctls::Error),
    #[error("cannot set the FPU state: {0}")]
    SetFpu(#[source] kvm_ioctls::Error),
    #[error("cannot set up the local APIC: {0}")]
    Lapic(#[source] kvm_ioctls::Error),
    #[error("cannot write boot page tables or GDT: {0}")]
    WriteGuestMemory(String),
    #[error("cannot build the MSR list: {0}")]
    MsrList(String),
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The MSR values every vCPU starts with: the syscall MSRs cleared, fast
/// strings on, MTRRs enabled with write-back as the default type (without
/// it Linux maps all RAM uncached).
fn boot_msrs() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

/// Sets the boot MSRs. KVM stops at the first MSR it refuses; that one is
/// reported and the rest skipped, since no guest needs them to boot.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|e| CpuError::MsrList(format!("{e:?}")))?;
    let written = vcpu.set_msrs(&msrs).map_err(CpuError::SetMsrs)?;
    if written < entries.len() {
        log::debug!("KVM refused MSR {:#x}", entries[written].index);
    }
    Ok(())
}

/// x87 and SSE control words at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(CpuError::SetFpu)
}

/// Local APIC LVT registers for LINT0 and LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

/// Wires LINT0 to the 8259 (ExtINT) and LINT1 to NMI, as firmware does on
/// a PC; a guest that uses the legacy PIC depends on it.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), CpuError> {
    let mut lapic = vcpu.get_lapic().map_err(CpuError::Lapic)?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: Vec<u8> = lapic.regs[reg..reg + 4].iter().map(|b| *b as u8).collect();
        let value = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let value = (value & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(CpuError::Lapic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtrrs_default_to_write_back() {
        let msrs = boot_msrs();
        let def = msrs.iter().find(|m| m.index == MSR_MTRR_DEF_TYPE).unwrap();
        assert_eq!(def.data & 0xff, 6);
        assert_ne!(def.data & (1 << 11), 0);
    }
}
