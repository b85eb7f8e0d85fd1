//! Benchmark 3: a batched backfill (heart-rate zone percentages) with
//! atomic checkpoints, against a hand-written batched loop with the same
//! batch size and the same commits (each batch and its checkpoint in one
//! transaction). Peak memory is measured in child processes, at two table
//! sizes, to show that it stays flat.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, TransactionBehavior, params};
use waymark_core::{BatchStep, MigrationDef, MigrationStore};
use waymark_runner::Runner;
use waymark_sqlite::SqliteStore;

use crate::hr;
use crate::memory;
use crate::pending::durable_connection;
use crate::report::{Figure, Target};
use crate::timing::{Samples, Stats};
use crate::{BoxError, Scale};

/// The table the hand-written loop keeps its checkpoints in.
const PROGRESS_SQL: &str = "CREATE TABLE IF NOT EXISTS backfill_progress \
    (job TEXT PRIMARY KEY, checkpoint TEXT, done INTEGER NOT NULL DEFAULT 0)";

/// The hand-written loop on SQLite: each batch and its checkpoint commit in
/// one `BEGIN IMMEDIATE` transaction. Returns the streams processed.
pub fn sqlite_hand_loop(conn: &mut Connection, job: &str, batch: usize) -> Result<u64, BoxError> {
    conn.execute_batch(PROGRESS_SQL)?;
    conn.execute("INSERT INTO backfill_progress (job) VALUES (?1)", [job])?;
    let mut from: Option<String> = None;
    let mut processed = 0;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let step = hr::sqlite::batch(&tx, from.as_deref(), batch)?;
        processed += step.processed();
        tx.prepare_cached(
            "UPDATE backfill_progress SET checkpoint = ?2, done = ?3 WHERE job = ?1",
        )?
        .execute(params![job, step.checkpoint(), step.is_done()])?;
        tx.commit()?;
        match step.checkpoint() {
            Some(next) => from = Some(next.to_owned()),
            None => return Ok(processed),
        }
    }
}

/// The backfill's definition as migration `id`, the same for every backend.
fn zones_def(id: i64) -> Result<MigrationDef, waymark_core::Error> {
    MigrationDef::new(
        id,
        format!("heart_rate_zones_{id}"),
        "Zone percentages of every HR stream",
    )
}

/// A runner of the same backfill as migration `id`, registered, with
/// a batched atomic handler, and the count of streams it will process.
pub async fn sqlite_runner(
    store: &SqliteStore,
    id: i64,
    batch: usize,
) -> Result<(Runner<(), SqliteStore>, Counter), BoxError> {
    let def = zones_def(id)?;
    store.register(std::slice::from_ref(&def)).await?;
    let processed = Counter::default();
    let counted = Arc::clone(&processed);
    let runner = Runner::<(), _>::builder(store.clone())
        .batched(def, move |tx, from, _ctx| {
            let step: BatchStep = hr::sqlite::batch(tx, from, batch)?;
            counted.fetch_add(step.processed(), Ordering::Relaxed);
            Ok::<_, BoxError>(step)
        })
        .build()?;
    Ok((runner, processed))
}

/// Streams processed by a backfill's batches.
pub type Counter = Arc<AtomicU64>;

/// waymark's run of the backfill (registration included), as a child
/// process measures it. Returns the streams processed.
pub async fn sqlite_waymark(store: &SqliteStore, id: i64, batch: usize) -> Result<u64, BoxError> {
    let (runner, processed) = sqlite_runner(store, id, batch).await?;
    run_once(&runner).await?;
    Ok(processed.load(Ordering::Relaxed))
}

/// Times one run of `runner`, whose migration is registered and pending.
async fn timed<St: MigrationStore + Clone>(
    samples: &mut Samples,
    runner: &Runner<(), St>,
    processed: &Counter,
) -> Result<u64, BoxError> {
    samples.time(run_once(runner)).await?;
    Ok(processed.load(Ordering::Relaxed))
}

async fn run_once<St: MigrationStore + Clone>(runner: &Runner<(), St>) -> Result<(), BoxError> {
    let report = runner.run(()).await?.into_report();
    if report.executed().count() != 1 {
        return Err(format!("the backfill did not run exactly once: {report}").into());
    }
    Ok(())
}

/// A SQLite file with `streams` seeded heart-rate streams.
pub fn seeded_sqlite(path: &Path, streams: usize, points: usize) -> Result<(), BoxError> {
    let mut conn = durable_connection(path)?;
    hr::sqlite::seed(&mut conn, streams, points)?;
    Ok(())
}

