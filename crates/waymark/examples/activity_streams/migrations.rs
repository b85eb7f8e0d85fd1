//! The demo's data migrations, modelled on the original application's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use waymark::sqlite::SqliteStore;
use waymark::sqlite::rusqlite::{Connection, OptionalExtension, Transaction, params};
use waymark::stream::StreamType;
use waymark::{BatchStep, BoxError, Error, Handler, MigrationContext, MigrationDef};

/// The application's state, handed to every handler.
#[derive(Debug)]
pub struct App {
    /// The database file (the app's tables and waymark's share it).
    pub path: PathBuf,
    /// Activities per batch in the batched migrations.
    pub batch_size: u32,
    /// A pause after each batch, to leave time for Ctrl-C in the demo.
    pub batch_delay: Duration,
}

/// Heart-rate zone upper bounds (beats per minute) for zones 1 to 4; zone 5 is above.
const ZONE_BOUNDS: [f64; 4] = [120.0, 140.0, 160.0, 175.0];

/// A migration of the demo: its definition and its handler on SQLite.
pub type DemoMigration = (MigrationDef, Handler<App, SqliteStore>);

/// The three migrations, in the order of their ids.
pub fn all() -> Result<Vec<DemoMigration>, Error> {
    Ok(vec![
        (
            MigrationDef::new(
                1,
                "recompute_activity_averages",
                "Recompute average and maximum heart rate and average speed of every activity from its streams",
            )?,
            // Blocking and atomic: every activity's averages and the bookkeeping commit together.
            Handler::<App, SqliteStore>::atomic(recompute_averages),
        ),
        (
            MigrationDef::new(
                2,
                "hr_zone_percentages",
                "Compute the share of time spent in each heart-rate zone, in batches with checkpoints",
            )?,
            // Batched and atomic: each batch commits with its checkpoint.
            Handler::<App, SqliteStore>::batched(hr_zone_batch),
        ),
        (
            MigrationDef::new(
                3,
                "derive_pace_streams",
                "Derive PACE streams (seconds per kilometre) from SPEED streams",
            )?,
            // Async resumable batches, on any store: not atomic, so idempotent.
            Handler::resumable(derive_pace_batch),
        ),
    ])
}

fn recompute_averages(tx: &Transaction<'_>, ctx: &MigrationContext<App>) -> Result<(), BoxError> {
    let total: u64 = tx.query_row("SELECT count(*) FROM activities", [], |r| r.get(0))?;
    let mut read = tx.prepare(
        "SELECT a.id, hr.stream_waypoints, sp.stream_waypoints
         FROM activities a
         LEFT JOIN activities_streams hr ON hr.activity_id = a.id AND hr.stream_type = ?1
         LEFT JOIN activities_streams sp ON sp.activity_id = a.id AND sp.stream_type = ?2
         ORDER BY a.id",
    )?;
    let mut write =
        tx.prepare("UPDATE activities SET avg_hr = ?2, max_hr = ?3, avg_speed = ?4 WHERE id = ?1")?;
    let mut rows = read.query(params![
        StreamType::HeartRate.code(),
        StreamType::Speed.code()
    ])?;
    let mut done = 0_u64;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let heart = samples(row.get::<_, Option<String>>(1)?.as_deref(), "hr")?;
        let speed = samples(row.get::<_, Option<String>>(2)?.as_deref(), "speed")?;
        let max_hr = heart.iter().copied().fold(None, |max: Option<f64>, v| {
            Some(max.map_or(v, |m| m.max(v)))
        });
        write.execute(params![
            id,
            mean(&heart),
            max_hr.map(|v| v as i64),
            mean(&speed)
        ])?;
        done += 1;
        if done.is_multiple_of(250) || done == total {
            ctx.report_progress(done, Some(total));
        }
    }
    Ok(())
}

