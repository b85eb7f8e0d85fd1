//! Core of [waymark](https://docs.rs/waymark): one-time data migrations
//! (backfills, recomputations, clean-ups) run exactly once, in id order,
//! whatever happens to the process or how many replicas start at once.
//!
//! This crate holds what every part shares. At its root, what an
//! application touches:
//!
//! - [`MigrationDef`] and [`Migration`] (with its [`MigrationState`]): what
//!   an application declares and what a store tracks;
//! - [`MigrationContext`] and [`BatchStep`]: what handlers receive and return;
//! - [`Error`]: one error type with semantic variants;
//! - [`MemoryStore`]: the in-memory store, for tests.
//!
//! In modules, what the other parts need:
//!
//! - [`store`]: the storage contract for backend authors — the
//!   [`MigrationStore`] and [`AtomicStore`](store::AtomicStore) traits,
//!   locks, the shared SQL, helpers;
//! - [`render`]: plain-text tables for terminals;
//! - [`stream`]: the activity stream codes of the original application;
//! - [`run`]: what the runner builds contexts with;
//! - `testkit` (feature `testkit`): the conformance suites every backend runs.
#![deny(missing_docs)]

mod batch;
mod context;
mod definition;
mod error;
mod fnv;
mod id;
mod memory;
mod migration;
pub mod render;
pub mod store;
pub mod stream;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use batch::{BatchStep, Cancelled, StalledBatch};
pub use context::{MigrationContext, ProgressFn};
pub use definition::{
    MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS, MigrationDef, Mode, validate_description, validate_name,
};
pub use error::{
    BoxError, Error, HandlerPanicked, HandlerTimedOut, IncompatibleTable, Message,
    UndeclaredMigration, error_chain,
};
pub use id::MigrationId;
pub use memory::MemoryStore;
pub use migration::{Migration, MigrationState};
pub use store::MigrationStore;

/// What the runner builds handler contexts with; applications only receive them.
pub mod run {
    pub use crate::context::new_context;
}

/// Re-exported so that backend crates and applications name the same version.
pub use async_trait::async_trait;
pub use time;
pub use tokio_util::sync::CancellationToken;
