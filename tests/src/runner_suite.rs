//! The runner test suite, run against every backend.
//!
//! Each public `async fn` checks one behaviour of [`Runner`] on a fresh,
//! empty database given as a [`TestStore`]. A backend runs all of them with
//! one line in a test file:
//!
//! ```ignore
//! waymark_tests::runner_suite!(waymark_tests::sqlite::fresh_test_store);
//! ```
//!
//! [`CountingStore`] wraps a store and logs every call, to prove what the
//! runner does and does not ask of the database (the fast path: one query,
//! no lock).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use waymark_core::testkit::TestStore;
use waymark_core::{
    BatchStep, BoxError, Cancellation, Error, Handler, LockGuard, MemoryStore, Migration,
    MigrationContext, MigrationDef, MigrationId, MigrationStore, async_trait,
};
use waymark_runner::{
    FailureKind, FailurePolicy, MissingHandler, PlannedAction, RunEvent, Runner, SkipReason,
    Status, batched, batched_blocking,
};

/// Runs the whole runner suite, one `#[tokio::test]` per behaviour, against
/// the databases made by `$fresh` (an `async fn() -> TestStore`).
#[macro_export]
macro_rules! runner_suite {
    ($fresh:path) => {
        $crate::__runner_suite!(multi_thread; $fresh;
            runs_pending_in_id_order,
            sync_and_async_handlers_run_and_are_recorded,
            failure_then_success_on_the_next_run,
            stop_policy_stops_at_the_first_failure,
            continue_policy_runs_the_rest,
            missing_handler_is_an_error_by_default,
            missing_handler_can_be_skipped_visibly,
            panics_are_recorded_and_contained,
            async_timeout_aborts_and_records_a_failure,
            blocking_timeout_cancels_and_records_a_failure,
            blocking_overrun_keeps_the_lock_and_counts_as_done,
            resumes_from_the_checkpoint_after_a_failure,
            handler_recorded_success_is_not_recorded_twice,
            success_committed_before_a_failure_stays_executed,
            plan_shows_what_would_run_without_running_it,
            plan_and_run_refuse_a_renamed_migration,
            fast_path_is_one_query_without_lock,
            nothing_pending_takes_no_lock,
            observer_hears_every_step,
            waits_for_the_lock_then_skips_what_another_instance_did,
            lock_wait_times_out_without_running_anything,
            sixteen_racing_runners_execute_each_body_once,
            build_errors_touch_nothing,
        );
        $crate::__runner_suite!(current_thread; $fresh;
            blocking_handler_does_not_stall_a_current_thread_runtime,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __runner_suite {
    (multi_thread; $fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let db = $fresh().await;
                $crate::runner_suite::$name(&db).await;
            }
        )*
    };
    (current_thread; $fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "current_thread")]
            async fn $name() {
                let db = $fresh().await;
                $crate::runner_suite::$name(&db).await;
            }
        )*
    };
}

/// A fresh [`MemoryStore`] as a [`TestStore`]; `reopen` gives a clone that
/// shares its rows and its lock, as a second process would share a database.
pub async fn fresh_memory_store() -> TestStore {
    let store = MemoryStore::new();
    let shared = store.clone();
    TestStore::new(
        Arc::new(store),
        Arc::new(move || {
            let clone: Arc<dyn MigrationStore> = Arc::new(shared.clone());
            Box::pin(async move { clone })
        }),
        (),
    )
}

/// A store wrapper that logs the name of every call before passing it on.
pub struct CountingStore {
    inner: Arc<dyn MigrationStore>,
    calls: Mutex<Vec<&'static str>>,
}

impl CountingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn MigrationStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            calls: Mutex::new(Vec::new()),
        })
    }

    /// Every call so far, in order, by method name.
    pub fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }

    /// How many calls to `method` so far.
    pub fn count(&self, method: &str) -> usize {
        self.calls().iter().filter(|c| **c == method).count()
    }

    /// Forgets the calls so far.
    pub fn reset(&self) {
        self.calls.lock().unwrap().clear();
    }

    fn log(&self, method: &'static str) -> &dyn MigrationStore {
        self.calls.lock().unwrap().push(method);
        &*self.inner
    }
}

impl std::fmt::Debug for CountingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingStore")
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl MigrationStore for CountingStore {
    async fn prepare(&self) -> Result<(), Error> {
        self.log("prepare").prepare().await
    }
    async fn register(&self, defs: &[MigrationDef]) -> Result<(), Error> {
        self.log("register").register(defs).await
    }
    async fn list(&self) -> Result<Vec<Migration>, Error> {
        self.log("list").list().await
    }
    async fn pending(&self) -> Result<Vec<Migration>, Error> {
        self.log("pending").pending().await
    }
    async fn get(&self, id: MigrationId) -> Result<Migration, Error> {
        self.log("get").get(id).await
    }
    async fn mark_executed(&self, id: MigrationId) -> Result<(), Error> {
        self.log("mark_executed").mark_executed(id).await
    }
    async fn record_success(&self, id: MigrationId) -> Result<(), Error> {
        self.log("record_success").record_success(id).await
    }
    async fn mark_pending(&self, id: MigrationId) -> Result<(), Error> {
        self.log("mark_pending").mark_pending(id).await
    }
    async fn record_failure(&self, id: MigrationId, error: &str) -> Result<(), Error> {
        self.log("record_failure").record_failure(id, error).await
    }
    async fn save_checkpoint(&self, id: MigrationId, checkpoint: &str) -> Result<(), Error> {
        self.log("save_checkpoint")
            .save_checkpoint(id, checkpoint)
            .await
    }
    async fn is_settled(&self, fingerprint: &str) -> Result<bool, Error> {
        self.log("is_settled").is_settled(fingerprint).await
    }
    async fn lock(&self, wait: Duration) -> Result<LockGuard, Error> {
        self.log("lock").lock(wait).await
    }
}

