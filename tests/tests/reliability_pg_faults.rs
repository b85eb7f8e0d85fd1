//! Faults on PostgreSQL, with the real runner: the session running a
//! migration terminated, every session of the runner terminated, the
//! session waiting for the run lock terminated, and the server stopped
//! between two runs and during one. Each time: a clear error, nothing
//! half committed, and the next run completes with every effect once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use waymark_core::store::{LockRequest, LockScope};
use waymark_core::{
    BatchStep, BoxError, Error, Migration, MigrationContext, MigrationDef, MigrationStore,
    error_chain,
};
use waymark_postgres::{PostgresConfig, PostgresStore, sqlstate};
use waymark_runner::{Handler, RunReport, Runner};

/// The handlers of these tests.
type H = Handler<(), PostgresStore>;
use waymark_tests::pg::{PrivateCluster, TestDatabase, fresh_database};

/// A hang guard, not a measurement.
const NO_HANG: Duration = Duration::from_secs(60);

fn def(id: i64) -> MigrationDef {
    MigrationDef::new(id, format!("m{id}"), "").unwrap()
}

/// Tells the test a handler's session (its pid) is ready to be hit; the
/// handler then blocks in the server until terminated. Only the first run
/// gets one.
type Trap = Arc<Mutex<Option<mpsc::UnboundedSender<i32>>>>;

fn trap() -> (Trap, mpsc::UnboundedReceiver<i32>) {
    let (send, receive) = mpsc::unbounded_channel();
    (Arc::new(Mutex::new(Some(send))), receive)
}

/// An atomic handler logging `id` into `items`; with the trap armed, it
/// reports its pid and waits in `pg_sleep` for its session to be ended.
fn trapped(id: i64, trap: &Trap) -> H {
    let trap = Arc::clone(trap);
    H::atomic(move |tx, _ctx| {
        let trap = trap.lock().unwrap().take();
        Box::pin(async move {
            tx.execute("INSERT INTO items VALUES ($1)", &[&id]).await?;
            if let Some(trap) = trap {
                let pid: i32 = tx.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
                let _ = trap.send(pid);
                tx.execute("SELECT pg_sleep(60)", &[]).await?;
            }
            Ok::<(), BoxError>(())
        })
    })
}

/// An atomic handler logging `id` into `items`.
fn logs(id: i64) -> H {
    H::atomic(move |tx, _ctx| {
        Box::pin(async move {
            tx.execute("INSERT INTO items VALUES ($1)", &[&id]).await?;
            Ok::<(), BoxError>(())
        })
    })
}

/// A batched atomic handler logging 100 + 1..=3, one item per batch.
fn batches() -> H {
    H::batched(|tx, from, _ctx| {
        Box::pin(async move {
            let done: i64 = from.map(str::parse).transpose()?.unwrap_or(0);
            let item = 100 + done + 1;
            tx.execute("INSERT INTO items VALUES ($1)", &[&item])
                .await?;
            Ok::<_, BoxError>(if done + 1 == 3 {
                BatchStep::done(1)
            } else {
                BatchStep::next((done + 1).to_string(), 1)
            })
        })
    })
}

async fn items_table(admin: &Client) {
    admin
        .batch_execute("CREATE TABLE items (item BIGINT NOT NULL)")
        .await
        .unwrap();
}

