//! A built VM and its life: start one thread per vCPU, wait for the exit
//! signal, then stop every vCPU and device worker and join every thread
//! before returning the reason. Nothing outlives `RunningVm::wait`.
//!
//! While it runs, a [`VmControl`] (shared, cheap to clone) lets another
//! thread (the API server) pause and resume the vCPUs, type Ctrl-Alt-Del
//! on the keyboard and read the counters. None of its calls waits for a
//! vCPU: pausing sets a flag and kicks; the vCPUs park on their own.

use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::signal::Killable;

use crate::devices::i8042::I8042;
use crate::devices::serial::SerialDevice;
use crate::lifecycle::{ExitReason, ExitSignal};
use crate::memory::GuestMemoryMmap;
use crate::vcpu::{self, ExitKind, PauseGate, VcpuContext, VcpuStats};
use crate::virtio::block::{BlockStats, BlockStatsSnapshot};
use crate::virtio::net::{NetStats, NetStatsSnapshot};
use crate::virtio::rng::{RngStats, RngStatsSnapshot};
use crate::virtio::transport::VirtioPci;
use crate::virtio::vsock::{VsockStats, VsockStatsSnapshot};

/// Errors from starting a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickHandler(vmm_sys_util::errno::Error),
    #[error("cannot start vCPU thread {0}: {1}")]
    SpawnVcpu(u8, std::io::Error),
}

/// Errors from controlling a running VM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("the microVM is shutting down")]
    Stopping,
    #[error("the guest is not reading the keyboard: the i8042 output buffer is full")]
    KeyboardFull,
}

/// What a VM keeps for as long as it exists: KVM needs the VM fd and the
/// memory its slots point into; the devices own worker threads.
pub(crate) struct VmParts {
    /// KVM needs the VM fd as long as the vCPUs run; pausing reads and
    /// sets the guest clock through it.
    pub vm_fd: Arc<VmFd>,
    pub memory: GuestMemoryMmap,
    pub ctx: VcpuContext,
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The keyboard controller, for Ctrl-Alt-Del.
    pub i8042: Arc<Mutex<I8042>>,
    /// Devices whose workers must be stopped when the VM ends.
    pub virtio_devices: Vec<Arc<Mutex<VirtioPci>>>,
    pub counters: DeviceCounters,
}

/// Every device's counters, shared with the device threads that count.
#[derive(Clone, Default)]
pub struct DeviceCounters {
    /// The disks', in the configuration's order.
    pub block: Vec<Arc<BlockStats>>,
    /// The NICs', in the configuration's order.
    pub net: Vec<Arc<NetStats>>,
    pub rng: Option<Arc<RngStats>>,
    pub vsock: Option<Arc<VsockStats>>,
}

/// A point-in-time copy of [`DeviceCounters`].
#[derive(Clone, Debug, Default)]
pub struct DeviceCountersSnapshot {
    pub block: Vec<BlockStatsSnapshot>,
    pub net: Vec<NetStatsSnapshot>,
    pub rng: Option<RngStatsSnapshot>,
    pub vsock: Option<VsockStatsSnapshot>,
}

impl DeviceCounters {
    pub fn snapshot(&self) -> DeviceCountersSnapshot {
        DeviceCountersSnapshot {
            block: self.block.iter().map(|s| s.snapshot()).collect(),
            net: self.net.iter().map(|s| s.snapshot()).collect(),
            rng: self.rng.as_ref().map(|s| s.snapshot()),
            vsock: self.vsock.as_ref().map(|s| s.snapshot()),
        }
    }
}

/// A VM ready to run.
pub struct Vm {
    pub(crate) parts: VmParts,
    pub(crate) vcpus: Vec<VcpuFd>,
    pub(crate) guest_is_linux: bool,
}

impl Vm {
    /// Whether the kernel is Linux (so Linux-specific advice applies).
    pub fn guest_is_linux(&self) -> bool {
        self.guest_is_linux
    }

    /// The guest's memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.parts.memory
    }

    /// Starts every vCPU.
    pub fn start(self) -> Result<RunningVm, VmError> {
        vcpu::install_kick_handler().map_err(VmError::KickHandler)?;
        let count = self.vcpus.len();
        let gate = Arc::new(PauseGate::new(self.parts.vm_fd.clone(), count));
        let vcpu_stats: Vec<Arc<VcpuStats>> =
            (0..count).map(|_| Arc::new(VcpuStats::default())).collect();
        let control = Arc::new(VmControl {
            gate: gate.clone(),
            threads: Mutex::new(Some(Vec::with_capacity(count))),
            i8042: self.parts.i8042.clone(),
            vcpu_stats: vcpu_stats.clone(),
            counters: self.parts.counters.clone(),
            exit: self.parts.ctx.exit.clone(),
        });
        let mut running = RunningVm {
            parts: self.parts,
            threads: Vec::with_capacity(count),
            control,
        };
        for ((id, fd), stats) in self.vcpus.into_iter().enumerate().zip(vcpu_stats) {
            let ctx = running.parts.ctx.clone();
            let gate = gate.clone();
            let id = id as u8;
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu::run(fd, id, ctx, gate, stats));
            match spawned {
                Ok(handle) => {
                    if let Some(ids) = running.control.lock_threads().as_mut() {
                        ids.push(handle.as_pthread_t());
                    }
                    running.threads.push(handle);
                }
                Err(e) => {
                    // Stop the ones already running before reporting.
                    running
                        .parts
                        .ctx
                        .exit
                        .request(ExitReason::Error("vCPU thread creation failed".into()));
                    running.wait();
                    return Err(VmError::SpawnVcpu(id, e));
                }
            }
        }
        Ok(running)
    }
}

