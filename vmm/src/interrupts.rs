//! The VM's interrupt routing: which KVM GSI reaches which pin of the
//! in-kernel 8259 PICs and IOAPIC, and which reaches an MSI message.
//!
//! The legacy part follows the PC convention the MADT describes: ISA IRQ 0
//! (the PIT) arrives on IOAPIC pin 2, every other ISA IRQ on the pin of its
//! number, GSIs 16-23 on IOAPIC pins 16-23. Above those, [`MsiRouter`] hands
//! out GSIs 24 and up, one per MSI-X vector, each with an irqfd, and keeps
//! their MSI routes in the same table, which KVM replaces as a whole.
//!
//! A guest may program any address and data into an MSI-X entry. KVM takes
//! almost any MSI route (it only checks the flags and, with the x2APIC API
//! enabled, the reserved address bits); should it refuse one anyway, the
//! router drops that route, the rest of the table stays in force and only
//! that vector goes quiet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MAX_IRQ_ROUTES,
};
use kvm_ioctls::{Cap, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::layout::IOAPIC_PINS;

/// Errors from programming the routing table.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("cannot build the GSI routing table: {0}")]
    Table(String),
    #[error("KVM refused the GSI routing table: {0}")]
    SetRouting(#[source] kvm_ioctls::Error),
    #[error("KVM does not support GSI routing")]
    NoRouting,
    #[error("no GSI left for an MSI route ({0} routes is KVM's limit)")]
    Exhausted(usize),
    #[error("GSI {0} was not allocated by this router")]
    UnknownGsi(u32),
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("cannot register an irqfd for GSI {0}: {1}")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
    #[error("an MSI-X function has 1 to 2048 vectors, not {0}")]
    VectorCount(u16),
}

fn irqchip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    entry.u.irqchip.irqchip = chip;
    entry.u.irqchip.pin = pin;
    entry
}

/// The legacy routes: both PICs for GSIs 0-15 (but 2, the cascade) and the
/// IOAPIC for 0-23, with GSI 0 on IOAPIC pin 2 and GSI 2 unrouted.
pub fn legacy_routes() -> Vec<kvm_irq_routing_entry> {
    let mut routes = Vec::new();
    for gsi in 0..16 {
        match gsi {
            2 => {}
            0..=7 => routes.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_MASTER, gsi)),
            _ => routes.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8)),
        }
    }
    for gsi in 0..IOAPIC_PINS {
        match gsi {
            0 => routes.push(irqchip_route(0, KVM_IRQCHIP_IOAPIC, 2)),
            2 => {}
            _ => routes.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi)),
        }
    }
    routes
}

/// Installs `routes` as the VM's whole routing table.
pub fn set_routing(vm: &VmFd, routes: &[kvm_irq_routing_entry]) -> Result<(), InterruptError> {
    let table =
        KvmIrqRouting::from_entries(routes).map_err(|e| InterruptError::Table(format!("{e:?}")))?;
    vm.set_gsi_routing(&table)
        .map_err(InterruptError::SetRouting)
}

/// First GSI above the IOAPIC's pins: where MSI routes start.
pub const FIRST_MSI_GSI: u32 = IOAPIC_PINS;

/// Owns the VM's whole GSI routing table: the legacy routes plus one MSI
/// route per allocated GSI whose vector is live. Shared (`Arc`) by every
/// device with MSI-X; internally locked, so table pushes are serialised.
pub struct MsiRouter {
    /// None only for [`MsiRouter::without_kvm`] (the fuzz targets).
    vm: Option<Arc<VmFd>>,
    legacy: Vec<kvm_irq_routing_entry>,
    /// Most entries (and one past the highest GSI) KVM accepts.
    max_routes: usize,
    state: Mutex<RouterState>,
}

#[derive(Default)]
struct RouterState {
    /// GSIs handed out and not released.
    allocated: BTreeSet<u32>,
    /// Released GSIs, reused lowest first.
    free: BTreeSet<u32>,
    /// Next never-used GSI.
    next: u32,
    /// The MSI routes (address, data) currently in KVM's table, by GSI.
    msi: BTreeMap<u32, (u64, u32)>,
}

fn msi_route(gsi: u32, address: u64, data: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    entry.u.msi.address_lo = address as u32;
    entry.u.msi.address_hi = (address >> 32) as u32;
    entry.u.msi.data = data;
    entry
}

