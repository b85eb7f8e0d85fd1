//! The real binary against a real PostgreSQL server.

mod support;

use support::waymark;

async fn fresh() -> (String, waymark_tests::pg::TestDatabase) {
    let db = waymark_tests::pg::fresh_database().await;
    (db.url().to_owned(), db)
}

cli_backend_tests!(fresh());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_and_table_are_configurable() {
    let (url, _db) = fresh().await;
    waymark(&url, &["--table", "data_migrations", "init"]).expect(0);
    waymark(
        &url,
        &["--table", "data_migrations", "register", "1", "one", ""],
    )
    .expect(0);
    waymark(&url, &["--table", "data_migrations", "pending"]).expect(3);
    // The default table was never created.
    let err = waymark(&url, &["status"]).expect(1).stderr;
    assert!(err.contains("waymark init"), "{err}");
}