/// Benchmark 3 on SQLite: timing, then peak memory at two sizes.
pub async fn sqlite(scale: &Scale, figures: &mut Vec<Figure>) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("backfill.db");
    seeded_sqlite(&path, scale.backfill_streams, scale.backfill_points)?;
    let store = SqliteStore::open(&path).await?;
    store.prepare().await?;
    let mut conn = durable_connection(&path)?;
    let (mut waymark, mut baseline) = (Samples::new(), Samples::new());
    let expected = scale.backfill_streams as u64;
    for run in 0..scale.backfill_runs {
        let id = run as i64 + 1;
        let (runner, processed) = sqlite_runner(&store, id, scale.backfill_batch).await?;
        let mut hand = || -> Result<(), BoxError> {
            let done = baseline.time_sync(|| {
                sqlite_hand_loop(&mut conn, &format!("run{run}"), scale.backfill_batch)
            })?;
            check(done, expected)
        };
        if run % 2 == 0 {
            hand()?;
            check(timed(&mut waymark, &runner, &processed).await?, expected)?;
        } else {
            check(timed(&mut waymark, &runner, &processed).await?, expected)?;
            hand()?;
        }
    }
    let check_conn = Connection::open(&path)?;
    let last = scale.backfill_streams as i64;
    if hr::sqlite::zones_of(&check_conn, last)?
        != Some(hr::zone_percentages(&hr::stream_points(
            last as u64,
            scale.backfill_points,
        )))
    {
        return Err("the backfill's result is wrong".into());
    }
    store.close().await?;

    let memory = memory_note(scale, "sqlite")?;
    let figure = figure(
        scale,
        "sqlite",
        &mut waymark,
        &mut baseline,
        "CPU (zones) and one WAL fsync per batch",
        memory,
    );
    println!("{}", figure.line());
    figures.push(figure);
    Ok(())
}

/// Benchmark 3 on PostgreSQL: timing only.
pub async fn postgres(scale: &Scale, figures: &mut Vec<Figure>) -> Result<(), BoxError> {
    let db = waymark_tests::pg::fresh_database().await;
    let mut client = db.admin().await;
    hr::postgres::seed(&client, scale.backfill_streams, scale.backfill_points).await?;
    client.batch_execute(PROGRESS_SQL).await?;
    let store = db.store().await;
    store.prepare().await?;
    let (mut waymark, mut baseline) = (Samples::new(), Samples::new());
    let expected = scale.backfill_streams as u64;
    for run in 0..scale.backfill_runs {
        let id = run as i64 + 1;
        let (runner, processed) = pg_runner(&store, id, scale.backfill_batch).await?;
        if run % 2 == 0 {
            check(
                baseline
                    .time(pg_hand_loop(
                        &mut client,
                        &format!("run{run}"),
                        scale.backfill_batch,
                    ))
                    .await?,
                expected,
            )?;
            check(timed(&mut waymark, &runner, &processed).await?, expected)?;
        } else {
            check(timed(&mut waymark, &runner, &processed).await?, expected)?;
            check(
                baseline
                    .time(pg_hand_loop(
                        &mut client,
                        &format!("run{run}"),
                        scale.backfill_batch,
                    ))
                    .await?,
                expected,
            )?;
        }
    }
    let figure = figure(
        scale,
        "postgres",
        &mut waymark,
        &mut baseline,
        "server-side UPDATE of each batch; round trips",
        String::new(),
    );
    println!("{}", figure.line());
    figures.push(figure);
    Ok(())
}

/// The hand-written loop on PostgreSQL: BEGIN, the batch, its checkpoint, COMMIT.
pub async fn pg_hand_loop(
    client: &mut tokio_postgres::Client,
    job: &str,
    batch: usize,
) -> Result<u64, BoxError> {
    client
        .execute("INSERT INTO backfill_progress (job) VALUES ($1)", &[&job])
        .await?;
    let mut from: Option<String> = None;
    let mut processed = 0;
    loop {
        let tx = client.transaction().await?;
        let step = hr::postgres::batch(&tx, from.as_deref(), batch).await?;
        processed += step.processed();
        tx.execute(
            "UPDATE backfill_progress SET checkpoint = $2, done = $3 WHERE job = $1",
            &[&job, &step.checkpoint(), &(step.is_done() as i32)],
        )
        .await?;
        tx.commit().await?;
        match step.checkpoint() {
            Some(next) => from = Some(next.to_owned()),
            None => return Ok(processed),
        }
    }
}

/// A runner of the same backfill with a batched atomic handler, registered.
pub async fn pg_runner(
    store: &waymark_postgres::PostgresStore,
    id: i64,
    batch: usize,
) -> Result<(Runner<(), waymark_postgres::PostgresStore>, Counter), BoxError> {
    let def = zones_def(id)?;
    store.register(std::slice::from_ref(&def)).await?;
    let processed = Counter::default();
    let counted = Arc::clone(&processed);
    let runner = Runner::<(), _>::builder(store.clone())
        .batched(def, move |tx, from, _ctx| {
            let counted = Arc::clone(&counted);
            Box::pin(async move {
                let step = hr::postgres::batch(tx, from, batch).await?;
                counted.fetch_add(step.processed(), Ordering::Relaxed);
                Ok::<_, BoxError>(step)
            })
        })
        .build()?;
    Ok((runner, processed))
}