impl MsiRouter {
    /// Takes over `vm`'s routing table (an irqchip must exist) and installs
    /// the legacy routes.
    pub fn new(vm: Arc<VmFd>) -> Result<Self, InterruptError> {
        let cap = vm.check_extension_int(Cap::IrqRouting);
        if cap <= 0 {
            return Err(InterruptError::NoRouting);
        }
        // KVM_CAP_IRQ_ROUTING reports KVM_MAX_IRQ_ROUTES (4096 on x86); the
        // table wrapper cannot hold more either.
        let max_routes = (cap as usize).min(KVM_MAX_IRQ_ROUTES);
        let legacy = legacy_routes();
        set_routing(&vm, &legacy)?;
        Ok(MsiRouter {
            vm: Some(vm),
            legacy,
            max_routes,
            state: Mutex::new(RouterState {
                next: FIRST_MSI_GSI,
                ..Default::default()
            }),
        })
    }

    /// A router that talks to no VM, for the fuzz targets: GSIs, irqfds
    /// and routing tables are kept and built as usual, never installed.
    #[cfg(feature = "fuzzing")]
    pub fn without_kvm() -> Self {
        MsiRouter {
            vm: None,
            legacy: legacy_routes(),
            max_routes: KVM_MAX_IRQ_ROUTES,
            state: Mutex::new(RouterState {
                next: FIRST_MSI_GSI,
                ..Default::default()
            }),
        }
    }

