//! The API's counters and the two ways out: `GET /metrics` in Prometheus'
//! text format (cumulative), and a Firecracker-style JSON line appended to
//! the `PUT /metrics` file on `FlushMetrics` and every minute (each value
//! the change since the previous line, as Firecracker's counters are).
//! Counted: API requests by route and method (and failures), HTTP-level
//! rejections and connections; from the VM, vCPU exits by reason and
//! every device's counters (`device_metrics`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vmm::vcpu::ExitKind;

use super::http::Method;
use super::instance::Instance;

/// How often the metrics file gets a line without being asked.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, Default)]
struct Count {
    ok: u64,
    failed: u64,
}

/// Every counter the API keeps, and the metrics file.
pub struct ApiMetrics {
    requests: BTreeMap<(&'static str, Method), Count>,
    /// Requests refused before routing: malformed, too large, bad method.
    pub http_errors: u64,
    pub connections: u64,
    /// Connections closed by the server: `timeout`, `limit`.
    pub dropped: BTreeMap<&'static str, u64>,
    sink: Option<(String, File)>,
    previous: BTreeMap<String, u64>,
    next_flush: Option<Instant>,
    started: Instant,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: BTreeMap::new(),
            http_errors: 0,
            connections: 0,
            dropped: BTreeMap::new(),
            sink: None,
            previous: BTreeMap::new(),
            next_flush: None,
            started: Instant::now(),
        }
    }
}

/// Firecracker's name for a route's counters (`machine_cfg_count`, ...).
fn firecracker_name(route: &str) -> &'static str {
    match route {
        "/" => "instance_info",
        "/actions" => "actions",
        "/boot-source" => "boot_source",
        "/drives/{drive_id}" => "drive",
        "/entropy" => "entropy",
        "/logger" => "logger",
        "/machine-config" => "machine_cfg",
        "/metrics" => "metrics",
        "/network-interfaces/{iface_id}" => "network",
        "/version" => "vmm_version",
        "/vm" => "vm",
        "/vm/config" => "vm_config",
        "/vsock" => "vsock",
        _ => "other",
    }
}

impl ApiMetrics {
    /// Counts one routed request.
    pub fn request(&mut self, route: &'static str, method: Method, status: u16) {
        let c = self.requests.entry((route, method)).or_default();
        if status >= 400 {
            c.failed += 1;
        } else {
            c.ok += 1;
        }
    }

    pub fn dropped(&mut self, reason: &'static str) {
        *self.dropped.entry(reason).or_default() += 1;
    }

    pub fn is_configured(&self) -> bool {
        self.sink.is_some()
    }

    /// `PUT /metrics`: opens the file (or named pipe) the lines go to.
    pub fn configure(&mut self, path: &str) -> Result<(), String> {
        if self.sink.is_some() {
            return Err("metrics_path: the metrics system is already initialized".into());
        }
        if path.is_empty() {
            return Err("metrics_path must not be empty".into());
        }
        // Read and write, so that a named pipe without a reader yet opens;
        // non-blocking, so that a full pipe never stalls the API.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| format!("metrics_path: cannot open '{path}': {e}"))?;
        self.sink = Some((path.to_string(), file));
        self.next_flush = Some(Instant::now() + FLUSH_INTERVAL);
        Ok(())
    }

    /// The configured path, for `GET /vm/config`.
    pub fn path(&self) -> Option<&str> {
        self.sink.as_ref().map(|(p, _)| p.as_str())
    }

    /// When the next periodic line is due.
    pub fn next_flush(&self) -> Option<Instant> {
        self.next_flush
    }

    /// Writes one JSON line of what changed since the previous one.
    pub fn flush(&mut self, instance: &Instance) -> Result<(), String> {
        let groups = self.groups(instance);
        let Some((path, file)) = self.sink.as_mut() else {
            return Err("FlushMetrics: no metrics file: PUT /metrics first".into());
        };
        let mut doc = serde_json::Map::new();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        doc.insert("utc_timestamp_ms".into(), now_ms.into());
        for (group, fields) in &groups {
            let mut obj = serde_json::Map::new();
            for (field, value) in fields {
                let key = format!("{group}.{field}");
                let before = self.previous.get(&key).copied().unwrap_or(0);
                obj.insert(field.clone(), value.saturating_sub(before).into());
                self.previous.insert(key, *value);
            }
            doc.insert(group.clone(), obj.into());
        }
        let mut line = serde_json::Value::Object(doc).to_string();
        line.push('\n');
        self.next_flush = Some(Instant::now() + FLUSH_INTERVAL);
        file.write_all(line.as_bytes())
            .map_err(|e| format!("FlushMetrics: cannot write to '{path}': {e}"))
    }

