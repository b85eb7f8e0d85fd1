//! The runner suite against `PostgresStore` on a throwaway PostgreSQL
//! cluster; `reopen` is a second store with its own pool on the same database.

waymark_tests::runner_suite!(waymark_tests::pg::fresh_test_store);
