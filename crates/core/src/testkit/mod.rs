//! The backend conformance suite: every store runs all of it.
//!
//! Each public `async fn` checks one behaviour of the [`MigrationStore`]
//! contract against a fresh, empty database. A backend crate runs the whole
//! suite with one macro call in a test file, giving it an `async fn` that
//! opens a fresh database:
//!
//! ```ignore
//! async fn fresh() -> waymark_core::testkit::TestStore { /* open an empty database */ }
//! waymark_core::store_conformance_tests!(fresh);
//! ```
//!
//! The macro expands to one `#[tokio::test]` per behaviour, so the crate
//! needs `tokio` (with `macros` and `rt-multi-thread`) as a dev-dependency.

pub mod atomic;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use atomic::{AtomicDb, AtomicFixture, BatchPlan};

use crate::store::{LockHolder, LockInfo, LockRequest, LockScope, SetState};
use crate::{Error, Migration, MigrationDef, MigrationId, MigrationStore};

/// Opens another store instance on the same database.
pub type ReopenFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Arc<dyn MigrationStore>> + Send>> + Send + Sync>;

/// A fresh, empty, unprepared database under test, and how to reach it again.
pub struct TestStore {
    /// The store under test.
    pub store: Arc<dyn MigrationStore>,
    reopen: ReopenFn,
    _keep_alive: Box<dyn Any + Send + Sync>,
}

impl TestStore {
    /// `store` on a fresh database; `reopen` opens another instance on the
    /// same database (another connection pool, another file handle);
    /// `keep_alive` holds what must outlive the test (a temporary directory).
    pub fn new(
        store: Arc<dyn MigrationStore>,
        reopen: ReopenFn,
        keep_alive: impl Any + Send + Sync,
    ) -> Self {
        Self {
            store,
            reopen,
            _keep_alive: Box::new(keep_alive),
        }
    }

    /// Another store instance on the same database.
    pub async fn reopen(&self) -> Arc<dyn MigrationStore> {
        (self.reopen)().await
    }

    async fn prepared(&self) -> &dyn MigrationStore {
        self.store.prepare().await.expect("prepare");
        &*self.store
    }
}

impl fmt::Debug for TestStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TestStore")
    }
}

/// Runs the whole conformance suite, one `#[tokio::test]` per behaviour,
/// against the databases made by `$fresh` (an `async fn() -> TestStore`).
#[macro_export]
macro_rules! store_conformance_tests {
    ($fresh:path) => {
        $crate::__store_conformance_tests!($fresh;
            prepare_is_idempotent,
            empty_store_lists_nothing,
            register_inserts_pending_rows,
            pending_is_ordered_by_id,
            list_is_ordered_by_id,
            pending_excludes_executed,
            register_keeps_executed_state,
            register_keeps_failures_and_checkpoint,
            register_empty_set_is_ok,
            register_same_definitions_twice_is_ok,
            register_conflict_on_other_name,
            register_conflict_registers_nothing,
            register_duplicate_id_in_one_call_conflicts,
            register_a_grown_set_adds_what_is_new_and_still_refuses_conflicts,
            get_returns_the_row,
            get_unknown_is_not_found,
            mark_executed_unknown_is_not_found,
            record_success_unknown_is_not_found,
            mark_pending_unknown_is_not_found,
            record_failure_unknown_is_not_found,
            save_checkpoint_unknown_is_not_found,
            mark_executed_sets_a_recent_utc_time,
            mark_executed_is_idempotent,
            mark_executed_clears_checkpoint,
            mark_pending_reopens_and_keeps_history,
            record_failure_counts_attempts,
            record_failure_keeps_checkpoint,
            record_success_counts_and_clears,
            checkpoint_round_trips_one_mebibyte,
            checkpoint_round_trips_unicode,
            checkpoint_overwrites,
            last_error_round_trips_unicode_and_size,
            names_with_sql_syntax_are_stored_verbatim,
            limits_are_characters_not_bytes,
            instances_share_state,
            concurrent_registers_and_marks_lose_nothing,
            concurrent_failures_lose_no_attempt,
            settled_after_all_executed,
            not_settled_while_pending,
            not_settled_for_unknown_fingerprint,
            not_settled_before_prepare,
            lock_is_mutually_exclusive,
            lock_is_exclusive_across_instances,
            lock_is_released_on_drop,
            lock_times_out_after_the_wait,
            lock_or_wait_takes_a_free_lock_and_outwaits_a_holder,
            lock_scopes_are_separate_locks,
            locks_name_their_holder,
            reads_before_prepare_are_not_initialised,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_tests {
    ($fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let db = $fresh().await;
                $crate::testkit::$name(&db).await;
            }
        )*
    };
}

fn run_lock(wait: Duration) -> LockRequest {
    LockRequest::new(LockScope::Run, wait)
}

fn id(raw: i64) -> MigrationId {
    MigrationId::new(raw).expect("positive id")
}

fn def(raw: i64, name: &str) -> MigrationDef {
    MigrationDef::new(raw, name, format!("description of {name}")).expect("valid definition")
}

fn defs(ids: &[i64]) -> Vec<MigrationDef> {
    ids.iter()
        .map(|&raw| def(raw, &format!("m{raw}")))
        .collect()
}

fn ids(rows: &[Migration]) -> Vec<i64> {
    rows.iter().map(|row| row.id.get()).collect()
}

fn assert_not_found<T: fmt::Debug>(result: Result<T, Error>, raw: i64) {
    match result {
        Err(Error::NotFound { id }) => assert_eq!(id.get(), raw),
        other => panic!("expected NotFound for id {raw}, got {other:?}"),
    }
}

/// `prepare` twice, and again after data exists, keeps everything.
pub async fn prepare_is_idempotent(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1, 2])).await.unwrap();
    store.mark_executed(id(1)).await.unwrap();
    store.prepare().await.unwrap();
    store.prepare().await.unwrap();
    let rows = store.list().await.unwrap();
    assert_eq!(ids(&rows), [1, 2]);
    assert!(rows[0].executed && !rows[1].executed);
}

