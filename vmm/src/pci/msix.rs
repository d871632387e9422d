//! MSI-X (PCI Local Bus 3.0, section 6.8.2): the capability, the vector
//! table and the pending-bit array (PBA) of one function.
//!
//! Each vector owns a GSI and an irqfd from the VM's [`MsiRouter`]. A
//! vector is *live* when MSI-X is enabled and neither the function nor the
//! vector is masked; only then does [`Msix::trigger`] write its irqfd,
//! otherwise it sets the vector's pending bit. Whenever a vector becomes
//! live, or its address or data change while it is, its KVM route is set
//! to the entry's message (only if it differs from the installed one, as
//! a table push is costly), and a pending message is then delivered.
//! Masking a vector leaves its route in place, since nothing writes its
//! irqfd meanwhile; disabling MSI-X or a reset drops the routes.
//!
//! The table and PBA take naturally aligned 4- and 8-byte accesses, as
//! the specification requires; others read as zero and are dropped, as
//! are accesses past the end. The guest may write any address and data:
//! at worst KVM refuses the route and the vector stays quiet.

use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use crate::interrupts::{InterruptError, MsiRouter};

/// Capability ID of MSI-X.
pub const PCI_CAP_ID_MSIX: u8 = 0x11;
/// Length of the MSI-X capability.
pub const MSIX_CAP_LEN: usize = 12;
/// Most vectors a function can have (an 11-bit table size, N - 1).
pub const MAX_VECTORS: u16 = 2048;
/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable.
pub const MSG_CTRL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const MSG_CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: the vector is masked.
const VECTOR_MASKED: u32 = 1;
/// Writable bits of an entry's dwords: address low (bits 1:0 are zero),
/// address high, data, vector control (only the mask bit).
const ENTRY_WRITABLE: [u32; 4] = [0xffff_fffc, 0xffff_ffff, 0xffff_ffff, VECTOR_MASKED];

/// The MSI-X capability for a table of `table_size` vectors at
/// `table_offset` in BAR `table_bar`, and its PBA at `pba_offset` in BAR
/// `pba_bar` (offsets 8-byte aligned, BIRs 0-5). Returns the bytes (next
/// pointer left 0 for the list to fill) and the write mask: only message
/// control bits 15 (enable) and 14 (function mask) are writable.
pub fn msix_capability(
    table_size: u16,
    table_bar: u8,
    table_offset: u32,
    pba_bar: u8,
    pba_offset: u32,
) -> (Vec<u8>, Vec<u8>) {
    debug_assert!(table_offset % 8 == 0 && pba_offset % 8 == 0 && table_bar < 6 && pba_bar < 6);
    let control = table_size.saturating_sub(1) & (MAX_VECTORS - 1);
    let table = (table_offset & !7) | u32::from(table_bar & 7);
    let pba = (pba_offset & !7) | u32::from(pba_bar & 7);
    let mut bytes = vec![PCI_CAP_ID_MSIX, 0];
    bytes.extend_from_slice(&control.to_le_bytes());
    bytes.extend_from_slice(&table.to_le_bytes());
    bytes.extend_from_slice(&pba.to_le_bytes());
    let mut writable = vec![0; MSIX_CAP_LEN];
    writable[3] = ((MSG_CTRL_ENABLE | MSG_CTRL_FUNCTION_MASK) >> 8) as u8;
    (bytes, writable)
}

/// Bytes of a table of `vectors` entries.
pub fn table_len(vectors: u16) -> u64 {
    u64::from(vectors) * ENTRY_SIZE
}

/// Bytes of the PBA for `vectors` (whole qwords).
pub fn pba_len(vectors: u16) -> u64 {
    u64::from(vectors).div_ceil(64) * 8
}

/// Whether a table or PBA access is one the specification allows.
fn valid_access(offset: u64, len: usize) -> bool {
    matches!(len, 4 | 8) && offset % len as u64 == 0
}

#[derive(Clone, Copy, Default)]
struct Entry {
    /// Address low, address high, data, vector control.
    words: [u32; 4],
    /// The (address, data) installed as this vector's KVM route.
    route: Option<(u64, u32)>,
}

