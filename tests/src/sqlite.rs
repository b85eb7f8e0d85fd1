//! Fresh SQLite databases for tests, the helper process they can spawn, and
//! the store as the atomic conformance suite drives it ([`AtomicSqlite`],
//! [`fresh_atomic_db`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use waymark_core::run::new_context;
use waymark_core::store::{AtomicFn, BatchFn};
use waymark_core::testkit::{AtomicDb, AtomicFixture, BatchPlan, TestStore};
use waymark_core::{
    BatchStep, BoxError, CancellationToken, Migration, MigrationContext, MigrationId,
    MigrationStore,
};
use waymark_sqlite::SqliteStore;
use waymark_sqlite::rusqlite::{self, Transaction};

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

/// The journal mode of the database at `path` (`"wal"`, `"delete"`), read
/// through a connection of its own.
pub fn journal_mode(path: &Path) -> String {
    raw(path)
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .expect("read the journal mode")
}

/// An atomic handler's body for a [`SqliteStore`], from a closure over its
/// transaction, as `Handler::atomic` takes it: for tests that call
/// [`AtomicStore::execute_atomic`](waymark_core::store::AtomicStore::execute_atomic) themselves.
pub fn atomic_fn<S, F>(f: F) -> AtomicFn<S, SqliteStore>
where
    F: for<'t> Fn(&'t Transaction<'t>, &'t MigrationContext<S>) -> Result<(), BoxError>
        + Send
        + Sync
        + 'static,
{
    Arc::new(f)
}

/// A batched atomic handler's body for a [`SqliteStore`], as
/// `Handler::batched` takes it.
pub fn batch_fn<S, F>(f: F) -> BatchFn<S, SqliteStore>
where
    F: for<'t> Fn(
            &'t Transaction<'t>,
            Option<&'t str>,
            &'t MigrationContext<S>,
        ) -> Result<BatchStep, BoxError>
        + Send
        + Sync
        + 'static,
{
    Arc::new(f)
}

/// The context the runner gives an atomic handler of migration `row`
/// (state `()`, no progress, `cancel` as its cancellation).
pub fn context_with(
    store: &SqliteStore,
    row: Migration,
    cancel: CancellationToken,
) -> Arc<MigrationContext<()>> {
    let shared: Arc<dyn MigrationStore> = Arc::new(store.clone());
    Arc::new(new_context(Arc::new(()), row, shared, None, cancel))
}

/// [`context_with`] a cancellation that never fires.
pub fn context(store: &SqliteStore, row: Migration) -> Arc<MigrationContext<()>> {
    context_with(store, row, CancellationToken::new())
}

