//! The runner suite against `SqliteStore` on a database file; `reopen` is a
//! second store with its own connection on the same file.

waymark_tests::runner_suite!(waymark_tests::sqlite::fresh_test_store);
