//! The VM's interrupt routing: which KVM GSI reaches which pin of the
//! in-kernel 8259 PICs and IOAPIC. It follows the PC convention the MADT
//! describes: ISA IRQ 0 (the PIT) arrives on IOAPIC pin 2, every other ISA
//! IRQ on the pin of its number, GSIs 16-23 on IOAPIC pins 16-23. Later
//! MSI routes are added to the same table, which KVM replaces as a whole.

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
};
use kvm_ioctls::VmFd;

use crate::layout::IOAPIC_PINS;

/// Errors from programming the routing table.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("cannot build the GSI routing table: {0}")]
    Table(String),
    #[error("KVM refused the GSI routing table: {0}")]
    SetRouting(#[source] kvm_ioctls::Error),
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

#[cfg(test)]
mod tests {
    use super::*;

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
