//! Benchmarks of waymark, each beside a baseline measured in the same run
//! (and, for start-up, beside refinery as a peer).
//!
//! `cargo bench -p waymark-bench` runs them all; `-- --quick` (or
//! `WAYMARK_BENCH_QUICK=1`) runs small sizes in well under a minute, for CI.
//! Names given after `--` pick benchmarks: `noop`, `pending`, `backfill`,
//! `contended`, `seed`, `growth`, and `sqlite` or `postgres` for one backend.
//!
//! Every figure is a median over many interleaved samples: the variants of a
//! figure take turns, round after round, so that noise from the machine
//! (other processes, CPU frequency) falls on all of them alike. PostgreSQL
//! is the throwaway cluster of `waymark-tests` (loopback TCP, `fsync` off);
//! SQLite databases are files in the system's temporary directory, with
//! waymark's own durability settings (WAL, `synchronous = FULL`) on both
//! sides of each comparison.
#![deny(missing_docs)]

pub mod backfill;
pub mod contended;
pub mod growth;
pub mod hr;
pub mod memory;
pub mod noop;
pub mod pending;
pub mod report;
pub mod scale;
pub mod seed_shape;
pub mod timing;

/// The error type of the benchmarks: anything, with its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub use report::{Figure, Target};
pub use scale::{Scale, Selection};