// ---------------------------------------------------------------- helpers

fn id(raw: i64) -> MigrationId {
    MigrationId::new(raw).expect("positive id")
}

fn def(raw: i64) -> MigrationDef {
    MigrationDef::new(raw, format!("m{raw}"), format!("migration {raw}")).expect("valid")
}

/// The order handler bodies ran in.
type Log = Arc<Mutex<Vec<i64>>>;

fn log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

fn logged(log: &Log) -> Vec<i64> {
    log.lock().unwrap().clone()
}

/// An async handler appending `raw` to `log`.
fn async_logs(log: &Log, raw: i64) -> Handler<()> {
    let log = Arc::clone(log);
    Handler::async_fn(move |_ctx: MigrationContext<()>| {
        let log = Arc::clone(&log);
        async move {
            tokio::task::yield_now().await;
            log.lock().unwrap().push(raw);
            Ok(())
        }
    })
}

/// A blocking handler appending `raw` to `log`.
fn blocking_logs(log: &Log, raw: i64) -> Handler<()> {
    let log = Arc::clone(log);
    Handler::blocking_fn(move |_ctx: MigrationContext<()>| {
        log.lock().unwrap().push(raw);
        Ok(())
    })
}

/// A handler that always fails with a two-level error chain.
fn failing(message: &'static str) -> Handler<()> {
    Handler::async_fn(move |_ctx: MigrationContext<()>| async move {
        Err(Box::new(Error::store(
            "updating laps",
            std::io::Error::other(message),
        )) as BoxError)
    })
}

async fn row(db: &TestStore, raw: i64) -> Migration {
    db.store.get(id(raw)).await.expect("tracked row")
}

fn status_of(report: &waymark_runner::RunReport, raw: i64) -> &Status {
    &report
        .outcome(id(raw))
        .unwrap_or_else(|| panic!("no outcome for {raw} in\n{report}"))
        .status
}

/// Another instance can take the lock at once: the run released it.
async fn assert_lock_free(db: &TestStore) {
    let other = db.reopen().await;
    other.prepare().await.expect("prepare");
    let guard = other.lock(Duration::from_secs(5)).await;
    assert!(guard.is_ok(), "the run left the lock held: {guard:?}");
}

// ---------------------------------------------------------------- tests

/// Declared and registered 3, 1, 2: handlers run 1, 2, 3.
pub async fn runs_pending_in_id_order(db: &TestStore) {
    db.store.prepare().await.unwrap();
    for raw in [3, 1, 2] {
        db.store.register(&[def(raw)]).await.unwrap();
    }
    let order = log();
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .migration(def(3), async_logs(&order, 3))
        .migration(def(1), blocking_logs(&order, 1))
        .migration(def(2), async_logs(&order, 2))
        .build()
        .unwrap();
    let report = runner.run(()).await.unwrap();
    assert_eq!(logged(&order), [1, 2, 3]);
    let ids: Vec<i64> = report.outcomes().iter().map(|o| o.id.get()).collect();
    assert_eq!(ids, [1, 2, 3]);
}

/// Both kinds of handler see the state and their row, and success is
/// recorded with a time and one attempt.
pub async fn sync_and_async_handlers_run_and_are_recorded(db: &TestStore) {
    struct App {
        factor: u32,
        seen: Mutex<Vec<String>>,
    }
    let runner = Runner::<App>::builder(Arc::clone(&db.store))
        .migration(
            def(1),
            Handler::async_fn(|ctx: MigrationContext<App>| async move {
                assert_eq!(ctx.state().factor, 7);
                let name = ctx.migration().name.clone();
                ctx.state()
                    .seen
                    .lock()
                    .unwrap()
                    .push(format!("async {name}"));
                Ok::<(), BoxError>(())
            }),
        )
        .migration(
            def(2),
            Handler::blocking_fn(|ctx: MigrationContext<App>| {
                assert_eq!(ctx.state().factor, 7);
                assert_eq!(ctx.checkpoint(), None);
                let name = &ctx.migration().name;
                ctx.state()
                    .seen
                    .lock()
                    .unwrap()
                    .push(format!("blocking {name}"));
                Ok(())
            }),
        )
        .build()
        .unwrap();
    let state = Arc::new(App {
        factor: 7,
        seen: Mutex::new(Vec::new()),
    });
    let report = runner.run(Arc::clone(&state)).await.unwrap();
    assert!(report.is_success(), "{report}");
    assert_eq!(*state.seen.lock().unwrap(), ["async m1", "blocking m2"]);
    for raw in [1, 2] {
        let row = row(db, raw).await;
        assert!(row.executed && row.executed_at.is_some(), "{row:?}");
        assert_eq!((row.attempts, row.last_error), (1, None));
        assert!(matches!(status_of(&report, raw), Status::Executed));
        assert_eq!(report.outcome(id(raw)).unwrap().attempts, 1);
    }
}

