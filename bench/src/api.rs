//! The `api` benchmark (utsuwa only: QEMU has no Firecracker-style API).
//!
//! Each run starts `utsuwa --api-sock PATH` and measures
//! - **api ready**: from just before `spawn()` to the first answer to
//!   `GET /` (connect, send, read the status line; retried every 50 µs
//!   until the socket answers);
//! - **idle memory**: RSS and PSS (`/proc/PID/smaps`) 100 ms later, no VM;
//! - **start to marker**: after `PUT /machine-config` (1 vCPU, 128 MiB)
//!   and `PUT /boot-source` (the probe's PVH ELF, `probe.checks=none
//!   probe.exit=halt`), from just before `PUT /actions InstanceStart` is
//!   sent to the guest's `PROBE boot` line on stdout;
//! - **running memory**: RSS, PSS and RSS besides guest RAM 200 ms after
//!   the marker, the guest halted.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::boot::{self, MARKER};
use crate::proc::{self, Timed};
use crate::report::{self, Json};
use crate::stats::{self, cell, Summary};

pub const MEM_MIB: u64 = 128;
const PLAN: &str = "probe.checks=none probe.exit=halt";
const POLL: Duration = Duration::from_micros(50);

pub struct Setup {
    pub runs: usize,
    pub timeout: Duration,
    pub utsuwa: PathBuf,
    pub elf: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub run: usize,
    pub api_ready_ms: Option<f64>,
    /// Failed connection attempts before the answer.
    pub attempts: u64,
    pub idle_rss_kb: Option<u64>,
    pub idle_pss_kb: Option<u64>,
    pub start_to_marker_ms: Option<f64>,
    pub running_rss_kb: Option<u64>,
    pub running_pss_kb: Option<u64>,
    pub running_overhead_kb: Option<u64>,
    pub error: Option<String>,
}

stats::outcome!(Sample);