/// A new store has no migrations.
pub async fn empty_store_lists_nothing(db: &TestStore) {
    let store = db.prepared().await;
    assert!(store.list().await.unwrap().is_empty());
    assert!(store.pending().await.unwrap().is_empty());
}

/// Registered migrations start pending, with no history.
pub async fn register_inserts_pending_rows(db: &TestStore) {
    let store = db.prepared().await;
    let def = MigrationDef::new(5, "fill_pace", "Derive pace streams").unwrap();
    store.register(std::slice::from_ref(&def)).await.unwrap();
    let row = store.get(id(5)).await.unwrap();
    assert_eq!(row, Migration::registered(&def));
}

/// Pending migrations come back by ascending id, whatever the order registered.
pub async fn pending_is_ordered_by_id(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[10, 2, 7])).await.unwrap();
    assert_eq!(ids(&store.pending().await.unwrap()), [2, 7, 10]);
    store
        .register(&defs(&[5, 1_000_000_000_000]))
        .await
        .unwrap();
    assert_eq!(
        ids(&store.pending().await.unwrap()),
        [2, 5, 7, 10, 1_000_000_000_000]
    );
}

/// `list` orders by id too, executed or not.
pub async fn list_is_ordered_by_id(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[30, 3, 300])).await.unwrap();
    store.mark_executed(id(300)).await.unwrap();
    assert_eq!(ids(&store.list().await.unwrap()), [3, 30, 300]);
}

/// Executed migrations are not pending.
pub async fn pending_excludes_executed(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1, 2, 3])).await.unwrap();
    store.mark_executed(id(2)).await.unwrap();
    assert_eq!(ids(&store.pending().await.unwrap()), [1, 3]);
}

/// Registering a known id again keeps it executed.
pub async fn register_keeps_executed_state(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1, 2])).await.unwrap();
    store.mark_executed(id(1)).await.unwrap();
    let before = store.get(id(1)).await.unwrap();
    store.register(&defs(&[1, 2, 3])).await.unwrap();
    assert_eq!(store.get(id(1)).await.unwrap(), before);
    assert_eq!(ids(&store.pending().await.unwrap()), [2, 3]);
}

/// Registering a known id again keeps its attempts, error and checkpoint,
/// and its description.
pub async fn register_keeps_failures_and_checkpoint(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[4])).await.unwrap();
    store.record_failure(id(4), "boom").await.unwrap();
    store.save_checkpoint(id(4), "row 17").await.unwrap();
    let before = store.get(id(4)).await.unwrap();
    let renamed_description = MigrationDef::new(4, "m4", "another description").unwrap();
    store.register(&[renamed_description]).await.unwrap();
    assert_eq!(store.get(id(4)).await.unwrap(), before);
}

