//! `SqliteStore`: one connection behind a mutex, used from blocking threads.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;
use waymark_core::store::{
    InFlight, LockGuard, LockInfo, LockRequest, PreparePlan, RowChange, SetState, check_unique_ids,
};
use waymark_core::{Error, Migration, MigrationDef, MigrationId, MigrationStore};

use crate::config::{Location, SqliteConfig};
use crate::error::{Site, is_busy, is_unprepared};
use crate::open::open;
use crate::reentry;
use crate::run_lock::RunLock;
use crate::schema;
use crate::sql;
use crate::target::Target;

/// A [`MigrationStore`] on SQLite: a file on disk or an in-memory database.
///
/// Cheap to clone; clones share one connection and one run lock. See the
/// [crate documentation](crate) for durability, locking and crash safety.
///
/// ```
/// use waymark_core::{MigrationDef, MigrationStore};
/// use waymark_sqlite::SqliteStore;
///
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// let dir = tempfile::tempdir()?;
/// let store = SqliteStore::open(dir.path().join("app.db")).await?;
/// store.prepare().await?;
/// store.register(&[MigrationDef::new(1, "fill_pace", "Derive pace from speed")?]).await?;
/// assert_eq!(store.pending().await?.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    conn: Mutex<Connection>,
    /// A read-only connection to the same file, so that reads do not wait
    /// for the writer (an atomic handler's transaction, say); `None` for an
    /// in-memory database, which only `conn` can reach.
    reader: Option<Mutex<Connection>>,
    pub(crate) target: Target,
    run_lock: RunLock,
    read_only: bool,
    /// The migrations whose atomic transaction holds the connection now.
    pub(crate) in_flight: InFlight,
}

impl Inner {
    /// The connection, waiting for whoever uses it. A panic while it was
    /// held cannot leave a transaction open (rusqlite rolls back on drop),
    /// so a poisoned mutex is still safe to use.
    pub(crate) fn connection(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The connection for a write. While an atomic transaction holds it,
    /// waits at most the busy timeout, as SQLite waits for another
    /// connection's write lock, then fails with [`Error::Busy`]: a task the
    /// handler spawned and waits for would otherwise wait for good.
    fn writer(&self) -> Result<MutexGuard<'_, Connection>, Error> {
        if self.in_flight.is_empty() {
            return Ok(self.connection());
        }
        let deadline = std::time::Instant::now() + self.target.site.busy_timeout;
        loop {
            match self.conn.try_lock() {
                Ok(conn) => return Ok(conn),
                Err(TryLockError::Poisoned(poison)) => return Ok(poison.into_inner()),
                Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::Busy {
                        context: format!(
                            "waiting for the connection of the {} (busy timeout {:?})",
                            self.target.site.location, self.target.site.busy_timeout
                        ),
                        source: "an atomic migration's transaction holds it; a handler must not \
                                 wait for a task that writes through the store"
                            .into(),
                    });
                }
            }
        }
    }

    /// The connection for reads: the read connection if there is one.
    fn read_connection(&self) -> &Mutex<Connection> {
        self.reader.as_ref().unwrap_or(&self.conn)
    }
}

