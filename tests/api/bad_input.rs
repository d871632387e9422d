//! Bad input to the API, with a guest running that must not notice:
//! documents with unknown fields, wrong types and bad values (each answered
//! 400 naming the field, nothing applied); malformed HTTP; a 100 MB body; a
//! client that sends a byte a second; one that leaves mid-request;
//! pre-boot-only changes after boot. And the HTTP parser on its own.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use utsuwa::api::http::{parse_head, Method, MAX_BODY, MAX_HEAD};

use crate::harness::{body_of, fault, raw, rss_kib, status_of, Server};
use crate::probe_path;
use crate::support::blk::Scratch;

const LIMIT: Duration = Duration::from_secs(10);

#[test]
fn http_parser_takes_what_is_valid_and_refuses_the_rest() {
    let head = parse_head(b"PUT http://localhost/drives/a?x=1 HTTP/1.1\r\nContent-Length: 12\r\nconnection: Close\r\n\r\n{}")
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            head.method,
            head.path.as_str(),
            head.content_length,
            head.keep_alive
        ),
        (Some(Method::Put), "/drives/a", 12, false)
    );
    assert_eq!(
        parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap(),
        None,
        "incomplete"
    );
    let h10 = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(!h10.keep_alive && h10.method == Some(Method::Get));
    assert_eq!(
        parse_head(b"BREW / HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap()
            .method,
        None
    );
    let too_long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    for (bytes, status) in [
        (&b"GET /\r\n\r\n"[..], 400),
        (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET relative HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA: b\nC: d\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nExpect: magic\r\n\r\n", 417),
        (
            b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            413,
        ),
        (
            format!("GET / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1).as_bytes(),
            413,
        ),
        (too_long.as_bytes(), 400),
        (
            &[b'G', 0xff, b' ', b'/', b'\r', b'\n', b'\r', b'\n'][..],
            400,
        ),
    ] {
        let err = parse_head(bytes).expect_err(&String::from_utf8_lossy(bytes));
        assert_eq!(
            err.status,
            status,
            "{:?}: {}",
            String::from_utf8_lossy(bytes),
            err.message
        );
    }
    // Without its blank line, a head over the limit is refused as it grows.
    assert_eq!(
        parse_head("A".repeat(MAX_HEAD).as_bytes())
            .unwrap_err()
            .status,
        400
    );
}

/// Documents that must each be refused, naming `needle`.
fn bad_documents(img: &str) -> Vec<(&'static str, &'static str, Value, &'static str)> {
    let probe = probe_path();
    vec![
        (
            "PUT",
            "/machine-config",
            json!({ "vcpu_count": 2, "mem_size_mib": 128, "bogus": 1 }),
            "bogus",
        ),
        (
            "PUT",
            "/machine-config",
            json!({ "vcpu_count": "2", "mem_size_mib": 128 }),
            "vcpu_count",
        ),
        (
            "PUT",
            "/machine-config",
            json!({ "vcpu_count": 0, "mem_size_mib": 128 }),
            "vcpu_count",
        ),
        (
            "PUT",
            "/machine-config",
            json!({ "vcpu_count": 300, "mem_size_mib": 128 }),
            "vcpu_count",
        ),
        (
            "PUT",
            "/machine-config",
            json!({ "mem_size_mib": 128 }),
            "vcpu_count",
        ),
        (
            "PUT",
            "/machine-config",
            json!({ "vcpu_count": 1, "mem_size_mib": 1 }),
            "mem_size_mib",
        ),
        (
            "PUT",
            "/machine-config",
            json!({ "vcpu_count": 1, "mem_size_mib": -5 }),
            "mem_size_mib",
        ),
        (
            "PUT",
            "/machine-config",
            json!({ "vcpu_count": 1, "mem_size_mib": 64, "smt": true }),
            "smt",
        ),
        (
            "PUT",
            "/machine-config",
            json!({ "vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2" }),
            "cpu_template",
        ),
        (
            "PUT",
            "/machine-config",
            json!({ "vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "2M" }),
            "huge_pages",
        ),
        (
            "PATCH",
            "/machine-config",
            json!({ "vcpu_count": null, "extra": true }),
            "extra",
        ),
        ("PUT", "/boot-source", json!({}), "kernel_image_path"),
        (
            "PUT",
            "/boot-source",
            json!({ "kernel_image_path": "/nonexistent/vmlinux" }),
            "kernel_image_path",
        ),
        (
            "PUT",
            "/boot-source",
            json!({ "kernel_image_path": probe, "boot_args": 5 }),
            "boot_args",
        ),
        (
            "PUT",
            "/boot-source",
            json!({ "kernel_image_path": probe, "initrd_path": "/nonexistent" }),
            "initrd_path",
        ),
        (
            "PUT",
            "/drives/a",
            json!({ "drive_id": "b", "path_on_host": img, "is_root_device": false }),
            "drive_id",
        ),
        (
            "PUT",
            "/drives/a.b",
            json!({ "drive_id": "a.b", "path_on_host": img, "is_root_device": false }),
            "drive_id",
        ),
        (
            "PUT",
            "/drives/a",
            json!({ "drive_id": "a", "is_root_device": false }),
            "path_on_host",
        ),
        (
            "PUT",
            "/drives/a",
            json!({ "drive_id": "a", "path_on_host": img }),
            "is_root_device",
        ),
        (
            "PUT",
            "/drives/a",
            json!({ "drive_id": "a", "path_on_host": img, "is_root_device": "yes" }),
            "is_root_device",
        ),
        (
            "PUT",
            "/drives/a",
            json!({ "drive_id": "a", "path_on_host": img, "is_root_device": false, "cache_type": "Fast" }),
            "cache_type",
        ),
        (
            "PUT",
            "/drives/a",
            json!({ "drive_id": "a", "path_on_host": img, "is_root_device": false, "io_engine": "Turbo" }),
            "io_engine",
        ),
        (
            "PUT",
            "/drives/a",
            json!({ "drive_id": "a", "path_on_host": img, "is_root_device": false,
                                     "rate_limiter": { "bandwidth": { "size": 1, "refill_time": 100 } } }),
            "rate_limiter",
        ),
        (
            "PUT",
            "/drives/a",
            json!({ "drive_id": "a", "path_on_host": img, "is_root_device": false,
                                     "rate_limiter": { "bandwidth": { "size": 1 } } }),
            "refill_time",
        ),
        (
            "PUT",
            "/drives/a",
            json!({ "drive_id": "a", "socket": "/tmp/vhost", "is_root_device": false }),
            "socket",
        ),
        (
            "PUT",
            "/drives/b",
            json!({ "drive_id": "b", "path_on_host": img, "is_root_device": true }),
            "root block device",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            json!({ "iface_id": "eth0" }),
            "host_dev_name",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            json!({ "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "zz" }),
            "guest_mac",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            json!({ "iface_id": "eth0", "host_dev_name": "a-name-that-is-too-long" }),
            "host_dev_name",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            json!({ "iface_id": "eth1", "host_dev_name": "tap0" }),
            "iface_id",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            json!({ "iface_id": "eth0", "host_dev_name": "tap0", "mtu": 9000 }),
            "mtu",
        ),
        (
            "PUT",
            "/vsock",
            json!({ "guest_cid": 2, "uds_path": "/tmp/v" }),
            "guest_cid",
        ),
        ("PUT", "/vsock", json!({ "guest_cid": 3 }), "uds_path"),
        (
            "PUT",
            "/entropy",
            json!({ "rate_limiter": { "ops": { "size": 1, "refill_time": 1 } } }),
            "rate_limiter",
        ),
        ("PUT", "/logger", json!({ "level": "Loud" }), "level"),
        (
            "PUT",
            "/logger",
            json!({ "log_path": "/nonexistent/dir/log" }),
            "log_path",
        ),
        (
            "PUT",
            "/metrics",
            json!({ "metrics_path": 1 }),
            "metrics_path",
        ),
        (
            "PUT",
            "/actions",
            json!({ "action_type": "Explode" }),
            "action_type",
        ),
        ("PUT", "/actions", json!({}), "action_type"),
        (
            "PUT",
            "/actions",
            json!({ "action_type": "InstanceStart", "now": true }),
            "now",
        ),
        ("PATCH", "/vm", json!({ "state": "Frozen" }), "state"),
        ("PATCH", "/vm", json!(["Paused"]), "JSON object"),
    ]
}

/// Valid documents for every pre-boot-only route.
fn pre_boot_documents(img: &str) -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "PUT",
            "/boot-source",
            json!({ "kernel_image_path": probe_path() }),
        ),
        (
            "PUT",
            "/machine-config",
            json!({ "vcpu_count": 1, "mem_size_mib": 64 }),
        ),
        ("PATCH", "/machine-config", json!({ "mem_size_mib": 64 })),
        (
            "PUT",
            "/drives/late",
            json!({ "drive_id": "late", "path_on_host": img, "is_root_device": false }),
        ),
        (
            "PUT",
            "/network-interfaces/eth9",
            json!({ "iface_id": "eth9", "host_dev_name": "tap9" }),
        ),
        (
            "PUT",
            "/vsock",
            json!({ "guest_cid": 3, "uds_path": "/tmp/v" }),
        ),
        ("PUT", "/entropy", json!({})),
    ]
}

#[test]
fn bad_input_is_refused_and_the_guest_does_not_notice() {
    let dir = Scratch::new("api", "bad");
    let img_path = dir.image("a.img", 1 << 20, None);
    let img = img_path.display().to_string();
    let mut s = Server::start(dir.path(), &[]);
    s.put_ok(
        "/drives/a",
        json!({ "drive_id": "a", "path_on_host": img, "is_root_device": true }),
    );
    let before = s.get("/vm/config");
    for (method, path, doc, needle) in bad_documents(&img) {
        let r = s.send(method, path, &doc);
        assert_eq!(r.status, 400, "{method} {path} {doc}: {}", r.body);
        assert!(
            fault(&r).contains(needle),
            "{method} {path} {doc}: should name {needle}: {}",
            r.body
        );
    }
    for body in ["", "not json", "{\"vcpu_count\": 1,", "{} {}"] {
        let r = s.req("PUT", "/machine-config", Some(body));
        assert_eq!(r.status, 400, "{body:?}: {}", r.body);
    }
    assert_eq!(s.get("/vm/config"), before, "nothing refused was applied");

    // A start that fails (no kernel in that file) leaves the instance as
    // it was, ready for a corrected configuration.
    s.put_ok("/boot-source", json!({ "kernel_image_path": img }));
    let r = s.send(
        "PUT",
        "/actions",
        &json!({ "action_type": "InstanceStart" }),
    );
    assert!(
        r.status == 400 && fault(&r).starts_with("cannot start the microVM"),
        "{}",
        r.body
    );
    assert_eq!(s.get("/")["state"], "Not started");

    // Boot a guest that then sits halted: everything below must leave it be.
    s.put_ok(
        "/machine-config",
        json!({ "vcpu_count": 1, "mem_size_mib": 64 }),
    );
    s.put_ok("/boot-source", json!({ "kernel_image_path": probe_path(),
                                     "boot_args": "console=ttyS0 probe.checks=cmdline probe.exit=halt" }));
    s.put_ok("/actions", json!({ "action_type": "InstanceStart" }));
    assert!(s.wait_stdout("PROBE-SUMMARY", LIMIT), "{}", s.dump());

    for (method, path, doc) in pre_boot_documents(&img) {
        let r = s.send(method, path, &doc);
        assert_eq!(r.status, 400, "{method} {path} after boot: {}", r.body);
        assert!(
            fault(&r).contains("before the microVM starts"),
            "{method} {path}: {}",
            r.body
        );
    }
    let r = s.send(
        "PUT",
        "/actions",
        &json!({ "action_type": "InstanceStart" }),
    );
    assert!(
        r.status == 400 && fault(&r).contains("already running"),
        "{}",
        r.body
    );

    malformed_http(&s);
    slow_and_vanishing_clients(&s);

    // The guest and the API are as they were.
    assert_eq!(s.get("/")["state"], "Running");
    assert_eq!(s.stdout().matches("PROBE-SUMMARY").count(), 1);
    assert!(
        !s.stdout().contains("PROBE-FATAL") && !s.stderr().contains("panicked"),
        "{}",
        s.dump()
    );
    let (_, vmm_kib) = rss_kib(s.pid(), 64 << 10);
    assert!(vmm_kib < 32 << 10, "the VMM grew to {vmm_kib} KiB");
    s.signal(libc::SIGINT);
    assert!(s.wait(LIMIT).success(), "{}", s.dump());
    assert_eq!(s.last_stderr_line(), "utsuwa: stopped by the user");
}

fn malformed_http(s: &Server) {
    for (bytes, status) in [
        (&b"GARBAGE\r\n\r\n"[..], 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (b"PUT /vm HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (
            b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"DELETE / HTTP/1.1\r\n\r\n", 400),
        (b"\x00\x01\x02\x03\r\n\r\n", 400),
    ] {
        let out = raw(&s.sock, bytes, LIMIT);
        assert_eq!(
            status_of(&out),
            status,
            "{:?} -> {out}",
            String::from_utf8_lossy(bytes)
        );
        assert!(body_of(&out)["fault_message"].is_string(), "{out}");
    }
    // Headers past 8 KiB.
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(status_of(&raw(&s.sock, big.as_bytes(), LIMIT)), 400);

    // A 100 MB body: refused on its header, the connection closed, and the
    // server never holds more than its limit.
    let mut c = UnixStream::connect(&s.sock).unwrap();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    c.set_write_timeout(Some(LIMIT)).unwrap();
    c.write_all(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n")
        .unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0;
    while sent < 100 && c.write_all(&chunk).is_ok() {
        sent += 1;
    }
    assert!(sent < 100, "the server took a 100 MB body");
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || status_of(&answer) == 413, "{answer}");

    // Keep-alive, pipelining and Expect: 100-continue on one connection.
    let mut c = UnixStream::connect(&s.sock).unwrap();
    c.set_read_timeout(Some(LIMIT)).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n\r\nGET /version HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while got.matches("HTTP/1.1 200").count() < 2 || !got.ends_with('}') {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {got}");
        got += &String::from_utf8_lossy(&buf[..n]);
    }
    let body = r#"{"state":"Paused"}"#;
    write!(
        c,
        "PATCH /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let n = c.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"));
    let resumed = r#"{"state":"Resumed"}"#;
    write!(
        c,
        "{body}PATCH /vm HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{resumed}",
        resumed.len()
    )
    .unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert_eq!(rest.matches("HTTP/1.1 204").count(), 2, "{rest}");
    assert!(rest.contains("Connection: close"), "{rest}");
}

fn slow_and_vanishing_clients(s: &Server) {
    // A client that sends a byte a second is dropped after 5 s, and the
    // server answers others meanwhile.
    let sock = s.sock.clone();
    let slow = std::thread::spawn(move || {
        let mut c = UnixStream::connect(&sock).unwrap();
        let start = Instant::now();
        for b in b"GET / HTTP/1.1\r\nX-Slow: yes\r\n\r\n" {
            if c.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            if start.elapsed() > Duration::from_secs(15) {
                break;
            }
        }
        let mut rest = Vec::new();
        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let _ = c.read_to_end(&mut rest);
        (start.elapsed(), String::from_utf8_lossy(&rest).into_owned())
    });
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(s.get("/")["state"], "Running");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "the API stalled behind a slow client"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (elapsed, answer) = slow.join().unwrap();
    assert!(
        elapsed < Duration::from_secs(10),
        "the slow client was not dropped ({elapsed:?})"
    );
    assert!(answer.is_empty() || status_of(&answer) == 408, "{answer}");

    // Clients that leave mid-request, mid-body and before reading.
    for bytes in [
        &b"PUT /vm HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"sta"[..],
        b"GET / HTT",
        b"GET /vm/config HTTP/1.1\r\n\r\n",
    ] {
        let mut c = UnixStream::connect(&s.sock).unwrap();
        c.write_all(bytes).unwrap();
        drop(c);
    }
    let m = s.req("GET", "/metrics", None).body;
    assert!(
        m.contains("utsuwa_api_connections_dropped_total{reason=\"timeout\"}"),
        "{m}"
    );
}