    /// Every counter, cumulative, grouped as Firecracker groups them.
    fn groups(&self, instance: &Instance) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut g: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (&(route, method), c) in &self.requests {
            let group = match method {
                Method::Get => "get_api_requests",
                Method::Put => "put_api_requests",
                Method::Patch => "patch_api_requests",
            };
            let name = firecracker_name(route);
            let fields = g.entry(group.into()).or_default();
            *fields.entry(format!("{name}_count")).or_default() += c.ok + c.failed;
            *fields.entry(format!("{name}_fails")).or_default() += c.failed;
        }
        let api = g.entry("api_server".into()).or_default();
        api.insert("http_errors".into(), self.http_errors);
        api.insert("connections".into(), self.connections);
        for (reason, n) in &self.dropped {
            api.insert(format!("dropped_{reason}"), *n);
        }
        api.insert(
            "uptime_ms".into(),
            self.started.elapsed().as_millis() as u64,
        );
        if let Some(control) = instance.control() {
            let vcpu = g.entry("vcpu".into()).or_default();
            for exits in control.vcpu_exits() {
                for (kind, n) in ExitKind::ALL.iter().zip(exits) {
                    let name = match kind {
                        ExitKind::FailEntry | ExitKind::InternalError | ExitKind::Other => {
                            "failures".to_string()
                        }
                        k => format!("exit_{}", k.name()),
                    };
                    *vcpu.entry(name).or_default() += n;
                }
            }
            super::device_metrics::add_groups(
                &mut g,
                instance.started_drives(),
                instance.started_nets(),
                &control.device_counters(),
            );
        }
        g
    }

    /// `GET /metrics`: everything, cumulative, in Prometheus' text format.
    pub fn prometheus(&self, instance: &Instance) -> String {
        let mut out = String::new();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut out,
            "utsuwa_api_requests_total",
            "counter",
            "API requests by route, method and outcome.",
        );
        for (&(route, method), c) in &self.requests {
            for (outcome, n) in [("ok", c.ok), ("error", c.failed)] {
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "utsuwa_api_requests_total{{path=\"{route}\",method=\"{method}\",outcome=\"{outcome}\"}} {n}"
                    );
                }
            }
        }
        family(
            &mut out,
            "utsuwa_api_http_errors_total",
            "counter",
            "Requests refused before routing (malformed, too large, unknown method).",
        );
        let _ = writeln!(out, "utsuwa_api_http_errors_total {}", self.http_errors);
        family(
            &mut out,
            "utsuwa_api_connections_total",
            "counter",
            "Connections accepted.",
        );
        let _ = writeln!(out, "utsuwa_api_connections_total {}", self.connections);
        family(
            &mut out,
            "utsuwa_api_connections_dropped_total",
            "counter",
            "Connections the server closed, by reason.",
        );
        for (reason, n) in &self.dropped {
            let _ = writeln!(
                out,
                "utsuwa_api_connections_dropped_total{{reason=\"{reason}\"}} {n}"
            );
        }
        family(
            &mut out,
            "utsuwa_vm_state",
            "gauge",
            "1 for the instance's current state.",
        );
        let _ = writeln!(
            out,
            "utsuwa_vm_state{{state=\"{}\"}} 1",
            instance.state().as_str()
        );
        let Some(control) = instance.control() else {
            return out;
        };
        family(
            &mut out,
            "utsuwa_vcpus_parked",
            "gauge",
            "vCPUs parked by a pause.",
        );
        let _ = writeln!(out, "utsuwa_vcpus_parked {}", control.parked_vcpus());
        family(
            &mut out,
            "utsuwa_vcpu_exits_total",
            "counter",
            "vCPU exits from KVM_RUN by vCPU and reason.",
        );
        for (i, exits) in control.vcpu_exits().iter().enumerate() {
            for (kind, n) in ExitKind::ALL.iter().zip(exits) {
                let _ = writeln!(
                    out,
                    "utsuwa_vcpu_exits_total{{vcpu=\"{i}\",reason=\"{}\"}} {n}",
                    kind.name()
                );
            }
        }
        super::device_metrics::prometheus(
            &mut out,
            instance.started_drives(),
            instance.started_nets(),
            &control.device_counters(),
        );
        out
    }
}
