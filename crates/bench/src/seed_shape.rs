//! The seed's data shape (issue 18): the batched heart-rate zone backfill
//! over the original application's stream rows, exactly as the demo stores
//! them (`examples/activity_streams`): a table
//! `activities_streams (id, activity_id, stream_type, stream_waypoints TEXT)`
//! whose waypoints are a JSON array of `{"time": t, "hr": v}` objects.
//! Every batch parses its streams' JSON with serde_json, computes the share
//! of samples in each of the demo's five zones and writes the zones back
//! as JSON. waymark runs it as a `batched` migration through the real
//! [`Runner`]; the baseline is a hand-written loop committing each batch
//! with its checkpoint in a progress table; both call the same batch
//! function, so they differ only in the loop around it.
//!
//! The zones go to a side table, `activities_streams_hr_zones (stream_id
//! PRIMARY KEY, hr_zones TEXT)`, as the demo's own zone migration does,
//! rather than to a column of the stream row: SQLite rewrites a whole
//! record (here its 24 KB of overflow pages) to change one column, so a
//! column would make each run rewrite the 2.4 GB table and measure the
//! disk, not the loops; a plain `INSERT` into a primary key also makes a
//! batch applied twice fail, and a reset between runs is one `DELETE`.
//!
//! The table is seeded once per size and grown (25,000 then 100,000
//! streams in full mode): peak memory is measured at both sizes in child
//! processes, the timed runs at the larger one. Between runs only the
//! zones and the progress rows are cleared; each run is a migration with
//! an id of its own, as in the backfill benchmark. After every run the
//! zones are checked: one row per stream, and a spot-checked stream's
//! zones equal to those computed directly from its generated samples.

use std::ops::Range;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use waymark_core::{BatchStep, MigrationDef, MigrationStore};
use waymark_postgres::PostgresStore;
use waymark_runner::Runner;
use waymark_sqlite::SqliteStore;

use crate::backfill::{Counter, MemoryUse};
use crate::hr::{after, step};
use crate::memory;
use crate::pending::durable_connection;
use crate::report::{Figure, Target};
use crate::timing::{Samples, Stats};
use crate::{BoxError, Scale};

/// Heart-rate zone upper bounds (beats per minute) for zones 1 to 4, the
/// demo's; zone 5 is everything above.
pub const ZONE_BOUNDS: [f64; 4] = [120.0, 140.0, 160.0, 175.0];

/// Seconds between two samples of a stream, as in the demo.
const SAMPLE_EVERY_S: i64 = 15;

/// Streams generated and inserted at a time while seeding.
const SEED_CHUNK: usize = 250;

/// The share of samples in each zone, in percent rounded to 0.1 as the
/// demo rounds them: what a batch writes back, as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Zones {
    /// Below 120 bpm.
    pub z1: f64,
    /// 120 to 140 bpm.
    pub z2: f64,
    /// 140 to 160 bpm.
    pub z3: f64,
    /// 160 to 175 bpm.
    pub z4: f64,
    /// 175 bpm and above.
    pub z5: f64,
}

impl Zones {
    /// The zones of a stream's heart-rate samples.
    pub fn of_beats(beats: impl IntoIterator<Item = f64>) -> Self {
        let mut counts = [0_u32; 5];
        for beat in beats {
            let zone = ZONE_BOUNDS
                .iter()
                .position(|bound| beat < *bound)
                .unwrap_or(4);
            counts[zone] += 1;
        }
        let n = f64::from(counts.iter().sum::<u32>().max(1));
        let [z1, z2, z3, z4, z5] = counts.map(|c| (f64::from(c) * 1000.0 / n).round() / 10.0);
        Self { z1, z2, z3, z4, z5 }
    }

    /// The zones computed directly from stream `id`'s generated samples,
    /// without JSON: what a run's result is checked against.
    pub fn expected(id: i64, points: usize) -> Self {
        Self::of_beats(beats(id, points).map(|b| b as f64))
    }
}

/// One point of a stream as the batch reads it: only `hr` is needed, and
/// serde skips `time`. A typed struct rather than the demo's
/// `HashMap<String, Value>` per point: the batch is the same on both sides,
/// and a faster one leaves waymark's own costs less room to hide.
#[derive(Deserialize)]
struct Waypoint {
    hr: f64,
}

/// Parses a stream's `stream_waypoints` and computes its zones.
pub fn zones_of_waypoints(text: &str) -> Result<Zones, BoxError> {
    let points: Vec<Waypoint> = serde_json::from_str(text)?;
    Ok(Zones::of_beats(points.iter().map(|p| p.hr)))
}

