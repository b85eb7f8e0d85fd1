//! PostgreSQL store for [waymark](https://docs.rs/waymark): pooled,
//! advisory-locked, for servers and for applications that run several
//! replicas against one database.
//!
//! [`PostgresStore`] implements [`waymark_core::MigrationStore`] on
//! tokio-postgres and deadpool-postgres:
//!
//! - **Table.** `prepare` creates `public.migrations` (schema and table are
//!   configurable): the original four columns `id BIGINT PRIMARY KEY`,
//!   `name TEXT`, `description TEXT` (their limits of 250 and 2500
//!   characters are checked by `MigrationDef`, so they hold in characters on
//!   every server encoding), `executed BOOLEAN`,
//!   plus `executed_at TIMESTAMPTZ`, `attempts`, `last_error` and
//!   `checkpoint`, with column comments and a partial index on pending rows.
//!   An existing table of the original four columns is upgraded in place,
//!   keeping every row. Any number of processes may call `prepare` at once.
//!   On a prepared database `prepare` is one catalog read and `register` of
//!   a known set one query, with no transaction or lock: the steady state of
//!   every start-up after the first.
//! - **Locks.** The run lock and the background lock
//!   ([`LockScope`](waymark_core::store::LockScope)) are PostgreSQL advisory
//!   locks whose keys derive from the scope, schema and table, so apps with
//!   different tables never block each other (the run lock's key is the
//!   one every earlier version used). The
//!   connection holding it has left the pool for good: it is never handed
//!   back to the pool. Dropping the guard unlocks on that session and,
//!   once the server has confirmed the unlock, keeps the session aside,
//!   holding nothing, for the store's next lock (so a run opens no session
//!   of its own); if the unlock fails, or the process dies, the session
//!   ends and the server frees the lock at once.
//!   [`lock_or_wait`](waymark_core::MigrationStore::lock_or_wait) takes it
//!   when free and otherwise waits for a transaction-scoped *shared* lock
//!   on the same key, which the server grants to every waiter together when
//!   the holder lets go; that connection then returns to the pool.
//! - **Atomic handlers.** [`PostgresStore`] is an
//!   [`AtomicStore`](waymark_core::store::AtomicStore): the runner's
//!   `Handler::atomic(|tx, ctx| Box::pin(async move { … }))` gets the
//!   `&tokio_postgres::Transaction` its success is recorded in, and
//!   `Handler::batched` commits each batch with its checkpoint.
//! - **Nothing left running.** A call abandoned mid-statement (its future
//!   dropped, its limit passed, its migration cancelled) sends the server a
//!   cancel request before its connection closes, so no statement keeps
//!   running and no row stays locked.
//! - **TLS.** With the feature `tls` (waymark's `postgres-tls`), rustls on
//!   the `ring` provider, as the connection string's `sslmode` (`disable`,
//!   `prefer` by default, `require`, `verify-ca`, `verify-full`) and
//!   `sslrootcert` (a PEM file, or `system`) say, in the URL and the
//!   `key=value` form alike, for every connection the store makes: the
//!   pool, the lock's session and cancel requests. Without the feature,
//!   `disable` and `prefer` connect without TLS and the other modes are
//!   refused at once. See [`PostgresConfig`]'s TLS section:
//!
//!   ```no_run
//!   # async fn demo() -> Result<(), waymark_core::Error> {
//!   let store = waymark_postgres::PostgresStore::connect(
//!       "postgres://app@db.internal/app?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem",
//!   )
//!   .await?;
//!   # Ok(())
//!   # }
//!   ```
//! - **Errors.** Connection and server failures are
//!   [`Error::Store`](waymark_core::Error::Store), naming host and port
//!   (never the password), with the server's error and its SQLSTATE in the
//!   source chain ([`sqlstate`]); a missing table is
//!   [`Error::NotInitialised`](waymark_core::Error::NotInitialised). Nothing
//!   waits forever: connecting, waiting for a pooled connection and every
//!   call of the store's own have limits ([`PostgresConfig`]); the
//!   statements of atomic handlers run under the session's own
//!   `statement_timeout` ([`PostgresConfig::statement_timeout`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use waymark_core::store::{LockRequest, LockScope};
//! use waymark_core::{MigrationDef, MigrationStore};
//! use waymark_postgres::PostgresStore;
//!
//! # async fn demo() -> Result<(), waymark_core::Error> {
//! let store = PostgresStore::connect("postgres://app@localhost:5432/app").await?;
//! store.prepare().await?;
//! store.register(&[MigrationDef::new(1, "fill_pace", "Derive pace from speed")?]).await?;
//! let _guard = store
//!     .lock(&LockRequest::new(LockScope::Run, Duration::from_secs(30)))
//!     .await?;
//! for migration in store.pending().await? {
//!     println!("would run {} {}", migration.id, migration.name);
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod atomic;
mod call;
mod config;
mod conn;
mod error;
mod lock;
mod ops;
mod row;
mod schema;
mod sql;
mod ssl;
mod store;
#[cfg(feature = "tls")]
mod tls;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_POOL_SIZE, DEFAULT_STATEMENT_TIMEOUT, PostgresConfig,
};
pub use error::sqlstate;
pub use store::PostgresStore;
/// Re-exported from core: the explicit choices for an adopted table's
/// ambiguous rows, given to the configuration.
pub use waymark_core::store::{AdoptionChoices, NullExecuted, PreparePlan};

/// Re-exported so that applications name the same versions as the store.
pub use deadpool_postgres;
/// Re-exported so that applications name the same versions as the store.
pub use tokio_postgres;
