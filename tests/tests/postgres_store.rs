//! PostgreSQL store beyond the shared conformance suites: `prepare` under
//! concurrency, the table it creates, adopting the original four-column
//! table, text PostgreSQL cannot store, schemas and pools of one's own, and
//! atomic handlers on real tables (the generic promises of atomic execution
//! are `postgres_atomic_conformance`'s).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Barrier;
use tokio_postgres::Transaction;
use waymark_core::store::{AtomicError, AtomicFn, AtomicStore, BoxFuture, LockRequest, LockScope};
use waymark_core::{
    BatchStep, BoxError, Error, MigrationContext, MigrationDef, MigrationId, MigrationState,
    MigrationStore,
};
use waymark_postgres::PostgresStore;
use waymark_runner::Runner;
use waymark_tests::pg::{
    TestDatabase, atomic_fn, batch_fn, context, fresh_database, fresh_database_with, fresh_store,
};

fn id(raw: i64) -> MigrationId {
    MigrationId::new(raw).unwrap()
}

fn def(raw: i64, name: &str) -> MigrationDef {
    MigrationDef::new(raw, name, format!("about {name}")).unwrap()
}

fn run_lock(wait: Duration) -> LockRequest {
    LockRequest::new(LockScope::Run, wait)
}

/// Runs `work` for migration `raw` in one atomic transaction, as the runner
/// would, with the row as it is now.
async fn run_atomic(
    store: &PostgresStore,
    raw: i64,
    work: AtomicFn<(), PostgresStore>,
) -> Result<(), AtomicError> {
    let row = store.get(id(raw)).await.unwrap();
    store.execute_atomic(work, context(store, row)).await
}

/// `f` as the runner's `batched` takes it on PostgreSQL: pins down the
/// closure's higher-ranked signature, which the runner's bound (written
/// with the store's associated types) cannot infer by itself.
fn batches<F>(f: F) -> F
where
    F: for<'t> Fn(
            &'t Transaction<'t>,
            Option<&'t str>,
            &'t MigrationContext<()>,
        ) -> BoxFuture<'t, Result<BatchStep, BoxError>>
        + Send
        + Sync
        + 'static,
{
    f
}

/// A table of ten laps for handlers to change, each with a change counter.
async fn laps(db: &TestDatabase) -> tokio_postgres::Client {
    let admin = db.admin().await;
    admin
        .batch_execute(
            "CREATE TABLE laps (id INT PRIMARY KEY, speed INT NOT NULL, changes INT NOT NULL DEFAULT 0);
             INSERT INTO laps (id, speed) SELECT n, n * 10 FROM generate_series(1, 10) AS n;",
        )
        .await
        .unwrap();
    admin
}

