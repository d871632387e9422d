//! A built VM and its life: start one thread per vCPU, wait for the exit
//! signal, then stop every vCPU and device worker and join every thread
//! before returning the reason. Nothing outlives `RunningVm::wait`.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::signal::Killable;

use crate::devices::serial::SerialDevice;
use crate::lifecycle::{ExitReason, ExitSignal};
use crate::memory::GuestMemoryMmap;
use crate::vcpu::{self, VcpuContext};
use crate::virtio::transport::VirtioPci;

/// Errors from starting a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot install the vCPU kick signal handler: {0}")]
    KickHandler(vmm_sys_util::errno::Error),
    #[error("cannot start vCPU thread {0}: {1}")]
    SpawnVcpu(u8, std::io::Error),
}

/// What a VM keeps for as long as it exists: KVM needs the VM fd and the
/// memory its slots point into; the devices own worker threads.
pub(crate) struct VmParts {
    /// Never read, only kept: KVM needs the VM fd as long as the vCPUs run.
    pub _vm_fd: Arc<VmFd>,
    pub memory: GuestMemoryMmap,
    pub ctx: VcpuContext,
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Devices whose workers must be stopped when the VM ends.
    pub virtio_devices: Vec<Arc<Mutex<VirtioPci>>>,
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
        let mut running = RunningVm {
            parts: self.parts,
            threads: Vec::with_capacity(self.vcpus.len()),
        };
        for (id, fd) in self.vcpus.into_iter().enumerate() {
            let ctx = running.parts.ctx.clone();
            let id = id as u8;
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu::run(fd, id, ctx));
            match spawned {
                Ok(handle) => running.threads.push(handle),
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

/// A VM whose vCPUs are running.
pub struct RunningVm {
    parts: VmParts,
    threads: Vec<JoinHandle<()>>,
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
        // Kick every vCPU out of KVM_RUN, then join them. A kick can arrive
        // just before a thread enters KVM_RUN and be lost, so kick again
        // until each thread has finished.
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
