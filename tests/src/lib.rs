//! Shared support for the cross-crate tests: the throwaway PostgreSQL
//! cluster, fresh SQLite files, and the runner suite every backend runs.

pub mod examples;
pub mod fixture;
pub mod pg;
pub mod reliability;
pub mod runner_suite;
pub mod sqlite;