/// Registering nothing is allowed and changes nothing.
pub async fn register_empty_set_is_ok(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&[]).await.unwrap();
    assert!(store.list().await.unwrap().is_empty());
}

/// Registering the same set twice is a no-op the second time.
pub async fn register_same_definitions_twice_is_ok(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1, 2, 3])).await.unwrap();
    let before = store.list().await.unwrap();
    store.register(&defs(&[3, 2, 1])).await.unwrap();
    assert_eq!(store.list().await.unwrap(), before);
}

/// A known id under another name is a conflict naming both names.
pub async fn register_conflict_on_other_name(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&[def(1, "original")]).await.unwrap();
    match store.register(&[def(1, "renamed")]).await {
        Err(Error::Conflict { id, message }) => {
            assert_eq!(id.get(), 1);
            assert!(
                message.contains("original") && message.contains("renamed"),
                "{message}"
            );
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.get(self::id(1)).await.unwrap().name, "original");
}

/// A conflicting call registers none of its definitions.
pub async fn register_conflict_registers_nothing(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&[def(5, "five")]).await.unwrap();
    let result = store
        .register(&[def(1, "one"), def(5, "not five"), def(9, "nine")])
        .await;
    assert!(
        matches!(&result, Err(Error::Conflict { id, .. }) if id.get() == 5),
        "{result:?}"
    );
    assert_eq!(ids(&store.list().await.unwrap()), [5]);
}

/// One id twice with two names in a single call is a conflict.
pub async fn register_duplicate_id_in_one_call_conflicts(db: &TestStore) {
    let store = db.prepared().await;
    let result = store.register(&[def(3, "a"), def(3, "b")]).await;
    assert!(
        matches!(&result, Err(Error::Conflict { id, .. }) if id.get() == 3),
        "{result:?}"
    );
    assert!(store.list().await.unwrap().is_empty());
}

/// A release that adds migrations after the set of the release before (what
/// stores register at the cost of what is new) tracks the new ones as
/// pending and keeps the old ones' state; a renamed id anywhere in the set,
/// in the part registered before or in the new part, is still refused.
pub async fn register_a_grown_set_adds_what_is_new_and_still_refuses_conflicts(db: &TestStore) {
    let store = db.prepared().await;
    let old: Vec<i64> = (1..=200).collect();
    store.register(&defs(&old)).await.unwrap();
    store.mark_executed(id(200)).await.unwrap();
    let grown: Vec<i64> = (1..=203).collect();
    store.register(&defs(&grown)).await.unwrap();
    let rows = store.list().await.unwrap();
    assert_eq!(ids(&rows), grown);
    assert!(rows[199].executed, "the old rows keep their state");
    assert!(
        rows[200..]
            .iter()
            .all(|row| !row.executed && row.attempts == 0)
    );
    assert_eq!(rows[202].name, "m203");

    let mut renamed_old = defs(&(1..=204).collect::<Vec<_>>());
    renamed_old[99] = def(100, "renamed");
    let result = store.register(&renamed_old).await;
    assert!(
        matches!(&result, Err(Error::Conflict { id, .. }) if id.get() == 100),
        "{result:?}"
    );
    let mut renamed_new = defs(&(1..=204).collect::<Vec<_>>());
    renamed_new[202] = def(203, "renamed");
    let result = store.register(&renamed_new).await;
    assert!(
        matches!(&result, Err(Error::Conflict { id, .. }) if id.get() == 203),
        "{result:?}"
    );
    assert_eq!(
        ids(&store.list().await.unwrap()),
        grown,
        "nothing registered"
    );
    // Many new at once (more than a store looks back for) is registered too.
    let wide: Vec<i64> = (1..=400).collect();
    store.register(&defs(&wide)).await.unwrap();
    assert_eq!(ids(&store.list().await.unwrap()), wide);
}

/// `get` returns the row with every field.
pub async fn get_returns_the_row(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[8])).await.unwrap();
    store.record_failure(id(8), "first failure").await.unwrap();
    store
        .save_checkpoint(id(8), "{\"after\":42}")
        .await
        .unwrap();
    let row = store.get(id(8)).await.unwrap();
    assert_eq!(row.id, id(8));
    assert_eq!(row.name, "m8");
    assert_eq!(row.description, "description of m8");
    assert!(!row.executed);
    assert_eq!(row.executed_at, None);
    assert_eq!(row.attempts, 1);
    assert_eq!(row.last_error.as_deref(), Some("first failure"));
    assert_eq!(row.checkpoint.as_deref(), Some("{\"after\":42}"));
}

