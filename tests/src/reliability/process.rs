//! Helper processes to kill and to race: spawning, killing at a chosen
//! moment, and a start line that many processes cross together.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// What the reliability helper prints once it is ready to cross the start line.
pub const READY: &str = "ready";
/// The helper's exit code when a migration failed (the run itself worked).
pub const EXIT_MIGRATION_FAILED: i32 = 3;

/// How a helper process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Killed by the test's SIGKILL.
    Killed,
    /// Exited by itself, with its exit code and everything it printed.
    Exited {
        /// The exit code.
        code: i32,
        /// Its stdout then its stderr.
        output: String,
    },
}

/// A helper process, killed with SIGKILL when dropped so that a failing
/// test leaves nothing running.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    /// Starts `bin` with `args`, its stdout and stderr captured.
    pub fn spawn<I, A>(bin: &str, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: AsRef<std::ffi::OsStr>,
    {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let stdout = child.stdout.take().map(BufReader::new);
        Self { child, stdout }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Reads one line of stdout, blocking until it comes; `None` once the
    /// process closed its output (it died).
    pub fn read_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.stdout.as_mut()?.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_owned()),
        }
    }

    /// Sends SIGKILL once `delay` has passed, unless the process exits by
    /// itself first.
    pub fn kill_after(mut self, delay: Duration) -> Ended {
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline {
            if let Some(code) = self.child.try_wait().expect("polling the helper") {
                return self.exited(code.code());
            }
            std::thread::sleep(
                Duration::from_millis(1).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
        // Errors only if it was already reaped, which try_wait above did not do.
        self.child.kill().expect("SIGKILL the helper");
        let status = self.child.wait().expect("reaping the helper");
        if status.signal() == Some(9) {
            Ended::Killed
        } else {
            self.exited(status.code())
        }
    }

    /// Waits for the process to exit by itself; after `limit` (a guard
    /// against hanging, not a measurement) it is killed and the test fails.
    pub fn finish(mut self, limit: Duration) -> Ended {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the helper") {
                return self.exited(status.code());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "helper {} did not finish within {limit:?}; it printed:\n{}",
                    self.child.id(),
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn exited(&mut self, code: Option<i32>) -> Ended {
        Ended::Exited {
            code: code.unwrap_or(-1),
            output: self.output(),
        }
    }

    /// Whatever is left on stdout and stderr (the helper prints little, so
    /// its pipes never fill up while it runs).
    fn output(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stdout) = self.stdout.take() {
            let _ = stdout.read_to_string(&mut text);
        }
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Reaped already after kill_after or finish; otherwise make sure it dies.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A start line: helpers report [`READY`], then poll for a file; creating
/// it releases them all at the same moment.
#[derive(Debug)]
pub struct StartLine {
    path: PathBuf,
}

impl StartLine {
    /// A start line in `dir`, not crossed yet.
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("start-line"),
        }
    }

    /// The file the helpers poll for.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for every helper's [`READY`], then releases them together.
    pub fn release(&self, helpers: &mut [Proc]) {
        for helper in helpers.iter_mut() {
            match helper.read_line() {
                Some(line) if line == READY => {}
                other => panic!(
                    "helper {} was not ready: {other:?}; it printed:\n{}",
                    helper.id(),
                    helper.output()
                ),
            }
        }
        std::fs::write(&self.path, b"go").expect("creating the start file");
    }

    /// Polls until the start file exists (what each helper does), giving
    /// up after `limit`.
    pub fn wait(path: &Path, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        while !path.exists() {
            if started.elapsed() > limit {
                return Err(format!("{} never appeared", path.display()));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(())
    }
}
