//! The run and background locks: sidecar files across processes (a
//! SIGKILLed holder frees its lock at once), who holds them (`locks()`),
//! and one lock per database, table and scope however they are spelled.

use std::path::Path;
use std::time::Duration;

use waymark_core::store::{LockHolder, LockInfo, LockRequest, LockScope};
use waymark_core::{Error, MigrationStore};
use waymark_sqlite::{SqliteConfig, SqliteStore};
use waymark_tests::sqlite::{DB_FILE, Helper, db_path, fresh_store};

const HELPER: &str = env!("CARGO_BIN_EXE_sqlite_helper");

/// A hang guard, not a measurement.
const NO_HANG: Duration = Duration::from_secs(30);

fn run(wait: Duration) -> LockRequest {
    LockRequest::new(LockScope::Run, wait)
}

fn background(wait: Duration) -> LockRequest {
    LockRequest::new(LockScope::Background, wait)
}

fn hold(path: &Path, scope: &str) -> Helper {
    let mut holder = Helper::spawn(HELPER, [Path::new("hold-lock"), path, Path::new(scope)]);
    tokio::task::block_in_place(|| holder.wait_for("locked", NO_HANG));
    holder
}

fn assert_timeout<T: std::fmt::Debug>(result: Result<T, Error>) {
    assert!(
        matches!(result, Err(Error::LockTimeout { .. })),
        "{result:?}"
    );
}

/// The lock held in `scope`, as `locks()` reports it.
fn held(locks: &[LockInfo], scope: LockScope) -> &LockInfo {
    locks
        .iter()
        .find(|info| info.scope == scope)
        .unwrap_or_else(|| panic!("no {scope} lock in {locks:?}"))
}

/// Another process takes the lock; this one cannot; the holder is
/// SIGKILLed; the lock is free again within one second, with nothing to
/// clean up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_holder_frees_the_lock_at_once() {
    let (store, dir) = fresh_store().await;
    store.prepare().await.unwrap();
    let path = db_path(&dir);

    let holder = hold(&path, "run");
    assert_timeout(store.lock(&run(Duration::from_millis(300))).await);
    let other_instance = SqliteStore::open(&path).await.unwrap();
    assert_timeout(other_instance.lock(&run(Duration::ZERO)).await);

    tokio::task::block_in_place(|| holder.kill());
    let _guard = store
        .lock(&run(Duration::from_secs(1)))
        .await
        .expect("the lock is free within a second of the SIGKILL");
}

/// The reverse: while this process holds the lock, another cannot take it
/// and waits; after the guard drops it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_waits_for_this_ones_lock() {
    let (store, dir) = fresh_store().await;
    let path = db_path(&dir);
    let guard = store.lock(&run(Duration::from_secs(5))).await.unwrap();

    let mut contender = Helper::spawn(HELPER, [Path::new("hold-lock"), &path]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(guard);
    tokio::task::block_in_place(|| contender.wait_for("locked", NO_HANG));
    assert_timeout(store.lock(&run(Duration::ZERO)).await);
    tokio::task::block_in_place(|| contender.kill());
    let _guard = store.lock(&run(Duration::from_secs(1))).await.unwrap();
}

/// `locks()` reads who holds each lock from its sidecar file: the other
/// process's host, pid and application, since when, and the file. Once
/// the holder is gone, nothing is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_names_the_holding_process() {
    let (store, dir) = fresh_store().await;
    store.prepare().await.unwrap();
    let path = db_path(&dir);
    let none = store.locks().await.unwrap();
    assert!(none.is_empty(), "{none:?}");

    let holder = hold(&path, "run");
    let locks = store.locks().await.unwrap();
    assert_eq!(locks.len(), 1, "{locks:?}");
    let info = held(&locks, LockScope::Run);
    let who = info.holder.as_ref().expect("the holder is recorded");
    assert_eq!(who.pid, holder.pid());
    assert_eq!(who.application, "sqlite_helper");
    assert_eq!(who.host, LockHolder::this_process().host);
    assert!(info.since.is_some(), "{info:?}");
    let sidecar = dir.path().join(format!("{DB_FILE}-migrations.lock"));
    assert!(sidecar.is_file(), "{}", sidecar.display());
    let sidecar = std::fs::canonicalize(&sidecar).unwrap();
    let detail = info.detail.as_deref().unwrap_or_default();
    assert!(detail.contains(&sidecar.display().to_string()), "{info:?}");

    tokio::task::block_in_place(|| holder.kill());
    let after = store.locks().await.unwrap();
    assert!(
        after.is_empty(),
        "a dead holder holds nothing, whatever its file still says: {after:?}"
    );
}

