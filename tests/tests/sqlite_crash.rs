//! A process killed in the middle of a batched atomic migration: after a
//! rerun every batch has been applied exactly once.

use std::path::Path;
use std::time::Duration;

use waymark_tests::sqlite::{Helper, raw};

const HELPER: &str = env!("CARGO_BIN_EXE_sqlite_helper");
const ITEMS: i64 = 100;
const LIMIT: Duration = Duration::from_secs(60);

/// A database with `items` 1..=100 and an `applied` log with no unique
/// constraint, so applying a batch twice would show as duplicates.
fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    raw(&path)
        .execute_batch(&format!(
            "CREATE TABLE items (id INTEGER PRIMARY KEY);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ITEMS})
             INSERT INTO items SELECT i FROM n;
             CREATE TABLE applied (item_id INTEGER NOT NULL, batch INTEGER NOT NULL);"
        ))
        .unwrap();
    (dir, path)
}

struct State {
    executed: bool,
    checkpoint: Option<String>,
    attempts: i64,
    applied: i64,
    duplicates: i64,
    distinct: i64,
}

fn state(path: &Path) -> State {
    let conn = raw(path);
    let (executed, checkpoint, attempts) = conn
        .query_row(
            "SELECT executed, checkpoint, attempts FROM migrations WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let (applied, distinct): (i64, i64) = conn
        .query_row(
            "SELECT count(*), count(DISTINCT item_id) FROM applied",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let duplicates = conn
        .query_row(
            "SELECT count(*) FROM (SELECT item_id FROM applied GROUP BY item_id HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    State {
        executed,
        checkpoint,
        attempts,
        applied,
        duplicates,
        distinct,
    }
}

fn batched(path: &Path, stop_inside: Option<u32>) -> Helper {
    let mut args = vec!["batched".to_owned(), path.display().to_string()];
    args.extend(stop_inside.map(|batch| batch.to_string()));
    Helper::spawn(HELPER, args)
}

fn assert_complete_exactly_once(path: &Path) {
    let after = state(path);
    assert!(after.executed);
    assert_eq!(after.checkpoint, None);
    assert_eq!(
        after.attempts, 1,
        "the killed run is not counted as an attempt"
    );
    assert_eq!(after.duplicates, 0, "a batch was applied twice");
    assert_eq!((after.applied, after.distinct), (ITEMS, ITEMS));
}

/// Killed while batch 4 is half written inside its transaction: batches 1-3
/// stay, the half of batch 4 vanishes, and the rerun starts at batch 4.
#[test]
fn a_kill_inside_a_batch_loses_only_that_batch_and_the_rerun_resumes_there() {
    let (_dir, path) = setup();
    let mut first = batched(&path, Some(4));
    let before = first.wait_for("inside 4", LIMIT);
    assert_eq!(
        before,
        [
            "inside 1",
            "committed 10",
            "inside 2",
            "committed 20",
            "inside 3",
            "committed 30"
        ]
    );
    first.kill();

    let killed = state(&path);
    assert!(!killed.executed);
    assert_eq!(killed.checkpoint.as_deref(), Some("30"));
    assert_eq!(
        (killed.applied, killed.distinct),
        (30, 30),
        "the half batch rolled back"
    );

    let (lines, ok) = batched(&path, None).finish(LIMIT);
    assert!(ok, "{lines:?}");
    let starts: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("inside"))
        .map(String::as_str)
        .collect();
    assert_eq!(starts.first(), Some(&"inside 4"), "{lines:?}");
    assert_eq!(lines.last().map(String::as_str), Some("done"));
    assert_complete_exactly_once(&path);
}

/// Killed at whatever point it has reached after half the work: the saved
/// checkpoint always matches the committed work, and the rerun completes
/// without applying anything twice.
#[test]
fn a_kill_at_an_arbitrary_moment_never_applies_a_batch_twice() {
    let (_dir, path) = setup();
    let mut first = batched(&path, None);
    first.wait_for("committed 50", LIMIT);
    first.kill();

    let killed = state(&path);
    assert_eq!(killed.duplicates, 0);
    if !killed.executed {
        let checkpoint: i64 = killed.checkpoint.as_deref().unwrap().parse().unwrap();
        assert_eq!(
            killed.applied, checkpoint,
            "checkpoint and work committed together"
        );
    }

    let (lines, ok) = batched(&path, None).finish(LIMIT);
    assert!(ok, "{lines:?}");
    assert_complete_exactly_once(&path);
}