/// Pause, resume, keyboard and counters of a running VM, for other threads.
pub struct VmControl {
    gate: Arc<PauseGate>,
    /// The vCPU threads to kick; None once `wait` joins them.
    threads: Mutex<Option<Vec<libc::pthread_t>>>,
    i8042: Arc<Mutex<I8042>>,
    vcpu_stats: Vec<Arc<VcpuStats>>,
    counters: DeviceCounters,
    exit: Arc<ExitSignal>,
}

impl VmControl {
    fn lock_threads(&self) -> std::sync::MutexGuard<'_, Option<Vec<libc::pthread_t>>> {
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kick_all(&self) {
        let threads = self.lock_threads();
        for &thread in threads.iter().flatten() {
            // SAFETY: the list holds only threads not yet joined (`wait`
            // empties it under this lock before joining), so each pthread_t
            // is valid; the signal has a handler installed by `Vm::start`.
            let rc = unsafe { libc::pthread_kill(thread, vcpu::vcpu_kick_signal()) };
            if rc != 0 {
                log::debug!("kicking a vCPU failed: errno {rc}");
            }
        }
    }

    /// Asks every vCPU to leave the guest and park. Returns at once; the
    /// vCPUs park within microseconds unless one is inside a device.
    pub fn pause(&self) -> Result<(), ControlError> {
        if self.exit.is_set() || !self.gate.request_pause() {
            return Err(ControlError::Stopping);
        }
        self.kick_all();
        Ok(())
    }

    /// Lets the vCPUs run again, with the guest clock where it stopped.
    pub fn resume(&self) -> Result<(), ControlError> {
        if self.exit.is_set() {
            return Err(ControlError::Stopping);
        }
        self.gate.resume();
        Ok(())
    }

    /// Whether a pause is in force.
    pub fn is_paused(&self) -> bool {
        self.gate.is_paused()
    }

    /// vCPUs parked right now (all of them, soon after a pause).
    pub fn parked_vcpus(&self) -> usize {
        self.gate.parked()
    }

    /// The number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpu_stats.len()
    }

    /// Types Ctrl-Alt-Del on the guest's keyboard.
    pub fn ctrl_alt_del(&self) -> Result<(), ControlError> {
        if self.exit.is_set() {
            return Err(ControlError::Stopping);
        }
        let mut kbd = self.i8042.lock().unwrap_or_else(|p| p.into_inner());
        if kbd.ctrl_alt_del() {
            Ok(())
        } else {
            Err(ControlError::KeyboardFull)
        }
    }

    /// Per vCPU, its exits by kind (indexed like [`ExitKind::ALL`]).
    pub fn vcpu_exits(&self) -> Vec<[u64; ExitKind::ALL.len()]> {
        self.vcpu_stats.iter().map(|s| s.snapshot()).collect()
    }

    /// Per disk, in the configuration's order, its counters.
    pub fn block_stats(&self) -> Vec<BlockStatsSnapshot> {
        self.counters.block.iter().map(|s| s.snapshot()).collect()
    }

    /// Every device's counters.
    pub fn device_counters(&self) -> DeviceCountersSnapshot {
        self.counters.snapshot()
    }

    /// Where the VM's end is reported.
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }
}

/// A VM whose vCPUs are running.
pub struct RunningVm {
    parts: VmParts,
    threads: Vec<JoinHandle<()>>,
    control: Arc<VmControl>,
}

impl RunningVm {
    /// Where the VM's end is reported; other threads may request a stop here.
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.parts.ctx.exit.clone()
    }

    /// The COM1 UART, for feeding it console input.
    pub fn serial(&self) -> Arc<Mutex<SerialDevice>> {
        self.parts.serial.clone()
    }

    /// The handle for pausing, resuming, Ctrl-Alt-Del and counters.
    pub fn control(&self) -> Arc<VmControl> {
        self.control.clone()
    }

    /// Waits until something requests an exit, stops and joins every vCPU
    /// thread and device worker, and returns the reason.
    pub fn wait(self) -> ExitReason {
        let exit = &self.parts.ctx.exit;
        let fd = exit.eventfd().as_raw_fd();
        while !exit.is_set() {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call
            // and the count matches.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
        }
        // Parked vCPUs must wake to see the exit; no kick may follow a join.
        self.control.gate.stop();
        self.control.lock_threads().take();
        // Kick every vCPU out of KVM_RUN, then join them. The kick handler
        // sets immediate_exit, so a kick that lands just before KVM_RUN
        // counts too; kick again until each thread has finished all the same.
        while !self.threads.iter().all(|h| h.is_finished()) {
            for handle in self.threads.iter().filter(|h| !h.is_finished()) {
                if let Err(e) = handle.kill(vcpu::vcpu_kick_signal()) {
                    log::debug!("kicking a vCPU failed: {e}");
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        for handle in self.threads {
            if handle.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
        for device in &self.parts.virtio_devices {
            device.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
        }
        exit.reason().unwrap_or(ExitReason::UserStop)
    }
}
