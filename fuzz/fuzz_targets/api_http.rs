//! The management API from the socket's side: raw bytes as a client may
//! send them (pipelined requests) through the HTTP/1.1 parser, then each
//! complete request through the route table, the JSON documents and the
//! instance, as the server does. Invariants: the parser never accepts a
//! head over MAX_HEAD or a body over MAX_BODY, never reads past the
//! bytes it has, and every response is well formed.
//!
//! Documents that name files to create (logger, metrics) or devices are
//! parsed but not applied (see `utsuwa_fuzz::safe_to_apply`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use utsuwa::api::http::{self, MAX_BODY, MAX_HEAD};
use utsuwa_fuzz::{api, check_response, safe_to_apply};

fuzz_target!(|data: &[u8]| {
    let mut api = api();
    let mut buf = data;
    for _ in 0..16 {
        let head = match http::parse_head(buf) {
            Ok(Some(head)) => head,
            Ok(None) => {
                assert!(buf.len() < MAX_HEAD, "no verdict on {} bytes", buf.len());
                break;
            }
            Err(e) => {
                assert!(matches!(e.status, 400 | 413 | 417 | 505), "{e:?}");
                break;
            }
        };
        assert!(head.len <= MAX_HEAD && head.len <= buf.len());
        assert!(head.content_length <= MAX_BODY, "body limit not enforced");
        assert!(head.path.starts_with('/'));
        assert!(!head.path.contains(['?', '#', '\r', '\n']));
        let rest = &buf[head.len..];
        let Some(body) = rest.get(..head.content_length) else {
            break;
        };
        if safe_to_apply(body) {
            let resp = api.handle(head.method, &head.method_text, &head.path, body);
            check_response(&resp);
        }
        buf = &rest[head.content_length..];
    }
});
