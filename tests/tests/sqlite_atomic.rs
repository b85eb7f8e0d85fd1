//! Atomic and batched atomic handlers on SQLite, beyond the generic atomic
//! suite (`sqlite_atomic_conformance`): the success counts its attempt,
//! calls that would deadlock fail instead, a handler cannot end the store's
//! transaction, cancellation interrupts the running statement, batches
//! through the runner resume where a failure stopped them, and in-memory
//! databases work too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use waymark_core::store::{AtomicError, AtomicStore};
use waymark_core::{
    BatchStep, BoxError, CancellationToken, Cancelled, Error, Migration, MigrationContext,
    MigrationDef, MigrationId, MigrationStore,
};
use waymark_runner::{FailureKind, RunEvent, Runner, Status};
use waymark_sqlite::rusqlite::{Transaction, params};
use waymark_sqlite::{SqliteConfig, SqliteStore};
use waymark_tests::sqlite::{
    ENDLESS_QUERY, atomic_fn, context, context_of, context_with, db_path, fresh_store, raw,
    write_lock_is_held,
};

/// A hang guard, not a measurement.
const NO_HANG: Duration = Duration::from_secs(30);

fn id(raw: i64) -> MigrationId {
    MigrationId::new(raw).unwrap()
}

fn def() -> MigrationDef {
    MigrationDef::new(1, "prefix_paths", "").unwrap()
}

/// A prepared store with migration 1 registered and a `laps` table of
/// three rows whose paths the handlers rewrite.
async fn setup() -> (SqliteStore, tempfile::TempDir) {
    let (store, dir) = fresh_store().await;
    store.prepare().await.unwrap();
    store.register(&[def()]).await.unwrap();
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

/// The error an atomic execution failed with (not a superseded one).
fn failed<T: std::fmt::Debug>(result: Result<T, AtomicError>) -> BoxError {
    match result {
        Err(AtomicError::Failed(err)) => err,
        other => panic!("expected AtomicError::Failed, got {other:?}"),
    }
}

/// Through the runner: the work and the success commit together, the
/// success counts as one more attempt after an earlier failure and clears
/// its error, and the runner does not record it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_commits_the_work_with_the_success() {
    let (store, dir) = setup().await;
    store
        .record_failure(id(1), "earlier failure")
        .await
        .unwrap();
    let runner = Runner::<(), SqliteStore>::builder(store.clone())
        .atomic(
            def(),
            |tx: &Transaction<'_>, _ctx: &MigrationContext<()>| prefix(tx),
        )
        .build()
        .unwrap();
    let report = tokio::time::timeout(NO_HANG, runner.run(()))
        .await
        .expect("the run finished")
        .unwrap()
        .finish()
        .await
        .unwrap();
    assert!(
        matches!(
            report.outcome(id(1)).map(|o| &o.status),
            Some(Status::Executed)
        ),
        "{report}"
    );
    assert_eq!(paths(&dir), ["/tracks/a", "/tracks/b", "/tracks/c"]);
    let row = store.get(id(1)).await.unwrap();
    assert!(row.executed && row.executed_at.is_some());
    assert_eq!(
        (row.attempts, row.last_error),
        (2, None),
        "recorded once, by the store, in the handler's transaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_handler_for_an_untracked_migration_changes_nothing() {
    let (store, dir) = setup().await;
    let untracked = Migration::registered(&MigrationDef::new(99, "ghost", "").unwrap());
    let result = tokio::time::timeout(
        NO_HANG,
        store.execute_atomic(atomic_fn(|tx, _ctx| prefix(tx)), context(&store, untracked)),
    )
    .await
    .expect("the handler finished");
    let err = failed(result);
    assert!(
        matches!(err.downcast_ref(), Some(Error::NotFound { id }) if id.get() == 99),
        "{err}"
    );
    assert_eq!(paths(&dir), ["/a", "/b", "/c"]);
    assert!(
        matches!(store.get(id(99)).await, Err(Error::NotFound { .. })),
        "nothing was registered"
    );
}

/// What one store call made from inside an atomic handler of migration 1,
/// on the handler's own thread, returned: the handler passes the call's
/// error on, so the transaction rolls back. `None` if it succeeded.
async fn call_from_inside<F, Fut>(call: F) -> (Option<Error>, tempfile::TempDir, SqliteStore)
where
    F: Fn(SqliteStore) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), Error>> + Send,
{
    let (store, dir) = setup().await;
    store
        .register(&[MigrationDef::new(2, "other", "").unwrap()])
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(None));
    let work = {
        let (store, seen) = (store.clone(), Arc::clone(&seen));
        atomic_fn(move |tx, ctx: &MigrationContext<()>| {
            prefix(tx)?;
            let result = ctx
                .runtime()
                .block_on(tokio::time::timeout(NO_HANG, call(store.clone())))
                .map_err(|_| "the call deadlocked")?;
            if let Err(err) = result {
                *seen.lock().unwrap() = Some(err.to_string());
                return Err(err.into());
            }
            Ok(())
        })
    };
    let started = Instant::now();
    let result = store
        .execute_atomic(work, context_of(&store, 1).await)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let returned = match result {
        Ok(()) => None,
        Err(AtomicError::Failed(err)) => {
            let err = err
                .downcast::<Error>()
                .unwrap_or_else(|other| panic!("expected the store's error, got {other:?}"));
            Some(*err)
        }
        Err(other) => panic!("expected the call's error, got {other:?}"),
    };
    assert_eq!(
        returned.as_ref().map(ToString::to_string),
        seen.lock().unwrap().take()
    );
    assert_eq!(paths(&dir), ["/a", "/b", "/c"], "everything rolled back");
    (returned, dir, store)
}

