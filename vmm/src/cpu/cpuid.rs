//! The guest CPU model. CPUID is a policy, not a copy of the host: start
//! from what KVM says it can virtualize, apply a named template (`host`
//! keeps everything KVM offers; `baseline` keeps a conservative
//! x86-64-v3-like set that snapshots and migration can rely on across
//! hosts), hide what a PVM-backed KVM cannot emulate in guest ring 0, then
//! give each vCPU its own APIC ID and a consistent topology (one socket,
//! one thread per core, `n` cores).

use std::str::FromStr;

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

use super::CpuError;

/// Named CPU models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuTemplate {
    /// Everything KVM can virtualize on this host.
    #[default]
    Host,
    /// A conservative x86-64-v3 set (AVX2, no AVX-512, no TSX).
    Baseline,
}

impl FromStr for CpuTemplate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(CpuTemplate::Host),
            "baseline" => Ok(CpuTemplate::Baseline),
            _ => Err(format!(
                "unknown CPU template '{s}' (expected host or baseline)"
            )),
        }
    }
}

// Feature bits, by (leaf, register): see the Intel SDM vol. 2 CPUID and AMD APM vol. 3.
const L1_ECX_CX16: u32 = 1 << 13;
const L1_ECX_XSAVE: u32 = 1 << 26;
const L1_ECX_OSXSAVE: u32 = 1 << 27;
const L1_ECX_AVX: u32 = 1 << 28;
const L1_ECX_HYPERVISOR: u32 = 1 << 31;
const L1_EDX_HTT: u32 = 1 << 28;
/// Leaf 7.0 EBX: AVX2 and the AVX-512 family (F, DQ, IFMA, PF, ER, CD, BW, VL).
const L7_EBX_NEEDS_XSAVE: u32 = (1 << 5)
    | (1 << 16)
    | (1 << 17)
    | (1 << 21)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28)
    | (1 << 30)
    | (1 << 31);
/// Leaf 7.0 ECX: AVX-512 VBMI, VBMI2, VAES, VPCLMULQDQ, VNNI, BITALG, VPOPCNTDQ.
const L7_ECX_NEEDS_XSAVE: u32 =
    (1 << 1) | (1 << 6) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 14);

/// Leaf 1 ECX bits the baseline keeps: SSE3, PCLMULQDQ, SSSE3, FMA, CX16,
/// SSE4.1, SSE4.2, x2APIC, MOVBE, POPCNT, TSC-deadline, AES, XSAVE,
/// OSXSAVE, AVX, F16C, RDRAND, hypervisor.
const BASELINE_L1_ECX: u32 = (1 << 0)
    | (1 << 1)
    | (1 << 9)
    | (1 << 12)
    | (1 << 13)
    | (1 << 19)
    | (1 << 20)
    | (1 << 21)
    | (1 << 22)
    | (1 << 23)
    | (1 << 24)
    | (1 << 25)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28)
    | (1 << 29)
    | (1 << 30)
    | (1 << 31);
/// Leaf 7.0 EBX bits the baseline keeps: FSGSBASE, BMI1, AVX2, SMEP, BMI2,
/// ERMS, RDSEED, ADX, SMAP, CLFLUSHOPT.
const BASELINE_L7_EBX: u32 = (1 << 0)
    | (1 << 3)
    | (1 << 5)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 18)
    | (1 << 19)
    | (1 << 20)
    | (1 << 23);
/// Leaf 0x8000_0001 ECX: LAHF/SAHF, ABM (LZCNT), PREFETCHW.
const BASELINE_X1_ECX: u32 = (1 << 0) | (1 << 5) | (1 << 8);
/// Leaf 0x8000_0001 EDX: SYSCALL, NX, 1 GiB pages, RDTSCP, long mode.
const BASELINE_X1_EDX: u32 = (1 << 11) | (1 << 20) | (1 << 26) | (1 << 27) | (1 << 29);
/// XSAVE components the baseline keeps: x87, SSE, AVX.
const BASELINE_XCR0: u32 = 0x7;

/// The CPUID policy for a VM, before per-vCPU patching.
#[derive(Debug, Clone)]
pub struct CpuModel {
    entries: Vec<kvm_cpuid_entry2>,
}

impl CpuModel {
    /// KVM's supported set, shaped by `template`; `hide_for_pvm` removes what
    /// a PVM-backed KVM cannot emulate in guest ring 0 but still honours in
    /// the table (CMPXCHG16B, XSAVE and the AVX family that needs it).
    pub fn new(kvm: &Kvm, template: CpuTemplate, hide_for_pvm: bool) -> Result<Self, CpuError> {
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(CpuError::SupportedCpuid)?;
        Ok(Self::from_entries(
            supported.as_slice().to_vec(),
            template,
            hide_for_pvm,
        ))
    }

    fn from_entries(
        mut entries: Vec<kvm_cpuid_entry2>,
        template: CpuTemplate,
        hide_for_pvm: bool,
    ) -> Self {
        if template == CpuTemplate::Baseline {
            apply_baseline(&mut entries);
        }
        if hide_for_pvm {
            for e in entries.iter_mut() {
                match (e.function, e.index) {
                    (1, _) => e.ecx &= !(L1_ECX_CX16 | L1_ECX_XSAVE | L1_ECX_OSXSAVE | L1_ECX_AVX),
                    // AVX2 and AVX-512 depend on XSAVE state: drop them with it.
                    (7, 0) => {
                        e.ebx &= !L7_EBX_NEEDS_XSAVE;
                        e.ecx &= !L7_ECX_NEEDS_XSAVE;
                    }
                    _ => {}
                }
            }
            entries.retain(|e| e.function != 0xd);
        }
        CpuModel { entries }
    }

