//! What a user asks for: the VM's configuration, before it is built.

use std::path::PathBuf;

use crate::cpu::cpuid::CpuTemplate;
use crate::virtio::block::DiskConfig;
use crate::virtio::net::{MacAddr, NetConfig};
use crate::virtio::vsock::VsockConfig;

/// Command line for a Linux guest when the user gives none: the console on
/// COM1, reboot through the keyboard controller, reboot on panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Default memory: 512 MiB.
pub const DEFAULT_MEM_SIZE: u64 = 512 << 20;

/// A VM to build.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub mem_size: u64,
    pub cpu_template: CpuTemplate,
    /// virtio-blk disks, in PCI slot order.
    pub disks: Vec<DiskConfig>,
    /// virtio-net interfaces on TAPs, after the disks.
    pub nets: Vec<NetConfig>,
    /// A virtio-rng device, after the network interfaces.
    pub rng: bool,
    /// A virtio-vsock device, last.
    pub vsock: Option<VsockConfig>,
}

impl VmConfig {
    pub fn new(kernel: PathBuf) -> Self {
        VmConfig {
            kernel,
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            vcpus: 1,
            mem_size: DEFAULT_MEM_SIZE,
            cpu_template: CpuTemplate::default(),
            disks: Vec::new(),
            nets: Vec::new(),
            rng: false,
            vsock: None,
        }
    }
}

/// Parses a memory size: a number of bytes, or with a K, M, G or T suffix
/// (binary units, optional trailing "iB" or "B").
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => {
                    return Err(format!(
                        "invalid size '{text}': unknown unit '{c}' (use K, M, G or T)"
                    ))
                }
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size '{text}' (examples: 512M, 2G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("invalid size '{text}': too large"))
}

/// Parses a `--disk` value: `path=FILE[,readonly=on|off][,serial=ID][,cache=none]`.
pub fn parse_disk(text: &str) -> Result<DiskConfig, String> {
    let mut disk = DiskConfig {
        path: PathBuf::new(),
        read_only: false,
        serial: None,
        direct: false,
    };
    for part in text.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("--disk: expected key=value, got '{part}'"))?;
        match key {
            "path" => disk.path = PathBuf::from(value),
            "readonly" => {
                disk.read_only = on_off(value)
                    .ok_or_else(|| format!("--disk: readonly must be on or off, got '{value}'"))?
            }
            "serial" if value.len() <= 20 && value.is_ascii() => {
                disk.serial = Some(value.to_string())
            }
            "serial" => {
                return Err(format!(
                    "--disk: serial '{value}' must be at most 20 ASCII characters"
                ))
            }
            "cache" => {
                disk.direct = match value {
                    "none" => true,
                    "writeback" => false,
                    _ => {
                        return Err(format!(
                            "--disk: cache must be none or writeback, got '{value}'"
                        ))
                    }
                }
            }
            _ => {
                return Err(format!(
                    "--disk: unknown key '{key}' (expected path, readonly, serial, cache)"
                ))
            }
        }
    }
    if disk.path.as_os_str().is_empty() {
        return Err("--disk: path=FILE is required".into());
    }
    Ok(disk)
}

/// Parses a `--net` value: `tap=NAME[,mac=MAC]`.
pub fn parse_net(text: &str) -> Result<NetConfig, String> {
    let mut net = NetConfig {
        tap: String::new(),
        mac: None,
    };
    for part in text.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("--net: expected key=value, got '{part}'"))?;
        match key {
            "tap" => net.tap = value.to_string(),
            "mac" => {
                net.mac = Some(
                    value
                        .parse::<MacAddr>()
                        .map_err(|e| format!("--net: {e}"))?,
                )
            }
            _ => return Err(format!("--net: unknown key '{key}' (expected tap, mac)")),
        }
    }
    if net.tap.is_empty() {
        return Err("--net: tap=NAME is required".into());
    }
    Ok(net)
}

/// Parses a `--vsock` value: `cid=N,socket=PATH`.
pub fn parse_vsock(text: &str) -> Result<VsockConfig, String> {
    let (mut cid, mut socket) = (None, None);
    for part in text.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("--vsock: expected key=value, got '{part}'"))?;
        match key {
            "cid" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| format!("--vsock: cid must be a number, got '{value}'"))?;
                cid = Some(VsockConfig::check_cid(n).map_err(|e| format!("--vsock: {e}"))?);
            }
            "socket" if !value.is_empty() => socket = Some(PathBuf::from(value)),
            "socket" => return Err("--vsock: socket must not be empty".into()),
            _ => {
                return Err(format!(
                    "--vsock: unknown key '{key}' (expected cid, socket)"
                ))
            }
        }
    }
    match (cid, socket) {
        (Some(cid), Some(socket)) => Ok(VsockConfig { cid, socket }),
        _ => Err("--vsock: both cid=N and socket=PATH are required".into()),
    }
}

fn on_off(value: &str) -> Option<bool> {
    match value {
        "on" | "true" | "yes" => Some(true),
        "off" | "false" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_parse() {
        let d = parse_disk("path=/tmp/a.img,readonly=on,serial=ABC,cache=none").unwrap();
        assert_eq!(d.path, PathBuf::from("/tmp/a.img"));
        assert!(d.read_only && d.direct);
        assert_eq!(d.serial.as_deref(), Some("ABC"));
        let plain = parse_disk("path=x").unwrap();
        assert!(!plain.read_only && !plain.direct && plain.serial.is_none());
        for bad in [
            "",
            "readonly=on",
            "path=x,readonly=maybe",
            "path=x,serial=123456789012345678901",
            "path=x,cache=fast",
            "path=x,color=red",
            "path",
        ] {
            assert!(parse_disk(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nets_parse() {
        let v = parse_vsock("cid=3,socket=/tmp/v.sock").unwrap();
        assert_eq!((v.cid, v.socket), (3, PathBuf::from("/tmp/v.sock")));
        assert_eq!(
            parse_vsock("socket=s,cid=4294967294").unwrap().cid,
            u32::MAX - 1
        );
        for bad in [
            "",
            "cid=3",
            "socket=/tmp/x",
            "cid=0,socket=s",
            "cid=2,socket=s",
            "cid=4294967295,socket=s",
            "cid=-3,socket=s",
            "cid=3,socket=",
            "cid=3,socket=s,port=1",
        ] {
            assert!(parse_vsock(bad).is_err(), "{bad}");
        }
        let n = parse_net("tap=tap0,mac=52:54:00:AB:cd:01").unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, Some(MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 1])));
        assert_eq!(parse_net("tap=t").unwrap().mac, None);
        for bad in [
            "",
            "mac=52:54:00:00:00:01",
            "tap=t,mac=52:54:00:00:00",
            "tap=t,mac=52:54:00:00:00:01:02",
            "tap=t,mac=zz:54:00:00:00:01",
            "tap=t,mac=01:00:5e:00:00:01",
            "tap=t,color=red",
            "tap",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size("M").is_err());
    }
}