/// `get` of an unknown id is NotFound.
pub async fn get_unknown_is_not_found(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1])).await.unwrap();
    assert_not_found(store.get(id(2)).await, 2);
    assert_not_found(store.get(id(i64::MAX)).await, i64::MAX);
}

/// `mark_executed` of an unknown id is NotFound and creates nothing.
pub async fn mark_executed_unknown_is_not_found(db: &TestStore) {
    let store = db.prepared().await;
    assert_not_found(store.mark_executed(id(404)).await, 404);
    assert!(store.list().await.unwrap().is_empty());
}

/// `record_success` of an unknown id is NotFound.
pub async fn record_success_unknown_is_not_found(db: &TestStore) {
    let store = db.prepared().await;
    assert_not_found(store.record_success(id(404)).await, 404);
    assert!(store.list().await.unwrap().is_empty());
}

/// `mark_pending` of an unknown id is NotFound.
pub async fn mark_pending_unknown_is_not_found(db: &TestStore) {
    let store = db.prepared().await;
    assert_not_found(store.mark_pending(id(404)).await, 404);
    assert!(store.list().await.unwrap().is_empty());
}

/// `record_failure` of an unknown id is NotFound.
pub async fn record_failure_unknown_is_not_found(db: &TestStore) {
    let store = db.prepared().await;
    assert_not_found(store.record_failure(id(404), "x").await, 404);
    assert!(store.list().await.unwrap().is_empty());
}

/// `save_checkpoint` of an unknown id is NotFound.
pub async fn save_checkpoint_unknown_is_not_found(db: &TestStore) {
    let store = db.prepared().await;
    assert_not_found(store.save_checkpoint(id(404), "x").await, 404);
    assert!(store.list().await.unwrap().is_empty());
}

/// `executed_at` is the current UTC time, to the microsecond.
pub async fn mark_executed_sets_a_recent_utc_time(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1])).await.unwrap();
    let before = crate::store::now_utc();
    store.mark_executed(id(1)).await.unwrap();
    let after = crate::store::now_utc();
    let at = store
        .get(id(1))
        .await
        .unwrap()
        .executed_at
        .expect("executed_at set");
    assert!(at >= before && at <= after, "{before} <= {at} <= {after}");
    assert_eq!(at.offset(), time::UtcOffset::UTC);
    assert_eq!(at.nanosecond() % 1_000, 0, "microsecond precision");
}

/// Marking executed twice keeps the first `executed_at`.
pub async fn mark_executed_is_idempotent(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1])).await.unwrap();
    store.mark_executed(id(1)).await.unwrap();
    let first = store.get(id(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.mark_executed(id(1)).await.unwrap();
    assert_eq!(store.get(id(1)).await.unwrap(), first);
    assert!(store.pending().await.unwrap().is_empty());
}

/// Completion clears a checkpoint, so a later re-run starts from scratch.
pub async fn mark_executed_clears_checkpoint(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1])).await.unwrap();
    store.save_checkpoint(id(1), "half way").await.unwrap();
    store.mark_executed(id(1)).await.unwrap();
    assert_eq!(store.get(id(1)).await.unwrap().checkpoint, None);
}

/// `mark_pending` makes a migration pending again, keeping its history.
pub async fn mark_pending_reopens_and_keeps_history(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1, 2])).await.unwrap();
    store
        .record_failure(id(1), "first try failed")
        .await
        .unwrap();
    store.record_success(id(1)).await.unwrap();
    store.mark_pending(id(1)).await.unwrap();
    let row = store.get(id(1)).await.unwrap();
    assert!(!row.executed);
    assert_eq!(row.executed_at, None);
    assert_eq!(row.attempts, 2);
    assert_eq!(ids(&store.pending().await.unwrap()), [1, 2]);
    // Pending already: a no-op.
    store.mark_pending(id(2)).await.unwrap();
    assert_eq!(store.get(id(2)).await.unwrap().attempts, 0);
}

/// Each failure adds an attempt and replaces the last error; the migration stays pending.
pub async fn record_failure_counts_attempts(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1])).await.unwrap();
    for attempt in 1..=3 {
        store
            .record_failure(id(1), &format!("failure {attempt}"))
            .await
            .unwrap();
        let row = store.get(id(1)).await.unwrap();
        assert_eq!(row.attempts, attempt);
        assert_eq!(row.last_error, Some(format!("failure {attempt}")));
        assert!(!row.executed);
    }
    assert_eq!(ids(&store.pending().await.unwrap()), [1]);
}