/// The error of a call from inside the handler, which must be the store
/// refusing it at once (it would wait for the connection the handler holds).
fn assert_refused_from_inside(returned: Option<Error>) {
    match returned {
        Some(err @ Error::Store { .. }) => {
            let message = waymark_core::error_chain(&err);
            assert!(
                message.contains("inside one of its own atomic handlers"),
                "{message}"
            );
        }
        other => panic!("expected Error::Store from the call inside the handler, got {other:?}"),
    }
}

/// A read from the handler's own thread goes to the store's read
/// connection: it does not wait for the transaction the handler holds, and
/// sees what is committed (the migration still pending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_store_inside_its_atomic_handler_sees_what_is_committed() {
    let (store, dir) = setup().await;
    let seen = Arc::new(Mutex::new(None));
    let work = {
        let (store, seen) = (store.clone(), Arc::clone(&seen));
        atomic_fn(move |tx, ctx: &MigrationContext<()>| {
            prefix(tx)?;
            let row = ctx
                .runtime()
                .block_on(tokio::time::timeout(NO_HANG, store.get(id(1))))
                .map_err(|_| "the read waited for the handler's transaction")??;
            *seen.lock().unwrap() = Some(row.executed);
            Ok(())
        })
    };
    store
        .execute_atomic(work, context_of(&store, 1).await)
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(false), "the committed state");
    assert!(store.get(id(1)).await.unwrap().executed);
    assert_eq!(paths(&dir), ["/tracks/a", "/tracks/b", "/tracks/c"]);
}

/// An in-memory database has only the store's connection: a read from the
/// handler's own thread would wait for it, and fails at once instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_an_in_memory_store_inside_its_atomic_handler_fails_at_once() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    store.prepare().await.unwrap();
    store.register(&[def()]).await.unwrap();
    let work = {
        let store = store.clone();
        atomic_fn(move |_tx, ctx: &MigrationContext<()>| {
            let read = ctx
                .runtime()
                .block_on(tokio::time::timeout(NO_HANG, store.list()))
                .map_err(|_| "the read deadlocked")?;
            Err(read.map(drop).expect_err("the read must be refused").into())
        })
    };
    let result = store
        .execute_atomic(work, context_of(&store, 1).await)
        .await;
    let Err(AtomicError::Failed(err)) = result else {
        panic!("expected the refused read, got {result:?}");
    };
    let err = err.downcast::<Error>().expect("the store's error");
    assert_refused_from_inside(Some(*err));
    assert!(!store.get(id(1)).await.unwrap().executed);
}

