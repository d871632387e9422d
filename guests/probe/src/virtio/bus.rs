//! What the device checks (`blk`, `rng`, `net`) share: one discovery of the
//! modern virtio functions per boot (configuration access, BAR placement,
//! the DMA arena), and the interrupt set-up of a function (MSI-X table
//! entries on `PROBE_VIRTIO_IRQS` slots, or polling).
//!
//! The first check that needs the bus opens it ([`Devices::bus`]): that
//! prints `PROBE virtio window=...` and one `PROBE virtio 00:DD.F device=...`
//! line per function, once; later checks find the BARs placed.

use super::{BarAllocator, DevFn, Transport, NO_VECTOR, VIRTIO_VECTORS, VIRTIO_VECTOR_BASE};
use crate::acpi::Acpi;
use crate::boot::Boot;
use crate::dma::Arena;
use crate::lapic::Lapic;
use crate::msg::Msg;
use crate::pci::ConfigSpace;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicUsize, Ordering};

const MAX_FNS: usize = 32;

pub struct Bus {
    pub cfg: ConfigSpace,
    /// DMA memory for every driver (never freed: devices keep their rings).
    pub arena: Arena,
    fns: [(DevFn, u16); MAX_FNS],
    nfns: usize,
    bars: [[super::Bar; 6]; MAX_FNS],
    /// Functions whose BARs could not all be placed or mapped (and why).
    bar_errors: [Option<Msg>; MAX_FNS],
    lapic: Lapic,
    lapic_on: bool,
}

impl Bus {
    fn open(boot: &Boot, acpi: Option<&Acpi>) -> Result<Bus, Msg> {
        let cfg = ConfigSpace::find(acpi)
            .ok_or_else(|| fail!("no PCI configuration access (no ECAM, no 0xcf8)"))?;
        let arena = Arena::new(boot).ok_or_else(|| fail!("no usable RAM for DMA above 4 MiB"))?;
        let mut alloc = BarAllocator::new(
            acpi.and_then(|a| a.pci_mem32),
            acpi.and_then(|a| a.pci_mem64),
        );
        let (wb, wl) = alloc.window();
        outln!(
            "PROBE virtio window={wb:#x}-{:#x} source={} config={}",
            wl - 1,
            alloc.source,
            cfg.name()
        );
        let mut bus = Bus {
            cfg,
            arena,
            fns: [(DevFn(0), 0); MAX_FNS],
            nfns: 0,
            bars: [[super::Bar::default(); 6]; MAX_FNS],
            bar_errors: core::array::from_fn(|_| None),
            lapic: Lapic::new(acpi.map_or(0xfee0_0000, |a| a.lapic_addr)),
            lapic_on: false,
        };
        bus.nfns = super::scan(&cfg, &mut bus.fns);
        // Size everything first, so BARs the VMM placed are reserved before any is placed.
        for i in 0..bus.nfns {
            bus.bars[i] = super::size_bars(&cfg, bus.fns[i].0, &mut alloc);
        }
        for i in 0..bus.nfns {
            let (devfn, device) = bus.fns[i];
            if let Err(e) = super::assign_bars(&cfg, devfn, &mut bus.bars[i], &mut alloc) {
                bus.bar_errors[i] = Some(e);
            }
            let mut line = crate::console::Console::new();
            let _ = write!(
                line,
                "PROBE virtio {devfn} device={device:04x} type={}",
                device - super::MODERN_BASE
            );
            for (b, bar) in bus.bars[i].iter().enumerate().filter(|(_, b)| b.size != 0) {
                let _ = write!(
                    line,
                    " bar{b}={:#x}+{:#x}:{}{}",
                    bar.addr,
                    bar.size,
                    if bar.is64 { "mem64" } else { "mem32" },
                    if bar.by_probe { ":probe" } else { ":preset" }
                );
            }
            let _ = writeln!(line);
        }
        Ok(bus)
    }

    /// The functions with virtio device ID `device` (0x1040 + type), in bus order.
    pub fn find(&self, device: u16) -> impl Iterator<Item = (usize, DevFn)> + '_ {
        self.fns[..self.nfns]
            .iter()
            .enumerate()
            .filter(move |(_, f)| f.1 == device)
            .map(|(i, f)| (i, f.0))
    }

    /// Every modern virtio function (devfn, device ID), in bus order.
    pub fn functions(&self) -> &[(DevFn, u16)] {
        &self.fns[..self.nfns]
    }

    /// Why not every BAR of function `i` could be placed or mapped, if so
    /// (the function may still work when its capabilities avoid that BAR).
    pub fn bar_error(&self, i: usize) -> Option<&Msg> {
        self.bar_errors[i].as_ref()
    }

    /// The transport of function `i` (from [`Bus::find`]), capabilities
    /// located; prints `PROBE virtio 00:DD.F caps=...`.
    pub fn transport(&self, i: usize) -> Result<Transport, Msg> {
        let t = Transport::new(self.cfg, self.fns[i].0, self.bars[i])?;
        outln!(
            "PROBE virtio {} caps={} msix_entries={} notify_mult={}",
            t.devfn,
            t.caps(),
            t.msix_entries,
            t.notify_mult
        );
        Ok(t)
    }

    /// The BSP's APIC ID, for MSI-X messages (the local APIC is enabled the first time).
    pub fn apic_id(&mut self) -> u32 {
        if !self.lapic_on {
            self.lapic.enable();
            self.lapic_on = true;
        }
        self.lapic.id()
    }
}

