//! Benchmark 4: many runners (replicas) start at the same moment with the
//! same pending migrations; wall time until all have returned, against one
//! runner alone on the same kind of database.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Barrier;
use waymark_core::MigrationStore;
use waymark_runner::{RunReport, Runner};
use waymark_sqlite::SqliteStore;

use crate::noop::register;
use crate::pending::{BUMP_SQL, postgres_runner, sqlite_database, sqlite_runner};
use crate::report::{Figure, Target};
use crate::timing::Samples;
use crate::{BoxError, Scale};

/// Starts every runner at once (behind a barrier) and returns the wall time
/// until the last has finished, with their reports.
pub async fn start_together<St: MigrationStore + Clone>(
    runners: Vec<Runner<(), St>>,
) -> Result<(Duration, Vec<RunReport>), BoxError> {
    let barrier = Arc::new(Barrier::new(runners.len() + 1));
    let tasks: Vec<_> = runners
        .into_iter()
        .map(|runner| {
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                runner
                    .run(())
                    .await
                    .map(waymark_runner::Started::into_report)
            })
        })
        .collect();
    barrier.wait().await;
    let started = Instant::now();
    let mut reports = Vec::with_capacity(tasks.len());
    for task in tasks {
        reports.push(task.await??);
    }
    Ok((started.elapsed(), reports))
}

/// Every migration executed exactly once across the runners, and the
/// counter bumped once per migration.
fn check(reports: &[RunReport], counter: i64, pending: usize) -> Result<(), BoxError> {
    let executed: usize = reports.iter().map(|r| r.executed().count()).sum();
    if executed != pending || counter != pending as i64 {
        return Err(format!(
            "{pending} migrations: {executed} executions reported, counter at {counter}"
        )
        .into());
    }
    Ok(())
}

/// Runs `one` (a fresh database with `k` runners, returning the wall time)
/// alone and with `k` runners in turn, and builds the figure.
async fn compare<F, Fut>(
    scale: &Scale,
    backend: &'static str,
    k: usize,
    bound: &'static str,
    mut one: F,
) -> Result<Figure, BoxError>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<Duration, BoxError>>,
{
    let (mut together, mut alone) = (Samples::new(), Samples::new());
    // One untimed round first: the first connections and files of a
    // process are slower than the rest.
    one(1).await?;
    one(k).await?;
    for run in 0..scale.contended_runs {
        if run % 2 == 0 {
            alone.push(one(1).await?);
            together.push(one(k).await?);
        } else {
            together.push(one(k).await?);
            alone.push(one(1).await?);
        }
    }
    let (w, b) = (together.stats(), alone.stats());
    Ok(Figure {
        benchmark: "contended start",
        backend,
        case: format!("{k} runners, {} pending", scale.contended_pending),
        unit: "wall time",
        waymark: w,
        baseline: b,
        peer: None,
        target: Target::Ratio(1.2),
        bound,
        note: format!("{} runs; baseline = one runner alone", w.samples),
    })
}

/// Benchmark 4 on a SQLite file: `k` stores (connections) on one file.
pub async fn sqlite(scale: &Scale, figures: &mut Vec<Figure>) -> Result<(), BoxError> {
    let k = scale.contenders.0;
    let pending = scale.contended_pending;
    let dir = tempfile::tempdir()?;
    let mut next = 0;
    let figure = compare(
        scale,
        "sqlite",
        k,
        "the WAL fsync of each migration's commit",
        |k| {
            next += 1;
            let path = dir.path().join(format!("contended-{next}.db"));
            async move {
                sqlite_database(&path, pending).await?.close().await?;
                let mut runners = Vec::with_capacity(k);
                for _ in 0..k {
                    let store = SqliteStore::open(&path).await?;
                    store.list().await?;
                    runners.push(sqlite_runner(&store, pending)?);
                }
                let (wall, reports) = start_together(runners).await?;
                let counter: i64 = rusqlite::Connection::open(&path)?.query_row(
                    "SELECT n FROM counter",
                    [],
                    |r| r.get(0),
                )?;
                check(&reports, counter, pending)?;
                Ok(wall)
            }
        },
    )
    .await?;
    println!("{}", figure.line());
    figures.push(figure);
    Ok(())
}

/// Benchmark 4 on PostgreSQL: `k` stores, each with its own pool, whose
/// sessions are warm (they have read the tracking table once, as an
/// application's pool has by the time it starts its migrations) and then
/// cold (fresh sessions: each server process loads its catalog caches
/// during the run, all at once, on the same two cores as the clients).
pub async fn postgres(scale: &Scale, figures: &mut Vec<Figure>) -> Result<(), BoxError> {
    for warm in [true, false] {
        let mut figure = postgres_figure(scale, warm).await?;
        if !warm {
            figure.case.push_str(", cold sessions");
            figure.target = Target::None;
            figure.bound = "32 server processes warming their catalog caches on 2 cores";
        }
        println!("{}", figure.line());
        figures.push(figure);
    }
    Ok(())
}

async fn postgres_figure(scale: &Scale, warm: bool) -> Result<Figure, BoxError> {
    let k = scale.contenders.1;
    let pending = scale.contended_pending;
    compare(scale, "postgres", k, "loopback round trips; lock hand-over", |k| async move {
        let db = waymark_tests::pg::fresh_database().await;
        let setup = db.store().await;
        register(&setup, pending).await?;
        drop(setup);
        let admin = db.admin().await;
        admin
            .batch_execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO counter VALUES (1, 0)")
            .await?;
        let mut runners = Vec::with_capacity(k);
        for _ in 0..k {
            let store = db.store().await;
            if warm {
                store.list().await?;
            }
            runners.push(postgres_runner(&store, pending)?);
        }
        let (wall, reports) = start_together(runners).await?;
        let counter: i64 = admin.query_one("SELECT n::BIGINT FROM counter", &[]).await?.get(0);
        check(&reports, counter, pending)?;
        Ok(wall)
    })
    .await
}

/// The statement each contended migration runs, for the docs.
pub const WORK_SQL: &str = BUMP_SQL;
