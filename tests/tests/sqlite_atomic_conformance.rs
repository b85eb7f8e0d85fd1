//! The whole atomic-handler conformance suite against SQLite: a fresh
//! database file per test, checked through connections of its own.

waymark_core::atomic_conformance_tests!(
    waymark_tests::sqlite::AtomicSqlite,
    waymark_tests::sqlite::fresh_atomic_db
);
