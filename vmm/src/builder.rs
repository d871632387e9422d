//! The one place a VM is wired together, in boot order: the KVM VM and its
//! in-kernel interrupt controllers, guest memory, the kernel, initrd and
//! command line, ACPI tables, the boot protocol's data, the devices on
//! their buses, and the vCPUs with their CPU model and entry state.

use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, KVM_CAP_EXIT_ON_EMULATION_FAILURE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::acpi::{self, AcpiConfig};
use crate::boot::{self, e820, pvh, zeropage, BootEntry, BootError};
use crate::bus::{Bus, BusDevice, BusError};
use crate::config::VmConfig;
use crate::cpu::cpuid::CpuModel;
use crate::cpu::{self, entry, CpuError};
use crate::devices::acpi_pm::{AcpiPm, ACPI_PM_PORTS};
use crate::devices::i8042::{I8042, I8042_IRQ};
use crate::devices::pci_host::{PciBus, PciConfigIo, PciConfigMmio};
use crate::devices::rtc::Rtc;
use crate::devices::serial::SerialDevice;
use crate::devices::IrqLine;
use crate::host::{Host, KvmFlavour};
use crate::interrupts::{InterruptError, MsiRouter};
use crate::layout;
use crate::lifecycle::ExitSignal;
use crate::memory::{self, GuestMemoryMmap, MemoryError};
use crate::vcpu::VcpuContext;
use crate::virtio::block::{Block, BlockError};
use crate::virtio::net::{Net, NetError};
use crate::virtio::rng::Rng;
use crate::virtio::transport::{VirtioPci, BAR_SIZE};
use crate::virtio::vsock::{Vsock, VsockError};
use crate::virtio::VirtioDevice;
use crate::vm::{DeviceCounters, Vm, VmParts};
use vm_allocator::{AddressAllocator, AllocPolicy};

/// The most vCPUs a machine can have: the MADT uses xAPIC entries (8-bit
/// APIC IDs) and 0xff is the broadcast ID.
pub const MAX_VCPUS: usize = 254;

