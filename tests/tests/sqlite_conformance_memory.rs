//! The whole conformance suite against an in-memory SQLite database;
//! `reopen` is a clone, the only other way to reach it.

async fn fresh() -> waymark_core::testkit::TestStore {
    waymark_tests::sqlite::fresh_memory_test_store().await
}

waymark_core::store_conformance_tests!(fresh);