/// The heart-rate samples of stream `id`, the same for the same `id`:
/// effort waves, a slow drift and noise, as the demo's seed draws them.
pub fn beats(id: i64, points: usize) -> impl Iterator<Item = i64> {
    // xorshift64*: deterministic and dependency-free.
    let mut state = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut below = move |n: u64| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    };
    let fitness = 100.0 + below(25) as f64;
    (0..points as i64).map(move |i| {
        let effort = (i as f64 / 40.0).sin().abs();
        let drift = (i * SAMPLE_EVERY_S) as f64 / 1_800.0;
        let beat = fitness + 60.0 * effort + drift + below(9) as f64 - 4.0;
        (beat.round() as i64).clamp(60, 210)
    })
}

/// Stream `id`'s `stream_waypoints`: `[{"time":0,"hr":132},…]`, compact, as
/// serde_json writes it. Written by hand because seeding 2.4 GB of it
/// through `json!` values would take longer than the benchmark.
pub fn waypoints_json(id: i64, points: usize) -> String {
    let mut out = String::with_capacity(points * 24 + 2);
    out.push('[');
    for (i, beat) in beats(id, points).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"time\":");
        push_int(&mut out, i as u64 * SAMPLE_EVERY_S as u64);
        out.push_str(",\"hr\":");
        push_int(&mut out, beat as u64);
        out.push('}');
    }
    out.push(']');
    out
}

fn push_int(out: &mut String, mut value: u64) {
    let mut digits = [0_u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        out.push(char::from(digit));
    }
}

/// The code of heart-rate streams in `stream_type`.
fn heart_rate_code() -> i32 {
    waymark_core::stream::StreamType::HeartRate.code()
}

/// Stream ids `existing + 1 ..= total`, in seeding chunks.
fn chunks(existing: usize, total: usize) -> impl Iterator<Item = Range<i64>> {
    (existing..total)
        .step_by(SEED_CHUNK)
        .map(move |start| start as i64 + 1..(start + SEED_CHUNK).min(total) as i64 + 1)
}

/// The streams of one seeding chunk: ids and their waypoints.
fn generate(ids: Range<i64>, points: usize) -> (Vec<i64>, Vec<String>) {
    ids.map(|id| (id, waypoints_json(id, points))).unzip()
}

/// What every run leaves, checked after each: the counts and the bounds
/// of the zone rows, and one stream's zones.
fn check_zones(
    (count, min, max): (i64, Option<i64>, Option<i64>),
    streams: usize,
    spot: i64,
    stored: Option<String>,
    points: usize,
) -> Result<(), BoxError> {
    // The primary key makes the ids distinct: `streams` of them between 1
    // and `streams` are every stream, once.
    if count != streams as i64 || min != Some(1) || max != Some(streams as i64) {
        return Err(format!(
            "the seed-shape backfill left {count} zone rows (ids {min:?} to {max:?}) for {streams} streams"
        )
        .into());
    }
    let stored = stored.ok_or_else(|| format!("stream {spot} has no zones"))?;
    let zones: Zones = serde_json::from_str(&stored)?;
    let expected = Zones::expected(spot, points);
    if zones != expected {
        return Err(format!("stream {spot}: zones {stored}, expected {expected:?}").into());
    }
    Ok(())
}

/// The backfill's definition as migration `id`, the same for every backend.
fn zones_def(id: i64) -> Result<MigrationDef, waymark_core::Error> {
    MigrationDef::new(
        id,
        format!("seed_hr_zones_{id}"),
        "Heart-rate zone percentages of every stream, from its JSON waypoints",
    )
}

/// SQLite: the demo's tables, their seed, the batch and the checks.
pub mod sqlite {
    use super::*;

    /// The demo's streams table, the zones' side table and the baseline's
    /// progress table.
    pub const SCHEMA: &str = "
        CREATE TABLE IF NOT EXISTS activities_streams (
            id               INTEGER PRIMARY KEY,
            activity_id      INTEGER NOT NULL,
            stream_type      INTEGER NOT NULL,
            stream_waypoints TEXT    NOT NULL,
            UNIQUE (activity_id, stream_type)
        );
        CREATE TABLE IF NOT EXISTS activities_streams_hr_zones (
            stream_id INTEGER PRIMARY KEY,
            hr_zones  TEXT    NOT NULL
        );
        CREATE TABLE IF NOT EXISTS seed_progress (
            job TEXT PRIMARY KEY, checkpoint TEXT, done INTEGER NOT NULL DEFAULT 0
        );";

