//! A second process for the SQLite tests: holds a lock, races `prepare`, or
//! runs a batched atomic migration that a test can kill.
//!
//! Usage:
//!
//! ```text
//! sqlite_helper hold-lock <db> [run|background]
//! sqlite_helper prepare <db> <go-file>
//! sqlite_helper batched <db> [stop-inside-batch]
//! sqlite_helper replica <db> <go-file> <atomic-ms>
//! ```
//!
//! It reports on stdout, one line per event, for the test to wait on.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use waymark_core::store::{LockRequest, LockScope};
use waymark_core::{BatchStep, BoxError, MigrationContext, MigrationDef, MigrationStore};
use waymark_runner::{RunEvent, Runner, Status};
use waymark_sqlite::SqliteStore;
use waymark_sqlite::rusqlite::{Transaction, params};

/// Items each batch of the `batched` migration processes.
const BATCH: i64 = 10;

/// A helper left behind by a failed test exits on its own after this.
const LIFETIME: Duration = Duration::from_secs(60);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["hold-lock", db] => hold_lock(Path::new(db), LockScope::Run).await,
        ["hold-lock", db, "run"] => hold_lock(Path::new(db), LockScope::Run).await,
        ["hold-lock", db, "background"] => hold_lock(Path::new(db), LockScope::Background).await,
        ["prepare", db, go] => prepare(Path::new(db), Path::new(go)).await,
        ["replica", db, go, ms] => match ms.parse() {
            Ok(ms) => replica(Path::new(db), Path::new(go), Duration::from_millis(ms)).await,
            Err(err) => Err(format!("bad duration {ms:?}: {err}").into()),
        },
        ["batched", db] => batched(PathBuf::from(db), None).await,
        ["batched", db, stop] => match stop.parse() {
            Ok(stop) => batched(PathBuf::from(db), Some(stop)).await,
            Err(err) => Err(format!("bad batch number {stop:?}: {err}").into()),
        },
        _ => Err(format!("unknown arguments {args:?}").into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sqlite_helper: {}", waymark_core::error_chain(&*err));
            ExitCode::FAILURE
        }
    }
}

/// Takes the `scope` lock (recording this process as its holder) and keeps
/// it until killed.
async fn hold_lock(db: &Path, scope: LockScope) -> Result<(), BoxError> {
    let store = SqliteStore::open(db).await?;
    let _guard = store
        .lock(&LockRequest::new(scope, Duration::from_secs(10)))
        .await?;
    println!("locked");
    tokio::time::sleep(LIFETIME).await;
    Ok(())
}

