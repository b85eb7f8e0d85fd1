//! How the store opens and uses its database: opening and reading change
//! nothing, `prepare` switches a new database to WAL, the store's
//! connection syncs every commit, the pending index, closing cleanly, waiting off the async
//! runtime, and opening without a runtime.

use std::sync::{Arc, Mutex};

use waymark_core::store::AtomicStore;
use waymark_core::{Error, MigrationContext, MigrationDef, MigrationId, MigrationStore};
use waymark_runner::Runner;
use waymark_sqlite::rusqlite::Transaction;
use waymark_sqlite::{SqliteConfig, SqliteStore};
use waymark_tests::sqlite::{atomic_fn, context_of, db_path, fresh_store, journal_mode, raw};

fn id(raw: i64) -> MigrationId {
    MigrationId::new(raw).unwrap()
}

async fn prepared() -> (SqliteStore, tempfile::TempDir) {
    let (store, dir) = fresh_store().await;
    store.prepare().await.unwrap();
    store
        .register(&[MigrationDef::new(1, "m1", "").unwrap()])
        .await
        .unwrap();
    (store, dir)
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Opening a database and every read command leave it as it was: no
/// table, no WAL switch, not a byte changed. Only `prepare` changes it, and
/// an application's existing database keeps its journal mode.
#[tokio::test]
async fn opening_and_reading_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    raw(&path)
        .execute_batch(
            "PRAGMA journal_mode = DELETE;
             CREATE TABLE laps (id INTEGER PRIMARY KEY, path TEXT);
             INSERT INTO laps (path) VALUES ('/a');",
        )
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();

    let store = SqliteStore::open(&path).await.unwrap();
    for result in [store.list().await, store.pending().await] {
        assert!(
            matches!(result, Err(Error::NotInitialised { .. })),
            "{result:?}"
        );
    }
    let result = store.get(id(1)).await;
    assert!(
        matches!(result, Err(Error::NotInitialised { .. })),
        "{result:?}"
    );
    assert!(!store.is_settled("anything").await.unwrap());
    drop(store);

    assert_eq!(journal_mode(&path), "delete");
    assert_eq!(std::fs::read(&path).unwrap(), before, "byte for byte");
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        modified
    );
    assert_eq!(entries(dir.path()), ["app.db"], "no side file left");

    // The application's database keeps the journal mode it chose, even
    // once prepared: switching it would outlive waymark.
    let store = SqliteStore::open(&path).await.unwrap();
    store.prepare().await.unwrap();
    assert_eq!(journal_mode(&path), "delete");
    assert!(store.list().await.unwrap().is_empty());
}

/// A database that `prepare` creates from nothing is switched to WAL
/// (opening it is not enough), and the store's connection (seen through an
/// atomic handler's transaction) syncs every commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_database_uses_wal_and_full_sync() {
    let (store, dir) = fresh_store().await;
    let _ = store.list().await;
    assert_eq!(
        journal_mode(&db_path(&dir)),
        "delete",
        "opened, not prepared"
    );
    store.prepare().await.unwrap();
    store
        .register(&[MigrationDef::new(1, "m1", "").unwrap()])
        .await
        .unwrap();
    assert_eq!(journal_mode(&db_path(&dir)), "wal");
    let seen = Arc::new(Mutex::new(None));
    let sink = Arc::clone(&seen);
    let work = atomic_fn(move |tx, _ctx: &MigrationContext<()>| {
        let level: i64 = tx.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        *sink.lock().unwrap() = Some(level);
        Ok(())
    });
    store
        .execute_atomic(work, context_of(&store, 1).await)
        .await
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
    assert_eq!(entries(dir.path()), [waymark_tests::sqlite::DB_FILE]);
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
    let work = atomic_fn(move |_tx, _ctx: &MigrationContext<()>| {
        entered_tx.lock().unwrap().send(())?;
        release_rx.lock().unwrap().recv()?;
        Ok(())
    });
    let running = tokio::spawn(store.execute_atomic(work, context_of(&store, 1).await));
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
        .await
        .unwrap();

    // A write needs the connection the handler holds (reads go to the
    // read connection and do not wait at all).
    let registering = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .register(&[MigrationDef::new(2, "two", "").unwrap()])
                .await
        })
    };
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(tokio::spawn(async { 42 }).await.unwrap(), 42);
    assert!(
        !registering.is_finished(),
        "the write waits for the handler"
    );
    assert!(
        !store.list().await.unwrap()[0].executed,
        "a read does not wait"
    );

    release_tx.send(()).unwrap();
    running.await.unwrap().unwrap();
    registering.await.unwrap().unwrap();
    assert!(store.get(id(1)).await.unwrap().executed);
    assert!(!store.get(id(2)).await.unwrap().executed);
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

