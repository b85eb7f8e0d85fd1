//! The app's table, its seed, and its two data migrations.

use std::time::Duration;

use waymark::sqlite::rusqlite::{self, Connection, Transaction, params};
use waymark::{BatchStep, BoxError, MigrationContext, MigrationDef};

/// The application's state, handed to every handler.
#[derive(Debug)]
pub struct App {
    /// Rows per batch of the backfill.
    pub batch_size: u32,
    /// A pause inside each batch of the backfill (0 in production; the
    /// test sets one so that its interrupt lands half-way).
    pub batch_delay: Duration,
}

/// The required migration: every item's path gets the `/items` prefix.
pub const PREFIX_PATHS: i64 = 1;
/// The background backfill: every item gets its slug.
pub const BACKFILL_SLUGS: i64 = 2;

/// Creates the app's table (a schema tool's job in a real app) and seeds
/// `rows` items on the first start; later starts keep what is there.
/// Returns how many items there are.
pub fn seed(conn: &mut Connection, rows: u32) -> rusqlite::Result<u64> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS items (
             id INTEGER PRIMARY KEY,
             title TEXT NOT NULL,
             path TEXT NOT NULL,
             slug TEXT,
             -- How many times the backfill touched the row: 1 everywhere
             -- once it is done, never 2.
             backfilled INTEGER NOT NULL DEFAULT 0
         )",
    )?;
    let tx = conn.transaction()?;
    let existing: u64 = tx.query_row("SELECT count(*) FROM items", [], |r| r.get(0))?;
    if existing == 0 {
        let mut insert = tx.prepare("INSERT INTO items (id, title, path) VALUES (?1, ?2, ?3)")?;
        for id in 1..=i64::from(rows) {
            insert.execute(params![id, format!("Item Number {id}"), format!("/{id}")])?;
        }
    }
    tx.commit()?;
    conn.query_row("SELECT count(*) FROM items", [], |r| r.get(0))
}

/// Migration 1, required before serving: the app's routes read the new
/// paths. Atomic: the update and the "executed" record commit together, so
/// the (not idempotent) prefix is applied exactly once.
pub fn prefix_paths_def() -> Result<MigrationDef, waymark::Error> {
    MigrationDef::new(
        PREFIX_PATHS,
        "prefix_item_paths",
        "Prefix every item's path with /items",
    )
}

pub fn prefix_paths(tx: &Transaction<'_>, ctx: &MigrationContext<App>) -> Result<(), BoxError> {
    let updated = tx.execute("UPDATE items SET path = '/items' || path", [])?;
    ctx.report_progress(updated as u64, Some(updated as u64));
    Ok(())
}

/// Migration 2, in the background while the app serves: the app copes with
/// items that have no slug yet.
pub fn backfill_slugs_def() -> Result<MigrationDef, waymark::Error> {
    Ok(MigrationDef::new(
        BACKFILL_SLUGS,
        "backfill_item_slugs",
        "Derive every item's slug from its title, in batches",
    )?
    .background())
}

/// One batch of the backfill: the next `batch_size` items after the
/// checkpoint (the last id done), committed with the next checkpoint.
pub fn backfill_slugs(
    tx: &Transaction<'_>,
    from: Option<&str>,
    ctx: &MigrationContext<App>,
) -> Result<BatchStep, BoxError> {
    let app = ctx.state();
    let after: i64 = from.map(str::parse).transpose()?.unwrap_or(0);
    let last: Option<i64> = tx.query_row(
        "SELECT max(id) FROM (SELECT id FROM items WHERE id > ?1 ORDER BY id LIMIT ?2)",
        params![after, app.batch_size],
        |r| r.get(0),
    )?;
    let Some(last) = last else {
        return Ok(BatchStep::done(0));
    };
    let processed = tx.execute(
        "UPDATE items SET slug = lower(replace(title, ' ', '-')), backfilled = backfilled + 1
         WHERE id > ?1 AND id <= ?2",
        [after, last],
    )? as u64;
    // The runner counts `processed` from zero in each run, resumed or not,
    // so the total is what was left when this run started (the context's
    // checkpoint is the one the run resumed from).
    let resumed_after: i64 = ctx.checkpoint().map(str::parse).transpose()?.unwrap_or(0);
    let total: u64 = tx.query_row(
        "SELECT count(*) FROM items WHERE id > ?1",
        [resumed_after],
        |r| r.get(0),
    )?;
    if !app.batch_delay.is_zero() {
        std::thread::sleep(app.batch_delay);
    }
    let more: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM items WHERE id > ?1)",
        [last],
        |r| r.get(0),
    )?;
    let step = if more {
        BatchStep::next(last.to_string(), processed)
    } else {
        BatchStep::done(processed)
    };
    Ok(step.with_total(total))
}
