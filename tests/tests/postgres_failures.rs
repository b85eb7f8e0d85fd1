//! PostgreSQL store when things go wrong: the run lock across pools,
//! handler errors, panics, killed backends and killed processes; servers
//! that are down or silent; backends terminated mid-call; and errors that
//! keep their SQLSTATE and never show a password.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use waymark_core::store::{AtomicError, AtomicFn, AtomicStore, LockRequest, LockScope};
use waymark_core::{
    BoxError, Error, MigrationContext, MigrationDef, MigrationId, MigrationStore, error_chain,
};
use waymark_postgres::{PostgresConfig, PostgresStore, sqlstate};
use waymark_tests::pg::{TestDatabase, atomic_fn, context, fresh_database, fresh_store};

fn id(raw: i64) -> MigrationId {
    MigrationId::new(raw).unwrap()
}

fn def(raw: i64, name: &str) -> MigrationDef {
    MigrationDef::new(raw, name, "").unwrap()
}

fn run_lock(wait: Duration) -> LockRequest {
    LockRequest::new(LockScope::Run, wait)
}

/// Every way an error can be printed, for checks on what it shows.
fn all_text(err: &Error) -> String {
    format!("{err}\n{err:?}\n{}", error_chain(err))
}

/// The one advisory lock held in `db`, with its key and holder.
async fn only_lock(db: &TestDatabase) -> waymark_tests::pg::AdvisoryLock {
    let locks = db.advisory_locks().await;
    assert_eq!(locks.len(), 1, "{locks:?}");
    locks.into_iter().next().unwrap()
}

