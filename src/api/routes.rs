//! Every route the API serves, in one table (which `openapi/utsuwa.yaml`
//! must match: a test compares them), and the handlers behind them. Paths
//! and JSON shapes are Firecracker's; `GET /metrics` is utsuwa's own.
//! A method or path not in the table is answered 400, as Firecracker does.

use serde_json::json;

use super::http::{Method, Response};
use super::instance::{ApiError, Instance};
use super::metrics::ApiMetrics;
use super::model::{self, decode, ActionType, VmState};

/// A path (with at most one `{param}` segment) and its methods.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub path: &'static str,
    pub methods: &'static [Method],
}

use Method::{Get, Patch, Put};

/// The whole API.
pub const ROUTES: &[Route] = &[
    Route {
        path: "/",
        methods: &[Get],
    },
    Route {
        path: "/actions",
        methods: &[Put],
    },
    Route {
        path: "/boot-source",
        methods: &[Put],
    },
    Route {
        path: "/drives/{drive_id}",
        methods: &[Put],
    },
    Route {
        path: "/entropy",
        methods: &[Put],
    },
    Route {
        path: "/logger",
        methods: &[Put],
    },
    Route {
        path: "/machine-config",
        methods: &[Get, Put, Patch],
    },
    Route {
        path: "/metrics",
        methods: &[Get, Put],
    },
    Route {
        path: "/network-interfaces/{iface_id}",
        methods: &[Put],
    },
    Route {
        path: "/version",
        methods: &[Get],
    },
    Route {
        path: "/vm",
        methods: &[Patch],
    },
    Route {
        path: "/vm/config",
        methods: &[Get],
    },
    Route {
        path: "/vsock",
        methods: &[Put],
    },
];

/// The route `path` matches, and the value of its parameter if it has one.
pub fn find(path: &str) -> Option<(&'static Route, Option<&str>)> {
    // Tolerate one trailing slash, as clients often add it.
    let path = if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    };
    ROUTES.iter().find_map(|route| {
        let mut param = None;
        let mut want = route.path.split('/');
        let mut got = path.split('/');
        loop {
            match (want.next(), got.next()) {
                (None, None) => return Some((route, param)),
                (Some(w), Some(g)) if w.starts_with('{') => {
                    if g.is_empty() {
                        return None;
                    }
                    param = Some(g);
                }
                (Some(w), Some(g)) if w == g => {}
                _ => return None,
            }
        }
    })
}

/// The version `GET /` and `GET /version` report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Serves one request against the instance, counting it.
pub fn handle(
    instance: &mut Instance,
    metrics: &mut ApiMetrics,
    method: Option<Method>,
    method_text: &str,
    path: &str,
    body: &[u8],
) -> Response {
    let invalid = || {
        Response::fault(
            400,
            &format!("Invalid request method and/or path: {method_text} {path}"),
        )
    };
    let Some((route, param)) = find(path) else {
        metrics.http_errors += 1;
        return invalid();
    };
    let Some(method) = method.filter(|m| route.methods.contains(m)) else {
        metrics.http_errors += 1;
        return invalid();
    };
    let response = match dispatch(
        instance,
        metrics,
        route.path,
        method,
        param.unwrap_or(""),
        body,
    ) {
        Ok(r) => r,
        Err(e) => {
            log::info!("API {method} {path}: {e}");
            Response::fault(400, &e.to_string())
        }
    };
    metrics.request(route.path, method, response.status);
    response
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    decode(body).map_err(ApiError::Invalid)
}

fn ok(value: serde_json::Value) -> Result<Response, ApiError> {
    Ok(Response::json(200, &value))
}

fn done() -> Result<Response, ApiError> {
    Ok(Response::no_content())
}

fn dispatch(
    instance: &mut Instance,
    metrics: &mut ApiMetrics,
    route: &str,
    method: Method,
    param: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    match (route, method) {
        ("/", Get) => ok(json!({
            "id": instance.id,
            "state": instance.state().as_str(),
            "vmm_version": VERSION,
            "app_name": "utsuwa",
        })),
        ("/version", Get) => ok(json!({ "firecracker_version": VERSION })),
        ("/machine-config", Get) => ok(json!(instance.machine)),
        ("/machine-config", Put) => {
            instance.update_machine(parse(body)?, true)?;
            done()
        }
        ("/machine-config", Patch) => {
            instance.update_machine(parse(body)?, false)?;
            done()
        }
        ("/boot-source", Put) => {
            instance.put_boot_source(parse(body)?)?;
            done()
        }
        ("/drives/{drive_id}", Put) => {
            instance.put_drive(param, parse(body)?)?;
            done()
        }
        ("/network-interfaces/{iface_id}", Put) => {
            instance.put_network_interface(param, parse(body)?)?;
            done()
        }
        ("/vsock", Put) => {
            instance.put_vsock(parse(body)?)?;
            done()
        }
        ("/entropy", Put) => {
            instance.put_entropy(parse(body)?)?;
            done()
        }
        ("/logger", Put) => {
            let logger: model::Logger = parse(body)?;
            crate::logger::apply(&logger).map_err(ApiError::Invalid)?;
            done()
        }
        ("/metrics", Put) => {
            let m: model::Metrics = parse(body)?;
            metrics
                .configure(&m.metrics_path)
                .map_err(ApiError::Invalid)?;
            done()
        }
        ("/metrics", Get) => Ok(Response::text(metrics.prometheus(instance))),
        ("/actions", Put) => {
            let action: model::Action = parse(body)?;
            match action.action_type {
                ActionType::InstanceStart => instance.start()?,
                ActionType::SendCtrlAltDel => instance.ctrl_alt_del()?,
                ActionType::FlushMetrics => metrics.flush(instance).map_err(ApiError::Invalid)?,
            }
            done()
        }
        ("/vm", Patch) => {
            let update: model::VmStateUpdate = parse(body)?;
            match update.state {
                VmState::Paused => instance.pause()?,
                VmState::Resumed => instance.resume()?,
            }
            done()
        }
        ("/vm/config", Get) => ok(vm_config(instance, metrics)),
        _ => Err(ApiError::Invalid(format!(
            "Invalid request method and/or path: {method} {route}"
        ))),
    }
}

/// `GET /vm/config`: every section, null where nothing is configured.
pub fn vm_config(instance: &Instance, metrics: &ApiMetrics) -> serde_json::Value {
    json!({
        "balloon": null,
        "drives": instance.drives,
        "boot-source": instance.boot,
        "cpu-config": null,
        "logger": crate::logger::current(),
        "machine-config": instance.machine,
        "metrics": metrics.path().map(|p| json!({ "metrics_path": p })),
        "mmds-config": null,
        "network-interfaces": instance.nets,
        "vsock": instance.vsock,
        "entropy": instance.entropy,
    })
}
