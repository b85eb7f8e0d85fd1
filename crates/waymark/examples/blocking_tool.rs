//! waymark without an async runtime: a command-line tool on rusqlite alone.
//!
//! No `#[tokio::main]` and no async code: the store is opened with
//! `SqliteStore::open_blocking`, the handlers are plain functions (one
//! `Handler::blocking_fn`, one batched atomic handler), and one
//! `run_blocking` call runs everything with a runtime it manages inside,
//! with the same guarantees as `run`. Run it twice: the second run finds
//! nothing pending.
//!
//! ```sh
//! cargo run -p waymark --example blocking_tool -- --database notes.db
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use waymark::render::error_chain;
use waymark::sqlite::SqliteStore;
use waymark::sqlite::rusqlite::{self, Connection, Transaction, params};
use waymark::{BatchStep, BoxError, Handler, MigrationContext, MigrationDef, Runner};

/// A notes tool that runs its data migrations once, without async.
#[derive(Debug, Parser)]
struct Args {
    /// The SQLite database file (created if missing).
    #[arg(long, default_value = "blocking_tool.db")]
    database: PathBuf,
    /// How many notes to seed on the first run.
    #[arg(long, default_value_t = 1000)]
    notes: u32,
    /// Notes per batch of the word-count migration.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
}

/// The tool's state, handed to every handler.
#[derive(Debug)]
struct Tool {
    database: PathBuf,
    batch_size: u32,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", error_chain(&*error));
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, BoxError> {
    let mut conn = Connection::open(&args.database)?;
    let notes = seed(&mut conn, args.notes)?;
    println!("{}: {notes} notes", args.database.display());

    let store = SqliteStore::open_blocking(&args.database)?;
    let report = Runner::builder(store)
        .migration(
            MigrationDef::new(1, "default_settings", "Insert the default settings")?,
            // Plain blocking code on a thread of the runner's runtime; the
            // runner records its success after it returns.
            Handler::blocking_fn(default_settings),
        )
        // Batched and atomic: each batch commits with its checkpoint.
        .batched(
            MigrationDef::new(2, "count_words", "Count the words of every note")?,
            count_words,
        )
        .build()?
        .run_blocking(Tool {
            database: args.database.clone(),
            batch_size: args.batch_size,
        })?;
    println!("{}", report.to_string().trim_end());

    let counted: u64 = conn.query_row(
        "SELECT count(*) FROM notes WHERE words IS NOT NULL",
        [],
        |r| r.get(0),
    )?;
    let units: Option<String> = conn
        .query_row("SELECT value FROM settings WHERE key = 'units'", [], |r| {
            r.get(0)
        })
        .or_else(|err| match err {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            other => Err(other),
        })?;
    println!("{counted} of {notes} notes have word counts");
    println!("units: {}", units.as_deref().unwrap_or("(unset)"));
    Ok(if counted == notes && units.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The tool's tables, and `rows` notes on the first run.
fn seed(conn: &mut Connection, rows: u32) -> rusqlite::Result<u64> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS notes (
             id INTEGER PRIMARY KEY,
             body TEXT NOT NULL,
             words INTEGER,
             -- How many times the word count ran on the row: 1, never 2.
             counted INTEGER NOT NULL DEFAULT 0
         );
         CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    )?;
    let tx = conn.transaction()?;
    let existing: u64 = tx.query_row("SELECT count(*) FROM notes", [], |r| r.get(0))?;
    if existing == 0 {
        let mut insert = tx.prepare("INSERT INTO notes (id, body) VALUES (?1, ?2)")?;
        for id in 1..=i64::from(rows) {
            let body = vec!["word"; (id % 7 + 1) as usize].join(" ");
            insert.execute(params![id, body])?;
        }
    }
    tx.commit()?;
    conn.query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
}

/// Migration 1: a blocking handler on a connection of its own. Not atomic
/// with the bookkeeping, so idempotent (`ON CONFLICT DO NOTHING`).
fn default_settings(ctx: MigrationContext<Tool>) -> Result<(), rusqlite::Error> {
    let conn = Connection::open(&ctx.state().database)?;
    conn.execute(
        "INSERT INTO settings (key, value) VALUES ('units', 'metric')
         ON CONFLICT (key) DO NOTHING",
        [],
    )?;
    ctx.report_progress(1, Some(1));
    Ok(())
}

/// Migration 2, one batch: the next notes after the checkpoint (the last id
/// done), in the store's transaction with the next checkpoint.
fn count_words(
    tx: &Transaction<'_>,
    from: Option<&str>,
    ctx: &MigrationContext<Tool>,
) -> Result<BatchStep, BoxError> {
    let after: i64 = from.map(str::parse).transpose()?.unwrap_or(0);
    let batch: Vec<(i64, String)> = tx
        .prepare("SELECT id, body FROM notes WHERE id > ?1 ORDER BY id LIMIT ?2")?
        .query_map(params![after, ctx.state().batch_size], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut update =
        tx.prepare("UPDATE notes SET words = ?2, counted = counted + 1 WHERE id = ?1")?;
    for (id, body) in &batch {
        update.execute(params![id, body.split_whitespace().count() as i64])?;
    }
    let processed = batch.len() as u64;
    Ok(match batch.last() {
        Some((last, _)) if processed == u64::from(ctx.state().batch_size) => {
            BatchStep::next(last.to_string(), processed)
        }
        _ => BatchStep::done(processed),
    })
}
