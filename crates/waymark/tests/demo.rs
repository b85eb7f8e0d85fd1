//! The README's main job, end to end: the activity_streams demo runs to
//! completion, a second run finds nothing pending, and an interrupted run
//! resumes from its checkpoint without applying a batch twice.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use waymark::sqlite::rusqlite::{Connection, OptionalExtension};

/// The demo binary, built by `cargo test` beside this test's own binary.
fn demo_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let demo = profile_dir.join("examples").join("activity_streams");
    assert!(
        demo.exists(),
        "{} is missing: run `cargo test --workspace` (which builds the examples) or `cargo build -p waymark --example activity_streams`",
        demo.display()
    );
    demo
}

fn demo(db: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(demo_binary());
    command
        .arg("--database")
        .arg(db)
        .args(["--activities", "300", "--batch-size", "25"])
        .args(extra)
        .env("RUST_LOG", "warn");
    command
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "demo failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8")
}

#[test]
fn runs_to_completion_then_finds_nothing_pending() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let first = stdout(&demo(&db, &[]).output().unwrap());
    assert!(first.contains("300 activities"), "{first}");
    assert!(
        first.contains("3 pending migrations: 3 executed"),
        "{first}"
    );
    for check in [
        "ok   300 of 300 activities have averages",
        "ok   300 heart-rate zone rows for 300 activities",
        "ok   300 pace streams for 300 speed streams",
    ] {
        assert!(first.contains(check), "missing {check:?} in:\n{first}");
    }
    let second = stdout(&demo(&db, &[]).output().unwrap());
    assert!(second.contains("nothing pending"), "{second}");
    assert!(!second.contains("FAIL"), "{second}");
}

#[test]
fn an_interrupted_run_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    // Slow batches, so the interrupt lands inside the batched migration.
    let mut child = demo(&db, &["--batch-delay-ms", "40"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let checkpoint = loop {
        assert!(
            Instant::now() < deadline,
            "the batched migration never saved a checkpoint"
        );
        if let Some(checkpoint) = zones_checkpoint(&db) {
            break checkpoint;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the demo ended before it was interrupted"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    // Ctrl-C: SIGINT, whose default action ends the process at once.
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the demo finished before the interrupt: {status:?}"
    );

    let conn = Connection::open(&db).unwrap();
    let (executed, attempts, saved): (bool, u32, Option<String>) = conn
        .query_row(
            "SELECT executed, attempts, checkpoint FROM migrations WHERE id = 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(!executed && attempts == 0, "interrupted, not failed");
    let saved: i64 = saved.expect("a checkpoint").parse().unwrap();
    assert!(saved >= checkpoint.parse::<i64>().unwrap());
    // Every committed batch is there with its checkpoint, nothing past it.
    let zones: i64 = conn
        .query_row("SELECT count(*) FROM activity_hr_zones", [], |r| r.get(0))
        .unwrap();
    let upto: i64 = conn
        .query_row(
            "SELECT count(*) FROM activities WHERE id <= ?1",
            [saved],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(zones, upto, "zone rows match the checkpoint");
    assert!(zones < 300, "the interrupt came before the end");
    drop(conn);

    // The rerun resumes: zone rows are plain INSERTs keyed by activity, so a
    // batch applied twice would fail the run.
    let rerun = stdout(&demo(&db, &[]).output().unwrap());
    assert!(
        rerun.contains("ok   300 heart-rate zone rows for 300 activities"),
        "{rerun}"
    );
    assert!(!rerun.contains("FAIL"), "{rerun}");
    let conn = Connection::open(&db).unwrap();
    let attempts: u32 = conn
        .query_row(
            "SELECT attempts FROM migrations WHERE id = 2 AND executed",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(attempts, 1);
}

/// Migration 2's saved checkpoint, once there is one.
fn zones_checkpoint(db: &Path) -> Option<String> {
    let conn = Connection::open(db).ok()?;
    conn.busy_timeout(Duration::from_secs(5)).ok()?;
    conn.query_row("SELECT checkpoint FROM migrations WHERE id = 2", [], |r| {
        r.get::<_, Option<String>>(0)
    })
    .optional()
    .ok()
    .flatten()
    .flatten()
}