/// Address of the TSS KVM needs on Intel hosts (three pages below the
/// identity map page, inside the 32-bit hole and clear of every device).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Errors from building a VM, each with the step it happened in.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("--cpus must be between 1 and {max}, got {got}")]
    VcpuCount { got: usize, max: usize },
    #[error("cannot create the KVM VM: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("cannot set up the VM's interrupt controllers: {0}")]
    Irqchip(#[source] kvm_ioctls::Error),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("cannot build ACPI tables: {0}")]
    Acpi(#[from] acpi::AcpiError),
    #[error("cannot create vCPU {0}: {1}")]
    CreateVcpu(u8, #[source] kvm_ioctls::Error),
    #[error("cannot set up vCPU {0}: {1}")]
    SetupVcpu(u8, #[source] CpuError),
    #[error("cannot place a device: {0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Interrupts(#[from] InterruptError),
    #[error(transparent)]
    Disk(#[from] BlockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("PCI: {0}")]
    Pci(String),
    #[error("cannot create an interrupt line: {0}")]
    Irq(#[source] std::io::Error),
}

/// Builds a VM from `cfg`, with COM1's output going to `console`.
pub fn build(
    host: &Host,
    cfg: &VmConfig,
    console: Box<dyn Write + Send>,
) -> Result<Vm, BuildError> {
    let max = host.max_vcpus.min(MAX_VCPUS);
    let vcpu_count = cfg.vcpus as usize;
    if vcpu_count == 0 || vcpu_count > max {
        return Err(BuildError::VcpuCount {
            got: vcpu_count,
            max,
        });
    }

    let vm_fd = Arc::new(host.kvm.create_vm().map_err(BuildError::CreateVm)?);
    // Memory first: registering slots after KVM_CREATE_IRQCHIP costs a
    // kernel synchronisation of several milliseconds (measured: 7 ms of an
    // 11 ms start), registering before it costs almost nothing.
    let mem = memory::create_guest_memory(cfg.mem_size)?;
    memory::register_with_kvm(&vm_fd, &mem)?;
    setup_irqchip(&vm_fd)?;
    let router = Arc::new(MsiRouter::new(vm_fd.clone())?);

    // Kernel, initrd, command line.
    let kernel = boot::load_kernel(&mem, &cfg.kernel)?;
    let header = match kernel.entry {
        BootEntry::Linux64 { header, .. } => header,
        BootEntry::Pvh(_) => None,
    };
    let initrd = match &cfg.initrd {
        Some(path) => Some(boot::load_initrd(
            &mem,
            path,
            kernel.end,
            zeropage::initrd_limit(header.as_ref()),
        )?),
        None => None,
    };
    let pvm = host.flavour == KvmFlavour::Pvm;
    let cmdline = guest_cmdline(&cfg.cmdline, kernel.is_linux, pvm);
    boot::load_cmdline(&mem, &cmdline, header.as_ref())?;

    // Firmware tables and the boot protocol's data.
    let rsdp = acpi::create_acpi_tables(
        &mem,
        &AcpiConfig {
            num_cpus: u16::from(cfg.vcpus),
            pci_mmio64: pci_mmio64_window(cfg.mem_size),
        },
    )?;
    let map = e820::memory_map(&mem);
    match kernel.entry {
        BootEntry::Pvh(_) => pvh::write(&mem, initrd, &map, rsdp)?,
        BootEntry::Linux64 { header, .. } => {
            let params = zeropage::build(header, cmdline.len(), initrd, &map, rsdp)?;
            zeropage::write(&mem, &params)?;
        }
    }

    // Devices.
    let exit = Arc::new(ExitSignal::new().map_err(BuildError::Irq)?);
    let pio = Arc::new(Bus::new());
    let mmio = Arc::new(Bus::new());
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        irq_line(&vm_fd, layout::COM1_IRQ)?,
        console,
    )));
    pio.insert(serial.clone(), layout::COM1_PORT as u64, 8)?;
    let i8042 = Arc::new(Mutex::new(I8042::new(
        exit.clone(),
        irq_line(&vm_fd, I8042_IRQ)?,
    )));
    pio.insert(i8042.clone(), layout::I8042_DATA_PORT as u64, 5)?;
    pio.insert(shared(Rtc::new()), layout::RTC_PORT as u64, 2)?;
    pio.insert(
        shared(AcpiPm::new(exit.clone())),
        layout::ACPI_SLEEP_CONTROL_PORT as u64,
        ACPI_PM_PORTS,
    )?;
    let pci = Arc::new(Mutex::new(PciBus::new()));
    pio.insert(
        shared(PciConfigIo::new(pci.clone(), exit.clone())),
        layout::PCI_CONFIG_ADDRESS_PORT as u64,
        8,
    )?;
    mmio.insert(
        shared(PciConfigMmio::new(pci.clone())),
        layout::PCI_ECAM_START,
        layout::PCI_ECAM_SIZE,
    )?;
    let mut bars = AddressAllocator::new(layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE)
        .map_err(|e| BuildError::Pci(format!("BAR allocator: {e:?}")))?;
    let mut virtio_devices = Vec::new();
    let mut counters = DeviceCounters::default();
    for disk in &cfg.disks {
        let block = Block::new(disk, u16::from(cfg.vcpus))?;
        counters.block.push(block.stats());
        virtio_devices.push(add_virtio_pci(
            Box::new(block),
            &mut bars,
            &mem,
            &vm_fd,
            &mmio,
            &router,
            &pci,
        )?);
    }
    let mut others: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for net in &cfg.nets {
        let net = Net::new(net)?;
        counters.net.push(net.stats());
        others.push(Box::new(net));
    }
    if cfg.rng {
        let rng = Rng::new();
        counters.rng = Some(rng.stats());
        others.push(Box::new(rng));
    }
    if let Some(vsock) = &cfg.vsock {
        let vsock = Vsock::new(vsock)?;
        counters.vsock = Some(vsock.stats());
        others.push(Box::new(vsock));
    }
    for device in others {
        virtio_devices.push(add_virtio_pci(
            device, &mut bars, &mem, &vm_fd, &mmio, &router, &pci,
        )?);
    }

    // vCPUs: the CPU model for all, the entry state for the boot vCPU.
    // Application processors wait for INIT/SIPI in the in-kernel LAPIC.
    let model =
        CpuModel::new(&host.kvm, cfg.cpu_template, pvm).map_err(|e| BuildError::SetupVcpu(0, e))?;
    let mut vcpus = Vec::with_capacity(vcpu_count);
    for id in 0..cfg.vcpus {
        let vcpu = vm_fd
            .create_vcpu(id as u64)
            .map_err(|e| BuildError::CreateVcpu(id, e))?;
        setup_vcpu(&vcpu, id, cfg.vcpus, &model).map_err(|e| BuildError::SetupVcpu(id, e))?;
        if id == 0 {
            entry::setup_boot_vcpu(&vcpu, &mem, kernel.entry)
                .map_err(|e| BuildError::SetupVcpu(id, e))?;
        }
        vcpus.push(vcpu);
    }

    Ok(Vm {
        parts: VmParts {
            vm_fd,
            memory: mem,
            ctx: VcpuContext { pio, mmio, exit },
            serial,
            i8042,
            virtio_devices,
            counters,
        },
        vcpus,
        guest_is_linux: kernel.is_linux,
    })
}

/// Puts a virtio device on the PCI bus with BAR 0 from the 32-bit window.
fn add_virtio_pci(
    device: Box<dyn VirtioDevice>,
    bars: &mut AddressAllocator,
    mem: &GuestMemoryMmap,
    vm: &Arc<VmFd>,
    mmio: &Arc<Bus>,
    router: &Arc<MsiRouter>,
    pci: &Arc<Mutex<PciBus>>,
) -> Result<Arc<Mutex<VirtioPci>>, BuildError> {
    let range = bars
        .allocate(BAR_SIZE, BAR_SIZE, AllocPolicy::FirstMatch)
        .map_err(|e| BuildError::Pci(format!("no room for another device's BAR: {e:?}")))?;
    let bar = range.start();
    let transport = VirtioPci::new(
        device,
        bar,
        mem.clone(),
        vm.clone(),
        mmio.clone(),
        router.clone(),
    )
    .map_err(|e| BuildError::Pci(e.to_string()))?;
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(transport.clone(), bar, BAR_SIZE)?;
    pci.lock()
        .unwrap_or_else(|p| p.into_inner())
        .add(transport.clone())
        .ok_or_else(|| BuildError::Pci("all 31 PCI slots are taken".into()))?;
    Ok(transport)
}

fn shared<D: BusDevice + 'static>(device: D) -> Arc<Mutex<dyn BusDevice>> {
    Arc::new(Mutex::new(device))
}

/// The in-kernel PIC, IOAPIC and LAPICs, and the PIT.
fn setup_irqchip(vm: &VmFd) -> Result<(), BuildError> {
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(BuildError::Irqchip)?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(BuildError::Irqchip)?;
    vm.create_irq_chip().map_err(BuildError::Irqchip)?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(BuildError::Irqchip)?;
    // Report instructions KVM cannot emulate instead of injecting #UD into
    // the guest. Older kernels lack the capability; that only loses detail.
    let cap = kvm_enable_cap {
        cap: KVM_CAP_EXIT_ON_EMULATION_FAILURE,
        args: [1, 0, 0, 0],
        ..Default::default()
    };
    if let Err(e) = vm.enable_cap(&cap) {
        log::debug!("KVM_CAP_EXIT_ON_EMULATION_FAILURE not available: {e}");
    }
    Ok(())
}

/// An eventfd registered as an irqfd for `gsi`.
fn irq_line(vm: &VmFd, gsi: u32) -> Result<IrqLine, BuildError> {
    let evt = EventFd::new(EFD_NONBLOCK).map_err(BuildError::Irq)?;
    vm.register_irqfd(&evt, gsi)
        .map_err(|e| BuildError::Irq(std::io::Error::from_raw_os_error(e.errno())))?;
    Ok(IrqLine(evt))
}

fn setup_vcpu(vcpu: &VcpuFd, id: u8, count: u8, model: &CpuModel) -> Result<(), CpuError> {
    vcpu.set_cpuid2(&model.for_vcpu(id, count)?)
        .map_err(CpuError::SetCpuid)?;
    cpu::setup_msrs(vcpu)?;
    cpu::setup_fpu(vcpu)?;
    cpu::setup_lint(vcpu)
}

/// The 64-bit PCI MMIO window: from the first 1 GiB boundary above RAM, 64 GiB.
fn pci_mmio64_window(mem_size: u64) -> (u64, u64) {
    let ram_end = layout::ram_regions(mem_size)
        .iter()
        .map(|(start, len)| start + len)
        .max()
        .unwrap_or(0)
        .max(layout::RAM_64BIT_START);
    let start = ram_end.next_multiple_of(1 << 30);
    (start, 64 << 30)
}

/// The guest's command line for a Linux kernel: the user's, without
/// `pci=off` (Firecracker's documented boot arguments carry it because its
/// devices are virtio-mmio; utsuwa's are all on PCI, so it would hide every
/// disk and NIC), plus on a PVM host `noxsave`, since PVM passes XSAVE
/// through whatever CPUID says and its emulator cannot execute it in guest
/// ring 0. Other kernels get the user's line untouched.
pub fn guest_cmdline(user: &str, is_linux: bool, pvm: bool) -> String {
    if !is_linux {
        return user.to_string();
    }
    let mut tokens: Vec<&str> = user.split_whitespace().collect();
    if tokens.contains(&"pci=off") {
        log::warn!("ignoring pci=off on the kernel command line: utsuwa's devices are on PCI");
        tokens.retain(|t| *t != "pci=off");
    }
    if pvm && !tokens.contains(&"noxsave") {
        tokens.push("noxsave");
    }
    tokens.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_linux_gets_noxsave_once() {
        assert_eq!(guest_cmdline("console=ttyS0", true, false), "console=ttyS0");
        assert_eq!(
            guest_cmdline("console=ttyS0", true, true),
            "console=ttyS0 noxsave"
        );
        assert_eq!(guest_cmdline("noxsave", true, true), "noxsave");
    }

    #[test]
    fn pci_off_is_dropped_for_linux_only() {
        assert_eq!(
            guest_cmdline("console=ttyS0 reboot=k panic=1 pci=off", true, false),
            "console=ttyS0 reboot=k panic=1"
        );
        // Other guests see exactly what the user wrote, spacing included.
        assert_eq!(guest_cmdline("a  pci=off", false, true), "a  pci=off");
    }

    #[test]
    fn mmio64_window_sits_above_ram() {
        assert_eq!(pci_mmio64_window(512 << 20), (1 << 32, 64 << 30));
        let (start, _) = pci_mmio64_window(6 << 30);
        assert_eq!(start, 7 << 30);
        assert_eq!(start % (1 << 30), 0);
    }
}