#[tokio::test]
async fn the_lock_is_exclusive_across_two_pools() {
    let db = fresh_database().await;
    let first = db.store().await;
    let second = db.store().await;
    assert_eq!(first.lock_key(), second.lock_key());
    let guard = first.lock(&run_lock(Duration::from_secs(5))).await.unwrap();
    let held = only_lock(&db).await;
    assert_eq!((held.key, held.granted), (first.lock_key(), true));

    let wait = Duration::from_millis(300);
    let result = second.lock(&run_lock(wait)).await;
    assert!(
        matches!(result, Err(Error::LockTimeout { waited }) if waited == wait),
        "{result:?}"
    );
    let result = second.lock(&run_lock(Duration::ZERO)).await;
    assert!(
        matches!(result, Err(Error::LockTimeout { .. })),
        "{result:?}"
    );

    // A waiter gets it as soon as the holder lets go.
    let waiter = tokio::spawn(async move { second.lock(&run_lock(Duration::from_secs(10))).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    drop(guard);
    let _second_guard = waiter.await.unwrap().expect("the waiter takes the lock");
    let held = only_lock(&db).await;
    assert_eq!(held.key, first.lock_key());
}

#[tokio::test]
async fn the_locks_connection_never_serves_the_pool() {
    let db = fresh_database().await;
    // Limits too large for the server are clamped, never overflowed.
    let config = db
        .config()
        .pool_size(1)
        .connect_timeout(Duration::MAX)
        .statement_timeout(Duration::MAX);
    let store = PostgresStore::connect_with(config).await.unwrap();
    store.prepare().await.unwrap();
    let _guard = store.lock(&run_lock(Duration::MAX)).await.unwrap();
    let holder = only_lock(&db).await.pid;
    // The pool's single slot is free, and its connection is another session.
    let pooled: i32 = store
        .pool()
        .get()
        .await
        .unwrap()
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(pooled, holder);
    store.register(&[def(1, "one")]).await.unwrap();
    assert_eq!(store.pending().await.unwrap().len(), 1);
}

#[tokio::test]
async fn after_a_handler_error_while_holding_the_lock_no_advisory_lock_is_left() {
    let (store, db) = fresh_store().await;
    store.prepare().await.unwrap();
    store.register(&[def(1, "fails")]).await.unwrap();
    let work = atomic_fn(|tx, _ctx: &MigrationContext<()>| {
        Box::pin(async move {
            tx.execute("SELECT 1", &[]).await?;
            Err::<(), BoxError>("handler failed".into())
        })
    });
    // What a runner does: lock, run, and leave through the error path.
    async fn locked_run(
        store: &PostgresStore,
        work: AtomicFn<(), PostgresStore>,
    ) -> Result<(), BoxError> {
        let _guard = store.lock(&run_lock(Duration::from_secs(5))).await?;
        let row = store.get(id(1)).await?;
        store.execute_atomic(work, context(store, row)).await?;
        Ok(())
    }
    let err = locked_run(&store, work).await.unwrap_err();
    assert_eq!(err.to_string(), "handler failed");
    let left = db.wait_for_no_advisory_locks(Duration::from_secs(5)).await;
    assert!(left.is_empty(), "advisory locks left: {left:?}");
    // The store's pooled connections are alive and hold nothing.
    assert!(store.pool().status().size >= 1);
    let _next = store.lock(&run_lock(Duration::ZERO)).await.unwrap();
}

#[tokio::test]
async fn a_panic_while_holding_the_lock_leaves_no_advisory_lock() {
    let (store, db) = fresh_store().await;
    let holder = store.clone();
    let task = tokio::spawn(async move {
        let _guard = holder
            .lock(&run_lock(Duration::from_secs(5)))
            .await
            .unwrap();
        panic!("handler panicked while holding the lock");
    });
    assert!(task.await.unwrap_err().is_panic());
    let left = db.wait_for_no_advisory_locks(Duration::from_secs(5)).await;
    assert!(left.is_empty(), "advisory locks left: {left:?}");
    let _next = store.lock(&run_lock(Duration::from_secs(1))).await.unwrap();
}

#[tokio::test]
async fn killing_the_holders_backend_frees_the_lock() {
    let db = fresh_database().await;
    let first = db.store().await;
    let second = db.store().await;
    let stale_guard = first.lock(&run_lock(Duration::from_secs(5))).await.unwrap();
    let holder = only_lock(&db).await.pid;
    assert!(stale_guard.check().is_ok(), "held while its session lives");
    assert!(db.terminate(holder).await);
    // The stale guard knows its lock is gone, once its connection has read
    // the termination.
    let mut lost = stale_guard.check();
    for _ in 0..250 {
        if lost.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        lost = stale_guard.check();
    }
    match lost {
        Err(err @ Error::Store { .. }) => {
            assert!(error_chain(&err).contains("the lock is lost"), "{err}")
        }
        other => panic!("expected the lost lock to be noticed, got {other:?}"),
    }
    let _guard = second
        .lock(&run_lock(Duration::from_secs(5)))
        .await
        .expect("the lock is free once its session is gone");
    drop(stale_guard);
    // The first store is unharmed.
    first.prepare().await.unwrap();
}

/// The child process of [`killing_the_holding_process_frees_the_lock`]:
/// takes the lock on the database in the variable, says so, and waits to
/// be killed. Without the variable (a normal test run) it does nothing.
#[tokio::test]
async fn child_process_holding_the_lock() {
    let Ok(url) = std::env::var(CHILD_URL_VAR) else {
        return;
    };
    // Exit with the parent even if it dies without killing us.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let store = PostgresStore::connect(&url).await.unwrap();
    let _guard = store
        .lock(&run_lock(Duration::from_secs(10)))
        .await
        .unwrap();
    println!("{LOCKED}");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

const CHILD_URL_VAR: &str = "WAYMARK_TEST_LOCK_CHILD_URL";
const LOCKED: &str = "waymark-child: locked";

#[tokio::test]
async fn killing_the_holding_process_frees_the_lock() {
    let (store, db) = fresh_store().await;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_holding_the_lock", "--nocapture"])
        .env(CHILD_URL_VAR, db.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let locked = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains(LOCKED))
    });
    let locked = tokio::time::timeout(Duration::from_secs(30), locked).await;
    if !matches!(locked, Ok(Ok(true))) {
        let _ = child.kill();
        panic!("the child never took the lock");
    }
    assert!(matches!(
        store.lock(&run_lock(Duration::ZERO)).await,
        Err(Error::LockTimeout { .. })
    ));
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    let _guard = store
        .lock(&run_lock(Duration::from_secs(5)))
        .await
        .expect("the lock is free once its process is gone");
}

#[tokio::test]
async fn a_closed_port_is_a_store_error_naming_host_and_port_not_the_password() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("postgres://app:sup3r-s3cret@127.0.0.1:{port}/app");
    let limit = Duration::from_secs(3);
    let started = Instant::now();
    let err = PostgresStore::connect_with(PostgresConfig::new(&url).connect_timeout(limit))
        .await
        .unwrap_err();
    assert!(started.elapsed() < limit, "took {:?}", started.elapsed());
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    let text = all_text(&err);
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test]
async fn a_silent_server_is_a_store_error_within_the_connect_timeout() {
    // Accepts TCP connections (the kernel does) but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("postgres://app:sup3r-s3cret@127.0.0.1:{port}/app");
    let limit = Duration::from_millis(800);
    let started = Instant::now();
    let err = PostgresStore::connect_with(PostgresConfig::new(&url).connect_timeout(limit))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took >= limit && took < limit * 4, "took {took:?}");
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    let text = all_text(&err);
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("timed out"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    drop(listener);
}

