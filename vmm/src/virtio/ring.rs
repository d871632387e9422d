//! One queue with the used side done in batches (net and vsock use it).
//!
//! virtio-queue's `add_used` publishes every element on its own (it
//! stores the used index each time). A frame spread over several
//! mergeable receive buffers must appear in one go: a driver that sees the
//! first buffer (whose `num_buffers` says 3) before the other two are in
//! the ring counts the frame as broken and drops it. So completions are
//! queued here and [`Ring::publish`] writes the elements, then stores the
//! used index once, with release ordering.
//!
//! Because the index moves by more than one at a time, interrupt
//! suppression is done here too (2.7.7, 2.7.10): with EVENT_IDX, interrupt
//! when `used_event` lies in the range just published; without it, unless
//! the driver set VRING_AVAIL_F_NO_INTERRUPT.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::memory::GuestMemoryMmap;
use crate::virtio::VirtioInterrupt;

/// VRING_AVAIL_F_NO_INTERRUPT in the available ring's flags.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// A queue and its completions not yet published.
pub(crate) struct Ring {
    pub queue: Queue,
    pub index: u16,
    /// (head, used length), in completion order.
    done: Vec<(u16, u32)>,
    /// The used index when the driver was last considered for an interrupt.
    signalled: Wrapping<u16>,
}

impl Ring {
    pub(crate) fn new(index: u16, queue: Queue) -> Ring {
        let signalled = Wrapping(queue.next_used());
        Ring {
            done: Vec::with_capacity(usize::from(queue.size())),
            queue,
            index,
            signalled,
        }
    }

    /// The next available chain, if any.
    pub(crate) fn pop<'m>(
        &mut self,
        mem: &'m GuestMemoryMmap,
    ) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
        self.queue.pop_descriptor_chain(mem)
    }

    /// True when the driver made chains available that were not popped.
    pub(crate) fn has_available(&self, mem: &GuestMemoryMmap) -> bool {
        match self.queue.avail_idx(mem, Ordering::Acquire) {
            Ok(idx) => idx.0 != self.queue.next_avail(),
            Err(_) => false,
        }
    }

    /// Queues the completion of chain `head` with `len` bytes written.
    pub(crate) fn add_used(&mut self, head: u16, len: u32) {
        if head >= self.queue.size() {
            // Not a descriptor index: nothing can be returned.
            log::debug!(
                "virtio: queue {}: chain head {head} is out of range",
                self.index
            );
            return;
        }
        self.done.push((head, len));
    }

    fn used_addr(&self, offset: u64) -> Option<GuestAddress> {
        GuestAddress(self.queue.used_ring()).checked_add(offset)
    }

    fn avail_addr(&self, offset: u64) -> Option<GuestAddress> {
        GuestAddress(self.queue.avail_ring()).checked_add(offset)
    }

    /// Writes the queued elements into the used ring, then moves the used
    /// index past all of them at once.
    pub(crate) fn publish(&mut self, mem: &GuestMemoryMmap) {
        if self.done.is_empty() {
            return;
        }
        let size = self.queue.size().max(1);
        let mut next = Wrapping(self.queue.next_used());
        let done = std::mem::take(&mut self.done);
        for &(head, len) in &done {
            let slot = u64::from(next.0 % size);
            let mut elem = [0u8; 8];
            elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            elem[4..].copy_from_slice(&len.to_le_bytes());
            let written = self
                .used_addr(4 + 8 * slot)
                .is_some_and(|at| mem.write_slice(&elem, at).is_ok());
            if !written {
                log::debug!("virtio: queue {}: used ring is not writable", self.index);
                break;
            }
            next += Wrapping(1);
        }
        // Keep the allocation for the next batch.
        self.done = done;
        self.done.clear();
        let stored = self
            .used_addr(2)
            .is_some_and(|at| mem.store(next.0.to_le(), at, Ordering::Release).is_ok());
        if stored {
            self.queue.set_next_used(next.0);
        }
    }

    /// Publishes, then interrupts the driver if it asked to know.
    pub(crate) fn complete(&mut self, mem: &GuestMemoryMmap, interrupt: &dyn VirtioInterrupt) {
        self.publish(mem);
        if self.needs_interrupt(mem) {
            interrupt.trigger_queue(self.index);
        }
    }

    fn needs_interrupt(&mut self, mem: &GuestMemoryMmap) -> bool {
        let new = Wrapping(self.queue.next_used());
        let old = self.signalled;
        if new == old {
            return false;
        }
        self.signalled = new;
        // The used index must be visible before the driver's wishes are read.
        fence(Ordering::SeqCst);
        if self.queue.event_idx_enabled() {
            let at = self.avail_addr(4 + 2 * u64::from(self.queue.size()));
            match at.map(|a| mem.load::<u16>(a, Ordering::Relaxed)) {
                Some(Ok(event)) => new - Wrapping(u16::from_le(event)) - Wrapping(1) < new - old,
                _ => true,
            }
        } else {
            match self
                .avail_addr(0)
                .map(|a| mem.load::<u16>(a, Ordering::Relaxed))
            {
                Some(Ok(flags)) => u16::from_le(flags) & AVAIL_F_NO_INTERRUPT == 0,
                _ => true,
            }
        }
    }

    /// Asks the driver not to notify the queue (a hint; with EVENT_IDX it
    /// only stops notifications the device did not ask for again).
    pub(crate) fn disable_notification(&mut self, mem: &GuestMemoryMmap) {
        if let Err(e) = self.queue.disable_notification(mem) {
            log::debug!("virtio: queue {}: {e}", self.index);
        }
    }

    /// Asks for a notification when the driver makes the next chain
    /// available; true if it did so meanwhile (chains are there to pop).
    pub(crate) fn enable_notification(&mut self, mem: &GuestMemoryMmap) -> bool {
        match self.queue.enable_notification(mem) {
            Ok(more) => more,
            Err(e) => {
                log::debug!("virtio: queue {}: {e}", self.index);
                false
            }
        }
    }

    /// Asks for a notification when the driver adds chains beyond those
    /// available now (which were not enough: the device put them back).
    /// True if it already did.
    pub(crate) fn notify_after_current(&mut self, mem: &GuestMemoryMmap) -> bool {
        let Ok(seen) = self.queue.avail_idx(mem, Ordering::Acquire) else {
            return false;
        };
        if self.queue.event_idx_enabled() {
            // avail_event sits after the used ring's elements.
            let at = self.used_addr(4 + 8 * u64::from(self.queue.size()));
            if let Some(at) = at {
                if let Err(e) = mem.store(seen.0.to_le(), at, Ordering::Relaxed) {
                    log::debug!("virtio: queue {}: avail_event: {e}", self.index);
                }
            }
        } else {
            // Clears VRING_USED_F_NO_NOTIFY; what it returns is not the
            // question here.
            let _ = self.queue.enable_notification(mem);
        }
        fence(Ordering::SeqCst);
        self.queue
            .avail_idx(mem, Ordering::Relaxed)
            .is_ok_and(|now| now != seen)
    }
}
