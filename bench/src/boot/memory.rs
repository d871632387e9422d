//! The `boot` benchmark's memory runs: a VMM with a halted guest, its
//! `/proc/PID/smaps` read once the marker is out, and the resident memory
//! split into guest RAM and everything else (the VMM's own overhead).

use std::time::Duration;

use super::{Case, Setup, Vmm, MARKER, MEM_MIB, PLAN_HALT};
use crate::proc::{self, Mapping, Timed};

/// How long after the marker the memory is read: the guest halts right
/// after it, so this only lets the VMM finish what the marker triggered.
const SETTLE: Duration = Duration::from_millis(200);

/// One memory reading of a VMM with a halted guest; sizes in KiB.
#[derive(Debug, Clone, Default)]
pub struct MemSample {
    pub run: usize,
    /// Rss summed over every mapping but guest RAM.
    pub overhead_kb: u64,
    pub rss_kb: u64,
    pub pss_kb: u64,
    /// Rss of the guest RAM mapping(s): guest pages touched so far.
    pub guest_rss_kb: u64,
    /// The mappings taken for guest RAM, as `start-end size perms`.
    pub guest_maps: Vec<String>,
    pub threads: u64,
    pub children: usize,
}

/// Boots once with a halting guest and reads the VMM's memory once the
/// marker is out (plus `SETTLE`), then kills it.
pub fn memory_run(setup: &Setup, vmm: &Vmm, case: &Case, run: usize) -> Result<MemSample, String> {
    let mut cmd = vmm.command(case, setup.kernel(case), PLAN_HALT);
    let mut child = Timed::spawn(&mut cmd)?;
    let deadline = child.start + setup.timeout;
    if let Err(why) = child.wait_line(|l| l.starts_with(MARKER), deadline) {
        return Err(format!(
            "{} ({})",
            why.no_marker(),
            child.finish_and_tail(4)
        ));
    }
    std::thread::sleep(SETTLE);
    let pid = child.pid();
    let maps = proc::smaps(pid);
    let threads = proc::threads(pid);
    let children = proc::children(pid);
    child.kill();
    let maps = maps?;
    let guest = guest_ram(&maps, MEM_MIB << 10).ok_or_else(|| {
        format!("no anonymous read-write mapping(s) of {MEM_MIB} MiB: guest RAM not found")
    })?;
    let rss_kb: u64 = maps.iter().map(|m| m.rss_kb).sum();
    let guest_rss_kb: u64 = guest.iter().map(|&i| maps[i].rss_kb).sum();
    Ok(MemSample {
        run,
        overhead_kb: rss_kb - guest_rss_kb,
        rss_kb,
        pss_kb: maps.iter().map(|m| m.pss_kb).sum(),
        guest_rss_kb,
        guest_maps: guest
            .iter()
            .map(|&i| {
                let m = &maps[i];
                format!("{:x}-{:x} {} KiB {}", m.start, m.end, m.size_kb, m.perms)
            })
            .collect(),
        threads: threads?,
        children: children?.len(),
    })
}

/// The indices of the mappings that hold guest RAM of `guest_kb` KiB.
///
/// Both VMMs give guest RAM anonymous private memory of its exact size:
/// utsuwa one `mmap` per RAM region (vm-memory's `MmapRegion`, with
/// MAP_NORESERVE; two regions only above 3 GiB, split around the 32-bit
/// hole), QEMU one RAM block that it first reserves as PROT_NONE and then
/// maps read-write, leaving a PROT_NONE guard page after it. In smaps they
/// are `rw-p` lines with no path. Nothing else either VMM maps read-write
/// comes near that size (glibc arenas: 64 MiB reserved mostly as `---p`;
/// thread stacks: 2-8 MiB), so the rule is: the largest anonymous `rw`
/// mappings, biggest first, until they add up to the guest size. The
/// kernel may merge a neighbouring anonymous mapping with identical flags
/// into a RAM mapping, which is why the sum may exceed the size a little
/// (the report lists the sizes taken, so that shows). None when they never
/// add up, or it takes more than two mappings.
pub fn guest_ram(maps: &[Mapping], guest_kb: u64) -> Option<Vec<usize>> {
    let mut anon: Vec<usize> = (0..maps.len())
        .filter(|&i| maps[i].path.is_empty() && maps[i].perms.starts_with("rw"))
        .collect();
    anon.sort_by_key(|&i| std::cmp::Reverse(maps[i].size_kb));
    let mut taken = Vec::new();
    let mut total = 0;
    for i in anon.into_iter().take(2) {
        taken.push(i);
        total += maps[i].size_kb;
        if total >= guest_kb {
            return Some(taken);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(size_kb: u64, perms: &str, path: &str) -> Mapping {
        Mapping {
            size_kb,
            perms: perms.into(),
            path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn finds_guest_ram() {
        let maps = vec![
            map(2048, "rw-p", ""),
            map(65404, "---p", ""),
            map(262144, "rw-p", ""),
            map(300000, "r-xp", "/usr/bin/qemu"),
        ];
        assert_eq!(guest_ram(&maps, 262144), Some(vec![2]));
        // Split around the 32-bit hole.
        let split = vec![
            map(3 << 20, "rw-p", ""),
            map(1 << 20, "rw-p", ""),
            map(8192, "rw-p", ""),
        ];
        assert_eq!(guest_ram(&split, 4 << 20), Some(vec![0, 1]));
        assert_eq!(guest_ram(&maps[..2], 262144), None);
    }
}
