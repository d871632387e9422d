//! virtio-rng's request parser for the fuzz targets in `fuzz/` (cargo
//! feature `fuzzing`; see `crate::fuzzing`).

use std::ops::Deref;

use virtio_queue::DescriptorChain;

use super::request;
use crate::memory::GuestMemoryMmap;

/// Parses `chain` as the device does: the buffers to fill (address,
/// length) and their total, or why it was refused.
#[allow(clippy::type_complexity)]
pub fn parse<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
) -> Result<(u16, Vec<(u64, u32)>, usize), (u16, String)>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    request::parse(chain, mem)
        .map(|r| {
            let regions = r.regions.iter().map(|g| (g.addr.0, g.len)).collect();
            (r.head, regions, r.len)
        })
        .map_err(|(head, e)| (head, e.to_string()))
}