    /// Grows the tables from `existing` to `total` heart-rate streams of
    /// `points` points (one per activity), in one transaction with one
    /// prepared insert; the JSON is generated on a second thread meanwhile.
    /// Returns the bytes of JSON inserted.
    pub fn seed(
        conn: &mut Connection,
        existing: usize,
        total: usize,
        points: usize,
    ) -> Result<u64, BoxError> {
        conn.execute_batch(SCHEMA)?;
        std::thread::scope(|scope| {
            let (send, receive) = std::sync::mpsc::sync_channel(2);
            scope.spawn(move || {
                for ids in chunks(existing, total) {
                    // The receiver is gone only if inserting failed.
                    if send.send(generate(ids, points)).is_err() {
                        break;
                    }
                }
            });
            let tx = conn.transaction()?;
            let mut bytes = 0;
            {
                let mut insert = tx.prepare(
                    "INSERT INTO activities_streams (id, activity_id, stream_type, stream_waypoints) \
                     VALUES (?1, ?1, ?2, ?3)",
                )?;
                for (ids, texts) in receive {
                    for (id, text) in ids.iter().zip(&texts) {
                        bytes += text.len() as u64;
                        insert.execute(params![id, heart_rate_code(), text])?;
                    }
                }
            }
            tx.commit()?;
            Ok(bytes)
        })
    }

    /// Grows the database file at `path` to `total` streams, without a
    /// journal (a failed seed is thrown away whole), then leaves it in WAL
    /// mode for the runs, as waymark's `prepare` leaves a database it creates.
    pub fn seed_file(
        path: &Path,
        existing: usize,
        total: usize,
        points: usize,
    ) -> Result<u64, BoxError> {
        let mut conn = Connection::open(path)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "OFF", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("off") {
            return Err(format!("seeding: the database stayed in {mode} journal mode").into());
        }
        conn.pragma_update(None, "synchronous", "OFF")?;
        let bytes = seed(&mut conn, existing, total, points)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!("the seeded database stayed in {mode} journal mode").into());
        }
        Ok(bytes)
    }

    /// One batch: the zones of up to `batch` streams after `from`, parsed
    /// from their JSON and inserted as JSON, inside the caller's transaction.
    pub fn batch(
        conn: &Connection,
        from: Option<&str>,
        batch: usize,
    ) -> Result<BatchStep, BoxError> {
        let after = after(from)?;
        let mut select = conn.prepare_cached(
            "SELECT id, stream_waypoints FROM activities_streams \
             WHERE stream_type = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let mut rows = select.query(params![heart_rate_code(), after, batch as i64])?;
        // Computed while reading, written after, so that no cursor is open
        // on a table being written; bounded by the batch size.
        let mut zones = Vec::with_capacity(batch);
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let stream = zones_of_waypoints(row.get_ref(1)?.as_str()?)?;
            zones.push((id, serde_json::to_string(&stream)?));
        }
        drop(rows);
        // A plain INSERT: a batch applied twice fails on the primary key.
        let mut insert = conn.prepare_cached(
            "INSERT INTO activities_streams_hr_zones (stream_id, hr_zones) VALUES (?1, ?2)",
        )?;
        for (id, json) in &zones {
            insert.execute(params![id, json])?;
        }
        Ok(step(zones.len(), zones.last().map(|(id, _)| *id), batch))
    }

    /// Clears what a run wrote (the zones and the progress rows) and
    /// checkpoints the WAL, so that every run starts from the same state.
    pub fn reset(conn: &Connection) -> Result<(), BoxError> {
        conn.execute_batch("DELETE FROM activities_streams_hr_zones; DELETE FROM seed_progress;")?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Fails unless every one of the `streams` streams has its zones once
    /// and stream `spot`'s are those computed directly from its samples.
    pub fn check(
        conn: &Connection,
        streams: usize,
        points: usize,
        spot: i64,
    ) -> Result<(), BoxError> {
        let counts = conn.query_row(
            "SELECT count(*), min(stream_id), max(stream_id) FROM activities_streams_hr_zones",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        let stored = conn
            .query_row(
                "SELECT hr_zones FROM activities_streams_hr_zones WHERE stream_id = ?1",
                [spot],
                |row| row.get(0),
            )
            .optional()?;
        check_zones(counts, streams, spot, stored, points)
    }

    /// The hand-written loop: each batch and its checkpoint commit in one
    /// `BEGIN IMMEDIATE` transaction. Returns the streams processed.
    pub fn hand_loop(conn: &mut Connection, job: &str, batch: usize) -> Result<u64, BoxError> {
        conn.execute("INSERT INTO seed_progress (job) VALUES (?1)", [job])?;
        let mut from: Option<String> = None;
        let mut processed = 0;
        loop {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let step = self::batch(&tx, from.as_deref(), batch)?;
            processed += step.processed();
            tx.prepare_cached(
                "UPDATE seed_progress SET checkpoint = ?2, done = ?3 WHERE job = ?1",
            )?
            .execute(params![job, step.checkpoint(), step.is_done()])?;
            tx.commit()?;
            match step.checkpoint() {
                Some(next) => from = Some(next.to_owned()),
                None => return Ok(processed),
            }
        }
    }

    /// A runner of the backfill as migration `id`, registered, with a
    /// batched atomic handler, and the count of streams it will process.
    pub async fn runner(
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
                let step = self::batch(tx, from, batch)?;
                counted.fetch_add(step.processed(), Ordering::Relaxed);
                Ok::<_, BoxError>(step)
            })
            .build()?;
        Ok((runner, processed))
    }
}