async fn items(admin: &Client) -> Vec<i64> {
    admin
        .query("SELECT item FROM items ORDER BY item", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Waits until backend `pid` is running its `pg_sleep`.
async fn sleeping(admin: &tokio_postgres::Client, pid: i32) {
    let condition = "state = 'active' AND query LIKE '%pg_sleep%'";
    waymark_tests::pg::wait_for_activity(admin, pid, condition, "slept").await;
}

/// `(id, executed, attempts)` of every tracked row.
fn states(rows: &[Migration]) -> Vec<(i64, bool, u32)> {
    rows.iter()
        .map(|row| (row.id.get(), row.executed, row.attempts))
        .collect()
}

async fn no_advisory_lock_left(db: &TestDatabase) {
    let left = db.wait_for_no_advisory_locks(Duration::from_secs(10)).await;
    assert!(left.is_empty(), "advisory locks left: {left:?}");
}

async fn run(runner: &Runner<(), PostgresStore>) -> Result<RunReport, Error> {
    tokio::time::timeout(NO_HANG, runner.run(()))
        .await
        .expect("the run hung")
        .map(waymark_runner::Started::into_report)
}

/// The session of an atomic migration is terminated mid-transaction: the
/// run fails with that migration's error (the server's FATAL message),
/// its insert is rolled back, the failure is recorded, later migrations do
/// not run; the next run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_a_migrations_session_rolls_it_back_and_the_next_run_completes() {
    let db = fresh_database().await;
    let admin = db.admin().await;
    items_table(&admin).await;
    let store = db.store().await;
    let (armed, mut pids) = trap();
    let runner = Runner::<(), PostgresStore>::builder(store.clone())
        .migration(def(1), trapped(1, &armed))
        .migration(def(2), logs(2))
        .build()
        .unwrap();

    let running = tokio::spawn({
        let runner = runner.clone();
        async move { run(&runner).await }
    });
    let pid = pids.recv().await.unwrap();
    // Terminated while its statement runs, so that the server's FATAL
    // message is the statement's answer (terminated between two
    // statements, the client would only see its connection closed).
    sleeping(&admin, pid).await;
    assert!(db.terminate(pid).await);
    let err = running.await.unwrap().unwrap_err();
    match &err {
        Error::Handler { id, .. } if id.get() == 1 => {
            let text = error_chain(&err);
            assert!(text.contains("terminating connection"), "{text}");
        }
        other => panic!("expected the migration's failure, got {other:?}"),
    }
    assert!(items(&admin).await.is_empty(), "the insert was rolled back");
    assert_eq!(
        states(&store.list().await.unwrap()),
        [(1, false, 1), (2, false, 0)]
    );
    no_advisory_lock_left(&db).await;

    run(&runner).await.unwrap();
    assert_eq!(items(&admin).await, [1, 2]);
    assert_eq!(
        states(&store.list().await.unwrap()),
        [(1, true, 2), (2, true, 1)]
    );
}

/// Every session of the runner (the run lock's, the migration's, the
/// pool's) is terminated while a migration runs: a clear error, nothing
/// committed, no lock left; the next run, on the same store, completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_every_session_of_the_runner_mid_migration_is_recovered() {
    let db = fresh_database().await;
    let admin = db.admin().await;
    items_table(&admin).await;
    let store = db.store().await;
    let (armed, mut pids) = trap();
    let runner = Runner::<(), PostgresStore>::builder(store.clone())
        .migration(def(1), logs(1))
        .migration(def(2), trapped(2, &armed))
        .migration(def(3), batches())
        .build()
        .unwrap();

    let running = tokio::spawn({
        let runner = runner.clone();
        async move { run(&runner).await }
    });
    let pid = pids.recv().await.unwrap();
    sleeping(&db.admin().await, pid).await;
    assert_eq!(db.advisory_locks().await.len(), 1, "the run holds its lock");
    assert!(
        db.terminate_all().await >= 2,
        "the lock's and the migration's sessions"
    );
    // The test's own session went too.
    let admin = db.admin().await;
    let err = running.await.unwrap().unwrap_err();
    // Migration 2's failure, or, if the pool had not yet noticed its
    // sessions were gone, the store error of recording it.
    match &err {
        Error::Handler { id, .. } if id.get() == 2 => {
            let text = error_chain(&err);
            assert!(text.contains("terminating connection"), "{text}")
        }
        Error::Store { .. } => assert!(error_chain(&err).contains("migration 2"), "{err}"),
        other => panic!("expected a clear error about migration 2, got {other:?}"),
    }
    assert_eq!(
        items(&admin).await,
        [1],
        "only the first migration committed"
    );
    let rows = store.list().await.unwrap();
    assert!(
        rows[0].executed && !rows[1].executed && !rows[2].executed,
        "{rows:?}"
    );
    assert_eq!(rows[2].checkpoint, None);
    no_advisory_lock_left(&db).await;

    run(&runner).await.unwrap();
    assert_eq!(items(&admin).await, [1, 2, 101, 102, 103]);
    assert!(store.pending().await.unwrap().is_empty());
}