/// A failure is recorded with its error chain and one attempt; the next
/// run executes it and clears the error.
pub async fn failure_then_success_on_the_next_run(db: &TestStore) {
    let fail = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&fail);
    let handler = Handler::async_fn(move |_ctx: MigrationContext<()>| {
        let fail = flag.swap(false, Ordering::SeqCst);
        async move {
            if fail {
                return Err(Box::new(Error::store(
                    "updating laps",
                    std::io::Error::other("connection reset"),
                )) as BoxError);
            }
            Ok(())
        }
    });
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .migration(def(1), handler)
        .build()
        .unwrap();

    // `run` fails start-up when a migration fails, keeping the handler's error.
    match runner.run(()).await {
        Err(Error::Handler {
            id: 1,
            message,
            source,
        }) => {
            assert_eq!(message, "updating laps: connection reset");
            let source = source.expect("the handler's own error");
            assert!(source.downcast_ref::<Error>().is_some(), "{source:?}");
        }
        other => panic!("expected the handler's failure, got {other:?}"),
    }
    let after_first = row(db, 1).await;
    assert!(!after_first.executed);
    assert_eq!(after_first.attempts, 1);
    assert_eq!(
        after_first.last_error.as_deref(),
        Some("updating laps: connection reset")
    );
    assert_lock_free(db).await;

    let second = runner.run(()).await.unwrap();
    assert!(matches!(status_of(&second, 1), Status::Executed));
    assert_eq!(second.outcome(id(1)).unwrap().attempts, 2);
    let after_second = row(db, 1).await;
    assert!(after_second.executed);
    assert_eq!((after_second.attempts, after_second.last_error), (2, None));
}

/// The default policy stops at the first failure: later migrations do not
/// run and stay pending, and the report says so.
pub async fn stop_policy_stops_at_the_first_failure(db: &TestStore) {
    let order = log();
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .migration(def(1), async_logs(&order, 1))
        .migration(def(2), failing("disk full"))
        .migration(def(3), blocking_logs(&order, 3))
        .build()
        .unwrap();
    let report = runner.run_and_report(()).await.unwrap();
    assert_eq!(logged(&order), [1]);
    assert!(matches!(status_of(&report, 1), Status::Executed));
    assert!(status_of(&report, 2).is_failure());
    assert!(matches!(
        status_of(&report, 3),
        Status::Skipped(SkipReason::EarlierFailure(by)) if by.get() == 2
    ));
    let three = row(db, 3).await;
    assert!(!three.executed && three.attempts == 0, "{three:?}");
    assert_lock_free(db).await;
}

/// `FailurePolicy::Continue` runs every other migration after a failure.
pub async fn continue_policy_runs_the_rest(db: &TestStore) {
    let order = log();
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .on_failure(FailurePolicy::Continue)
        .migration(def(1), failing("first"))
        .migration(def(2), async_logs(&order, 2))
        .migration(def(3), failing("third"))
        .migration(def(4), blocking_logs(&order, 4))
        .build()
        .unwrap();
    let report = runner.run_and_report(()).await.unwrap();
    assert_eq!(logged(&order), [2, 4]);
    assert_eq!(report.failures().count(), 2);
    assert_eq!(report.executed().count(), 2);
    match report.into_result() {
        Err(Error::Handler { id: 1, message, .. }) => {
            assert!(
                message.contains("first") && message.contains("1 other"),
                "{message}"
            )
        }
        other => panic!("expected the failure of 1, got {other:?}"),
    }
    let pending: Vec<i64> = db
        .store
        .pending()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id.get())
        .collect();
    assert_eq!(pending, [1, 3]);
    assert_lock_free(db).await;
}

/// A pending row without a handler (another version registered it) fails
/// the run by default; nothing is recorded against it.
pub async fn missing_handler_is_an_error_by_default(db: &TestStore) {
    db.store.prepare().await.unwrap();
    db.store.register(&[def(2)]).await.unwrap();
    let order = log();
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .migration(def(1), async_logs(&order, 1))
        .migration(def(3), async_logs(&order, 3))
        .build()
        .unwrap();
    let report = runner.run_and_report(()).await.unwrap();
    assert_eq!(logged(&order), [1]);
    match status_of(&report, 2) {
        Status::Failed(failure) => {
            assert_eq!(failure.kind(), FailureKind::MissingHandler);
            assert!(failure.message().contains("no handler"), "{failure}");
        }
        other => panic!("expected a missing handler failure, got {other:?}"),
    }
    assert!(matches!(
        status_of(&report, 3),
        Status::Skipped(SkipReason::EarlierFailure(_))
    ));
    let two = row(db, 2).await;
    assert_eq!(
        (two.executed, two.attempts, two.last_error),
        (false, 0, None)
    );
    let err = report.into_result().unwrap_err();
    assert!(matches!(err, Error::Handler { id: 2, .. }), "{err:?}");
    // The strict `run` says the same.
    let err = runner.run(()).await.unwrap_err();
    assert!(
        matches!(err, Error::Handler { id: 2, ref message, .. } if message.contains("no handler")),
        "{err:?}"
    );
}

