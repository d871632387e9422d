//! The microVM behind the API: its configuration as the client builds it
//! up before boot (boot source, machine, drives, network interfaces,
//! vsock, entropy), checked on every change so that a mistake is answered
//! where it is made; the `vmm::config::VmConfig` it becomes at
//! InstanceStart; and, once started, the running VM and its control
//! handle. Pre-boot-only changes after boot are refused.

use std::path::PathBuf;
use std::sync::Arc;

use vmm::config::{VmConfig, DEFAULT_CMDLINE};
use vmm::cpu::cpuid::CpuTemplate;
use vmm::lifecycle::ExitSignal;
use vmm::virtio::block::DiskConfig;
use vmm::virtio::net::{MacAddr, NetConfig};
use vmm::virtio::vsock::VsockConfig;
use vmm::vm::{ControlError, RunningVm, VmControl};

use super::model::{
    BootSource, Drive, Entropy, IoEngine, MachineConfig, MachineConfigUpdate, NetworkInterface,
    Vsock,
};

/// Errors the API answers with 400 and a `fault_message`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} can only be changed before the microVM starts")]
    PreBootOnly(&'static str),
    #[error("{0}: the microVM is not running")]
    NotRunning(&'static str),
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot start the microVM: {0}")]
    Start(String),
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// Starts VMs for the API: the binary's side (host, console), kept out of
/// the API so that it can be tested without either.
pub trait Launcher {
    /// The most vCPUs a VM can have on this host.
    fn max_vcpus(&self) -> usize;
    /// Builds and starts the VM described by `cfg`.
    fn launch(&mut self, cfg: &VmConfig) -> Result<RunningVm, String>;
}

/// The instance's state, as `GET /` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    NotStarted,
    Running,
    Paused,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::NotStarted => "Not started",
            State::Running => "Running",
            State::Paused => "Paused",
        }
    }
}

/// The microVM: its configuration and, once started, the VM.
pub struct Instance {
    pub id: String,
    pub boot: Option<BootSource>,
    pub machine: MachineConfig,
    /// In the order they were first put.
    pub drives: Vec<Drive>,
    pub nets: Vec<NetworkInterface>,
    pub vsock: Option<Vsock>,
    pub entropy: Option<Entropy>,
    launcher: Box<dyn Launcher>,
    running: Option<RunningVm>,
    control: Option<Arc<VmControl>>,
    /// Drive IDs in the order the VM's disks were built.
    started_drives: Vec<String>,
    /// The network interfaces' IDs, in the order the VM has them.
    started_nets: Vec<String>,
}

/// IDs in paths and bodies: 1 to 64 of `[A-Za-z0-9_]` (as Firecracker).
fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(ApiError::Invalid(format!(
            "{what} '{id}' must be 1 to 64 letters, digits or underscores"
        )));
    }
    Ok(())
}

fn check_path_id(field: &str, path_id: &str, body_id: &str) -> Result<(), ApiError> {
    if path_id != body_id {
        return Err(ApiError::Invalid(format!(
            "{field}: the id from the path ({path_id}) does not match the id from the body ({body_id})"
        )));
    }
    check_id(field, body_id)
}

/// A host file the VM will need, checked now so that the client hears of
/// a typo at once.
fn check_file(field: &str, path: &str) -> Result<(), ApiError> {
    if path.is_empty() {
        return Err(ApiError::Invalid(format!("{field} must not be empty")));
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| ApiError::Invalid(format!("{field}: cannot open '{path}': {e}")))
}

fn refuse_limiter(
    field: &str,
    limiter: &Option<super::model::RateLimiter>,
) -> Result<(), ApiError> {
    if limiter.as_ref().is_some_and(|l| l.limits()) {
        return Err(ApiError::Unsupported(format!(
            "{field}: utsuwa does not implement rate limiting; leave it out or null"
        )));
    }
    Ok(())
}

impl Instance {
    pub fn new(id: String, launcher: Box<dyn Launcher>) -> Self {
        Instance {
            id,
            boot: None,
            machine: MachineConfig::default(),
            drives: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            entropy: None,
            launcher,
            running: None,
            control: None,
            started_drives: Vec::new(),
            started_nets: Vec::new(),
        }
    }

