//! The API tests' harness: an `utsuwa` process serving the API on a socket
//! in a scratch directory (its output collected as it comes), requests
//! through `utsuwa::api::client`, raw bytes for malformed HTTP, and the
//! VMM's own memory from /proc/PID/smaps.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use utsuwa::api::client::{self, Reply};

use crate::support::UTSUWA;

/// A running `utsuwa` with its API socket.
pub struct Server {
    child: Child,
    pub sock: PathBuf,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

impl Server {
    /// `utsuwa --api-sock DIR/api.sock ARGS...`, once the socket answers.
    pub fn start(dir: &Path, args: &[&str]) -> Server {
        let sock = dir.join("api.sock");
        let mut cmd = Command::new(UTSUWA);
        cmd.arg("--api-sock").arg(&sock).args(args);
        Server::spawn(cmd, sock)
    }

    /// Runs `cmd` (which serves `sock`) and waits for the socket to answer.
    pub fn spawn(mut cmd: Command, sock: PathBuf) -> Server {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn utsuwa");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        let mut server = Server {
            child,
            sock,
            stdout,
            stderr,
            readers,
        };
        let start = Instant::now();
        while UnixStream::connect(&server.sock).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "utsuwa exited ({status}) before serving:\n{}",
                    server.dump()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no API socket\n{}",
                server.dump()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// One request; panics if the API cannot be reached.
    pub fn req(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        client::request(&self.sock, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.dump()))
    }

    pub fn get(&self, path: &str) -> Value {
        let r = self.req("GET", path, None);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    /// PUT or PATCH of a JSON document.
    pub fn send(&self, method: &str, path: &str, body: &Value) -> Reply {
        self.req(method, path, Some(&body.to_string()))
    }

    /// A PUT that must succeed.
    pub fn put_ok(&self, path: &str, body: Value) {
        let r = self.send("PUT", path, &body);
        assert_eq!(
            r.status,
            204,
            "PUT {path} {body}: {}\n{}",
            r.body,
            self.dump()
        );
    }

    /// Waits until stdout holds `needle`.
    pub fn wait_stdout(&self, needle: &str, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.stdout().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Waits for the process to end (killing it after `limit`).
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("utsuwa did not exit within {limit:?}\n{}", self.dump());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// The last line utsuwa wrote on stderr.
    pub fn last_stderr_line(&self) -> String {
        self.stderr().lines().last().unwrap_or("").to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `bytes` on a new connection and reads until the server closes it
/// (or `limit` passes): everything it answered.
pub fn raw(sock: &Path, bytes: &[u8], limit: Duration) -> String {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(limit)).unwrap();
    // The server may answer and close before taking everything.
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in `text`.
pub fn status_of(text: &str) -> u16 {
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The body (after the blank line) of the only response in `text`, as JSON.
pub fn body_of(text: &str) -> Value {
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// The fault message of an error reply.
pub fn fault(r: &Reply) -> String {
    r.json()["fault_message"].as_str().unwrap_or("").to_string()
}

/// The sorted keys of a JSON object.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

/// The value of the first Prometheus sample named `name` with `labels`
/// among its labels (`name{...} value`); 0 if absent.
pub fn sample(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Resident memory of `pid` in KiB: everything, and everything except the
/// anonymous mappings exactly `guest_kib` large (guest RAM).
pub fn rss_kib(pid: u32, guest_kib: u64) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut guest) = (0, 0);
    let mut size = 0;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Size:"), Some(v)) => size = v.parse().unwrap_or(0),
            (Some("Rss:"), Some(v)) => {
                let rss: u64 = v.parse().unwrap_or(0);
                total += rss;
                if guest_kib > 0 && size == guest_kib {
                    guest += rss;
                }
            }
            _ => {}
        }
    }
    (total, total - guest)
}
