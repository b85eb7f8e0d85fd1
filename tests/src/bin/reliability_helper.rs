//! The process the reliability tests kill and race: runs the workload of
//! `waymark_tests::reliability::workload` with the real `Runner`.
//!
//! Usage:
//!
//! ```text
//! reliability_helper <crash|race> sqlite <database-file> [start-file delay-ms]
//! reliability_helper <crash|race> postgres <url> [start-file delay-ms]
//! ```
//!
//! With a start file it prints `ready`, waits for the file to appear and
//! then `delay-ms` more, then runs. Exit codes: 0 success (it prints `ok executed=N already_done=N
//! settled=B`), 3 a migration failed, 1 any other error (on stderr).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use waymark_core::{Error, error_chain};
use waymark_postgres::{PostgresConfig, PostgresStore};
use waymark_runner::RunReport;
use waymark_sqlite::{SqliteConfig, SqliteStore};
use waymark_tests::reliability::process::{EXIT_MIGRATION_FAILED, READY, StartLine};
use waymark_tests::reliability::workload::{Variant, postgres, sqlite};

/// A helper orphaned by a failed test exits on its own after this.
const LIFETIME: Duration = Duration::from_secs(180);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    std::thread::spawn(|| {
        std::thread::sleep(LIFETIME);
        eprintln!("reliability_helper: still running after {LIFETIME:?}; exiting");
        std::process::exit(2);
    });
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((variant, backend, target, start)) = parse(&args) else {
        return usage(&args);
    };
    if let Some((start, delay)) = start {
        println!("{READY}");
        if let Err(message) = StartLine::wait(Path::new(start), Duration::from_secs(60)) {
            eprintln!("reliability_helper: {message}");
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(delay).await;
    }
    let result = match backend {
        "sqlite" => run_sqlite(Path::new(target), variant).await,
        "postgres" => run_postgres(target, variant).await,
        _ => return usage(&args),
    };
    match result {
        Ok(report) => {
            println!(
                "ok executed={} already_done={} settled={}",
                report.executed().count(),
                report.already_done().count(),
                report.was_settled()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("reliability_helper: {}", error_chain(&err));
            if matches!(err, Error::Handler { .. }) {
                ExitCode::from(EXIT_MIGRATION_FAILED as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The start line and the delay after it, if any.
type Start<'a> = Option<(&'a str, Duration)>;

fn parse(args: &[String]) -> Option<(Variant, &str, &str, Start<'_>)> {
    let (variant, backend, target, start) = match args {
        [variant, backend, target] => (variant, backend, target, None),
        [variant, backend, target, start, delay] => {
            let delay = Duration::from_millis(delay.parse().ok()?);
            (variant, backend, target, Some((start.as_str(), delay)))
        }
        _ => return None,
    };
    Some((Variant::parse(variant)?, backend, target, start))
}

fn usage(args: &[String]) -> ExitCode {
    eprintln!(
        "reliability_helper: unknown arguments {args:?}; \
         usage: reliability_helper <crash|race> <sqlite|postgres> <target> [start-file delay-ms]"
    );
    ExitCode::FAILURE
}

async fn run_sqlite(path: &Path, variant: Variant) -> Result<RunReport, Error> {
    let config = SqliteConfig::file(path).busy_timeout(Duration::from_secs(30));
    let store = SqliteStore::open_with(config).await?;
    let app = sqlite::SqliteApp {
        path: path.to_path_buf(),
    };
    let started = sqlite::runner(&store, variant)?.run(app).await?;
    Ok(started.into_report())
}

async fn run_postgres(url: &str, variant: Variant) -> Result<RunReport, Error> {
    let store = PostgresStore::connect_with(PostgresConfig::new(url).pool_size(3)).await?;
    let app = postgres::PgApp::connect(url)
        .await
        .map_err(|e| Error::store("connecting the application", e))?;
    let started = postgres::runner(&store, variant)?.run(app).await?;
    Ok(started.into_report())
}
