//! Benchmark 1: a start-up with nothing to do, at N registered and executed
//! migrations. Baseline: one prepared `SELECT … WHERE NOT executed ORDER BY
//! id` on the same table. Peer: refinery's run with N applied migrations.

use std::path::Path;
use std::time::Duration;

use waymark_core::store::sql::{Dialect, Statements};
use waymark_core::{MigrationDef, MigrationStore};
use waymark_runner::{Handler, Runner};
use waymark_sqlite::SqliteStore;

use crate::report::{Figure, Target};
use crate::timing::{Samples, format_duration, iterations};
use crate::{BoxError, Scale};

/// The baseline query: the original application's pending query, ordered.
pub const PENDING_SQL: &str =
    "SELECT id, name, description, executed FROM migrations WHERE NOT executed ORDER BY id";

/// Rounds of interleaved sampling per figure.
const ROUNDS: usize = 10;
/// Calls of each variant before sampling.
const WARM_UP: usize = 30;
/// The largest N refinery runs at: above it one of its runs takes seconds
/// (its cost grows with N), and sampling it would take most of the run.
const PEER_UP_TO: usize = 10_000;

/// `n` definitions with ids 1..=n.
pub fn definitions(n: usize) -> Result<Vec<MigrationDef>, BoxError> {
    (1..=n as i64)
        .map(|id| {
            Ok(MigrationDef::new(
                id,
                format!("migration_{id}"),
                "a data migration",
            )?)
        })
        .collect()
}

/// A runner declaring `n` migrations whose handlers do nothing.
pub fn runner<St: MigrationStore + Clone>(store: St, n: usize) -> Result<Runner<(), St>, BoxError> {
    let mut builder = Runner::<(), _>::builder(store);
    for def in definitions(n)? {
        builder = builder.migration(
            def,
            Handler::async_fn(|_| async { Ok::<(), waymark_core::BoxError>(()) }),
        );
    }
    Ok(builder.build()?)
}

/// refinery's migrations for the same `n`: each a trivial statement.
pub fn refinery_migrations(n: usize) -> Result<Vec<refinery::Migration>, BoxError> {
    (1..=n)
        .map(|i| {
            Ok(refinery::Migration::unapplied(
                &format!("V{i}__migration_{i}"),
                "SELECT 1;",
            )?)
        })
        .collect()
}

/// Registers `n` migrations through the store, so that the next run has
/// them all pending.
pub async fn register(store: &dyn MigrationStore, n: usize) -> Result<(), BoxError> {
    store.prepare().await?;
    store.register(&definitions(n)?).await?;
    Ok(())
}

/// Marks every migration of a SQLite file executed in one transaction (the
/// store would commit, and sync, once per migration).
pub fn mark_all_executed_sqlite(path: &Path) -> Result<(), BoxError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute(
        "UPDATE migrations SET executed = 1, executed_at = '2024-01-01T00:00:00.000000Z', attempts = 1",
        [],
    )?;
    Ok(())
}

/// Marks every migration of a PostgreSQL database executed in one statement.
pub async fn mark_all_executed_pg(client: &tokio_postgres::Client) -> Result<(), BoxError> {
    client
        .execute(
            "UPDATE migrations SET executed = TRUE, executed_at = now(), attempts = 1",
            &[],
        )
        .await?;
    // The bulk update left N dead index entries that autovacuum would
    // clear in a real database; clear them now, for every side.
    client.batch_execute("VACUUM ANALYZE migrations").await?;
    Ok(())
}

/// Checks that the next run takes the fast path.
async fn check_fast_path<St: MigrationStore + Clone>(
    runner: &Runner<(), St>,
) -> Result<(), BoxError> {
    check_settled(runner.run(()).await?.into_report())
}

/// Samples of the variants of one figure.
#[derive(Debug, Default)]
struct Three {
    waymark: Samples,
    baseline: Samples,
    peer: Samples,
    /// waymark's own fast-path query, sent by hand on the baseline's
    /// connection (PostgreSQL): what the run costs without waymark's code.
    own_query: Samples,
}