/// So does a write to another migration's row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_another_row_inside_an_atomic_handler_fails_instead_of_deadlocking() {
    let (returned, _dir, store) =
        call_from_inside(|store| async move { store.save_checkpoint(id(2), "half way").await })
            .await;
    assert_refused_from_inside(returned);
    assert_eq!(store.get(id(2)).await.unwrap().checkpoint, None);
}

/// And a write to the handler's own row, `save_checkpoint` on a captured
/// store (what `save_checkpoint_blocking` did with the context's store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_its_own_row_inside_its_atomic_handler_fails_instead_of_deadlocking() {
    let (returned, _dir, store) =
        call_from_inside(|store| async move { store.save_checkpoint(id(1), "half way").await })
            .await;
    // A write to the running migration's own row is refused as a conflict
    // wherever it comes from (core's `InFlight`), this thread included.
    match returned {
        Some(Error::Conflict {
            id: refused,
            message,
        }) => {
            assert_eq!(refused, id(1));
            assert!(message.contains("atomic transaction is open"), "{message}");
        }
        other => panic!("expected Error::Conflict for its own row, got {other:?}"),
    }
    let row = store.get(id(1)).await.unwrap();
    assert_eq!((row.checkpoint, row.executed), (None, false));
}

/// Other tasks reading through the store while an atomic handler runs do
/// not wait for it: they see what is committed, then what it committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_wait_for_a_running_atomic_handler() {
    let (store, dir) = setup().await;
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let entered_tx = Mutex::new(entered_tx);
    let work = atomic_fn(move |tx, _ctx: &MigrationContext<()>| {
        prefix(tx)?;
        entered_tx.lock().unwrap().send(()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    });
    let running = tokio::spawn(store.execute_atomic(work, context_of(&store, 1).await));
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
        .await
        .unwrap();
    // Answered by the read connection while the transaction is open.
    let row = tokio::time::timeout(Duration::from_millis(150), store.get(id(1)))
        .await
        .expect("a read does not wait for the writer")
        .unwrap();
    assert!(!row.executed);
    running.await.unwrap().unwrap();
    assert!(store.get(id(1)).await.unwrap().executed);
    assert_eq!(paths(&dir)[0], "/tracks/a");
}

