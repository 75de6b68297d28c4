//! Logging to stderr or a log file; file logging pauses while frozen.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static FILE_LOGGING: AtomicBool = AtomicBool::new(true);

/// Turns writing to the log file on or off (off while filesystems are frozen).
pub fn set_file_logging(on: bool) {
    FILE_LOGGING.store(on, Ordering::SeqCst);
}

/// Whether the log file is written to now.
pub fn file_logging() -> bool {
    FILE_LOGGING.load(Ordering::SeqCst)
}

struct Logger {
    file: Option<Mutex<File>>,
    level: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let line = format!(
            "{}.{:06}: {}: {}\n",
            now.as_secs(),
            now.subsec_micros(),
            r.level().as_str().to_lowercase(),
            r.args()
        );
        match &self.file {
            Some(f) => {
                if file_logging() {
                    if let Ok(mut f) = f.lock() {
                        let _ = f.write_all(line.as_bytes());
                    }
                }
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

/// Installs the logger. `RUST_LOG`-style filtering is not used: `verbose`
/// selects debug, otherwise info.
pub fn init(logfile: Option<&std::path::Path>, verbose: bool) -> std::io::Result<()> {
    let file = match logfile {
        Some(p) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        )),
        None => None,
    };
    let level = if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    let _ = log::set_boxed_logger(Box::new(Logger { file, level }));
    log::set_max_level(level);
    Ok(())
}