/// Per-round counts for each variant, from warm-up timings, so each
/// variant gets about `budget` in total.
fn per_round(warm: &mut Samples, budget: Duration) -> usize {
    let one = warm.stats().median;
    iterations(one, budget / ROUNDS as u32, 1, 20_000)
}

/// Benchmark 1 on a SQLite file, at each size.
pub async fn sqlite(scale: &Scale, figures: &mut Vec<Figure>) -> Result<(), BoxError> {
    for &n in &scale.noop_sizes {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("noop.db");
        let store = SqliteStore::open(&path).await?;
        let runner = runner(store.clone(), n)?;
        register(&store, n).await?;
        mark_all_executed_sqlite(&path)?;
        check_fast_path(&runner).await?;
        let figure = sqlite_figure(scale, &path, &runner, n).await?;
        println!("{}", figure.line());
        figures.push(figure);
        store.close().await?;
    }
    Ok(())
}

async fn sqlite_figure(
    scale: &Scale,
    path: &Path,
    runner: &Runner<(), SqliteStore>,
    n: usize,
) -> Result<Figure, BoxError> {
    let baseline_conn = rusqlite::Connection::open(path)?;
    let mut pending = baseline_conn.prepare(PENDING_SQL)?;
    let mut baseline = || -> Result<usize, BoxError> {
        let rows = pending.query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, bool>(3)?,
            ))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?.len())
    };
    let mut peer_conn = rusqlite::Connection::open(path)?;
    let with_peer = n <= PEER_UP_TO;
    let migrations = refinery_migrations(if with_peer { n } else { 0 })?;
    refinery::Runner::new(&migrations)
        .set_grouped(true)
        .run(&mut peer_conn)?;
    let peer_runner = refinery::Runner::new(&migrations);
    let mut peer = || -> Result<usize, BoxError> {
        if !with_peer {
            return Ok(0);
        }
        Ok(peer_runner.run(&mut peer_conn)?.applied_migrations().len())
    };

    let mut warm = Three::default();
    for _ in 0..WARM_UP {
        check_settled(warm.waymark.time(runner.run(())).await?.into_report())?;
        check_empty(warm.baseline.time_sync(&mut baseline)?)?;
        check_empty(warm.peer.time_sync(&mut peer)?)?;
    }
    let counts = [
        per_round(&mut warm.waymark, scale.noop_budget),
        per_round(&mut warm.baseline, scale.noop_budget),
        if with_peer {
            per_round(&mut warm.peer, scale.noop_budget)
        } else {
            0
        },
    ];
    let mut s = Three::default();
    for _ in 0..ROUNDS {
        for _ in 0..counts[0] {
            check_settled(s.waymark.time(runner.run(())).await?.into_report())?;
        }
        for _ in 0..counts[1] {
            check_empty(s.baseline.time_sync(&mut baseline)?)?;
        }
        for _ in 0..counts[2] {
            check_empty(s.peer.time_sync(&mut peer)?)?;
        }
    }
    Ok(figure(
        "sqlite",
        n,
        &mut s,
        Target::AtMost(Duration::from_micros(10)),
        "in-process reads, no I/O (page cache)",
    ))
}