    pub fn state(&self) -> State {
        match &self.control {
            None => State::NotStarted,
            Some(c) if c.is_paused() => State::Paused,
            Some(_) => State::Running,
        }
    }

    pub fn control(&self) -> Option<&Arc<VmControl>> {
        self.control.as_ref()
    }

    /// Drive IDs of the started VM's disks, in their order.
    pub fn started_drives(&self) -> &[String] {
        &self.started_drives
    }

    pub fn started_nets(&self) -> &[String] {
        &self.started_nets
    }

    /// Where the running VM reports its end; None before boot.
    pub fn exit_signal(&self) -> Option<Arc<ExitSignal>> {
        self.running.as_ref().map(RunningVm::exit_signal)
    }

    /// Hands over the running VM (to wait for it).
    pub fn take_running(&mut self) -> Option<RunningVm> {
        self.running.take()
    }

    fn pre_boot(&self, what: &'static str) -> Result<(), ApiError> {
        if self.control.is_some() {
            return Err(ApiError::PreBootOnly(what));
        }
        Ok(())
    }

    pub fn put_boot_source(&mut self, boot: BootSource) -> Result<(), ApiError> {
        self.pre_boot("boot-source")?;
        check_file("kernel_image_path", &boot.kernel_image_path)?;
        if let Some(initrd) = &boot.initrd_path {
            check_file("initrd_path", initrd)?;
        }
        self.boot = Some(boot);
        Ok(())
    }

    /// PUT (`full`: vCPUs and memory required, the rest reset to their
    /// defaults) or PATCH (only what is given changes).
    pub fn update_machine(
        &mut self,
        update: MachineConfigUpdate,
        full: bool,
    ) -> Result<(), ApiError> {
        self.pre_boot("machine-config")?;
        let mut m = if full {
            MachineConfig::default()
        } else {
            self.machine.clone()
        };
        if full {
            if update.vcpu_count.is_none() {
                return Err(ApiError::Invalid("missing field `vcpu_count`".into()));
            }
            if update.mem_size_mib.is_none() {
                return Err(ApiError::Invalid("missing field `mem_size_mib`".into()));
            }
        }
        if let Some(n) = update.vcpu_count {
            let max = self
                .launcher
                .max_vcpus()
                .min(vmm::builder::MAX_VCPUS)
                .min(255);
            if n == 0 || usize::from(n) > max {
                return Err(ApiError::Invalid(format!(
                    "vcpu_count must be between 1 and {max}, got {n}"
                )));
            }
            m.vcpu_count = n;
        }
        if let Some(mib) = update.mem_size_mib {
            let min = vmm::memory::MIN_MEM_SIZE >> 20;
            if mib < min || mib > (1 << 24) {
                return Err(ApiError::Invalid(format!(
                    "mem_size_mib must be between {min} and {}, got {mib}",
                    1u64 << 24
                )));
            }
            m.mem_size_mib = mib;
        }
        if let Some(smt) = update.smt {
            if smt {
                return Err(ApiError::Unsupported(
                    "smt: utsuwa gives each vCPU its own core; set smt to false".into(),
                ));
            }
            m.smt = false;
        }
        if let Some(t) = update.cpu_template {
            m.cpu_template = match t.as_str() {
                "None" => None,
                "Baseline" => Some(t),
                other => {
                    return Err(ApiError::Unsupported(format!(
                        "cpu_template: '{other}' is not supported (None: the host's CPU; Baseline: an x86-64-v3-like model)"
                    )))
                }
            };
        }
        if let Some(track) = update.track_dirty_pages {
            if track {
                log::warn!(
                    "track_dirty_pages: utsuwa has no snapshots, so dirty pages are not tracked"
                );
            }
            m.track_dirty_pages = track;
        }
        if let Some(h) = update.huge_pages {
            if h != "None" {
                return Err(ApiError::Unsupported(format!(
                    "huge_pages: '{h}' is not supported (only None)"
                )));
            }
        }
        self.machine = m;
        Ok(())
    }

