//! The backfill's data: heart-rate streams (one byte per point, beats per
//! minute) and the zone percentages computed from them, on SQLite and on
//! PostgreSQL. waymark's handler and the hand-written loop call the same
//! batch functions here, so the two differ only in the loop around them.

use rusqlite::{Connection, OptionalExtension, params};
use waymark_core::BatchStep;
use waymark_core::stream::StreamType;

use crate::BoxError;

/// The athlete's maximum heart rate the zones are relative to.
pub const MAX_HR: u8 = 190;

/// Upper bounds of zones 1 to 4 (60, 70, 80 and 90 % of [`MAX_HR`]); zone 5
/// is everything above.
const ZONE_TOPS: [u8; 4] = [114, 133, 152, 171];

/// The share of `points` in each of the five zones, in percent.
pub fn zone_percentages(points: &[u8]) -> [f64; 5] {
    let mut counts = [0u32; 5];
    for &bpm in points {
        let zone = ZONE_TOPS.iter().take_while(|&&top| bpm >= top).count();
        counts[zone] += 1;
    }
    let total = points.len().max(1) as f64;
    counts.map(|count| f64::from(count) * 100.0 / total)
}

/// A stream of `len` plausible heart-rate points, the same for the same `seed`.
pub fn stream_points(seed: u64, len: usize) -> Vec<u8> {
    // xorshift64*: deterministic and dependency-free; quality is irrelevant.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bpm: i32 = 100 + (seed % 60) as i32;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let step = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 61) as i32 - 3;
            bpm = (bpm + step).clamp(80, 200);
            bpm as u8
        })
        .collect()
}

/// The code of heart-rate streams in the `stream_type` column.
pub fn heart_rate_code() -> i64 {
    i64::from(StreamType::HeartRate.code())
}

/// Parses a batch checkpoint (the last stream id done); `None` is 0.
pub(crate) fn after(from: Option<&str>) -> Result<i64, BoxError> {
    Ok(from.map(str::parse).transpose()?.unwrap_or(0))
}

/// What a batch returns once it has processed `count` streams up to `last`.
pub(crate) fn step(count: usize, last: Option<i64>, batch: usize) -> BatchStep {
    match last {
        Some(last) if count == batch => BatchStep::next(last.to_string(), count as u64),
        _ => BatchStep::done(count as u64),
    }
}

/// SQLite: the streams table and its seed.
pub mod sqlite {
    use super::*;

