//! The threads a device serves its queues on between DRIVER_OK and reset,
//! and how they end: every worker polls one stop eventfd; stopping writes
//! it and joins them all. Shared by every device so none has to get the
//! stop-then-join order right again.
//!
//! Who starts them: the driver activates a device from a vCPU thread, but
//! a thread inherits its creator's seccomp filter, so a worker started
//! there would need the vCPU's list to allow everything the worker does
//! (io_uring set-up, clone, seccomp itself). Instead, workers are started
//! by one small spawner thread ([`start_spawner`], before any filter),
//! whose own filter is the workers' needs plus thread creation; the vCPU
//! list then carries none of it. Without the spawner (unit tests) a
//! worker is started directly.

use std::io;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type Body = Box<dyn FnOnce() + Send + 'static>;

/// A thread to start, and where to send its handle.
struct SpawnRequest {
    name: String,
    body: Body,
    reply: Sender<io::Result<JoinHandle<()>>>,
}

static SPAWNER: OnceLock<Mutex<Sender<SpawnRequest>>> = OnceLock::new();

/// Starts the spawner thread (once; later calls do nothing). Call it
/// before any seccomp filter is installed on the calling thread.
pub fn start_spawner() -> io::Result<()> {
    if SPAWNER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("spawner".into())
        .spawn(move || {
            // The process's stop signals are taken by the console thread
            // (sigwait); this thread and the workers it starts must not
            // take them, or the default action would kill the process.
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                let _ = vmm_sys_util::signal::block_signal(sig);
            }
            crate::seccomp::install(crate::seccomp::ThreadKind::Spawner);
            for req in rx {
                let handle = std::thread::Builder::new().name(req.name).spawn(req.body);
                let _ = req.reply.send(handle);
            }
        })?;
    let _ = SPAWNER.set(Mutex::new(tx));
    Ok(())
}

/// Starts a thread named `name`: through the spawner if it runs.
fn spawn_thread(name: String, body: Body) -> io::Result<JoinHandle<()>> {
    let Some(spawner) = SPAWNER.get() else {
        return std::thread::Builder::new().name(name).spawn(body);
    };
    let (reply, answer) = mpsc::channel();
    let sent = spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(SpawnRequest { name, body, reply });
    if sent.is_err() {
        return Err(io::Error::other("the thread spawner is gone"));
    }
    answer
        .recv()
        .map_err(|_| io::Error::other("the thread spawner is gone"))?
}

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
        let handle = spawn_thread(name, Box::new(body))?;
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
