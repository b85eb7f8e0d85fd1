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

/// One of the replicas that start at the same moment.
#[derive(Debug)]
pub enum Contender<St> {
    /// A replica running its migrations.
    Runner(Runner<(), St>),
    /// The irreducible part of a replica that loses the race: it runs the
    /// fast-path query (`is_settled` with this fingerprint) once, and
    /// nothing else.
    FastPath(St, String),
}

/// How many replicas start together, and what they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crowd {
    /// One runner alone (the old baseline, out of reach for many replicas
    /// on two cores).
    Alone,
    /// One runner doing the work while every other replica runs the
    /// fast-path query once: the irreducible cost of `k` replicas.
    Irreducible,
    /// `k` runners.
    Runners,
}

impl Crowd {
    /// The contenders of this crowd, one per store of `stores` (at least
    /// one), with `runner` making a runner on a store; the fast-path query
    /// asks about the first runner's migrations.
    pub fn contenders<St: MigrationStore + Clone>(
        self,
        stores: Vec<St>,
        runner: impl Fn(&St) -> Result<Runner<(), St>, BoxError>,
    ) -> Result<Vec<Contender<St>>, BoxError> {
        let k = stores.len();
        let runners = if self == Self::Runners { k } else { 1 };
        let queries = if self == Self::Irreducible { k - 1 } else { 0 };
        let mut stores = stores.into_iter();
        let mut all = Vec::with_capacity(runners + queries);
        for store in stores.by_ref().take(runners) {
            all.push(Contender::Runner(runner(&store)?));
        }
        let Some(Contender::Runner(first)) = all.first() else {
            return Err("a crowd needs at least one store".into());
        };
        let defs: Vec<_> = first.definitions().cloned().collect();
        let fingerprint = waymark_core::MigrationDef::fingerprint(&defs);
        for store in stores.take(queries) {
            all.push(Contender::FastPath(store, fingerprint.clone()));
        }
        Ok(all)
    }
}

/// Starts every contender at once (behind a barrier) and returns the wall
/// time until the last has finished, with the runners' reports.
pub async fn start_together<St: MigrationStore + Clone>(
    contenders: Vec<Contender<St>>,
) -> Result<(Duration, Vec<RunReport>), BoxError> {
    let barrier = Arc::new(Barrier::new(contenders.len() + 1));
    let tasks: Vec<_> = contenders
        .into_iter()
        .map(|contender| {
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                match contender {
                    Contender::Runner(runner) => runner
                        .run(())
                        .await
                        .map(|started| Some(started.into_report())),
                    Contender::FastPath(store, fingerprint) => {
                        store.is_settled(&fingerprint).await.map(|_| None)
                    }
                }
            })
        })
        .collect();
    barrier.wait().await;
    let started = Instant::now();
    let mut reports = Vec::with_capacity(tasks.len());
    for task in tasks {
        reports.extend(task.await??);
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

/// Runs `one` (a fresh database with a crowd of `k`, returning the wall
/// time) for each crowd in turn, interleaved, and builds the figure: `k`
/// runners against the irreducible cost of `k` replicas, with one runner
/// alone beside it.
async fn compare<F, Fut>(
    scale: &Scale,
    backend: &'static str,
    k: usize,
    bound: &'static str,
    mut one: F,
) -> Result<Figure, BoxError>
where
    F: FnMut(usize, Crowd) -> Fut,
    Fut: Future<Output = Result<Duration, BoxError>>,
{
    let crowds = [Crowd::Runners, Crowd::Irreducible, Crowd::Alone];
    let mut samples = [Samples::new(), Samples::new(), Samples::new()];
    // One untimed round first: the first connections and files of a
    // process are slower than the rest.
    for crowd in crowds {
        one(k, crowd).await?;
    }
    for run in 0..scale.contended_runs {
        // Each crowd in each position in turn, so that drift in the
        // machine's load falls on all three.
        for i in 0..crowds.len() {
            let index = (i + run) % crowds.len();
            samples[index].push(one(k, crowds[index]).await?);
        }
    }
    let [w, irreducible, alone] = samples.map(|mut s| s.stats());
    Ok(Figure {
        benchmark: "contended start",
        backend,
        case: format!("{k} runners, {} pending", scale.contended_pending),
        unit: "wall time",
        waymark: w,
        baseline: irreducible,
        peer: None,
        target: Target::Ratio(1.2),
        bound,
        note: format!(
            "{} runs; baseline = one runner working while {} replicas run the fast-path query once; one runner alone {} ({:.2}x)",
            w.samples,
            k - 1,
            crate::timing::format_duration(alone.median),
            crate::report::ratio(w.median, alone.median)
        ),
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
        |k, crowd| {
            next += 1;
            let path = dir.path().join(format!("contended-{next}.db"));
            async move {
                sqlite_database(&path, pending).await?.close().await?;
                let mut stores = Vec::with_capacity(k);
                for _ in 0..k {
                    let store = SqliteStore::open(&path).await?;
                    store.list().await?;
                    stores.push(store);
                }
                let contenders = crowd.contenders(stores, |store| sqlite_runner(store, pending))?;
                let (wall, reports) = start_together(contenders).await?;
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
    compare(scale, "postgres", k, "loopback round trips; lock hand-over", |k, crowd| async move {
        let db = waymark_tests::pg::fresh_database().await;
        let setup = db.store().await;
        register(&setup, pending).await?;
        drop(setup);
        let admin = db.admin().await;
        admin
            .batch_execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO counter VALUES (1, 0)")
            .await?;
        let mut stores = Vec::with_capacity(k);
        for _ in 0..k {
            let store = db.store().await;
            if warm {
                store.list().await?;
            }
            stores.push(store);
        }
        let contenders = crowd.contenders(stores, |store| postgres_runner(store, pending))?;
        let (wall, reports) = start_together(contenders).await?;
        let counter: i64 = admin.query_one("SELECT n::BIGINT FROM counter", &[]).await?.get(0);
        check(&reports, counter, pending)?;
        Ok(wall)
    })
    .await
}

/// The statement each contended migration runs, for the docs.
pub const WORK_SQL: &str = BUMP_SQL;
