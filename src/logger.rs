//! A minimal `log` backend: one line per record on stderr, prefixed with
//! the program name, the level and the thread. Written here because a
//! logging framework would cost more memory and start-up time than the
//! dozen lines it replaces.

use std::io::Write;

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("?");
            // In raw terminal mode a bare \n would not return the carriage.
            let _ = write!(
                std::io::stderr().lock(),
                "utsuwa: {} [{name}] {}\r\n",
                record.level().as_str().to_lowercase(),
                record.args()
            );
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