/// `MissingHandler::Skip` skips it with a visible outcome and runs the
/// rest; a later run with only that row pending takes no lock.
pub async fn missing_handler_can_be_skipped_visibly(db: &TestStore) {
    db.store.prepare().await.unwrap();
    db.store.register(&[def(2)]).await.unwrap();
    let order = log();
    let counting = CountingStore::new(Arc::clone(&db.store));
    let runner = Runner::<()>::builder(Arc::clone(&counting))
        .on_missing_handler(MissingHandler::Skip)
        .migration(def(1), async_logs(&order, 1))
        .migration(def(3), blocking_logs(&order, 3))
        .build()
        .unwrap();
    let report = runner.run(()).await.unwrap();
    assert_eq!(logged(&order), [1, 3]);
    assert!(report.is_success(), "{report}");
    assert!(matches!(
        status_of(&report, 2),
        Status::Skipped(SkipReason::MissingHandler)
    ));
    assert!(report.to_string().contains("skipped (no handler)"));
    assert!(!row(db, 2).await.executed);

    counting.reset();
    let again = runner.run(()).await.unwrap();
    assert!(matches!(
        status_of(&again, 2),
        Status::Skipped(SkipReason::MissingHandler)
    ));
    assert_eq!(counting.count("lock"), 0, "{:?}", counting.calls());
}

/// Panics in async and blocking handlers are failures with the panic
/// message; the lock is released and the runtime keeps working.
pub async fn panics_are_recorded_and_contained(db: &TestStore) {
    let order = log();
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .on_failure(FailurePolicy::Continue)
        .migration(
            def(1),
            Handler::async_fn(|ctx: MigrationContext<()>| async move {
                if ctx.id().get() == 1 {
                    panic!("async boom at row 7");
                }
                Ok(())
            }),
        )
        .migration(
            def(2),
            Handler::blocking_fn(|ctx: MigrationContext<()>| {
                let row = ctx.id().get() * 10;
                panic!("blocking boom at row {row}");
            }),
        )
        .migration(def(3), async_logs(&order, 3))
        .build()
        .unwrap();
    let report = runner.run_and_report(()).await.unwrap();
    for (raw, text) in [(1, "async boom at row 7"), (2, "blocking boom at row 20")] {
        match status_of(&report, raw) {
            Status::Failed(failure) => {
                assert_eq!(failure.kind(), FailureKind::Panic);
                assert!(failure.message().contains(text), "{failure}");
            }
            other => panic!("expected a panic failure, got {other:?}"),
        }
        let row = row(db, raw).await;
        assert!(!row.executed && row.attempts == 1);
        assert!(row.last_error.unwrap().contains(text));
    }
    assert_eq!(logged(&order), [3]);
    assert_lock_free(db).await;
    // The runtime still runs tasks.
    assert_eq!(tokio::spawn(async { 41 + 1 }).await.unwrap(), 42);
}

