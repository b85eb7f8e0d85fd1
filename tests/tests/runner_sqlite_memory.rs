//! The runner suite against an in-memory `SqliteStore`.

waymark_tests::runner_suite!(waymark_tests::sqlite::fresh_memory_test_store);