impl Entry {
    fn reset() -> Self {
        Entry {
            words: [0, 0, 0, VECTOR_MASKED],
            route: None,
        }
    }

    fn masked(&self) -> bool {
        self.words[3] & VECTOR_MASKED != 0
    }

    fn message(&self) -> (u64, u32) {
        (
            u64::from(self.words[1]) << 32 | u64::from(self.words[0]),
            self.words[2],
        )
    }
}

struct State {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
}

impl State {
    fn live(&self, vector: usize) -> bool {
        self.enabled
            && !self.function_masked
            && self.entries.get(vector).is_some_and(|e| !e.masked())
    }

    fn set_pending(&mut self, vector: usize) {
        if let Some(q) = self.pending.get_mut(vector / 64) {
            *q |= 1 << (vector % 64);
        }
    }

    /// Clears the vector's pending bit; returns whether it was set.
    fn take_pending(&mut self, vector: usize) -> bool {
        let Some(q) = self.pending.get_mut(vector / 64) else {
            return false;
        };
        let bit = 1 << (vector % 64);
        let was = *q & bit != 0;
        *q &= !bit;
        was
    }
}

/// The MSI-X state of one function, shared (`Arc`) by the function's
/// configuration and BAR handlers and its worker threads.
pub struct Msix {
    router: Arc<MsiRouter>,
    /// Per vector: its GSI and irqfd.
    vectors: Vec<(u32, EventFd)>,
    state: Mutex<State>,
}

