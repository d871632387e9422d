//! The VMM's command line as seen from inside the jail. Every host path
//! it names (`--kernel`, `--initrd`, `--disk path=`, `--config-file` and
//! the paths in that file, `--api-sock`, `--vsock ...,socket=`) is
//! resolved on the host and given a fixed name in the jail's root:
//! `/kernel`, `/initrd`, `/disk<N>`, `/vm.json`, and `/run/<file name>`
//! for sockets and other files the VMM creates. The result is a [`Plan`]
//! that the root's set-up (`fs.rs`) carries out.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::JailError;
use crate::cli::{self, Command};

/// The folder, inside the jail, where the VMM may create files (the API
/// socket, vsock sockets, log and metrics files). Writable by the VM's
/// user; everything else in the root is read-only to it.
pub const RUN_DIR: &str = "/run";
/// The rewritten configuration file, inside the jail.
pub const CONFIG: &str = "/vm.json";

/// How the VMM uses a file the jail gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Kernel or initrd: read once at boot.
    Boot,
    /// A disk the guest may only read.
    DiskReadOnly,
    /// A disk the guest writes.
    DiskReadWrite,
}

/// One host file given to the VMM under another name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Canonical path on the host.
    pub host: PathBuf,
    /// Absolute path inside the jail (`/kernel`).
    pub jail: PathBuf,
    pub usage: Use,
}

/// Everything the jail's root must hold for these VMM arguments.
#[derive(Debug, Default)]
pub struct Plan {
    /// The VMM's arguments with jail paths (no program name).
    pub args: Vec<String>,
    pub files: Vec<Placed>,
    /// The configuration file's rewritten JSON, to go to [`CONFIG`].
    pub config: Option<Vec<u8>>,
    /// Whether [`RUN_DIR`] is needed.
    pub run_dir: bool,
    /// Whether the VM has network interfaces (so needs `/dev/net/tun`).
    pub tun: bool,
}

/// The VMM's options that take a value (so that a value is never taken
/// for an option): run's and api's.
const VALUE_FLAGS: &[&str] = &[
    "--kernel",
    "--initrd",
    "--cmdline",
    "--cpus",
    "--memory",
    "--cpu-template",
    "--disk",
    "--net",
    "--vsock",
    "--log-level",
    "--api-sock",
    "--id",
    "--config-file",
];

impl Plan {
    fn place(
        &mut self,
        what: &str,
        host: &str,
        jail: String,
        usage: Use,
    ) -> Result<String, JailError> {
        let canonical = std::fs::canonicalize(host).map_err(|e| JailError::File {
            what: what.to_string(),
            path: host.into(),
            source: e,
        })?;
        let meta = std::fs::metadata(&canonical).map_err(|e| JailError::File {
            what: what.to_string(),
            path: host.into(),
            source: e,
        })?;
        let block_disk = usage != Use::Boot && {
            use std::os::unix::fs::FileTypeExt;
            meta.file_type().is_block_device()
        };
        if !meta.is_file() && !block_disk {
            return Err(JailError::Usage(format!(
                "{what} {host}: not a regular file"
            )));
        }
        self.files.push(Placed {
            host: canonical,
            jail: PathBuf::from(&jail),
            usage,
        });
        Ok(jail)
    }

