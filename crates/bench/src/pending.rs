//! Benchmark 2: executing N trivial pending migrations, per migration,
//! against a hand-written loop that commits one transaction per migration.
//!
//! Both sides start from the same state (the tracking table with N pending
//! rows) and do the same work per migration: one trivial data change and
//! the bookkeeping (executed, when, one more attempt) in one transaction.
//! waymark uses its atomic handlers, which commit exactly that; its figure
//! also carries the run's fixed costs (fast-path check, prepare and register
//! checks, two pending reads, the run lock), spread over the N migrations.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior, params};
use waymark_core::BoxError as CoreBoxError;
use waymark_core::store::now_utc;
use waymark_core::time::format_description::well_known::Rfc3339;
use waymark_postgres::PostgresStore;
use waymark_runner::Runner;
use waymark_sqlite::SqliteStore;

use crate::noop::{definitions, register};
use crate::report::{Figure, Target};
use crate::timing::Samples;
use crate::{BoxError, Scale};

/// The trivial data change every migration makes.
pub const BUMP_SQL: &str = "UPDATE counter SET n = n + 1 WHERE id = 1";
const COUNTER_SQL: &str = "CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); \
                           INSERT INTO counter (id, n) VALUES (1, 0)";

/// A SQLite runner of `n` atomic migrations, each bumping the counter.
pub fn sqlite_runner(store: &SqliteStore, n: usize) -> Result<Runner<(), SqliteStore>, BoxError> {
    let mut builder = Runner::<(), _>::builder(store.clone());
    for def in definitions(n)? {
        builder = builder.atomic(def, |tx, _ctx| {
            tx.execute(BUMP_SQL, [])?;
            Ok::<(), CoreBoxError>(())
        });
    }
    Ok(builder.build()?)
}

/// A PostgreSQL runner of `n` atomic migrations, each bumping the counter.
pub fn postgres_runner(
    store: &PostgresStore,
    n: usize,
) -> Result<Runner<(), PostgresStore>, BoxError> {
    let mut builder = Runner::<(), _>::builder(store.clone());
    for def in definitions(n)? {
        builder = builder.atomic(def, |tx, _ctx| {
            Box::pin(async move {
                tx.execute(BUMP_SQL, &[]).await?;
                Ok::<(), CoreBoxError>(())
            })
        });
    }
    Ok(builder.build()?)
}

/// A SQLite file with the tracking table holding `n` pending migrations
/// and the counter, as waymark's store creates them.
pub async fn sqlite_database(path: &Path, n: usize) -> Result<SqliteStore, BoxError> {
    let store = SqliteStore::open(path).await?;
    register(&store, n).await?;
    Connection::open(path)?.execute_batch(COUNTER_SQL)?;
    Ok(store)
}

/// The hand-written loop on SQLite: the pending ids, then one `BEGIN
/// IMMEDIATE` transaction per migration with the same durability settings
/// as waymark's connection (WAL, `synchronous = FULL`).
pub fn sqlite_hand_loop(conn: &mut Connection) -> Result<usize, BoxError> {
    let ids: Vec<i64> = conn
        .prepare_cached("SELECT id FROM migrations WHERE executed = 0 ORDER BY id")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for &id in &ids {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached(BUMP_SQL)?.execute([])?;
        let at = now_utc().format(&Rfc3339)?;
        tx.prepare_cached(
            "UPDATE migrations SET executed = 1, executed_at = ?2, attempts = attempts + 1, \
             last_error = NULL, checkpoint = NULL WHERE id = ?1",
        )?
        .execute(params![id, at])?;
        tx.commit()?;
    }
    Ok(ids.len())
}

/// Opens a connection for the hand-written loop, set up as waymark's.
pub fn durable_connection(path: &Path) -> Result<Connection, BoxError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn counter_sqlite(path: &Path) -> Result<i64, BoxError> {
    Ok(Connection::open(path)?.query_row("SELECT n FROM counter", [], |row| row.get(0))?)
}