impl Inner {
    /// The start-up fast path without a thread hop, when that cannot wait.
    ///
    /// Every other call runs on a blocking thread, and so could this one;
    /// but it runs at every start-up, where the hop to a blocking thread and
    /// back costs more than the query (tens of microseconds against a few).
    /// Running it on the async worker is acceptable only because it cannot
    /// block: the connection is taken only if free (`try_lock`), and SQLite's
    /// busy handler is switched off for the query, so a lock held by another
    /// connection fails at once instead of sleeping. Left is a read of a few
    /// cached pages, the same work as the memory reads around it. `None`
    /// (connection in use, database busy) sends the caller to the blocking
    /// path, which waits as usual.
    fn set_state_inline(&self, fingerprint: &str) -> Option<Result<SetState, Error>> {
        let conn = match self.read_connection().try_lock() {
            Ok(conn) => conn,
            Err(TryLockError::Poisoned(poison)) => poison.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        let target = &self.target;
        let busy = target.site.busy_timeout;
        if let Err(err) = conn.busy_timeout(Duration::ZERO) {
            return Some(Err(target
                .site
                .error("switching off the busy timeout", err)));
        }
        let answer = sql::query_set_state(&conn, target, fingerprint);
        if let Err(err) = conn.busy_timeout(busy) {
            return Some(Err(target.site.error("restoring the busy timeout", err)));
        }
        match answer {
            Ok(state) => Some(Ok(state)),
            Err(err) if is_busy(&err) => None,
            Err(err) if is_unprepared(&err) => Some(Ok(SetState::Unregistered)),
            Err(err) => Some(Err(target
                .site
                .error("checking whether migrations are settled", err))),
        }
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` with the
    /// default settings. The directory must exist.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(SqliteConfig::file(path)).await
    }

    /// Opens a private in-memory database, shared by this store's clones.
    pub async fn open_in_memory() -> Result<Self, Error> {
        Self::open_with(SqliteConfig::in_memory()).await
    }

    /// Opens the database `config` describes. Invalid settings are
    /// [`Error::Invalid`]; a missing directory, a file that is not a
    /// database and other failures are [`Error::Store`] naming the path.
    pub async fn open_with(config: SqliteConfig) -> Result<Self, Error> {
        config.validate()?;
        tokio::task::spawn_blocking(move || Self::open_with_blocking(config))
            .await
            .map_err(|join| Error::store("opening a SQLite database", join))?
    }

    /// [`open`](Self::open) without async: for a `main` that is not async
    /// and for a runner's `run_blocking`. Blocks the calling thread while
    /// SQLite opens the file; do not call it on an async runtime's worker.
    pub fn open_blocking(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with_blocking(SqliteConfig::file(path))
    }

    /// [`open_with`](Self::open_with) without async, as [`open_blocking`](Self::open_blocking).
    pub fn open_with_blocking(config: SqliteConfig) -> Result<Self, Error> {
        config.validate()?;
        let site = Site {
            location: config.location.clone(),
            busy_timeout: config.busy_timeout,
        };
        let opened = open(&config, &site)?;
        Ok(Self::assemble(opened, site, &config))
    }

    /// A store on the application's own connection: the store writes
    /// through it (so an atomic handler's transaction is on it), and the
    /// application reaches it with [`interact`](Self::interact). For a file
    /// the store opens a read-only connection of its own beside it, so that
    /// reads do not wait for the store's writer (in WAL mode, for no writer
    /// at all; in rollback-journal mode a writer's commit still makes them
    /// wait, up to the busy timeout). Default table and busy timeout; see
    /// [`from_connection_with`](Self::from_connection_with).
    ///
    /// The store sets the connection's busy timeout and `synchronous = FULL`
    /// (see the crate documentation for why).
    ///
    /// ```
    /// use waymark_sqlite::{SqliteStore, rusqlite::Connection};
    ///
    /// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
    /// let dir = tempfile::tempdir()?;
    /// let conn = Connection::open(dir.path().join("app.db"))?;
    /// conn.execute_batch("CREATE TABLE laps (id INTEGER PRIMARY KEY)")?;
    /// let store = SqliteStore::from_connection(conn)?;
    /// let laps: i64 = store
    ///     .interact(|conn| conn.query_row("SELECT count(*) FROM laps", [], |row| row.get(0)))
    ///     .await?;
    /// assert_eq!(laps, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn from_connection(conn: Connection) -> Result<Self, Error> {
        let location = location_of(&conn);
        let config = match &location {
            Location::File(path) => SqliteConfig::file(path),
            Location::Memory => SqliteConfig::in_memory(),
        };
        Self::from_connection_with(conn, config)
    }

    /// [`from_connection`](Self::from_connection) with the table, busy
    /// timeout and read-only flag of `config`. `config` must name the
    /// connection's own database (`SqliteConfig::file` of its path, or
    /// `SqliteConfig::in_memory()` for an in-memory connection): anything
    /// else is [`Error::Invalid`] for the field `path`, so a store can never
    /// track one database while the config says another.
    pub fn from_connection_with(conn: Connection, config: SqliteConfig) -> Result<Self, Error> {
        config.validate()?;
        let location = location_of(&conn);
        if !same_database(&location, &config.location) {
            return Err(Error::invalid(
                "path",
                format!(
                    "the connection is to the {location}, the config names the {}",
                    config.location
                ),
            ));
        }
        let site = Site {
            location: location.clone(),
            busy_timeout: config.busy_timeout,
        };
        crate::open::configure(&conn, &site)?;
        let read_only = config.read_only || conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false);
        if config.read_only {
            conn.pragma_update(None, "query_only", true)
                .map_err(site.err("making the connection read-only"))?;
        }
        let reader = match &location {
            Location::File(path) => Some(crate::open::open_reader(path, &site)?),
            Location::Memory => None,
        };
        let opened = crate::open::Opened {
            conn,
            reader,
            read_only,
        };
        Ok(Self::assemble(opened, site, &config))
    }

