//! The workload on SQLite: data tables, handlers (the store's atomic and
//! batched ones, plain ones on their own connection) and the snapshot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use waymark_core::store::{LockRequest, LockScope};
use waymark_core::{BoxError, Error, MigrationContext, MigrationStore};
use waymark_runner::{Handler, Runner};
use waymark_sqlite::SqliteStore;
use waymark_sqlite::rusqlite::{self, Connection, params};

use super::{
    ATOMIC, ATOMIC_LATE, BATCH, BATCHED, FLAKY, PAUSE, PLAIN, PLAIN_BATCH, PLAIN_BATCHED, Snapshot,
    Variant, batch_step, definition, flaky_failure,
};

/// How long the workload's own connections wait for SQLite's write lock:
/// far longer than any transaction of the workload holds it.
const BUSY: Duration = Duration::from_secs(30);

/// The application state of the SQLite workload: where its data lives.
#[derive(Debug, Clone)]
pub struct SqliteApp {
    /// The database file, shared with the tracking table.
    pub path: PathBuf,
}

/// Creates the workload's data tables in the database at `path` (the test
/// does it once, before any helper runs).
pub fn setup(path: &Path) -> rusqlite::Result<()> {
    Connection::open(path)?.execute_batch(
        "CREATE TABLE plain_log (migration INTEGER NOT NULL);
         CREATE TABLE atomic_log (migration INTEGER NOT NULL, part TEXT NOT NULL);
         CREATE TABLE batch_items (item INTEGER NOT NULL, batch INTEGER NOT NULL);
         CREATE TABLE plain_items (item INTEGER PRIMARY KEY);
         CREATE TABLE plain_item_log (item INTEGER NOT NULL);",
    )
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY)?;
    Ok(conn)
}

/// The runner of `variant` on `store`, its data in the same file.
pub fn runner(
    store: &SqliteStore,
    variant: Variant,
) -> Result<Runner<SqliteApp, SqliteStore>, Error> {
    let mut builder = Runner::builder(store.clone()).lock_wait(Duration::from_secs(120));
    for &id in variant.ids() {
        builder = builder.migration(definition(id)?, handler(id));
    }
    builder.build()
}

fn handler(id: i64) -> Handler<SqliteApp, SqliteStore> {
    match id {
        PLAIN => Handler::blocking_fn(|ctx: MigrationContext<SqliteApp>| {
            log_plain(&ctx.state().path, ctx.id().get())
        }),
        ATOMIC | ATOMIC_LATE => {
            Handler::<SqliteApp, SqliteStore>::atomic(|tx, ctx: &MigrationContext<SqliteApp>| {
                let id = ctx.id().get();
                tx.execute("INSERT INTO atomic_log VALUES (?1, 'first')", [id])?;
                std::thread::sleep(PAUSE);
                tx.execute("INSERT INTO atomic_log VALUES (?1, 'second')", [id])?;
                Ok::<(), BoxError>(())
            })
        }
        BATCHED => Handler::<SqliteApp, SqliteStore>::batched(
            |tx, from, _ctx: &MigrationContext<SqliteApp>| {
                let (after, last, step) = batch_step(from, BATCH)?;
                let batch = after / BATCH + 1;
                for item in after + 1..=last {
                    tx.execute("INSERT INTO batch_items VALUES (?1, ?2)", [item, batch])?;
                    if item == after + 1 {
                        std::thread::sleep(PAUSE);
                    }
                }
                Ok::<_, BoxError>(step)
            },
        ),
        PLAIN_BATCHED => Handler::resumable_blocking(|app: &SqliteApp, from| {
            let (after, last, step) = batch_step(from, PLAIN_BATCH)?;
            let mut conn = connect(&app.path)?;
            let tx = conn.transaction()?;
            for item in after + 1..=last {
                tx.execute("INSERT OR IGNORE INTO plain_items VALUES (?1)", [item])?;
                tx.execute("INSERT INTO plain_item_log VALUES (?1)", [item])?;
            }
            tx.commit()?;
            std::thread::sleep(PAUSE);
            Ok::<_, BoxError>(step)
        }),
        _ => Handler::blocking_fn(|ctx: MigrationContext<SqliteApp>| {
            if let Some(failure) = flaky_failure(ctx.migration().attempts) {
                return Err(failure);
            }
            log_plain(&ctx.state().path, FLAKY)?;
            Ok::<(), BoxError>(())
        }),
    }
}

fn log_plain(path: &Path, id: i64) -> rusqlite::Result<()> {
    connect(path)?.execute("INSERT INTO plain_log VALUES (?1)", [id])?;
    Ok(())
}

/// What the workload left in the database at `path`; `store` reads the
/// tracking table.
pub async fn snapshot(store: &SqliteStore, path: &Path) -> Result<Snapshot, String> {
    let conn = connect(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let tracked: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            params![store.table()],
            |row| row.get(0),
        )
        .map_err(|e| e.to_string())?;
    let rows = if tracked == 0 {
        Vec::new()
    } else {
        store.list().await.map_err(|e| e.to_string())?
    };
    let data = read_data(&conn).map_err(|e| format!("reading the data tables: {e}"))?;
    Ok(Snapshot::new(&rows, data))
}

fn read_data(conn: &Connection) -> rusqlite::Result<Snapshot> {
    let mut data = Snapshot::default();
    let mut statement =
        conn.prepare("SELECT migration, count(*) FROM plain_log GROUP BY migration")?;
    for pair in statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))? {
        let (id, count) = pair?;
        data.plain_log.insert(id, count);
    }
    let mut statement = conn.prepare("SELECT migration, part FROM atomic_log ORDER BY rowid")?;
    for pair in statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))? {
        let (id, part) = pair?;
        data.atomic_log.entry(id).or_default().push(part);
    }
    let numbers = |sql: &str| -> rusqlite::Result<Vec<i64>> {
        let mut statement = conn.prepare(sql)?;
        let rows = statement.query_map([], |row| row.get(0))?;
        rows.collect()
    };
    data.batch_items = numbers("SELECT item FROM batch_items ORDER BY item")?;
    data.plain_items = numbers("SELECT item FROM plain_items ORDER BY item")?;
    data.plain_item_applications =
        conn.query_row("SELECT count(*) FROM plain_item_log", [], |row| row.get(0))?;
    Ok(data)
}

/// Whether both locks of `store` are free right now: taken without any
/// wait, then released.
pub async fn lock_is_free(store: &SqliteStore) -> Result<(), Error> {
    for scope in [LockScope::Run, LockScope::Background] {
        store
            .lock(&LockRequest::new(scope, Duration::ZERO))
            .await
            .map(drop)?;
    }
    Ok(())
}
