//! The atomic-handler conformance suite: every [`AtomicStore`] runs all of it.
//!
//! Each public `async fn` checks one promise of [`AtomicStore`] against a
//! fresh database, calling the store's atomic execution exactly as the
//! runner does. A backend implements [`AtomicFixture`] (the few statements
//! the suite needs, in its own SQL and transaction type) and runs the suite
//! with one macro call:
//!
//! ```ignore
//! async fn fresh() -> waymark_core::testkit::AtomicDb<MyStore> { /* an empty database */ }
//! waymark_core::atomic_conformance_tests!(MyStore, fresh);
//! ```

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::run::new_context;
use crate::store::{AtomicError, AtomicFn, AtomicStore, BatchFn};
use crate::{
    BatchStep, BoxError, Error, Migration, MigrationContext, MigrationDef, MigrationId,
    MigrationStore, StalledBatch,
};

/// A fresh, empty, unprepared database under test and its store.
pub struct AtomicDb<St> {
    /// The store under test.
    pub store: St,
    _keep_alive: Box<dyn Any + Send + Sync>,
}

impl<St> AtomicDb<St> {
    /// `store` on a fresh database; `keep_alive` holds what must outlive the
    /// test (a temporary directory, a database to drop).
    pub fn new(store: St, keep_alive: impl Any + Send + Sync) -> Self {
        Self {
            store,
            _keep_alive: Box::new(keep_alive),
        }
    }
}

impl<St> std::fmt::Debug for AtomicDb<St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AtomicDb")
    }
}

/// What the batch bodies of the suite do: insert the values after the
/// checkpoint (a number, 0 when there is none), `per_batch` at a time, up to
/// `last`; with `stall`, return the checkpoint the batch started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPlan {
    /// Values inserted per batch.
    pub per_batch: i64,
    /// The last value; the batch that inserts it is the last batch.
    pub last: i64,
    /// Return the starting checkpoint instead of advancing.
    pub stall: bool,
}

/// What the suite needs of a backend besides its store: statements on a data
/// table `waymark_suite_data (v BIGINT NOT NULL)` of the database under test,
/// written through the store's transaction.
pub trait AtomicFixture: AtomicStore {
    /// A body that inserts `value` into the data table (creating the table
    /// first if it does not exist) through the transaction.
    fn insert<S: Send + Sync + 'static>(value: i64) -> AtomicFn<S, Self>;

    /// A batch body following the context's [`BatchPlan`]: reads the
    /// checkpoint `from` as the last value inserted (0 for `None`), inserts
    /// `from + 1 ..= min(from + per_batch, last)` (creating the table if
    /// needed), and returns [`BatchStep::done`] once `last` is inserted,
    /// else [`BatchStep::next`] with the last value inserted (or `from`
    /// itself under `stall`).
    fn batch() -> BatchFn<BatchPlan, Self>;

    /// A body that runs one statement that never ends by itself (a
    /// server-side sleep of an hour, a query counting to a trillion), after
    /// inserting the value 1.
    fn endless<S: Send + Sync + 'static>() -> AtomicFn<S, Self>;

    /// The values in the data table, sorted; empty when it does not exist.
    fn values(&self) -> impl Future<Output = Vec<i64>> + Send;

    /// Whether any statement of the suite's database is still running or
    /// holds a lock on its server (other than the check itself).
    fn busy(&self) -> impl Future<Output = bool> + Send;
}