/// While a migration's atomic transaction is open, a write to its row
/// through this store (a clone, on another task) fails at once with a
/// conflict; another store on the same file has its own connection and
/// meets SQLite's write lock: busy after its timeout. Neither write lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_running_migrations_row_fail_without_waiting_for_it() {
    let (store, dir) = setup().await;
    let other = SqliteStore::open_with(
        SqliteConfig::file(db_path(&dir)).busy_timeout(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
    let work = atomic_fn(move |tx, _ctx: &MigrationContext<()>| {
        prefix(tx)?;
        entered_tx.lock().unwrap().send(())?;
        release_rx.lock().unwrap().recv()?;
        Ok(())
    });
    let running = tokio::spawn(store.execute_atomic(work, context_of(&store, 1).await));
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
        .await
        .unwrap();

    let clone = store.clone();
    let started = Instant::now();
    let result = tokio::spawn(async move { clone.record_failure(id(1), "from a task").await })
        .await
        .unwrap();
    assert!(
        matches!(&result, Err(Error::Conflict { id, .. }) if id.get() == 1),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let result = tokio::time::timeout(NO_HANG, other.save_checkpoint(id(1), "elsewhere"))
        .await
        .unwrap();
    assert!(matches!(result, Err(Error::Busy { .. })), "{result:?}");

    release_tx.send(()).unwrap();
    running.await.unwrap().unwrap();
    let row = other.get(id(1)).await.unwrap();
    assert!(row.executed, "{row:?}");
    assert_eq!(
        (row.attempts, row.last_error, row.checkpoint),
        (1, None, None)
    );
    assert_eq!(paths(&dir)[0], "/tracks/a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_commits_the_transaction_itself_is_an_error() {
    let (store, dir) = setup().await;
    let work = atomic_fn(|tx, _ctx: &MigrationContext<()>| {
        prefix(tx)?;
        tx.execute_batch("COMMIT")?;
        Ok(())
    });
    let result = tokio::time::timeout(
        NO_HANG,
        store.execute_atomic(work, context_of(&store, 1).await),
    )
    .await
    .unwrap();
    let message = waymark_core::error_chain(&*failed(result));
    assert!(
        message.contains("ended the store's transaction itself"),
        "{message}"
    );
    assert!(!store.get(id(1)).await.unwrap().executed);
    // The connection is usable afterwards, outside any transaction.
    store.record_failure(id(1), "x").await.unwrap();
    assert!(!write_lock_is_held(&db_path(&dir)));
}

/// Cancelling the context interrupts the statement that is running (it
/// would never end by itself): the result is `Cancelled`, at once, and
/// everything is rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_interrupts_the_running_statement() {
    let (store, dir) = setup().await;
    let row = store.get(id(1)).await.unwrap();
    let work = atomic_fn(|tx, _ctx: &MigrationContext<()>| {
        prefix(tx)?;
        let _never: i64 = tx.query_row(ENDLESS_QUERY, [], |row| row.get(0))?;
        Ok(())
    });
    let cancel = CancellationToken::new();
    let running =
        tokio::spawn(store.execute_atomic(work, context_with(&store, row.clone(), cancel.clone())));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!running.is_finished(), "the endless statement ended");
    let cancelled = Instant::now();
    cancel.cancel();
    let result = tokio::time::timeout(NO_HANG, running)
        .await
        .expect("the interrupted handler returned")
        .unwrap();
    assert!(
        cancelled.elapsed() < Duration::from_secs(5),
        "took {:?} to interrupt",
        cancelled.elapsed()
    );
    let err = failed(result);
    assert!(err.is::<Cancelled>(), "{err:?}");
    assert_eq!(paths(&dir), ["/a", "/b", "/c"]);
    assert!(!write_lock_is_held(&db_path(&dir)));
    assert_eq!(store.get(id(1)).await.unwrap(), row);
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

/// Where each batch started, in order.
type Starts = Arc<Mutex<Vec<Option<String>>>>;

/// Every `(done, total)` progress report, in order.
type Reports = Arc<Mutex<Vec<(u64, Option<u64>)>>>;

/// A runner with migration 1 batched over `copy_batch`, logging where each
/// batch starts into `starts` and every progress report into `progress`.
fn batched_runner(
    store: &SqliteStore,
    starts: &Starts,
    progress: &Reports,
) -> Runner<(), SqliteStore> {
    let seen = Arc::clone(starts);
    let heard = Arc::clone(progress);
    Runner::builder(store.clone())
        .observer(move |event| {
            if let RunEvent::Progress { progress, .. } = event {
                heard.lock().unwrap().push((progress.done, progress.total));
            }
        })
        .batched(
            def(),
            move |tx: &Transaction<'_>, from: Option<&str>, _ctx: &MigrationContext<()>| {
                seen.lock().unwrap().push(from.map(str::to_owned));
                copy_batch(tx, from)
            },
        )
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_commits_each_batch_with_its_checkpoint_and_reports_progress() {
    let (store, dir) = setup_items().await;
    let starts = Starts::default();
    let progress = Reports::default();
    let runner = batched_runner(&store, &starts, &progress);
    let report = tokio::time::timeout(NO_HANG, runner.run(()))
        .await
        .expect("the run finished")
        .unwrap()
        .finish()
        .await
        .unwrap();
    assert!(
        matches!(
            report.outcome(id(1)).map(|o| &o.status),
            Some(Status::Executed)
        ),
        "{report}"
    );
    assert_eq!(
        *starts.lock().unwrap(),
        [None, Some("10".into()), Some("20".into())]
    );
    assert_eq!(
        *progress.lock().unwrap(),
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
        let failing = Runner::<(), SqliteStore>::builder(store.clone())
            .batched(
                def(),
                move |tx: &Transaction<'_>,
                      from: Option<&str>,
                      _ctx: &MigrationContext<()>|
                      -> Result<BatchStep, BoxError> {
                    let step = copy_batch(tx, from)?;
                    if from == Some("10") {
                        if panics {
                            panic!("bug in batch two");
                        }
                        return Err("batch two failed".into());
                    }
                    Ok(step)
                },
            )
            .build()
            .unwrap();
        let report = tokio::time::timeout(NO_HANG, failing.run_and_report(()))
            .await
            .expect("the run finished")
            .unwrap()
            .wait()
            .await
            .unwrap();
        match report.outcome(id(1)).map(|o| &o.status) {
            Some(Status::Failed(failure)) => {
                let kind = if panics {
                    FailureKind::Panic
                } else {
                    FailureKind::Error
                };
                assert_eq!(failure.kind(), kind, "{failure}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(applied(&dir), each_once(10), "only the first batch stays");
        let row = store.get(id(1)).await.unwrap();
        assert_eq!(row.checkpoint.as_deref(), Some("10"));
        assert_eq!((row.executed, row.attempts), (false, 1));

        let starts = Starts::default();
        let progress = Reports::default();
        let runner = batched_runner(&store, &starts, &progress);
        tokio::time::timeout(NO_HANG, runner.run(()))
            .await
            .expect("the run finished")
            .unwrap()
            .finish()
            .await
            .unwrap();
        assert_eq!(
            *starts.lock().unwrap(),
            [Some("10".into()), Some("20".into())]
        );
        assert_eq!(applied(&dir), each_once(25));
        let row = store.get(id(1)).await.unwrap();
        assert!(row.executed && row.checkpoint.is_none(), "{row:?}");
        assert_eq!(row.attempts, 2);
    }
}

/// The application's shutdown stops a batched migration between batches:
/// the batch in progress commits with its checkpoint, and nothing counts
/// as an attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_between_batches_keeping_committed_ones() {
    let (store, dir) = setup_items().await;
    let shutdown = CancellationToken::new();
    let trip = shutdown.clone();
    let batches = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&batches);
    let runner = Runner::<(), SqliteStore>::builder(store.clone())
        .shutdown(shutdown)
        .batched(
            def(),
            move |tx: &Transaction<'_>, from: Option<&str>, _ctx: &MigrationContext<()>| {
                count.fetch_add(1, Ordering::SeqCst);
                trip.cancel();
                copy_batch(tx, from)
            },
        )
        .build()
        .unwrap();
    let result = tokio::time::timeout(NO_HANG, runner.run(()))
        .await
        .expect("the run finished");
    assert!(
        matches!(&result, Err(Error::Stopped { id }) if id.get() == 1),
        "{result:?}"
    );
    assert_eq!(batches.load(Ordering::SeqCst), 1);
    assert_eq!(applied(&dir), each_once(10));
    let row = store.get(id(1)).await.unwrap();
    assert_eq!(row.checkpoint.as_deref(), Some("10"));
    assert_eq!((row.executed, row.attempts), (false, 0));
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
    let create = atomic_fn(|tx, _ctx: &MigrationContext<()>| {
        tx.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")?;
        Ok(())
    });
    store
        .execute_atomic(create, context_of(&store, 1).await)
        .await
        .unwrap();
    assert!(store.get(id(1)).await.unwrap().executed);
    store.mark_pending(id(1)).await.unwrap();
    let failing = atomic_fn(|tx, _ctx: &MigrationContext<()>| {
        tx.execute_batch("INSERT INTO t VALUES (2);")?;
        Err("no".into())
    });
    let result = store
        .execute_atomic(failing, context_of(&store, 1).await)
        .await;
    assert_eq!(failed(result).to_string(), "no");
    let rows = Arc::new(Mutex::new(None));
    let sink = Arc::clone(&rows);
    let check = atomic_fn(move |tx, _ctx: &MigrationContext<()>| {
        let count: i64 = tx.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
        *sink.lock().unwrap() = Some(count);
        Ok(())
    });
    store
        .execute_atomic(check, context_of(&store, 1).await)
        .await
        .unwrap();
    assert_eq!(
        *rows.lock().unwrap(),
        Some(1),
        "the failed insert was rolled back"
    );
    assert!(store.get(id(1)).await.unwrap().executed);
}

/// A handler that waits for a task writing another row through the store
/// (which needs the connection the handler's transaction holds) does not
/// wait for good: the task's write fails with `Busy` after the busy timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_the_handler_waits_for_gets_busy_after_the_busy_timeout() {
    let (setup_store, dir) = setup().await;
    setup_store
        .register(&[MigrationDef::new(2, "other", "").unwrap()])
        .await
        .unwrap();
    setup_store.close().await.unwrap();
    let config = SqliteConfig::file(db_path(&dir)).busy_timeout(Duration::from_millis(200));
    let store = SqliteStore::open_with(config).await.unwrap();
    let work = {
        let store = store.clone();
        atomic_fn(move |tx, ctx: &MigrationContext<()>| {
            prefix(tx)?;
            let task = {
                let store = store.clone();
                ctx.runtime()
                    .spawn(async move { store.save_checkpoint(id(2), "half way").await })
            };
            let started = Instant::now();
            let written = ctx
                .runtime()
                .block_on(tokio::time::timeout(NO_HANG, task))
                .map_err(|_| "the task waited for good")??;
            match written {
                Err(Error::Busy { .. }) if started.elapsed() < Duration::from_secs(3) => Ok(()),
                other => Err(format!(
                    "expected Busy soon, got {other:?} after {:?}",
                    started.elapsed()
                )
                .into()),
            }
        })
    };
    store
        .execute_atomic(work, context_of(&store, 1).await)
        .await
        .unwrap();
    assert!(store.get(id(1)).await.unwrap().executed);
    assert_eq!(store.get(id(2)).await.unwrap().checkpoint, None);
    assert_eq!(paths(&dir)[0], "/tracks/a");
}

/// An in-memory store has one connection: a task the handler spawns and
/// waits for that reads through the store gets `Busy` after the busy
/// timeout instead of waiting for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_read_from_a_task_the_handler_waits_for_gets_busy() {
    let config = SqliteConfig::in_memory().busy_timeout(Duration::from_millis(200));
    let store = SqliteStore::open_with(config).await.unwrap();
    store.prepare().await.unwrap();
    store.register(&[def()]).await.unwrap();
    let work = {
        let store = store.clone();
        atomic_fn(move |_tx, ctx: &MigrationContext<()>| {
            let task = {
                let store = store.clone();
                ctx.runtime()
                    .spawn(async move { store.list().await.map(drop) })
            };
            let read = ctx
                .runtime()
                .block_on(tokio::time::timeout(NO_HANG, task))
                .map_err(|_| "the task waited for good")??;
            match read {
                Err(Error::Busy { .. }) => Ok(()),
                other => Err(format!("expected Busy, got {other:?}").into()),
            }
        })
    };
    store
        .execute_atomic(work, context_of(&store, 1).await)
        .await
        .unwrap();
    assert!(store.get(id(1)).await.unwrap().executed);
}