    /// The CPUID table for vCPU `id` of `count`.
    pub fn for_vcpu(&self, id: u8, count: u8) -> Result<CpuId, CpuError> {
        let mut entries = self.entries.clone();
        patch_topology(&mut entries, id, count);
        CpuId::from_entries(&entries).map_err(|e| CpuError::MsrList(format!("CPUID table: {e:?}")))
    }
}

fn apply_baseline(entries: &mut Vec<kvm_cpuid_entry2>) {
    for e in entries.iter_mut() {
        match (e.function, e.index) {
            (1, _) => e.ecx &= BASELINE_L1_ECX,
            (7, 0) => {
                e.eax = 0;
                e.ebx &= BASELINE_L7_EBX;
                e.ecx = 0;
                e.edx = 0;
            }
            (0xd, 0) => {
                e.eax &= BASELINE_XCR0;
                e.edx = 0;
            }
            (0x8000_0001, _) => {
                e.ecx &= BASELINE_X1_ECX;
                e.edx &= BASELINE_X1_EDX;
            }
            _ => {}
        }
    }
    // Subleaves of 7 beyond 0 and XSAVE components beyond AVX are dropped.
    entries.retain(|e| !(e.function == 7 && e.index > 0 || e.function == 0xd && e.index > 2));
}

/// Bits needed to number `count` cores.
fn core_id_bits(count: u8) -> u32 {
    (count.max(1) as u32).next_power_of_two().trailing_zeros()
}

/// APIC IDs and topology: vCPU `id` is core `id` of one socket with one thread per core.
fn patch_topology(entries: &mut [kvm_cpuid_entry2], id: u8, count: u8) {
    let apic = id as u32;
    let shift = core_id_bits(count);
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (apic << 24) | ((count as u32) << 16) | (8 << 8);
                e.ecx |= L1_ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= L1_EDX_HTT;
                } else {
                    e.edx &= !L1_EDX_HTT;
                }
            }
            // Deterministic cache parameters: cores per package in EAX[31:26].
            4 => e.eax = (e.eax & 0x03ff_ffff) | ((count as u32).saturating_sub(1).min(63) << 26),
            // Extended topology: level 0 = thread (SMT), level 1 = core.
            0xb | 0x1f => {
                let (eax, ebx, ecx) = match e.index {
                    0 => (0, 1, 1 << 8),
                    1 => (shift, count as u32, 1 | (2 << 8)),
                    n => (0, 0, n),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = ecx;
                e.edx = apic;
            }
            // AMD: number of cores and APIC ID size.
            0x8000_0008 => e.ecx = (shift << 12) | (count as u32).saturating_sub(1),
            // AMD extended APIC ID, core ID, one node.
            0x8000_001e => {
                e.eax = apic;
                e.ebx = apic & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        }
    }

    fn sample() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(1, 0),
            leaf(7, 0),
            leaf(7, 1),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xd, 0),
            leaf(0xd, 5),
            leaf(0x8000_0001, 0),
            leaf(0x8000_0008, 0),
        ]
    }

    fn get(entries: &[kvm_cpuid_entry2], f: u32, i: u32) -> Option<kvm_cpuid_entry2> {
        entries
            .iter()
            .find(|e| e.function == f && e.index == i)
            .copied()
    }

    #[test]
    fn each_vcpu_gets_its_apic_id() {
        let model = CpuModel::from_entries(sample(), CpuTemplate::Host, false);
        for id in [0u8, 3, 7] {
            let cpuid = model.for_vcpu(id, 8).unwrap();
            let e = cpuid.as_slice();
            assert_eq!(get(e, 1, 0).unwrap().ebx >> 24, id as u32);
            assert_eq!((get(e, 1, 0).unwrap().ebx >> 16) & 0xff, 8);
            assert_eq!(get(e, 0xb, 0).unwrap().edx, id as u32);
            assert_eq!(get(e, 0xb, 1).unwrap().ebx, 8);
            assert_eq!(get(e, 0xb, 1).unwrap().eax, 3);
            assert_eq!(get(e, 0x8000_0008, 0).unwrap().ecx & 0xff, 7);
        }
    }

    #[test]
    fn baseline_drops_avx512_and_extra_leaves() {
        let model = CpuModel::from_entries(sample(), CpuTemplate::Baseline, false);
        let e = &model.entries;
        assert_eq!(get(e, 7, 0).unwrap().ebx, BASELINE_L7_EBX);
        assert!(get(e, 7, 1).is_none());
        assert!(get(e, 0xd, 5).is_none());
        assert_eq!(get(e, 0xd, 0).unwrap().eax, 7);
        assert_eq!(get(e, 1, 0).unwrap().ecx, BASELINE_L1_ECX);
    }

    #[test]
    fn pvm_hides_cx16_and_xsave() {
        let model = CpuModel::from_entries(sample(), CpuTemplate::Host, true);
        let l1 = get(&model.entries, 1, 0).unwrap();
        assert_eq!(l1.ecx & (L1_ECX_CX16 | L1_ECX_XSAVE | L1_ECX_AVX), 0);
        assert!(get(&model.entries, 0xd, 0).is_none());
        assert_eq!(get(&model.entries, 7, 0).unwrap().ebx & (1 << 5), 0);
    }

    #[test]
    fn template_names_parse() {
        assert_eq!("host".parse::<CpuTemplate>().unwrap(), CpuTemplate::Host);
        assert_eq!(
            "baseline".parse::<CpuTemplate>().unwrap(),
            CpuTemplate::Baseline
        );
        assert!("fast".parse::<CpuTemplate>().is_err());
    }
}
