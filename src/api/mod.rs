//! The management API: HTTP/1.1 on a Unix socket, with Firecracker's paths
//! and JSON documents, so that tools written for Firecracker can drive
//! utsuwa. The process starts with no VM; the client describes one (boot
//! source, machine, drives, network interfaces, entropy, logger, metrics)
//! and starts it with `PUT /actions {"action_type": "InstanceStart"}`; the
//! API keeps serving while the guest runs (pause, resume, Ctrl-Alt-Del,
//! metrics). `openapi/utsuwa.yaml` describes every route.
//!
//! ```text
//! server (poll loop, connections) ──► http (parse, encode)
//!    └──► Api::handle ──► routes (table, handlers) ──► instance (config, VM)
//!                                                 └──► metrics
//! ```
//!
//! `--config-file` takes the document `GET /vm/config` prints
//! ([`model::ConfigFile`]) and applies it through the same checks.

pub mod args;
pub mod client;
pub mod device_metrics;
pub mod http;
pub mod instance;
pub mod metrics;
pub mod model;
pub mod routes;
pub mod server;

use http::{Method, Response};
use instance::{ApiError, Instance};
use metrics::ApiMetrics;

/// The instance and the API's counters: everything a request can touch.
pub struct Api {
    pub instance: Instance,
    pub metrics: ApiMetrics,
}

impl Api {
    pub fn new(instance: Instance) -> Self {
        Api {
            instance,
            metrics: ApiMetrics::default(),
        }
    }

    /// Serves one parsed request.
    pub fn handle(
        &mut self,
        method: Option<Method>,
        method_text: &str,
        path: &str,
        body: &[u8],
    ) -> Response {
        routes::handle(
            &mut self.instance,
            &mut self.metrics,
            method,
            method_text,
            path,
            body,
        )
    }

    /// Applies a `--config-file` document, section by section, with the
    /// checks the API makes; the error names the section.
    pub fn apply_config_file(&mut self, text: &[u8]) -> Result<(), String> {
        let doc: model::ConfigFile = model::decode(text)?;
        fn at(section: &'static str) -> impl Fn(ApiError) -> String {
            move |e| format!("{section}: {e}")
        }
        if let Some(logger) = &doc.logger {
            crate::logger::apply(logger).map_err(|e| format!("logger: {e}"))?;
        }
        if let Some(m) = &doc.metrics {
            self.metrics
                .configure(&m.metrics_path)
                .map_err(|e| format!("metrics: {e}"))?;
        }
        let inst = &mut self.instance;
        inst.put_boot_source(doc.boot_source)
            .map_err(at("boot-source"))?;
        if let Some(machine) = doc.machine_config {
            inst.update_machine(machine, true)
                .map_err(at("machine-config"))?;
        }
        for drive in doc.drives {
            let id = drive.drive_id.clone();
            inst.put_drive(&id, drive).map_err(at("drives"))?;
        }
        for iface in doc.network_interfaces {
            let id = iface.iface_id.clone();
            inst.put_network_interface(&id, iface)
                .map_err(at("network-interfaces"))?;
        }
        if let Some(vsock) = doc.vsock {
            inst.put_vsock(vsock).map_err(at("vsock"))?;
        }
        if let Some(entropy) = doc.entropy {
            inst.put_entropy(entropy).map_err(at("entropy"))?;
        }
        Ok(())
    }
}