/// Waits until the go file exists, so that several helpers start together.
fn wait_for_go(go: &Path) -> Result<(), BoxError> {
    let started = Instant::now();
    while !go.exists() {
        if started.elapsed() > Duration::from_secs(20) {
            return Err("the go file never appeared".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Waits for the go file so that several helpers start together, then
/// opens, prepares and registers.
async fn prepare(db: &Path, go: &Path) -> Result<(), BoxError> {
    wait_for_go(go)?;
    let store = SqliteStore::open(db).await?;
    store.prepare().await?;
    store.register(&shared_defs()?).await?;
    println!("prepared");
    Ok(())
}

/// A replica starting as an application would, with the store's defaults
/// (a 5 s busy timeout among them): opens the file and runs migration 1,
/// which inserts this process's pid into `effects` (no unique key, so a
/// second run would show) and then keeps SQLite's write lock for
/// `atomic` inside its transaction. Prints `running` when the migration
/// starts and, at the end, `report executed=[..] already_done=[..]`.
async fn replica(db: &Path, go: &Path, atomic: Duration) -> Result<(), BoxError> {
    wait_for_go(go)?;
    let store = SqliteStore::open(db).await?;
    let def = MigrationDef::new(1, "slow_recount", "inserts a row without a unique key")?;
    let runner = Runner::<(), SqliteStore>::builder(store)
        .lock_wait(Duration::from_secs(60))
        .atomic(
            def,
            move |tx: &Transaction<'_>, _ctx: &MigrationContext<()>| {
                tx.execute(
                    "INSERT INTO effects (pid) VALUES (?1)",
                    params![i64::from(std::process::id())],
                )?;
                println!("running");
                std::thread::sleep(atomic);
                Ok::<(), BoxError>(())
            },
        )
        .build()?;
    let report = runner.run(()).await?.finish().await?;
    let ids = |ids: Vec<i64>| format!("{ids:?}");
    println!(
        "report executed={} already_done={}",
        ids(report.executed().map(|o| o.id.get()).collect()),
        ids(report.already_done().map(|o| o.id.get()).collect()),
    );
    if let Some(failure) = report.failures().next() {
        return Err(format!("migration {} failed: {:?}", failure.id, failure.status).into());
    }
    Ok(())
}

/// The set every racing `prepare` registers.
fn shared_defs() -> Result<Vec<MigrationDef>, waymark_core::Error> {
    (1..=3)
        .map(|id| MigrationDef::new(id, format!("m{id}"), "raced"))
        .collect()
}

/// Runs migration 1 ("apply_items") through the runner, as an application
/// would. Each batch copies the next `BATCH` ids from `items` into
/// `applied`, half at a time, pausing between the halves; each batch
/// announces itself between its halves ("inside N"), and with `stop`,
/// batch number `stop` then sleeps until the test kills the process. After
/// each commit the runner's progress says how many items this run has
/// committed ("committed N").
async fn batched(db: PathBuf, stop: Option<i64>) -> Result<(), BoxError> {
    let store = SqliteStore::open(&db).await?;
    let def = MigrationDef::new(1, "apply_items", "copy items to applied")?;
    let id = def.id();
    let runner = Runner::<(), SqliteStore>::builder(store)
        .lock_wait(Duration::from_secs(10))
        .observer(|event| {
            if let RunEvent::Progress { progress, .. } = event {
                println!("committed {}", progress.done);
            }
        })
        .batched(
            def,
            move |tx: &Transaction<'_>,
                  from: Option<&str>,
                  _ctx: &MigrationContext<()>|
                  -> Result<BatchStep, BoxError> { apply_batch(tx, from, stop) },
        )
        .build()?;
    let report = runner.run(()).await?.finish().await?;
    match report.outcome(id).map(|outcome| &outcome.status) {
        Some(Status::Executed) => println!("done"),
        None | Some(Status::AlreadyDone) => println!("already executed"),
        Some(other) => return Err(format!("unexpected outcome {other:?}").into()),
    }
    Ok(())
}

/// One batch of `apply_items`, from the checkpoint `from`.
fn apply_batch(
    tx: &Transaction<'_>,
    from: Option<&str>,
    stop: Option<i64>,
) -> Result<BatchStep, BoxError> {
    let after: i64 = from.map_or(Ok(0), str::parse)?;
    let batch = after / BATCH + 1;
    let half = |after: i64| {
        tx.execute(
            "INSERT INTO applied (item_id, batch) \
             SELECT id, ?2 FROM items WHERE id > ?1 ORDER BY id LIMIT ?3",
            params![after, batch, BATCH / 2],
        )
    };
    let first = half(after)?;
    println!("inside {batch}");
    if stop == Some(batch) {
        std::thread::sleep(LIFETIME);
        return Err("the test did not kill the helper".into());
    }
    // Most of a batch's time is spent inside its transaction, so a kill at
    // an arbitrary moment most likely lands in the middle of one.
    std::thread::sleep(Duration::from_millis(20));
    let last_of_first: i64 = tx.query_row(
        "SELECT coalesce(max(item_id), ?1) FROM applied WHERE batch = ?2",
        params![after, batch],
        |row| row.get(0),
    )?;
    let second = half(last_of_first)?;
    let processed = (first + second) as u64;
    let last: i64 = tx.query_row(
        "SELECT coalesce(max(item_id), ?1) FROM applied WHERE batch = ?2",
        params![after, batch],
        |row| row.get(0),
    )?;
    Ok(if processed < BATCH as u64 {
        BatchStep::done(processed)
    } else {
        BatchStep::next(last.to_string(), processed)
    })
}