/// Runs the whole atomic suite, one `#[tokio::test]` per behaviour, against
/// the `$store` databases made by `$fresh` (an `async fn() -> AtomicDb<$store>`).
#[macro_export]
macro_rules! atomic_conformance_tests {
    ($store:ty, $fresh:path) => {
        $crate::__atomic_conformance_tests!($store, $fresh;
            atomic_commits_work_and_success_together,
            atomic_error_rolls_back_both,
            atomic_panic_rolls_back_both,
            atomic_success_is_conditional,
            batches_commit_with_their_checkpoint_and_resume,
            batch_success_is_conditional_on_its_checkpoint,
            stalled_batch_rolls_back,
            reentry_from_another_thread_fails_at_once,
            cancelled_handler_leaves_nothing_running,
            dropped_handler_leaves_nothing_running,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __atomic_conformance_tests {
    ($store:ty, $fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let db: $crate::testkit::AtomicDb<$store> = $fresh().await;
                $crate::testkit::atomic::$name::<$store>(&db).await;
            }
        )*
    };
}

/// How long a promised "at once" may take on a loaded machine.
const AT_ONCE: Duration = Duration::from_secs(3);

fn id(raw: i64) -> MigrationId {
    MigrationId::new(raw).expect("positive id")
}

/// Prepares the store and registers migration `raw` as pending.
async fn registered<St: AtomicStore>(store: &St, raw: i64) -> Migration {
    store.prepare().await.expect("prepare");
    let def = MigrationDef::new(raw, format!("m{raw}"), "").expect("valid definition");
    store.register(&[def]).await.expect("register");
    store.get(id(raw)).await.expect("get")
}

fn context<S, St: AtomicStore>(store: &St, state: S, row: Migration) -> Arc<MigrationContext<S>> {
    context_with(store, state, row, CancellationToken::new())
}

fn context_with<S, St: AtomicStore>(
    store: &St,
    state: S,
    row: Migration,
    cancel: CancellationToken,
) -> Arc<MigrationContext<S>> {
    let shared: Arc<dyn MigrationStore> = Arc::new(store.clone());
    Arc::new(new_context(Arc::new(state), row, shared, None, cancel))
}

/// `work`, then `after` on its result, inside the transaction.
fn then<S, St, F>(work: AtomicFn<S, St>, after: F) -> AtomicFn<S, St>
where
    S: Send + Sync + 'static,
    St: AtomicStore,
    F: Fn(Result<(), BoxError>) -> Result<(), BoxError> + Clone + Send + Sync + 'static,
{
    Arc::new(move |tx, ctx| St::map_output(work(tx, ctx), after.clone()))
}

/// The work and the success commit in one transaction.
pub async fn atomic_commits_work_and_success_together<St: AtomicFixture>(db: &AtomicDb<St>) {
    let row = registered(&db.store, 1).await;
    let ctx = context(&db.store, (), row);
    db.store
        .execute_atomic(St::insert(7), ctx)
        .await
        .expect("the atomic transaction commits");
    assert_eq!(db.store.values().await, [7]);
    let row = db.store.get(id(1)).await.unwrap();
    assert!(row.executed && row.executed_at.is_some(), "{row:?}");
    assert_eq!((row.attempts, row.last_error), (1, None));
}

/// A handler error rolls back its work and records nothing.
pub async fn atomic_error_rolls_back_both<St: AtomicFixture>(db: &AtomicDb<St>) {
    let row = registered(&db.store, 1).await;
    let failing = then(St::insert(7), |_| Err("refused by the handler".into()));
    let result = db
        .store
        .execute_atomic(failing, context(&db.store, (), row.clone()))
        .await;
    match result {
        Err(AtomicError::Failed(err)) => assert_eq!(err.to_string(), "refused by the handler"),
        other => panic!("expected the handler's error, got {other:?}"),
    }
    assert!(db.store.values().await.is_empty());
    assert_eq!(db.store.get(id(1)).await.unwrap(), row);
}

/// A panic rolls back its work, goes on unwinding, and leaves the store usable.
pub async fn atomic_panic_rolls_back_both<St: AtomicFixture>(db: &AtomicDb<St>) {
    let row = registered(&db.store, 1).await;
    let panicking = then(St::insert(7), |_| panic!("handler bug"));
    let call = db
        .store
        .execute_atomic(panicking, context(&db.store, (), row.clone()));
    let joined = tokio::spawn(call).await;
    assert!(
        joined.as_ref().is_err_and(|e| e.is_panic()),
        "the panic must reach the caller: {joined:?}"
    );
    assert!(db.store.values().await.is_empty());
    assert_eq!(db.store.get(id(1)).await.unwrap(), row);
    // The store is still usable, the connection released.
    let ctx = context(&db.store, (), row);
    db.store.execute_atomic(St::insert(8), ctx).await.unwrap();
    assert_eq!(db.store.values().await, [8]);
}

/// Success is recorded only if the row is still pending; otherwise the
/// work rolls back and the store says another run got there first.
pub async fn atomic_success_is_conditional<St: AtomicFixture>(db: &AtomicDb<St>) {
    let row = registered(&db.store, 1).await;
    db.store.mark_executed(id(1)).await.unwrap();
    let before = db.store.get(id(1)).await.unwrap();
    let result = db
        .store
        .execute_atomic(St::insert(7), context(&db.store, (), row))
        .await;
    assert!(
        matches!(result, Err(AtomicError::Superseded(_))),
        "{result:?}"
    );
    assert!(db.store.values().await.is_empty(), "the work rolled back");
    assert_eq!(db.store.get(id(1)).await.unwrap(), before);
}

/// Each batch commits with its checkpoint; after a stop the next batch
/// starts from the saved checkpoint; the last batch records the success.
pub async fn batches_commit_with_their_checkpoint_and_resume<St: AtomicFixture>(db: &AtomicDb<St>) {
    let plan = BatchPlan {
        per_batch: 3,
        last: 7,
        stall: false,
    };
    let row = registered(&db.store, 1).await;
    let step = db
        .store
        .execute_batch(St::batch(), context(&db.store, plan, row), None)
        .await
        .unwrap();
    assert_eq!(step, BatchStep::next("3", 3));
    assert_eq!(db.store.values().await, [1, 2, 3]);
    // "Crash": a new run starts from the stored row.
    let row = db.store.get(id(1)).await.unwrap();
    assert_eq!(row.checkpoint.as_deref(), Some("3"));
    assert!(!row.executed);
    let ctx = context(&db.store, plan, row);
    let step = db
        .store
        .execute_batch(St::batch(), Arc::clone(&ctx), Some("3".into()))
        .await
        .unwrap();
    assert_eq!(step.checkpoint(), Some("6"));
    let step = db
        .store
        .execute_batch(St::batch(), ctx, Some("6".into()))
        .await
        .unwrap();
    assert!(step.is_done(), "{step:?}");
    assert_eq!(db.store.values().await, [1, 2, 3, 4, 5, 6, 7]);
    let row = db.store.get(id(1)).await.unwrap();
    assert!(row.executed && row.checkpoint.is_none(), "{row:?}");
    assert_eq!(row.attempts, 1);
}

/// A batch commits only if the row is still at the checkpoint it started
/// from; a batch of a run that another run overtook rolls back.
pub async fn batch_success_is_conditional_on_its_checkpoint<St: AtomicFixture>(db: &AtomicDb<St>) {
    let plan = BatchPlan {
        per_batch: 2,
        last: 10,
        stall: false,
    };
    let row = registered(&db.store, 1).await;
    db.store.save_checkpoint(id(1), "4").await.unwrap();
    let result = db
        .store
        .execute_batch(St::batch(), context(&db.store, plan, row.clone()), None)
        .await;
    assert!(
        matches!(result, Err(AtomicError::Superseded(_))),
        "{result:?}"
    );
    assert!(db.store.values().await.is_empty(), "the batch rolled back");
    let last = BatchPlan { last: 2, ..plan };
    db.store.save_checkpoint(id(1), "0").await.unwrap();
    db.store.mark_executed(id(1)).await.unwrap();
    let result = db
        .store
        .execute_batch(St::batch(), context(&db.store, last, row), Some("0".into()))
        .await;
    assert!(
        matches!(result, Err(AtomicError::Superseded(_))),
        "{result:?}"
    );
    assert!(db.store.values().await.is_empty());
}

/// A batch that returns the checkpoint it started from rolls back.
pub async fn stalled_batch_rolls_back<St: AtomicFixture>(db: &AtomicDb<St>) {
    let plan = BatchPlan {
        per_batch: 2,
        last: 10,
        stall: true,
    };
    let row = registered(&db.store, 1).await;
    db.store.save_checkpoint(id(1), "4").await.unwrap();
    let row = Migration {
        checkpoint: Some("4".into()),
        ..row
    };
    let result = db
        .store
        .execute_batch(St::batch(), context(&db.store, plan, row), Some("4".into()))
        .await;
    match result {
        Err(AtomicError::Failed(err)) => assert!(err.is::<StalledBatch>(), "{err}"),
        other => panic!("expected StalledBatch, got {other:?}"),
    }
    assert!(db.store.values().await.is_empty());
    let row = db.store.get(id(1)).await.unwrap();
    assert_eq!(row.checkpoint.as_deref(), Some("4"));
}

/// A handler that waits for another thread calling the store about its own
/// migration gets an error at once from that call, not a deadlock.
pub async fn reentry_from_another_thread_fails_at_once<St: AtomicFixture>(db: &AtomicDb<St>) {
    let row = registered(&db.store, 1).await;
    let store = db.store.clone();
    let runtime = tokio::runtime::Handle::current();
    let reentering = then(St::insert(7), move |result| {
        let (store, runtime) = (store.clone(), runtime.clone());
        let started = Instant::now();
        let call = std::thread::spawn(move || runtime.block_on(store.mark_executed(id(1))))
            .join()
            .expect("the thread returns");
        let took = started.elapsed();
        match call {
            Err(Error::Conflict { .. }) if took < AT_ONCE => result,
            other => {
                Err(format!("expected an immediate Conflict, got {other:?} after {took:?}").into())
            }
        }
    });
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        db.store
            .execute_atomic(reentering, context(&db.store, (), row)),
    )
    .await
    .expect("no deadlock");
    outcome.expect("the re-entrant call failed at once and the handler went on");
    assert_eq!(db.store.values().await, [7]);
    // Afterwards the row is writable again.
    db.store.mark_pending(id(1)).await.unwrap();
}

