//! Entry points for the fuzz targets in `fuzz/`, and nothing else: this
//! module exists only with the `fuzzing` cargo feature, which no build of
//! utsuwa itself turns on. It reaches the crate-private parsers of guest
//! input (virtio requests and chains) through thin wrappers that live next
//! to them, so the devices' modules stay private. Nothing here opens
//! /dev/kvm: MSI-X runs on [`MsiRouter::without_kvm`], virtio-net on the
//! tests' stand-in TAP.
//!
//! Already public and used by the targets directly: `pci::PciConfig`,
//! `pci::msix`, `boot`, `config`.

pub use crate::interrupts::MsiRouter;
pub use crate::virtio::block::fuzzing as block;
pub use crate::virtio::net::fuzzing as net;
pub use crate::virtio::rng::fuzzing as rng;
pub use crate::virtio::vsock::fuzzing as vsock;