fn check(processed: u64, expected: u64) -> Result<(), BoxError> {
    if processed == expected {
        Ok(())
    } else {
        Err(format!("the backfill processed {processed} streams, expected {expected}").into())
    }
}

fn figure(
    scale: &Scale,
    backend: &'static str,
    waymark: &mut Samples,
    baseline: &mut Samples,
    bound: &'static str,
    memory: String,
) -> Figure {
    let (w, b) = (waymark.stats(), baseline.stats());
    let rate = |s: &Stats| scale.backfill_streams as f64 / s.median.as_secs_f64();
    let mut note = format!(
        "{} runs; {:.0} vs {:.0} streams/s ({:.1}M points/s)",
        w.samples,
        rate(&w),
        rate(&b),
        rate(&w) * scale.backfill_points as f64 / 1e6
    );
    if !memory.is_empty() {
        note.push_str("; ");
        note.push_str(&memory);
    }
    Figure {
        benchmark: "batched backfill",
        backend,
        case: format!(
            "{} streams × {} points, batches of {}",
            scale.backfill_streams, scale.backfill_points, scale.backfill_batch
        ),
        unit: "whole backfill",
        waymark: w,
        baseline: b,
        peer: None,
        target: Target::Ratio(1.05),
        bound,
        note,
    }
}

/// What a child process measured: peak and starting resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// Resident memory when the backfill started, KiB.
    pub before_kib: u64,
    /// Peak resident memory during the backfill, KiB.
    pub peak_kib: u64,
    /// Whether the peak could be reset after seeding.
    pub reset: bool,
}

impl MemoryUse {
    /// The line a child prints.
    pub fn to_line(self) -> String {
        format!(
            "memory before_kib={} peak_kib={} reset={}",
            self.before_kib, self.peak_kib, self.reset
        )
    }

    /// Parses [`to_line`](Self::to_line)'s output.
    pub fn parse(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.starts_with("memory "))?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        Some(Self {
            before_kib: field("before_kib")?.parse().ok()?,
            peak_kib: field("peak_kib")?.parse().ok()?,
            reset: field("reset")?.parse().ok()?,
        })
    }
}

/// Runs in a child process: seeds `streams` streams, resets the peak, runs
/// `variant` (`waymark` or `baseline`) once and reports the memory used.
pub async fn memory_child(
    variant: &str,
    streams: usize,
    points: usize,
    batch: usize,
) -> Result<MemoryUse, BoxError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("memory.db");
    seeded_sqlite(&path, streams, points)?;
    let store = SqliteStore::open(&path).await?;
    store.prepare().await?;
    let mut conn = durable_connection(&path)?;
    let reset = memory::reset_peak();
    let before_kib = memory::current_kib().unwrap_or(0);
    let done = match variant {
        "waymark" => sqlite_waymark(&store, 1, batch).await?,
        "baseline" => sqlite_hand_loop(&mut conn, "memory", batch)?,
        other => return Err(format!("unknown variant {other:?}").into()),
    };
    check(done, streams as u64)?;
    let peak_kib = memory::peak_kib().unwrap_or(0);
    Ok(MemoryUse {
        before_kib,
        peak_kib,
        reset,
    })
}

/// Peak memory of both variants at both sizes, each in a child process.
fn memory_note(scale: &Scale, backend: &str) -> Result<String, BoxError> {
    let exe = std::env::current_exe()?;
    let mut parts = Vec::new();
    for variant in ["waymark", "baseline"] {
        let mut sizes = Vec::new();
        for streams in scale.memory_streams {
            let out = Command::new(&exe)
                .args(["--child", "memory", backend, variant])
                .arg(streams.to_string())
                .arg(scale.backfill_points.to_string())
                .arg(scale.backfill_batch.to_string())
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let used = MemoryUse::parse(&text).ok_or_else(|| {
                format!(
                    "the memory child failed: {}{}",
                    text,
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
            println!(
                "  peak memory, {variant}, {streams} streams: {} KiB (RSS {} KiB before; reset {})",
                used.peak_kib, used.before_kib, used.reset
            );
            sizes.push(format!(
                "{:.1} MiB at {streams}",
                used.peak_kib as f64 / 1024.0
            ));
        }
        parts.push(format!("{variant} peak {}", sizes.join(", ")));
    }
    Ok(parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_lines_round_trip() {
        let used = MemoryUse {
            before_kib: 10,
            peak_kib: 20,
            reset: true,
        };
        assert_eq!(
            MemoryUse::parse(&format!("noise\n{}\n", used.to_line())),
            Some(used)
        );
        assert_eq!(MemoryUse::parse("memory before_kib=x"), None);
    }
}
