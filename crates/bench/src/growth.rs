//! Benchmark: many tracked migrations. At N executed migrations (up to
//! 100,000), the first start-up after a deploy that adds one migration,
//! against what an application would do by hand for that one migration
//! (insert its row, read what is pending, run it, mark it executed); the
//! `register` call alone; and the peak memory of that start-up and of the
//! no-op start-up after it. Register must cost what is new, not N: the
//! curve over N shows it.

use std::path::Path;

use waymark_core::{MigrationDef, MigrationStore};
use waymark_runner::RunReport;
use waymark_sqlite::SqliteStore;

use crate::memory;
use crate::noop::{definitions, mark_all_executed_pg, mark_all_executed_sqlite, register, runner};
use crate::pending::durable_connection;
use crate::report::{Figure, Target};
use crate::timing::Samples;
use crate::{BoxError, Scale};

/// What one N measured.
#[derive(Debug, Default)]
struct Curve {
    deploy: Samples,
    by_hand: Samples,
    register: Samples,
    noop: Samples,
    /// Peak memory above the resident size before, KiB: the deploy's start-up, the no-op's.
    deploy_kib: u64,
    noop_kib: u64,
    /// Resident memory of a runner declaring N + 1 migrations, KiB.
    runner_kib: u64,
}

/// The peak resident memory `op` adds, KiB (0 where the kernel does not say).
async fn peak_of<F: std::future::Future>(op: F) -> (F::Output, u64) {
    let reset = memory::reset_peak();
    let before = memory::current_kib().unwrap_or(0);
    let out = op.await;
    let peak = memory::peak_kib().unwrap_or(0);
    (
        out,
        if reset {
            peak.saturating_sub(before)
        } else {
            0
        },
    )
}

fn check_deploy(report: RunReport) -> Result<(), BoxError> {
    let executed = report.executed().count();
    if executed == 1 {
        Ok(())
    } else {
        Err(format!("a deploy adding one migration executed {executed}").into())
    }
}

fn check_settled(report: RunReport) -> Result<(), BoxError> {
    if report.was_settled() {
        Ok(())
    } else {
        Err("the start-up after a deploy did more than the fast path".into())
    }
}

/// Samples each variant `scale.growth_runs` times, in turns: the deploy's
/// start-up and the no-op after it through a runner of `n + 1` migrations,
/// the same by hand, and `register` alone; `forget` takes the new
/// migration's row and its set's fingerprint away before each.
async fn measure<St: MigrationStore + Clone>(
    scale: &Scale,
    store: &St,
    n: usize,
    mut forget: impl AsyncFnMut() -> Result<(), BoxError>,
    mut by_hand: impl AsyncFnMut() -> Result<usize, BoxError>,
) -> Result<Curve, BoxError> {
    let grown_defs = definitions(n + 1)?;
    let before = memory::current_kib().unwrap_or(0);
    let grown = runner(store.clone(), n + 1)?;
    let mut curve = Curve {
        runner_kib: memory::current_kib().unwrap_or(0).saturating_sub(before),
        ..Curve::default()
    };
    for round in 0..scale.growth_runs {
        forget().await?;
        let (report, kib) = peak_of(curve.deploy.time(grown.run(()))).await;
        check_deploy(report?.into_report())?;
        let (report, noop_kib) = peak_of(curve.noop.time(grown.run(()))).await;
        check_settled(report?.into_report())?;
        forget().await?;
        let ran = curve.by_hand.time(by_hand()).await?;
        if ran != 1 {
            return Err(format!("the hand-written deploy ran {ran}").into());
        }
        forget().await?;
        curve.register.time(store.register(&grown_defs)).await?;
        if round == 0 {
            (curve.deploy_kib, curve.noop_kib) = (kib, noop_kib);
        }
    }
    Ok(curve)
}

/// The new migration's definition at `n`.
fn added(n: usize) -> Result<MigrationDef, BoxError> {
    Ok(definitions(n + 1)?.pop().ok_or("no definition")?)
}

