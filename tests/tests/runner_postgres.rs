//! The runner suite against `PostgresStore` on a throwaway PostgreSQL
//! cluster; `reopen` is a second store with its own pool on the same database.

waymark_tests::runner_suite!(waymark_tests::pg::fresh_test_store);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_deleted_by_hand_are_registered_and_run_again() {
    let db = waymark_tests::pg::fresh_database().await;
    let admin = db.admin().await;
    waymark_tests::runner_suite::rows_deleted_by_hand_are_registered_and_run_again(
        std::sync::Arc::new(db.store().await),
        async |id| {
            admin
                .execute("DELETE FROM migrations WHERE id = $1", &[&id])
                .await
                .unwrap();
        },
    )
    .await;
}