    /// Creates `activity_streams` with `streams` heart-rate streams of
    /// `points` points, in one transaction.
    pub fn seed(conn: &mut Connection, streams: usize, points: usize) -> Result<(), BoxError> {
        conn.execute_batch(
            "CREATE TABLE activity_streams (\
               id INTEGER PRIMARY KEY, activity_id INTEGER NOT NULL, stream_type INTEGER NOT NULL, \
               data BLOB NOT NULL, zone1 REAL, zone2 REAL, zone3 REAL, zone4 REAL, zone5 REAL)",
        )?;
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO activity_streams (id, activity_id, stream_type, data) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for id in 1..=streams as i64 {
                insert.execute(params![
                    id,
                    id / 4,
                    heart_rate_code(),
                    stream_points(id as u64, points)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// One batch: the zones of up to `batch` streams after `from`, written
    /// back, inside the caller's transaction.
    pub fn batch(
        conn: &Connection,
        from: Option<&str>,
        batch: usize,
    ) -> Result<BatchStep, BoxError> {
        let after = after(from)?;
        let mut select = conn.prepare_cached(
            "SELECT id, data FROM activity_streams WHERE stream_type = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let mut rows = select.query(params![heart_rate_code(), after, batch as i64])?;
        // Computed while reading; written after, so no cursor is open on
        // the table being updated. Bounded by the batch size.
        let mut zones = Vec::with_capacity(batch);
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            zones.push((id, zone_percentages(row.get_ref(1)?.as_blob()?)));
        }
        drop(rows);
        let mut update = conn.prepare_cached(
            "UPDATE activity_streams SET zone1 = ?2, zone2 = ?3, zone3 = ?4, zone4 = ?5, zone5 = ?6 WHERE id = ?1",
        )?;
        for (id, z) in &zones {
            update.execute(params![id, z[0], z[1], z[2], z[3], z[4]])?;
        }
        Ok(step(zones.len(), zones.last().map(|(id, _)| *id), batch))
    }

    /// The zones stored for stream `id`, to check a backfill's result.
    pub fn zones_of(conn: &Connection, id: i64) -> Result<Option<[f64; 5]>, BoxError> {
        let zones = conn
            .query_row(
                "SELECT zone1, zone2, zone3, zone4, zone5 FROM activity_streams WHERE id = ?1",
                [id],
                |row| {
                    Ok([
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ] as [Option<f64>; 5])
                },
            )
            .optional()?;
        Ok(zones.and_then(|z| {
            let [a, b, c, d, e] = z;
            Some([a?, b?, c?, d?, e?])
        }))
    }
}

/// PostgreSQL: the streams table and its seed.
pub mod postgres {
    use tokio_postgres::{Client, GenericClient};

    use super::*;

    /// Creates `activity_streams` with `streams` heart-rate streams of
    /// `points` points.
    pub async fn seed(client: &Client, streams: usize, points: usize) -> Result<(), BoxError> {
        client
            .batch_execute(
                "CREATE TABLE activity_streams (\
                   id BIGINT PRIMARY KEY, activity_id BIGINT NOT NULL, stream_type INTEGER NOT NULL, \
                   data BYTEA NOT NULL, zone1 FLOAT8, zone2 FLOAT8, zone3 FLOAT8, zone4 FLOAT8, zone5 FLOAT8)",
            )
            .await?;
        let insert = client
            .prepare(
                "INSERT INTO activity_streams (id, activity_id, stream_type, data) \
                 SELECT u.id, u.id / 4, $1, u.data FROM UNNEST($2::BIGINT[], $3::BYTEA[]) AS u(id, data)",
            )
            .await?;
        let code = heart_rate_code() as i32;
        for chunk in (1..=streams as i64).collect::<Vec<_>>().chunks(1_000) {
            let data: Vec<Vec<u8>> = chunk
                .iter()
                .map(|&id| stream_points(id as u64, points))
                .collect();
            client.execute(&insert, &[&code, &chunk, &data]).await?;
        }
        client.batch_execute("ANALYZE activity_streams").await?;
        Ok(())
    }

    /// One batch, as [`sqlite::batch`]: one SELECT and one UPDATE of the
    /// whole batch, inside the caller's transaction. Statements are sent as
    /// text (prepared per call): a handler's plain transaction has no
    /// statement cache, and both sides of the comparison do the same.
    pub async fn batch<C: GenericClient + Sync>(
        client: &C,
        from: Option<&str>,
        batch: usize,
    ) -> Result<BatchStep, BoxError> {
        let after = after(from)?;
        let rows = client
            .query(
                "SELECT id, data FROM activity_streams WHERE stream_type = $1 AND id > $2 ORDER BY id LIMIT $3",
                &[&(heart_rate_code() as i32), &after, &(batch as i64)],
            )
            .await?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut zones: [Vec<f64>; 5] = Default::default();
        for row in &rows {
            ids.push(row.get::<_, i64>(0));
            for (column, value) in zones.iter_mut().zip(zone_percentages(row.get(1))) {
                column.push(value);
            }
        }
        drop(rows);
        let [z1, z2, z3, z4, z5] = &zones;
        client
            .execute(
                "UPDATE activity_streams AS s SET zone1 = u.z1, zone2 = u.z2, zone3 = u.z3, zone4 = u.z4, zone5 = u.z5 \
                 FROM UNNEST($1::BIGINT[], $2::FLOAT8[], $3::FLOAT8[], $4::FLOAT8[], $5::FLOAT8[], $6::FLOAT8[]) \
                 AS u(id, z1, z2, z3, z4, z5) WHERE s.id = u.id",
                &[&ids, z1, z2, z3, z4, z5],
            )
            .await?;
        Ok(step(ids.len(), ids.last().copied(), batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_split_the_points_by_their_bounds() {
        let zones = zone_percentages(&[100, 113, 114, 140, 160, 171, 200, 133, 152, 90]);
        assert_eq!(zones, [30.0, 10.0, 20.0, 20.0, 20.0]);
        assert_eq!(zones.iter().sum::<f64>(), 100.0);
        assert_eq!(zone_percentages(&[]), [0.0; 5]);
    }

    #[test]
    fn streams_are_deterministic_and_plausible() {
        let a = stream_points(7, 1_000);
        assert_eq!(a, stream_points(7, 1_000));
        assert_ne!(a, stream_points(8, 1_000));
        assert!(a.iter().all(|&bpm| (80..=200).contains(&bpm)));
        assert!((zone_percentages(&a).iter().sum::<f64>() - 100.0).abs() < 1e-9);
    }

    #[test]
    fn a_sqlite_backfill_in_batches_covers_every_stream_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        sqlite::seed(&mut conn, 1_200, 50).unwrap();
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
        let expected = zone_percentages(&stream_points(1_200, 50));
        assert_eq!(sqlite::zones_of(&conn, 1_200).unwrap(), Some(expected));
        assert!(sqlite::batch(&conn, Some("x"), 500).is_err());
    }
}
