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
use waymark_core::store::{LockGuard, LockRequest, LockScope, RowChange, SetState};
use waymark_core::testkit::TestStore;
use waymark_core::{
    BatchStep, BoxError, CancellationToken, Error, MemoryStore, Migration, MigrationContext,
    MigrationDef, MigrationId, MigrationStore, async_trait,
};
use waymark_runner::{
    BackgroundStatus, FailureKind, FailurePolicy, Handler, PlannedAction, RunEvent, RunReport,
    Runner, SkipReason, Status, UndeclaredPolicy,
};

/// The store every suite runner works on: the backend under test, or a
/// [`CountingStore`] around it.
pub type Store = Arc<dyn MigrationStore>;

/// A handler of the suite's runners.
type H = Handler<(), Store>;

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
            undeclared_is_left_pending_and_reported_by_default,
            undeclared_fails_the_run_when_strict,
            two_releases_share_a_database_and_a_rollback_starts,
            panics_are_recorded_and_contained,
            async_timeout_aborts_and_records_a_failure,
            blocking_timeout_cancels_and_records_a_failure,
            blocking_overrun_keeps_the_lock_and_counts_as_done,
            resumes_from_the_checkpoint_after_a_failure,
            background_migration_runs_while_the_app_serves,
            shutdown_stops_a_backfill_at_a_batch_boundary_and_it_resumes,
            a_replica_serves_while_another_runs_the_background_migration,
            plan_shows_what_would_run_without_running_it,
            plan_and_run_refuse_a_renamed_migration,
            fast_path_is_one_query_without_lock,
            a_registered_set_with_work_left_skips_prepare_and_register,
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