    fn assemble(opened: crate::open::Opened, site: Site, config: &SqliteConfig) -> Self {
        let table = &config.table;
        let mut target = Target::new(site, table);
        target.adoption = config.adoption;
        target.allow_second_table = config.allow_second_table;
        Self {
            inner: Arc::new(Inner {
                conn: Mutex::new(opened.conn),
                reader: opened.reader.map(Mutex::new),
                run_lock: RunLock::new(&target.site.location, table),
                target,
                read_only: opened.read_only,
                in_flight: InFlight::new(),
            }),
        }
    }

    /// The database file, or `None` for an in-memory database.
    pub fn path(&self) -> Option<&Path> {
        match &self.inner.target.site.location {
            Location::File(path) => Some(path),
            Location::Memory => None,
        }
    }

    /// The tracking table's name.
    pub fn table(&self) -> &str {
        &self.inner.target.name
    }

    /// Whether the database was opened read-only (asked for, or a file
    /// without write permission): reads work, writes fail with [`Error::Store`].
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// Closes the database on a blocking thread if this is the last clone
    /// (otherwise only this clone goes away), reporting any error.
    ///
    /// Dropping the last clone closes it too, but on the dropping thread:
    /// closing may fold the WAL back into the database file, which is
    /// blocking I/O that async code should hand off like this.
    pub async fn close(self) -> Result<(), Error> {
        let Ok(inner) = Arc::try_unwrap(self.inner) else {
            return Ok(());
        };
        let Inner {
            conn,
            reader,
            target,
            ..
        } = inner;
        let unpoisoned = |m: Mutex<Connection>| m.into_inner().unwrap_or_else(|p| p.into_inner());
        let conn = unpoisoned(conn);
        let reader = reader.map(unpoisoned);
        tokio::task::spawn_blocking(move || {
            if let Some(reader) = reader {
                reader
                    .close()
                    .map_err(|(_, err)| target.site.error("closing the read connection", err))?;
            }
            conn.close()
                .map_err(|(_, err)| target.site.error("closing", err))
        })
        .await
        .map_err(|join| Error::store("closing a SQLite database", join))?
    }

    /// Runs `f` on the store's connection, on a blocking thread, once any
    /// call in progress is done: the application's own statements on the
    /// same database without a second connection, and the only way to reach
    /// the tables of an in-memory database.
    ///
    /// Keep it short: every store call waits for it. `f` may open a
    /// transaction (`conn.transaction()`) but must end it: one left open is
    /// rolled back and reported as [`Error::Invalid`]. A call to this store
    /// from inside `f` fails at once instead of deadlocking.
    ///
    /// ```
    /// use waymark_sqlite::SqliteStore;
    ///
    /// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
    /// let store = SqliteStore::open_in_memory().await?;
    /// let answer: i64 = store.interact(|conn| conn.query_row("SELECT 6 * 7", [], |row| row.get(0))).await?;
    /// assert_eq!(answer, 42);
    /// # Ok::<(), waymark_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn interact<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let key = self.key();
        self.call(move |conn, target| {
            let held = reentry::Held::enter(key);
            let out = f(conn);
            drop(held);
            if !conn.is_autocommit() {
                let rollback = conn.execute_batch("ROLLBACK");
                if let Err(err) = rollback {
                    tracing::error!(error = %err, "rolling back a transaction left open failed");
                }
                return Err(Error::invalid(
                    "interact",
                    "the closure left a transaction open; it was rolled back",
                ));
            }
            out.map_err(target.site.err("running the application's statements"))
        })
        .await
    }

    /// Runs a read on the read connection on a blocking thread. With a
    /// read connection a read from inside an atomic handler is safe (it
    /// sees what is committed); without one it would wait for the
    /// connection the handler holds, and fails at once instead.
    async fn read<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection, &Target) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        if self.inner.reader.is_none() {
            reentry::check(self.key())?;
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // Without a read connection a read needs the writer's: wait for
            // it as a write does (bounded while an atomic transaction holds it).
            let conn = match &inner.reader {
                Some(reader) => reader.lock().unwrap_or_else(|poison| poison.into_inner()),
                None => inner.writer()?,
            };
            op(&conn, &inner.target)
        })
        .await
        .map_err(|join| {
            Error::store(
                format!("running a query on {}", self.inner.target.site.location),
                join,
            )
        })?
    }

    /// This store's identity for the re-entrance check.
    pub(crate) fn key(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// Runs `op` on the connection on a blocking thread, so the async
    /// runtime's workers never wait for SQLite or for the mutex.
    async fn call<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Connection, &Target) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        reentry::check(self.key())?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || op(&mut *inner.writer()?, &inner.target))
            .await
            .map_err(|join| {
                Error::store(
                    format!("running a query on {}", self.inner.target.site.location),
                    join,
                )
            })?
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.inner.target.site.location)
            .field("table", &self.inner.target.name)
            .field("read_only", &self.inner.read_only)
            .finish_non_exhaustive()
    }
}

