//! `utsuwa run --config-file`: the fuzzer's bytes as the JSON document,
//! decoded and applied section by section with the API's checks, then
//! turned into the VM configuration InstanceStart would boot. Documents
//! naming files to create (logger, metrics) or devices are decoded but
//! not applied (see `utsuwa_fuzz::safe_to_apply`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use utsuwa::api::model::{decode, ConfigFile};
use utsuwa_fuzz::{api, safe_to_apply};

fuzz_target!(|data: &[u8]| {
    let decoded = decode::<ConfigFile>(data);
    if !safe_to_apply(data) {
        return;
    }
    let mut api = api();
    let applied = api.apply_config_file(data);
    if decoded.is_err() {
        assert!(
            applied.is_err(),
            "a document that does not decode was applied"
        );
    }
    if applied.is_ok() {
        if let Ok(cfg) = api.instance.vm_config() {
            assert!(cfg.vcpus >= 1);
            assert!(cfg.mem_size > 0);
        }
    }
});
