//! Core of [waymark](https://docs.rs/waymark): one-time data migrations
//! (backfills, recomputations, clean-ups) run exactly once, in id order,
//! whatever happens to the process or how many replicas start at once.
//!
//! This crate holds what every part shares:
//!
//! - [`MigrationDef`] and [`Migration`]: what an application declares and
//!   what a store tracks;
//! - [`MigrationStore`]: the storage contract, with the in-memory
//!   [`MemoryStore`]; the SQLite and PostgreSQL stores live in their own crates;
//! - [`MigrationHandler`], [`BlockingMigrationHandler`], [`Handler`] and
//!   [`MigrationContext`]: the code that changes the data;
//! - [`Error`]: one error type with semantic variants;
//! - [`StreamType`]: the activity stream codes of the original application.
//!
//! With the `testkit` feature, [`testkit`] is the conformance suite every
//! backend runs.
#![deny(missing_docs)]

mod batch;
mod context;
mod definition;
mod error;
mod handler;
mod id;
mod memory;
mod migration;
mod store;
mod stream;
mod table;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use batch::{BatchStep, Cancelled, StalledBatch, drive_batches, drive_batches_blocking};
pub use context::{Cancellation, CompletionFlag, MigrationContext, ProgressFn};
pub use definition::{
    MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS, MigrationDef, validate_description, validate_identifier,
    validate_name,
};
pub use error::{BoxError, Error, IncompatibleTable, error_chain};
pub use handler::{BlockingMigrationHandler, Handler, MigrationHandler};
pub use id::MigrationId;
pub use memory::MemoryStore;
pub use migration::{Migration, now_utc};
pub use store::{HeldLock, LockGuard, MigrationStore, check_unique_ids, name_conflict};
pub use stream::StreamType;
pub use table::{Align, StatusTable, TextTable, one_line, render_table, state};

/// Re-exported so that backend crates and applications name the same version.
pub use async_trait::async_trait;
pub use time;
