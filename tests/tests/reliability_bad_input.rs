//! Break its inputs: the bad inputs to the library that no other test
//! covered. Each test checks the exact error variant (and SQLSTATE where
//! the server decides) and that the database is unchanged afterwards.
//! docs/reliability.md lists every bad input with the test that covers it,
//! here or elsewhere.

use std::path::Path;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use waymark_core::{BatchStep, Error, MigrationDef, MigrationId, MigrationStore, error_chain};
use waymark_postgres::{PostgresConfig, PostgresStore, sqlstate};
use waymark_runner::{Handler, Runner};
use waymark_sqlite::{SqliteConfig, SqliteStore};
use waymark_tests::pg::{TestDatabase, fresh_database};
use waymark_tests::reliability::target::with_param;

fn id(raw: i64) -> MigrationId {
    MigrationId::new(raw).unwrap()
}

fn def(raw: i64) -> MigrationDef {
    MigrationDef::new(raw, format!("m{raw}"), "").unwrap()
}

/// SQLite turns the path `""` into a private temporary database and
/// `":memory:"` into an in-memory one: both vanish when closed, so every
/// migration would run again at each start. Refused before anything is
/// opened, and no lock file appears in the working directory.
#[tokio::test]
async fn sqlite_paths_that_would_keep_nothing_are_invalid() {
    for path in ["", ":memory:"] {
        let result = SqliteStore::open(path).await;
        assert!(
            matches!(result, Err(Error::Invalid { field: "path", .. })),
            "{path:?}: {result:?}"
        );
        let sidecar = format!("{path}-migrations.lock");
        assert!(!Path::new(&sidecar).exists(), "{sidecar} was created");
    }
    // The in-memory database is still there, asked for by name.
    let memory = SqliteStore::open_with(SqliteConfig::in_memory())
        .await
        .unwrap();
    memory.prepare().await.unwrap();
}

/// What a PostgreSQL database holds, for "unchanged" checks: the tracked
/// rows and the data table `items`.
async fn pg_state(store: &PostgresStore, admin: &tokio_postgres::Client) -> String {
    let rows = store.list().await.unwrap();
    let items: Vec<i64> = admin
        .query("SELECT item FROM items ORDER BY item", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    format!("{rows:?} {items:?}")
}

/// A batch that returns the checkpoint it started from would loop forever:
/// the run fails with the migration's error, and that batch's changes roll
/// back with it, as on SQLite (`sqlite_atomic.rs`,
/// `a_batch_that_does_not_advance_is_rolled_back`). Earlier batches stay.
#[tokio::test]
async fn a_postgres_batch_that_does_not_advance_is_rolled_back() {
    let db = fresh_database().await;
    let store = db.store().await;
    let admin = db.admin().await;
    admin
        .batch_execute("CREATE TABLE items (item BIGINT NOT NULL)")
        .await
        .unwrap();
    let handler = Handler::<(), PostgresStore>::batched(|tx, from, _ctx| {
        Box::pin(async move {
            let item: i64 = from.map_or(1, |_| 2);
            tx.execute("INSERT INTO items VALUES ($1)", &[&item])
                .await?;
            // The first batch advances to "1"; the second stays there.
            Ok::<_, waymark_core::BoxError>(BatchStep::next("1", 1))
        })
    });
    let runner = Runner::<(), _>::builder(store.clone())
        .migration(def(1), handler)
        .build()
        .unwrap();
    let err = runner.run(()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Handler { id, .. } if id.get() == 1),
        "{err:?}"
    );
    assert!(
        waymark_core::error_chain(&err).contains("same checkpoint"),
        "{err}"
    );
    let row = store.get(id(1)).await.unwrap();
    assert!(!row.executed);
    assert_eq!(row.checkpoint.as_deref(), Some("1"));
    assert_eq!(row.attempts, 1);
    let items: Vec<i64> = admin
        .query("SELECT item FROM items ORDER BY item", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(items, [1], "the batch that did not advance was rolled back");
}

/// A role that may connect but not create anything: `prepare` fails with
/// the server's insufficient-privilege error, and nothing is created.
#[tokio::test]
async fn a_role_without_create_privilege_cannot_prepare_and_nothing_is_created() {
    let db = fresh_database().await;
    let admin = db.admin().await;
    let role = format!("{}_reader", db.name());
    admin
        .batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN"))
        .await
        .unwrap();
    let store = PostgresStore::connect(&with_param(db.url(), "user", &role))
        .await
        .expect("the role may connect");
    let err = store.prepare().await.unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert_eq!(
        sqlstate(&err),
        Some(SqlState::INSUFFICIENT_PRIVILEGE),
        "{err}"
    );
    assert!(error_chain(&err).contains("preparing"), "{err}");
    let created: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 0, "nothing was created");
    drop(store);
    admin
        .batch_execute(&format!("DROP ROLE \"{role}\""))
        .await
        .unwrap();
}

