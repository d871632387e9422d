//! The command line: the fuzzer's bytes split at NUL into arguments and
//! parsed by the binary's own parser (src/cli.rs, included as it is),
//! which reaches the `--disk`, `--net` and `--memory` value parsers, the
//! API's and ctl's arguments, and `run --config-file`. A VM configuration
//! is built from every accepted `run`.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/cli.rs"]
mod cli;

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let args: Vec<String> = text.split('\0').map(str::to_string).collect();
    if let Ok(cli::Command::Run(run)) = cli::parse(args) {
        assert!(run.vcpus >= 1);
        for disk in &run.disks {
            assert!(!disk.path.as_os_str().is_empty());
            assert!(disk.serial.as_ref().is_none_or(|s| s.len() <= 20));
        }
        for net in &run.nets {
            assert!(!net.tap.is_empty());
            assert!(net.mac.is_none_or(|m| !m.is_multicast()));
        }
        let cfg = run.vm_config(PathBuf::from("kernel"), None);
        assert_eq!(cfg.vcpus, run.vcpus);
    }
    // The value parsers on their own, whole input as one value.
    let _ = vmm::config::parse_size(&text);
    let _ = vmm::config::parse_disk(&text);
    let _ = vmm::config::parse_net(&text);
});