/// The background lock is a file of its own: another process holding it
/// leaves the run lock free, and `locks()` tells the two apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_lock_is_separate_across_processes() {
    let (store, dir) = fresh_store().await;
    store.prepare().await.unwrap();
    let path = db_path(&dir);

    let holder = hold(&path, "background");
    assert!(
        dir.path()
            .join(format!("{DB_FILE}-migrations-background.lock"))
            .is_file()
    );
    assert_timeout(store.lock(&background(Duration::from_millis(200))).await);
    assert_timeout(
        store
            .lock_or_wait(&background(Duration::from_millis(200)))
            .await,
    );
    let run_guard = store
        .lock(&run(Duration::ZERO))
        .await
        .expect("the run lock is free while another process holds the background lock");
    let locks = store.locks().await.unwrap();
    assert_eq!(locks.len(), 2, "{locks:?}");
    let theirs = held(&locks, LockScope::Background).holder.clone().unwrap();
    let ours = held(&locks, LockScope::Run).holder.clone().unwrap();
    assert_eq!(theirs.pid, holder.pid());
    assert_eq!(ours.pid, std::process::id());
    drop(run_guard);

    tokio::task::block_in_place(|| holder.kill());
    let _guard = store
        .lock(&background(Duration::from_secs(1)))
        .await
        .expect("the background lock is free within a second of the SIGKILL");
}

/// A request on behalf of a named application is recorded under that name.
#[tokio::test]
async fn locks_records_the_requested_holder() {
    let (store, _dir) = fresh_store().await;
    let _guard = store
        .lock(&run(Duration::ZERO).with_holder(LockHolder::named("billing")))
        .await
        .unwrap();
    let other = SqliteStore::open(store.path().unwrap()).await.unwrap();
    let locks = other.locks().await.unwrap();
    let who = held(&locks, LockScope::Run).holder.clone().unwrap();
    assert_eq!(
        (who.application.as_str(), who.pid),
        ("billing", std::process::id())
    );
}

/// Asking who holds the locks changes nothing on disk: no lock file is
/// created for it.
#[tokio::test]
async fn locks_creates_no_file() {
    let (store, dir) = fresh_store().await;
    store.prepare().await.unwrap();
    let before: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let none = store.locks().await.unwrap();
    assert!(none.is_empty(), "{none:?}");
    let after: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before.len(), after.len(), "{after:?}");
}

/// One lock per tracking table: two tables in one file run independently.
#[tokio::test]
async fn tables_in_one_file_have_their_own_locks() {
    let (store, dir) = fresh_store().await;
    let other = SqliteStore::open_with(SqliteConfig::file(db_path(&dir)).table("other_migrations"))
        .await
        .unwrap();
    let _first = store.lock(&run(Duration::ZERO)).await.unwrap();
    let _second = other.lock(&run(Duration::ZERO)).await.unwrap();
    assert_timeout(store.lock(&run(Duration::ZERO)).await);
}

/// In-memory databases are private to their store and its clones, and so
/// are their locks, which report their holder too.
#[tokio::test]
async fn in_memory_locks_are_per_database() {
    let a = SqliteStore::open_in_memory().await.unwrap();
    let b = SqliteStore::open_in_memory().await.unwrap();
    let _held = a.lock(&run(Duration::ZERO)).await.unwrap();
    assert_timeout(a.clone().lock(&run(Duration::ZERO)).await);
    let _independent = b.lock(&run(Duration::ZERO)).await.unwrap();
    let _background = a.lock(&background(Duration::ZERO)).await.unwrap();
    assert_timeout(a.clone().lock(&background(Duration::ZERO)).await);
    let locks = a.clone().locks().await.unwrap();
    assert_eq!(locks.len(), 2, "{locks:?}");
    let who = held(&locks, LockScope::Run).holder.clone().unwrap();
    assert_eq!(who.pid, std::process::id());
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

    let guard = store.lock(&run(Duration::from_secs(5))).await.unwrap();
    let background_guard = store
        .lock(&background(Duration::from_secs(5)))
        .await
        .unwrap();
    for other in [&through_link, &other_case] {
        assert_timeout(other.lock(&run(Duration::ZERO)).await);
        assert_timeout(other.lock_or_wait(&run(Duration::from_millis(50))).await);
        assert_timeout(other.lock(&background(Duration::ZERO)).await);
        assert_eq!(other.locks().await.unwrap().len(), 2);
    }
    drop((guard, background_guard));
    assert!(through_link.lock(&run(Duration::ZERO)).await.is_ok());
    assert!(other_case.lock(&background(Duration::ZERO)).await.is_ok());
}
