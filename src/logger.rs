//! A minimal `log` backend: one line per record on stderr, prefixed with
//! the program name, the level and the thread. Written here because a
//! logging framework would cost more memory and start-up time than the
//! dozen lines it replaces. The API's `PUT /logger` can send the lines to
//! a file or named pipe instead, add the origin (file:line), keep only one
//! module's records, and change the level.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use crate::api::model::Logger;

struct StderrLogger;

/// What `PUT /logger` changed.
struct Options {
    file: Option<File>,
    show_origin: bool,
    module: Option<String>,
    /// The document as last put, for `GET /vm/config`.
    applied: Option<Logger>,
}

/// Crates whose errors are about what a guest put in its rings or memory
/// (virtio-queue, vm-memory): a guest controls them, so they are logged at
/// debug, or a hostile guest could flood the host's log.
const GUEST_TRIGGERED: [&str; 2] = ["virtio_queue", "vm_memory"];

fn effective_level(meta: &log::Metadata) -> log::Level {
    if GUEST_TRIGGERED.iter().any(|c| meta.target().starts_with(c)) {
        log::Level::Debug.max(meta.level())
    } else {
        meta.level()
    }
}

static OPTIONS: Mutex<Options> = Mutex::new(Options {
    file: None,
    show_origin: false,
    module: None,
    applied: None,
});

impl log::Log for StderrLogger {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        effective_level(meta) <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut opts = OPTIONS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(module) = &opts.module {
            if !record
                .module_path()
                .unwrap_or("")
                .starts_with(module.as_str())
            {
                return;
            }
        }
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("?");
        let origin = if opts.show_origin {
            format!(
                " {}:{}",
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0)
            )
        } else {
            String::new()
        };
        let level = record.level().as_str().to_lowercase();
        match opts.file.as_mut() {
            Some(file) => {
                let _ = writeln!(file, "utsuwa: {level} [{name}]{origin} {}", record.args());
            }
            None => {
                // In raw terminal mode a bare \n would not return the carriage.
                let _ = write!(
                    std::io::stderr().lock(),
                    "utsuwa: {level} [{name}]{origin} {}\r\n",
                    record.args()
                );
            }
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger at `level`.
pub fn init(level: log::LevelFilter) {
    // Fails only if a logger is already set, which then stays.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// A level as Firecracker names it (case-insensitive: Error, Warning,
/// Info, Debug, Trace, Off) or as `--log-level` does (warn).
pub fn parse_level(text: &str) -> Option<log::LevelFilter> {
    match text.to_ascii_lowercase().as_str() {
        "warning" => Some(log::LevelFilter::Warn),
        other => other.parse().ok(),
    }
}

/// `PUT /logger`: applies every field given; on an error nothing changes.
pub fn apply(cfg: &Logger) -> Result<(), String> {
    let level = match &cfg.level {
        Some(text) => Some(parse_level(text).ok_or_else(|| {
            format!("level: unknown level '{text}' (Error, Warning, Info, Debug, Trace or Off)")
        })?),
        None => None,
    };
    let file = match &cfg.log_path {
        Some(path) if path.is_empty() => return Err("log_path must not be empty".into()),
        // Read and write, so that a named pipe without a reader yet opens.
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| format!("log_path: cannot open '{path}': {e}"))?,
        ),
        None => None,
    };
    let mut opts = OPTIONS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(file) = file {
        opts.file = Some(file);
    }
    if let Some(show) = cfg.show_log_origin {
        opts.show_origin = show;
    }
    if cfg.module.is_some() {
        opts.module = cfg.module.clone().filter(|m| !m.is_empty());
    }
    if cfg.show_level == Some(false) {
        log::debug!("show_level: utsuwa always shows the level");
    }
    opts.applied = Some(cfg.clone());
    drop(opts);
    if let Some(level) = level {
        log::set_max_level(level);
    }
    Ok(())
}

/// The logger document last put, if any.
pub fn current() -> Option<Logger> {
    OPTIONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .applied
        .clone()
}
