//! A second process for the SQLite tests: holds the run lock, races
//! `prepare`, or runs a batched atomic migration that a test can kill.
//!
//! Usage:
//!
//! ```text
//! sqlite_helper hold-lock <db>
//! sqlite_helper prepare <db> <go-file>
//! sqlite_helper batched <db> [stop-inside-batch]
//! ```
//!
//! It reports on stdout, one line per event, for the test to wait on.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use waymark_core::{
    BatchStep, BoxError, Handler, MigrationContext, MigrationDef, MigrationId, MigrationStore,
};
use waymark_sqlite::SqliteStore;
use waymark_sqlite::rusqlite::params;

/// Items each batch of the `batched` migration processes.
const BATCH: i64 = 10;

/// A helper left behind by a failed test exits on its own after this.
const LIFETIME: Duration = Duration::from_secs(60);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["hold-lock", db] => hold_lock(Path::new(db)).await,
        ["prepare", db, go] => prepare(Path::new(db), Path::new(go)).await,
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

async fn hold_lock(db: &Path) -> Result<(), BoxError> {
    let store = SqliteStore::open(db).await?;
    let _guard = store.lock(Duration::from_secs(10)).await?;
    println!("locked");
    tokio::time::sleep(LIFETIME).await;
    Ok(())
}

/// Waits for the go file so that several helpers start together, then
/// opens, prepares and registers.
async fn prepare(db: &Path, go: &Path) -> Result<(), BoxError> {
    let started = Instant::now();
    while !go.exists() {
        if started.elapsed() > Duration::from_secs(20) {
            return Err("the go file never appeared".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let store = SqliteStore::open(db).await?;
    store.prepare().await?;
    store.register(&shared_defs()?).await?;
    println!("prepared");
    Ok(())
}

/// The set every racing `prepare` registers.
fn shared_defs() -> Result<Vec<MigrationDef>, waymark_core::Error> {
    (1..=3)
        .map(|id| MigrationDef::new(id, format!("m{id}"), "raced"))
        .collect()
}

/// Runs migration 1 ("apply_items") the way the runner does: lock, read the
/// row, run the handler on a blocking thread, record the outcome. Each
/// batch copies the next `BATCH` ids from `items` into `applied`, half at a
/// time, pausing between the halves; each batch announces itself between
/// its halves, and with `stop`, batch number `stop` then sleeps until the
/// test kills the process.
async fn batched(db: PathBuf, stop: Option<i64>) -> Result<(), BoxError> {
    let store = SqliteStore::open(&db).await?;
    store.prepare().await?;
    store
        .register(&[MigrationDef::new(
            1,
            "apply_items",
            "copy items to applied",
        )?])
        .await?;
    let _guard = store.lock(Duration::from_secs(10)).await?;
    let row = store.get(MigrationId::new(1)?).await?;
    if row.executed {
        println!("already executed");
        return Ok(());
    }
    let handler: Handler<()> = store.batched(move |tx, from, _ctx: &MigrationContext<()>| {
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
        // Most of a batch's time is spent inside its transaction, so a kill
        // at an arbitrary moment most likely lands in the middle of one.
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
    });
    let ctx = MigrationContext::new(Arc::new(()), row, Arc::new(store.clone()))
        .with_progress(Arc::new(|done, _| println!("committed {done}")));
    let recorded = ctx.completion_flag();
    let Handler::Blocking(handler) = handler else {
        return Err("an atomic handler must be blocking".into());
    };
    match tokio::task::spawn_blocking(move || handler.run(ctx)).await? {
        Ok(()) => {
            if !recorded.is_set() {
                store.record_success(MigrationId::new(1)?).await?;
            }
            println!("done");
            Ok(())
        }
        Err(err) => {
            let text = waymark_core::error_chain(&*err);
            store.record_failure(MigrationId::new(1)?, &text).await?;
            Err(err)
        }
    }
}