/// The bus, opened on first use (and its failure remembered).
pub struct Devices<'a> {
    boot: &'a Boot,
    acpi: Option<&'a Acpi>,
    bus: Option<Result<Bus, Msg>>,
}

impl<'a> Devices<'a> {
    pub fn new(boot: &'a Boot, acpi: Option<&'a Acpi>) -> Devices<'a> {
        Devices {
            boot,
            acpi,
            bus: None,
        }
    }

    pub fn bus(&mut self) -> Result<&mut Bus, Msg> {
        let (boot, acpi) = (self.boot, self.acpi);
        match self.bus.get_or_insert_with(|| Bus::open(boot, acpi)) {
            Ok(b) => Ok(b),
            Err(e) => Err(fail!("{e}")),
        }
    }
}

/// Next free `PROBE_VIRTIO_IRQS` slot (shared by all functions; wraps around).
static NEXT_IRQ_SLOT: AtomicUsize = AtomicUsize::new(0);

/// How a function signals: MSI-X entries `0..entries` on the counters
/// `base..base+entries` (entry 0: configuration changes, then the queues),
/// or nothing at all (the driver polls).
#[derive(Clone, Copy, Default)]
pub struct Irqs {
    pub msix: bool,
    pub base: usize,
    pub entries: usize,
    apic_id: u32,
    /// Queues sharing the entries after entry 0.
    nq: usize,
    table: u16,
}

impl Irqs {
    /// Entries for the configuration vector and `nq` queues (as many as
    /// the table has), slots taken from the shared counters.
    pub fn new(t: &Transport, msix: bool, nq: usize, apic_id: u32) -> Irqs {
        if !msix {
            return Irqs {
                nq,
                ..Irqs::default()
            };
        }
        let entries = usize::from(t.msix_entries).min(1 + nq);
        let base = NEXT_IRQ_SLOT.fetch_add(entries, Ordering::Relaxed);
        Irqs {
            msix,
            base,
            entries,
            apic_id,
            nq,
            table: t.msix_entries,
        }
    }

    /// Program the function: MSI-X on with every entry to the BSP and
    /// `config_msix_vector` = 0, or MSI-X off and NO_VECTOR; both must read back.
    pub fn program(&self, t: &Transport) -> Result<(), Msg> {
        if self.msix {
            if !t.has_msix() {
                return Err(fail!("no MSI-X capability"));
            }
            t.msix_enable(true);
            for e in 0..self.entries {
                let vector = VIRTIO_VECTOR_BASE + ((self.base + e) % VIRTIO_VECTORS) as u32;
                t.msix_set_entry(e as u16, self.apic_id, vector);
            }
            if !t.msix_enabled() {
                return Err(fail!("MSI-X enable bit does not stick"));
            }
            let kept = t.set_config_vector(0);
            if kept != 0 {
                return Err(fail!("config_msix_vector 0 refused (reads back {kept:#x})"));
            }
        } else {
            t.msix_enable(false);
            let kept = t.set_config_vector(NO_VECTOR);
            if kept != NO_VECTOR {
                return Err(fail!("config_msix_vector NO_VECTOR reads back {kept:#x}"));
            }
        }
        Ok(())
    }

    /// The MSI-X entry of queue `q`: 1 + q when the table has room, else
    /// shared (entry 1, or 0 with a one-entry table); NO_VECTOR when polling.
    pub fn queue_vector(&self, q: usize) -> u16 {
        let n = usize::from(self.table);
        if !self.msix {
            NO_VECTOR
        } else if n > self.nq {
            1 + q as u16
        } else if n >= 2 {
            1
        } else {
            0
        }
    }

    /// Interrupts counted on this function's entries; when polling, every
    /// interrupt other than the timer's and COM1's (there should be none).
    pub fn sum(&self) -> u32 {
        if self.msix {
            (0..self.entries).fold(0u32, |s, e| s.wrapping_add(super::irq_count(self.base + e)))
        } else {
            (0..VIRTIO_VECTORS).fold(
                crate::irq::PROBE_OTHER_IRQS.load(Ordering::SeqCst),
                |s, e| s.wrapping_add(super::irq_count(e)),
            )
        }
    }

    /// Configuration-change interrupts (entry 0) so far.
    pub fn config_count(&self) -> u32 {
        if self.msix {
            super::irq_count(self.base)
        } else {
            0
        }
    }

    pub fn mode(&self) -> &'static str {
        if self.msix {
            "msix"
        } else {
            "poll"
        }
    }
}