#[tokio::test]
async fn bad_settings_are_refused_before_connecting() {
    let url = "postgres://app:sup3r-s3cret@127.0.0.1:1/app";
    for (config, field) in [
        (PostgresConfig::new(url).schema("pub lic"), "schema"),
        (PostgresConfig::new(url).table("migrations; drop"), "table"),
        (PostgresConfig::new(url).pool_size(0), "pool_size"),
        (
            PostgresConfig::new(url).statement_timeout(Duration::ZERO),
            "statement_timeout",
        ),
        (
            PostgresConfig::new("postgres://app:sup3r-s3cret@127.0.0.1:notaport/app"),
            "url",
        ),
    ] {
        match PostgresStore::connect_with(config).await {
            Err(err @ Error::Invalid { .. }) => {
                assert!(
                    matches!(err, Error::Invalid { field: f, .. } if f == field),
                    "{err:?}"
                );
                assert!(!all_text(&err).contains("s3cret"), "{err:?}");
            }
            other => panic!("expected Invalid {field}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_missing_table_is_not_initialised_naming_the_table_and_server() {
    let (store, _db) = fresh_store().await;
    // Not prepared: reads say so (the server's UNDEFINED_TABLE becomes
    // NotInitialised), naming the table and where it was looked for.
    let err = store.list().await.unwrap_err();
    assert!(matches!(err, Error::NotInitialised { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("public.migrations"), "{text}");
    assert!(text.contains("127.0.0.1:"), "{text}");
    assert!(!text.contains("42P01"), "{text}");
    // A schema that does not exist is the same.
    let db = fresh_database().await;
    let elsewhere = PostgresStore::connect_with(db.config().schema("nowhere"))
        .await
        .unwrap();
    let err = elsewhere.pending().await.unwrap_err();
    assert!(matches!(err, Error::NotInitialised { .. }), "{err:?}");
    assert!(err.to_string().contains("nowhere.migrations"), "{err}");
}

#[tokio::test]
async fn the_sqlstate_stays_in_the_source_chain() {
    let (store, db) = fresh_store().await;
    store.prepare().await.unwrap();
    store.register(&[def(1, "one")]).await.unwrap();
    // A constraint of the application's refuses the store's update.
    db.admin()
        .await
        .batch_execute("ALTER TABLE migrations ADD CONSTRAINT never_fails CHECK (attempts = 0)")
        .await
        .unwrap();
    let err = store.record_failure(id(1), "boom").await.unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert_eq!(sqlstate(&err), Some(SqlState::CHECK_VIOLATION));
    let text = error_chain(&err);
    assert!(text.contains("23514"), "{text}");
    assert!(text.contains("recording a failure"), "{text}");
    assert!(text.contains("127.0.0.1:"), "{text}");
    // Walking the chain by hand finds the server's error too.
    let mut source = std::error::Error::source(&err);
    let mut found = None;
    while let Some(cause) = source {
        if let Some(db) = cause.downcast_ref::<tokio_postgres::error::DbError>() {
            found = Some(db.code().clone());
        }
        source = cause.source();
    }
    assert_eq!(found, Some(SqlState::CHECK_VIOLATION));
    // The refused update changed nothing, and the connection serves on.
    assert_eq!(store.get(id(1)).await.unwrap().attempts, 0);
}

#[tokio::test]
async fn a_backend_terminated_mid_call_is_an_error_and_the_pool_recovers() {
    let db = fresh_database().await;
    let store = PostgresStore::connect_with(db.config().pool_size(1))
        .await
        .unwrap();
    store.prepare().await.unwrap();
    store.register(&[def(1, "one")]).await.unwrap();
    // Hold the table so the store's next statement waits on it.
    let mut admin = db.admin().await;
    let blocker = admin.transaction().await.unwrap();
    blocker
        .batch_execute("LOCK TABLE migrations IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let call = tokio::spawn({
        let store = store.clone();
        async move { store.record_failure(id(1), "boom").await }
    });
    let waiting = wait_for_lock_waiter(&db).await;
    assert!(db.terminate(waiting).await);
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert_eq!(sqlstate(&err), Some(SqlState::ADMIN_SHUTDOWN), "{err}");
    assert!(err.to_string().contains("recording a failure"), "{err}");
    blocker.rollback().await.unwrap();
    // The next call on the same one-connection pool succeeds.
    let row = store.get(id(1)).await.unwrap();
    assert_eq!(row.attempts, 0, "the terminated update did not happen");
    store.record_failure(id(1), "boom").await.unwrap();
    assert_eq!(store.get(id(1)).await.unwrap().attempts, 1);
}

#[tokio::test]
async fn an_atomic_handler_whose_backend_is_terminated_fails_and_the_pool_recovers() {
    let db = fresh_database().await;
    let store = PostgresStore::connect_with(db.config().pool_size(1))
        .await
        .unwrap();
    store.prepare().await.unwrap();
    store.register(&[def(1, "slow")]).await.unwrap();
    let (pids, mut pid) = tokio::sync::mpsc::unbounded_channel::<i32>();
    let work = atomic_fn(move |tx, _ctx: &MigrationContext<()>| {
        let pids = pids.clone();
        Box::pin(async move {
            let row = tx.query_one("SELECT pg_backend_pid()", &[]).await?;
            let _ = pids.send(row.get(0));
            tx.execute("SELECT pg_sleep(30)", &[]).await?;
            Ok::<(), BoxError>(())
        })
    });
    let row = store.get(id(1)).await.unwrap();
    let running = tokio::spawn(store.execute_atomic(work, context(&store, row)));
    let pid = pid.recv().await.unwrap();
    assert!(db.terminate(pid).await);
    let result = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the handler fails at once, not after its sleep")
        .unwrap();
    match result {
        Err(AtomicError::Failed(err)) => {
            assert_eq!(sqlstate(&*err), Some(SqlState::ADMIN_SHUTDOWN), "{err}");
        }
        other => panic!("expected the terminated session's error, got {other:?}"),
    }
    // The next call on the same one-connection pool succeeds.
    let row = store.get(id(1)).await.unwrap();
    assert!(!row.executed);
    assert_eq!(
        row.attempts, 0,
        "the runner, not the store, records failures"
    );
}

#[tokio::test]
async fn idle_pooled_connections_terminated_by_the_server_are_replaced() {
    let db = fresh_database().await;
    let store = PostgresStore::connect_with(db.config().pool_size(2))
        .await
        .unwrap();
    store.prepare().await.unwrap();
    store
        .register(&[def(1, "one"), def(2, "two")])
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(db.terminate_all().await >= 1);
        assert_eq!(store.pending().await.unwrap().len(), 2);
        store.mark_executed(id(1)).await.unwrap();
        store.mark_pending(id(1)).await.unwrap();
    }
}

/// The pid of the store's session waiting for a lock, once it waits.
async fn wait_for_lock_waiter(db: &TestDatabase) -> i32 {
    let admin = db.admin().await;
    for _ in 0..500 {
        let rows = admin
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = 'waymark' \
                   AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            return row.get(0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the store's call never waited for the lock");
}

/// Waits until backend `pid` is kept aside for the next lock: idle, its
/// unlock confirmed, named so.
async fn kept(db: &waymark_tests::pg::TestDatabase, pid: i32) {
    let condition = "application_name = 'waymark idle lock session' AND state = 'idle'";
    waymark_tests::pg::wait_for_activity(&db.admin().await, pid, condition, "kept").await;
}

/// A store's lock session is unlocked and kept aside when the lock is
/// released, and the next lock (by `lock` or `lock_or_wait`) takes it
/// instead of opening a session. While kept it holds nothing (another
/// store takes the lock at once); one killed while kept is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_session_is_kept_between_locks_holding_nothing() {
    use waymark_core::store::{LockRequest, LockScope};
    let db = waymark_tests::pg::fresh_database().await;
    let store = db.store().await;
    store.prepare().await.unwrap();
    let request = LockRequest::new(LockScope::Run, Duration::from_secs(5));
    let holder = || async { db.advisory_locks().await[0].pid };

    let guard = store.lock(&request).await.unwrap();
    let first = holder().await;
    drop(guard);
    // Asked again at once, without waiting: this store's own release, still
    // under way, is waited for, not taken for another holder.
    let now = LockRequest::new(LockScope::Run, Duration::ZERO);
    for _ in 0..20 {
        let guard = store.lock(&now).await.unwrap();
        assert_eq!(holder().await, first);
        drop(guard);
        let guard = store
            .lock_or_wait(&now)
            .await
            .unwrap()
            .expect("taken, not waited for");
        drop(guard);
    }
    kept(&db, first).await;
    assert!(
        db.advisory_locks().await.is_empty(),
        "the kept session holds nothing"
    );

    // Another store (another replica) is not held up by the kept session.
    let other = db.store().await;
    drop(
        other
            .lock(&LockRequest::new(LockScope::Run, Duration::ZERO))
            .await
            .unwrap(),
    );
    drop(other);

    let guard = store.lock(&request).await.unwrap();
    assert_eq!(holder().await, first, "the kept session took the lock");
    drop(guard);
    kept(&db, first).await;
    let guard = store
        .lock_or_wait(&request)
        .await
        .unwrap()
        .expect("free, so taken");
    assert_eq!(holder().await, first, "lock_or_wait takes it too");
    drop(guard);

    // Killed while kept: the next lock opens another session.
    kept(&db, first).await;
    assert!(db.terminate(first).await);
    let guard = store.lock(&request).await.unwrap();
    let fresh = holder().await;
    assert_ne!(fresh, first);
    guard.check().unwrap();
    drop(guard);
    kept(&db, fresh).await;
    assert!(db.terminate(fresh).await);
    let guard = store.lock_or_wait(&request).await.unwrap().expect("taken");
    assert_ne!(holder().await, fresh);
    drop(guard);
    assert!(
        db.wait_for_no_advisory_locks(Duration::from_secs(10))
            .await
            .is_empty(),
        "nothing left held"
    );
}