/// Benchmark on SQLite files, at each size.
pub async fn sqlite(scale: &Scale, figures: &mut Vec<Figure>) -> Result<(), BoxError> {
    for &n in &scale.growth_sizes {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("growth.db");
        let store = SqliteStore::open(&path).await?;
        register(&store, n).await?;
        mark_all_executed_sqlite(&path)?;
        let grown_defs = definitions(n + 1)?;
        let fingerprint = MigrationDef::fingerprint(&grown_defs);
        let new = added(n)?;
        let conn = durable_connection(&path)?;
        let forget = || -> Result<(), BoxError> {
            conn.execute("DELETE FROM migrations WHERE id = ?1", [new.id().get()])?;
            conn.execute(
                "DELETE FROM migrations_fingerprints WHERE fingerprint = ?1",
                [&fingerprint],
            )?;
            Ok(())
        };
        let by_hand = || -> Result<usize, BoxError> {
            conn.execute(
                "INSERT INTO migrations (id, name, description, executed, attempts) \
                 VALUES (?1, ?2, ?3, 0, 0) ON CONFLICT (id) DO NOTHING",
                rusqlite::params![new.id().get(), new.name(), new.description()],
            )?;
            let pending: Vec<i64> = conn
                .prepare_cached("SELECT id FROM migrations WHERE executed = 0 ORDER BY id")?
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            for id in &pending {
                conn.execute(
                    "UPDATE migrations SET executed = 1, executed_at = ?2, attempts = attempts + 1 \
                     WHERE id = ?1",
                    rusqlite::params![id, "2024-01-01T00:00:00.000000Z"],
                )?;
            }
            Ok(pending.len())
        };
        let mut curve = measure(scale, &store, n, async || forget(), async || by_hand()).await?;
        check_rows_sqlite(&path, n + 1)?;
        let figure = figure("sqlite", n, &mut curve);
        println!("{}", figure.line());
        figures.push(figure);
        store.close().await?;
    }
    Ok(())
}

fn check_rows_sqlite(path: &Path, n: usize) -> Result<(), BoxError> {
    let conn = rusqlite::Connection::open(path)?;
    let (rows, pending): (i64, i64) = conn.query_row(
        "SELECT count(*), count(*) FILTER (WHERE executed = 0) FROM migrations",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    check_rows(rows, pending, n)
}

/// After the last round (which registered the new one and left it pending):
/// every migration tracked once, only the new one pending.
fn check_rows(rows: i64, pending: i64, n: usize) -> Result<(), BoxError> {
    if rows == n as i64 && pending == 1 {
        Ok(())
    } else {
        Err(format!("expected {n} rows with 1 pending, found {rows} with {pending} pending").into())
    }
}

/// Benchmark on PostgreSQL over loopback TCP, at each size.
pub async fn postgres(scale: &Scale, figures: &mut Vec<Figure>) -> Result<(), BoxError> {
    for &n in &scale.growth_sizes {
        let db = waymark_tests::pg::fresh_database().await;
        let store = db.store().await;
        register(&store, n).await?;
        let client = db.admin().await;
        mark_all_executed_pg(&client).await?;
        let grown_defs = definitions(n + 1)?;
        let fingerprint = MigrationDef::fingerprint(&grown_defs);
        let new = added(n)?;
        let new_id = new.id().get();
        let forget = async || -> Result<(), BoxError> {
            client
                .execute("DELETE FROM migrations WHERE id = $1", &[&new_id])
                .await?;
            client
                .execute(
                    "DELETE FROM migrations_fingerprints WHERE fingerprint = $1",
                    &[&fingerprint],
                )
                .await?;
            Ok(())
        };
        let by_hand = async || -> Result<usize, BoxError> {
            client
                .execute(
                    "INSERT INTO migrations (id, name, description, executed, attempts) \
                     VALUES ($1, $2, $3, FALSE, 0) ON CONFLICT (id) DO NOTHING",
                    &[&new_id, &new.name(), &new.description()],
                )
                .await?;
            let pending = client
                .query(
                    "SELECT id FROM migrations WHERE NOT executed ORDER BY id",
                    &[],
                )
                .await?;
            for row in &pending {
                let id: i64 = row.get(0);
                client
                    .execute(
                        "UPDATE migrations SET executed = TRUE, executed_at = now(), \
                         attempts = attempts + 1 WHERE id = $1",
                        &[&id],
                    )
                    .await?;
            }
            Ok(pending.len())
        };
        let mut curve = measure(scale, &store, n, forget, by_hand).await?;
        let row = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE NOT executed) FROM migrations",
                &[],
            )
            .await?;
        check_rows(row.get(0), row.get(1), n + 1)?;
        let figure = figure("postgres", n, &mut curve);
        println!("{}", figure.line());
        figures.push(figure);
    }
    Ok(())
}

fn figure(backend: &'static str, n: usize, curve: &mut Curve) -> Figure {
    let register = curve.register.stats();
    let noop = curve.noop.stats();
    Figure {
        benchmark: "deploy adding one migration",
        backend,
        case: format!("N = {n}"),
        unit: "first start-up",
        note: format!(
            "register alone {}; no-op after it {}; peak memory: start-up +{} KiB, no-op +{} KiB, \
             the runner of N + 1 migrations {} KiB",
            crate::timing::format_duration(register.median),
            crate::timing::format_duration(noop.median),
            curve.deploy_kib,
            curve.noop_kib,
            curve.runner_kib,
        ),
        waymark: curve.deploy.stats(),
        baseline: curve.by_hand.stats(),
        peer: None,
        target: Target::None,
        bound: "register: what is new; the start-up: two reads of all N rows",
    }
}
