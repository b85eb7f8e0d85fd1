//! waymark tracks and runs **one-time data migrations** — backfills,
//! recomputations, clean-ups of existing rows — exactly once, in id order,
//! safely when the process is killed half-way and when many replicas start
//! at the same moment.
//!
//! This is the crate applications depend on. Its root holds what an
//! application uses: declare migrations ([`MigrationDef`]) with their
//! [`Handler`]s on a [`Runner`], [`run`](Runner::run) them at start-up, and
//! read what happened ([`Started`], [`RunReport`], [`Background`]). The
//! rest lives in modules:
//!
//! | module | for |
//! |---|---|
//! | [`sqlite`] (feature `sqlite`, default) | `SqliteStore` on rusqlite, SQLite bundled by default |
//! | [`postgres`] (feature `postgres`) | `PostgresStore` on tokio-postgres and deadpool-postgres |
//! | [`error`] | the errors a handler's failure can be downcast to |
//! | [`store`] | backend authors: the store traits, locks, shared SQL, helpers, the conformance suites (feature `testkit`) |
//! | [`render`] | plain-text tables for terminals |
//! | [`stream`] | the activity stream codes of the original application |
//! | [`cli`] (feature `cli`) | the `migrate` command an application mounts in its own binary |
//!
//! `default-features = false` leaves the in-memory [`MemoryStore`] only, for
//! libraries and for applications' unit tests.
//!
//! A plain handler cannot claim that its migration is done: only the
//! runner (after the handler returned) or a store's own transaction (for
//! atomic handlers) records completion.
//!
//! ```compile_fail,E0599
//! use waymark::{Handler, MemoryStore, MigrationContext};
//!
//! let _: Handler<(), MemoryStore> = Handler::blocking_fn(|ctx: MigrationContext<()>| {
//!     ctx.mark_success_recorded(); // no such method
//!     Ok::<(), waymark::BoxError>(())
//! });
//! ```
//!
//! An atomic handler receives a `&MigrationContext` and cannot save
//! checkpoints or record anything through it either:
//!
//! ```compile_fail,E0596
//! # #[cfg(feature = "sqlite")] {
//! use waymark::sqlite::SqliteStore;
//! use waymark::{Handler, MigrationContext};
//!
//! let _ = Handler::<(), SqliteStore>::atomic(|_tx, ctx: &MigrationContext<()>| {
//!     ctx.save_checkpoint_blocking("claimed")?; // needs `&mut`
//!     Ok::<(), waymark::BoxError>(())
//! });
//! # }
//! # #[cfg(not(feature = "sqlite"))] compile_error!("needs sqlite");
//! ```
#![cfg_attr(
    all(feature = "sqlite", feature = "postgres"),
    doc = r#"
An atomic handler is typed by its store: one written for SQLite cannot be
given to a runner over PostgreSQL.

```compile_fail,E0308
use waymark::postgres::PostgresStore;
use waymark::sqlite::SqliteStore;
use waymark::{Handler, MigrationDef, Runner};

async fn build(pg: PostgresStore) -> Result<(), waymark::Error> {
    let for_sqlite: Handler<(), SqliteStore> =
        Handler::<(), SqliteStore>::atomic(|tx, _ctx| {
            tx.execute("UPDATE laps SET n = n + 1", [])?;
            Ok::<(), waymark::BoxError>(())
        });
    Runner::builder(pg)
        .migration(MigrationDef::new(1, "laps", "")?, for_sqlite)
        .build()?;
    Ok(())
}
```
"#
)]
#![deny(missing_docs)]

pub use waymark_core::{
    BatchStep, BoxError, CancellationToken, Error, MemoryStore, Migration, MigrationContext,
    MigrationDef, MigrationId, MigrationState, MigrationStore, Mode,
};
pub use waymark_runner::{
    Background, BackgroundStatus, BlockingMigrationHandler, DEFAULT_LOCK_WAIT, Failure,
    FailureKind, FailurePolicy, Handler, HandlerKind, MigrationHandler, MigrationOutcome, Plan,
    PlannedAction, PlannedMigration, Progress, RunEvent, RunReport, Runner, RunnerBuilder,
    SkipReason, Started, Status, Subscription, UndeclaredPolicy,
};

/// The `time` crate of [`Migration::executed_at`], re-exported so that an
/// application formats it without a dependency of its own.
pub use waymark_core::time;

/// The errors a run reports, and the ones found in their sources.
///
/// [`Error`] is the one error type; a failed migration's
/// [`Error::Handler`] has as its source the handler's own error or one of
/// these, to downcast to.
pub mod error {
    pub use waymark_core::{
        BoxError, Cancelled, Error, HandlerPanicked, HandlerTimedOut, IncompatibleTable, Message,
        StalledBatch, UndeclaredMigration, error_chain,
    };
}

/// For backend authors: the storage contract, locks, the SQL shared by the
/// SQL backends, and helpers ([`waymark_core::store`]), and with the
/// `testkit` feature the conformance suites every backend runs.
///
/// A backend implements [`MigrationStore`] with
/// [`store::async_trait`] and runs the suites with
/// `waymark::store::store_conformance_tests!(fresh)` and, for a store with
/// transactions, `waymark::store::atomic_conformance_tests!(Store, fresh)`.
pub mod store {
    pub use waymark_core::async_trait;
    pub use waymark_core::run::new_context;
    pub use waymark_core::store::*;
    #[cfg(feature = "testkit")]
    pub use waymark_core::testkit;
    #[cfg(feature = "testkit")]
    pub use waymark_core::{atomic_conformance_tests, store_conformance_tests};
}

/// Plain-text tables for terminals, as the CLI and the demo print them.
pub mod render {
    pub use waymark_core::error_chain;
    pub use waymark_core::render::*;
}

/// The activity stream codes of the original application.
pub mod stream {
    pub use waymark_core::stream::*;
}

#[cfg(feature = "cli")]
pub mod cli;

/// The embedded SQLite store (feature `sqlite`, on by default), and the
/// `rusqlite` version its atomic handlers receive transactions of.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    pub use rusqlite;
    pub use waymark_sqlite::*;
}

/// The PostgreSQL store (feature `postgres`), and the `tokio_postgres` and
/// `deadpool_postgres` versions it is built on.
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use deadpool_postgres;
    pub use tokio_postgres;
    pub use waymark_postgres::*;
}

// The README's and the handler guide's examples are compiled as doctests.
#[cfg(all(doctest, feature = "sqlite", feature = "postgres"))]
#[doc = include_str!("../../../README.md")]
struct ReadmeExamples;

#[cfg(all(doctest, feature = "sqlite", feature = "postgres"))]
#[doc = include_str!("../../../docs/handlers.md")]
struct HandlerGuideExamples;