/// An async handler past its timeout sees the cancellation fire, is
/// aborted (its future dropped), and a timeout failure is recorded.
pub async fn async_timeout_aborts_and_records_a_failure(db: &TestStore) {
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Option<Cancellation>>> = Arc::default();
    let (dropped_in, seen_in) = (Arc::clone(&dropped), Arc::clone(&seen));
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .on_failure(FailurePolicy::Continue)
        .migration_with_timeout(
            def(1),
            Handler::async_fn(move |ctx: MigrationContext<()>| {
                let guard = SetOnDrop(Arc::clone(&dropped_in));
                *seen_in.lock().unwrap() = Some(ctx.cancellation().clone());
                async move {
                    let _guard = guard;
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    Ok(())
                }
            }),
            Duration::from_millis(200),
        )
        .migration(
            def(2),
            Handler::async_fn(|_ctx: MigrationContext<()>| async { Ok(()) }),
        )
        .build()
        .unwrap();
    let report = runner.run_and_report(()).await.unwrap();
    match status_of(&report, 1) {
        Status::Failed(failure) => {
            assert_eq!(failure.kind(), FailureKind::Timeout);
            assert_eq!(failure.message(), "timed out after 200ms");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The default (no timeout) applies to the others.
    assert!(matches!(status_of(&report, 2), Status::Executed));
    assert!(
        dropped.load(Ordering::SeqCst),
        "the handler was not aborted"
    );
    assert!(seen.lock().unwrap().as_ref().unwrap().is_cancelled());
    let row = row(db, 1).await;
    assert_eq!(row.last_error.as_deref(), Some("timed out after 200ms"));
    assert_lock_free(db).await;
}

/// A blocking handler past the runner-wide timeout sees the cancellation,
/// gives up, and the failure says it timed out.
pub async fn blocking_timeout_cancels_and_records_a_failure(db: &TestStore) {
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .timeout(Duration::from_millis(150))
        .migration(
            def(1),
            Handler::blocking_fn(|ctx: MigrationContext<()>| {
                for _ in 0..2_000 {
                    if ctx.is_cancelled() {
                        return Err("stopped between rows".into());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err("never saw the cancellation".into())
            }),
        )
        .build()
        .unwrap();
    let report = runner.run_and_report(()).await.unwrap();
    match status_of(&report, 1) {
        Status::Failed(failure) => {
            assert_eq!(failure.kind(), FailureKind::Timeout);
            assert_eq!(
                failure.message(),
                "timed out after 150ms: stopped between rows"
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(!row(db, 1).await.executed);
    assert_lock_free(db).await;
}

/// A blocking handler cannot be interrupted: after its timeout the run keeps
/// the lock until it returns (so no other instance can start it meanwhile),
/// and work it finishes counts as done, so it never runs twice.
pub async fn blocking_overrun_keeps_the_lock_and_counts_as_done(db: &TestStore) {
    let (cancelled_tx, cancelled_rx) = oneshot::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let cancelled_tx = Mutex::new(Some(cancelled_tx));
    let go_rx = Mutex::new(go_rx);
    let bodies = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&bodies);
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .timeout(Duration::from_millis(100))
        .migration(
            def(1),
            Handler::blocking_fn(move |ctx: MigrationContext<()>| {
                counter.fetch_add(1, Ordering::SeqCst);
                while !ctx.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if let Some(tx) = cancelled_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                // Ignores the cancellation and finishes its work anyway.
                go_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(30))
                    .map_err(|_| "the test never let the handler finish")?;
                Ok(())
            }),
        )
        .build()
        .unwrap();
    let run = tokio::spawn({
        let runner = runner.clone();
        async move { runner.run(()).await }
    });
    cancelled_rx.await.expect("the handler saw no cancellation");
    let other = db.reopen().await;
    let held = other.lock(Duration::from_millis(300)).await;
    assert!(
        matches!(held, Err(Error::LockTimeout { .. })),
        "the lock was free while the timed-out handler still ran: {held:?}"
    );
    go_tx.send(()).unwrap();
    let report = run.await.unwrap().unwrap();
    assert!(
        matches!(status_of(&report, 1), Status::Executed),
        "{report}"
    );
    assert!(row(db, 1).await.executed);
    assert_lock_free(db).await;
    let again = runner.run(()).await.unwrap();
    assert!(again.nothing_pending());
    assert_eq!(bodies.load(Ordering::SeqCst), 1);
}

/// Batched handlers (async and blocking) that fail half-way resume from the
/// last saved checkpoint: no batch is processed twice or skipped.
pub async fn resumes_from_the_checkpoint_after_a_failure(db: &TestStore) {
    const ROWS: u64 = 10;
    const SIZE: u64 = 3;
    fn step(start: u64) -> BatchStep {
        let end = (start + SIZE).min(ROWS);
        if end == ROWS {
            BatchStep::done(end - start)
        } else {
            BatchStep::next(end.to_string(), end - start).with_total(ROWS)
        }
    }
    let async_batches: Arc<Mutex<Vec<u64>>> = Arc::default();
    let blocking_batches: Arc<Mutex<Vec<u64>>> = Arc::default();
    let fail_async = Arc::new(AtomicBool::new(true));
    let fail_blocking = Arc::new(AtomicBool::new(true));
    let (seen, fail) = (Arc::clone(&async_batches), Arc::clone(&fail_async));
    let async_handler = batched(move |_state: Arc<()>, from: Option<String>| {
        let (seen, fail) = (Arc::clone(&seen), Arc::clone(&fail));
        async move {
            let start: u64 = from.as_deref().unwrap_or("0").parse()?;
            if start == 6 && fail.swap(false, Ordering::SeqCst) {
                return Err("disk full at 6".into());
            }
            seen.lock().unwrap().push(start);
            Ok(step(start))
        }
    });
    let (seen, fail) = (Arc::clone(&blocking_batches), Arc::clone(&fail_blocking));
    let blocking_handler = batched_blocking(move |_state: &(), from: Option<&str>| {
        let start: u64 = from.unwrap_or("0").parse()?;
        if start == 3 && fail.swap(false, Ordering::SeqCst) {
            return Err("lost connection at 3".into());
        }
        seen.lock().unwrap().push(start);
        Ok(step(start))
    });
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .on_failure(FailurePolicy::Continue)
        .migration(def(1), async_handler)
        .migration(def(2), blocking_handler)
        .build()
        .unwrap();

    let first = runner.run_and_report(()).await.unwrap();
    assert_eq!(first.failures().count(), 2, "{first}");
    assert_eq!(*async_batches.lock().unwrap(), [0, 3]);
    assert_eq!(*blocking_batches.lock().unwrap(), [0]);
    let (one, two) = (row(db, 1).await, row(db, 2).await);
    assert_eq!(one.checkpoint.as_deref(), Some("6"));
    assert_eq!(one.last_error.as_deref(), Some("disk full at 6"));
    assert_eq!(two.checkpoint.as_deref(), Some("3"));

    let second = runner.run(()).await.unwrap();
    assert_eq!(second.executed().count(), 2);
    assert_eq!(*async_batches.lock().unwrap(), [0, 3, 6, 9]);
    assert_eq!(*blocking_batches.lock().unwrap(), [0, 3, 6, 9]);
    for raw in [1, 2] {
        let row = row(db, raw).await;
        assert!(row.executed && row.checkpoint.is_none(), "{row:?}");
        assert_eq!(row.attempts, 2);
    }
}

/// A handler that records its own success (as the store crates' atomic
/// handlers do in their transaction) is not recorded a second time.
pub async fn handler_recorded_success_is_not_recorded_twice(db: &TestStore) {
    let counting = CountingStore::new(Arc::clone(&db.store));
    let runner = Runner::<()>::builder(Arc::clone(&counting))
        .migration(
            def(1),
            Handler::async_fn(|ctx: MigrationContext<()>| async move {
                ctx.store().record_success(ctx.id()).await?;
                ctx.mark_success_recorded();
                Ok::<(), BoxError>(())
            }),
        )
        .build()
        .unwrap();
    let report = runner.run(()).await.unwrap();
    assert!(matches!(status_of(&report, 1), Status::Executed));
    assert_eq!(
        counting.count("record_success"),
        1,
        "{:?}",
        counting.calls()
    );
    let row = row(db, 1).await;
    assert!(row.executed);
    assert_eq!(row.attempts, 1);
}

/// A handler whose success was committed but which then failed before
/// telling the runner (a timeout or a lost connection right at an atomic
/// handler's COMMIT) is reported executed, and no failure is recorded over it.
pub async fn success_committed_before_a_failure_stays_executed(db: &TestStore) {
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .migration(
            def(1),
            Handler::async_fn(|ctx: MigrationContext<()>| async move {
                ctx.store().record_success(ctx.id()).await?;
                Err::<(), BoxError>("the connection dropped after COMMIT".into())
            }),
        )
        .build()
        .unwrap();
    let report = runner.run(()).await.expect("the migration is done");
    assert!(
        matches!(status_of(&report, 1), Status::Executed),
        "{report}"
    );
    let row = row(db, 1).await;
    assert!(row.executed);
    assert_eq!(row.attempts, 1);
    assert_eq!(row.last_error, None);
}

/// The plan lists what would run, in order, and runs, registers and locks
/// nothing.
pub async fn plan_shows_what_would_run_without_running_it(db: &TestStore) {
    let counting = CountingStore::new(Arc::clone(&db.store));
    let order = log();
    let build = |policy| {
        Runner::<()>::builder(Arc::clone(&counting))
            .on_missing_handler(policy)
            .migration(def(1), async_logs(&order, 1))
            .migration(def(2), blocking_logs(&order, 2))
            .migration(def(3), async_logs(&order, 3))
            .migration(def(5), async_logs(&order, 5))
            .build()
            .unwrap()
    };
    // A fresh database has no table yet: the plan still answers.
    let fresh = build(MissingHandler::Error).plan().await.unwrap();
    let ids: Vec<i64> = fresh.to_run().map(MigrationId::get).collect();
    assert_eq!(ids, [1, 2, 3, 5]);
    assert!(fresh.steps().iter().all(|s| !s.registered));

    // 1 executed; 2 failed once with a checkpoint; 4 tracked without a handler; 3 and 5 new.
    db.store.register(&[def(1), def(2), def(4)]).await.unwrap();
    db.store.mark_executed(id(1)).await.unwrap();
    db.store
        .save_checkpoint(id(2), "last_id=500")
        .await
        .unwrap();
    db.store.record_failure(id(2), "timeout").await.unwrap();
    counting.reset();

    let plan = build(MissingHandler::Error).plan().await.unwrap();
    let steps: Vec<(i64, PlannedAction, bool)> = plan
        .steps()
        .iter()
        .map(|s| (s.id.get(), s.action, s.registered))
        .collect();
    assert_eq!(
        steps,
        [
            (2, PlannedAction::Run, true),
            (3, PlannedAction::Run, false),
            (4, PlannedAction::FailMissingHandler, true),
            (5, PlannedAction::NotRun(id(4)), false),
        ]
    );
    let two = &plan.steps()[0];
    assert_eq!(two.checkpoint.as_deref(), Some("last_id=500"));
    assert_eq!(
        (two.attempts, two.last_error.as_deref()),
        (1, Some("timeout"))
    );
    let text = plan.to_string();
    assert!(
        text.contains("last_id=500") && text.contains("m3 (new)"),
        "{text}"
    );

    let skipping = build(MissingHandler::Skip).plan().await.unwrap();
    let ids: Vec<i64> = skipping.to_run().map(MigrationId::get).collect();
    assert_eq!(ids, [2, 3, 5]);
    assert_eq!(
        skipping.steps()[2].action,
        PlannedAction::SkipMissingHandler
    );

    assert!(logged(&order).is_empty(), "a plan ran a handler");
    assert_eq!(counting.calls(), ["list", "list"], "a plan must only read");
    assert!(matches!(
        db.store.get(id(3)).await,
        Err(Error::NotFound { id: 3 })
    ));
}

/// A declared id tracked under another name is a conflict for both the
/// plan and the run, and nothing runs.
pub async fn plan_and_run_refuse_a_renamed_migration(db: &TestStore) {
    db.store.prepare().await.unwrap();
    db.store.register(&[def(1)]).await.unwrap();
    let order = log();
    let renamed = MigrationDef::new(1, "renamed", "").unwrap();
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .migration(renamed, async_logs(&order, 1))
        .build()
        .unwrap();
    let err = runner.plan().await.unwrap_err();
    assert!(matches!(err, Error::Conflict { id: 1, .. }), "{err:?}");
    let err = runner.run(()).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { id: 1, .. }), "{err:?}");
    assert!(logged(&order).is_empty());
    assert_eq!(row(db, 1).await.name, "m1");
}

/// Once everything ran, the next run is one query: no prepare, no
/// register, no lock. A new migration leaves the fast path.
pub async fn fast_path_is_one_query_without_lock(db: &TestStore) {
    let counting = CountingStore::new(Arc::clone(&db.store));
    let order = log();
    let runner = Runner::<()>::builder(Arc::clone(&counting))
        .migration(def(1), async_logs(&order, 1))
        .migration(def(2), blocking_logs(&order, 2))
        .build()
        .unwrap();
    runner.run(()).await.unwrap();
    assert_eq!(counting.count("lock"), 1);

    for _ in 0..3 {
        counting.reset();
        let report = runner.run(()).await.unwrap();
        assert!(report.was_settled() && report.nothing_pending());
        assert_eq!(report.lock_waited(), None);
        assert_eq!(counting.calls(), ["is_settled"]);
    }
    // Another instance sees the same.
    counting.reset();
    let other = CountingStore::new(db.reopen().await);
    let from_other = Runner::<()>::builder(Arc::clone(&other))
        .migration(def(2), blocking_logs(&order, 2))
        .migration(def(1), async_logs(&order, 1))
        .build()
        .unwrap();
    assert!(from_other.run(()).await.unwrap().was_settled());
    assert_eq!(other.calls(), ["is_settled"]);

    // A new migration: not settled, so it runs under the lock.
    let grown = Runner::<()>::builder(Arc::clone(&counting))
        .migration(def(1), async_logs(&order, 1))
        .migration(def(2), blocking_logs(&order, 2))
        .migration(def(3), async_logs(&order, 3))
        .build()
        .unwrap();
    let report = grown.run(()).await.unwrap();
    assert!(!report.was_settled());
    assert_eq!(counting.count("lock"), 1);
    assert_eq!(logged(&order), [1, 2, 3]);
}

/// Registered but nothing pending (a subset of an executed set, never
/// registered on its own): no lock either.
pub async fn nothing_pending_takes_no_lock(db: &TestStore) {
    let order = log();
    Runner::<()>::builder(Arc::clone(&db.store))
        .migration(def(1), async_logs(&order, 1))
        .migration(def(2), async_logs(&order, 2))
        .build()
        .unwrap()
        .run(())
        .await
        .unwrap();
    let counting = CountingStore::new(Arc::clone(&db.store));
    let older = Runner::<()>::builder(Arc::clone(&counting))
        .migration(def(1), async_logs(&order, 1))
        .build()
        .unwrap();
    let report = older.run(()).await.unwrap();
    assert!(report.nothing_pending() && !report.was_settled());
    assert_eq!(counting.count("lock"), 0, "{:?}", counting.calls());
    assert_eq!(logged(&order), [1, 2]);
}

/// The observer hears the lock, each start, progress with rate, each
/// success, failure and skip, in order.
pub async fn observer_hears_every_step(db: &TestStore) {
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&heard);
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .observer(move |event| {
            let line = match event {
                RunEvent::LockAcquired { count, .. } => format!("lock {count}"),
                RunEvent::Started {
                    id,
                    position,
                    count,
                    ..
                } => format!("start {id} {position}/{count}"),
                RunEvent::Progress { id, progress, .. } => {
                    assert!(progress.rate >= 0.0);
                    format!("progress {id} {}/{:?}", progress.done, progress.total)
                }
                RunEvent::Succeeded { id, name, .. } => format!("ok {id} {name}"),
                RunEvent::Failed { id, kind, .. } => format!("failed {id} {kind:?}"),
                RunEvent::Skipped { id, reason, .. } => format!("skipped {id} {reason:?}"),
                other => format!("{other:?}"),
            };
            sink.lock().unwrap().push(line);
        })
        .migration(
            def(1),
            Handler::blocking_fn(|ctx: MigrationContext<()>| {
                ctx.report_progress(1, Some(2));
                ctx.report_progress(2, Some(2));
                Ok(())
            }),
        )
        .migration(def(2), failing("nope"))
        .migration(def(3), failing("never reached"))
        .build()
        .unwrap();
    let report = runner.run_and_report(()).await.unwrap();
    assert_eq!(report.failures().count(), 1);
    assert_eq!(
        *heard.lock().unwrap(),
        [
            "lock 3",
            "start 1 1/3",
            "progress 1 1/Some(2)",
            "progress 1 2/Some(2)",
            "ok 1 m1",
            "start 2 2/3",
            "failed 2 Error",
            "skipped 3 EarlierFailure(MigrationId(2))",
        ]
    );
}

/// While another instance holds the lock the run waits (and says so);
/// what that instance executed meanwhile is reported as already done.
pub async fn waits_for_the_lock_then_skips_what_another_instance_did(db: &TestStore) {
    let other = db.reopen().await;
    other.prepare().await.unwrap();
    let guard = other.lock(Duration::from_secs(10)).await.unwrap();
    let (waiting_tx, mut waiting_rx) = tokio::sync::mpsc::unbounded_channel();
    let order = log();
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .lock_wait(Duration::from_secs(60))
        .observer(move |event| {
            if let RunEvent::WaitingForLock { limit, .. } = event {
                let _ = waiting_tx.send(*limit);
            }
        })
        .migration(def(1), async_logs(&order, 1))
        .migration(def(2), blocking_logs(&order, 2))
        .build()
        .unwrap();
    let run = tokio::spawn(async move { runner.run(()).await });
    let limit = tokio::time::timeout(Duration::from_secs(30), waiting_rx.recv())
        .await
        .expect("no waiting notice")
        .unwrap();
    assert_eq!(limit, Duration::from_secs(60));
    // The lock holder executes 1, then lets go.
    other.record_success(id(1)).await.unwrap();
    drop(guard);
    let report = run.await.unwrap().unwrap();
    assert!(matches!(status_of(&report, 1), Status::AlreadyDone));
    assert_eq!(report.outcome(id(1)).unwrap().attempts, 1);
    assert!(matches!(status_of(&report, 2), Status::Executed));
    assert!(report.lock_waited().is_some());
    assert_eq!(logged(&order), [2]);
}

/// A lock held for the whole wait is `Error::LockTimeout`; nothing runs
/// and nothing is recorded.
pub async fn lock_wait_times_out_without_running_anything(db: &TestStore) {
    let other = db.reopen().await;
    other.prepare().await.unwrap();
    let _guard = other.lock(Duration::from_secs(10)).await.unwrap();
    let order = log();
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .lock_wait(Duration::from_millis(300))
        .migration(def(1), async_logs(&order, 1))
        .build()
        .unwrap();
    let err = runner.run(()).await.unwrap_err();
    assert!(matches!(err, Error::LockTimeout { .. }), "{err:?}");
    assert!(logged(&order).is_empty());
    let row = row(db, 1).await;
    assert_eq!((row.executed, row.attempts), (false, 0));
}

/// Sixteen runners, each on its own store instance, start at once: every
/// handler body runs exactly once and every run succeeds.
pub async fn sixteen_racing_runners_execute_each_body_once(db: &TestStore) {
    const RUNNERS: usize = 16;
    const MIGRATIONS: i64 = 5;
    let bodies: Arc<Vec<AtomicUsize>> =
        Arc::new((0..MIGRATIONS).map(|_| AtomicUsize::new(0)).collect());
    let start = Arc::new(tokio::sync::Barrier::new(RUNNERS));
    let mut tasks = Vec::new();
    for _ in 0..RUNNERS {
        let mut builder = Runner::<()>::builder(db.reopen().await);
        for raw in 1..=MIGRATIONS {
            let bodies = Arc::clone(&bodies);
            let slot = (raw - 1) as usize;
            // Alternate kinds; a short pause widens the window for races.
            let handler = if raw % 2 == 0 {
                Handler::async_fn(move |_ctx: MigrationContext<()>| {
                    let bodies = Arc::clone(&bodies);
                    async move {
                        bodies[slot].fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Ok(())
                    }
                })
            } else {
                Handler::blocking_fn(move |_ctx: MigrationContext<()>| {
                    bodies[slot].fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    Ok(())
                })
            };
            builder = builder.migration(def(raw), handler);
        }
        let runner = builder.build().unwrap();
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            runner.run(()).await
        }));
    }
    let mut executed = 0;
    for task in tasks {
        let report = task.await.expect("runner panicked").expect("run failed");
        assert!(report.is_success(), "{report}");
        for outcome in report.outcomes() {
            assert!(
                matches!(outcome.status, Status::Executed | Status::AlreadyDone),
                "{report}"
            );
        }
        executed += report.executed().count();
    }
    let counts: Vec<usize> = bodies.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(counts, vec![1; MIGRATIONS as usize], "bodies per migration");
    assert_eq!(executed, MIGRATIONS as usize);
    for row in db.store.list().await.unwrap() {
        assert!(row.executed && row.attempts == 1, "{row:?}");
    }
    assert_lock_free(db).await;
}