    /// A file the VMM creates: `/run/<file name of host>`.
    fn in_run_dir(&mut self, what: &str, host: &str) -> Result<String, JailError> {
        let name = Path::new(host)
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| JailError::Usage(format!("{what} '{host}' has no file name")))?;
        self.run_dir = true;
        Ok(format!("{RUN_DIR}/{name}"))
    }

    fn disk(&mut self, text: &str) -> Result<String, JailError> {
        let cfg = vmm::config::parse_disk(text).map_err(JailError::Usage)?;
        let usage = if cfg.read_only {
            Use::DiskReadOnly
        } else {
            Use::DiskReadWrite
        };
        let host = cfg.path.to_str().unwrap_or_default().to_string();
        let jail = format!("/disk{}", self.disks());
        let jail = self.place("--disk", &host, jail, usage)?;
        Ok(replace_key(text, "path", &jail))
    }

    fn vsock(&mut self, text: &str) -> Result<String, JailError> {
        let socket = text
            .split(',')
            .find_map(|p| p.strip_prefix("socket="))
            .ok_or_else(|| JailError::Usage(format!("--vsock: no socket=PATH in '{text}'")))?
            .to_string();
        let jail = self.in_run_dir("--vsock socket", &socket)?;
        Ok(replace_key(text, "socket", &jail))
    }

    fn disks(&self) -> usize {
        self.files.iter().filter(|f| f.usage != Use::Boot).count()
    }

    /// Rewrites a Firecracker-style configuration file's host paths.
    fn config_file(&mut self, host: &str) -> Result<String, JailError> {
        let file = |e| JailError::File {
            what: "--config-file".into(),
            path: host.into(),
            source: e,
        };
        let bytes = std::fs::read(host).map_err(file)?;
        let mut doc: Value = serde_json::from_slice(&bytes)
            .map_err(|e| JailError::Usage(format!("--config-file {host}: {e}")))?;
        let text = |v: &Value| v.as_str().map(str::to_string);
        if let Some(boot) = doc.get_mut("boot-source") {
            if let Some(k) = boot.get("kernel_image_path").and_then(text) {
                boot["kernel_image_path"] = self
                    .place("kernel_image_path", &k, "/kernel".into(), Use::Boot)?
                    .into();
            }
            if let Some(i) = boot.get("initrd_path").and_then(text) {
                boot["initrd_path"] = self
                    .place("initrd_path", &i, "/initrd".into(), Use::Boot)?
                    .into();
            }
        }
        if let Some(Value::Array(drives)) = doc.get_mut("drives") {
            for drive in drives {
                let Some(path) = drive.get("path_on_host").and_then(text) else {
                    continue;
                };
                let usage = match drive.get("is_read_only") {
                    Some(Value::Bool(true)) => Use::DiskReadOnly,
                    _ => Use::DiskReadWrite,
                };
                let jail = format!("/disk{}", self.disks());
                drive["path_on_host"] = self.place("path_on_host", &path, jail, usage)?.into();
            }
        }
        if let Some(Value::Array(nets)) = doc.get("network-interfaces") {
            self.tun |= !nets.is_empty();
        }
        for (section, key) in [
            ("vsock", "uds_path"),
            ("logger", "log_path"),
            ("metrics", "metrics_path"),
        ] {
            if let Some(obj) = doc.get_mut(section) {
                if let Some(path) = obj.get(key).and_then(text) {
                    obj[key] = self.in_run_dir(key, &path)?.into();
                }
            }
        }
        self.config = Some(doc.to_string().into_bytes());
        Ok(CONFIG.to_string())
    }
}

