//! Synthetic fitness data: activities and their data streams, shaped like
//! the original application's `activities_streams` rows.

use serde_json::json;
use waymark::sqlite::rusqlite::{Connection, params};
use waymark::stream::StreamType;

/// The application's own tables (waymark's tracking table lives beside them).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS activities (
    id          INTEGER PRIMARY KEY,
    sport       TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    duration_s  INTEGER NOT NULL,
    avg_hr      REAL,
    max_hr      INTEGER,
    avg_speed   REAL
);
CREATE TABLE IF NOT EXISTS activities_streams (
    id               INTEGER PRIMARY KEY,
    activity_id      INTEGER NOT NULL REFERENCES activities(id),
    stream_type      INTEGER NOT NULL,
    stream_waypoints TEXT    NOT NULL,
    UNIQUE (activity_id, stream_type)
);
CREATE TABLE IF NOT EXISTS activity_hr_zones (
    activity_id INTEGER PRIMARY KEY REFERENCES activities(id),
    z1 REAL NOT NULL, z2 REAL NOT NULL, z3 REAL NOT NULL, z4 REAL NOT NULL, z5 REAL NOT NULL
);
";

/// Seconds between two samples of a stream.
const SAMPLE_EVERY_S: i64 = 15;

/// Creates the tables and, when there are no activities yet, inserts
/// `activities` of them with their streams. Returns how many exist.
pub fn seed(conn: &mut Connection, activities: u32) -> rusqlite::Result<u32> {
    conn.execute_batch(SCHEMA)?;
    let existing: u32 = conn.query_row("SELECT count(*) FROM activities", [], |r| r.get(0))?;
    if existing > 0 {
        return Ok(existing);
    }
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let tx = conn.transaction()?;
    {
        let mut activity = tx.prepare(
            "INSERT INTO activities (id, sport, started_at, duration_s) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut stream = tx.prepare(
            "INSERT INTO activities_streams (activity_id, stream_type, stream_waypoints) VALUES (?1, ?2, ?3)",
        )?;
        for id in 1..=i64::from(activities) {
            let ride = rng.below(3) == 0;
            let duration = 1200 + rng.below(6000) as i64;
            let started = 1_700_000_000 + id * 86_400 / 3;
            activity.execute(params![
                id,
                if ride { "ride" } else { "run" },
                started,
                duration
            ])?;
            for (kind, points) in streams(&mut rng, ride, duration) {
                stream.execute(params![id, kind.code(), points.to_string()])?;
            }
        }
    }
    tx.commit()?;
    Ok(activities)
}

/// The streams one activity records: heart rate, speed and position, plus
/// power and cadence on rides.
fn streams(rng: &mut Rng, ride: bool, duration: i64) -> Vec<(StreamType, serde_json::Value)> {
    let samples = duration / SAMPLE_EVERY_S;
    let fitness = 120.0 + rng.below(30) as f64;
    let base_speed = if ride { 7.5 } else { 3.1 } + rng.below(100) as f64 / 100.0;
    let (mut lat, mut lon) = (
        45.0 + rng.below(1000) as f64 / 1e4,
        5.0 + rng.below(1000) as f64 / 1e4,
    );
    let (mut hr, mut speed, mut power, mut cadence) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut position = Vec::new();
    for i in 0..samples {
        let time = i * SAMPLE_EVERY_S;
        // Heart rate drifts up with effort and time, with noise.
        let effort = (i as f64 / 40.0).sin().abs();
        let beat = fitness + 45.0 * effort + time as f64 / 300.0 + rng.below(9) as f64 - 4.0;
        hr.push(json!({"time": time, "hr": beat.round() as i64}));
        let v = (base_speed * (0.8 + 0.4 * effort)).max(0.5);
        speed.push(json!({"time": time, "speed": (v * 100.0).round() / 100.0}));
        lat += v * SAMPLE_EVERY_S as f64 / 111_000.0 * 0.7;
        lon += v * SAMPLE_EVERY_S as f64 / 79_000.0 * 0.7;
        position.push(json!({"time": time, "lat": (lat * 1e6).round() / 1e6, "lon": (lon * 1e6).round() / 1e6}));
        if ride {
            power.push(json!({"time": time, "power": (150.0 + 120.0 * effort).round() as i64}));
            cadence.push(json!({"time": time, "cad": 80 + rng.below(15)}));
        }
    }
    let mut out = vec![
        (StreamType::HeartRate, json!(hr)),
        (StreamType::Speed, json!(speed)),
        (StreamType::Latlong, json!(position)),
    ];
    if ride {
        out.push((StreamType::Power, json!(power)));
        out.push((StreamType::Cadence, json!(cadence)));
    }
    out
}

/// xorshift64*: deterministic data without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}
