//! Support for the reliability suite (`tests/tests/reliability_*.rs`):
//! seeds and soak knobs, the workload the crash and race helpers run, the
//! invariants checked after every kill, the helper processes, and the
//! operations of the differential model test.
//!
//! The workload is one set of migrations of every kind (plain, atomic,
//! batched atomic, plain batched, and a flaky one), implemented once per
//! backend with the real store crates and run by the real `Runner` in the
//! `reliability_helper` binary. What it leaves in the database is read
//! back as a backend-neutral [`Snapshot`](workload::Snapshot), whose checks
//! state the guarantees documented in `docs/reliability.md`.

pub mod knobs;
pub mod model;
pub mod process;
pub mod target;
pub mod workload;