/// The session waiting for the run lock (another instance holds it) is
/// terminated: the run fails at once with a store error saying so, not a
/// lock timeout and not a hang, and nothing ran. Once the holder lets go,
/// the next run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_the_session_waiting_for_the_lock_is_a_clear_error() {
    let db = fresh_database().await;
    let admin = db.admin().await;
    items_table(&admin).await;
    let holder = db.store().await;
    let store = db.store().await;
    let runner = Runner::<(), PostgresStore>::builder(store.clone())
        .migration(def(1), logs(1))
        .lock_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    let guard = holder
        .lock(&LockRequest::new(LockScope::Run, Duration::from_secs(5)))
        .await
        .unwrap();

    let running = tokio::spawn({
        let runner = runner.clone();
        async move { run(&runner).await }
    });
    let waiter = wait_for_lock_waiter(&db).await;
    let terminated = Instant::now();
    assert!(db.terminate(waiter).await);
    let err = running.await.unwrap().unwrap_err();
    assert!(
        terminated.elapsed() < Duration::from_secs(30),
        "it did not wait out the lock"
    );
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert_eq!(sqlstate(&err), Some(SqlState::ADMIN_SHUTDOWN), "{err}");
    assert!(error_chain(&err).contains("the run lock"), "{err}");
    assert!(items(&admin).await.is_empty());
    assert_eq!(states(&store.list().await.unwrap()), [(1, false, 0)]);

    drop(guard);
    run(&runner).await.unwrap();
    assert_eq!(items(&admin).await, [1]);
    no_advisory_lock_left(&db).await;
}