/// Benchmark 1 on PostgreSQL over loopback TCP, at each size.
pub async fn postgres(scale: &Scale, figures: &mut Vec<Figure>) -> Result<(), BoxError> {
    for &n in &scale.noop_sizes {
        let db = waymark_tests::pg::fresh_database().await;
        let store = db.store().await;
        let runner = runner(store.clone(), n)?;
        register(&store, n).await?;
        let baseline_client = db.admin().await;
        mark_all_executed_pg(&baseline_client).await?;
        check_fast_path(&runner).await?;
        let pending = baseline_client.prepare(PENDING_SQL).await?;
        let own = Statements::new(
            Dialect::Postgres,
            "\"public\".\"migrations\"",
            "\"public\".\"migrations_fingerprints\"",
        );
        let own = baseline_client.prepare(&own.set_state).await?;
        let fingerprint = MigrationDef::fingerprint(&definitions(n)?);
        let own_query = async || -> Result<usize, BoxError> {
            let row = baseline_client.query_one(&own, &[&fingerprint]).await?;
            // Settled: registered, and nothing pending.
            Ok(usize::from(
                !(row.get::<_, bool>(0) && row.get::<_, bool>(1)),
            ))
        };
        let mut peer_client = db.admin().await;
        let with_peer = n <= PEER_UP_TO;
        let migrations = refinery_migrations(if with_peer { n } else { 0 })?;
        refinery::Runner::new(&migrations)
            .set_grouped(true)
            .run_async(&mut peer_client)
            .await?;
        let peer_runner = refinery::Runner::new(&migrations);

        let mut warm = Three::default();
        for _ in 0..WARM_UP {
            check_settled(warm.waymark.time(runner.run(())).await?.into_report())?;
            check_empty(
                warm.baseline
                    .time(baseline_client.query(&pending, &[]))
                    .await?
                    .len(),
            )?;
            check_empty(
                warm.peer
                    .time(peer_runner.run_async(&mut peer_client))
                    .await?
                    .applied_migrations()
                    .len(),
            )?;
            check_empty(warm.own_query.time(own_query()).await?)?;
        }
        let own_count = per_round(&mut warm.own_query, scale.noop_budget);
        let counts = [
            per_round(&mut warm.waymark, scale.noop_budget),
            per_round(&mut warm.baseline, scale.noop_budget),
            if with_peer {
                per_round(&mut warm.peer, scale.noop_budget)
            } else {
                0
            },
        ];
        let mut s = Three::default();
        for _ in 0..ROUNDS {
            for _ in 0..counts[0] {
                check_settled(s.waymark.time(runner.run(())).await?.into_report())?;
            }
            for _ in 0..counts[1] {
                check_empty(
                    s.baseline
                        .time(baseline_client.query(&pending, &[]))
                        .await?
                        .len(),
                )?;
            }
            for _ in 0..counts[2] {
                check_empty(
                    s.peer
                        .time(peer_runner.run_async(&mut peer_client))
                        .await?
                        .applied_migrations()
                        .len(),
                )?;
            }
            for _ in 0..own_count {
                check_empty(s.own_query.time(own_query()).await?)?;
            }
        }
        let figure = figure(
            "postgres",
            n,
            &mut s,
            Target::Ratio(1.2),
            "one loopback round trip",
        );
        println!("{}", figure.line());
        figures.push(figure);
    }
    Ok(())
}

fn figure(
    backend: &'static str,
    n: usize,
    s: &mut Three,
    target: Target,
    bound: &'static str,
) -> Figure {
    let waymark = s.waymark.stats();
    let baseline = s.baseline.stats();
    // Without the peer (large N) it was not sampled.
    let peer = (n <= PEER_UP_TO).then(|| s.peer.stats());
    Figure {
        benchmark: "no-op start-up",
        backend,
        case: format!("N = {n}"),
        unit: "per run",
        note: {
            let mut note = format!(
                "{} samples; waymark − baseline = {:+.2} µs",
                waymark.samples,
                diff_micros(waymark.median, baseline.median)
            );
            if !s.own_query.is_empty() {
                let own = s.own_query.stats();
                note.push_str(&format!(
                    "; waymark's query by hand {} ({:.2}x the baseline; the run {:.2}x it)",
                    format_duration(own.median),
                    crate::report::ratio(own.median, baseline.median),
                    crate::report::ratio(waymark.median, own.median),
                ));
            }
            note
        },
        waymark,
        baseline,
        peer,
        target,
        bound,
    }
}

fn diff_micros(a: Duration, b: Duration) -> f64 {
    (a.as_secs_f64() - b.as_secs_f64()) * 1e6
}

fn check_settled(report: waymark_runner::RunReport) -> Result<(), BoxError> {
    if report.was_settled() {
        Ok(())
    } else {
        Err("a no-op start-up did more than the fast path".into())
    }
}

fn check_empty(rows: usize) -> Result<(), BoxError> {
    if rows == 0 {
        Ok(())
    } else {
        Err(format!("expected nothing pending, found {rows}").into())
    }
}
