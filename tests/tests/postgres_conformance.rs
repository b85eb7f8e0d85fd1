//! The whole store conformance suite against PostgreSQL: one database per
//! test on the throwaway cluster (or `WAYMARK_TEST_DATABASE_URL`).

waymark_core::store_conformance_tests!(waymark_tests::pg::fresh_test_store);