/// One HTTP/1.1 request on a fresh connection; returns the status code
/// and body.
pub fn http(sock: &Path, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

fn ok(sock: &Path, method: &str, path: &str, body: &str) -> Result<(), String> {
    let (code, answer) = http(sock, method, path, body)?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("{method} {path}: {code} {answer}"))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn one_run(setup: &Setup, run: usize, dir: &Path) -> Sample {
    let mut s = Sample {
        run,
        ..Default::default()
    };
    if let Err(e) = measure(setup, dir, &mut s) {
        s.error = Some(e);
    }
    s
}

fn measure(setup: &Setup, dir: &Path, s: &mut Sample) -> Result<(), String> {
    let sock = dir.join(format!("api-{}.sock", s.run));
    let _ = std::fs::remove_file(&sock);
    let mut cmd = Command::new(&setup.utsuwa);
    cmd.arg("--api-sock").arg(&sock);
    let mut child = Timed::spawn(&mut cmd)?;
    let deadline = child.start + setup.timeout;
    // Connect-retry loop: the first answer to GET / is "API ready".
    loop {
        match http(&sock, "GET", "/", "") {
            Ok((200, _)) => {
                s.api_ready_ms = Some(ms(child.start.elapsed()));
                break;
            }
            Ok((code, body)) => return Err(format!("GET /: {code} {body}")),
            Err(_) if Instant::now() < deadline => {
                s.attempts += 1;
                std::thread::sleep(POLL);
            }
            Err(e) => {
                return Err(format!(
                    "API not up in time: {e} ({})",
                    child.finish_and_tail(4)
                ))
            }
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let maps = proc::smaps(child.pid())?;
    s.idle_rss_kb = Some(maps.iter().map(|m| m.rss_kb).sum());
    s.idle_pss_kb = Some(maps.iter().map(|m| m.pss_kb).sum());
    ok(
        &sock,
        "PUT",
        "/machine-config",
        &format!("{{\"vcpu_count\": 1, \"mem_size_mib\": {MEM_MIB}}}"),
    )?;
    ok(
        &sock,
        "PUT",
        "/boot-source",
        &format!(
            "{{\"kernel_image_path\": \"{}\", \"boot_args\": \"{PLAN}\"}}",
            setup.elf.display()
        ),
    )?;
    let sent = Instant::now();
    ok(
        &sock,
        "PUT",
        "/actions",
        "{\"action_type\": \"InstanceStart\"}",
    )?;
    match child.wait_line(|l| l.starts_with(MARKER), deadline) {
        Ok((at, _)) => {
            let at = child.start + at;
            s.start_to_marker_ms = Some(ms(at.saturating_duration_since(sent)));
        }
        Err(why) => {
            return Err(format!(
                "{} ({})",
                why.no_marker(),
                child.finish_and_tail(4)
            ))
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let maps = proc::smaps(child.pid())?;
    let rss: u64 = maps.iter().map(|m| m.rss_kb).sum();
    s.running_rss_kb = Some(rss);
    s.running_pss_kb = Some(maps.iter().map(|m| m.pss_kb).sum());
    let guest = boot::memory::guest_ram(&maps, MEM_MIB << 10)
        .map(|g| g.iter().map(|&i| maps[i].rss_kb).sum::<u64>());
    s.running_overhead_kb = guest.map(|g| rss - g);
    child.kill();
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

pub fn run(setup: &Setup) -> Vec<Sample> {
    let dir = std::env::temp_dir().join(format!("utsuwa-bench-api-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mut out = Vec::new();
    for run in 1..=setup.runs {
        let s = one_run(setup, run, &dir);
        let shown = match &s.error {
            Some(e) => format!("FAILED: {e}"),
            None => format!(
                "api ready {:.2} ms ({} retries), start→marker {:.2} ms, idle RSS {:.1} MiB, running RSS {:.1} MiB",
                s.api_ready_ms.unwrap_or(f64::NAN),
                s.attempts,
                s.start_to_marker_ms.unwrap_or(f64::NAN),
                boot::mib(s.idle_rss_kb.unwrap_or(0)),
                boot::mib(s.running_rss_kb.unwrap_or(0)),
            ),
        };
        eprintln!("[api] {run}/{} {shown}", setup.runs);
        out.push(s);
    }
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn kb(v: Option<u64>) -> Option<f64> {
    v.map(|k| k as f64 / 1024.0)
}

type Metric = (&'static str, &'static str, fn(&Sample) -> Option<f64>);

const METRICS: [Metric; 8] = [
    (
        "api_ready_ms",
        "process start → `GET /` answered (ms)",
        |s| s.api_ready_ms,
    ),
    (
        "instance_start_to_marker_ms",
        "`InstanceStart` sent → guest marker (ms)",
        |s| s.start_to_marker_ms,
    ),
    ("idle_rss_mib", "RSS idle, API up, no VM (MiB)", |s| {
        kb(s.idle_rss_kb)
    }),
    ("idle_pss_mib", "PSS idle (MiB)", |s| kb(s.idle_pss_kb)),
    ("running_rss_mib", "RSS, 128 MiB guest halted (MiB)", |s| {
        kb(s.running_rss_kb)
    }),
    ("running_pss_mib", "PSS, guest halted (MiB)", |s| {
        kb(s.running_pss_kb)
    }),
    (
        "running_overhead_mib",
        "RSS besides guest RAM, guest halted (MiB)",
        |s| kb(s.running_overhead_kb),
    ),
    (
        "connect_retries",
        "connection attempts refused before the answer",
        |s| Some(s.attempts as f64),
    ),
];

pub fn render(date: &str, env: &[(String, String)], samples: &[Sample]) -> (String, Json) {
    let failed = samples.iter().filter(|s| s.error.is_some()).count();
    let mut md = String::new();
    md.push_str("# utsuwa API start-up and memory\n\n");
    md.push_str(&format!(
        "{date}; {} runs ({failed} failed); utsuwa only (QEMU has no Firecracker-style API). \
         Reproduce: `cargo run --release -p utsuwa-bench -- api --runs {}`.\n\n",
        samples.len(),
        samples.len()
    ));
    let mut rows = Vec::new();
    let mut results = Vec::new();
    for (key, label, f) in METRICS {
        let s = stats::summarise(samples, f);
        rows.push(vec![
            label.to_string(),
            cell(s.map(|s| s.median), 2),
            cell(s.map(|s| s.min), 2),
            cell(s.map(|s| s.max), 2),
        ]);
        results.push((key.to_string(), Summary::json(s)));
    }
    md.push_str(&report::table(&["what", "median", "min", "max"], &rows));
    md.push_str(
        "\nReference figures measured earlier on this machine, not by this run: \
         Firecracker ~2.0 ms and Cloud Hypervisor ~2.3 ms from process start to API ready.\n\n\
         Method: `utsuwa --api-sock PATH` is spawned (own process group); the harness connects \
         and sends `GET /` every 50 µs until the answer arrives. 100 ms later `/proc/PID/smaps` \
         gives idle RSS and PSS. Then `PUT /machine-config` (1 vCPU, 128 MiB), `PUT /boot-source` \
         (the probe's PVH ELF, `probe.checks=none probe.exit=halt`) and `PUT /actions \
         InstanceStart`, timed from just before that request to the `PROBE boot` line on the \
         VMM's stdout; memory again 200 ms after the marker (guest RAM found as in `boot`).\n",
    );
    report::failures(&mut md, [(String::new(), samples)]);
    md.push_str(&report::environment(env));
    let json = Json::obj([
        ("benchmark", Json::str("api")),
        ("date", Json::str(date)),
        (
            "settings",
            Json::obj([
                ("runs", Json::Num(samples.len() as f64)),
                ("memory_mib", Json::Num(MEM_MIB as f64)),
                ("plan", Json::str(PLAN)),
                ("poll_us", Json::Num(50.0)),
            ]),
        ),
        ("environment", report::environment_json(env)),
        ("failed", Json::Num(failed as f64)),
        ("results", Json::Obj(results)),
        (
            "reference_not_measured_here",
            Json::obj([
                ("firecracker_api_ready_ms", Json::Num(2.0)),
                ("cloud_hypervisor_api_ready_ms", Json::Num(2.3)),
            ]),
        ),
        (
            "samples",
            Json::Arr(
                samples
                    .iter()
                    .map(|s| report::sample_json(s, METRICS.map(|(k, _, f)| (k, f)), vec![]))
                    .collect(),
            ),
        ),
    ]);
    (md, json)
}
