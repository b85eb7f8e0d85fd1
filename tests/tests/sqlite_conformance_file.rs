//! The whole conformance suite against a SQLite file; `reopen` opens a
//! second, independent store on the same file.

async fn fresh() -> waymark_core::testkit::TestStore {
    waymark_tests::sqlite::fresh_test_store().await
}

waymark_core::store_conformance_tests!(fresh);