fn hr_zone_batch(
    tx: &Transaction<'_>,
    from: Option<&str>,
    ctx: &MigrationContext<App>,
) -> Result<BatchStep, BoxError> {
    let app = ctx.state();
    let after: i64 = from.map(str::parse).transpose()?.unwrap_or(0);
    let total: u64 = tx.query_row("SELECT count(*) FROM activities", [], |r| r.get(0))?;
    let mut read = tx.prepare(
        "SELECT a.id, s.stream_waypoints FROM activities a
         LEFT JOIN activities_streams s ON s.activity_id = a.id AND s.stream_type = ?1
         WHERE a.id > ?2 ORDER BY a.id LIMIT ?3",
    )?;
    // A plain INSERT, not an upsert: a batch applied twice would fail on the primary key.
    let mut write = tx.prepare(
        "INSERT INTO activity_hr_zones (activity_id, z1, z2, z3, z4, z5) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut rows = read.query(params![StreamType::HeartRate.code(), after, app.batch_size])?;
    let (mut last, mut count) = (after, 0_u64);
    while let Some(row) = rows.next()? {
        last = row.get(0)?;
        let heart = samples(row.get::<_, Option<String>>(1)?.as_deref(), "hr")?;
        let zones = zone_shares(&heart);
        write.execute(params![
            last, zones[0], zones[1], zones[2], zones[3], zones[4]
        ])?;
        count += 1;
    }
    if !app.batch_delay.is_zero() {
        std::thread::sleep(app.batch_delay);
    }
    Ok(if count < u64::from(app.batch_size) {
        BatchStep::done(count)
    } else {
        BatchStep::next(last.to_string(), count).with_total(total)
    })
}

async fn derive_pace_batch(app: Arc<App>, from: Option<String>) -> Result<BatchStep, BoxError> {
    // rusqlite is blocking: keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        let mut conn = Connection::open(&app.path)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        let after: i64 = from.as_deref().map(str::parse).transpose()?.unwrap_or(0);
        // One transaction per batch: one commit (one fsync), not one per row.
        let tx = conn.transaction()?;
        let total: u64 = tx.query_row(
            "SELECT count(*) FROM activities_streams WHERE stream_type = ?1",
            [StreamType::Speed.code()],
            |r| r.get(0),
        )?;
        let mut read = tx.prepare(
            "SELECT activity_id, stream_waypoints FROM activities_streams
             WHERE stream_type = ?1 AND activity_id > ?2 ORDER BY activity_id LIMIT ?3",
        )?;
        let batch: Vec<(i64, String)> = read
            .query_map(params![StreamType::Speed.code(), after, app.batch_size], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        // Idempotent: the unique (activity_id, stream_type) key ignores a
        // stream derived before a crash, since the checkpoint is saved after the batch.
        let mut write = tx.prepare(
            "INSERT OR IGNORE INTO activities_streams (activity_id, stream_type, stream_waypoints) VALUES (?1, ?2, ?3)",
        )?;
        for (activity, waypoints) in &batch {
            write.execute(params![activity, StreamType::Pace.code(), pace_stream(waypoints)?])?;
        }
        drop((read, write));
        tx.commit()?;
        let count = batch.len() as u64;
        Ok(match batch.last() {
            Some((last, _)) if count == u64::from(app.batch_size) => {
                BatchStep::next(last.to_string(), count).with_total(total)
            }
            _ => BatchStep::done(count),
        })
    })
    .await?
}

/// The numbers under `key` in a stream's JSON points.
fn samples(waypoints: Option<&str>, key: &str) -> Result<Vec<f64>, BoxError> {
    let Some(text) = waypoints else {
        return Ok(Vec::new());
    };
    let points: Vec<HashMap<String, Value>> = serde_json::from_str(text)?;
    Ok(points
        .iter()
        .filter_map(|p| p.get(key).and_then(Value::as_f64))
        .collect())
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Percent of samples in each of the five zones.
fn zone_shares(heart: &[f64]) -> [f64; 5] {
    let mut counts = [0_u32; 5];
    for beat in heart {
        let zone = ZONE_BOUNDS
            .iter()
            .position(|bound| beat < bound)
            .unwrap_or(4);
        counts[zone] += 1;
    }
    let n = heart.len().max(1) as f64;
    counts.map(|c| (f64::from(c) * 1000.0 / n).round() / 10.0)
}

/// A PACE stream (seconds per kilometre) from a SPEED stream (metres per second).
fn pace_stream(speed_waypoints: &str) -> Result<String, BoxError> {
    let points: Vec<HashMap<String, Value>> = serde_json::from_str(speed_waypoints)?;
    let pace: Vec<Value> = points
        .iter()
        .filter_map(|p| {
            let time = p.get("time")?.as_i64()?;
            let speed = p.get("speed")?.as_f64().filter(|v| *v > 0.0)?;
            Some(serde_json::json!({"time": time, "pace": (1000.0 / speed).round()}))
        })
        .collect();
    Ok(serde_json::to_string(&pace)?)
}

/// Checks the migrations' effects: every activity has averages and exactly
/// one zone row, every speed stream a pace stream. Returns one line per check.
pub fn verify(conn: &Connection) -> rusqlite::Result<Vec<(String, bool)>> {
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
    let activities = count("SELECT count(*) FROM activities")?;
    let with_averages = count("SELECT count(*) FROM activities WHERE avg_hr IS NOT NULL")?;
    let zones = count("SELECT count(*) FROM activity_hr_zones")?;
    let speed = count(&format!(
        "SELECT count(*) FROM activities_streams WHERE stream_type = {}",
        StreamType::Speed.code()
    ))?;
    let pace = count(&format!(
        "SELECT count(*) FROM activities_streams WHERE stream_type = {}",
        StreamType::Pace.code()
    ))?;
    let executed = conn
        .query_row("SELECT count(*) FROM migrations WHERE executed", [], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .unwrap_or(0);
    Ok(vec![
        (
            format!("{with_averages} of {activities} activities have averages"),
            executed < 1 || with_averages == activities,
        ),
        (
            format!("{zones} heart-rate zone rows for {activities} activities"),
            executed < 2 || zones == activities,
        ),
        (
            format!("{pace} pace streams for {speed} speed streams"),
            executed < 3 || pace == speed,
        ),
    ])
}