    pub fn put_drive(&mut self, path_id: &str, mut drive: Drive) -> Result<(), ApiError> {
        self.pre_boot("drives")?;
        check_path_id("drive_id", path_id, &drive.drive_id)?;
        if drive.socket.is_some() {
            return Err(ApiError::Unsupported(
                "socket: vhost-user block devices are not supported".into(),
            ));
        }
        let Some(path) = &drive.path_on_host else {
            return Err(ApiError::Invalid("missing field `path_on_host`".into()));
        };
        check_file("path_on_host", path)?;
        refuse_limiter("rate_limiter", &drive.rate_limiter)?;
        if drive.is_root_device
            && self
                .drives
                .iter()
                .any(|d| d.is_root_device && d.drive_id != drive.drive_id)
        {
            return Err(ApiError::Invalid(
                "is_root_device: a root block device already exists".into(),
            ));
        }
        if drive.partuuid.is_some() && !drive.is_root_device {
            log::info!(
                "drive {}: partuuid is used only for the root device",
                drive.drive_id
            );
        }
        if drive.io_engine == Some(IoEngine::Sync) {
            log::info!(
                "drive {}: io_engine Sync: utsuwa picks io_uring where the host has it",
                drive.drive_id
            );
        }
        drive.is_read_only = Some(drive.is_read_only.unwrap_or(false));
        drive.io_engine = Some(drive.io_engine.unwrap_or(IoEngine::Sync));
        match self
            .drives
            .iter_mut()
            .find(|d| d.drive_id == drive.drive_id)
        {
            Some(slot) => *slot = drive,
            None => self.drives.push(drive),
        }
        Ok(())
    }

    pub fn put_network_interface(
        &mut self,
        path_id: &str,
        iface: NetworkInterface,
    ) -> Result<(), ApiError> {
        self.pre_boot("network-interfaces")?;
        check_path_id("iface_id", path_id, &iface.iface_id)?;
        let name = &iface.host_dev_name;
        if name.is_empty()
            || name.len() > 15
            || name.contains(['/', ' '])
            || name == "."
            || name == ".."
        {
            return Err(ApiError::Invalid(format!(
                "host_dev_name '{name}' is not a valid interface name (1 to 15 characters)"
            )));
        }
        if let Some(mac) = &iface.guest_mac {
            mac.parse::<MacAddr>()
                .map_err(|e| ApiError::Invalid(format!("guest_mac: {e}")))?;
        }
        if iface.mtu.is_some() {
            return Err(ApiError::Unsupported(
                "mtu: utsuwa does not offer VIRTIO_NET_F_MTU yet; leave it out".into(),
            ));
        }
        refuse_limiter("rx_rate_limiter", &iface.rx_rate_limiter)?;
        refuse_limiter("tx_rate_limiter", &iface.tx_rate_limiter)?;
        let others = self.nets.iter().filter(|n| n.iface_id != iface.iface_id);
        for other in others {
            if &other.host_dev_name == name {
                return Err(ApiError::Invalid(format!(
                    "host_dev_name: {name} is already used by interface {}",
                    other.iface_id
                )));
            }
            if iface.guest_mac.is_some() && other.guest_mac == iface.guest_mac {
                return Err(ApiError::Invalid(format!(
                    "guest_mac: already used by interface {}",
                    other.iface_id
                )));
            }
        }
        match self.nets.iter_mut().find(|n| n.iface_id == iface.iface_id) {
            Some(slot) => *slot = iface,
            None => self.nets.push(iface),
        }
        Ok(())
    }

    pub fn put_vsock(&mut self, vsock: Vsock) -> Result<(), ApiError> {
        self.pre_boot("vsock")?;
        VsockConfig::check_cid(u64::from(vsock.guest_cid))
            .map_err(|e| ApiError::Invalid(format!("guest_cid: {e}")))?;
        if vsock.uds_path.is_empty() {
            return Err(ApiError::Invalid("uds_path must not be empty".into()));
        }
        self.vsock = Some(vsock);
        Ok(())
    }

    pub fn put_entropy(&mut self, entropy: Entropy) -> Result<(), ApiError> {
        self.pre_boot("entropy")?;
        refuse_limiter("rate_limiter", &entropy.rate_limiter)?;
        self.entropy = Some(entropy);
        Ok(())
    }