/// PostgreSQL: the same tables, seed, batch and checks.
pub mod postgres {
    use tokio_postgres::{Client, GenericClient};

    use super::*;

    /// The tables of [`sqlite::SCHEMA`]. The zones' table is left out of
    /// autovacuum: each run inserts 100,000 rows into it, and a vacuum
    /// starting during the next run would fall on one side only.
    pub const SCHEMA: &str = "
        CREATE TABLE IF NOT EXISTS activities_streams (
            id               BIGINT  PRIMARY KEY,
            activity_id      BIGINT  NOT NULL,
            stream_type      INTEGER NOT NULL,
            stream_waypoints TEXT    NOT NULL,
            UNIQUE (activity_id, stream_type)
        );
        CREATE TABLE IF NOT EXISTS activities_streams_hr_zones (
            stream_id BIGINT PRIMARY KEY,
            hr_zones  TEXT   NOT NULL
        ) WITH (autovacuum_enabled = false);
        CREATE TABLE IF NOT EXISTS seed_progress (
            job TEXT PRIMARY KEY, checkpoint TEXT, done INTEGER NOT NULL DEFAULT 0
        );";

    /// Grows the tables from `existing` to `total` streams, in statements
    /// of `SEED_CHUNK` rows through `UNNEST`, the next chunk generated on
    /// a blocking thread while the server stores the last; then `VACUUM
    /// ANALYZE`, so that no run pays for the hint bits or the visibility
    /// map of fresh rows, nor meets autovacuum on the table. Returns the
    /// bytes of JSON inserted.
    pub async fn seed(
        client: &Client,
        existing: usize,
        total: usize,
        points: usize,
    ) -> Result<u64, BoxError> {
        client.batch_execute(SCHEMA).await?;
        let insert = client
            .prepare(
                "INSERT INTO activities_streams (id, activity_id, stream_type, stream_waypoints) \
                 SELECT u.id, u.id, $1, u.w FROM UNNEST($2::BIGINT[], $3::TEXT[]) AS u(id, w)",
            )
            .await?;
        let generating =
            |ids: Range<i64>| tokio::task::spawn_blocking(move || generate(ids, points));
        let mut chunks = chunks(existing, total);
        let mut next = chunks.next().map(generating);
        let mut bytes = 0;
        while let Some(chunk) = next.take() {
            let (ids, texts) = chunk.await?;
            next = chunks.next().map(generating);
            bytes += texts.iter().map(|t| t.len() as u64).sum::<u64>();
            client
                .execute(&insert, &[&heart_rate_code(), &ids, &texts])
                .await?;
        }
        client
            .batch_execute("VACUUM ANALYZE activities_streams")
            .await?;
        Ok(bytes)
    }

    /// One batch, as [`sqlite::batch`]: one SELECT and one INSERT of the
    /// whole batch through `UNNEST`, inside the caller's transaction, sent
    /// as text on both sides as in the backfill benchmark.
    pub async fn batch<C: GenericClient + Sync>(
        client: &C,
        from: Option<&str>,
        batch: usize,
    ) -> Result<BatchStep, BoxError> {
        let after = after(from)?;
        let rows = client
            .query(
                "SELECT id, stream_waypoints FROM activities_streams \
                 WHERE stream_type = $1 AND id > $2 ORDER BY id LIMIT $3",
                &[&heart_rate_code(), &after, &(batch as i64)],
            )
            .await?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut zones = Vec::with_capacity(rows.len());
        for row in &rows {
            ids.push(row.get::<_, i64>(0));
            zones.push(serde_json::to_string(&zones_of_waypoints(row.get(1))?)?);
        }
        drop(rows);
        // A plain INSERT: a batch applied twice fails on the primary key.
        client
            .execute(
                "INSERT INTO activities_streams_hr_zones (stream_id, hr_zones) \
                 SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[])",
                &[&ids, &zones],
            )
            .await?;
        Ok(step(ids.len(), ids.last().copied(), batch))
    }

    /// Clears what a run wrote: the zones and the progress rows.
    pub async fn reset(client: &Client) -> Result<(), BoxError> {
        client
            .batch_execute("TRUNCATE activities_streams_hr_zones, seed_progress")
            .await?;
        Ok(())
    }

