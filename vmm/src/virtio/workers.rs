//! The threads a device serves its queues on between DRIVER_OK and reset,
//! and how they end: every worker polls one stop eventfd; stopping writes
//! it and joins them all. Shared by every device so none has to get the
//! stop-then-join order right again.

use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A device's worker threads.
#[derive(Default)]
pub struct Workers {
    stop: Option<Arc<EventFd>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    pub fn new() -> Self {
        Self::default()
    }

    /// The eventfd this activation's workers must poll: readable means stop.
    pub fn stop_event(&mut self) -> std::io::Result<Arc<EventFd>> {
        if let Some(stop) = &self.stop {
            return Ok(stop.clone());
        }
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        self.stop = Some(stop.clone());
        Ok(stop)
    }

    /// Starts a worker thread named `name`.
    pub fn spawn(
        &mut self,
        name: String,
        body: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        let handle = std::thread::Builder::new().name(name).spawn(body)?;
        self.threads.push(handle);
        Ok(())
    }

    /// Tells every worker to stop and joins them; `device` names the owner
    /// in log lines. Does nothing when none runs.
    pub fn stop(&mut self, device: &str) {
        if let Some(stop) = self.stop.take() {
            if let Err(e) = stop.write(1) {
                log::error!("{device}: cannot stop the workers: {e}");
            }
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                log::error!("{device}: a worker panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn stop_wakes_and_joins_every_worker() {
        let mut workers = Workers::new();
        let stop = workers.stop_event().unwrap();
        let done = Arc::new(AtomicBool::new(false));
        for i in 0..2 {
            let (stop, done) = (stop.clone(), done.clone());
            workers
                .spawn(format!("w{i}"), move || {
                    // Blocks until the stop eventfd is written.
                    while stop.read().is_err() {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    stop.write(1).unwrap();
                    done.store(true, Ordering::SeqCst);
                })
                .unwrap();
        }
        workers.stop("test");
        assert!(done.load(Ordering::SeqCst));
        assert!(workers.threads.is_empty() && workers.stop.is_none());
        // A new activation gets a fresh, unsignalled eventfd.
        assert!(workers.stop_event().unwrap().read().is_err());
    }
}
