//! Runs waymark migrations: locking, ordered dispatch, checkpoints, progress, report
#![deny(missing_docs)]