/// A failure keeps the checkpoint, so the next run resumes from it.
pub async fn record_failure_keeps_checkpoint(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1])).await.unwrap();
    store.save_checkpoint(id(1), "batch 3").await.unwrap();
    store.record_failure(id(1), "batch 4 failed").await.unwrap();
    assert_eq!(
        store.get(id(1)).await.unwrap().checkpoint.as_deref(),
        Some("batch 3")
    );
}

/// Success adds the final attempt, sets `executed_at`, clears error and checkpoint.
pub async fn record_success_counts_and_clears(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1])).await.unwrap();
    store.record_failure(id(1), "boom").await.unwrap();
    store.save_checkpoint(id(1), "7").await.unwrap();
    store.record_success(id(1)).await.unwrap();
    let row = store.get(id(1)).await.unwrap();
    assert!(row.executed);
    assert!(row.executed_at.is_some());
    assert_eq!(row.attempts, 2);
    assert_eq!(row.last_error, None);
    assert_eq!(row.checkpoint, None);
}

/// A checkpoint of one mebibyte comes back byte for byte.
pub async fn checkpoint_round_trips_one_mebibyte(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1])).await.unwrap();
    let big: String = (0..1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    store.save_checkpoint(id(1), &big).await.unwrap();
    assert_eq!(store.get(id(1)).await.unwrap().checkpoint, Some(big));
}

/// Arbitrary Unicode in a checkpoint round-trips.
pub async fn checkpoint_round_trips_unicode(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1])).await.unwrap();
    let text = "🚴‍♀️ ünïcødé \u{1F600} 中文 עברית \\ ' \" ; -- \t\n\r \u{FFFD} \u{10FFFF}";
    store.save_checkpoint(id(1), text).await.unwrap();
    assert_eq!(
        store.get(id(1)).await.unwrap().checkpoint.as_deref(),
        Some(text)
    );
    store.save_checkpoint(id(1), "").await.unwrap();
    assert_eq!(
        store.get(id(1)).await.unwrap().checkpoint.as_deref(),
        Some("")
    );
}

/// Saving a checkpoint replaces the previous one.
pub async fn checkpoint_overwrites(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1, 2])).await.unwrap();
    for step in 0..10 {
        store
            .save_checkpoint(id(1), &step.to_string())
            .await
            .unwrap();
    }
    assert_eq!(
        store.get(id(1)).await.unwrap().checkpoint.as_deref(),
        Some("9")
    );
    assert_eq!(store.get(id(2)).await.unwrap().checkpoint, None);
}

/// Long, multi-line, non-ASCII error chains are kept intact.
pub async fn last_error_round_trips_unicode_and_size(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1])).await.unwrap();
    let error = format!(
        "échec: {}\nline two 🚫 '\"; DROP TABLE x; --",
        "x".repeat(100_000)
    );
    store.record_failure(id(1), &error).await.unwrap();
    assert_eq!(store.get(id(1)).await.unwrap().last_error, Some(error));
}

/// Quotes, semicolons and SQL keywords in names are data, stored verbatim.
pub async fn names_with_sql_syntax_are_stored_verbatim(db: &TestStore) {
    let store = db.prepared().await;
    let names = [
        "it's \"quoted\"",
        "x'); DROP TABLE migrations; --",
        "SELECT * FROM migrations WHERE 1=1; DELETE",
        "back\\slash % _ ? $1 :name @p",
    ];
    let defs: Vec<MigrationDef> = names
        .iter()
        .enumerate()
        .map(|(i, name)| MigrationDef::new(i as i64 + 1, *name, *name).unwrap())
        .collect();
    store.register(&defs).await.unwrap();
    let rows = store.list().await.unwrap();
    let stored: Vec<(&str, &str)> = rows
        .iter()
        .map(|row| (row.name.as_str(), row.description.as_str()))
        .collect();
    let expected: Vec<(&str, &str)> = names.iter().map(|name| (*name, *name)).collect();
    assert_eq!(stored, expected);
}

/// Names of 250 and descriptions of 2500 multi-byte characters are stored whole.
pub async fn limits_are_characters_not_bytes(db: &TestStore) {
    let store = db.prepared().await;
    let name = "é".repeat(250);
    let description = "🚴".repeat(2500);
    let def = MigrationDef::new(1, name.clone(), description.clone()).unwrap();
    store.register(&[def]).await.unwrap();
    let row = store.get(id(1)).await.unwrap();
    assert_eq!((row.name, row.description), (name, description));
}