/// Connecting to a database that does not exist, or as a role that does
/// not exist: an `Error::Store` naming the server, with the server's
/// SQLSTATE, before any table is touched.
#[tokio::test]
async fn a_missing_database_or_role_is_a_store_error_with_its_sqlstate() {
    let db = fresh_database().await;
    for (key, value, code) in [
        (
            "dbname",
            "waymark_no_such_database",
            SqlState::INVALID_CATALOG_NAME,
        ),
        (
            "user",
            "waymark_no_such_role",
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        ),
    ] {
        let url = with_param(db.url(), key, value);
        let config = PostgresConfig::new(&url).connect_timeout(Duration::from_secs(10));
        let err = PostgresStore::connect_with(config).await.unwrap_err();
        assert!(matches!(err, Error::Store { .. }), "{err:?}");
        assert_eq!(sqlstate(&err), Some(code), "{key}: {err}");
        assert!(error_chain(&err).contains("127.0.0.1:"), "{err}");
    }
    assert_nothing_in(&db).await;
}

async fn assert_nothing_in(db: &TestDatabase) {
    let tables: i64 = db
        .admin()
        .await
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
}

/// A database whose sessions are read-only (a hot standby behaves the
/// same): reads and a `prepare` with nothing to do work, every write fails
/// with the server's read-only error, and nothing changes.
#[tokio::test]
async fn a_read_only_postgres_database_reads_and_refuses_writes() {
    let db = fresh_database().await;
    let admin = db.admin().await;
    admin
        .batch_execute("CREATE TABLE items (item BIGINT NOT NULL)")
        .await
        .unwrap();
    let writer = db.store().await;
    writer.prepare().await.unwrap();
    writer.register(&[def(1), def(2)]).await.unwrap();
    writer.record_success(id(1)).await.unwrap();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET default_transaction_read_only = on",
            db.name()
        ))
        .await
        .unwrap();
    let before = pg_state(&writer, &admin).await;

    let store = db.store().await;
    store.prepare().await.unwrap();
    assert_eq!(store.list().await.unwrap().len(), 2);
    assert_eq!(store.pending().await.unwrap().len(), 1);
    assert!(store.get(id(1)).await.unwrap().executed);
    // Registering a known set may need no write; if it writes, it fails so.
    if let Err(err) = store.register(&[def(1), def(2)]).await {
        assert_eq!(
            sqlstate(&err),
            Some(SqlState::READ_ONLY_SQL_TRANSACTION),
            "{err}"
        );
    }
    let writes: Vec<Result<(), Error>> = vec![
        store.record_success(id(2)).await,
        store.mark_pending(id(1)).await,
        store.record_failure(id(2), "x").await,
        store.save_checkpoint(id(2), "7").await,
        store.register(&[def(3)]).await,
    ];
    for result in writes {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::Store { .. }), "{err:?}");
        assert_eq!(
            sqlstate(&err),
            Some(SqlState::READ_ONLY_SQL_TRANSACTION),
            "{err}"
        );
    }
    // A run fails with the server's error at its first write.
    let runner = Runner::<(), _>::builder(store.clone())
        .migration(
            def(2),
            Handler::blocking_fn(|_| Err::<(), waymark_core::BoxError>("must not run".into())),
        )
        .build()
        .unwrap();
    let err = runner.run(()).await.unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert_eq!(pg_state(&writer, &admin).await, before, "nothing changed");
}
