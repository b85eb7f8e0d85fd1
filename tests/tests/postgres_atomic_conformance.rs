//! The whole atomic-handler conformance suite against PostgreSQL: one
//! database per test on the throwaway cluster (or `WAYMARK_TEST_DATABASE_URL`).

waymark_core::atomic_conformance_tests!(
    waymark_tests::pg::AtomicPostgres,
    waymark_tests::pg::fresh_atomic_db
);
