//! Waiting for the SQLite run lock's holder: one thread per lock file and
//! process blocks on it for every waiter, never one of the runtime's. In a
//! test binary of its own, so that no other test's waits add threads to
//! the count.

use std::time::Duration;

use waymark_core::store::{LockRequest, LockScope};
use waymark_core::{Error, MigrationStore};
use waymark_sqlite::SqliteStore;

fn run(wait: Duration) -> LockRequest {
    LockRequest::new(LockScope::Run, wait)
}

/// A replica that gives up waiting for the holder does not hold up its
/// runtime: it shuts down at once, not when the holder lets go. A later
/// wait in the same process still learns of the release, and the lock is
/// free once it is let go.
#[test]
fn giving_up_the_wait_does_not_hold_up_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let holder_runtime = tokio::runtime::Runtime::new().unwrap();
    let holder = holder_runtime.block_on(async {
        let store = SqliteStore::open(&path).await.unwrap();
        store.prepare().await.unwrap();
        store.lock(&run(Duration::from_secs(5))).await.unwrap()
    });

    let waiter_runtime = tokio::runtime::Runtime::new().unwrap();
    let result = waiter_runtime.block_on(async {
        let store = SqliteStore::open(&path).await.unwrap();
        store.lock_or_wait(&run(Duration::from_millis(100))).await
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
    assert!(
        shut_down.is_ok(),
        "the waiter's runtime hung until the holder let go"
    );

    let again = path.clone();
    let (asking, asked) = std::sync::mpsc::channel();
    let later = std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let store = SqliteStore::open(&again).await.unwrap();
            asking.send(()).unwrap();
            store
                .lock_or_wait(&run(Duration::from_secs(30)))
                .await
                .map(|guard| guard.is_some())
        })
    });
    asked.recv().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Both waits of this process listen to one thread.
    assert_eq!(lock_wait_threads(), 1);
    drop(holder);
    assert!(
        matches!(later.join().unwrap(), Ok(false)),
        "a later wait learns that the holder let go, without the lock"
    );
    holder_runtime.block_on(async {
        let store = SqliteStore::open(&path).await.unwrap();
        drop(store.lock(&run(Duration::from_secs(5))).await.unwrap());
    });
}

/// The threads of this process blocking on a lock file for its waiters
/// (their names cut to the kernel's 15 characters).
fn lock_wait_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "waymark-lock-wa")
        .count()
}