/// Code without an async runtime (a script, a desktop tool) opens the store
/// with the blocking constructors and runs its migrations, atomic ones
/// included, with `run_blocking`.
#[test]
fn the_store_opens_and_runs_without_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    raw(&path)
        .execute_batch("CREATE TABLE laps (path TEXT); INSERT INTO laps VALUES ('/a');")
        .unwrap();
    let store = SqliteStore::open_blocking(&path).unwrap();
    assert_eq!(store.path(), Some(path.as_path()));
    assert_eq!(store.table(), "migrations");
    let runner = Runner::<(), SqliteStore>::builder(store.clone())
        .atomic(
            MigrationDef::new(1, "prefix_paths", "").unwrap(),
            |tx: &Transaction<'_>, _ctx: &MigrationContext<()>| {
                tx.execute("UPDATE laps SET path = '/tracks' || path", [])?;
                Ok::<(), waymark_core::BoxError>(())
            },
        )
        .build()
        .unwrap();
    let report = runner.run_blocking(()).unwrap();
    assert_eq!(report.executed().count(), 1, "{report}");
    let path_now: String = raw(&path)
        .query_row("SELECT path FROM laps", [], |r| r.get(0))
        .unwrap();
    assert_eq!(path_now, "/tracks/a");
    assert!(runner.run_blocking(()).unwrap().was_settled());

    let custom =
        SqliteStore::open_with_blocking(SqliteConfig::file(&path).table("other_migrations"))
            .unwrap();
    assert_eq!(custom.table(), "other_migrations");
    let memory = SqliteStore::open_with_blocking(SqliteConfig::in_memory()).unwrap();
    assert_eq!(memory.path(), None);
    // Opened without a runtime, used inside one.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        memory.prepare().await.unwrap();
        assert!(memory.list().await.unwrap().is_empty());
        let result = custom.list().await;
        assert!(
            matches!(result, Err(Error::NotInitialised { .. })),
            "{result:?}"
        );
    });
}

/// A store over the application's own connection tracks that database,
/// runs atomic handlers on it, and lets the application reach its tables
/// through `interact`; a config naming another database is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_over_the_apps_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let conn = waymark_sqlite::rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE laps (id INTEGER PRIMARY KEY, path TEXT NOT NULL); INSERT INTO laps (path) VALUES ('/a');")
        .unwrap();
    let store = SqliteStore::from_connection(conn).unwrap();
    assert_eq!(
        std::fs::canonicalize(store.path().unwrap()).unwrap(),
        std::fs::canonicalize(&path).unwrap()
    );
    let runner = Runner::<(), SqliteStore>::builder(store.clone())
        .atomic(
            MigrationDef::new(1, "prefix", "").unwrap(),
            |tx, _ctx: &MigrationContext<()>| {
                tx.execute("UPDATE laps SET path = '/tracks' || path", [])?;
                Ok::<(), waymark_core::BoxError>(())
            },
        )
        .build()
        .unwrap();
    runner.run(()).await.unwrap();
    let laps: String = store
        .interact(|conn| conn.query_row("SELECT path FROM laps", [], |row| row.get(0)))
        .await
        .unwrap();
    assert_eq!(laps, "/tracks/a");
    assert!(store.get(id(1)).await.unwrap().executed);
    // A transaction the closure leaves open is rolled back and refused.
    let left_open = store
        .interact(|conn| conn.execute_batch("BEGIN; UPDATE laps SET path = 'x'"))
        .await;
    assert!(
        matches!(
            left_open,
            Err(Error::Invalid {
                field: "interact",
                ..
            })
        ),
        "{left_open:?}"
    );
    assert_eq!(
        raw(&path)
            .query_row("SELECT path FROM laps", [], |row| row.get::<_, String>(0))
            .unwrap(),
        "/tracks/a"
    );

    let conn = waymark_sqlite::rusqlite::Connection::open(&path).unwrap();
    let other = SqliteConfig::file(dir.path().join("other.db"));
    let refused = SqliteStore::from_connection_with(conn, other);
    assert!(
        matches!(refused, Err(Error::Invalid { field: "path", .. })),
        "{refused:?}"
    );
    assert!(!dir.path().join("other.db").exists());
}