async fn settled<St: AtomicFixture>(db: &AtomicDb<St>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if !db.store.busy().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A handler whose context is cancelled (a timeout) while its statement
/// runs returns soon, rolled back, leaving no statement running and no lock.
pub async fn cancelled_handler_leaves_nothing_running<St: AtomicFixture>(db: &AtomicDb<St>) {
    let row = registered(&db.store, 1).await;
    let cancel = CancellationToken::new();
    let ctx = context_with(&db.store, (), row.clone(), cancel.clone());
    let call = tokio::spawn(db.store.execute_atomic(St::endless(), ctx));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!call.is_finished(), "the endless statement ended by itself");
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("a cancelled atomic handler returns")
        .expect("no panic");
    assert!(matches!(result, Err(AtomicError::Failed(_))), "{result:?}");
    assert!(settled(db).await, "a statement is still running");
    assert!(db.store.values().await.is_empty());
    assert_eq!(db.store.get(id(1)).await.unwrap(), row);
    tokio::time::timeout(AT_ONCE, db.store.save_checkpoint(id(1), "free"))
        .await
        .expect("the row is not locked")
        .unwrap();
}

/// A handler whose future is dropped (the run abandoned) leaves no
/// statement running and no lock held.
pub async fn dropped_handler_leaves_nothing_running<St: AtomicFixture>(db: &AtomicDb<St>) {
    let row = registered(&db.store, 1).await;
    let ctx = context(&db.store, (), row.clone());
    let call = tokio::spawn(db.store.execute_atomic(St::endless(), ctx));
    tokio::time::sleep(Duration::from_millis(500)).await;
    call.abort();
    let _ = call.await;
    assert!(settled(db).await, "a statement is still running");
    assert!(db.store.values().await.is_empty());
    assert_eq!(db.store.get(id(1)).await.unwrap(), row);
    tokio::time::timeout(AT_ONCE, db.store.save_checkpoint(id(1), "free"))
        .await
        .expect("the row is not locked")
        .unwrap();
}
