//! Replicas of one application on one SQLite file, through the runner.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use waymark_core::{BoxError, MigrationContext, MigrationDef, MigrationStore};
use waymark_runner::{Handler, Runner, Status};
use waymark_sqlite::rusqlite::Transaction;
use waymark_sqlite::{SqliteConfig, SqliteStore};

fn def(id: i64) -> MigrationDef {
    MigrationDef::new(id, format!("m{id}"), "").unwrap()
}

fn noop() -> Handler<(), SqliteStore> {
    Handler::blocking_fn(|_ctx: MigrationContext<()>| Ok::<(), BoxError>(()))
}

/// A replica that declares a new migration starts while another replica's
/// atomic migration holds SQLite's write lock longer than the busy timeout:
/// registering the new migration cannot write yet, so the replica waits for
/// the running migration to end, as for the run lock, instead of failing
/// its start-up; then it runs the new migration, and not the old one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_new_migration_waits_out_a_long_atomic_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let config = || SqliteConfig::file(&path).busy_timeout(Duration::from_millis(100));
    let first = SqliteStore::open_with(config()).await.unwrap();
    let second = SqliteStore::open_with(config()).await.unwrap();

    let started = Arc::new(Notify::new());
    let signal = Arc::clone(&started);
    let old_release = Runner::<(), SqliteStore>::builder(first.clone())
        .atomic(
            def(1),
            move |tx: &Transaction<'_>, _ctx: &MigrationContext<()>| {
                tx.execute_batch("CREATE TABLE laps (path TEXT)")?;
                signal.notify_one();
                // Far past the other replica's busy timeout, holding the write lock.
                std::thread::sleep(Duration::from_millis(800));
                Ok::<(), BoxError>(())
            },
        )
        .build()
        .unwrap();
    let running = tokio::spawn(async move { old_release.run(()).await?.finish().await });
    started.notified().await;

    let new_release = Runner::builder(second.clone())
        .migration(def(1), noop())
        .migration(def(2), noop())
        .build()
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), new_release.run(()))
        .await
        .expect("a hang guard, not a measurement")
        .expect("the new replica waits instead of failing")
        .finish()
        .await
        .unwrap();
    running.await.unwrap().expect("the old replica's run");

    assert!(
        matches!(
            report.outcome(def(2).id()).map(|o| &o.status),
            Some(Status::Executed)
        ),
        "{report}"
    );
    assert!(
        !matches!(
            report.outcome(def(1).id()).map(|o| &o.status),
            Some(Status::Executed)
        ),
        "migration 1 ran twice: {report}"
    );
    let rows = second.list().await.unwrap();
    assert!(
        rows.iter().all(|row| row.executed && row.attempts == 1),
        "{rows:?}"
    );
}

/// Sixteen replicas, separate processes with the store's defaults (a 5 s
/// busy timeout), start together; the one that wins the run lock runs an
/// atomic migration that keeps SQLite's write lock for 6.5 s, longer than
/// the busy timeout. Every other replica meets the write lock while
/// preparing or registering, waits for the run in progress instead of
/// failing, and then finds the migration done: every process exits 0, one
/// report says it executed the migration, and its effect is there once.
#[test]
fn sixteen_replicas_wait_out_one_long_atomic_migration() {
    const HELPER: &str = env!("CARGO_BIN_EXE_sqlite_helper");
    const REPLICAS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    waymark_tests::sqlite::raw(&path)
        .execute_batch("CREATE TABLE effects (pid INTEGER NOT NULL)")
        .unwrap();
    let go = dir.path().join("go");
    let replicas: Vec<_> = (0..REPLICAS)
        .map(|_| {
            waymark_tests::sqlite::Helper::spawn(
                HELPER,
                [
                    "replica",
                    path.to_str().unwrap(),
                    go.to_str().unwrap(),
                    "6500",
                ],
            )
        })
        .collect();
    std::fs::write(&go, b"").unwrap();

    let mut executed_by = Vec::new();
    for replica in replicas {
        let pid = replica.pid();
        let (lines, ok) = replica.finish(Duration::from_secs(120));
        assert!(ok, "replica {pid} failed its start-up: {lines:?}");
        let report = lines
            .iter()
            .find(|line| line.starts_with("report "))
            .unwrap_or_else(|| panic!("replica {pid} printed no report: {lines:?}"));
        match report.as_str() {
            "report executed=[1] already_done=[]" => executed_by.push(pid),
            // Found done by the run in progress, or done before it looked.
            "report executed=[] already_done=[1]" | "report executed=[] already_done=[]" => {}
            other => panic!("replica {pid}: unexpected {other:?}"),
        }
    }
    assert_eq!(
        executed_by.len(),
        1,
        "one replica executes: {executed_by:?}"
    );
    let effects: Vec<u32> = waymark_tests::sqlite::raw(&path)
        .prepare("SELECT pid FROM effects")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        effects, executed_by,
        "the effect, once, by the replica that says so"
    );
}
