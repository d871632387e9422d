//! PCI functions' own state, as opposed to the bus that reaches them
//! (`devices::pci_host`): `config` is a type-0 configuration space with
//! BARs and a capability list, `msix` the MSI-X capability, vector table
//! and pending bits, signalling through the VM's `interrupts::MsiRouter`.
//!
//! A function built on them implements `devices::pci_host::PciFunction` by
//! forwarding to [`PciConfig::read`] / [`PciConfig::write`], remapping its
//! BARs on a returned [`BarMove`], and passing the MSI-X message control
//! (read back with [`PciConfig::capability_bytes`]) to
//! [`Msix::set_message_control`] after a write to its capability.

pub mod config;
pub mod msix;

pub use config::{BarKind, BarMove, PciConfig, PciError};
pub use msix::{msix_capability, Msix};
