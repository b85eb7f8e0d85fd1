//! How the store opens and uses its database: WAL with synchronous=FULL,
//! the pending index, closing cleanly, and waiting off the async runtime.

use std::sync::{Arc, Mutex};

use waymark_core::{MigrationContext, MigrationDef, MigrationStore};
use waymark_sqlite::{SqliteConfig, SqliteStore};
use waymark_tests::sqlite::{db_path, fresh_store, raw, run_handler};

async fn prepared() -> (SqliteStore, tempfile::TempDir) {
    let (store, dir) = fresh_store().await;
    store.prepare().await.unwrap();
    store
        .register(&[MigrationDef::new(1, "m1", "").unwrap()])
        .await
        .unwrap();
    (store, dir)
}

/// The file is in WAL mode, and the store's connection (seen through an
/// atomic handler's transaction) syncs every commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_uses_wal_and_full_sync() {
    let (store, dir) = prepared().await;
    let mode: String = raw(&db_path(&dir))
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let seen = Arc::new(Mutex::new(None));
    let sink = Arc::clone(&seen);
    let handler = store.atomic(move |tx, _ctx: &MigrationContext<()>| {
        let level: i64 = tx.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        *sink.lock().unwrap() = Some(level);
        Ok(())
    });
    run_handler(&store, (), 1, handler, None)
        .await
        .result
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(2), "2 is FULL");
}

/// The pending query and `is_settled` use the partial index, not a scan.
#[tokio::test]
async fn the_pending_query_uses_its_index() {
    let (_store, dir) = prepared().await;
    let conn = raw(&db_path(&dir));
    let plan: Vec<String> = conn
        .prepare("EXPLAIN QUERY PLAN SELECT id FROM migrations WHERE executed = 0 ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        plan.iter().any(|step| step.contains("migrations_pending")),
        "{plan:?}"
    );
}

/// `close` folds the WAL back and removes the side files, so the database
/// is one self-contained file again; closing a clone keeps the others open.
#[tokio::test]
async fn close_leaves_a_single_clean_file() {
    let (store, dir) = prepared().await;
    let clone = store.clone();
    clone.close().await.unwrap();
    assert_eq!(
        store.list().await.unwrap().len(),
        1,
        "other clones still work"
    );
    store.close().await.unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [waymark_tests::sqlite::DB_FILE]);
}

/// While the connection is busy (an atomic handler holds it), a store call
/// waits on a blocking thread: the runtime's only thread keeps running
/// other tasks. Synchronised by channels, not by timing.
#[tokio::test(flavor = "current_thread")]
async fn waiting_store_calls_leave_the_runtime_free() {
    let (store, _dir) = prepared().await;
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let entered_tx = Mutex::new(entered_tx);
    let release_rx = Mutex::new(release_rx);
    let handler = store.atomic(move |_tx, _ctx: &MigrationContext<()>| {
        entered_tx.lock().unwrap().send(())?;
        release_rx.lock().unwrap().recv()?;
        Ok(())
    });
    let running = {
        let store = store.clone();
        tokio::spawn(async move { run_handler(&store, (), 1, handler, None).await })
    };
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
        .await
        .unwrap();

    let listing = {
        let store = store.clone();
        tokio::spawn(async move { store.list().await })
    };
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(tokio::spawn(async { 42 }).await.unwrap(), 42);
    assert!(!listing.is_finished(), "the call waits for the handler");

    release_tx.send(()).unwrap();
    running.await.unwrap().result.unwrap();
    assert!(listing.await.unwrap().unwrap()[0].executed);
}

/// An in-memory database can be made read-only too: writes fail clearly.
#[tokio::test]
async fn a_read_only_in_memory_database_refuses_writes() {
    let store = SqliteStore::open_with(SqliteConfig::in_memory().read_only(true))
        .await
        .unwrap();
    assert!(store.is_read_only());
    let err = store.prepare().await.unwrap_err();
    assert!(
        waymark_core::error_chain(&err).contains("read-only"),
        "{err}"
    );
}