    /// The MSI routes in the table, by GSI (for the fuzz targets' checks).
    #[cfg(feature = "fuzzing")]
    pub fn msi_routes(&self) -> BTreeMap<u32, (u64, u32)> {
        self.lock().msi.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next free GSI (from 24 up) with a new non-blocking eventfd
    /// registered as its irqfd. No route yet: writing the eventfd does
    /// nothing until [`set_msi`](Self::set_msi). Fails once every GSI KVM
    /// allows is taken, counting the legacy routes, so that a table with a
    /// route for every allocated GSI always fits.
    pub fn allocate(&self) -> Result<(u32, EventFd), InterruptError> {
        let mut state = self.lock();
        if self.legacy.len() + state.allocated.len() >= self.max_routes {
            return Err(InterruptError::Exhausted(self.max_routes));
        }
        let gsi = match state.free.first() {
            Some(&gsi) => gsi,
            None if (state.next as usize) < self.max_routes => state.next,
            None => return Err(InterruptError::Exhausted(self.max_routes)),
        };
        let evt = EventFd::new(EFD_NONBLOCK).map_err(InterruptError::EventFd)?;
        if let Some(vm) = &self.vm {
            vm.register_irqfd(&evt, gsi)
                .map_err(|e| InterruptError::Irqfd(gsi, e))?;
        }
        if !state.free.remove(&gsi) {
            state.next += 1;
        }
        state.allocated.insert(gsi);
        Ok((gsi, evt))
    }

    /// Gives back a GSI from [`allocate`](Self::allocate): unregisters its
    /// irqfd, drops its route and makes the number reusable.
    pub fn release(&self, gsi: u32, irqfd: &EventFd) -> Result<(), InterruptError> {
        let mut state = self.lock();
        if !state.allocated.remove(&gsi) {
            return Err(InterruptError::UnknownGsi(gsi));
        }
        state.free.insert(gsi);
        if let Some(Err(e)) = self.vm.as_ref().map(|vm| vm.unregister_irqfd(irqfd, gsi)) {
            log::debug!("irq: cannot unregister the irqfd of GSI {gsi}: {e}");
        }
        if state.msi.remove(&gsi).is_some() {
            self.push(&state)?;
        }
        Ok(())
    }

    /// Adds or replaces the MSI route of `gsi` and installs the table. If
    /// KVM refuses it, the route is dropped (the vector stays quiet) and
    /// the error returned; the rest of the table is unaffected.
    pub fn set_msi(&self, gsi: u32, address: u64, data: u32) -> Result<(), InterruptError> {
        let mut state = self.lock();
        if !state.allocated.contains(&gsi) {
            return Err(InterruptError::UnknownGsi(gsi));
        }
        if state.msi.get(&gsi) == Some(&(address, data)) {
            return Ok(());
        }
        state.msi.insert(gsi, (address, data));
        if let Err(e) = self.push(&state) {
            state.msi.remove(&gsi);
            if let Err(again) = self.push(&state) {
                log::debug!("irq: cannot reinstall the routing table without GSI {gsi}: {again}");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Drops the MSI route of `gsi` (its vector is masked or disabled).
    pub fn clear(&self, gsi: u32) -> Result<(), InterruptError> {
        let mut state = self.lock();
        if !state.allocated.contains(&gsi) {
            return Err(InterruptError::UnknownGsi(gsi));
        }
        if state.msi.remove(&gsi).is_some() {
            self.push(&state)?;
        }
        Ok(())
    }

    /// Installs legacy + MSI routes as the VM's table.
    fn push(&self, state: &RouterState) -> Result<(), InterruptError> {
        let mut routes = Vec::with_capacity(self.legacy.len() + state.msi.len());
        routes.extend_from_slice(&self.legacy);
        routes.extend(
            state
                .msi
                .iter()
                .map(|(&gsi, &(address, data))| msi_route(gsi, address, data)),
        );
        match &self.vm {
            Some(vm) => set_routing(vm, &routes),
            // No VM (fuzzing): the table is still built, as KVM would get it.
            None => KvmIrqRouting::from_entries(&routes)
                .map(drop)
                .map_err(|e| InterruptError::Table(format!("{e:?}"))),
        }
    }
}

/// A VM with an in-kernel irqchip and one vCPU whose local APIC accepts
/// interrupts, to watch MSIs arrive: a fixed-mode MSI to APIC ID 0 sets
/// its vector's bit in the IRR, and nothing runs the vCPU to clear it.
#[cfg(test)]
pub(crate) mod test_vm {
    use std::sync::Arc;

    use kvm_bindings::{kvm_enable_cap, KVM_CAP_X2APIC_API, KVM_X2APIC_API_USE_32BIT_IDS};
    use kvm_ioctls::{Kvm, VcpuFd, VmFd};

    /// LAPIC registers (offsets into `kvm_lapic_state`).
    const APIC_SPIV: usize = 0xf0;
    const APIC_IRR: usize = 0x200;

    pub struct TestVm {
        pub vm: Arc<VmFd>,
        vcpu: VcpuFd,
    }

    impl TestVm {
        pub fn new() -> Self {
            Self::build(false)
        }

        /// With the x2APIC API's 32-bit IDs, under which KVM refuses MSI
        /// routes with address bits 7:0 of the high dword set.
        pub fn with_x2apic_ids() -> Self {
            Self::build(true)
        }

        fn build(x2apic_ids: bool) -> Self {
            let vm = Kvm::new()
                .expect("/dev/kvm")
                .create_vm()
                .expect("create_vm");
            vm.create_irq_chip().expect("irqchip");
            if x2apic_ids {
                let cap = kvm_enable_cap {
                    cap: KVM_CAP_X2APIC_API,
                    args: [u64::from(KVM_X2APIC_API_USE_32BIT_IDS), 0, 0, 0],
                    ..Default::default()
                };
                vm.enable_cap(&cap).expect("KVM_CAP_X2APIC_API");
            }
            let vcpu = vm.create_vcpu(0).expect("vcpu");
            let mut lapic = vcpu.get_lapic().expect("get_lapic");
            // Software-enable the APIC (SPIV bit 8), spurious vector 0xff.
            lapic.regs[APIC_SPIV] = 0xff_u8 as _;
            lapic.regs[APIC_SPIV + 1] = 0x01;
            vcpu.set_lapic(&lapic).expect("set_lapic");
            TestVm {
                vm: Arc::new(vm),
                vcpu,
            }
        }

        /// Whether `vector` is requested in the vCPU's IRR.
        pub fn irr(&self, vector: u8) -> bool {
            let lapic = self.vcpu.get_lapic().expect("get_lapic");
            let v = usize::from(vector);
            let byte = lapic.regs[APIC_IRR + (v / 32) * 0x10 + (v % 32) / 8] as u8;
            byte & (1 << (v % 8)) != 0
        }
    }

    /// The MSI address for APIC ID 0, physical destination mode.
    pub const MSI_ADDRESS: u64 = 0xfee0_0000;

    /// MSI data for a fixed, edge-triggered `vector`.
    pub fn msi_data(vector: u8) -> u32 {
        u32::from(vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_vm::{msi_data, TestVm, MSI_ADDRESS};

    #[test]
    fn router_hands_out_distinct_gsis_from_24() {
        let t = TestVm::new();
        let router = MsiRouter::new(t.vm.clone()).unwrap();
        let (a, _ea) = router.allocate().unwrap();
        let (b, eb) = router.allocate().unwrap();
        let (c, _ec) = router.allocate().unwrap();
        assert_eq!((a, b, c), (24, 25, 26));
        router.release(b, &eb).unwrap();
        assert!(matches!(
            router.release(b, &eb),
            Err(InterruptError::UnknownGsi(25))
        ));
        let (again, _e) = router.allocate().unwrap();
        assert_eq!(again, 25, "released GSIs are reused");
        assert_eq!(router.allocate().unwrap().0, 27);
    }

    #[test]
    fn router_delivers_an_msi_and_stops_when_cleared() {
        let t = TestVm::new();
        let router = MsiRouter::new(t.vm.clone()).unwrap();
        let (gsi, irqfd) = router.allocate().unwrap();
        irqfd.write(1).unwrap();
        assert!(!t.irr(0x41), "no route yet");
        router.set_msi(gsi, MSI_ADDRESS, msi_data(0x41)).unwrap();
        irqfd.write(1).unwrap();
        assert!(t.irr(0x41));
        router.set_msi(gsi, MSI_ADDRESS, msi_data(0x42)).unwrap();
        irqfd.write(1).unwrap();
        assert!(t.irr(0x42), "the route was replaced");
        router.clear(gsi).unwrap();
        router.clear(gsi).unwrap();
        irqfd.write(1).unwrap();
        assert!(!t.irr(0x43));
        assert!(
            router.set_msi(3, MSI_ADDRESS, 0).is_err(),
            "legacy GSIs are not the router's to give"
        );
        assert!(router.clear(4000).is_err());
    }

    #[test]
    fn garbage_routes_do_not_wedge_the_table() {
        let t = TestVm::new();
        let router = MsiRouter::new(t.vm.clone()).unwrap();
        let (bad, bad_fd) = router.allocate().unwrap();
        let (good, good_fd) = router.allocate().unwrap();
        for (address, data) in [
            (0, 0),
            (u64::MAX, u32::MAX),
            (0x1234_5678_9abc_def0, 0xdead_beef),
            (0xfee0_0000 | 0xff << 12, 0x4700),
        ] {
            // Accepted or refused, never a panic; the table stays usable.
            let _ = router.set_msi(bad, address, data);
            bad_fd.write(1).unwrap();
            router.set_msi(good, MSI_ADDRESS, msi_data(0x51)).unwrap();
        }
        good_fd.write(1).unwrap();
        assert!(t.irr(0x51));
    }

    #[test]
    fn a_refused_route_is_dropped_and_the_rest_keeps_working() {
        let t = TestVm::with_x2apic_ids();
        let router = MsiRouter::new(t.vm.clone()).unwrap();
        let (bad, bad_fd) = router.allocate().unwrap();
        let (good, good_fd) = router.allocate().unwrap();
        router.set_msi(bad, MSI_ADDRESS, msi_data(0x61)).unwrap();
        bad_fd.write(1).unwrap();
        assert!(t.irr(0x61));
        // Reserved under 32-bit x2APIC IDs: KVM refuses the table.
        let refused = router.set_msi(bad, 1 << 32 | MSI_ADDRESS, msi_data(0x62));
        assert!(matches!(refused, Err(InterruptError::SetRouting(_))));
        bad_fd.write(1).unwrap();
        assert!(!t.irr(0x62), "the refused route is not in force");
        router.set_msi(good, MSI_ADDRESS, msi_data(0x63)).unwrap();
        good_fd.write(1).unwrap();
        assert!(t.irr(0x63), "the table is not wedged by the bad route");
        router.set_msi(bad, MSI_ADDRESS, msi_data(0x64)).unwrap();
        bad_fd.write(1).unwrap();
        assert!(t.irr(0x64));
    }

    #[test]
    fn router_runs_out_at_kvms_limit() {
        let t = TestVm::new();
        let router = MsiRouter::new(t.vm.clone()).unwrap();
        let limit = router.max_routes - router.legacy.len();
        let mut fds = Vec::new();
        let err = loop {
            match router.allocate() {
                Ok(v) => fds.push(v),
                Err(e) => break e,
            }
            assert!(fds.len() <= limit);
        };
        assert!(matches!(err, InterruptError::Exhausted(_)), "{err}");
        assert_eq!(fds.len(), limit);
        assert!(fds
            .iter()
            .all(|(gsi, _)| (*gsi as usize) < router.max_routes));
        // A table with a route on every GSI still fits.
        let last = fds.last().unwrap().0;
        router.set_msi(last, MSI_ADDRESS, 0x30).unwrap();
    }

    fn pins(routes: &[kvm_irq_routing_entry], gsi: u32) -> Vec<(u32, u32)> {
        routes
            .iter()
            .filter(|r| r.gsi == gsi)
            // SAFETY: every entry built here is of the irqchip type.
            .map(|r| unsafe { (r.u.irqchip.irqchip, r.u.irqchip.pin) })
            .collect()
    }

    #[test]
    fn pit_reaches_ioapic_pin_2() {
        let routes = legacy_routes();
        assert_eq!(
            pins(&routes, 0),
            vec![(KVM_IRQCHIP_PIC_MASTER, 0), (KVM_IRQCHIP_IOAPIC, 2)]
        );
        assert!(pins(&routes, 2).is_empty());
    }

    #[test]
    fn isa_and_pci_lines_keep_their_numbers() {
        let routes = legacy_routes();
        assert_eq!(
            pins(&routes, 4),
            vec![(KVM_IRQCHIP_PIC_MASTER, 4), (KVM_IRQCHIP_IOAPIC, 4)]
        );
        assert_eq!(
            pins(&routes, 9),
            vec![(KVM_IRQCHIP_PIC_SLAVE, 1), (KVM_IRQCHIP_IOAPIC, 9)]
        );
        assert_eq!(pins(&routes, 23), vec![(KVM_IRQCHIP_IOAPIC, 23)]);
        assert_eq!(routes.len(), 15 + 23);
    }
}