impl CountingStore {
    /// This wrapper as the store of a runner.
    pub fn store(self: &Arc<Self>) -> Store {
        Arc::clone(self) as Store
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
    async fn update(&self, id: MigrationId, change: RowChange<'_>) -> Result<(), Error> {
        self.log("update").update(id, change).await
    }
    async fn lock(&self, request: &LockRequest) -> Result<LockGuard, Error> {
        self.log("lock").lock(request).await
    }
    async fn lock_or_wait(&self, request: &LockRequest) -> Result<Option<LockGuard>, Error> {
        self.log("lock_or_wait").lock_or_wait(request).await
    }
    async fn pending(&self) -> Result<Vec<Migration>, Error> {
        self.log("pending").pending().await
    }
    async fn get(&self, id: MigrationId) -> Result<Migration, Error> {
        self.log("get").get(id).await
    }
    async fn is_settled(&self, fingerprint: &str) -> Result<bool, Error> {
        self.log("is_settled").is_settled(fingerprint).await
    }
    async fn set_state(&self, fingerprint: &str) -> Result<SetState, Error> {
        self.log("set_state").set_state(fingerprint).await
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
}

// ---------------------------------------------------------------- helpers

fn run_lock(wait: Duration) -> LockRequest {
    LockRequest::new(LockScope::Run, wait)
}

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
fn async_logs(log: &Log, raw: i64) -> H {
    let log = Arc::clone(log);
    Handler::async_fn(move |_ctx: MigrationContext<()>| {
        let log = Arc::clone(&log);
        async move {
            tokio::task::yield_now().await;
            log.lock().unwrap().push(raw);
            Ok::<(), BoxError>(())
        }
    })
}

/// A blocking handler appending `raw` to `log`.
fn blocking_logs(log: &Log, raw: i64) -> H {
    let log = Arc::clone(log);
    Handler::blocking_fn(move |_ctx: MigrationContext<()>| {
        log.lock().unwrap().push(raw);
        Ok::<(), BoxError>(())
    })
}

/// A handler that always fails with a two-level error chain.
fn failing(message: &'static str) -> H {
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

/// How many times the store was asked for a lock, either way.
fn locks(counting: &CountingStore) -> usize {
    counting.count("lock") + counting.count("lock_or_wait")
}

fn status_of(report: &RunReport, raw: i64) -> &Status {
    &report
        .outcome(id(raw))
        .unwrap_or_else(|| panic!("no outcome for {raw} in\n{report}"))
        .status
}

/// Another instance can take both locks at once: the run released them.
async fn assert_lock_free(db: &TestStore) {
    let other = db.reopen().await;
    other.prepare().await.expect("prepare");
    for scope in [LockScope::Run, LockScope::Background] {
        let guard = other
            .lock(&LockRequest::new(scope, Duration::from_secs(5)))
            .await;
        assert!(
            guard.is_ok(),
            "the run left the {scope} lock held: {guard:?}"
        );
    }
}

// ---------------------------------------------------------------- tests

/// Declared and registered 3, 1, 2: handlers run 1, 2, 3.
pub async fn runs_pending_in_id_order(db: &TestStore) {
    db.store.prepare().await.unwrap();
    for raw in [3, 1, 2] {
        db.store.register(&[def(raw)]).await.unwrap();
    }
    let order = log();
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
        .migration(def(3), async_logs(&order, 3))
        .migration(def(1), blocking_logs(&order, 1))
        .migration(def(2), async_logs(&order, 2))
        .build()
        .unwrap();
    let report = runner.run(()).await.unwrap().into_report();
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
    let runner = Runner::<App, Store>::builder(Arc::clone(&db.store))
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
                Ok::<(), BoxError>(())
            }),
        )
        .build()
        .unwrap();
    let state = Arc::new(App {
        factor: 7,
        seen: Mutex::new(Vec::new()),
    });
    let report = runner.run(Arc::clone(&state)).await.unwrap().into_report();
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
            Ok::<(), BoxError>(())
        }
    });
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
        .migration(def(1), handler)
        .build()
        .unwrap();

    // `run` fails start-up when a migration fails, keeping the handler's error.
    match runner.run(()).await {
        Err(err @ Error::Handler { .. }) => {
            let Error::Handler { id, source } = &err else {
                unreachable!()
            };
            assert_eq!(id.get(), 1);
            assert!(source.downcast_ref::<Error>().is_some(), "{source:?}");
            // Each cause once: the runner's part, then the handler's chain.
            assert_eq!(
                waymark_core::error_chain(&err),
                "migration 1 failed: updating laps: connection reset"
            );
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

    let second = runner.run(()).await.unwrap().into_report();
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
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
        .migration(def(1), async_logs(&order, 1))
        .migration(def(2), failing("disk full"))
        .migration(def(3), blocking_logs(&order, 3))
        .build()
        .unwrap();
    let report = runner.run_and_report(()).await.unwrap().into_report();
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
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
        .on_failure(FailurePolicy::Continue)
        .migration(def(1), failing("first"))
        .migration(def(2), async_logs(&order, 2))
        .migration(def(3), failing("third"))
        .migration(def(4), blocking_logs(&order, 4))
        .build()
        .unwrap();
    let report = runner.run_and_report(()).await.unwrap().into_report();
    assert_eq!(logged(&order), [2, 4]);
    assert_eq!(report.failures().count(), 2);
    assert_eq!(report.executed().count(), 2);
    match report.into_result() {
        Err(Error::Handler { id, source }) => {
            assert_eq!(id.get(), 1);
            assert!(
                waymark_core::error_chain(&*source).contains("first"),
                "{source}"
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

/// A pending row this release does not declare (a newer release registered
/// it) does not stop a rollback: it is left pending, reported and warned
/// about, the rest runs, and a later start with only that row pending takes
/// no lock.
pub async fn undeclared_is_left_pending_and_reported_by_default(db: &TestStore) {
    db.store.prepare().await.unwrap();
    db.store.register(&[def(2)]).await.unwrap();
    let order = log();
    let heard: Arc<Mutex<Vec<i64>>> = Arc::default();
    let sink = Arc::clone(&heard);
    let counting = CountingStore::new(Arc::clone(&db.store));
    let runner = Runner::<(), Store>::builder(counting.store())
        .observer(move |event| {
            if let RunEvent::Undeclared { id, .. } = event {
                sink.lock().unwrap().push(id.get());
            }
        })
        .migration(def(1), async_logs(&order, 1))
        .migration(def(3), blocking_logs(&order, 3))
        .build()
        .unwrap();
    let report = runner.run(()).await.unwrap().into_report();
    assert_eq!(logged(&order), [1, 3]);
    assert!(report.is_success(), "{report}");
    assert!(matches!(status_of(&report, 2), Status::Undeclared));
    assert_eq!(report.undeclared().count(), 1);
    assert!(report.to_string().contains("not declared"), "{report}");
    assert_eq!(*heard.lock().unwrap(), [2]);
    let two = row(db, 2).await;
    assert_eq!(
        (two.executed, two.attempts, two.last_error),
        (false, 0, None)
    );

    counting.reset();
    let again = runner.run(()).await.unwrap().into_report();
    assert!(matches!(status_of(&again, 2), Status::Undeclared));
    assert_eq!(locks(&counting), 0, "{:?}", counting.calls());
}

/// Under [`UndeclaredPolicy::Fail`] the same row fails the run (nothing is
/// recorded against it) and, under the default stop policy, later
/// required migrations do not run.
pub async fn undeclared_fails_the_run_when_strict(db: &TestStore) {
    db.store.prepare().await.unwrap();
    db.store.register(&[def(2)]).await.unwrap();
    let order = log();
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
        .on_undeclared(UndeclaredPolicy::Fail)
        .migration(def(1), async_logs(&order, 1))
        .migration(def(3), async_logs(&order, 3))
        .build()
        .unwrap();
    let report = runner.run_and_report(()).await.unwrap().into_report();
    assert_eq!(logged(&order), [1]);
    match status_of(&report, 2) {
        Status::Failed(failure) => {
            assert_eq!(failure.kind(), FailureKind::Undeclared);
            assert!(failure.message().contains("not declared"), "{failure}");
        }
        other => panic!("expected an undeclared failure, got {other:?}"),
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
    assert!(
        matches!(&err, Error::Handler { id, source } if id.get() == 2 && source.is::<waymark_core::UndeclaredMigration>()),
        "{err:?}"
    );
    let err = runner.run(()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Handler { id, .. } if id.get() == 2),
        "{err:?}"
    );
}

/// Panics in async and blocking handlers are failures with the panic
/// message; the lock is released and the runtime keeps working.
pub async fn panics_are_recorded_and_contained(db: &TestStore) {
    let order = log();
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
        .on_failure(FailurePolicy::Continue)
        .migration(
            def(1),
            Handler::async_fn(|ctx: MigrationContext<()>| async move {
                if ctx.id().get() == 1 {
                    panic!("async boom at row 7");
                }
                Ok::<(), BoxError>(())
            }),
        )
        .migration(
            def(2),
            Handler::blocking_fn(|ctx: MigrationContext<()>| -> Result<(), BoxError> {
                let row = ctx.id().get() * 10;
                panic!("blocking boom at row {row}");
            }),
        )
        .migration(def(3), async_logs(&order, 3))
        .build()
        .unwrap();
    let report = runner.run_and_report(()).await.unwrap().into_report();
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
    let seen: Arc<Mutex<Option<CancellationToken>>> = Arc::default();
    let (dropped_in, seen_in) = (Arc::clone(&dropped), Arc::clone(&seen));
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
        .on_failure(FailurePolicy::Continue)
        .migration(
            def(1).timeout(Duration::from_millis(200)),
            Handler::async_fn(move |ctx: MigrationContext<()>| {
                let guard = SetOnDrop(Arc::clone(&dropped_in));
                *seen_in.lock().unwrap() = Some(ctx.cancellation().clone());
                async move {
                    let _guard = guard;
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    Ok::<(), BoxError>(())
                }
            }),
        )
        .migration(
            def(2),
            Handler::async_fn(|_ctx: MigrationContext<()>| async { Ok::<(), BoxError>(()) }),
        )
        .build()
        .unwrap();
    let report = runner.run_and_report(()).await.unwrap().into_report();
    match status_of(&report, 1) {
        Status::Failed(failure) => {
            assert_eq!(failure.kind(), FailureKind::Timeout);
            assert_eq!(failure.message(), "the handler timed out after 200ms");
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
    assert_eq!(
        row.last_error.as_deref(),
        Some("the handler timed out after 200ms")
    );
    assert_lock_free(db).await;
}

/// A blocking handler past the runner-wide timeout sees the cancellation,
/// gives up, and the failure says it timed out.
pub async fn blocking_timeout_cancels_and_records_a_failure(db: &TestStore) {
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
        .timeout(Duration::from_millis(150))
        .migration(
            def(1),
            Handler::blocking_fn(|ctx: MigrationContext<()>| -> Result<(), BoxError> {
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
    let report = runner.run_and_report(()).await.unwrap().into_report();
    match status_of(&report, 1) {
        Status::Failed(failure) => {
            assert_eq!(failure.kind(), FailureKind::Timeout);
            assert_eq!(
                failure.message(),
                "the handler timed out after 150ms: stopped between rows"
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
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
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
                Ok::<(), BoxError>(())
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
    let held = other.lock(&run_lock(Duration::from_millis(300))).await;
    assert!(
        matches!(held, Err(Error::LockTimeout { .. })),
        "the lock was free while the timed-out handler still ran: {held:?}"
    );
    go_tx.send(()).unwrap();
    let report = run.await.unwrap().unwrap().into_report();
    assert!(
        matches!(status_of(&report, 1), Status::Executed),
        "{report}"
    );
    assert!(row(db, 1).await.executed);
    assert_lock_free(db).await;
    let again = runner.run(()).await.unwrap().into_report();
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
    let async_handler = H::resumable(move |_state: Arc<()>, from: Option<String>| {
        let (seen, fail) = (Arc::clone(&seen), Arc::clone(&fail));
        async move {
            let start: u64 = from.as_deref().unwrap_or("0").parse()?;
            if start == 6 && fail.swap(false, Ordering::SeqCst) {
                return Err::<BatchStep, BoxError>("disk full at 6".into());
            }
            seen.lock().unwrap().push(start);
            Ok(step(start))
        }
    });
    let (seen, fail) = (Arc::clone(&blocking_batches), Arc::clone(&fail_blocking));
    let blocking_handler = H::resumable_blocking(move |_state: &(), from: Option<&str>| {
        let start: u64 = from.unwrap_or("0").parse::<u64>().map_err(BoxError::from)?;
        if start == 3 && fail.swap(false, Ordering::SeqCst) {
            return Err::<BatchStep, BoxError>("lost connection at 3".into());
        }
        seen.lock().unwrap().push(start);
        Ok(step(start))
    });
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
        .on_failure(FailurePolicy::Continue)
        .migration(def(1), async_handler)
        .migration(def(2), blocking_handler)
        .build()
        .unwrap();

    let first = runner.run_and_report(()).await.unwrap().into_report();
    assert_eq!(first.failures().count(), 2, "{first}");
    assert_eq!(*async_batches.lock().unwrap(), [0, 3]);
    assert_eq!(*blocking_batches.lock().unwrap(), [0]);
    let (one, two) = (row(db, 1).await, row(db, 2).await);
    assert_eq!(one.checkpoint.as_deref(), Some("6"));
    assert_eq!(one.last_error.as_deref(), Some("disk full at 6"));
    assert_eq!(two.checkpoint.as_deref(), Some("3"));

    let second = runner.run(()).await.unwrap().into_report();
    assert_eq!(second.executed().count(), 2);
    assert_eq!(*async_batches.lock().unwrap(), [0, 3, 6, 9]);
    assert_eq!(*blocking_batches.lock().unwrap(), [0, 3, 6, 9]);
    for raw in [1, 2] {
        let row = row(db, raw).await;
        assert!(row.executed && row.checkpoint.is_none(), "{row:?}");
        assert_eq!(row.attempts, 2);
    }
}

/// A background migration runs after the required ones while the
/// application serves: `run` returns before it ends, its status goes from
/// running (with progress) to finished, and `wait` adds its outcome.
pub async fn background_migration_runs_while_the_app_serves(db: &TestStore) {
    let order = log();
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::clone(&release);
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
        .migration(def(1), async_logs(&order, 1))
        .migration(
            def(2).background(),
            Handler::async_fn(move |ctx: MigrationContext<()>| {
                let gate = Arc::clone(&gate);
                async move {
                    ctx.report_progress(1, Some(4));
                    gate.notified().await;
                    Ok::<(), BoxError>(())
                }
            }),
        )
        .migration(def(3), blocking_logs(&order, 3))
        .build()
        .unwrap();
    let started = runner.run(()).await.unwrap();
    let report = started.report();
    assert_eq!(logged(&order), [1, 3], "required ones first, in order");
    assert!(report.outcome(id(2)).is_none(), "{report}");
    let background = started.background().clone();
    let mut status = background.subscribe();
    let running = tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| {
            matches!(s, BackgroundStatus::Running { id, progress: Some(p), .. }
                if id.get() == 2 && p.done == 1)
        }),
    )
    .await
    .expect("the background migration reports its progress");
    drop(running);
    assert!(!row(db, 2).await.executed);
    release.notify_one();
    assert_eq!(
        background.finished_status().await,
        BackgroundStatus::Finished
    );
    assert!(row(db, 2).await.executed);
    let whole = started.wait().await.unwrap();
    assert!(matches!(status_of(&whole, 2), Status::Executed), "{whole}");
    assert_eq!(whole.executed().count(), 3);
    assert_eq!(
        whole.outcomes().len(),
        3,
        "one outcome per migration: {whole}"
    );
    assert_lock_free(db).await;
}

/// The application's shutdown token stops a background backfill at a batch
/// boundary: the batch in progress commits its checkpoint, the status says
/// stopped, both locks are free, and the next start resumes exactly there:
/// every batch runs once.
pub async fn shutdown_stops_a_backfill_at_a_batch_boundary_and_it_resumes(db: &TestStore) {
    const BATCHES: u64 = 8;
    let batches: Arc<Mutex<Vec<u64>>> = Arc::default();
    let (at_three_tx, at_three_rx) = oneshot::channel::<()>();
    let at_three = Arc::new(Mutex::new(Some(at_three_tx)));
    let backfill = {
        let batches = Arc::clone(&batches);
        H::resumable(move |_state: Arc<()>, from: Option<String>| {
            let (batches, at_three) = (Arc::clone(&batches), Arc::clone(&at_three));
            async move {
                let start: u64 = from.as_deref().unwrap_or("0").parse()?;
                let reached = if start == 3 {
                    at_three.lock().unwrap().take()
                } else {
                    None
                };
                if let Some(tx) = reached {
                    let _ = tx.send(());
                    // The shutdown comes while this batch runs: it must finish.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                batches.lock().unwrap().push(start);
                let next = start + 1;
                Ok::<_, BoxError>(if next == BATCHES {
                    BatchStep::done(1)
                } else {
                    BatchStep::next(next.to_string(), 1).with_total(BATCHES)
                })
            }
        })
    };
    let build = |token: CancellationToken| {
        Runner::<(), Store>::builder(Arc::clone(&db.store))
            .shutdown(token)
            .migration(def(1).background(), backfill.clone())
            .build()
            .unwrap()
    };
    let shutdown = CancellationToken::new();
    let started = build(shutdown.clone()).run(()).await.unwrap();
    at_three_rx.await.expect("the backfill reached batch 3");
    shutdown.cancel();
    assert_eq!(
        started.background().finished_status().await,
        BackgroundStatus::Stopped
    );
    assert_eq!(*batches.lock().unwrap(), [0, 1, 2, 3]);
    let one = row(db, 1).await;
    assert_eq!(one.checkpoint.as_deref(), Some("4"), "{one:?}");
    assert!(!one.executed);
    assert_eq!(one.attempts, 0, "a shutdown is not a failed attempt");
    let report = started.wait().await.unwrap();
    assert!(matches!(status_of(&report, 1), Status::Stopped), "{report}");
    assert!(matches!(report.into_result(), Err(Error::Stopped { .. })));
    assert_lock_free(db).await;

    let restarted = build(CancellationToken::new()).run(()).await.unwrap();
    assert_eq!(
        restarted.background().finished_status().await,
        BackgroundStatus::Finished
    );
    assert_eq!(*batches.lock().unwrap(), (0..BATCHES).collect::<Vec<_>>());
    let one = row(db, 1).await;
    assert!(one.executed && one.checkpoint.is_none(), "{one:?}");
    assert_eq!(one.attempts, 1);
}

/// A replica that starts while another instance runs a background
/// migration serves at once (its `run` returns), says it waits for the
/// other instance, and reports finished without running it again once
/// the other is done.
pub async fn a_replica_serves_while_another_runs_the_background_migration(db: &TestStore) {
    let bodies = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let build = |store: Store| {
        let (bodies, release) = (Arc::clone(&bodies), Arc::clone(&release));
        Runner::<(), Store>::builder(store)
            .migration(
                def(1).background(),
                Handler::async_fn(move |_ctx: MigrationContext<()>| {
                    let (bodies, release) = (Arc::clone(&bodies), Arc::clone(&release));
                    async move {
                        bodies.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        Ok::<(), BoxError>(())
                    }
                }),
            )
            .build()
            .unwrap()
    };
    let first = build(Arc::clone(&db.store)).run(()).await.unwrap();
    let mut status = first.background().subscribe();
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| matches!(s, BackgroundStatus::Running { .. })),
    )
    .await
    .expect("the first instance runs it")
    .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), build(db.reopen().await).run(()))
        .await
        .expect("the replica serves at once")
        .unwrap();
    assert!(second.report().nothing_pending() || second.report().is_success());
    let mut watch = second.background().subscribe();
    let seen = tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|status| *status != BackgroundStatus::Starting),
    )
    .await
    .expect("the replica looks at the lock")
    .expect("the status is kept")
    .clone();
    assert_eq!(seen, BackgroundStatus::WaitingForOtherInstance);
    release.notify_one();
    assert_eq!(
        first.background().finished_status().await,
        BackgroundStatus::Finished
    );
    assert_eq!(
        second.background().finished_status().await,
        BackgroundStatus::Finished
    );
    assert_eq!(bodies.load(Ordering::SeqCst), 1);
    let whole = second.wait().await.unwrap();
    assert!(
        matches!(status_of(&whole, 1), Status::AlreadyDone),
        "{whole}"
    );
}

/// Two releases on one database: the newer one registers a migration that
/// fails; the older one, rolled back to, starts and serves with that row
/// reported as not declared; in strict mode the older one refuses.
pub async fn two_releases_share_a_database_and_a_rollback_starts(db: &TestStore) {
    let order = log();
    let newer = Runner::<(), Store>::builder(db.reopen().await)
        .migration(def(1), async_logs(&order, 1))
        .migration(def(2), blocking_logs(&order, 2))
        .migration(def(3), failing("the new column is missing"))
        .build()
        .unwrap();
    let failed = newer.run_and_report(()).await.unwrap().into_report();
    assert!(status_of(&failed, 3).is_failure(), "{failed}");
    assert!(
        newer.run(()).await.is_err(),
        "the newer release cannot start"
    );

    let older = |policy| {
        Runner::<(), Store>::builder(Arc::clone(&db.store))
            .on_undeclared(policy)
            .migration(def(1), async_logs(&order, 1))
            .migration(def(2), blocking_logs(&order, 2))
            .build()
            .unwrap()
    };
    let rolled_back = older(UndeclaredPolicy::Warn).run(()).await.unwrap();
    let report = rolled_back.report();
    assert!(
        matches!(status_of(report, 3), Status::Undeclared),
        "{report}"
    );
    assert!(report.is_success());
    let three = row(db, 3).await;
    assert!(!three.executed && three.attempts == 2, "{three:?}");
    let err = older(UndeclaredPolicy::Fail).run(()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Handler { id, .. } if id.get() == 3),
        "{err:?}"
    );
    assert_eq!(logged(&order), [1, 2], "each body ran once");
}

/// The plan lists what would run, in order, and runs, registers, prepares
/// and locks nothing: on a database without the table it reads once.
pub async fn plan_shows_what_would_run_without_running_it(db: &TestStore) {
    let counting = CountingStore::new(Arc::clone(&db.store));
    let order = log();
    let build = |policy| {
        Runner::<(), Store>::builder(counting.store())
            .on_undeclared(policy)
            .migration(def(1), async_logs(&order, 1))
            .migration(def(2), blocking_logs(&order, 2))
            .migration(def(3), async_logs(&order, 3))
            .migration(def(5), async_logs(&order, 5))
            .migration(def(6).background(), async_logs(&order, 6))
            .build()
            .unwrap()
    };
    // A fresh database has no table yet: the plan still answers, creating nothing.
    let fresh = build(UndeclaredPolicy::Fail).plan().await.unwrap();
    let ids: Vec<i64> = fresh.to_run().map(MigrationId::get).collect();
    assert_eq!(ids, [1, 2, 3, 5, 6]);
    assert!(fresh.steps().iter().all(|s| !s.registered));
    assert_eq!(counting.calls(), ["list"], "a plan must only read");
    assert!(matches!(
        db.store.list().await,
        Err(Error::NotInitialised { .. })
    ));

    // 1 executed; 2 failed once with a checkpoint; 4 tracked but not declared; 3 and 5 new.
    db.store.prepare().await.unwrap();
    db.store.register(&[def(1), def(2), def(4)]).await.unwrap();
    db.store.mark_executed(id(1)).await.unwrap();
    db.store
        .save_checkpoint(id(2), "last_id=500")
        .await
        .unwrap();
    db.store.record_failure(id(2), "timeout").await.unwrap();
    counting.reset();

    let plan = build(UndeclaredPolicy::Fail).plan().await.unwrap();
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
            (4, PlannedAction::FailUndeclared, true),
            (5, PlannedAction::NotRun(id(4)), false),
            // The background queue does not stop for a required failure.
            (6, PlannedAction::Run, false),
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
        text.contains("last_id=500") && text.contains("m3 (new)") && text.contains("background"),
        "{text}"
    );

    let warning = build(UndeclaredPolicy::Warn).plan().await.unwrap();
    let ids: Vec<i64> = warning.to_run().map(MigrationId::get).collect();
    assert_eq!(ids, [2, 3, 5, 6]);
    assert_eq!(warning.steps()[2].action, PlannedAction::LeaveUndeclared);
    assert_eq!(warning.undeclared().count(), 1);

    assert!(logged(&order).is_empty(), "a plan ran a handler");
    assert_eq!(counting.calls(), ["list", "list"], "a plan must only read");
    assert!(matches!(
        db.store.get(id(3)).await,
        Err(Error::NotFound { id }) if id.get() == 3
    ));
}

/// A declared id tracked under another name is a conflict for both the
/// plan and the run, and nothing runs.
pub async fn plan_and_run_refuse_a_renamed_migration(db: &TestStore) {
    db.store.prepare().await.unwrap();
    db.store.register(&[def(1)]).await.unwrap();
    let order = log();
    let renamed = MigrationDef::new(1, "renamed", "").unwrap();
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
        .migration(renamed, async_logs(&order, 1))
        .build()
        .unwrap();
    let err = runner.plan().await.unwrap_err();
    assert!(
        matches!(err, Error::Conflict { id, .. } if id.get() == 1),
        "{err:?}"
    );
    let err = runner.run(()).await.unwrap_err();
    assert!(
        matches!(err, Error::Conflict { id, .. } if id.get() == 1),
        "{err:?}"
    );
    assert!(logged(&order).is_empty());
    assert_eq!(row(db, 1).await.name, "m1");
}

/// Once everything ran, the next run is one query: no prepare, no
/// register, no lock. A new migration leaves the fast path.
pub async fn fast_path_is_one_query_without_lock(db: &TestStore) {
    let counting = CountingStore::new(Arc::clone(&db.store));
    let order = log();
    let runner = Runner::<(), Store>::builder(counting.store())
        .migration(def(1), async_logs(&order, 1))
        .migration(def(2), blocking_logs(&order, 2))
        .build()
        .unwrap();
    runner.run(()).await.unwrap().into_report();
    assert_eq!(locks(&counting), 1, "{:?}", counting.calls());

    for _ in 0..3 {
        counting.reset();
        let report = runner.run(()).await.unwrap().into_report();
        assert!(report.was_settled() && report.nothing_pending());
        assert_eq!(report.lock_waited(), None);
        assert_eq!(counting.calls(), ["set_state"]);
    }
    // Another instance sees the same.
    counting.reset();
    let other = CountingStore::new(db.reopen().await);
    let from_other = Runner::<(), Store>::builder(other.store())
        .migration(def(2), blocking_logs(&order, 2))
        .migration(def(1), async_logs(&order, 1))
        .build()
        .unwrap();
    assert!(
        from_other
            .run(())
            .await
            .unwrap()
            .into_report()
            .was_settled()
    );
    assert_eq!(other.calls(), ["set_state"]);

    // A new migration: not settled, so it runs under the lock.
    let grown = Runner::<(), Store>::builder(counting.store())
        .migration(def(1), async_logs(&order, 1))
        .migration(def(2), blocking_logs(&order, 2))
        .migration(def(3), async_logs(&order, 3))
        .build()
        .unwrap();
    let report = grown.run(()).await.unwrap().into_report();
    assert!(!report.was_settled());
    assert_eq!(locks(&counting), 1, "{:?}", counting.calls());
    assert_eq!(logged(&order), [1, 2, 3]);
}

/// A set registered before with work left (here a failure) starts again
/// without `prepare` or `register`: its first call tells the runner the set
/// is known, and it goes straight to the rows.
pub async fn a_registered_set_with_work_left_skips_prepare_and_register(db: &TestStore) {
    let order = log();
    let first = Runner::<(), Store>::builder(Arc::clone(&db.store))
        .migration(def(1), async_logs(&order, 1))
        .migration(def(2), failing("the laps service is down"))
        .build()
        .unwrap();
    let report = first.run_and_report(()).await.unwrap().into_report();
    assert_eq!(report.failures().count(), 1);

    let counting = CountingStore::new(Arc::clone(&db.store));
    let again = Runner::<(), Store>::builder(counting.store())
        .migration(def(1), async_logs(&order, 1))
        .migration(def(2), async_logs(&order, 2))
        .build()
        .unwrap();
    let report = again.run(()).await.unwrap().into_report();
    assert!(matches!(status_of(&report, 2), Status::Executed));
    assert_eq!(logged(&order), [1, 2]);
    let calls = counting.calls();
    assert_eq!(calls.first(), Some(&"set_state"), "{calls:?}");
    assert_eq!(counting.count("prepare"), 0, "{calls:?}");
    assert_eq!(counting.count("register"), 0, "{calls:?}");
    let two = row(db, 2).await;
    assert!(two.executed);
    assert_eq!(two.attempts, 2);
}

/// Rows deleted by hand (an old way to run a migration again) from a set
/// registered before are registered again, as new, and run: by the runner
/// when the set itself is known (the start-up skips `register`), and when
/// a release adds a migration to a set larger than what stores check in
/// full. Each backend calls this with its own way to delete a row.
pub async fn rows_deleted_by_hand_are_registered_and_run_again(
    store: Store,
    mut delete_row: impl AsyncFnMut(i64),
) {
    const LARGE: i64 = 70;
    assert!(LARGE as usize > waymark_core::store::CHEAP_ADDITIONS);
    let order = log();
    let runner = |upto: i64, failing_id: Option<i64>| {
        let mut builder = Runner::<(), Store>::builder(Arc::clone(&store));
        for raw in 1..=upto {
            let handler = match failing_id {
                Some(bad) if bad == raw => failing("the laps service is down"),
                _ => async_logs(&order, raw),
            };
            builder = builder.migration(def(raw), handler);
        }
        builder.build().unwrap()
    };
    let report = runner(LARGE, Some(LARGE)).run_and_report(()).await.unwrap();
    assert_eq!(report.into_report().failures().count(), 1);

    // The same set again (known, with work left): row 1 deleted.
    delete_row(1).await;
    order.lock().unwrap().clear();
    let report = runner(LARGE, None).run(()).await.unwrap().into_report();
    assert!(matches!(status_of(&report, 1), Status::Executed));
    assert_eq!(logged(&order), [1, LARGE]);

    // A release adding one: row 2 deleted from the part registered before.
    delete_row(2).await;
    order.lock().unwrap().clear();
    let report = runner(LARGE + 1, None).run(()).await.unwrap().into_report();
    assert!(matches!(status_of(&report, 2), Status::Executed));
    assert_eq!(logged(&order), [2, LARGE + 1]);
    let rows = store.list().await.unwrap();
    assert_eq!(rows.len(), LARGE as usize + 1);
    assert!(rows.iter().all(|row| row.executed), "{rows:?}");
}

/// Registered but nothing pending (a subset of an executed set, never
/// registered on its own): no lock either.
pub async fn nothing_pending_takes_no_lock(db: &TestStore) {
    let order = log();
    Runner::<(), Store>::builder(Arc::clone(&db.store))
        .migration(def(1), async_logs(&order, 1))
        .migration(def(2), async_logs(&order, 2))
        .build()
        .unwrap()
        .run(())
        .await
        .unwrap();
    let counting = CountingStore::new(Arc::clone(&db.store));
    let older = Runner::<(), Store>::builder(counting.store())
        .migration(def(1), async_logs(&order, 1))
        .build()
        .unwrap();
    let report = older.run(()).await.unwrap().into_report();
    assert!(report.nothing_pending() && !report.was_settled());
    assert_eq!(locks(&counting), 0, "{:?}", counting.calls());
    assert_eq!(logged(&order), [1, 2]);
}

/// The observer hears the lock, each start, progress with rate, each
/// success, failure and skip, in order.
pub async fn observer_hears_every_step(db: &TestStore) {
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&heard);
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
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
                Ok::<(), BoxError>(())
            }),
        )
        .migration(def(2), failing("nope"))
        .migration(def(3), failing("never reached"))
        .build()
        .unwrap();
    let report = runner.run_and_report(()).await.unwrap().into_report();
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
    let guard = other
        .lock(&run_lock(Duration::from_secs(10)))
        .await
        .unwrap();
    let (waiting_tx, mut waiting_rx) = tokio::sync::mpsc::unbounded_channel();
    let order = log();
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
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
    let report = run.await.unwrap().unwrap().into_report();
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
    let _guard = other
        .lock(&run_lock(Duration::from_secs(10)))
        .await
        .unwrap();
    let order = log();
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
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
        let mut builder = Runner::<(), Store>::builder(db.reopen().await);
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
                        Ok::<(), BoxError>(())
                    }
                })
            } else {
                Handler::blocking_fn(move |_ctx: MigrationContext<()>| {
                    bodies[slot].fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    Ok::<(), BoxError>(())
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
        let report = task
            .await
            .expect("runner panicked")
            .expect("run failed")
            .into_report();
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
    let err = Runner::<(), Store>::builder(counting.store())
        .migration(def(1), async_logs(&order, 1))
        .migration(
            MigrationDef::new(1, "other", "").unwrap(),
            async_logs(&order, 1),
        )
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { id, .. } if id.get() == 1),
        "{err:?}"
    );
    let err = Runner::<(), Store>::builder(counting.store())
        .migration(def(2), async_logs(&order, 2))
        .migration(def(2), blocking_logs(&order, 2))
        .build()
        .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { id, .. } if id.get() == 2),
        "{err:?}"
    );
    assert!(counting.calls().is_empty(), "{:?}", counting.calls());
}

/// On a current-thread runtime, a blocking handler runs on another thread:
/// an async task on the runtime's only thread keeps running meanwhile.
pub async fn blocking_handler_does_not_stall_a_current_thread_runtime(db: &TestStore) {
    let (started_tx, started_rx) = oneshot::channel::<std::thread::ThreadId>();
    let (answer_tx, answer_rx) = std::sync::mpsc::channel::<()>();
    let started_tx = Mutex::new(Some(started_tx));
    let answer_rx = Mutex::new(answer_rx);
    let runner = Runner::<(), Store>::builder(Arc::clone(&db.store))
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
                Ok::<(), BoxError>(())
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
    let report = runner.run(()).await.unwrap().into_report();
    assert!(matches!(status_of(&report, 1), Status::Executed));
    assert_ne!(responder.await.unwrap(), runtime_thread);
}