/// A second instance on the same database sees the first one's changes.
pub async fn instances_share_state(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1, 2])).await.unwrap();
    let other = db.reopen().await;
    other.prepare().await.unwrap();
    other.mark_executed(id(1)).await.unwrap();
    assert_eq!(ids(&store.pending().await.unwrap()), [2]);
}

/// 64 tasks registering and marking at once: every change lands.
pub async fn concurrent_registers_and_marks_lose_nothing(db: &TestStore) {
    db.prepared().await;
    let mut tasks = Vec::new();
    for task in 0..64_i64 {
        let store = Arc::clone(&db.store);
        tasks.push(tokio::spawn(async move {
            let own = def(task + 1, &format!("m{}", task + 1));
            // Everyone also registers a shared id, racing on the same row.
            store.register(&[own, def(1_000, "shared")]).await?;
            if task % 2 == 0 {
                store.mark_executed(id(task + 1)).await?;
            } else {
                store
                    .save_checkpoint(id(task + 1), &task.to_string())
                    .await?;
            }
            Ok::<(), Error>(())
        }));
    }
    for task in tasks {
        task.await
            .expect("task panicked")
            .expect("store call failed");
    }
    let rows = db.store.list().await.unwrap();
    assert_eq!(rows.len(), 65);
    for row in &rows[..64] {
        let task = row.id.get() - 1;
        if task % 2 == 0 {
            assert!(row.executed, "{row:?}");
        } else {
            assert_eq!(row.checkpoint, Some(task.to_string()), "{row:?}");
        }
    }
    assert_eq!(db.store.pending().await.unwrap().len(), 33);
}

/// 64 concurrent failures on one migration count 64 attempts.
pub async fn concurrent_failures_lose_no_attempt(db: &TestStore) {
    db.prepared().await.register(&defs(&[1])).await.unwrap();
    let mut tasks = Vec::new();
    for task in 0..64 {
        let store = Arc::clone(&db.store);
        tasks.push(tokio::spawn(async move {
            store.record_failure(id(1), &format!("task {task}")).await
        }));
    }
    for task in tasks {
        task.await.expect("task panicked").expect("record_failure");
    }
    assert_eq!(db.store.get(id(1)).await.unwrap().attempts, 64);
}

/// After registering a set and executing all of it, the set is settled.
pub async fn settled_after_all_executed(db: &TestStore) {
    let store = db.prepared().await;
    let set = defs(&[1, 2]);
    let fingerprint = MigrationDef::fingerprint(&set);
    store.register(&set).await.unwrap();
    assert!(!store.is_settled(&fingerprint).await.unwrap());
    assert_eq!(
        store.set_state(&fingerprint).await.unwrap(),
        SetState::Pending
    );
    store.record_success(id(1)).await.unwrap();
    assert_eq!(
        store.set_state(&fingerprint).await.unwrap(),
        SetState::Pending
    );
    store.mark_executed(id(2)).await.unwrap();
    assert!(store.is_settled(&fingerprint).await.unwrap());
    assert_eq!(
        store.set_state(&fingerprint).await.unwrap(),
        SetState::Settled
    );
    // A subset registered earlier is settled too once it is recorded.
    let subset = defs(&[1]);
    store.register(&subset).await.unwrap();
    assert!(
        store
            .is_settled(&MigrationDef::fingerprint(&subset))
            .await
            .unwrap()
    );
}

/// Any pending migration, even one outside the set, unsettles it.
pub async fn not_settled_while_pending(db: &TestStore) {
    let store = db.prepared().await;
    let set = defs(&[1]);
    store.register(&set).await.unwrap();
    store.mark_executed(id(1)).await.unwrap();
    store.register(&defs(&[2])).await.unwrap();
    assert!(
        !store
            .is_settled(&MigrationDef::fingerprint(&set))
            .await
            .unwrap()
    );
    store.mark_executed(id(2)).await.unwrap();
    assert!(
        store
            .is_settled(&MigrationDef::fingerprint(&set))
            .await
            .unwrap()
    );
    store.mark_pending(id(1)).await.unwrap();
    assert!(
        !store
            .is_settled(&MigrationDef::fingerprint(&set))
            .await
            .unwrap()
    );
}