/// The pid of the session waiting for an advisory lock, once it waits.
async fn wait_for_lock_waiter(db: &TestDatabase) -> i32 {
    let started = Instant::now();
    while started.elapsed() < NO_HANG {
        if let Some(waiting) = db.advisory_locks().await.iter().find(|lock| !lock.granted) {
            return waiting.pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no session ever waited for the lock");
}

/// The server stops between two runs, then while a migration runs; each
/// time it starts again on the same port. While it is down a run fails
/// within the connect timeout with a store error naming the server;
/// nothing is half committed; the next run on the same store (its pool
/// full of dead connections) completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_and_started_again_loses_nothing() {
    let cluster = PrivateCluster::start();
    let url = cluster.url("postgres");
    let admin = connect(&url).await;
    items_table(&admin).await;
    let store = PostgresStore::connect_with(
        PostgresConfig::new(&url).connect_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let failing_once = Arc::new(Mutex::new(true));
    let flaky = {
        let failing_once = Arc::clone(&failing_once);
        H::atomic(move |tx, _ctx: &MigrationContext<()>| {
            let fail = std::mem::take(&mut *failing_once.lock().unwrap());
            Box::pin(async move {
                tx.execute("INSERT INTO items VALUES (2)", &[]).await?;
                if fail {
                    return Err::<(), BoxError>("failing once, on purpose".into());
                }
                Ok(())
            })
        })
    };
    let (armed, mut pids) = trap();
    let runner = Runner::<(), PostgresStore>::builder(store.clone())
        .migration(def(1), logs(1))
        .migration(def(2), flaky)
        .migration(def(3), batches())
        .migration(def(4), trapped(4, &armed))
        .build()
        .unwrap();

    // Run 1: migration 2 fails, so 3 and 4 stay pending.
    let err = run(&runner).await.unwrap_err();
    assert!(
        matches!(&err, Error::Handler { id, .. } if id.get() == 2),
        "{err:?}"
    );
    let before = states(&store.list().await.unwrap());
    assert_eq!(
        before,
        [(1, true, 1), (2, false, 1), (3, false, 0), (4, false, 0)]
    );

    // Stopped between two runs: a clear error, quickly, and nothing changes.
    tokio::task::block_in_place(|| cluster.stop());
    let started = Instant::now();
    let err = run(&runner).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    let text = error_chain(&err);
    assert!(
        text.contains(&format!("127.0.0.1:{}", cluster.port())),
        "{text}"
    );
    tokio::task::block_in_place(|| cluster.start_again());
    let admin = connect(&url).await;
    assert_eq!(states(&store.list().await.unwrap()), before);
    assert_eq!(items(&admin).await, [1]);

    // Run 3 on the same store: 2 and 3 complete; 4 waits in the server,
    // which stops under it.
    let running = tokio::spawn({
        let runner = runner.clone();
        async move { run(&runner).await }
    });
    pids.recv().await.unwrap();
    tokio::task::block_in_place(|| cluster.stop());
    let err = running.await.unwrap().unwrap_err();
    // The migration failed, and recording that failed too: the server was gone.
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert!(error_chain(&err).contains("migration 4"), "{err}");
    tokio::task::block_in_place(|| cluster.start_again());
    let admin = connect(&url).await;
    assert_eq!(
        items(&admin).await,
        [1, 2, 101, 102, 103],
        "4's insert rolled back"
    );
    assert_eq!(
        states(&store.list().await.unwrap()),
        [(1, true, 1), (2, true, 2), (3, true, 1), (4, false, 0)]
    );

    // Run 4 completes.
    run(&runner).await.unwrap();
    assert_eq!(items(&admin).await, [1, 2, 4, 101, 102, 103]);
    assert!(store.pending().await.unwrap().is_empty());
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Only the run lock's session is terminated while a migration runs: that
/// migration finishes (its own session is fine), but the run notices the
/// lost lock and starts nothing more; nothing later ran, no lock is left,
/// and the next run completes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_run_lock_stops_the_run_before_the_next_migration() {
    let db = fresh_database().await;
    let admin = db.admin().await;
    items_table(&admin).await;
    let store = db.store().await;
    let (trap, mut armed) = trap();
    let release = Arc::new(tokio::sync::Notify::new());
    let waiting = Arc::clone(&release);
    let gated = H::async_fn(move |_ctx| {
        let trap = trap.lock().unwrap().take();
        let waiting = Arc::clone(&waiting);
        async move {
            if let Some(trap) = trap {
                let _ = trap.send(0);
                waiting.notified().await;
            }
            Ok::<(), waymark_core::BoxError>(())
        }
    });
    let runner = Runner::builder(store.clone())
        .migration(def(1), gated)
        .migration(def(2), logs(2))
        .build()
        .unwrap();
    let run_task = tokio::spawn({
        let runner = runner.clone();
        async move { run(&runner).await }
    });
    armed.recv().await.expect("migration 1 started");
    let locks = db.advisory_locks().await;
    assert_eq!(locks.len(), 1, "the run holds its lock: {locks:?}");
    db.terminate(locks[0].pid).await;
    no_advisory_lock_left(&db).await;
    // The server has ended the session; give the client's connection task
    // a moment to read the closed socket before migration 1 returns.
    tokio::time::sleep(Duration::from_millis(100)).await;
    release.notify_one();

    let err = run_task.await.unwrap().expect_err("the run must stop");
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert!(error_chain(&err).contains("the lock is lost"), "{err}");
    assert!(
        items(&admin).await.is_empty(),
        "migration 2 ran without the lock"
    );
    no_advisory_lock_left(&db).await;

    let report = run(&runner).await.expect("the next run completes");
    assert_eq!(report.executed().count(), 1, "{report}");
    assert_eq!(items(&admin).await, [2]);
}
