//! PostgreSQL store for waymark: pooled, advisory-locked
#![deny(missing_docs)]
