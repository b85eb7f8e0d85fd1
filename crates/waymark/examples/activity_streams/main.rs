//! The waymark demo: an activity-tracking app's data migrations on an
//! embedded SQLite file.
//!
//! The first run seeds synthetic activities and their data streams, then
//! runs three migrations with progress bars: recomputing averages (blocking,
//! atomic), heart-rate zone shares (batched, atomic, checkpointed) and pace
//! streams derived from speed (async). A second run finds nothing pending and
//! returns at once. Interrupt a run (Ctrl-C) during the batched migration and
//! run again: it resumes from the last committed batch, none applied twice.
//!
//! ```sh
//! cargo run --release -p waymark --example activity_streams -- --help
//! ```

mod migrations;
mod progress;
mod seed;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use waymark::render::{StatusTable, error_chain};
use waymark::sqlite::SqliteStore;
use waymark::sqlite::rusqlite;
use waymark::{MigrationStore, Runner};

/// Seed an activity database and run its data migrations with waymark.
#[derive(Debug, Parser)]
struct Args {
    /// The SQLite database file (created if missing).
    #[arg(long, default_value = "activity_streams.db")]
    database: PathBuf,
    /// How many activities to seed on the first run.
    #[arg(long, default_value_t = 3000)]
    activities: u32,
    /// Activities per batch in the batched migrations.
    #[arg(long, default_value_t = 100)]
    batch_size: u32,
    /// Milliseconds to pause after each batch: time to press Ctrl-C.
    #[arg(long, default_value_t = 0)]
    batch_delay_ms: u64,
    /// Delete the database first and start over.
    #[arg(long)]
    reset: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", error_chain(&*error));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    if args.reset {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = args.database.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
    if args.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }

    let path = args.database.clone();
    let (activities, seeded_in) = tokio::task::spawn_blocking(move || {
        let seeding = Instant::now();
        let mut conn = rusqlite::Connection::open(&path)?;
        let count = seed::seed(&mut conn, args.activities)?;
        Ok::<_, rusqlite::Error>((count, seeding.elapsed()))
    })
    .await??;
    println!(
        "{}: {activities} activities ({:.2}s)",
        args.database.display(),
        seeded_in.as_secs_f64()
    );

    let store = SqliteStore::open(&args.database).await?;
    let bars = progress::Bars::default();
    let observer = bars.clone();
    let runner = Runner::builder(store.clone())
        .migrations(migrations::all()?)
        .observer(move |event| observer.observe(event))
        .build()?;
    let app = Arc::new(migrations::App {
        path: args.database.clone(),
        batch_size: args.batch_size,
        batch_delay: Duration::from_millis(args.batch_delay_ms),
    });
    let report = runner.run_and_report(app).await?.wait().await?;
    drop(bars);

    if report.nothing_pending() {
        println!("nothing pending: checked in {:.1?}", report.elapsed());
    } else {
        println!("\n{report}");
    }
    println!("\n{}", StatusTable(&store.list().await?));

    let path = args.database.clone();
    let checks =
        tokio::task::spawn_blocking(move || migrations::verify(&rusqlite::Connection::open(path)?))
            .await??;
    let mut healthy = report.is_success();
    for (line, ok) in checks {
        println!("{} {line}", if ok { "ok  " } else { "FAIL" });
        healthy &= ok;
    }
    println!("finished in {:.2}s", started.elapsed().as_secs_f64());
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
