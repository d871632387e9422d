//! Guest RAM: one anonymous mapping per region of the layout, registered
//! with KVM as memory slots. Nothing here touches the pages, so a guest's
//! memory costs the host only what the guest actually uses.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout;

/// Guest memory as the rest of the VMM sees it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// The least memory a guest can have: room for the boot structures below
/// 1 MiB and a kernel above it.
pub const MIN_MEM_SIZE: u64 = 8 << 20;

/// Errors from creating or registering guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory size {0} is too small (at least {min} MiB)", min = MIN_MEM_SIZE >> 20)]
    TooSmall(u64),
    #[error("guest memory size {size} MiB is more than this host has ({host} MiB)", size = .0 >> 20, host = .1 >> 20)]
    MoreThanHost(u64, u64),
    #[error("cannot map guest memory: {0}")]
    Mmap(String),
    #[error("cannot register guest memory with KVM: {0}")]
    SetMemoryRegion(#[source] kvm_ioctls::Error),
}

/// Total physical memory of the host, from sysconf.
pub fn host_memory_bytes() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (pages.max(0) as u64).saturating_mul(page_size.max(0) as u64)
}

/// Maps `size` bytes of guest RAM laid out as `layout::ram_regions` says.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if size < MIN_MEM_SIZE {
        return Err(MemoryError::TooSmall(size));
    }
    let host = host_memory_bytes();
    if host != 0 && size > host {
        return Err(MemoryError::MoreThanHost(size, host));
    }
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Mmap(e.to_string()))
}

/// Registers every region of `mem` with the VM, one slot each.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let host_addr = mem
            .get_host_address(region.start_addr())
            .map_err(|e| MemoryError::Mmap(e.to_string()))?;
        let kvm_region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the host range [userspace_addr, +memory_size) is a live
        // mapping owned by `mem`, which the VM keeps alive (behind an Arc)
        // for as long as the VM fd exists; slots do not overlap because the
        // layout's regions do not.
        unsafe { vm.set_user_memory_region(kvm_region) }.map_err(MemoryError::SetMemoryRegion)?;
    }
    Ok(())
}

/// Usable RAM end below the 32-bit hole (exclusive).
pub fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().0 + r.len())
        .filter(|end| *end <= layout::MMIO32_START)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_tiny_and_huge_sizes() {
        assert!(matches!(
            create_guest_memory(0),
            Err(MemoryError::TooSmall(0))
        ));
        assert!(matches!(
            create_guest_memory(1 << 50),
            Err(MemoryError::MoreThanHost(..))
        ));
    }

    #[test]
    fn maps_the_layout() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(low_ram_end(&mem), 64 << 20);
    }
}
