//! The blocking_tool example, a program without an async runtime of its
//! own: its first run executes both migrations with one `run_blocking`
//! call, the second finds nothing pending; checked on its output and in the
//! database.
#![cfg(feature = "sqlite")]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::example_binary;
use waymark::sqlite::rusqlite::Connection;

const NOTES: i64 = 1000;

fn run_tool(binary: &Path, db: &Path) -> String {
    let output: Output = Command::new(binary)
        .arg("--database")
        .arg(db)
        .args(["--notes", &NOTES.to_string(), "--batch-size", "64"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("running blocking_tool");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "blocking_tool failed: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// What the database says after a run: both migrations executed in one
/// attempt, every note counted exactly once, the setting there once.
fn check_database(db: &Path) {
    let conn = Connection::open(db).unwrap();
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM migrations WHERE executed AND attempts = 1 AND checkpoint IS NULL"
        ),
        2
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM notes WHERE counted = 1 AND words = id % 7 + 1"
        ),
        NOTES
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM settings WHERE key = 'units' AND value = 'metric'"
        ),
        1
    );
}

#[test]
fn runs_everything_once_then_finds_nothing_pending() {
    let binary = example_binary("blocking_tool");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("notes.db");

    let first = run_tool(&binary, &db);
    assert!(first.contains("1000 notes"), "{first}");
    assert!(
        first.contains("2 pending migrations: 2 executed"),
        "{first}"
    );
    assert!(
        first.contains("1000 of 1000 notes have word counts"),
        "{first}"
    );
    assert!(first.contains("units: metric"), "{first}");
    check_database(&db);

    let second = run_tool(&binary, &db);
    assert!(second.contains("nothing pending"), "{second}");
    assert!(!second.contains("executed"), "{second}");
    assert!(
        second.contains("1000 of 1000 notes have word counts"),
        "{second}"
    );
    check_database(&db);
}

/// The example is what it claims: no `#[tokio::main]`, no async code.
#[test]
fn the_tool_has_no_async_code() {
    let source = include_str!("../examples/blocking_tool.rs");
    let code: String = source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for word in ["tokio", "async", "await", "Future"] {
        assert!(!code.contains(word), "blocking_tool uses {word:?}");
    }
}