    /// The VM configuration the API's documents describe.
    pub fn vm_config(&self) -> Result<VmConfig, ApiError> {
        let Some(boot) = &self.boot else {
            return Err(ApiError::Invalid(
                "no boot source: PUT /boot-source before InstanceStart".into(),
            ));
        };
        let mut cfg = VmConfig::new(PathBuf::from(&boot.kernel_image_path));
        cfg.initrd = boot.initrd_path.as_ref().map(PathBuf::from);
        let root = self.drives.iter().find(|d| d.is_root_device);
        cfg.cmdline = cmdline(boot.boot_args.as_deref().unwrap_or(DEFAULT_CMDLINE), root);
        cfg.vcpus = self.machine.vcpu_count;
        cfg.mem_size = self.machine.mem_size_mib << 20;
        cfg.cpu_template = match self.machine.cpu_template.as_deref() {
            Some("Baseline") => CpuTemplate::Baseline,
            _ => CpuTemplate::Host,
        };
        cfg.disks = self.ordered_drives().map(disk_config).collect();
        cfg.nets = self
            .nets
            .iter()
            .map(|n| NetConfig {
                tap: n.host_dev_name.clone(),
                mac: n.guest_mac.as_deref().and_then(|m| m.parse().ok()),
            })
            .collect();
        cfg.rng = self.entropy.is_some();
        if let Some(v) = &self.vsock {
            let socket = PathBuf::from(&v.uds_path);
            // Said here, before any device exists, rather than by bind(2).
            if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.is_dir() {
                    return Err(ApiError::Invalid(format!(
                        "vsock: the folder of uds_path ({}) does not exist",
                        dir.display()
                    )));
                }
            }
            cfg.vsock = Some(VsockConfig {
                cid: v.guest_cid,
                socket,
            });
        }
        Ok(cfg)
    }

    /// The root drive first, then the others in the order they were put.
    fn ordered_drives(&self) -> impl Iterator<Item = &Drive> {
        let root = self.drives.iter().filter(|d| d.is_root_device);
        root.chain(self.drives.iter().filter(|d| !d.is_root_device))
    }

    /// InstanceStart: builds and starts the VM.
    pub fn start(&mut self) -> Result<(), ApiError> {
        if self.control.is_some() {
            return Err(ApiError::Invalid(
                "InstanceStart: the microVM is already running".into(),
            ));
        }
        let cfg = self.vm_config()?;
        let running = self.launcher.launch(&cfg).map_err(ApiError::Start)?;
        self.started_drives = self.ordered_drives().map(|d| d.drive_id.clone()).collect();
        self.started_nets = self.nets.iter().map(|n| n.iface_id.clone()).collect();
        self.control = Some(running.control());
        self.running = Some(running);
        Ok(())
    }

    fn running_control(&self, what: &'static str) -> Result<&Arc<VmControl>, ApiError> {
        self.control.as_ref().ok_or(ApiError::NotRunning(what))
    }

    pub fn pause(&self) -> Result<(), ApiError> {
        Ok(self.running_control("cannot pause")?.pause()?)
    }

    pub fn resume(&self) -> Result<(), ApiError> {
        Ok(self.running_control("cannot resume")?.resume()?)
    }

    pub fn ctrl_alt_del(&self) -> Result<(), ApiError> {
        Ok(self.running_control("SendCtrlAltDel")?.ctrl_alt_del()?)
    }
}

/// The guest command line: the client's, plus for a root drive
/// `root=/dev/vda` (or its PARTUUID) and `rw`/`ro` unless it sets `root=`.
pub fn cmdline(boot_args: &str, root: Option<&Drive>) -> String {
    let Some(root) = root else {
        return boot_args.to_string();
    };
    if boot_args.split_whitespace().any(|t| t.starts_with("root=")) {
        return boot_args.to_string();
    }
    let dev = match &root.partuuid {
        Some(uuid) => format!("root=PARTUUID={uuid}"),
        None => "root=/dev/vda".to_string(),
    };
    let mode = if root.is_read_only.unwrap_or(false) {
        "ro"
    } else {
        "rw"
    };
    let sep = if boot_args.is_empty() { "" } else { " " };
    format!("{boot_args}{sep}{dev} {mode}")
}

/// A drive as the block device sees it; its ID is the disk's serial.
fn disk_config(d: &Drive) -> DiskConfig {
    let mut serial = d.drive_id.clone();
    serial.truncate(vmm::virtio::block::VIRTIO_BLK_ID_BYTES);
    DiskConfig {
        path: PathBuf::from(d.path_on_host.clone().unwrap_or_default()),
        read_only: d.is_read_only.unwrap_or(false),
        serial: Some(serial),
        direct: false,
    }
}
