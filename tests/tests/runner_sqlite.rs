//! The runner suite against `SqliteStore` on a database file; `reopen` is a
//! second store with its own connection on the same file.

waymark_tests::runner_suite!(waymark_tests::sqlite::fresh_test_store);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_deleted_by_hand_are_registered_and_run_again() {
    let (store, dir) = waymark_tests::sqlite::fresh_store().await;
    let conn = waymark_tests::sqlite::raw(&waymark_tests::sqlite::db_path(&dir));
    waymark_tests::runner_suite::rows_deleted_by_hand_are_registered_and_run_again(
        std::sync::Arc::new(store),
        async |id| {
            conn.execute("DELETE FROM migrations WHERE id = ?1", [id])
                .unwrap();
        },
    )
    .await;
}