/// The context for the tracked migration `id`, read from the store.
pub async fn context_of(store: &SqliteStore, id: i64) -> Arc<MigrationContext<()>> {
    let id = MigrationId::new(id).expect("positive id");
    let row = store.get(id).await.expect("the migration is tracked");
    context(store, row)
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

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line equal to `expected`, returning the lines before it.
    /// Panics if the child closes its output or `limit` passes first: a
    /// guard against hanging, not a measurement.
    pub fn wait_for(&mut self, expected: &str, limit: Duration) -> Vec<String> {
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
    pub fn finish(mut self, limit: Duration) -> (Vec<String>, bool) {
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

/// The store as the atomic conformance suite drives it: a [`SqliteStore`]
/// on a database file under another name, because the suite's
/// [`AtomicFixture`] (core's) can only be implemented for a type of this
/// crate. Every call goes to the store itself, its faster overrides
/// included; the fixture's checks go through connections of their own to
/// the same file.
pub type AtomicSqlite = crate::fixture::Fixture<SqliteStore>;

/// A fresh database file for one test of the atomic suite.
pub async fn fresh_atomic_db() -> AtomicDb<AtomicSqlite> {
    let (store, dir) = fresh_store().await;
    AtomicDb::new(crate::fixture::Fixture(store), dir)
}

/// A fresh in-memory database for one test of the atomic suite.
pub async fn fresh_memory_atomic_db() -> AtomicDb<AtomicSqlite> {
    let store = SqliteStore::open_in_memory()
        .await
        .expect("opening an in-memory database");
    AtomicDb::new(crate::fixture::Fixture(store), ())
}

/// The suite's data table, created by the first body that writes to it.
const CREATE_DATA: &str = "CREATE TABLE IF NOT EXISTS waymark_suite_data (v INTEGER NOT NULL)";

/// A statement that never ends by itself: counting up without a limit.
pub const ENDLESS_QUERY: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c";

/// An atomic body from a closure over the transaction (pins down its
/// higher-ranked signature).
fn atomic_body<S, F>(f: F) -> AtomicFn<S, AtomicSqlite>
where
    F: for<'t> Fn(&'t Transaction<'t>, &'t MigrationContext<S>) -> Result<(), BoxError>
        + Send
        + Sync
        + 'static,
{
    Arc::new(f)
}

fn batch_body<F>(f: F) -> BatchFn<BatchPlan, AtomicSqlite>
where
    F: for<'t> Fn(
            &'t Transaction<'t>,
            Option<&'t str>,
            &'t MigrationContext<BatchPlan>,
        ) -> Result<BatchStep, BoxError>
        + Send
        + Sync
        + 'static,
{
    Arc::new(f)
}

impl AtomicFixture for AtomicSqlite {
    fn insert<S: Send + Sync + 'static>(value: i64) -> AtomicFn<S, Self> {
        atomic_body(move |tx, _ctx| {
            tx.execute_batch(CREATE_DATA)?;
            tx.execute("INSERT INTO waymark_suite_data (v) VALUES (?1)", [value])?;
            Ok(())
        })
    }

    fn batch() -> BatchFn<BatchPlan, Self> {
        batch_body(|tx, from, ctx| {
            let plan = *ctx.state();
            let after: i64 = from.map(str::parse).transpose()?.unwrap_or(0);
            let last = (after + plan.per_batch).min(plan.last);
            tx.execute_batch(CREATE_DATA)?;
            let mut insert = tx.prepare("INSERT INTO waymark_suite_data (v) VALUES (?1)")?;
            for value in after + 1..=last {
                insert.execute([value])?;
            }
            let processed = u64::try_from(last - after).unwrap_or(0);
            Ok(if last >= plan.last {
                BatchStep::done(processed)
            } else if plan.stall {
                BatchStep::next(from.unwrap_or("0"), processed)
            } else {
                BatchStep::next(last.to_string(), processed)
            })
        })
    }

    fn endless<S: Send + Sync + 'static>() -> AtomicFn<S, Self> {
        atomic_body(|tx, _ctx| {
            tx.execute_batch(CREATE_DATA)?;
            tx.execute("INSERT INTO waymark_suite_data (v) VALUES (1)", [])?;
            let _never: i64 = tx.query_row(ENDLESS_QUERY, [], |row| row.get(0))?;
            Ok(())
        })
    }

    /// Read through a connection of its own to the same file; for an
    /// in-memory database, through the store's own connection.
    fn values(&self) -> impl Future<Output = Vec<i64>> + Send {
        let store = self.0.clone();
        async move {
            match store.path().map(Path::to_path_buf) {
                Some(path) => tokio::task::spawn_blocking(move || read_values(&raw(&path)))
                    .await
                    .expect("the reading thread"),
                None => store
                    .interact(|conn| Ok(read_values(conn)))
                    .await
                    .expect("reading through the store's connection"),
            }
        }
    }

    /// SQLite runs statements in the process that issued them, so what
    /// could still be running or locked is a transaction holding the
    /// database's write lock: busy when another connection cannot take it
    /// at once (`BEGIN IMMEDIATE` with no busy timeout). An in-memory
    /// database has only the store's connection: busy while a transaction
    /// still holds it.
    fn busy(&self) -> impl Future<Output = bool> + Send {
        let store = self.0.clone();
        async move {
            match store.path().map(Path::to_path_buf) {
                Some(path) => tokio::task::spawn_blocking(move || write_lock_is_held(&path))
                    .await
                    .expect("the checking thread"),
                None => tokio::time::timeout(
                    Duration::from_millis(200),
                    store.interact(|conn| Ok(conn.is_autocommit())),
                )
                .await
                .map_or(true, |free| !free.expect("asking the store's connection")),
            }
        }
    }
}

/// The suite's data table, sorted; empty when it does not exist.
fn read_values(conn: &rusqlite::Connection) -> Vec<i64> {
    let exists: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_schema \
             WHERE type = 'table' AND name = 'waymark_suite_data'",
            [],
            |row| row.get(0),
        )
        .expect("looking for the data table");
    if !exists {
        return Vec::new();
    }
    let mut stmt = conn
        .prepare("SELECT v FROM waymark_suite_data ORDER BY v")
        .expect("reading the data table");
    stmt.query_map([], |row| row.get(0))
        .expect("reading the data table")
        .map(|value| value.expect("reading a value"))
        .collect()
}

/// Whether another connection holds the write lock of the database at
/// `path`: a `BEGIN IMMEDIATE` of a connection of its own, without waiting,
/// fails.
pub fn write_lock_is_held(path: &Path) -> bool {
    let conn = raw(path);
    conn.busy_timeout(Duration::ZERO)
        .expect("turning the busy timeout off");
    match conn.execute_batch("BEGIN IMMEDIATE") {
        Ok(()) => {
            conn.execute_batch("ROLLBACK")
                .expect("rolling the check back");
            false
        }
        Err(err)
            if matches!(
                err.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ) =>
        {
            true
        }
        Err(err) => panic!("checking the write lock of {}: {err}", path.display()),
    }
}
