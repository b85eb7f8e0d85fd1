//! Fresh SQLite databases for tests, and the helper process they can spawn.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tempfile::TempDir;
use waymark_core::MigrationStore;
use waymark_core::testkit::TestStore;
use waymark_sqlite::SqliteStore;

/// The database file's name inside a fresh directory.
pub const DB_FILE: &str = "waymark.db";

/// A store on a new database file in its own temporary directory; keep the
/// directory alive as long as the store.
pub async fn fresh_store() -> (SqliteStore, TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(dir.path().join(DB_FILE))
        .await
        .expect("open a fresh SQLite file");
    (store, dir)
}

/// A fresh file database for the conformance and runner suites; `reopen`
/// opens a second, independent store (its own connection) on the same file.
pub async fn fresh_test_store() -> TestStore {
    let (store, dir) = fresh_store().await;
    let path = db_path(&dir);
    TestStore::new(
        Arc::new(store),
        Arc::new(move || {
            let path = path.clone();
            Box::pin(async move {
                let other = SqliteStore::open(&path)
                    .await
                    .expect("reopen the SQLite file");
                Arc::new(other) as Arc<dyn MigrationStore>
            })
        }),
        dir,
    )
}

/// A fresh in-memory database; `reopen` is a clone, the only other way to
/// reach the same in-memory database.
pub async fn fresh_memory_test_store() -> TestStore {
    let store = SqliteStore::open_in_memory()
        .await
        .expect("open an in-memory SQLite database");
    let shared = store.clone();
    TestStore::new(
        Arc::new(store),
        Arc::new(move || {
            let clone = Arc::new(shared.clone()) as Arc<dyn MigrationStore>;
            Box::pin(async move { clone })
        }),
        (),
    )
}

/// The database file inside a directory made by [`fresh_store`].
pub fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join(DB_FILE)
}

/// A plain rusqlite connection on `path`, for setting up and inspecting
/// databases behind the store's back.
pub fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).expect("open the SQLite file directly")
}

/// A child process (the `sqlite_helper` binary) whose stdout lines can be
/// waited for; killed with SIGKILL when dropped, so a failing test leaves
/// nothing running.
#[derive(Debug)]
pub struct Helper {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Helper {
    /// Starts `bin` (pass `env!("CARGO_BIN_EXE_sqlite_helper")`) with `args`.
    pub fn spawn<I, A>(bin: &str, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: AsRef<std::ffi::OsStr>,
    {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the SQLite helper process");
        let stdout = child.stdout.take().expect("piped stdout");
        let (send, lines) = std::sync::mpsc::channel();
        // A thread per child turns the blocking pipe into a channel that
        // can be waited on with a time limit.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a line equal to `expected`, returning the lines before it.
    /// Panics if the child closes its output or `limit` passes first: a
    /// guard against hanging, not a measurement.
    pub fn wait_for(&mut self, expected: &str, limit: std::time::Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + limit;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == expected => return before,
                Ok(line) => before.push(line),
                Err(err) => panic!(
                    "helper never printed {expected:?} ({err}); it printed {before:?}, exit: {:?}",
                    self.child.try_wait()
                ),
            }
        }
    }

    /// Every line the child prints until it exits, and whether it succeeded.
    pub fn finish(mut self, limit: std::time::Duration) -> (Vec<String>, bool) {
        let deadline = std::time::Instant::now() + limit;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(err) => panic!("helper did not finish ({err}); it printed {lines:?}"),
            }
        }
        let status = self.child.wait().expect("wait for the helper");
        (lines, status.success())
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the helper");
        self.child.wait().expect("reap the helper");
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Already reaped after `kill`/`finish`; otherwise make sure it dies.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What running one handler the way the runner does produced.
#[derive(Debug)]
pub struct Outcome {
    /// The handler's result; a panic is `Err` with `panicked` set.
    pub result: Result<(), waymark_core::BoxError>,
    /// Whether the handler panicked.
    pub panicked: bool,
    /// Whether the handler recorded its own success.
    pub recorded: bool,
    /// Every `(done, total)` progress report, in order.
    pub progress: Vec<(u64, Option<u64>)>,
}

/// Runs `handler` for the tracked migration `id` as the runner does: builds
/// the context from the stored row (with its checkpoint), runs a blocking
/// handler on a blocking thread, and collects the outcome. Records nothing
/// itself, so tests see exactly what the handler committed.
pub async fn run_handler<S: Send + Sync + 'static>(
    store: &SqliteStore,
    state: S,
    id: i64,
    handler: waymark_core::Handler<S>,
    cancellation: Option<waymark_core::Cancellation>,
) -> Outcome {
    let id = waymark_core::MigrationId::new(id).expect("positive id");
    let row = store.get(id).await.expect("the migration is tracked");
    run_handler_on_row(store, state, row, handler, cancellation).await
}

/// [`run_handler`] with a given row, which need not be tracked.
pub async fn run_handler_on_row<S: Send + Sync + 'static>(
    store: &SqliteStore,
    state: S,
    row: waymark_core::Migration,
    handler: waymark_core::Handler<S>,
    cancellation: Option<waymark_core::Cancellation>,
) -> Outcome {
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&reports);
    let mut ctx = waymark_core::MigrationContext::new(
        Arc::new(state),
        row,
        Arc::new(store.clone()) as Arc<dyn MigrationStore>,
    )
    .with_progress(Arc::new(move |done, total| {
        sink.lock().unwrap().push((done, total))
    }));
    if let Some(cancellation) = cancellation {
        ctx = ctx.with_cancellation(cancellation);
    }
    let flag = ctx.completion_flag();
    let (result, panicked) = match handler {
        waymark_core::Handler::Blocking(handler) => {
            match tokio::task::spawn_blocking(move || handler.run(ctx)).await {
                Ok(result) => (result, false),
                Err(join) if join.is_panic() => (Err("the handler panicked".into()), true),
                Err(join) => panic!("the handler's task failed: {join}"),
            }
        }
        waymark_core::Handler::Async(handler) => (handler.run(ctx).await, false),
    };
    let progress = reports.lock().unwrap().clone();
    Outcome {
        result,
        panicked,
        recorded: flag.is_set(),
        progress,
    }
}