/// Where a connection's main database is.
fn location_of(conn: &Connection) -> Location {
    match conn.path() {
        Some(path) if !path.is_empty() => Location::File(path.into()),
        _ => Location::Memory,
    }
}

/// Whether two locations are the same database (a file reached by two
/// spellings included).
fn same_database(a: &Location, b: &Location) -> bool {
    match (a, b) {
        (Location::Memory, Location::Memory) => true,
        (Location::File(a), Location::File(b)) => {
            let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            canonical(a) == canonical(b)
        }
        _ => false,
    }
}

#[async_trait]
impl MigrationStore for SqliteStore {
    async fn prepare(&self) -> Result<(), Error> {
        self.call(schema::prepare).await
    }

    async fn register(&self, defs: &[MigrationDef]) -> Result<(), Error> {
        check_unique_ids(defs)?;
        let defs = defs.to_vec();
        self.call(move |conn, target| sql::register(conn, target, &defs))
            .await
    }

    async fn list(&self) -> Result<Vec<Migration>, Error> {
        self.read(|conn, target| sql::list(conn, target, false))
            .await
    }

    async fn update(&self, id: MigrationId, change: RowChange<'_>) -> Result<(), Error> {
        // Before waiting for the connection: an atomic transaction of this
        // migration holds it, and would wait for this call in turn.
        self.inner.in_flight.check(id)?;
        let (kind, value) = owned(change)?;
        self.call(move |conn, target| {
            let change = borrowed(kind, &value);
            sql::write(conn, target, &format!("updating migration {id}"), |tx| {
                sql::update(tx, target, id, change)
            })
        })
        .await
    }

    async fn lock(&self, request: &LockRequest) -> Result<LockGuard, Error> {
        self.inner.run_lock.acquire(request).await
    }

    async fn plan_prepare(&self) -> Result<PreparePlan, Error> {
        self.read(schema::plan_prepare).await
    }

    async fn lock_or_wait(&self, request: &LockRequest) -> Result<Option<LockGuard>, Error> {
        self.inner.run_lock.acquire_or_wait(request).await
    }

    async fn locks(&self) -> Result<Vec<LockInfo>, Error> {
        self.inner.run_lock.held().await
    }

    async fn pending(&self) -> Result<Vec<Migration>, Error> {
        self.read(|conn, target| sql::list(conn, target, true))
            .await
    }

    async fn get(&self, id: MigrationId) -> Result<Migration, Error> {
        self.read(move |conn, target| sql::get(conn, target, id))
            .await
    }

    async fn set_state(&self, fingerprint: &str) -> Result<SetState, Error> {
        if self.inner.reader.is_none() {
            reentry::check(self.key())?;
        }
        if let Some(state) = self.inner.set_state_inline(fingerprint) {
            return state;
        }
        let fingerprint = fingerprint.to_owned();
        self.read(move |conn, target| sql::set_state(conn, target, &fingerprint))
            .await
    }
}

/// A [`RowChange`] without its borrow, to move onto a blocking thread.
#[derive(Debug, Clone, Copy)]
enum ChangeKind {
    MarkExecuted,
    MarkPending,
    RecordSuccess,
    RecordFailure,
    SaveCheckpoint,
}

fn owned(change: RowChange<'_>) -> Result<(ChangeKind, String), Error> {
    Ok(match change {
        RowChange::MarkExecuted => (ChangeKind::MarkExecuted, String::new()),
        RowChange::MarkPending => (ChangeKind::MarkPending, String::new()),
        RowChange::RecordSuccess => (ChangeKind::RecordSuccess, String::new()),
        RowChange::RecordFailure(error) => (ChangeKind::RecordFailure, error.to_owned()),
        RowChange::SaveCheckpoint(at) => (ChangeKind::SaveCheckpoint, at.to_owned()),
        other => {
            return Err(Error::invalid(
                "change",
                format!("the SQLite store does not know {other:?}"),
            ));
        }
    })
}

fn borrowed(kind: ChangeKind, value: &str) -> RowChange<'_> {
    match kind {
        ChangeKind::MarkExecuted => RowChange::MarkExecuted,
        ChangeKind::MarkPending => RowChange::MarkPending,
        ChangeKind::RecordSuccess => RowChange::RecordSuccess,
        ChangeKind::RecordFailure => RowChange::RecordFailure(value),
        ChangeKind::SaveCheckpoint => RowChange::SaveCheckpoint(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_is_cheap_to_share() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<SqliteStore>();
    }
}
