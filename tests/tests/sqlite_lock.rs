//! The run lock across processes: a SIGKILLed holder frees it at once.

use std::time::Duration;

use waymark_core::{Error, MigrationStore};
use waymark_sqlite::{SqliteConfig, SqliteStore};
use waymark_tests::sqlite::{Helper, db_path, fresh_store};

const HELPER: &str = env!("CARGO_BIN_EXE_sqlite_helper");

/// Another process takes the lock; this one cannot; the holder is
/// SIGKILLed; the lock is free again within one second, with nothing to
/// clean up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_holder_frees_the_lock_at_once() {
    let (store, dir) = fresh_store().await;
    store.prepare().await.unwrap();
    let path = db_path(&dir);

    let mut holder = Helper::spawn(HELPER, [std::path::Path::new("hold-lock"), &path]);
    tokio::task::block_in_place(|| holder.wait_for("locked", Duration::from_secs(30)));

    let result = store.lock(Duration::from_millis(300)).await;
    assert!(
        matches!(result, Err(Error::LockTimeout { .. })),
        "{result:?}"
    );
    let other_instance = SqliteStore::open(&path).await.unwrap();
    assert!(other_instance.lock(Duration::ZERO).await.is_err());

    tokio::task::block_in_place(|| holder.kill());
    let _guard = store
        .lock(Duration::from_secs(1))
        .await
        .expect("the lock is free within a second of the SIGKILL");
}

/// The reverse: while this process holds the lock, another cannot take it
/// and gives up with a timeout; after the guard drops it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_waits_for_this_ones_lock() {
    let (store, dir) = fresh_store().await;
    let path = db_path(&dir);
    let guard = store.lock(Duration::from_secs(5)).await.unwrap();

    let mut contender = Helper::spawn(HELPER, [std::path::Path::new("hold-lock"), &path]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(guard);
    tokio::task::block_in_place(|| contender.wait_for("locked", Duration::from_secs(30)));
    assert!(store.lock(Duration::ZERO).await.is_err());
    tokio::task::block_in_place(|| contender.kill());
    let _guard = store.lock(Duration::from_secs(1)).await.unwrap();
}

/// One lock per tracking table: two tables in one file run independently.
#[tokio::test]
async fn tables_in_one_file_have_their_own_locks() {
    let (store, dir) = fresh_store().await;
    let other = SqliteStore::open_with(SqliteConfig::file(db_path(&dir)).table("other_migrations"))
        .await
        .unwrap();
    let _first = store.lock(Duration::ZERO).await.unwrap();
    let _second = other.lock(Duration::ZERO).await.unwrap();
    assert!(store.lock(Duration::ZERO).await.is_err());
}

/// In-memory databases are private to their store and its clones, and so
/// is their lock.
#[tokio::test]
async fn in_memory_locks_are_per_database() {
    let a = SqliteStore::open_in_memory().await.unwrap();
    let b = SqliteStore::open_in_memory().await.unwrap();
    let _held = a.lock(Duration::ZERO).await.unwrap();
    assert!(a.clone().lock(Duration::ZERO).await.is_err());
    let _independent = b.lock(Duration::ZERO).await.unwrap();
}

/// One database reached through a symlink, or one table named in another
/// case (SQLite ignores it), is still one lock.
#[tokio::test]
async fn every_spelling_of_one_table_shares_one_lock() {
    let (store, dir) = fresh_store().await;
    store.prepare().await.unwrap();
    let path = db_path(&dir);
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let through_link = SqliteStore::open(&link).await.unwrap();
    let other_case = SqliteStore::open_with(SqliteConfig::file(&path).table("MIGRATIONS"))
        .await
        .unwrap();

    let guard = store.lock(Duration::from_secs(5)).await.unwrap();
    for other in [&through_link, &other_case] {
        let result = other.lock(Duration::ZERO).await;
        assert!(
            matches!(result, Err(Error::LockTimeout { .. })),
            "{result:?}"
        );
        let result = other.lock_or_wait(Duration::from_millis(50)).await;
        assert!(
            matches!(result, Err(Error::LockTimeout { .. })),
            "{result:?}"
        );
    }
    drop(guard);
    assert!(through_link.lock(Duration::ZERO).await.is_ok());
}

/// A replica that gives up waiting for the holder leaves nothing running:
/// its runtime shuts down at once, not when the holder lets go.
#[test]
fn giving_up_the_wait_leaves_no_blocked_thread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let holder_runtime = tokio::runtime::Runtime::new().unwrap();
    let holder = holder_runtime.block_on(async {
        let store = SqliteStore::open(&path).await.unwrap();
        store.prepare().await.unwrap();
        store.lock(Duration::from_secs(5)).await.unwrap()
    });

    let waiter_runtime = tokio::runtime::Runtime::new().unwrap();
    let result = waiter_runtime.block_on(async {
        let store = SqliteStore::open(&path).await.unwrap();
        store.lock_or_wait(Duration::from_millis(100)).await
    });
    assert!(
        matches!(result, Err(Error::LockTimeout { .. })),
        "{result:?}"
    );
    // With the holder still holding, shutting the waiter's runtime down
    // must not wait for it (a blocked flock thread would).
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(waiter_runtime);
        let _ = done.send(());
    });
    let shut_down = finished.recv_timeout(Duration::from_secs(30));
    drop(holder);
    assert!(
        shut_down.is_ok(),
        "the waiter's runtime hung until the holder let go"
    );
}