/// `text` (`k=v,k=v`) with `key`'s value replaced.
fn replace_key(text: &str, key: &str, value: &str) -> String {
    text.split(',')
        .map(|part| match part.split_once('=') {
            Some((k, _)) if k == key => format!("{key}={value}"),
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks the VMM's arguments as `utsuwa` itself would, then rewrites
/// every host path in them.
pub fn plan(vmm_args: &[String]) -> Result<Plan, JailError> {
    match cli::parse(vmm_args.iter().cloned()).map_err(JailError::Usage)? {
        Command::Run(run) if run.kernel.is_none() => {
            return Err(JailError::Usage(
                "jail: run needs --kernel (the default guest's cache is not inside the jail)"
                    .into(),
            ))
        }
        Command::Run(_) | Command::Api(_) => {}
        _ => {
            return Err(JailError::Usage(format!(
                "jail runs 'utsuwa run ...' or 'utsuwa api ...', not '{}'",
                vmm_args.first().map(String::as_str).unwrap_or("")
            )))
        }
    }
    let mut plan = Plan::default();
    let mut args = vmm_args.iter();
    if let Some(first) = vmm_args.first().filter(|a| !a.starts_with("--")) {
        plan.args.push(first.clone());
        args.next();
    }
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        if !VALUE_FLAGS.contains(&flag) {
            plan.args.push(arg.clone());
            continue;
        }
        // cli::parse accepted these arguments, so the value is there.
        let value = inline.or_else(|| args.next().cloned()).unwrap_or_default();
        let value = match flag {
            "--kernel" => plan.place("--kernel", &value, "/kernel".into(), Use::Boot)?,
            "--initrd" => plan.place("--initrd", &value, "/initrd".into(), Use::Boot)?,
            "--disk" => plan.disk(&value)?,
            "--api-sock" => plan.in_run_dir("--api-sock", &value)?,
            "--vsock" => plan.vsock(&value)?,
            "--config-file" => plan.config_file(&value)?,
            "--net" => {
                plan.tun = true;
                value
            }
            _ => value,
        };
        plan.args.push(flag.to_string());
        plan.args.push(value);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn host_paths_become_jail_paths() {
        let dir = std::env::temp_dir().join(format!("utsuwa-jail-rewrite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (k, d0, d1) = (dir.join("k"), dir.join("a.img"), dir.join("b.img"));
        for f in [&k, &d0, &d1] {
            std::fs::write(f, b"x").unwrap();
        }
        let args = strings(&[
            "run",
            &format!("--kernel={}", k.display()),
            "--cmdline",
            "--disk",
            "--disk",
            &format!("path={},serial=s", d0.display()),
            "--disk",
            &format!("readonly=on,path={}", d1.display()),
            "--net",
            "tap=t0",
            "--rng",
        ]);
        let plan = plan(&args).unwrap();
        assert_eq!(
            plan.args,
            strings(&[
                "run",
                "--kernel",
                "/kernel",
                "--cmdline",
                "--disk",
                "--disk",
                "path=/disk0,serial=s",
                "--disk",
                "readonly=on,path=/disk1",
                "--net",
                "tap=t0",
                "--rng",
            ])
        );
        let usages: Vec<_> = plan
            .files
            .iter()
            .map(|f| (f.jail.clone(), f.usage))
            .collect();
        assert_eq!(
            usages,
            [
                (PathBuf::from("/kernel"), Use::Boot),
                (PathBuf::from("/disk0"), Use::DiskReadWrite),
                (PathBuf::from("/disk1"), Use::DiskReadOnly)
            ]
        );
        assert!(plan.tun && !plan.run_dir);

        let json = serde_json::json!({
            "boot-source": { "kernel_image_path": k, "boot_args": "x" },
            "drives": [{ "drive_id": "r", "path_on_host": d1, "is_read_only": true, "is_root_device": true }],
            "metrics": { "metrics_path": "/var/m.fifo" },
        });
        let cfg = dir.join("vm.json");
        std::fs::write(&cfg, json.to_string()).unwrap();
        let plan = plan_of(&[
            "run",
            "--config-file",
            cfg.to_str().unwrap(),
            "--api-sock",
            "/x/api.sock",
        ]);
        assert_eq!(
            plan.args,
            strings(&[
                "run",
                "--config-file",
                "/vm.json",
                "--api-sock",
                "/run/api.sock"
            ])
        );
        let doc: Value = serde_json::from_slice(plan.config.as_ref().unwrap()).unwrap();
        assert_eq!(doc["boot-source"]["kernel_image_path"], "/kernel");
        assert_eq!(doc["drives"][0]["path_on_host"], "/disk0");
        assert_eq!(doc["metrics"]["metrics_path"], "/run/m.fifo");
        assert_eq!(plan.files[1].usage, Use::DiskReadOnly);
        assert!(plan.run_dir && !plan.tun);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn plan_of(args: &[&str]) -> Plan {
        plan(&strings(args)).unwrap()
    }

    #[test]
    fn refuses_what_cannot_be_jailed() {
        for (args, needle) in [
            (&["run"][..], "needs --kernel"),
            (&["ctl", "--api-sock", "x", "info"][..], "not 'ctl'"),
            (
                &["run", "--kernel", "/nonexistent/k"][..],
                "--kernel /nonexistent/k",
            ),
            (&["run", "--kernel", "/"][..], "not a regular file"),
            (
                &["run", "--kernel", "/proc/version", "--disk", "path=/nope"][..],
                "--disk /nope",
            ),
            (&["run", "--bogus"][..], "unknown option"),
        ] {
            let err = plan(&strings(args)).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
            assert!(!err.contains('\n'));
        }
        let api = plan_of(&["--api-sock", "/tmp/a.sock"]);
        assert_eq!(api.args, strings(&["--api-sock", "/run/a.sock"]));
    }
}
