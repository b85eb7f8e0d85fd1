//! SQLite store for waymark: embedded, durable, safe across processes
#![deny(missing_docs)]