/// A set never registered is not settled, even when nothing is pending.
pub async fn not_settled_for_unknown_fingerprint(db: &TestStore) {
    let store = db.prepared().await;
    store.register(&defs(&[1])).await.unwrap();
    store.mark_executed(id(1)).await.unwrap();
    let unseen = MigrationDef::fingerprint(&defs(&[1, 2]));
    assert!(!store.is_settled(&unseen).await.unwrap());
    assert!(!store.is_settled("").await.unwrap());
    assert_eq!(
        store.set_state(&unseen).await.unwrap(),
        SetState::Unregistered
    );
    store.register(&defs(&[3])).await.unwrap();
    assert_eq!(
        store.set_state(&unseen).await.unwrap(),
        SetState::Unregistered,
        "pending work does not make an unknown set known"
    );
}

/// Before `prepare` (no table yet) the answer is `false`, not an error.
pub async fn not_settled_before_prepare(db: &TestStore) {
    let fingerprint = MigrationDef::fingerprint(&defs(&[1]));
    assert!(!db.store.is_settled(&fingerprint).await.unwrap());
    assert_eq!(
        db.store.set_state(&fingerprint).await.unwrap(),
        SetState::Unregistered
    );
}

/// Eight contenders: never two inside at once, and all get their turn.
pub async fn lock_is_mutually_exclusive(db: &TestStore) {
    db.prepared().await;
    let inside = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = Arc::clone(&db.store);
        let inside = Arc::clone(&inside);
        let entered = Arc::clone(&entered);
        tasks.push(tokio::spawn(async move {
            let _guard = store.lock(&run_lock(Duration::from_secs(30))).await?;
            assert_eq!(
                inside.fetch_add(1, Ordering::SeqCst),
                0,
                "two holders at once"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            entered.fetch_add(1, Ordering::SeqCst);
            Ok::<(), Error>(())
        }));
    }
    for task in tasks {
        task.await.expect("contender panicked").expect("lock");
    }
    assert_eq!(entered.load(Ordering::SeqCst), 8);
}

/// The lock excludes another store instance on the same database.
pub async fn lock_is_exclusive_across_instances(db: &TestStore) {
    db.prepared().await;
    let other = db.reopen().await;
    other.prepare().await.unwrap();
    let guard = db
        .store
        .lock(&run_lock(Duration::from_secs(5)))
        .await
        .unwrap();
    let result = other.lock(&run_lock(Duration::from_millis(200))).await;
    assert!(
        matches!(result, Err(Error::LockTimeout { .. })),
        "{result:?}"
    );
    drop(guard);
    let _again = other.lock(&run_lock(Duration::from_secs(5))).await.unwrap();
}

/// Dropping the guard frees the lock for the next caller at once.
pub async fn lock_is_released_on_drop(db: &TestStore) {
    let store = db.prepared().await;
    for _ in 0..3 {
        let guard = store.lock(&run_lock(Duration::from_secs(5))).await.unwrap();
        drop(guard);
    }
    let guard = store.lock(&run_lock(Duration::from_secs(5))).await.unwrap();
    let waiter = {
        let store = Arc::clone(&db.store);
        tokio::spawn(async move {
            store
                .lock(&run_lock(Duration::from_secs(10)))
                .await
                .map(drop)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "a second caller got the lock while it was held"
    );
    drop(guard);
    waiter
        .await
        .unwrap()
        .expect("waiter gets the lock after the drop");
}

/// A caller that waits past its limit gets LockTimeout, not before.
pub async fn lock_times_out_after_the_wait(db: &TestStore) {
    let store = db.prepared().await;
    let _guard = store.lock(&run_lock(Duration::from_secs(5))).await.unwrap();
    let wait = Duration::from_millis(300);
    let started = Instant::now();
    let result = store.lock(&run_lock(wait)).await;
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(Error::LockTimeout { .. })),
        "{result:?}"
    );
    assert!(waited >= wait, "gave up after {waited:?}, before {wait:?}");
    assert!(
        waited < Duration::from_secs(5),
        "waited {waited:?} for a {wait:?} limit"
    );
}

