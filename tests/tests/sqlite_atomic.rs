//! Atomic and batched atomic handlers: data and bookkeeping commit together,
//! errors and panics roll both back, batches resume from their checkpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use waymark_core::{
    BatchStep, BoxError, Cancellation, Cancelled, Migration, MigrationContext, MigrationDef,
    MigrationId, MigrationStore, StalledBatch,
};
use waymark_sqlite::SqliteStore;
use waymark_sqlite::rusqlite::{Transaction, params};
use waymark_tests::sqlite::{Outcome, db_path, fresh_store, raw, run_handler, run_handler_on_row};

/// A hang guard, not a measurement.
const NO_HANG: Duration = Duration::from_secs(30);

fn id(raw: i64) -> MigrationId {
    MigrationId::new(raw).unwrap()
}

/// A prepared store with migration 1 registered and a `laps` table of
/// three rows whose paths the handlers rewrite.
async fn setup() -> (SqliteStore, tempfile::TempDir) {
    let (store, dir) = fresh_store().await;
    store.prepare().await.unwrap();
    store
        .register(&[MigrationDef::new(1, "prefix_paths", "").unwrap()])
        .await
        .unwrap();
    raw(&db_path(&dir))
        .execute_batch(
            "CREATE TABLE laps (id INTEGER PRIMARY KEY, path TEXT NOT NULL);
             INSERT INTO laps (path) VALUES ('/a'), ('/b'), ('/c');",
        )
        .unwrap();
    (store, dir)
}