async fn lap_changes(admin: &tokio_postgres::Client) -> Vec<i32> {
    admin
        .query("SELECT changes FROM laps ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// `(column, type, not null)` of every column of `public.migrations`.
/// Everything about `public.migrations`: its columns with their comments,
/// its constraints, and every row.
async fn migrations_state(admin: &tokio_postgres::Client) -> (Vec<String>, String) {
    let columns: Vec<String> = admin
        .query(
            "SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull \
                    || ' ' || coalesce(col_description(a.attrelid, a.attnum), '-') \
             FROM pg_attribute a \
             WHERE a.attrelid = 'public.migrations'::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             UNION ALL SELECT 'constraint ' || conname FROM pg_constraint \
             WHERE conrelid = 'public.migrations'::regclass \
             UNION ALL SELECT 'table ' || coalesce(obj_description('public.migrations'::regclass), '-') \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let rows: String = admin
        .query_one(
            "SELECT coalesce(json_agg(m ORDER BY id)::TEXT, '') FROM public.migrations m",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (columns, rows)
}

async fn migrations_columns(admin: &tokio_postgres::Client) -> Vec<(String, String, bool)> {
    admin
        .query(
            "SELECT a.attname::TEXT, format_type(a.atttypid, a.atttypmod), a.attnotnull \
             FROM pg_attribute a \
             WHERE a.attrelid = 'public.migrations'::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_prepares_from_separate_connections_all_succeed() {
    let db = fresh_database().await;
    // Twenty stores, each with its own pool of one connection, in a schema
    // that does not exist yet: every CREATE races.
    let mut stores = Vec::new();
    for _ in 0..20 {
        let config = db
            .config()
            .schema("ops")
            .table("data_migrations")
            .pool_size(1);
        stores.push(PostgresStore::connect_with(config).await.unwrap());
    }
    let start = Arc::new(Barrier::new(stores.len()));
    let tasks: Vec<_> = stores
        .iter()
        .cloned()
        .map(|store| {
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                store.prepare().await
            })
        })
        .collect();
    for task in tasks {
        task.await
            .unwrap()
            .expect("every concurrent prepare succeeds");
    }
    stores[0].register(&[def(1, "one")]).await.unwrap();
    assert_eq!(stores[19].pending().await.unwrap().len(), 1);
    let admin = db.admin().await;
    let tables: i64 = admin
        .query_one(
            "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'ops'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 2, "the table and its fingerprints, once each");
}

#[tokio::test]
async fn prepare_creates_the_documented_table() {
    let (store, db) = fresh_store().await;
    store.prepare().await.unwrap();
    let admin = db.admin().await;
    let columns: Vec<(String, String, bool, Option<String>)> = admin
        .query(
            "SELECT a.attname::TEXT, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    col_description(a.attrelid, a.attnum) \
             FROM pg_attribute a \
             WHERE a.attrelid = 'public.migrations'::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect();
    let shape: Vec<(&str, &str, bool)> = columns
        .iter()
        .map(|(name, kind, not_null, _)| (name.as_str(), kind.as_str(), *not_null))
        .collect();
    // Names and descriptions are TEXT: their limits are in characters,
    // checked by MigrationDef, so that they hold on every server encoding.
    assert_eq!(
        shape,
        [
            ("id", "bigint", true),
            ("name", "text", true),
            ("description", "text", true),
            ("executed", "boolean", true),
            ("executed_at", "timestamp with time zone", false),
            ("attempts", "integer", true),
            ("last_error", "text", false),
            ("checkpoint", "text", false),
        ]
    );
    for (name, _, _, comment) in &columns {
        assert!(
            comment.as_deref().is_some_and(|c| !c.is_empty()),
            "column {name} has no comment"
        );
    }
    let index: String = admin
        .query_one(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'migrations_pending_idx'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(index.contains("WHERE (NOT executed)"), "{index}");
    let primary: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint \
             WHERE conrelid = 'public.migrations'::regclass AND contype = 'p')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(primary);
}

#[tokio::test]
async fn names_at_the_limit_in_characters_fit_on_a_sql_ascii_database() {
    // On SQL_ASCII a VARCHAR(n) would count bytes: a valid name of 250
    // two-byte characters must still be stored, and read back intact.
    let db =
        fresh_database_with("ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
            .await;
    let store = db.store().await;
    store.prepare().await.unwrap();
    let name = "é".repeat(250);
    let description = "ü".repeat(2500);
    let long = MigrationDef::new(1, name.clone(), description.clone()).unwrap();
    store.register(&[long]).await.unwrap();
    let row = store.get(id(1)).await.unwrap();
    assert_eq!((row.name, row.description), (name, description));
}

#[tokio::test]
async fn a_four_column_table_is_adopted_with_its_rows_intact() {
    let db = fresh_database().await;
    let admin = db.admin().await;
    // The original table, as the Python service created and filled it.
    admin
        .batch_execute(
            "CREATE TABLE migrations (
                 id SERIAL PRIMARY KEY,
                 name VARCHAR(250) NOT NULL,
                 description VARCHAR(2500),
                 executed BOOLEAN DEFAULT FALSE);
             INSERT INTO migrations (id, name, description, executed) VALUES
                 (1, 'fix_path_prefix', 'Prefix stored paths', TRUE),
                 (2, 'split_laps', NULL, FALSE),
                 (3, 'never_marked', 'Executed left NULL', NULL),
                 (40, 'fill_pace', 'Derive pace', TRUE);",
        )
        .await
        .unwrap();
    admin
        .batch_execute("COMMENT ON COLUMN migrations.name IS 'the app''s own comment'")
        .await
        .unwrap();
    let store = db.store().await;
    assert!(!store.is_settled("anything").await.unwrap());
    // Row 3's state would be a guess: refused, nothing changed.
    let before = migrations_state(&admin).await;
    let err = store.prepare().await.unwrap_err();
    let refused = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<waymark_core::store::AmbiguousRowsRefused>())
        .unwrap_or_else(|| panic!("expected AmbiguousRowsRefused, got {err:?}"));
    assert_eq!(refused.rows.null_executed, [id(3)]);
    assert_eq!(
        migrations_state(&admin).await,
        before,
        "a refusal changes nothing"
    );
    let plan = store.plan_prepare().await.unwrap();
    assert_eq!(plan.ambiguous.null_executed, [id(3)]);
    assert!(plan.refusal.is_some(), "{plan:?}");
    assert_eq!(
        migrations_state(&admin).await,
        before,
        "a plan changes nothing"
    );
    // The operator's explicit choice for row 3: never ran, so pending.
    let choice = waymark_core::store::AdoptionChoices::new()
        .null_executed(waymark_core::store::NullExecuted::Pending);
    let store = PostgresStore::connect_with(db.config().adoption(choice))
        .await
        .unwrap();
    store.prepare().await.unwrap();

    let rows = store.list().await.unwrap();
    let summary: Vec<(i64, &str, &str, MigrationState)> = rows
        .iter()
        .map(|r| {
            (
                r.id.get(),
                r.name.as_str(),
                r.description.as_str(),
                r.state(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                1,
                "fix_path_prefix",
                "Prefix stored paths",
                MigrationState::Executed
            ),
            (2, "split_laps", "", MigrationState::Pending),
            (
                3,
                "never_marked",
                "Executed left NULL",
                MigrationState::Pending
            ),
            (40, "fill_pace", "Derive pace", MigrationState::Executed),
        ]
    );
    assert!(
        rows.iter()
            .all(|r| r.attempts == 0 && r.checkpoint.is_none() && r.last_error.is_none())
    );
    let pending: Vec<i64> = store
        .pending()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id.get())
        .collect();
    assert_eq!(pending, [2, 3]);

    // The adopted table works like a new one.
    store
        .register(&[
            def(1, "fix_path_prefix"),
            def(2, "split_laps"),
            def(50, "new_one"),
        ])
        .await
        .unwrap();
    assert!(
        store.get(id(1)).await.unwrap().executed,
        "executed state kept"
    );
    let conflict = store.register(&[def(40, "renamed")]).await;
    assert!(
        matches!(conflict, Err(Error::Conflict { id, .. }) if id.get() == 40),
        "{conflict:?}"
    );
    store.record_success(id(2)).await.unwrap();
    store.prepare().await.unwrap();
    assert_eq!(store.list().await.unwrap().len(), 5);
    let kind: String = admin
        .query_one(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'public.migrations'::regclass AND attname = 'id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        kind, "integer",
        "the application's id column is kept as it is"
    );
    let comment: Option<String> = admin
        .query_one(
            "SELECT col_description('public.migrations'::regclass, 2)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(comment.as_deref(), Some("the app's own comment"));
    // Code that knows only the four columns can still insert rows.
    admin
        .execute(
            "INSERT INTO migrations (id, name, description, executed) \
             VALUES (60, 'from_old_code', '', FALSE)",
            &[],
        )
        .await
        .unwrap();
    let row = store.get(id(60)).await.unwrap();
    assert!(!row.executed && row.attempts == 0);
    assert_eq!(row.state(), MigrationState::Pending);
}

#[tokio::test]
async fn reads_of_a_four_column_table_before_prepare_are_not_initialised_and_change_nothing() {
    let db = fresh_database().await;
    let admin = db.admin().await;
    admin
        .batch_execute(
            "CREATE TABLE migrations (id SERIAL PRIMARY KEY, name VARCHAR(250) NOT NULL, \
                                      description VARCHAR(2500), executed BOOLEAN DEFAULT FALSE);
             INSERT INTO migrations (id, name, description, executed) VALUES (1, 'one', '', TRUE);",
        )
        .await
        .unwrap();
    let before = migrations_columns(&admin).await;
    let store = db.store().await;
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
    assert_eq!(
        migrations_columns(&admin).await,
        before,
        "reads changed the table"
    );
    store.prepare().await.unwrap();
    assert!(store.get(id(1)).await.unwrap().executed);
}

/// A four-column table without a key on id cannot take waymark's
/// `ON CONFLICT (id)`: refused with the fix, and left exactly as it was
/// (waymark adds no key to the application's table).
#[tokio::test]
async fn a_four_column_table_without_a_primary_key_is_refused_and_left_unchanged() {
    let db = fresh_database().await;
    let admin = db.admin().await;
    admin
        .batch_execute(
            "CREATE TABLE migrations (id INTEGER, name VARCHAR(250), description VARCHAR(2500), executed BOOLEAN);
             INSERT INTO migrations VALUES (7, 'seven', 'x', TRUE), (8, 'eight', 'y', FALSE);",
        )
        .await
        .unwrap();
    let before = migrations_state(&admin).await;
    let store = db.store().await;
    let err = store.prepare().await.unwrap_err();
    let refused = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<waymark_core::IncompatibleTable>())
        .unwrap_or_else(|| panic!("expected IncompatibleTable, got {err:?}"));
    assert_eq!(refused.column.as_deref(), Some("id"));
    assert!(
        waymark_core::error_chain(&err).contains("add a primary key on id"),
        "{err}"
    );
    assert_eq!(migrations_state(&admin).await, before);
}

/// Tables PostgreSQL used to alter and then fail on at every start are
/// refused, naming the column, with the database unchanged.
#[tokio::test]
async fn tables_waymark_cannot_use_are_refused_and_left_unchanged() {
    let original = "CREATE TABLE migrations (id SERIAL PRIMARY KEY, name VARCHAR(250) NOT NULL, \
                    description VARCHAR(2500), executed BOOLEAN DEFAULT FALSE)";
    for (extra, column) in [
        (
            "ALTER TABLE migrations ADD COLUMN owner_id INTEGER NOT NULL",
            "owner_id",
        ),
        (
            "ALTER TABLE migrations ADD COLUMN attempts TEXT",
            "attempts",
        ),
        (
            "ALTER TABLE migrations ADD COLUMN executed_at TEXT",
            "executed_at",
        ),
        (
            "ALTER TABLE migrations ADD COLUMN executed_at TIMESTAMP",
            "executed_at",
        ),
        (
            "ALTER TABLE migrations ALTER COLUMN executed DROP DEFAULT, ALTER COLUMN executed TYPE INTEGER USING executed::INTEGER",
            "executed",
        ),
        ("ALTER TABLE migrations ALTER COLUMN id TYPE TEXT", "id"),
    ] {
        let db = fresh_database().await;
        let admin = db.admin().await;
        admin
            .batch_execute(&format!(
                "{original}; {extra}; INSERT INTO migrations (id, name, executed{}) VALUES (1, 'one', {}{});",
                if column == "owner_id" { ", owner_id" } else { "" },
                if column == "executed" { "1" } else { "TRUE" },
                if column == "owner_id" { ", 5" } else { "" },
            ))
            .await
            .unwrap();
        let before = migrations_state(&admin).await;
        let store = db.store().await;
        let err = store.prepare().await.unwrap_err();
        let refused = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<waymark_core::IncompatibleTable>())
            .unwrap_or_else(|| panic!("{extra}: expected IncompatibleTable, got {err:?}"));
        assert_eq!(refused.column.as_deref(), Some(column), "{extra}");
        assert_eq!(
            migrations_state(&admin).await,
            before,
            "{extra}: nothing changed"
        );
        let plan = store.plan_prepare().await.unwrap();
        assert!(plan.refusal.is_some(), "{extra}: {plan:?}");
    }
}

#[tokio::test]
async fn a_table_of_another_kind_is_refused_and_left_alone() {
    let db = fresh_database().await;
    let admin = db.admin().await;
    admin
        .batch_execute(
            "CREATE TABLE migrations (version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ);
             INSERT INTO migrations VALUES ('20240101_init', now());",
        )
        .await
        .unwrap();
    let store = db.store().await;
    match store.prepare().await {
        Err(err @ Error::Store { .. }) => {
            let message = waymark_core::error_chain(&err);
            assert!(message.contains("public.migrations"), "{message}");
            assert!(message.contains("nothing was changed"), "{message}");
            let source = std::error::Error::source(&err)
                .and_then(|s| s.downcast_ref::<waymark_core::IncompatibleTable>())
                .expect("an IncompatibleTable source");
            assert_eq!(source.column.as_deref(), Some("id"));
        }
        other => panic!("expected an incompatible table, got {other:?}"),
    }
    let columns: i64 = admin
        .query_one(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_name = 'migrations'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(columns, 2, "nothing added to someone else's table");
    // Another table name works beside it.
    let ours = PostgresStore::connect_with(db.config().table("data_migrations"))
        .await
        .unwrap();
    ours.prepare().await.unwrap();
}

#[tokio::test]
async fn a_succeeding_atomic_handler_commits_its_change_with_the_success() {
    let (store, db) = fresh_store().await;
    let admin = laps(&db).await;
    store.prepare().await.unwrap();
    store.register(&[def(1, "bump_laps")]).await.unwrap();
    store.record_failure(id(1), "earlier try").await.unwrap();
    store.save_checkpoint(id(1), "stale").await.unwrap();
    let work = atomic_fn(|tx, ctx: &MigrationContext<()>| {
        Box::pin(async move {
            assert_eq!(ctx.checkpoint(), Some("stale"));
            tx.execute("UPDATE laps SET changes = changes + 1", &[])
                .await?;
            Ok::<(), BoxError>(())
        })
    });
    run_atomic(&store, 1, work).await.unwrap();
    assert_eq!(lap_changes(&admin).await, [1; 10]);
    let row = store.get(id(1)).await.unwrap();
    assert!(row.executed && row.executed_at.is_some());
    assert_eq!(
        (row.attempts, row.last_error, row.checkpoint),
        (2, None, None),
        "the earlier failure counts; its error and the checkpoint are cleared"
    );
}

#[tokio::test]
async fn failing_bookkeeping_rolls_back_the_handlers_change() {
    let (store, db) = fresh_store().await;
    let admin = laps(&db).await;
    store.prepare().await.unwrap();
    store.register(&[def(1, "bump_laps")]).await.unwrap();
    let work = atomic_fn(|tx, _ctx: &MigrationContext<()>| {
        Box::pin(async move {
            tx.execute("UPDATE laps SET changes = changes + 1", &[])
                .await?;
            // Someone deletes the migration's row before the commit.
            tx.execute("DELETE FROM migrations WHERE id = 1", &[])
                .await?;
            Ok::<(), BoxError>(())
        })
    });
    match run_atomic(&store, 1, work).await {
        Err(AtomicError::Failed(err)) => assert!(
            matches!(
                err.downcast_ref::<Error>(),
                Some(Error::NotFound { id }) if id.get() == 1
            ),
            "{err}"
        ),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(lap_changes(&admin).await, [0; 10]);
    assert!(!store.get(id(1)).await.unwrap().executed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batched_migration_commits_each_batch_with_its_checkpoint_and_resumes() {
    let (store, db) = fresh_store().await;
    let admin = laps(&db).await;
    let fail_at_seven = Arc::new(AtomicBool::new(true));
    let fail = Arc::clone(&fail_at_seven);
    let runner = Runner::<(), PostgresStore>::builder(store.clone())
        .batched(
            def(1, "bump_laps_in_batches"),
            batches(move |tx, from, _ctx| {
                let fail = Arc::clone(&fail);
                Box::pin(async move {
                    let after: i32 = from.map(str::parse).transpose()?.unwrap_or(0);
                    if after >= 6 && fail.swap(false, Ordering::SeqCst) {
                        // Half-done work of the failing batch must roll back too.
                        tx.execute("UPDATE laps SET changes = changes + 100 WHERE id = 7", &[])
                            .await?;
                        return Err("connection to the activity service lost".into());
                    }
                    let rows = tx
                        .query(
                            "UPDATE laps SET changes = changes + 1 \
                             WHERE id IN (SELECT id FROM laps WHERE id > $1 ORDER BY id LIMIT 3) \
                             RETURNING id",
                            &[&after],
                        )
                        .await?;
                    let last = rows.iter().map(|row| row.get::<_, i32>(0)).max();
                    Ok::<_, BoxError>(match last {
                        Some(last) => {
                            BatchStep::next(last.to_string(), rows.len() as u64).with_total(10)
                        }
                        None => BatchStep::done(0),
                    })
                })
            }),
        )
        .build()
        .unwrap();

    let err = runner.run(()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Handler { id, .. } if id.get() == 1),
        "{err:?}"
    );
    assert_eq!(lap_changes(&admin).await, [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]);
    let row = store.get(id(1)).await.unwrap();
    assert_eq!(row.checkpoint.as_deref(), Some("6"));
    assert!(!row.executed);
    assert_eq!(row.attempts, 1);
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("connection to the activity service lost")),
        "{row:?}"
    );

    // The next run resumes from the committed checkpoint.
    let report = runner.run(()).await.unwrap().finish().await.unwrap();
    assert_eq!(report.executed().count(), 1);
    assert_eq!(
        lap_changes(&admin).await,
        [1; 10],
        "every lap changed exactly once"
    );
    let row = store.get(id(1)).await.unwrap();
    assert!(row.executed);
    assert_eq!(
        (row.checkpoint, row.last_error, row.attempts),
        (None, None, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runs_of_one_atomic_migration_without_the_lock_apply_it_once() {
    let db = fresh_database().await;
    let (first, second) = (db.store().await, db.store().await);
    first.prepare().await.unwrap();
    first.register(&[def(1, "log_once")]).await.unwrap();
    let admin = db.admin().await;
    admin
        .batch_execute("CREATE TABLE runs (who TEXT)")
        .await
        .unwrap();
    // Both runs do their work before either records it: what would happen
    // if the run lock were lost (a terminated session) mid-run. The second
    // claim waits for the first transaction's row lock, then finds the row
    // executed.
    let both_worked = Arc::new(Barrier::new(2));
    let work = |who: &'static str| -> AtomicFn<(), PostgresStore> {
        let both_worked = Arc::clone(&both_worked);
        atomic_fn(move |tx, _ctx: &MigrationContext<()>| {
            let both_worked = Arc::clone(&both_worked);
            Box::pin(async move {
                tx.execute("INSERT INTO runs VALUES ($1)", &[&who]).await?;
                both_worked.wait().await;
                Ok::<(), BoxError>(())
            })
        })
    };
    let (a, b) = (work("first"), work("second"));
    let (ra, rb) = tokio::join!(run_atomic(&first, 1, a), run_atomic(&second, 1, b));
    assert!(
        ra.is_ok() != rb.is_ok(),
        "exactly one run wins: {ra:?} {rb:?}"
    );
    let loser = ra.err().or(rb.err()).unwrap();
    assert!(
        matches!(&loser, AtomicError::Superseded(message) if message.contains("completed")),
        "{loser:?}"
    );
    let runs: i64 = admin
        .query_one("SELECT COUNT(*) FROM runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 1, "the losing run's work was rolled back");
    let row = first.get(id(1)).await.unwrap();
    assert!(row.executed);
    assert_eq!(row.attempts, 1);
}

#[tokio::test]
async fn text_postgres_cannot_store_is_refused_by_field() {
    let (store, _db) = fresh_store().await;
    store.prepare().await.unwrap();
    let result = store.register(&[def(1, "nul\0name")]).await;
    assert!(
        matches!(result, Err(Error::Invalid { field: "name", .. })),
        "{result:?}"
    );
    let with_nul = MigrationDef::new(1, "ok", "nul\0description").unwrap();
    let result = store.register(&[with_nul]).await;
    assert!(
        matches!(
            result,
            Err(Error::Invalid {
                field: "description",
                ..
            })
        ),
        "{result:?}"
    );
    store.register(&[def(1, "ok")]).await.unwrap();
    let result = store.save_checkpoint(id(1), "a\0b").await;
    assert!(
        matches!(
            result,
            Err(Error::Invalid {
                field: "checkpoint",
                ..
            })
        ),
        "{result:?}"
    );
    let work = batch_fn(|_tx, _from, _ctx: &MigrationContext<()>| {
        Box::pin(async { Ok::<_, BoxError>(BatchStep::next("nul\0checkpoint", 1)) })
    });
    let row = store.get(id(1)).await.unwrap();
    match store.execute_batch(work, context(&store, row), None).await {
        Err(AtomicError::Failed(err)) => assert!(
            matches!(
                err.downcast_ref::<Error>(),
                Some(Error::Invalid {
                    field: "checkpoint",
                    ..
                })
            ),
            "{err}"
        ),
        other => panic!("expected an invalid checkpoint, got {other:?}"),
    }
    assert_eq!(store.get(id(1)).await.unwrap().checkpoint, None);
    // A failure record must not fail: NUL becomes U+FFFD.
    store.record_failure(id(1), "bad\0byte").await.unwrap();
    assert_eq!(
        store.get(id(1)).await.unwrap().last_error.as_deref(),
        Some("bad\u{FFFD}byte")
    );
    assert!(!store.is_settled("x\0").await.unwrap());
}

#[tokio::test]
async fn tables_of_two_names_in_one_database_are_independent() {
    let db = fresh_database().await;
    let first = PostgresStore::connect_with(db.config().schema("app_a"))
        .await
        .unwrap();
    let config = db.config().schema("app_b").table("jobs");
    let second = PostgresStore::connect_with(config.clone()).await.unwrap();
    first.prepare().await.unwrap();
    // A second tracking table is refused unless asked for: a mistyped
    // schema or table would start from nothing.
    let admin = db.admin().await;
    let refused = second.prepare().await.unwrap_err();
    let message = waymark_core::error_chain(&refused);
    assert!(
        message.contains("app_a.migrations") && message.contains("nothing was changed"),
        "{message}"
    );
    let schemas: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'app_b'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0, "nothing created");
    let plan = second.plan_prepare().await.unwrap();
    assert!(plan.create && plan.refusal.is_some(), "{plan:?}");
    let second = PostgresStore::connect_with(config.allow_second_table(true))
        .await
        .unwrap();
    second.prepare().await.unwrap();
    first.register(&[def(1, "a")]).await.unwrap();
    second.register(&[def(1, "b")]).await.unwrap();
    assert_eq!(first.get(id(1)).await.unwrap().name, "a");
    assert_eq!(second.get(id(1)).await.unwrap().name, "b");
    assert_ne!(first.lock_key(), second.lock_key());
    assert_ne!(
        first.lock_key_for(LockScope::Background),
        second.lock_key_for(LockScope::Background)
    );
    let _a = first.lock(&run_lock(Duration::from_secs(5))).await.unwrap();
    let _b = second.lock(&run_lock(Duration::ZERO)).await.unwrap();
}

#[tokio::test]
async fn an_applications_own_pool_can_be_used() {
    let db = fresh_database().await;
    let pg: tokio_postgres::Config = db.url().parse().unwrap();
    let manager = deadpool_postgres::Manager::new(pg, tokio_postgres::NoTls);
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(2)
        .build()
        .unwrap();
    let config = waymark_postgres::PostgresConfig::default().table("app_migrations");
    let store = PostgresStore::from_pool_with(pool.clone(), config).unwrap();
    store.prepare().await.unwrap();
    store.register(&[def(1, "one")]).await.unwrap();
    {
        let _guard = store.lock(&run_lock(Duration::from_secs(5))).await.unwrap();
        // The lock's connection left the pool: both slots still serve the app.
        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        drop((a, b));
    }
    assert_eq!(store.pending().await.unwrap().len(), 1);
    let bad = PostgresStore::from_pool_with(
        pool.clone(),
        waymark_postgres::PostgresConfig::default().schema("Bad Schema"),
    );
    assert!(matches!(
        bad,
        Err(Error::Invalid {
            field: "schema",
            ..
        })
    ));
    let default = PostgresStore::from_pool(pool);
    assert_eq!(
        (default.schema(), default.table()),
        ("public", "migrations")
    );
}

/// Without a configured schema the search path decides, as for any libpq
/// client: the schema on it that holds the table, else the first existing
/// one; a configured schema is used as given.
#[tokio::test]
async fn without_a_schema_the_search_path_decides() {
    let db = fresh_database().await;
    let admin = db.admin().await;
    admin
        .batch_execute(
            "CREATE SCHEMA app; \
             CREATE TABLE app.migrations (id INTEGER PRIMARY KEY, name VARCHAR(250), \
                                          description VARCHAR(2500), executed BOOLEAN NOT NULL DEFAULT FALSE); \
             INSERT INTO app.migrations VALUES (1, 'one', '', TRUE);",
        )
        .await
        .unwrap();
    let on_path = waymark_tests::pg::url_with_options(&db, "-c search_path=app,public");
    let store = PostgresStore::connect_with(waymark_postgres::PostgresConfig::new(on_path))
        .await
        .unwrap();
    assert_eq!(store.schema(), "app");
    store.prepare().await.unwrap();
    assert!(store.get(id(1)).await.unwrap().executed);

    // The default search path ("$user", public): the table is not on it,
    // and `public` is where it would be created; the tracking table in
    // `app` makes that a refusal, not an empty fresh start.
    let default = PostgresStore::connect_with(waymark_postgres::PostgresConfig::new(db.url()))
        .await
        .unwrap();
    assert_eq!(default.schema(), "public");
    let err = default.prepare().await.unwrap_err();
    assert!(
        waymark_core::error_chain(&err).contains("app.migrations"),
        "{err}"
    );

    let explicit =
        PostgresStore::connect_with(waymark_postgres::PostgresConfig::new(db.url()).schema("app"))
            .await
            .unwrap();
    assert_eq!(explicit.schema(), "app");
}
