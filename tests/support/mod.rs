//! Shared by the integration tests: running the `utsuwa` binary with a
//! time limit, building the test guest, and reading its report.
#![allow(dead_code)]

pub mod blk;
pub mod net;
pub mod probe;
pub mod qemu;
pub mod scenarios;
pub mod vsock;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The utsuwa binary cargo built for these tests.
pub const UTSUWA: &str = env!("CARGO_BIN_EXE_utsuwa");

/// What a finished process left behind.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// Everything, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` with no stdin, killing it after `limit`.
pub fn run_with_limit(mut cmd: Command, limit: Duration) -> Outcome {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    Outcome {
        status,
        stdout,
        stderr,
        elapsed,
    }
}

/// `utsuwa run ARGS...` with a 60 s limit.
pub fn utsuwa_run(args: &[&str]) -> Outcome {
    let mut cmd = Command::new(UTSUWA);
    cmd.arg("run").args(args);
    run_with_limit(cmd, Duration::from_secs(60))
}

/// Boots the test guest (`kernel`: the ELF or the bzImage) with the given
/// vCPUs, memory and probe plan.
pub fn boot_probe(kernel: &Path, cpus: u32, memory: &str, plan: &str) -> Outcome {
    let cpus = cpus.to_string();
    utsuwa_run(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cpus",
        &cpus,
        "--memory",
        memory,
        "--cmdline",
        plan,
    ])
}

/// The guest's `PROBE-CHECK name pass|fail detail` lines: name -> (passed, detail).
pub fn checks(stdout: &str) -> BTreeMap<String, (bool, String)> {
    let mut map = BTreeMap::new();
    for line in stdout.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("PROBE-CHECK ") {
            let mut parts = rest.splitn(3, ' ');
            let name = parts.next().unwrap_or("").to_string();
            let verdict = parts.next().unwrap_or("");
            let detail = parts.next().unwrap_or("").to_string();
            map.insert(name, (verdict == "pass", detail));
        }
    }
    map
}

/// The value of `key=` on the first `PROBE <topic> ...` line that has it.
pub fn fact(stdout: &str, topic: &str, key: &str) -> Option<String> {
    let prefix = format!("PROBE {topic} ");
    let needle = format!("{key}=");
    stdout
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(&prefix))
        .flat_map(|rest| rest.split_whitespace())
        .find_map(|kv| kv.strip_prefix(&needle).map(str::to_string))
}

/// Asserts the guest ran every check in `expected`, each passed, and the
/// summary reports no failure.
pub fn assert_checks_pass(outcome: &Outcome, expected: &[&str]) {
    let found = checks(&outcome.stdout);
    for name in expected {
        match found.get(*name) {
            Some((true, _)) => {}
            Some((false, detail)) => panic!("check {name} failed: {detail}\n{}", outcome.dump()),
            None => panic!("check {name} did not run\n{}", outcome.dump()),
        }
    }
    assert!(
        outcome
            .stdout
            .lines()
            .any(|l| l.trim_end().starts_with("PROBE-SUMMARY") && l.contains("fail=0")),
        "no clean summary\n{}",
        outcome.dump()
    );
}

/// True when /dev/kvm is backed by hardware virtualization, so a Linux
/// guest can boot; tests that need one print why they are skipped otherwise.
pub fn hardware_virtualization() -> bool {
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
    Path::new("/dev/kvm").exists() && hw && !pvm
}