/// Benchmark 2 on SQLite files.
pub async fn sqlite(scale: &Scale, figures: &mut Vec<Figure>) -> Result<(), BoxError> {
    let n = scale.pending_count;
    let dir = tempfile::tempdir()?;
    let (mut waymark, mut baseline) = (Samples::new(), Samples::new());
    for run in 0..scale.pending_runs {
        let path = dir.path().join(format!("waymark-{run}.db"));
        let store = sqlite_database(&path, n).await?;
        let runner = sqlite_runner(&store, n)?;
        let report = waymark.time(runner.run(())).await?.into_report();
        check(report.executed().count(), counter_sqlite(&path)?, n)?;
        drop(runner);
        store.close().await?;

        let path = dir.path().join(format!("baseline-{run}.db"));
        sqlite_database(&path, n).await?.close().await?;
        let mut conn = durable_connection(&path)?;
        let done = baseline.time_sync(|| sqlite_hand_loop(&mut conn))?;
        check(done, counter_sqlite(&path)?, n)?;
    }
    let figure = figure(
        "sqlite",
        n,
        &mut waymark,
        &mut baseline,
        "one fsync of the WAL per commit",
    );
    println!("{}", figure.line());
    figures.push(figure);
    Ok(())
}

/// Benchmark 2 on PostgreSQL: a fresh database per run and variant.
pub async fn postgres(scale: &Scale, figures: &mut Vec<Figure>) -> Result<(), BoxError> {
    let n = scale.pending_count;
    let (mut waymark, mut baseline) = (Samples::new(), Samples::new());
    for _ in 0..scale.pending_runs {
        let db = waymark_tests::pg::fresh_database().await;
        let store = db.store().await;
        register(&store, n).await?;
        let admin = db.admin().await;
        admin.batch_execute(COUNTER_SQL).await?;
        let runner = postgres_runner(&store, n)?;
        let report = waymark.time(runner.run(())).await?.into_report();
        check(report.executed().count(), counter_pg(&admin).await?, n)?;

        let db = waymark_tests::pg::fresh_database().await;
        let store = db.store().await;
        register(&store, n).await?;
        drop(store);
        let mut client = db.admin().await;
        client.batch_execute(COUNTER_SQL).await?;
        let done = baseline.time(pg_hand_loop(&mut client)).await?;
        check(done, counter_pg(&client).await?, n)?;
    }
    let figure = figure(
        "postgres",
        n,
        &mut waymark,
        &mut baseline,
        "5 loopback round trips per migration (fsync off)",
    );
    println!("{}", figure.line());
    figures.push(figure);
    Ok(())
}

/// The hand-written loop on PostgreSQL: the pending ids, then per
/// migration BEGIN, the change, the bookkeeping, COMMIT.
pub async fn pg_hand_loop(client: &mut tokio_postgres::Client) -> Result<usize, BoxError> {
    let pending = client
        .prepare("SELECT id FROM migrations WHERE NOT executed ORDER BY id")
        .await?;
    let ids: Vec<i64> = client
        .query(&pending, &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let record = client
        .prepare(
            "UPDATE migrations SET executed = TRUE, executed_at = $2, attempts = attempts + 1, \
             last_error = NULL, checkpoint = NULL WHERE id = $1",
        )
        .await?;
    for &id in &ids {
        let tx = client.transaction().await?;
        // As text, as a handler sends it: its plain transaction has no
        // statement cache.
        tx.execute(BUMP_SQL, &[]).await?;
        tx.execute(&record, &[&id, &now_utc()]).await?;
        tx.commit().await?;
    }
    Ok(ids.len())
}

async fn counter_pg(client: &tokio_postgres::Client) -> Result<i64, BoxError> {
    Ok(client
        .query_one("SELECT n::BIGINT FROM counter", &[])
        .await?
        .get(0))
}

fn check(executed: usize, counter: i64, n: usize) -> Result<(), BoxError> {
    if executed == n && counter == n as i64 {
        Ok(())
    } else {
        Err(format!(
            "expected {n} migrations executed once each, got {executed} and a counter of {counter}"
        )
        .into())
    }
}

fn figure(
    backend: &'static str,
    n: usize,
    waymark: &mut Samples,
    baseline: &mut Samples,
    bound: &'static str,
) -> Figure {
    let (w, b) = (waymark.stats(), baseline.stats());
    Figure {
        benchmark: "N pending migrations",
        backend,
        case: format!("N = {n}"),
        unit: "per migration",
        waymark: w.per(n as u64),
        baseline: b.per(n as u64),
        peer: None,
        target: Target::Ratio(1.2),
        bound,
        note: format!(
            "{} runs; whole run {:.1} ms vs {:.1} ms",
            w.samples,
            w.median.as_secs_f64() * 1e3,
            b.median.as_secs_f64() * 1e3
        ),
    }
}
