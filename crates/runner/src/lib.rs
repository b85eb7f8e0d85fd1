//! Runs [waymark](https://docs.rs/waymark) data migrations: exactly once
//! across processes, in ascending id order, with checkpoints, progress, a
//! report, and background migrations that run while the application serves.
//!
//! - [`Runner`] and its [`RunnerBuilder`]: declare migrations with their
//!   [`Handler`]s, then [`run`](Runner::run) them at start-up (an `Err` when
//!   a required one failed), or [`plan`](Runner::plan) what would run.
//! - [`Started`]: the [`RunReport`] of the required migrations and the
//!   [`Background`] handle of the others.
//! - [`RunEvent`]: what an [observer](RunnerBuilder::observer) hears, for
//!   progress bars (done, total, rate, ETA); [`Runner::subscribe`] adds
//!   one to a built runner (a `migrate run` command's progress bars).
//!
//! The runner works on any [`MigrationStore`](waymark_core::MigrationStore);
//! atomic handlers need a store with transactions
//! ([`AtomicStore`](waymark_core::store::AtomicStore)) and are typed by it.
#![deny(missing_docs)]

mod background;
mod builder;
mod declare;
mod drive;
mod engine;
mod events;
mod execute;
mod handler;
mod lock;
mod plan;
mod report;
mod runner;

pub use background::{Background, BackgroundStatus};
pub use builder::RunnerBuilder;
pub use declare::{DEFAULT_LOCK_WAIT, FailurePolicy, UndeclaredPolicy};
pub use events::{Progress, RunEvent, Subscription};
pub use handler::{BlockingMigrationHandler, Handler, HandlerKind, MigrationHandler};
pub use plan::{Plan, PlannedAction, PlannedMigration};
pub use report::{Failure, FailureKind, MigrationOutcome, RunReport, SkipReason, Status};
pub use runner::{Runner, Started};