impl Msix {
    /// `vectors` (1-2048) vectors, each with a GSI and irqfd from `router`,
    /// all masked, MSI-X disabled.
    pub fn new(vectors: u16, router: Arc<MsiRouter>) -> Result<Self, InterruptError> {
        if vectors == 0 || vectors > MAX_VECTORS {
            return Err(InterruptError::VectorCount(vectors));
        }
        let mut allocated = Vec::with_capacity(usize::from(vectors));
        for _ in 0..vectors {
            match router.allocate() {
                Ok(v) => allocated.push(v),
                Err(e) => {
                    for (gsi, evt) in &allocated {
                        let _ = router.release(*gsi, evt);
                    }
                    return Err(e);
                }
            }
        }
        let n = usize::from(vectors);
        Ok(Msix {
            router,
            vectors: allocated,
            state: Mutex::new(State {
                entries: vec![Entry::reset(); n],
                pending: vec![0; n.div_ceil(64)],
                enabled: false,
                function_masked: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.vectors.len() as u16
    }

    /// The GSI of `vector`, for diagnostics.
    pub fn gsi(&self, vector: u16) -> Option<u32> {
        self.vectors.get(usize::from(vector)).map(|v| v.0)
    }

    /// Reads the table at byte `offset` (from the table's start).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !valid_access(offset, data.len()) {
            log::debug!(
                "msix: ignored {}-byte table read at {offset:#x}",
                data.len()
            );
            return;
        }
        let state = self.lock();
        let Some(entry) = usize::try_from(offset / ENTRY_SIZE)
            .ok()
            .and_then(|i| state.entries.get(i))
        else {
            return;
        };
        let first = (offset % ENTRY_SIZE / 4) as usize;
        for (chunk, word) in data.chunks_exact_mut(4).zip(entry.words.iter().skip(first)) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
    }

    /// Writes the table at byte `offset`, then brings the entry's route and
    /// pending message up to date.
    pub fn write_table(&self, offset: u64, data: &[u8]) {
        if !valid_access(offset, data.len()) {
            log::debug!(
                "msix: ignored {}-byte table write at {offset:#x}",
                data.len()
            );
            return;
        }
        let mut state = self.lock();
        let Some(index) = usize::try_from(offset / ENTRY_SIZE)
            .ok()
            .filter(|&i| i < state.entries.len())
        else {
            return;
        };
        let first = (offset % ENTRY_SIZE / 4) as usize;
        let entry = &mut state.entries[index];
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            let word = first + i;
            if let (Some(w), Some(&mask)) = (entry.words.get_mut(word), ENTRY_WRITABLE.get(word)) {
                let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                *w = (*w & !mask) | (value & mask);
            }
        }
        self.sync(&mut state, index);
    }

    /// Reads the pending-bit array at byte `offset`.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !valid_access(offset, data.len()) {
            log::debug!("msix: ignored {}-byte PBA read at {offset:#x}", data.len());
            return;
        }
        let state = self.lock();
        let Some(&qword) = usize::try_from(offset / 8)
            .ok()
            .and_then(|i| state.pending.get(i))
        else {
            return;
        };
        let bytes = qword.to_le_bytes();
        let start = (offset % 8) as usize;
        for (d, s) in data.iter_mut().zip(bytes.iter().skip(start)) {
            *d = *s;
        }
    }

    /// Writes to the PBA: read-only, ignored.
    pub fn write_pba(&self, offset: u64, data: &[u8]) {
        log::debug!("msix: ignored PBA write of {data:x?} at {offset:#x}");
    }

    /// Applies the capability's message control (enable, function mask).
    /// Disabling drops every route; a vector that becomes live gets its
    /// route and its pending message.
    pub fn set_control(&self, enabled: bool, function_masked: bool) {
        let mut state = self.lock();
        let was_enabled = state.enabled;
        state.enabled = enabled;
        state.function_masked = function_masked;
        if was_enabled && !enabled {
            self.clear_routes(&mut state);
        }
        for index in 0..state.entries.len() {
            self.sync(&mut state, index);
        }
    }

    /// [`set_control`](Self::set_control) from the message control word.
    pub fn set_message_control(&self, control: u16) {
        self.set_control(
            control & MSG_CTRL_ENABLE != 0,
            control & MSG_CTRL_FUNCTION_MASK != 0,
        );
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.lock().enabled
    }

    /// Signals `vector`: delivered if live, otherwise left pending.
    pub fn trigger(&self, vector: u16) {
        let index = usize::from(vector);
        if index >= self.vectors.len() {
            log::debug!("msix: trigger of vector {vector} of {}", self.vectors.len());
            return;
        }
        // The irqfd is written under the lock, so a concurrent mask or
        // route change is seen either entirely before or after.
        let mut state = self.lock();
        if state.live(index) {
            self.fire(index);
        } else {
            state.set_pending(index);
        }
    }

    /// Back to the reset state: every entry zeroed and masked, nothing
    /// pending, MSI-X disabled and unmasked, no routes.
    pub fn reset(&self) {
        let mut state = self.lock();
        self.clear_routes(&mut state);
        state.entries.fill(Entry::reset());
        state.pending.fill(0);
        state.enabled = false;
        state.function_masked = false;
    }

    fn fire(&self, index: usize) {
        if let Some((gsi, irqfd)) = self.vectors.get(index) {
            if let Err(e) = irqfd.write(1) {
                log::debug!("msix: cannot signal GSI {gsi}: {e}");
            }
        }
    }

    /// If `index` is live: installs its message as its route when that
    /// changed, then delivers its pending message.
    fn sync(&self, state: &mut State, index: usize) {
        if !state.live(index) {
            return;
        }
        let (Some(entry), Some(&(gsi, _))) =
            (state.entries.get_mut(index), self.vectors.get(index))
        else {
            return;
        };
        let message = entry.message();
        if entry.route != Some(message) {
            entry.route = match self.router.set_msi(gsi, message.0, message.1) {
                Ok(()) => Some(message),
                Err(e) => {
                    log::debug!("msix: vector {index} (GSI {gsi}) stays quiet: {e}");
                    None
                }
            };
        }
        if state.take_pending(index) {
            self.fire(index);
        }
    }

    fn clear_routes(&self, state: &mut State) {
        for (entry, (gsi, _)) in state.entries.iter_mut().zip(&self.vectors) {
            if entry.route.take().is_some() {
                if let Err(e) = self.router.clear(*gsi) {
                    log::debug!("msix: cannot drop the route of GSI {gsi}: {e}");
                }
            }
        }
    }
}

impl Drop for Msix {
    fn drop(&mut self) {
        for (gsi, irqfd) in &self.vectors {
            if let Err(e) = self.router.release(*gsi, irqfd) {
                log::debug!("msix: cannot release GSI {gsi}: {e}");
            }
        }
    }
}

#[cfg(test)]
#[path = "msix_tests.rs"]
mod tests;
