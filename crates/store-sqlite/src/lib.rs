//! SQLite store for [waymark](https://docs.rs/waymark): embedded, durable,
//! safe across processes.
//!
//! [`SqliteStore`] keeps waymark's tracking table in a SQLite file (or an
//! in-memory database) through rusqlite: with SQLite bundled by default
//! (feature `bundled`), so no system library is needed, or on the SQLite the
//! application links (3.24 or newer). Besides the [`MigrationStore`](waymark_core::MigrationStore)
//! contract it implements [`AtomicStore`](waymark_core::store::AtomicStore):
//! the runner's atomic and batched handlers get a `&rusqlite::Transaction`,
//! and their data changes commit together with the bookkeeping.
//!
//! ```
//! use std::time::Duration;
//! use waymark_core::store::{LockRequest, LockScope};
//! use waymark_core::{MigrationDef, MigrationStore};
//! use waymark_sqlite::{SqliteConfig, SqliteStore};
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir()?;
//! let config = SqliteConfig::file(dir.path().join("app.db"))
//!     .table("data_migrations")
//!     .busy_timeout(Duration::from_secs(10));
//! let store = SqliteStore::open_with(config).await?;
//! store.prepare().await?;
//! store.register(&[MigrationDef::new(1, "fill_pace", "Derive pace from speed")?]).await?;
//! let _guard = store.lock(&LockRequest::new(LockScope::Run, Duration::from_secs(30))).await?;
//! for migration in store.pending().await? {
//!     // run it, then record the outcome
//!     store.record_success(migration.id).await?;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # The tables
//!
//! [`prepare`](waymark_core::MigrationStore::prepare) creates
//! `migrations (id INTEGER PRIMARY KEY, name, description, executed,
//! executed_at, attempts, last_error, checkpoint)` (the name is configurable),
//! a partial index `migrations_pending` for the pending query and a side
//! table `migrations_fingerprints` of the registered sets, which lets
//! [`set_state`](waymark_core::MigrationStore::set_state) answer in one
//! query. `executed_at` is RFC 3339 text in UTC, written from
//! [`now_utc`](waymark_core::store::now_utc); an adopted table's
//! `YYYY-MM-DD HH:MM:SS` text (SQLite's `CURRENT_TIMESTAMP`) reads as UTC.
//!
//! Reads never create or change anything: `list`, `pending` and `get` on a
//! database without the table (or with the original table not yet
//! prepared) fail with [`Error::NotInitialised`](waymark_core::Error::NotInitialised),
//! and `set_state` answers `Unregistered`.
//!
//! An existing table of the original four columns (`id`, `name`,
//! `description`, `executed`) is adopted in place: the missing columns are
//! added with `ALTER TABLE … ADD COLUMN`, every row is kept as it is. Rows
//! whose state would be a guess (a NULL `executed`, an `executed_at`
//! without an offset) need an explicit [`AdoptionChoices`] in the
//! configuration ([`SqliteConfig::adoption`]); without it they are refused.
//! A table whose shape cannot work, such as `id TEXT`, is refused with an
//! [`Error::Store`](waymark_core::Error::Store) whose source is an
//! [`IncompatibleTable`] naming the column, and nothing is changed.
//! [`plan_prepare`](waymark_core::MigrationStore::plan_prepare) says all of
//! this without changing anything. `prepare` looks before it writes: on a
//! prepared database it only reads (so it works on a read-only one), and
//! when it must change something it checks again inside `BEGIN IMMEDIATE`,
//! so processes preparing at the same moment take turns and the later ones
//! find nothing left to do.
//!
//! # Durability: WAL with `synchronous = FULL`
//!
//! A database that `prepare` creates from nothing is switched to WAL
//! journal mode, so readers never wait for a writer; an application's
//! existing database keeps the journal mode it chose, and opening a
//! database never changes it. The store's connection uses `synchronous = FULL` rather
//! than the `NORMAL` that WAL commonly pairs with. Under `NORMAL` a commit
//! survives a crash of the application but not necessarily a power cut or
//! an OS crash, because the WAL is synced only at checkpoints. Losing the
//! record that a migration ran, after its effects reached something outside
//! this transaction (another database, files, a remote service), means
//! running it a second time, which is what waymark exists to prevent. `FULL`
//! syncs the WAL on every commit; the store commits a handful of times per
//! migration (once per batch for batched ones), so the cost is small. The
//! setting applies only to the store's own connection.
//!
//! # Locking
//!
//! - **Database access.** Each store has one connection behind a mutex,
//!   shared by its clones; every call runs on Tokio's blocking threads
//!   (`spawn_blocking`), never on the async workers, so many tasks can call
//!   one store at once and simply queue. The one exception is the start-up
//!   fast path, [`set_state`](waymark_core::MigrationStore::set_state):
//!   when the connection is free it runs inline, with SQLite's busy handler
//!   off so that it can never wait on a lock (a busy database falls back to
//!   a blocking thread), because the hop to a blocking thread and back would
//!   cost several times the query itself. Writes start with `BEGIN
//!   IMMEDIATE`: a writer waits for another connection's write lock through
//!   the busy timeout (default 5 s, [`SqliteConfig::busy_timeout`]) and then
//!   fails with [`Error::Busy`](waymark_core::Error::Busy), never hangs
//!   (the runner waits for such a run and retries). `prepare` and `register` read first and write only when
//!   something is new, so a replica starting while another runs a long
//!   migration is not held up.
//! - **The locks.** [`lock`](waymark_core::MigrationStore::lock) takes an
//!   exclusive OS file lock (`flock`) on a sidecar file next to the
//!   database, `<database>-<table>.lock` for the run lock (the file earlier
//!   versions lock, so that a rolled-back release and this one exclude each
//!   other) and `<database>-<table>-background.lock` for background
//!   migrations. The holder writes its host, pid, application and start
//!   time into the file, which [`locks`](waymark_core::MigrationStore::locks)
//!   reads (and reports only while the lock is really held). It polls with a growing pause until
//!   the wait runs out ([`Error::LockTimeout`](waymark_core::Error::LockTimeout)).
//!   Each attempt opens its own descriptor, so the lock also excludes other
//!   store instances (and clones) in the same process. The kernel releases it
//!   when the guard is dropped and when the process dies, SIGKILL included:
//!   there is never a stale lock to clear. [`lock_or_wait`](waymark_core::MigrationStore::lock_or_wait)
//!   takes the lock if it is free and otherwise waits for a shared `flock`,
//!   blocked on by one plain thread per lock file and process that all its
//!   waiters listen to (not one of Tokio's, so a waiter gives up on time and
//!   never holds up a shutdown): every instance that lost a race at
//!   start-up wakes the moment the winner lets go. The database file itself is never
//!   opened a second time, since closing such a descriptor would drop the
//!   POSIX locks SQLite holds on it. Like SQLite, this needs a local file
//!   system, not a network share. For in-memory databases the run lock is a
//!   mutex shared by the store's clones, the only code that can reach that
//!   database.
//! - **Atomic handlers** hold the store's connection and SQLite's write
//!   lock while their transaction is open. Other calls on the store wait for
//!   it. A write to the running migration's own row (from a task the handler
//!   spawned, say) fails at once with [`Error::Conflict`](waymark_core::Error::Conflict),
//!   and a call from the handler's own thread fails at once with an error,
//!   instead of deadlocking. Use the transaction, and the batched form for
//!   checkpoints. Cancelling the run (a timeout, a shutdown) interrupts the
//!   running statement and rolls back.
//!
//! # What a crash leaves behind
//!
//! - Every committed transaction, including the last one before the crash
//!   (see durability). The transaction open at the crash (an atomic
//!   handler's, or the batch in progress) is discarded by SQLite when the
//!   database is next opened: its changes and its bookkeeping vanish
//!   together, and a batched migration resumes at that batch.
//! - Possibly `<database>-wal` and `<database>-shm` files. They are part of
//!   the database until the next open folds them back in: never delete
//!   them (deleting the WAL loses committed transactions).
//! - The empty lock file. The lock itself died with the process; the file
//!   may stay or be removed while no run is in progress.
//! - A migration that was not atomic stays pending with its last saved
//!   checkpoint; a crash is not counted as a failed attempt.
//!
//! # Read-only databases
//!
//! A database opened with [`SqliteConfig::read_only`], or a file without any
//! write permission bit, is opened with SQLite's read-only flag: reads
//! (`list`, `pending`, `get`, `set_state`, and `prepare` when nothing needs
//! changing) work, writes fail with an [`Error::Store`](waymark_core::Error::Store)
//! saying the database is read-only. The permission bits are honoured even
//! for root, who could otherwise write through them.
#![deny(missing_docs)]

mod atomic;
mod config;
mod error;
mod open;
mod reentry;
mod release_watch;
mod run_lock;
mod schema;
mod sql;
mod store;
mod target;
mod timestamp;

pub use config::{DEFAULT_BUSY_TIMEOUT, DEFAULT_TABLE, MAX_TABLE_CHARS, SqliteConfig};
pub use store::SqliteStore;
/// Re-exported from core: the same type on every backend.
pub use waymark_core::IncompatibleTable;
/// Re-exported from core: the explicit choices for an adopted table's
/// ambiguous rows, given to the configuration.
pub use waymark_core::store::{AdoptionChoices, NullExecuted, PreparePlan};

/// Re-exported so that handlers name the same rusqlite as the store.
pub use rusqlite;