/// `lock_or_wait` takes a free lock (which then excludes others), returns
/// only once another instance's hold is released, and gives up after the wait.
pub async fn lock_or_wait_takes_a_free_lock_and_outwaits_a_holder(db: &TestStore) {
    db.prepared().await;
    let other = db.reopen().await;
    other.prepare().await.unwrap();
    let guard = db
        .store
        .lock_or_wait(&run_lock(Duration::from_secs(5)))
        .await
        .unwrap()
        .expect("a free lock is taken");
    let result = other.lock(&run_lock(Duration::from_millis(200))).await;
    assert!(
        matches!(result, Err(Error::LockTimeout { .. })),
        "{result:?}"
    );
    let waiter = {
        let other = Arc::clone(&other);
        tokio::spawn(async move {
            other
                .lock_or_wait(&run_lock(Duration::from_secs(10)))
                .await
                .map(|guard| guard.is_some())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "lock_or_wait returned while another instance held the lock"
    );
    drop(guard);
    waiter
        .await
        .unwrap()
        .expect("lock_or_wait returns once the holder is gone");

    let _held = db
        .store
        .lock(&run_lock(Duration::from_secs(5)))
        .await
        .unwrap();
    let wait = Duration::from_millis(300);
    let started = Instant::now();
    let result = other.lock_or_wait(&run_lock(wait)).await;
    assert!(
        matches!(result, Err(Error::LockTimeout { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() >= wait, "gave up before the wait");
}

/// The run lock and the background lock are two locks: holding one does not
/// block the other, and each is exclusive across instances.
pub async fn lock_scopes_are_separate_locks(db: &TestStore) {
    db.prepared().await;
    let other = db.reopen().await;
    let wait = Duration::from_millis(200);
    let run = db
        .store
        .lock(&run_lock(Duration::from_secs(5)))
        .await
        .unwrap();
    let background = other
        .lock(&LockRequest::new(
            LockScope::Background,
            Duration::from_secs(5),
        ))
        .await
        .expect("the background lock is free while the run lock is held");
    let busy = db
        .store
        .lock(&LockRequest::new(LockScope::Background, wait))
        .await;
    assert!(matches!(busy, Err(Error::LockTimeout { .. })), "{busy:?}");
    let busy = other.lock(&run_lock(wait)).await;
    assert!(matches!(busy, Err(Error::LockTimeout { .. })), "{busy:?}");
    drop((run, background));
}

/// `locks()` shows a held lock, to another instance too, with the holder
/// its request named (an application name may be cut short where the
/// backend has little room) and since when; nothing once it is released.
pub async fn locks_name_their_holder(db: &TestStore) {
    db.prepared().await;
    let other = db.reopen().await;
    let run_locks = |locks: Vec<LockInfo>| -> Vec<LockInfo> {
        locks
            .into_iter()
            .filter(|lock| lock.scope == LockScope::Run)
            .collect()
    };
    assert!(run_locks(other.locks().await.unwrap()).is_empty());
    let holder = LockHolder::named("conformance");
    let guard = db
        .store
        .lock(&run_lock(Duration::from_secs(5)).with_holder(holder.clone()))
        .await
        .unwrap();
    let held = run_locks(other.locks().await.unwrap());
    assert_eq!(held.len(), 1, "{held:?}");
    let shown = held[0].holder.as_ref().expect("the holder is recorded");
    assert_eq!(
        (shown.pid, shown.host.as_str()),
        (holder.pid, holder.host.as_str())
    );
    assert!(
        !shown.application.is_empty() && holder.application.starts_with(&shown.application),
        "{shown:?}"
    );
    let since = held[0].since.expect("since when is recorded");
    let age = crate::store::now_utc() - since;
    assert!(
        age > -time::Duration::seconds(5) && age < time::Duration::minutes(1),
        "held since {since}"
    );
    drop(guard);
    // A server frees a session's lock as it sees the session end.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = run_locks(other.locks().await.unwrap());
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still held after release: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Before `prepare`, reads say plainly that nothing is initialised, and
/// create nothing: `prepare` is still needed afterwards.
pub async fn reads_before_prepare_are_not_initialised(db: &TestStore) {
    for result in [db.store.list().await, db.store.pending().await] {
        assert!(
            matches!(result, Err(Error::NotInitialised { .. })),
            "{result:?}"
        );
    }
    let result = db.store.get(id(1)).await;
    assert!(
        matches!(result, Err(Error::NotInitialised { .. })),
        "{result:?}"
    );
    let text = db.store.list().await.unwrap_err().to_string();
    for sql in ["SELECT", "FROM", "no such"] {
        assert!(!text.contains(sql), "SQL text in the message: {text}");
    }
    let again = db.store.list().await;
    assert!(
        matches!(again, Err(Error::NotInitialised { .. })),
        "{again:?}"
    );
}
