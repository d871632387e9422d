//! The management API's routes and JSON documents, without HTTP syntax in
//! the way: each request picks a route of the table (or a fuzzed path)
//! and a method, and its body is the fuzzer's bytes. Runs a few requests
//! against one instance so that checks between documents (IDs, the root
//! drive, pre-boot-only changes) are reached. `GET /vm/config` must then
//! print a document that `--config-file` accepts back.
//!
//! Bytes, per request: route (u8), method (u8), body length (u16), path
//! parameter (length-prefixed) when the route has one, the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use utsuwa::api::http::Method;
use utsuwa::api::routes::{vm_config, ROUTES};
use utsuwa_fuzz::{api, check_response, safe_to_apply, Input};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut api = api();
    while !input.is_empty() {
        let r = usize::from(input.u8());
        let method = match input.u8() % 4 {
            0 => Some(Method::Get),
            1 => Some(Method::Put),
            2 => Some(Method::Patch),
            _ => None,
        };
        let body_len = usize::from(input.u16());
        let path = match ROUTES.get(r % (ROUTES.len() + 1)) {
            Some(route) if route.path.contains('{') => {
                let prefix = &route.path[..route.path.find('{').unwrap()];
                format!("{prefix}{}", input.string())
            }
            Some(route) => route.path.to_string(),
            None => input.string(),
        };
        let body = input.bytes(body_len);
        if !safe_to_apply(body) {
            continue;
        }
        let text = method.map_or("DELETE", |m| m.as_str());
        let resp = api.handle(method, text, &path, body);
        check_response(&resp);
    }

    // What GET /vm/config prints, --config-file takes back (the logger and
    // metrics sections aside: they name files to create).
    let mut doc = vm_config(&api.instance, &api.metrics);
    doc["logger"] = serde_json::Value::Null;
    doc["metrics"] = serde_json::Value::Null;
    if api.instance.boot.is_some() {
        let text = serde_json::to_vec(&doc).unwrap();
        let mut again = utsuwa_fuzz::api();
        if let Err(e) = again.apply_config_file(&text) {
            // Files may have vanished or changed since; anything else is a bug.
            assert!(
                e.contains("cannot open"),
                "GET /vm/config not accepted back: {e}\n{doc}"
            );
        }
    }
});