    /// As [`sqlite::check`].
    pub async fn check(
        client: &Client,
        streams: usize,
        points: usize,
        spot: i64,
    ) -> Result<(), BoxError> {
        let row = client
            .query_one(
                "SELECT count(*), min(stream_id), max(stream_id) FROM activities_streams_hr_zones",
                &[],
            )
            .await?;
        let stored = client
            .query_opt(
                "SELECT hr_zones FROM activities_streams_hr_zones WHERE stream_id = $1",
                &[&spot],
            )
            .await?
            .map(|row| row.get(0));
        check_zones(
            (row.get(0), row.get(1), row.get(2)),
            streams,
            spot,
            stored,
            points,
        )
    }

    /// The hand-written loop: BEGIN, the batch, its checkpoint, COMMIT.
    pub async fn hand_loop(client: &mut Client, job: &str, batch: usize) -> Result<u64, BoxError> {
        client
            .execute("INSERT INTO seed_progress (job) VALUES ($1)", &[&job])
            .await?;
        let mut from: Option<String> = None;
        let mut processed = 0;
        loop {
            let tx = client.transaction().await?;
            let step = self::batch(&tx, from.as_deref(), batch).await?;
            processed += step.processed();
            tx.execute(
                "UPDATE seed_progress SET checkpoint = $2, done = $3 WHERE job = $1",
                &[&job, &step.checkpoint(), &i32::from(step.is_done())],
            )
            .await?;
            tx.commit().await?;
            match step.checkpoint() {
                Some(next) => from = Some(next.to_owned()),
                None => return Ok(processed),
            }
        }
    }

    /// A runner of the backfill as migration `id`, registered, with a
    /// batched atomic handler, and the count of streams it will process.
    pub async fn runner(
        store: &PostgresStore,
        id: i64,
        batch: usize,
    ) -> Result<(Runner<(), PostgresStore>, Counter), BoxError> {
        let def = zones_def(id)?;
        store.register(std::slice::from_ref(&def)).await?;
        let processed = Counter::default();
        let counted = Arc::clone(&processed);
        let runner = Runner::<(), _>::builder(store.clone())
            .batched(def, move |tx, from, _ctx| {
                let counted = Arc::clone(&counted);
                Box::pin(async move {
                    let step = self::batch(tx, from, batch).await?;
                    counted.fetch_add(step.processed(), Ordering::Relaxed);
                    Ok::<_, BoxError>(step)
                })
            })
            .build()?;
        Ok((runner, processed))
    }
}

/// Runs `runner` once; its migration must be the one executed.
async fn run_once<St: MigrationStore + Clone>(runner: &Runner<(), St>) -> Result<(), BoxError> {
    let report = runner.run(()).await?.into_report();
    if report.executed().count() != 1 {
        return Err(format!("the seed-shape backfill did not run exactly once: {report}").into());
    }
    Ok(())
}

fn check_processed(processed: u64, expected: usize) -> Result<(), BoxError> {
    if processed == expected as u64 {
        Ok(())
    } else {
        Err(
            format!("the seed-shape backfill processed {processed} streams, expected {expected}")
                .into(),
        )
    }
}

/// The stream spot-checked after run `run`: a different one each time.
fn spot(run: u64, streams: usize) -> i64 {
    (run.wrapping_mul(7_919) % streams.max(1) as u64) as i64 + 1
}

