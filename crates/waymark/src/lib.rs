//! waymark tracks and runs **one-time data migrations** — backfills,
//! recomputations, clean-ups of existing rows — exactly once, in id order,
//! safely when the process is killed half-way and when many replicas start
//! at the same moment.
//!
//! This is the crate applications depend on. It re-exports
//! [`waymark_core`] (types, errors, the store and handler traits, the
//! in-memory [`MemoryStore`]) and [`waymark_runner`] (the [`Runner`]), and
//! each database store behind a feature flag:
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `sqlite` | yes | [`sqlite`]: `SqliteStore` on rusqlite with SQLite bundled (no system library needed) |
//! | `postgres` | no | [`postgres`]: `PostgresStore` on tokio-postgres and deadpool-postgres |
//!
//! `default-features = false` leaves the in-memory store only, for libraries
//! and for applications' unit tests.
#![deny(missing_docs)]

pub use waymark_core::*;
pub use waymark_runner::*;

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
