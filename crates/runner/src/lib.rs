//! Runs [waymark](https://docs.rs/waymark) data migrations: exactly once
//! across processes, in ascending id order, with checkpoints, progress and a
//! report.
//!
//! - [`Runner`] and its [`RunnerBuilder`]: declare migrations with their
//!   handlers, then [`run`](Runner::run) them at start-up (an `Err` when
//!   anything failed), [`run_and_report`](Runner::run_and_report) them from
//!   a tool that shows every outcome, or [`plan`](Runner::plan) what would run.
//! - [`RunReport`]: one outcome per pending migration; prints as a table.
//! - [`RunEvent`]: what an [observer](RunnerBuilder::observer) hears, for
//!   progress bars (done, total, rate, ETA).
//! - [`batched`] and [`batched_blocking`]: resumable batched handlers on any
//!   store (the store crates offer atomic ones).
//!
//! The runner works on any [`MigrationStore`](waymark_core::MigrationStore)
//! and never names a backend.
#![deny(missing_docs)]

mod batched;
mod builder;
mod events;
mod execute;
mod human;
mod lock;
mod plan;
mod report;
mod runner;

pub use batched::{batched, batched_blocking};
pub use builder::{DEFAULT_LOCK_WAIT, FailurePolicy, MissingHandler, RunnerBuilder};
pub use events::{Progress, RunEvent};
pub use plan::{HandlerKind, Plan, PlannedAction, PlannedMigration};
pub use report::{Failure, FailureKind, MigrationOutcome, RunReport, SkipReason, Status};
pub use runner::Runner;