fn paths(dir: &tempfile::TempDir) -> Vec<String> {
    let conn = raw(&db_path(dir));
    let mut stmt = conn.prepare("SELECT path FROM laps ORDER BY id").unwrap();
    stmt.query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn prefix(tx: &Transaction<'_>) -> Result<(), BoxError> {
    tx.execute("UPDATE laps SET path = '/tracks' || path", [])?;
    Ok(())
}

async fn run(store: &SqliteStore, handler: waymark_core::Handler<()>) -> Outcome {
    tokio::time::timeout(NO_HANG, run_handler(store, (), 1, handler, None))
        .await
        .expect("the handler finished")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_commits_the_work_with_the_success() {
    let (store, dir) = setup().await;
    store
        .record_failure(id(1), "earlier failure")
        .await
        .unwrap();
    let outcome = run(
        &store,
        store.atomic(|tx, _ctx: &MigrationContext<()>| prefix(tx)),
    )
    .await;
    outcome.result.unwrap();
    assert!(outcome.recorded, "the runner must not record it again");
    assert_eq!(paths(&dir), ["/tracks/a", "/tracks/b", "/tracks/c"]);
    let row = store.get(id(1)).await.unwrap();
    assert!(row.executed && row.executed_at.is_some());
    assert_eq!((row.attempts, row.last_error), (2, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_an_atomic_handler_rolls_back_work_and_success() {
    let (store, dir) = setup().await;
    let handler = store.atomic(|tx, _ctx: &MigrationContext<()>| {
        prefix(tx)?;
        Err("the third lap is corrupt".into())
    });
    let outcome = run(&store, handler).await;
    assert_eq!(
        outcome.result.unwrap_err().to_string(),
        "the third lap is corrupt"
    );
    assert!(!outcome.recorded);
    assert_eq!(paths(&dir), ["/a", "/b", "/c"]);
    let row = store.get(id(1)).await.unwrap();
    assert!(!row.executed);
    assert_eq!(
        row.attempts, 0,
        "the runner records the failure, not the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_an_atomic_handler_rolls_back_and_the_store_still_works() {
    let (store, dir) = setup().await;
    let handler = store.atomic(|tx, _ctx: &MigrationContext<()>| {
        prefix(tx)?;
        panic!("bug in the handler");
    });
    let outcome = run(&store, handler).await;
    assert!(outcome.panicked && !outcome.recorded);
    assert_eq!(paths(&dir), ["/a", "/b", "/c"]);
    assert!(!store.get(id(1)).await.unwrap().executed);
    // The connection is neither poisoned nor left inside a transaction.
    let outcome = run(
        &store,
        store.atomic(|tx, _ctx: &MigrationContext<()>| prefix(tx)),
    )
    .await;
    outcome.result.unwrap();
    assert_eq!(paths(&dir), ["/tracks/a", "/tracks/b", "/tracks/c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_handler_for_an_untracked_migration_changes_nothing() {
    let (store, dir) = setup().await;
    let untracked = Migration::pending(&MigrationDef::new(99, "ghost", "").unwrap());
    let handler = store.atomic(|tx, _ctx: &MigrationContext<()>| prefix(tx));
    let outcome = run_handler_on_row(&store, (), untracked, handler, None).await;
    let err = outcome.result.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref(),
            Some(waymark_core::Error::NotFound { id: 99 })
        ),
        "{err}"
    );
    assert_eq!(paths(&dir), ["/a", "/b", "/c"]);
}

/// Calling the store from inside its own atomic handler would wait for the
/// connection the handler holds; it fails at once instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calling_the_store_inside_its_atomic_handler_fails_instead_of_deadlocking() {
    let (store, dir) = setup().await;
    let handler = store.atomic(|tx, ctx: &MigrationContext<()>| {
        prefix(tx)?;
        let mut ctx_copy = MigrationContext::new(
            Arc::new(()),
            ctx.migration().clone(),
            Arc::clone(ctx.store()),
        );
        ctx_copy.save_checkpoint_blocking("half way")?;
        Ok(())
    });
    let outcome = run(&store, handler).await;
    let message = waymark_core::error_chain(&*outcome.result.unwrap_err());
    assert!(
        message.contains("inside one of its own atomic handlers"),
        "{message}"
    );
    assert_eq!(paths(&dir), ["/a", "/b", "/c"]);
    assert_eq!(store.get(id(1)).await.unwrap().checkpoint, None);
}

/// Other tasks using the store while an atomic handler runs simply wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_calls_wait_for_a_running_atomic_handler() {
    let (store, dir) = setup().await;
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let entered_tx = std::sync::Mutex::new(entered_tx);
    let handler = store.atomic(move |tx, _ctx: &MigrationContext<()>| {
        prefix(tx)?;
        entered_tx.lock().unwrap().send(()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    });
    let running = {
        let store = store.clone();
        tokio::spawn(async move { run(&store, handler).await })
    };
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
        .await
        .unwrap();
    // Queued behind the handler's transaction, then sees its result.
    let row = tokio::time::timeout(NO_HANG, store.get(id(1)))
        .await
        .unwrap()
        .unwrap();
    assert!(row.executed);
    running.await.unwrap().result.unwrap();
    assert_eq!(paths(&dir)[0], "/tracks/a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_commits_the_transaction_itself_is_an_error() {
    let (store, _dir) = setup().await;
    let handler = store.atomic(|tx, _ctx: &MigrationContext<()>| {
        prefix(tx)?;
        tx.execute_batch("COMMIT")?;
        Ok(())
    });
    let outcome = run(&store, handler).await;
    let message = waymark_core::error_chain(&*outcome.result.unwrap_err());
    assert!(
        message.contains("ended the store's transaction itself"),
        "{message}"
    );
    assert!(!store.get(id(1)).await.unwrap().executed);
    // The connection is usable afterwards.
    store.record_failure(id(1), "x").await.unwrap();
}

/// `items` 1..=25 and an `applied` log without a unique constraint, so a
/// batch applied twice would show.
async fn setup_items() -> (SqliteStore, tempfile::TempDir) {
    let (store, dir) = setup().await;
    raw(&db_path(&dir))
        .execute_batch(
            "CREATE TABLE items (id INTEGER PRIMARY KEY);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 25)
             INSERT INTO items SELECT i FROM n;
             CREATE TABLE applied (item_id INTEGER NOT NULL);",
        )
        .unwrap();
    (store, dir)
}

/// Copies up to ten items after `from` into `applied`.
fn copy_batch(tx: &Transaction<'_>, from: Option<&str>) -> Result<BatchStep, BoxError> {
    let after: i64 = from.map_or(Ok(0), str::parse)?;
    let copied = tx.execute(
        "INSERT INTO applied SELECT id FROM items WHERE id > ?1 ORDER BY id LIMIT 10",
        [after],
    )?;
    let last: i64 = tx.query_row(
        "SELECT coalesce(max(item_id), ?1) FROM applied",
        params![after],
        |row| row.get(0),
    )?;
    Ok(if copied < 10 {
        BatchStep::done(copied as u64).with_total(25)
    } else {
        BatchStep::next(last.to_string(), copied as u64).with_total(25)
    })
}

/// Each item's count in `applied`.
fn applied(dir: &tempfile::TempDir) -> Vec<(i64, i64)> {
    let conn = raw(&db_path(dir));
    let mut stmt = conn
        .prepare("SELECT item_id, count(*) FROM applied GROUP BY item_id ORDER BY item_id")
        .unwrap();
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn each_once(upto: i64) -> Vec<(i64, i64)> {
    (1..=upto).map(|item| (item, 1)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_commits_each_batch_with_its_checkpoint_and_reports_progress() {
    let (store, dir) = setup_items().await;
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&starts);
    let handler = store.batched(move |tx, from, _ctx: &MigrationContext<()>| {
        seen.lock().unwrap().push(from.map(str::to_owned));
        copy_batch(tx, from)
    });
    let outcome = run(&store, handler).await;
    outcome.result.unwrap();
    assert!(outcome.recorded);
    assert_eq!(
        *starts.lock().unwrap(),
        [None, Some("10".into()), Some("20".into())]
    );
    assert_eq!(
        outcome.progress,
        [(10, Some(25)), (20, Some(25)), (25, Some(25))]
    );
    assert_eq!(applied(&dir), each_once(25));
    let row = store.get(id(1)).await.unwrap();
    assert!(row.executed);
    assert_eq!((row.checkpoint, row.attempts), (None, 1));
}

/// A batch that fails (or panics) half-way is rolled back entirely; the
/// batches before it stay, and the next run resumes at the failed batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_rolls_back_alone_and_the_next_run_resumes_there() {
    for panics in [false, true] {
        let (store, dir) = setup_items().await;
        let handler = store.batched(move |tx, from, _ctx: &MigrationContext<()>| {
            let step = copy_batch(tx, from)?;
            if from == Some("10") {
                if panics {
                    panic!("bug in batch two");
                }
                return Err("batch two failed".into());
            }
            Ok(step)
        });
        let outcome = run(&store, handler).await;
        assert!(outcome.result.is_err() && !outcome.recorded);
        assert_eq!(outcome.panicked, panics);
        assert_eq!(applied(&dir), each_once(10), "only the first batch stays");
        assert_eq!(
            store.get(id(1)).await.unwrap().checkpoint.as_deref(),
            Some("10")
        );

        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&starts);
        let handler = store.batched(move |tx, from, _ctx: &MigrationContext<()>| {
            seen.lock().unwrap().push(from.map(str::to_owned));
            copy_batch(tx, from)
        });
        run(&store, handler).await.result.unwrap();
        assert_eq!(
            *starts.lock().unwrap(),
            [Some("10".into()), Some("20".into())]
        );
        assert_eq!(applied(&dir), each_once(25));
        assert!(store.get(id(1)).await.unwrap().executed);
    }
}

/// A batch returning the checkpoint it started from would loop forever; it
/// is rolled back and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_does_not_advance_is_rolled_back() {
    let (store, dir) = setup_items().await;
    store.save_checkpoint(id(1), "10").await.unwrap();
    let handler = store.batched(|tx, from, _ctx: &MigrationContext<()>| {
        copy_batch(tx, from)?;
        Ok(BatchStep::next("10", 10))
    });
    let err = run(&store, handler).await.result.unwrap_err();
    assert!(err.downcast_ref::<StalledBatch>().is_some(), "{err}");
    assert!(applied(&dir).is_empty());
    assert_eq!(
        store.get(id(1)).await.unwrap().checkpoint.as_deref(),
        Some("10")
    );
}

/// Cancellation stops between batches; what committed stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_stops_between_batches_keeping_committed_ones() {
    let (store, dir) = setup_items().await;
    let cancellation = Cancellation::new();
    let trip = cancellation.clone();
    let batches = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&batches);
    let handler = store.batched(move |tx, from, _ctx: &MigrationContext<()>| {
        count.fetch_add(1, Ordering::SeqCst);
        trip.cancel();
        copy_batch(tx, from)
    });
    let outcome = tokio::time::timeout(
        NO_HANG,
        run_handler(&store, (), 1, handler, Some(cancellation)),
    )
    .await
    .unwrap();
    let err = outcome.result.unwrap_err();
    assert!(err.downcast_ref::<Cancelled>().is_some(), "{err}");
    assert_eq!(batches.load(Ordering::SeqCst), 1);
    assert_eq!(applied(&dir), each_once(10));
    assert_eq!(
        store.get(id(1)).await.unwrap().checkpoint.as_deref(),
        Some("10")
    );
}

/// Works on in-memory databases too: the handler's transaction is on the
/// store's own (only) connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_handlers_work_in_memory() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    store.prepare().await.unwrap();
    store
        .register(&[MigrationDef::new(1, "create_and_fill", "").unwrap()])
        .await
        .unwrap();
    let handler = store.atomic(|tx, _ctx: &MigrationContext<()>| {
        tx.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")?;
        Ok(())
    });
    let outcome = run(&store, handler).await;
    outcome.result.unwrap();
    assert!(store.get(id(1)).await.unwrap().executed);
    let failing = store.atomic(|tx, _ctx: &MigrationContext<()>| {
        tx.execute_batch("INSERT INTO t VALUES (2);")?;
        Err("no".into())
    });
    store.mark_pending(id(1)).await.unwrap();
    assert!(run(&store, failing).await.result.is_err());
    let check = store.atomic(|tx, _ctx: &MigrationContext<()>| {
        let rows: i64 = tx.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
        assert_eq!(rows, 1, "the failed insert was rolled back");
        Ok(())
    });
    run(&store, check).await.result.unwrap();
}