/// Duplicate declarations fail at build time, before any store call.
pub async fn build_errors_touch_nothing(db: &TestStore) {
    let counting = CountingStore::new(Arc::clone(&db.store));
    let order = log();
    let err = Runner::<()>::builder(Arc::clone(&counting))
        .migration(def(1), async_logs(&order, 1))
        .migration(
            MigrationDef::new(1, "other", "").unwrap(),
            async_logs(&order, 1),
        )
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { id: 1, .. }), "{err:?}");
    let err = Runner::<()>::builder(Arc::clone(&counting))
        .migration(def(2), async_logs(&order, 2))
        .migration(def(2), blocking_logs(&order, 2))
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { id: 2, .. }), "{err:?}");
    assert!(counting.calls().is_empty(), "{:?}", counting.calls());
}

/// On a current-thread runtime, a blocking handler runs on another thread:
/// an async task on the runtime's only thread keeps running meanwhile.
pub async fn blocking_handler_does_not_stall_a_current_thread_runtime(db: &TestStore) {
    let (started_tx, started_rx) = oneshot::channel::<std::thread::ThreadId>();
    let (answer_tx, answer_rx) = std::sync::mpsc::channel::<()>();
    let started_tx = Mutex::new(Some(started_tx));
    let answer_rx = Mutex::new(answer_rx);
    let runner = Runner::<()>::builder(Arc::clone(&db.store))
        .migration(
            def(1),
            Handler::blocking_fn(move |_ctx: MigrationContext<()>| {
                if let Some(tx) = started_tx.lock().unwrap().take() {
                    let _ = tx.send(std::thread::current().id());
                }
                // Only the async task below can answer. Had this handler
                // been run on the runtime's one thread, the task could never
                // run and this wait would fail.
                answer_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(30))
                    .map_err(|_| "the runtime stalled while the blocking handler ran")?;
                Ok(())
            }),
        )
        .build()
        .unwrap();
    let runtime_thread = std::thread::current().id();
    let responder = tokio::spawn(async move {
        let handler_thread = started_rx.await.expect("handler never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
        answer_tx.send(()).unwrap();
        handler_thread
    });
    let report = runner.run(()).await.unwrap();
    assert!(matches!(status_of(&report, 1), Status::Executed));
    assert_ne!(responder.await.unwrap(), runtime_thread);
}
