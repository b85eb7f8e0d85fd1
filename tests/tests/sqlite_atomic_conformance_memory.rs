//! The whole atomic-handler conformance suite against an in-memory SQLite
//! database, checked through the store's own connection.

waymark_core::atomic_conformance_tests!(
    waymark_tests::sqlite::AtomicSqlite,
    waymark_tests::sqlite::fresh_memory_atomic_db
);
