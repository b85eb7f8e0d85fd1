//! The runner suite against `MemoryStore`.

waymark_tests::runner_suite!(waymark_tests::runner_suite::fresh_memory_store);
