//! The host side of KVM: opening `/dev/kvm`, checking that it offers what
//! utsuwa needs, and recognising a PVM-backed KVM (KVM implemented in
//! software, where guest kernel code is emulated) so the user can be told
//! what to expect before a guest kernel runs into it.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// Errors from opening and checking the host's KVM.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("/dev/kvm does not exist: KVM is not available on this host (load kvm_intel, kvm_amd or kvm_pvm)")]
    NoKvmDevice,
    #[error("cannot open /dev/kvm: {0} (are you in the kvm group?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("unsupported KVM API version {0} (expected 12)")]
    ApiVersion(i32),
    #[error("KVM lacks a required capability: {0}")]
    MissingCapability(&'static str),
}

/// Which implementation of KVM the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmFlavour {
    /// Hardware virtualization (VT-x or AMD-V): guest kernels run at full speed.
    Hardware,
    /// PVM: KVM in software. Guest ring 3 runs natively, guest ring 0 is
    /// emulated instruction by instruction, and the emulator lacks several
    /// instructions an unmodified Linux kernel uses (XSAVE, INT n, CMPXCHG16B,
    /// much of SSE), so such a kernel stops with an emulation failure.
    Pvm,
}

impl KvmFlavour {
    /// Detects the flavour: the `kvm_pvm` module is loaded, or the CPU has
    /// neither vmx nor svm (so whatever serves /dev/kvm is not hardware-backed).
    /// `UTSUWA_KVM_FLAVOUR=pvm|hardware` says it instead: `utsuwa jail`
    /// detects it on the host and passes it in, since a jail has neither
    /// /sys nor /proc.
    pub fn detect() -> Self {
        match std::env::var("UTSUWA_KVM_FLAVOUR").as_deref() {
            Ok("pvm") => return KvmFlavour::Pvm,
            Ok("hardware") => return KvmFlavour::Hardware,
            _ => {}
        }
        if Path::new("/sys/module/kvm_pvm").exists() {
            return KvmFlavour::Pvm;
        }
        match std::fs::read_to_string("/proc/cpuinfo") {
            Ok(info) if !cpu_has_hw_virt(&info) => KvmFlavour::Pvm,
            _ => KvmFlavour::Hardware,
        }
    }

    /// The one-paragraph warning printed once on a PVM host when the guest
    /// is not known to cope with it.
    pub fn warning(self) -> Option<&'static str> {
        match self {
            KvmFlavour::Hardware => None,
            KvmFlavour::Pvm => Some(
                "utsuwa: warning: /dev/kvm on this host is PVM (KVM in software, module kvm_pvm): \
                 guest kernel code is emulated instruction by instruction and the emulator lacks \
                 XSAVE, INT n, CMPXCHG16B and much SSE, so an unmodified Linux kernel runs very \
                 slowly and then stops with an emulation failure. Guests that keep ring-0 work \
                 small (such as utsuwa's test guest) run; use a host with VT-x/AMD-V for Linux.",
            ),
        }
    }
}

/// True if /proc/cpuinfo's flags name vmx or svm.
fn cpu_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm")
}

/// An opened, checked `/dev/kvm`.
pub struct Host {
    pub kvm: Kvm,
    pub flavour: KvmFlavour,
    /// Most vCPUs KVM accepts in one VM.
    pub max_vcpus: usize,
}

impl Host {
    /// Opens `/dev/kvm` and checks the API version and every capability
    /// utsuwa relies on.
    pub fn open() -> Result<Self, HostError> {
        if !Path::new("/dev/kvm").exists() {
            return Err(HostError::NoKvmDevice);
        }
        let kvm = Kvm::new().map_err(HostError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(HostError::ApiVersion(version));
        }
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(HostError::MissingCapability(name));
            }
        }
        let max_vcpus = kvm.get_max_vcpus();
        Ok(Host {
            kvm,
            flavour: KvmFlavour::detect(),
            max_vcpus,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_virt_flags_are_recognised() {
        assert!(cpu_has_hw_virt("flags\t: fpu vme svm lm\n"));
        assert!(cpu_has_hw_virt("processor: 0\nflags\t: vmx sse\n"));
        assert!(!cpu_has_hw_virt("flags\t: fpu hypervisor svm_lock\n"));
    }

    #[test]
    fn only_pvm_warns() {
        assert!(KvmFlavour::Hardware.warning().is_none());
        assert!(KvmFlavour::Pvm.warning().unwrap().contains("PVM"));
    }
}