/// The migration ids and job names of one benchmark, never reused.
#[derive(Debug, Default)]
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// The seed-shape benchmark on a SQLite file: peak memory at the smaller size, the
/// table grown, the timed runs, peak memory at the larger size.
pub async fn sqlite(scale: &Scale, figures: &mut Vec<Figure>) -> Result<(), BoxError> {
    let [small, large] = scale.seed_streams;
    let (points, batch) = (scale.seed_points, scale.seed_batch);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("seed.db");
    let target = path.to_string_lossy().into_owned();
    let mut ids = Ids::default();
    let started = Instant::now();
    let mut bytes = sqlite::seed_file(&path, 0, small, points)?;
    let seeded_small = started.elapsed();
    let mut memory = Vec::new();
    {
        let store = SqliteStore::open(&path).await?;
        store.prepare().await?;
        let conn = durable_connection(&path)?;
        memory.push(memory_at(
            small,
            batch,
            &target,
            &mut ids,
            |streams, spot| {
                sqlite::check(&conn, streams, points, spot)?;
                sqlite::reset(&conn)
            },
        )?);
        store.close().await?;
    }
    let started = Instant::now();
    bytes += sqlite::seed_file(&path, small, large, points)?;
    println!(
        "  seeded {small} then {large} streams ({:.2} GB of JSON) in {:.1} s + {:.1} s",
        bytes as f64 / 1e9,
        seeded_small.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let store = SqliteStore::open(&path).await?;
    store.prepare().await?;
    let mut conn = durable_connection(&path)?;
    let (mut waymark, mut baseline) = (Samples::new(), Samples::new());
    for run in 0..scale.seed_runs.0 {
        for side in order(run) {
            let n = ids.next();
            sqlite::reset(&conn)?;
            let done = if side == Side::Waymark {
                let (runner, processed) = sqlite::runner(&store, n as i64, batch).await?;
                waymark.time(run_once(&runner)).await?;
                processed.load(Ordering::Relaxed)
            } else {
                baseline.time_sync(|| sqlite::hand_loop(&mut conn, &format!("run{n}"), batch))?
            };
            check_processed(done, large)?;
            sqlite::check(&conn, large, points, spot(n, large))?;
        }
    }
    sqlite::reset(&conn)?;
    memory.push(memory_at(
        large,
        batch,
        &target,
        &mut ids,
        |streams, spot| {
            sqlite::check(&conn, streams, points, spot)?;
            sqlite::reset(&conn)
        },
    )?);
    drop(conn);
    store.close().await?;
    // The 2.4 GB file goes with its directory.
    dir.close()?;
    let figure = figure(
        scale,
        "sqlite",
        &mut waymark,
        &mut baseline,
        bytes,
        "CPU: serde_json over ~24 KB of JSON per stream; one WAL fsync per batch",
        &memory,
    );
    println!("{}", figure.line());
    figures.push(figure);
    Ok(())
}

/// The seed-shape benchmark on PostgreSQL, in a database of its own, dropped at the end.
pub async fn postgres(scale: &Scale, figures: &mut Vec<Figure>) -> Result<(), BoxError> {
    let [small, large] = scale.seed_streams;
    let (points, batch) = (scale.seed_points, scale.seed_batch);
    let db = waymark_tests::pg::fresh_database().await;
    let mut client = db.admin().await;
    let mut ids = Ids::default();
    let started = Instant::now();
    let mut bytes = postgres::seed(&client, 0, small, points).await?;
    let seeded_small = started.elapsed();
    let store = db.store().await;
    store.prepare().await?;
    let mut memory = Vec::new();
    memory.push(memory_at_pg(small, points, batch, db.url(), &mut ids, &client).await?);
    let started = Instant::now();
    bytes += postgres::seed(&client, small, large, points).await?;
    println!(
        "  seeded {small} then {large} streams ({:.2} GB of JSON) in {:.1} s + {:.1} s",
        bytes as f64 / 1e9,
        seeded_small.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let (mut waymark, mut baseline) = (Samples::new(), Samples::new());
    for run in 0..scale.seed_runs.1 {
        for side in order(run) {
            let n = ids.next();
            postgres::reset(&client).await?;
            let done = if side == Side::Waymark {
                let (runner, processed) = postgres::runner(&store, n as i64, batch).await?;
                waymark.time(run_once(&runner)).await?;
                processed.load(Ordering::Relaxed)
            } else {
                baseline
                    .time(postgres::hand_loop(&mut client, &format!("run{n}"), batch))
                    .await?
            };
            check_processed(done, large)?;
            postgres::check(&client, large, points, spot(n, large)).await?;
        }
    }
    postgres::reset(&client).await?;
    memory.push(memory_at_pg(large, points, batch, db.url(), &mut ids, &client).await?);
    drop((store, client));
    // The throwaway cluster keeps its databases until it is deleted; this
    // one holds gigabytes.
    waymark_tests::pg::connect_url(&waymark_tests::pg::server_url())
        .await
        .batch_execute(&format!("DROP DATABASE \"{}\" WITH (FORCE)", db.name()))
        .await?;
    let figure = figure(
        scale,
        "postgres",
        &mut waymark,
        &mut baseline,
        bytes,
        "CPU: detoasting and sending ~24 KB per stream, serde_json",
        &memory,
    );
    println!("{}", figure.line());
    figures.push(figure);
    Ok(())
}

/// Which side of a comparison runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Waymark,
    Baseline,
}

/// The order of the two sides in round `run`: alternating, so that neither
/// always runs on the cache the other left.
fn order(run: usize) -> [Side; 2] {
    if run.is_multiple_of(2) {
        [Side::Baseline, Side::Waymark]
    } else {
        [Side::Waymark, Side::Baseline]
    }
}

/// Peak memory at one size: both variants, each in a child process, with
/// the result checked and cleared by `check_and_reset` after each.
fn memory_at(
    streams: usize,
    batch: usize,
    target: &str,
    ids: &mut Ids,
    check_and_reset: impl Fn(usize, i64) -> Result<(), BoxError>,
) -> Result<(usize, [MemoryUse; 2]), BoxError> {
    let mut used = Vec::new();
    for variant in ["waymark", "baseline"] {
        let n = ids.next();
        used.push(memory_child_process(
            "sqlite", variant, target, streams, batch, n,
        )?);
        check_and_reset(streams, spot(n, streams))?;
    }
    Ok((streams, [used[0], used[1]]))
}

/// [`memory_at`] on PostgreSQL, whose checks are async.
async fn memory_at_pg(
    streams: usize,
    points: usize,
    batch: usize,
    url: &str,
    ids: &mut Ids,
    client: &tokio_postgres::Client,
) -> Result<(usize, [MemoryUse; 2]), BoxError> {
    let mut used = Vec::new();
    for variant in ["waymark", "baseline"] {
        let n = ids.next();
        let measured = memory_child_process("postgres", variant, url, streams, batch, n)?;
        postgres::check(client, streams, points, spot(n, streams)).await?;
        postgres::reset(client).await?;
        used.push(measured);
    }
    Ok((streams, [used[0], used[1]]))
}

/// Runs one backfill in a child process (`--child seed …`) and returns the
/// memory it reported.
fn memory_child_process(
    backend: &str,
    variant: &str,
    target: &str,
    streams: usize,
    batch: usize,
    id: u64,
) -> Result<MemoryUse, BoxError> {
    // This process's own image, even if a build has replaced the file
    // since it started (the shared target directory): `current_exe` would
    // then name a deleted file.
    let exe = Path::new("/proc/self/exe");
    let exe = if exe.exists() {
        exe.to_path_buf()
    } else {
        std::env::current_exe()?
    };
    let out = Command::new(exe)
        .args(["--child", "seed", backend, variant, target])
        .args([streams.to_string(), batch.to_string(), id.to_string()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let used = MemoryUse::parse(&text).ok_or_else(|| {
        format!(
            "the seed-shape memory child failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    println!(
        "  peak memory, {backend}, {variant}, {streams} streams: {} KiB (RSS {} KiB before; reset {})",
        used.peak_kib, used.before_kib, used.reset
    );
    Ok(used)
}

/// In a child process, `<backend> <variant> <path or url> <streams> <batch>
/// <id>`: one backfill over the seeded, reset table, as migration (or job)
/// `id`, after resetting the peak; reports the memory used.
pub async fn memory_child(args: &[String]) -> Result<MemoryUse, BoxError> {
    let [backend, variant, target, streams, batch, id] = args else {
        return Err(format!("seed child: unexpected arguments {args:?}").into());
    };
    let (streams, batch, id): (usize, usize, i64) = (streams.parse()?, batch.parse()?, id.parse()?);
    let job = format!("memory{id}");
    let (done, before_kib, reset) = match (backend.as_str(), variant.as_str()) {
        ("sqlite", "waymark") => {
            let store = SqliteStore::open(target).await?;
            store.prepare().await?;
            let (runner, processed) = sqlite::runner(&store, id, batch).await?;
            let (reset, before) = (memory::reset_peak(), memory::current_kib());
            run_once(&runner).await?;
            store.close().await?;
            (processed.load(Ordering::Relaxed), before, reset)
        }
        ("sqlite", "baseline") => {
            let mut conn = durable_connection(Path::new(target))?;
            let (reset, before) = (memory::reset_peak(), memory::current_kib());
            (sqlite::hand_loop(&mut conn, &job, batch)?, before, reset)
        }
        ("postgres", "waymark") => {
            let store = PostgresStore::connect(target).await?;
            store.prepare().await?;
            let (runner, processed) = postgres::runner(&store, id, batch).await?;
            let (reset, before) = (memory::reset_peak(), memory::current_kib());
            run_once(&runner).await?;
            (processed.load(Ordering::Relaxed), before, reset)
        }
        ("postgres", "baseline") => {
            let mut client = waymark_tests::pg::connect_url(target).await;
            let (reset, before) = (memory::reset_peak(), memory::current_kib());
            (
                postgres::hand_loop(&mut client, &job, batch).await?,
                before,
                reset,
            )
        }
        _ => return Err(format!("seed child: unknown backend or variant {args:?}").into()),
    };
    check_processed(done, streams)?;
    Ok(MemoryUse {
        before_kib: before_kib.unwrap_or(0),
        peak_kib: memory::peak_kib().unwrap_or(0),
        reset,
    })
}

fn figure(
    scale: &Scale,
    backend: &'static str,
    waymark: &mut Samples,
    baseline: &mut Samples,
    bytes: u64,
    bound: &'static str,
    memory: &[(usize, [MemoryUse; 2])],
) -> Figure {
    let (w, b) = (waymark.stats(), baseline.stats());
    let streams = scale.seed_streams[1];
    let rate = |s: &Stats| streams as f64 / s.median.as_secs_f64();
    let mut note = format!(
        "{} runs each; {:.0} vs {:.0} streams/s ({:.0} MB/s of JSON)",
        w.samples,
        rate(&w),
        rate(&b),
        bytes as f64 / 1e6 / w.median.as_secs_f64()
    );
    for (i, variant) in ["waymark", "baseline"].into_iter().enumerate() {
        let sizes: Vec<String> = memory
            .iter()
            .map(|(streams, used)| {
                format!("{:.1} MiB at {streams}", used[i].peak_kib as f64 / 1024.0)
            })
            .collect();
        note.push_str(&format!("; {variant} peak {}", sizes.join(", ")));
    }
    Figure {
        benchmark: "seed's data shape",
        backend,
        case: format!(
            "{streams} streams × {} JSON points, batches of {}",
            scale.seed_points, scale.seed_batch
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_follow_the_demo_bounds_and_rounding() {
        let zones = Zones::of_beats([
            100.0, 119.0, 120.0, 150.0, 160.0, 174.0, 175.0, 200.0, 139.0,
        ]);
        assert_eq!(
            zones,
            Zones {
                z1: 22.2,
                z2: 22.2,
                z3: 11.1,
                z4: 22.2,
                z5: 22.2
            }
        );
        assert_eq!(Zones::of_beats([]).z1, 0.0);
    }

    #[test]
    fn waypoints_are_the_demo_json_and_parse_back() {
        let text = waypoints_json(3, 2);
        let beats: Vec<i64> = beats(3, 2).collect();
        assert_eq!(
            text,
            format!(
                "[{{\"time\":0,\"hr\":{}}},{{\"time\":15,\"hr\":{}}}]",
                beats[0], beats[1]
            )
        );
        let parsed: Vec<serde_json::Value> =
            serde_json::from_str(&waypoints_json(9, 1_000)).unwrap();
        assert_eq!(parsed.len(), 1_000);
        assert_eq!(parsed[999]["time"], 14_985);
        assert_eq!(
            zones_of_waypoints(&waypoints_json(9, 1_000)).unwrap(),
            Zones::expected(9, 1_000)
        );
        // The streams reach every zone, so the checks compare five numbers.
        let reached = (1..=20)
            .map(|id| Zones::expected(id, 1_000))
            .fold([0.0; 5], |acc, z| {
                let shares = [z.z1, z.z2, z.z3, z.z4, z.z5];
                std::array::from_fn(|i| f64::max(acc[i], shares[i]))
            });
        assert!(reached.iter().all(|z| *z > 5.0), "{reached:?}");
        assert!(zones_of_waypoints("[{\"time\":0}]").is_err());
    }

    #[test]
    fn a_sqlite_backfill_in_batches_gives_every_stream_its_zones_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        let bytes = sqlite::seed(&mut conn, 0, 700, 50).unwrap();
        sqlite::seed(&mut conn, 700, 1_200, 50).unwrap();
        assert!(bytes > 700 * 50 * 20);
        let mut from: Option<String> = None;
        let mut batches = Vec::new();
        loop {
            let step = sqlite::batch(&conn, from.as_deref(), 500).unwrap();
            batches.push(step.processed());
            match step.checkpoint() {
                Some(next) => from = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(batches, [500, 500, 200]);
        sqlite::check(&conn, 1_200, 50, 1_200).unwrap();
        sqlite::check(&conn, 1_200, 50, 617).unwrap();
        // A batch applied twice fails rather than writing zones twice.
        assert!(sqlite::batch(&conn, None, 500).is_err());
        // The checks see a wrong value and a missing stream.
        conn.execute("UPDATE activities_streams_hr_zones SET hr_zones = '{\"z1\":100,\"z2\":0,\"z3\":0,\"z4\":0,\"z5\":0}' WHERE stream_id = 5", []).unwrap();
        assert!(sqlite::check(&conn, 1_200, 50, 5).is_err());
        conn.execute(
            "DELETE FROM activities_streams_hr_zones WHERE stream_id = 6",
            [],
        )
        .unwrap();
        assert!(sqlite::check(&conn, 1_200, 50, 7).is_err());
        conn.execute_batch("DELETE FROM activities_streams_hr_zones")
            .unwrap();
        let mut conn = conn;
        assert_eq!(sqlite::hand_loop(&mut conn, "again", 500).unwrap(), 1_200);
        sqlite::check(&conn, 1_200, 50, 1).unwrap();
    }

    #[test]
    fn spots_stay_within_the_streams() {
        assert!((0..100).all(|run| (1..=1_000).contains(&spot(run, 1_000))));
        assert_ne!(spot(1, 1_000), spot(2, 1_000));
    }
}
