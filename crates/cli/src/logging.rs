//! Log lines on stderr: the stores' warnings by default, more with `-v`,
//! fewer with `-q`, or whatever `RUST_LOG` says; scrubbed of passwords
//! like every other line.

use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;

use crate::redact;

/// Installs the subscriber for `-v` / `-q` counts.
pub fn install(verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
        (0, 0) => "warn",
        (0, 1) => "error",
        (0, _) => "off",
        (1, _) => "info",
        (2, _) => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new(level))
        }
        _ => EnvFilter::new(level),
    };
    let ansi = std::io::stderr().is_terminal() && waymark::cli::color_allowed();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(ScrubbedLine::default)
        .init();
}

/// One log line, collected and then written scrubbed in one piece.
#[derive(Default)]
struct ScrubbedLine(Vec<u8>);

impl Write for ScrubbedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ScrubbedLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let line = redact::scrub(&String::from_utf8_lossy(&self.0));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}
